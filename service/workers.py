"""The threads that do all of the service's torch work, for the routes and the browser UI alike.

The threads are one-thread :class:`concurrent.futures.ThreadPoolExecutor` objects, one per thread, so that
work goes to the thread freed last: one warm thread (its CPU caches, its OpenMP team) keeps the work,
where one executor's shared queue would hand it to every thread in turn. Jobs wait in one FIFO queue in
front of them (so that waiting holds no thread, and the queue can be bounded, inspected and withdrawn
from); a thread given a drain takes the next job and the small jobs of the same batch function right
behind it (up to :data:`MAX_BATCH` jobs and :data:`BATCH_BYTES` of input; a large job, and a plain call,
go alone), hands them to that function in one call (the routes' batch function stacks same-question
requests into one operator call, :func:`service.pooling.answer_jobs`), and keeps taking batches until the
queue is empty. Event-loop callers wake a thread once per loop pass, after every request of that pass has
queued, and get their results in one ``call_soon_threadsafe`` per batch. torch's intra-op threads are
shared by the batches running and queued (``set_num_threads`` is per thread); a batch under
:data:`SMALL_JOB_BYTES` runs on one.

The queue is bounded (``max_queue``, :class:`QueueFull`) and so is the wait in it (``queue_timeout``,
:class:`QueueTimeout`); a job offered after :meth:`TorchWorkers.close` gets :class:`WorkersClosed`: all
503s with ``Retry-After``. A job whose caller was cancelled, or whose ``gone()`` completed (its client
disconnected), while it was still queued is dropped unrun; one a thread has taken runs to the end.

Two small custom pieces, because the executor has no way to do them:

- the watchdog (with ``run_timeout``): a batch still running that long after a thread took it is
  abandoned, its callers get :class:`RunTimeout` at once and its result is dropped. The thread can't be
  stopped (it may be stuck in C code), so a *spare* executor takes its place, and is shut down (its thread
  exits) when a stuck thread finishes. At most ``max_stuck`` threads are replaced at once; past that the
  pool runs short until one finishes, so the process never runs more than ``threads + max_stuck`` worker
  threads;
- the batching queue itself (the executor's own queue can't be bounded, counted or taken from in batches).
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
from dataclasses import dataclass, field
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
# A queued job's caller is watched (``gone``) once the job has waited this long: most jobs are taken
# sooner and a taken job runs to the end anyway, so they need no watcher task. A client that left earlier
# is still seen: the server's disconnect message waits for whoever asks.
WATCH_AFTER = 0.05


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
    """The caller's ``gone`` completed (its client disconnected) while its job was still queued; the job
    was dropped, unrun."""


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
class _Pool:
    """A one-thread executor and, under the lock, whether a drain is submitted to it or running there."""

    executor: concurrent.futures.ThreadPoolExecutor
    spare: bool = False  # started in place of a stuck thread (see the module docstring)
    busy: bool = False
    freed: int = 0  # when its last drain ended (a counter): the most recently freed thread goes first


@dataclass(eq=False)
class _Run:
    """One drain's batch in progress, for the watchdog."""

    pool: _Pool
    jobs: list[_Job[Any]] = field(default_factory=list)
    deadline: float = math.inf
    thread: str = ""
    abandoned: bool = False  # ran past run_timeout: callers answered, its slot given to another thread


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


