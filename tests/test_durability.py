"""Durability: vector stores survive every way Redis saves, copies and frees values.

Each test fills real redis-server processes with the same representative data
(``fill``), takes a ``snapshot`` of everything a client can observe (sizes,
every item, KNN answers, digests), puts the data through one path (DEBUG
RELOAD, RDB, AOF, AOF rewrite, replication, DUMP/RESTORE) and checks that
nothing a client sees changed. The id the next generated ``LLM.ADD`` returns
is compared with a reference server that holds the same data and went
through nothing (``probe_next_ids`` adds to the stores, so it runs last).

``tests/test_fork_safety.py`` reuses ``fill``, ``snapshot`` and the waits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
from dataclasses import dataclass, field

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from helpers import wait_for

DIM = 16
MAX_ID = 2**64 - 1
COLORS = ("red", "green", "blue")
STORE_TYPE = b"llm-store"


# ---- a model of what was written ------------------------------------------------

@dataclass
class Item:
    data: bytes
    vector: np.ndarray          # float32, as given to LLM.ADD
    meta: dict | None


@dataclass
class Store:
    metric: str = "l2"
    items: dict[int, Item] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)     # ids once added, now gone


@dataclass
class Model:
    stores: dict[bytes, Store] = field(default_factory=dict)
    strings: dict[bytes, bytes] = field(default_factory=dict)

    def renamed(self, suffix: bytes) -> "Model":
        """The same stores under ``key + suffix`` (for RESTORE copies)."""
        return Model({key + suffix: store for key, store in self.stores.items()}, {})


def blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def text(vector: np.ndarray) -> str:
    """--EMBEDDING form: shortest decimals that round-trip each float32."""
    return ",".join(str(x) for x in np.asarray(vector, dtype=np.float32))


def as_id(reply) -> int:
    """An id from a reply: an integer, or a bulk string above 2**63 - 1."""
    return int(reply)


class Writer:
    """Runs writes on a client and records them in a Model."""

    def __init__(self, client: redis.Redis, model: Model | None = None):
        self.client = client
        self.model = model if model is not None else Model()

    def create(self, key: bytes, *options, metric: str = "l2") -> None:
        assert self.client.execute_command("LLM.CREATE-VECTOR-STORE", key, *options) == 1
        self.model.stores[key] = Store(metric)

    def add(self, key: bytes, vector: np.ndarray, data: bytes, id: int | None = None,
            meta: dict | None = None, as_text: bool = False) -> int:
        vector = np.asarray(vector, dtype=np.float32)
        args = [key]
        if id is not None:
            args += ["--ID", id]
        args += ["--EMBEDDING", text(vector)] if as_text else ["--EMBEDDING-BLOB", blob(vector)]
        if meta is not None:
            args += ["--META", json.dumps(meta)]
        args.append(data)
        got = as_id(self.client.execute_command("LLM.ADD", *args))
        if id is not None:
            assert got == id
        store = self.model.stores[key]
        store.items[got] = Item(data, vector, meta)
        store.removed.discard(got)
        return got

    def rem(self, key: bytes, id: int) -> None:
        store = self.model.stores[key]
        live = id in store.items
        assert self.client.execute_command("LLM.REM", key, id) == int(live)
        if live:
            del store.items[id]
            store.removed.add(id)

    def set(self, key: bytes, value: bytes) -> None:
        assert self.client.set(key, value)
        self.model.strings[key] = value


def fill(client: redis.Redis, seed: int = 1234) -> Model:
    """A representative mix of stores; deterministic, so equal on every server."""
    rng = np.random.default_rng(seed)
    w = Writer(client)

    def v(dim: int = DIM) -> np.ndarray:
        return rng.standard_normal(dim).astype(np.float32)

    def meta(i: int) -> dict:
        return {"color": COLORS[i % 3], "n": i, "even": i % 2 == 0}

    # L2 (default metric, dimension fixed by the first vector, default params).
    key = b"vs:l2"
    w.create(key)
    generated = [w.add(key, v(), b"gen-%d" % i, meta=meta(i) if i % 3 else None) for i in range(150)]
    assert generated == list(range(1, 151))
    for i in range(60):                            # explicit ids, far from the generated ones
        w.add(key, v(), b"explicit-%d" % i, id=10_000 + 7 * i,
              meta={"color": COLORS[i % 3], "even": i % 2 == 0, "tags": ["a", i],
                    "nested": {"x": i, "y": [1.5, None, True]}, "text": "ünïcødé € 日本"}
              if i % 2 else None)
    for id in (0, 2**63 - 1, 2**63, MAX_ID - 1, MAX_ID):    # the edges of uint64
        w.add(key, v(), b"edge-%d" % id, id=id, meta={"color": "red", "edge": True})
    for data in (bytes(range(256)), b"", b"\x00" * 64, b"\r\n*3\r\n$7\r\nLLM.ADD\r\n",
                 b"--META", b"--EMBEDDING 1,2,3", "ünïcødé".encode(), rng.bytes(20_000)):
        w.add(key, v(), data, meta={"color": "green", "binary": True})
    for id in range(5, 16):                        # overwrite: new vector, data, meta (or none)
        w.add(key, v(), b"overwritten-%d" % id, id=id,
              meta={"color": "blue", "even": id % 2 == 0, "v": 2} if id % 2 else None,
              as_text=id % 3 == 0)
    w.add(key, v(), b"edge-max-overwritten", id=MAX_ID, as_text=True)
    for id in [*range(20, 41), 10_000 + 7 * 3, 10_000 + 7 * 4, MAX_ID - 1, 158, 999_999]:
        w.rem(key, id)                             # 158: the highest generated id so far
    # An explicit id just ahead of the counter (159), passed over by generated adds, then removed.
    w.add(key, v(), b"ahead", id=160)
    assert w.add(key, v(), b"after-ahead-1") == 159
    assert w.add(key, v(), b"after-ahead-2") == 161
    w.rem(key, 160)
    for i in range(10):
        w.add(key, v(), b"late-%d" % i, meta=meta(i))

    # Inner product, and cosine with vectors of very different norms.
    key = b"vs:ip"
    w.create(key, "--PARAMS", '{"metric": "ip"}', metric="ip")
    for i in range(100):
        w.add(key, v() * 0.25, b"ip-%d" % i, meta=meta(i))
    for id in range(50, 60):
        w.rem(key, id)
    key = b"vs:cos"
    w.create(key, "--PARAMS", '{"metric": "cosine", "m": 8}', metric="cosine")
    for i in range(100):
        w.add(key, v() * np.float32(10.0 ** rng.uniform(-2, 2)), b"cos-%d" % i,
              meta=meta(i) if i % 4 else None, as_text=i % 5 == 0)
    for id in (3, 33, 66, 99):
        w.rem(key, id)
    w.add(key, v() * 7, b"cos-overwritten", id=10, meta={"color": "red", "even": True})

    # A store with an LLM and custom params, grown past its initial capacity.
    key = b"vs:llm"
    w.create(key, "--LLM", b"llm:cfg", "--TYPE", "hnsw", "--PARAMS",
             json.dumps({"m": 12, "ef_construction": 64, "ef": 40, "max_elements": 20,
                         "dim": DIM, "metric": "l2"}))
    for i in range(60):
        w.add(key, v(), b"llm-%d" % i, meta=meta(i))
    for id in range(1, 61, 7):
        w.rem(key, id)

    # Edge stores: never used; emptied (its dimension is fixed); a binary key name.
    w.create(b"vs:empty")
    key = b"vs:emptied"
    w.create(key)
    for i in range(5):
        w.add(key, v(), b"gone-%d" % i)
    for id in range(1, 6):
        w.rem(key, id)
    key = b"vs:\x00bin\xff\r\n"
    w.create(key, "--PARAMS", '{"ef_construction": 20, "m": 4}')
    for i in range(20):
        w.add(key, v(), bytes([i]) * i, id=i * 1000, meta={"color": COLORS[i % 3]})

    w.set(b"plain", bytes(range(256)) * 4)
    return w.model


# ---- what a client can observe ---------------------------------------------------

QUERY_RNG_SEED = 99
N_QUERIES = 20


def queries() -> list[list]:
    """The KNN arguments after the key: fixed queries, with and without options."""
    rng = np.random.default_rng(QUERY_RNG_SEED)
    out = []
    for i in range(N_QUERIES):
        q = rng.standard_normal(DIM).astype(np.float32)
        vec = ["--EMBEDDING", text(q)] if i % 5 == 4 else ["--EMBEDDING-BLOB", blob(q)]
        variant = [
            ["--K", 10],
            ["--K", 5, "--WITHDATA"],
            ["--K", 7, "--FILTER", '{"color": "red"}'],
            ["--K", 3, "--FILTER", '{"color": "blue", "even": true}', "--WITHDATA"],
            ["--K", 50, "--EF", 100],
        ][i % 5]
        out.append(vec + variant)
    return out


QUERIES = queries()


def snapshot(client: redis.Redis, model: Model) -> dict:
    """Everything observable about the model's keys, as raw replies."""
    pipe = client.pipeline(transaction=False)
    plan = []
    for key in sorted(model.stores):
        store = model.stores[key]
        ids = sorted(store.items.keys() | store.removed)
        pipe.type(key)
        pipe.execute_command("LLM.SIZE", key)
        for id in ids:
            pipe.execute_command("LLM.GET", key, id)
        for q in QUERIES:
            pipe.execute_command("LLM.KNN", key, *q)
        pipe.execute_command("DEBUG", "DIGEST-VALUE", key)
        plan.append((key, ids))
    for key in sorted(model.strings):
        pipe.get(key)
    pipe.dbsize()
    replies = iter(pipe.execute())
    snap = {}
    for key, ids in plan:
        snap[key] = {
            "type": next(replies),
            "size": next(replies),
            "get": {id: next(replies) for id in ids},
            "knn": [next(replies) for _ in QUERIES],
            "digest": next(replies),
        }
    for key in sorted(model.strings):
        snap[key] = next(replies)
    snap["dbsize"] = next(replies)
    return snap


