"""The page's API as Gradio's own client sees it, against a real server: exactly the three public
endpoints, the input first, every other parameter named after what it sets and with a default, plain
values back; and the README's gradio_client snippet (:data:`README_SNIPPET`), run as it is written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import poolcore
from service.ui.imaging import ASSETS

from .support import ROOT, live_server

pytest.importorskip("gradio_client")


# The README's section on calling the page from Python (the lead moves it there; this test then reads it).
def _readme_snippet() -> str:
    """The README's gradio_client block (the one python block of its HTTP API section)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## HTTP API")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the HTTP API section should hold one python block, the gradio_client one"
    return str(blocks[0])


README_SNIPPET = _readme_snippet()

PUBLIC = {"/pool_image", "/compare", "/pool_tensor"}


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with live_server() as url:
        yield url


@pytest.fixture(scope="module")
def client(base: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gradio_client import Client

    return Client(f"{base}/ui/", verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def _no_updates(value: Any) -> None:
    assert "__type__" not in json.dumps(value, default=str), value


def test_view_api_lists_the_three_endpoints_with_named_defaults(client: Any) -> None:
    info = client.view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == PUBLIC and not info["unnamed_endpoints"]
    first = {"/pool_image": "image", "/compare": "image", "/pool_tensor": "matrix"}
    names = set()
    for endpoint, spec in info["named_endpoints"].items():
        params = spec["parameters"]
        assert params[0]["parameter_name"] == first[endpoint]
        for param in params[1:]:
            assert param["parameter_has_default"], (endpoint, param["parameter_name"])
            assert not param["parameter_name"].startswith("param_"), endpoint
            names.add(param["parameter_name"])
        assert spec["description"]
    fields = {name for m in poolcore.methods() for name in poolcore.get_spec(m).params.model_fields}
    assert {"method", "kernel_size", "stride", "output_size", "mode", "seed"} <= names
    assert names - {"method", "window", "mode", "seed", "view"} <= fields  # each sets a method parameter


def test_pool_image_through_the_client(client: Any) -> None:
    from gradio_client import handle_file

    path = ASSETS / "cells.png"
    result = client.predict(
        handle_file(str(path)), method="max", kernel_size="3", stride="2", api_name="/pool_image"
    )
    _no_updates(result)
    pooled, summary, seed = result
    x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    expected = (F.max_pool2d(x[None], 3, 2)[0] * 255).round().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(pooled)), expected.astype(np.uint8))
    assert "→ **output** 3×47×47" in summary and seed == ""


def test_compare_through_the_client(client: Any) -> None:
    from gradio_client import handle_file

    result = client.predict(
        handle_file(str(ASSETS / "gradient.png")), view="zoomed crop", api_name="/compare"
    )
    _no_updates(result)
    tiles, summary = result
    assert [t["caption"].split(" · ")[0] for t in tiles] == poolcore.methods()
    assert all(os.path.exists(t["image"]) for t in tiles)
    assert f"{len(tiles)} of {len(tiles)} methods ran" in summary


def test_pool_tensor_through_the_client(client: Any) -> None:
    rows = [[1.0, 2.0], [3.0, 4.0]]
    result = client.predict(
        {"headers": ["a", "b"], "data": rows}, method="avg", kernel_size="2", api_name="/pool_tensor"
    )
    _no_updates(result)
    table, summary, _ = result
    assert table["data"] == [[2.5]] and "**input** 1×2×2" in summary
    # Train mode draws a seed and says which; the same seed gives the same sample.
    _, _, drawn = client.predict(method="stochastic", mode="train", api_name="/pool_tensor")
    first = client.predict(method="stochastic", mode="train", seed=drawn, api_name="/pool_tensor")
    again = client.predict(method="stochastic", mode="train", seed=drawn, api_name="/pool_tensor")
    assert drawn.isdigit() and first[0] == again[0]


def test_helpers_are_not_callable_by_the_client(client: Any) -> None:
    with pytest.raises(ValueError):
        client.predict("http://x", api_name="/snippet_fn")


def test_readme_snippet_runs_as_written(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snippet, with only the server's address changed, from the repository root."""
    code = README_SNIPPET.replace("http://127.0.0.1:8000", base)
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert any(line.startswith("**input** 3×96×96 → **output** 3×24×24") for line in lines)
    assert lines[-2:] == [str(poolcore.methods()), "[[1.652]]"]
    # What it prints is what the README shows under it.
    from tests.test_readme import _matches

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"```python\n" + re.escape(README_SNIPPET) + r"```\n```text\n(.*?)```", text, re.S)
    assert shown is not None, "the README shows no output under its gradio_client block"
    expected = shown.group(1).replace("http://127.0.0.1:8000", base)
    assert _matches(expected, out.getvalue()), out.getvalue()


def test_the_api_page_points_nowhere_outside(client: Any, base: str) -> None:
    """``view_api()`` shows an example for each input; none may be a URL of another host (Gradio's own
    default image example is a GitHub URL)."""
    with contextlib.redirect_stdout(io.StringIO()):
        text = client.view_api(print_info=False, return_format="str")
    urls = re.findall(r"https?://[^\s'\")]+", text)
    assert all(url.startswith(base) for url in urls), urls
