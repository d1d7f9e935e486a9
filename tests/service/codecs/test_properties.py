"""Property tests of the codecs, through ``codecs.decode`` as the route calls it: every body either
decodes to exactly what an independent reader makes of it, or is refused with a 4xx ServiceError.
Nothing hangs (a generous per-example deadline) and nothing raises anything else (which would be a 500).

The references are numpy's own ``np.load`` (.npy), a plain-Python walk of the JSON document (JSON) and
Pillow's decode of the same bytes (PNG, JPEG). Derandomized: a CI run tries the same cases every time.
"""

from __future__ import annotations

import io
import json as stdjson
import math
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.extra import numpy as hnp
from PIL import Image

from service import codecs
from service.codecs import Limits
from service.errors import ServiceError

from ..support import npy_bytes

LIMITS = Limits(max_elements=1 << 12, max_image_pixels=1 << 12)
PROPERTY = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=10),  # "never hangs", with room for a loaded CI machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no explain phase: it costs seconds
)
_TORCH_FLOAT = {2: torch.float16, 4: torch.float32, 8: torch.float64}


def decode_or_4xx(body: bytes | bytearray, content_type: str) -> codecs.Decoded | None:
    """The decoded body, or None when it was refused with a 4xx; any other exception fails the test."""
    try:
        decoded = codecs.decode(body, content_type, LIMITS)
    except ServiceError as error:
        assert 400 <= error.status_code < 500, f"{error.status_code}: {error}"
        assert str(error), "an error must say what was wrong"
        _event(f"refused {error.status_code}")
        return None
    _event("read")
    return decoded


def _event(name: str) -> None:
    """The mix of outcomes, for ``--hypothesis-show-statistics`` (outside a property, nothing)."""
    if currently_in_test_context():
        event(name)


def corrupt(data: st.DataObject, body: bytes) -> bytes:
    """``body`` cut short, or with 1 to 8 bytes replaced by others."""
    if data.draw(st.booleans(), label="truncate"):
        return body[: data.draw(st.integers(0, len(body) - 1), label="cut at")]
    out = bytearray(body)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        at = data.draw(st.integers(0, len(out) - 1), label="at")
        out[at] ^= data.draw(st.integers(1, 255), label="xor")
    return bytes(out)


# --- .npy ---------------------------------------------------------------------------------------------

# Every numpy kind, both byte orders where there is one: the codec takes real ints and float16/32/64.
NPY_DTYPES = [
    "|b1", "|i1", "|u1", "<i2", ">i2", "<u2", ">u2", "<i4", ">i4", "<u4", ">u4", "<i8", ">i8", "<u8",
    ">u8", "<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "<c8", ">c16", "g", "|O", "<U3", "|S3", "<M8[s]",
    "<m8[s]", "|V4",
]  # fmt: skip
SHAPES = hnp.array_shapes(min_dims=0, max_dims=7, min_side=0, max_side=3)


def npy_accepted(dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """What the API promises to read: real ints and float16/32/64, rank 1 to 5, within the limit."""
    numeric = dtype.kind in "iu" or (dtype.kind == "f" and dtype.itemsize in _TORCH_FLOAT)
    return (
        numeric and dtype.fields is None and 1 <= len(shape) <= 5 and math.prod(shape) <= LIMITS.max_elements
    )


@st.composite
def npy_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(NPY_DTYPES), label="dtype"))
    shape = draw(SHAPES, label="shape")
    if dtype.hasobject:
        elements: st.SearchStrategy[Any] = st.integers(-5, 5)
    elif dtype.kind == "V":
        elements = st.binary(min_size=4, max_size=4)
    else:
        elements = hnp.from_dtype(dtype)
    array = draw(hnp.arrays(dtype, shape, elements=elements), label="array")
    return np.asfortranarray(array) if draw(st.booleans(), label="fortran") else array


