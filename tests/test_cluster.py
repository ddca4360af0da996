"""Redis Cluster: the module on a real cluster of 3 masters with a replica each.

One cluster (``redis_llm.testing.LocalCluster``, formed with ``redis-cli
--cluster create`` on 127.0.0.1) serves the whole file; the tests talk to it
through redis-py's RedisCluster, and to single nodes with plain clients where
a node's own answer matters (MOVED, CROSSSLOT, failover). Every tenant's keys
share a hash tag (``{tenant}:llm``, ``{tenant}:store``, ``{tenant}:app``), and
each test spreads its tenants over different masters. The last test kills a
master: it must stay last.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import redis
from helpers import expect_error, wait_for
from openai_server import OpenAIServer
from redis.exceptions import RedisClusterException

from redis_llm.testing import LocalCluster, key_slot

DIM = 8          # the scripted server's embedding length
VECTOR_DIM = 4   # stores filled with explicit embeddings


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """3 masters, a replica each, the module loaded on every node."""
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def llm_api():
    """One scripted OpenAI-compatible server for the file: LLMs created in the
    cluster keep its URL, so it must outlive every test."""
    with OpenAIServer(dim=DIM) as server:
        yield server


@pytest.fixture
def rc(cluster):
    """A RedisCluster client; the nodes still running afterwards did not crash."""
    client = cluster.client()
    yield client
    client.close()
    dead = [node for node in cluster.nodes if not node.alive() and node.port not in cluster.killed]
    assert not dead, "a node died:\n" + "\n".join(node.log[-2000:] for node in dead)


# ---- helpers -------------------------------------------------------------------

def tags_on_masters(cluster: LocalCluster, prefix: str) -> list[str]:
    """One hash tag per master, each tag's slot served by a different master."""
    masters = {node.port for node in cluster.masters()}
    chosen: dict[int, str] = {}
    for i in range(10000):
        tag = f"{prefix}-{i}"
        chosen.setdefault(cluster.master_for("{%s}" % tag).port, tag)
        if set(chosen) == masters:
            return [chosen[port] for port in sorted(chosen)]
    raise AssertionError("no tags found for every master")


def tags_on_one_master(cluster: LocalCluster, prefix: str) -> tuple[str, str]:
    """Two hash tags of different slots served by the same master."""
    first = f"{prefix}-0"
    master = cluster.master_for("{%s}" % first).port
    for i in range(1, 10000):
        tag = f"{prefix}-{i}"
        if key_slot(tag) != key_slot(first) and cluster.master_for("{%s}" % tag).port == master:
            return first, tag
    raise AssertionError("no second tag on the same master")


def key(tag: str, name: str) -> str:
    return "{%s}:%s" % (tag, name)


def as_dict(reply: list) -> dict:
    return {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2)}


def getkeys(node, *args) -> list[bytes]:
    """COMMAND GETKEYS on one node, unparsed."""
    with node.client() as client:
        client.response_callbacks.pop("COMMAND", None)
        return client.execute_command("COMMAND", "GETKEYS", *args)


def blob(vector) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def create_llm(client, api: OpenAIServer, tag: str) -> None:
    assert client.execute_command("LLM.CREATE-LLM", key(tag, "llm"), "--PARAMS",
                                  json.dumps({"base_url": api.url})) == 1


def wait_done(client, app_key: str, record_id: int, timeout: float = 15.0) -> dict:
    return wait_for(lambda: (record := as_dict(client.execute_command("LLM.RESULT", app_key,
                                                                      record_id)))["state"]
                    in (b"done", b"failed") and record,
                    timeout, f"result {record_id} of {app_key} to finish", 0.02)


def vectors_for(tag: str, n: int = 12) -> list[np.ndarray]:
    """Distinct, reproducible vectors per tenant."""
    rng = np.random.default_rng(key_slot(tag))
    return [rng.standard_normal(VECTOR_DIM).astype(np.float32) for _ in range(n)]


