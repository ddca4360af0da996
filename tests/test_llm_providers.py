"""LLMs end to end: LLM.CREATE-LLM, and the OpenAI / Azure OpenAI providers
calling a real scripted HTTP server (tests/openai_server.py) from a real
redis-server: requests sent, secrets kept, faults retried or reported, Redis
never blocked, and text embedded by a vector store's LLM.
"""

import base64
import itertools
import json
import re
import socket
import time
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from helpers import ERROR_CODE, error_text, expect_error, in_thread, wait_for  # noqa: F401
from openai_server import OpenAIServer
from redis_llm.errors import LLMError

KEY = "sk-test-4f9a2c7e1b3d5a6c8e0f"          # the api_key the module is given
AZURE_REQUIRED = ("api_key", "resource_name", "chat_deployment_id", "embedding_deployment_id",
                  "api_version")
QUEUE_FULL = "the worker queue is full"
NO_API = SimpleNamespace(url="http://127.0.0.1:9")  # for params that are refused before any call
NOT_HERE = "cannot run inside MULTI/EXEC or a script"


# ---- helpers ----------------------------------------------------------------





def create_llm(r, key, params=None, *options, type_=None):
    args = ["LLM.CREATE-LLM", key, *options]
    if type_ is not None:
        args += ["--TYPE", type_]
    if params is not None:
        args += ["--PARAMS", params if isinstance(params, str) else json.dumps(params)]
    return r.execute_command(*args)


def openai_params(api, **extra) -> dict:
    return {"api_key": KEY, "base_url": api.url, **extra}


def azure_params(api, **extra) -> dict:
    return {"api_key": KEY, "resource_name": "res", "chat_deployment_id": "chat-dep",
            "embedding_deployment_id": "emb-dep", "api_version": "2024-02-01",
            "base_url": api.url, **extra}


def make_app(r, params: dict, type_=None, prompt=None, llm="m", app="a") -> None:
    assert create_llm(r, llm, params, type_=type_) == 1
    args = ["LLM.CREATE-APP", app, "--LLM", llm]
    if prompt is not None:
        args += ["--PROMPT", prompt]
    assert r.execute_command(*args) == 1


def run(r, *args):
    return r.execute_command("LLM.RUN", "a", *args)


def vector(reply: bytes) -> np.ndarray:
    return np.array([float(x) for x in reply.split(b",")], dtype=np.float32)


def expected_vector(text: str, dim: int = 8) -> np.ndarray:
    return np.array(OpenAIServer.embedding_for(text, dim), dtype=np.float32)


def flatten(reply) -> bytes:
    """Every byte of a (nested) reply, to look for a secret in it."""
    if isinstance(reply, (list, tuple)):
        return b"\n".join(flatten(x) for x in reply)
    if isinstance(reply, dict):
        return b"\n".join(flatten(k) + b"=" + flatten(v) for k, v in reply.items())
    if isinstance(reply, bytes):
        return reply
    return str(reply).encode()




def joined(job, timeout: float = 10):
    job["thread"].join(timeout)
    assert not job["thread"].is_alive(), "the call did not return"
    if "error" in job:
        raise job["error"]
    return job["value"]


def blocked(client) -> int:
    return client.info("clients")["blocked_clients"]


def resp(*args) -> bytes:
    args = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def gaps(requests) -> list[float]:
    times = [q.time for q in requests]
    return [b - a for a, b in itertools.pairwise(times)]


def changes(client) -> int:
    return client.info("persistence")["rdb_changes_since_last_save"]


# ---- 1. LLM.CREATE-LLM ---------------------------------------------------------

def test_create_llm_defaults_to_the_openai_type_and_the_key_type_is_llm_model(r, api):
    assert create_llm(r, "m", {"api_key": KEY, "base_url": api.url}) == 1
    assert r.type("m") == b"llm-model"
    assert r.execute_command("LLM.CREATE-APP", "a", "--LLM", "m") == 1
    assert run(r, "hi") == b"echo: hi"
    (request,) = api.chat_requests()
    # OpenAI's URL and header, not Azure's.
    assert request.path == "/v1/chat/completions" and request.query == {}
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert "api-key" not in request.headers
    assert request.body["model"] == "gpt-3.5-turbo"
    # The default type's required field is asked for under its name.
    expect_error(r, "LLM.CREATE-LLM", "m2", match=r"^ERR params field 'api_key' is required "
                                                    r"for type openai$")


def test_create_llm_nx_and_xx_return_0_and_change_nothing(r, api):
    assert create_llm(r, "m", {"api_key": KEY}, "--XX") == 0
    assert r.exists("m") == 0
    assert create_llm(r, "m", {"api_key": KEY}, "--NX") == 1
    before = r.dump("m")
    dirty = changes(r)
    assert create_llm(r, "m", openai_params(api, chat={"model": "other"}), "--NX") == 0
    assert r.dump("m") == before
    assert changes(r) == dirty
    assert create_llm(r, "m", openai_params(api, chat={"model": "other"}), "--XX") == 1
    assert r.dump("m") != before
    after = r.dump("m")
    assert create_llm(r, "m", {"api_key": KEY}, "--nx") == 0  # options are case-insensitive
    assert r.dump("m") == after
    expect_error(r, "LLM.CREATE-LLM", "m", "--NX", "--XX", "--PARAMS", json.dumps({"api_key": KEY}),
                 match="^ERR options --NX and --XX cannot be combined$")
    assert r.dump("m") == after
    # The XX'ed value is the one in use.
    assert r.execute_command("LLM.CREATE-APP", "a", "--LLM", "m") == 1
    run(r, "hi")
    assert api.chat_requests()[0].body["model"] == "other"


@pytest.mark.parametrize("option", [(), ("--NX",), ("--XX",)])
def test_create_llm_on_a_key_of_another_type_is_wrongtype(r, option):
    r.set("str", "v")
    r.execute_command("LLM.CREATE-VECTOR-STORE", "store")
    store = r.dump("store")
    for key in ("str", "store"):
        expect_error(r, "LLM.CREATE-LLM", key, *option, "--PARAMS", json.dumps({"api_key": KEY}),
                     code="WRONGTYPE")
    assert r.get("str") == b"v"
    assert r.type("store") == b"llm-store" and r.dump("store") == store


def test_an_unknown_type_is_refused_listing_the_supported_ones(r):
    text = expect_error(r, "LLM.CREATE-LLM", "m", "--TYPE", "gemini", "--PARAMS",
                        json.dumps({"api_key": KEY}))
    assert "openai, azure_openai, llamacpp" in text and "gemini" in text
    assert r.exists("m") == 0