def differences(got, expected, path=(), limit: int = 8) -> list[str]:
    """Where two snapshots differ, as readable paths (for assertion messages)."""
    if isinstance(got, dict) and isinstance(expected, dict):
        out = []
        for k in sorted(got.keys() | expected.keys(), key=repr):
            if k not in got or k not in expected:
                out.append(f"{path + (k,)}: only in {'got' if k in got else 'expected'}")
            else:
                out += differences(got[k], expected[k], path + (k,), limit)
            if len(out) >= limit:
                break
        return out[:limit]
    if isinstance(got, list) and isinstance(expected, list) and len(got) == len(expected):
        out = []
        for i, (a, b) in enumerate(zip(got, expected)):
            out += differences(a, b, path + (i,), limit)
            if len(out) >= limit:
                break
        return out[:limit]
    return [] if got == expected else [f"{path}: got {got!r:.300} expected {expected!r:.300}"]


def assert_same(got: dict, expected: dict) -> None:
    diff = differences(got, expected)
    assert not diff, "snapshots differ:\n" + "\n".join(diff)


def check_snapshot(snap: dict, model: Model, whole_db: bool = True) -> None:
    """The snapshot shows what the model wrote (it is not vacuous); with whole_db,
    the database holds nothing else."""
    digests = []
    for key, store in model.stores.items():
        s = snap[key]
        assert s["type"] == STORE_TYPE, key
        assert s["size"] == len(store.items), key
        for id in store.removed:
            assert s["get"][id] is None, (key, id)
        for id, item in store.items.items():
            reply = s["get"][id]
            assert reply is not None, (key, id)
            data, vector, *meta = reply
            assert data == item.data, (key, id)
            got = np.array(vector.split(b","), dtype=np.float32)
            if store.metric == "cosine":
                unit = item.vector / np.linalg.norm(item.vector.astype(np.float64))
                np.testing.assert_allclose(got, unit, rtol=1e-5, atol=1e-6)
            else:
                assert np.array_equal(got, item.vector), (key, id)
            assert (json.loads(meta[0]) if meta else None) == item.meta, (key, id)
        for q, answer in zip(QUERIES, s["knn"]):
            k = q[q.index("--K") + 1]
            where = json.loads(q[q.index("--FILTER") + 1]) if "--FILTER" in q else {}
            matching = [id for id, item in store.items.items()
                        if not where or item.meta is not None
                        and all(item.meta.get(f, KeyError) == x for f, x in where.items())]
            assert len(answer) == min(k, len(matching)), (key, q)
            ids = [as_id(entry[0]) for entry in answer]
            assert len(set(ids)) == len(ids) and set(ids) <= set(matching), (key, q)
            distances = [float(entry[1]) for entry in answer]
            assert distances == sorted(distances), (key, q)
            if "--WITHDATA" in q:
                for entry, id in zip(answer, ids):
                    assert entry[2] == store.items[id].data
        if store.items:
            digests.append(s["digest"])
    assert len(set(map(tuple, digests))) == len(digests), "equal digests for different stores"
    for key, value in model.strings.items():
        assert snap[key] == value
    if whole_db:
        assert snap["dbsize"] == len(model.stores) + len(model.strings)


