"""The issue's bad-input table as data, run in process (routes/test_pool.py) and over a real socket
(test_live.py). Each case must give its status and a ``detail`` naming the problem.

Limits are support.LIMITS: body 1 MiB, 2**18 elements, 2**16 image pixels.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest

import poolcore

from .support import LIMITS, npy_bytes, png_bytes

__all__ = ["CASES", "BadCase", "bomb_png", "lying_npy", "send"]

NPY = {"content-type": "application/x-npy"}
JSON = {"content-type": "application/json"}
PNG = {"content-type": "image/png"}
GOOD = np.random.default_rng(0).uniform(0.1, 1.0, (1, 1, 4, 4)).astype(np.float32)


@dataclass(frozen=True)
class BadCase:
    id: str
    status: int
    fragment: str  # a piece of the detail message, lower case
    body: bytes | Callable[[], Iterator[bytes]] = b""
    headers: dict[str, str] = field(default_factory=lambda: dict(NPY))
    query: dict[str, str] = field(default_factory=lambda: {"kernel_size": "2"})
    method: str = "avg"


def json_body(data: Any, **params: Any) -> bytes:
    return orjson.dumps({"data": data, "params": params})


def lying_npy(shape: tuple[int, ...], payload: int) -> bytes:
    """A valid .npy header that claims ``shape`` float32, followed by only ``payload`` bytes."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    head = repr(header).encode("latin-1")
    pad = 64 - (10 + len(head) + 1) % 64
    head = head + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + b"\0" * payload


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _stream(total: int, piece: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            yield b"\0" * piece
            sent += piece

    return gen


def _stochastic_negative() -> list[Any]:
    """Negative input for stochastic and anything built on it: registry-driven, so it runs once
    stochastic is registered (skips, saying why, until then)."""
    names = [n for n in poolcore.methods() if "stochastic" in (n, poolcore.get_spec(n).base)]
    negative = -GOOD
    cases = [
        BadCase(
            f"negative-input-{name}",
            422,
            "negative",
            npy_bytes(negative),
            method=name,
            query={"kernel_size": "2"},
        )
        for name in names
    ]
    if not cases:
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(reason="stochastic is not registered yet"),
                id="negative-input-stochastic",
            )
        ]
    return cases


object_array = np.empty(2, dtype=object)
object_array[:] = [1, "x"]
big = LIMITS["max_body_bytes"]

