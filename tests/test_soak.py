"""Soak: a long mixed workload leaves no leak, no blocked client and no queued job behind.

Several client threads send pipelined batches of LLM.ADD (with
``--EMBEDDING-BLOB``, and as text embedded by the store's LLM), LLM.KNN (blob
and text), LLM.REM and LLM.RUN on a simple and a search app (records on,
bounded by ``--RECORD``) against a real redis-server and the scripted
OpenAI-compatible server; commands with a ``--TIMEOUT`` that expires and
clients that hang up while blocked go to a second scripted server that
answers after 0.2 s, and whole stores and apps are created, used and deleted
(DEL and UNLINK) along the way. Ids are drawn from a bounded range per store
and records are capped, so the data set reaches a steady size during the
warm-up and memory should plateau after it.

By default the test sends issue 5's 100,000 commands (about a minute on 2
cores, after a 10,000-command priming round); ``REDIS_LLM_SOAK=n`` sends n
instead. ``bench/soak.py`` runs the same soak outside pytest and prints the
figures.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from helpers import wait_for

DEFAULT_COMMANDS = 100_000
DIM = 32
STORES = 4
IDS_PER_STORE = 300        # ADD --ID and LLM.REM draw from 0..IDS_PER_STORE-1: store size is bounded
RECORD_LIMIT = 50          # --RECORD of the soak's apps: records stop growing at this count
CLIENTS = 6
BATCH = 25                 # commands per pipeline
POOL_SIZE = 16
WARMUP_SHARE = 0.2
# Commands of the mix run (and their keys deleted) before the baseline is
# taken: RSS after deleting everything settles once the allocators' caches
# and Python's object arenas have grown to the workload, which takes about
# this many commands (after 1,000 it was still 1.5 MiB below that level).
PRIMING_COMMANDS = 10_000
# Requests to the slow model server wait this long, so a --TIMEOUT 1 always
# expires well before the worker finishes: Redis 7.0 notices a deadline at
# the latest at its next cron tick (100 ms at hz 10).
SLOW_MODEL_SECONDS = 0.2
# What "no growth" and "returned" allow (see the test for why).
MAX_GROWTH = 0.10
USED_MEMORY_SLACK = 512 * 1024
RSS_SLACK = 3 * 2**20
CLIENT_SOCKET_TIMEOUT = 20  # no soak command takes a second: a client still waiting lost its reply

LLM_KEY = "soak:llm"
SLOW_LLM = "soak:slow-llm"
APP = "soak:app"
SEARCH = "soak:search"
SLOW_APP = "soak:slow-app"
SLOW_STORE = "soak:slow-store"
ORPHANS = "soak:orphans"   # items added by clients that hung up before the reply
PROMPT = "Answer: {{input}}"
WORDS = ("redis module vector store embedding model answer question record review search "
         "latency memory worker queue client server replica cluster tenant prompt").split()

# The share of each kind of command in the mix. Commands ending in _timeout
# and disconnects go to the slow model; churn is one create/use/delete cycle
# of a whole store and two apps (16 commands).
MIX = {
    "add_blob": 25, "add_text": 9, "add_text_timeout": 0.5,
    "knn_blob": 20, "knn_text": 6, "knn_text_timeout": 0.5,
    "rem": 15,
    "run_app": 10, "run_search": 8, "run_timeout": 0.5,
    "disconnect": 0.5, "churn": 0.15,
    # --TIMEOUT 2 on the fast model: the reply and the deadline race (see
    # test_blocking.py's test of a job ending just after its deadline).
    "run_near_deadline": 0.5,
}


def vector_blob(rng: random.Random) -> bytes:
    """A random little-endian float32 vector of the soak's dimension."""
    return struct.pack(f"<{DIM}f", *(rng.uniform(-1, 1) for _ in range(DIM)))


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + f" {rng.randrange(10**6)}"