def probe_next_ids(client: redis.Redis, model: Model) -> dict[bytes, int]:
    """Add an item without --ID to every store: the ids generated. Changes the stores.

    Each generated id must be new: no live item is overwritten.
    """
    rng = np.random.default_rng(5)
    ids = {}
    for key in sorted(model.stores):
        store = model.stores[key]
        new = as_id(client.execute_command("LLM.ADD", key, "--EMBEDDING-BLOB",
                                           blob(rng.standard_normal(DIM)), b"probe"))
        assert new not in store.items, f"{key!r}: generated id {new} overwrote a live item"
        assert client.execute_command("LLM.SIZE", key) == len(store.items) + 1
        ids[key] = new
    return ids


# ---- servers ---------------------------------------------------------------------

def children_of(pid: int) -> list[int]:
    """The child processes (forks) of a process."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return children


@pytest.fixture
def make_server(make_server):
    """conftest's make_server, which also ends the servers' forked children at teardown:
    a child stuck on the GIL would outlive its killed parent."""
    started = []

    def make(*args, **kwargs):
        srv = make_server(*args, **kwargs)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        kill_children(srv)


def kill_children(srv) -> None:
    """End the forked children of a server this test started."""
    if srv.alive():
        for child in children_of(srv.process.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- waiting on the server -------------------------------------------------------

def restart(srv, save: bool = False):
    """srv.restart(save), without redis-py's reconnection retries after SHUTDOWN (~4 s)."""
    try:
        srv.client(retry=Retry(NoBackoff(), 0)).shutdown(save=save, nosave=not save)
    except redis.ConnectionError:
        pass
    srv.process.wait(timeout=30)
    return srv.start()


def persistence(client: redis.Redis) -> dict:
    return client.info("persistence")


def wait_aof_rewrite_done(client: redis.Redis, timeout: float = 20) -> None:
    def done():
        info = persistence(client)
        return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
    wait_for(done, timeout, "the AOF rewrite to finish")
    assert persistence(client)["aof_last_bgrewrite_status"] == "ok"


def wait_replica_synced(master: redis.Redis, replica: redis.Redis, timeout: float = 20) -> None:
    """The replica's link is up and it has acknowledged everything the master wrote."""
    def up():
        info = replica.info("replication")
        return info["master_link_status"] == "up" and not info["master_sync_in_progress"]
    wait_for(up, timeout, "the replica's link to come up")
    assert master.execute_command("WAIT", 1, 5000) == 1
    wait_for(lambda: replica.info("replication")["slave_repl_offset"]
             == master.info("replication")["master_repl_offset"], 5, "matching offsets")


# Where the shim and bridge log Python errors (shim_log_python_error, dispatch).
_PY_ERROR = re.compile(r"(Traceback|internal error|malformed AOF command|cannot load a value"
                       r"|\b(dump|dump chunk|digest|memory_usage|aof_commands): )")


