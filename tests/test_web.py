"""The review desk's handlers (redis_llm/web.py), through Flask's test client,
against a real redis-server with the module and the scripted OpenAI server.

Each bad input is refused with a message, changes nothing in Redis, and keeps
what the expert typed. The browser tests (test_web_browser.py) drive the
same pages in chromium.
"""

import csv
import html as html_module
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from helpers import wait_for

from redis_llm import web

ROOT = Path(__file__).resolve().parent.parent


# ---- fixtures -------------------------------------------------------------------

@pytest.fixture
def url(server):
    return f"redis://127.0.0.1:{server.port}"


@pytest.fixture
def tenants(r, api):
    """alice may use keys a:*, bob b:*; each has an LLM and a search app with sources."""
    r.execute_command("ACL", "SETUSER", "alice", "reset", "on", ">alice-pw", "~a:*", "+@all")
    r.execute_command("ACL", "SETUSER", "bob", "reset", "on", ">bob-pw", "~b:*", "+@all")
    for prefix in ("a", "b"):
        r.execute_command("LLM.CREATE-LLM", f"{prefix}:llm", "--PARAMS",
                          json.dumps({"base_url": api.url}))
        r.execute_command("LLM.CREATE-VECTOR-STORE", f"{prefix}:docs", "--LLM", f"{prefix}:llm")
        r.execute_command("LLM.ADD", f"{prefix}:docs", "--META",
                          '{"source": "manual.pdf", "page": 12}', "The pump needs 230 V.")
        r.execute_command("LLM.CREATE-SEARCH", f"{prefix}:ask", "--LLM", f"{prefix}:llm",
                          "--VECTOR-STORE", f"{prefix}:docs")
    yield r
    for user in ("alice", "bob"):
        r.execute_command("ACL", "DELUSER", user)


@pytest.fixture
def desk(url, tenants):
    return web.create_app(url)


def sign_in(desk, user="alice", password="alice-pw"):
    client = desk.test_client()
    response = client.post("/login", data={"user": user, "password": password})
    assert response.status_code == 302, response.data
    return client


@pytest.fixture
def alice(desk):
    return sign_in(desk)


def csrf(client, path="/ask?app=a:ask") -> str:
    html = client.get(path).data.decode()
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def page_error(response) -> str:
    found = re.search(r'id="error">([^<]*)<', response.data.decode())
    return found.group(1) if found else ""


def record(r, key="a:ask", q="How much power does the pump need?", a="230 V", *options):
    return r.execute_command("LLM.RECORD", key, "--QUESTION", q, "--ANSWER", a, *options)


def result(r, key, rid) -> dict:
    reply = r.execute_command("LLM.RESULT", key, rid)
    return dict(zip((n.decode() for n in reply[0::2]), reply[1::2]))


# ---- sign-in and sessions ----------------------------------------------------------

def test_pages_send_a_visitor_to_sign_in_first(desk):
    client = desk.test_client()
    for path in ("/", "/review?app=a:ask", "/results?app=a:ask", "/dashboard?app=a:ask",
                 "/export?app=a:ask", "/record.json?app=a:ask&id=1"):
        response = client.get(path)
        assert response.status_code == 302 and "/login?next=" in response.headers["Location"]


def test_on_a_server_without_passwords_the_default_user_signs_in_with_an_empty_one(url, r):
    client = web.create_app(url).test_client()
    assert client.post("/login", data={"user": "", "password": ""}).status_code == 302
    assert 'title="Redis ACL user">default</span>' in client.get("/").data.decode()


def test_a_wrong_password_gets_a_clear_message_and_no_session(desk):
    client = desk.test_client()
    response = client.post("/login", data={"user": "alice", "password": "wrong"})
    assert response.status_code == 401
    assert "Wrong user name or password." in response.data.decode()
    assert "Set-Cookie" not in response.headers
    assert client.get("/").status_code == 302


def test_five_failed_sign_ins_in_a_minute_hold_off_even_the_right_password(desk):
    client = desk.test_client()
    for _ in range(web.FAILED_SIGN_INS):
        assert client.post("/login", data={"user": "alice", "password": "guess"}).status_code == 401
    response = client.post("/login", data={"user": "alice", "password": "alice-pw"})
    assert response.status_code == 429 and "Too many failed sign-ins" in response.data.decode()
    other = desk.test_client()
    other.environ_base["REMOTE_ADDR"] = "10.0.0.2"
    assert other.post("/login", data={"user": "alice", "password": "alice-pw"}).status_code == 302


def test_the_throttle_forgets_failures_after_its_window():
    throttle = web.Throttle(most=2, seconds=0.2)
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.blocked("a") and not throttle.blocked("b")
    time.sleep(0.25)
    assert not throttle.blocked("a")


def test_an_unknown_user_gets_the_same_message(desk):
    response = desk.test_client().post("/login", data={"user": "mallory", "password": "x"})
    assert response.status_code == 401 and "Wrong user name or password." in response.data.decode()


