"""Writes the hostile corpus next to this file: ``python3 tests/service/hostile/make_corpus.py``.

Each file is one client mistake or attack from issue 9; ``tests/service/test_hostile.py`` holds the table
of what the service must answer to each. The files are committed (a few KB in all), so the tests do not
depend on this script or on the Pillow version that wrote them.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import orjson
from PIL import Image

HERE = Path(__file__).resolve().parent
GOOD = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 16 + 0.1


def npy_header(shape: str, descr: str = "<f4") -> bytes:
    """A .npy 1.0 header with ``shape`` written verbatim (numpy would refuse to write a negative one)."""
    head = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode("latin-1")
    head += b" " * (64 - (10 + len(head) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head


def npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


def image(fmt: str, size: int = 8) -> bytes:
    stream = io.BytesIO()
    pixels = (np.arange(size * size * 3) % 251).astype(np.uint8).reshape(size, size, 3)
    Image.fromarray(pixels).save(stream, format=fmt)
    return stream.getvalue()


def body(params: dict[str, object], dtype: object = None, data: object = None) -> bytes:
    doc: dict[str, object] = {"data": GOOD.tolist() if data is None else data, "params": params}
    if dtype is not None:
        doc["dtype"] = dtype
    return orjson.dumps(doc)


FILES: dict[str, bytes] = {
    # finding 6: client mistakes that were a 500
    "npy_negative_dims.npy": npy_header("(1, 1, -4, -4)") + b"\0" * 64,
    "npy_empty_huge_dim.npy": npy_header(f"(1, {2**62}, 0)"),
    "good.npy": npy(GOOD),
    "json_stride_1e18.json": body({"kernel_size": 2, "stride": 10**18}),
    "json_output_size_1e18.json": body({"output_size": 10**18}),
    "json_dtype_list.json": body({"kernel_size": 2}, dtype=["x"]),
    "json_dtype_object.json": body({"kernel_size": 2}, dtype={"x": 1}),
    "json_kernel_size_true.json": body({"kernel_size": True}),
    "json_kernel_size_list_true.json": body({"kernel_size": [2, True]}),
    "json_p_true.json": body({"kernel_size": 2, "p": True}),
    # finding 7: results that were JSON null
    "json_gem_p_1e308.json": body({"kernel_size": 2, "p": 1e308}, data=(GOOD * 100).tolist()),
    "json_lp_p40_float32.json": body({"kernel_size": 2, "p": 40.0}, data=(GOOD * 1000).tolist()),
    "npy_float16_lp_overflow.npy": npy(np.full((1, 1, 4, 4), 60000, np.float16)),
    # finding 8: formats the API never names
    "image.gif": image("GIF"),
    "image.tiff": image("TIFF"),
    "image.bmp": image("BMP"),
    "image.ico": image("ICO", 16),
    "image.eps": image("EPS", 4),
    "image.png": image("PNG"),
}


if __name__ == "__main__":
    for name, data in FILES.items():
        (HERE / name).write_bytes(data)
    print(f"{len(FILES)} files, {sum(map(len, FILES.values()))} bytes")
