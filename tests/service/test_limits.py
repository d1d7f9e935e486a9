"""Output size and working memory are checked before the operator runs (issue 9, findings 3 and 10).

The operator is replaced by a recorder wherever a request must be refused, so each test proves that
nothing was allocated for it, not just that the answer was 413.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

import poolcore
from poolcore import hooks, stochastic
from poolcore.hooks import stochastic_train_scratch
from poolcore.registry import MethodSpec
from poolcore.windows import window_call
from service import limits as limits_module
from service.app import create_app
from service.errors import PayloadTooLarge
from service.limits import WorkLimits, output_window
from service.pooling import run_pool
from service.ui.handlers import PageError, Runtime, pool_tensor

from .support import ROOT, headless_settings, test_settings


def _fields(method: str) -> dict[str, Any]:
    return poolcore.get_spec(method).params.model_fields


ADAPTIVE = [m for m in poolcore.methods() if "output_size" in _fields(m)]
SLIDING = [m for m in poolcore.methods() if "kernel_size" in _fields(m)]
GLOBAL = [m for m in poolcore.methods() if m not in ADAPTIVE]


@pytest.fixture
def operator_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every method's operator replaced by a recorder (no method may run in a test that uses this)."""
    calls: list[str] = []

    def record(self: MethodSpec, x: torch.Tensor, resolved: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(self.name)
        return torch.zeros(1)

    monkeypatch.setattr(MethodSpec, "run", record)
    yield calls


def test_the_registry_has_methods_of_each_window_form() -> None:
    assert ADAPTIVE and SLIDING and set(ADAPTIVE) | set(SLIDING) | set(GLOBAL) == set(poolcore.methods())


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("output_size", [(20000, 20000), (200000, 200000), (None, 2**25), 2**13])
def test_an_oversize_adaptive_output_is_refused_before_the_operator_runs(
    method: str, output_size: Any, operator_calls: list[str]
) -> None:
    x = torch.ones(1, 1, 2, 2) if output_size != (None, 2**25) else torch.ones(1, 1, 3, 2)
    limit = WorkLimits().max_elements
    with pytest.raises(
        PayloadTooLarge, match=rf"the output would have \d+ elements .* over the limit of {limit}"
    ):
        run_pool(x, method, {"output_size": output_size})
    assert operator_calls == []


@pytest.mark.parametrize("method", SLIDING)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_a_padded_kernel_output_over_the_limit_is_refused_and_one_at_it_runs(
    method: str, ceil_mode: bool
) -> None:
    # An 8×8 input at a limit of 64 elements: kernel 2, stride 1, padding 1 makes 9×9 (81 > 64); the
    # same input with padding 0 makes 7×7 and runs; the output exactly at the limit (kernel 1) runs too.
    small = WorkLimits(max_elements=64)
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    over = {"kernel_size": 2, "stride": 1, "padding": 1, "ceil_mode": ceil_mode}
    with pytest.raises(
        PayloadTooLarge, match=r"output would have 81 elements \(output size \(9, 9\).* limit of 64"
    ):
        run_pool(x, method, over, limits=small)
    for params in ({**over, "padding": 0}, {"kernel_size": 1}):
        out = run_pool(x, method, params, limits=small)
        assert out.output.numel() <= 64
        torch.testing.assert_close(out.output, poolcore.get_spec(method)(x, params))


@pytest.mark.parametrize("method", GLOBAL)
def test_global_methods_run_at_the_limit(method: str) -> None:
    x = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = run_pool(x, method, {}, limits=WorkLimits(max_elements=64))  # the input is at the limit
    torch.testing.assert_close(out.output, poolcore.get_spec(method)(x, {}))


@pytest.mark.parametrize(
    ("shape", "params"),
    [
        ((2, 3, 9, 7), {"kernel_size": (3, 2), "stride": (2, 1), "padding": 1, "ceil_mode": True}),
        ((3, 10), {"kernel_size": 3, "stride": 2, "ceil_mode": True, "dims": 1}),
        ((10,), {"output_size": 4}),
        ((2, 5, 6, 7), {"output_size": (None, 3, 2)}),
        ((2, 1, 5, 6, 7), {"kernel_size": 2, "padding": 1, "dims": 3}),
        ((5, 6), {"output_size": (None, 4)}),
        ((4, 6, 6), {"output_size": 1, "dims": 2}),
        ((2, 3, 11, 9), {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": (2, 3), "ceil_mode": True}),
    ],
)
def test_output_window_agrees_with_poolcore(shape: tuple[int, ...], params: dict[str, Any]) -> None:
    resolved = poolcore.get_spec("avg").resolve(params)
    found = output_window(shape, resolved)
    assert found is not None
    planes, window = found
    seen: list[Any] = []

    def mean(b: torch.Tensor, w: Any) -> torch.Tensor:
        seen.append((b.shape[0] * b.shape[1], w))
        return w.mean(b)

    window_args = {k: v for k, v in resolved.items() if k != "count_include_pad"}
    out = window_call(torch.zeros(shape), mean, **window_args)
    assert (planes, window) == seen[0]
    assert planes * math.prod(window.out_size) == out.numel()


def test_invalid_geometry_is_left_to_poolcore_and_its_message() -> None:
    assert output_window((1, 2, 2), poolcore.get_spec("avg").resolve({"kernel_size": 5})) is None
    with pytest.raises(ValueError, match="kernel_size"):
        run_pool(torch.ones(1, 2, 2), "avg", {"kernel_size": 5})


# ---- work: window visits --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", SLIDING)
def test_work_is_bounded_at_one_visit(method: str, operator_calls: list[str]) -> None:
    """A 16×16 plane, kernel 8, stride 1: 9×9 outputs × 64 positions = 5184 visits (×20 for lp and gem,
    × its registry entry's visit_cost for any other method).
    One visit under that is refused before the operator runs; exactly that is allowed."""
    x = torch.ones(1, 1, 16, 16)
    params = {"kernel_size": 8, "stride": 1}
    spec = poolcore.get_spec(method)
    factor = 20 if spec.functional in (poolcore.lp.lp_pool, poolcore.lp.gem_pool) else spec.visit_cost
    visits = 9 * 9 * 64 * factor
    with pytest.raises(PayloadTooLarge, match=rf"cost {visits} window visits .* limit of {visits - 1} "):
        run_pool(x, method, params, limits=WorkLimits(max_work=visits - 1))
    assert operator_calls == []
    run_pool(x, method, params, limits=WorkLimits(max_work=visits))
    assert operator_calls == [poolcore.get_spec(method).name]


def test_default_work_limit_refuses_a_huge_overlapping_window(operator_calls: list[str]) -> None:
    """The reviewer's case: GeM with kernel 64, stride 1 on 3×512² (93 s in the overflow-safe form)."""
    with pytest.raises(PayloadTooLarge, match="POOLSERVE_MAX_WORK"):
        run_pool(torch.ones(1, 3, 512, 512), "gem", {"kernel_size": 64, "stride": 1, "p": 1e4})
    assert operator_calls == []


def test_ordinary_requests_are_far_below_the_default_work_limit() -> None:
    """A 224² RGB image with a 3×3 window at stride 1, and global pooling of the largest input."""
    spec = poolcore.get_spec("gem")
    found = output_window((1, 3, 224, 224), spec.resolve({"kernel_size": 3, "stride": 1}))
    assert found is not None
    assert limits_module.window_visits(spec, *found) * 100 < WorkLimits().max_work
    found = output_window((1, 1, 4096, 4096), poolcore.get_spec("global_avg").resolve({}))
    assert found is not None
    assert limits_module.window_visits(poolcore.get_spec("global_avg"), *found) < WorkLimits().max_work


# ---- working memory: stochastic training ---------------------------------------------------------------
def test_the_mirrored_block_floor_matches_poolcore() -> None:
    """If this fails, poolcore/stochastic.py changed its blocks: revisit poolcore/hooks.py's bound."""
    assert hooks.MIN_BLOCK_BYTES == stochastic._MIN_CHUNK_BYTES


def test_over_the_budget_stochastic_training_is_refused_before_poolcore_runs(
    operator_calls: list[str],
) -> None:
    """One 2048² plane, kernel 7, stride 1 (the case that took 3.3 GB before poolcore bounded it): under
    a budget below its bound it is refused without running; eval has no training scratch."""
    x = torch.ones(1, 1, 2048, 2048)
    params = {"kernel_size": 7, "stride": 1}
    small = WorkLimits(max_scratch_elements=1 << 20)
    with pytest.raises(PayloadTooLarge, match=r"needs about \d+ elements of working memory, over the limit"):
        run_pool(x, "stochastic", params, mode="train", seed=1, limits=small)
    assert operator_calls == []
    run_pool(x, "stochastic", params, limits=WorkLimits(max_scratch_elements=1))
    assert operator_calls == ["stochastic"]


def test_the_default_budget_admits_every_input_the_element_limit_admits() -> None:
    """poolcore's bound is twice the input: the default budget covers the largest input allowed."""
    spec = poolcore.get_spec("stochastic")
    found = output_window((1, 1, 4096, 4096), spec.resolve({"kernel_size": 11, "stride": 1}))
    assert found is not None
    need = stochastic_train_scratch(*found, torch.float64, torch.device("cpu"))
    assert need <= WorkLimits().max_scratch_elements


def test_at_the_budget_the_request_runs_and_matches_poolcore() -> None:
    x = torch.rand(1, 2, 64, 64, generator=torch.Generator().manual_seed(3))
    params = {"kernel_size": 7, "stride": 1}
    found = output_window(tuple(x.shape), poolcore.get_spec("stochastic").resolve(params))
    assert found is not None
    need = stochastic_train_scratch(*found, x.dtype, torch.device("cpu"))
    with pytest.raises(PayloadTooLarge, match=f"over the limit of {need - 1}"):
        run_pool(
            x, "stochastic", params, mode="train", seed=5, limits=WorkLimits(max_scratch_elements=need - 1)
        )
    out = run_pool(
        x, "stochastic", params, mode="train", seed=5, limits=WorkLimits(max_scratch_elements=need)
    )
    expected = poolcore.get_spec("stochastic")(
        x, params, training=True, generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(out.output, expected, rtol=0, atol=0)


_MEASURE = textwrap.dedent(
    """
    import json, sys, torch
    import poolcore
    from poolcore.hooks import stochastic_train_scratch
    from service.limits import output_window

    def kib(field):  # from /proc/self/status: VmRSS now, VmHWM the peak since the last reset
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

    torch.set_num_threads(1)
    side, kernel, dilation = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    params = {"kernel_size": kernel, "stride": 1, "dilation": dilation}
    spec = poolcore.get_spec("stochastic")
    x = torch.rand(1, 1, side, side)
    spec(torch.rand(1, 1, 16, 16), params, training=True)  # warm up torch's own allocations
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current RSS
    before = kib("VmRSS")
    spec(x, params, training=True, generator=torch.Generator().manual_seed(0))
    grown = (kib("VmHWM") - before) * 1024
    planes, window = output_window(tuple(x.shape), spec.resolve(params))
    estimate = stochastic_train_scratch(planes, window, x.dtype, torch.device("cpu")) * 4
    estimate += planes * window.out_size[0] * window.out_size[1] * 4  # the output
    print(json.dumps({"grown": grown, "estimate": estimate}))
    """
)


@pytest.mark.parametrize(("side", "kernel", "dilation"), [(1024, 7, 1), (1024, 3, 1), (1024, 3, 2)])
def test_the_estimate_bounds_the_memory_poolcore_really_takes(side: int, kernel: int, dilation: int) -> None:
    """Measured in a fresh process: peak RSS growth of the training call against the estimate (bytes); the
    output (a quarter of the input or less here) is part of the growth, so it is added to the estimate."""
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(side), str(kernel), str(dilation)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=True,
    )
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"stochastic train {side}² kernel {kernel} dilation {dilation}: {figures}")
    assert figures["grown"] <= figures["estimate"] + (8 << 20), figures


# ---- over HTTP and through the UI's entry point ------------------------------------------------------------
def test_the_route_answers_413_for_an_oversize_output() -> None:
    with TestClient(create_app(headless_settings())) as client:
        for size in ("20000,20000", "200000,200000"):
            response = client.post(f"/pool/adaptive_avg?output_size={size}", json={"data": [[1, 2], [3, 4]]})
            assert response.status_code == 413, response.text
            assert f"over the limit of {test_settings().max_elements}" in response.json()["detail"]
        big = {"data": [[1.0] * 256] * 256}
        response = client.post("/pool/stochastic?kernel_size=7&stride=1&dims=2&mode=train", json=big)
        assert response.status_code == 200  # under the default scratch budget
        with TestClient(create_app(headless_settings(max_scratch_elements=100_000))) as small:
            response = small.post("/pool/stochastic?kernel_size=7&stride=1&dims=2&mode=train", json=big)
            assert response.status_code == 413
            assert "POOLSERVE_MAX_SCRATCH_ELEMENTS" in response.json()["detail"]


def test_the_ui_entry_point_applies_the_settings_limits(operator_calls: list[str]) -> None:
    settings = test_settings(max_elements=100)
    runtime = Runtime(device=lambda: "cpu", setting=lambda name: getattr(settings, name, None))
    with pytest.raises(PageError) as caught:
        pool_tensor(runtime, torch.ones(2, 2), "adaptive_max", {"output_size": (20000, 20000)})
    assert caught.value.status == 413 and "over the limit of 100" in caught.value.message
    assert operator_calls == []
