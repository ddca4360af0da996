"""Recorded results and expert reviews: LLM.RUN records, LLM.RUN --ASYNC,
LLM.RESULT, LLM.RESULTS, LLM.REVIEW, LLM.RECORD, LLM.STATS, LLM.RESULT-SET,
serving reviewed answers, and records surviving RELOAD / RDB / replicas / AOF.

Real redis-server processes and the scripted OpenAI-compatible HTTP server;
what the model was asked is read back from the server's request log.
"""

import json
import socket
import time

import pytest
import redis
from helpers import ERROR_CODE, error_text, expect_error  # noqa: F401
from helpers import wait_for
from test_durability import restart, wait_aof_rewrite_done, wait_replica_synced

FIELDS = [b"id", b"app", b"state", b"question", b"vars", b"answer", b"error", b"model",
          b"embed_model", b"latency_ms", b"prompt_tokens", b"completion_tokens", b"matches",
          b"match_source", b"match_page", b"session", b"tags", b"meta", b"created_at",
          b"updated_at", b"reviewed_answer", b"reviewed_score", b"reviewed_notes", b"reviewer",
          b"served_from", b"served_review", b"also", b"never"]
PROMPT = "Answer: {{input}}"


# ---- helpers ----------------------------------------------------------------





def as_dict(reply: list) -> dict:
    assert reply[0::2] == FIELDS, reply
    assert all(isinstance(v, bytes) for v in reply[1::2]), reply
    return dict(zip((f.decode() for f in reply[0::2]), reply[1::2]))


def result(r, key, rid) -> dict | None:
    reply = r.execute_command("LLM.RESULT", key, rid)
    return None if reply is None else as_dict(reply)


def results(r, key, *options) -> list[dict]:
    return [as_dict(rec) for rec in r.execute_command("LLM.RESULTS", key, *options)]


def ids(r, key, *options) -> list[int]:
    return [int(rec["id"]) for rec in results(r, key, *options)]




def wait_done(r, key, rid, timeout: float = 10.0) -> dict:
    return wait_for(lambda: (rec := result(r, key, rid)) and rec["state"] in (b"done", b"failed")
                    and rec, timeout, f"result {rid} to finish")


def stats(r, key, *options) -> dict:
    reply = r.execute_command("LLM.STATS", key, *options)
    assert reply[0::2] == [b"records", b"by_state", b"by_band", b"reviewed", b"mean_score",
                           b"models"] + ([b"over_time"] if options else []), reply
    return dict(zip((n.decode() for n in reply[0::2]), reply[1::2]))


def create_llm(r, api, key="llm"):
    assert r.execute_command("LLM.CREATE-LLM", key, "--PARAMS",
                             json.dumps({"base_url": api.url})) == 1


def create_app(r, api, key="app", *options):
    create_llm(r, api)
    assert r.execute_command("LLM.CREATE-APP", key, "--LLM", "llm", "--PROMPT", PROMPT,
                             *options) == 1


def create_search(r, api, key="search", *options, items=("Paris is in France.",)):
    create_llm(r, api)
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "llm") == 1
    for n, item in enumerate(items):
        r.execute_command("LLM.ADD", "docs", "--META",
                          json.dumps({"source": "atlas.pdf", "page": n + 1}), item)
    assert r.execute_command("LLM.CREATE-SEARCH", key, "--LLM", "llm", "--VECTOR-STORE", "docs",
                             *options) == 1


def all_results(r, key):
    return r.execute_command("LLM.RESULTS", key, "--COUNT", 10000)


def parsed_results(r, key):
    """All records, their JSON fields parsed (key order inside them ignored)."""
    return [{name: (json.loads(value) if name in ("vars", "matches", "meta") and value else value)
             for name, value in rec.items()} for rec in results(r, key, "--COUNT", 10000)]


# ---- every run is recorded ----------------------------------------------------

def test_run_of_simple_app_records_a_done_result_with_every_field(r, api):
    create_app(r, api)
    before = int(time.time() * 1000)
    api.script("Forty-two.")
    assert r.execute_command("LLM.RUN", "app", "--TAGS", "math,faq", "--VARS", '{"x":1}',
                             "What is six times seven?") == b"Forty-two."
    assert ids(r, "app") == [1]
    rec = result(r, "app", 1)
    assert rec["id"] == b"1" and rec["app"] == b"app" and rec["state"] == b"done"
    assert rec["question"] == b"What is six times seven?"
    assert json.loads(rec["vars"]) == {"x": 1}
    assert rec["answer"] == b"Forty-two." and rec["error"] == b""
    assert rec["model"] == b"gpt-3.5-turbo" and rec["embed_model"] == b""
    sent = api.chat_requests()[-1].body["messages"][0]["content"]
    assert int(rec["prompt_tokens"]) == len(sent.split())
    assert rec["completion_tokens"] == b"1"
    assert int(rec["latency_ms"]) >= 0
    assert rec["tags"] == b"math,faq" and rec["session"] == b"" and rec["meta"] == b""
    assert rec["served_from"] == b"llm"
    assert before <= int(rec["created_at"]) <= int(rec["updated_at"]) <= time.time() * 1000 + 1
    for name in ("reviewed_answer", "reviewed_score", "reviewed_notes", "reviewer",
                 "matches", "match_source", "match_page"):
        assert rec[name] == b"", name


