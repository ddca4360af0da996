"""Operability: the llm section of INFO, module configs, COMMAND DOCS, and
SLOWLOG / LATENCY for commands whose client waits for a worker."""

import json
import subprocess

import pytest
import redis

from helpers import expect_error, in_thread, wait_for

SLEEP = ("LLM.DEBUG", "SLEEP")


def llm_info(client) -> dict:
    return client.info("llm")


# ---- INFO ---------------------------------------------------------------------

def test_info_llm_is_a_section_of_its_own(server, r):
    out = subprocess.run(["redis-cli", "-p", str(server.port), "INFO", "llm"],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "# llm"
    fields = dict(line.split(":", 1) for line in out.splitlines()[1:] if line.strip())
    for name in ("pool_size", "queue_size", "queue_depth", "busy_workers", "records_created",
                 "records_reviewed", "records_served"):
        assert f"llm_{name}" in fields, name
    for kind in ("openai", "azure_openai", "llamacpp"):
        for counter in ("requests", "errors", "retries", "prompt_tokens", "completion_tokens"):
            assert f"llm_{kind}_{counter}" in fields
    # INFO everything carries it too; the default INFO keeps to Redis' own sections.
    assert "llm_pool_size" in r.info("everything")


def test_info_counts_requests_tokens_errors_and_retries_per_provider_type(make_server, api):
    srv = make_server()
    client = srv.client()
    client.execute_command("LLM.CREATE-LLM", "llm", "--PARAMS", json.dumps({"base_url": api.url}))
    client.execute_command("LLM.CREATE-APP", "app", "--LLM", "llm", "--PROMPT", "{{input}}")
    api.script("one two three")
    client.execute_command("LLM.RUN", "app", "a b")  # 2 prompt tokens, 3 completion tokens
    info = llm_info(client)
    assert (info["llm_openai_requests"], info["llm_openai_prompt_tokens"],
            info["llm_openai_completion_tokens"]) == (1, 2, 3)
    assert info["llm_openai_errors"] == info["llm_openai_retries"] == 0

    api.fail(503, times=2)  # two retries, then an answer
    client.execute_command("LLM.RUN", "app", "again")
    api.fail(400)  # not retried: an error
    expect_error(client, "LLM.RUN", "app", "refused", match="400")
    info = llm_info(client)
    assert info["llm_openai_requests"] == 3
    assert info["llm_openai_retries"] == 2
    assert info["llm_openai_errors"] == 1
    assert info["llm_azure_openai_requests"] == info["llm_llamacpp_requests"] == 0

    # Embeddings are requests too.
    client.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", "llm")
    client.execute_command("LLM.ADD", "docs", "some text")
    assert llm_info(client)["llm_openai_requests"] == 4


def test_info_counts_records_reviews_and_served_answers(make_server, api):
    srv = make_server()
    client = srv.client()
    client.execute_command("LLM.CREATE-LLM", "llm", "--PARAMS", json.dumps({"base_url": api.url}))
    client.execute_command("LLM.CREATE-APP", "app", "--LLM", "llm", "--PROMPT", "{{input}}")
    client.execute_command("LLM.RUN", "app", "what is redis?")
    client.execute_command("LLM.RECORD", "app", "--QUESTION", "q", "--ANSWER", "a")
    client.execute_command("LLM.REVIEW", "app", 1, "--ANSWER", "a database", "--SCORE", 99)
    requests = len(api.chat_requests())
    assert client.execute_command("LLM.RUN", "app", "what is redis?") == b"a database"
    assert len(api.chat_requests()) == requests  # served from the review
    info = llm_info(client)
    assert (info["llm_records_created"], info["llm_records_reviewed"],
            info["llm_records_served"]) == (3, 1, 1)


def test_info_shows_busy_workers_and_the_queue(make_server):
    srv = make_server(module_args=("POOL_SIZE", "1", "DEBUG_COMMANDS", "yes"))
    client = srv.client()
    jobs = [in_thread(lambda: srv.client().execute_command(*SLEEP, "--SECONDS", "0.6"))
            for _ in range(3)]
    info = wait_for(lambda: (i := llm_info(client))["llm_queue_depth"] == 2 and i,
                      5, "two jobs queued behind the busy worker")
    assert info["llm_busy_workers"] == 1 and info["llm_pool_size"] == 1
    for job in jobs:
        job["thread"].join(10)
        assert job["value"] == b"OK"
    info = llm_info(client)
    assert info["llm_queue_depth"] == info["llm_busy_workers"] == 0


# ---- CONFIG -------------------------------------------------------------------

def test_config_get_shows_the_module_arguments(make_server):
    srv = make_server(module_args=("POOL_SIZE", "3", "QUEUE_SIZE", "7", "DEBUG_COMMANDS", "yes"))
    assert srv.client().config_get("llm.*") == {"llm.pool-size": "3", "llm.queue-size": "7"}


def test_redis_conf_configs_override_module_arguments(make_server):
    srv = make_server(config={"llm.pool-size": "5"},
                      module_args=("POOL_SIZE", "3", "DEBUG_COMMANDS", "yes"))
    client = srv.client()
    assert client.config_get("llm.pool-size") == {"llm.pool-size": "5"}
    assert llm_info(client)["llm_pool_size"] == 5


def test_config_set_pool_size_changes_how_many_jobs_run_side_by_side(make_server):
    srv = make_server(module_args=("POOL_SIZE", "1", "DEBUG_COMMANDS", "yes"))
    client = srv.client()
    assert client.config_set("llm.pool-size", 3)
    jobs = [in_thread(lambda: srv.client().execute_command(*SLEEP, "--SECONDS", "0.8"))
            for _ in range(3)]
    wait_for(lambda: llm_info(client)["llm_busy_workers"] == 3, 5, "three busy workers")
    for job in jobs:
        job["thread"].join(10)
    # Shrinking: idle surplus workers leave, later jobs run one at a time.
    assert client.config_set("llm.pool-size", 1)
    jobs = [in_thread(lambda: srv.client().execute_command(*SLEEP, "--SECONDS", "0.5"))
            for _ in range(2)]
    info = wait_for(lambda: (i := llm_info(client))["llm_queue_depth"] == 1 and i,
                      5, "a job waiting for the one worker")
    assert info["llm_busy_workers"] == 1
    for job in jobs:
        job["thread"].join(10)
        assert job["value"] == b"OK"


def test_config_set_queue_size_refuses_jobs_beyond_it(make_server):
    srv = make_server(module_args=("POOL_SIZE", "1", "DEBUG_COMMANDS", "yes"))
    client = srv.client()
    assert client.config_set("llm.queue-size", 1)
    running = in_thread(lambda: srv.client().execute_command(*SLEEP, "--SECONDS", "0.6"))
    wait_for(lambda: llm_info(client)["llm_busy_workers"] == 1, 5, "the worker busy")
    queued = in_thread(lambda: srv.client().execute_command(*SLEEP, "--SECONDS", "0"))
    wait_for(lambda: llm_info(client)["llm_queue_depth"] == 1, 5, "one job queued")
    expect_error(client, *SLEEP, "--SECONDS", "0", match="queue is full")
    for job in (running, queued):
        job["thread"].join(10)
        assert job["value"] == b"OK"


@pytest.mark.parametrize("name,value", [("llm.pool-size", "0"), ("llm.pool-size", "1025"),
                                        ("llm.queue-size", "0"), ("llm.pool-size", "many"),
                                        ("llm.queue-size", "-1")])
def test_config_set_out_of_range_is_an_error_and_changes_nothing(r, name, value):
    before = r.config_get("llm.*")
    with pytest.raises(redis.ResponseError, match="ERR|argument"):
        r.config_set(name, value)
    assert r.config_get("llm.*") == before


# ---- COMMAND DOCS -------------------------------------------------------------

def command_docs(server, name: str) -> dict:
    """COMMAND DOCS of one command as a nested dict, read over RESP3 with a
    bare connection (redis-py's COMMAND reply parser expects COMMAND INFO)."""
    connection = redis.Connection(port=server.port, protocol=3)
    try:
        connection.send_command("COMMAND", "DOCS", name)
        return _decode(connection.read_response())[name]
    finally:
        connection.disconnect()


def _decode(value):
    if isinstance(value, dict):
        return {_decode(k): _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value.decode() if isinstance(value, bytes) else value


def test_command_docs_has_a_summary_since_and_arguments_for_every_command(server, r):
    names = sorted(name.decode() for name in r.command_list(module="llm"))
    assert len(names) == 21  # 20 commands and LLM.DEBUG on this test server
    for name in names:
        docs = command_docs(server, name)
        assert docs["summary"] and docs["since"] == "0.1.0" and docs["module"] == "llm", name
        if name != "llm.list":  # the one command without positional arguments
            assert docs["arguments"][0]["name"] in ("key", "subcommand"), name


def test_command_docs_arguments_follow_the_syntax(server):
    docs = command_docs(server, "llm.create-search")
    args = {arg["name"]: arg for arg in docs["arguments"]}
    assert args["key"]["type"] == "key" and args["key"]["key_spec_index"] == 0
    # Keys given as option values are key arguments, tied to their key-specs.
    assert (args["llm"]["type"], args["llm"]["token"], args["llm"]["key_spec_index"]) == \
        ("key", "--LLM", 1)
    assert (args["vector-store"]["type"], args["vector-store"]["key_spec_index"]) == ("key", 2)
    assert "optional" not in args["llm"].get("flags", [])  # required
    assert args["k"]["type"] == "integer" and args["k"]["flags"] == ["optional"]
    # Options that exclude each other are one "oneof" argument.
    nx_xx = args["nx-or-xx"]
    assert nx_xx["type"] == "oneof"
    assert [a["token"] for a in nx_xx["arguments"]] == ["--NX", "--XX"]
    run = {arg["name"]: arg for arg in command_docs(server, "llm.run")["arguments"]}
    assert run["input"]["flags"] == ["optional"] and run["verbose"]["type"] == "pure-token"
    names = [arg["name"] for arg in command_docs(server, "llm.run")["arguments"]]
    assert names[-2:] == ["end-of-options", "input"] and run["end-of-options"]["token"] == "--"
    review = {arg["name"]: arg for arg in command_docs(server, "llm.review")["arguments"]}
    assert review["score"]["type"] == "double" and review["id"]["type"] == "integer"
    # --ALSO and --NEVER may be given several times, each with its token.
    for name in ("also", "never"):
        assert review[name]["token"] == f"--{name.upper()}"
        assert sorted(review[name]["flags"]) == ["multiple_token", "optional"], review[name]
    assert "multiple_token" not in review["notes"]["flags"]
    add = {arg["name"]: arg for arg in command_docs(server, "llm.add")["arguments"]}
    assert add["embedding-model"]["token"] == "--EMBEDDING-MODEL"


# ---- SLOWLOG and LATENCY --------------------------------------------------------

def test_slowlog_shows_how_long_a_blocked_client_waited(r):
    r.config_set("slowlog-log-slower-than", 100_000)  # 100 ms
    try:
        r.slowlog_reset()
        r.execute_command(*SLEEP, "--SECONDS", "0.3")
        r.execute_command("LLM.CREATE-VECTOR-STORE", "s")  # fast: not logged
        entries = r.slowlog_get()
        assert [entry["command"].split()[:2] for entry in entries] == [[b"LLM.DEBUG", b"SLEEP"]]
        assert entries[0]["duration"] >= 290_000
    finally:
        r.config_set("slowlog-log-slower-than", 10_000)


def test_latency_monitor_sees_no_event_loop_stall_from_a_blocked_command(r):
    """LATENCY measures how long Redis' event loop stalls: a client waiting
    for a worker stalls nothing, so no 300 ms 'command' event appears, while
    INFO latencystats records what the client waited."""
    r.config_set("latency-monitor-threshold", 100)
    try:
        r.execute_command("LATENCY", "RESET")
        r.config_resetstat()
        r.execute_command(*SLEEP, "--SECONDS", "0.3")
        events = {event[0]: event for event in r.execute_command("LATENCY", "LATEST")}
        assert b"command" not in events, events
        stats = r.info("latencystats")["latency_percentiles_usec_llm.debug"]
        assert stats["p50"] >= 290_000
    finally:
        r.config_set("latency-monitor-threshold", 0)
