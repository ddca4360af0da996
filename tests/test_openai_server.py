"""Self-test of the scripted OpenAI-compatible server the module's LLM tests use."""

import http.client
import json
import math
import struct
import threading
import time

import pytest
from openai_server import OpenAIServer


def call(srv, path, body=None, method="POST", headers=None, conn=None):
    """One real HTTP request; returns (status, headers, raw body, parsed JSON or None)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.getheader("Content-Length") == str(len(raw))
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        return resp.status, resp, raw, parsed
    finally:
        if own:
            conn.close()


def chat(srv, content, **kwargs):
    return call(srv, "/v1/chat/completions",
                {"model": "gpt-test", "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": content}]}, **kwargs)


@pytest.fixture
def srv():
    with OpenAIServer(dim=8) as s:
        yield s


def test_scripted_answers_fifo_then_echo(srv):
    srv.script("first answer", "second")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    answers = []
    for q in ("one", "two", "three words here"):
        status, _, _, body = chat(srv, q, conn=conn)  # keep-alive: one connection
        assert status == 200
        answers.append(body["choices"][0]["message"]["content"])
    conn.close()
    assert answers == ["first answer", "second", "echo: three words here"]
    assert body["object"] == "chat.completion" and body["model"] == "gpt-test"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["id"] == "chatcmpl-3"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    reqs = srv.chat_requests()
    assert [r.body["messages"][-1]["content"] for r in reqs] == ["one", "two", "three words here"]
    assert reqs[0].headers["content-type"] == "application/json"
    assert srv.embedding_requests() == []


def test_missing_messages_is_400(srv):
    status, _, _, body = call(srv, "/v1/chat/completions", {"model": "m"})
    assert status == 400
    assert body["error"]["message"] == "'messages' is a required property"


def test_embeddings_deterministic_unit_length(srv):
    status, _, _, body = call(srv, "/v1/embeddings", {"model": "emb", "input": ["a b", "c"]})
    assert status == 200 and body["object"] == "list" and body["model"] == "emb"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vecs = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert vecs == [OpenAIServer.embedding_for("a b", 8), OpenAIServer.embedding_for("c", 8)]
    assert vecs[0] != vecs[1]
    for v in vecs:
        assert len(v) == 8
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-6)
        assert v == [struct.unpack("f", struct.pack("f", x))[0] for x in v]  # float32-exact
    _, _, _, single = call(srv, "/v1/embeddings", {"input": "a b"})
    assert single["data"][0]["embedding"] == vecs[0]
    assert OpenAIServer.embedding_for("x", 100) == OpenAIServer.embedding_for("x", 100)
    assert len(OpenAIServer.embedding_for("x", 100)) == 100
    assert len(srv.embedding_requests()) == 2


def test_fail_with_retry_after(srv):
    srv.fail(429, times=2, message="slow down", retry_after=1.5)
    srv.fail(500)
    for _ in range(2):
        status, resp, _, body = chat(srv, "hi")
        assert status == 429 and resp.getheader("Retry-After") == "1.5"
        assert body["error"]["message"] == "slow down"
        assert body["error"]["code"] == "rate_limit_exceeded"
    status, resp, _, body = call(srv, "/v1/embeddings", {"input": "x"})
    assert status == 500 and resp.getheader("Retry-After") is None
    assert body["error"]["message"] == "injected failure"
    assert chat(srv, "ok")[0] == 200
    assert len(srv.requests) == 4  # faulted requests are logged too


def test_delay(srv):
    srv.delay(0.3)
    srv.script("late")
    t0 = time.monotonic()
    status, _, _, body = chat(srv, "hi")
    assert time.monotonic() - t0 >= 0.3
    assert status == 200 and body["choices"][0]["message"]["content"] == "late"
    t0 = time.monotonic()
    assert chat(srv, "hi")[0] == 200
    assert time.monotonic() - t0 < 0.25


def test_drop_then_recover(srv):
    srv.drop()
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        chat(srv, "hi")
    assert chat(srv, "hi")[0] == 200
    assert len(srv.requests) == 2


def test_malformed(srv):
    srv.malformed()
    srv.malformed(body=b"<html>not json</html>")
    status, _, raw, body = chat(srv, "hi")
    assert status == 200 and body == {"choices": []}
    status, _, raw, body = chat(srv, "hi")
    assert status == 200 and raw == b"<html>not json</html>" and body is None


def test_mixed_faults_fifo_and_clear(srv):
    srv.fail(503)
    srv.malformed()
    srv.fail(400)
    assert chat(srv, "a")[0] == 503
    assert chat(srv, "b")[3] == {"choices": []}
    srv.clear()
    assert srv.requests == []
    assert chat(srv, "c")[0] == 200  # the pending 400 was forgotten


def test_auth():
    with OpenAIServer(api_key="sk-secret") as s:
        status, _, _, body = chat(s, "hi")
        assert status == 401
        assert body == {"error": {"message": "Incorrect API key provided",
                                  "type": "invalid_request_error", "code": "invalid_api_key"}}
        assert chat(s, "hi", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert chat(s, "hi", headers={"Authorization": "Bearer sk-secret"})[0] == 200
        assert chat(s, "hi", headers={"api-key": "sk-secret"})[0] == 200
        assert s.requests[2].headers["authorization"] == "Bearer sk-secret"


def test_azure_path_with_query(srv):
    path = "/openai/deployments/my-gpt/chat/completions?api-version=2024-02-01"
    status, _, _, body = call(srv, path, {"messages": [{"role": "user", "content": "az"}]},
                              headers={"api-key": "k"})
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: az"
    assert body["model"] == "scripted"
    req = srv.chat_requests()[0]
    assert req.path == "/openai/deployments/my-gpt/chat/completions"
    assert req.query == {"api-version": "2024-02-01"}
    assert req.headers["api-key"] == "k"
    status, _, _, body = call(srv, "/openai/deployments/emb/embeddings?api-version=x",
                              {"input": "q"})
    assert status == 200 and body["data"][0]["embedding"] == OpenAIServer.embedding_for("q", 8)


def test_404(srv):
    status, _, _, body = call(srv, "/v1/models", method="GET")
    assert status == 404 and body["error"]["type"] == "invalid_request_error"
    assert call(srv, "/v1/completion", {"prompt": "x"})[0] == 404
    assert srv.requests[0].method == "GET" and srv.requests[0].body is None


def test_wait_for_requests(srv):
    threading.Timer(0.05, lambda: chat(srv, "hi")).start()
    srv.wait_for_requests(1, timeout=2)
    with pytest.raises(AssertionError):
        srv.wait_for_requests(5, timeout=0.05)


def test_stop_interrupts_delay():
    s = OpenAIServer().start()
    s.delay(30)
    errors = []

    def client():
        try:
            chat(s, "hi")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=client)
    t.start()
    s.wait_for_requests(1, timeout=2)
    t0 = time.monotonic()
    s.stop()
    t.join(5)
    assert time.monotonic() - t0 < 2 and errors


def test_reshape_edits_the_normal_answer_in_fifo_order(srv):
    srv.reshape(lambda body: {"choices": [{"text": body["choices"][0]["message"]["content"]}]})
    srv.fail(503)

    def per_token(body):
        for row in body["data"]:
            del row["index"]
            row["embedding"] = [row["embedding"], row["embedding"]]
        return body

    srv.reshape(per_token)
    assert chat(srv, "hi")[3] == {"choices": [{"text": "echo: hi"}]}
    assert chat(srv, "hi")[0] == 503
    status, _, _, body = call(srv, "/v1/embeddings", {"input": ["a", "b"]})
    vec = OpenAIServer.embedding_for("b", 8)
    assert status == 200 and body["data"][1] == {"object": "embedding", "embedding": [vec, vec]}
    assert chat(srv, "again")[3]["choices"][0]["message"]["content"] == "echo: again"


def test_reshape_leaves_error_answers_alone():
    with OpenAIServer(api_key="sk-secret") as s:
        s.reshape(lambda body: {"edited": True})
        status, _, _, body = chat(s, "hi")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