def expected_nearest(vectors: list[np.ndarray], probe: np.ndarray, k: int) -> list[int]:
    """Ids (1, 2, ... in adding order) of the k nearest vectors by squared L2."""
    distances = [float(np.sum((v - probe) ** 2)) for v in vectors]
    return [i + 1 for i in sorted(range(len(vectors)), key=distances.__getitem__)[:k]]


# ---- the cluster itself ---------------------------------------------------------

def test_cluster_has_three_masters_each_with_a_synced_replica(cluster):
    masters = cluster.masters()
    assert len(masters) == 3
    for master in masters:
        replicas = cluster.replicas_of(master)
        assert len(replicas) == 1
        with replicas[0].client() as client:
            assert client.info("replication")["master_link_status"] == "up"
    with masters[0].client() as client:
        assert client.execute_command("MODULE LIST"), "the module is loaded on every node"


# ---- vector stores ---------------------------------------------------------------

def test_stores_with_explicit_embeddings_live_on_their_tenants_masters(cluster, rc):
    tags = tags_on_masters(cluster, "vectors")
    for tag in tags:
        store = key(tag, "store")
        assert rc.execute_command("LLM.CREATE-VECTOR-STORE", store) == 1
        vectors = vectors_for(tag)
        for i, vector in enumerate(vectors, 1):
            assert rc.execute_command("LLM.ADD", store, "--EMBEDDING-BLOB", blob(vector),
                                      "--META", json.dumps({"n": i}), f"item {i} of {tag}") == i
        assert rc.execute_command("LLM.SIZE", store) == len(vectors)
        probe = vectors[3] + 0.01
        answer = rc.execute_command("LLM.KNN", store, "--K", 3, "--EMBEDDING-BLOB", blob(probe),
                                    "--WITHDATA")
        assert [row[0] for row in answer] == expected_nearest(vectors, probe, 3)
        assert answer[0][2] == f"item 4 of {tag}".encode()
        assert json.loads(answer[0][3]) == {"n": 4}
    # Each tenant's store is on its own master, and only there.
    owners = set()
    for tag in tags:
        owner = cluster.master_for(key(tag, "store"))
        owners.add(owner.port)
        with owner.client() as client:
            assert client.execute_command("LLM.SIZE", key(tag, "store")) == 12
    assert len(owners) == 3


def test_add_and_knn_embedded_by_the_tenants_llm(cluster, rc, llm_api):
    for tag in tags_on_masters(cluster, "embedded"):
        create_llm(rc, llm_api, tag)
        store = key(tag, "store")
        assert rc.execute_command("LLM.CREATE-VECTOR-STORE", store, "--LLM", key(tag, "llm")) == 1
        texts = [f"{tag}: Paris is in France", f"{tag}: Rome is in Italy", f"{tag}: Oslo is in Norway"]
        before = len(llm_api.embedding_requests())
        for i, text in enumerate(texts, 1):
            assert rc.execute_command("LLM.ADD", store, text) == i
        assert len(llm_api.embedding_requests()) == before + 3
        data, vector, *_ = rc.execute_command("LLM.GET", store, 2)
        assert data == texts[1].encode()
        assert [float(x) for x in vector.split(b",")] == pytest.approx(
            OpenAIServer.embedding_for(texts[1], DIM), abs=1e-6)
        # A query text is embedded by the same LLM: the identical text is nearest, at distance 0.
        nearest = rc.execute_command("LLM.KNN", store, "--K", 1, texts[2])
        assert nearest[0][0] == 3 and float(nearest[0][1]) == pytest.approx(0, abs=1e-5)


# ---- apps, runs, records, reviews ---------------------------------------------

