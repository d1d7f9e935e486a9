"""TorchWorkers: the threads that run all torch work, FIFO, at most ``threads`` at once, small jobs batched.

No timing: each test holds the worker threads on an Event, queues jobs behind them, and checks what the
threads did once released.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from service.workers import (
    BATCH_BYTES,
    MAX_BATCH,
    SMALL_JOB_BYTES,
    WATCH_AFTER,
    CallerGone,
    QueueFull,
    QueueTimeout,
    RunTimeout,
    TorchWorkers,
    WorkersClosed,
)


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if condition():
            return
        threading.Event().wait(0.025)
    raise AssertionError(f"timed out waiting for {what}")


class Gate:
    """A job that holds its worker thread until released; ``started`` is set once it runs."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        self.started.set()
        self.release.wait(10)

    async def hold(self, workers: TorchWorkers) -> asyncio.Future[None]:
        """Occupy one thread of ``workers`` (awaited to the point where it runs)."""
        held = asyncio.ensure_future(workers.run(self))
        await asyncio.to_thread(self.started.wait, 10)
        return held


class Recorder:
    """A batch function that records each call's items and answers each item with ``item * 10``, or
    returns the item itself where it is an exception."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def __call__(self, items: Sequence[Any]) -> list[Any]:
        self.calls.append(list(items))
        return [item if isinstance(item, Exception) else item * 10 for item in items]


def test_run_returns_the_result_and_raises_the_error() -> None:
    workers = TorchWorkers(1)

    def fail() -> None:
        raise ValueError("bad value 7")

    async def scenario() -> int:
        with pytest.raises(ValueError, match="bad value 7"):
            await workers.run(fail)
        return await workers.run(lambda a, b: a + b, 2, 3)

    try:
        assert asyncio.run(scenario()) == 5
        assert workers.call(lambda: threading.current_thread().name).startswith("poolserve-torch_")
    finally:
        workers.close()
        workers.join(10)


def test_queued_small_jobs_reach_the_batch_function_in_one_call_in_order() -> None:
    workers = TorchWorkers(1)
    gate = Gate()
    recorder = Recorder()

    async def scenario() -> list[Any]:
        blocker = await gate.hold(workers)
        tasks = [asyncio.ensure_future(workers.run_batched(recorder, item, 8)) for item in range(5)]
        await asyncio.to_thread(_wait_for, lambda: workers.pending() == 5, "five queued jobs")
        gate.release.set()
        await blocker
        return list(await asyncio.gather(*tasks))

    try:
        assert asyncio.run(scenario()) == [0, 10, 20, 30, 40]
        assert recorder.calls == [[0, 1, 2, 3, 4]]
    finally:
        workers.close()
        workers.join(10)


def test_large_jobs_and_long_queues_are_split() -> None:
    """A job over BATCH_BYTES runs alone; no batch exceeds MAX_BATCH jobs; results still match items."""
    workers = TorchWorkers(1)
    gate = Gate()
    recorder = Recorder()
    sizes = [BATCH_BYTES + 1, 1, 1] + [1] * (MAX_BATCH + 3)

    async def scenario() -> list[Any]:
        blocker = await gate.hold(workers)
        tasks = [
            asyncio.ensure_future(workers.run_batched(recorder, i, size)) for i, size in enumerate(sizes)
        ]
        await asyncio.to_thread(_wait_for, lambda: workers.pending() == len(sizes), "the queued jobs")
        gate.release.set()
        await blocker
        return list(await asyncio.gather(*tasks))

    try:
        assert asyncio.run(scenario()) == [10 * i for i in range(len(sizes))]
        assert recorder.calls[0] == [0]  # the large one alone
        assert all(len(call) <= MAX_BATCH for call in recorder.calls)
        assert [item for call in recorder.calls for item in call] == list(range(len(sizes)))
    finally:
        workers.close()
        workers.join(10)


def test_an_item_error_goes_to_its_own_caller_only() -> None:
    workers = TorchWorkers(1)
    recorder = Recorder()

    async def scenario() -> list[Any]:
        items: list[Any] = [1, KeyError("item 2"), 3]
        return list(
            await asyncio.gather(
                *(workers.run_batched(recorder, item) for item in items), return_exceptions=True
            )
        )

    try:
        first, second, third = asyncio.run(scenario())
        assert (first, third) == (10, 30)
        assert isinstance(second, KeyError) and second.args == ("item 2",)
    finally:
        workers.close()
        workers.join(10)


def test_a_broken_batch_function_fails_every_caller_of_its_batch() -> None:
    workers = TorchWorkers(1)

    def short(items: Sequence[int]) -> list[int]:
        return list(items)[:-1]  # one result too few

    async def scenario() -> list[Any]:
        return list(
            await asyncio.gather(*(workers.run_batched(short, i) for i in range(1)), return_exceptions=True)
        )

    try:
        (error,) = asyncio.run(scenario())
        assert isinstance(error, RuntimeError) and "0 results for 1 items" in str(error)
    finally:
        workers.close()
        workers.join(10)


def test_a_job_cancelled_while_queued_never_runs() -> None:
    workers = TorchWorkers(1)
    gate = Gate()
    recorder = Recorder()

    async def scenario() -> None:
        blocker = await gate.hold(workers)
        cancelled = asyncio.ensure_future(workers.run_batched(recorder, 1))
        kept = asyncio.ensure_future(workers.run_batched(recorder, 2))
        await asyncio.to_thread(_wait_for, lambda: workers.pending() == 2, "two queued jobs")
        cancelled.cancel()
        gate.release.set()
        await blocker
        assert await kept == 20
        assert cancelled.cancelled()

    try:
        asyncio.run(scenario())
        assert recorder.calls == [[2]]
    finally:
        workers.close()
        workers.join(10)


def test_no_more_than_threads_jobs_run_at_once() -> None:
    """Six blocking calls from six threads on two workers: two run, four wait in the queue."""
    workers = TorchWorkers(2)
    release = threading.Event()
    running: list[str] = []
    lock = threading.Lock()

    def job() -> None:
        with lock:
            running.append(threading.current_thread().name)
        release.wait(10)

    callers = [threading.Thread(target=workers.call, args=(job,)) for _ in range(6)]
    try:
        for caller in callers:
            caller.start()
        _wait_for(lambda: len(running) == 2 and workers.pending() == 4, "two running, four queued")
        assert len(running) == 2 and workers.pending() == 4
    finally:
        release.set()
        for caller in callers:
            caller.join(10)
        workers.close()
        workers.join(10)
    assert len(running) == 6 and len(set(running)) <= 2


def test_an_idle_thread_keeps_nothing_of_its_last_answer() -> None:
    """An answer can be hundreds of MiB (a large JSON body): once its caller is done with it, it is freed,
    not kept alive by the thread that made it while that thread waits, maybe for hours, for more work."""

    class Answer:
        pass

    workers = TorchWorkers(1)

    async def scenario() -> weakref.ref[Answer]:
        return weakref.ref(await workers.run(Answer))

    try:
        answer = asyncio.run(scenario())
        _wait_for(lambda: answer() is None, "the answer to be freed")  # refcounting: no gc.collect
    finally:
        workers.close()
        workers.join(10)


def test_close_finishes_queued_jobs_then_refuses_new_ones() -> None:
    workers = TorchWorkers(1)
    gate = Gate()
    done: list[int] = []
    callers = [threading.Thread(target=workers.call, args=(gate,))]
    callers += [threading.Thread(target=workers.call, args=(done.append, i)) for i in range(3)]
    callers[0].start()
    assert gate.started.wait(10)
    for caller in callers[1:]:
        caller.start()
    _wait_for(lambda: workers.pending() == 3, "three queued jobs")
    workers.close()
    gate.release.set()
    workers.join(10)
    for caller in callers:
        caller.join(10)
    assert sorted(done) == [0, 1, 2]
    with pytest.raises(WorkersClosed, match="shutting down") as caught:
        workers.call(done.append, 4)
    assert caught.value.status_code == 503 and caught.value.headers == {"Retry-After": "1"}

    async def late() -> None:
        await workers.run(done.append, 5)

    with pytest.raises(WorkersClosed):
        asyncio.run(late())
    assert sorted(done) == [0, 1, 2]


def test_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="got 0"):
        TorchWorkers(0)


def test_a_batch_holds_one_batch_function_and_plain_calls_go_alone() -> None:
    """Queued behind a held thread: two recorder jobs, a plain call, two more recorder jobs, another
    batch function's job. A batch stops where the batch function changes, and a plain call runs alone."""
    workers = TorchWorkers(1)
    gate = Gate()
    first, second = Recorder(), Recorder()
    order: list[str] = []

    async def scenario() -> list[Any]:
        blocker = await gate.hold(workers)
        tasks = [
            asyncio.ensure_future(workers.run_batched(first, 1)),
            asyncio.ensure_future(workers.run_batched(first, 2)),
            asyncio.ensure_future(workers.run(order.append, "plain")),
            asyncio.ensure_future(workers.run_batched(first, 3)),
            asyncio.ensure_future(workers.run_batched(first, 4)),
            asyncio.ensure_future(workers.run_batched(second, 5)),
        ]
        await asyncio.to_thread(_wait_for, lambda: workers.pending() == len(tasks), "the queued jobs")
        gate.release.set()
        await blocker
        return list(await asyncio.gather(*tasks))

    try:
        assert asyncio.run(scenario()) == [10, 20, None, 30, 40, 50]
        assert first.calls == [[1, 2], [3, 4]] and second.calls == [[5]] and order == ["plain"]
    finally:
        workers.close()
        workers.join(10)