def test_run_of_search_app_records_matches_and_best_source(r, api):
    create_search(r, api, items=("Paris is in France.", "Rome is in Italy."))
    r.execute_command("LLM.RUN", "search", "Where is Paris?")
    rec = result(r, "search", 1)
    assert rec["state"] == b"done" and rec["embed_model"] == b"text-embedding-ada-002"
    matches = json.loads(rec["matches"])
    assert len(matches) == 2
    assert {m["content"] for m in matches} == {"Paris is in France.", "Rome is in Italy."}
    assert all(m["source"] == "atlas.pdf" for m in matches)
    assert matches[0]["distance"] <= matches[1]["distance"]
    assert rec["match_source"] == b"atlas.pdf"
    assert rec["match_page"] == str(matches[0]["page"]).encode()


def test_failed_run_is_recorded_as_failed_with_its_error(r, api):
    create_app(r, api)
    api.fail(400, message="bad request body")
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command("LLM.RUN", "app", "hello")
    rec = result(r, "app", 1)
    assert rec["state"] == b"failed"
    assert rec["error"] and rec["error"].decode() in error_text(info.value)
    assert b"bad request body" in rec["error"]
    assert rec["answer"] == b""
    # only done results can be reviewed
    expect_error(r, "LLM.REVIEW", "app", 1, "--ANSWER", "x", "--SCORE", 50,
                 match=r"^ERR result 1 is failed; only done results can be reviewed")
    assert result(r, "app", 1)["reviewed_score"] == b""


def test_record_zero_keeps_no_records_and_async_is_refused(r, api):
    create_app(r, api, "app", "--RECORD", 0)
    assert r.execute_command("LLM.RUN", "app", "hi") == b"echo: Answer: hi"
    assert r.execute_command("LLM.RESULTS", "app") == []
    assert r.execute_command("LLM.RESULT", "app", 1) is None
    assert stats(r, "app")["records"] == 0
    n = len(api.requests)
    expect_error(r, "LLM.RUN", "app", "--ASYNC", "hi", match=r"--ASYNC needs records")
    expect_error(r, "LLM.RECORD", "app", "--QUESTION", "q", "--ANSWER", "a",
                 match=r"keeps no records")
    assert len(api.requests) == n


def test_retention_keeps_only_the_newest_records(r, api):
    create_app(r, api, "app", "--RECORD", 3)
    for n in range(5):
        r.execute_command("LLM.RUN", "app", f"q{n}")
    assert ids(r, "app") == [5, 4, 3]
    assert result(r, "app", 1) is None and result(r, "app", 2) is None
    assert stats(r, "app")["records"] == 3


# ---- --ASYNC ------------------------------------------------------------------

def test_async_run_returns_the_id_at_once_and_finishes_in_the_background(r, api):
    create_app(r, api)
    api.delay(0.5)
    api.script("later")
    started = time.monotonic()
    rid = r.execute_command("LLM.RUN", "app", "--ASYNC", "--TAGS", "bg", "slow question")
    assert time.monotonic() - started < 0.4
    assert rid == 1
    assert result(r, "app", rid)["state"] in (b"pending", b"running")
    rec = wait_done(r, "app", rid)
    assert rec["state"] == b"done" and rec["answer"] == b"later" and rec["tags"] == b"bg"


def test_async_run_completes_after_the_client_disconnects(server, r, api):
    create_app(r, api)
    api.delay(0.4)
    api.script("finished anyway")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        parts = [b"LLM.RUN", b"app", b"--ASYNC", b"bye"]
        sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        assert sock.recv(100) == b":1\r\n"
    rec = wait_done(r, "app", 1)
    assert rec["state"] == b"done" and rec["answer"] == b"finished anyway"


def test_async_with_timeout_is_refused_and_nothing_is_recorded(r, api):
    create_app(r, api)
    expect_error(r, "LLM.RUN", "app", "--ASYNC", "--TIMEOUT", 100, "x",
                 match=r"--ASYNC and --TIMEOUT cannot be combined")
    assert r.execute_command("LLM.RESULTS", "app") == []
    assert api.requests == []


# ---- LLM.RESULT / LLM.RESULTS -------------------------------------------------

def test_result_of_unknown_id_or_key_is_nil_and_bad_id_is_an_error(r, api):
    create_app(r, api)
    assert r.execute_command("LLM.RESULT", "app", 7) is None
    assert r.execute_command("LLM.RESULT", "nokey", 1) is None
    expect_error(r, "LLM.RESULT", "app", "abc")
    expect_error(r, "LLM.RESULT", "app", "-1")
    assert r.execute_command("LLM.RESULTS", "nokey") == []


def record(r, key="app", *options, q="q", a="a"):
    return r.execute_command("LLM.RECORD", key, "--QUESTION", q, "--ANSWER", a, *options)