CASES: list[Any] = [
    # 400: malformed bodies
    BadCase("malformed-json", 400, "malformed json", b'{"data": [1, 2', JSON),
    BadCase("json-nan-literal", 400, "malformed json", b'{"data": [NaN, 1]}', JSON),
    BadCase("malformed-npy", 400, "malformed .npy", b"\x93NUMPY\x01\x00garbage"),
    BadCase("not-npy", 400, "malformed .npy", b"hello world"),
    BadCase("npy-header-lies", 400, "header says", lying_npy((4096, 4096), 64)),
    BadCase("npy-truncated", 400, "header says", npy_bytes(GOOD)[:-4]),
    BadCase("npy-trailing-bytes", 400, "header says", npy_bytes(GOOD) + b"\0" * 8),
    BadCase("malformed-image", 400, "malformed image", b"\x89PNG\r\n\x1a\nnot really", PNG),
    BadCase("multipart-no-boundary", 400, "boundary", b"x", {"content-type": "multipart/form-data"}),
    # 404
    BadCase("unknown-method", 404, "known methods: avg", npy_bytes(GOOD), method="no_such_pool"),
    # 406
    BadCase("accept-html", 406, "accept", npy_bytes(GOOD), {**NPY, "accept": "text/html"}),
    BadCase("accept-png-q0", 406, "accept", npy_bytes(GOOD), {**NPY, "accept": "image/png;q=0"}),
    BadCase(
        "png-for-non-image",
        406,
        "not an image",
        npy_bytes(np.arange(2 * 5 * 4 * 4, dtype=np.float32).reshape(2, 5, 4, 4)),
        {**NPY, "accept": "image/png"},
    ),
    # 413
    BadCase("content-length-over", 413, "over the limit", b"\0" * (big + 1)),
    BadCase("stream-over-no-content-length", 413, "over the limit", _stream(2 * big)),
    BadCase(
        "elements-over",
        413,
        "elements",
        npy_bytes(np.zeros(LIMITS["max_elements"] + 1, np.float16)),
        query={"kernel_size": "2"},
    ),
    BadCase(
        "json-elements-over",
        413,
        "elements",
        json_body([0] * (LIMITS["max_elements"] + 1), kernel_size=2),
        JSON,
        query={},
    ),
    BadCase("image-pixels-over", 413, "pixels", png_bytes(np.zeros((300, 300), np.uint8)), PNG),
    BadCase("decompression-bomb", 413, "decompression bomb", bomb_png(100_000, 100_000), PNG),
    # 415
    BadCase("text-plain", 415, "unsupported content-type", b"1 2 3", {"content-type": "text/plain"}),
    BadCase("no-content-type", 415, "unsupported content-type", b"1 2 3", {}),
    # 422: data
    BadCase("ragged-lists", 422, "ragged", json_body([[1, 2], [3]], kernel_size=1), JSON, query={}),
    BadCase("json-rank-0", 422, "rank", json_body(5.0, kernel_size=1), JSON, query={}),
    BadCase("json-rank-6", 422, "rank", json_body(np.ones((1,) * 6).tolist(), kernel_size=1), JSON, query={}),
    BadCase("npy-rank-0", 422, "rank", npy_bytes(np.array(1.0, np.float32))),
    BadCase("npy-rank-6", 422, "rank", npy_bytes(np.ones((1, 1, 1, 1, 2, 2), np.float32))),
    BadCase("json-empty", 422, "empty", json_body([[]], kernel_size=[1]), JSON, query={}),
    BadCase("json-strings", 422, "numbers", json_body([["a", "b"]], kernel_size=1), JSON, query={}),
    BadCase("json-booleans", 422, "numbers", json_body([[True, False]], kernel_size=1), JSON, query={}),
    BadCase("json-null", 422, "numbers", json_body([[1.0, None]], kernel_size=1), JSON, query={}),
    BadCase("npy-object-pickle", 422, "object", npy_bytes(object_array)),
    BadCase("npy-complex", 422, "complex", npy_bytes(GOOD.astype(np.complex64))),
    BadCase("npy-strings", 422, "dtype", npy_bytes(np.array([["a", "b"]]))),
    BadCase("npy-nan", 422, "finite", npy_bytes(np.where(GOOD > 0.5, np.nan, GOOD).astype(np.float32))),
    BadCase("npy-inf", 422, "finite", npy_bytes(np.where(GOOD > 0.5, np.inf, GOOD).astype(np.float32))),
    BadCase("json-overflow-to-inf", 422, "finite", json_body([[1e300, 1.0]], kernel_size=1), JSON, query={}),
    *_stochastic_negative(),
    # 422: parameters
    BadCase(
        "window-larger-than-input",
        422,
        "larger than the padded input",
        npy_bytes(GOOD),
        query={"kernel_size": "5"},
    ),
    BadCase(
        "window-larger-with-padding",
        422,
        "larger than the padded input",
        npy_bytes(GOOD),
        query={"kernel_size": "7", "padding": "1"},
    ),
    BadCase(
        "both-window-args",
        422,
        "exactly one",
        npy_bytes(GOOD),
        query={"kernel_size": "2", "output_size": "2"},
    ),
    BadCase("neither-window-arg", 422, "exactly one", npy_bytes(GOOD), query={}),
    BadCase(
        "unknown-param", 422, "unknown parameter", npy_bytes(GOOD), query={"kernel_size": "2", "foo": "1"}
    ),
    BadCase(
        "json-unknown-param",
        422,
        "unknown parameter",
        json_body(GOOD.tolist(), kernel_size=2, bar=1),
        JSON,
        query={},
    ),
    BadCase(
        "param-twice",
        422,
        "more than once",
        json_body(GOOD.tolist(), kernel_size=2),
        JSON,
        query={"kernel_size": "2"},
    ),
    BadCase("bad-tuple", 422, "kernel_size", npy_bytes(GOOD), query={"kernel_size": "2,x"}),
    BadCase("bad-mode", 422, "mode", npy_bytes(GOOD), query={"kernel_size": "2", "mode": "test"}),
    BadCase(
        "bad-seed", 422, "seed", npy_bytes(GOOD), query={"kernel_size": "2", "mode": "train", "seed": "-1"}
    ),
    BadCase("json-no-data", 422, 'no "data"', orjson.dumps({"params": {}}), JSON, query={}),
    BadCase(
        "json-unknown-key", 422, "unknown key", orjson.dumps({"data": [1.0], "extra": 1}), JSON, query={}
    ),
    BadCase("json-not-object", 422, "must be an object", b"[1, 2]", JSON, query={}),
    BadCase("bad-dtype", 422, "dtype", orjson.dumps({"data": [1.0, 2.0], "dtype": "int8"}), JSON, query={}),
]


def send(client: Any, case: BadCase) -> Any:
    body = case.body() if callable(case.body) else case.body
    return client.post(f"/pool/{case.method}", params=case.query, headers=case.headers, content=body)
