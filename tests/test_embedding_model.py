"""A vector store records the embedding model of its vectors, and refuses a
vector of another model instead of comparing incomparable vectors.

Against a real redis-server and the scripted OpenAI-compatible server: two
LLMs that embed with models named ``emb-a`` and ``emb-b`` (the scripted server
gives both the same vectors, so only the recorded name can tell them apart).
Every path that embeds text for a store is checked (LLM.ADD, LLM.KNN, search
and chat runs, the chat summary), then every path that copies a store keeps
the name (DEBUG RELOAD, DUMP/RESTORE, AOF, AOF rewrite, replication), and a
store saved by the previous encoding (version 1, no model) still loads.
"""

import json
import struct

import numpy as np
import pytest
import redis
from helpers import error_text, expect_error
from test_durability import (
    aof_files,
    assert_log_clean,
    module_strings,
    restart,
    wait_aof_rewrite_done,
    wait_replica_synced,
    with_valid_checksum,
)

from redis_llm import Client
from redis_llm.parsing import MAX_MODEL_NAME_BYTES

DIM = 8                              # the scripted server's embedding length
PROBE = "1,0,0,0,0,0,0,0"
MISMATCH = r"^ERR the vector store at key '{key}' holds embeddings of model '{recorded}'; "


def create_llm(r, key: str, api, model: str, xx: bool = False) -> None:
    params = {"base_url": api.url, "embedding": {"model": model}}
    args = ["--XX"] if xx else []
    assert r.execute_command("LLM.CREATE-LLM", key, *args, "--PARAMS", json.dumps(params)) == 1


@pytest.fixture
def llms(r, api):
    """LLMs 'llm:a' (embeds with emb-a) and 'llm:b' (emb-b)."""
    create_llm(r, "llm:a", api, "emb-a")
    create_llm(r, "llm:b", api, "emb-b")


def recorded_model(client, key: str) -> str | None:
    """The model a non-empty store records, as a client sees it: the refusal
    of a query declared to be of a model no store records."""
    try:
        client.execute_command("LLM.KNN", key, "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", "probe")
    except redis.ResponseError as exc:
        text = error_text(exc)
        prefix = f"ERR the vector store at key '{key}' holds embeddings of model "
        assert text.startswith(prefix) and text.endswith("; the embedding given is of model 'probe'"), text
        return text[len(prefix):-len("; the embedding given is of model 'probe'")].strip("'")
    return None


def state(client, *keys: str) -> list:
    """What a refused command must leave as it was: the keys' digests (a
    store's covers its items and model, an app's its records and sessions)."""
    return client.execute_command("DEBUG", "DIGEST-VALUE", *keys)


# ---- every path that embeds text for a store ------------------------------------

def test_the_first_text_an_llm_embeds_records_its_model(r, api, llms):
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "llm:a") == 1
    assert r.execute_command("LLM.ADD", "docs", "--EMBEDDING", PROBE, "given, model unknown") == 1
    assert recorded_model(r, "docs") is None
    assert r.execute_command("LLM.ADD", "docs", "Paris is in France.") == 2
    assert recorded_model(r, "docs") == "emb-a"
    # The same model goes on adding and querying.
    assert r.execute_command("LLM.ADD", "docs", "Rome is in Italy.") == 3
    assert [row[0] for row in r.execute_command("LLM.KNN", "docs", "--K", 1, "Paris is in France.")] == [2]


def test_add_and_knn_of_text_by_another_model_are_refused_and_change_nothing(r, api, llms):
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "llm:a") == 1
    assert r.execute_command("LLM.ADD", "docs", "Paris is in France.") == 1
    create_llm(r, "llm:a", api, "emb-b", xx=True)       # the store's LLM now embeds with another model
    before, requests = state(r, "docs"), len(api.requests)
    pattern = MISMATCH.format(key="docs", recorded="emb-a") + r"the LLM at key 'llm:a' embeds with 'emb-b'$"
    expect_error(r, "LLM.ADD", "docs", "Rome is in Italy.", match=pattern)
    expect_error(r, "LLM.KNN", "docs", "Paris", match=pattern)
    # Refused before the model is asked: no request, nothing changed.
    assert len(api.requests) == requests
    assert state(r, "docs") == before and recorded_model(r, "docs") == "emb-a"
    # Given vectors without a declared model are still taken.
    assert r.execute_command("LLM.ADD", "docs", "--EMBEDDING", PROBE, "given") == 2