@pytest.mark.parametrize("params", [None, {}, {"api_key": ""},
                                    {"base_url": "https://api.openai.com"},
                                    {"chat": {"model": "gpt-4o"}}])
def test_openai_needs_an_api_key_with_the_default_base_url(r, params):
    expect_error(r, *(["LLM.CREATE-LLM", "m"] + ([] if params is None else
                                                  ["--PARAMS", json.dumps(params)])),
                 match=r"^ERR params field 'api_key' is required for type openai$")
    assert r.exists("m") == 0


@pytest.mark.parametrize("field", AZURE_REQUIRED)
def test_each_required_azure_field_is_named_when_missing(r, api, field):
    params = azure_params(api)
    del params[field]
    expect_error(r, "LLM.CREATE-LLM", "m", "--TYPE", "azure_openai", "--PARAMS", json.dumps(params),
                 match=rf"^ERR params field '{field}' is required for type azure_openai$")
    params[field] = ""
    expect_error(r, "LLM.CREATE-LLM", "m", "--TYPE", "azure_openai", "--PARAMS", json.dumps(params),
                 match=rf"'{field}' is required")
    assert r.exists("m") == 0


def test_azure_with_every_required_field_is_created(r, api):
    assert create_llm(r, "m", azure_params(api), type_="azure_openai") == 1
    assert r.type("m") == b"llm-model"


@pytest.mark.parametrize("params, field, problem", [
    ({"api_key": 123}, "api_key", "must be a string"),
    ({"api_key": KEY, "base_url": 5}, "base_url", "must be a string"),
    ({"api_key": KEY, "http": {"pool": {"size": "5"}}}, "http.pool.size", "must be an integer"),
    ({"api_key": KEY, "http": {"pool": {"size": 0}}}, "http.pool.size", "must be from 1"),
    ({"api_key": KEY, "http": {"socket_timeout": "abc"}}, "http.socket_timeout",
     "must be a duration"),
    ({"api_key": KEY, "http": {"connect_timeout": 5}}, "http.connect_timeout", "must be a string"),
    ({"api_key": KEY, "http": {"enable_certificate_verification": "yes"}},
     "http.enable_certificate_verification", "must be true or false"),
    ({"api_key": KEY, "http": {"max_retries": -1}}, "http.max_retries", "must be an integer"),
    ({"api_key": KEY, "http": {"max_retries": True}}, "http.max_retries", "must be an integer"),
    ({"api_key": KEY, "http": "fast"}, "http", "must be a JSON object"),
    ({"api_key": KEY, "chat": ["gpt-4"]}, "chat", "must be a JSON object"),
    ({"api_key": KEY, "chat": {"model": 4}}, "chat.model", "must be a string"),
])
def test_mistyped_fields_are_refused_naming_the_field(r, params, field, problem):
    text = expect_error(r, "LLM.CREATE-LLM", "m", "--PARAMS", json.dumps(params))
    assert f"'{field}'" in text and problem in text, text
    assert KEY not in text
    assert r.exists("m") == 0


@pytest.mark.parametrize("type_, params, field", [
    ("openai", {"api_key": KEY, "modle": "gpt-4"}, "modle"),
    ("openai", {"api_key": KEY, "http": {"retries": 3}}, "http.retries"),
    ("openai", {"api_key": KEY, "http": {"pool": {"max": 3}}}, "http.pool.max"),
    ("azure_openai", {**azure_params(NO_API), "chat_path": "/x"}, "chat_path"),
    ("azure_openai", {**azure_params(NO_API), "http": {"timeout": "1s"}}, "http.timeout"),
])
def test_unknown_fields_are_refused_naming_them(r, type_, params, field):
    text = expect_error(r, "LLM.CREATE-LLM", "m", "--TYPE", type_, "--PARAMS", json.dumps(params))
    assert text == f"ERR unknown params field '{field}'"
    assert r.exists("m") == 0


def test_unknown_fields_inside_chat_and_embedding_are_passed_to_the_model(r, api):
    chat = {"model": "gpt-x", "temperature": 0.3, "response_format": {"type": "json_object"},
            "logit_bias": {"50256": -100}}
    make_app(r, openai_params(api, chat=chat, embedding={"model": "emb-x", "dimensions": 4}))
    assert run(r, "hi") == b"echo: hi"
    (request,) = api.chat_requests()
    assert request.body == {**chat, "messages": [{"role": "user", "content": "hi"}]}
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    assert r.execute_command("LLM.ADD", "s", "text") == 1
    (request,) = api.embedding_requests()
    assert request.body["model"] == "emb-x" and request.body["dimensions"] == 4
    _, vec = r.execute_command("LLM.GET", "s", 1)
    assert np.array_equal(vector(vec), expected_vector("text", 4))


@pytest.mark.parametrize("params, problem", [
    ("[1, 2]", "--PARAMS must be a JSON object"),
    ('"sk-abc"', "--PARAMS must be a JSON object"),
    ("null", "--PARAMS must be a JSON object"),
    ("{not json", "--PARAMS must be valid JSON"),
    ("", "--PARAMS must be valid JSON"),
])
def test_params_must_be_a_json_object(r, params, problem):
    text = expect_error(r, "LLM.CREATE-LLM", "m", "--PARAMS", params)
    assert text.startswith(f"ERR {problem}"), text
    assert r.exists("m") == 0


P = json.dumps({"api_key": KEY})


@pytest.mark.parametrize("args, option", [
    (["--TYPE", "openai", "--TYPE", "openai", "--PARAMS", P], "--TYPE"),
    (["--PARAMS", P, "--PARAMS", P], "--PARAMS"),
    (["--NX", "--nx", "--PARAMS", P], "--NX"),
])
def test_a_repeated_option_is_refused(r, args, option):
    expect_error(r, "LLM.CREATE-LLM", "m", *args,
                 match=rf"^ERR option {option} given more than once$")
    assert r.exists("m") == 0