def same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    """Exact equality, NaN payloads and signed zeros included."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    unsigned = np.dtype(f"u{got.dtype.itemsize}")
    return bool(np.array_equal(got.view(unsigned), want.view(unsigned)))


@PROPERTY
@given(array=npy_arrays(), writable=st.booleans())
def test_npy_round_trips_exactly_or_is_refused(array: np.ndarray, writable: bool) -> None:
    body = npy_bytes(array)
    decoded = decode_or_4xx(bytearray(body) if writable else body, "application/x-npy")
    reference = np.load(io.BytesIO(body), allow_pickle=True)
    if not npy_accepted(array.dtype, array.shape):
        assert decoded is None, f"{array.dtype} {array.shape} should be refused"
        return
    assert decoded is not None, f"{array.dtype} {array.shape} should be read"
    got = decoded.tensor.numpy()
    if array.dtype.kind == "f":
        assert decoded.tensor.dtype == _TORCH_FLOAT[array.dtype.itemsize]
        assert same_bits(got, reference.astype(reference.dtype.newbyteorder("=")))
    else:  # integers become float32, as float32(value)
        assert decoded.tensor.dtype == torch.float32
        assert same_bits(got, reference.astype(np.float32))


@PROPERTY
@given(array=npy_arrays(), data=st.data())
def test_npy_truncated_or_corrupted_is_read_or_refused(array: np.ndarray, data: st.DataObject) -> None:
    body = npy_bytes(array)
    bad = corrupt(data, body)
    decoded = decode_or_4xx(bad, "application/x-npy")
    if len(bad) < len(body):
        assert decoded is None, "a truncated .npy must be refused"
    elif decoded is not None:  # a flip that leaves a readable .npy: it must be one the API takes
        x = decoded.tensor
        assert x.is_floating_point() and 1 <= x.dim() <= 5 and x.numel() <= LIMITS.max_elements


def test_npy_header_with_an_unclosed_bracket_is_a_400() -> None:
    """Found by the property above: a padding byte turned into "(" made numpy's header tokenizer raise
    TokenError, which is neither ValueError nor SyntaxError, and the request got a 500."""
    body = bytearray(npy_bytes(np.zeros(1, np.float32)))
    body[body.index(b"\n") - 1] = ord("(")
    assert decode_or_4xx(bytes(body), "application/x-npy") is None


@st.composite
def forged_npy(draw: st.DrawFn) -> bytes:
    """A hand-written header: any dtype text, any order, any shape (negative, huge, empty, deep), then
    as many bytes as it promises (when that is small) or a few random ones."""
    descr = draw(st.sampled_from([*NPY_DTYPES, "<f4", "<f8", "'x'", "<f4,<f4"]), label="descr")
    sizes = st.one_of(st.integers(-3, 4), st.sampled_from([2**31, 2**62, 2**63 - 1, 2**64, -(2**63)]))
    shape = tuple(draw(st.lists(sizes, max_size=7), label="shape"))
    fortran = draw(st.booleans(), label="fortran")
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    head = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin-1")
    try:
        promised = math.prod(shape) * np.dtype(descr).itemsize
    except (TypeError, ValueError):
        promised = -1
    length = promised if 0 <= promised <= 4096 else draw(st.integers(0, 64), label="length")
    return head + draw(st.binary(min_size=length, max_size=length), label="payload")


@PROPERTY
@given(body=forged_npy())
def test_npy_forged_header_is_read_or_refused(body: bytes) -> None:
    decoded = decode_or_4xx(body, "application/x-npy")
    if decoded is not None:
        reference = np.load(io.BytesIO(body), allow_pickle=False)  # numpy reads it too, the same
        x = decoded.tensor
        assert npy_accepted(reference.dtype, reference.shape)
        assert x.shape == reference.shape
        np.testing.assert_array_equal(x.numpy(), reference.astype(x.numpy().dtype))


# --- JSON ---------------------------------------------------------------------------------------------

# Any JSON value: numbers of every size (ints past 64 bits, NaN and ±Infinity literals), booleans, nulls,
# strings, and lists and objects nested and ragged.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.text(max_size=4),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=40,
)
# Nested lists of numbers, mostly rectangular, so the accepted path is exercised as much as the refusals.
NUMBERS = st.one_of(st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def number_arrays(draw: st.DrawFn) -> Any:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=6, min_side=0, max_side=3), label="shape")
    count = math.prod(shape)
    flat = draw(st.lists(NUMBERS, min_size=count, max_size=count), label="values")
    return np.array(flat, dtype=object).reshape(shape).tolist() if shape else flat


class Refused(Exception):
    """The reference's verdict: the API must refuse this document."""