def test_results_filters_newest_first(r, api):
    create_app(r, api)
    assert record(r, "app", "--MODEL", "m1", "--TAGS", "x,y") == 1
    assert record(r, "app", "--MODEL", "m2", "--TAGS", "y", "--SESSION", "s1") == 2
    time.sleep(0.005)
    since = int(time.time() * 1000)
    time.sleep(0.005)
    assert record(r, "app", "--MODEL", "m1", "--SESSION", "s1") == 3
    assert record(r, "app") == 4
    r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "A1", "--SCORE", 90)
    r.execute_command("LLM.REVIEW", "app", 3, "--ANSWER", "A3", "--SCORE", "40.5")
    assert ids(r, "app") == [4, 3, 2, 1]
    assert ids(r, "app", "--STATE", "done") == [4, 3, 2, 1]
    assert ids(r, "app", "--STATE", "pending") == []
    assert ids(r, "app", "--REVIEWED") == [3, 1]
    assert ids(r, "app", "--UNREVIEWED") == [4, 2]
    assert ids(r, "app", "--MODEL", "m1") == [3, 1]
    assert ids(r, "app", "--TAG", "y") == [2, 1]
    assert ids(r, "app", "--TAG", "x") == [1]
    assert ids(r, "app", "--SESSION", "s1") == [3, 2]
    assert ids(r, "app", "--MIN-SCORE", 50) == [1]
    assert ids(r, "app", "--MAX-SCORE", "40.5") == [3]
    assert ids(r, "app", "--MIN-SCORE", 0, "--MAX-SCORE", 100) == [3, 1]
    assert ids(r, "app", "--SINCE", since) == [4, 3]
    assert ids(r, "app", "--COUNT", 2) == [4, 3]
    assert ids(r, "app", "--COUNT", 2, "--OFFSET", 1) == [3, 2]
    assert ids(r, "app", "--OFFSET", 4) == []
    assert ids(r, "app", "--MODEL", "m1", "--SESSION", "s1", "--REVIEWED") == [3]
    assert ids(r, "app", "--UNTIL", since) == [2, 1]
    assert ids(r, "app", "--SINCE", since, "--UNTIL", since) == []


def test_results_text_finds_question_answer_or_reviewed_answer_ignoring_case(r, api):
    create_app(r, api)
    record(r, q="Where is Paris?", a="In France.")
    record(r, q="Who wrote redis-llm?", a="Nobody knows.")
    record(r, q="What is Redis?", a="A database.")
    r.execute_command("LLM.REVIEW", "app", 2, "--ANSWER", "sewenew wrote it", "--SCORE", 97)
    assert ids(r, "app", "--TEXT", "paris") == [1]
    assert ids(r, "app", "--TEXT", "FRANCE") == [1]
    assert ids(r, "app", "--TEXT", "sewenew") == [2]
    assert ids(r, "app", "--TEXT", "redis") == [3, 2]
    assert ids(r, "app", "--TEXT", "redis", "--REVIEWED") == [2]
    assert ids(r, "app", "--TEXT", "nowhere") == []


def test_results_count_defaults_to_ten(r, api):
    create_app(r, api)
    for _ in range(12):
        record(r)
    assert ids(r, "app") == list(range(12, 2, -1))


@pytest.mark.parametrize("options", [
    ("--REVIEWED", "--UNREVIEWED"),
    ("--STATE", "finished"),
    ("--BOGUS",),
    ("--MIN-SCORE", "101"),
    ("--MAX-SCORE", "-1"),
    ("--MIN-SCORE", "abc"),
    ("--COUNT", "0"),
    ("--COUNT", "x"),
    ("--OFFSET", "-1"),
    ("--SINCE", "yesterday"),
    ("--UNTIL", "-5"),
    ("--TEXT", ""),
    ("--TEXT", "x" * 1025),
    ("--TEXT", "a", "--TEXT", "b"),
])
def test_results_rejects_bad_filters(r, api, options):
    create_app(r, api)
    record(r)
    expect_error(r, "LLM.RESULTS", "app", *options)


# ---- LLM.REVIEW ---------------------------------------------------------------

def test_review_sets_answer_score_notes_and_default_reviewer(r, api):
    create_app(r, api)
    r.execute_command("LLM.RUN", "app", "q")
    before = result(r, "app", 1)
    assert r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "Better", "--SCORE", "72.5",
                             "--NOTES", "close enough") == 1
    rec = result(r, "app", 1)
    assert rec["reviewed_answer"] == b"Better" and rec["reviewed_score"] == b"72.5"
    assert rec["reviewed_notes"] == b"close enough" and rec["reviewer"] == b"default"
    assert rec["answer"] == before["answer"] and rec["state"] == b"done"
    assert int(rec["updated_at"]) >= int(before["updated_at"])


def test_second_review_replaces_the_first(r, api):
    create_app(r, api)
    record(r)
    r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "first", "--SCORE", 10, "--NOTES", "n")
    r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "second", "--SCORE", 99)
    rec = result(r, "app", 1)
    assert (rec["reviewed_answer"], rec["reviewed_score"], rec["reviewed_notes"]) == \
        (b"second", b"99", b"")
    s = stats(r, "app")
    assert s["reviewed"] == 1 and s["mean_score"] == b"99"


def test_reviewer_is_the_calling_acl_user(server, r, api):
    create_app(r, api)
    record(r)
    r.execute_command("ACL", "SETUSER", "expert1", "on", ">pw1", "~*", "&*", "+@all")
    try:
        other = server.client(username="expert1", password="pw1")
        assert other.acl_whoami() == "expert1"
        assert other.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "x", "--SCORE", 5) == 1
        other.close()
        assert result(r, "app", 1)["reviewer"] == b"expert1"
        # a second connection AUTHs later
        c = server.client()
        c.execute_command("AUTH", "expert1", "pw1")
        c.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "y", "--SCORE", 6)
        c.close()
        assert result(r, "app", 1)["reviewer"] == b"expert1"
        r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "z", "--SCORE", 7)
        assert result(r, "app", 1)["reviewer"] == b"default"
    finally:
        r.execute_command("ACL", "DELUSER", "expert1")