def test_a_failed_create_changes_nothing(r, api):
    assert create_llm(r, "m", openai_params(api)) == 1
    before, dirty = r.dump("m"), changes(r)
    failing = [
        ["--PARAMS", json.dumps({"api_key": KEY, "bogus": 1})],
        ["--PARAMS", json.dumps({"api_key": 5})],
        ["--PARAMS", json.dumps({})],
        ["--TYPE", "azure_openai", "--PARAMS", json.dumps({"api_key": KEY})],
        ["--TYPE", "nope", "--PARAMS", json.dumps({"api_key": KEY})],
        ["--XX", "--PARAMS", "[]"],
        ["--PARAMS"],
        ["--bogus"],
    ]
    for args in failing:
        expect_error(r, "LLM.CREATE-LLM", "m", *args)
        expect_error(r, "LLM.CREATE-LLM", "fresh", *args)
    assert r.dump("m") == before
    assert r.exists("fresh") == 0
    assert changes(r) == dirty
    # The old value still works.
    assert r.execute_command("LLM.CREATE-APP", "a", "--LLM", "m") == 1
    assert run(r, "still") == b"echo: still"


# ---- 2. OpenAI against the scripted server ------------------------------------

def test_run_posts_the_chat_request_and_returns_the_answer(r, api):
    make_app(r, openai_params(api, chat={"model": "gpt-test", "temperature": 0.25}),
             prompt="Translate to French: {{input}}")
    api.script("bonjour")
    assert run(r, "hello") == b"bonjour"
    (request,) = api.chat_requests()
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"].startswith("application/json")
    assert request.body == {"model": "gpt-test", "temperature": 0.25,
                            "messages": [{"role": "user", "content": "Translate to French: hello"}]}


def test_run_params_override_the_chat_params_for_that_call_only(r, api):
    make_app(r, openai_params(api, chat={"model": "gpt-test", "temperature": 0.25}))
    api.script("one", "two")
    overrides = {"temperature": 0.9, "model": "gpt-other", "max_tokens": 7}
    assert run(r, "--PARAMS", json.dumps(overrides), "first") == b"one"
    assert run(r, "second") == b"two"
    first, second = api.chat_requests()
    assert first.body == {**overrides, "messages": [{"role": "user", "content": "first"}]}
    assert second.body == {"model": "gpt-test", "temperature": 0.25,
                           "messages": [{"role": "user", "content": "second"}]}


def test_run_params_cannot_replace_the_messages(r, api):
    make_app(r, openai_params(api))
    bogus = [{"role": "user", "content": "injected"}]
    with pytest.raises(redis.ResponseError) as info:
        run(r, "--PARAMS", json.dumps({"messages": bogus}), "real")
    assert error_text(info.value) == "ERR --PARAMS field 'messages' is set by redis-llm"
    assert api.chat_requests() == []


def test_run_params_cannot_turn_on_streaming(r, api):
    # CREATE-LLM refuses chat.stream ("set by redis-llm"): the module reads one
    # JSON answer, not a stream. --PARAMS on LLM.RUN must not let it through.
    make_app(r, openai_params(api))
    try:
        reply = run(r, "--PARAMS", json.dumps({"stream": True}), "hi")
    except redis.ResponseError as exc:
        assert "stream" in error_text(exc)
        assert api.chat_requests() == [], "refused, but only after calling the model"
    else:
        sent = api.chat_requests()[0].body
        assert "stream" not in sent, f"LLM.RUN sent stream=true to the model (reply {reply!r})"


def test_custom_chat_and_embedding_paths_are_honoured(r, api):
    make_app(r, openai_params(api, base_url=api.url + "/proxy/",
                              chat_path="/custom/chat/completions",
                              embedding_path="/custom/embeddings"))
    assert run(r, "hi") == b"echo: hi"
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    assert r.execute_command("LLM.ADD", "s", "doc") == 1
    assert [q.path for q in api.requests] == ["/proxy/custom/chat/completions",
                                              "/proxy/custom/embeddings"]
    assert all(q.headers["authorization"] == f"Bearer {KEY}" for q in api.requests)


def test_no_authorization_header_without_an_api_key(r, api):
    make_app(r, {"base_url": api.url})
    assert run(r, "hi") == b"echo: hi"
    (request,) = api.chat_requests()
    assert "authorization" not in request.headers and "api-key" not in request.headers


def test_verbose_run_reports_the_model_and_the_token_counts(r, api):
    make_app(r, openai_params(api, chat={"model": "gpt-test"}))
    api.script("three word answer")
    reply = run(r, "--VERBOSE", "one two")
    assert reply == [b"answer", b"three word answer", b"prompt", b"one two", b"items", [],
                     b"model", b"gpt-test", b"prompt_tokens", 2, b"completion_tokens", 3,
                     b"served_from", b"llm", b"record", 1, b"served_review", None]


# ---- 3. Azure OpenAI -------------------------------------------------------------

def test_azure_calls_the_deployment_urls_with_the_api_key_header(r, api):
    make_app(r, azure_params(api), type_="azure_openai")
    api.script("from azure")
    assert run(r, "hi") == b"from azure"
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    assert r.execute_command("LLM.ADD", "s", "doc") == 1
    chat, embedding = api.requests
    assert chat.method == "POST" and chat.path == "/openai/deployments/chat-dep/chat/completions"
    assert embedding.method == "POST" and embedding.path == "/openai/deployments/emb-dep/embeddings"
    for request in (chat, embedding):
        assert request.query == {"api-version": "2024-02-01"}
        assert request.headers["api-key"] == KEY
        assert "authorization" not in request.headers
    assert chat.body["messages"] == [{"role": "user", "content": "hi"}]
    assert embedding.body["input"] in (["doc"], "doc")
    data, vec = r.execute_command("LLM.GET", "s", 1)
    assert data == b"doc" and np.array_equal(vector(vec), expected_vector("doc"))


def test_azure_key_is_accepted_by_a_server_that_requires_it(r):
    with OpenAIServer(api_key=KEY) as api:
        make_app(r, azure_params(api, chat={"temperature": 0.1}), type_="azure_openai")
        api.script("authorised")
        assert run(r, "hi") == b"authorised"
        assert api.chat_requests()[0].body["temperature"] == 0.1


# ---- 4. Secrets ------------------------------------------------------------------

