"""The .npy codec: header checks before allocation, layouts numpy writes, and the encoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from numpy.lib import format as npformat

from service.codecs import Limits, npy
from service.errors import BadRequest, PayloadTooLarge, Unprocessable

from ..bad_inputs import lying_npy
from ..support import npy_bytes

LIMITS = Limits(max_elements=1 << 20, max_image_pixels=1 << 16)
X = np.random.default_rng(3).standard_normal((2, 3, 5)).astype(np.float32)


@pytest.mark.parametrize(
    "array",
    [X, np.asfortranarray(X), X.astype(">f4"), X.astype(np.float64), X.astype(np.float16), X[:, ::2]],
    ids=["c", "fortran", "big-endian", "f64", "f16", "strided"],
)
def test_decode_layouts(array: np.ndarray) -> None:
    out = npy.decode(npy_bytes(array), LIMITS)
    np.testing.assert_array_equal(out.numpy(), array)
    assert out.dtype == torch.from_numpy(array.astype(array.dtype.newbyteorder("="))).dtype


def test_version_2_header() -> None:
    buf = io.BytesIO()
    npformat.write_array(buf, X, version=(2, 0))
    np.testing.assert_array_equal(npy.decode(buf.getvalue(), LIMITS).numpy(), X)


def test_lying_header_refused_without_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """np.load is never reached for a header claiming 2**40 bytes."""
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load called on a lying header"))
    with pytest.raises(BadRequest, match="header says"):
        npy.decode(lying_npy((1 << 20, 1 << 18), 16), LIMITS)


def test_element_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="elements"):
        npy.decode(npy_bytes(np.zeros(17, np.float32)), Limits(max_elements=16, max_image_pixels=1))


def test_structured_dtype_refused() -> None:
    with pytest.raises(Unprocessable, match="dtype"):
        npy.decode(npy_bytes(np.zeros(3, dtype=[("a", "f4")])), LIMITS)


def test_encode_round_trip() -> None:
    response = npy.encode(torch.from_numpy(X))
    assert response.media_type == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(response.body), allow_pickle=False), X)


def _buffer_holds(tensor: torch.Tensor, buffer: bytearray) -> bool:
    """Whether the tensor's data lies inside ``buffer`` (numpy's overlap test, and the raw addresses)."""
    start = np.frombuffer(buffer, np.uint8).ctypes.data
    inside = start <= tensor.data_ptr() and tensor.data_ptr() + tensor.nbytes <= start + len(buffer)
    shares = np.shares_memory(tensor.numpy(), np.frombuffer(buffer, np.uint8))
    assert inside == shares
    return shares


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 5), (1, 2, 3, 4, 5)])
def test_writable_native_float_c_order_decoded_in_place(dtype: type, shape: tuple[int, ...]) -> None:
    array: np.ndarray = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    data = npy_bytes(array)
    buffer = bytearray(data)
    out = npy.decode(buffer, LIMITS)
    assert _buffer_holds(out, buffer)
    assert out.dtype == torch.from_numpy(array).dtype and out.is_contiguous()
    np.testing.assert_array_equal(out.numpy(), np.load(io.BytesIO(data), allow_pickle=False))
    assert npy.decode(memoryview(buffer), LIMITS).data_ptr() == out.data_ptr()  # a writable view also


@pytest.mark.parametrize(
    ("array", "writable"),
    [
        (X, False),
        (np.asfortranarray(X), True),
        (X.astype(">f4"), True),
        (X.astype(">f8"), True),
        ((X * 100).astype(np.int32), True),
        ((X * 100).astype(np.int16), False),
        (X[:, ::2], False),
    ],
    ids=["read-only", "fortran", "big-endian", "big-endian-f64", "int32", "int16-read-only", "strided"],
)
def test_other_bodies_copied_once(array: np.ndarray, writable: bool) -> None:
    """Read-only bytes, Fortran order, big-endian and integers get their own memory, with np.load's values
    (as native floats; integers as float32)."""
    data = npy_bytes(array)
    buffer = bytearray(data)
    out = npy.decode(buffer if writable else data, LIMITS)
    assert not _buffer_holds(out, buffer) and out.is_contiguous()
    expected = np.load(io.BytesIO(data), allow_pickle=False)
    np.testing.assert_array_equal(out.numpy(), expected)
    native = np.float32 if expected.dtype.kind == "i" else expected.dtype.newbyteorder("=")
    assert out.dtype == torch.from_numpy(np.zeros(1, native)).dtype


def test_misaligned_data_copied() -> None:
    """A hand-made header whose padding leaves the float64 data at an odd offset: copied, not viewed."""
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    text = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"
    text += " " * (-(10 + len(text) + 1) % 64 + 3) + "\n"  # 3 bytes past a 64-byte boundary
    data = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + array.tobytes()
    assert (len(data) - array.nbytes) % 8 == 3
    buffer = bytearray(data)
    out = npy.decode(buffer, LIMITS)
    assert not _buffer_holds(out, buffer)
    np.testing.assert_array_equal(out.numpy(), np.load(io.BytesIO(data), allow_pickle=False))


def test_longdouble_refused() -> None:
    """torch has no float128: a 422 naming the dtype, not a 500 from torch.from_numpy."""
    with pytest.raises(Unprocessable, match="float16, float32 or float64"):
        npy.decode(npy_bytes(np.zeros(3, np.longdouble)), LIMITS)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (1, 3, 4, 5), (2, 1, 3, 2, 2), (0, 3), (1, 64, 56, 56)])
def test_encode_equals_np_save(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    assert npy.encode(x).body == buf.getvalue()


def test_encode_largest_rank_like_np_save() -> None:
    x = torch.zeros((1,) * 63 + (2,))
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    assert npy.encode(x).body == buf.getvalue()


def test_encode_non_contiguous_and_bfloat16() -> None:
    """What np.save writes for the C-ordered copy; bfloat16 (no numpy dtype) as float32."""
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(6))
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x.transpose(0, 2).numpy()))
    assert npy.encode(x.transpose(0, 2)).body == buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, x.to(torch.bfloat16).float().numpy())
    assert npy.encode(x.to(torch.bfloat16)).body == buf.getvalue()


def _header(shape: str) -> bytes:
    """A .npy 1.0 header with ``shape`` written verbatim (numpy refuses to write a negative one)."""
    head = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode("latin-1")
    head += b" " * (64 - (10 + len(head) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head


@pytest.mark.parametrize(
    ("shape", "payload"), [("(-2, -2)", 16), ("(1, 1, -4, -4)", 64), ("(-1, 4)", 0), ("(2, -2)", 16)]
)
def test_negative_dimension_is_malformed(shape: str, payload: int) -> None:
    """(-2, -2) claims 4 elements, as many as follow: it used to pass the size check and fail in
    reshape (a 500)."""
    with pytest.raises(BadRequest, match=r"malformed \.npy: the header's shape .* has a negative dimension"):
        npy.decode(_header(shape) + b"\0" * payload, LIMITS)


def test_empty_array_with_a_huge_dimension_is_413() -> None:
    """(1, 2**62, 0) has no elements, so no bytes follow, but numpy cannot make an array of it."""
    with pytest.raises(PayloadTooLarge, match="length 4611686018427387904"):
        npy.decode(_header(f"(1, {2**62}, 0)"), LIMITS)
    assert npy.decode(_header("(1, 3, 0)"), LIMITS).shape == (1, 3, 0)  # the operator names it


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("{'descr': f(), 'fortran_order': False, 'shape': (1,)}", "is not a Python dict literal"),
        ("{'descr': (lambda: 0), 'fortran_order': False, 'shape': (1,)}", "is not a Python dict literal"),
        ("{'descr': '<f4', 'shape': (1,)}", "must have exactly the keys"),
        ("{'descr': 'zzz', 'fortran_order': False, 'shape': (1,)}", "descr is not a dtype"),
        ("{'descr': '<f4', 'fortran_order': 3, 'shape': (1,)}", "fortran_order is not True or False"),
    ],
)
def test_header_errors_in_our_words(header: str, problem: str) -> None:
    """numpy's own text names an AST node with its heap address, or quotes the header back."""
    head = header.encode("latin-1")
    head += b" " * (63 - (10 + len(head)) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head
    with pytest.raises(BadRequest) as caught:
        npy.decode(body, LIMITS)
    message = caught.value.detail
    assert message.startswith("malformed .npy: ") and problem in message, message
    assert "0x" not in message and "ast." not in message and "Error" not in message


def test_a_long_shape_is_cut() -> None:
    """A 4,000-digit dimension passes numpy's header checks; the message shows 64 characters of it."""
    with pytest.raises(BadRequest, match="header says shape") as caught:
        npy.decode(_header("(" + "9" * 4000 + ",)"), LIMITS)
    assert len(caught.value.detail) < 300
