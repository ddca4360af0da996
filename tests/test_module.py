"""The module frame: loading, module arguments, registration, the GIL.

Each test runs a real redis-server: the shared one, or one of its own when it
needs other start-up arguments.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

import redis_llm
from redis_llm.client_errors import error_text
from redis_llm.testing import RedisServer

COMMANDS = {"llm.result", "llm.results", "llm.review", "llm.record", "llm.stats", "llm.result-set",
            "llm.create-vector-store", "llm.add", "llm.get", "llm.rem", "llm.size", "llm.knn",
            "llm.create-llm", "llm.create-app", "llm.create-search", "llm.create-chat", "llm.run",
            "llm.chat-log", "llm.history", "llm.list"}


def module_list(client) -> list[dict]:
    return client.execute_command("MODULE", "LIST")


class ConfFileServer(RedisServer):
    """A RedisServer that loads the module from a redis.conf `loadmodule` line.

    On redis-server's command line a word starting with -- after the module
    path is read as a directive, so the dashed argument forms need a file.
    """

    def __init__(self, workdir: Path, module_line: str):
        super().__init__(workdir, load_module=False)
        self.module_line = module_line

    def command_line(self) -> list[str]:
        conf = self.dir / "redis.conf"
        conf.write_text(f"loadmodule {redis_llm.module_path()} {self.module_line}\n")
        line = super().command_line()
        return [line[0], str(conf), *line[1:]]


@pytest.fixture
def conf_server(tmp_path):
    servers = []

    def make(module_line: str) -> ConfFileServer:
        srv = ConfFileServer(tmp_path / f"conf{len(servers)}", module_line)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.kill()


def start_fails(srv: RedisServer, problem: str) -> None:
    """srv must refuse to start: redis-server exits non-zero, with `problem` in its log.

    Runs RedisServer's own command line to its exit: RedisServer.start() also
    raises then, but only after its client's connection retries (seconds).
    """
    try:
        done = subprocess.run(srv.command_line(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"redis-server kept running:\n{srv.log}")
    assert done.returncode != 0
    log = srv.log
    assert problem in log, log
    assert re.search(r"Module .*libredis-llm\.so initialization failed", log), log
    assert "server aborting" in log


# ---- loading ------------------------------------------------------------------

def test_module_list_shows_llm_with_its_path_and_args(r):
    (module,) = [m for m in module_list(r) if m[b"name"] == b"llm"]
    assert module[b"ver"] == 1
    assert module[b"path"] == redis_llm.module_path().encode()
    assert module[b"args"] == [b"DEBUG_COMMANDS", b"yes"]


def test_the_module_name_llm_prefixes_its_info_fields_and_config_names(r):
    """Why the module is "llm", not the "LLM" of the first README: Redis writes
    the name, as given, before every INFO field and module config, and
    monitoring reads those. Looking a module up ignores case, so "LLM" finds it."""
    info = r.info("llm")
    assert info and all(name.startswith("llm_") for name in info), info
    assert "llm_pool_size" in info
    assert set(r.config_get("llm.*")) == {"llm.pool-size", "llm.queue-size"}
    assert set(r.info("LLM")) == set(info)
    assert sorted(r.command_list(module="LLM")) == sorted(r.command_list(module="llm"))


def test_cli_module_path_prints_existing_absolute_library_path(tmp_path):
    # The same redis_llm as this process imported: the installed package, or
    # the source tree under `python -m pytest`.
    env = {**os.environ, "PYTHONPATH": str(Path(redis_llm.__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-m", "redis_llm.cli", "module-path"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip()
    assert out.stdout.count("\n") == 1
    assert os.path.isabs(path)
    assert path.endswith("/libredis-llm.so")
    assert os.path.isfile(path)
    assert path == redis_llm.module_path()


def test_cli_main_prints_module_path(capsys):
    from redis_llm import cli
    assert cli.main(["module-path"]) == 0
    assert capsys.readouterr().out == redis_llm.module_path() + "\n"


def test_cli_without_subcommand_is_a_usage_error(capsys):
    from redis_llm import cli
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "usage: redis-llm" in capsys.readouterr().err


def test_module_registers_exactly_the_llm_commands(r):
    listed = {c.decode() for c in r.command_list(module="llm")}
    assert listed == COMMANDS | {"llm.debug"}


def test_plain_module_args_load(make_server):
    srv = make_server(module_args=("POOL_SIZE", "3", "QUEUE_SIZE", "50"))
    client = srv.client()
    (module,) = module_list(client)
    assert module[b"name"] == b"llm"
    assert module[b"args"] == [b"POOL_SIZE", b"3", b"QUEUE_SIZE", b"50"]
    assert client.execute_command("LLM.CREATE-VECTOR-STORE", "s") == 1
    assert client.execute_command("LLM.ADD", "s", "--EMBEDDING", "1,2", "x") == 1


def test_module_arg_names_are_case_insensitive(make_server):
    srv = make_server(module_args=("pool_size", "1024", "Queue_Size", "1000000", "debug_commands", "YES"))
    assert srv.client().execute_command("LLM.DEBUG", "SPIN", "--SECONDS", 0) == b"OK"


def test_dashed_module_args_in_redis_conf_load_and_take_effect(conf_server):
    srv = conf_server("--pool_size 3 --QUEUE_SIZE 50 --debug_commands yes").start()
    client = srv.client()
    (module,) = module_list(client)
    assert module[b"args"] == [b"--pool_size", b"3", b"--QUEUE_SIZE", b"50", b"--debug_commands", b"yes"]
    # --debug_commands yes registered LLM.DEBUG.
    assert client.execute_command("LLM.DEBUG", "SPIN", "--SECONDS", 0) == b"OK"
    assert client.execute_command("LLM.SIZE", "s") == 0


def test_dashed_pool_size_alone_in_redis_conf_loads(conf_server):
    srv = conf_server("--POOL_SIZE 3").start()
    assert module_list(srv.client())[0][b"args"] == [b"--POOL_SIZE", b"3"]


@pytest.mark.parametrize("module_args", [(), ("DEBUG_COMMANDS", "no")])
def test_debug_command_only_registered_with_debug_commands_yes(make_server, module_args):
    client = make_server(module_args=module_args).client()
    with pytest.raises(redis.ResponseError, match="unknown command"):
        client.execute_command("LLM.DEBUG", "SPIN", "--SECONDS", 0)
    listed = {c.decode() for c in client.command_list(module="llm")}
    assert listed == COMMANDS


BAD_ARGS = [
    (("POOL_SIZE", "0"), "module argument POOL_SIZE must be an integer from 1 to 1024, got '0'"),
    (("POOL_SIZE", "x"), "module argument POOL_SIZE must be an integer from 1 to 1024, got 'x'"),
    (("POOL_SIZE", "1025"), "module argument POOL_SIZE must be an integer from 1 to 1024"),
    (("POOL_SIZE", "-3"), "module argument POOL_SIZE must be an integer"),
    (("QUEUE_SIZE", "0"), "module argument QUEUE_SIZE must be an integer from 1 to 1000000, got '0'"),
    (("QUEUE_SIZE", "1000001"), "module argument QUEUE_SIZE must be an integer from 1 to 1000000"),
    (("DEBUG_COMMANDS", "maybe"), "module argument DEBUG_COMMANDS must be yes or no, got 'maybe'"),
    (("THREADS", "4"), "unknown module argument 'THREADS'"),
    (("POOL_SIZE",), "module arguments come in NAME value pairs"),
    (("POOL_SIZE", "3", "QUEUE_SIZE"), "module arguments come in NAME value pairs"),
    (("POOL_SIZE", "3", "pool_size", "4"), "module argument POOL_SIZE given more than once"),
]


@pytest.mark.parametrize("module_args, problem", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_module_args_make_loading_fail(make_server, module_args, problem):
    start_fails(make_server(start=False, module_args=module_args), problem)


def test_start_raises_when_the_module_refuses_its_args(make_server):
    srv = make_server(start=False, module_args=("POOL_SIZE", "0"))
    with pytest.raises(RuntimeError, match="redis-server exited with 1"):
        srv.start()
    assert not srv.alive()
    assert "module argument POOL_SIZE must be an integer from 1 to 1024, got '0'" in srv.log


@pytest.mark.parametrize("module_line, problem", [
    ("--POOL_SIZE 0", "module argument POOL_SIZE must be an integer from 1 to 1024, got '0'"),
    ("--pool_size 3 POOL_SIZE 4", "module argument POOL_SIZE given more than once"),
    ("--QUEUE_SIZE", "module arguments come in NAME value pairs"),
    ("--bogus yes", "unknown module argument '--bogus'"),
])
def test_bad_dashed_module_args_in_redis_conf_make_loading_fail(conf_server, module_line, problem):
    start_fails(conf_server(module_line), problem)


def test_loading_a_second_copy_at_runtime_fails_cleanly(make_server, tmp_path):
    srv = make_server(config={"enable-module-command": "yes"})
    client = srv.client()
    client.execute_command("LLM.CREATE-VECTOR-STORE", "s")
    client.execute_command("LLM.ADD", "s", "--EMBEDDING", "1,2", "x")
    copy = tmp_path / "copy" / "libredis-llm.so"
    copy.parent.mkdir()
    shutil.copyfile(redis_llm.module_path(), copy)
    for path in (redis_llm.module_path(), str(copy)):
        with pytest.raises(redis.ResponseError, match="Error loading the extension"):
            client.execute_command("MODULE", "LOAD", path)
        assert srv.alive()
        assert [m[b"name"] for m in module_list(client)] == [b"llm"]
        assert module_list(client)[0][b"path"] == redis_llm.module_path().encode()
    # The loaded module still works, its data intact.
    assert client.execute_command("LLM.GET", "s", 1) == [b"x", b"1.0,2.0"]
    assert client.execute_command("LLM.ADD", "s", "--EMBEDDING", "3,4", "y") == 2
    assert client.execute_command("LLM.KNN", "s", "--EMBEDDING", "3,4", "--K", 1) == [[2, b"0"]]


def test_unloading_the_module_is_refused_while_it_exports_a_data_type(make_server):
    srv = make_server(config={"enable-module-command": "yes"})
    client = srv.client()
    with pytest.raises(redis.ResponseError, match="data types"):
        client.execute_command("MODULE", "UNLOAD", "llm")
    assert srv.alive()
    assert client.execute_command("LLM.SIZE", "s") == 0


# ---- registration: COMMAND INFO / GETKEYS ---------------------------------------

def command_info(r, name: str) -> dict:
    return r.execute_command("COMMAND", "INFO", name)[name.lower()]


@pytest.mark.parametrize("name, arity, flags, absent", [
    ("LLM.CREATE-VECTOR-STORE", -2, {"write", "denyoom", "module"}, {"readonly"}),
    ("LLM.ADD", -3, {"write", "denyoom", "module"}, {"readonly"}),
    ("LLM.REM", 3, {"write", "module"}, {"readonly"}),
    ("LLM.GET", 3, {"readonly", "module"}, {"write", "denyoom"}),
    ("LLM.SIZE", 2, {"readonly", "fast", "module"}, {"write", "denyoom"}),
    ("LLM.KNN", -2, {"readonly", "module"}, {"write", "denyoom"}),
    ("LLM.DEBUG", -2, {"admin", "module"}, {"write", "readonly"}),
])
def test_command_info_arity_and_flags(r, name, arity, flags, absent):
    info = command_info(r, name)
    assert info["arity"] == arity
    got = set(info["flags"])
    assert flags <= got, got
    assert not absent & got, got


@pytest.mark.parametrize("name, specs", [
    ("LLM.CREATE-VECTOR-STORE", [
        ({b"OW", b"update"}, {b"type": b"index", b"spec": {b"index": 1}}),
        ({b"RO"}, {b"type": b"keyword", b"spec": {b"keyword": b"--LLM", b"startfrom": 2}}),
    ]),
    ("LLM.ADD", [({b"RW", b"update"}, {b"type": b"index", b"spec": {b"index": 1}})]),
    ("LLM.GET", [({b"RO", b"access"}, {b"type": b"index", b"spec": {b"index": 1}})]),
    ("LLM.REM", [({b"RW", b"delete"}, {b"type": b"index", b"spec": {b"index": 1}})]),
    ("LLM.SIZE", [({b"RO"}, {b"type": b"index", b"spec": {b"index": 1}})]),
    ("LLM.KNN", [({b"RO", b"access"}, {b"type": b"index", b"spec": {b"index": 1}})]),
])
def test_command_info_key_specs(r, name, specs):
    got = command_info(r, name)["key_specifications"]
    assert [(set(s[b"flags"]), s[b"begin_search"]) for s in got] == specs
    for spec in got:
        assert spec[b"find_keys"] == {b"type": b"range",
                                      b"spec": {b"lastkey": 0, b"keystep": 1, b"limit": 0}}


def test_llm_debug_declares_no_keys(r):
    assert command_info(r, "LLM.DEBUG")["key_specifications"] == []


@pytest.mark.parametrize("args, keys", [
    (("LLM.CREATE-VECTOR-STORE", "s", "--LLM", "m"), ["s", "m"]),
    (("LLM.CREATE-VECTOR-STORE", "s", "--NX", "--PARAMS", "{}", "--llm", "m"), ["s", "m"]),
    (("LLM.CREATE-VECTOR-STORE", "s"), ["s"]),
    (("LLM.CREATE-VECTOR-STORE", "s", "--TYPE", "hnsw"), ["s"]),
    (("LLM.ADD", "s", "--EMBEDDING", "1,2", "--LLM"), ["s"]),
    (("LLM.GET", "s", "1"), ["s"]),
    (("LLM.REM", "s", "1"), ["s"]),
    (("LLM.SIZE", "s"), ["s"]),
    (("LLM.KNN", "s", "--EMBEDDING", "1,2", "--K", "3"), ["s"]),
])
def test_command_getkeys(r, args, keys):
    assert r.command_getkeys(*args) == keys


@pytest.mark.parametrize("args", [
    ("LLM.CREATE-VECTOR-STORE",),
    ("LLM.ADD", "s"),
    ("LLM.GET", "s"),
    ("LLM.GET", "s", "1", "2"),
    ("LLM.REM", "s"),
    ("LLM.SIZE",),
    ("LLM.SIZE", "s", "t"),
    ("LLM.KNN",),
    ("LLM.DEBUG",),
])
def test_arity_errors_come_from_redis_before_the_module_runs(r, args):
    name = args[0].lower()
    r.config_resetstat()
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command(*args)
    assert error_text(info.value) == f"ERR wrong number of arguments for '{name}' command"
    stats = r.info("commandstats")[f"cmdstat_{name}"]
    assert stats["rejected_calls"] == 1
    assert stats.get("calls", 0) == 0


@pytest.mark.parametrize("args, message", [
    (("LLM.DEBUG", "FOO"), "ERR subcommand must be one of spin, sleep, raise, got 'FOO'"),
    (("LLM.DEBUG", "SPIN", "--THREADS", 0), "ERR --THREADS must be an integer from 1 to 64, got '0'"),
    (("LLM.DEBUG", "SPIN", "--THREADS", 65), "ERR --THREADS must be an integer from 1 to 64, got '65'"),
    (("LLM.DEBUG", "SPIN", "--SECONDS", 3601), "ERR --SECONDS must be a number from 0 to 3600, got '3601'"),
    (("LLM.DEBUG", "SPIN", "--SECONDS", "x"), "ERR --SECONDS must be a number from 0 to 3600, got 'x'"),
    (("LLM.DEBUG", "SLEEP", "--SECONDS", "-1"), "ERR --SECONDS must be a number from 0 to 3600, got '-1'"),
    (("LLM.DEBUG", "SLEEP", "--TIMEOUT", "-5"), "ERR --TIMEOUT must be an integer from 0 to 2147483647, got '-5'"),
    (("LLM.DEBUG", "SPIN", "1", "2"), "ERR syntax error at '1'"),
])
def test_llm_debug_bad_arguments(r, args, message):
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command(*args)
    assert error_text(info.value) == message


# ---- the GIL ------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_main_thread_does_not_hold_the_gil_between_commands(make_server):
    srv = make_server()
    client = srv.client()
    client.execute_command("LLM.CREATE-VECTOR-STORE", "s")
    client.execute_command("LLM.ADD", "s", "--EMBEDDING", "1,2", "x")
    client.set("k", "v")
    client.ping()
    cpu_start, start = cpu_seconds(srv.process.pid), time.monotonic()
    assert client.execute_command("LLM.DEBUG", "SPIN", "--THREADS", 2, "--SECONDS", 3) == b"OK"

    plain, python = [], []
    for i in range(200):
        t = time.perf_counter()
        assert client.set(f"k{i}", i)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert client.get(f"k{i}") == b"%d" % i
        plain.append(time.perf_counter() - t)
        if i % 10 == 0:
            # Commands in Python take the GIL from the spinning threads.
            t = time.perf_counter()
            assert client.execute_command("LLM.SIZE", "s") == 1
            python.append(time.perf_counter() - t)
    time.sleep(max(0.0, start + 1.5 - time.monotonic()))
    cpu, elapsed = cpu_seconds(srv.process.pid) - cpu_start, time.monotonic() - start
    assert elapsed < 2.9, "the measurement must end while the threads still spin"

    assert len(plain) == 400 and len(python) == 20
    assert statistics.median(plain) < 0.005, sorted(plain)[-20:]
    assert max(plain) < 1.0
    assert statistics.median(python) < 0.05, python
    assert max(python) < 1.0
    # The spinning threads ran: with the GIL kept by Redis' main thread
    # between commands they could not, and the process would sit idle.
    assert cpu > 0.4 * elapsed, (cpu, elapsed)


# ---- internal errors ---------------------------------------------------------------

def test_internal_error_is_an_error_reply_and_the_server_stays_up(make_server):
    srv = make_server()
    client = srv.client()
    client.execute_command("LLM.CREATE-VECTOR-STORE", "s")
    client.execute_command("LLM.ADD", "s", "--EMBEDDING", "1,2", "x")
    with pytest.raises(redis.ResponseError) as info:
        client.execute_command("LLM.DEBUG", "RAISE")
    text = error_text(info.value)
    assert re.fullmatch(r"ERR internal error \(\w+\), see the server log", text)
    assert srv.alive()
    log = srv.log
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: LLM.DEBUG RAISE" in log
    assert client.ping()
    assert client.execute_command("LLM.ADD", "s", "--EMBEDDING", "3,4", "y") == 2
    assert client.execute_command("LLM.GET", "s", 2) == [b"y", b"3.0,4.0"]