def _deliver(jobs: Sequence[_Job[Any]], results: Sequence[Any]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for job, result in zip(jobs, results, strict=True):
        future = job.future
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, result))
            continue
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # answered by the watchdog
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: its callers are gone
            loop.call_soon_threadsafe(_settle, settled)


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
        for what, value, low in (
            ("threads", threads, 1),
            ("max_queue", max_queue, 0),
            ("intra_op_threads", intra_op_threads, 1),
            ("max_stuck", max_stuck, 0),
        ):
            if value is not None and value < low:
                raise ValueError(f"{what} must be at least {low} (got {value})")
        for what, seconds in (("queue_timeout", queue_timeout), ("run_timeout", run_timeout)):
            if seconds is not None and not seconds > 0:
                raise ValueError(f"{what} must be positive (got {seconds})")
        self._threads, self._name = threads, name
        self._max_queue, self._queue_timeout = max_queue, queue_timeout
        self._run_timeout = run_timeout
        self._max_stuck = threads if max_stuck is None else max_stuck
        # torch's intra-op threads for all running batches together: torch's own default (the core
        # count) unless given; each thread sets its share per batch.
        self._intra_op = intra_op_threads or torch.get_num_threads()
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # a drain ended (join waits on it)
        self._jobs: deque[_Job[Any]] = deque()
        # One executor per thread, so that work goes to the thread freed last: one warm thread (its CPU
        # caches, its OpenMP team) keeps the work instead of every thread in turn, as an executor's shared
        # queue would hand it out. Then a spare per stuck thread replaced.
        self._pools = [_Pool(concurrent.futures.ThreadPoolExecutor(1, f"{name}_{i}")) for i in range(threads)]
        self._frees = 0
        self._spares = 0
        self._size = threads  # batches that may run at once: short while more than max_stuck are stuck
        self._drains = 0  # drains submitted or running and not abandoned (at most _size)
        self._busy = 0  # of those, the ones running a batch
        self._stuck = 0  # abandoned batches still running
        self._runs: set[_Run] = set()  # batches running, for the watchdog
        self._closed = False
        self._wakes: set[asyncio.AbstractEventLoop] = set()  # loops with a _wake due (see run_batched)
        self._watch_wake = threading.Event()
        self._watch_idle = False  # the watchdog sleeps until woken: no batch was running when it looked
        self._watchdog: threading.Thread | None = None
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

    def pending(self) -> int:
        """Jobs waiting for a thread (not counting those running)."""
        with self._lock:
            return len(self._jobs)

    # ---- callers ------------------------------------------------------------------------------------

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

        ``gone()``, when given, is awaited once the job has waited :data:`WATCH_AFTER` seconds: when it
        completes (the client disconnected) a job still queued is dropped and :class:`CallerGone` raised;
        if it raises, the caller can't be watched and the wait simply goes on."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(batch_fn, item, size, future)
        self._put(job, wake=False)
        if loop not in self._wakes:  # one wake per loop pass: a futex call each, and a thread takes them all
            self._wakes.add(loop)
            loop.call_soon(self._wake, loop)
        if gone is None and self._queue_timeout is None:
            return await future
        guard = _Guard(self, job, gone, loop)
        try:
            return await future
        except asyncio.CancelledError:  # the caller itself was cancelled: its job must not run either
            self._withdraw(job)
            raise
        finally:
            guard.cancel()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, waited for by the calling thread (which must not be a worker
        or run an event loop): how the UI's handlers, already off the loop, share the routes' threads.
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
        """Stop taking jobs; those already queued still run (see :meth:`join`)."""
        with self._lock:
            self._closed = True
            self._dispatch()
        self._watch_wake.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait, at most ``timeout`` seconds, for the queued and running jobs to finish, then let the
        threads exit; a thread stuck past ``run_timeout`` is not waited for (left to finish on its own)."""
        with self._lock:
            self._drained.wait_for(lambda: not self._jobs and self._drains == 0, timeout)
            pools = list(self._pools)
        self._watch_wake.set()  # it may sleep until a deadline of a batch that has ended
        for pool in pools:
            pool.executor.shutdown(wait=False)
        if self._watchdog is not None:
            self._watchdog.join(timeout)

    # ---- the queue ----------------------------------------------------------------------------------

    def _put(self, job: _Job[Any], *, wake: bool = True) -> None:
        with self._lock:
            if self._closed:
                raise WorkersClosed("the server is shutting down; retry on another instance")
            # Free threads take queued jobs at once: that many queued jobs are not waiting.
            free = self._size - self._busy
            if self._max_queue is not None and len(self._jobs) >= self._max_queue + free:
                raise QueueFull(
                    f"the server is busy: {len(self._jobs)} requests are already waiting for a worker "
                    f"(POOLSERVE_MAX_QUEUE={self._max_queue}); retry later"
                )
            self._jobs.append(job)
            if wake:
                self._dispatch()

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
            self._dispatch()

    def _dispatch(self) -> None:
        """Under the lock: submit one more drain if jobs wait and a slot and a thread are free (a drain
        that takes a batch and leaves jobs behind dispatches the next)."""
        if not self._jobs or self._drains >= self._size:
            return
        pool = max((p for p in self._pools if not p.busy), key=lambda p: p.freed, default=None)
        if pool is None:
            return
        try:
            pool.executor.submit(self._drain, pool)
        except RuntimeError:  # shut down: join() gave up waiting for the queue
            return
        pool.busy = True
        self._drains += 1

    def _take(self) -> tuple[list[_Job[Any]], int]:
        """Under the lock: the next job and the small ones of its batch function right behind it, with
        the intra-op threads they run on. Plain calls go one at a time: several in one thread gain
        nothing and would wait for each other while other threads may be idle."""
        first = self._jobs.popleft()
        jobs, total = [first], first.size
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
        for job in jobs:
            job.taken = True
        self._busy += 1
        self._dispatch()  # more left than this thread took: another thread for them
        if 0 < total < SMALL_JOB_BYTES:
            return jobs, 1
        # The batches running and those about to (queued, up to a thread each) share the intra-op
        # threads: four large requests on two cores run on one thread each, not eight on two cores.
        sharing = min(self._size, self._busy + len(self._jobs))
        return jobs, max(1, self._intra_op // max(1, sharing))

    # ---- the threads --------------------------------------------------------------------------------

    def _drain(self, pool: _Pool) -> None:
        """In an executor thread: run batches until the queue is empty."""
        run = _Run(pool)
        intra_op = torch.get_num_threads()
        while True:
            with self._lock:
                if not self._jobs or pool not in self._pools:  # empty, or a spare being retired
                    self._end_drain(pool)
                    return
                run.jobs, share = self._take()
                if self._run_timeout is not None:
                    run.deadline = time.monotonic() + self._run_timeout
                    run.thread = threading.current_thread().name
                    self._runs.add(run)
                    # Only a watchdog with no deadline needs waking: every later batch's deadline comes
                    # after the ones it sleeps towards, and a wake-up per batch costs a context switch.
                    if self._watch_idle:
                        self._watch_idle = False
                        self._watch_wake.set()
            if share != intra_op:
                torch.set_num_threads(share)  # this thread's OpenMP team size
                intra_op = share
            results = self._call(run.jobs)
            with self._lock:  # free before the callers hear back, so a caller's next job finds it free
                self._runs.discard(run)
                if run.abandoned:  # its callers have had their 503: the results are dropped
                    if not self._stuck_finished(run):
                        return
                    continue
                self._busy -= 1
            _deliver(run.jobs, results)
            # The answers (a JSON answer can be hundreds of MiB) must not stay in this frame while the
            # thread waits, maybe for hours, for the next batch.
            run.jobs, results = [], []

    def _end_drain(self, pool: _Pool) -> None:
        """Under the lock: a drain ends, its thread back in its executor."""
        self._free(pool)
        self._drains -= 1
        self._dispatch()  # a retired spare may leave jobs behind
        self._drained.notify_all()

    def _free(self, pool: _Pool) -> None:
        self._frees += 1
        pool.busy, pool.freed = False, self._frees

    @staticmethod
    def _call(jobs: list[_Job[Any]]) -> list[Any]:
        """Each job's result, its batch function called once per batch function among the jobs still
        wanted; a batch function that fails (a bug) fails every job it was given."""
        groups: dict[BatchFn[Any], list[int]] = {}
        for index, job in enumerate(jobs):
            if job.claim():
                groups.setdefault(job.batch_fn, []).append(index)
        # A job given up on gets an exception nobody reads (its future is done).
        results: list[Any] = [CallerGone()] * len(jobs)
        for batch_fn, indices in groups.items():
            try:
                answers = list(batch_fn([jobs[i].item for i in indices]))
                if len(answers) != len(indices):
                    raise RuntimeError(f"{batch_fn!r} gave {len(answers)} results for {len(indices)} items")
            except BaseException as error:
                answers = [error] * len(indices)
            for i, answer in zip(indices, answers, strict=True):
                results[i] = answer
        return results

    # ---- the run timeout (see the module docstring) -------------------------------------------------

    def _stuck_finished(self, run: _Run) -> bool:
        """Under the lock, when an abandoned batch finally ends: whether its thread goes on taking work
        (the pool is short), else it leaves, and a spare is retired so that its thread exits."""
        self._stuck -= 1
        run.abandoned = False
        if self._size < self._threads:  # short (past max_stuck): this thread takes its place back
            self._size += 1
            self._drains += 1
            return True
        spares = [pool for pool in self._pools if pool.spare]
        retired = run.pool if run.pool in spares else min(spares, key=lambda p: p.busy, default=None)
        if retired is not None:  # an idle one if any; a busy one leaves after its batch
            self._pools.remove(retired)
            retired.executor.shutdown(wait=False)
        self._free(run.pool)
        self._dispatch()
        self._drained.notify_all()
        return False

    def _watch(self) -> None:
        """The watchdog thread (with ``run_timeout``): abandons each batch past its deadline, answers its
        callers with :class:`RunTimeout` and gives its slot to a spare thread."""
        while True:
            self._watch_wake.clear()  # before looking: a batch taken from now on may set it again
            expired: list[tuple[_Run, list[_Job[Any]], bool]] = []
            with self._lock:
                now = time.monotonic()
                for run in [run for run in self._runs if run.deadline <= now]:
                    self._runs.discard(run)
                    run.abandoned = True
                    self._busy -= 1
                    self._drains -= 1
                    self._stuck += 1
                    replaced = self._stuck <= self._max_stuck
                    if replaced:
                        self._spares += 1
                        spare = concurrent.futures.ThreadPoolExecutor(1, f"{self._name}_spare{self._spares}")
                        self._pools.append(_Pool(spare, spare=True))
                    else:
                        self._size -= 1  # the pool is one thread short until a stuck one finishes
                    expired.append((run, run.jobs, replaced))
                self._dispatch()
                nearest = min((run.deadline for run in self._runs), default=math.inf)
                self._watch_idle = nearest == math.inf
                if self._closed and not self._runs and not self._jobs:
                    return
            for run, jobs, replaced in expired:
                log.warning(
                    "worker thread %s ran past the request timeout (%s s) on %s request(s); answered 503, "
                    "thread %s",
                    run.thread,
                    self._run_timeout,
                    len(jobs),
                    "replaced" if replaced else "not replaced (too many threads stuck)",
                )
                error = RunTimeout(
                    f"the request ran {self._run_timeout:g} s in a worker without finishing "
                    "(POOLSERVE_REQUEST_TIMEOUT) and was stopped waiting for; retry later, or send a smaller "
                    "request"
                )
                _deliver(jobs, [error] * len(jobs))
            self._watch_wake.wait(None if nearest == math.inf else max(0.0, nearest - time.monotonic()))


class _Guard:
    """On the event loop, the waits around one queued job: its queue timeout and, once it has waited
    :data:`WATCH_AFTER` seconds, its caller's ``gone()``. One timer at a time (cheaper than a task or an
    ``asyncio.wait`` per request); a task for ``gone()`` only for a job still queued by then."""

    def __init__(
        self,
        workers: TorchWorkers,
        job: _Job[Any],
        gone: Callable[[], Awaitable[object]] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.workers, self.job, self.gone, self.loop = workers, job, gone, loop
        timeout = workers._queue_timeout
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
            self.watcher.add_done_callback(self._gone)
        if self.deadline is not None:
            left = self.deadline - self.loop.time()
            if left <= 0:  # still queued at the timeout: dropped, its caller told
                if self.workers._withdraw(job) and not job.future.done():
                    job.future.set_exception(self.workers._timed_out())
            else:
                self.timer = self.loop.call_later(left, self._check)

    def _gone(self, watcher: asyncio.Future[Any]) -> None:
        """``gone()`` finished: the caller has left, so its job is dropped if still queued. A ``gone()``
        that failed or was cancelled says nothing about the caller."""
        if watcher.cancelled() or watcher.exception() is not None or self.job.future.done():
            return
        if self.workers._withdraw(self.job):
            self.job.future.set_exception(CallerGone("the caller went away before a worker took its job"))

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
