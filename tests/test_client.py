"""redis_llm.Client, the typed Python client: every method against a real
redis-server with the module (and the scripted OpenAI-compatible server for
LLM calls). Embeddings round-trip bit for bit as numpy float32 arrays, records
come back as dicts, server errors surface as the class of their code (one
table, redis_llm.client_errors) with the whole line the server sent, and the
client's own checks fail before anything is sent.
"""

import json
import time

import numpy as np
import pytest
import redis
from helpers import ERROR_CODE, in_thread, raw_error, wait_for
from openai_server import OpenAIServer
from redis._parsers.commands import CommandsParser

from redis_llm import Client
from redis_llm import client_errors
from redis_llm.client import Item, Match, embedding_blob, parse_vector
from redis_llm.client_errors import (
    ERROR_CLASSES,
    BusyError,
    CommandError,
    NoPermissionError,
    OutOfMemoryError,
    ServerError,
    ServerTimeoutError,
    WrongTypeError,
    error_text,
    response_error,
)

RECORD_FIELDS = ["id", "app", "state", "question", "vars", "answer", "error", "model",
                 "embed_model", "latency_ms", "prompt_tokens", "completion_tokens", "matches",
                 "match_source", "match_page", "session", "tags", "meta", "created_at",
                 "updated_at", "reviewed_answer", "reviewed_score", "reviewed_notes", "reviewer",
                 "served_from", "served_review", "also", "never"]
DIM = 8  # the scripted server's embedding length


class Recorder:
    """A real redis.Redis connection that also keeps every command sent through it."""

    def __init__(self, connection: redis.Redis):
        self.connection = connection
        self.commands: list[tuple] = []

    def execute_command(self, *args, **options):
        self.commands.append(args)
        return self.connection.execute_command(*args, **options)


@pytest.fixture
def client(r):
    return Client(r)


@pytest.fixture
def recorded(r):
    recorder = Recorder(r)
    return Client(recorder), recorder


def with_llm(client, api, key="llm"):
    assert client.create_llm(key, params={"base_url": api.url}) is True


def with_app(client, api, key="app", **options):
    with_llm(client, api)
    assert client.create_app(key, llm="llm", prompt="Answer: {{input}}", **options) is True


def wait_done(client, key, rid, timeout=10.0):
    return wait_for(lambda: (record := client.result(key, rid)) is not None
                    and record["state"] in ("done", "failed") and record,
                    timeout, f"result {rid} of {key} to finish", 0.02)


def server_error(fn, match: str) -> str:
    """Call fn, which must raise the server's error: a redis.ResponseError
    with an upper-case code and a message matching ``match``."""
    with pytest.raises(redis.ResponseError) as info:
        fn()
    text = error_text(info.value)
    assert ERROR_CODE.match(text), text
    assert match in text, text
    return text


# ---- LLMs and vector stores ---------------------------------------------------

def test_create_llm_creates_an_llm_key_and_nx_xx_prevent_it(client, r, api):
    assert client.create_llm("llm", xx=True, params={"base_url": api.url}) is False
    assert not r.exists("llm")
    assert client.create_llm("llm", type="openai", params={"base_url": api.url}) is True
    assert r.type("llm") == b"llm-model"
    assert client.create_llm("llm", nx=True, params={"base_url": api.url}) is False
    assert client.create_llm("llm", xx=True, params={"base_url": api.url}) is True


def test_create_vector_store_with_params_nx_and_xx(client, r):
    assert client.create_vector_store("docs", params={"dim": 3, "metric": "ip"}) is True
    assert client.add("docs", "x", [1, 0, 0]) == 1
    assert client.create_vector_store("docs", nx=True) is False
    assert client.size("docs") == 1
    assert client.create_vector_store("docs", xx=True, type="hnsw", params='{"dim": 3}') is True
    assert client.size("docs") == 0
    assert client.create_vector_store("missing", xx=True) is False
    server_error(lambda: client.add("docs", "y", [1, 0]), "dimension")


def test_numpy_embeddings_round_trip_bit_for_bit(client):
    f32 = np.finfo(np.float32)
    special = np.array([f32.max, -f32.max, f32.tiny, -f32.tiny, f32.smallest_subnormal, -0.0,
                        1 / 3, 0.1, 1e-38, 3.4e38, 16777217.0, -1.5e-45], dtype=np.float32)
    random = np.random.default_rng(7).standard_normal(500).astype(np.float32)
    bits = np.random.default_rng(8).integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32)
    scrambled = bits.view(np.float32)
    scrambled = scrambled[np.isfinite(scrambled)][:3000]
    for n, vector in enumerate((special, random, scrambled), start=1):
        client.create_vector_store(f"store{n}")
        assert client.add(f"store{n}", b"item", vector) == 1
        item = client.get(f"store{n}", 1)
        assert isinstance(item, Item) and item.data == b"item" and item.meta is None
        assert item.embedding.dtype == np.float32 and item.embedding.shape == vector.shape
        assert np.array_equal(item.embedding.view(np.uint32), vector.view(np.uint32)), n


def test_float64_arrays_and_lists_are_sent_as_their_float32_values(client):
    client.create_vector_store("docs")
    values = [0.1, 0.2, 1 / 3, 1e-7]
    assert client.add("docs", "list", values) == 1
    assert client.add("docs", "float64", np.array(values, dtype=np.float64)) == 2
    expected = np.array(values, dtype=np.float32).view(np.uint32)
    for item_id in (1, 2):
        assert np.array_equal(client.get("docs", item_id).embedding.view(np.uint32), expected)


