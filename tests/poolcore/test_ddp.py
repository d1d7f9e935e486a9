"""DistributedDataParallel with poolcore's modules: two gloo processes on CPU.

A learnable p is an ordinary parameter, so DDP averages its gradient like any weight: after N steps it is
the same on both ranks, and for the deterministic methods the same as one process training on the two
ranks' batches concatenated. Stochastic and mixed pooling draw from each rank's default generator; seeded
per rank (``seed + rank``), a run is reproducible, which a single process replaying each rank's draws
checks step by step. Mixed's λ counts are buffers; with ``broadcast_buffers=False`` each rank keeps its own.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import poolcore.nn as pnn

WORLD = 2
STEPS = 3
SEED = 100
TIMEOUT_S = 300  # the whole two-process run, start-up included, on a loaded machine

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")


def _deterministic() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        pnn.LPPool2d(2.5, 2, learn_p=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        pnn.GeMPool2d(output_size=1, p=3.0, learn_p=True),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _random() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        pnn.StochasticPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        pnn.MixedPool2d(2),
        pnn.GeMPool2d(output_size=1, p=3.0, learn_p=True),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch for all steps: (STEPS, WORLD * 4, 1, 8, 8) and its labels; rank r takes rows r*4..."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(STEPS, WORLD * 4, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (STEPS, WORLD * 4), generator=gen)
    return x, y


def _shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    per = t.shape[0] // WORLD
    return t[rank * per : (rank + 1) * per]


def _initial(make: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return make().double().state_dict()


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )  # fmt: skip
    try:
        x, y = _data()
        results = {}
        for name, make, broadcast in (("deterministic", _deterministic, True), ("random", _random, False)):
            module = make().double()
            module.load_state_dict(_initial(make))
            torch.manual_seed(SEED + rank)  # the pooling draws: each rank its own stream
            ddp = nn.parallel.DistributedDataParallel(module, broadcast_buffers=broadcast)
            optimiser = torch.optim.SGD(ddp.parameters(), lr=0.1)
            for step in range(STEPS):
                optimiser.zero_grad()
                nn.functional.cross_entropy(ddp(_shard(x[step], rank)), _shard(y[step], rank)).backward()
                optimiser.step()
            results[name] = {k: v.clone() for k, v in module.state_dict().items()}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Each rank's state_dicts after STEPS steps of DDP (one two-process run for every test here)."""
    tmp = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two DDP processes did not finish within {TIMEOUT_S} s")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def _p(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith("p_raw")}


@pytest.mark.parametrize("name", ["deterministic", "random"])
def test_learnable_p_identical_on_both_ranks(ranks: list[dict], name: str) -> None:
    first, second = (r[name] for r in ranks)
    initial = _initial(_deterministic if name == "deterministic" else _random)
    assert _p(first), "the model has learnable p"
    for key, value in _p(first).items():
        assert not torch.equal(value, initial[key]), f"{key} did not train"
        torch.testing.assert_close(second[key], value, rtol=0, atol=0)


def test_deterministic_methods_equal_one_process_on_the_whole_batch(ranks: list[dict]) -> None:
    module = _deterministic().double()
    module.load_state_dict(_initial(_deterministic))
    optimiser = torch.optim.SGD(module.parameters(), lr=0.1)
    x, y = _data()
    for step in range(STEPS):
        optimiser.zero_grad()
        nn.functional.cross_entropy(module(x[step]), y[step]).backward()
        optimiser.step()
    # Float64; the ranks' average of two half-batch means and one whole-batch mean differ by rounding only.
    for rank in ranks:
        torch.testing.assert_close(rank["deterministic"], module.state_dict(), rtol=1e-10, atol=1e-12)


def test_per_rank_seeds_make_stochastic_and_mixed_reproducible(ranks: list[dict]) -> None:
    """Replays DDP in one process: each rank's module draws from its own saved RNG state, gradients are
    averaged over the ranks, every copy takes the same step. Parameters and each rank's λ counts match."""
    x, y = _data()
    initial = _initial(_random)
    modules, states = [], []
    for rank in range(WORLD):
        module = _random().double()
        module.load_state_dict(initial)
        modules.append(module)
        torch.manual_seed(SEED + rank)
        states.append(torch.get_rng_state())
    for step in range(STEPS):
        grads = []
        for rank, module in enumerate(modules):
            module.zero_grad()
            torch.set_rng_state(states[rank])
            out = module(_shard(x[step], rank))
            nn.functional.cross_entropy(out, _shard(y[step], rank)).backward()
            states[rank] = torch.get_rng_state()
            grads.append([torch.zeros_like(p) if p.grad is None else p.grad for p in module.parameters()])
        mean = [torch.stack(g).mean(0) for g in zip(*grads, strict=True)]
        with torch.no_grad():
            for module in modules:
                for p, g in zip(module.parameters(), mean, strict=True):
                    p.sub_(0.1 * g)
    for rank, module in enumerate(modules):
        torch.testing.assert_close(ranks[rank]["random"], module.state_dict(), rtol=1e-10, atol=1e-12)
    counts = [(int(r["random"]["5.n_max"]), int(r["random"]["5.n_avg"])) for r in ranks]
    # One λ per output in region scope: 4 samples x 4 channels x 2 x 2 outputs per step on each rank.
    assert all(n_max + n_avg == STEPS * 4 * 4 * 2 * 2 for n_max, n_avg in counts), counts