@pytest.mark.parametrize("score", ["-1", "101", "abc", "nan", "inf", "", "1e2", "100.0001"])
def test_review_with_bad_score_is_an_error_and_changes_nothing(r, api, score):
    create_app(r, api)
    record(r)
    r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "kept", "--SCORE", 50)
    before = all_results(r, "app")
    expect_error(r, "LLM.REVIEW", "app", 1, "--ANSWER", "new", "--SCORE", score)
    assert all_results(r, "app") == before


@pytest.mark.parametrize("score,shown", [("0", b"0"), ("100", b"100"), ("99.5", b"99.5")])
def test_review_accepts_scores_from_0_to_100(r, api, score, shown):
    create_app(r, api)
    record(r)
    assert r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "a", "--SCORE", score) == 1
    assert result(r, "app", 1)["reviewed_score"] == shown


def test_review_errors_unknown_id_missing_options_wrong_key(r, api):
    create_app(r, api)
    record(r)
    expect_error(r, "LLM.REVIEW", "app", 9, "--ANSWER", "a", "--SCORE", 50,
                 match=r"^ERR no result 9 in app 'app'")
    expect_error(r, "LLM.REVIEW", "nokey", 1, "--ANSWER", "a", "--SCORE", 50,
                 match=r"^ERR no app at key 'nokey'")
    expect_error(r, "LLM.REVIEW", "app", 1, "--ANSWER", "a", "--NOTES", "n", "--SCORE")
    expect_error(r, "LLM.REVIEW", "app", 1, "--SCORE", "50", "--NOTES", "n")
    r.set("str", "x")
    expect_error(r, "LLM.REVIEW", "str", 1, "--ANSWER", "a", "--SCORE", 50, code="WRONGTYPE")
    assert result(r, "app", 1)["reviewed_score"] == b""


def test_review_of_running_result_is_refused(r, api):
    create_app(r, api)
    api.delay(0.6)
    rid = r.execute_command("LLM.RUN", "app", "--ASYNC", "q")
    expect_error(r, "LLM.REVIEW", "app", rid, "--ANSWER", "a", "--SCORE", 50,
                 match=r"^ERR result 1 is (pending|running); only done")
    wait_done(r, "app", rid)
    assert r.execute_command("LLM.REVIEW", "app", rid, "--ANSWER", "a", "--SCORE", 50) == 1


# ---- LLM.RECORD ---------------------------------------------------------------

def test_record_stores_a_done_result(r, api):
    create_app(r, api)
    rid = r.execute_command("LLM.RECORD", "app", "--QUESTION", "Q?", "--ANSWER", "A!",
                            "--MODEL", "agent-7", "--LATENCY", 123, "--TAGS", "a, b",
                            "--SESSION", "s9", "--META", '{"k":[1,2]}')
    assert rid == 1
    rec = result(r, "app", 1)
    assert rec["state"] == b"done" and rec["question"] == b"Q?" and rec["answer"] == b"A!"
    assert rec["model"] == b"agent-7" and rec["latency_ms"] == b"123"
    assert rec["tags"] == b"a,b" and rec["session"] == b"s9"
    assert json.loads(rec["meta"]) == {"k": [1, 2]}
    assert rec["served_from"] == b"llm"
    assert api.requests == []
    assert record(r) == 2


@pytest.mark.parametrize("args", [
    ("--QUESTION", "q"),
    ("--ANSWER", "a", "--MODEL", "m"),
    ("--QUESTION", "q", "--ANSWER", "a", "--LATENCY", "-5"),
    ("--QUESTION", "q", "--ANSWER", "a", "--META", "not json"),
    ("--QUESTION", "q", "--ANSWER", "a", "--META", "[1]"),
    ("--QUESTION", "q", "--ANSWER", "a", "--TAGS", "a,,b"),
])
def test_record_bad_input_is_an_error_and_records_nothing(r, api, args):
    create_app(r, api)
    expect_error(r, "LLM.RECORD", "app", *args)
    assert r.execute_command("LLM.RESULTS", "app") == []


def test_record_on_missing_app_is_an_error(r):
    expect_error(r, "LLM.RECORD", "nokey", "--QUESTION", "q", "--ANSWER", "a",
                 match=r"^ERR no app at key 'nokey'")
    assert r.exists("nokey") == 0


# ---- LLM.STATS ----------------------------------------------------------------

def test_stats_counts_states_bands_scores_and_models(r, api):
    create_app(r, api)
    record(r, "app", "--MODEL", "m1", "--LATENCY", 100)
    record(r, "app", "--MODEL", "m1", "--LATENCY", 201)
    record(r, "app", "--MODEL", "m2", "--LATENCY", 10)
    record(r, "app")
    api.fail(400)
    with pytest.raises(redis.ResponseError):
        r.execute_command("LLM.RUN", "app", "x")
    for rid, score in ((1, 10), (2, 65), (3, 80), (4, 95)):
        r.execute_command("LLM.REVIEW", "app", rid, "--ANSWER", "a", "--SCORE", score)
    s = stats(r, "app")
    assert s["records"] == 5
    assert s["by_state"] == [b"pending", 0, b"running", 0, b"done", 4, b"failed", 1]
    assert s["by_band"] == [b"not confident", 1, b"somewhat confident", 1, b"confident", 1,
                            b"a known fact", 1]
    assert s["reviewed"] == 4 and s["mean_score"] == b"62.5"
    # [model, done, mean latency, prompt tokens, completion tokens, reviewed, mean score]
    assert s["models"] == [[b"", 1, b"0", 0, 0, 1, b"95"], [b"m1", 2, b"150.5", 0, 0, 2, b"37.5"],
                           [b"m2", 1, b"10", 0, 0, 1, b"80"]]


