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
    response = npy.encode(torch.from_numpy(X), {"X-Pool-Method": "avg"})
    assert response.media_type == "application/x-npy" and response.headers["x-pool-method"] == "avg"
    np.testing.assert_array_equal(np.load(io.BytesIO(response.body), allow_pickle=False), X)
