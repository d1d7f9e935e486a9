"""Issue 17, finding 5 over gRPC: an answer over POOLSERVE_MAX_RESPONSE_BYTES is RESOURCE_EXHAUSTED, named,
before it is encoded (a server of its own, with a small limit; the REST tests pin the limit to the byte)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from .support import HEADLESS, live_server_process
from .test_grpc import _free_port, _grpc_input

LIMIT = 4096  # bytes: a 1×1×4×4 float32 answer (64 bytes of data) fits, a 1×1×32×32 one (4 KiB) does not


def test_grpc_refuses_an_answer_over_the_limit() -> None:
    port = _free_port()
    env = {"POOLSERVE_GRPC_PORT": str(port), "POOLSERVE_MAX_RESPONSE_BYTES": str(LIMIT), **HEADLESS}
    with live_server_process(env) as _:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            small = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
            result = client.infer("avg", [_grpc_input(small)], parameters={"kernel_size": 2})
            assert result.as_numpy("output").shape == (1, 1, 4, 4)
            large = np.zeros((1, 1, 64, 64), dtype=np.float32)
            with pytest.raises(InferenceServerException) as caught:
                client.infer("avg", [_grpc_input(large)], parameters={"kernel_size": 2})
            assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert f"over the limit of {LIMIT} bytes (POOLSERVE_MAX_RESPONSE_BYTES)" in caught.value.message()
        finally:
            client.close()