def test_a_declared_model_is_checked_and_recorded(r):
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "vs") == 1
    assert r.execute_command("LLM.ADD", "vs", "--EMBEDDING", PROBE, "no model") == 1
    # A store with items but no model adopts the first model declared.
    assert r.execute_command("LLM.ADD", "vs", "--EMBEDDING-BLOB", np.ones(DIM, "<f4").tobytes(),
                             "--EMBEDDING-MODEL", "emb-x", "x") == 2
    assert recorded_model(r, "vs") == "emb-x"
    before = state(r, "vs")
    pattern = MISMATCH.format(key="vs", recorded="emb-x") + r"the embedding given is of model 'emb-y'$"
    expect_error(r, "LLM.ADD", "vs", "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", "emb-y", "y", match=pattern)
    expect_error(r, "LLM.ADD", "vs", "--ID", 1, "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", "emb-y", "y",
                 match=pattern)
    expect_error(r, "LLM.KNN", "vs", "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", "emb-y", match=pattern)
    assert state(r, "vs") == before
    assert r.execute_command("LLM.ADD", "vs", "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", "emb-x", "z") == 3
    assert [row[0] for row in r.execute_command("LLM.KNN", "vs", "--K", 1, "--EMBEDDING", "0,1,0,0,0,0,0,0",
                                                "--EMBEDDING-MODEL", "emb-x")] in ([1], [3])
    # An empty store has nothing to compare: an empty answer, as for a wrong dimension.
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "empty") == 1
    assert r.execute_command("LLM.KNN", "empty", "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", "m") == []


@pytest.mark.parametrize("value, match", [
    (b"", r"--EMBEDDING-MODEL must be 1 to 1024 bytes, got 0"),
    (b"m" * (MAX_MODEL_NAME_BYTES + 1), r"--EMBEDDING-MODEL must be 1 to 1024 bytes, got 1025"),
    (b"\xff\xfe", r"--EMBEDDING-MODEL must be UTF-8 text"),
])
def test_a_bad_declared_model_name_is_refused(r, value, match):
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "vs") == 1
    expect_error(r, "LLM.ADD", "vs", "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", value, "d", match=match)
    expect_error(r, "LLM.KNN", "vs", "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", value, match=match)
    assert r.execute_command("LLM.SIZE", "vs") == 0


def test_a_declared_model_needs_a_given_embedding(r, api, llms):
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "llm:a") == 1
    requests = len(api.requests)
    match = r"option --EMBEDDING-MODEL names the model of --EMBEDDING or --EMBEDDING-BLOB"
    expect_error(r, "LLM.ADD", "docs", "--EMBEDDING-MODEL", "emb-a", "text", match=match)
    expect_error(r, "LLM.KNN", "docs", "--EMBEDDING-MODEL", "emb-a", "text", match=match)
    assert len(api.requests) == requests and r.execute_command("LLM.SIZE", "docs") == 0


def test_a_model_declared_at_creation_refuses_another_even_in_an_empty_store(r, api, llms):
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "llm:b", "--PARAMS",
                             '{"embedding_model": "emb-a", "metric": "cosine"}') == 1
    expect_error(r, "LLM.ADD", "docs", "text", match=MISMATCH.format(key="docs", recorded="emb-a")
                 + r"the LLM at key 'llm:b' embeds with 'emb-b'$")
    assert r.execute_command("LLM.SIZE", "docs") == 0
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--XX", "--LLM", "llm:a", "--PARAMS",
                             '{"embedding_model": "emb-a"}') == 1
    assert r.execute_command("LLM.ADD", "docs", "text") == 1