def test_the_api_key_never_appears_in_replies_or_the_log(make_server):
    srv = make_server()
    client = srv.client()
    wrong = "sk-wrong-91c3e5a7b9d1f2e4a6c8"
    replies = []

    def errored(*args) -> str:
        with pytest.raises(redis.ResponseError) as info:
            client.execute_command(*args)
        replies.append(error_text(info.value))
        return replies[-1]

    with OpenAIServer(api_key=KEY) as api:
        make_app(client, openai_params(api, api_key=wrong, http={"max_retries": 1}))
        # The server's own 401 for a key it does not know.
        assert errored("LLM.RUN", "a", "hi").startswith("ERR openai: 401 Incorrect API key")
        assert len(api.chat_requests()) == 1  # a 401 is not retried
        # Providers that quote the key they refused, whole or masked.
        api.fail(401, message=f"Incorrect API key provided: {wrong}. Find your key at ...")
        assert errored("LLM.RUN", "a", "hi").startswith("ERR openai: 401 Incorrect API key")
        api.fail(401, message=f"Incorrect API key provided: {wrong[:6]}**********{wrong[-4:]}.")
        errored("LLM.RUN", "a", "hi")
        api.fail(403, message=f"key {wrong!r} lacks the scope")
        errored("LLM.RUN", "a", "hi")
        # Retried statuses that quote it, up to the last attempt.
        api.fail(429, times=2, message=f"Rate limit reached for key {wrong}", retry_after=0)
        assert "after 2 attempts" in errored("LLM.RUN", "a", "hi")
        api.fail(500, times=2, message=f"upstream refused {wrong}", retry_after=0)
        errored("LLM.RUN", "a", "hi")
        # CREATE-LLM errors with the key in --PARAMS.
        errored("LLM.CREATE-LLM", "m2", "--PARAMS", json.dumps({"api_key": wrong, "bogus": 1}))
        errored("LLM.CREATE-LLM", "m2", "--TYPE", "azure_openai", "--PARAMS",
                json.dumps({"api_key": wrong}))
        errored("LLM.CREATE-LLM", "m2", "--PARAMS", json.dumps({"api_key": wrong})[:-1])
        # A successful verbose run does not show it either.
        make_app(client, openai_params(api), llm="ok-llm", app="ok")
        replies.append(flatten(client.execute_command("LLM.RUN", "ok", "--VERBOSE", "hi")).decode())
    assert len(replies) == 10
    for reply in replies:
        for secret in (wrong, KEY, wrong[-4:], KEY[-4:]):
            assert secret not in reply, f"{secret!r} in reply {reply!r}"
    log = srv.log
    assert log, "the server wrote no log"
    for secret in (wrong, KEY):
        assert secret not in log, f"{secret!r} in the server log"
    assert srv.alive()


def test_an_api_key_http_cannot_carry_is_an_error_naming_the_field(r, api):
    # A key with characters an HTTP header cannot hold (not Latin-1): refused
    # at creation or on the call as an ERR about api_key, not a Python crash.
    odd_key = "sk-ключ-0123456789"
    params = openai_params(api, api_key=odd_key)
    try:
        created = create_llm(r, "m", params)
    except redis.ResponseError as exc:
        text = error_text(exc)
    else:
        assert created == 1
        assert r.execute_command("LLM.CREATE-APP", "a", "--LLM", "m") == 1
        with pytest.raises(redis.ResponseError) as info:
            run(r, "hi")
        text = error_text(info.value)
    assert "internal error" not in text, text
    assert "api_key" in text, text
    assert odd_key not in text


def test_the_api_key_is_kept_out_of_slowlog_and_monitor(make_server):
    srv = make_server(config={"slowlog-log-slower-than": "0"})
    client = srv.client()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as monitor:
        monitor.sendall(resp("MONITOR"))
        seen = b""
        while b"+OK\r\n" not in seen:
            seen += monitor.recv(4096)
        assert create_llm(client, "m", {"api_key": KEY}) == 1
        client.set("marker", 1)
        while b"marker" not in seen:
            chunk = monitor.recv(65536)
            assert chunk, "MONITOR connection closed"
            seen += chunk
    slowlog = flatten(client.execute_command("SLOWLOG", "GET", 128))
    assert b"LLM.CREATE-LLM" in slowlog.upper() or b"llm.create-llm" in slowlog.lower()
    leaks = [where for where, text in (("SLOWLOG GET", slowlog), ("MONITOR", seen))
             if KEY.encode() in text]
    assert not leaks, f"the api_key is shown by {' and '.join(leaks)}"


def test_env_api_key_is_read_from_the_server_environment_and_never_persisted(make_server,
                                                                            monkeypatch):
    secret = "sk-env-secret-7d1e9b3f5a2c4e6a"
    monkeypatch.setenv("REDIS_LLM_TEST_API_KEY", secret)
    # Uncompressed RDB strings: a secret in them would show as is.
    srv = make_server(config={"appendonly": "yes", "rdbcompression": "no"})
    client = srv.client()
    with OpenAIServer(api_key=secret) as api:
        make_app(client, openai_params(api, api_key="env:REDIS_LLM_TEST_API_KEY"))
        client.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
        api.script("authorised by env")
        assert client.execute_command("LLM.RUN", "a", "hi") == b"authorised by env"
        assert client.execute_command("LLM.ADD", "s", "doc") == 1
        chat, embedding = api.requests
        assert chat.headers["authorization"] == f"Bearer {secret}"
        assert embedding.headers["authorization"] == f"Bearer {secret}"
        # A failure: neither the reply nor the log shows the secret.
        api.fail(401, message=f"bad key {secret}")
        with pytest.raises(redis.ResponseError) as info:
            client.execute_command("LLM.RUN", "a", "hi")
        assert secret not in error_text(info.value)

    def files() -> dict:
        return {p: p.read_bytes() for p in srv.dir.rglob("*") if p.is_file()}

    def check(where: str) -> None:
        found = files()
        aof = b"".join(data for path, data in found.items() if "appendonlydir" in str(path))
        assert b"env:REDIS_LLM_TEST_API_KEY" in aof, f"{where}: the LLM is not in the AOF"
        leaked = [str(path) for path, data in found.items() if secret.encode() in data]
        assert not leaked, f"{where}: the secret is in {leaked}"

    check("AOF")
    assert client.bgrewriteaof()
    wait_for(lambda: not client.info("persistence")["aof_rewrite_in_progress"]
             and not client.info("persistence")["aof_rewrite_scheduled"], 20, "the AOF rewrite")
    assert client.info("persistence")["aof_last_bgrewrite_status"] == "ok"
    check("rewritten AOF")
    assert client.save()
    rdb = (srv.dir / "dump.rdb").read_bytes()
    assert b"env:REDIS_LLM_TEST_API_KEY" in rdb and secret.encode() not in rdb
    check("RDB")