def test_apps_run_record_and_review_on_every_master(cluster, rc, llm_api):
    for tag in tags_on_masters(cluster, "apps"):
        create_llm(rc, llm_api, tag)
        app, ask, store = key(tag, "app"), key(tag, "ask"), key(tag, "store")
        assert rc.execute_command("LLM.CREATE-APP", app, "--LLM", key(tag, "llm"),
                                  "--PROMPT", "Say hello to {{name}}") == 1
        assert rc.execute_command("LLM.RUN", app, "--VARS", '{"name": "Alice"}') == \
            b"echo: Say hello to Alice"

        # --ASYNC replies the record's id; the run finishes in the background.
        record_id = rc.execute_command("LLM.RUN", app, "--ASYNC", "--TAGS", tag, "--VARS",
                                       '{"name": "Bob"}')
        record = wait_done(rc, app, record_id)
        assert record["state"] == b"done" and record["answer"] == b"echo: Say hello to Bob"
        tagged = rc.execute_command("LLM.RESULTS", app, "--TAG", tag)
        assert [as_dict(row)["id"] for row in tagged] == [str(record_id).encode()]
        assert len(rc.execute_command("LLM.RESULTS", app)) == 2

        # An agent's result, then a review of it at the serve band: the same
        # question is answered from the review, without the model.
        agent_id = rc.execute_command("LLM.RECORD", app, "--QUESTION", f"who runs {tag}?",
                                      "--ANSWER", "nobody", "--MODEL", "agent")
        assert as_dict(rc.execute_command("LLM.RESULT", app, agent_id))["model"] == b"agent"
        assert rc.execute_command("LLM.REVIEW", app, agent_id, "--ANSWER", f"{tag} runs itself",
                                  "--SCORE", 97, "--NOTES", "checked") == 1
        reviewed = as_dict(rc.execute_command("LLM.RESULT", app, agent_id))
        assert (reviewed["reviewed_answer"], reviewed["reviewed_score"]) == \
            (f"{tag} runs itself".encode(), b"97")
        chats = len(llm_api.chat_requests())
        assert rc.execute_command("LLM.RUN", app, "--VARS", '{"name": "Alice"}', f"who runs {tag}?") \
            == f"{tag} runs itself".encode()
        assert len(llm_api.chat_requests()) == chats

        # A search app over the tenant's store.
        assert rc.execute_command("LLM.CREATE-VECTOR-STORE", store, "--LLM", key(tag, "llm")) == 1
        rc.execute_command("LLM.ADD", store, "--META", '{"source": "atlas"}', "Paris is in France.")
        assert rc.execute_command("LLM.CREATE-SEARCH", ask, "--LLM", key(tag, "llm"),
                                  "--VECTOR-STORE", store, "--PROMPT",
                                  "{{context}} | {{question}}") == 1
        assert rc.execute_command("LLM.RUN", ask, "Where is Paris?") == \
            b"echo: Paris is in France.\n(source: atlas) | Where is Paris?"
        searched = as_dict(rc.execute_command("LLM.RESULTS", ask)[0])
        assert searched["match_source"] == b"atlas"


# ---- routing: CROSSSLOT and MOVED ----------------------------------------------

CROSS_SLOT_CREATIONS = [
    ("LLM.CREATE-APP", "app", ["--LLM", "other:llm"]),
    ("LLM.CREATE-SEARCH", "ask", ["--LLM", "own:llm", "--VECTOR-STORE", "other:store"]),
    ("LLM.CREATE-SEARCH", "ask", ["--VECTOR-STORE", "own:store", "--LLM", "other:llm"]),
    ("LLM.CREATE-CHAT", "chat", ["--LLM", "own:llm", "--VECTOR-STORE", "other:store"]),
    ("LLM.CREATE-VECTOR-STORE", "store", ["--LLM", "other:llm"]),
]


