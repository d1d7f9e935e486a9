"""The registry's promises, checked for every registered method, so a new method's entry can't break them.

``stackable=True`` lets the service pool same-question requests in one call, stacked along the channels
(:func:`service.pooling.pool_many`), and promises each request the bytes it would get alone. Here every
registered method runs batched and alone over seeded shapes and dtypes, compared bit for bit: a method
marked stackable whose stacked bytes differ fails. For a method marked not stackable, a warning reports
whether it would in fact have been (it may still differ on other shapes or machines: not stackable is
always safe).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

import poolcore
from poolcore.hooks import num
from poolcore.registry import MethodSpec
from poolcore.softpool import soft_pool
from poolcore.windows import infer_dims
from service.app import create_app
from service.errors import PayloadTooLarge
from service.limits import WorkLimits
from service.pooling import PoolRequest, pool_many, run_pool
from service.ui.controls import window_forms
from service.ui.sampling import is_stochastic
from service.ui.tiles import display_scale, reference_of
from service.ui.walkthrough import explain

from .support import test_settings

# Odd sizes, so a vectorised loop's scalar tail falls at a different element when the planes are stacked.
SHAPES = [(2, 3, 13, 11), (1, 5, 17, 9), (1, 2, 7, 31)]
DTYPES = [torch.float32, torch.float64]
REQUESTS = 4  # stacked per call


def _param_sets(spec: MethodSpec) -> list[dict[str, Any]]:
    """Every window form the method's parameters allow: kernel (plain, padded, ceil_mode), adaptive,
    global (a preset that pins it)."""
    fields = spec.params.model_fields
    sets: list[dict[str, Any]] = []
    if "kernel_size" in fields:
        sets += [
            {"kernel_size": 2},
            {"kernel_size": 3, "stride": 1, "padding": 1},
            {"kernel_size": 3, "stride": 2, "ceil_mode": True},
        ]
    if "output_size" in fields:
        sets += [{"output_size": (3, 4)}, {"output_size": 1}]
    return sets or [{}]


def _stacked_and_alone(
    spec: MethodSpec, params: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Like the service: the requests' planes side by side in one ``(1, planes, *spatial)`` call, in eval
    mode (the service stacks only requests that draw nothing); and each request alone."""
    generator = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=generator, dtype=dtype).abs() + 0.01 for _ in range(REQUESTS)]
    resolved = spec.resolve(params)
    dims = infer_dims(
        len(shape), resolved.get("kernel_size"), resolved.get("output_size"), resolved.get("dims")
    )
    spatial = shape[len(shape) - dims :]
    with torch.inference_mode():
        planes = torch.stack(xs).reshape(1, -1, *spatial)
        pooled = spec.run(planes, {**resolved, "dims": dims}, training=False)
        stacked = list(pooled.reshape(REQUESTS, *shape[: len(shape) - dims], *pooled.shape[2:]).unbind(0))
        alone = [spec.run(x, {**resolved, "dims": dims}, training=False) for x in xs]
    return stacked, alone


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bytes (NaN payloads and signed zeros included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)))


def _differences(spec: MethodSpec) -> list[str]:
    """Each case (params, shape, dtype) whose stacked bytes differ from the lone ones."""
    found = []
    for seed, (params, shape, dtype) in enumerate(
        (params, shape, dtype) for params in _param_sets(spec) for shape in SHAPES for dtype in DTYPES
    ):
        stacked, alone = _stacked_and_alone(spec, params, shape, dtype, seed)
        if not all(_bitwise_equal(s, a) for s, a in zip(stacked, alone, strict=True)):
            found.append(f"{params} on {shape} {str(dtype).removeprefix('torch.')}")
    return found


STACKABLE = [name for name, spec in poolcore.REGISTRY.items() if spec.stackable]
NOT_STACKABLE = [name for name, spec in poolcore.REGISTRY.items() if not spec.stackable]


@pytest.mark.parametrize("method", STACKABLE)
def test_a_stackable_method_gives_each_request_its_lone_bytes(method: str) -> None:
    differences = _differences(poolcore.REGISTRY[method])
    assert not differences, (
        f"{method} is marked stackable=True, but stacking changes its bytes for: {differences}"
    )


@pytest.mark.parametrize("method", NOT_STACKABLE)
def test_a_method_marked_not_stackable_reports_whether_it_would_be(method: str) -> None:
    """Informational: the warning says whether stacking would have kept its bytes on these cases."""
    differences = _differences(poolcore.REGISTRY[method])
    verdict = f"differs on {len(differences)} case(s), e.g. {differences[0]}" if differences else "matched"
    warnings.warn(
        f"{method} (stackable=False): stacked against lone bytes {verdict}", UserWarning, stacklevel=1
    )
    # Not stackable means the service runs each request alone: the lone result must be reproducible.
    spec = poolcore.REGISTRY[method]
    _, first = _stacked_and_alone(spec, _param_sets(spec)[0], SHAPES[0], torch.float32, 0)
    _, again = _stacked_and_alone(spec, _param_sets(spec)[0], SHAPES[0], torch.float32, 0)
    assert all(_bitwise_equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_check_catches_a_method_whose_stacking_changes_bytes() -> None:
    """The comparison can fail: a method that mixes planes (here, normalised by the batch's mean) is
    caught, though it stacks without an error."""

    def leaky(x: torch.Tensor, **window: Any) -> torch.Tensor:
        return poolcore.avg_pool(x, **window) / x.mean()

    spec = MethodSpec("leaky", "mixes planes", leaky, poolcore.get_spec("avg").params)
    assert _differences(spec)


def test_the_service_batches_a_stackable_method_and_answers_each_request_its_lone_bytes() -> None:
    """The service's own batch path, for every stackable method: one call answers all, each its lone
    bytes."""
    for name in STACKABLE:
        spec = poolcore.REGISTRY[name]
        params = _param_sets(spec)[0]
        generator = torch.Generator().manual_seed(7)
        xs = [torch.rand(1, 3, 9, 11, generator=generator) for _ in range(REQUESTS)]
        outcomes = pool_many([PoolRequest(x, name, params) for x in xs])
        for x, outcome in zip(xs, outcomes, strict=True):
            assert not isinstance(outcome, Exception), (name, outcome)
            assert outcome.batch == REQUESTS, name
            lone = spec(x, {**params, "dims": 2})
            assert _bitwise_equal(outcome.output, lone), name


# ---- a new method is picked up everywhere from its registry entry: SoftPool ----------------------------
X = torch.rand(1, 3, 8, 9, generator=torch.Generator().manual_seed(21))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(test_settings())) as c:
        yield c