def test_embeddings_are_sent_as_blobs(client, r):
    previous = r.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
    r.config_set("slowlog-log-slower-than", 0)
    try:
        r.slowlog_reset()
        client.create_vector_store("docs")
        client.add("docs", "x", np.array([1.5, 2.5], dtype=np.float32))
        client.knn("docs", [1.5, 2.5])
        sent = [entry["command"] for entry in r.slowlog_get(10)]
    finally:
        r.config_set("slowlog-log-slower-than", previous)
    adds = [c for c in sent if c.startswith(b"LLM.ADD")]
    knns = [c for c in sent if c.startswith(b"LLM.KNN")]
    assert adds and knns, sent
    for command in adds + knns:
        assert b"--EMBEDDING-BLOB" in command and b"--EMBEDDING " not in command, command


def test_get_returns_data_and_meta_and_none_for_a_missing_item(client):
    client.create_vector_store("docs")
    client.add("docs", "Paris", [1, 2], meta={"source": "a.pdf", "page": 5})
    item = client.get("docs", 1)
    assert item.data == b"Paris" and item.meta == {"source": "a.pdf", "page": 5}
    assert client.add("docs", "--K looks like an option", [3, 4]) == 2  # data is always last
    assert client.get("docs", 2).data == b"--K looks like an option"
    assert client.get("docs", 3) is None
    assert client.get("missing", 1) is None


def test_rem_and_size(client):
    assert client.size("docs") == 0
    client.create_vector_store("docs")
    for n in range(3):
        client.add("docs", f"item {n}", [n, 0])
    assert client.size("docs") == 3
    assert client.rem("docs", 2) is True
    assert client.rem("docs", 2) is False
    assert client.rem("missing", 1) is False
    assert client.size("docs") == 2 and client.get("docs", 2) is None


def test_add_with_id_and_ids_above_2_63(client):
    client.create_vector_store("docs")
    assert client.add("docs", "a", [1, 0], id=7) == 7
    big = 2**64 - 1
    assert client.add("docs", "b", [0, 1], id=big) == big
    assert client.get("docs", big).data == b"b"
    assert client.knn("docs", [0, 1], k=1) == [(big, 0.0)]
    assert client.knn("docs", [0, 1], k=1, withdata=True)[0].id == big
    assert client.rem("docs", big) is True


def test_knn_returns_the_nearest_ids_with_float_distances(client):
    vectors = np.random.default_rng(3).standard_normal((50, 6)).astype(np.float32)
    client.create_vector_store("docs")
    for n, vector in enumerate(vectors, start=1):
        client.add("docs", f"item {n}", vector)
    query = vectors[10] + np.float32(0.01)
    found = client.knn("docs", query, k=5, ef=200)
    distances = ((vectors - query) ** 2).sum(axis=1)
    nearest = np.argsort(distances)[:5] + 1
    assert [item_id for item_id, _ in found] == nearest.tolist()
    for item_id, distance in found:
        assert isinstance(item_id, int) and isinstance(distance, float)
        assert distance == pytest.approx(distances[item_id - 1], rel=1e-5)
    assert len(client.knn("docs", query)) == 10  # the server's default K
    assert client.knn("missing", query) == []


def test_knn_withdata_returns_matches_and_filter_takes_a_dict(client):
    client.create_vector_store("docs")
    client.add("docs", "near", [0, 0], meta={"source": "a.pdf", "page": 1})
    client.add("docs", "far", [5, 5], meta={"source": "b.pdf"})
    client.add("docs", "plain", [1, 1])
    found = client.knn("docs", [0, 0], k=3, withdata=True)
    assert found == [Match(1, 0.0, b"near", {"source": "a.pdf", "page": 1}),
                     Match(3, 2.0, b"plain", None), Match(2, 50.0, b"far", {"source": "b.pdf"})]
    assert client.knn("docs", [0, 0], filter={"source": "b.pdf"}) == [(2, 50.0)]
    assert client.knn("docs", [0, 0], filter='{"source": "a.pdf"}') == [(1, 0.0)]


def test_text_is_embedded_by_the_store_llm_for_add_and_knn(client, api):
    with_llm(client, api)
    client.create_vector_store("docs", llm="llm")
    assert client.add("docs", "Paris is in France.", meta={"page": 1}) == 1
    client.add("docs", "Rome is in Italy.")
    expected = np.array(OpenAIServer.embedding_for("Paris is in France.", DIM), dtype=np.float32)
    assert np.array_equal(client.get("docs", 1).embedding, expected)
    found = client.knn("docs", query="Paris is in France.", k=1, withdata=True)
    assert found == [Match(1, 0.0, b"Paris is in France.", {"page": 1})]
    assert api.embedding_requests()[-1].body["input"] == ["Paris is in France."]


def test_timeout_gives_none_and_the_write_still_lands(client, api):
    with_llm(client, api)
    client.create_vector_store("docs", llm="llm")
    api.delay(1.0)
    assert client.add("docs", "slow item", timeout=50) is None
    deadline = time.monotonic() + 10
    while client.size("docs") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.get("docs", 1).data == b"slow item"
    client.create_app("app", llm="llm", record=0)
    api.delay(1.0)
    assert client.run("app", "slow question", timeout=50) is None
    api.delay(1.0)
    assert client.knn("docs", query="slow item", timeout=50) is None


@pytest.mark.parametrize("decode_responses", [False, True])
def test_types_do_not_depend_on_decode_responses(server, api, decode_responses):
    connection = server.client(decode_responses=decode_responses)
    connection.flushall()
    client = Client(connection)
    binary = bytes(range(256))
    client.create_vector_store("docs")
    client.add("docs", binary, [1, 2], meta={"k": "é"})
    assert client.get("docs", 1).data == binary and client.get("docs", 1).meta == {"k": "é"}
    assert client.knn("docs", [1, 2], withdata=True)[0].data == binary
    with_app(client, api)
    answer = client.run("app", "héllo")
    assert answer == "echo: Answer: héllo"
    record = client.result("app", 1)
    assert record["answer"] == answer and record["id"] == 1 and record["tags"] == []
    assert client.stats("app")["by_state"]["done"] == 1
    connection.close()