def assert_log_clean(srv) -> None:
    bad = [line for line in srv.log.splitlines() if _PY_ERROR.search(line)]
    assert not bad, "Python errors in the server log:\n" + "\n".join(bad)


def crash_lines(srv) -> str:
    """Why the server crashed, from its log."""
    return "\n".join(line for line in srv.log.splitlines()
                     if re.search(r"Guru Meditation|Internal error|crashed by signal|ASSERTION", line))


def aof_files(srv) -> tuple[bytes, bytes]:
    """(base, incr) contents of the server's multi-part AOF."""
    aof_dir = srv.dir / "appendonlydir"
    base = b"".join(p.read_bytes() for p in sorted(aof_dir.glob("*.base.*")))
    incr = b"".join(p.read_bytes() for p in sorted(aof_dir.glob("*.incr.*")))
    return base, incr


# ---- 1. DEBUG RELOAD -------------------------------------------------------------

def test_debug_reload_keeps_every_store_and_the_id_counter(make_server, r):
    srv = make_server()
    client = srv.client()
    model = fill(client)
    reference = fill(r)
    before = snapshot(client, model)
    check_snapshot(before, model)
    assert_same(snapshot(r, reference), before)     # the fill is deterministic

    assert client.execute_command("DEBUG", "RELOAD") == b"OK"

    assert_same(snapshot(client, model), before)
    assert probe_next_ids(client, model) == probe_next_ids(r, reference)
    assert_log_clean(srv)


# ---- 2. RDB ----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["save-then-restart", "shutdown-save"])
def test_restart_from_rdb_keeps_every_store_and_the_id_counter(make_server, r, how):
    srv = make_server(config={"save": ""})
    client = srv.client()
    model = fill(client)
    reference = fill(r)
    before = snapshot(client, model)
    check_snapshot(before, model)

    if how == "save-then-restart":
        assert client.save()
        restart(srv)
    else:
        restart(srv, save=True)
    assert (srv.dir / "dump.rdb").exists()

    client = srv.client()
    assert persistence(client)["rdb_last_load_keys_loaded"] == before["dbsize"]
    assert_same(snapshot(client, model), before)
    assert probe_next_ids(client, model) == probe_next_ids(r, reference)
    assert_log_clean(srv)


# ---- 3. AOF: commands replayed ---------------------------------------------------

@pytest.mark.parametrize("preamble", ["no", "yes"])
def test_restart_from_aof_replays_the_logged_commands(make_server, preamble):
    srv = make_server(config={"appendonly": "yes", "aof-use-rdb-preamble": preamble})
    client = srv.client()
    wait_aof_rewrite_done(client)      # the initial base file
    model = fill(client)
    before = snapshot(client, model)
    check_snapshot(before, model)
    base, incr = aof_files(srv)
    assert b"LLM.ADD" not in base
    # Replication logs results: the resolved id and the embedding as bytes.
    assert b"--EMBEDDING-BLOB" in incr and b"$4\r\n--ID\r\n" in incr
    assert b"--EMBEDDING\r\n" not in incr

    restart(srv)
    assert not (srv.dir / "dump.rdb").exists()

    client = srv.client()
    assert_same(snapshot(client, model), before)
    probe_next_ids(client, model)      # generated ids do not collide with replayed ones
    assert_log_clean(srv)


# ---- 4. AOF rewrite --------------------------------------------------------------

@pytest.mark.parametrize("preamble", ["no", "yes"])
def test_bgrewriteaof_then_restart_keeps_every_store(make_server, r, preamble):
    srv = make_server(config={"appendonly": "yes", "aof-use-rdb-preamble": preamble})
    client = srv.client()
    wait_aof_rewrite_done(client)
    model = fill(client)
    reference = fill(r)
    rewrites = persistence(client)["aof_rewrites"]

    assert client.bgrewriteaof()
    wait_aof_rewrite_done(client)
    assert persistence(client)["aof_rewrites"] == rewrites + 1
    base, _ = aof_files(srv)
    if preamble == "yes":
        assert base.startswith(b"REDIS")
    else:
        # value.aof_commands(): the store as commands that rebuild it.
        assert not base.startswith(b"REDIS")
        assert b"LLM.CREATE-VECTOR-STORE" in base and b"LLM.ADD" in base
        assert b"--LLM" in base and b"llm:cfg" in base

    # Writes after the rewrite go to the new incremental file.
    rng = np.random.default_rng(77)
    for w in (Writer(client, model), Writer(r, reference)):
        w.add(b"vs:l2", rng.standard_normal(DIM), b"after-rewrite-1")
        w.add(b"vs:l2", rng.standard_normal(DIM), b"after-rewrite-2", id=7, meta={"color": "red"})
        w.rem(b"vs:ip", 1)
        w.add(b"vs:empty", rng.standard_normal(DIM), b"after-rewrite-3")
    before = snapshot(client, model)
    check_snapshot(before, model)

    restart(srv)
    client = srv.client()
    after = snapshot(client, model)
    assert_same(after, before)
    if preamble == "yes":      # the RDB form keeps the id counter
        assert probe_next_ids(client, model) == probe_next_ids(r, reference)
    else:                      # the command form may reuse removed ids (documented): never live ones
        probe_next_ids(client, model)
    assert_log_clean(srv)


