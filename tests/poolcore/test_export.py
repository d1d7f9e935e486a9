"""Every poolcore.nn module (stochastic ones: see test_stochastic_deploy.py) in the deployment paths: ONNX
export with the dynamo and the legacy exporter run in onnxruntime, ``torch.export`` and
``torch.compile(fullgraph=True, dynamic=True)`` in eval and train mode, each against the module's own
eager output at the export shape and at other shapes. torch's own modules pass the same checks (the
control rows), which proves the harness.

Each case is exported and compiled once (module-scoped fixtures), so the file stays within minutes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from torch import nn

import poolcore
from tests.poolcore import export_harness as harness

RTOL, ATOL = harness.EVAL_TOLERANCE["rtol"], harness.EVAL_TOLERANCE["atol"]

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    legacy_refused: bool = False  # adaptive bins: the legacy exporter must refuse, never bake them
    control: bool = False


CASES = [
    Case("LPPool2d", lambda: poolcore.nn.LPPool2d(2.0, 2), (2, 3, 10, 9)),
    Case("LPPool2d-learn_p", lambda: poolcore.nn.LPPool2d(2.5, 3, 2, padding=1, learn_p=True), (2, 3, 10, 9)),
    Case("GeMPool2d", lambda: poolcore.nn.GeMPool2d(3, 2, 1), (2, 3, 10, 9)),
    Case("GeMPool2d-adaptive", lambda: poolcore.nn.GeMPool2d(output_size=(5, 7)), (2, 3, 10, 9), True),
    Case("MixedPool2d", lambda: poolcore.nn.MixedPool2d(2), (2, 3, 10, 9)),
    Case("MixedPool1d-adaptive", lambda: poolcore.nn.MixedPool1d(output_size=5), (2, 3, 17), True),
    Case("GlobalPool-gem-3d", lambda: poolcore.nn.GlobalPool("gem", p=3.0), (2, 3, 5, 6, 7)),
    Case("Pool-max-adaptive", lambda: poolcore.nn.Pool("max", output_size=(5, 7)), (2, 3, 10, 9), True),
    Case("torch-AvgPool2d", lambda: nn.AvgPool2d(3, 2, 1), (2, 3, 10, 9), control=True),
    Case("torch-MaxPool2d", lambda: nn.MaxPool2d(2), (2, 3, 10, 9), control=True),
]


def _input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))  # non-negative, as after ReLU


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request: pytest.FixtureRequest) -> tuple[Case, nn.Module, torch.Tensor, list[torch.Tensor]]:
    c: Case = request.param
    torch.manual_seed(0)
    module = c.make().eval()
    x = _input(c.shape)
    return c, module, x, [x, *harness.other_shapes(x)]


def _eager(module: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [module(t) for t in inputs]


def _match(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)


def test_dynamo_onnx_matches_eager_at_every_shape(case) -> None:
    _, module, x, inputs = case
    _match(harness.onnx_outputs(module, x, inputs, dynamo=True), _eager(module, inputs))


def test_legacy_onnx_is_right_or_refused_at_export(case) -> None:
    c, module, x, inputs = case
    if c.legacy_refused:
        with pytest.raises(RuntimeError, match="legacy TorchScript-based exporter"):
            harness.onnx_outputs(module, x, inputs, dynamo=False)
        return
    _match(harness.onnx_outputs(module, x, inputs, dynamo=False), _eager(module, inputs))


def test_torch_export_dynamic_batch_and_spatial(case) -> None:
    _, module, x, inputs = case
    program = harness.export_dynamic(module, x)
    exported = program.module()
    _match([exported(t) for t in inputs], _eager(module, inputs))


def test_compile_fullgraph_eval_and_train(case) -> None:
    _, module, x, inputs = case
    compiled = harness.compile_full(module)
    _match([compiled(t) for t in inputs], _eager(module, inputs))
    if isinstance(module, (poolcore.nn.MixedPool1d, poolcore.nn.MixedPool2d)):
        return  # random in training: see test_compiled_mixed_keeps_sampling_frequencies
    module.train()
    try:
        for t in inputs:
            want = module(t.clone().requires_grad_())
            got = compiled(t)
            torch.testing.assert_close(got, want.detach(), rtol=RTOL, atol=ATOL)
        if any(p.requires_grad for p in module.parameters()):  # a learnable p gets the same gradient
            module.zero_grad()
            module(x).sum().backward()
            eager_grads = [p.grad.clone() for p in module.parameters()]
            module.zero_grad()
            compiled(x).sum().backward()
            for p, g in zip(module.parameters(), eager_grads, strict=True):
                torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
    finally:
        module.eval()


def test_dynamo_onnx_adaptive_matches_at_every_input_size() -> None:
    """Output size (5, 7) divides none of these inputs; torch's AdaptiveAvgPool2d exported this way
    bakes in the example's bins (test_upstream_adaptive_onnx_bakes_the_example_size)."""
    module = poolcore.nn.Pool("avg", output_size=(5, 7)).eval()
    x = _input((2, 3, 10, 9))
    inputs = [_input((1 + h % 3, 3, h, w), seed=h * 31 + w) for h in range(4, 14, 3) for w in range(4, 15, 2)]
    _match(harness.onnx_outputs(module, x, inputs, dynamo=True), _eager(module, inputs))