def cross_slot_creation(cluster, rc, api, command, name, options, test: str):
    """The command creating ``name`` with its option keys (``own:...`` in its
    slot, ``other:...`` in a slot of another master), every key it names but
    the created one in place; returns (the command, its key, the other tag)."""
    case = CROSS_SLOT_CREATIONS.index((command, name, options))
    own, other = tags_on_masters(cluster, f"{test}-cross-{case}")[:2]
    for tag in (own, other):
        create_llm(rc, api, tag)
        rc.execute_command("LLM.CREATE-VECTOR-STORE", key(tag, "store"))
    target = key(own, name)
    rc.delete(target)
    resolved = [key(own if opt.startswith("own") else other, opt.split(":")[1])
                if ":" in opt else opt for opt in options]
    return [command, target, *resolved], target, other


CROSS_SLOT_IDS = [f"{c}-{o[-2]}" for c, _, o in CROSS_SLOT_CREATIONS]


@pytest.mark.parametrize("command, name, options", CROSS_SLOT_CREATIONS, ids=CROSS_SLOT_IDS)
def test_redis_py_finds_option_keys_by_their_key_specs_and_refuses_cross_slot(
        cluster, rc, llm_api, command, name, options):
    args, target, _ = cross_slot_creation(cluster, rc, llm_api, command, name, options, "client")
    # RedisCluster asks Redis for the keys (COMMAND GETKEYS: the key-specs) and
    # refuses before sending: option keys are keys.
    assert len(getkeys(cluster.master_for(target), *args)) == 1 + len(options) // 2
    with pytest.raises(RedisClusterException, match="same key slot"):
        rc.execute_command(*args)
    assert rc.exists(target) == 0


@pytest.mark.parametrize("command, name, options", CROSS_SLOT_CREATIONS, ids=CROSS_SLOT_IDS)
def test_redis_refuses_option_keys_in_another_slot_with_crossslot(cluster, rc, llm_api, command, name,
                                                                 options):
    args, target, other = cross_slot_creation(cluster, rc, llm_api, command, name, options, "node")
    # Sent to a node directly, as any client that does not compute slots would:
    # the node serving the command's own key, and the one serving the other key.
    try:
        for node in (cluster.master_for(target), cluster.master_for(key(other, "llm"))):
            with node.client() as client:
                expect_error(client, *args, code="CROSSSLOT", match="don't hash to the same slot")
    finally:
        created = rc.exists(target)
        rc.delete(target)
    assert created == 0


def test_same_slot_option_keys_are_accepted_in_any_option_order(cluster, rc, llm_api):
    tag = tags_on_masters(cluster, "order")[0]
    create_llm(rc, llm_api, tag)
    rc.execute_command("LLM.CREATE-VECTOR-STORE", key(tag, "store"), "--LLM", key(tag, "llm"))
    assert rc.execute_command("LLM.CREATE-SEARCH", key(tag, "ask"), "--K", 2, "--VECTOR-STORE",
                              key(tag, "store"), "--PROMPT", "{{context}}{{question}}",
                              "--LLM", key(tag, "llm")) == 1
    assert set(getkeys(cluster.master_for(key(tag, "ask")), "LLM.CREATE-SEARCH", key(tag, "ask"),
                       "--K", 2, "--VECTOR-STORE", key(tag, "store"), "--LLM", key(tag, "llm"))) == \
        {key(tag, n).encode() for n in ("ask", "store", "llm")}


def test_a_key_of_another_masters_slot_answers_moved(cluster, rc):
    here, there = tags_on_masters(cluster, "moved")[:2]
    store = key(there, "store")
    rc.execute_command("LLM.CREATE-VECTOR-STORE", store)
    rc.execute_command("LLM.ADD", store, "--EMBEDDING", "1,2,3,4", "item")
    owner = cluster.master_for(store)
    with cluster.master_for(key(here, "store")).client() as client:
        for args in (("LLM.SIZE", store), ("LLM.ADD", store, "--EMBEDDING", "1,2,3,4", "x"),
                     ("LLM.KNN", store, "--EMBEDDING", "1,2,3,4"),
                     ("LLM.CREATE-APP", key(there, "app"), "--LLM", key(there, "llm"))):
            with pytest.raises(redis.exceptions.MovedError) as moved:
                client.execute_command(*args)
            assert str(moved.value) == f"{key_slot(store)} 127.0.0.1:{owner.port}"
    # Nothing ran on the wrong node, and redis-py follows the cluster to the owner.
    assert rc.execute_command("LLM.SIZE", store) == 1