def test_aof_rewrite_keeps_cosine_vectors_exact(make_server):
    srv = make_server(config={"appendonly": "yes", "aof-use-rdb-preamble": "no"})
    client = srv.client()
    wait_aof_rewrite_done(client)
    w = Writer(client)
    w.create(b"cos", "--PARAMS", '{"metric": "cosine"}', metric="cosine")
    rng = np.random.default_rng(8)
    for i in range(30):
        w.add(b"cos", rng.standard_normal(DIM) * 3, b"c%d" % i)
    before = snapshot(client, w.model)
    check_snapshot(before, w.model)
    assert client.bgrewriteaof()
    wait_aof_rewrite_done(client)
    restart(srv)
    assert_same(snapshot(srv.client(), w.model), before)


# ---- 5. replication --------------------------------------------------------------

def start_pair(make_server):
    master = make_server("master", config={"repl-diskless-sync-delay": "0"})
    replica = make_server("replica")
    return master, replica


def test_replica_full_sync_then_stream_holds_identical_stores(make_server):
    master, replica = start_pair(make_server)
    mc, rc = master.client(), replica.client()
    model = fill(mc)
    before = snapshot(mc, model)
    check_snapshot(before, model)
    full_syncs = mc.info("stats")["sync_full"]

    assert rc.replicaof("127.0.0.1", master.port)
    wait_replica_synced(mc, rc)
    assert mc.info("stats")["sync_full"] == full_syncs + 1
    assert_same(snapshot(rc, model), before)

    # Incremental writes reach the replica as commands with resolved ids.
    w = Writer(mc, model)
    rng = np.random.default_rng(3)
    generated = [w.add(b"vs:l2", rng.standard_normal(DIM), b"stream-%d" % i) for i in range(5)]
    generated.append(w.add(b"vs:l2", rng.standard_normal(DIM), b"stream-text",
                           meta={"color": "red", "even": False}, as_text=True))
    generated.append(w.add(b"vs:cos", rng.standard_normal(DIM) * 3, b"stream-cos", as_text=True))
    w.rem(b"vs:l2", generated[1])
    w.rem(b"vs:llm", 2)
    w.add(b"vs:l2", rng.standard_normal(DIM), b"stream-overwrite", id=10_000, meta={"color": "blue"})
    w.add(b"vs:l2", rng.standard_normal(DIM), b"stream-max", id=MAX_ID)
    assert mc.execute_command("LLM.CREATE-VECTOR-STORE", b"vs:ip", "--XX") == 1   # emptied
    model.stores[b"vs:ip"].removed |= model.stores[b"vs:ip"].items.keys()
    model.stores[b"vs:ip"].items.clear()
    w.add(b"vs:ip", rng.standard_normal(DIM), b"ip-after-xx", meta={"color": "red"})
    w.create(b"vs:new", "--PARAMS", '{"metric": "cosine"}', metric="cosine")
    pipe = mc.pipeline(transaction=True)          # a MULTI/EXEC reaches the replica whole
    tx_vectors = [rng.standard_normal(DIM).astype(np.float32) for _ in range(2)]
    for i, vector in enumerate(tx_vectors):
        pipe.execute_command("LLM.ADD", b"vs:new", "--EMBEDDING", text(vector), b"tx-%d" % i)
    tx_ids = [as_id(x) for x in pipe.execute()]
    assert tx_ids == [1, 2]
    for id, vector in zip(tx_ids, tx_vectors):
        model.stores[b"vs:new"].items[id] = Item(b"tx-%d" % (id - 1), vector, None)

    wait_replica_synced(mc, rc)
    after = snapshot(mc, model)
    check_snapshot(after, model)
    assert_same(snapshot(rc, model), after)
    assert rc.execute_command("DEBUG", "DIGEST") == mc.execute_command("DEBUG", "DIGEST")
    assert_log_clean(master)
    assert_log_clean(replica)


def test_replica_rejects_writes_with_readonly_and_stays_up(make_server):
    master, replica = start_pair(make_server)
    mc, rc = master.client(), replica.client()
    model = fill(mc)
    assert rc.replicaof("127.0.0.1", master.port)
    wait_replica_synced(mc, rc)
    before = snapshot(rc, model)

    for command in (["LLM.ADD", b"vs:l2", "--EMBEDDING", text(np.ones(DIM)), b"x"],
                    ["LLM.ADD", b"vs:l2", "--ID", 1, "--EMBEDDING-BLOB", blob(np.ones(DIM)), b"x"],
                    ["LLM.REM", b"vs:l2", 1],
                    ["LLM.CREATE-VECTOR-STORE", b"vs:l2"],
                    ["LLM.CREATE-VECTOR-STORE", b"vs:other", "--NX"]):
        with pytest.raises(redis.exceptions.ReadOnlyError):
            rc.execute_command(*command)

    assert replica.alive() and rc.ping()
    assert_same(snapshot(rc, model), before)
    assert rc.exists(b"vs:other") == 0
    assert_log_clean(replica)


def _counter_scenario(client: redis.Redis) -> None:
    """Generated adds pass over an explicit id that is then removed."""
    add = lambda *args: as_id(client.execute_command("LLM.ADD", b"vs", "--EMBEDDING", "1,2", *args))
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", b"vs") == 1
    assert add("--ID", 2, b"explicit") == 2
    assert add(b"a") == 1
    assert add(b"b") == 3          # 2 is live: skipped
    assert client.execute_command("LLM.REM", b"vs", 2) == 1