def test_softpool_is_served_by_pool_methods_and_openapi(client: TestClient) -> None:
    expected = soft_pool(X.double(), 3, 2, 1).float()
    answer = client.post(
        "/pool/softpool", json={"data": X.tolist(), "params": {"kernel_size": 3, "stride": 2, "padding": 1}}
    )
    assert answer.status_code == 200, answer.text
    torch.testing.assert_close(torch.tensor(answer.json()["data"]), expected, rtol=1e-6, atol=1e-6)
    adaptive = client.post("/pool/softpool", json={"data": X.tolist(), "params": {"output_size": [2, 3]}})
    torch.testing.assert_close(
        torch.tensor(adaptive.json()["data"]),
        soft_pool(X.double(), output_size=(2, 3)).float(),
        rtol=1e-6,
        atol=1e-6,
    )
    methods = {m["name"]: m for m in client.get("/methods").json()["methods"]}
    assert methods["softpool"]["guide"]["paper"].startswith("Stergiou")
    op = client.get("/openapi.json").json()["paths"]["/pool/{method}"]["post"]
    enum = next(p for p in op["parameters"] if p["name"] == "method")["schema"]["enum"]
    assert "softpool" in enum


def test_softpool_is_a_v2_model(client: TestClient) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(X.shape), "data": X.flatten().tolist()}
    body = {"inputs": [tensor], "parameters": {"kernel_size": 2}}
    answer = client.post("/v2/models/softpool/infer", json=body)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    expected = soft_pool(X.double(), 2).float()
    assert output["shape"] == list(expected.shape)
    torch.testing.assert_close(torch.tensor(output["data"]), expected.flatten(), rtol=1e-6, atol=1e-6)
    assert client.get("/v2/models/softpool/ready").status_code == 200


def test_softpool_work_is_bounded_by_its_visit_cost(client: TestClient) -> None:
    """A 16×16 plane, kernel 8, stride 1: 9×9 × 64 visits × its cost; one under is refused with 413."""
    visits = 9 * 9 * 64 * poolcore.get_spec("softpool").visit_cost
    x = torch.ones(1, 1, 16, 16)
    with pytest.raises(
        PayloadTooLarge, match=rf"cost {visits} window visits .*for softpool\), over the limit"
    ):
        run_pool(x, "softpool", {"kernel_size": 8, "stride": 1}, limits=WorkLimits(max_work=visits - 1))
    run_pool(x, "softpool", {"kernel_size": 8, "stride": 1}, limits=WorkLimits(max_work=visits))


def test_softpool_on_the_page(client: TestClient) -> None:
    """The page's pickers offer it with both window forms, and the walk-through explains its windows."""
    config = client.get("/ui/config").json()
    for component in config["components"]:
        if component["type"] == "dropdown" and str(component["props"].get("elem_id", "")).endswith("-method"):
            assert "softpool" in [value for _, value in component["props"]["choices"]]
    assert window_forms("softpool") == ("kernel", "adaptive")
    assert not is_stochastic("softpool") and display_scale("softpool", {"kernel_size": 3}) == 1.0
    matrix = torch.tensor([[0.0, math.log(3.0)], [1.0, 2.0]], dtype=torch.float64)
    output = soft_pool(matrix[None], (1, 2))[0]
    page = explain(matrix, "softpool", {"kernel_size": [1, 2]}, output, (0, 0), "eval")
    assert "w = e^(a − max a) = [0.3333, 1]" in page  # weights 1/3 and 1: y = ln 3 · 3/4
    assert f"= {num(0.75 * math.log(3.0))}" in page


@pytest.mark.parametrize("method", poolcore.methods())
def test_the_difference_view_compares_with_an_average_of_the_same_shape(method: str) -> None:
    """The page's difference view compares each method with a reference it finds in the registry (no name
    in the page): a plain average (``avg`` or a preset of it) whose output has the method's shape."""
    reference = reference_of(method)
    spec = poolcore.get_spec(reference)
    assert reference == "avg" or spec.base == "avg", (method, reference)
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    for params in _param_sets(poolcore.get_spec(method))[:1]:
        ours = poolcore.get_spec(method)(x, {**params, "dims": 2})
        theirs = spec(x, {**params, "dims": 2})
        assert ours.shape == theirs.shape, (method, reference, params)