def test_stats_interval_counts_results_and_reviewed_per_interval_of_creation(r, api):
    create_app(r, api)
    for _ in range(3):
        record(r)
    r.execute_command("LLM.REVIEW", "app", 2, "--ANSWER", "a", "--SCORE", 50)
    created = [int(result(r, "app", rid)["created_at"]) for rid in (1, 2, 3)]
    day = 86_400_000
    # Every record of this test falls in one day, unless it straddles midnight.
    expected: dict[int, list] = {}
    for rid, at in zip((1, 2, 3), created):
        bucket = expected.setdefault(at // day * day, [0, 0])
        bucket[0] += 1
        bucket[1] += rid == 2
    assert stats(r, "app", "--INTERVAL", day)["over_time"] == [
        [start, n, reviewed] for start, (n, reviewed) in sorted(expected.items())]
    second = stats(r, "app", "--INTERVAL", 1000)["over_time"]
    assert sum(n for _, n, _ in second) == 3 and sum(rev for _, _, rev in second) == 1
    assert all(start % 1000 == 0 for start, _, _ in second)


@pytest.mark.parametrize("options", [("--INTERVAL", "999"), ("--INTERVAL", "hour"),
                                     ("--INTERVAL",), ("--INTERVAL", "1000", "--INTERVAL", "2000"),
                                     ("--BUCKET", "1000")])
def test_stats_rejects_bad_intervals(r, api, options):
    create_app(r, api)
    record(r)
    expect_error(r, "LLM.STATS", "app", *options)


def test_stats_of_an_empty_app_and_of_missing_key(r, api):
    create_app(r, api)
    s = stats(r, "app")
    assert s["records"] == 0 and s["reviewed"] == 0 and s["mean_score"] == b"" and s["models"] == []
    expect_error(r, "LLM.STATS", "nokey", match=r"^ERR no app at key 'nokey'")


def test_stats_models_sum_tokens_of_runs(r, api):
    create_app(r, api)
    api.script("one two three")
    r.execute_command("LLM.RUN", "app", "a b")
    rec = result(r, "app", 1)
    (model,) = stats(r, "app")["models"]
    assert model[0] == b"gpt-3.5-turbo" and model[1] == 1
    assert model[3] == int(rec["prompt_tokens"]) and model[4] == 3
    assert model[5:] == [0, b""]


# ---- serving reviewed answers -------------------------------------------------

def chat_count(api):
    return len(api.chat_requests())


@pytest.mark.parametrize("kind", ["app", "search"])
def test_review_at_95_serves_the_same_question_without_a_chat_request(r, api, kind):
    key = "app" if kind == "app" else "search"
    (create_app if kind == "app" else create_search)(r, api, key)
    r.execute_command("LLM.RUN", key, "What is the capital of France?")
    r.execute_command("LLM.REVIEW", key, 1, "--ANSWER", "Paris.", "--SCORE", 95)
    n = chat_count(api)
    reply = r.execute_command("LLM.RUN", key, "--VERBOSE", "What is the capital of France?")
    assert reply[1] == b"Paris."
    assert reply[-6:] == [b"served_from", b"review", b"record", 2, b"served_review", 1]
    assert chat_count(api) == n
    rec = result(r, key, 2)
    assert rec["state"] == b"done" and rec["answer"] == b"Paris." and rec["served_from"] == b"review"
    assert rec["served_review"] == b"1"


@pytest.mark.parametrize("kind", ["app", "search"])
def test_review_at_95_does_not_serve_a_far_question_by_default(r, api, kind):
    key = "app" if kind == "app" else "search"
    (create_app if kind == "app" else create_search)(r, api, key)
    r.execute_command("LLM.RUN", key, "What is the capital of France?")
    r.execute_command("LLM.REVIEW", key, 1, "--ANSWER", "Paris.", "--SCORE", 100)
    n = chat_count(api)
    answer = r.execute_command("LLM.RUN", key, "How tall is Mont Blanc?")
    assert answer != b"Paris." and answer.startswith(b"echo: ")
    assert chat_count(api) == n + 1
    assert result(r, key, 2)["served_from"] == b"llm"


@pytest.mark.parametrize("kind", ["app", "search"])
def test_review_at_95_serves_a_different_question_within_the_distance(r, api, kind):
    key = "app" if kind == "app" else "search"
    review = ("--REVIEW", '{"distance": 2.0, "guard": false}')
    (create_app if kind == "app" else create_search)(r, api, key, *review)
    r.execute_command("LLM.RUN", key, "What is the capital of France?")
    r.execute_command("LLM.REVIEW", key, 1, "--ANSWER", "Paris.", "--SCORE", 96)
    n = chat_count(api)
    assert r.execute_command("LLM.RUN", key, "Which city is France's capital?") == b"Paris."
    assert chat_count(api) == n
    assert result(r, key, 2)["served_from"] == b"review"


def test_review_inside_multi_is_stored_without_an_embedding_and_serves_identical_questions(r, api):
    create_app(r, api, "app", "--REVIEW", '{"distance": 2.0, "guard": false}')
    r.execute_command("LLM.RUN", "app", "What is the capital of France?")
    embeddings = len(api.embedding_requests())
    pipe = r.pipeline(transaction=True)
    pipe.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "Paris.", "--SCORE", 96)
    assert pipe.execute() == [1]
    assert len(api.embedding_requests()) == embeddings  # MULTI cannot wait for an embedding
    assert result(r, "app", 1)["reviewed_score"] == b"96"
    assert r.execute_command("LLM.RUN", "app", "What is the capital of France?") == b"Paris."