# ---- client-side checks -----------------------------------------------------------

@pytest.mark.parametrize("embedding, message", [
    ([], "must not be empty"),
    (np.array([], dtype=np.float32), "must not be empty"),
    (np.zeros((2, 3)), r"must be 1-D, got an array of shape \(2, 3\)"),
    ([[1.0, 2.0]], "must be 1-D"),
    (1.5, r"must be 1-D, got an array of shape \(\)"),
    (["a", "b"], "must be a 1-D sequence of numbers"),
    ({"x": 1}, "must be a 1-D sequence of numbers"),
])
def test_a_bad_embedding_is_a_value_error_and_nothing_is_sent(recorded, embedding, message):
    client, recorder = recorded
    with pytest.raises(ValueError, match=message):
        client.add("docs", "x", embedding)
    with pytest.raises(ValueError, match=message):
        client.knn("docs", embedding)
    with pytest.raises(ValueError, match=message):
        client.result_set("app", {"id": 1}, vector=embedding)
    assert recorder.commands == []


@pytest.mark.parametrize("call, error, message", [
    (lambda c: c.run("app", tags=["a,b"]), ValueError, "without commas"),
    (lambda c: c.record("app", question="q", answer="a", tags=["ok", ""]), ValueError,
     "non-empty"),
    (lambda c: c.knn("docs", [1], k="5"), TypeError, "k must be an integer"),
    (lambda c: c.get("docs", True), TypeError, "id must be an integer, got a bool"),
    (lambda c: c.add("docs", "x", [1], timeout=1.5), TypeError, "timeout must be an integer"),
    (lambda c: c.create_llm("llm", params=[1, 2]), TypeError, "params must be a dict"),
    (lambda c: c.review("app", 1, answer="a", score="97"), TypeError, "score must be a number"),
    (lambda c: c.result_set("app", "{}", vector=[1.0]), TypeError, "record dict"),
    (lambda c: c.run("app", vars={"x": float("nan")}), ValueError, "not JSON compliant"),
])
def test_arguments_the_client_can_check_fail_before_anything_is_sent(recorded, call, error,
                                                                      message):
    client, recorder = recorded
    with pytest.raises(error, match=message):
        call(client)
    assert recorder.commands == []


def test_exact_float32_rounding_of_decimals_on_a_float64_midpoint():
    # 1 + 2**-24 is halfway between the float32 values 1 and 1 + 2**-23: a
    # decimal just above it reads as exactly that double, which float32
    # rounding would send to the even neighbour, 1.
    above, below = parse_vector(b"1.0000000596046448,-1.0000000596046448"), \
        parse_vector(b"1.0000000596046447")
    assert above.tolist() == [np.nextafter(np.float32(1), np.float32(2)),
                              -np.nextafter(np.float32(1), np.float32(2))]
    assert below.tolist() == [1.0]
    assert parse_vector(b"1.000000059604644775390625").tolist() == [1.0]  # a tie: even
    assert embedding_blob([1.0, 2.0]) == np.array([1, 2], dtype="<f4").tobytes()


# ---- server errors ------------------------------------------------------------------

def test_server_errors_surface_as_response_errors_with_the_server_message(client, r, api):
    server_error(lambda: client.add("nope", "x", [1.0]), "no vector store at key 'nope'")
    client.create_vector_store("docs")
    client.add("docs", "x", [1.0, 2.0])
    server_error(lambda: client.add("docs", "y", [np.nan, 1.0]), "finite float32")
    server_error(lambda: client.knn("docs", [1.0, 2.0, 3.0]), "dimension")
    server_error(lambda: client.knn("docs", [1.0, 2.0], k=0), "--K must be an integer")
    server_error(lambda: client.knn("docs"), "give --EMBEDDING")
    server_error(lambda: client.create_llm("llm", nx=True, xx=True),
                 "options --NX and --XX cannot be combined")
    server_error(lambda: client.create_llm("llm", type="nope"), "--TYPE must be one of")
    r.set("text", "hello")
    text = server_error(lambda: client.size("text"), "WRONGTYPE")
    assert text.startswith("WRONGTYPE")
    server_error(lambda: client.run("missing-app", "hi"), "no app at key 'missing-app'")
    with_app(client, api)
    server_error(lambda: client.run("app", session="s"), "--SESSION is for chat apps")
    server_error(lambda: client.run("app", "hi", async_=True, timeout=5), "cannot be combined")
    client.run("app", "hi")
    server_error(lambda: client.review("app", 1, answer="a", score=101), "--SCORE must be")
    server_error(lambda: client.results("app", state="nope"), "--STATE must be one of")
    server_error(lambda: client.stats("missing-app"), "no app at key")
    api.fail(400, message="bad request body")
    server_error(lambda: client.run("app", "hi"), "bad request body")
    assert client.result("app", 2)["state"] == "failed"


# What redis.call("EVAL", ERROR_SCRIPT, 0, line) replies: the error line as given.
ERROR_SCRIPT = "return redis.error_reply(ARGV[1])"


def eval_error(r, line: str) -> redis.ResponseError:
    """The exception the installed redis-py makes of the error reply ``line``."""
    with pytest.raises(redis.ResponseError) as info:
        r.eval(ERROR_SCRIPT, 0, line)
    return info.value


