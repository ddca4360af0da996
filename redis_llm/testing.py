"""A real redis-server with the LLM module loaded, for tests and benchmarks."""

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import redis_llm

REDIS_SERVER = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process with the LLM module loaded.

    ``config`` holds extra redis.conf directives ({"appendonly": "yes"});
    ``module_args`` the arguments after the module path. The data directory
    survives ``restart()``, so persistence can be checked across restarts.
    """

    def __init__(self, workdir: Path, config: dict | None = None,
                 module_args: tuple[str, ...] = ("DEBUG_COMMANDS", "yes"), load_module: bool = True):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = {"save": "", "appendonly": "no", **(config or {})}
        self.module_args = module_args
        self.load_module = load_module
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def command_line(self) -> list[str]:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--logfile", "redis.log", "--loglevel", "verbose",
                "--enable-debug-command", "yes", "--daemonize", "no"]
        for name, value in self.config.items():
            args += [f"--{name}", value]
        if self.load_module:
            args += ["--loadmodule", redis_llm.module_path(), *self.module_args]
        return args

    def start(self, timeout: float = 30.0) -> "RedisServer":
        self.process = subprocess.Popen(self.command_line(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log}")
            try:
                if self.client().ping():
                    return self
            except redis.BusyLoadingError:
                pass
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout}s:\n{self.log}")

    def stop(self, save: bool = False) -> None:
        """Stop the server: SHUTDOWN (saving if asked), else SIGTERM."""
        if not self.process or self.process.poll() is not None:
            return
        try:
            self.client().shutdown(save=save, nosave=not save)
        except (redis.ConnectionError, redis.ResponseError):
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, save: bool = False) -> "RedisServer":
        self.stop(save=save)
        return self.start()

    def client(self, **kwargs) -> redis.Redis:
        # No retries: a refused connection means the server is down, and
        # redis-py's default backoff would spend seconds finding that out.
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=60, **kwargs)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


# The cluster bus of a node listens on its port + 10000. Ports are drawn below
# the kernel's ephemeral range (32768 and up on Linux) minus that offset, so
# that neither the port nor its bus port is taken by the outgoing connections
# of other processes, nor by free_port(), which draws from that range.
CLUSTER_BUS_OFFSET = 10000
_CLUSTER_PORTS = range(12000, 22000)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int] = frozenset()) -> int:
    """A free port on 127.0.0.1 whose cluster bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = random.choice(_CLUSTER_PORTS)
        if port not in taken and _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair (port, port + 10000) on 127.0.0.1")


