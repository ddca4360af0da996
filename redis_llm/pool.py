"""The worker pool: slow work runs here while its client waits, blocked.

A command that needs slow work (an HTTP call, a local model, an embedding)
blocks its client and submits a job. A worker runs the job with the GIL free
for I/O and native code; the job reads and writes keys only through
``locked(fn)``, which runs ``fn(ctx)`` under Redis' lock, and returns the
reply. Redis itself never waits for a job, and a job's writes land (and are
replicated) even when its client timed out or disconnected.
"""

import functools
import queue
import threading
from typing import Callable

from redis_llm import keys
from redis_llm.errors import LLMError, error_reply

# Context flags of the module API: where a client cannot be blocked.
_CTX_LUA, _CTX_MULTI, _CTX_DENY_BLOCKING = 1 << 0, 1 << 1, 1 << 21

Locked = Callable[[Callable[[int], object]], object]
Job = Callable[[Locked], object]


class WorkerPool:
    """``size`` threads taking jobs from a queue of at most ``queue_size``."""

    def __init__(self, size: int, queue_size: int):
        self.size = size
        self._jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()  # guards _threads and busy
        self.busy = 0  # workers running a job now
        self._started = 0  # names the threads

    @property
    def queue_size(self) -> int:
        return self._jobs.maxsize

    @queue_size.setter
    def queue_size(self, size: int) -> None:
        # Jobs already queued stay; new ones are refused until below the size.
        with self._jobs.mutex:
            self._jobs.maxsize = size

    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return self._jobs.qsize()

    def resize(self, size: int) -> None:
        """Run at most ``size`` workers from now on. More start on the next
        job; surplus workers finish their job and leave within a second."""
        self.size = size

    def run(self, ctx: int, job: Job, timeout_ms: int = 0) -> None:
        """Block the calling client and run ``job(locked)`` on a worker.

        The job's return value is the reply; an exception becomes an error
        reply. With ``timeout_ms`` the client gets nil at the deadline while
        the job goes on. Raises LLMError at once inside MULTI/EXEC or a
        script, or when the queue is full; the client is then not blocked.
        """
        self.check(ctx, blocking=True)
        handle = keys.block(ctx, timeout_ms)
        # Only this (main) thread adds jobs, so the check above holds.
        self._jobs.put_nowait((handle, 0, job))

    def submit(self, ctx: int, job: Job) -> None:
        """Run ``job(locked)`` on a worker with no client waiting (LLM.RUN
        --ASYNC): its writes go to the caller's database, its reply is dropped.
        Raises LLMError at once when the queue is full."""
        self.check(ctx, blocking=False)
        self._jobs.put_nowait((0, keys.selected_db(ctx), job))

    def check(self, ctx: int, blocking: bool) -> None:
        """Raise the LLMError that run() (blocking) or submit() would raise
        now: a command calls it before it writes anything."""
        if blocking and keys.context_flags(ctx) & (_CTX_LUA | _CTX_MULTI | _CTX_DENY_BLOCKING):
            raise LLMError("this command waits for slow work and cannot run inside "
                           "MULTI/EXEC or a script")
        self._start()
        if self._jobs.full():
            raise LLMError(f"the worker queue is full ({self._jobs.maxsize} jobs waiting); retry later")

    def _start(self) -> None:
        with self._lock:
            while len(self._threads) < self.size:
                self._started += 1
                thread = threading.Thread(target=self._work, name=f"llm-worker-{self._started}",
                                          daemon=True)
                self._threads.add(thread)
                thread.start()

    def _retire(self) -> bool:
        """Called by an idle worker: leave when the pool has been made smaller."""
        with self._lock:
            if len(self._threads) <= self.size:
                return False
            self._threads.discard(threading.current_thread())
            return True

    def _work(self) -> None:
        while True:
            try:
                handle, db, job = self._jobs.get(timeout=1.0)
            except queue.Empty:
                if self._retire():
                    return
                continue
            with self._lock:
                self.busy += 1
            try:
                reply = job(functools.partial(keys.locked, handle, db))
            except Exception as exc:
                reply = error_reply(exc, "a blocked command")
            finally:
                with self._lock:
                    self.busy -= 1
            if handle:
                keys.unblock(handle, reply)
            if self._retire():
                return


# The module's pool, made by bridge.load from POOL_SIZE and QUEUE_SIZE.
workers: WorkerPool | None = None
