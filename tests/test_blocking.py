"""Blocked clients: slow work runs on the worker pool while Redis keeps serving.

LLM.DEBUG SLEEP blocks its client while a worker thread sleeps, the shape of
every slow command (LLM calls, embeddings) to come.
"""

import socket
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from helpers import in_thread

SLEEP = ("LLM.DEBUG", "SLEEP")




def wait_blocked(client, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while client.info("clients")["blocked_clients"] != count:
        assert time.monotonic() < deadline, f"expected {count} blocked clients"
        time.sleep(0.01)


def test_a_blocked_client_waits_while_other_clients_are_served(server, r):
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s")
    sleeper = in_thread(lambda: server.client().execute_command(*SLEEP, "--SECONDS", "1"))
    wait_blocked(r, 1)
    start = time.monotonic()
    for i in range(50):
        r.set(f"k{i}", i)
        assert r.get(f"k{i}") == str(i).encode()
        assert r.execute_command("LLM.SIZE", "s") == 0
    assert time.monotonic() - start < 0.5
    sleeper["thread"].join(5)
    assert sleeper["value"] == b"OK"
    assert 0.9 < sleeper["seconds"] < 3
    wait_blocked(r, 0)


def test_timeout_replies_nil_at_the_deadline(server, r):
    start = time.monotonic()
    assert r.execute_command(*SLEEP, "--SECONDS", "2", "--TIMEOUT", 200) is None
    assert 0.15 < time.monotonic() - start < 1.5
    # The job went on; its late result is dropped without harm.
    time.sleep(2)
    assert r.ping() and r.info("clients")["blocked_clients"] == 0


def test_a_client_that_disconnects_while_blocked_crashes_nothing(server, r):
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"*4\r\n$9\r\nLLM.DEBUG\r\n$5\r\nSLEEP\r\n$9\r\n--SECONDS\r\n$3\r\n0.3\r\n")
            time.sleep(0.05)
    wait_blocked(r, 0, timeout=5)
    assert r.execute_command(*SLEEP, "--SECONDS", "0") == b"OK"
    assert server.alive()


def test_inside_multi_a_slow_command_is_an_error_not_a_hang(r):
    pipe = r.pipeline(transaction=True)
    pipe.execute_command(*SLEEP, "--SECONDS", "0.1")
    pipe.set("after", 1)
    with pytest.raises(redis.ResponseError, match="cannot run inside MULTI/EXEC or a script"):
        pipe.execute()
    assert r.get("after") == b"1"  # the rest of the transaction ran
    assert r.info("clients")["blocked_clients"] == 0


def test_inside_a_script_a_slow_command_is_an_error_not_a_hang(r):
    with pytest.raises(redis.ResponseError, match="cannot run inside MULTI/EXEC or a script"):
        r.eval("return redis.call('LLM.DEBUG', 'SLEEP', '--SECONDS', '0.1')", 0)


def test_a_full_queue_is_refused_at_once(make_server):
    srv = make_server(module_args=("POOL_SIZE", "1", "QUEUE_SIZE", "1", "DEBUG_COMMANDS", "yes"))
    client = srv.client()
    running = in_thread(lambda: srv.client().execute_command(*SLEEP, "--SECONDS", "1"))
    wait_blocked(client, 1)
    time.sleep(0.1)  # the worker has taken the first job: the queue is empty
    queued = in_thread(lambda: srv.client().execute_command(*SLEEP, "--SECONDS", "0"))
    wait_blocked(client, 2)
    start = time.monotonic()
    with pytest.raises(redis.ResponseError, match="the worker queue is full"):
        client.execute_command(*SLEEP, "--SECONDS", "0")
    assert time.monotonic() - start < 0.5
    for job in (running, queued):
        job["thread"].join(5)
        assert job["value"] == b"OK"


def test_the_time_a_client_waits_counts_in_commandstats(r):
    r.config_resetstat()
    r.execute_command(*SLEEP, "--SECONDS", "0.3")
    stats = r.info("commandstats")["cmdstat_llm.debug"]
    assert stats["calls"] == 1
    assert stats["usec"] >= 250_000


def test_pool_size_workers_run_jobs_side_by_side(make_server):
    srv = make_server(module_args=("POOL_SIZE", "4", "DEBUG_COMMANDS", "yes"))
    start = time.monotonic()
    jobs = [in_thread(lambda: srv.client().execute_command(*SLEEP, "--SECONDS", "0.5"))
            for _ in range(4)]
    for job in jobs:
        job["thread"].join(5)
        assert job["value"] == b"OK"
    assert time.monotonic() - start < 1.5  # not 4 x 0.5 s one after another


def test_bgsave_while_clients_are_blocked(make_server):
    srv = make_server(module_args=("POOL_SIZE", "3", "DEBUG_COMMANDS", "yes"))
    client = srv.client()
    client.execute_command("LLM.CREATE-VECTOR-STORE", "s")
    client.execute_command("LLM.ADD", "s", "--EMBEDDING", "1,2", "x")
    jobs = [in_thread(lambda: srv.client().execute_command(*SLEEP, "--SECONDS", "1"))
            for _ in range(3)]
    wait_blocked(client, 3)
    client.bgsave()
    deadline = time.monotonic() + 10
    while client.info("persistence")["rdb_bgsave_in_progress"]:
        assert time.monotonic() < deadline, "the BGSAVE child hung"
        time.sleep(0.05)
    assert client.info("persistence")["rdb_last_bgsave_status"] == "ok"
    for job in jobs:
        job["thread"].join(5)
        assert job["value"] == b"OK"


def test_a_job_ending_just_after_its_timeout_still_answers_its_client(make_server):
    """The job (5 ms) ends just after its deadline (1 ms), before an idle
    Redis would notice the deadline itself: the client gets nil or the
    answer, never nothing (found by the soak: Redis 7.0's own timeouts lose
    that reply, so the module keeps the deadlines)."""
    srv = make_server()
    for _ in range(20):
        # Never retried on a socket timeout: a lost reply must show.
        client = redis.Redis(port=srv.port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
        try:
            assert client.execute_command(*SLEEP, "--SECONDS", "0.005", "--TIMEOUT", 1) in \
                (None, b"OK")
        finally:
            client.close()
    assert srv.client().info("clients")["blocked_clients"] == 0