def test_a_serve_band_review_of_a_simple_app_embeds_its_question_once(r, api):
    create_app(r, api, "app")
    r.execute_command("LLM.RUN", "app", "What is the capital of France?")
    embeddings = len(api.embedding_requests())
    r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "Paris.", "--SCORE", 96)
    assert len(api.embedding_requests()) == embeddings + 1
    assert api.embedding_requests()[-1].body["input"] == ["What is the capital of France?"]
    r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "Paris!", "--SCORE", 97)
    assert len(api.embedding_requests()) == embeddings + 1  # the embedding is kept
    assert result(r, "app", 1)["reviewed_answer"] == b"Paris!"


def test_custom_serve_score_sets_the_serve_band(r, api):
    create_app(r, api, "app", "--REVIEW", '{"serve_score": 50, "context_score": 40}')
    r.execute_command("LLM.RUN", "app", "q1")
    r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "reviewed", "--SCORE", 50)
    assert r.execute_command("LLM.RUN", "app", "q1") == b"reviewed"
    r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "reviewed", "--SCORE", "49.9")
    assert r.execute_command("LLM.RUN", "app", "q1") == b"echo: Answer: q1"


def test_review_in_context_band_goes_first_into_search_context(r, api):
    create_search(r, api)
    r.execute_command("LLM.RUN", "search", "Where is Paris?")
    r.execute_command("LLM.REVIEW", "search", 1, "--ANSWER", "Paris is the capital of France.",
                      "--SCORE", 85)
    n = chat_count(api)
    r.execute_command("LLM.RUN", "search", "Where is Paris?")
    assert chat_count(api) == n + 1
    prompt = api.chat_requests()[-1].body["messages"][-1]["content"]
    expert = prompt.find("Paris is the capital of France.")
    item = prompt.find("Paris is in France.")
    assert 0 <= expert < item, prompt
    assert "(source: expert review, score: 85)" in prompt
    assert result(r, "search", 2)["served_from"] == b"llm"


def test_review_below_80_changes_nothing(r, api):
    create_search(r, api)
    r.execute_command("LLM.RUN", "search", "Where is Paris?")
    first = api.chat_requests()[-1].body["messages"][-1]["content"]
    r.execute_command("LLM.REVIEW", "search", 1, "--ANSWER", "EXPERT TEXT", "--SCORE", "79.9")
    r.execute_command("LLM.RUN", "search", "Where is Paris?")
    second = api.chat_requests()[-1].body["messages"][-1]["content"]
    assert second == first and "EXPERT TEXT" not in second
    assert result(r, "search", 2)["served_from"] == b"llm"


def test_recorded_agent_answer_reviewed_at_95_is_served(r, api):
    create_app(r, api)
    record(r, q="What is 2+2?", a="5")
    r.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "4", "--SCORE", 100)
    assert r.execute_command("LLM.RUN", "app", "What is 2+2?") == b"4"
    assert chat_count(api) == 0


@pytest.mark.parametrize("review", ['{"bogus": 1}', '{"distance": 3}', '{"serve_score": 101}',
                                    '{"serve_score": "95"}', '{"serve_score": 70, "context_score": 80}',
                                    'nope'])
def test_create_with_bad_review_settings_is_an_error(r, api, review):
    create_llm(r, api)
    expect_error(r, "LLM.CREATE-APP", "app", "--LLM", "llm", "--REVIEW", review)
    assert r.exists("app") == 0


@pytest.mark.parametrize("limit", ["-1", "abc", "1000001"])
def test_create_with_bad_record_limit_is_an_error(r, api, limit):
    create_llm(r, api)
    expect_error(r, "LLM.CREATE-APP", "app", "--LLM", "llm", "--RECORD", limit)
    assert r.exists("app") == 0


# ---- a best match whose meta is not text -------------------------------------

def test_a_best_match_whose_source_and_page_are_not_text_is_kept_as_json_through_reload(
        r, api):
    """An item's meta may hold any JSON: its source once made the record
    unloadable, and with it the whole RDB file."""
    create_llm(r, api)
    r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "llm")
    r.execute_command("LLM.ADD", "docs", "--META",
                      json.dumps({"source": 5, "page": {"n": [1, 2]}}), "Paris is in France.")
    r.execute_command("LLM.CREATE-SEARCH", "search", "--LLM", "llm", "--VECTOR-STORE", "docs")
    r.execute_command("LLM.RUN", "search", "Where is Paris?")
    before = result(r, "search", 1)
    assert before["match_source"] == b"5" and before["match_page"] == b'{"n":[1,2]}'
    assert json.loads(before["matches"])[0]["source"] == 5
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    assert result(r, "search", 1) == before


def test_a_numeric_match_source_or_negative_tokens_as_older_versions_wrote_are_accepted(r, api):
    create_app(r, api)
    rec = {"id": 3, "app": "app", "state": "done", "created_at": 1000, "updated_at": 1000,
           "match_source": 42, "match_page": 7, "prompt_tokens": -5}
    assert r.execute_command("LLM.RESULT-SET", "app", json.dumps(rec)) == 1
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    got = result(r, "app", 3)
    assert got["match_source"] == b"42" and got["match_page"] == b"7"
    assert got["prompt_tokens"] == b"0"


