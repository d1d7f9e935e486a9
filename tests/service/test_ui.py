"""The Gradio page in process: built from the registry, same numbers as torch, the service's error messages.

The page's button handlers are called as Gradio calls them (looked up by ``api_name`` on the Blocks);
references are torch's own ops on an image decoded independently with PIL and numpy, and closed forms.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import IO, Any

import anyio.to_thread
import gradio as gr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import BaseModel, Field

import poolcore
import poolcore.registry as registry
from service.app import create_app
from service.config import Settings
from service.pooling import run_pool
from service.ui import controls, snippets
from service.ui.compare_tab import tiles_html
from service.ui.handlers import PageError, Runtime, parse_matrix, pool_image, pool_tensor
from service.ui.imaging import ASSETS, example_paths
from service.ui.page import SEED_MATRIX, build_blocks

HAS_STOCHASTIC = "stochastic" in poolcore.methods()
needs_stochastic = pytest.mark.skipif(
    not HAS_STOCHASTIC, reason="stochastic is not registered on this branch yet"
)

# The 3×3 example window: Σa²/Σa = 16.52 / 10.
SEED_EVAL = sum(v * v for row in SEED_MATRIX for v in row) / sum(v for row in SEED_MATRIX for v in row)


def runtime(device: torch.device | str = "cpu", **settings: Any) -> Runtime:
    return Runtime.of_state(
        SimpleNamespace(device=torch.device(device), settings=SimpleNamespace(**settings))
    )


def load(path: str | Path | IO[bytes]) -> Image.Image:
    """An image read into memory, its file closed."""
    with Image.open(path) as image:
        return image.copy()


def reference_tensor(path: str | Path) -> torch.Tensor:
    """C×H×W float32 in [0, 1] straight from PIL and numpy, not through the page's helpers."""
    array = np.asarray(load(path), dtype=np.float32) / 255.0
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())


@pytest.fixture(scope="module")
def blocks() -> gr.Blocks:
    return build_blocks(runtime())


def event(blocks: gr.Blocks, api_name: str, **values: Any) -> list[Any]:
    """Call a button's handler as Gradio would: every input at its initial value, ``values`` (by elem_id,
    dashes as underscores) overriding. Returns the outputs, keyed by position."""
    return _call(next(f for f in blocks.fns.values() if f.api_name == api_name), **values)


def helper(blocks: gr.Blocks, output_id: str, *, state: Any = None, **values: Any) -> list[Any]:
    """Call the page's own helper that fills the component ``output_id`` (a snippet, the walk-through);
    ``state`` is the value of its gr.State input, if it has one."""
    fn = next(
        f
        for f in blocks.fns.values()
        if f.fn is not None
        and f.outputs
        and f.outputs[0].elem_id == output_id
        and any(isinstance(c, gr.State) for c in f.inputs) == (state is not None)
    )
    return _call(fn, state=state, **values)


def _call(fn: Any, *, state: Any = None, **values: Any) -> list[Any]:
    api_name = fn.api_name
    args = []
    for component in fn.inputs:
        key = (component.elem_id or "").replace("-", "_")
        value = values.pop(key) if key in values else getattr(component, "value", None)
        if isinstance(component, gr.State):
            value = state
        if isinstance(component, gr.Dataframe) and isinstance(value, dict):  # initial value, as sent
            value = component.preprocess(component.data_model(**value))
        args.append(value)
    if values:
        raise KeyError(f"no inputs {sorted(values)} in {api_name}")
    assert fn.fn is not None
    result = fn.fn(*args)
    return list(result) if isinstance(result, (list, tuple)) else [result]


def _value(update: Any) -> Any:
    return update.get("value") if isinstance(update, dict) else update


