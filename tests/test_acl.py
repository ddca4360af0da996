"""ACL tenants: key patterns hold for every key a command names, and for the
keys an app or a store names (its LLM, its vector store), checked again
against the calling user when the command runs."""

import json

import pytest
import redis

from helpers import expect_error

PASSWORD = "s3cret-pw"


@pytest.fixture
def tenants(r, api):
    """Two tenants, alice (~alice:*) and bob (~bob:*), each with an LLM, a
    store with an item, an app with a reviewed result and a search app;
    returns (alice's client, bob's client). ``r`` stays the default user."""
    for user in ("alice", "bob"):
        r.execute_command("ACL", "SETUSER", user, "reset", "on", f">{PASSWORD}", f"~{user}:*",
                          "+@all", "-@dangerous")
    clients = {user: redis.Redis(host="127.0.0.1", port=r.connection_pool.connection_kwargs["port"],
                                 username=user, password=PASSWORD)
               for user in ("alice", "bob")}
    for user, client in clients.items():
        p = f"{user}:"
        client.execute_command("LLM.CREATE-LLM", p + "llm", "--PARAMS",
                               json.dumps({"base_url": api.url}))
        client.execute_command("LLM.CREATE-VECTOR-STORE", p + "store", "--LLM", p + "llm")
        client.execute_command("LLM.ADD", p + "store", "--EMBEDDING-BLOB", b"\0" * 32, f"{user}'s doc")
        client.execute_command("LLM.CREATE-APP", p + "app", "--LLM", p + "llm", "--PROMPT", "{{input}}")
        client.execute_command("LLM.CREATE-SEARCH", p + "search", "--LLM", p + "llm",
                               "--VECTOR-STORE", p + "store")
        client.execute_command("LLM.RUN", p + "app", f"{user}'s question")
        client.execute_command("LLM.REVIEW", p + "app", 1, "--ANSWER", "fine", "--SCORE", 50)
    yield clients["alice"], clients["bob"]
    for client in clients.values():
        client.close()
    r.execute_command("ACL", "DELUSER", "alice", "bob")


def digests(r, pattern: str) -> dict:
    return {key: r.execute_command("DEBUG", "DIGEST-VALUE", key) for key in r.keys(pattern)}


# Every command a tenant could aim at another tenant's keys.
def bobs_keys_commands():
    return [
        ("LLM.GET", "bob:store", 1), ("LLM.SIZE", "bob:store"),
        ("LLM.KNN", "bob:store", "--EMBEDDING-BLOB", b"\0" * 32),
        ("LLM.KNN", "bob:store", "a query text"),
        ("LLM.ADD", "bob:store", "--EMBEDDING-BLOB", b"\0" * 32, "intruder"),
        ("LLM.REM", "bob:store", 1),
        ("LLM.RUN", "bob:app", "question"), ("LLM.RUN", "bob:search", "question"),
        ("LLM.RESULT", "bob:app", 1), ("LLM.RESULTS", "bob:app"), ("LLM.STATS", "bob:app"),
        ("LLM.REVIEW", "bob:app", 1, "--ANSWER", "hijacked", "--SCORE", 100),
        ("LLM.RECORD", "bob:app", "--QUESTION", "q", "--ANSWER", "a"),
        ("LLM.RESULT-SET", "bob:app", "{}"),
        ("LLM.CREATE-LLM", "bob:llm", "--PARAMS", "{}"),
        ("LLM.CREATE-VECTOR-STORE", "bob:store", "--XX"),
        # Naming another tenant's key as an option value is refused too:
        # the key-specs declare --LLM and --VECTOR-STORE.
        ("LLM.CREATE-APP", "alice:mine", "--LLM", "bob:llm"),
        ("LLM.CREATE-SEARCH", "alice:mine", "--LLM", "alice:llm", "--VECTOR-STORE", "bob:store"),
        ("LLM.CREATE-CHAT", "alice:mine", "--LLM", "bob:llm", "--VECTOR-STORE", "alice:store"),
        ("LLM.CREATE-VECTOR-STORE", "alice:mine", "--LLM", "bob:llm"),
    ]


@pytest.mark.parametrize("command", bobs_keys_commands(), ids=lambda c: " ".join(map(str, c[:2])))
def test_a_tenant_cannot_read_use_run_review_or_list_another_tenants_keys(r, api, tenants, command):
    alice, _ = tenants
    before = digests(r, "*")
    requests = len(api.requests)
    expect_error(alice, *command, code="NOPERM")
    assert digests(r, "*") == before
    assert len(api.requests) == requests, "a refused command reached the LLM"


def test_tenants_use_their_own_keys(tenants):
    alice, bob = tenants
    assert alice.execute_command("LLM.SIZE", "alice:store") == 1
    assert bob.execute_command("LLM.RUN", "bob:app", "hello") == b"echo: hello"
    assert bob.execute_command("LLM.RESULT", "bob:app", 1)
    assert alice.execute_command("LLM.RUN", "alice:search", "what is there?")