def test_a_missing_env_variable_is_an_error_naming_it(r, api, monkeypatch):
    # The shared server was started without it; setting it in the test
    # process now must not matter: it is the server's environment that counts.
    secret = "sk-client-side-only-5c7e9a1b3d"
    monkeypatch.setenv("REDIS_LLM_TEST_NOT_IN_SERVER", secret)
    make_app(r, openai_params(api, api_key="env:REDIS_LLM_TEST_NOT_IN_SERVER"))
    text = expect_error(r, "LLM.RUN", "a", "hi", match="REDIS_LLM_TEST_NOT_IN_SERVER")
    assert "api_key" in text and "environment variable" in text
    assert secret not in text
    assert api.requests == []  # nothing was sent without the key
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    expect_error(r, "LLM.ADD", "s", "doc", match="REDIS_LLM_TEST_NOT_IN_SERVER")
    assert r.execute_command("LLM.SIZE", "s") == 0


# ---- 5. Faults -------------------------------------------------------------------

def test_429_500_and_503_are_retried_then_the_call_succeeds(r, api):
    make_app(r, openai_params(api))  # max_retries 3 by default
    api.fail(429)
    api.fail(500)
    api.fail(503)
    api.script("finally")
    assert run(r, "hi") == b"finally"
    requests = api.chat_requests()
    assert len(requests) == 4
    assert all(q.body == requests[0].body for q in requests)
    # Backoff 0.1 * 2^n s between attempts (loosely).
    for n, gap in enumerate(gaps(requests)):
        assert 0.1 * 2 ** n * 0.8 <= gap < 0.1 * 2 ** n + 1.0, gaps(requests)


def test_after_max_retries_the_error_names_the_status_and_the_attempts(r, api):
    make_app(r, openai_params(api, http={"max_retries": 1}))
    api.fail(503, times=2, message="the engine is overloaded")
    expect_error(r, "LLM.RUN", "a", "hi",
                 match=r"^ERR openai: 503 the engine is overloaded \(after 2 attempts\)$")
    assert len(api.chat_requests()) == 2
    api.fail(429, times=2, message="slow down")
    expect_error(r, "LLM.RUN", "a", "hi", match=r"^ERR openai: 429 slow down \(after 2 attempts\)$")
    assert len(api.chat_requests()) == 4
    assert run(r, "again") == b"echo: again"  # nothing left over


def test_max_retries_0_makes_one_attempt(r, api):
    make_app(r, openai_params(api, http={"max_retries": 0}))
    api.fail(500, message="boom")
    expect_error(r, "LLM.RUN", "a", "hi", match=r"^ERR openai: 500 boom \(after 1 attempts?\)$")
    assert len(api.chat_requests()) == 1


def test_retry_after_is_honoured(r, api):
    make_app(r, openai_params(api))
    api.fail(429, retry_after=0.6)
    api.script("waited")
    assert run(r, "hi") == b"waited"
    (gap,) = gaps(api.chat_requests())
    assert 0.55 <= gap < 2.0, gap  # not the 0.1 s default backoff


def test_a_dropped_connection_is_retried(r, api):
    make_app(r, openai_params(api))
    api.drop()
    api.script("after the drop")
    assert run(r, "hi") == b"after the drop"
    assert len(api.chat_requests()) == 2


def test_connections_dropped_every_time_give_an_error_after_the_attempts(r, api):
    make_app(r, openai_params(api, http={"max_retries": 1}))
    api.drop(times=2)
    expect_error(r, "LLM.RUN", "a", "hi", match=r"^ERR openai: .*connect.*\(after 2 attempts\)$")
    assert len(api.chat_requests()) == 2


@pytest.mark.parametrize("status", [400, 404, 422])
def test_a_client_error_is_not_retried_and_carries_the_provider_message(r, api, status):
    make_app(r, openai_params(api))
    api.fail(status, message="Invalid value for 'temperature': must be at most 2")
    expect_error(r, "LLM.RUN", "a", "hi",
                 match=rf"^ERR openai: {status} Invalid value for 'temperature': must be at most 2$")
    assert len(api.chat_requests()) == 1


@pytest.mark.parametrize("body", [b'{"choices": []}', b"<html>not json</html>", b"[1, 2]",
                                  b'{"choices": [{"message": {"content": null}}]}',
                                  b'{"choices": [{"message": {}}]}', b""])
def test_a_malformed_chat_response_is_an_error(r, api, body):
    make_app(r, openai_params(api))
    api.malformed(body=body)
    expect_error(r, "LLM.RUN", "a", "hi", match=r"^ERR openai: .*malformed")
    assert len(api.chat_requests()) == 1
    assert run(r, "fine") == b"echo: fine"


def test_odd_usage_and_model_in_a_response_are_recorded_so_the_rdb_still_loads(r, api):
    """A server's usage and model are its word: a negative token count or a
    numeric model name once made the record, and the whole RDB, unloadable."""
    make_app(r, openai_params(api))
    api.malformed(body=b'{"model": 7, "choices": [{"message": {"content": "hi there"}}], '
                       b'"usage": {"prompt_tokens": -5, "completion_tokens": "3"}}')
    assert run(r, "hello") == b"hi there"
    record = r.execute_command("LLM.RESULT", "a", 1)
    fields = dict(zip(record[0::2], record[1::2]))
    assert (fields[b"model"], fields[b"prompt_tokens"], fields[b"completion_tokens"]) == \
        (b"7", b"0", b"3")
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    assert r.execute_command("LLM.RESULT", "a", 1) == record


@pytest.mark.parametrize("body, problem", [
    (b'{"data": []}', "0 embeddings for 1 inputs"),
    (b'{"embedding": [0.5]}', "no 'data' list"),
    (b'{"data": [[0.5, 1]]}', "an item of 'data' is not an object"),
    (b'{"data": [{"index": 0}]}', "input 0 has no embedding"),
    (b'{"data": [{"index": 0, "embedding": []}]}', "the embedding of input 0 is empty"),
    (b'{"data": [{"index": 0, "embedding": ["x"]}]}', "input 0 is not a list of numbers"),
    (b'{"data": [{"index": 0, "embedding": ["0.5", "1"]}]}', "input 0 is not a list of numbers"),
    (b'{"data": [{"index": 0, "embedding": [0.5, true]}]}', "input 0 is not a list of numbers"),
    (b'{"data": [{"index": 0, "embedding": [NaN, 1]}]}', "input 0 has a non-finite value"),
    (b'{"data": [{"index": 0, "embedding": "not base64!"}]}', "a string that is not base64"),
    (b'{"data": [{"index": 0, "embedding": "AAAAAAA="}]}', "not a whole number of float32s"),
    (b'{"data": [{"index": 1, "embedding": [0.5]}]}',
     r"the indexes \(1\) are not 0 to 0, each once"),
    (b'{"data": [{"index": "0", "embedding": [0.5]}]}',
     r"the indexes \('0'\) are not 0 to 0, each once"),
    # llama.cpp's own /embedding answer: embedding_path is not the OpenAI one.
    (b'[{"index": 0, "embedding": [[0.5]]}]',
     r"malformed response \(a JSON array, not an OpenAI object\)"),
    (b"nope", r"malformed response \(not JSON\)"),
])
def test_a_malformed_embedding_response_is_an_error_naming_the_problem(r, api, body, problem):
    create_llm(r, "m", openai_params(api))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    api.malformed(body=body)
    text = expect_error(r, "LLM.ADD", "s", "doc", match=r"^ERR openai: .*malformed")
    assert re.search(problem + "$", text), text
    assert r.execute_command("LLM.SIZE", "s") == 0
    assert len(api.embedding_requests()) == 1  # a server's answer is not retried


