"""The LLM.* commands: one table, and a handler per command.

Each entry of ``COMMANDS`` names the command, its handler, its Redis flags,
its arity, its key-specs (for cluster routing and ACL key patterns) and its
syntax. The C shim registers exactly these, and ``bridge.dispatch`` parses a
call with its syntax before the handler sees it.
"""

import json
import threading
import time
from dataclasses import dataclass
from typing import Callable

from redis_llm import keys, pool
from redis_llm.errors import LLMError
from redis_llm.parsing import (Args, Option, Syntax, choice, decimal, embedding_blob, embedding_text,
                               format_distance, format_vector, integer, json_object, json_value,
                               shown, uint64)
from redis_llm.store import StoreParams, VectorStore

# Key-spec flags of the module API (RedisModule_SetCommandInfo).
KEY_RO, KEY_RW, KEY_OW, KEY_RM = 1 << 0, 1 << 1, 1 << 2, 1 << 3
KEY_ACCESS, KEY_UPDATE, KEY_INSERT, KEY_DELETE = 1 << 4, 1 << 5, 1 << 6, 1 << 7


@dataclass(frozen=True)
class KeySpec:
    """Where a command's key is: at ``index``, or right after ``keyword``."""

    flags: int
    index: int = 1
    keyword: str | None = None

    def as_tuple(self) -> tuple:
        # (flags, begin index, begin keyword, keyword search start, lastkey, keystep, limit)
        return (self.flags, self.index, self.keyword, 2, 0, 1, 0)


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable[[int, Args], object]
    flags: str
    arity: int
    key_specs: tuple[KeySpec, ...]
    syntax: Syntax
    summary: str
    complexity: str = "O(1)"
    since: str = "0.1.0"
    debug: bool = False  # registered only with the DEBUG_COMMANDS module argument

    def registration(self) -> tuple:
        """What the C shim needs to register this command."""
        return (self.name.lower(), self.flags, self.arity, self.summary, self.since,
                self.complexity, tuple(spec.as_tuple() for spec in self.key_specs))


# ---- vector stores ----------------------------------------------------------

def create_vector_store(ctx: int, args: Args):
    params = StoreParams.from_json(args.params if args.params is not None else {})
    existing = keys.read(ctx, args.key, VectorStore)
    if (args.nx and existing is not None) or (args.xx and existing is None):
        return 0
    keys.write(ctx, args.key, VectorStore(params, llm=args.llm))
    keys.replicate_verbatim(ctx)
    keys.notify(ctx, b"llm.create-vector-store", args.key)
    return 1


def add(ctx: int, args: Args):
    store = keys.read(ctx, args.key, VectorStore)
    if store is None:
        raise LLMError(f"no vector store at key {shown(args.key)}")
    vector = _query_vector(store, args, what="data")
    item_id = args.id if args.id is not None else store.peek_id()
    # Replicas and the AOF get the resolved id and embedding, never a request
    # they would have to compute again. Built first: nothing may fail after
    # the store has changed.
    command = [args.key, b"--ID", b"%d" % item_id, b"--EMBEDDING-BLOB", vector.astype("<f4").tobytes()]
    if args.meta is not None:
        command += [b"--META", _dump_json(args.meta)]
    store.add(vector, args.data, args.meta, item_id)
    keys.replicate(ctx, b"LLM.ADD", command + [args.data])
    keys.notify(ctx, b"llm.add", args.key)
    return item_id


def get(ctx: int, args: Args):
    store = keys.read(ctx, args.key, VectorStore)
    item = store.get(args.id) if store is not None else None
    if item is None:
        return None
    data, vector, meta = item
    reply = [data, format_vector(vector)]
    if meta is not None:
        reply.append(_dump_json(meta))
    return reply


def rem(ctx: int, args: Args):
    store = keys.read(ctx, args.key, VectorStore)
    if store is None or not store.remove(args.id):
        return 0
    keys.replicate_verbatim(ctx)
    keys.notify(ctx, b"llm.rem", args.key)
    return 1


def size(ctx: int, args: Args):
    store = keys.read(ctx, args.key, VectorStore)
    return len(store) if store is not None else 0


def knn(ctx: int, args: Args):
    store = keys.read(ctx, args.key, VectorStore)
    if store is None or not len(store):
        return []
    vector = _query_vector(store, args, what="query")
    neighbours = store.knn(vector, args.k, ef=args.ef, where=args.filter)
    if not args.withdata:
        return [[item_id, format_distance(distance)] for item_id, distance in neighbours]
    reply = []
    for item_id, distance in neighbours:
        data, meta = store.item(item_id)
        reply.append([item_id, format_distance(distance), data,
                      _dump_json(meta) if meta is not None else None])
    return reply


