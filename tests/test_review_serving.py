"""Review serving on the offline default embedder: reviewed answers are served
to repeats and paraphrases of the reviewed question, never to near-misses or
to other questions; --ALSO widens and --NEVER narrows what a review answers;
both survive reloads, replicas and the AOF.

Real redis-server processes; the embedder is the local default (all-MiniLM-L6-v2
as GGUF, in-process); the chat model is the scripted OpenAI-compatible server,
so that what was asked is read back from its request log. The questions are a
slice of bench/data/answer_facts.json, the answer-quality benchmark's facts.
"""

import json
from pathlib import Path

import pytest
from helpers import expect_error, require_local_models
from test_durability import restart, wait_aof_rewrite_done, wait_replica_synced


FACTS = json.loads((Path(__file__).parent.parent / "bench" / "data" /
                    "answer_facts.json").read_text())[:8]
REVIEWED, UNREVIEWED = FACTS[:4], FACTS[4:]
# Paraphrases of REVIEWED served at the default distance, 0.1: BENCHMARKS.md
# has the whole set (38%); fewer means the embedder or the guard regressed.
PARAPHRASES_AT_DEFAULT = 4


@pytest.fixture(scope="module", autouse=True)
def _local_models_installed():
    require_local_models()


def run(r, key, question) -> dict:
    reply = r.execute_command("LLM.RUN", key, "--VERBOSE", question)
    out = dict(zip((k.decode() for k in reply[0::2]), reply[1::2]))
    out["answer"] = out["answer"].decode()
    return out


def make_app(r, api, key="facts", review=None):
    """A search app whose chat model is the scripted server and whose store
    embeds with the local default; its facts' documents in the store."""
    r.execute_command("LLM.CREATE-LLM", "chat", "--PARAMS", json.dumps({"base_url": api.url}))
    r.execute_command("LLM.CREATE-LLM", "local", "--TYPE", "llamacpp")
    r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "local")
    for fact in FACTS:
        r.execute_command("LLM.ADD", "docs", fact["document"])
    options = ["--REVIEW", json.dumps(review)] if review else []
    assert r.execute_command("LLM.CREATE-SEARCH", key, "--LLM", "chat", "--VECTOR-STORE", "docs",
                             *options) == 1


def review_facts(r, key, facts, *options) -> dict:
    """Run and review each fact's question at 99; their record ids by fact id."""
    ids = {}
    for fact in facts:
        rid = int(run(r, key, fact["question"])["record"])
        assert r.execute_command("LLM.REVIEW", key, rid, "--ANSWER", fact["answer"],
                                 "--SCORE", 99, *options) == 1
        ids[fact["id"]] = rid
    return ids


def served(reply) -> int | None:
    return int(reply["served_review"]) if reply["served_from"] == b"review" else None


def test_reviewed_questions_serve_repeats_and_paraphrases_and_nothing_else(r, api):
    make_app(r, api)
    ids = review_facts(r, "facts", REVIEWED)
    chats = len(api.chat_requests())
    for fact in REVIEWED:
        reply = run(r, "facts", fact["question"].upper())
        assert served(reply) == ids[fact["id"]] and reply["answer"] == fact["answer"]
    assert len(api.chat_requests()) == chats  # served answers call no model
    paraphrases_served = 0
    for fact in REVIEWED:
        for question in fact["paraphrases"]:
            got = served(run(r, "facts", question))
            assert got in (None, ids[fact["id"]]), f"{question!r} got another fact's review"
            paraphrases_served += got == ids[fact["id"]]
    wrong = []
    for fact in FACTS:
        probes = [near["question"] for near in fact["near_misses"]]
        if fact in UNREVIEWED:
            probes += [fact["question"], *fact["paraphrases"]]
        wrong += [(question, got) for question in probes
                  if (got := served(run(r, "facts", question))) is not None]
    assert wrong == []
    assert paraphrases_served >= PARAPHRASES_AT_DEFAULT


def test_the_guard_refuses_near_misses_that_the_distance_alone_would_serve(r, api):
    make_app(r, api, review={"distance": 2.0, "guard": True})
    ids = review_facts(r, "facts", REVIEWED[:1])
    fact = REVIEWED[0]
    for near in fact["near_misses"]:
        assert served(run(r, "facts", near["question"])) is None, near
    # With the guard off, distance 2 serves anything: the guard did the refusing.
    r.execute_command("LLM.CREATE-SEARCH", "open", "--LLM", "chat", "--VECTOR-STORE", "docs",
                      "--REVIEW", json.dumps({"distance": 2.0, "guard": False}))
    review_facts(r, "open", REVIEWED[:1])
    assert all(served(run(r, "open", near["question"])) is not None for near in fact["near_misses"])
    assert ids