# ---- 5b. Answers outside the OpenAI schema ------------------------------------------
# "OpenAI-compatible" servers (llama.cpp's, proxies) differ from OpenAI in details.
# An answer with one reading is accepted; any other is refused naming what is wrong.

def result_fields(r, app="a", result=1) -> dict:
    record = r.execute_command("LLM.RESULT", app, result)
    return dict(zip(record[0::2], record[1::2]))


def _as_text_parts(body):
    message = body["choices"][0]["message"]
    message["content"] = [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}]
    return body


@pytest.mark.parametrize("edit, answer, tokens", [
    (lambda b: {"choices": [{"message": {"content": "bare"}}]}, b"bare", (b"0", b"0")),
    (_as_text_parts, b"two parts", (b"1", b"2")),
    (lambda b: {"choices": [{"index": 0, "text": "completions shape", "finish_reason": "stop"}]},
     b"completions shape", (b"0", b"0")),
    (lambda b: {**b, "usage": {"prompt_tokens": "many", "completion_tokens": None}}, b"echo: hi",
     (b"0", b"0")),
    (lambda b: {**b, "usage": "n/a"}, b"echo: hi", (b"0", b"0")),
], ids=["no-usage-no-model", "text-parts", "completions-text", "odd-usage", "usage-not-object"])
def test_a_chat_answer_with_one_reading_is_accepted(r, api, edit, answer, tokens):
    make_app(r, openai_params(api))
    api.reshape(edit)
    assert run(r, "hi") == answer
    fields = result_fields(r)
    assert (fields[b"prompt_tokens"], fields[b"completion_tokens"]) == tokens
    assert fields[b"model"] == b"gpt-3.5-turbo"  # the server's name, else the one asked for
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    assert result_fields(r) == fields


@pytest.mark.parametrize("body, problem", [
    (b'{"choices": [{"message": {"content": null, "refusal": "I cannot help with that."}, '
     b'"finish_reason": "stop"}]}', r"the model refused to answer: I cannot help with that\."),
    (b'{"choices": [{"message": {"content": null, "tool_calls": [{"id": "c1", "type": '
     b'"function", "function": {"name": "f", "arguments": "{}"}}]}, '
     b'"finish_reason": "tool_calls"}]}', "the model answered with a tool call, not text"),
    (b'{"choices": [{"message": {"role": "assistant", "content": null}, '
     b'"finish_reason": "length"}]}',
     r"malformed chat completion response: the message has no content \(finish_reason 'length'\)"),
    (b'{"choices": [{"message": {"content": [{"type": "image_url", "image_url": {"url": "x"}}]}}]}',
     "malformed chat completion response: the message content is not text"),
    (b'{"choices": [{"message": {"content": 42}}]}',
     "malformed chat completion response: the message content is not text"),
    (b'{"choices": ["hello"]}',
     r"malformed chat completion response: choices\[0\] is not an object"),
    (b'{"choices": [{"finish_reason": "stop"}]}',
     r"malformed chat completion response: choices\[0\] has no message"),
    (b'{"object": "list", "data": []}', "malformed chat completion response: no choices"),
    (b'{"error": {"message": "model not loaded", "type": "server_error"}}',
     "the server answered 200 with an error: model not loaded"),
])
def test_a_chat_answer_without_text_is_an_error_naming_why(r, api, body, problem):
    make_app(r, openai_params(api))
    api.malformed(body=body)
    expect_error(r, "LLM.RUN", "a", "hi", match=rf"^ERR openai: {problem}$")
    assert len(api.chat_requests()) == 1  # an answer is not retried
    assert run(r, "fine") == b"echo: fine"


def _without_index(body):
    for row in body["data"]:
        del row["index"]
    return body


def _as_base64(body):
    for row in body["data"]:
        row["embedding"] = base64.b64encode(np.array(row["embedding"], "<f4").tobytes()).decode()
    return body


def _bare(body):
    return {"data": [{"embedding": row["embedding"]} for row in body["data"]]}


@pytest.mark.parametrize("edit", [_without_index, _as_base64, _bare],
                         ids=["no-index", "base64", "only-the-vectors"])
def test_an_embedding_answer_with_one_reading_is_accepted(r, api, edit):
    create_llm(r, "m", openai_params(api))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    api.reshape(edit, times=3)
    for text in ("the quick brown fox", "a lazy dog"):
        r.execute_command("LLM.ADD", "s", text)
    assert np.array_equal(vector(r.execute_command("LLM.GET", "s", 1)[1]),
                          expected_vector("the quick brown fox"))
    ((item_id, distance),) = r.execute_command("LLM.KNN", "s", "--K", 1, "a lazy dog")
    assert item_id == 2 and float(distance) < 1e-6
    assert len(api.embedding_requests()) == 3


def _per_token(tokens: int):
    """llama-cpp-python's server on a model without pooling: a vector per token."""
    def edit(body):
        for row in body["data"]:
            row["embedding"] = [row["embedding"]] * tokens
        return body
    return edit


def test_per_token_embeddings_are_refused_asking_for_a_pooling_type(r, api):
    create_llm(r, "m", openai_params(api))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    api.reshape(_per_token(3))
    expect_error(r, "LLM.ADD", "s", "three token text",
                 match=r"^ERR openai: the server returned per-token embeddings \(3 vectors\) for "
                       r"input 0, not one pooled vector: start it with a pooling type")
    # One token too: otherwise short texts would be taken and long ones refused.
    api.reshape(_per_token(1))
    expect_error(r, "LLM.ADD", "s", "one", match=r"per-token embeddings \(1 vector\) for input 0")
    assert r.execute_command("LLM.SIZE", "s") == 0
    assert r.execute_command("LLM.ADD", "s", "pooled") == 1  # the server was fixed
    api.reshape(_per_token(2))
    expect_error(r, "LLM.KNN", "s", "a query", match=r"per-token embeddings \(2 vectors\)")
    assert r.execute_command("LLM.SIZE", "s") == 1