# ---- an app whose LLM or store is in another slot, brought in by RESTORE ---------

def test_run_of_a_restored_app_whose_llm_or_store_is_in_another_slot_is_an_err(
        cluster, rc, llm_api, make_server):
    """Key-specs cannot see the keys inside a value: an app created elsewhere
    (no cluster, no CROSSSLOT) and RESTOREd into the cluster is refused at run
    time. Its LLM and store exist on the same node, so without the check the
    run would work, by accident of where the slots are."""
    app_tag, other_tag = tags_on_one_master(cluster, "restored")
    create_llm(rc, llm_api, app_tag)
    create_llm(rc, llm_api, other_tag)
    rc.execute_command("LLM.CREATE-VECTOR-STORE", key(other_tag, "store"), "--LLM", key(other_tag, "llm"))
    rc.execute_command("LLM.ADD", key(other_tag, "store"), "Paris is in France.")

    standalone = make_server("standalone").client()
    apps = {
        key(app_tag, "app"): ["LLM.CREATE-APP", "--LLM", key(other_tag, "llm"), "--PROMPT", "hi"],
        key(app_tag, "ask"): ["LLM.CREATE-SEARCH", "--LLM", key(app_tag, "llm"),
                              "--VECTOR-STORE", key(other_tag, "store")],
    }
    for app_key, (command, *options) in apps.items():
        assert standalone.execute_command(command, app_key, *options) == 1
        assert rc.execute_command("RESTORE", app_key, 0, standalone.dump(app_key)) == b"OK"
        chats = len(llm_api.chat_requests())
        for mode in ((), ("--ASYNC",)):
            expect_error(rc, "LLM.RUN", app_key, *mode, "Where is Paris?", code="ERR",
                         match="(?i)slot")
        assert len(llm_api.chat_requests()) == chats
        assert rc.execute_command("LLM.RESULTS", app_key) == [], "a refused run records nothing"


# ---- the Python client -----------------------------------------------------------

def test_python_client_over_redis_cluster(cluster, rc, llm_api):
    client_module = pytest.importorskip("redis_llm.client", reason="redis_llm.client not written yet")
    tag = tags_on_masters(cluster, "client")[1]
    llm = client_module.Client(rc)
    assert llm.create_llm(key(tag, "llm"), params={"base_url": llm_api.url}) is True
    store = key(tag, "store")
    assert llm.create_vector_store(store, llm=key(tag, "llm")) is True
    vectors = [OpenAIServer.embedding_for(f"item {i}", DIM) for i in range(1, 9)]
    ids = [llm.add(store, f"item {i}", np.array(vector, dtype=np.float64))
           for i, vector in enumerate(vectors, 1)]
    assert ids == list(range(1, 9))
    assert llm.size(store) == 8
    # numpy vectors went as float32 bytes: the stored ones are the given ones.
    assert [float(x) for x in rc.execute_command("LLM.GET", store, 5)[1].split(b",")] == \
        pytest.approx(vectors[4], abs=1e-7)
    probe = np.asarray(vectors[5], dtype=np.float32) + 0.01
    nearest = llm.knn(store, probe, k=2)
    assert [row[0] for row in nearest] == expected_nearest(
        [np.asarray(v, dtype=np.float32) for v in vectors], probe, 2)
    assert llm.knn(store, query="item 3", k=1)[0][0] == 3
    app = key(tag, "app")
    assert llm.create_app(app, llm=key(tag, "llm"), prompt="Say hello to {{name}}") is True
    assert llm.run(app, vars={"name": "Carol"}) == "echo: Say hello to Carol"
    record_id = llm.run(app, vars={"name": "Dan"}, async_=True)
    wait_done(rc, app, record_id)
    assert llm.result(app, record_id)["answer"] == "echo: Say hello to Dan"