# ---- LLM.RESULT-SET -----------------------------------------------------------

def test_result_set_stores_a_whole_record(r, api):
    create_app(r, api)
    rec = {"id": 5, "app": "app", "state": "done", "question": "q", "answer": "a",
           "created_at": 1000, "updated_at": 1000, "tags": ["t"], "reviewed_score": 97,
           "reviewed_answer": "ra"}
    assert r.execute_command("LLM.RESULT-SET", "app", json.dumps(rec)) == 1
    got = result(r, "app", 5)
    assert got["question"] == b"q" and got["tags"] == b"t" and got["reviewed_score"] == b"97"
    # the id counter moves past it
    assert record(r) == 6


@pytest.mark.parametrize("payload", [
    "not json", "[1,2]", '"x"',
    '{"id": 1, "state": "done"}',                                     # no created_at
    '{"id": 0, "state": "done", "created_at": 1}',
    '{"id": 1, "state": "weird", "created_at": 1}',
    '{"id": 1, "state": "done", "created_at": 1, "bogus": 2}',
    '{"id": "1", "state": "done", "created_at": 1}',
    '{"id": 1, "state": "done", "created_at": 1, "reviewed_score": 101}',
    '{"id": 1, "state": "done", "created_at": 1, "reviewed_score": "50"}',
    '{"id": 1, "state": "done", "created_at": 1, "vector": "!!notbase64"}',
])
def test_result_set_rejects_bad_records_and_changes_nothing(r, api, payload):
    create_app(r, api)
    record(r)
    before = all_results(r, "app")
    expect_error(r, "LLM.RESULT-SET", "app", payload)
    assert all_results(r, "app") == before
    assert result(r, "app", 1)["question"] == b"q"


def test_result_set_with_wrong_field_types_does_not_break_reads(r, api):
    """A record whose tags is not a list must be refused, or at least be readable."""
    create_app(r, api)
    payload = {"id": 1, "state": "done", "created_at": 1, "tags": "abc", "question": 5}
    try:
        r.execute_command("LLM.RESULT-SET", "app", json.dumps(payload))
    except redis.ResponseError as exc:
        assert error_text(exc).startswith("ERR "), exc
        return
    # accepted: every read must still work
    result(r, "app", 1)
    r.execute_command("LLM.RESULTS", "app", "--TAG", "a")
    stats(r, "app")


# ---- persistence and replication ---------------------------------------------

def populate(r, api):
    """A search app with a run, a served run, an agent record, reviews, tags."""
    create_search(r, api, "search", "--RECORD", 50, "--REVIEW", '{"distance": 2.0, "guard": false}')
    r.execute_command("LLM.RUN", "search", "--TAGS", "geo", "Where is Paris?")
    r.execute_command("LLM.REVIEW", "search", 1, "--ANSWER", "In France.", "--SCORE", 99,
                      "--NOTES", "checked")
    r.execute_command("LLM.RUN", "search", "Where is Paris?")
    record(r, "search", "--MODEL", "agent", "--META", '{"x":1}', q="agent q", a="agent a")


def test_records_survive_debug_reload_with_their_vectors(r, api):
    populate(r, api)
    before = parsed_results(r, "search")
    before_stats = r.execute_command("LLM.STATS", "search")
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    assert parsed_results(r, "search") == before
    assert r.execute_command("LLM.STATS", "search") == before_stats
    # the question's embedding survived: a different question is still served
    n = chat_count(api)
    assert r.execute_command("LLM.RUN", "search", "Something else entirely") == b"In France."
    assert chat_count(api) == n
    # and the id counter
    assert record(r, "search") == 5


# ---- runs lost with a restart, a failover or a reload ----------------------------

def wait_state(r, key, rid, state, timeout=10.0):
    return wait_for(lambda: result(r, key, rid)["state"] == state, timeout,
                    f"result {rid} to be {state}", 0.02)


def start_slow_run(r, api, seconds: float, answer: str = "late") -> None:
    """An --ASYNC run (record 1) that is running, its model answering after ``seconds``."""
    create_app(r, api)
    api.delay(seconds)
    api.script(answer)
    assert r.execute_command("LLM.RUN", "app", "--ASYNC", "q") == 1
    wait_state(r, "app", 1, b"running")


def test_a_run_lost_in_a_restart_is_marked_failed_at_the_next_write(make_server, api):
    srv = make_server(config={"appendonly": "yes"})
    c = srv.client()
    start_slow_run(c, api, 3.0)
    c.close()
    restart(srv)                    # the job dies with the process
    c = srv.client()
    assert result(c, "app", 1)["state"] == b"running"     # nothing runs it any more
    assert record(c) == 2
    lost = result(c, "app", 1)
    assert lost["state"] == b"failed" and lost["error"].startswith(b"interrupted:")
    restart(srv)                    # the AOF holds the failure
    assert result(srv.client(), "app", 1)["state"] == b"failed"


def test_a_run_lost_in_a_debug_reload_is_failed_and_its_late_answer_is_dropped(r, api):
    start_slow_run(r, api, 1.0)
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"   # a new app value; the job holds the old
    assert record(r) == 2
    assert result(r, "app", 1)["state"] == b"failed"
    time.sleep(1.3)                 # the old job finishes, and cannot write into the new value
    assert result(r, "app", 1)["state"] == b"failed"
    assert result(r, "app", 1)["answer"] == b""