def leaf_shape(value: Any) -> tuple[int, ...]:
    """The shape of a rectangular nested list of numbers (JSON booleans are not numbers); Refused for
    anything else. Written out by hand: the codec itself leans on numpy for this."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, dict)):
        raise Refused(f"not a number: {value!r}")
    if isinstance(value, (int, float)):
        return ()
    shapes = {leaf_shape(item) for item in value}
    if len(shapes) > 1:
        raise Refused("ragged")
    return (len(value), *(shapes.pop() if shapes else ()))


def leaves(value: Any) -> list[Any]:
    return [leaf for item in value for leaf in leaves(item)] if isinstance(value, list) else [value]


def json_reference(doc: Any) -> tuple[tuple[int, ...], np.dtype, np.ndarray | None]:
    """(shape, dtype, values) the API must answer for ``doc``, or Refused. ``values`` is None where
    numpy's own integer path may round differently from float(value) (ints over 2**53)."""
    if not isinstance(doc, dict) or "data" not in doc or set(doc) - {"data", "params", "dtype"}:
        raise Refused("not a document")
    if not isinstance(doc.get("params", {}), (dict, type(None))):
        raise Refused("params")
    name = doc.get("dtype")
    name = "float32" if name is None else name
    if not isinstance(name, str) or name not in ("float16", "float32", "float64"):
        raise Refused("dtype")
    shape = leaf_shape(doc["data"])
    if not 1 <= len(shape) <= 5 or math.prod(shape) > LIMITS.max_elements:
        raise Refused("rank or size")
    flat = leaves(doc["data"]) if math.prod(shape) else []
    if any(isinstance(v, int) and 2**53 < abs(v) < 2**64 for v in flat):
        return shape, np.dtype(name), None
    with np.errstate(over="ignore"):  # overflow to ±inf: refused later by the finiteness check
        values = np.array([float(v) for v in flat], dtype=np.float64).astype(name).reshape(shape)
    return shape, np.dtype(name), values


def check_json(text: bytes) -> None:
    decoded = decode_or_4xx(text, "application/json")
    try:
        doc = stdjson.loads(text)
        if any(isinstance(v, float) and not math.isfinite(v) for v in leaves(doc.get("data", []))):
            raise Refused("NaN or Infinity literal")  # not JSON, however many parsers take it
        shape, dtype, values = json_reference(doc)
    except (Refused, AttributeError):
        assert decoded is None, f"should be refused: {text[:200]!r}"
        return
    assert decoded is not None, f"should be read: {text[:200]!r}"
    assert tuple(decoded.tensor.shape) == shape
    assert decoded.tensor.numpy().dtype == dtype
    if values is not None:
        assert same_bits(decoded.tensor.numpy(), values)


@PROPERTY
@given(
    doc=st.one_of(
        JSON_VALUES,
        st.fixed_dictionaries(
            {"data": st.one_of(JSON_VALUES, number_arrays())},
            optional={
                "params": JSON_VALUES,
                "dtype": st.one_of(JSON_VALUES, st.sampled_from(["float16", "float32", "float64"])),
                "extra": JSON_VALUES,
            },
        ),
    )
)
def test_json_any_document_is_read_exactly_or_refused(doc: Any) -> None:
    check_json(stdjson.dumps(doc, allow_nan=True).encode())


@PROPERTY
@given(
    data=number_arrays(),
    dtype=st.sampled_from([None, "float16", "float32", "float64"]),
    spoil=st.sampled_from(["keep", True, False, None, "1", [], {}]),
    pick=st.randoms(use_true_random=False),
)
def test_json_number_arrays_round_trip_or_are_refused(
    data: Any, dtype: str | None, spoil: Any, pick: Any
) -> None:
    """Well-formed arrays, or the same with one number replaced by a non-number (a boolean among them)."""
    node = data
    while node and isinstance(node[0], list):
        node = node[pick.randrange(len(node))]
    if spoil != "keep" and node:
        node[pick.randrange(len(node))] = spoil
    check_json(stdjson.dumps({"data": data, "dtype": dtype}).encode())


@pytest.mark.parametrize("data", [[True, 0], [[1.5, 2.0], [False, 3.0]], [1, 2, True]])
def test_json_booleans_in_data_are_a_422(data: list[Any]) -> None:
    """Found by the property above: numpy reads true/false next to numbers as 1/0, so they were pooled."""
    with pytest.raises(ServiceError, match="only numbers") as error:
        codecs.decode(
            stdjson.dumps({"data": data, "params": {"ceil_mode": True}}).encode(), "application/json", LIMITS
        )
    assert error.value.status_code == 422


@PROPERTY
@given(data=number_arrays(), bytes_data=st.data())
def test_json_truncated_or_corrupted_is_read_or_refused(data: Any, bytes_data: st.DataObject) -> None:
    body = stdjson.dumps({"data": data}).encode()
    bad = corrupt(bytes_data, body)
    try:
        stdjson.loads(bad)
    except (ValueError, UnicodeDecodeError):
        assert decode_or_4xx(bad, "application/json") is None, f"not JSON, yet read: {bad[:200]!r}"
        return
    check_json(bad)


# --- PNG and JPEG -------------------------------------------------------------------------------------

MODES = {"PNG": ["L", "RGB", "RGBA", "LA", "P", "I;16", "1"], "JPEG": ["L", "RGB", "CMYK"]}
_KEPT = {
    "L": "L",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "1": "L",
    "I;16": "L",
    "LA": "RGBA",
    "P": "RGB",
    "CMYK": "RGB",
}