class LocalCluster:
    """A Redis Cluster on 127.0.0.1: ``masters`` masters with ``replicas`` replicas
    each, every node a :class:`RedisServer` with the LLM module loaded.

    ``start()`` starts the nodes with ``cluster-enabled yes``, forms the cluster
    with ``redis-cli --cluster create`` and returns once every node sees
    ``cluster_state:ok`` and every replica is in sync. A small
    ``cluster-node-timeout`` (``node_timeout_ms``) makes a killed master's
    replica take over within a few seconds. ``config`` and ``module_args`` are
    passed to every node, as for RedisServer.
    """

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000, config: dict | None = None,
                 module_args: tuple[str, ...] = ("DEBUG_COMMANDS", "yes")):
        self.dir = workdir
        self.masters_wanted = masters
        self.replicas_per_master = replicas
        self.node_timeout_ms = node_timeout_ms
        self.config = config or {}
        self.module_args = module_args
        #: Every node started, in start order (killed ones included).
        self.nodes: list[RedisServer] = []
        #: Per port of a node killed by kill(), the replicas it had then.
        self.killed: dict[int, list[RedisServer]] = {}

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 60.0) -> "LocalCluster":
        """Start the nodes, form the cluster and wait until it serves every slot."""
        try:
            for index in range(self.masters_wanted * (1 + self.replicas_per_master)):
                self.nodes.append(self._start_node(index))
            self._create()
            self.wait_ok(timeout)
            self.wait_replicas_synced(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, index: int, attempts: int = 5) -> RedisServer:
        taken = {node.port for node in self.nodes}
        for attempt in range(attempts):
            node = RedisServer(self.dir / f"node{index}", module_args=self.module_args, config={
                "cluster-enabled": "yes",
                "cluster-config-file": f"nodes-{index}.conf",
                "cluster-node-timeout": str(self.node_timeout_ms),
                # A replica's first full sync starts at once, not after 5 s
                # of waiting for more replicas to share the transfer.
                "repl-diskless-sync-delay": "0",
                **self.config})
            # RedisServer drew any free port; a node needs its bus port free too.
            node.port = free_cluster_port(taken)
            try:
                return node.start()
            except RuntimeError:
                # Another process may have bound the port since it was drawn.
                node.kill()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _create(self) -> None:
        redis_cli = os.environ.get("REDIS_CLI") or shutil.which("redis-cli") or "/usr/bin/redis-cli"
        command = [redis_cli, "--cluster", "create",
                   *(f"127.0.0.1:{node.port}" for node in self.nodes),
                   "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}")

    def stop(self) -> None:
        """Stop every node still running (without saving)."""
        for node in self.nodes:
            node.stop()

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node: no shutdown, no save, as a crash."""
        self.killed[node.port] = self.replicas_of(node)
        node.kill()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        for node in self.nodes:
            node.kill()

    # -- the nodes ---------------------------------------------------------

    def alive(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [node for node in self.nodes if node.alive()]

    def node_at(self, port: int) -> RedisServer:
        """The node listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def topology(self) -> dict[int, dict]:
        """CLUSTER NODES as one live node sees it: per port, ``id``, ``role``
        (``master``/``replica``), ``master_port`` (a replica's master), ``slots``
        (a list of (first, last) ranges) and ``failed``."""
        lines = _cluster_command(self.alive()[0], "NODES")
        rows = [line.split() for line in lines.splitlines() if line.strip()]
        port_of = {row[0]: int(row[1].split("@")[0].rsplit(":", 1)[1]) for row in rows}
        out = {}
        for row in rows:
            flags = row[2].split(",")
            slots = []
            for part in row[8:]:
                if part.startswith("["):
                    continue  # a slot being migrated
                first, _, last = part.partition("-")
                slots.append((int(first), int(last or first)))
            out[port_of[row[0]]] = {
                "id": row[0],
                "role": "master" if "master" in flags else "replica",
                "master_port": port_of.get(row[3]),
                "slots": slots,
                "failed": "fail" in flags or "fail?" in flags,
            }
        return out

    def masters(self) -> list[RedisServer]:
        """The live masters that serve slots."""
        return [self.node_at(port) for port, info in self.topology().items()
                if info["role"] == "master" and info["slots"] and not info["failed"]
                and self.node_at(port).alive()]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The live replicas of ``master``."""
        return [self.node_at(port) for port, info in self.topology().items()
                if info["role"] == "replica" and info["master_port"] == master.port
                and self.node_at(port).alive()]

    def master_of_slot(self, slot: int) -> RedisServer:
        """The live master that serves ``slot``."""
        for port, info in self.topology().items():
            if info["role"] == "master" and not info["failed"] and any(
                    first <= slot <= last for first, last in info["slots"]):
                return self.node_at(port)
        raise KeyError(f"no live master serves slot {slot}")

    def master_for(self, key: bytes | str) -> RedisServer:
        """The live master that serves ``key``'s hash slot."""
        return self.master_of_slot(key_slot(key))

    def client(self, **kwargs) -> "redis.cluster.RedisCluster":
        """A redis-py RedisCluster client, started from every live node."""
        from redis.cluster import ClusterNode, RedisCluster
        kwargs.setdefault("socket_timeout", 60)
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", node.port) for node in self.alive()],
                            **kwargs)

    # -- waiting -------------------------------------------------------------

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node says cluster_state:ok, knows every live node
        and sees every slot served by a live master that it agrees on."""
        _wait_for_no_problem(self._not_ok, timeout, "the cluster is not ok")

    def _not_ok(self) -> str | None:
        alive = self.alive()
        alive_ports = {node.port for node in alive}
        views = set()
        for node in alive:
            try:
                info = _cluster_command(node, "INFO")
                state = dict(line.split(":", 1) for line in info.splitlines() if ":" in line) \
                    .get("cluster_state", "").strip()
                if state != "ok":
                    return f"node {node.port}: cluster_state {state}"
                slots = _cluster_command(node, "SLOTS")
            except redis.RedisError as exc:
                return f"node {node.port}: {exc}"
            owners = []
            for first, last, master, *_ in slots:
                port = int(master[1])
                if port not in alive_ports:
                    return f"node {node.port} has slots {first}-{last} on a dead node {port}"
                owners.append((int(first), int(last), port))
            views.add(tuple(sorted(owners)))
        if len(views) != 1:
            return "the nodes do not agree on who serves which slots yet"
        return None

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Wait until every live replica's link is up and it has caught up with
        everything its master wrote."""
        _wait_for_no_problem(self._replica_lag, timeout, "replicas not in sync")

    def _replica_lag(self) -> str | None:
        for master in self.masters():
            replicas = self.replicas_of(master)
            # A promoted replica serves alone: only a whole cluster has every replica.
            if len(replicas) < self.replicas_per_master and not self.killed:
                return f"master {master.port} has {len(replicas)} replicas"
            offset = _info(master, "replication")["master_repl_offset"]
            for replica in replicas:
                info = _info(replica, "replication")
                if info.get("master_link_status") != "up" or info.get("master_sync_in_progress"):
                    return f"replica {replica.port}: link {info.get('master_link_status')}"
                if info.get("slave_repl_offset") != offset:
                    return f"replica {replica.port} at offset {info.get('slave_repl_offset')}, " \
                           f"its master at {offset}"
        return None

    def wait_failover(self, dead: RedisServer, timeout: float = 30.0) -> RedisServer:
        """After ``dead`` (a master) was killed: wait until one of its replicas is
        a master serving its slots and the cluster is ok again; return it."""
        deadline = time.monotonic() + timeout
        replicas = [node for node in self.killed.get(dead.port, []) if node.alive()]
        if not replicas:
            raise RuntimeError(f"node {dead.port} was not killed by kill() or had no live replica")
        while True:
            promoted = [node for node in replicas if _info(node, "replication").get("role") == "master"]
            if promoted and self._not_ok() is None:
                return promoted[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica of {dead.port} took over within {timeout}s: "
                                   f"{self._not_ok()}")
            time.sleep(0.05)


def _cluster_command(node: RedisServer, subcommand: str):
    """CLUSTER <subcommand> as the node replies it: text decoded, not parsed by
    redis-py (whose parsed forms differ between its versions)."""
    with node.client() as client:
        client.response_callbacks.pop(f"CLUSTER {subcommand}", None)
        reply = client.execute_command("CLUSTER", subcommand)
    return reply.decode() if isinstance(reply, bytes) else reply


def _info(node: RedisServer, section: str) -> dict:
    with node.client() as client:
        return client.info(section)


def key_slot(key: bytes | str) -> int:
    """The Redis Cluster hash slot of ``key`` (its hash tag, if any, decides)."""
    from redis.crc import key_slot as slot
    return slot(key.encode() if isinstance(key, str) else key)


def _wait_for_no_problem(problem, timeout: float, what: str) -> None:
    """Call ``problem()`` until it returns None (all is well) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while (found := problem()) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} after {timeout}s: {found}")
        time.sleep(0.05)