def test_llm_list_shows_a_tenant_only_the_keys_it_may_read(r, tenants):
    alice, bob = tenants
    r.set("alice:plain-string", "not a module key")
    mine = [[b"alice:app", b"app"], [b"alice:llm", b"llm"], [b"alice:search", b"search"],
            [b"alice:store", b"vector-store"]]
    assert alice.execute_command("LLM.LIST") == mine
    assert alice.execute_command("LLM.LIST", "--MATCH", "bob:*") == []
    assert alice.execute_command("LLM.LIST", "--TYPE", "llm") == [[b"alice:llm", b"llm"]]
    assert [key for key, _ in bob.execute_command("LLM.LIST")] == \
        [b"bob:app", b"bob:llm", b"bob:search", b"bob:store"]
    # The default user reads every key.
    assert len(r.execute_command("LLM.LIST")) == 8
    assert r.execute_command("LLM.LIST", "--COUNT", 2) == [[b"alice:app", b"app"],
                                                           [b"alice:llm", b"llm"]]


@pytest.mark.parametrize("args, match", [
    (("--TYPE", "index"), "--TYPE must be one of llm, vector-store, app, search, chat"),
    (("--COUNT", "0"), "--COUNT must be an integer from 1 to 100000"),
    (("--COUNT", "many"), "--COUNT must be an integer"),
    (("--MATCH",), "option --MATCH needs a value"),
    (("--TYPE", "llm", "--type", "app"), "option --TYPE given more than once"),
    (("--SORT",), "unknown option '--SORT'"),
    (("keys",), "syntax error at 'keys'"),
])
def test_llm_list_refuses_bad_arguments(r, args, match):
    r.execute_command("LLM.CREATE-VECTOR-STORE", "s")
    expect_error(r, "LLM.LIST", *args, match=match)
    assert r.execute_command("LLM.LIST") == [[b"s", b"vector-store"]]


def test_the_review_names_the_acl_user_who_gave_it(tenants):
    _, bob = tenants
    record = bob.execute_command("LLM.RESULT", "bob:app", 1)
    fields = dict(zip(record[0::2], record[1::2]))
    assert fields[b"reviewer"] == b"bob"


# ---- keys named by stored values, checked when the command runs -------------

@pytest.mark.parametrize("kind", ["app", "search", "chat"])
def test_running_an_app_whose_llm_the_user_may_not_read_is_noperm(r, api, tenants, kind):
    """An admin made alice:sneaky with bob's LLM: Redis cannot see that key
    in LLM.RUN alice:sneaky, the module checks it."""
    alice, _ = tenants
    create = {"app": ["LLM.CREATE-APP", "alice:sneaky", "--LLM", "bob:llm"],
              "search": ["LLM.CREATE-SEARCH", "alice:sneaky", "--LLM", "bob:llm",
                         "--VECTOR-STORE", "alice:store"],
              "chat": ["LLM.CREATE-CHAT", "alice:sneaky", "--LLM", "bob:llm",
                       "--VECTOR-STORE", "alice:store"]}[kind]
    r.execute_command(*create)
    requests = len(api.requests)
    before = r.execute_command("DEBUG", "DIGEST-VALUE", "alice:sneaky")
    text = expect_error(alice, "LLM.RUN", "alice:sneaky", "question", code="NOPERM",
                        match="'bob:llm'")
    assert "'alice'" in text
    assert len(api.requests) == requests
    # Nothing was recorded for the refused run.
    assert r.execute_command("DEBUG", "DIGEST-VALUE", "alice:sneaky") == before
    assert r.execute_command("LLM.RESULTS", "alice:sneaky") == []


def test_a_search_app_over_another_tenants_store_is_noperm(r, api, tenants):
    alice, _ = tenants
    r.execute_command("LLM.CREATE-SEARCH", "alice:sneaky", "--LLM", "alice:llm",
                      "--VECTOR-STORE", "bob:store")
    expect_error(alice, "LLM.RUN", "alice:sneaky", "what does bob know?", code="NOPERM",
                 match="'bob:store'")
    assert not api.requests or all("bob's doc" not in json.dumps(q.body) for q in api.requests)


def test_a_store_embedding_with_another_tenants_llm_is_noperm(r, api, tenants):
    alice, _ = tenants
    r.execute_command("LLM.CREATE-VECTOR-STORE", "alice:vectors", "--LLM", "bob:llm")
    requests = len(api.requests)
    expect_error(alice, "LLM.ADD", "alice:vectors", "text to embed", code="NOPERM", match="'bob:llm'")
    assert alice.execute_command("LLM.SIZE", "alice:vectors") == 0
    # Explicit embeddings need no LLM, so the store stays usable.
    assert alice.execute_command("LLM.ADD", "alice:vectors", "--EMBEDDING", "1,2", "x") == 1
    expect_error(alice, "LLM.KNN", "alice:vectors", "query text", code="NOPERM", match="'bob:llm'")
    assert alice.execute_command("LLM.KNN", "alice:vectors", "--EMBEDDING", "1,2") == [[1, b"0"]]
    assert len(api.requests) == requests