# ---- load shedding (issue 9, finding 11): a bounded queue, a queue timeout, callers that leave
def test_the_queue_holds_at_most_max_queue_jobs_for_async_and_blocking_callers() -> None:
    workers = TorchWorkers(1, max_queue=2)
    gate = Gate()
    recorder = Recorder()

    async def scenario() -> None:
        blocker = await gate.hold(workers)
        queued = [asyncio.ensure_future(workers.run_batched(recorder, i)) for i in (1, 2)]
        await asyncio.sleep(0)
        assert workers.pending() == 2
        with pytest.raises(
            QueueFull, match=r"2 requests are already waiting .*POOLSERVE_MAX_QUEUE=2"
        ) as caught:
            await workers.run_batched(recorder, 3)
        assert caught.value.status_code == 503 and caught.value.headers == {"Retry-After": "1"}
        # A UI call (a blocking caller in another thread) meets the same bound.
        with pytest.raises(QueueFull):
            await asyncio.to_thread(workers.call, recorder, [4])
        gate.release.set()
        await blocker
        assert [await job for job in queued] == [10, 20]
        assert await workers.run_batched(recorder, 5) == 50  # room again

    try:
        asyncio.run(scenario())
        assert recorder.calls == [[1, 2], [5]]
    finally:
        workers.close()
        workers.join(10)


