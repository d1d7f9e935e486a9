"""replace_pooling: swaps torch.nn pooling layers (nested ones included) for poolcore's, keeping windows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import poolcore
from poolcore.nn import GeMPool2d, LPPool1d, MixedPool2d, Pool, replace_pooling


class Block(nn.Module):
    """Pooling at three depths: in a Sequential, in a ModuleList and in a ModuleDict."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        )
        self.pools = nn.ModuleList([nn.AvgPool2d(2, count_include_pad=False), nn.AdaptiveAvgPool2d((5, 7))])
        self.heads = nn.ModuleDict({"global": nn.AdaptiveMaxPool2d(1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        for pool in self.pools:
            x = pool(x)
        return self.heads["global"](x)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Block(), nn.Flatten())


X = torch.rand(2, 3, 33, 30, generator=torch.Generator().manual_seed(1))

SAME = {
    nn.MaxPool2d: "max",
    nn.AvgPool2d: "avg",
    nn.AdaptiveAvgPool2d: "adaptive_avg",
    nn.AdaptiveMaxPool2d: "global_max",
}


def test_same_methods_give_the_same_outputs_nested_layers_included() -> None:
    model = _model()
    want = model(X)
    assert replace_pooling(model, SAME) is model
    kinds = [type(m) for m in model.modules() if "Pool" in type(m).__name__]
    assert kinds == [Pool] * 4, kinds
    torch.testing.assert_close(model(X), want, rtol=0, atol=1e-6)


def test_windows_are_kept_so_shapes_are_unchanged() -> None:
    model = _model()
    want = model(X).shape
    replace_pooling(model, {nn.MaxPool2d: GeMPool2d, nn.AdaptiveAvgPool2d: "gem"}, p=3.0)
    replace_pooling(model, {nn.AvgPool2d: "mixed"}, p_max=0.25)
    gem = model.get_submodule("0.body.2")
    assert isinstance(gem, GeMPool2d) and (gem.kernel_size, gem.stride, gem.padding, gem.ceil_mode) == (
        3,
        2,
        1,
        True,
    )
    assert isinstance(model.get_submodule("0.pools.0"), MixedPool2d)
    assert model.get_submodule("0.pools.1").output_size == (5, 7)
    assert model(X).shape == want


def test_params_reach_each_replacement_and_learnable_p_trains() -> None:
    model = _model()
    replace_pooling(model, {nn.AdaptiveAvgPool2d: "gem", nn.MaxPool2d: "lp"}, p=2.5, learn_p=True)
    learnable = [name for name, _ in model.named_parameters() if name.endswith("p_raw")]
    assert learnable == ["0.body.2.p_raw", "0.pools.1.p_raw"]
    model(X).sum().backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if name.endswith("p_raw"))


def test_lp_with_p_inf_is_max_pooling_of_relu_output() -> None:
    """An independent reference: lp with p=inf on non-negative input is max pooling."""
    layer = nn.MaxPool2d(3, 2, 1)
    swapped = replace_pooling(nn.Sequential(layer), {nn.MaxPool2d: "lp"}, p=float("inf"))
    torch.testing.assert_close(swapped(X), F.max_pool2d(X, 3, 2, 1))


def test_1d_and_3d_layers_and_a_model_that_is_one_layer() -> None:
    one = replace_pooling(nn.AvgPool1d(3, 2), {nn.AvgPool1d: LPPool1d}, p=1.0)
    assert isinstance(one, LPPool1d)
    x = torch.rand(2, 4, 11)
    torch.testing.assert_close(one(x), 3 * F.avg_pool1d(x, 3, 2))  # p=1: the window sum
    three = replace_pooling(
        nn.Sequential(nn.MaxPool3d(2), nn.AdaptiveAvgPool3d(1)),
        {nn.MaxPool3d: "gem", nn.AdaptiveAvgPool3d: "global_avg"},
    )
    assert three(torch.rand(1, 2, 6, 6, 6)).shape == (1, 2, 1, 1, 1)


def test_mode_and_device_follow_the_layer() -> None:
    model = _model().eval()
    replace_pooling(model, {nn.MaxPool2d: "mixed"})
    assert not model.get_submodule("0.body.2").training


@pytest.mark.parametrize(
    ("layer", "target", "message"),
    [
        (nn.MaxPool2d(2, return_indices=True), "gem", r"layer 1 .*return_indices"),
        (nn.AdaptiveMaxPool2d(2, return_indices=True), "max", r"layer 1 .*return_indices"),
        (nn.AvgPool2d(3, 1, 1), "gem", r"layer 1 .*count_include_pad=True with padding"),
        (nn.AvgPool2d(2, divisor_override=1), "avg", r"layer 1 .*divisor_override"),
        (nn.AdaptiveAvgPool2d(2), "global_avg", r"layer 1 .*only replaces output_size=1"),
        (nn.MaxPool2d(2), poolcore.nn.GeMPool1d, r"layer 1 .*pools 2d, but GeMPool1d pools 1d"),
    ],
)
def test_layers_that_cannot_map_exactly_are_refused_by_name(layer: nn.Module, target, message: str) -> None:
    model = nn.Sequential(nn.Identity(), layer)
    with pytest.raises(ValueError, match=message):
        replace_pooling(model, {type(layer): target})


@pytest.mark.parametrize("method", ["max", "avg", "mixed", "stochastic", "lp", "gem"])
def test_dilated_max_pools_keep_their_dilation(method: str) -> None:
    """torch's nn.MaxPool2d(3, 2, dilation=2): same output shape for every method, same values for max."""
    layer = nn.MaxPool2d(3, 2, dilation=2)
    want = layer(X)
    model = replace_pooling(
        nn.Sequential(nn.Identity(), nn.MaxPool2d(3, 2, dilation=2)), {nn.MaxPool2d: method}
    )
    got = model.eval()(X)
    assert got.shape == want.shape
    if method == "max":
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert "dilation=2" in repr(model.get_submodule("1"))


def test_mapping_keys_must_be_torch_pooling_classes() -> None:
    with pytest.raises(ValueError, match=r"maps torch\.nn pooling classes"):
        replace_pooling(nn.Sequential(), {nn.Conv2d: "gem"})
    with pytest.raises(TypeError, match=r"poolcore method name or a poolcore\.nn module class"):
        replace_pooling(nn.Sequential(nn.MaxPool2d(2)), {nn.MaxPool2d: nn.AvgPool2d})


def test_timm_resnet_swaps_and_keeps_shapes() -> None:
    """timm and torchvision don't install beside our torch pin (pip would move torch), so this runs where
    they are present."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.rand(1, 3, 64, 64)
    want = model(x).shape
    replace_pooling(model, {nn.MaxPool2d: "mixed"})
    replace_pooling(model, {nn.AdaptiveAvgPool2d: "gem"}, p=3.0)
    assert model(x).shape == want