@pytest.mark.parametrize("replay", ["replica", "aof"])
def test_replayed_commands_reproduce_the_id_counter(make_server, replay):
    new = lambda c: as_id(c.execute_command("LLM.ADD", b"vs", "--EMBEDDING", "1,2", b"new"))
    if replay == "replica":
        master, replica = start_pair(make_server)
        mc, rc = master.client(), replica.client()
        assert rc.replicaof("127.0.0.1", master.port)
        wait_replica_synced(mc, rc)
        _counter_scenario(mc)
        wait_replica_synced(mc, rc)
        assert rc.replicaof("NO", "ONE")              # fail over to the replica
        assert new(mc) == 4
        assert new(rc) == 4
    else:
        srv = make_server(config={"appendonly": "yes"})
        wait_aof_rewrite_done(srv.client())
        _counter_scenario(srv.client())
        restart(srv)
        assert new(srv.client()) == 4


# ---- 6. MEMORY USAGE -------------------------------------------------------------

def test_memory_usage_grows_with_items_by_about_their_raw_size(r):
    """1000 items x 128 dims: each item adds between 1x and 3x its vector and data.

    The absolute size is dominated by the index the first add creates (hnswlib
    preallocates per-capacity arrays and 65536 label locks: ~8 MB at the default
    capacity), so the marginal cost is what tracks the items; the next test
    checks the absolute figure against the process' RSS.
    """
    dim, count, data_len = 128, 1000, 32
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", b"mem", "--PARAMS",
                             '{"ef_construction": 40}') == 1
    empty = r.memory_usage(b"mem")
    r.execute_command("LLM.ADD", b"mem", "--EMBEDDING-BLOB", blob(vectors[0]), b"x" * data_len)
    first = r.memory_usage(b"mem")
    sizes = []
    for start in range(1, count, 333):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + 333, count)):
            pipe.execute_command("LLM.ADD", b"mem", "--EMBEDDING-BLOB", blob(vectors[i]),
                                 b"%031d" % i + b"y")
        pipe.execute()
        sizes.append(r.memory_usage(b"mem"))
    assert r.execute_command("LLM.SIZE", b"mem") == count
    full = sizes[-1]

    raw_per_item = dim * 4 + data_len              # the vector as float32 and the data
    raw = count * raw_per_item
    assert empty < first < sizes[0] < sizes[1] < full
    # Each item costs at least its vector and data, and not much more (graph links, ids).
    per_item = (full - first) / (count - 1)
    assert raw_per_item <= per_item <= 3 * raw_per_item, per_item
    assert full >= raw


def _rss(client: redis.Redis) -> int:
    client.execute_command("MEMORY", "PURGE")
    return client.info("memory")["used_memory_rss"]


def test_memory_usage_of_a_big_store_is_near_the_process_rss_growth(make_server):
    """20k items x 128 dims: MEMORY USAGE within 0.67x-1.5x of what the process grew by."""
    srv = make_server()
    client = srv.client()
    dim, count = 128, 20_000
    rng = np.random.default_rng(12)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    # Warm up the code paths (imports, first allocations) in another store, then drop it.
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", b"warm", "--PARAMS",
                                  '{"max_elements": 10}') == 1
    for i in range(20):
        client.execute_command("LLM.ADD", b"warm", "--EMBEDDING-BLOB", blob(vectors[i]), b"w")
    client.execute_command("LLM.KNN", b"warm", "--EMBEDDING-BLOB", blob(vectors[0]))
    rss_before = _rss(client)

    assert client.execute_command("LLM.CREATE-VECTOR-STORE", b"big", "--PARAMS",
                                  '{"ef_construction": 32}') == 1
    for start in range(0, count, 500):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + 500):
            pipe.execute_command("LLM.ADD", b"big", "--EMBEDDING-BLOB", blob(vectors[i]),
                                 b"item-%08d" % i)
        pipe.execute()
    assert client.execute_command("LLM.SIZE", b"big") == count
    usage = client.memory_usage(b"big")
    growth = _rss(client) - rss_before
    assert count * dim * 4 < usage
    assert 0.67 <= usage / growth <= 1.5, (usage, growth)


# ---- 7. freeing ------------------------------------------------------------------

def _big_store(client: redis.Redis, key: bytes, count: int = 5_000, dim: int = 32) -> None:
    rng = np.random.default_rng(13)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", key, "--PARAMS",
                                  '{"ef_construction": 16, "m": 8}') == 1
    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + 1000):
            pipe.execute_command("LLM.ADD", key, "--EMBEDDING-BLOB", blob(vectors[i]),
                                 "--META", '{"i": %d}' % i, b"data-%d" % i)
        pipe.execute()
    assert client.execute_command("LLM.SIZE", key) == count


def _lazyfree(client: redis.Redis) -> tuple[int, int]:
    info = client.info("memory")
    return info["lazyfree_pending_objects"], info["lazyfreed_objects"]