def test_the_table_maps_the_six_codes_and_keeps_redis_py_classes_catchable():
    assert ERROR_CLASSES == {"ERR": CommandError, "WRONGTYPE": WrongTypeError,
                             "NOPERM": NoPermissionError, "BUSY": BusyError,
                             "TIMEOUT": ServerTimeoutError, "OOM": OutOfMemoryError}
    for cls in ERROR_CLASSES.values():
        assert issubclass(cls, ServerError) and issubclass(cls, redis.ResponseError)
    # Code written for redis-py still catches ours.
    assert issubclass(NoPermissionError, redis.exceptions.NoPermissionError)
    assert issubclass(OutOfMemoryError, redis.exceptions.OutOfMemoryError)
    # TIMEOUT is the server's, not the socket's timeout.
    assert not issubclass(ServerTimeoutError, (redis.TimeoutError, TimeoutError))


@pytest.mark.parametrize("code", sorted(ERROR_CLASSES))
def test_each_code_maps_to_its_class_with_the_servers_text(r, server, code):
    line = f"{code} Sent by the server, {code} and all"
    sent = raw_error(server.port, ("EVAL", ERROR_SCRIPT, 0, line))
    assert sent == line
    exc = eval_error(r, line)
    assert error_text(exc) == sent
    error = response_error(exc)
    assert type(error) is ERROR_CLASSES[code]
    assert str(error) == sent and error.code == code
    assert error.message == f"Sent by the server, {code} and all"
    assert error_text(error) == sent and response_error(error) is error


@pytest.mark.parametrize("line, cls", [
    ("BUSYKEY Target key name already exists.", ServerError),
    ("FOOCODE an error code of another module", ServerError),
    ("ERR ERR", CommandError),   # what Redis makes of redis.error_reply("ERR")
    ("ERR LLM key 'x' does not exist", CommandError),
    ("READONLY You can't write against a read only replica.", redis.exceptions.ReadOnlyError),
    ("NOSCRIPT No matching script.", redis.exceptions.NoScriptError),
])
def test_other_codes_keep_their_text_and_redis_py_classes_stay(r, line, cls):
    exc = eval_error(r, line)
    if line.startswith("FOOCODE") and not hasattr(redis.ResponseError("x"), "status_code"):
        # redis-py 5, 6, 7.0 and 7.1 record no code: an unknown one reads as
        # what followed a stripped ERR (documented in error_text).
        line, cls = "ERR " + line, CommandError
    error = response_error(exc)
    assert type(error) is cls
    assert error_text(exc) == line
    if cls in (ServerError, CommandError):
        assert str(error) == line and error.code == line.split()[0]
    elif cls not in ERROR_CLASSES.values():
        assert error is exc   # redis-py's own class, untouched


def test_error_text_reads_errors_as_redis_py_5_and_6_make_them(monkeypatch):
    # Those versions strip the codes they know and record none: the code
    # comes back from the class, an unknown one is left in the message, and
    # a plain error whose first word is no server code followed a stripped ERR.
    monkeypatch.setattr(client_errors, "_HAS_STATUS_CODE", False)
    old = {}

    def made(cls, message):
        exc = cls(message)
        exc.status_code = None
        return exc

    old["ERR no app at key 'ask'"] = made(redis.ResponseError, "no app at key 'ask'")
    old["ERR LLM key 'x' does not exist"] = made(redis.ResponseError, "LLM key 'x' does not exist")
    old["ERR ERR"] = made(redis.ResponseError, "ERR")
    old["WRONGTYPE Operation against a key holding the wrong kind of value"] = made(
        redis.ResponseError, "WRONGTYPE Operation against a key holding the wrong kind of value")
    old["BUSY Redis is busy running a script."] = made(redis.ResponseError,
                                                       "BUSY Redis is busy running a script.")
    old["NOPERM this user has no permissions"] = made(redis.exceptions.NoPermissionError,
                                                      "this user has no permissions")
    old["OOM command not allowed"] = made(redis.exceptions.OutOfMemoryError, "command not allowed")
    old["READONLY You can't write"] = made(redis.exceptions.ReadOnlyError, "You can't write")
    for line, exc in old.items():
        assert error_text(exc) == line
        error = response_error(exc)
        assert error_text(error) == line
        # A class of the table says it all; redis-py's ReadOnlyError stays as it was.
        assert str(error) == line if isinstance(error, ServerError) else error is exc


