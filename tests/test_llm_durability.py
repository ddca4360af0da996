"""Durability of LLM and app keys: every way Redis saves, copies and replays them.

Each test fills real redis-server processes pointed at a scripted
OpenAI-compatible server (``api``) with the same representative data
(``fill``): two LLMs (one under a binary key name), the three kinds of app,
a document store whose items the LLM embedded, and a chat app with three
sessions (one with a binary id), two of them with a summary in its store. A ``snapshot`` holds everything a client can
observe of those keys (TYPE, DEBUG DIGEST-VALUE, LLM.HISTORY per session,
LLM.SIZE and every item). The data then goes through one path (DEBUG RELOAD,
RDB, AOF, AOF rewrite, replication, DUMP/RESTORE) and nothing a client sees
may change; the api's request log shows that no path asks the LLM again.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from helpers import error_text, wait_for
from openai_server import OpenAIServer
from test_durability import (
    aof_files,
    assert_log_clean,
    crash_lines,
    restart,
    wait_aof_rewrite_done,
    wait_replica_synced,
    with_valid_checksum,
)

DIM = 8                          # the api's embedding length
HISTORY = '{"summary_cnt":4}'
SESSIONS = (b"alice", b"bob", b"\xff\x00bin")
OTHER_LLM = b"llm:\xffother\x00"          # a binary key name
DOCS = ("Redis is an in-memory data store.", "Paris is the capital of France.",
        "The mitochondria is the powerhouse of the cell.", "ünïcødé text € 日本")
LLM_TYPE, APP_TYPE, STORE_TYPE = b"llm-model", b"llm-appli", b"llm-store"


# ---- the data -------------------------------------------------------------------

def llm_params(api: OpenAIServer, **extra) -> str:
    return json.dumps({"base_url": api.url, "chat": {"model": "gpt-test", "temperature": 0.5},
                       "embedding": {"model": "emb-test"}, **extra})


def run(client: redis.Redis, key: bytes, *args) -> bytes:
    return client.execute_command("LLM.RUN", key, *args)


def chat(client: redis.Redis, session: bytes, text: str) -> bytes:
    return run(client, b"app:chat", "--SESSION", session, text)


def history(client: redis.Redis, session: bytes) -> list:
    return client.execute_command("LLM.HISTORY", b"app:chat", "--SESSION", session)


def fill(client: redis.Redis, api: OpenAIServer) -> None:
    """Two LLMs, three apps, two stores, a chat app with two sessions and summaries.

    Checks the exact LLM calls each write makes, so later counts mean something.
    """
    start = len(api.requests)
    assert client.execute_command("LLM.CREATE-LLM", b"llm:main", "--PARAMS", llm_params(api)) == 1
    assert client.execute_command(
        "LLM.CREATE-LLM", OTHER_LLM, "--TYPE", "openai", "--PARAMS",
        llm_params(api, api_key="sk-secret", http={"max_retries": 1, "pool": {"size": 2}})) == 1
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", b"vs:docs", "--LLM", b"llm:main") == 1
    # No LLM: the chat app's LLM embeds its summaries.
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", b"vs:chat") == 1
    for i, doc in enumerate(DOCS):
        meta = ["--META", json.dumps({"source": f"doc{i}", "page": i})] if i % 2 else []
        assert client.execute_command("LLM.ADD", b"vs:docs", *meta, doc) == i + 1
    assert len(api.embedding_requests()) == len(DOCS)
    assert client.execute_command("LLM.CREATE-APP", b"app:bare", "--LLM", b"llm:main") == 1
    assert client.execute_command("LLM.CREATE-APP", b"app:simple", "--LLM", OTHER_LLM,
                                  "--PROMPT", "Translate {{input}} into {{lang}}.") == 1
    assert client.execute_command("LLM.CREATE-SEARCH", b"app:search", "--LLM", b"llm:main",
                                  "--VECTOR-STORE", b"vs:docs", "--K", 2) == 1
    assert client.execute_command("LLM.CREATE-CHAT", b"app:chat", "--LLM", b"llm:main",
                                  "--VECTOR-STORE", b"vs:chat", "--HISTORY", HISTORY,
                                  "--PROMPT", "Be brief. Earlier: {{history}}") == 1
    # alice: 3 turns (a summary after the 2nd), bob: 2 turns (a summary after the 2nd),
    # a binary session id: 1 turn.
    for session, turns in TURNS.items():
        for i in range(1, turns + 1):
            text = turn_text(session, i)
            assert chat(client, session, text) == f"echo: {text}".encode()
    assert client.execute_command("LLM.SIZE", b"vs:chat") == 2
    # 4 embeddings; alice 1 + (1 + summary 2) + (query 1 + 1) = 6; bob 1 + 3 = 4; 1
    assert len(api.requests) - start == len(DOCS) + 11
    check_history(client)


TURNS = {b"alice": 3, b"bob": 2, b"\xff\x00bin": 1}


def turn_text(session: bytes, i: int) -> str:
    return f"{session.decode('latin-1')} says hello {i} ✓\r\n"


def expected_history(session: bytes, turns: int) -> list:
    out = []
    for i in range(1, turns + 1):
        text = turn_text(session, i)
        out += [[b"user", text.encode()], [b"assistant", f"echo: {text}".encode()]]
    return out


def check_history(client: redis.Redis) -> None:
    for session, turns in TURNS.items():
        assert history(client, session) == expected_history(session, turns)
    for id, session in ((1, "alice"), (2, "bob")):
        data, vector, meta = client.execute_command("LLM.GET", b"vs:chat", id)
        assert data.startswith(b"echo: Give a concise and comprehensive summary")
        assert turn_text(session.encode(), 2).encode() in data
        assert json.loads(meta) == {"session": session, "app": "app:chat"}
        expected = OpenAIServer.embedding_for(data.decode(), DIM)
        assert np.array_equal(np.array(vector.split(b","), dtype=np.float32),
                              np.array(expected, dtype=np.float32))


LLM_KEYS = (b"llm:main", OTHER_LLM)
APP_KEYS = (b"app:bare", b"app:simple", b"app:search", b"app:chat")
STORE_KEYS = (b"vs:docs", b"vs:chat")


def snapshot(client: redis.Redis, sessions=SESSIONS) -> dict:
    """Everything observable about the filled keys, as raw replies."""
    pipe = client.pipeline(transaction=False)
    plan = []
    for key in (*LLM_KEYS, *APP_KEYS, *STORE_KEYS):
        pipe.type(key)
        pipe.execute_command("DEBUG", "DIGEST-VALUE", key)
        plan.append((key, "type"))
        plan.append((key, "digest"))
    for session in sessions:
        pipe.execute_command("LLM.HISTORY", b"app:chat", "--SESSION", session)
        plan.append((b"app:chat", session))
    for key in STORE_KEYS:
        pipe.execute_command("LLM.SIZE", key)
        plan.append((key, "size"))
        for id in range(0, 10):
            pipe.execute_command("LLM.GET", key, id)
            plan.append((key, id))
        pipe.execute_command("LLM.KNN", key, "--K", 3, "--WITHDATA", "--EMBEDDING",
                             ",".join(["0.5"] * DIM))
        plan.append((key, "knn"))
    pipe.dbsize()
    plan.append(("db", "size"))
    return dict(zip(plan, pipe.execute()))


def check_snapshot(snap: dict) -> None:
    """The snapshot is not vacuous: it shows what fill wrote."""
    for key in LLM_KEYS:
        assert snap[key, "type"] == LLM_TYPE
    for key in APP_KEYS:
        assert snap[key, "type"] == APP_TYPE
    for key in STORE_KEYS:
        assert snap[key, "type"] == STORE_TYPE
    digests = [snap[key, "digest"] for key in (*LLM_KEYS, *APP_KEYS, *STORE_KEYS)]
    assert len(set(map(tuple, digests))) == len(digests)
    for session, turns in TURNS.items():
        assert snap[b"app:chat", session] == expected_history(session, turns)
    assert snap[b"vs:docs", "size"] == len(DOCS) and snap[b"vs:chat", "size"] == 2
    assert snap[b"vs:docs", 2] == [DOCS[1].encode(), snap[b"vs:docs", 2][1],
                                   b'{"source":"doc1","page":1}']
    assert snap["db", "size"] == len(LLM_KEYS) + len(APP_KEYS) + len(STORE_KEYS)


def assert_same(got: dict, expected: dict) -> None:
    diff = [f"{k}: got {got.get(k)!r:.200} expected {expected.get(k)!r:.200}"
            for k in expected.keys() | got.keys() if got.get(k) != expected.get(k)]
    assert not diff, "snapshots differ:\n" + "\n".join(sorted(diff))


def run_read_only_apps(client: redis.Redis) -> tuple:
    """Replies of the simple and search apps (they change nothing but their
    records: the verbose reply's record id is left out)."""
    simple = run(client, b"app:simple", "--VARS", '{"lang": "French"}', "good night")
    search = run(client, b"app:search", "--VERBOSE", "Where is Paris?")
    assert search[-4] == b"record" and isinstance(search[-3], int), search
    assert search[-2:] == [b"served_review", None], search
    search = search[:-4]
    bare = run(client, b"app:bare", "plain")
    return simple, search, bare


def check_apps_run(client: redis.Redis, api: OpenAIServer, before: tuple) -> None:
    """The apps still run: the same answers as before, and the chat goes on."""
    start = len(api.requests)
    assert run_read_only_apps(client) == before
    assert before[0] == b"echo: Translate good night into French."
    assert before[1][:2] == [b"answer", b"echo: " + before[1][3]]
    assert len(before[1][5]) == 2                      # K items
    assert before[2] == b"echo: plain"
    # alice's 4th turn: a query for her summary, the chat, then 4 unsummarised -> a summary.
    assert chat(client, b"alice", "still there?") == b"echo: still there?"
    assert history(client, b"alice")[-2:] == [[b"user", b"still there?"],
                                              [b"assistant", b"echo: still there?"]]
    assert client.execute_command("LLM.SIZE", b"vs:chat") == 3
    assert json.loads(client.execute_command("LLM.GET", b"vs:chat", 3)[2]) == \
        {"session": "alice", "app": "app:chat"}
    # simple 1 + search 2 + bare 1 + alice 2 + summary 2
    assert len(api.requests) - start == 8


# ---- 1. DEBUG RELOAD, RDB, AOF ---------------------------------------------------

PATHS = ["debug-reload", "save-then-restart", "aof-preamble-yes", "aof-preamble-no",
         "aof-rewrite-preamble-yes", "aof-rewrite-preamble-no"]


@pytest.mark.parametrize("path", PATHS)
def test_llm_and_app_keys_survive_reload_and_restart(make_server, api, path):
    config = {}
    if path.startswith("aof"):
        config = {"appendonly": "yes", "aof-use-rdb-preamble": path[-3:].strip("-")}
    srv = make_server(config=config)
    client = srv.client()
    if config:
        wait_aof_rewrite_done(client)
    fill(client, api)
    apps = run_read_only_apps(client)
    before = snapshot(client)
    check_snapshot(before)
    requests = len(api.requests)

    if path == "debug-reload":
        assert client.execute_command("DEBUG", "RELOAD") == b"OK"
    elif path == "save-then-restart":
        assert client.save()
        restart(srv)
        assert srv.client().info("persistence")["rdb_last_load_keys_loaded"] == before["db", "size"]
    else:
        if "rewrite" in path:
            assert client.bgrewriteaof()
            wait_aof_rewrite_done(client)
            base, _ = aof_files(srv)
            if path.endswith("no"):
                assert b"LLM.CREATE-CHAT" in base and b"LLM.CHAT-LOG" in base
                assert b"LLM.CREATE-LLM" in base and b"LLM.CREATE-SEARCH" in base
            else:
                assert base.startswith(b"REDIS")
        restart(srv)
        assert not (srv.dir / "dump.rdb").exists()

    client = srv.client()
    assert_same(snapshot(client), before)
    assert len(api.requests) == requests, "loading asked the LLM"
    check_apps_run(client, api, apps)
    assert_log_clean(srv)


# ---- 2. replication --------------------------------------------------------------

def start_pair(make_server):
    master = make_server("master", config={"repl-diskless-sync-delay": "0"})
    replica = make_server("replica")
    return master, replica


def settle_and_count(api: OpenAIServer, expected: int) -> None:
    """No request beyond ``expected`` arrives (a replica's would come soon after its sync)."""
    time.sleep(0.2)
    assert len(api.requests) == expected, [r.path for r in api.requests[expected:]]


def test_replica_gets_llms_apps_and_history_without_calling_the_llm(make_server, api):
    master, replica = start_pair(make_server)
    mc, rc = master.client(), replica.client()
    fill(mc, api)
    before = snapshot(mc)
    check_snapshot(before)
    requests = len(api.requests)

    # Full sync: the values come as RDB.
    assert rc.replicaof("127.0.0.1", master.port)
    wait_replica_synced(mc, rc)
    assert_same(snapshot(rc), before)
    settle_and_count(api, requests)

    # The command stream: writes computed by the LLM on the master only.
    assert mc.execute_command("LLM.ADD", b"vs:docs", "--META", '{"source": "late"}',
                              "streamed doc") == len(DOCS) + 1
    assert chat(mc, b"alice", "turn 4") == b"echo: turn 4"          # query + chat + summary 2
    assert chat(mc, b"bob", "turn 3") == b"echo: turn 3"            # query + chat
    assert chat(mc, b"carol", "first words") == b"echo: first words"  # chat
    assert mc.execute_command("LLM.CREATE-LLM", b"llm:new", "--PARAMS", llm_params(api)) == 1
    assert mc.execute_command("LLM.CREATE-APP", b"app:new", "--LLM", b"llm:new") == 1
    assert mc.execute_command("LLM.CHAT-LOG", b"app:chat", "--SESSION", b"dave",
                              '[{"role": "user", "content": "logged by hand"}]') == 1
    assert len(api.requests) - requests == 1 + 4 + 2 + 1
    requests = len(api.requests)
    assert mc.execute_command("LLM.SIZE", b"vs:chat") == 3

    wait_replica_synced(mc, rc)
    sessions = (*SESSIONS, b"carol", b"dave")
    after = snapshot(mc, sessions)
    assert after != before
    assert after[b"app:chat", b"dave"] == [[b"user", b"logged by hand"]]
    assert_same(snapshot(rc, sessions), after)
    for key in (b"llm:new", b"app:new"):
        assert rc.type(key) == mc.type(key)
        assert rc.execute_command("DEBUG", "DIGEST-VALUE", key) == \
            mc.execute_command("DEBUG", "DIGEST-VALUE", key)
    assert rc.execute_command("DEBUG", "DIGEST") == mc.execute_command("DEBUG", "DIGEST")
    settle_and_count(api, requests)

    # The replica refuses to run apps itself; promoted, it carries on the chat.
    with pytest.raises(redis.exceptions.ReadOnlyError):
        chat(rc, b"alice", "from the replica")
    settle_and_count(api, requests)
    assert rc.replicaof("NO", "ONE")
    assert chat(rc, b"bob", "after failover") == b"echo: after failover"
    assert history(rc, b"bob")[-1] == [b"assistant", b"echo: after failover"]
    assert_log_clean(master)
    assert_log_clean(replica)


# ---- 3. AOF replay ---------------------------------------------------------------

def aof_commands(data: bytes) -> list[list[bytes]]:
    """The commands of an AOF file in RESP form (no RDB preamble)."""
    commands, pos = [], 0
    while pos < len(data):
        assert data[pos:pos + 1] == b"*", data[pos:pos + 40]
        end = data.index(b"\r\n", pos)
        count, pos = int(data[pos + 1:end]), end + 2
        command = []
        for _ in range(count):
            assert data[pos:pos + 1] == b"$"
            end = data.index(b"\r\n", pos)
            length, pos = int(data[pos + 1:end]), end + 2
            command.append(data[pos:pos + length])
            pos += length + 2
        commands.append(command)
    return commands


def test_aof_replay_restores_embedded_items_and_chat_turns_without_llm_calls(make_server, api):
    srv = make_server(config={"appendonly": "yes", "aof-use-rdb-preamble": "no"})
    client = srv.client()
    wait_aof_rewrite_done(client)
    fill(client, api)
    before = snapshot(client)
    check_snapshot(before)

    _, incr = aof_files(srv)
    commands = aof_commands(incr)
    names = Counter(c[0].upper() for c in commands)
    assert names == {b"SELECT": 1, b"LLM.CREATE-LLM": 2, b"LLM.CREATE-VECTOR-STORE": 2,
                     b"LLM.ADD": len(DOCS) + 2, b"LLM.CREATE-APP": 2, b"LLM.CREATE-SEARCH": 1,
                     b"LLM.CREATE-CHAT": 1, b"LLM.CHAT-LOG": 6 + 2,
                     b"MULTI": 2, b"EXEC": 2,
                     # each run's record: pending, running, done
                     b"LLM.RESULT-SET": names[b"LLM.RESULT-SET"]}, names   # no LLM.RUN
    assert names[b"LLM.RESULT-SET"] % 3 == 0 and names[b"LLM.RESULT-SET"] > 0
    # A summary and the session's new counters are one transaction.
    for i, command in enumerate(commands):
        if command[0].upper() == b"MULTI":
            assert [c[0].upper() for c in commands[i:i + 4]] == \
                [b"MULTI", b"LLM.ADD", b"LLM.CHAT-LOG", b"EXEC"]
            assert commands[i + 1][1] == b"vs:chat"
    adds = [c for c in commands if c[0].upper() == b"LLM.ADD"]
    assert len(adds) == len(DOCS) + 2                   # documents and summaries
    for add in adds:
        assert b"--EMBEDDING-BLOB" in add and b"--ID" in add, add
        vector = np.frombuffer(add[add.index(b"--EMBEDDING-BLOB") + 1], dtype="<f4")
        assert vector.tolist() == OpenAIServer.embedding_for(add[-1].decode(), DIM)
    # One LLM.CHAT-LOG per turn (the turn, the session's counters after it), one per summary.
    chat_logs = [c for c in commands if c[0].upper() == b"LLM.CHAT-LOG"]
    first = turn_text(b"alice", 1)
    assert chat_logs[0] == [b"LLM.CHAT-LOG", b"app:chat", b"--SESSION", b"alice",
                            b"--UNSUMMARISED", b"2", b"--SUMMARIES", b"0",
                            json.dumps([{"role": "user", "content": first},
                                        {"role": "assistant", "content": "echo: " + first}],
                                       separators=(",", ":"), ensure_ascii=False).encode()]
    assert chat_logs[2][3:8] == [b"alice", b"--UNSUMMARISED", b"0", b"--SUMMARIES", b"1"]
    assert chat_logs[2][8] == b"[]"
    requests = len(api.requests)

    restart(srv)
    client = srv.client()
    assert_same(snapshot(client), before)
    assert len(api.requests) == requests, "the AOF replay asked the LLM"
    assert_log_clean(srv)


def test_aof_replay_of_llms_created_with_options_in_any_order(make_server, api):
    """--PARAMS (a secret, hidden from SLOWLOG and MONITOR) at different argument
    positions in consecutive logged commands: the replay loads them all."""
    srv = make_server(config={"appendonly": "yes", "aof-use-rdb-preamble": "no"})
    client = srv.client()
    wait_aof_rewrite_done(client)
    params = llm_params(api)
    commands = [("LLM.CREATE-LLM", b"l1", "--PARAMS", params),
                ("LLM.CREATE-LLM", b"l2", "--TYPE", "openai", "--PARAMS", params),
                ("LLM.CREATE-LLM", b"l3", "--NX", "--TYPE", "openai", "--PARAMS", params),
                ("LLM.CREATE-LLM", b"l1", "--PARAMS", params, "--XX")]
    for command in commands:
        assert client.execute_command(*command) == 1
    digests = {key: client.execute_command("DEBUG", "DIGEST-VALUE", key)
               for key in (b"l1", b"l2", b"l3")}
    assert len(set(map(tuple, digests.values()))) == 1     # the same LLM three times

    restart(srv)
    client = srv.client(retry=Retry(NoBackoff(), 0))
    try:
        for key, digest in digests.items():
            assert client.type(key) == LLM_TYPE
            assert client.execute_command("DEBUG", "DIGEST-VALUE", key) == digest
        assert client.execute_command("LLM.CREATE-APP", b"app", "--LLM", b"l3") == 1
        assert run(client, b"app", "hi") == b"echo: hi"
    except redis.ConnectionError:
        pytest.fail("redis-server died after loading the AOF:\n" + crash_lines(srv))
    assert_log_clean(srv)


# ---- 4. a worker's write outlives its client's timeout ---------------------------

def test_a_timed_out_chat_turn_and_add_are_applied_and_replicated(make_server, api):
    master, replica = start_pair(make_server)
    mc, rc = master.client(), replica.client()
    fill(mc, api)
    assert rc.replicaof("127.0.0.1", master.port)
    wait_replica_synced(mc, rc)
    requests = len(api.requests)

    api.delay(0.5)
    start = time.monotonic()
    assert run(mc, b"app:chat", "--TIMEOUT", 50, "--SESSION", b"late", "hello") is None
    assert time.monotonic() - start < 0.4
    assert history(mc, b"late") == []                   # the LLM has not answered yet
    turn = [[b"user", b"hello"], [b"assistant", b"echo: hello"]]
    wait_for(lambda: history(mc, b"late") == turn, 5, "the late chat turn on the master")
    wait_replica_synced(mc, rc)
    assert history(rc, b"late") == turn
    assert rc.execute_command("DEBUG", "DIGEST-VALUE", b"app:chat") == \
        mc.execute_command("DEBUG", "DIGEST-VALUE", b"app:chat")

    api.delay(0.5)
    start = time.monotonic()
    assert mc.execute_command("LLM.ADD", b"vs:docs", "--TIMEOUT", 50, "--META", '{"late": true}',
                              "late doc") is None
    assert time.monotonic() - start < 0.4
    assert mc.execute_command("LLM.SIZE", b"vs:docs") == len(DOCS)
    wait_for(lambda: mc.execute_command("LLM.SIZE", b"vs:docs") == len(DOCS) + 1, 5,
             "the late add on the master")
    vector = ",".join(str(np.float32(x)) for x in OpenAIServer.embedding_for("late doc", DIM))
    item = [b"late doc", vector.encode(), b'{"late":true}']
    assert mc.execute_command("LLM.GET", b"vs:docs", len(DOCS) + 1) == item
    wait_replica_synced(mc, rc)
    assert rc.execute_command("LLM.GET", b"vs:docs", len(DOCS) + 1) == item
    assert rc.execute_command("DEBUG", "DIGEST-VALUE", b"vs:docs") == \
        mc.execute_command("DEBUG", "DIGEST-VALUE", b"vs:docs")
    settle_and_count(api, requests + 2)
    assert_log_clean(master)
    assert_log_clean(replica)


# ---- 5. DUMP / RESTORE -----------------------------------------------------------

def test_dump_restore_round_trips_llm_and_app_keys(make_server, api):
    srv = make_server()
    client = srv.client()
    fill(client, api)
    for key in (*LLM_KEYS, *APP_KEYS):
        payload = client.dump(key)
        assert client.restore(key + b":copy", 0, payload) == b"OK"
        assert client.type(key + b":copy") == client.type(key)
        assert client.execute_command("DEBUG", "DIGEST-VALUE", key + b":copy") == \
            client.execute_command("DEBUG", "DIGEST-VALUE", key)
    for session in SESSIONS:
        assert client.execute_command("LLM.HISTORY", b"app:chat:copy", "--SESSION", session) == \
            history(client, session)
    # The copies work: an app copy runs, and one using the LLM copy too.
    assert run(client, b"app:simple:copy", "--VARS", '{"lang": "German"}', "hi") == \
        b"echo: Translate hi into German."
    assert client.execute_command("LLM.CREATE-APP", b"app:on-copy", "--LLM", OTHER_LLM + b":copy") == 1
    assert run(client, b"app:on-copy", "ping") == b"echo: ping"
    assert run(client, b"app:chat:copy", "--SESSION", b"bob", "copied") == b"echo: copied"
    assert history(client, b"bob") == expected_history(b"bob", 2)   # the original is untouched
    # RESTORE REPLACE turns an LLM key into an app key; without REPLACE: BUSYKEY.
    assert client.restore(b"llm:main:copy", 0, client.dump(b"app:search"), replace=True) == b"OK"
    assert client.type(b"llm:main:copy") == APP_TYPE
    with pytest.raises(redis.ResponseError) as exc:
        client.restore(b"app:chat:copy", 0, client.dump(b"llm:main"))
    assert error_text(exc.value).startswith("BUSYKEY")
    assert_log_clean(srv)


def _payload(client: redis.Redis, key: bytes) -> tuple[bytes, bytes]:
    """(serialized value, RDB version) of a DUMP, its strings uncompressed."""
    payload = client.dump(key)
    return payload[:-10], payload[-10:-8]


def _replace(body: bytes, old: bytes, new: bytes) -> bytes:
    """A substitution that keeps the length, so the RDB string lengths stay right:
    a shorter value is padded with JSON whitespace, a longer one shortens the
    search app's prompt text ("Please answer ...") by as much."""
    assert body.count(old) == 1, old
    delta = len(new) - len(old)
    out = body.replace(old, new + b" " * max(0, -delta))
    if delta > 0:
        assert out.count(b"Please answer") == 1
        out = out.replace(b"Please answer", b"Please answer"[:-delta])
    assert len(out) == len(body)
    return out


# name -> (key, corruption of its DUMP payload's serialized value)
CORRUPTIONS = {
    "app-truncated": (b"app:chat", lambda body: body[: len(body) // 2]),
    "app-json-syntax": (b"app:chat", lambda body: _replace(body, b'"kind":"chat"', b'"kind":"chat{')),
    "app-unknown-kind": (b"app:chat", lambda body: _replace(body, b'"kind":"chat"', b'"kind":"chit"')),
    "app-bad-message": (b"app:chat", lambda body: _replace(body, b'{"content":"alice says hello 1',
                                                           b'{"contenu":"alice says hello 1')),
    "app-bad-role": (b"app:chat", lambda body: _replace(body, b'"role":"assistant"}],2,0]',
                                                        b'"role":"assistent"}],2,0]')),
    "app-llm-a-list": (b"app:chat", lambda body: _replace(body, b'"llm":"llm:main"',
                                                          b'"llm":["llm:ma"]')),
    "app-unknown-tag": (b"app:chat", lambda body: _replace(body, b"llm-app", b"llm-apq")),
    # Valid JSON whose fields LLM.CREATE-* would refuse.
    "app-llm-null": (b"app:chat", lambda body: _replace(body, b'"llm":"llm:main"', b'"llm":null')),
    "app-store-null": (b"app:chat", lambda body: _replace(body, b'"store":"vs:chat"',
                                                          b'"store":null')),
    "app-k-zero": (b"app:search", lambda body: _replace(body, b'"k":2', b'"k":0')),
    "app-k-a-string": (b"app:search", lambda body: _replace(body, b'"k":2', b'"k":"2"')),
    "llm-truncated": (b"llm:main", lambda body: body[: len(body) // 2]),
    "llm-unknown-type": (b"llm:main", lambda body: _replace(body, b'"type":"openai"',
                                                            b'"type":"opena1"')),
    "llm-type-a-list": (b"llm:main", lambda body: _replace(body, b'"type":"openai"',
                                                           b'"type":["opai"]')),
    "llm-no-type": (b"llm:main", lambda body: _replace(body, b'"type":"openai"', b'"typo":"openai"')),
    "llm-unknown-param": (b"llm:main", lambda body: _replace(body, b'"base_url"', b'"base_urx"')),
    "llm-bad-param": (b"llm:main", lambda body: _replace(body, b'"size":5', b'"size":0')),
}


def _use(client: redis.Redis, key: bytes) -> str:
    """What using an accepted corrupt copy at b"copy" gives (for failure messages)."""
    try:
        if key.startswith(b"llm"):
            client.execute_command("LLM.CREATE-APP", b"on-copy", "--LLM", b"copy")
            reply = run(client, b"on-copy", "hi")
        else:
            reply = run(client, b"copy", "hi")
    except redis.ResponseError as exc:
        reply = f"error {error_text(exc)!r}"
    return f"LLM.RUN replied {reply!r:.200}"


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_restore_of_a_corrupt_llm_or_app_payload_is_refused_without_a_crash(
        make_server, api, corruption):
    """The RDB framing and checksum stay valid: the module itself must refuse the value.

    A value LLM.CREATE-* would refuse must be refused too: accepted, it fails
    LLM.RUN with an internal error, and an AOF rewrite drops it (its commands
    cannot be emitted, or are refused on replay).
    """
    srv = make_server(config={"crash-memcheck-enabled": "no", "rdbcompression": "no"})
    client = srv.client(retry=Retry(NoBackoff(), 0))
    fill(client, api)
    key, corrupt_it = CORRUPTIONS[corruption]
    body, version = _payload(client, key)
    corrupt = corrupt_it(body)
    assert corrupt != body
    try:
        with pytest.raises(redis.ResponseError) as exc:
            client.restore(b"copy", 0, with_valid_checksum(corrupt, version))
            pytest.fail(f"RESTORE accepted the corrupt {key.decode()} payload; then "
                        f"{_use(client, key)}")
    except redis.ConnectionError:
        pytest.fail("redis-server died on RESTORE:\n" + crash_lines(srv))
    assert "Bad data format" in str(exc.value)
    assert srv.alive() and client.ping()
    assert client.exists(b"copy") == 0
    # A payload with only a bad checksum is refused by Redis before the module sees it.
    with pytest.raises(redis.ResponseError, match="checksum"):
        payload = client.dump(key)
        client.restore(b"copy", 0, payload[:-1] + bytes([payload[-1] ^ 0xFF]))
    check_history(client)


# ---- 6. MEMORY USAGE -------------------------------------------------------------

def test_memory_usage_of_llm_and_app_keys_is_positive_and_grows_with_history(make_server, api):
    srv = make_server()
    client = srv.client()
    fill(client, api)
    usage = {key: client.memory_usage(key) for key in (*LLM_KEYS, *APP_KEYS)}
    for key, value in usage.items():
        assert isinstance(value, int) and value > 0, (key, value)
    # A chat app holding two sessions costs more than a simple app.
    assert usage[b"app:chat"] > usage[b"app:simple"]
    chat(client, b"carol", "x" * 5000)
    assert client.memory_usage(b"app:chat") >= usage[b"app:chat"] + 2 * 5000
    assert_log_clean(srv)


def test_a_chat_turn_whose_summary_fails_is_recorded_and_replicated(make_server, api):
    """The turn is written before the summary is asked for: when the summary's LLM
    call fails the turn stays, on the master and its replica, and the next turn
    summarises all the messages still unsummarised."""
    master, replica = start_pair(make_server)
    mc, rc = master.client(), replica.client()
    fill(mc, api)
    assert rc.replicaof("127.0.0.1", master.port)
    wait_replica_synced(mc, rc)
    requests = len(api.requests)
    # bob: 0 unsummarised, 1 summary. Turn 3: the query embedding, the chat, no summary yet.
    assert chat(mc, b"bob", "turn 3") == b"echo: turn 3"
    # Turn 4: query, chat, then the summary's chat call fails (400: not retried).
    api.delay(0, times=2)
    api.fail(400, message="summary refused")
    try:
        chat(mc, b"bob", "turn 4")
    except redis.ResponseError:
        pass                      # how the failed summary is reported is not the point here
    assert len(api.requests) == requests + 2 + 3
    turns = expected_history(b"bob", 2) + [
        [b"user", b"turn 3"], [b"assistant", b"echo: turn 3"],
        [b"user", b"turn 4"], [b"assistant", b"echo: turn 4"]]
    assert history(mc, b"bob") == turns
    assert mc.execute_command("LLM.SIZE", b"vs:chat") == 2
    wait_replica_synced(mc, rc)
    assert history(rc, b"bob") == turns
    assert rc.execute_command("DEBUG", "DIGEST-VALUE", b"app:chat") == \
        mc.execute_command("DEBUG", "DIGEST-VALUE", b"app:chat")

    # Turn 5: 6 unsummarised messages -> one summary of all of them.
    assert chat(mc, b"bob", "turn 5") == b"echo: turn 5"
    assert mc.execute_command("LLM.SIZE", b"vs:chat") == 3
    summary = mc.execute_command("LLM.GET", b"vs:chat", 3)[0]
    for text in (b"turn 3", b"turn 4", b"turn 5"):
        assert text in summary
    wait_replica_synced(mc, rc)
    assert_same(snapshot(rc, (b"bob",)), snapshot(mc, (b"bob",)))
    assert_log_clean(master)
    assert_log_clean(replica)