def test_max_queue_zero_takes_work_only_for_an_idle_thread() -> None:
    workers = TorchWorkers(1, max_queue=0)
    gate = Gate()

    async def scenario() -> None:
        assert await workers.run(lambda: 7) == 7
        blocker = await gate.hold(workers)
        with pytest.raises(QueueFull):
            await workers.run(lambda: 8)
        gate.release.set()
        await blocker

    try:
        asyncio.run(scenario())
    finally:
        workers.close()
        workers.join(10)


def test_a_job_still_queued_after_the_timeout_is_dropped_unrun_and_its_caller_gets_503() -> None:
    workers = TorchWorkers(1, queue_timeout=0.05)
    gate = Gate()
    recorder = Recorder()

    async def scenario() -> None:
        blocker = await gate.hold(workers)  # runs past the timeout: a job a thread took is never cut short
        with pytest.raises(QueueTimeout, match=r"waited 0.05 s for a free worker") as caught:
            await workers.run_batched(recorder, 1)
        assert caught.value.status_code == 503
        assert workers.pending() == 0  # out of the queue at once, not when a thread gets to it
        gate.release.set()
        await blocker
        assert await workers.run_batched(recorder, 2) == 20

    try:
        asyncio.run(scenario())
        assert recorder.calls == [[2]]
    finally:
        workers.close()
        workers.join(10)


