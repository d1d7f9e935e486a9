"""Memory formats (issue 19, item 5): torch's pools keep a channels_last input channels_last (F.avg_pool2d,
F.max_pool3d); every poolcore method does the same for channels_last and channels_last_3d, with the
values of the contiguous input. Stochastic pooling's own cases live with its operator."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import poolcore

# Every registered method but stochastic, with parameters that give it a window.
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("avg", {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("max", {"kernel_size": 3, "stride": 2}),
    ("lp", {"kernel_size": 2, "p": 3.0}),
    ("gem", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("mixed", {"kernel_size": 2, "p_max": 0.3}),
    ("lp", {"output_size": 3, "p": 2.0}),
    ("gem", {"output_size": 1}),
    ("adaptive_avg", {"output_size": 3}),
    ("adaptive_max", {"output_size": 2}),
    ("global_avg", {}),
    ("global_max", {}),
]
FORMATS = [(4, torch.channels_last), (5, torch.channels_last_3d)]


def test_torch_keeps_channels_last() -> None:
    """The reference behaviour: torch's 2-d pools and max_pool3d keep the input's format."""
    x = torch.randn(2, 8, 9, 10).contiguous(memory_format=torch.channels_last)
    assert F.avg_pool2d(x, 2).is_contiguous(memory_format=torch.channels_last)
    assert F.max_pool2d(x, 2).is_contiguous(memory_format=torch.channels_last)
    x3 = torch.randn(2, 8, 5, 6, 7).contiguous(memory_format=torch.channels_last_3d)
    assert F.max_pool3d(x3, 2).is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("rank, memory_format", FORMATS, ids=["channels_last", "channels_last_3d"])
@pytest.mark.parametrize("method, params", METHODS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS)])
def test_every_method_keeps_the_format(method, params, rank, memory_format, training) -> None:
    x = torch.rand(2, 8, *(5, 6, 7)[: rank - 2]) if rank == 5 else torch.rand(2, 8, 9, 10)
    given = x.contiguous(memory_format=memory_format)
    assert not given.is_contiguous()  # the test's premise: the format is not the default one
    gen = torch.Generator().manual_seed(0) if poolcore.get_spec(method).random else None
    y = poolcore.pool(given, method, training=training, generator=gen, **params)
    assert y.is_contiguous(memory_format=memory_format), y.stride()
    gen = torch.Generator().manual_seed(0) if gen is not None else None
    expected = poolcore.pool(x, method, training=training, generator=gen, **params)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "module",
    [
        poolcore.nn.LPPool2d(2.0, 2, learn_p=True),
        poolcore.nn.GeMPool2d(output_size=1, learn_p=True),
        poolcore.nn.MixedPool2d(2),
        poolcore.nn.GlobalPool("gem"),
    ],
)
def test_modules_keep_channels_last_with_autograd(module) -> None:
    x = torch.rand(2, 8, 9, 10).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = module(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_contiguous_input_stays_contiguous() -> None:
    x = torch.rand(2, 8, 9, 10)
    for method, params in METHODS:
        assert poolcore.pool(x, method, **params).is_contiguous(), method