def test_the_review_desk_over_a_cluster_lists_reviews_and_charts_apps_of_every_master(
        cluster, rc, llm_api):
    from redis_llm import web
    tags = tags_on_masters(cluster, "desk")
    for node in cluster.nodes:      # ACL users are per node
        with node.client() as client:
            client.execute_command("ACL", "SETUSER", "expert", "reset", "on", ">expert-pw",
                                   "~{desk-*", "+@all")
    for tag in tags:
        create_llm(rc, llm_api, tag)
        rc.execute_command("LLM.CREATE-APP", key(tag, "app"), "--LLM", key(tag, "llm"))
        rc.execute_command("LLM.RECORD", key(tag, "app"), "--QUESTION", f"question of {tag}",
                           "--ANSWER", "an answer")
    desk = web.create_app(f"redis://127.0.0.1:{cluster.masters()[0].port}", cluster=True)
    browser = desk.test_client()
    assert browser.post("/login", data={"user": "expert", "password": "expert-pw"}).status_code == 302
    listed = re.findall(r'data-app="([^"]+)"', browser.get("/").data.decode())
    assert listed == sorted(key(tag, "app") for tag in tags)     # one app per master
    app = key(tags[2], "app")
    html = browser.get("/review", query_string={"app": app}).data.decode()
    assert f"question of {tags[2]}" in html
    token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    response = browser.post("/review", data={"csrf": token, "app": app, "id": "1",
                                             "answer": "reviewed", "score": "88"})
    assert response.status_code == 302
    assert as_dict(rc.execute_command("LLM.RESULT", app, 1))["reviewer"] == b"expert"
    dashboard = browser.get("/dashboard", query_string={"app": app}).data.decode()
    assert re.search(r'data-chart="bands".*?data-value="1"', dashboard, re.S)
    export = browser.get("/export", query_string={"app": app, "format": "jsonl"}).data.decode()
    assert json.loads(export)["reviewed_answer"] == "reviewed"


# ---- failover: this kills a master, so it runs last --------------------------------

def node_snapshot(client: redis.Redis) -> dict:
    """Every key of one node: its type, DEBUG DIGEST-VALUE (items, vectors,
    params, records with reviews), and what clients read from it."""
    out = {}
    for name in sorted(client.scan_iter(count=1000)):
        kind = client.type(name)
        entry = {"type": kind, "digest": client.execute_command("DEBUG", "DIGEST-VALUE", name)}
        if kind == b"llm-store":
            entry["size"] = client.execute_command("LLM.SIZE", name)
        elif kind == b"llm-appli":
            records = client.execute_command("LLM.RESULTS", name, "--COUNT", 10000)
            entry["records"] = records
            entry["each"] = [client.execute_command("LLM.RESULT", name, as_dict(row)["id"])
                             for row in records]
        out[name] = entry
    return out