def test_reviewing_with_an_llm_the_user_may_not_read_is_noperm(r, api, tenants):
    """A high-score review embeds the question with the app's LLM."""
    alice, _ = tenants
    r.execute_command("LLM.CREATE-APP", "alice:sneaky", "--LLM", "bob:llm")
    rid = r.execute_command("LLM.RECORD", "alice:sneaky", "--QUESTION", "q", "--ANSWER", "a")
    expect_error(alice, "LLM.REVIEW", "alice:sneaky", rid, "--ANSWER", "b", "--SCORE", 95,
                 code="NOPERM")
    record = dict(zip(*[iter(r.execute_command("LLM.RESULT", "alice:sneaky", rid))] * 2))
    assert record.get(b"reviewed_score") in (None, b"")


def test_a_chat_app_needs_write_access_to_its_store(r, api, tenants):
    """A chat app writes summaries into its store; search apps only read theirs."""
    alice, _ = tenants
    r.execute_command("ACL", "SETUSER", "alice", "%R~shared:*")
    r.execute_command("LLM.CREATE-VECTOR-STORE", "shared:docs", "--LLM", "alice:llm")
    r.execute_command("LLM.ADD", "shared:docs", "--EMBEDDING-BLOB", b"\0" * 32, "shared doc")
    r.execute_command("LLM.CREATE-SEARCH", "alice:reader", "--LLM", "alice:llm",
                      "--VECTOR-STORE", "shared:docs")
    r.execute_command("LLM.CREATE-CHAT", "alice:chat", "--LLM", "alice:llm",
                      "--VECTOR-STORE", "shared:docs")
    assert alice.execute_command("LLM.RUN", "alice:reader", "what is shared?")
    expect_error(alice, "LLM.RUN", "alice:chat", "hello", code="NOPERM",
                 match="read and write .*'shared:docs'")


def test_a_user_removed_from_a_pattern_loses_access_at_once(r, api, tenants):
    alice, _ = tenants
    r.execute_command("ACL", "SETUSER", "alice", "%R~shared:*")
    r.execute_command("LLM.CREATE-APP", "alice:via-shared", "--LLM", "shared:llm")
    r.execute_command("LLM.CREATE-LLM", "shared:llm", "--PARAMS", json.dumps({"base_url": api.url}))
    assert alice.execute_command("LLM.RUN", "alice:via-shared", "hi") == b"echo: hi"
    r.execute_command("ACL", "SETUSER", "alice", "resetkeys", "~alice:*")
    expect_error(alice, "LLM.RUN", "alice:via-shared", "hi", code="NOPERM")


# ---- command flags ------------------------------------------------------------

READ_ONLY = {"LLM.GET", "LLM.SIZE", "LLM.KNN", "LLM.RESULT", "LLM.RESULTS", "LLM.STATS",
             "LLM.HISTORY", "LLM.LIST"}



def test_write_commands_are_write_deny_oom_and_read_commands_readonly(r):
    names = {name.decode().upper() for name in r.command_list(module="llm")} - {"LLM.DEBUG"}
    assert READ_ONLY < names and len(names) == 20, names
    for name in names:
        (info,) = r.execute_command("COMMAND", "INFO", name).values()
        check_flags(name, {flag.encode() for flag in info["flags"]})


def check_flags(name: str, flags: set[bytes]) -> None:
    if name in READ_ONLY:
        assert b"readonly" in flags and b"write" not in flags, (name, flags)
    elif name == "LLM.REM":
        # Like DEL and SREM: freeing memory must work when Redis is out of it.
        assert b"write" in flags and b"denyoom" not in flags, flags
    else:
        assert {b"write", b"denyoom"} <= flags, (name, flags)


def test_a_read_only_user_can_search_but_not_write(r, tenants):
    # Redis 7.0 puts module commands in no ACL category but @all: grant them by name.
    r.execute_command("ACL", "SETUSER", "reader", "on", f">{PASSWORD}", "~alice:*",
                      *(f"+{name.lower()}" for name in READ_ONLY))
    port = r.connection_pool.connection_kwargs["port"]
    with redis.Redis(host="127.0.0.1", port=port, username="reader", password=PASSWORD) as reader:
        assert reader.execute_command("LLM.SIZE", "alice:store") == 1
        assert reader.execute_command("LLM.KNN", "alice:store", "--EMBEDDING-BLOB", b"\0" * 32)
        expect_error(reader, "LLM.ADD", "alice:store", "--EMBEDDING", "1,2", "x", code="NOPERM")
        expect_error(reader, "LLM.RUN", "alice:app", "q", code="NOPERM")
        expect_error(reader, "LLM.REVIEW", "alice:app", 1, "--ANSWER", "x", "--SCORE", 1,
                     code="NOPERM")
    r.execute_command("ACL", "DELUSER", "reader")
