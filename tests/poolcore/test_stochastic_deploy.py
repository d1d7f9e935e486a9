"""Stochastic pooling in the deployment paths (items 1-2 of issue 12): ``torch.export`` with dynamic sizes,
ONNX (dynamo and legacy exporters) run in onnxruntime, and ``torch.compile(fullgraph=True, dynamic=True)``
in eval and train mode, each against the module's own eager output at the export shape and at other
shapes. torch's own ``nn.AvgPool2d`` passes the same checks (the control rows).

A file of its own, apart from the operator battery in test_stochastic.py: these compile and export tests
are most of that battery's time, and ``make test`` (pytest-xdist, ``--dist loadfile``) hands each file to
one worker whole, so as one file they kept one worker busy long after the other had finished.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poolcore.nn import StochasticPool1d, StochasticPool2d, StochasticPool3d
from tests.poolcore import export_harness as harness
from tests.poolcore.test_stochastic import ALPHA, SEED_WINDOW, _gen, _value_frequency_p

DEPLOY_CASES = [
    pytest.param(StochasticPool2d(3, 2, 1), (2, 3, 10, 9), 4, id="2d-k3s2p1"),
    pytest.param(StochasticPool2d(7, 1), (2, 3, 12, 11), 8, id="2d-k7s1"),
    pytest.param(StochasticPool2d(output_size=1), (2, 3, 10, 9), 4, id="2d-global"),
    # k == s: the unfold views were contiguous for even sizes, a guard that specialised W's parity.
    pytest.param(StochasticPool2d(2, 2), (2, 3, 10, 9), 4, id="2d-k2s2"),
    # Min 6: below, a 3/3 output can be 1 wide, which torch.export specialises even for torch's own
    # max_pool2d (test_upstream_export_specialises_an_output_of_one).
    pytest.param(StochasticPool2d(3, 3), (2, 3, 10, 9), 6, id="2d-k3s3"),
    # Ceil mode: the output count had a test on the size (a guard); now it is unfold's own count.
    pytest.param(StochasticPool2d(3, 2, ceil_mode=True), (2, 3, 10, 9), 4, id="2d-k3s2-ceil"),
    pytest.param(StochasticPool2d(2, 3, ceil_mode=True), (2, 3, 10, 9), 4, id="2d-k2s3-ceil"),
    pytest.param(StochasticPool2d(output_size=(5, 7)), (2, 3, 10, 9), 4, id="2d-adaptive-5x7"),
    pytest.param(StochasticPool1d(3, 2), (2, 3, 12), 5, id="1d-k3s2"),
    # Batch and channels differ: with both 2, dynamo's duck sizing bound them to one symbol, and every
    # other shape recompiled the eval graph (a third graph of the slowest case).
    pytest.param(StochasticPool3d(3, 2, 1), (2, 3, 6, 7, 8), 4, id="3d-k3s2p1"),
]


def _relu_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(shape, generator=_gen(77))


@pytest.mark.slow
class TestHarnessControl:
    """torch's own nn.AvgPool2d passes every check of the harness: the harness is sound."""

    def test_avgpool_export_and_compile(self) -> None:
        m, x = nn.AvgPool2d(3, 2, 1), _relu_input((2, 3, 10, 9))
        inputs = [x, *harness.other_shapes(x)]
        ep = harness.export_dynamic(m, x)
        compiled = harness.compile_full(m)
        for t in inputs:
            torch.testing.assert_close(ep.module()(t), m(t), **harness.EVAL_TOLERANCE)
            torch.testing.assert_close(compiled(t), m(t), **harness.EVAL_TOLERANCE)

    @pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
    def test_avgpool_onnx(self, dynamo: bool) -> None:
        m, x = nn.AvgPool2d(3, 2, 1), _relu_input((2, 3, 10, 9))
        inputs = [x, *harness.other_shapes(x)]
        for got, t in zip(harness.onnx_outputs(m, x, inputs, dynamo=dynamo), inputs, strict=True):
            torch.testing.assert_close(got, m(t), **harness.EVAL_TOLERANCE)


