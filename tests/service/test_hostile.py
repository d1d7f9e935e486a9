"""The hostile corpus (tests/service/hostile/, written by its make_corpus.py): each file sent as a client
would, with the status and the piece of ``detail`` the service must answer (issue 9, findings 6, 7, 8
and 12). Every answer is ``{"detail": str}``, short (no echo of what was sent), and no Pillow plugin of a
format the API does not name is ever opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import BmpImagePlugin, EpsImagePlugin, GifImagePlugin, IcoImagePlugin, TiffImagePlugin

from service.app import create_app
from service.pooling import run_pool

from .support import test_settings

CORPUS = Path(__file__).resolve().parent / "hostile"
NPY = "application/x-npy"
JSON = "application/json"
PNG = "image/png"
LONG_NAME = "a" * 60_000
MAX_DETAIL = 512  # characters: a message names the problem, it does not echo the request


@dataclass(frozen=True)
class Hostile:
    file: str
    content_type: str  # "multipart:<part type>" sends the file as the form's ``file`` part
    query: dict[str, str]
    status: int
    fragment: str  # lower case
    method: str = "avg"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        kind = self.content_type.replace("/", "-").replace(":", "-")
        return f"{self.file}-{kind}-{self.status}" + ("-" + self.method[:8] if self.method != "avg" else "")


K2 = {"kernel_size": "2"}
TABLE = [
    # finding 6: client mistakes that were a 500
    Hostile("npy_negative_dims.npy", NPY, K2, 400, "negative dimension"),
    Hostile("npy_empty_huge_dim.npy", NPY, K2, 413, "length 4611686018427387904"),
    Hostile(
        "good.npy", NPY, {**K2, "stride": str(10**18)}, 422, "stride: input should be less than or equal"
    ),
    Hostile("good.npy", NPY, {"output_size": f"2,{10**18}"}, 422, "output_size: input should be less"),
    Hostile("good.npy", NPY, {"kernel_size": "true"}, 422, "kernel_size must be a number, not a boolean"),
    Hostile(
        "good.npy",
        NPY,
        {"kernel_size": ",".join(["1"] * 5000)},
        422,
        "at most 3 values, one per spatial dim, not 5000",
    ),
    Hostile(
        "json_stride_1e18.json", JSON, {}, 422, "stride: input should be less than or equal to 2147483647"
    ),
    Hostile("json_output_size_1e18.json", JSON, {}, 422, "output_size: input should be less than or equal"),
    Hostile("json_dtype_list.json", JSON, {}, 422, '"dtype" must be one of float16, float32, float64'),
    Hostile("json_dtype_object.json", JSON, {}, 422, '"dtype" must be one of float16, float32, float64'),
    Hostile("json_kernel_size_true.json", JSON, {}, 422, "kernel_size must be a number, not a boolean"),
    Hostile("json_kernel_size_list_true.json", JSON, {}, 422, "kernel_size must be a number, not a boolean"),
    Hostile("json_p_true.json", JSON, {}, 422, "p must be a number, not a boolean", method="gem"),
    # finding 7: a result its dtype cannot hold is a 422, never a 200 with null (or inf) in it
    Hostile(
        "npy_float16_lp_overflow.npy",
        NPY,
        K2,
        422,
        "result of lp is not finite: 4 values overflow float16",
        method="lp",
        headers={"accept": JSON},
    ),
    Hostile("npy_float16_lp_overflow.npy", NPY, K2, 422, "overflow float16", method="lp"),
    # finding 8: only the format the Content-Type names is opened
    Hostile("image.gif", PNG, K2, 415, "gif data, not png (content-type image/png)"),
    Hostile("image.tiff", PNG, K2, 415, "tiff data, not png"),
    Hostile("image.bmp", PNG, K2, 415, "bmp data, not png"),
    Hostile("image.ico", PNG, K2, 415, "ico data, not png"),
    Hostile("image.eps", PNG, K2, 415, "eps data, not png"),
    Hostile("image.eps", "image/jpeg", K2, 415, "eps data, not jpeg"),
    Hostile("image.png", "image/jpeg", K2, 415, "png data, not jpeg (content-type image/jpeg)"),
    Hostile("image.gif", f"multipart:{PNG}", K2, 415, "gif data, not png"),
    Hostile("image.eps", f"multipart:{PNG}", K2, 415, "eps data, not png"),
    Hostile("image.tiff", "multipart:image/tiff", K2, 415, "content-type 'image/tiff' is not accepted"),
    Hostile("image.eps", "multipart:image/x-eps", K2, 415, "is not accepted"),
    # finding 12
    Hostile("good.npy", NPY, K2, 406, "accept", headers={"accept": "image/png;q=nan"}),
    Hostile("good.npy", NPY, K2, 406, "accept", headers={"accept": "image/png;q=inf"}),
    Hostile("good.npy", NPY, K2, 404, "unknown pooling method 'aaaa", method=LONG_NAME),
]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(test_settings()), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture()
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The formats whose Pillow plugin was asked to open a file, and any Ghostscript run: must stay
    empty. The plugins still run when reached, so a test shows what they would have done."""
    calls: list[str] = []
    plugins: list[type[Any]] = [
        GifImagePlugin.GifImageFile,
        TiffImagePlugin.TiffImageFile,
        BmpImagePlugin.BmpImageFile,
        IcoImagePlugin.IcoImageFile,
        EpsImagePlugin.EpsImageFile,
    ]
    for plugin in plugins:
        original = plugin._open

        def recorded(self: Any, _original: Any = original, _name: str = plugin.format) -> Any:
            calls.append(_name)
            return _original(self)

        monkeypatch.setattr(plugin, "_open", recorded)

    def ghostscript(*args: Any, **kwargs: Any) -> Any:
        calls.append("Ghostscript")
        raise OSError("Ghostscript must never run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    return calls


def send(client: TestClient, case: Hostile) -> Any:
    data = (CORPUS / case.file).read_bytes()
    url = f"/pool/{case.method}"
    if case.content_type.startswith("multipart:"):
        part = case.content_type.removeprefix("multipart:")
        files = {"file": (case.file, data, part)}
        return client.post(url, params=case.query, files=files, headers=case.headers)
    headers = {"content-type": case.content_type, **case.headers}
    return client.post(url, params=case.query, content=data, headers=headers)


@pytest.mark.parametrize("case", TABLE, ids=lambda c: c.id)
def test_hostile_file(client: TestClient, opened: list[str], case: Hostile) -> None:
    r = send(client, case)
    assert r.status_code == case.status, r.text[:300]
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert list(doc) == ["detail"] and isinstance(doc["detail"], str)
    assert case.fragment in doc["detail"].lower(), doc["detail"][:300]
    assert len(doc["detail"]) <= MAX_DETAIL, f"{len(doc['detail'])} characters"
    assert opened == [], f"Pillow plugins reached: {opened}"


def test_corpus_is_small() -> None:
    files = [p for p in CORPUS.iterdir() if p.suffix != ".py"]
    assert {case.file for case in TABLE} <= {p.name for p in files}
    assert sum(p.stat().st_size for p in files) < 8 * 1024


def _input(doc: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(doc["data"], dtype=torch.float32)


def test_gem_p_1e308_is_the_window_max(client: TestClient) -> None:
    """(mean x^p)^(1/p) tends to the window max as p grows; p=1e308 used to answer null."""
    body = (CORPUS / "json_gem_p_1e308.json").read_bytes()
    r = client.post("/pool/gem", content=body, headers={"content-type": JSON})
    assert r.status_code == 200, r.text[:300]
    got = r.json()["data"]
    expected = F.max_pool2d(_input(orjson.loads(body)), 2)
    assert None not in np.asarray(got, dtype=object).ravel()
    np.testing.assert_array_equal(np.asarray(got, np.float32), expected.numpy())


def test_lp_p40_on_float32_matches_float64(client: TestClient) -> None:
    """x^40 of values near 1e3 overflows float32 (1e120), not the result: it must come back right."""
    body = (CORPUS / "json_lp_p40_float32.json").read_bytes()
    r = client.post("/pool/lp", content=body, headers={"content-type": JSON})
    assert r.status_code == 200, r.text[:300]
    got = np.asarray(r.json()["data"], dtype=object)
    assert None not in got.ravel()
    x = _input(orjson.loads(body)).double()
    expected = F.avg_pool2d(x.pow(40), 2).mul(4).pow(1 / 40)  # float64 holds 1e120
    np.testing.assert_allclose(got.astype(np.float64), expected.numpy(), rtol=2e-6)


def test_eps_never_reaches_its_plugin(client: TestClient, opened: list[str]) -> None:
    """Every way an EPS file can arrive: refused before Pillow's EPS plugin (and Ghostscript) runs."""
    eps = (CORPUS / "image.eps").read_bytes()
    for content_type in (PNG, "image/jpeg"):
        r = client.post("/pool/avg", params=K2, content=eps, headers={"content-type": content_type})
        assert r.status_code == 415, r.text
    for part in (PNG, "image/jpeg", "application/postscript", "application/octet-stream", None):
        file: Any = ("x.eps", eps) if part is None else ("x.eps", eps, part)
        r = client.post("/pool/avg", params=K2, files={"file": file})
        assert 400 <= r.status_code < 500, r.text
    assert opened == []


def test_run_pool_refuses_a_non_finite_result() -> None:
    """The UI calls run_pool directly: the same 422 message there (lp sums 4 × 60000 past 65504)."""
    x = torch.full((1, 1, 4, 4), 60000.0, dtype=torch.float16)
    with pytest.raises(ValueError, match="result of lp is not finite: 4 values overflow float16"):
        run_pool(x, "lp", {"kernel_size": 2})
