"""Fork safety: Redis forks (BGSAVE, AOF rewrite, full sync) while Python threads run.

Redis forks from its main thread while other threads may hold the GIL. A child
that inherited a GIL owned by a thread that does not exist in it would hang
forever in its first type callback (rdb_save, aof_rewrite). ``LLM.DEBUG SPIN``
keeps Python threads busy in the interpreter of redis-server while the tests
fork it again and again; every child must finish within seconds, and what it
wrote must load into an identical dataset.
"""

from __future__ import annotations

import shutil
import time

import pytest

# make_server: the fixture that also ends the forked children a failed test leaves behind.
from test_durability import make_server  # noqa: F401
from test_durability import (Model, assert_log_clean, assert_same, check_snapshot, fill,
                             kill_children, snapshot, wait_aof_rewrite_done, wait_replica_synced)

CHILD_TIMEOUT = 10.0      # a healthy child takes well under a second here
SPIN_THREADS = 3


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line")


def spin(client, threads: int, seconds: int):
    return client.execute_command("LLM.DEBUG", "SPIN", "--THREADS", threads, "--SECONDS", seconds)


class Spinner:
    """Keeps SPIN_THREADS Python threads spinning inside a redis-server."""

    def __init__(self, srv, seconds: int = 4):
        self.srv = srv
        self.client = srv.client()
        self.seconds = seconds
        self.baseline = threads_of(srv.process.pid)
        self.until = 0.0

    def keep_spinning(self) -> None:
        """Start a new batch when the current one has less than 2 s to go."""
        if self.until - time.monotonic() < 2:
            assert spin(self.client, SPIN_THREADS, self.seconds) == b"OK"
            self.until = time.monotonic() + self.seconds
        self.assert_spinning()

    def assert_spinning(self) -> None:
        # The threads are really there (they end at their deadline).
        assert threads_of(self.srv.process.pid) >= self.baseline + SPIN_THREADS


def wait_child(srv, client, busy, what: str) -> float:
    """Wait until ``busy(info persistence)`` is false; fail (killing the child) after
    CHILD_TIMEOUT: a child deadlocked on the GIL never finishes."""
    start = time.monotonic()
    while busy(client.info("persistence")):
        if time.monotonic() - start > CHILD_TIMEOUT:
            kill_children(srv)
            pytest.fail(f"{what}: the forked child did not finish within {CHILD_TIMEOUT}s "
                        f"(deadlocked on the GIL?)")
        time.sleep(0.005)
    return time.monotonic() - start


def with_round(model_or_snapshot, value: bytes | None = None):
    """A model, or a snapshot taken before the rounds, that includes the b"round" key."""
    if value is None:
        model = model_or_snapshot
        return Model(model.stores, {**model.strings, b"round": b"?"})
    snap = model_or_snapshot
    return {**snap, b"round": value, "dbsize": snap["dbsize"] + 1}


def start_copy(make_server, name: str, files: dict, config: dict | None = None):
    """A second server started on copies of ``files`` ({source: name in its dir})."""
    srv = make_server(name, start=False, config=config)
    for source, target in files.items():
        if source.is_dir():
            shutil.copytree(source, srv.dir / target)
        else:
            shutil.copy(source, srv.dir / target)
    return srv.start()


def test_bgsave_while_python_threads_spin_never_hangs_the_child(make_server):
    srv = make_server()
    client = srv.client()
    model = fill(client)
    before = snapshot(client, model)
    check_snapshot(before, model)
    spinner = Spinner(srv)
    saves = client.info("persistence")["rdb_saves"]

    for i in range(20):
        spinner.keep_spinning()
        client.set(b"round", i)           # every save has something new
        assert client.bgsave()
        wait_child(srv, client, lambda info: info["rdb_bgsave_in_progress"], f"BGSAVE {i + 1}")
        info = client.info("persistence")
        assert info["rdb_last_bgsave_status"] == "ok"
        assert info["rdb_saves"] == saves + i + 1
    spinner.assert_spinning()

    copy = start_copy(make_server, "copy", {srv.dir / "dump.rdb": "dump.rdb"})
    cc = copy.client()
    assert_same(snapshot(cc, with_round(model)), with_round(before, b"19"))
    assert cc.execute_command("DEBUG", "DIGEST") == client.execute_command("DEBUG", "DIGEST")
    assert srv.alive()
    assert_log_clean(srv)
    assert_log_clean(copy)


@pytest.mark.parametrize("preamble", ["yes", "no"])
def test_bgrewriteaof_while_python_threads_spin_never_hangs_the_child(make_server, preamble):
    config = {"appendonly": "yes", "aof-use-rdb-preamble": preamble}
    srv = make_server(config=config)
    client = srv.client()
    wait_aof_rewrite_done(client)
    model = fill(client)
    before = snapshot(client, model)
    check_snapshot(before, model)
    spinner = Spinner(srv)
    rewrites = client.info("persistence")["aof_rewrites"]

    for i in range(5):
        spinner.keep_spinning()
        client.set(b"round", i)
        assert client.bgrewriteaof()
        wait_child(srv, client, lambda info: info["aof_rewrite_in_progress"]
                   or info["aof_rewrite_scheduled"], f"BGREWRITEAOF {i + 1}")
        info = client.info("persistence")
        assert info["aof_last_bgrewrite_status"] == "ok"
        assert info["aof_rewrites"] == rewrites + i + 1
    spinner.assert_spinning()

    copy = start_copy(make_server, "copy", {srv.dir / "appendonlydir": "appendonlydir"},
                      config=config)
    cc = copy.client()
    after = snapshot(cc, with_round(model))
    before = with_round(before, b"4")
    if preamble == "no":
        # Cosine vectors drift by re-normalization (test_aof_rewrite_keeps_cosine_vectors_exact
        # in test_durability.py): compare everything else.
        assert after.pop(b"vs:cos")["size"] == before.pop(b"vs:cos")["size"]
    assert_same(after, before)
    assert srv.alive()
    assert_log_clean(srv)
    assert_log_clean(copy)


@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_replica_full_sync_while_python_threads_spin_never_hangs_the_child(make_server, diskless):
    master = make_server("master", config={"repl-diskless-sync": diskless,
                                           "repl-diskless-sync-delay": "0"})
    replica = make_server("replica")
    mc, rc = master.client(), replica.client()
    model = fill(mc)
    before = snapshot(mc, model)
    check_snapshot(before, model)
    spinner = Spinner(master)
    full_syncs = mc.info("stats")["sync_full"]

    for i in range(3):
        spinner.keep_spinning()
        mc.set(b"round", i)
        start = time.monotonic()
        assert rc.replicaof("127.0.0.1", master.port)
        wait_replica_synced(mc, rc, timeout=CHILD_TIMEOUT)
        assert time.monotonic() - start < CHILD_TIMEOUT
        assert mc.info("stats")["sync_full"] == full_syncs + i + 1     # a fork each time
        assert_same(snapshot(rc, with_round(model)), with_round(before, b"%d" % i))
        assert rc.replicaof("NO", "ONE")     # the next REPLICAOF needs a new full sync
    spinner.assert_spinning()
    assert master.alive() and replica.alive()
    assert_log_clean(master)
    assert_log_clean(replica)