def resp(*args) -> bytes:
    """A command in RESP, for clients that send it on a raw socket."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
    return b"".join(parts)


def server_rss(pid: int) -> int:
    """The resident set size of a process, in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def soak_client(port: int, socket_timeout: float) -> redis.Redis:
    """A client that never retries: redis-py would otherwise send a command
    again after a socket timeout, hiding a reply that never came."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=socket_timeout,
                       retry=Retry(NoBackoff(), 0))


@dataclass
class Tally:
    """What a run sent and got back."""

    commands: int = 0
    by_kind: Counter = field(default_factory=Counter)
    expired: int = 0          # --TIMEOUT commands that replied nil
    orphan_adds: int = 0      # LLM.ADD sent by a client that then disconnected
    errors: list = field(default_factory=list)
    seconds: float = 0.0

    def merge(self, other: "Tally") -> None:
        self.commands += other.commands
        self.by_kind.update(other.by_kind)
        self.expired += other.expired
        self.orphan_adds += other.orphan_adds
        self.errors += other.errors


def _is_echo(reply) -> bool:
    return isinstance(reply, bytes) and reply.startswith(b"echo: ")


def _is_knn(reply) -> bool:
    return isinstance(reply, list) and len(reply) <= 5 and all(len(hit) == 2 for hit in reply)


def _is_nil(reply) -> bool:
    return reply is None


TIMEOUT_KINDS = ("add_text_timeout", "knn_text_timeout", "run_timeout")


class Soak:
    """The soak workload against one server (``srv``, a RedisServer), a
    scripted OpenAI-compatible server (``api``) and a second one whose every
    request waits SLOW_MODEL_SECONDS (``slow_api``)."""

    def __init__(self, srv, api, slow_api, seed: int = 5):
        self.srv = srv
        self.api = api
        self.slow_api = slow_api
        self.seed = seed
        self.admin = self.client()
        self._orphan_ids = itertools.count(1)
        self._churn_ids = itertools.count(1)
        self._rounds = itertools.count()
        self.kinds = list(MIX)
        self.weights = [MIX[k] for k in self.kinds]

    def client(self) -> redis.Redis:
        return soak_client(self.srv.port, CLIENT_SOCKET_TIMEOUT)

    # -- keys -------------------------------------------------------------

    def create_keys(self) -> None:
        """The LLMs, stores and apps the mix works on."""
        r = self.admin
        http = {"pool": {"size": POOL_SIZE}}
        for key, api in ((LLM_KEY, self.api), (SLOW_LLM, self.slow_api)):
            r.execute_command("LLM.CREATE-LLM", key, "--PARAMS",
                              json.dumps({"base_url": api.url, "http": http}))
        params = json.dumps({"dim": DIM, "max_elements": IDS_PER_STORE})
        for store, llm in [*((s, LLM_KEY) for s in self.stores()),
                           (SLOW_STORE, SLOW_LLM), (ORPHANS, SLOW_LLM)]:
            r.execute_command("LLM.CREATE-VECTOR-STORE", store, "--LLM", llm, "--PARAMS", params)
        # An empty store answers LLM.KNN at once: the slow one starts with an
        # item, so every text query there waits for the slow model.
        r.execute_command("LLM.ADD", SLOW_STORE, "--ID", 0, "--EMBEDDING-BLOB",
                          vector_blob(random.Random(0)), "seed")
        for app, llm in ((APP, LLM_KEY), (SLOW_APP, SLOW_LLM)):
            r.execute_command("LLM.CREATE-APP", app, "--LLM", llm, "--PROMPT", PROMPT,
                              "--RECORD", RECORD_LIMIT)
        r.execute_command("LLM.CREATE-SEARCH", SEARCH, "--LLM", LLM_KEY, "--VECTOR-STORE",
                          self.stores()[0], "--RECORD", RECORD_LIMIT)

    @staticmethod
    def stores() -> list[str]:
        return [f"soak:store:{i}" for i in range(STORES)]

    def delete_keys(self) -> int:
        """DEL or UNLINK (alternately) every soak key; returns how many there were."""
        names = sorted(self.admin.scan_iter(match="soak:*", count=1000))
        for i, name in enumerate(names):
            (self.admin.delete if i % 2 else self.admin.unlink)(name)
        return len(names)

    # -- the mix ----------------------------------------------------------

    def run(self, commands: int, clients: int = CLIENTS) -> Tally:
        """Send ``commands`` commands of the mix from ``clients`` threads."""
        round_ = next(self._rounds)
        shares = [commands // clients + (i < commands % clients) for i in range(clients)]
        tallies = [Tally() for _ in shares]
        threads = [threading.Thread(target=self._client, args=(share, tally, round_ * 1000 + i),
                                    name=f"soak-client-{i}", daemon=True)
                   for i, (share, tally) in enumerate(zip(shares, tallies))]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total = Tally(seconds=time.monotonic() - start)
        for tally in tallies:
            total.merge(tally)
        return total

    def _client(self, quota: int, tally: Tally, number: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + number)
        client = self.client()
        try:
            while tally.commands < quota:
                pipe = client.pipeline(transaction=False)
                checks = []
                while len(checks) < min(BATCH, quota - tally.commands):
                    kind = rng.choices(self.kinds, self.weights)[0]
                    if kind == "disconnect":
                        self._disconnect(rng, tally)
                    elif kind == "churn":
                        self._churn(client, rng, tally, number)
                    else:
                        args, check = getattr(self, "_" + kind)(rng)
                        pipe.execute_command(*args)
                        checks.append((kind, args, check))
                        tally.by_kind[kind] += 1
                        tally.commands += 1
                if not checks:
                    continue
                for (kind, args, check), reply in zip(checks, pipe.execute(raise_on_error=False)):
                    if isinstance(reply, Exception) or not check(reply):
                        tally.errors.append((args[:2], repr(reply)[:200]))
                    elif kind in TIMEOUT_KINDS and reply is None:
                        tally.expired += 1
        except redis.TimeoutError:
            # A reply that never came ends this client.
            tally.errors.append(("client", f"a reply lost: none within {CLIENT_SOCKET_TIMEOUT} s"))
        except redis.RedisError as exc:
            tally.errors.append(("client", repr(exc)[:200]))
        finally:
            client.close()

    def _store(self, rng):
        return rng.choice(self.stores())

    def _add_blob(self, rng):
        rid = rng.randrange(IDS_PER_STORE)
        return (("LLM.ADD", self._store(rng), "--ID", rid, "--EMBEDDING-BLOB", vector_blob(rng),
                 sentence(rng)), lambda reply, rid=rid: reply == rid)

    def _add_text(self, rng):
        rid = rng.randrange(IDS_PER_STORE)
        return (("LLM.ADD", self._store(rng), "--ID", rid, sentence(rng)),
                lambda reply, rid=rid: reply == rid)

    def _add_text_timeout(self, rng):
        return (("LLM.ADD", SLOW_STORE, "--ID", rng.randrange(IDS_PER_STORE), "--TIMEOUT", 1,
                 sentence(rng)), _is_nil)

    def _knn_blob(self, rng):
        return (("LLM.KNN", self._store(rng), "--K", 5, "--EMBEDDING-BLOB", vector_blob(rng)), _is_knn)

    def _knn_text(self, rng):
        return (("LLM.KNN", self._store(rng), "--K", 5, sentence(rng)), _is_knn)

    def _knn_text_timeout(self, rng):
        return ("LLM.KNN", SLOW_STORE, "--K", 5, "--TIMEOUT", 1, sentence(rng)), _is_nil

    def _rem(self, rng):
        return (("LLM.REM", self._store(rng), rng.randrange(IDS_PER_STORE)),
                lambda reply: reply in (0, 1))

    def _run_app(self, rng):
        return ("LLM.RUN", APP, sentence(rng)), _is_echo

    def _run_search(self, rng):
        return ("LLM.RUN", SEARCH, sentence(rng)), _is_echo

    def _run_timeout(self, rng):
        return ("LLM.RUN", SLOW_APP, "--TIMEOUT", 1, sentence(rng)), _is_nil

    def _run_near_deadline(self, rng):
        return ("LLM.RUN", APP, "--TIMEOUT", 2, sentence(rng)), lambda r: r is None or _is_echo(r)

    def _disconnect(self, rng, tally: Tally) -> None:
        """Send a command that waits for the slow model and hang up while it waits."""
        if rng.random() < 0.5:
            command = ("LLM.ADD", ORPHANS, "--ID", next(self._orphan_ids), sentence(rng))
            tally.orphan_adds += 1
        else:
            command = ("LLM.RUN", SLOW_APP, sentence(rng))
        with socket.create_connection(("127.0.0.1", self.srv.port)) as sock:
            sock.sendall(resp(*command))
        tally.by_kind["disconnect"] += 1
        tally.commands += 1

    def _churn(self, client, rng, tally: Tally, number: int) -> None:
        """Create a store and two apps on it, use them, then DEL or UNLINK them."""
        n = next(self._churn_ids)
        store, app, search = (f"soak:tmp-{kind}:{number}:{n}" for kind in ("store", "app", "search"))
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("LLM.CREATE-VECTOR-STORE", store, "--LLM", LLM_KEY, "--PARAMS",
                             json.dumps({"dim": DIM, "max_elements": 16}))
        for rid in range(8):
            pipe.execute_command("LLM.ADD", store, "--ID", rid, "--EMBEDDING-BLOB",
                                 vector_blob(rng), sentence(rng))
        pipe.execute_command("LLM.ADD", store, "--ID", 8, sentence(rng))
        pipe.execute_command("LLM.CREATE-APP", app, "--LLM", LLM_KEY, "--PROMPT", PROMPT,
                             "--RECORD", 5)
        pipe.execute_command("LLM.CREATE-SEARCH", search, "--LLM", LLM_KEY, "--VECTOR-STORE",
                             store, "--RECORD", 5)
        pipe.execute_command("LLM.RUN", app, sentence(rng))
        pipe.execute_command("LLM.RUN", search, sentence(rng))
        pipe.execute_command("LLM.KNN", store, "--K", 3, sentence(rng))
        pipe.execute_command("UNLINK" if n % 2 else "DEL", store, app, search)
        replies = pipe.execute(raise_on_error=False)
        expected = [1, *range(9), 1, 1, _is_echo, _is_echo, _is_knn, 3]
        for want, reply in zip(expected, replies):
            if isinstance(reply, Exception) or not (want(reply) if callable(want) else reply == want):
                tally.errors.append(("churn", repr(reply)[:200]))
        tally.by_kind["churn"] += len(replies)
        tally.commands += len(replies)

    # -- the server's state -----------------------------------------------

    def rss(self) -> int:
        return server_rss(self.srv.process.pid)

    def memory(self) -> dict:
        return self.admin.info("memory")

    def purge(self) -> None:
        """Hand jemalloc's free dirty pages back to the system. Redis' jemalloc
        is the process' malloc, so this covers the module's malloc'd memory
        (hnswlib's indexes, numpy arrays, CPython's larger blocks) too;
        CPython maps its small-object arenas itself and unmaps them itself."""
        self.admin.execute_command("MEMORY", "PURGE")

    def pending(self) -> dict:
        """Blocked clients, queued jobs and busy workers."""
        llm = self.admin.info("llm")
        return {"blocked_clients": self.admin.info("clients")["blocked_clients"],
                "queue_depth": llm["llm_queue_depth"], "busy_workers": llm["llm_busy_workers"]}

    def settle(self, timeout: float = 30.0) -> dict:
        """Wait until no client is blocked, no job is queued and no worker is busy."""
        return wait_for(lambda: (p := self.pending()) and not any(p.values()) and p,
                        timeout, "no blocked client, no queued job, no busy worker", 0.05)

    def wait_freed(self, timeout: float = 30.0) -> None:
        """Wait for lazy-free (UNLINK) to finish."""
        wait_for(lambda: self.memory()["lazyfree_pending_objects"] == 0, timeout,
                 "lazy-free to finish", 0.05)


@dataclass
class SoakResult:
    """The figures of one soak (memory in bytes)."""

    tally: Tally
    warmup_commands: int
    baseline_used: int       # used_memory / RSS before the soak's keys exist (after priming)
    baseline_rss: int
    warm_rss: int            # RSS after the warm-up, settled and purged
    end_rss: int             # RSS at the end, settled and purged
    peak_rss: int            # highest RSS sampled while the soak ran (not purged)
    full_used: int           # used_memory at the end, every soak key present
    freed_used: int          # used_memory after deleting every soak key
    freed_rss: int
    soak_keys: int
    keys_usage: int          # MEMORY USAGE of the soak's keys at the end, summed
    pending: dict            # blocked clients, queued jobs, busy workers at the end
    records: dict            # records per app, unfinished records, orphan items
    timeouts: int            # commands sent with --TIMEOUT

    @property
    def growth(self) -> float:
        return self.end_rss / self.warm_rss - 1

    def conditions(self) -> dict[str, bool]:
        """Issue 5's conditions, met or not."""
        t = self.tally
        return {
            f"RSS grows less than {MAX_GROWTH:.0%} after warm-up": self.growth < MAX_GROWTH,
            "no blocked client, queued job or busy worker left": not any(self.pending.values()),
            "no lost reply, no error reply": not t.errors,
            f"memory of deleted keys returned (used_memory within {USED_MEMORY_SLACK // 1024} KiB, "
            f"RSS within {RSS_SLACK / 2**20:g} MiB)":
                self.freed_used - self.baseline_used < USED_MEMORY_SLACK
                and self.freed_rss - self.baseline_rss < RSS_SLACK,
        }

    def lines(self) -> list[str]:
        """The figures as Markdown table rows (measure | value)."""
        mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
        t = self.tally
        return [
            f"| commands | {t.commands} in {t.seconds:.1f} s ({t.commands / t.seconds:.0f}/s), "
            f"{len(self.tally.errors)} errors |",
            f"| mix | {', '.join(f'{k} {v}' for k, v in sorted(t.by_kind.items()))} |",
            f"| --TIMEOUT commands that replied nil | {t.expired} of {self.timeouts} |",
            f"| RSS after warm-up ({self.warmup_commands} commands) | {mib(self.warm_rss)} |",
            f"| RSS at the end | {mib(self.end_rss)} ({self.growth:+.1%}) |",
            f"| RSS peak while running (not purged) | {mib(self.peak_rss)} |",
            f"| blocked clients, queued jobs, busy workers at the end | "
            f"{self.pending['blocked_clients']}, {self.pending['queue_depth']}, "
            f"{self.pending['busy_workers']} |",
            f"| records kept (limit {RECORD_LIMIT}), unfinished, orphan items | "
            f"{', '.join(f'{k} {v}' for k, v in self.records.items())} "
            f"(orphan LLM.ADDs sent: {t.orphan_adds}) |",
            f"| MEMORY USAGE of the soak's {self.soak_keys} keys at the end | {mib(self.keys_usage)} |",
            f"| used_memory before the soak / with its keys / after deleting them | "
            f"{mib(self.baseline_used)} / {mib(self.full_used)} / {mib(self.freed_used)} "
            f"({self.freed_used - self.baseline_used:+d} bytes) |",
            f"| RSS before the soak / after deleting its keys | {mib(self.baseline_rss)} / "
            f"{mib(self.freed_rss)} ({(self.freed_rss - self.baseline_rss) / 2**20:+.1f} MiB) |",
        ]