def test_client_raises_the_class_of_the_code_with_the_servers_text(client, r, server):
    # ERR and WRONGTYPE from the module; the exact lines the server sent.
    error = server_error(lambda: client.run("missing-app", "hi"), "no app at key")
    with pytest.raises(CommandError) as info:
        client.run("missing-app", "hi")
    assert str(info.value) == error == raw_error(server.port, ("LLM.RUN", "missing-app", "hi"))
    r.set("text", "hello")
    with pytest.raises(WrongTypeError) as info:
        client.size("text")
    assert str(info.value) == raw_error(server.port, ("LLM.SIZE", "text"))
    assert str(info.value) == "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_client_raises_noperm_oom_and_busy_with_the_servers_text(make_server):
    srv = make_server(config={"lua-time-limit": "50"})
    admin = srv.client()
    llm = Client(admin)
    llm.create_llm("other:llm", params={"base_url": "http://127.0.0.1:9"})
    llm.create_vector_store("r:docs", llm="other:llm")
    admin.acl_setuser("reader", enabled=True, passwords=["+reader-pw"], keys=["r:*"],
                      commands=["+ping", "+llm.size", "+llm.add"], reset=True)
    reader = Client(srv.client(username="reader", password="reader-pw"))
    auth = ("AUTH", "reader", "reader-pw")
    assert reader.size("r:docs") == 0
    # Redis' NOPERM: a command the user may not run.
    with pytest.raises(redis.exceptions.NoPermissionError) as info:  # redis-py's class catches it
        reader.create_vector_store("r:new")
    assert type(info.value) is NoPermissionError
    assert str(info.value) == raw_error(srv.port, auth, ("LLM.CREATE-VECTOR-STORE", "r:new"))
    # The module's: the store's LLM is a key the user may not read.
    with pytest.raises(NoPermissionError) as info:
        reader.add("r:docs", "text to embed")
    assert str(info.value) == raw_error(srv.port, auth, ("LLM.ADD", "r:docs", "text to embed"))
    assert str(info.value).startswith("NOPERM ") and "'other:llm'" in str(info.value)

    admin.config_set("maxmemory", 1)
    with pytest.raises(redis.exceptions.OutOfMemoryError) as info:
        llm.create_vector_store("docs")
    assert type(info.value) is OutOfMemoryError
    assert str(info.value) == raw_error(srv.port, ("LLM.CREATE-VECTOR-STORE", "docs"))
    assert str(info.value).startswith("OOM ")
    admin.config_set("maxmemory", 0)

    # A script running past lua-time-limit makes the server answer BUSY.
    script = in_thread(lambda: srv.client().eval("while true do end", 0))

    def busy():
        try:
            llm.size("docs")
        except BusyError as exc:
            return exc
        return None

    try:
        error = wait_for(busy, 30, "the server to answer BUSY")
        assert str(error) == raw_error(srv.port, ("LLM.SIZE", "docs"))
        assert str(error).startswith("BUSY ") and error.code == "BUSY"
    finally:
        srv.client().script_kill()
    script["thread"].join(30)
    assert "Script killed" in error_text(script["error"])
    assert llm.size("docs") == 0


# ---- apps and runs ------------------------------------------------------------------

def test_run_returns_the_answer_and_sends_vars_and_params(client, api):
    with_llm(client, api)
    client.create_app("hello", llm="llm", prompt="Say hello to {{name}}")
    api.script("Hello, Ada!")
    assert client.run("hello", vars={"name": "Ada"}, params={"temperature": 0}) == "Hello, Ada!"
    body = api.chat_requests()[-1].body
    assert body["messages"][-1]["content"] == "Say hello to Ada" and body["temperature"] == 0
    assert client.run("hello", vars='{"name": "Bob"}') == "echo: Say hello to Bob"
    assert client.create_app("hello", llm="llm", nx=True) is False
    assert client.create_app("other", llm="llm", xx=True) is False


def test_an_input_or_query_that_looks_like_an_option_is_sent_after_double_dash(client, api):
    with_app(client, api)
    assert client.run("app", "--VERBOSE") == "echo: Answer: --VERBOSE"
    assert client.run("app", "--") == "echo: Answer: --"
    client.create_vector_store("docs", llm="llm")
    client.add("docs", "--K is an option")
    assert client.knn("docs", query="--K is an option", k=1)[0][0] == 1


def test_run_verbose_returns_run_details(client, api):
    with_llm(client, api)
    client.create_vector_store("docs", llm="llm")
    client.add("docs", "Paris is in France.", meta={"source": "atlas.pdf", "page": 3})
    assert client.create_search("ask", llm="llm", vector_store="docs", k=1) is True
    api.script("Paris is in France, says the atlas.")
    details = client.run("ask", "Where is Paris?", verbose=True)
    assert list(details) == ["answer", "prompt", "items", "model", "prompt_tokens",
                             "completion_tokens", "served_from", "record", "served_review"]
    assert details["served_review"] is None
    assert details["answer"] == "Paris is in France, says the atlas."
    assert "Where is Paris?" in details["prompt"] and "(source: atlas.pdf, page: 3)" in \
        details["prompt"]
    [item] = details["items"]
    assert isinstance(item, Match) and item.id == 1 and item.data == b"Paris is in France."
    assert item.meta == {"source": "atlas.pdf", "page": 3} and isinstance(item.distance, float)
    assert details["model"] == "gpt-3.5-turbo" and details["served_from"] == "llm"
    assert isinstance(details["prompt_tokens"], int) and details["completion_tokens"] == 7
    assert details["record"] == 1 and client.result("ask", 1)["answer"] == details["answer"]


def test_async_run_returns_the_record_id_and_its_result_is_a_dict(client, api):
    with_app(client, api)
    api.delay(0.3)
    rid = client.run("app", "What is 6 x 7?", async_=True, tags=["math", "faq"], vars={"x": 1})
    assert isinstance(rid, int) and rid == 1
    record = wait_done(client, "app", rid)
    assert list(record) == RECORD_FIELDS
    assert record["id"] == 1 and record["app"] == "app" and record["state"] == "done"
    assert record["question"] == "What is 6 x 7?" and record["vars"] == {"x": 1}
    assert record["answer"] == "echo: Answer: What is 6 x 7?" and record["error"] is None
    assert record["model"] == "gpt-3.5-turbo" and record["tags"] == ["math", "faq"]
    assert isinstance(record["latency_ms"], int) and isinstance(record["prompt_tokens"], int)
    assert record["created_at"] <= record["updated_at"]
    assert record["served_from"] == "llm" and record["reviewed_score"] is None
    assert client.result("app", 99) is None and client.result("missing", 1) is None