@pytest.mark.slow
class TestDeploy:
    """Compiles and exports (minutes in all): marked slow."""

    @pytest.mark.parametrize(("module", "shape", "min_size"), DEPLOY_CASES)
    def test_export_dynamic(self, module: nn.Module, shape: tuple[int, ...], min_size: int) -> None:
        x = _relu_input(shape)
        inputs = [x, *harness.other_shapes(x)]
        ep = harness.export_dynamic(module.eval(), x, min_size)
        for t in inputs:
            torch.testing.assert_close(ep.module()(t), module(t), **harness.EVAL_TOLERANCE)
        if module.output_size not in (None, 1):  # a non-global adaptive walk: refused, never baked in
            with pytest.raises(RuntimeError, match="cannot be exported with dynamic input sizes"):
                harness.export_dynamic(module.train(), x, min_size)
            module.eval()
            return
        ep_train = harness.export_dynamic(module.train(), x, min_size)
        for t in inputs:
            y = ep_train.module()(t)
            assert y.shape == module(t).shape and bool((y >= 0).all())
        module.eval()

    @pytest.mark.parametrize(("module", "shape", "min_size"), DEPLOY_CASES)
    def test_onnx_dynamo(self, module: nn.Module, shape: tuple[int, ...], min_size: int) -> None:
        x = _relu_input(shape)
        inputs = [x, *harness.other_shapes(x)]
        module.eval()
        for got, t in zip(harness.onnx_outputs(module, x, inputs, dynamo=True, min_size=min_size), inputs):
            torch.testing.assert_close(got, module(t), **harness.EVAL_TOLERANCE)

    @pytest.mark.parametrize(("module", "shape", "min_size"), DEPLOY_CASES)
    def test_onnx_legacy_correct_or_refused(
        self, module: nn.Module, shape: tuple[int, ...], min_size: int
    ) -> None:
        # Before: a graph whose chunk loop baked in the example's size. Now: right, or refused at export.
        x = _relu_input(shape)
        inputs = [x, *harness.other_shapes(x)]
        module.eval()
        try:
            outputs = harness.onnx_outputs(module, x, inputs, dynamo=False)
        except RuntimeError as error:
            assert "legacy ONNX exporter" in str(error) and "dynamo=True" in str(error)
            return
        for got, t in zip(outputs, inputs, strict=True):
            torch.testing.assert_close(got, module(t), **harness.EVAL_TOLERANCE)

    @pytest.mark.parametrize(("module", "shape", "min_size"), DEPLOY_CASES)
    def test_compile_fullgraph_dynamic(
        self, module: nn.Module, shape: tuple[int, ...], min_size: int
    ) -> None:
        x = _relu_input(shape)
        inputs = [x, *harness.other_shapes(x)]
        compiled = harness.compile_full(module)
        module.eval()
        for t in inputs:
            torch.testing.assert_close(compiled(t), module(t), **harness.EVAL_TOLERANCE)
        module.train()
        for t in inputs:
            y = compiled(t)
            assert y.shape == module(t).shape
            # Each output is one of the input's values: train mode samples, it does not average.
            assert bool(torch.isin(y, t).all())
        module.eval()

    def test_adaptive_train_exports_with_static_sizes(self) -> None:
        # Only dynamic sizes are refused: with static ones the walk's length is known.
        module, x = StochasticPool2d(output_size=(5, 7)).train(), _relu_input((2, 3, 10, 9))
        y = torch.export.export(module, (x,)).module()(x)
        assert y.shape == (2, 3, 5, 7) and bool(torch.isin(y, x).all())

    def test_upstream_export_specialises_an_output_of_one(self) -> None:
        """Upstream limit: torch.export guards on whether an output dim is 1, even for torch's own
        max_pool2d, so 3/3 windows export with min size 6 (outputs of 2 or more). When this fails,
        lower the 2d-k3s3 case's min size to 4."""

        class MaxPool3(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return F.max_pool2d(x, 3)

        with pytest.raises(Exception, match=r"// 3\) != 1"):
            harness.export_dynamic(MaxPool3(), _relu_input((2, 3, 10, 9)), 4)

    def test_compile_train_frequencies(self) -> None:
        # Sampling semantics survive compilation: the seed window's frequencies under torch.compile.
        n = 20000
        a = torch.tensor(SEED_WINDOW)
        compiled = harness.compile_full(StochasticPool2d(3).train())
        values = compiled(a.expand(n, 1, 3, 3).contiguous()).flatten()
        assert values.numel() == n
        assert _value_frequency_p(values, a) > ALPHA

    def test_compile_train_with_autograd(self) -> None:
        x = (torch.randperm(2 * 3 * 9 * 8, dtype=torch.float32) + 1).view(2, 3, 9, 8).requires_grad_()
        compiled = harness.compile_full(StochasticPool2d(3, 2, 1).train())
        y = compiled(x)
        y.sum().backward()
        assert x.grad is not None
        # One unit of gradient per output, each at a position holding that output's value.
        assert x.grad.sum() == y.numel()
        assert bool(torch.isin(y.detach(), x.detach()[x.grad > 0]).all())

    @pytest.mark.parametrize("fallback_random", [False, True], ids=["own-op", "fallback_random"])
    def test_compiled_equals_eager(self, monkeypatch: pytest.MonkeyPatch, fallback_random: bool) -> None:
        # Documented: on the CPU a compiled module draws the eager path's uniforms (through an op the
        # compiler calls), so it gives the very same samples for a seed; with inductor's fallback_random
        # too, where it draws torch's own stream in the eager path's order.
        import torch._inductor.config as inductor_config

        monkeypatch.setattr(inductor_config, "fallback_random", fallback_random)
        x = _relu_input((2, 3, 13, 12))
        for module in (StochasticPool2d(3, 2, 1), StochasticPool2d(7, 1), StochasticPool2d(output_size=1)):
            compiled = harness.compile_full(module.train())
            torch.manual_seed(5)
            a = compiled(x)
            torch.manual_seed(5)
            b = module(x)
            assert torch.equal(a, b), module

    def test_value_check_is_skipped_under_compile_only(self) -> None:
        x = _relu_input((1, 2, 6, 6))
        x[0, 0, 0, 0] = -1.0
        with pytest.raises(ValueError, match="non-negative finite activations"):
            StochasticPool2d(2)(x)
        compiled = harness.compile_full(StochasticPool2d(2))  # fullgraph: no sync, no graph break
        assert compiled(x).shape == (1, 2, 3, 3)