def slow_model_server(requests: int):
    """A scripted model server whose next ``requests`` requests each wait SLOW_MODEL_SECONDS."""
    from openai_server import OpenAIServer
    slow = OpenAIServer(dim=DIM)
    slow.delay(SLOW_MODEL_SECONDS, times=requests)
    return slow


def soak(srv, api, slow_api, commands: int, seed: int = 5) -> SoakResult:
    """Run the whole soak against ``srv`` and measure it.

    A priming round of PRIMING_COMMANDS of the same mix, its keys then
    deleted, loads what is loaded once (Python modules, templates, worker
    threads, HTTP connections) and grows the allocators' caches to the
    workload, so the baseline is a server that has done this work before.
    Memory is measured settled (no job left) and after MEMORY PURGE, so RSS
    counts what the server keeps, not what jemalloc has yet to hand back.
    """
    s = Soak(srv, api, slow_api, seed)
    s.create_keys()
    s.run(PRIMING_COMMANDS)
    s.settle()
    s.delete_keys()
    s.wait_freed()
    s.purge()
    baseline_used, baseline_rss = s.memory()["used_memory"], s.rss()

    s.create_keys()
    peak, stop_sampling = [0], threading.Event()

    def sample():
        while not stop_sampling.wait(0.2):
            peak[0] = max(peak[0], s.rss())

    sampler = threading.Thread(target=sample, name="soak-rss", daemon=True)
    sampler.start()
    warmup_commands = int(commands * WARMUP_SHARE)
    tally = s.run(warmup_commands)
    s.settle()
    s.purge()
    warm_rss = s.rss()
    rest = s.run(commands - tally.commands)
    tally.merge(rest)
    tally.seconds += rest.seconds
    pending = s.settle()
    s.purge()
    end_rss = s.rss()
    stop_sampling.set()
    sampler.join()

    records = {app: s.admin.execute_command("LLM.STATS", app)[1] for app in (APP, SEARCH, SLOW_APP)}
    records["unfinished"] = sum(len(s.admin.execute_command("LLM.RESULTS", app, "--STATE", state))
                                for app in (APP, SEARCH, SLOW_APP) for state in ("pending", "running"))
    records["orphan items"] = s.admin.execute_command("LLM.SIZE", ORPHANS)
    full_used = s.memory()["used_memory"]
    keys_usage = sum(s.admin.memory_usage(key) or 0 for key in s.admin.scan_iter(match="soak:*"))
    soak_keys = s.delete_keys()
    s.wait_freed()
    s.purge()
    return SoakResult(tally=tally, warmup_commands=warmup_commands, baseline_used=baseline_used,
                      baseline_rss=baseline_rss, warm_rss=warm_rss, end_rss=end_rss,
                      peak_rss=max(peak[0], end_rss), full_used=full_used,
                      freed_used=s.memory()["used_memory"], freed_rss=s.rss(),
                      soak_keys=soak_keys, keys_usage=keys_usage, pending=pending, records=records,
                      timeouts=sum(tally.by_kind[k] for k in TIMEOUT_KINDS))