@pytest.mark.parametrize("value", ["", 5, "m" * (MAX_MODEL_NAME_BYTES + 1), ["emb-a"]])
def test_a_bad_embedding_model_param_is_refused(r, value):
    expect_error(r, "LLM.CREATE-VECTOR-STORE", "vs", "--PARAMS", json.dumps({"embedding_model": value}),
                 match=r"vector store parameter 'embedding_model' must be a string of 1 to 1024 bytes")
    assert r.exists("vs") == 0
    # null is an unknown model, as when the field is left out.
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "vs", "--PARAMS", '{"embedding_model": null}') == 1


def test_search_and_chat_runs_are_refused_before_anything_is_recorded_or_asked(r, api, llms):
    # The store has no LLM: the app's embeds its questions.
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs") == 1
    assert r.execute_command("LLM.ADD", "docs", "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", "emb-a",
                             "Paris is in France.") == 1
    assert r.execute_command("LLM.CREATE-SEARCH", "search", "--LLM", "llm:b", "--VECTOR-STORE", "docs") == 1
    assert r.execute_command("LLM.CREATE-CHAT", "chat", "--LLM", "llm:b", "--VECTOR-STORE", "docs") == 1
    before, requests = state(r, "docs", "search", "chat"), len(api.requests)
    pattern = MISMATCH.format(key="docs", recorded="emb-a") + r"the LLM at key 'llm:b' embeds with 'emb-b'$"
    expect_error(r, "LLM.RUN", "search", "Where is Paris?", match=pattern)
    expect_error(r, "LLM.RUN", "chat", "--SESSION", "s", "hello", match=pattern)
    expect_error(r, "LLM.RUN", "search", "--ASYNC", "Where is Paris?", match=pattern)
    assert len(api.requests) == requests
    assert state(r, "docs", "search", "chat") == before
    assert r.execute_command("LLM.RESULTS", "search") == [] and r.execute_command("LLM.RESULTS", "chat") == []
    assert r.execute_command("LLM.HISTORY", "chat", "--SESSION", "s") == []
    # The same model runs.
    assert r.execute_command("LLM.CREATE-SEARCH", "search", "--XX", "--LLM", "llm:a",
                             "--VECTOR-STORE", "docs") == 1
    assert r.execute_command("LLM.RUN", "search", "Where is Paris?").startswith(b"echo: ")


def test_a_chat_summary_records_the_model_of_the_llm_that_embedded_it(r, api, llms):
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "memory") == 1
    assert r.execute_command("LLM.CREATE-CHAT", "chat", "--LLM", "llm:a", "--VECTOR-STORE", "memory",
                             "--HISTORY", '{"summary_cnt": 4}') == 1
    for turn in ("one", "two"):
        assert r.execute_command("LLM.RUN", "chat", "--SESSION", "s", turn) == b"echo: " + turn.encode()
    assert r.execute_command("LLM.SIZE", "memory") == 1          # the summary
    assert recorded_model(r, "memory") == "emb-a"
    # Another chat model over the same memory is refused; the first goes on.
    assert r.execute_command("LLM.CREATE-CHAT", "chat:b", "--LLM", "llm:b", "--VECTOR-STORE", "memory") == 1
    expect_error(r, "LLM.RUN", "chat:b", "--SESSION", "s", "three",
                 match=MISMATCH.format(key="memory", recorded="emb-a"))
    assert r.execute_command("LLM.RUN", "chat", "--SESSION", "s", "three") == b"echo: three"


def test_the_client_declares_the_model_of_its_embeddings(r):
    client = Client(r)
    assert client.create_vector_store("vs")
    assert client.add("vs", b"a", np.ones(DIM), embedding_model="emb-a") == 1
    with pytest.raises(redis.ResponseError, match="holds embeddings of model 'emb-a'; "
                                                  "the embedding given is of model 'emb-b'"):
        client.add("vs", b"b", np.ones(DIM), embedding_model="emb-b")
    with pytest.raises(redis.ResponseError, match="the embedding given is of model 'emb-b'"):
        client.knn("vs", np.ones(DIM), embedding_model="emb-b")
    assert client.knn("vs", np.ones(DIM), embedding_model="emb-a") == [(1, 0.0)]
    assert client.knn("vs", np.ones(DIM)) == [(1, 0.0)]
    assert client.size("vs") == 1