def test_a_blocking_call_still_queued_after_the_timeout_is_dropped_unrun() -> None:
    workers = TorchWorkers(1, queue_timeout=0.05)
    gate = Gate()
    ran: list[int] = []
    holder = threading.Thread(target=workers.call, args=(gate,))
    holder.start()
    try:
        assert gate.started.wait(10)
        with pytest.raises(QueueTimeout):
            workers.call(ran.append, 1)
        assert workers.pending() == 0
        gate.release.set()
        holder.join(10)
        workers.call(ran.append, 2)
        assert ran == [2]
    finally:
        gate.release.set()
        workers.close()
        workers.join(10)


def test_a_job_whose_caller_is_gone_is_dropped_unrun() -> None:
    workers = TorchWorkers(1)
    gate = Gate()
    recorder = Recorder()

    async def scenario() -> None:
        blocker = await gate.hold(workers)
        left = asyncio.Event()
        stays = asyncio.Event()
        abandoned = asyncio.ensure_future(workers.run_batched(recorder, 1, gone=left.wait))
        kept = asyncio.ensure_future(workers.run_batched(recorder, 2, gone=stays.wait))
        await asyncio.sleep(0)
        assert workers.pending() == 2
        left.set()
        with pytest.raises(CallerGone):
            await abandoned
        assert workers.pending() == 1
        gate.release.set()
        await blocker
        assert await kept == 20

    try:
        asyncio.run(scenario())
        assert recorder.calls == [[2]]
    finally:
        workers.close()
        workers.join(10)


def test_a_taken_job_runs_to_the_end_and_a_failing_watch_is_ignored() -> None:
    workers = TorchWorkers(1)
    gate = Gate()
    recorder = Recorder()

    async def broken_watch() -> None:
        raise RuntimeError("can't watch this caller")

    async def scenario() -> None:
        left = asyncio.Event()
        left.set()  # the caller is gone from the start, but a thread takes its job at once
        running = asyncio.ensure_future(workers.run_batched(_call_each_gate(gate), None, gone=left.wait))
        await asyncio.to_thread(gate.started.wait, 10)
        await asyncio.sleep(2 * WATCH_AFTER)
        gate.release.set()
        assert await running is None  # answered: a job once taken is never cut short
        held = Gate()
        blocker = await held.hold(workers)
        queued = asyncio.ensure_future(workers.run_batched(recorder, 3, gone=broken_watch))
        await asyncio.sleep(2 * WATCH_AFTER)  # long enough for the watch to start, and fail
        held.release.set()
        await blocker
        assert await queued == 30

    try:
        asyncio.run(scenario())
        assert recorder.calls == [[3]]
    finally:
        gate.release.set()
        workers.close()
        workers.join(10)


def _call_each_gate(gate: Gate) -> Callable[[Sequence[Any]], list[Any]]:
    def batch(items: Sequence[Any]) -> list[Any]:
        gate()
        return [None for _ in items]

    return batch


def test_queue_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_queue must be at least 0"):
        TorchWorkers(1, max_queue=-1)
    with pytest.raises(ValueError, match="queue_timeout must be positive"):
        TorchWorkers(1, queue_timeout=0)


def test_running_jobs_share_the_intra_op_threads_and_small_ones_take_one() -> None:
    """torch's intra-op thread count as each job sees it: a lone large job has them all, two large jobs
    running together half each, a small job one (set_num_threads is per thread, so this is what the
    operator in that job runs with)."""
    workers = TorchWorkers(2, intra_op_threads=4)
    both_running = threading.Barrier(2, timeout=10)

    def threads_seen(items: Sequence[bool]) -> list[int]:
        if items[0]:  # wait for the other large job, so that both run at once
            both_running.wait()
        return [torch.get_num_threads()] * len(items)

    async def scenario() -> tuple[int, int, list[int]]:
        alone = await workers.run_batched(threads_seen, False, SMALL_JOB_BYTES * 4)
        small = await workers.run_batched(threads_seen, False, 100)
        together = await asyncio.gather(
            *(workers.run_batched(threads_seen, True, BATCH_BYTES) for _ in range(2))
        )
        return alone, small, list(together)

    try:
        alone, small, together = asyncio.run(scenario())
    finally:
        workers.close()
        workers.join(10)
    assert (alone, small, together) == (4, 1, [2, 2])


