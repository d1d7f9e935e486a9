"""The Open Inference Protocol's tensor codec: raw bytes and numbers to tensors, parameters both ways."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import torch

from service.codecs import Limits, oip
from service.errors import BadRequest, PayloadTooLarge

LIMITS = Limits(max_elements=1 << 12, max_image_pixels=1 << 12)
X = np.random.default_rng(3).uniform(-1, 1, (2, 3, 4)).astype(np.float32)


class TestFromRaw:
    def test_writable_aligned_floats_are_used_in_place(self) -> None:
        body = bytearray(X.tobytes())
        tensor = oip.from_raw(body, "FP32", [2, 3, 4], LIMITS)
        assert tensor.data_ptr() == np.frombuffer(body, np.float32).ctypes.data  # no copy
        np.testing.assert_array_equal(tensor.numpy(), X)

    def test_read_only_or_unaligned_bytes_are_copied(self) -> None:
        tensor = oip.from_raw(X.tobytes(), "FP32", [2, 3, 4], LIMITS)  # bytes: read-only
        np.testing.assert_array_equal(tensor.numpy(), X)
        tensor[0, 0, 0] = 5.0  # its own, writable memory
        shifted = bytearray(b"\0" + X.tobytes())
        tensor = oip.from_raw(memoryview(shifted)[1:], "FP32", [2, 3, 4], LIMITS)  # off by one byte
        np.testing.assert_array_equal(tensor.numpy(), X)

    @pytest.mark.parametrize(("datatype", "dtype"), [("FP16", np.float16), ("FP64", np.float64)])
    def test_floats_keep_their_type(self, datatype: str, dtype: Any) -> None:
        x = X.astype(dtype)
        tensor = oip.from_raw(x.astype(x.dtype.newbyteorder("<")).tobytes(), datatype, list(x.shape), LIMITS)
        assert tensor.dtype == torch.from_numpy(x).dtype
        np.testing.assert_array_equal(tensor.numpy(), x)

    @pytest.mark.parametrize(
        ("datatype", "dtype"),
        [("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"), ("UINT8", "u1")],
    )
    def test_integers_become_float32(self, datatype: str, dtype: str) -> None:
        x = np.arange(-5, 7).reshape(3, 4).astype(dtype) if dtype != "u1" else np.arange(12, dtype="u1")
        tensor = oip.from_raw(x.tobytes(), datatype, list(x.shape), LIMITS)
        assert tensor.dtype == torch.float32
        np.testing.assert_array_equal(tensor.numpy(), x.astype(np.float32))

    def test_size_must_match_shape_and_type(self) -> None:
        with pytest.raises(BadRequest, match=r"has 92 bytes of data, but shape \[2, 3, 4\] of FP32 needs 96"):
            oip.from_raw(X.tobytes()[:-4], "FP32", [2, 3, 4], LIMITS)

    def test_element_limit_before_allocating(self) -> None:
        with pytest.raises(PayloadTooLarge, match="over the limit of 4096"):
            oip.from_raw(b"", "FP32", [1 << 30, 1 << 30], LIMITS)

    @pytest.mark.parametrize("datatype", ["BF16", "BYTES", "BOOL", "UINT32", "float32", None])
    def test_unknown_datatype(self, datatype: Any) -> None:
        with pytest.raises(BadRequest, match=r"unsupported datatype .*FP16, FP32, FP64, INT8"):
            oip.from_raw(X.tobytes(), datatype, [2, 3, 4], LIMITS)


class TestFromNumbers:
    def test_flat_and_nested(self) -> None:
        for data in (X.ravel().tolist(), X.tolist()):
            tensor = oip.from_numbers(data, "FP32", [2, 3, 4], LIMITS)
            np.testing.assert_array_equal(tensor.numpy(), X)

    def test_count_must_match_shape(self) -> None:
        with pytest.raises(BadRequest, match=r"has 24 values, but shape \[5, 5\] needs 25"):
            oip.from_numbers(X.ravel().tolist(), "FP32", [5, 5], LIMITS)


class TestParameters:
    def test_text_is_read_as_a_query_string(self) -> None:
        parameters = {"kernel_size": "2,3", "output_size": "null,7", "seed": "12", "p": 2.5, "stride": [1, 2]}
        params, mode, seed = oip.run_options({**parameters, "binary_data_output": True, "mode": "train"})
        assert params == {"kernel_size": [2, 3], "output_size": [None, 7], "p": 2.5, "stride": [1, 2]}
        assert mode == "train" and seed == 12

    def test_reported_as_protocol_scalars(self) -> None:
        resolved = {
            "kernel_size": (2, 2),
            "stride": None,
            "p": 3.0,
            "ceil_mode": False,
            "mode": "eval",
            "seed": 7,
        }
        assert oip.reported_parameters(resolved) == {
            "kernel_size": "2,2",
            "p": 3.0,
            "ceil_mode": False,
            "mode": "eval",
            "seed": 7,
        }
        assert oip.reported_parameters({"output_size": (None, 7), "dims": (3,)}) == {
            "output_size": "null,7",
            "dims": "3,",
        }


class TestRest:
    def test_binary_round_trip(self) -> None:
        tensor = {
            "name": "input",
            "datatype": "FP32",
            "shape": [2, 3, 4],
            "parameters": {"binary_data_size": 96},
        }
        header = orjson.dumps({"id": "r", "inputs": [tensor], "parameters": {"kernel_size": 2}})
        decoded = oip.decode_rest(bytearray(header + X.tobytes()), str(len(header)), LIMITS, 1 << 20)
        np.testing.assert_array_equal(decoded.tensor.numpy(), X)
        assert (
            decoded.request_id == "r" and decoded.params == {"kernel_size": 2} and not decoded.binary_output
        )
        out = oip.encode_rest(torch.from_numpy(X), "avg", {"mode": "eval", "seed": None}, "r", True)
        assert out.media_type == "application/octet-stream" and out.header_length is not None
        doc = orjson.loads(out.body[: out.header_length])
        assert doc["id"] == "r" and doc["parameters"] == {"mode": "eval"}
        assert doc["outputs"][0]["parameters"] == {"binary_data_size": 96}
        np.testing.assert_array_equal(np.frombuffer(out.body[out.header_length :], "<f4").reshape(2, 3, 4), X)

    def test_json_header_limit(self) -> None:
        with pytest.raises(PayloadTooLarge, match="JSON header of 100 bytes is over the limit of 50"):
            oip.decode_rest(bytearray(200), "100", LIMITS, 50)


def test_several_inputs_named_up_to_three() -> None:
    two = str(oip.several_inputs(2, ["'a'", "'b'"]))
    assert two == "a pooling model takes one input tensor (got 2: 'a', 'b')"
    many = str(oip.several_inputs(5000, ["'a'", "'b'", "'c'", "'d'"]))
    assert many == "a pooling model takes one input tensor (got 5000: 'a', 'b', 'c', …)"


@pytest.mark.parametrize("value", ["F" * 100_000, [1] * 100_000])
def test_long_datatype_or_shape_is_cut(value: Any) -> None:
    datatype, shape = (value, [1]) if isinstance(value, str) else ("FP32", value)
    with pytest.raises(BadRequest) as caught:
        oip.from_raw(b"", datatype, shape, LIMITS)
    assert len(caught.value.detail) < 300
