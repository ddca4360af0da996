"""The Python half of the module: what the C shim in redis-server calls.

``load`` reads the module arguments and returns the data types and commands
to register; ``dispatch`` runs one command and returns its reply as Python
values (bytes, int, float, str for a status, list, None, an LLMError for an
error reply, or keys.BLOCKED when a worker will reply); ``finish`` completes
a blocked command; ``restore`` rebuilds a value saved in an RDB file.
"""

import sys
import traceback
from types import SimpleNamespace

from redis_llm import keys, pool
from redis_llm.commands import COMMANDS, COMMANDS_BY_NAME
from redis_llm.config import ModuleConfig
from redis_llm.errors import LLMError
from redis_llm.store import ENCODING_VERSION as STORE_ENCODING, VectorStore

# Module data types: (class, 9-character Redis type name, encoding version).
# Their order is the shim's type table: never reorder, only append.
DATA_TYPES = [(VectorStore, "llm-store", STORE_ENCODING)]
_BY_TAG = {cls.type_tag: cls for cls, _, _ in DATA_TYPES}

config = ModuleConfig()


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
    return SimpleNamespace(
        types=[(name, encver) for _, name, encver in DATA_TYPES],
        commands=[c.registration() for c in COMMANDS if config.debug_commands or not c.debug],
    )


def dispatch(ctx: int, argv: tuple[bytes, ...]):
    """Run one LLM.* command; returns its reply, or keys.BLOCKED when a worker will."""
    try:
        command = COMMANDS_BY_NAME[argv[0].lower()]
        return command.handler(ctx, command.syntax.parse(argv[1:]))
    except Exception as exc:
        return error_reply(exc, argv[0])


def finish(ctx: int, done):
    """Complete a blocked command on Redis' main thread: ``done`` is the
    callable its job returned (see redis_llm.pool)."""
    try:
        return done(ctx)
    except Exception as exc:
        return error_reply(exc, b"a blocked command")


def error_reply(exc: Exception, what: bytes) -> LLMError:
    """The one place where exceptions become error replies."""
    if isinstance(exc, LLMError):
        return exc
    # A bug: keep the server up and say where to look.
    keys.log("warning", f"{what.decode(errors='replace')} failed:\n{traceback.format_exc()}")
    return LLMError(f"internal error ({type(exc).__name__}), see the server log")


def restore(encver: int, chunks: list[memoryview]):
    """Rebuild a value from the chunks its ``dump()`` wrote to RDB."""
    cls = _BY_TAG.get(bytes(chunks[0]) if chunks else None)
    if cls is None:
        raise ValueError("unknown redis-llm value in RDB")
    return cls.restore(encver, chunks)