def test_also_questions_are_served_as_if_asked_and_never_questions_are_refused(r, api):
    make_app(r, api)
    fact = REVIEWED[0]
    attribute = next(n["question"] for n in fact["near_misses"] if n["kind"] != "negation")
    paraphrase = fact["paraphrases"][0]
    rid = review_facts(r, "facts", [fact], "--ALSO", attribute, "--NEVER", paraphrase)[fact["id"]]
    record = dict(zip(*[iter(r.execute_command("LLM.RESULT", "facts", rid))] * 2))
    assert json.loads(record[b"also"]) == [attribute]
    assert json.loads(record[b"never"]) == [paraphrase]
    assert served(run(r, "facts", attribute)) == rid
    assert served(run(r, "facts", paraphrase + "  ")) is None
    # A re-review without the lists keeps them; a single empty value clears one.
    r.execute_command("LLM.REVIEW", "facts", rid, "--ANSWER", fact["answer"], "--SCORE", 98)
    assert served(run(r, "facts", attribute)) == rid
    r.execute_command("LLM.REVIEW", "facts", rid, "--ANSWER", fact["answer"], "--SCORE", 98,
                      "--NEVER", "")
    record = dict(zip(*[iter(r.execute_command("LLM.RESULT", "facts", rid))] * 2))
    assert record[b"never"] == b"[]" and json.loads(record[b"also"]) == [attribute]


def test_a_question_closer_to_a_never_question_than_to_the_review_is_refused(r, api):
    make_app(r, api, review={"distance": 0.4})  # wide enough to serve the paraphrase
    fact = REVIEWED[0]
    paraphrase = fact["paraphrases"][0]
    rid = review_facts(r, "facts", [fact])[fact["id"]]
    assert served(run(r, "facts", paraphrase)) == rid
    r.execute_command("LLM.REVIEW", "facts", rid, "--ANSWER", fact["answer"], "--SCORE", 99,
                      "--NEVER", paraphrase.replace("?", " exactly?"))
    assert served(run(r, "facts", paraphrase)) is None


@pytest.mark.parametrize("options, message", [
    (("--ALSO", "a", "--ALSO", ""), "must not be empty"),
    (("--ALSO",), "needs a value"),
    (tuple(x for n in range(33) for x in ("--ALSO", f"question {n}?")), "at most 32"),
])
def test_bad_guard_questions_are_refused_and_change_nothing(r, api, options, message):
    make_app(r, api)
    rid = review_facts(r, "facts", REVIEWED[:1])[REVIEWED[0]["id"]]
    before = r.execute_command("LLM.RESULT", "facts", rid)
    expect_error(r, "LLM.REVIEW", "facts", rid, "--ANSWER", "x", "--SCORE", 99, *options,
                 match=message)
    assert r.execute_command("LLM.RESULT", "facts", rid) == before


@pytest.mark.parametrize("review, message", [
    ({"guard": 1}, "must be true or false"),
    ({"guard_similarity": 1.5}, "from 0 to 1"),
    ({"distance": -0.1}, "from 0 to 2"),
])
def test_bad_review_settings_are_refused(r, api, review, message):
    r.execute_command("LLM.CREATE-LLM", "chat", "--PARAMS", json.dumps({"base_url": api.url}))
    expect_error(r, "LLM.CREATE-APP", "a", "--LLM", "chat", "--REVIEW", json.dumps(review),
                 match=message)
    assert r.exists("a") == 0


def test_guards_survive_reload_restart_aof_rewrite_and_replicas(make_server, api):
    master = make_server("master", config={"appendonly": "yes", "aof-use-rdb-preamble": "no"})
    r = master.client()
    make_app(r, api)
    fact = REVIEWED[0]
    attribute = fact["near_misses"][0]["question"]
    paraphrase = fact["paraphrases"][0]
    replica = make_server("replica")
    rep = replica.client()
    rep.replicaof("127.0.0.1", master.port)
    wait_replica_synced(r, rep)
    rid = review_facts(r, "facts", [fact], "--ALSO", attribute, "--NEVER", paraphrase)[fact["id"]]
    wait_replica_synced(r, rep)

    def check(client):
        assert served(run(client, "facts", attribute)) == rid
        assert served(run(client, "facts", paraphrase)) is None

    rep.replicaof("no", "one")  # a promoted replica serves from what it was sent
    check(rep)
    r.execute_command("DEBUG", "RELOAD")
    check(r)
    r.execute_command("BGREWRITEAOF")
    wait_aof_rewrite_done(r)
    check(restart(master).client())