def test_sign_in_sets_an_http_only_strict_cookie_holding_a_token_not_the_password(desk):
    response = desk.test_client().post("/login", data={"user": "alice", "password": "alice-pw"})
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(web.COOKIE + "=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "alice-pw" not in cookie


def test_behind_a_tls_proxy_the_cookie_is_secure_and_without_it_the_header_is_ignored(url,
                                                                                     tenants):
    login = {"user": "alice", "password": "alice-pw"}
    https = {"X-Forwarded-Proto": "https"}
    proxied = web.create_app(url, behind_proxy=True).test_client()
    assert "Secure" in proxied.post("/login", data=login, headers=https).headers["Set-Cookie"]
    direct = web.create_app(url).test_client()
    assert "Secure" not in direct.post("/login", data=login, headers=https).headers["Set-Cookie"]


def test_every_command_runs_as_the_signed_in_user(r, alice):
    alice.get("/")
    clients = r.execute_command("CLIENT", "LIST").decode()
    users = {field.split("=", 1)[1] for line in clients.splitlines()
             for field in line.split() if field.startswith("user=")}
    assert "alice" in users


def test_a_user_allowed_only_the_desks_commands_can_sign_in_and_review(r, desk):
    r.execute_command("ACL", "SETUSER", "dora", "reset", "on", ">dora-pw", "~a:*", "+llm.list",
                      "+llm.stats", "+llm.results", "+llm.result", "+llm.review")
    try:
        record(r)
        dora = sign_in(desk, "dora", "dora-pw")
        assert 'data-app="a:ask"' in dora.get("/").data.decode()
        response = dora.post("/review", data={"csrf": csrf(dora, "/review?app=a:ask"),
                                              "app": "a:ask", "id": "1", "answer": "230 V",
                                              "score": "90"})
        assert response.status_code == 302 and result(r, "a:ask", 1)["reviewer"] == b"dora"
    finally:
        r.execute_command("ACL", "DELUSER", "dora")


def test_after_sign_in_the_page_goes_where_the_visitor_was_going(desk):
    client = desk.test_client()
    response = client.post("/login", data={"user": "alice", "password": "alice-pw",
                                           "next": "/results?app=a:ask"})
    assert response.headers["Location"] == "/results?app=a:ask"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "javascript:x",
                                    "/\\evil.example/x", "\\\\evil.example"])
def test_sign_in_never_redirects_off_the_site(desk, target):
    response = desk.test_client().post("/login", data={"user": "alice", "password": "alice-pw",
                                                       "next": target})
    assert response.headers["Location"] == "/"


def test_an_idle_session_expires_and_says_so(url, tenants):
    desk = web.create_app(url, session_minutes=0.5 / 60)    # half a second
    client = sign_in(desk)
    assert client.get("/").status_code == 200
    time.sleep(0.7)
    response = client.get("/")
    assert response.status_code == 302 and "expired=1" in response.headers["Location"]
    page = client.get(response.headers["Location"])
    assert "Your session expired; sign in again." in page.data.decode()


