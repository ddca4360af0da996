"""llama.cpp's own OpenAI-compatible server as a real peer of the ``openai`` type.

One ``python -m llama_cpp.server`` (llama-cpp-python's ``server`` extra) is
started for the file, on the local model, with a config file of model
aliases: ``smollm2`` chats (SmolLM2-135M-Instruct), ``embedder`` embeds
(all-MiniLM-L6-v2's GGUF when it was converted, else SmolLM2 mean-pooled),
``smollm2-mean`` embeds with SmolLM2 mean-pooled (to compare with the
in-process ``llamacpp`` type) and ``smollm2-tokens`` embeds without pooling,
as a server started with ``--embedding true`` alone does. The server keeps
one model loaded at a time and swaps on the alias a request names (about a
second for these small models): the tests are ordered to swap little.

The ``openai`` LLM type points its ``base_url`` at it, with no ``api_key``.
Generation is greedy (temperature 0); the assertions are on what is
deterministic: what was retrieved, what was recorded, vectors and errors.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import expect_error, require_local_models, wait_for

from redis_llm import providers
from redis_llm.testing import free_port

@pytest.fixture(scope="module", autouse=True)
def _local_models_installed():
    require_local_models()

SMOLLM2_DIM = 576     # SmolLM2-135M's hidden size
MINILM_DIM = 384
# SmolLM2 is a llama-architecture model without a pooling type in its GGUF file:
# llama_cpp.server has no pooling option, but a metadata override sets one (1: mean).
MEAN_POOLING = "llama.pooling_type=int:1"
FACTS = ["The Zorblatt bridge in Quenford was painted teal in 1987.",
         "Mira Olsk is the head baker of the Brindle Street bakery.",
         "The Pemberton observatory has a telescope with a 3 metre mirror.",
         "Tomatoes need six hours of sunlight a day to ripen well."]
QUESTION = "Who is the head baker of the Brindle Street bakery?"


def minilm_path() -> str | None:
    """all-MiniLM-L6-v2 as GGUF, when setup.sh converted it (redis_llm.gguf_convert)."""
    find = getattr(providers, "default_embedding_path", None)
    path = find() if find else None
    return path if path and Path(path).is_file() else None


class LlamaServer:
    """A ``python -m llama_cpp.server`` process on a free port."""

    def __init__(self, workdir: Path):
        smollm2 = providers.default_model_path()
        self.minilm = minilm_path()
        self.dim = MINILM_DIM if self.minilm else SMOLLM2_DIM
        # One thread each: on a shared 2-core machine llama.cpp's spinning threads
        # make 2 threads several times slower than 1.
        common = {"n_threads": 1, "n_threads_batch": 1, "verbose": False}
        embedder = ({"model": self.minilm} if self.minilm
                    else {"model": smollm2, "kv_overrides": [MEAN_POOLING]})
        models = [
            {"model": smollm2, "model_alias": "smollm2", "n_ctx": 2048, **common},
            {**embedder, "model_alias": "embedder", "embedding": True, "n_ctx": 512, **common},
            {"model": smollm2, "model_alias": "smollm2-mean", "embedding": True, "n_ctx": 512,
             "kv_overrides": [MEAN_POOLING], **common},
            {"model": smollm2, "model_alias": "smollm2-tokens", "embedding": True, "n_ctx": 512,
             **common},
        ]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "llama-server.json"
        self.config.write_text(json.dumps({"host": "127.0.0.1", "port": self.port,
                                           "models": models}))
        self.log_path = workdir / "llama-server.log"
        self.process = None

    def start(self, timeout: float = 120.0) -> "LlamaServer":
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", "--config_file", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT)
        # The first model is loaded before the server listens: /v1/models answering
        # means it can serve.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"llama_cpp.server exited ({self.process.returncode}):\n"
                                     f"{self.log()}")
            try:
                if requests.get(self.url + "/v1/models", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"llama_cpp.server not ready within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    try:
        import llama_cpp.server.app  # noqa: F401  (fastapi, uvicorn, sse-starlette...)
    except ImportError as exc:
        pytest.fail(f"llama-cpp-python's server extra is missing ({exc}): "
                    "pip install 'llama-cpp-python[server]'")
    server = LlamaServer(tmp_path_factory.mktemp("llama-server")).start()
    yield server
    server.stop()


def peer_params(llama, chat_model="smollm2", embedding_model="embedder", **chat) -> str:
    """The params of an ``openai`` LLM on the llama.cpp server: no api_key."""
    return json.dumps({
        "base_url": llama.url,
        "chat": {"model": chat_model, "temperature": 0, "max_tokens": 24, **chat},
        "embedding": {"model": embedding_model},
        # Model swaps and a loaded shared machine: more than the 5s default.
        "http": {"socket_timeout": "120s"}})


def verbose(reply: list) -> dict:
    return dict(zip((name.decode() for name in reply[0::2]), reply[1::2]))


def vector_of(r, key, item_id) -> np.ndarray:
    return np.array([float(x) for x in r.execute_command("LLM.GET", key, item_id)[1].split(b",")],
                    dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_server_serves_the_aliases(llama):
    models = requests.get(llama.url + "/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["smollm2", "embedder", "smollm2-mean",
                                                 "smollm2-tokens"]


def test_an_openai_llm_without_api_key_runs_an_app(r, llama):
    assert r.execute_command("LLM.CREATE-LLM", "peer", "--PARAMS", peer_params(llama)) == 1
    r.execute_command("LLM.CREATE-APP", "hello", "--LLM", "peer",
                      "--PROMPT", "Say hello to {{name}}")
    reply = verbose(r.execute_command("LLM.RUN", "hello", "--VARS", '{"name": "Redis"}',
                                      "--VERBOSE"))
    assert reply["answer"].strip()
    reply["answer"].decode("utf-8")
    # The server names the model by its alias and counts the tokens (its count of
    # completion tokens re-tokenizes the text, so it may exceed max_tokens).
    assert reply["model"] == b"smollm2"
    assert reply["prompt_tokens"] > 5 and reply["completion_tokens"] > 0
    # Greedy decoding on the same prompt: the same answer, recorded.
    assert r.execute_command("LLM.RUN", "hello", "--VARS", '{"name": "Redis"}') == reply["answer"]
    record = r.execute_command("LLM.RESULT", "hello", reply["record"])
    fields = dict(zip(record[0::2], record[1::2]))
    assert fields[b"model"] == b"smollm2" and int(fields[b"completion_tokens"]) > 0
    # --PARAMS reach the server: with one token, greedy decoding stops at the
    # start of the same answer.
    short = r.execute_command("LLM.RUN", "hello", "--VARS", '{"name": "Redis"}',
                              "--PARAMS", '{"max_tokens": 1}')
    assert short and reply["answer"].startswith(short) and len(short) < len(reply["answer"])


def test_add_and_knn_embed_text_through_the_server(r, llama):
    r.execute_command("LLM.CREATE-LLM", "peer", "--PARAMS", peer_params(llama))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "facts", "--LLM", "peer")
    ids = [r.execute_command("LLM.ADD", "facts", "--META", json.dumps({"n": i}), fact)
           for i, fact in enumerate(FACTS)]
    assert ids == [1, 2, 3, 4]
    vectors = [vector_of(r, "facts", i) for i in ids]
    assert all(v.shape == (llama.dim,) and np.isfinite(v).all() for v in vectors)
    # The server is deterministic: a fact's own text finds it at distance 0.
    for item_id, fact in zip(ids, FACTS):
        nearest = r.execute_command("LLM.KNN", "facts", "--K", 1, fact)
        assert nearest[0][0] == item_id and float(nearest[0][1]) < 1e-3
    if llama.minilm:
        # A sentence embedder: the question finds the fact that answers it.
        assert r.execute_command("LLM.KNN", "facts", "--K", 1, QUESTION)[0][0] == 2


@pytest.mark.parametrize("alias", ["smollm2-mean", "embedder"])
def test_server_vectors_are_the_in_process_llamacpp_ones(r, llama, alias):
    """The same model and pooling, in redis-server or behind HTTP: the same vectors."""
    smollm2 = providers.default_model_path()
    model = llama.minilm if alias == "embedder" and llama.minilm else smollm2
    r.execute_command("LLM.CREATE-LLM", "peer", "--PARAMS",
                      peer_params(llama, embedding_model=alias))
    r.execute_command("LLM.CREATE-LLM", "local", "--TYPE", "llamacpp", "--PARAMS", json.dumps(
        {"model_path": smollm2, "embedding": {"model_path": model, "pooling": "mean"}}))
    for key, llm in (("via-http", "peer"), ("in-process", "local")):
        r.execute_command("LLM.CREATE-VECTOR-STORE", key, "--LLM", llm)
        for fact in FACTS[:2]:
            r.execute_command("LLM.ADD", key, fact)
    for item_id in (1, 2):
        served, local = vector_of(r, "via-http", item_id), vector_of(r, "in-process", item_id)
        assert served.shape == local.shape == (SMOLLM2_DIM if model == smollm2 else MINILM_DIM,)
        assert cosine(served, local) > 0.999


def test_a_server_without_pooling_gets_a_clear_error(r, llama):
    """``--embedding true`` alone on SmolLM2 answers a vector per token: once
    'malformed embedding response', now named, with the fix."""
    r.execute_command("LLM.CREATE-LLM", "peer", "--PARAMS",
                      peer_params(llama, embedding_model="smollm2-tokens"))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "peer")
    expect_error(r, "LLM.ADD", "s", "The Zorblatt bridge was painted teal.",
                 match=r"^ERR openai: the server returned per-token embeddings \(\d+ vectors\) "
                       r"for input 0, not one pooled vector: start it with a pooling type")
    assert r.execute_command("LLM.SIZE", "s") == 0


def test_search_app_retrieves_through_the_server_and_answers(r, llama):
    r.execute_command("LLM.CREATE-LLM", "peer", "--PARAMS", peer_params(llama))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "facts", "--LLM", "peer")
    for i, fact in enumerate(FACTS):
        r.execute_command("LLM.ADD", "facts", "--META", json.dumps({"source": f"f{i}.txt"}), fact)
    assert r.execute_command("LLM.CREATE-SEARCH", "ask", "--LLM", "peer",
                             "--VECTOR-STORE", "facts", "--K", 2) == 1
    expected = r.execute_command("LLM.KNN", "facts", "--K", 2, "--WITHDATA", QUESTION)
    reply = verbose(r.execute_command("LLM.RUN", "ask", "--VERBOSE", QUESTION))
    # The question was embedded by the server, like LLM.KNN's: the same items.
    assert [(item[0], item[2]) for item in reply["items"]] == \
        [(item[0], item[2]) for item in expected]
    for item in reply["items"]:
        assert item[2] in reply["prompt"]
    assert QUESTION.encode() in reply["prompt"]
    assert reply["answer"].strip() and reply["model"] == b"smollm2"
    if llama.minilm:
        assert reply["items"][0][2] == FACTS[1].encode()


def test_chat_app_talks_and_summarises_into_the_store_through_the_server(r, llama):
    r.execute_command("LLM.CREATE-LLM", "peer", "--PARAMS", peer_params(llama, max_tokens=12))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "memory", "--LLM", "peer")
    r.execute_command("LLM.CREATE-CHAT", "chat", "--LLM", "peer", "--VECTOR-STORE", "memory",
                      "--PROMPT", "History: {{history}}",
                      "--HISTORY", json.dumps({"summary_cnt": 2, "msg_ctx_cnt": 2,
                                               "summary_prompt": "Summarise:\n{{conversation}}"}))
    first = r.execute_command("LLM.RUN", "chat", "--SESSION", "alice", "I like red apples.")
    assert first.strip()
    # Two messages: the server wrote a summary, and embedded it into the store.
    wait_for(lambda: r.execute_command("LLM.SIZE", "memory") == 1, 60, "the summary")
    summary, vector, meta = r.execute_command("LLM.GET", "memory", 1)
    assert summary.strip() and len(vector.split(b",")) == llama.dim
    assert json.loads(meta) == {"session": "alice", "app": "chat"}
    reply = verbose(r.execute_command("LLM.RUN", "chat", "--SESSION", "alice", "--VERBOSE",
                                      "What do I like?"))
    assert reply["prompt"] == b"History: " + summary
    assert [item[2] for item in reply["items"]] == [summary]
    assert reply["answer"].strip()
    assert r.execute_command("LLM.HISTORY", "chat", "--SESSION", "alice")[-2:] == \
        [[b"user", b"What do I like?"], [b"assistant", reply["answer"]]]
