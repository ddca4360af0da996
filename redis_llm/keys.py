"""Keys, replication and the Redis log, for code running inside redis-server.

Thin wrappers over ``_redis_llm_shim``, the built-in module of the C shim.
``ctx`` is the Redis module context of the command being run.
"""

import _redis_llm_shim as shim

from redis_llm.errors import LLMError, WrongTypeError

# Filled by bridge.load: the Python class of each module data type -> its
# index in the shim's type table.
TYPE_INDEX: dict[type, int] = {}


def read(ctx: int, key: bytes, cls: type):
    """The value of type ``cls`` at ``key``, None when the key is missing.

    Raises WrongTypeError for a key holding anything else.
    """
    value = shim.key_get(ctx, key)
    if value is None or type(value) is cls:
        return value
    raise WrongTypeError()


def read_referenced(ctx: int, key: bytes, cls: type, what: str):
    """The value at a key another value names (an app's LLM or vector store).

    Raises an ERR naming the key when it is missing or holds anything else."""
    value = shim.key_get(ctx, key)
    if type(value) is cls:
        return value
    name = repr(key[:60].decode("utf-8", "replace"))
    if value is None:
        raise LLMError(f"{what} key {name} does not exist")
    raise LLMError(f"key {name} does not hold {what}")


def write(ctx: int, key: bytes, value) -> None:
    """Store ``value`` (an instance of a module data type) at ``key``."""
    shim.key_set(ctx, key, TYPE_INDEX[type(value)], value)


def notify(ctx: int, event: bytes, key: bytes) -> None:
    """Tell WATCH, client tracking and keyspace notifications that ``key`` changed."""
    shim.notify(ctx, event, key)


def replicate(ctx: int, command: bytes, args: list[bytes]) -> None:
    """Propagate ``command args...`` to replicas and the AOF."""
    shim.replicate(ctx, command, args)


def replicate_verbatim(ctx: int) -> None:
    """Propagate the command being run exactly as the client sent it."""
    shim.replicate_verbatim(ctx)


def context_flags(ctx: int) -> int:
    """RedisModule_GetContextFlags: MULTI, Lua, replica, loading, ..."""
    return shim.context_flags(ctx)


# What a handler returns when its client is blocked: the reply comes later.
BLOCKED = Ellipsis


def block(ctx: int, timeout_ms: int) -> int:
    """Block the client running this command; returns the handle for unblock()."""
    return shim.block(ctx, timeout_ms)


def unblock(handle: int, reply) -> None:
    """From any thread: Redis' main thread sends ``reply`` to the blocked client."""
    shim.unblock(handle, reply)


def locked(handle: int, db: int, fn):
    """From a worker thread: ``fn(ctx)`` under Redis' lock, with a context on
    the blocked client's database (valid even after the client timed out or
    disconnected), or on database ``db`` when ``handle`` is 0 (no client
    waits). Returns what ``fn`` returns."""
    return shim.locked(handle, db, fn)


def selected_db(ctx: int) -> int:
    return shim.db(ctx)


def current_user(ctx: int) -> bytes:
    """The ACL user running the command."""
    return shim.user(ctx) or b"default"


def redact(ctx: int, argv: tuple[bytes, ...], options: tuple[bytes, ...]) -> None:
    """Hide the values of ``options`` (upper case) in ``argv`` from SLOWLOG,
    MONITOR and the log: they may carry secrets."""
    for pos in range(2, len(argv) - 1):
        if argv[pos].upper() in options:
            shim.redact(ctx, pos + 1)


# Redis cuts a log line at 1024 bytes.
_LOG_LINE = 1000


def log(level: str, message: str) -> None:
    """Write to the Redis log; level is debug, verbose, notice or warning.
    Long or multi-line messages become several log lines."""
    for line in message.splitlines() or [""]:
        for start in range(0, max(len(line), 1), _LOG_LINE):
            shim.log(level, line[start:start + _LOG_LINE])
