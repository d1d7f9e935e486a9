"""No host syncs in forward (issue 19, item 6): a forward pass reads no tensor value on the host, so on
CUDA it never waits for the device. On CPU each way of reading a value (``.item()``, ``float()``,
``int()``, ``bool()``, ``.tolist()``) is patched to count its calls during forward, for every registered
method in train and eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import poolcore

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")

# Parameters that give each registered method a window; presets take theirs from the registry.
WINDOWS: dict[str, dict[str, Any]] = {
    "adaptive_avg": {"output_size": 3},
    "adaptive_max": {"output_size": 3},
    "global_avg": {},
    "global_max": {},
}
FORMS: list[dict[str, Any]] = [
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"output_size": (3, 2)},
    {"output_size": 1},
]


def _cases() -> Iterator[Any]:
    for method in poolcore.methods():
        forms = [WINDOWS[method]] if method in WINDOWS else FORMS
        for i, params in enumerate(forms):
            for training in (False, True):
                for grad in (False, True):
                    mode = "train" if training else "eval"
                    ident = f"{method}-{i}-{mode}-{'grad' if grad else 'nograd'}"
                    yield pytest.param(method, params, training, grad, id=ident)


class _Counter:
    def __init__(self) -> None:
        self.calls: list[str] = []


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> _Counter:
    counter = _Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *args: Any, _name: str = name, _original: Any = original) -> Any:
            counter.calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return counter


def test_the_spy_sees_a_sync(host_reads: _Counter) -> None:
    """The premise: each patched read is seen (so a zero below means no read, not a blind spy)."""
    t = torch.tensor([1.5])
    float(t), t.item(), t.tolist(), bool(t), int(t)
    assert host_reads.calls == ["__float__", "item", "tolist", "__bool__", "__int__"]


@pytest.mark.parametrize("method, params, training, grad", _cases())
def test_forward_reads_no_tensor_value(host_reads: _Counter, method, params, training, grad) -> None:
    x = torch.rand(2, 3, 9, 10, requires_grad=grad)
    spec = poolcore.get_spec(method)
    resolved = spec.resolve(params)
    if spec.modules:  # the module (learnable p where it has one) and the functional
        module_cls = spec.modules[2]
        extra = {"learn_p": True} if method in ("lp", "gem") else {}
        window = {
            k: v for k, v in resolved.items() if k in ("kernel_size", "stride", "padding", "output_size")
        }
        module = module_cls(**window, **extra).train(training)
        host_reads.calls.clear()
        module(x)
        assert host_reads.calls == [], f"{method} module: {host_reads.calls}"
    gen = torch.Generator().manual_seed(0) if spec.random else None
    host_reads.calls.clear()
    spec.run(x, resolved, training=training, generator=gen)
    assert host_reads.calls == [], f"{method}: {host_reads.calls}"
