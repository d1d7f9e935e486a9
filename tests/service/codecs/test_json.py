"""The JSON codec: numpy-aware parsing, dtype option, refusal messages, encoder output."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

from service.codecs import Limits, json
from service.errors import Unprocessable

LIMITS = Limits(max_elements=1 << 20, max_image_pixels=1 << 16)


def test_decode_and_params() -> None:
    d = json.decode(orjson.dumps({"data": [[1, 2], [3, 4.5]], "params": {"kernel_size": 2}}), LIMITS)
    assert d.kind == "json" and d.params == {"kernel_size": 2}
    torch.testing.assert_close(d.tensor, torch.tensor([[1, 2], [3, 4.5]]))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_dtype_option(dtype: str) -> None:
    d = json.decode(orjson.dumps({"data": [0.1, 0.2], "dtype": dtype}), LIMITS)
    assert str(d.tensor.dtype) == f"torch.{dtype}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([[1, 2], [3]], "ragged"),
        ([1, [2]], "ragged"),
        ([[1, None]], "numbers"),
        ([{"a": 1}], "numbers"),
        ([True], "booleans"),
        (["1"], "strings"),
        (3.0, "rank"),
    ],
)
def test_refusals(data: object, message: str) -> None:
    with pytest.raises(Unprocessable, match=message):
        json.decode(orjson.dumps({"data": data}), LIMITS)


def test_encode_float16_output() -> None:
    x = torch.tensor([[0.5, 0.25]], dtype=torch.float16)
    doc = orjson.loads(json.encode(x, "avg", {"kernel_size": 1}).body)
    assert doc == {
        "method": "avg",
        "params": {"kernel_size": 1},
        "shape": [1, 2],
        "dtype": "float16",
        "data": [[0.5, 0.25]],
    }


def test_encode_is_exact_for_float32() -> None:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32))
    doc = orjson.loads(json.encode(x, "max", {}).body)
    np.testing.assert_array_equal(np.asarray(doc["data"], np.float32), x.numpy())


@pytest.mark.parametrize("dtype", [["x"], {"x": 1}, "", 0, False])
def test_dtype_must_be_a_known_name(dtype: object) -> None:
    """A list or object is no dict key: it used to raise TypeError (a 500); a falsy one meant float32."""
    with pytest.raises(Unprocessable, match=r'"dtype" must be one of float16, float32, float64 \(got '):
        json.decode(orjson.dumps({"data": [0.1], "dtype": dtype}), LIMITS)
    assert json.decode(orjson.dumps({"data": [0.1], "dtype": None}), LIMITS).tensor.dtype == torch.float32


def test_long_dtype_and_keys_are_cut_in_messages() -> None:
    for doc in ({"data": [0.1], "dtype": ["x" * 10_000]}, {"data": [0.1], "k" * 10_000: 1}):
        with pytest.raises(Unprocessable) as error:
            json.decode(orjson.dumps(doc), LIMITS)
        assert len(str(error.value)) < 300 and "…" in str(error.value)


def test_the_boolean_prefilter_finds_exactly_what_a_substring_search_finds() -> None:
    """``_mentions_booleans`` (a byte search on ``t`` and ``f``, the text's rare letters, in place of a
    substring search over a body of numbers) must say what ``b"true" in body or b"false" in body`` says,
    on bodies with few and with many ``t``/``f`` bytes, and at either end of the body."""
    rng = np.random.default_rng(7)
    alphabet = np.frombuffer(b'tfrueals[]{}",:0123456789.e-', dtype=np.uint8)
    bodies = [bytearray(rng.choice(alphabet, size=int(rng.integers(0, 300))).tobytes()) for _ in range(2000)]
    bodies += [
        bytearray(b"t" * 500 + b"true"),  # past the hits after which it falls back to the plain search
        bytearray(b"f" * 500 + b"fals"),
        bytearray(b"true"),
        bytearray(b"[1.5,false]"),
        bytearray(b'{"dtype": "float32", "data": [1, 2]}'),
    ]
    for body in bodies:
        expected = b"true" in body or b"false" in body
        assert json._mentions_booleans(body) is expected, bytes(body)
        assert json._mentions_booleans(bytes(body)) is expected, bytes(body)