def start_soak_server(make) -> object:
    """A server for the soak: ``make`` is make_server or a RedisServer factory."""
    return make("soak", module_args=("POOL_SIZE", str(POOL_SIZE), "DEBUG_COMMANDS", "yes"))


# ---- the tests ----------------------------------------------------------------

def test_a_long_mixed_workload_leaks_nothing_and_leaves_nothing_behind(make_server):
    from openai_server import OpenAIServer

    commands = int(os.environ.get("REDIS_LLM_SOAK") or DEFAULT_COMMANDS)
    srv = start_soak_server(make_server)
    with OpenAIServer(dim=DIM) as api, slow_model_server(commands + PRIMING_COMMANDS) as slow_api:
        result = soak(srv, api, slow_api, commands)
    print("\n" + "\n".join(result.lines()))
    t = result.tally
    assert srv.alive(), srv.log
    assert t.errors == [], t.errors[:10]
    assert t.commands == commands
    # The mix did what it says: every --TIMEOUT expired, clients hung up
    # while blocked, whole keys came and went.
    assert t.expired == result.timeouts > 0
    assert t.by_kind["disconnect"] > 0 and t.by_kind["churn"] > 0

    # Nothing left behind: no client blocked, no job queued or running
    # (settle() waited for all three to reach 0), no record unfinished, and
    # every write of a client that hung up landed anyway.
    assert result.pending == {"blocked_clients": 0, "queue_depth": 0, "busy_workers": 0}
    assert result.records["unfinished"] == 0
    assert result.records["orphan items"] == t.orphan_adds > 0
    # Records stop at the apps' --RECORD bound, which is what lets memory plateau.
    assert result.records[APP] == result.records[SEARCH] == RECORD_LIMIT
    assert result.records[SLOW_APP] <= RECORD_LIMIT

    # No growth after the warm-up (issue 5: less than 10%). Both figures are
    # taken settled and after MEMORY PURGE; 10% of ~75 MiB over 80,000
    # commands catches a leak of about 100 bytes per command.
    assert result.growth < MAX_GROWTH, result.lines()

    # The memory of deleted keys is returned. The module's values (HNSW
    # indexes, items, records, Python objects) live in the module's heap,
    # which Redis' used_memory does not count: used_memory only covers what
    # Redis allocates itself (key names, dict entries, the module values'
    # wrappers, RedisModuleStrings, client buffers, the SLOWLOG). It must come
    # back within 512 KiB, about the SLOWLOG's 128 entries and the client
    # buffers, which do not grow with the soak: a Redis object leaked per
    # command would be megabytes. RSS shows the module's heap: the keys held
    # well over 8 MiB of it (each HNSW index allocates 2.6 MB of locks), and
    # all but 3 MiB must be handed back (0.6 to 1.4 MiB stayed in our runs).
    # The slack is what allocators keep by design after a purge: jemalloc's
    # per-thread caches of the 16 workers (MEMORY PURGE flushes only the main
    # thread's) and CPython's partly used object arenas, which CPython keeps
    # for reuse (the baseline is taken after a priming round, so they are
    # already there).
    assert result.end_rss - result.baseline_rss > 8 * 2**20, result.lines()
    assert result.freed_used - result.baseline_used < USED_MEMORY_SLACK, result.lines()
    assert result.freed_rss - result.baseline_rss < RSS_SLACK, result.lines()
