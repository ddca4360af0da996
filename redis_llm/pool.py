"""The worker pool: slow work runs here while its client waits, blocked.

A command that needs slow work (an HTTP call, a local model, an embedding)
blocks its client and submits a job. A worker runs the job with the GIL free
for I/O and native code; the job reads and writes keys only through
``locked(fn)``, which runs ``fn(ctx)`` under Redis' lock, and returns the
reply. Redis itself never waits for a job, and a job's writes land (and are
replicated) even when its client timed out or disconnected.

Deadlines (``--TIMEOUT``) are kept here, not by Redis: Redis 7.0 loses the
reply of a client whose job hands back its answer just after the deadline
but before Redis has noticed it (its timeout handler then skips the client as
already unblocked, and the answer has no client left to go to). Here the job
and its deadline race for one lock, and whichever comes first unblocks the
client, with the answer or with nil.
"""

import collections
import functools
import heapq
import itertools
import threading
import time
from typing import Callable

from redis_llm import keys
from redis_llm.errors import LLMError, error_reply

# Context flags of the module API: where a client cannot be blocked.
_CTX_LUA, _CTX_MULTI, _CTX_DENY_BLOCKING = 1 << 0, 1 << 1, 1 << 21

Locked = Callable[[Callable[[int], object]], object]
Job = Callable[[Locked], object]


class _Waiting:
    """A blocked client and the job it waits for: unblocked exactly once."""

    def __init__(self, handle: int, db: int):
        self.handle = handle
        self.db = db
        self._lock = threading.Lock()

    def locked(self, fn):
        """``keys.locked`` for the job: on the client's context while it
        waits, on its database once it has been answered (the handle is gone)."""
        with self._lock:
            return keys.locked(self.handle, self.db, fn)

    def answer(self, reply) -> None:
        with self._lock:
            if self.handle:
                keys.unblock(self.handle, reply)
                self.handle = 0


class _Deadlines:
    """One thread answering nil to the clients whose --TIMEOUT has passed."""

    def __init__(self):
        self._due: list = []  # (monotonic deadline, tie-breaker, _Waiting)
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, timeout_ms: int, waiting: _Waiting) -> None:
        with self._changed:
            heapq.heappush(self._due, (time.monotonic() + timeout_ms / 1000, next(self._order),
                                       waiting))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llm-deadlines", daemon=True)
                self._thread.start()
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, waiting = heapq.heappop(self._due)
            waiting.answer(None)  # the seed's semantics: nil at the deadline


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
        self._deadlines = _Deadlines()

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
        waiting = _Waiting(keys.block(ctx), keys.selected_db(ctx))
        if timeout_ms:
            self._deadlines.add(timeout_ms, waiting)
        # Only this (main) thread adds jobs, so the check above holds.
        self._put((waiting, job))

    def submit(self, ctx: int, job: Job) -> None:
        """Run ``job(locked)`` on a worker with no client waiting (LLM.RUN
        --ASYNC): its writes go to the caller's database, its reply is dropped.
        Raises LLMError at once when the queue is full."""
        self.check(ctx, blocking=False)
        self._put((keys.selected_db(ctx), job))

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
            waiting, job = item
            if isinstance(waiting, _Waiting):
                locked = waiting.locked
            else:  # no client waits: the database the job was submitted from
                locked, waiting = functools.partial(keys.locked, 0, waiting), None
            try:
                reply = job(locked)
            except Exception as exc:
                reply = error_reply(exc, "a blocked command")
            if waiting is not None:
                waiting.answer(reply)
            finished = True


# The module's pool, made by bridge.load from POOL_SIZE and QUEUE_SIZE.
workers: WorkerPool | None = None