def test_review_results_and_filters_decode_records(client, api):
    with_app(client, api)
    for question, tag in (("one", "odd"), ("two", "even"), ("three", "odd"), ("four", "even")):
        client.run("app", question, tags=[tag])
    assert client.review("app", 1, answer="ONE", score=97.5, notes="checked") is True
    assert client.review("app", 2, answer="TWO", score=0.00001) is True
    assert client.review("app", 3, answer="THREE", score=70) is True
    reviewed = client.results("app", reviewed=True)
    assert [rec["id"] for rec in reviewed] == [3, 2, 1]
    assert reviewed[2]["reviewed_answer"] == "ONE" and reviewed[2]["reviewed_score"] == 97.5
    assert reviewed[2]["reviewed_notes"] == "checked" and reviewed[2]["reviewer"] == "default"
    assert reviewed[1]["reviewed_score"] == 0.00001
    assert [rec["id"] for rec in client.results("app", reviewed=False)] == [4]
    assert [rec["id"] for rec in client.results("app", min_score=50.5, max_score=90)] == [3]
    assert [rec["id"] for rec in client.results("app", tag="even")] == [4, 2]
    assert [rec["id"] for rec in client.results("app", count=2, offset=1)] == [3, 2]
    assert [rec["id"] for rec in client.results("app", state="done", model="gpt-3.5-turbo",
                                                count=1)] == [4]
    since = client.result("app", 3)["created_at"]
    assert {rec["id"] for rec in client.results("app", since=since)} >= {3, 4}
    assert {rec["id"] for rec in client.results("app", until=since)} <= {1, 2}
    assert [rec["id"] for rec in client.results("app", text="THREE")] == [3]
    assert client.results("missing") == []


def test_a_review_at_95_serves_the_same_question(client, api):
    with_app(client, api)
    client.run("app", "Who wrote redis-llm?")
    client.review("app", 1, answer="sewenew", score=97)
    chats = len(api.chat_requests())
    details = client.run("app", "Who wrote redis-llm?", verbose=True)
    assert details["answer"] == "sewenew" and details["served_from"] == "review"
    assert len(api.chat_requests()) == chats
    assert client.result("app", 2)["served_from"] == "review"


def test_record_stores_an_agent_result(client, api):
    with_app(client, api)
    rid = client.record("app", question="2+2?", answer="4", model="agent-1", latency=120,
                        tags=["math"], session="Zoë", meta={"agent": "calc", "steps": [1, 2]})
    assert rid == 1
    record = client.result("app", rid)
    assert record["state"] == "done" and record["question"] == "2+2?" and record["answer"] == "4"
    assert record["model"] == "agent-1" and record["latency_ms"] == 120
    assert record["tags"] == ["math"] and record["session"] == "Zoë"
    assert record["meta"] == {"agent": "calc", "steps": [1, 2]}
    assert [rec["id"] for rec in client.results("app", session="Zoë")] == [1]


def test_stats_decodes_counts_bands_mean_and_models(client, api):
    with_app(client, api)
    client.run("app", "a")
    client.run("app", "b")
    client.record("app", question="q", answer="a", model="agent", latency=10)
    client.review("app", 1, answer="A", score=97)
    client.review("app", 3, answer="A", score=70)
    stats = client.stats("app")
    assert stats["records"] == 3 and stats["reviewed"] == 2 and stats["mean_score"] == 83.5
    assert stats["by_state"] == {"pending": 0, "running": 0, "done": 3, "failed": 0}
    assert stats["by_band"] == {"not confident": 0, "somewhat confident": 1, "confident": 0,
                                "a known fact": 1}
    assert set(stats["models"]) == {"gpt-3.5-turbo", "agent"}
    assert stats["models"]["agent"] == {"results": 1, "mean_latency_ms": 10.0,
                                        "prompt_tokens": 0, "completion_tokens": 0,
                                        "reviewed": 1, "mean_score": 70.0}
    assert stats["models"]["gpt-3.5-turbo"]["results"] == 2
    assert stats["models"]["gpt-3.5-turbo"]["reviewed"] == 1
    assert stats["models"]["gpt-3.5-turbo"]["mean_score"] == 97.0
    assert stats["over_time"] == []
    [(start, results, reviewed)] = client.stats("app", interval=86_400_000 * 365)["over_time"]
    assert (results, reviewed) == (3, 2) and start % (86_400_000 * 365) == 0
    with_app(client, api, key="empty")
    assert client.stats("empty")["mean_score"] is None


def test_a_search_record_decodes_matches_and_the_best_match(client, api):
    with_llm(client, api)
    client.create_vector_store("docs", llm="llm")
    client.add("docs", "Paris is in France.", meta={"source": "atlas.pdf", "page": 12})
    client.add("docs", "Rome is in Italy.", meta={"source": "guide.pdf", "page": "iv"})
    client.create_search("ask", llm="llm", vector_store="docs", k=2, record=100,
                         review={"serve_score": 90})
    client.run("ask", "Paris is in France.")
    record = client.result("ask", 1)
    assert record["embed_model"] == "text-embedding-ada-002"
    assert [m["content"] for m in record["matches"]] == ["Paris is in France.",
                                                         "Rome is in Italy."]
    assert record["matches"][0]["distance"] == 0.0 and record["matches"][1]["page"] == "iv"
    assert record["match_source"] == "atlas.pdf" and record["match_page"] == 12
    client.run("ask", "Rome is in Italy.")
    assert client.result("ask", 2)["match_page"] == "iv"


def test_chat_runs_history_and_chat_log(client, api):
    with_llm(client, api)
    client.create_vector_store("memory", llm="llm")
    assert client.create_chat("chat", llm="llm", vector_store="memory",
                              history={"summary_cnt": 0, "msg_ctx_cnt": 4},
                              prompt="You are terse.") is True
    assert client.run("chat", "Hi, I am Ada.", session="ada") == "echo: Hi, I am Ada."
    assert client.history("chat", session="ada") == [("user", "Hi, I am Ada."),
                                                     ("assistant", "echo: Hi, I am Ada.")]
    assert client.history("chat") == [] and client.history("missing") == []
    assert client.chat_log("chat", [("user", "I like tea."),
                                    {"role": "assistant", "content": "Noted."}],
                           session="ada", unsummarised=0, summaries=0) == 4
    client.run("chat", "What do I like?", session="ada")
    sent = api.chat_requests()[-1].body["messages"]
    assert sent[0] == {"role": "system", "content": "You are terse."}
    assert [m["content"] for m in sent[1:]] == ["Hi, I am Ada.", "echo: Hi, I am Ada.",
                                                "I like tea.", "Noted.", "What do I like?"]
    assert client.history("chat", session="ada")[-2:] == [
        ("user", "What do I like?"), ("assistant", "echo: What do I like?")]
    server_error(lambda: client.chat_log("chat", [("robot", "x")]), "messages must be")


