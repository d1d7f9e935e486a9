"""The multipart codec: field 'file' in any supported format, other fields as text parameters."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest
from PIL import Image

from service.codecs import Limits, multipart
from service.errors import BadRequest, Unprocessable, UnsupportedMediaType

from ..support import npy_bytes, png_bytes

LIMITS = Limits(max_elements=1 << 20, max_image_pixels=1 << 16)
BOUNDARY = "xYzBoundary"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def _form(*parts: tuple[str, str | None, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, content_type, data in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        disp = f'Content-Disposition: form-data; name="{name}"'
        if filename:
            disp += f'; filename="{filename}"'
        out += disp.encode() + b"\r\n"
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


X = np.arange(16, dtype=np.float32).reshape(1, 4, 4)


@pytest.mark.parametrize(
    ("data", "content_type", "kind"),
    [
        (npy_bytes(X), "application/octet-stream", "npy"),
        (npy_bytes(X), None, "npy"),
        (png_bytes(np.zeros((4, 4), np.uint8)), "image/png", "png"),
        (orjson.dumps({"data": X.tolist(), "params": {"kernel_size": 2}}), "application/json", "json"),
    ],
)
def test_file_formats(data: bytes, content_type: str | None, kind: str) -> None:
    d = multipart.decode(_form(("file", "f", content_type, data), ("stride", None, None, b"1")), CT, LIMITS)
    assert d.kind == kind and d.form == {"stride": "1"}
    assert tuple(d.tensor.shape) == (1, 4, 4)


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (_form(("stride", None, None, b"1")), Unprocessable, "field 'file'"),
        (
            _form(("file", "a", None, npy_bytes(X)), ("file", "b", None, npy_bytes(X))),
            Unprocessable,
            "several",
        ),
        (_form(("file", "a", "text/plain", b"\x00\x01")), Unprocessable, "cannot tell"),
        (
            _form(("file", "a", None, npy_bytes(X)), ("k", None, None, b"1"), ("k", None, None, b"2")),
            Unprocessable,
            "more than once",
        ),
        (b"--" + BOUNDARY.encode() + b"\r\ngarbage", BadRequest, "multipart"),
    ],
)
def test_refusals(body: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        multipart.decode(body, CT, LIMITS)


def _gif() -> bytes:
    stream = io.BytesIO()
    Image.new("RGB", (4, 4)).save(stream, format="GIF")
    return stream.getvalue()


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ("image/png", "GIF data, not PNG"),
        ("image/jpeg", "GIF data, not JPEG"),
        ("image/gif", "Content-Type 'image/gif' is not accepted"),
    ],
)
def test_image_part_opened_only_as_its_declared_format(content_type: str, message: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=message):
        multipart.decode(_form(("file", "x.gif", content_type, _gif())), CT, LIMITS)


def test_undeclared_image_part_is_png_or_jpeg_by_its_bytes() -> None:
    png = png_bytes(np.zeros((4, 4), np.uint8))
    assert multipart.decode(_form(("file", "x", None, png)), CT, LIMITS).kind == "png"
    with pytest.raises(UnsupportedMediaType, match="PNG data, not JPEG"):
        multipart.decode(_form(("file", "x", "image/jpeg", png)), CT, LIMITS)


def test_long_field_names_are_cut() -> None:
    body = _form(
        ("file", "a", None, npy_bytes(X)), ("k" * 600, None, None, b"1"), ("k" * 600, None, None, b"2")
    )
    with pytest.raises(Unprocessable, match="more than once") as error:
        multipart.decode(body, CT, LIMITS)
    assert len(str(error.value)) < 200


def _with_boundary(boundary: str) -> tuple[bytes, str]:
    body = _form(("file", "x.npy", None, npy_bytes(X))).replace(BOUNDARY.encode(), boundary.encode())
    return body, f"multipart/form-data; boundary={boundary}"


def test_boundary_at_the_parsers_limit() -> None:
    body, content_type = _with_boundary("b" * 256)
    assert multipart.decode(body, content_type, LIMITS).kind == "npy"


def test_boundary_past_the_parsers_limit_is_400() -> None:
    """The parser refuses a boundary over 256 characters with a plain error, which was a 500."""
    body, content_type = _with_boundary("b" * 257)
    with pytest.raises(BadRequest, match="boundary is 257 characters long, over the limit of 256"):
        multipart.decode(body, content_type, LIMITS)