def test_a_run_in_flight_is_not_failed_by_writes_meanwhile(r, api):
    start_slow_run(r, api, 0.8, "on time")
    assert record(r) == 2
    assert r.execute_command("LLM.REVIEW", "app", 2, "--ANSWER", "x", "--SCORE", 50) == 1
    assert result(r, "app", 1)["state"] == b"running"
    done = wait_done(r, "app", 1)
    assert done["state"] == b"done" and done["answer"] == b"on time"


def test_a_replica_fails_no_run_itself_and_takes_the_masters_failure(make_server, api):
    master = make_server("master", config={"repl-diskless-sync-delay": "0"})
    replica = make_server("replica")
    m = master.client()
    start_slow_run(m, api, 3.0)
    rep = replica.client()
    rep.replicaof("127.0.0.1", master.port)
    wait_replica_synced(m, rep)
    # The replica loaded a running record no job of its own runs: it waits
    # for the master's word.
    assert result(rep, "app", 1)["state"] == b"running"
    m.execute_command("DEBUG", "RELOAD")
    assert record(m) == 2
    wait_for(lambda: result(rep, "app", 1)["state"] == b"failed", 10, "the replicated failure")


def test_records_survive_restart_from_rdb(make_server, api):
    srv = make_server()
    c = srv.client()
    populate(c, api)
    before = parsed_results(c, "search")
    assert c.save()
    c.close()
    restart(srv)
    c = srv.client()
    assert parsed_results(c, "search") == before
    assert record(c, "search") == 4




def test_records_replicate_runs_reviews_async_and_result_set(make_server, api):
    master_srv = make_server("master", config={"repl-diskless-sync-delay": "0"})
    replica_srv = make_server("replica")
    m, rep = master_srv.client(), replica_srv.client()
    rep.replicaof("127.0.0.1", master_srv.port)
    wait_replica_synced(m, rep)
    populate(m, api)
    rid = m.execute_command("LLM.RUN", "search", "--ASYNC", "async question")
    wait_done(m, "search", rid)
    m.execute_command("LLM.RESULT-SET", "search", json.dumps(
        {"id": 40, "state": "done", "created_at": 5, "question": "set"}))
    wait_replica_synced(m, rep)
    assert parsed_results(rep, "search") == parsed_results(m, "search")
    assert len(parsed_results(m, "search")) == 5
    assert rep.execute_command("LLM.STATS", "search") == m.execute_command("LLM.STATS", "search")
    assert rep.execute_command("DEBUG", "DIGEST-VALUE", "search") == \
        m.execute_command("DEBUG", "DIGEST-VALUE", "search")
    # a fresh full sync carries them too
    late_srv = make_server("late")
    late = late_srv.client()
    late.replicaof("127.0.0.1", master_srv.port)
    wait_replica_synced(m, late)
    assert parsed_results(late, "search") == parsed_results(m, "search")


def test_records_survive_aof_rewrite_without_preamble(make_server, api):
    srv = make_server(config={"appendonly": "yes", "aof-use-rdb-preamble": "no"})
    c = srv.client()
    wait_for(lambda: not c.info("persistence")["aof_rewrite_in_progress"], 20, "initial rewrite")
    populate(c, api)
    before = parsed_results(c, "search")
    digest = c.execute_command("DEBUG", "DIGEST-VALUE", "search")
    assert c.bgrewriteaof()

    time.sleep(0.05)
    wait_aof_rewrite_done(c)
    base = b"".join(p.read_bytes() for p in sorted((srv.dir / "appendonlydir").glob("*.base.*")))
    assert base.count(b"LLM.RESULT-SET") == 3
    c.close()
    restart(srv)
    c = srv.client()
    assert parsed_results(c, "search") == before
    assert c.execute_command("DEBUG", "DIGEST-VALUE", "search") == digest
    assert record(c, "search") == 4
    # served by the restored review's vector, no chat request
    n = chat_count(api)
    assert c.execute_command("LLM.RUN", "search", "Anything at all") == b"In France."
    assert chat_count(api) == n


def test_result_reply_is_byte_identical_after_debug_reload(r, api):
    """LLM.RESULT of an unchanged record must read the same before and after a reload
    (and so on a replica that did a full sync): the JSON in "matches" must keep its form."""
    create_search(r, api)
    r.execute_command("LLM.RUN", "search", "Where is Paris?")
    before = r.execute_command("LLM.RESULT", "search", 1)
    r.execute_command("DEBUG", "RELOAD")
    assert r.execute_command("LLM.RESULT", "search", 1) == before


def test_run_refused_by_a_full_queue_leaves_no_pending_record(make_server, api):
    """A run the worker queue refuses never runs: it must not leave a record that stays
    pending forever."""
    srv = make_server(module_args=("DEBUG_COMMANDS", "yes", "POOL_SIZE", "1", "QUEUE_SIZE", "1"))
    c = srv.client()
    create_app(c, api)
    api.delay(0.5, times=2)
    assert c.execute_command("LLM.RUN", "app", "--ASYNC", "one") == 1
    api.wait_for_requests(1)               # the worker is busy with it
    assert c.execute_command("LLM.RUN", "app", "--ASYNC", "two") == 2   # queued
    expect_error(c, "LLM.RUN", "app", "--ASYNC", "three", match=r"the worker queue is full")
    wait_done(c, "app", 1)
    wait_done(c, "app", 2)
    assert [rec["state"] for rec in results(c, "app")] == [b"done", b"done"]
    assert stats(c, "app")["by_state"][1] == 0
