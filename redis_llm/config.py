"""Module arguments, as given to ``loadmodule``.

Both ``--POOL_SIZE 3`` (as the seed README writes them in redis.conf) and
``POOL_SIZE 3`` are accepted: on redis-server's command line a word starting
with ``--`` after the module path is read as a config directive of its own.
"""

from dataclasses import dataclass, fields
from typing import ClassVar

from redis_llm.errors import LLMError
from redis_llm.parsing import integer, shown



def _yes_no(arg: bytes) -> bool:
    word = arg.lower()
    if word not in (b"yes", b"no"):
        raise ValueError(f"must be yes or no, got {shown(arg)}")
    return word == b"yes"


@dataclass(frozen=True)
class ModuleConfig:
    """What the module was loaded with."""

    pool_size: int = 10
    queue_size: int = 1000
    debug_commands: bool = False  # registers LLM.DEBUG, for tests

    # The numeric arguments' ranges; each is also a module config (CONFIG SET
    # llm.pool-size), registered by bridge.load.
    LIMITS: ClassVar[dict] = {"pool_size": (1, 1024), "queue_size": (1, 1_000_000)}

    @classmethod
    def parse(cls, args: list[bytes]) -> "ModuleConfig":
        """Parse ``NAME value`` pairs; names are case-insensitive, dashes optional."""
        if len(args) % 2:
            raise LLMError("module arguments come in NAME value pairs")
        known = {f.name for f in fields(cls)}
        values: dict = {}
        for name, arg in zip(args[::2], args[1::2]):
            attr = name.lstrip(b"-").lower().decode("utf-8", "replace")
            if attr not in known:
                raise LLMError(f"unknown module argument {shown(name)}")
            if attr in values:
                raise LLMError(f"module argument {attr.upper()} given more than once")
            convert = integer(*cls.LIMITS[attr]) if attr in cls.LIMITS else _yes_no
            try:
                values[attr] = convert(arg)
            except ValueError as exc:
                raise LLMError(f"module argument {attr.upper()} {exc}") from None
        return cls(**values)
