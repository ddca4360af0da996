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


def read_referenced(ctx: int, key: bytes, cls: type, what: str, owner: bytes | None = None,
                    write: bool = False):
    """The value at a key another value names (an app's LLM or vector store).

    Raises an ERR naming the key when it is missing or holds anything else.
    With ``owner`` (the key of the value naming it, when a command starts)
    it also checks what Redis cannot, since the key is not in the command:
    in a cluster, that both keys share a hash slot; and that the calling ACL
    user may read the key (and write it, with ``write``): NOPERM if not."""
    if owner is not None:
        _check_reference(ctx, key, owner, what, write)
    value = shim.key_get(ctx, key)
    if type(value) is cls:
        return value
    if value is None:
        raise LLMError(f"{what} key {_name(key)} does not exist")
    raise LLMError(f"key {_name(key)} does not hold {what}")


def _name(key: bytes) -> str:
    return repr(key[:60].decode("utf-8", "replace"))


# Context flag of the module API: the server runs in cluster mode.
_CTX_CLUSTER = 1 << 5
# Key-spec flags that ACL checks read: ACCESS needs read, UPDATE/INSERT write.
_ACL_READ, _ACL_WRITE = 1 << 4, (1 << 5) | (1 << 6)


def scan(ctx: int) -> list[tuple[bytes, object]]:
    """Every (key, value) of the module's types in the selected database:
    a full pass over the keyspace, like KEYS."""
    return shim.scan(ctx)


def read_permission(ctx: int):
    """A function telling whether the calling ACL user may read a key
    (always true with no client): the user is looked up once."""
    user = shim.user(ctx)
    if user is None:
        return lambda key: True
    return lambda key: shim.acl_check(user, key, _ACL_READ)


def _check_reference(ctx: int, key: bytes, owner: bytes, what: str, write: bool) -> None:
    if shim.context_flags(ctx) & _CTX_CLUSTER and key_slot(key) != key_slot(owner):
        raise LLMError(f"{what} key {_name(key)} is in hash slot {key_slot(key)}, but "
                       f"{_name(owner)} is in slot {key_slot(owner)}: in a cluster they must share "
                       "a slot; give both a hash tag, e.g. {tenant}:app and {tenant}:llm")
    user = shim.user(ctx)
    if user is None:  # no client: an AOF replay or a master's stream
        return
    flags = _ACL_READ | (_ACL_WRITE if write else 0)
    if not shim.acl_check(user, key, flags):
        access = "read and write" if write else "read"
        raise LLMError(f"user {_name(user)} may not {access} {what} key {_name(key)} that "
                       f"{_name(owner)} uses", code="NOPERM")


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
        table.append(crc)
    return table


_CRC16 = _crc16_table()


def key_slot(key: bytes) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16 of its hash tag, if any, mod 16384)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    crc = 0
    for byte in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc % 16384


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


def block(ctx: int) -> int:
    """Block the client running this command until unblock(); returns the handle."""
    return shim.block(ctx)


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
