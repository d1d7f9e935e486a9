"""run_pool, the entry point shared by the route and the UI."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest
import torch

import poolcore
from service.pooling import run_limited, run_pool

from .support import default_params


@pytest.mark.parametrize("method", poolcore.methods())
def test_matches_poolcore(method: str) -> None:
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    params = default_params(method)
    out = run_pool(x, method, params)
    torch.testing.assert_close(out.output, poolcore.get_spec(method)(x, params))
    assert out.method == poolcore.get_spec(method).name
    assert out.params == {**poolcore.get_spec(method).resolve(params), "mode": "eval", "seed": None}
    assert out.device == "cpu" and out.elapsed_ms >= 0
    assert out.output.device.type == "cpu"


def test_known_torch_reference() -> None:
    x = torch.rand(1, 2, 9, 7, generator=torch.Generator().manual_seed(1))
    out = run_pool(x, "max", {"kernel_size": (3, 2), "stride": (2, 1), "padding": 1})
    torch.testing.assert_close(out.output, torch.nn.functional.max_pool2d(x, (3, 2), (2, 1), 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "test"}, "mode must be"),
        ({"mode": "train", "seed": -1}, "seed must be"),
        ({"mode": "train", "seed": True}, "seed must be"),
        ({"mode": "train", "seed": 2**63}, "seed must be"),
    ],
)
def test_bad_run_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_pool(torch.rand(1, 4, 4), "avg", {"kernel_size": 2}, **kwargs)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.rand(()), "rank 1 to 5"),
        (torch.rand(1, 1, 1, 1, 2, 2), "rank 1 to 5"),
        (torch.ones(4, 4, dtype=torch.int64), "floating-point"),
        (torch.tensor([[1.0, float("nan")]]), "finite"),
        (torch.tensor([[1.0, float("inf")]]), "finite"),
    ],
)
def test_bad_input(x: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_pool(x, "avg", {"kernel_size": 1})


def test_unknown_method() -> None:
    with pytest.raises(poolcore.UnknownMethodError, match="known methods"):
        run_pool(torch.rand(4, 4), "nope")


def test_non_random_train_mode_has_no_seed() -> None:
    out = run_pool(torch.rand(1, 4, 4), "avg", {"kernel_size": 2}, mode="train", seed=3)
    assert out.params["mode"] == "train" and out.params["seed"] is None


def test_run_limited_keeps_the_token_until_a_cancelled_call_finishes() -> None:
    """Cancelling the caller must not free the limiter's token while the thread still runs the work
    (else more than max_concurrency calls could run at once)."""
    started, release = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        release.wait(10)
        return "done"

    async def scenario() -> tuple[int, int]:
        limiter = anyio.CapacityLimiter(1)
        with ThreadPoolExecutor(1) as executor:
            task = asyncio.ensure_future(run_limited(limiter, executor, work))
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
            task.cancel()
            await asyncio.sleep(0.05)
            held_while_running = limiter.borrowed_tokens
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            return held_while_running, limiter.borrowed_tokens

    assert asyncio.run(scenario()) == (1, 0)