def test_a_promoted_replica_holds_every_store_app_and_record_of_its_dead_master(cluster, rc, llm_api):
    tags = tags_on_masters(cluster, "failover")
    expected = {}
    for tag in tags:
        create_llm(rc, llm_api, tag)
        store, vectors_key, app = key(tag, "store"), key(tag, "vectors"), key(tag, "app")
        rc.execute_command("LLM.CREATE-VECTOR-STORE", store, "--LLM", key(tag, "llm"))
        for text in ("Paris is in France.", "Rome is in Italy."):
            rc.execute_command("LLM.ADD", store, "--META", '{"source": "atlas"}', text)
        rc.execute_command("LLM.CREATE-VECTOR-STORE", vectors_key)
        vectors = vectors_for(tag)
        for vector in vectors:
            rc.execute_command("LLM.ADD", vectors_key, "--EMBEDDING-BLOB", blob(vector), "v")
        rc.execute_command("LLM.CREATE-APP", app, "--LLM", key(tag, "llm"), "--PROMPT", "Q: {{input}}")
        rc.execute_command("LLM.CREATE-SEARCH", key(tag, "ask"), "--LLM", key(tag, "llm"),
                           "--VECTOR-STORE", store)
        rc.execute_command("LLM.RUN", app, "first")
        async_id = rc.execute_command("LLM.RUN", app, "--ASYNC", "second")
        assert wait_done(rc, app, async_id)["state"] == b"done"
        rc.execute_command("LLM.RUN", key(tag, "ask"), "Where is Rome?")
        agent_id = rc.execute_command("LLM.RECORD", app, "--QUESTION", "capital of Norway?",
                                      "--ANSWER", "Oslo?", "--META", '{"agent": 7}')
        rc.execute_command("LLM.REVIEW", app, agent_id, "--ANSWER", "Oslo", "--SCORE", 99)
        rc.execute_command("LLM.REVIEW", app, async_id, "--ANSWER", "2nd", "--SCORE", 70,
                           "--NOTES", "meh")
        probe = vectors[7] + 0.01
        expected[tag] = {
            "knn": rc.execute_command("LLM.KNN", vectors_key, "--K", 5, "--EMBEDDING-BLOB", blob(probe)),
            "query": rc.execute_command("LLM.KNN", store, "--K", 2, "--WITHDATA", "Rome is in Italy."),
            "probe": probe,
        }
        assert [row[0] for row in expected[tag]["knn"]] == expected_nearest(vectors, probe, 5)

    # A run in flight on the master that dies: its model answers too late.
    llm_api.delay(8.0)
    lost_id = rc.execute_command("LLM.RUN", key(tags[0], "app"), "--ASYNC", "lost in the failover")
    wait_for(lambda: as_dict(rc.execute_command("LLM.RESULT", key(tags[0], "app"), lost_id))
             ["state"] == b"running", 10, "the doomed run to start", 0.02)

    victim = cluster.master_for(key(tags[0], "app"))
    cluster.wait_replicas_synced()  # replication is asynchronous: compare what was acknowledged
    with victim.client() as client:
        before = node_snapshot(client)
    assert {key(tags[0], n).encode() for n in ("llm", "store", "vectors", "app", "ask")} <= set(before)
    assert len(before) > 5, "keys of the earlier tests live there too"

    cluster.kill(victim)
    promoted = cluster.wait_failover(victim)
    assert cluster.master_for(key(tags[0], "app")).port == promoted.port

    with promoted.client() as client:
        after = node_snapshot(client)
    assert list(after) == list(before)
    for name in before:
        assert after[name] == before[name], name

    survivor = cluster.client()
    try:
        for tag in tags:
            vectors_key, store, app = key(tag, "vectors"), key(tag, "store"), key(tag, "app")
            assert survivor.execute_command("LLM.KNN", vectors_key, "--K", 5, "--EMBEDDING-BLOB",
                                            blob(expected[tag]["probe"])) == expected[tag]["knn"]
            assert survivor.execute_command("LLM.KNN", store, "--K", 2, "--WITHDATA",
                                            "Rome is in Italy.") == expected[tag]["query"]
            # The apps run on the promoted master: the model is called, reviews serve.
            assert survivor.execute_command("LLM.RUN", app, "third") == b"echo: Q: third"
            assert survivor.execute_command("LLM.RUN", app, "capital of Norway?") == b"Oslo"
            assert survivor.execute_command("LLM.RUN", key(tag, "ask"), "Where is Paris?") \
                .startswith(b"echo: Please answer the following question")
            # The promoted master takes writes.
            assert survivor.execute_command("LLM.ADD", store, "Oslo is in Norway.") == 3
        # The run lost with the dead master was failed by the new master's first write.
        lost = as_dict(survivor.execute_command("LLM.RESULT", key(tags[0], "app"), lost_id))
        assert lost["state"] == b"failed" and lost["error"].startswith(b"interrupted:")
    finally:
        survivor.close()
