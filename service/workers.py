"""The threads that do all of the service's torch work, for the route and the browser UI alike.

``max_concurrency`` threads take jobs from one FIFO queue, so at most that many run at once and a request
waiting its turn holds no thread. A thread that wakes up takes the next job and the small jobs of the same
batch function queued right behind it (up to :data:`MAX_BATCH` jobs and :data:`BATCH_BYTES` of input; a
large job, and a plain call, always goes alone), and hands them to that function in one call: the route's
batch function runs same-shaped, same-parameter requests as one operator call (see
:func:`service.pooling.pool_many`). Under light load every batch is one job; under a burst of small
requests the costs that are per hand-off, not per request, are shared:

- the event loop wakes a thread once per pass of the loop, after every request that pass started has
  queued its job, and results come back in one ``call_soon_threadsafe`` per batch;
- the most recently idle thread is woken first, so one warm thread (CPU caches, its OpenMP team) keeps
  the work rather than every thread in turn;
- every hand-off of the GIL between the loop and a worker costs both of them; a batch has a few per
  operator call instead of a few per request;
- torch's intra-op threads are shared by the batches running and queued (``set_num_threads`` is per
  thread), and a batch under :data:`SMALL_JOB_BYTES` runs on one.

A job whose caller was cancelled before the job started is dropped; one that has started runs to the end
(a thread cannot be interrupted), so the bound on concurrent work holds whatever callers do.

With ``run_timeout`` set, a batch still running that many seconds after a thread took it is abandoned: its
callers get :class:`RunTimeout` (a 503) at once and its result, whenever it comes, is dropped. The thread
itself can't be stopped (it may be stuck in C code), so a replacement thread takes new work in its place
and the pool keeps its capacity; the stuck thread exits when it finishes, or takes its place back if the
pool is short. At most ``max_stuck`` threads (default: ``threads``) are replaced at once; past that, a
thread that runs out of time is not replaced, so the pool shrinks until stuck threads finish (if all are
stuck, queued requests get :class:`QueueTimeout`), and the process never runs more than ``threads +
max_stuck`` worker threads.

The queue is bounded too: with ``max_queue`` set, a job that would wait behind that many others is refused
(:class:`QueueFull`), and one still waiting after ``queue_timeout`` seconds is taken out of the queue and
its caller told so (:class:`QueueTimeout`); both are 503s with ``Retry-After``, as is a job offered after
:meth:`TorchWorkers.close` (:class:`WorkersClosed`). A caller on the event loop may also pass ``gone``, an
awaitable that completes when its client has disconnected: a job still queued then is dropped unrun.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from .errors import ServiceUnavailable

__all__ = [
    "BATCH_BYTES",
    "MAX_BATCH",
    "SMALL_JOB_BYTES",
    "WATCH_AFTER",
    "BatchFn",
    "CallerGone",
    "QueueFull",
    "QueueTimeout",
    "RunTimeout",
    "TorchWorkers",
    "WorkersClosed",
]

log = logging.getLogger("poolserve")

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - the item type of a batch function

# An item's result, or the exception to raise to its caller, in the items' order.
BatchFn = Callable[[Sequence[I]], Sequence[Any]]

MAX_BATCH = 64  # jobs one thread takes at once
BATCH_BYTES = 256 * 1024  # a thread stops taking more once the jobs it took carry this much input
# Jobs carrying less input than this run on one intra-op thread: an operator on a few kilobytes finishes
# before a second thread would have joined (torch's pooling kernels parallelise whatever the size, and
# the team's start and end cost more than the work; on a busy machine, milliseconds).
SMALL_JOB_BYTES = 64 * 1024


class QueueFull(ServiceUnavailable):
    """Every thread is busy and ``max_queue`` jobs already wait."""

    reason = "queue_full"


class QueueTimeout(ServiceUnavailable):
    """The job waited ``queue_timeout`` seconds without a thread taking it; it was dropped, unrun."""

    reason = "queue_timeout"


class RunTimeout(ServiceUnavailable):
    """The job ran ``run_timeout`` seconds in a thread without finishing; its caller was answered and its
    result will be dropped."""

    reason = "run_timeout"


class WorkersClosed(ServiceUnavailable):
    """The workers are shut down (the server is stopping)."""

    reason = "shutting_down"


class CallerGone(Exception):
    """The caller's ``gone`` completed (its client disconnected) before the job's result came back; a job
    still queued then was dropped, unrun."""


@dataclass(eq=False)
class _Job(Generic[I]):
    batch_fn: BatchFn[I]
    item: I
    size: int  # input bytes, to keep large jobs out of batches
    # An asyncio future for a caller on an event loop, a concurrent one for a blocking caller.
    future: asyncio.Future[Any] | concurrent.futures.Future[Any]
    taken: bool = False  # set (under the lock) when a thread takes the job

    def claim(self) -> bool:
        """Whether the job should still run: its caller has not given up on it."""
        if isinstance(self.future, concurrent.futures.Future):
            try:
                return self.future.set_running_or_notify_cancel()
            except RuntimeError:  # answered already: its time ran out before it started
                return False
        # Read from a worker thread: at worst a job cancelled right now runs, and its result is dropped.
        return not self.future.cancelled()


@dataclass(eq=False)
class _Worker:
    """One worker thread and, under the lock, the batch it runs."""

    idle: threading.Event
    thread: threading.Thread | None = None
    jobs: list[_Job[Any]] | None = None  # the batch it runs, None while it waits for one
    deadline: float = math.inf  # time.monotonic() by which that batch must finish (run_timeout)
    abandoned: bool = False  # the batch ran past its deadline: its callers were answered, the thread replaced


# A queued job's caller is watched (``gone``) once the job has waited this long: most jobs are taken
# sooner, and a job that has started runs to the end anyway, so they need no watcher (a task each). A
# client that left earlier is still seen: the server's disconnect message waits for whoever asks.
WATCH_AFTER = 0.05


class _Guard:
    """On the event loop, the waits around one queued job: its queue timeout and, once it has waited
    :data:`WATCH_AFTER` seconds, its caller's ``gone()``. One timer handle at a time; a task for ``gone``
    only for a job still queued by then."""

    def __init__(
        self,
        workers: TorchWorkers,
        job: _Job[Any],
        gone: Callable[[], Awaitable[object]] | None,
        timeout: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.workers, self.job, self.gone, self.loop = workers, job, gone, loop
        self.deadline = None if timeout is None else loop.time() + timeout
        self.watcher: asyncio.Future[Any] | None = None
        first = min(t for t in (timeout, None if gone is None else WATCH_AFTER) if t is not None)
        self.timer: asyncio.TimerHandle | None = loop.call_later(first, self._check)

    def _check(self) -> None:
        self.timer = None
        job = self.job
        if job.future.done() or job.taken:  # a thread took it in time: it runs to the end
            return
        if self.gone is not None and self.watcher is None:
            self.watcher = asyncio.ensure_future(self.gone())
            self.watcher.add_done_callback(lambda watcher: self.workers._abandon(job, watcher))
        if self.deadline is not None:
            left = self.deadline - self.loop.time()
            if left <= 0:
                self.workers._expire(job)
            else:
                self.timer = self.loop.call_later(left, self._check)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


def _call_each(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """The batch function of plain calls: each on its own, an exception going to its own caller."""
    results: list[Any] = []
    for call in calls:
        try:
            results.append(call())
        except Exception as error:
            results.append(error)
    return results


def _settle(results: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """On the event loop: hand each finished job's result (or exception) to its waiting caller."""
    for future, result in results:
        if future.done():  # cancelled while it ran
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class TorchWorkers:
    """``threads`` threads running jobs in arrival order, taking small jobs in batches."""

    def __init__(
        self,
        threads: int,
        *,
        max_queue: int | None = None,
        queue_timeout: float | None = None,
        intra_op_threads: int | None = None,
        run_timeout: float | None = None,
        max_stuck: int | None = None,
        name: str = "poolserve-torch",
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1 (got {threads})")
        if run_timeout is not None and not run_timeout > 0:
            raise ValueError(f"run_timeout must be positive (got {run_timeout})")
        if max_stuck is not None and max_stuck < 0:
            raise ValueError(f"max_stuck must be at least 0 (got {max_stuck})")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be at least 1 (got {intra_op_threads})")
        # torch's intra-op threads (OpenMP) for all running jobs together: torch's own default, the
        # core count, unless given. Each worker sets its share per batch (set_num_threads is per thread).
        self._intra_op = intra_op_threads or torch.get_num_threads()
        if max_queue is not None and max_queue < 0:
            raise ValueError(f"max_queue must be at least 0 (got {max_queue})")
        if queue_timeout is not None and not queue_timeout > 0:
            raise ValueError(f"queue_timeout must be positive (got {queue_timeout})")
        self._max_queue = max_queue
        self._queue_timeout = queue_timeout
        self._jobs: deque[_Job[Any]] = deque()
        self._lock = threading.Lock()
        # Idle threads, the most recently idle last: waking that one keeps a warm thread (CPU caches, its
        # OpenMP team) on the work instead of rotating it through every thread.
        self._idle: list[threading.Event] = []
        self._busy = 0  # threads running jobs, from taking them to handing their results back
        self._closed = False
        self._wakes: set[asyncio.AbstractEventLoop] = set()  # loops with a _wake due (see run_batched)
        self._name = name
        self._threads = threads  # as asked for
        self._size = threads  # threads taking work: those abandoned past run_timeout don't count
        self._run_timeout = run_timeout
        self._max_stuck = threads if max_stuck is None else max_stuck
        self._stuck = 0  # abandoned threads still running their batch
        self._started = 0
        self._workers: list[_Worker] = []  # every live thread, stuck ones included
        with self._lock:
            for _ in range(threads):
                self._start_worker()
        self._watchdog: threading.Thread | None = None
        self._watch_wake = threading.Event()
        self._watch_sleeping = False  # the watchdog waits for a batch to start (see _pop_batch)
        if run_timeout is not None:
            self._watchdog = threading.Thread(target=self._watch, name=f"{name}_watchdog", daemon=True)
            self._watchdog.start()

    @property
    def threads(self) -> int:
        return self._threads

    def stuck(self) -> int:
        """Threads abandoned past ``run_timeout`` whose batch is still running."""
        with self._lock:
            return self._stuck

    def _start_worker(self) -> None:
        """Under the lock: one more thread taking work."""
        worker = _Worker(threading.Event())
        worker.thread = threading.Thread(
            target=self._work, args=(worker,), name=f"{self._name}_{self._started}", daemon=True
        )
        self._started += 1
        self._workers.append(worker)
        worker.thread.start()

    def pending(self) -> int:
        """Jobs waiting for a thread (not counting those running)."""
        with self._lock:
            return len(self._jobs)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, awaited from the event loop."""
        return await self.run_batched(_call_each, lambda: fn(*args))

    async def run_batched(
        self,
        batch_fn: BatchFn[I],
        item: I,
        size: int = 0,
        *,
        gone: Callable[[], Awaitable[object]] | None = None,
    ) -> Any:
        """The result ``batch_fn`` gives ``item``, computed in a worker thread, possibly in one call with
        other items of the same ``batch_fn``; ``size`` (input bytes) keeps large items out of batches.

        ``gone()``, when given, is awaited alongside: once it completes (the client disconnected), a job
        still queued is dropped and :class:`CallerGone` raised; one a thread has taken runs to the end and
        is answered. ``gone()`` starts only once the job has waited :data:`WATCH_AFTER` seconds; if it
        raises, the caller can't be watched and the wait simply goes on."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(batch_fn, item, size, future)
        # Wake a thread once per event-loop pass, after every request that pass started has queued its
        # job: waking a thread per job costs a futex call each, and the woken thread would take one job.
        self._put(job, wake=False)
        if loop not in self._wakes:
            self._wakes.add(loop)
            loop.call_soon(self._wake, loop)
        if gone is None and self._queue_timeout is None:
            return await future
        guard = _Guard(self, job, gone, self._queue_timeout, loop)
        try:
            return await future
        except asyncio.CancelledError:  # the caller itself was cancelled: its job must not run either
            self._withdraw(job)
            raise
        finally:
            guard.cancel()

    def _expire(self, job: _Job[Any]) -> None:
        """On the event loop, ``queue_timeout`` after ``job`` was queued: if no thread has taken it, drop
        it and fail its caller; one already taken runs to the end and is answered."""
        if self._withdraw(job) and not job.future.done():
            job.future.set_exception(self._timed_out())

    def _abandon(self, job: _Job[Any], watcher: asyncio.Future[Any]) -> None:
        """On the event loop, when ``gone()`` has finished: the caller has left, so its job is dropped if
        still queued. A ``gone()`` that failed or was cancelled says nothing about the caller."""
        if watcher.cancelled() or watcher.exception() is not None or job.future.done():
            return
        if self._withdraw(job):
            job.future.set_exception(CallerGone("the caller went away before a worker took its job"))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, waited for by the calling thread (which must not be a worker
        or run an event loop); how the UI's handlers, already off the loop, share the route's threads.
        The queue's bound and timeout apply as to :meth:`run_batched`."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        job = _Job(_call_each, lambda: fn(*args), 0, future)
        self._put(job)
        try:
            return future.result(self._queue_timeout)
        except TimeoutError:
            if future.done():  # fn's own TimeoutError
                raise
            if self._withdraw(job):
                raise self._timed_out() from None
        return future.result()  # a thread took it in time: it runs to the end

    def close(self) -> None:
        """Stop taking jobs; the threads finish those already queued, then exit (see :meth:`join`)."""
        with self._lock:
            self._closed = True
            while self._idle:
                self._wake_one()
        self._watch_wake.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads to exit, all together for at most ``timeout`` seconds; a thread stuck past
        ``run_timeout`` is not waited for (it is a daemon thread, left to finish on its own)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            assert worker.thread is not None
            while worker.thread.is_alive() and not worker.abandoned:
                left = 0.1 if end is None else min(0.1, end - time.monotonic())
                if left <= 0:
                    return
                worker.thread.join(left)
        if self._watchdog is not None:
            self._watchdog.join(None if end is None else max(0.0, end - time.monotonic()))

    def _put(self, job: _Job[Any], *, wake: bool = True) -> None:
        with self._lock:
            if self._closed:
                raise WorkersClosed("the server is shutting down; retry on another instance")
            # Threads not running a job take queued ones at once (run_batched wakes them once per loop
            # pass): that many queued jobs are not waiting.
            free = self._size - self._busy
            if self._max_queue is not None and len(self._jobs) >= self._max_queue + free:
                raise QueueFull(
                    f"the server is busy: {len(self._jobs)} requests are already waiting for a worker "
                    f"(POOLSERVE_MAX_QUEUE={self._max_queue}); retry later"
                )
            self._jobs.append(job)
            if wake and self._idle:  # busy threads come back for it without being woken
                self._wake_one()

    def _timed_out(self) -> QueueTimeout:
        return QueueTimeout(
            f"the request waited {self._queue_timeout:g} s for a free worker (POOLSERVE_REQUEST_TIMEOUT): "
            "the server is overloaded, retry later"
        )

    def _withdraw(self, job: _Job[Any]) -> bool:
        """Take ``job`` out of the queue if no thread has taken it yet; whether it was still there."""
        with self._lock:
            try:
                self._jobs.remove(job)
            except ValueError:
                return False
            return True

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wakes.discard(loop)
        with self._lock:
            if self._jobs and self._idle:
                self._wake_one()

    def _wake_one(self) -> None:
        """Under the lock: wake the most recently idle thread."""
        self._idle.pop().set()

    def _take(self, worker: _Worker) -> tuple[list[_Job[Any]], int] | None:
        """The next job and the small ones queued behind it, with their intra-op thread count; None once
        closed and drained."""
        idle = worker.idle
        while True:
            with self._lock:
                if self._jobs:
                    jobs = self._pop_batch()
                    worker.jobs = jobs
                    if self._run_timeout is not None:
                        worker.deadline = time.monotonic() + self._run_timeout
                        if self._watch_sleeping:  # it waits for no deadline: it has one now
                            self._watch_sleeping = False
                            self._watch_wake.set()
                    return jobs, self._intra_op_share(jobs)
                if self._closed:
                    return None
                idle.clear()
                self._idle.append(idle)
            idle.wait()

    def _intra_op_share(self, jobs: Sequence[_Job[Any]]) -> int:
        """Under the lock, for a batch just taken: the intra-op threads it runs with. The jobs running and
        those about to (queued, up to a thread each) share them, so that four large requests on a 2-core
        machine run on one thread each rather than eight threads fighting for two cores, and a lone one
        gets them all; a small batch takes one (see SMALL_JOB_BYTES)."""
        size = sum(job.size for job in jobs)
        if 0 < size < SMALL_JOB_BYTES:
            return 1
        sharing = min(self._size, self._busy + len(self._jobs))
        return max(1, self._intra_op // max(1, sharing))

    def _pop_batch(self) -> list[_Job[Any]]:
        """Under the lock: the first job, and the small ones of the same batch function right behind it.
        Plain calls go one at a time: running several in one thread gains nothing and would keep each
        waiting for the others while other threads may be idle."""
        first = self._jobs.popleft()
        first.taken = True
        self._busy += 1
        jobs = [first]
        total = first.size
        batching = first.batch_fn is not _call_each
        while (
            batching
            and self._jobs
            and len(jobs) < MAX_BATCH
            and self._jobs[0].batch_fn is first.batch_fn
            and total + self._jobs[0].size <= BATCH_BYTES
        ):
            total += self._jobs[0].size
            jobs.append(self._jobs.popleft())
            jobs[-1].taken = True
        if self._jobs and self._idle:
            self._wake_one()  # more left than this thread took: wake another
        return jobs

    def _work(self, worker: _Worker) -> None:
        try:
            self._serve(worker)
        finally:
            with self._lock:
                self._workers.remove(worker)

    def _serve(self, worker: _Worker) -> None:
        intra_op = torch.get_num_threads()
        while (taken := self._take(worker)) is not None:
            jobs, share = taken
            if share != intra_op:
                torch.set_num_threads(share)  # this thread's OpenMP team size
                intra_op = share
            if not self._run(worker, jobs):
                return  # a replacement took this thread's place
            # A batch's futures hold its answers (a JSON answer can be hundreds of MiB): nothing of it may
            # stay in this frame while the thread waits, maybe for hours, for the next batch.
            del taken, jobs

    def _run(self, worker: _Worker, jobs: list[_Job[Any]]) -> bool:
        """Run one batch and answer its callers; False when this thread is to end (it was abandoned past
        the run timeout and a replacement has taken its place)."""
        groups: dict[BatchFn[Any], list[_Job[Any]]] = {}
        done: list[tuple[list[_Job[Any]], list[Any]]] = []
        for job in jobs:
            if job.claim():
                groups.setdefault(job.batch_fn, []).append(job)
        for batch_fn, group in groups.items():
            try:
                results = list(batch_fn([job.item for job in group]))
                if len(results) != len(group):
                    raise RuntimeError(f"{batch_fn!r} gave {len(results)} results for {len(group)} items")
            except BaseException as error:  # a bug in batch_fn: every caller in the group gets it
                results = [error] * len(group)
            done.append((group, results))
        with self._lock:  # free before the callers hear back, so a caller's next job finds it free
            worker.jobs, worker.deadline = None, math.inf
            if worker.abandoned:  # its callers have had their 503: the results are dropped
                self._stuck -= 1
                if self._size >= self._threads:
                    return False
                worker.abandoned = False  # the pool is short (past max_stuck): back to work
                self._size += 1
                return True
            self._busy -= 1
        for group, results in done:
            self._deliver(group, results)
        return True

    def _watch(self) -> None:
        """The watchdog thread (with ``run_timeout``): abandons each batch that runs past its deadline,
        answers its callers with :class:`RunTimeout`, and starts a thread in its place."""
        while True:
            self._watch_wake.clear()  # before looking: a batch taken from now on sets it again
            expired: list[tuple[_Worker, list[_Job[Any]], bool]] = []
            with self._lock:
                now = time.monotonic()
                nearest = math.inf
                for worker in self._workers:
                    if worker.jobs is None or worker.abandoned:
                        continue
                    if worker.deadline > now:
                        nearest = min(nearest, worker.deadline)
                        continue
                    worker.abandoned = True
                    self._busy -= 1
                    self._stuck += 1
                    replaced = self._stuck <= self._max_stuck
                    if replaced:
                        self._start_worker()
                    else:
                        self._size -= 1  # past max_stuck: the pool is one thread short until one finishes
                    expired.append((worker, worker.jobs, replaced))
                if self._closed and nearest == math.inf and not self._jobs:
                    return
                self._watch_sleeping = nearest == math.inf
            for worker, jobs, replaced in expired:
                log.warning(
                    "worker thread %s ran past the request timeout (%s s) on %s request(s); answered 503, "
                    "thread %s",
                    worker.thread.name if worker.thread is not None else "?",
                    self._run_timeout,
                    len(jobs),
                    "replaced" if replaced else "not replaced (too many threads stuck)",
                )
                error = RunTimeout(
                    f"the request ran {self._run_timeout:g} s in a worker without finishing "
                    "(POOLSERVE_REQUEST_TIMEOUT) and was stopped waiting for; retry later, or send a smaller "
                    "request"
                )
                self._deliver(jobs, [error] * len(jobs))
            self._watch_wake.wait(None if nearest == math.inf else max(0.0, nearest - time.monotonic()))

    @staticmethod
    def _deliver(group: list[_Job[Any]], results: list[Any]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for job, result in zip(group, results, strict=True):
            if isinstance(job.future, concurrent.futures.Future):
                if job.future.done():  # answered by the watchdog, or cancelled
                    continue
                with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
            else:
                by_loop.setdefault(job.future.get_loop(), []).append((job.future, result))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: its callers are gone
                loop.call_soon_threadsafe(_settle, settled)
