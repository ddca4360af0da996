"""The worker pool: slow work runs here while its client waits, blocked.

A command that needs slow work (an HTTP call, a local model, an embedding)
blocks its client and submits a job. A worker runs the job with the GIL free
for I/O and native code; the job reads and writes keys only through
``locked(fn)``, which runs ``fn(ctx)`` under Redis' lock, and returns the
reply. Redis itself never waits for a job, and a job's writes land (and are
replicated) even when its client timed out or disconnected.
"""

import collections
import functools
import threading
from typing import Callable

from redis_llm import keys
from redis_llm.errors import LLMError, error_reply

# Context flags of the module API: where a client cannot be blocked.
_CTX_LUA, _CTX_MULTI, _CTX_DENY_BLOCKING = 1 << 0, 1 << 1, 1 << 21

Locked = Callable[[Callable[[int], object]], object]
Job = Callable[[Locked], object]


class WorkerPool:
    """At most ``size`` threads taking jobs from a queue of at most ``queue_size``.

    Both sizes may change while jobs run (CONFIG SET llm.pool-size,
    llm.queue-size): more workers start on the next job, surplus ones leave
    once idle, and a smaller queue refuses new jobs until it has room.
    """

    def __init__(self, size: int, queue_size: int):
        self.size = size
        self.queue_size = queue_size
        self.busy = 0  # workers running a job now
        self._jobs: collections.deque = collections.deque()
        self._threads: set[threading.Thread] = set()
        # Guards all of the above. Redis' main thread holds it only to queue
        # a job or read a count, never while a job runs.
        self._changed = threading.Condition()
        self._started = 0  # names the threads

    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._jobs)

    def resize(self, size: int) -> None:
        """Run at most ``size`` workers from now on."""
        with self._changed:
            self.size = size
            self._changed.notify_all()

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
        self._put((handle, 0, job))

    def submit(self, ctx: int, job: Job) -> None:
        """Run ``job(locked)`` on a worker with no client waiting (LLM.RUN
        --ASYNC): its writes go to the caller's database, its reply is dropped.
        Raises LLMError at once when the queue is full."""
        self.check(ctx, blocking=False)
        self._put((0, keys.selected_db(ctx), job))

    def check(self, ctx: int, blocking: bool) -> None:
        """Raise the LLMError that run() (blocking) or submit() would raise
        now: a command calls it before it writes anything."""
        if blocking and keys.context_flags(ctx) & (_CTX_LUA | _CTX_MULTI | _CTX_DENY_BLOCKING):
            raise LLMError("this command waits for slow work and cannot run inside "
                           "MULTI/EXEC or a script")
        if len(self._jobs) >= self.queue_size:
            raise LLMError(f"the worker queue is full ({len(self._jobs)} jobs waiting); retry later")

    def _put(self, item: tuple) -> None:
        with self._changed:
            self._jobs.append(item)
            while len(self._threads) < self.size:
                self._started += 1
                thread = threading.Thread(target=self._work, name=f"llm-worker-{self._started}",
                                          daemon=True)
                self._threads.add(thread)
                thread.start()
            self._changed.notify()

    def _next(self, finished: bool) -> tuple | None:
        """A worker's next job, waiting for one; None when the worker must
        leave because the pool was made smaller."""
        with self._changed:
            if finished:
                self.busy -= 1
            while True:
                if len(self._threads) > self.size:
                    self._threads.discard(threading.current_thread())
                    return None
                if self._jobs:
                    self.busy += 1
                    return self._jobs.popleft()
                self._changed.wait()

    def _work(self) -> None:
        finished = False
        while (item := self._next(finished)) is not None:
            handle, db, job = item
            try:
                reply = job(functools.partial(keys.locked, handle, db))
            except Exception as exc:
                reply = error_reply(exc, "a blocked command")
            if handle:
                keys.unblock(handle, reply)
            finished = True


# The module's pool, made by bridge.load from POOL_SIZE and QUEUE_SIZE.
workers: WorkerPool | None = None