def test_result_set_copies_a_record_exactly(client, r, api):
    with_app(client, api)
    with_app(client, api, key="copy")
    client.record("app", question="q", answer="a", session="Zoë", tags=["x", "y"],
                  meta={"n": 1})
    client.run("app", "hello", vars={"v": [1, 2]})
    client.review("app", 2, answer="HELLO", score=88.25)
    client.record("app", question="binary session", answer="a", session=b"\xff\x00-raw")
    assert [rec["id"] for rec in client.results("app", session=b"\xff\x00-raw")] == [3]
    for rid in (1, 2, 3):
        assert client.result_set("copy", client.result("app", rid)) is True
        assert r.execute_command("LLM.RESULT", "copy", rid) == \
            r.execute_command("LLM.RESULT", "app", rid)
    payload = json.dumps({"id": 5, "app": "copy", "state": "done", "question": "q5",
                          "created_at": 1})
    assert client.result_set("copy", payload) is True
    assert client.result("copy", 5)["question"] == "q5"
    server_error(lambda: client.result_set("copy", {"id": 0}), "not a valid record")


def test_result_set_with_a_vector_serves_a_close_question(client, api):
    # The scripted server's embeddings are hashes: the guard, which compares
    # the questions' meaning, is off so that the vector alone decides.
    with_app(client, api, review={"guard": False})
    now = int(time.time() * 1000)
    record = {"id": 1, "app": "app", "state": "done", "question": "Who wrote it?",
              "answer": "?", "created_at": now, "updated_at": now,
              "reviewed_answer": "sewenew", "reviewed_score": 97}
    # The stored embedding is the one of another question: only the vector
    # can make that question match.
    vector = np.array(OpenAIServer.embedding_for("Who is the author?", DIM), dtype=np.float32)
    assert client.result_set("app", record, vector=vector) is True
    details = client.run("app", "Who is the author?", verbose=True)
    assert details["served_from"] == "review" and details["answer"] == "sewenew"


def test_list_keys_returns_key_and_type_pairs_sorted_by_key(client, api):
    with_llm(client, api)
    client.create_vector_store("docs", llm="llm")
    client.create_app("app", llm="llm")
    client.create_search("ask", llm="llm", vector_store="docs")
    client.create_chat("chat", llm="llm", vector_store="docs")
    client.redis.set("plain", "not listed")
    assert client.list_keys() == [(b"app", "app"), (b"ask", "search"), (b"chat", "chat"),
                                  (b"docs", "vector-store"), (b"llm", "llm")]
    assert client.list_keys(type="search") == [(b"ask", "search")]
    assert client.list_keys(match="a*") == [(b"app", "app"), (b"ask", "search")]
    assert client.list_keys(count=2) == [(b"app", "app"), (b"ask", "search")]
    server_error(lambda: client.list_keys(type="nope"), "--TYPE must be one of")


# ---- connections and routing ------------------------------------------------------

def test_from_url_connects_and_keeps_the_connection(server):
    client = Client.from_url(f"redis://127.0.0.1:{server.port}/0")
    assert isinstance(client.redis, redis.Redis) and "Client(" in repr(client)
    assert client.size("missing") == 0
    client.redis.close()


def test_every_command_has_a_method_that_routes_by_its_key(recorded, r, api):
    """Each command the client builds names its key where redis-py's cluster
    router looks for it (COMMAND key-specs, and COMMAND GETKEYS for the
    commands with keyword keys), and every LLM.* command but LLM.DEBUG has a
    method."""
    client, recorder = recorded
    client.create_llm("{t}:llm", params={"base_url": api.url})
    client.create_vector_store("{t}:docs", llm="{t}:llm")
    client.add("{t}:docs", "Paris is in France.", [0.0] * DIM)
    client.get("{t}:docs", 1)
    client.knn("{t}:docs", [0.0] * DIM)
    client.size("{t}:docs")
    client.rem("{t}:docs", 1)
    client.create_app("{t}:app", llm="{t}:llm")
    client.create_search("{t}:search", llm="{t}:llm", vector_store="{t}:docs")
    client.create_chat("{t}:chat", llm="{t}:llm", vector_store="{t}:docs")
    client.run("{t}:app", "hi")
    client.chat_log("{t}:chat", [("user", "hi")])
    client.history("{t}:chat")
    rid = client.record("{t}:app", question="q", answer="a")
    client.review("{t}:app", rid, answer="b", score=50)
    client.result_set("{t}:app", client.result("{t}:app", rid))
    client.results("{t}:app")
    client.stats("{t}:app")
    client.list_keys()
    names = {str(name, "ascii") if isinstance(name, bytes) else name
             for name in r.command_list(pattern="llm.*")}
    names = {name.upper() for name in names}
    sent = {args[0] for args in recorder.commands}
    assert sent == names - {"LLM.DEBUG"}
    parser = CommandsParser(r)
    for args in recorder.commands:
        if args[0] == "LLM.LIST":  # keyless: on a cluster the client asks every primary
            assert parser.get_keys(r, *args) is None
            continue
        keys = [k.decode() if isinstance(k, bytes) else k for k in parser.get_keys(r, *args)]
        assert keys[0] == args[1], args
        named = [args[i + 1] for i, word in enumerate(args) if word in ("--LLM", "--VECTOR-STORE")]
        assert keys[1:] == named, args