# ---- page structure ---------------------------------------------------------------------------------------
def test_mounted_at_ui_with_root_redirect() -> None:
    app = create_app()
    with TestClient(app) as client:
        root = client.get("/", follow_redirects=False)
        assert root.status_code in (302, 307) and root.headers["location"] == "/ui/"
        page = client.get("/ui/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        config = client.get("/ui/config").json()
    assert config["analytics_enabled"] is False
    dropdowns = {
        c["props"]["elem_id"]: c["props"]["choices"]
        for c in config["components"]
        if c["type"] == "dropdown" and str(c["props"].get("elem_id", "")).endswith("-method")
    }
    assert set(dropdowns) == {"image-method", "tensor-method"}
    for choices in dropdowns.values():
        assert [value for _, value in choices] == poolcore.methods()


def test_favicon_at_the_root_is_gradios_icon() -> None:
    with TestClient(create_app()) as client:
        redirect = client.get("/favicon.ico", follow_redirects=False)
        icon = client.get("/favicon.ico")
        gradios = client.get("/ui/favicon.ico")
    assert redirect.status_code in (302, 307) and redirect.headers["location"] == "/ui/favicon.ico"
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/")
    assert icon.content == gradios.content and icon.content


def test_every_parameter_of_every_method_has_a_widget(blocks: gr.Blocks) -> None:
    ids = {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    for method in poolcore.methods():
        model = poolcore.get_spec(method).params
        for name in model.model_fields:
            if name in controls.HIDDEN:
                continue
            assert f"image-param-{name}" in ids, (method, name)
            assert f"tensor-param-{name}" in ids, (method, name)


class _TemperatureParams(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}
    output_size: int = Field(2, ge=1, description="Adaptive output size.")
    temperature: float = Field(1.5, ge=0.0, le=10.0, description="Softness of the window.")
    sharp: bool = False


@pytest.fixture
def extra_method(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A method the UI has never heard of, registered for one test."""
    spec = poolcore.MethodSpec(
        "softpool_test",
        "A test-only method.",
        lambda x, output_size, temperature, sharp: F.adaptive_avg_pool2d(x * temperature, output_size),
        _TemperatureParams,
    )
    monkeypatch.setattr(registry, "REGISTRY", MappingProxyType({**registry.REGISTRY, spec.name: spec}))
    yield spec.name


def test_a_new_method_shows_up_without_ui_code(extra_method: str) -> None:
    blocks = build_blocks(runtime())
    by_id: dict[str | None, Any] = {
        b.elem_id: b for b in blocks.blocks.values() if getattr(b, "elem_id", None)
    }
    assert extra_method in [v for _, v in by_id["image-method"].choices]
    slider = by_id["image-param-temperature"]
    assert isinstance(slider, gr.Slider)
    assert (slider.minimum, slider.maximum) == (0.0, 10.0)
    assert isinstance(by_id["image-param-sharp"], gr.Checkbox)
    fields = {f.name: f for f in controls.fields_of(extra_method)}
    assert fields["temperature"].default == 1.5 and "≤ 10" in fields["temperature"].info()
    # And it runs from the page: temperature 2 doubles adaptive average pooling.
    image = str(ASSETS / "gradient.png")
    outputs = event(
        blocks, "pool_image", image_input=image, image_method=extra_method, image_param_temperature=2.0
    )
    expected = F.adaptive_avg_pool2d(reference_tensor(ASSETS / "gradient.png") * 2.0, 2)
    got = reference_from_image(_value(outputs[0]))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, (expected.clamp(0, 1) * 255).round() / 255, atol=1e-6, rtol=0)


def reference_from_image(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())


def test_fields_follow_the_schema() -> None:
    avg = {f.name: f for f in controls.fields_of("avg")}
    assert "dims" not in avg
    assert avg["kernel_size"].kind == "size" and avg["kernel_size"].minimum == 1
    assert avg["padding"].minimum == 0 and avg["padding"].default == 0
    assert avg["count_include_pad"].kind == "bool" and avg["count_include_pad"].default is True
    adaptive = {f.name: f for f in controls.fields_of("adaptive_avg")}
    assert adaptive["output_size"].required
    assert controls.window_forms("avg") == ("kernel", "adaptive")
    assert controls.window_forms("adaptive_max") == ("adaptive",)
    assert controls.window_forms("global_avg") == ()


def test_collect_params_keeps_one_window_form_and_drops_defaults() -> None:
    values = {
        "kernel_size:size": "2,3",
        "stride:size": "",
        "padding:size": "0",
        "ceil_mode:bool": True,
        "output_size:size": "null,7",
        "count_include_pad:bool": True,
    }
    assert controls.collect_params("avg", "kernel", values) == {"kernel_size": (2, 3), "ceil_mode": True}
    assert controls.collect_params("avg", "adaptive", values) == {"output_size": (None, 7)}
    assert controls.parse_text("abc") == "abc"  # left for validation to name


# ---- same numbers as torch --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", example_paths(), ids=lambda p: Path(p).stem)
@pytest.mark.parametrize(("method", "reference"), [("avg", F.avg_pool2d), ("max", F.max_pool2d)])
def test_image_tab_matches_torch(blocks: gr.Blocks, path: str, method: str, reference: Any) -> None:
    outputs = event(
        blocks,
        "pool_image",
        image_input=str(path),
        image_method=method,
        image_param_kernel_size="3",
        image_param_stride="2",
    )
    image, info = _value(outputs[0]), _value(outputs[1])
    expected = reference(reference_tensor(path).unsqueeze(0), 3, 2)[0]
    assert image.size == (expected.shape[-1], expected.shape[-2])  # the true pooled size, not upscaled
    torch.testing.assert_close(reference_from_image(image), (expected * 255).round() / 255, atol=1e-6, rtol=0)
    shape = "×".join(map(str, expected.shape))
    assert f"→ **output** {shape}" in info and "**device** cpu" in info and " ms" in info


def test_compare_tab_runs_every_method(blocks: gr.Blocks) -> None:
    gallery, text, calls = event(blocks, "compare", compare_input=str(ASSETS / "checkerboard.png"))
    labels = [item[1] if isinstance(item, tuple) else item.caption for item in _value(gallery)]
    assert [label.split(" · ")[0] for label in labels] == poolcore.methods()
    assert f"{len(poolcore.methods())} of {len(poolcore.methods())} methods ran" in _value(text)
    x = reference_tensor(ASSETS / "checkerboard.png").unsqueeze(0)
    shapes = {label.split(" · ")[0]: label.split(" · ")[1] for label in labels}
    assert shapes["avg"] == "×".join(map(str, F.avg_pool2d(x, 4)[0].shape))
    assert shapes["global_max"] == "1×1×1"
    assert shapes["adaptive_avg"] == "1×16×16"
    (code,) = helper(blocks, "compare-snippet", state=calls)
    assert "/pool/adaptive_max?output_size=16" in _value(code)


def test_pool_image_matches_poolcore_directly(device: torch.device) -> None:
    image = str(ASSETS / "rings.png")  # RGBA keeps its 4 channels
    result = pool_image(runtime(device), image, "max", {"kernel_size": 4})
    direct = poolcore.pool(reference_tensor(image), "max", kernel_size=4, dims=2)
    assert result.input_shape == (4, 64, 64)
    assert result.outcome.device == str(device) and result.outcome.output.device.type == "cpu"
    torch.testing.assert_close(result.outcome.output, direct, rtol=0, atol=0)


@needs_stochastic
def test_tensor_tab_gives_the_seed_value(blocks: gr.Blocks) -> None:
    outputs = event(blocks, "pool_tensor", tensor_method="stochastic", tensor_param_kernel_size="3")
    result, info = _value(outputs[0]), _value(outputs[1])
    assert result == [[pytest.approx(SEED_EVAL, abs=1e-6)]]
    assert round(SEED_EVAL, 3) == 1.652
    assert "**output** 1×1×1" in info


@needs_stochastic
def test_tensor_tab_train_mode_is_reproducible_with_the_shown_seed(blocks: gr.Blocks) -> None:
    first = event(blocks, "sample_tensor", tensor_method="stochastic", tensor_mode="train")
    seed = _value(first[2])
    assert seed and int(seed) >= 0
    again = event(
        blocks,
        "pool_tensor",
        tensor_method="stochastic",
        tensor_mode="train",
        tensor_seed=seed,
    )
    assert _value(again[0]) == _value(first[0])
    x = parse_matrix(SEED_MATRIX).unsqueeze(0)
    direct = run_pool(x, "stochastic", {"kernel_size": 3, "dims": 2}, mode="train", seed=int(seed))
    assert _value(first[0]) == [[round(float(direct.output.flatten()[0]), 6)]]
    # The sampled value is one of the window's positive entries.
    sampled = _value(first[0])[0][0]
    assert any(sampled == pytest.approx(v) for row in SEED_MATRIX for v in row if v > 0)


@needs_stochastic
def test_sampling_frequencies_match_the_exact_probabilities(device: torch.device) -> None:
    """Chi-square goodness of fit of 20 000 seeded draws to p = a / Σa (significance 0.001)."""
    from scipy.stats import chisquare

    from service.ui.sampling import sample_counts, window_probabilities

    x = torch.tensor(SEED_MATRIX)
    windows = window_probabilities(x, "stochastic", {"kernel_size": 3})
    assert len(windows) == 1 and windows[0].probabilities is not None
    exact = torch.tensor(SEED_MATRIX, dtype=torch.float64) / 10.0
    torch.testing.assert_close(windows[0].probabilities, exact)
    (counts,) = sample_counts(
        x, "stochastic", {"kernel_size": 3}, windows, draws=20000, seed=1234, device=device
    )
    assert counts.sum() == 20000
    assert counts[exact == 0].sum() == 0  # zeros are never chosen
    positive = exact > 0
    _, p_value = chisquare(counts[positive].numpy(), exact[positive].numpy() * 20000)
    assert p_value > 1e-3


def test_window_probabilities_cover_overlapping_windows() -> None:
    from service.ui.sampling import window_probabilities

    x = torch.arange(1.0, 17.0).reshape(4, 4)
    windows = window_probabilities(x, "avg", {"kernel_size": 3, "stride": 1})
    assert [w.index for w in windows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for w in windows:
        block = x[w.rows.start : w.rows.stop, w.cols.start : w.cols.stop].double()
        assert w.probabilities is not None
        torch.testing.assert_close(w.probabilities, block / block.sum())


def test_window_probabilities_and_draws_of_a_dilated_window() -> None:
    """Kernel 2 at dilation 3 on a 5×5 input: rows and cols {0, 3} and {1, 4}; the draws land on those."""
    from service.ui.sampling import sample_counts, window_probabilities

    x = torch.arange(1.0, 26.0).reshape(5, 5)
    params = {"kernel_size": 2, "stride": 1, "dilation": 3}
    windows = window_probabilities(x, "stochastic", params)
    assert [w.index for w in windows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (list(windows[1].rows), list(windows[1].cols)) == ([0, 3], [1, 4])
    for w in windows:
        block = x[[[r] for r in w.rows], list(w.cols)].double()
        assert w.probabilities is not None
        torch.testing.assert_close(w.probabilities, block / block.sum())
    counts = sample_counts(x, "stochastic", params, windows, draws=200, seed=5)
    assert all(int(c.sum()) == 200 for c in counts)  # every draw is one of the window's positions
    assert "dilation" not in controls.visible_names("avg", "adaptive")
    assert "dilation" in controls.visible_names("avg", "kernel")


# ---- errors: the service's own message --------------------------------------------------------------------
def _service_message(x: torch.Tensor, method: str, params: dict[str, Any]) -> str:
    with pytest.raises((ValueError, TypeError)) as error:
        run_pool(x, method, params)
    return str(error.value)


def test_window_larger_than_the_image_shows_the_service_message(blocks: gr.Blocks) -> None:
    image = str(ASSETS / "checkerboard.png")
    outputs = event(blocks, "pool_image", image_input=image, image_param_kernel_size="100")
    expected = _service_message(reference_tensor(image), "avg", {"kernel_size": 100, "dims": 2})
    assert _value(outputs[0]) is None
    assert _value(outputs[1]) == f"**Error 422**: {expected}"
    assert "Traceback" not in _value(outputs[1])


def test_invalid_parameter_shows_the_validation_message(blocks: gr.Blocks) -> None:
    image = str(ASSETS / "gradient.png")
    outputs = event(blocks, "pool_image", image_input=image, image_param_kernel_size="abc")
    assert _value(outputs[1]).startswith("**Error 422**: invalid parameters for 'avg': kernel_size")
    outputs = event(blocks, "pool_image", image_input=image, image_seed="x", image_method="max")
    assert "seed must be an integer (got 'x')" in _value(outputs[1])


@needs_stochastic
def test_negative_matrix_for_stochastic_shows_the_service_message(blocks: gr.Blocks) -> None:
    rows = [[-1.0, 2.0], [3.0, 4.0]]
    outputs = event(
        blocks, "pool_tensor", tensor_input=rows, tensor_method="stochastic", tensor_param_kernel_size="2"
    )
    expected = _service_message(torch.tensor([rows]), "stochastic", {"kernel_size": 2, "dims": 2})
    assert _value(outputs[0]) is None
    assert _value(outputs[1]) == f"**Error 422**: {expected}"


def test_limits_come_from_the_settings() -> None:
    image = str(ASSETS / "cells.png")
    with pytest.raises(PageError) as error:
        pool_image(runtime(max_image_pixels=100), image, "avg", {"kernel_size": 2})
    assert error.value.status == 413 and "over the limit of 100 pixels" in error.value.message
    with pytest.raises(PageError) as error:
        pool_tensor(runtime(max_elements=8), torch.ones(1, 3, 3), "avg", {"kernel_size": 3})
    assert error.value.status == 413
    with pytest.raises(PageError) as error:
        pool_tensor(runtime(), torch.ones(1, 3, 3), "no_such_method", {})
    assert error.value.status == 404 and "known methods" in error.value.message


def test_images_get_the_routes_answers(tmp_path: Path) -> None:
    """The page decodes with the service's image codec: the route's status and message for a bomb, a
    file that is not an image and an element limit, compared with the route itself."""
    from .bad_inputs import bomb_png

    not_png = tmp_path / "not.png"
    not_png.write_bytes(b"\x89PNG but not really")
    cases: list[tuple[bytes, dict[str, Any]]] = [
        (bomb_png(100_000, 100_000), {}),
        (not_png.read_bytes(), {}),
        ((ASSETS / "cells.png").read_bytes(), {"max_elements": 100}),
    ]
    for body, settings in cases:
        with pytest.raises(PageError) as error:
            pool_image(runtime(**settings), body, "avg", {"kernel_size": 2})
        with TestClient(create_app(Settings(device="cpu", **settings))) as client:
            answer = client.post(
                "/pool/avg?kernel_size=2", content=body, headers={"Content-Type": "image/png"}
            )
        assert (error.value.status, error.value.message) == (answer.status_code, answer.json()["detail"])
        assert error.value.status in (400, 413)
    with pytest.raises(PageError) as error:  # and from a file path, as Gradio hands uploads over
        pool_image(runtime(), str(not_png), "avg", {"kernel_size": 2})
    assert error.value.status == 400 and error.value.message.startswith("malformed image")


def test_matrix_cells_must_be_numbers() -> None:
    with pytest.raises(PageError, match=r"entry \[1, 0\] is not a number \(got 'x'\)"):
        parse_matrix([[1, 2], ["x", 3]])


# ---- API snippets -----------------------------------------------------------------------------------------
def test_snippets_use_the_route_syntax() -> None:
    params = snippets.request_params({"kernel_size": (2, 3), "output_size": (None, 7)}, "train", 5)
    text = snippets.image_snippet("http://127.0.0.1:9", "max", params)
    assert "'http://127.0.0.1:9/pool/max?kernel_size=2,3&output_size=null,7&mode=train&seed=5'" in text
    assert "--data-binary @input.png" in text and "Content-Type: image/png" in text
    assert "params={'kernel_size': '2,3', 'output_size': 'null,7', 'mode': 'train', 'seed': '5'}" in text
    body = snippets.json_snippet("http://h", "avg", [[[1.0, 2.0]]], {"kernel_size": (1, 2)})
    payload = json.loads(re.search(r"-d '(.*)'", body).group(1))  # type: ignore[union-attr]
    assert payload == {"data": [[[1.0, 2.0]]], "params": {"kernel_size": [1, 2]}}


def test_snippet_reflects_what_ran(blocks: gr.Blocks) -> None:
    outputs = event(
        blocks,
        "pool_image",
        image_input=str(ASSETS / "gradient.png"),
        image_method="max",
        image_param_kernel_size="2,4",
    )
    assert _value(outputs[2]) == ""  # max draws nothing: no seed
    (code,) = helper(
        blocks,
        "image-snippet",
        origin="http://example.test:1234",
        image_method="max",
        image_param_kernel_size="2,4",
    )
    assert "curl -X POST 'http://example.test:1234/pool/max?kernel_size=2,4'" in code


def _has_pool_route(app: Any) -> bool:
    return "/pool/{method}" in app.openapi().get("paths", {})


def test_image_snippet_request_gives_the_page_output_over_the_route(blocks: gr.Blocks) -> None:
    """What the snippet sends, sent to the real route, answers with the same pixels as the page."""
    app = create_app()
    if not _has_pool_route(app):
        pytest.skip("the /pool route is not on this branch yet")
    path = ASSETS / "cells.png"
    outputs = event(blocks, "pool_image", image_input=str(path), image_param_kernel_size="2,3")
    (code,) = helper(blocks, "image-snippet", image_param_kernel_size="2,3")
    url = re.search(r"curl -X POST '([^']+)'", code).group(1)  # type: ignore[union-attr]
    route = url.split("://", 1)[1].split("/", 1)[1]
    with TestClient(app) as client:
        response = client.post("/" + route, content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    from io import BytesIO

    over_http = np.asarray(load(BytesIO(response.content)))
    assert np.array_equal(over_http, np.asarray(_value(outputs[0])))


@needs_stochastic
def test_json_snippet_request_gives_the_page_output_over_the_route(blocks: gr.Blocks) -> None:
    app = create_app()
    if not _has_pool_route(app):
        pytest.skip("the /pool route is not on this branch yet")
    (code,) = helper(blocks, "tensor-snippet", tensor_method="stochastic", tensor_param_kernel_size="3")
    body = json.loads(re.search(r"-d '(.*)'", code).group(1))  # type: ignore[union-attr]
    assert body["params"]["dims"] == 2  # the (1, H, W) matrix is pooled in 2d, and the snippet says so
    with TestClient(app) as client:
        response = client.post("/pool/stochastic", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == [[[pytest.approx(SEED_EVAL, abs=1e-6)]]]


@needs_stochastic
def test_too_many_draws_are_refused_but_the_result_still_shows(blocks: gr.Blocks) -> None:
    rows = [[float((i * 7 + j) % 5) for j in range(30)] for i in range(30)]
    outputs = event(blocks, "pool_tensor", tensor_input=rows, tensor_method="stochastic")
    assert _value(outputs[0]) is not None
    walk, *_ = helper(blocks, "tensor-walk", state=outputs[3], tensor_draws=20000)
    assert "**Error 413**: too many draws" in walk and "Output [0,0]" in walk


def test_sample_again_shows_the_randomness_of_mixed(blocks: gr.Blocks) -> None:
    if "mixed" not in poolcore.methods():
        pytest.skip("mixed is not registered on this branch")
    image = str(ASSETS / "cells.png")
    common = {"image_input": image, "image_method": "mixed", "image_mode": "train"}
    first = event(blocks, "sample_image", **common)
    second = event(blocks, "sample_image", **common)
    seeds = [_value(first[2]), _value(second[2])]
    assert all(s and s.isdigit() for s in seeds) and seeds[0] != seeds[1]
    a, b = np.asarray(_value(first[0])), np.asarray(_value(second[0]))
    assert a.shape == b.shape == (24, 24, 3) and not np.array_equal(a, b)
    replay = event(blocks, "pool_image", image_seed=seeds[0], **common)
    assert np.array_equal(np.asarray(_value(replay[0])), a)  # the shown seed reproduces the sample


# ---- one concurrency limit for the route and the page ------------------------------------------------------
class _OneSize(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}
    output_size: int = Field(1, ge=1)


@pytest.mark.parametrize("first", ["route", "page"])
def test_route_and_page_share_one_concurrency_limit(monkeypatch: pytest.MonkeyPatch, first: str) -> None:
    """With ``max_concurrency=1``, a call held inside the operator (from the route or the page) makes the
    other wait in the app's worker queue instead of entering the operator. No timing: the waiting call is
    seen in the queue, and the count of operator entries is checked while it waits."""
    entries: list[str] = []
    release = threading.Event()

    def blocking(x: torch.Tensor, output_size: int) -> torch.Tensor:
        entries.append(threading.current_thread().name)
        if len(entries) == 1:
            assert release.wait(60), "the test never released the first call"
        return F.adaptive_avg_pool2d(x, output_size)

    spec = poolcore.MethodSpec("block_test", "Waits for the test on its first call.", blocking, _OneSize)
    monkeypatch.setattr(registry, "REGISTRY", MappingProxyType({**registry.REGISTRY, spec.name: spec}))
    data = [[[1.0, 2.0], [3.0, 4.0]]]
    app = create_app(Settings(device="cpu", max_concurrency=1))
    results: dict[str, Any] = {}
    with TestClient(app) as client:
        workers = app.state.workers
        portal = client.portal
        assert portal is not None  # set while the client is open
        runtime = Runtime.of_state(app.state)

        def route() -> None:
            results["route"] = client.post("/pool/block_test", json={"data": data})

        def page() -> None:
            # As Gradio calls a sync handler: in an anyio worker thread of the app's event loop.
            call = partial(pool_tensor, runtime, torch.tensor(data), "block_test", {})
            results["page"] = portal.call(anyio.to_thread.run_sync, call)

        calls = {"route": route, "page": page}
        second = "page" if first == "route" else "route"
        threads = {name: threading.Thread(target=calls[name]) for name in calls}
        try:
            threads[first].start()
            _wait_for(lambda: len(entries) == 1, "the first call to enter the operator")
            threads[second].start()
            # Either it queues for the one worker thread, or (without a shared limit) it enters the operator.
            _wait_for(
                lambda: workers.pending() == 1 or len(entries) > 1,
                "the second call to queue or to enter",
            )
            assert len(entries) == 1  # the second call waits in the queue, not in the operator
        finally:
            release.set()
            for thread in threads.values():
                thread.join(60)
    assert len(entries) == 2
    expected = F.adaptive_avg_pool2d(torch.tensor(data), 1)
    assert results["route"].status_code == 200, results["route"].text
    assert results["route"].json()["data"] == expected.tolist()
    torch.testing.assert_close(results["page"].output, expected)


def _wait_for(condition: Any, what: str) -> None:
    """Poll ``condition`` until it holds; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.005)


# ---- what the page says, and when ----------------------------------------------------------------------
def test_help_texts_say_only_what_helps() -> None:
    """No overflow guard (≤ 2147483647) on every box; the window's size is required, not "blank for the
    default" (blank is a 422); every field has a description of its own."""
    for method in poolcore.methods():
        for fld in controls.fields_of(method):
            assert "2147483647" not in fld.info(), (method, fld.name)
            assert fld.description, (method, fld.name)
            if fld.name in ("kernel_size", "output_size"):
                assert "blank for the default" not in fld.info(), (method, fld.name)
    stride = next(f for f in controls.fields_of("avg") if f.name == "stride")
    assert "blank for the default" in stride.info()  # blank stride is kernel_size: that one is true
    with pytest.raises(Exception):  # noqa: B017 - whatever the route raises, blank kernel_size is refused
        run_pool(torch.ones(1, 1, 4, 4), "avg", {})


def test_building_the_page_runs_no_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's first values come from load events: building it (at app start-up) pools nothing."""
    import service.ui.handlers as handlers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an operator ran while the page was built")

    monkeypatch.setattr(handlers, "run_pool", refuse)
    build_blocks(runtime())


def test_a_method_that_trains_keeps_the_mode_shown(blocks: gr.Blocks) -> None:
    """Switching to stochastic or mixed shows the mode radio with a choice made (eval at first), never
    with neither selected; a method that does not train runs in eval."""
    fn = next(
        f
        for f in blocks.fns.values()
        if f.fn is not None
        and f.fn.__name__ == "on_method"
        and any(c.elem_id == "image-mode" for c in f.outputs)
    )
    panel = fn.fn.__self__  # type: ignore[union-attr]
    for method in poolcore.methods():
        updates = panel.on_method(method, "kernel", *(w.value for w in panel.widgets.values()))
        mode = updates[-2]
        if poolcore.get_spec(method).takes_training:
            assert mode.get("visible") is True and mode.get("value", "kept") is not None, method
        else:
            assert mode == {"__type__": "update", "visible": False, "value": "eval"}, method


def test_image_tab_shows_lp_scaled_and_global_values(blocks: gr.Blocks) -> None:
    """Sum-form lp is shown divided by n^(1/p) and says so (not blown out to white); a global result
    names its per-channel values, checked against torch's own means."""
    path = ASSETS / "cells.png"
    image, info, _ = event(
        blocks, "pool_image", image_input=str(path), image_method="lp", image_param_kernel_size="4"
    )
    x = reference_tensor(path).unsqueeze(0)
    expected = F.lp_pool2d(x, 2.0, 4)[0] / 4.0  # n = 16 inputs per window, p = 2: n^(1/p) = 4
    torch.testing.assert_close(
        reference_from_image(_value(image)),
        (expected.clamp(0, 1) * 255).round() / 255,
        atol=1.01 / 255,
        rtol=0,
    )
    assert "÷ n^(1/p) = ÷ 4" in _value(info)
    _, info, _ = event(blocks, "pool_image", image_input=str(path), image_method="global_avg")
    means = x[0].mean(dim=(1, 2)).tolist()
    assert f"R {means[0]:.3f} G {means[1]:.3f} B {means[2]:.3f}" in _value(info)


def test_compare_reports_a_shared_mistake_once(blocks: gr.Blocks) -> None:
    _, text, _ = event(
        blocks, "compare", compare_input=str(ASSETS / "checkerboard.png"), compare_kernel_size="0"
    )
    text = _value(text)
    problem_lines = [line for line in text.splitlines() if line.startswith("- ")]
    sliding = [m for m in poolcore.methods() if "kernel" in controls.window_forms(m)]
    assert len(problem_lines) == 1, text
    assert all(f"`{m}`" in problem_lines[0] for m in sliding)


class TestTilesFromTheCache:
    """The Compare tab's tiles read the gallery's images back from Gradio's cache, where Gradio rewrites
    a content-hashed file in place whenever another event produces the same picture."""

    @staticmethod
    def _png(picture: Image.Image) -> bytes:
        stream = io.BytesIO()
        picture.save(stream, format="PNG")
        return stream.getvalue()

    def test_an_image_being_rewritten_is_read_whole(self, tmp_path: Path) -> None:
        picture = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
        data = self._png(picture)
        path = tmp_path / "image.png"
        path.write_bytes(data[: len(data) // 2])  # as another event's rewrite leaves it for a moment
        writer = threading.Timer(0.05, path.write_bytes, args=(data,))
        writer.start()
        try:
            shown = tiles_html([(str(path), "max · 8×8")])
        finally:
            writer.join()
        assert base64.b64encode(data).decode() in shown

    def test_an_image_that_stays_broken_still_raises(self, tmp_path: Path) -> None:
        path = tmp_path / "image.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n")  # a PNG signature and nothing else
        with pytest.raises(OSError, match="cannot identify image file"):
            tiles_html([(str(path), "max · 8×8")])
