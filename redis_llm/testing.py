"""A real redis-server with the LLM module loaded, for tests and benchmarks."""

import os
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