# Several inputs in one request (LLM.REVIEW embeds a question with its --ALSO ones):
# the provider itself, against the same scripted server.

def openai_provider(api):
    from redis_llm.providers import LLMModel
    return LLMModel("openai", openai_params(api)).provider()


def test_embeddings_are_returned_in_input_order_by_index_or_else_by_position(api):
    texts = ["one", "two", "three"]
    expected = [expected_vector(text) for text in texts]
    provider = openai_provider(api)
    api.reshape(lambda body: {**body, "data": body["data"][::-1]})  # indexes 2, 1, 0
    assert all(np.array_equal(a, b) for a, b in zip(provider.embed(texts), expected, strict=True))
    api.reshape(_without_index)
    assert all(np.array_equal(a, b) for a, b in zip(provider.embed(texts), expected, strict=True))


def _set_indexes(*indexes):
    def edit(body):
        for row, index in zip(body["data"], indexes):
            if index is None:
                del row["index"]
            else:
                row["index"] = index
        return body
    return edit


@pytest.mark.parametrize("edit, problem", [
    (_set_indexes(0, None, 2), r"the indexes \(0, None, 2\) are not 0 to 2, each once"),
    (_set_indexes(0, 1, 1), r"the indexes \(0, 1, 1\) are not 0 to 2, each once"),
    (_set_indexes(1, 2, 3), r"the indexes \(1, 2, 3\) are not 0 to 2, each once"),
    (lambda body: {**body, "data": body["data"][:2]}, "2 embeddings for 3 inputs"),
    (lambda body: {**body, "data": [{**row, "embedding": row["embedding"][:row["index"] + 4]}
                                    for row in body["data"]]},
     r"vectors of different lengths \(4 and 6\)"),
])
def test_a_batch_answer_that_cannot_be_matched_to_its_inputs_is_an_error(api, edit, problem):
    api.reshape(edit)
    with pytest.raises(LLMError, match=rf"^ERR openai: malformed embedding response: {problem}$"):
        openai_provider(api).embed(["one", "two", "three"])


def test_per_token_embeddings_name_the_input(api):
    def second_per_token(body):
        body["data"][1]["embedding"] = [body["data"][1]["embedding"]] * 2
        return body
    api.reshape(second_per_token)
    with pytest.raises(LLMError, match=r"per-token embeddings \(2 vectors\) for input 1,"):
        openai_provider(api).embed(["one", "two", "three"])


def test_the_socket_timeout_gives_an_error_and_is_not_retried(r, api):
    make_app(r, openai_params(api, http={"socket_timeout": "200ms", "max_retries": 3}))
    api.delay(1.5)
    start = time.monotonic()
    text = expect_error(r, "LLM.RUN", "a", "hi", match=r"^ERR openai: .*timeout")
    elapsed = time.monotonic() - start
    assert 0.15 < elapsed < 1.0, elapsed
    assert len(api.chat_requests()) == 1, text


# ---- 6. Redis is never blocked -------------------------------------------------

def test_other_clients_are_served_while_run_waits_on_the_model(server, r, api):
    make_app(r, openai_params(api))
    r.set("k", "v")
    api.delay(1)
    caller = in_thread(lambda: server.client().execute_command("LLM.RUN", "a", "hi"))
    api.wait_for_requests(1)
    assert blocked(r) == 1
    for _ in range(5):
        start = time.monotonic()
        assert r.ping()
        assert r.get("k") == b"v"
        assert time.monotonic() - start < 0.2
    assert joined(caller) == b"echo: hi"
    assert 0.9 < caller["seconds"] < 3
    assert blocked(r) == 0


def test_concurrent_runs_each_get_their_own_answer(server, r, api):
    make_app(r, openai_params(api, http={"pool": {"size": 8}}))  # 5 connections by default
    api.delay(0.3, times=8)
    callers = [in_thread(lambda i=i: server.client().execute_command("LLM.RUN", "a", f"q{i}"))
               for i in range(8)]
    assert [joined(c) for c in callers] == [f"echo: q{i}".encode() for i in range(8)]
    times = [q.time for q in api.chat_requests()]
    assert max(times) - min(times) < 0.25  # sent side by side, not one after another


def test_http_pool_size_limits_the_connections_in_use(server, r, api):
    make_app(r, openai_params(api, http={"pool": {"size": 1}}))
    api.delay(0.4)
    callers = [in_thread(lambda i=i: server.client().execute_command("LLM.RUN", "a", f"q{i}"))
               for i in range(2)]
    assert sorted(joined(c) for c in callers) == [b"echo: q0", b"echo: q1"]
    (gap,) = gaps(api.chat_requests())
    assert gap >= 0.35, gap  # the second waited for the one connection


def test_run_timeout_gives_nil_at_the_deadline(r, api):
    make_app(r, openai_params(api))
    api.delay(1)
    start = time.monotonic()
    assert run(r, "--TIMEOUT", 100, "hi") is None
    assert 0.08 < time.monotonic() - start < 0.6
    assert blocked(r) == 0
    assert r.ping()
    api.wait_for_requests(1)


def test_a_full_queue_refuses_run_at_once(make_server, api):
    srv = make_server(module_args=("DEBUG_COMMANDS", "yes", "POOL_SIZE", "1", "QUEUE_SIZE", "1"))
    client = srv.client()
    make_app(client, openai_params(api))
    api.delay(1)
    running = in_thread(lambda: srv.client().execute_command("LLM.RUN", "a", "first"))
    api.wait_for_requests(1)  # the only worker is busy with it; the queue is empty
    queued = in_thread(lambda: srv.client().execute_command("LLM.RUN", "a", "second"))
    wait_for(lambda: blocked(client) == 2, 5, "the second call to queue")
    start = time.monotonic()
    text = expect_error(client, "LLM.RUN", "a", "third", match=QUEUE_FULL)
    assert text.startswith("ERR ") and "queue is full" in text
    assert time.monotonic() - start < 0.2
    assert blocked(client) == 2
    assert joined(running) == b"echo: first"
    assert joined(queued) == b"echo: second"
    assert [q.body["messages"][0]["content"] for q in api.chat_requests()] == ["first", "second"]