def test_compiled_mixed_keeps_sampling_frequencies() -> None:
    """Compiled training draws max with probability p_max per window: a binomial test, not bytes."""
    p_max = 0.3
    module = poolcore.nn.MixedPool2d(2, p_max=p_max)
    compiled = harness.compile_full(module)
    torch.manual_seed(5)
    x = torch.randn(4, 8, 16, 16)
    y = compiled(x)
    mx, av = F.max_pool2d(x, 2), F.avg_pool2d(x, 2)
    chose_max = y == mx
    # The max is exact; the compiled mean sums in its own order (one spatial dim at a time).
    assert torch.all(chose_max | torch.isclose(y, av, rtol=1e-6, atol=1e-6))
    result = binomtest(int(chose_max.sum()), chose_max.numel(), p_max)
    assert result.pvalue > 1e-3, result
    assert int(module.n_max + module.n_avg) == y.numel()  # the counts follow the compiled draws too


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compiled_mixed_draws_torchs_generator(training: bool) -> None:
    """Compiled mixed pooling on CPU draws λ from torch's own generator (inductor's Philox rand cost a
    scalar Philox call per output, 5x torch's) and pools 3/2 windows with the eager path's oneDNN
    kernels (inductor's max and mean were 1.5-4x slower): for a seed it gives the eager module's output
    bit for bit, NaN and all -inf windows included."""
    module = poolcore.nn.MixedPool2d(3, 2, p_max=0.5).train(training)
    compiled = harness.compile_full(module)
    x = torch.randn(2, 4, 13, 12, generator=torch.Generator().manual_seed(8))
    x[0, 0, :3, :3] = -math.inf
    x[0, 1, 4, 4] = math.nan
    torch.manual_seed(11)
    got = compiled(x)
    torch.manual_seed(11)
    want = module(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_upstream_adaptive_onnx_bakes_the_example_size() -> None:
    """Upstream bug, worked around by ``Window._binned``: the dynamo exporter records
    ``adaptive_avg_pool2d``'s bins for the example's size. When this fails, torch exports adaptive pools
    correctly and the export-only path can go."""
    module = nn.AdaptiveAvgPool2d((5, 7)).eval()
    x, other = _input((2, 3, 10, 9)), _input((2, 3, 13, 12), seed=1)
    try:
        got = harness.onnx_outputs(module, x, [other], dynamo=True)[0]
    except Exception:  # onnxruntime refuses the baked graph at another size: still broken
        return
    assert not torch.allclose(got, module(other), rtol=RTOL, atol=ATOL)


def test_upstream_onnx_drops_divisor_override() -> None:
    """Upstream bug: the dynamo exporter drops ``divisor_override``, so a sum written as
    ``avg_pool2d(divisor_override=1)`` comes back as a mean; ``Window.sum`` multiplies by the kernel area
    instead. When this fails, the exporter keeps it."""

    class SumPool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x, 2, divisor_override=1)

    x = _input((1, 2, 6, 6))
    got = harness.onnx_outputs(SumPool(), x, [x], dynamo=True)[0]
    torch.testing.assert_close(got, F.avg_pool2d(x, 2))  # the mean: the override was dropped


def test_no_fast_path_writes_into_a_buffer_under_tracing() -> None:
    """The legacy exporter recorded map_planes' ``out=`` writes into a ``new_empty`` buffer as constant
    zeros (a graph that ignores its input); the traced graph must depend on the input."""
    module = poolcore.nn.GeMPool2d(3, 2, 1).eval()
    x = _input((2, 3, 10, 9))
    buffer = io.BytesIO()
    torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"])  # type: ignore[arg-type]
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert "AveragePool" in ops and "Pow" in ops, ops


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (poolcore.nn.MixedPool1d(3, 2, p_max=0.3), (2, 3, 17)),
        (poolcore.nn.MixedPool3d(2), (1, 2, 5, 6, 7)),
        (poolcore.nn.MixedPool2d(3, 1), (2, 3, 10, 9)),  # reduced one dim at a time
        (poolcore.nn.MixedPool2d(3, 2), (2, 3, 10, 9)),  # 3 at stride 2: one joint reduction
    ],
)
def test_compiled_mixed_unfolded_windows_match_eager(module: nn.Module, shape: tuple[int, ...]) -> None:
    """With autograd (no oneDNN), compiled mixed pooling reduces unpadded windows from unfold views (1d
    lifted, and 3d)."""
    module.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)).requires_grad_()
    compiled = harness.compile_full(module)
    torch.testing.assert_close(compiled(x), module(x), rtol=RTOL, atol=ATOL)


def test_legacy_onnx_refuses_lp_ceil_mode_at_export() -> None:
    """The clipped last windows of a ceil_mode sum need size-dependent padding, which the legacy exporter
    would record for the example's size (its graph had the wrong output shape): refused, not wrong."""
    module = poolcore.nn.LPPool2d(2.0, 3, 2, True).eval()
    x = _input((2, 3, 10, 9))
    with pytest.raises(RuntimeError, match=r"ceil_mode=True .* legacy TorchScript-based exporter"):
        harness.onnx_outputs(module, x, [x], dynamo=False)
    gem = poolcore.nn.GeMPool2d(3, 2, 1, True).eval()  # a mean: torch's own ceil-mode kernel, exported right
    inputs = [x, *harness.other_shapes(x)]
    _match(harness.onnx_outputs(gem, x, inputs, dynamo=False), _eager(gem, inputs))