def _query_vector(store: VectorStore, args: Args, what: str):
    vector = args.embedding if args.embedding is not None else args.embedding_blob
    if vector is not None:
        return vector
    if what == "query" and args.query is None:
        raise LLMError("give --EMBEDDING, --EMBEDDING-BLOB or a query text")
    if store.llm is None:
        raise LLMError(f"no --EMBEDDING given and the vector store has no LLM to embed the {what}")
    raise LLMError(f"no --EMBEDDING given: embedding the {what} with LLM "
                   f"{shown(store.llm)} is not supported yet")


def _dump_json(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# ---- debugging (tests only) -------------------------------------------------

def debug(ctx: int, args: Args):
    """Testing aids. SPIN: keep --THREADS Python threads busy in the interpreter
    for --SECONDS. SLEEP: block this client while a worker sleeps --SECONDS
    (--TIMEOUT ms gives nil at the deadline). RAISE: fail unexpectedly."""
    if args.subcommand == "raise":
        raise RuntimeError("LLM.DEBUG RAISE")
    if args.subcommand == "sleep":
        def job():
            time.sleep(args.seconds)
            return lambda ctx: "OK"
        pool.workers.run(ctx, job, args.timeout)
        return keys.BLOCKED
    deadline = time.monotonic() + args.seconds

    def spin():
        n = 0
        while time.monotonic() < deadline:
            n += 1

    for _ in range(args.threads):
        threading.Thread(target=spin, name="llm-debug-spin", daemon=True).start()
    return "OK"


# ---- the table --------------------------------------------------------------

_EMBEDDING = (Option("--EMBEDDING", embedding_text), Option("--EMBEDDING-BLOB", embedding_blob))
_KEY = (("key", None),)
_KEY_ID = (("key", None), ("id", uint64))

COMMANDS = [
    Command("LLM.CREATE-VECTOR-STORE", create_vector_store, "write deny-oom", -2,
            (KeySpec(KEY_OW | KEY_UPDATE), KeySpec(KEY_RO, keyword="--LLM")),
            Syntax(_KEY, [Option("--NX"), Option("--XX"), Option("--TYPE", choice("hnsw")),
                          Option("--LLM", bytes), Option("--PARAMS", json_value)],
                   exclusive=[("--NX", "--XX")]),
            "Create (or with --XX re-create, emptied) an HNSW vector store"),
    Command("LLM.ADD", add, "write deny-oom", -3, (KeySpec(KEY_RW | KEY_UPDATE),),
            Syntax(_KEY, [Option("--ID", uint64), *_EMBEDDING, Option("--META", json_object)],
                   trailing="required", exclusive=[("--EMBEDDING", "--EMBEDDING-BLOB")]),
            "Add an item (data, embedding, meta) to a vector store; returns its id",
            complexity="O(log N)"),
    Command("LLM.GET", get, "readonly", 3, (KeySpec(KEY_RO | KEY_ACCESS),), Syntax(_KEY_ID),
            "Get the data, embedding and meta of an item"),
    Command("LLM.REM", rem, "write", 3, (KeySpec(KEY_RW | KEY_DELETE),), Syntax(_KEY_ID),
            "Remove an item from a vector store", complexity="O(log N)"),
    Command("LLM.SIZE", size, "readonly fast", 2, (KeySpec(KEY_RO),), Syntax(_KEY),
            "Count the items of a vector store"),
    Command("LLM.KNN", knn, "readonly", -2, (KeySpec(KEY_RO | KEY_ACCESS),),
            Syntax(_KEY, [Option("--K", integer(1, 10000), default=10), *_EMBEDDING,
                          Option("--EF", integer(1, 100000)), Option("--FILTER", json_object),
                          Option("--WITHDATA")],
                   trailing="optional", trailing_name="query",
                   exclusive=[("--EMBEDDING", "--EMBEDDING-BLOB")]),
            "Find the K items nearest to an embedding", complexity="O(log N)"),
    Command("LLM.DEBUG", debug, "admin", -2, (),
            Syntax((("subcommand", choice("spin", "sleep", "raise")),),
                   [Option("--THREADS", integer(1, 64), default=1),
                    Option("--SECONDS", decimal(0, 3600), default=1),
                    Option("--TIMEOUT", integer(0, 2**31 - 1), default=0)]),
            "Testing aids: SPIN --THREADS n --SECONDS s | SLEEP --SECONDS s [--TIMEOUT ms] | RAISE",
            debug=True),
]

COMMANDS_BY_NAME = {command.name.lower().encode(): command for command in COMMANDS}