def test_flushall_async_frees_big_stores_on_the_lazy_free_thread(make_server):
    srv = make_server()
    client = srv.client()
    rss = []
    for cycle in range(4):
        _big_store(client, b"big:1")
        _big_store(client, b"big:2", count=1_000)
        client.set(b"plain", b"x" * 1000)
        keys = client.dbsize()
        usage = client.memory_usage(b"big:1") + client.memory_usage(b"big:2")
        pending, freed = _lazyfree(client)
        assert pending == 0

        assert client.flushall(asynchronous=True)
        # The main thread runs Python while the lazy-free thread frees the old stores.
        assert client.execute_command("LLM.CREATE-VECTOR-STORE", b"big:1", "--PARAMS",
                                      '{"max_elements": 16}') == 1
        for i in range(100):
            assert client.execute_command("LLM.ADD", b"big:1", "--EMBEDDING", f"{i},1,2", b"new") == i + 1
        assert len(client.execute_command("LLM.KNN", b"big:1", "--EMBEDDING", "1,1,2")) == 10

        wait_for(lambda: _lazyfree(client) == (0, freed + keys), 20,
                 "the lazy-free thread to free every flushed key")
        assert srv.alive() and client.ping()
        assert client.dbsize() == 1 and client.execute_command("LLM.SIZE", b"big:1") == 100
        rss.append(_rss(client))
    # Freed stores give their memory back for reuse: a leak would add ~usage per
    # cycle. The first cycle warms malloc's arenas (the lazy-free thread gets
    # its own), so growth is judged from the second on.
    assert rss[3] - rss[1] < 0.5 * usage, (rss, usage)
    assert_log_clean(srv)


def test_unlink_and_del_free_stores_and_the_key_is_reusable(make_server):
    srv = make_server()
    client = srv.client()
    model = fill(client)
    rss = []
    for cycle in range(4):
        _big_store(client, b"big")
        usage = client.memory_usage(b"big")
        assert client.unlink(b"big") == 1
        assert client.exists(b"big") == 0
        assert client.execute_command("LLM.SIZE", b"big") == 0
        wait_for(lambda: _lazyfree(client)[0] == 0, 20, "pending lazy frees")
        rss.append(_rss(client))
    assert rss[3] - rss[1] < 0.5 * usage, (rss, usage)   # cycle 0 warms malloc's arenas

    assert client.delete(b"vs:l2") == 1
    assert client.exists(b"vs:l2") == 0
    assert client.execute_command("LLM.GET", b"vs:l2", 1) is None
    # The other stores were not touched.
    del model.stores[b"vs:l2"]
    check_snapshot(snapshot(client, model), model)

    for key in (b"big", b"vs:l2"):
        assert client.execute_command("LLM.CREATE-VECTOR-STORE", key, "--NX") == 1
        assert client.execute_command("LLM.ADD", key, "--EMBEDDING", "1,2,3", b"again") == 1
        assert client.execute_command("LLM.GET", key, 1) == [b"again", b"1.0,2.0,3.0"]
    assert srv.alive() and client.ping()
    assert_log_clean(srv)


# ---- 8. DUMP / RESTORE -----------------------------------------------------------

def test_dump_restore_gives_an_identical_store(r):
    model = fill(r)
    copies = model.renamed(b":copy")
    for key in model.stores:
        payload = r.dump(key)
        assert payload
        assert r.restore(key + b":copy", 0, payload) == b"OK"
    original = snapshot(r, model)
    copy = snapshot(r, copies)
    check_snapshot(original, model, whole_db=False)
    assert_same({key: copy[key + b":copy"] for key in model.stores},
                {key: original[key] for key in model.stores})
    # The copy carries the id counter too.
    copy_ids = probe_next_ids(r, copies)
    assert {key: copy_ids[key + b":copy"] for key in model.stores} == probe_next_ids(r, model)
    # RESTORE REPLACE over a store; without REPLACE an existing key is refused.
    payload = r.dump(b"vs:ip")
    assert r.restore(b"vs:cos", 0, payload, replace=True) == b"OK"
    assert r.execute_command("DEBUG", "DIGEST-VALUE", b"vs:cos") == \
        r.execute_command("DEBUG", "DIGEST-VALUE", b"vs:ip")
    with pytest.raises(redis.ResponseError, match="BUSYKEY"):
        r.restore(b"vs:l2", 0, payload)


def test_restore_refuses_a_payload_with_a_flipped_byte(server, r):
    model = fill(r)
    before = snapshot(r, model)
    payload = bytearray(r.dump(b"vs:l2"))
    middle = len(payload) // 2
    payload[middle] ^= 0xFF
    with pytest.raises(redis.ResponseError):
        r.restore(b"vs:l2:copy", 0, bytes(payload))
    assert server.alive() and r.ping()
    assert r.exists(b"vs:l2:copy") == 0
    assert_same(snapshot(r, model), before)


# Redis' CRC-64 (Jones polynomial, reflected, as in its crc64.c).
_CRC64_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x95AC9329AC4BC9B5 if _c & 1 else _c >> 1
    _CRC64_TABLE.append(_c)


def crc64(data: bytes) -> int:
    crc = 0
    table = _CRC64_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def with_valid_checksum(body: bytes, rdb_version: bytes) -> bytes:
    """A DUMP payload: serialized value, RDB version, CRC-64 of both."""
    return body + rdb_version + struct.pack("<Q", crc64(body + rdb_version))


def _small_store_payload(client: redis.Redis) -> tuple[bytes, bytes]:
    """(serialized value, RDB version) of a DUMP of a small store, strings uncompressed."""
    assert client.config_set("rdbcompression", "no")
    w = Writer(client)
    w.create(b"small", "--LLM", b"llm:x", "--PARAMS", '{"m": 4, "ef_construction": 8, "max_elements": 16}')
    rng = np.random.default_rng(21)
    for i in range(12):
        w.add(b"small", rng.standard_normal(4), b"d%d" % i, meta={"i": i} if i % 2 else None)
    w.rem(b"small", 5)
    payload = client.dump(b"small")
    body, version, checksum = payload[:-10], payload[-10:-8], payload[-8:]
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA
    assert struct.pack("<Q", crc64(body + version)) == checksum    # the helper is right
    return body, version