# ---- guarded reviews: --ALSO and --NEVER ------------------------------------------------

def test_review_lists_are_kept_replaced_and_cleared_and_records_decode_them(client, api):
    with_app(client, api)
    client.run("app", "Who wrote redis-llm?")
    unreviewed = client.result("app", 1)
    assert (unreviewed["also"], unreviewed["never"], unreviewed["served_review"]) == ([], [], None)
    assert client.review("app", 1, answer="sewenew", score=97,
                         also=["Who is the author of redis-llm?", "Qui a écrit redis-llm ?"],
                         never=["Who wrote redis-py?"]) is True
    record = client.result("app", 1)
    assert record["also"] == ["Who is the author of redis-llm?", "Qui a écrit redis-llm ?"]
    assert record["never"] == ["Who wrote redis-py?"]
    client.review("app", 1, answer="sewenew", score=98)               # None: both kept
    assert (client.result("app", 1)["also"], client.result("app", 1)["never"]) == (
        record["also"], record["never"])
    client.review("app", 1, answer="sewenew", score=98, also=[b"Who made redis-llm?"])
    record = client.result("app", 1)
    assert (record["also"], record["never"]) == (["Who made redis-llm?"], ["Who wrote redis-py?"])
    client.review("app", 1, answer="sewenew", score=98, never=[])     # []: cleared
    record = client.result("app", 1)
    assert (record["also"], record["never"]) == (["Who made redis-llm?"], [])
    client.review("app", 1, answer="sewenew", score=98, also=[])
    assert client.results("app", reviewed=True)[0]["also"] == []


def test_review_sends_one_option_per_question_and_an_empty_list_as_one_empty_value(recorded,
                                                                                      api):
    client, recorder = recorded
    with_app(client, api)
    rid = client.record("app", question="q", answer="a")
    recorder.commands.clear()
    client.review("app", rid, answer="b", score=50, also=["q1", "q2"], never=[])
    client.review("app", rid, answer="b", score=50)
    assert recorder.commands == [
        ("LLM.REVIEW", "app", rid, "--ANSWER", "b", "--SCORE", "50",
         "--ALSO", "q1", "--ALSO", "q2", "--NEVER", ""),
        ("LLM.REVIEW", "app", rid, "--ANSWER", "b", "--SCORE", "50")]


@pytest.mark.parametrize("options, error, message", [
    ({"also": "one question"}, TypeError, "also must be a list of questions"),
    ({"never": b"one question"}, TypeError, "never must be a list of questions"),
    ({"also": ["ok", 7]}, TypeError, "also questions must be strings"),
    ({"also": ["ok", ""]}, ValueError, r"must not be empty \(give \[\] to clear"),
    ({"never": ["  "]}, ValueError, "never questions must not be empty"),
])
def test_bad_review_lists_fail_before_anything_is_sent(recorded, options, error, message):
    client, recorder = recorded
    with pytest.raises(error, match=message):
        client.review("app", 1, answer="a", score=97, **options)
    assert recorder.commands == []


def test_an_also_question_is_served_and_a_never_question_is_not(client, api):
    with_app(client, api)
    client.run("app", "Who wrote redis-llm?")
    client.review("app", 1, answer="sewenew", score=97, also=["Who maintains redis-llm?"])
    chats = len(api.chat_requests())
    # Exact, ignoring case and punctuation.
    details = client.run("app", "who maintains Redis-LLM", verbose=True)
    assert (details["answer"], details["served_from"], details["served_review"]) == (
        "sewenew", "review", 1)
    assert len(api.chat_requests()) == chats
    record = client.result("app", details["record"])
    assert (record["served_from"], record["served_review"]) == ("review", 1)
    assert client.run("app", "Who wrote redis-llm?", verbose=True)["served_review"] == 1
    # A --NEVER question is never served, even one the review also lists.
    client.review("app", 1, answer="sewenew", score=97, never=["Who maintains redis-llm?"])
    details = client.run("app", "Who maintains redis-llm?", verbose=True)
    assert (details["served_from"], details["served_review"]) == ("llm", None)
    assert len(api.chat_requests()) == chats + 1
    record = client.result("app", details["record"])
    assert (record["served_from"], record["served_review"]) == ("llm", None)


def test_review_list_errors_are_the_servers(client, api):
    with_app(client, api)
    client.run("app", "q")
    too_many = [f"question {n}" for n in range(33)]
    server_error(lambda: client.review("app", 1, answer="a", score=97, also=too_many),
                 "at most 32")
    server_error(lambda: client.review("app", 1, answer="a", score=97, also=too_many[:20],
                                       never=too_many[20:]), "at most 32")
    assert client.result("app", 1)["reviewed_score"] is None


def test_result_set_copies_a_record_with_its_lists(client, r, api):
    with_app(client, api)
    with_app(client, api, key="copy")
    client.run("app", "Who wrote redis-llm?")
    client.review("app", 1, answer="sewenew", score=97, also=["Who made it?"], never=["Why?"])
    client.run("app", "who made it")
    assert client.result("app", 2)["served_review"] == 1
    for rid in (1, 2):
        assert client.result_set("copy", client.result("app", rid)) is True
        assert r.execute_command("LLM.RESULT", "copy", rid) == \
            r.execute_command("LLM.RESULT", "app", rid)
    # The copy serves as the original does.
    assert client.run("copy", "Who made it?", verbose=True)["served_review"] == 1