def test_intra_op_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="intra_op_threads must be at least 1 \\(got 0\\)"):
        TorchWorkers(1, intra_op_threads=0)


# ---- a job that runs past run_timeout (issue 17, finding 3) ----------------------------------------------


def _pool_threads(name: str) -> int:
    """Live threads of the pool named ``name`` (its watchdog not counted)."""
    return sum(1 for t in threading.enumerate() if t.name.startswith(f"{name}_") and "watchdog" not in t.name)


def test_a_job_running_past_the_run_timeout_gets_503_and_a_new_thread_takes_the_next_job() -> None:
    """The stuck thread can't be stopped: its caller is answered, a replacement serves the queue, and the
    result it finally makes is dropped."""
    workers = TorchWorkers(1, run_timeout=0.2, name="runtimeout-a")
    gate = Gate()
    recorder = Recorder()
    finished: list[str] = []

    def slow(items: Sequence[Any]) -> list[Any]:
        gate()
        finished.append("slow")
        return ["late result" for _ in items]

    async def scenario() -> None:
        with pytest.raises(RunTimeout, match=r"ran 0.2 s in a worker .*POOLSERVE_REQUEST_TIMEOUT") as caught:
            await workers.run_batched(slow, None)
        assert caught.value.status_code == 503 and caught.value.headers["Retry-After"]
        assert gate.started.is_set() and not gate.release.is_set()  # answered while it still runs
        assert workers.stuck() == 1
        assert await workers.run_batched(recorder, 4) == 40  # the replacement thread
        assert _pool_threads("runtimeout-a") == 2
        gate.release.set()
        await asyncio.to_thread(_wait_for, lambda: workers.stuck() == 0, "the stuck thread to finish")
        await asyncio.to_thread(_wait_for, lambda: _pool_threads("runtimeout-a") == 1, "it to exit")
        assert await workers.run_batched(recorder, 5) == 50

    try:
        asyncio.run(scenario())
        assert finished == ["slow"] and recorder.calls == [[4], [5]]
    finally:
        gate.release.set()
        workers.close()
        workers.join(10)


def test_a_blocking_call_running_past_the_run_timeout_gets_503() -> None:
    """The page's path (TorchWorkers.call) is cut off the same way."""
    workers = TorchWorkers(1, run_timeout=0.2, name="runtimeout-b")
    gate = Gate()
    try:
        with pytest.raises(RunTimeout):
            workers.call(gate)
        assert workers.call(lambda: 7) == 7
        gate.release.set()
        _wait_for(lambda: workers.stuck() == 0, "the stuck thread to finish")
    finally:
        gate.release.set()
        workers.close()
        workers.join(10)


def test_past_max_stuck_threads_are_not_replaced_and_the_pool_recovers_when_one_finishes() -> None:
    workers = TorchWorkers(1, run_timeout=0.2, max_stuck=1, queue_timeout=0.5, name="runtimeout-c")
    first, second = Gate(), Gate()
    recorder = Recorder()

    async def scenario() -> None:
        with pytest.raises(RunTimeout):
            await workers.run_batched(_call_each_gate(first), None)
        with pytest.raises(RunTimeout):  # on the replacement: the second stuck thread is not replaced
            await workers.run_batched(_call_each_gate(second), None)
        assert workers.stuck() == 2 and _pool_threads("runtimeout-c") == 2  # threads + max_stuck at most
        with pytest.raises(QueueTimeout):  # no thread free: the queue's own timeout answers
            await workers.run_batched(recorder, 1)
        first.release.set()  # its thread finishes and, the pool being short, takes work again
        assert await workers.run_batched(recorder, 2) == 20
        assert workers.stuck() == 1 and _pool_threads("runtimeout-c") == 2

    try:
        asyncio.run(scenario())
        assert recorder.calls == [[2]]
    finally:
        first.release.set()
        second.release.set()
        workers.close()
        workers.join(10)


def test_run_timeout_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"run_timeout must be positive \(got 0\)"):
        TorchWorkers(1, run_timeout=0)
    with pytest.raises(ValueError, match=r"max_stuck must be at least 0 \(got -1\)"):
        TorchWorkers(1, max_stuck=-1)
