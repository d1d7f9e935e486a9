"""Parameter models: every numeric field refuses JSON booleans, and window integers stay in the range
torch's kernels take (issue 9, finding 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import poolcore
from poolcore.params import MAX_INT

ROOT = Path(__file__).resolve().parents[2]


def _window_params(method: str) -> dict[str, object]:
    fields = poolcore.get_spec(method).params.model_fields
    if "kernel_size" in fields:
        return {"kernel_size": 3, "stride": 2}
    if "output_size" in fields:
        return {"output_size": 2}
    return {}


NUMERIC = [
    (method, name)
    for method in poolcore.methods()
    for name, info in poolcore.get_spec(method).params.model_fields.items()
    if name not in ("ceil_mode", "count_include_pad", "scope", "eval_rule")  # booleans and choices
]


@pytest.mark.parametrize(("method", "name"), NUMERIC, ids=[f"{m}-{n}" for m, n in NUMERIC])
@pytest.mark.parametrize("value", [True, False, [2, True]], ids=["true", "false", "list"])
def test_booleans_are_not_numbers(method: str, name: str, value: object) -> None:
    """pydantic reads ``true`` as 1 (``kernel_size: true`` pooled with a 1-window); now it is named."""
    params = {**_window_params(method), name: value}
    if name == "output_size":
        params.pop("kernel_size", None)
        params.pop("stride", None)
    with pytest.raises(ValueError, match=rf"{name} must be a number, not a boolean \(got "):
        poolcore.get_spec(method).resolve(params)
    # Fields that are booleans still take them; an integral float still reads as an int.
    assert poolcore.get_spec("avg").resolve({"kernel_size": 2.0, "ceil_mode": True})["ceil_mode"] is True


@pytest.mark.parametrize("name", ["kernel_size", "stride", "padding", "output_size"])
@pytest.mark.parametrize("value", [MAX_INT + 1, 10**18, [2, 10**18]], ids=["2**31", "1e18", "tuple"])
def test_window_integers_up_to_2_31(name: str, value: object) -> None:
    params: dict[str, object] = (
        {"output_size": value} if name == "output_size" else {"kernel_size": 2, name: value}
    )
    with pytest.raises(ValueError, match=rf"{name}: Input should be less than or equal to 2147483647 \(got "):
        poolcore.get_spec("avg").resolve(params)


def test_functional_refuses_a_stride_that_would_kill_the_process() -> None:
    """A stride of 2**32 reached torch's max_pool as a C int and ended the process with SIGFPE; run in a
    child so that, should it come back, this test fails rather than the test run."""
    code = (
        "import torch, poolcore\n"
        "try:\n"
        "    poolcore.mixed.mixed_pool(torch.rand(1, 1, 4, 4), 2, stride=2**32)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-500:]}"
    assert "stride entries must be at most 2**31-1 (got 4294967296)" in done.stdout
    x = torch.rand(1, 1, 4, 4)
    for method in ("avg", "max", "mixed", "stochastic", "lp", "gem"):  # the largest stride still runs
        assert poolcore.pool(x, method, kernel_size=2, stride=MAX_INT).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("name", ["kernel_size", "stride", "padding", "output_size"])
def test_window_tuples_have_one_to_three_entries(name: str) -> None:
    """A 100000-entry kernel_size used to reach poolcore's windows and come back whole in the message."""
    for value, message in (
        ([1] * 100_000, "at most 3 values, one per spatial dim, not 100000"),
        ([], "at least 1 value, one per spatial dim, not 0"),
    ):
        params: dict[str, object] = {"kernel_size": 2, name: value}
        if name in ("kernel_size", "output_size"):
            params = {name: value}
        with pytest.raises(ValueError, match=message) as error:
            poolcore.get_spec("avg").resolve(params)
        assert len(str(error.value)) < 300