# ---- every path that copies a store keeps the name ------------------------------

def fill(client, api) -> None:
    """'docs': an LLM's store with the model of its text; 'given': declared
    items; 'declared': an empty store created with a model; 'plain': no model."""
    create_llm(client, "llm:a", api, "emb-a")
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "llm:a") == 1
    assert client.execute_command("LLM.ADD", "docs", "Paris is in France.") == 1
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", "given") == 1
    assert client.execute_command("LLM.ADD", "given", "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", "emb-é",
                                  "declared") == 1
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", "declared", "--PARAMS",
                                  '{"embedding_model": "emb-d"}') == 1
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", "plain") == 1
    assert client.execute_command("LLM.ADD", "plain", "--EMBEDDING", PROBE, "plain") == 1


KEYS = ("docs", "given", "declared", "plain")


def models(client, writable: bool = True) -> dict:
    """Each store's model as a client sees it, and its digest (which covers it)."""
    seen = {key: recorded_model(client, key) for key in ("docs", "given", "plain")}
    if not writable:        # a replica: the digest shows the empty store's
        return {"models": seen, "digests": [client.execute_command("DEBUG", "DIGEST-VALUE", k) for k in KEYS]}
    try:        # an empty store: adding refuses another model
        client.execute_command("LLM.ADD", "declared", "--EMBEDDING", PROBE, "--EMBEDDING-MODEL", "probe", "x")
        seen["declared"] = None
    except redis.ResponseError as exc:
        seen["declared"] = error_text(exc).split("holds embeddings of model ")[1].split(";")[0].strip("'")
    return {"models": seen, "digests": [client.execute_command("DEBUG", "DIGEST-VALUE", k) for k in KEYS]}


EXPECTED = {"docs": "emb-a", "given": "emb-é", "declared": "emb-d", "plain": None}


@pytest.mark.parametrize("path", ["debug-reload", "restore", "aof", "aof-rewrite", "aof-rewrite-preamble"])
def test_the_model_survives_reload_restore_aof_and_rewrite(make_server, api, path):
    config = {}
    if path.startswith("aof"):
        config = {"appendonly": "yes", "aof-use-rdb-preamble": "yes" if path.endswith("preamble") else "no"}
    srv = make_server(config=config)
    client = srv.client()
    if config:
        wait_aof_rewrite_done(client)
    fill(client, api)
    before = models(client)
    assert before["models"] == EXPECTED
    if path == "debug-reload":
        assert client.execute_command("DEBUG", "RELOAD") == b"OK"
    elif path == "restore":
        for key in KEYS:
            payload = client.dump(key)
            client.delete(key)
            assert client.restore(key, 0, payload) == b"OK"
    else:
        if path.startswith("aof-rewrite"):
            assert client.bgrewriteaof()
            wait_aof_rewrite_done(client)
            base, _ = aof_files(srv)
            if not path.endswith("preamble"):
                # The rewrite names the models in the stores' params.
                assert b'"embedding_model":"emb-a"' in base and b'"embedding_model":"emb-d"' in base
                assert b'"embedding_model":"emb-\\u00e9"' in base
        else:
            _, incr = aof_files(srv)
            # The logged LLM.ADD is the result, with the model that embedded the text.
            assert b"--EMBEDDING-MODEL\r\n$5\r\nemb-a\r\n" in incr
        restart(srv)
        client = srv.client()
    assert models(client) == before
    assert_log_clean(srv)