def test_a_session_ends_when_its_user_is_deleted(r, alice):
    assert alice.get("/").status_code == 200
    r.execute_command("ACL", "DELUSER", "alice")     # Redis closes alice's connections
    response = alice.get("/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_a_connection_redis_closed_is_reopened_without_an_error_page(r, alice):
    assert alice.get("/").status_code == 200
    r.execute_command("CLIENT", "KILL", "USER", "alice")   # as Redis' idle `timeout` does
    assert alice.get("/").status_code == 200


def test_sign_out_ends_the_session(alice):
    response = alice.post("/logout", data={"csrf": csrf(alice)})
    assert response.status_code == 302
    assert alice.get("/").status_code == 302


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(r, alice):
    record(r)
    response = alice.post("/review", data={"app": "a:ask", "id": "1", "answer": "x", "score": "90"})
    assert response.status_code == 400 and "out of date" in response.data.decode()
    assert result(r, "a:ask", 1)["reviewed_score"] == b""
    assert alice.post("/logout", data={"csrf": "forged"}).status_code == 400


def test_a_form_posted_from_another_site_is_refused_even_sign_in(desk):
    client = desk.test_client()
    login = {"user": "alice", "password": "alice-pw"}
    response = client.post("/login", data=login, headers={"Origin": "https://evil.example"})
    assert response.status_code == 400 and "another site" in response.data.decode()
    assert "Set-Cookie" not in response.headers
    same = client.post("/login", data=login, headers={"Origin": "http://localhost"})
    assert same.status_code == 302


def test_redis_unreachable_at_sign_in_is_a_503_with_the_reason():
    desk = web.create_app("redis://127.0.0.1:1")
    response = desk.test_client().post("/login", data={"user": "alice", "password": "x"})
    assert response.status_code == 503 and "Cannot reach Redis" in response.data.decode()


def test_a_malformed_url_is_refused_at_start():
    with pytest.raises(ValueError):
        web.create_app("http://localhost:6379")


def test_pages_carry_a_strict_content_security_policy(alice):
    response = alice.get("/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


def test_no_page_shows_an_llm_api_key(r, alice, api):
    r.execute_command("LLM.CREATE-LLM", "a:llm", "--XX", "--PARAMS",
                      json.dumps({"base_url": api.url, "api_key": "sk-very-secret"}))
    api.script("230 V, says the manual.")
    r.execute_command("LLM.RUN", "a:ask", "How much power does the pump need?")
    token = csrf(alice)
    pages = [alice.get(path).data for path in (
        "/", "/review?app=a:ask", "/results?app=a:ask", "/record?app=a:ask&id=1",
        "/record.json?app=a:ask&id=1", "/dashboard?app=a:ask", "/export?app=a:ask")]
    pages.append(alice.post("/ask?app=a:ask", data={"csrf": token, "input": "Volts?",
                                                     "mode": "sync"},
                            follow_redirects=True).data)
    assert all(b"sk-very-secret" not in page for page in pages)


# ---- tenants ------------------------------------------------------------------------

def test_the_app_list_shows_only_the_apps_the_user_may_read(desk):
    alice_page = sign_in(desk).get("/").data.decode()
    bob_page = sign_in(desk, "bob", "bob-pw").get("/").data.decode()
    assert 'data-app="a:ask"' in alice_page and "b:ask" not in alice_page
    assert 'data-app="b:ask"' in bob_page and "a:ask" not in bob_page


@pytest.mark.parametrize("path", ["/review?app=b:ask", "/results?app=b:ask",
                                  "/dashboard?app=b:ask", "/record?app=b:ask&id=1",
                                  "/export?app=b:ask", "/ask?app=b:ask"])
def test_another_tenants_app_is_refused_with_noperm(r, alice, path):
    record(r, "b:ask", "secret question", "secret answer")
    response = alice.get(path)
    text = response.data.decode()
    if path.startswith("/ask"):       # the form itself holds nothing; running it is refused
        response = alice.post(path, data={"csrf": csrf(alice), "input": "x", "mode": "sync"})
        text = response.data.decode()
    assert response.status_code == 403, text
    assert "NOPERM" in text and "secret" not in text


def test_a_review_by_a_read_only_user_is_refused_with_noperm_and_keeps_the_form(r, desk):
    r.execute_command("ACL", "SETUSER", "carol", "reset", "on", ">carol-pw", "%R~a:*", "+@all")
    try:
        record(r)
        carol = sign_in(desk, "carol", "carol-pw")
        response = carol.post("/review", data={"csrf": csrf(carol, "/review?app=a:ask"),
                                               "app": "a:ask", "id": "1",
                                               "answer": "typed by carol", "score": "90"})
        assert response.status_code == 403 and "NOPERM" in page_error(response)
        assert "typed by carol" in response.data.decode()
        assert result(r, "a:ask", 1)["reviewed_score"] == b""
    finally:
        r.execute_command("ACL", "DELUSER", "carol")


# ---- the review queue ------------------------------------------------------------------

def test_the_queue_shows_the_newest_unreviewed_result_with_its_sources(r, alice, api):
    api.script("It needs 230 V.")
    r.execute_command("LLM.RUN", "a:ask", "How much power does the pump need?")
    record(r, q="already reviewed")
    r.execute_command("LLM.REVIEW", "a:ask", 2, "--ANSWER", "x", "--SCORE", 50)
    html = alice.get("/review?app=a:ask").data.decode()
    assert 'id="record-id">1<' in html
    assert "How much power does the pump need?" in html and "It needs 230 V." in html
    assert "gpt-3.5-turbo" in html and " ms</dd>" in html
    assert "manual.pdf" in html and "<td>12</td>" in html and "The pump needs 230 V." in html
    for name, low in web.BANDS:
        assert name in html


def test_skipping_moves_on_and_an_empty_queue_says_so(r, alice):
    record(r, q="first")
    record(r, q="second")
    assert 'id="record-id">2<' in alice.get("/review?app=a:ask").data.decode()
    assert 'id="record-id">1<' in alice.get("/review?app=a:ask&skip=2").data.decode()
    html = alice.get("/review?app=a:ask&skip=2,1").data.decode()
    assert 'id="queue-empty"' in html and "2 you skipped" in html


def test_a_review_is_stored_as_the_signed_in_user_and_the_queue_moves_on(r, alice):
    record(r, q="older")
    record(r)
    response = alice.post("/review", data={"csrf": csrf(alice), "app": "a:ask", "id": "2",
                                           "answer": "230 V AC", "score": "97.5",
                                           "notes": "manual p. 12"})
    assert response.status_code == 302
    stored = result(r, "a:ask", 2)
    assert stored["reviewed_answer"] == b"230 V AC" and stored["reviewed_score"] == b"97.5"
    assert stored["reviewed_notes"] == b"manual p. 12" and stored["reviewer"] == b"alice"
    html = alice.get(response.headers["Location"]).data.decode()
    assert "Reviewed result 2: 97.5, a known fact." in html and 'id="record-id">1<' in html


@pytest.mark.parametrize("score, message", [
    ("", "Give a score from 0 to 100."),
    ("   ", "Give a score from 0 to 100."),
    ("high", "must be a number from 0 to 100"),
    ("-1", "must be from 0 to 100"),
    ("100.5", "must be from 0 to 100"),
    ("nan", "must be from 0 to 100"),
    ("inf", "must be from 0 to 100"),
    ("1e999", "must be from 0 to 100"),
])
def test_a_bad_score_is_refused_keeps_the_typed_review_and_changes_nothing(r, alice, score,
                                                                             message):
    record(r)
    before = result(r, "a:ask", 1)
    response = alice.post("/review", data={"csrf": csrf(alice), "app": "a:ask", "id": "1",
                                           "answer": "typed answer", "score": score,
                                           "notes": "typed notes"})
    assert response.status_code == 400
    assert message in page_error(response)
    html = response.data.decode()
    assert "typed answer</textarea>" in html and "typed notes</textarea>" in html
    assert result(r, "a:ask", 1) == before


def test_an_empty_answer_is_refused(r, alice):
    record(r)
    response = alice.post("/review", data={"csrf": csrf(alice), "app": "a:ask", "id": "1",
                                           "answer": "  ", "score": "90"})
    assert response.status_code == 400 and "Write the reviewed answer" in page_error(response)
    assert result(r, "a:ask", 1)["reviewed_score"] == b""


@pytest.mark.parametrize("rid, status", [("x", 400), ("0", 400), ("-3", 400), ("", 400),
                                         ("99", 404)])
def test_a_review_of_a_bad_or_unknown_id_is_refused(r, alice, rid, status):
    record(r)
    response = alice.post("/review", data={"csrf": csrf(alice), "app": "a:ask", "id": rid,
                                           "answer": "a", "score": "90"})
    assert response.status_code == status
    assert result(r, "a:ask", 1)["reviewed_score"] == b""


def test_a_result_that_is_not_done_cannot_be_reviewed_and_the_form_is_kept(r, alice, api):
    api.fail(400)
    with pytest.raises(redis.ResponseError):
        r.execute_command("LLM.RUN", "a:ask", "q")
    response = alice.post("/review", data={"csrf": csrf(alice), "app": "a:ask", "id": "1",
                                           "answer": "kept", "score": "90", "back": "record"})
    assert response.status_code == 400 and "only done results" in page_error(response)
    assert result(r, "a:ask", 1)["state"] == b"failed"


def test_a_page_without_an_app_is_a_400(alice):
    for path in ("/review", "/results", "/dashboard", "/export", "/ask", "/record?id=1"):
        response = alice.get(path)
        assert response.status_code == 400 and "no app=" in response.data.decode()


def test_a_key_that_is_not_an_app_is_refused_with_its_code(r, alice):
    response = alice.get("/dashboard?app=a:missing")
    assert response.status_code == 400 and "ERR no app at key" in response.data.decode()
    response = alice.get("/dashboard?app=a:docs")       # a vector store
    assert response.status_code == 409 and "WRONGTYPE" in response.data.decode()


# ---- results -------------------------------------------------------------------------

def rows(response) -> list[int]:
    return [int(rid) for rid in re.findall(r'<tr data-id="(\d+)">', response.data.decode())]


def test_results_filter_by_text_state_review_model_tag_session_and_score(r, alice):
    record(r, "a:ask", "Where is the fuse?", "Behind the panel.", "--MODEL", "m1", "--TAGS", "pump")
    record(r, "a:ask", "What voltage?", "230 V", "--MODEL", "m2", "--SESSION", "s1")
    record(r, "a:ask", "Is it waterproof?", "IP68", "--MODEL", "m1", "--TAGS", "pump,seal")
    r.execute_command("LLM.REVIEW", "a:ask", 1, "--ANSWER", "Behind the front panel.", "--SCORE", 90)
    r.execute_command("LLM.REVIEW", "a:ask", 3, "--ANSWER", "IP67", "--SCORE", 40)
    get = lambda query: rows(alice.get("/results?app=a:ask&" + query))  # noqa: E731
    assert get("") == [3, 2, 1]
    assert get("q=FRONT") == [1] and get("q=volt") == [2]
    assert get("state=done") == [3, 2, 1] and get("state=failed") == []
    assert get("reviewed=yes") == [3, 1] and get("reviewed=no") == [2]
    assert get("model=m1") == [3, 1] and get("tag=seal") == [3] and get("session=s1") == [2]
    assert get("min=50") == [1] and get("max=50") == [3] and get("min=30&max=95") == [3, 1]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert get(f"from={today}&to={today}") == [3, 2, 1]
    assert get("to=2000-01-01") == []
    page = alice.get("/results?app=a:ask&model=m1&q=fuse").data.decode()
    assert 'value="m1"' in page and 'value="fuse"' in page    # the form keeps the filters


def test_results_page_through_25_at_a_time(r, alice):
    for n in range(30):
        record(r, q=f"question {n}")
    first = alice.get("/results?app=a:ask")
    assert rows(first) == list(range(30, 5, -1))
    assert 'id="page-next"' in first.data.decode() and 'id="page-prev"' not in first.data.decode()
    second = alice.get("/results?app=a:ask&page=2")
    assert rows(second) == list(range(5, 0, -1))
    assert 'id="page-next"' not in second.data.decode()
    assert rows(alice.get("/results?app=a:ask&page=3")) == []


@pytest.mark.parametrize("query, message", [
    ("state=finished", "The state must be one of"),
    ("reviewed=maybe", "Reviewed must be yes, no or empty."),
    ("min=101", "The minimum score must be a number from 0 to 100."),
    ("max=abc", "The maximum score must be a number from 0 to 100."),
    ("min=90&max=10", "The minimum score is above the maximum score."),
    ("from=yesterday", "From must be a date"),
    ("to=2026-13-01", "To must be a date"),
    ("from=2026-02-02&to=2026-02-01", "From must be on or before To."),
    ("page=0", "The page must be a number from 1 to 10000."),
    ("page=x", "The page must be a number from 1 to 10000."),
    ("q=" + "x" * 1025, "The search text is at most 1024 bytes."),
])
def test_bad_filters_are_refused_with_a_message_and_kept_in_the_form(r, alice, query, message):
    record(r)
    response = alice.get("/results?app=a:ask&" + query)
    assert response.status_code == 400 and message in page_error(response)
    assert rows(response) == []
    value = query.split("&")[0].split("=", 1)[1]
    if len(value) < 20 and query.split("=")[0] not in ("state", "reviewed", "page"):
        assert f'value="{value}"' in response.data.decode()


# ---- the record page -------------------------------------------------------------------

def test_the_record_page_shows_everything_and_edits_a_review(r, alice):
    record(r, "a:ask", "What voltage?", "230 V", "--MODEL", "m1", "--TAGS", "pump",
           "--SESSION", "s1", "--LATENCY", "120")
    r.execute_command("LLM.REVIEW", "a:ask", 1, "--ANSWER", "230 V AC", "--SCORE", 85,
                      "--NOTES", "first pass")
    html = alice.get("/record?app=a:ask&id=1").data.decode()
    for text in ("What voltage?", "230 V AC", "first pass", "m1", "pump", "s1", "120 ms",
                 'id="reviewed-score">85<', "Edit the review"):
        assert text in html, text
    response = alice.post("/review", data={"csrf": csrf(alice), "app": "a:ask", "id": "1",
                                           "answer": "230 V AC, 50 Hz", "score": "96",
                                           "notes": "checked", "back": "record"})
    assert response.headers["Location"] == "/record?app=a:ask&id=1"
    stored = result(r, "a:ask", 1)
    assert stored["reviewed_answer"] == b"230 V AC, 50 Hz" and stored["reviewed_score"] == b"96"


@pytest.mark.parametrize("query, status", [("id=99", 404), ("id=x", 400), ("", 400)])
def test_a_bad_or_unknown_record_id(r, alice, query, status):
    record(r)
    assert alice.get(f"/record?app=a:ask&{query}").status_code == status
    reply = alice.get(f"/record.json?app=a:ask&{query}")
    assert reply.status_code == status and "error" in reply.get_json()


def test_record_json_is_the_record_as_the_client_decodes_it(r, alice):
    record(r, "a:ask", "q", "a", "--TAGS", "x,y")
    data = alice.get("/record.json?app=a:ask&id=1").get_json()
    assert data["id"] == 1 and data["state"] == "done" and data["tags"] == ["x", "y"]


# ---- dashboard and export ----------------------------------------------------------------

def bars(html: str, chart: str) -> list[float]:
    svg = re.search(rf'<svg class="chart" data-chart="{chart}".*?</svg>', html, re.S).group(0)
    return [float(v) for v in re.findall(r'class="bar[^"]*" data-value="([^"]+)"', svg)]


def test_the_dashboard_draws_counts_bands_and_per_model_figures(r, alice):
    record(r, "a:ask", "q1", "a", "--MODEL", "m1", "--LATENCY", "100")
    record(r, "a:ask", "q2", "a", "--MODEL", "m1", "--LATENCY", "300")
    record(r, "a:ask", "q3", "a", "--MODEL", "m2", "--LATENCY", "50")
    for rid, score in ((1, 96), (2, 70), (3, 20)):
        r.execute_command("LLM.REVIEW", "a:ask", rid, "--ANSWER", "a", "--SCORE", score)
    html = alice.get("/dashboard?app=a:ask&interval=day").data.decode()
    assert bars(html, "bands") == [1, 1, 0, 1]
    assert bars(html, "model-score") == [83, 20]
    assert bars(html, "model-latency") == [200, 50]
    assert bars(html, "model-tokens") == []           # recorded results have no tokens
    assert html.count(">no data</text>") == 2
    assert sum(bars(html, "over-time")) == 3 + 3      # results and reviewed columns
    assert 'id="sum-reviewed">3<' in html and 'id="sum-mean">62.0<' in html


def test_the_dashboard_of_an_app_without_results_says_no_data(alice):
    html = alice.get("/dashboard?app=a:ask").data.decode()
    assert "no data yet" in html and bars(html, "bands") == [0, 0, 0, 0]


def test_over_time_fills_empty_intervals_and_keeps_the_newest(r):
    hour = web.INTERVALS["hour"]
    points = web.over_time_points([[0, 2, 1], [3 * hour, 1, 0]], hour)
    assert [counts for _, counts in points] == [(2, 1), (0, 0), (0, 0), (1, 0)]
    many = web.over_time_points([[0, 1, 0], [1000 * hour, 1, 1]], hour)
    assert len(many) == web.MAX_COLUMNS and many[-1][1] == (1, 1)


@pytest.mark.parametrize("interval", ["second", "", "HOUR"])
def test_a_bad_dashboard_interval_is_a_400(alice, interval):
    response = alice.get(f"/dashboard?app=a:ask&interval={interval}")
    assert response.status_code == 400 and "interval must be one of" in response.data.decode()


@pytest.mark.parametrize("fmt, reviewed", [("jsonl", False), ("csv", False), ("jsonl", True),
                                           ("csv", True)])
def test_export_links_give_the_files_redis_llm_export_writes(r, alice, url, fmt, reviewed):
    record(r, "a:ask", "Wie viel Volt?", "230 V, \"AC\"", "--TAGS", "pump,de")
    record(r, "a:ask", "second, with a comma", "b")
    r.execute_command("LLM.REVIEW", "a:ask", 1, "--ANSWER", "230 V", "--SCORE", 90)
    query = f"/export?app=a:ask&format={fmt}" + ("&reviewed=1" if reviewed else "")
    response = alice.get(query)
    assert response.status_code == 200
    suffix = "-reviewed" if reviewed else ""
    assert f'filename="a_ask{suffix}.{fmt}"' in response.headers["Content-Disposition"]
    command = [sys.executable, "-m", "redis_llm.cli", "export", "a:ask", "--url", url,
               "--format", fmt] + (["--reviewed"] if reviewed else [])
    expected = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert response.data.decode() == expected
    lines = list(csv.DictReader(io.StringIO(expected))) if fmt == "csv" else \
        [json.loads(line) for line in expected.splitlines()]
    assert len(lines) == (1 if reviewed else 2)


def test_an_app_key_beyond_ascii_works_on_every_page_and_exports_to_an_ascii_file_name(r, alice):
    r.execute_command("LLM.CREATE-APP", "a:café/☕", "--LLM", "a:llm")
    record(r, "a:café/☕", "Wie heiß?", "92 °C")
    assert 'data-app="a:café/☕"' in alice.get("/").data.decode()
    for path, shown in (("/review", "Wie heiß?"), ("/results", "Wie heiß?"),
                        ("/record", "Wie heiß?"), ("/dashboard", 'id="sum-records">1<')):
        response = alice.get(path, query_string={"app": "a:café/☕", "id": "1"})
        assert response.status_code == 200 and shown in response.data.decode(), path
    response = alice.get("/export", query_string={"app": "a:café/☕", "format": "csv"})
    assert 'filename="a_caf___.csv"' in response.headers["Content-Disposition"]
    assert "92 °C" in response.data.decode()


def test_a_bad_export_format_is_a_400(alice):
    assert alice.get("/export?app=a:ask&format=xml").status_code == 400


# ---- ask -----------------------------------------------------------------------------

def test_ask_waiting_lands_on_the_record_with_the_answer(r, alice, api):
    api.script("230 V, says the manual.")
    response = alice.post("/ask?app=a:ask", data={"csrf": csrf(alice), "input": "Volts?",
                                                   "tags": "desk, web", "mode": "sync"})
    assert response.headers["Location"] == "/record?app=a:ask&id=1"
    html = alice.get(response.headers["Location"]).data.decode()
    assert "230 V, says the manual." in html and "data-watch" not in html
    stored = result(r, "a:ask", 1)
    assert stored["tags"] == b"desk,web" and stored["state"] == b"done"


def test_ask_in_the_background_shows_the_record_while_it_runs(r, alice, api):
    api.delay(1.0)
    api.script("230 V.")
    response = alice.post("/ask?app=a:ask", data={"csrf": csrf(alice), "input": "Volts?",
                                                   "mode": "async"})
    assert response.headers["Location"] == "/record?app=a:ask&id=1"
    html = alice.get(response.headers["Location"]).data.decode()
    assert 'data-watch="/record.json?app=a:ask&amp;id=1"' in html and 'id="watching"' in html
    done = wait_for(lambda: (d := alice.get("/record.json?app=a:ask&id=1").get_json())
                    ["state"] == "done" and d, 10, "the background run")
    assert done["answer"] == "230 V."


def test_ask_a_simple_app_with_variables(r, alice, api):
    r.execute_command("LLM.CREATE-APP", "a:hello", "--LLM", "a:llm", "--PROMPT",
                      "Say hello to {{name}}")
    api.script("Hello Ada!")
    response = alice.post("/ask?app=a:hello", data={"csrf": csrf(alice), "vars": '{"name": "Ada"}',
                                                     "mode": "sync"})
    assert response.status_code == 302
    assert result(r, "a:hello", 1)["question"] == b"Say hello to Ada"
    html = alice.get(response.headers["Location"]).data.decode()
    assert 'id="record-vars">{"name": "Ada"}<' in html


def test_ask_an_app_without_records_shows_the_answer_on_the_page(r, alice, api):
    r.execute_command("LLM.CREATE-APP", "a:quiet", "--LLM", "a:llm", "--RECORD", "0")
    api.script("No records here.")
    response = alice.post("/ask?app=a:quiet", data={"csrf": csrf(alice), "input": "hi",
                                                     "mode": "sync"})
    assert response.status_code == 200 and "No records here." in response.data.decode()


@pytest.mark.parametrize("form, message", [
    ({"vars": "{not json", "input": "x"}, "Variables must be a JSON object:"),
    ({"vars": "[1, 2]", "input": "x"}, "Variables must be a JSON object, such as"),
    ({"input": "x", "mode": "later"}, "Choose to wait for the answer"),
    ({"input": ""}, "needs an input"),
    ({"input": "x", "session": "s1"}, "--SESSION"),
])
def test_bad_ask_input_is_refused_keeps_the_form_and_runs_nothing(r, alice, api, form, message):
    data = {"csrf": csrf(alice), "mode": "sync", **form}
    response = alice.post("/ask?app=a:ask", data=data)
    assert response.status_code == 400 and message in page_error(response), page_error(response)
    if form.get("input"):
        assert f'>{form["input"]}</textarea>' in response.data.decode()
    assert r.execute_command("LLM.RESULTS", "a:ask") == [] and api.chat_requests() == []


# ---- the command line ------------------------------------------------------------------

def test_web_refuses_a_bad_port_or_url_before_serving():
    bad_port = subprocess.run([sys.executable, "-m", "redis_llm.cli", "web", "--port", "70000"],
                              capture_output=True, text=True, cwd=ROOT)
    assert bad_port.returncode == 2 and "--port must be at most 65535" in bad_port.stderr
    bad_url = subprocess.run([sys.executable, "-m", "redis_llm.cli", "web", "--url", "http://x"],
                             capture_output=True, text=True, cwd=ROOT)
    assert bad_url.returncode == 1 and "bad --url" in bad_url.stderr


def test_the_web_command_serves_the_desk(url, tenants):
    process = subprocess.Popen([sys.executable, "-m", "redis_llm.cli", "web", "--url", url,
                                "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = process.stdout.readline()
        address = re.search(r"http://[\d.]+:\d+/", line).group(0)
        import urllib.request
        with urllib.request.urlopen(address + "login") as reply:
            assert reply.status == 200 and b"Sign in" in reply.read()
    finally:
        process.terminate()
        process.wait(10)



# ---- guarded reviews: the question lists ------------------------------------------------

def textarea(html: str, name: str) -> str:
    """The text of a form's textarea, as the browser shows it."""
    found = re.search(rf'<textarea name="{name}"[^>]*>([^<]*)</textarea>', html)
    assert found, f"no textarea {name}"
    return html_module.unescape(found.group(1))


def listed(html: str, name: str) -> list[str]:
    found = re.search(rf'<ul class="questions" id="reviewed-{name}">(.*?)</ul>', html, re.S)
    return [html_module.unescape(text) for text in re.findall(r"<li>([^<]*)</li>", found.group(1))
            ] if found else []


def stored_lists(r, key, rid) -> tuple[list, list]:
    stored = result(r, key, rid)
    return tuple(json.loads(stored[name]) if stored[name] else [] for name in ("also", "never"))


def test_the_review_forms_show_the_lists_prefilled_one_question_per_line(r, alice):
    record(r, q="What voltage?")
    r.execute_command("LLM.REVIEW", "a:ask", 1, "--ANSWER", "230 V", "--SCORE", 97,
                      "--ALSO", "Which voltage does the pump need?", "--ALSO", "Mains voltage?",
                      "--NEVER", "What voltage does the heater need?")
    html = alice.get("/record?app=a:ask&id=1").data.decode()
    assert textarea(html, "also") == "Which voltage does the pump need?\nMains voltage?"
    assert textarea(html, "never") == "What voltage does the heater need?"
    assert "Also answers these questions" in html and "Never serve it for" in html
    assert listed(html, "also") == ["Which voltage does the pump need?", "Mains voltage?"]
    assert listed(html, "never") == ["What voltage does the heater need?"]
    # The queue: an unreviewed result has empty lists (and the page no list section).
    record(r, q="Fresh question")
    html = alice.get("/review?app=a:ask").data.decode()
    assert 'id="record-id">2<' in html
    assert textarea(html, "also") == "" and textarea(html, "never") == ""
    assert 'id="guards"' not in html
    data = alice.get("/record.json?app=a:ask&id=1").get_json()
    assert data["also"] == ["Which voltage does the pump need?", "Mains voltage?"]
    assert data["never"] == ["What voltage does the heater need?"] and data["served_review"] is None


def test_a_review_from_the_queue_stores_the_lists(r, alice):
    record(r)
    response = alice.post("/review", data={
        "csrf": csrf(alice), "app": "a:ask", "id": "1", "answer": "230 V AC", "score": "97",
        "also": "What power does the pump need?\r\n\r\n  Pump voltage?  \r\n"
                "What power does the pump need?\r\n",
        "never": "How much power does the heater need?"})
    assert response.status_code == 302
    assert stored_lists(r, "a:ask", 1) == (["What power does the pump need?", "Pump voltage?"],
                                           ["How much power does the heater need?"])


def test_an_emptied_list_is_cleared_and_a_form_without_a_list_keeps_it(r, alice):
    record(r)
    r.execute_command("LLM.REVIEW", "a:ask", 1, "--ANSWER", "230 V", "--SCORE", 97,
                      "--ALSO", "Pump voltage?", "--NEVER", "Heater voltage?")
    response = alice.post("/review", data={"csrf": csrf(alice), "app": "a:ask", "id": "1",
                                           "answer": "230 V", "score": "96", "also": " \r\n",
                                           "back": "record"})
    assert response.status_code == 302
    assert stored_lists(r, "a:ask", 1) == ([], ["Heater voltage?"])
    html = alice.get("/record?app=a:ask&id=1").data.decode()
    assert textarea(html, "also") == "" and listed(html, "also") == []
    assert listed(html, "never") == ["Heater voltage?"]


@pytest.mark.parametrize("back", ["queue", "record"])
def test_refused_reviews_keep_the_typed_lists_and_change_nothing(r, alice, back):
    record(r)
    before = result(r, "a:ask", 1)
    typed = {"csrf": csrf(alice), "app": "a:ask", "id": "1", "answer": "typed answer",
             "back": back, "also": "typed also 1\r\ntyped also 2", "never": "typed never"}
    response = alice.post("/review", data={**typed, "score": "150"})
    assert response.status_code == 400 and "must be from 0 to 100" in page_error(response)
    html = response.data.decode()
    assert textarea(html, "also").splitlines() == ["typed also 1", "typed also 2"]
    assert textarea(html, "never") == "typed never"
    many = "\n".join(f"question {n}" for n in range(30))
    response = alice.post("/review", data={**typed, "score": "97", "also": many,
                                           "never": "a\nb\nc"})
    assert response.status_code == 400
    assert page_error(response) == "Give at most 32 questions in both lists together."
    assert textarea(response.data.decode(), "never") == "a\nb\nc"
    assert result(r, "a:ask", 1) == before


def test_the_server_refusing_a_review_keeps_the_typed_lists(r, alice):
    # The server counts the kept list too: a form without the never field
    # (one from an older page) keeps the stored 20, and 13 more are refused.
    record(r)
    never = [f"never {n}" for n in range(20)]
    r.execute_command("LLM.REVIEW", "a:ask", 1, "--ANSWER", "a", "--SCORE", 97,
                      *[arg for q in never for arg in ("--NEVER", q)])
    before = result(r, "a:ask", 1)
    also = "\n".join(f"also {n}" for n in range(13))
    response = alice.post("/review", data={"csrf": csrf(alice), "app": "a:ask", "id": "1",
                                           "answer": "kept", "score": "90", "back": "record",
                                           "also": also})
    assert response.status_code == 400 and "at most 32" in page_error(response)
    assert page_error(response).startswith("ERR ")
    html = response.data.decode()
    assert textarea(html, "also") == also and textarea(html, "never").split("\n") == never
    assert result(r, "a:ask", 1) == before


def test_a_run_served_from_a_review_links_to_the_reviewed_record(r, alice, api):
    api.script("It needs 230 V.")
    r.execute_command("LLM.RUN", "a:ask", "How much power does the pump need?")
    response = alice.post("/review", data={"csrf": csrf(alice), "app": "a:ask", "id": "1",
                                           "answer": "230 V AC", "score": "97",
                                           "also": "What voltage does the pump use?",
                                           "never": ""})
    assert response.status_code == 302
    chats = len(api.chat_requests())
    assert r.execute_command("LLM.RUN", "a:ask", "what voltage does the pump use") == b"230 V AC"
    assert len(api.chat_requests()) == chats
    html = alice.get("/record?app=a:ask&id=2").data.decode()
    link = re.search(r'<a id="served-review" href="([^"]+)">the review of result 1</a>', html)
    assert link and "from an expert review" in html
    target = alice.get(html_module.unescape(link.group(1)))
    assert target.status_code == 200 and 'id="record-id">1<' in target.data.decode()
    # A run the model answered names no review.
    assert 'id="served-review"' not in alice.get("/record?app=a:ask&id=1").data.decode()