@st.composite
def images(draw: st.DrawFn, fmt: str) -> tuple[bytes, str]:
    mode = draw(st.sampled_from(MODES[fmt]), label="mode")
    width, height = draw(st.integers(1, 24), label="width"), draw(st.integers(1, 24), label="height")
    raw = draw(st.binary(min_size=1, max_size=1), label="seed")[0]
    pixels = np.random.default_rng(raw).integers(0, 256, (height, width, 4), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGBA").convert(mode if mode not in ("I;16", "1") else "L")
    if mode in ("I;16", "1"):
        img = img.convert("1") if mode == "1" else Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(
        buf, format=fmt, **({"quality": draw(st.integers(5, 95), label="quality")} if fmt == "JPEG" else {})
    )
    return buf.getvalue(), mode


def pillow_reference(body: bytes) -> np.ndarray:
    """C×H×W float32 in [0, 1], from Pillow's decode of the same bytes (8-bit, or 16-bit scaled)."""
    img = Image.open(io.BytesIO(body))
    if img.mode.startswith("I"):
        return (np.asarray(img, dtype=np.float32) / np.float32(65535.0))[None]
    kept = _KEPT.get(img.mode, "RGB")
    if img.mode == "P" and "transparency" in img.info:
        kept = "RGBA"
    pixels = np.asarray(img.convert(kept) if img.mode != kept else img, dtype=np.uint8)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)


@PROPERTY
@given(image=st.one_of(images("PNG").map(lambda i: (*i, "PNG")), images("JPEG").map(lambda i: (*i, "JPEG"))))
def test_images_decode_as_pillow_does(image: tuple[bytes, str, str]) -> None:
    body, mode, fmt = image
    decoded = decode_or_4xx(body, f"image/{fmt.lower()}")
    assert decoded is not None, f"a valid {fmt} ({mode}) must be read"
    reference = pillow_reference(body)
    assert tuple(decoded.tensor.shape) == reference.shape
    np.testing.assert_array_equal(decoded.tensor.numpy(), reference)


def test_png_round_trips_exactly() -> None:
    """PNG is lossless: the pixels come back as pixels / 255, whatever Pillow says."""
    pixels = np.random.default_rng(5).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    decoded = codecs.decode(buf.getvalue(), "image/png", LIMITS)
    expected = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(decoded.tensor.numpy(), expected)


@PROPERTY
@given(
    image=st.one_of(images("PNG").map(lambda i: (*i, "PNG")), images("JPEG").map(lambda i: (*i, "JPEG"))),
    data=st.data(),
)
def test_images_truncated_or_corrupted_are_read_or_refused(
    image: tuple[bytes, str, str], data: st.DataObject
) -> None:
    body, _, fmt = image
    decoded = decode_or_4xx(corrupt(data, body), f"image/{fmt.lower()}")
    if decoded is not None:
        x = decoded.tensor
        assert x.dim() == 3 and x.shape[0] in (1, 3, 4) and x.numel() <= LIMITS.max_elements
        assert bool(((x >= 0) & (x <= 1)).all())


# --- multipart ----------------------------------------------------------------------------------------


def multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, part_type, payload in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += f"Content-Type: {part_type}\r\n".encode() if part_type else b""
        out += b"\r\n" + payload + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


UPLOADS = st.one_of(
    npy_arrays().map(lambda array: (npy_bytes(array), "application/x-npy")),
    images("PNG").map(lambda image: (image[0], "image/png")),
    images("JPEG").map(lambda image: (image[0], "image/jpeg")),
    number_arrays().map(lambda data: (stdjson.dumps({"data": data}).encode(), "application/json")),
)


@PROPERTY
@given(
    upload=UPLOADS,
    fields=st.dictionaries(st.sampled_from(["kernel_size", "mode", "x"]), st.text(max_size=5), max_size=2),
    data=st.data(),
)
def test_multipart_upload_reads_its_file_or_is_refused(
    upload: tuple[bytes, str], fields: dict[str, str], data: st.DataObject
) -> None:
    """The file part decodes as the same bytes sent alone would; a cut or flipped body is read or 4xx."""
    payload, media = upload
    parts: list[tuple[str, str | None, str | None, bytes]] = [("file", "upload", media, payload)]
    parts += [(name, None, None, value.encode()) for name, value in fields.items()]
    whole = multipart(parts)
    spoiled = data.draw(st.booleans(), label="spoil")
    decoded = decode_or_4xx(
        corrupt(data, whole) if spoiled else whole, "multipart/form-data; boundary=b0undary"
    )
    if not spoiled:
        direct = decode_or_4xx(payload, media)
        assert (decoded is None) == (direct is None)
        if decoded is not None and direct is not None:
            assert same_bits(decoded.tensor.numpy(), direct.tensor.numpy())
            assert decoded.form == fields