def test_a_replica_gets_the_model_by_full_sync_and_by_the_command_stream(make_server, api):
    master = make_server("master", config={"repl-diskless-sync-delay": "0"})
    replica = make_server("replica")
    mc, rc = master.client(), replica.client()
    fill(mc, api)
    assert rc.replicaof("127.0.0.1", master.port)
    wait_replica_synced(mc, rc)
    assert models(rc, writable=False) == {
        "models": {key: model for key, model in EXPECTED.items() if key != "declared"},
        "digests": models(mc)["digests"]}
    # A store that learns its model after the sync: the replicated LLM.ADD carries it.
    requests = len(api.requests)
    assert mc.execute_command("LLM.ADD", "plain", "--ID", 7, "--EMBEDDING", PROBE,
                              "--EMBEDDING-MODEL", "emb-p", "late") == 7
    assert mc.execute_command("LLM.CREATE-VECTOR-STORE", "late", "--LLM", "llm:a") == 1
    assert mc.execute_command("LLM.ADD", "late", "embedded on the master") == 1
    wait_replica_synced(mc, rc)
    assert len(api.requests) == requests + 1, "the replica asked the LLM"
    assert recorded_model(rc, "plain") == "emb-p" and recorded_model(rc, "late") == "emb-a"
    for key in (*KEYS, "late"):
        assert rc.execute_command("DEBUG", "DIGEST-VALUE", key) == \
            mc.execute_command("DEBUG", "DIGEST-VALUE", key)
    assert_log_clean(master)
    assert_log_clean(replica)


# ---- stores saved before the model was recorded ---------------------------------

def as_encoding_version_1(payload: bytes, header_edit=None) -> bytes:
    """A DUMP payload of a store, rewritten as encoding version 1 wrote it: the
    module type id's low 10 bits (its encoding version) set to 1, and the
    header JSON (``header_edit`` may change it) re-saved."""
    body, version = payload[:-10], payload[-10:-8]
    assert body[0] == 7 and body[1] == 0x81         # RDB_TYPE_MODULE_2, a 64-bit length
    type_id = int.from_bytes(body[2:10], "big")
    assert type_id & 1023 == 2, "the store's encoding version is 2"
    body = body[:2] + ((type_id & ~1023) | 1).to_bytes(8, "big") + body[10:]
    spans = module_strings(body)
    start, end = spans[1]                            # chunk 1: the JSON header
    header = json.loads(body[start:end])
    assert "embedding_model" not in header["params"]
    if header_edit is not None:
        header_edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) < 2**14
    length = bytes([len(raw)]) if len(raw) < 64 else struct.pack(">H", 0x4000 | len(raw))
    prefix = 1 if end - start < 64 else 2
    body = body[:start - prefix] + length + raw + body[end:]
    return with_valid_checksum(body, version)


def test_a_store_of_encoding_version_1_loads_without_a_model_and_adopts_one(make_server, api):
    srv = make_server()
    r = srv.client()
    assert r.config_set("rdbcompression", "no")
    create_llm(r, "llm:a", api, "emb-a")
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "old", "--LLM", "llm:a", "--PARAMS",
                             '{"m": 4, "ef_construction": 8, "max_elements": 16}') == 1
    for i in range(3):
        assert r.execute_command("LLM.ADD", "old", "--EMBEDDING", f"{i},1,0,0,0,0,0,0", f"d{i}") == i + 1
    assert recorded_model(r, "old") is None
    payload = r.dump("old")
    assert r.restore("copy", 0, as_encoding_version_1(payload)) == b"OK"
    assert r.execute_command("DEBUG", "DIGEST-VALUE", "copy") == \
        r.execute_command("DEBUG", "DIGEST-VALUE", "old")
    assert recorded_model(r, "copy") is None
    assert r.execute_command("LLM.GET", "copy", 2)[0] == b"d1"
    # Its first text embedded records the model; saved again, as version 2.
    assert r.execute_command("LLM.ADD", "copy", "embedded now") == 4
    assert recorded_model(r, "copy") == "emb-a"
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    assert recorded_model(r, "copy") == "emb-a" and r.execute_command("LLM.SIZE", "copy") == 4
    assert_log_clean(srv)
    # Version 1 knew no model: a version 1 header naming one is corrupt.
    bad = as_encoding_version_1(payload, lambda h: h["params"].update(embedding_model="emb-a"))
    with pytest.raises(redis.ResponseError, match="Bad data format"):
        r.restore("bad", 0, bad)
    assert r.exists("bad") == 0
    assert "cannot load a value from RDB: corrupt vector store: bad params" in srv.log
