"""The Python half of the module: what the C shim in redis-server calls.

``load`` reads the module arguments and returns the data types, commands
and configs to register; ``dispatch`` runs one command and returns its reply as Python
values (bytes, int, float, str for a status, list, None, an LLMError for an
error reply, or keys.BLOCKED when a worker will reply); ``restore`` rebuilds
a value saved in an RDB file; ``info``, ``config_get`` and ``config_set``
answer INFO and CONFIG.
"""

import sys
from types import SimpleNamespace

from redis_llm import keys, metrics, pool
from redis_llm.apps import ENCODING_VERSION as APP_ENCODING
from redis_llm.apps import App
from redis_llm.commands import COMMANDS, COMMANDS_BY_NAME
from redis_llm.config import ModuleConfig
from redis_llm.errors import LLMError, error_reply
from redis_llm.providers import ENCODING_VERSION as LLM_ENCODING
from redis_llm.providers import TYPES as PROVIDER_TYPES
from redis_llm.providers import LLMModel
from redis_llm.store import ENCODING_VERSION as STORE_ENCODING
from redis_llm.store import VectorStore

# Module data types: (class, 9-character Redis type name, encoding version).
# Their order is the shim's type table: never reorder, only append.
DATA_TYPES = [(VectorStore, "llm-store", STORE_ENCODING), (LLMModel, "llm-model", LLM_ENCODING),
              (App, "llm-appli", APP_ENCODING)]
_BY_TAG = {cls.type_tag: cls for cls, _, _ in DATA_TYPES}

config = ModuleConfig()

# Context flags: REPLICATED (sent by a master) and LOADING (AOF replay).
_FROM_AOF_OR_MASTER = (1 << 12) | (1 << 13)


def load(module_path: str, args: list[bytes]) -> SimpleNamespace:
    """Called once by the shim when redis-server loads the module."""
    global config
    try:
        config = ModuleConfig.parse(args)
    except LLMError as exc:
        keys.log("warning", f"cannot load {module_path}: {exc.args[0]}")
        raise
    # A busy Python thread holds the GIL for at most this long before a
    # command on Redis' main thread gets it.
    sys.setswitchinterval(0.001)
    keys.TYPE_INDEX.update({cls: i for i, (cls, _, _) in enumerate(DATA_TYPES)})
    pool.workers = pool.WorkerPool(config.pool_size, config.queue_size)
    registrations = [c.registration() for c in COMMANDS if config.debug_commands or not c.debug]
    return SimpleNamespace(
        types=[(name, encver) for _, name, encver in DATA_TYPES],
        # (name, flags, address of its RedisModuleCommandInfo); the infos
        # stay referenced here, by the namespace the shim keeps.
        commands=[(name, flags, info.address) for name, flags, info in registrations],
        command_infos=[info for _, _, info in registrations],
        # (name, default, min, max): CONFIG SET llm.<name>, or llm.<name> in
        # redis.conf, which overrides the module argument.
        configs=[(name.replace("_", "-"), getattr(config, name), low, high)
                 for name, (low, high) in ModuleConfig.LIMITS.items()],
    )


def config_get(name: str) -> int:
    """CONFIG GET llm.<name>."""
    workers = pool.workers
    return workers.size if name == "pool-size" else workers.queue_size


def config_set(name: str, value: int) -> str | None:
    """CONFIG SET llm.<name>: None, or why the value is refused (Redis has
    checked the range already)."""
    if name == "pool-size":
        pool.workers.resize(value)
    else:
        pool.workers.queue_size = value
    return None


def info() -> tuple:
    """The fields of the llm section of INFO: (name, int or str) pairs;
    Redis prefixes each name with ``llm_``."""
    workers = pool.workers
    return (("pool_size", workers.size), ("queue_size", workers.queue_size),
            ("queue_depth", workers.queued()), ("busy_workers", workers.busy),
            *metrics.provider_fields(PROVIDER_TYPES), *metrics.record_fields())


def dispatch(ctx: int, argv: tuple[bytes, ...]):
    """Run one LLM.* command; returns its reply, or keys.BLOCKED when a worker will."""
    try:
        command = COMMANDS_BY_NAME[argv[0].lower()]
        if command.secret_options and not keys.context_flags(ctx) & _FROM_AOF_OR_MASTER:
            # Redis 7.0's AOF loader reuses one fake client, whose saved
            # arguments redaction would write past: only clients' commands.
            keys.redact(ctx, argv, command.secret_options)
        return command.handler(ctx, command.syntax.parse(argv[1:]))
    except Exception as exc:
        return error_reply(exc, argv[0].decode(errors="replace"))


def key_positions(argv: tuple[bytes, ...]) -> list[int]:
    """Where the keys of a getkeys-api command are in ``argv``, as its
    key-specs declare them: Redis 7.0's cluster routing asks this way."""
    return COMMANDS_BY_NAME[argv[0].lower()].key_positions(argv)


def restore(encver: int, chunks: list[memoryview]):
    """Rebuild a value from the chunks its ``dump()`` wrote to RDB."""
    cls = _BY_TAG.get(bytes(chunks[0]) if chunks else None)
    if cls is None:
        raise ValueError("unknown redis-llm value in RDB")
    return cls.restore(encver, chunks)