def _rdb_length(body: bytes, pos: int) -> tuple[int, int]:
    """An RDB length at pos: (value, position after it)."""
    first = body[pos]
    if first >> 6 == 0:
        return first & 0x3F, pos + 1
    if first >> 6 == 1:
        return ((first & 0x3F) << 8) | body[pos + 1], pos + 2
    if first == 0x80:
        return int.from_bytes(body[pos + 1:pos + 5], "big"), pos + 5
    if first == 0x81:
        return int.from_bytes(body[pos + 1:pos + 9], "big"), pos + 9
    raise ValueError(f"not a plain length at {pos}: {first:#x}")


def module_strings(body: bytes) -> list[tuple[int, int]]:
    """(start, end) of the bytes of every string a module value saved (uncompressed).

    The layout (rdb.c / module.c): RDB_TYPE_MODULE_2, the module type id, then
    opcode-tagged values (2 = unsigned, 5 = string) up to the EOF opcode 0.
    """
    assert body[0] == 7, "not a module value (RDB_TYPE_MODULE_2)"
    _, pos = _rdb_length(body, 1)
    spans = []
    while True:
        opcode, pos = _rdb_length(body, pos)
        if opcode == 0:
            break
        if opcode == 2:
            _, pos = _rdb_length(body, pos)
        elif opcode == 5:
            if body[pos] in (0xC0, 0xC1, 0xC2):       # a string saved as an integer
                pos += 1 + {0xC0: 1, 0xC1: 2, 0xC2: 4}[body[pos]]
                continue
            length, pos = _rdb_length(body, pos)
            spans.append((pos, pos + length))
            pos += length
        else:
            raise AssertionError(f"unexpected module opcode {opcode}")
    assert pos == len(body)
    return spans


def test_restore_of_a_store_with_corrupt_content_and_a_valid_checksum_fails_cleanly(make_server):
    """Bytes flipped inside every saved chunk, RDB framing and checksum intact: the
    module's rdb_load refuses the value or yields a store that works; never a crash."""
    srv = make_server(config={"crash-memcheck-enabled": "no"})
    client = srv.client(retry=Retry(NoBackoff(), 0))
    body, version = _small_store_payload(client)
    spans = [span for span in module_strings(body) if span[1] > span[0]]
    assert len(spans) >= 10       # tag, header, llm, ids, offsets, data, metas, index arrays
    refused = accepted = 0
    for start, end in spans:
        step = max(1, (end - start) // 12)
        for position in sorted({start, *range(start, end, step), end - 1}):
            corrupt = bytearray(body)
            corrupt[position] ^= 0x5A
            try:
                client.restore(b"copy", 0, with_valid_checksum(bytes(corrupt), version))
            except redis.ResponseError as exc:
                refused += 1
                assert "Bad data format" in str(exc)
                assert client.exists(b"copy") == 0
                continue
            except redis.ConnectionError:
                pytest.fail(f"redis-server died restoring a value corrupted at byte {position}:\n"
                            + crash_lines(srv))
            accepted += 1       # e.g. a flipped bit of data or of a vector: a valid store
            size = client.execute_command("LLM.SIZE", b"copy")
            assert size <= 11
            for id in range(12):
                client.execute_command("LLM.GET", b"copy", id)
            client.execute_command("LLM.KNN", b"copy", "--K", 20, "--EMBEDDING", "1,2,3,4")
            client.execute_command("DEBUG", "DIGEST-VALUE", b"copy")
            client.execute_command("LLM.ADD", b"copy", "--EMBEDDING", "1,2,3,5", b"more")
            client.execute_command("LLM.REM", b"copy", 1)
            client.execute_command("LLM.KNN", b"copy", "--K", 20, "--EMBEDDING", "1,2,3,4")
            assert client.restore(b"copy2", 0, client.dump(b"copy")) == b"OK"
            client.delete(b"copy", b"copy2")
    assert srv.alive() and client.ping()
    assert refused > len(spans)
    assert "Guru Meditation" not in srv.log


@pytest.mark.parametrize("damage", ["truncated", "bad-lzf-string"])
def test_restore_of_a_payload_with_broken_rdb_framing_and_a_valid_checksum_fails_cleanly(
        make_server, damage):
    srv = make_server(config={"crash-memcheck-enabled": "no"})
    client = srv.client(retry=Retry(NoBackoff(), 0))
    if damage == "truncated":
        body, version = _small_store_payload(client)
        body = body[: len(body) // 2]
    else:
        client.config_set("rdbcompression", "yes")
        client.execute_command("LLM.CREATE-VECTOR-STORE", b"lzf")
        client.execute_command("LLM.ADD", b"lzf", "--EMBEDDING", "1,2", b"a" * 1000)
        payload = client.dump(b"lzf")
        body, version = payload[:-10], payload[-10:-8]
        lzf = bytearray(body)
        lzf[body.index(b"a\xe0") + 1] = 0xFF    # an LZF back reference beyond the output
        body = bytes(lzf)
    try:
        with pytest.raises(redis.ResponseError):
            client.restore(b"copy", 0, with_valid_checksum(body, version))
    except redis.ConnectionError:
        pytest.fail("redis-server died on RESTORE:\n" + crash_lines(srv))
    assert srv.alive() and client.ping()
    assert client.exists(b"copy") == 0