def test_a_client_that_disconnects_mid_call_crashes_nothing(server, r, api):
    make_app(r, openai_params(api))
    api.delay(0.4, times=3)
    for i in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(resp("LLM.RUN", "a", f"gone {i}"))
            api.wait_for_requests(i + 1)
    wait_for(lambda: blocked(r) == 0, 5, "blocked_clients back to 0")
    assert r.ping()
    time.sleep(0.5)  # the three calls finish and reply to clients that are gone
    assert server.alive()
    assert r.ping()
    assert run(r, "still here") == b"echo: still here"
    assert blocked(r) == 0
    assert len(api.chat_requests()) == 4


def test_run_inside_multi_exec_is_an_error_at_once(r, api):
    make_app(r, openai_params(api))
    pipe = r.pipeline(transaction=True)
    pipe.execute_command("LLM.RUN", "a", "hi")
    pipe.set("after", 1)
    start = time.monotonic()
    with pytest.raises(redis.ResponseError) as info:
        pipe.execute()
    assert NOT_HERE in str(info.value)
    assert time.monotonic() - start < 0.5
    assert r.get("after") == b"1"
    assert blocked(r) == 0
    assert api.requests == []


def test_run_inside_eval_is_an_error_at_once(r, api):
    make_app(r, openai_params(api))
    start = time.monotonic()
    with pytest.raises(redis.ResponseError) as info:
        r.eval("return redis.call('LLM.RUN', 'a', 'hi')", 0)
    assert NOT_HERE in str(info.value)
    # pcall hands the error to the script.
    assert NOT_HERE in r.eval(
        "local ok = redis.pcall('LLM.RUN', 'a', 'hi'); return ok['err']", 0).decode()
    assert time.monotonic() - start < 0.5
    assert blocked(r) == 0
    assert api.requests == []


# ---- 7. Embeddings by the store's LLM ---------------------------------------------

def test_add_without_an_embedding_embeds_the_data_with_the_store_llm(r, api):
    create_llm(r, "m", openai_params(api, embedding={"model": "emb-1"}))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    assert r.execute_command("LLM.ADD", "s", "--META", '{"page": 3}', "the quick brown fox") == 1
    (request,) = api.embedding_requests()
    assert request.path == "/v1/embeddings"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "emb-1"
    assert request.body["input"] in (["the quick brown fox"], "the quick brown fox")
    assert api.chat_requests() == []
    data, vec, meta = r.execute_command("LLM.GET", "s", 1)
    assert data == b"the quick brown fox" and json.loads(meta) == {"page": 3}
    assert np.array_equal(vector(vec), expected_vector("the quick brown fox"))


def test_knn_with_a_query_text_embeds_it_and_finds_the_item(r, api):
    create_llm(r, "m", openai_params(api))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    texts = ["alpha", "beta", "gamma", "delta"]
    for text in texts:
        r.execute_command("LLM.ADD", "s", text)
    reply = r.execute_command("LLM.KNN", "s", "--K", 1, "--WITHDATA", "gamma")
    assert len(reply) == 1
    item_id, distance, data, meta = reply[0]
    assert (item_id, data, meta) == (3, b"gamma", None)
    assert float(distance) < 1e-6
    requests = api.embedding_requests()
    assert len(requests) == 5
    assert requests[-1].body["input"] in (["gamma"], "gamma")
    # The full ranking is the exact one for the server's vectors.
    query = expected_vector("beta")
    order = sorted(range(4), key=lambda i: float(np.sum((expected_vector(texts[i]) - query) ** 2)))
    assert [row[0] for row in r.execute_command("LLM.KNN", "s", "--K", 4, "beta")] == \
        [i + 1 for i in order]


def test_a_store_without_an_llm_cannot_embed(r, api):
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s")
    expect_error(r, "LLM.ADD", "s", "doc", match=r"^ERR .*no LLM")
    r.execute_command("LLM.ADD", "s", "--EMBEDDING", "1,2,3", "doc")
    expect_error(r, "LLM.KNN", "s", "query", match=r"^ERR .*no LLM")
    assert r.execute_command("LLM.SIZE", "s") == 1
    assert api.requests == []


def test_a_store_whose_llm_key_is_missing_or_of_another_type_names_the_key(r, api):
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "the-llm")
    r.execute_command("LLM.ADD", "s", "--EMBEDDING", ",".join(["0.5"] * 8), "seed")
    missing = expect_error(r, "LLM.ADD", "s", "doc", match="'the-llm'")
    assert "does not exist" in missing
    expect_error(r, "LLM.KNN", "s", "query", match="'the-llm'")
    r.set("the-llm", "not an llm")
    expect_error(r, "LLM.ADD", "s", "doc", match="'the-llm'.*(not|LLM)")
    r.delete("the-llm")
    r.execute_command("LLM.CREATE-VECTOR-STORE", "the-llm")
    expect_error(r, "LLM.KNN", "s", "query", match="'the-llm'")
    assert r.execute_command("LLM.SIZE", "s") == 1
    assert api.requests == []
    # Once the key holds an LLM, the same commands work.
    r.delete("the-llm")
    create_llm(r, "the-llm", openai_params(api))
    assert r.execute_command("LLM.ADD", "s", "--ID", 9, "doc") == 9
    assert len(api.embedding_requests()) == 1


def test_an_app_whose_llm_key_is_missing_or_of_another_type_names_the_key(r, api):
    r.execute_command("LLM.CREATE-APP", "a", "--LLM", "gone")
    expect_error(r, "LLM.RUN", "a", "hi", match="'gone'.*does not exist")
    r.set("gone", 1)
    expect_error(r, "LLM.RUN", "a", "hi", match="'gone'")
    assert api.requests == []


def test_add_timeout_gives_nil_and_the_item_is_still_added(r, api):
    create_llm(r, "m", openai_params(api))
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m")
    api.delay(0.6)
    start = time.monotonic()
    assert r.execute_command("LLM.ADD", "s", "--TIMEOUT", 100, "late") is None
    assert 0.08 < time.monotonic() - start < 0.5
    assert r.execute_command("LLM.SIZE", "s") == 0
    wait_for(lambda: r.execute_command("LLM.SIZE", "s") == 1, 5, "the late item")
    data, vec = r.execute_command("LLM.GET", "s", 1)
    assert data == b"late" and np.array_equal(vector(vec), expected_vector("late"))
    assert blocked(r) == 0
