"""Run by tests/service/test_kserve_sdk.py in a process of its own: the kserve SDK's REST and gRPC clients,
one infer each (and readiness), against the server at ``argv[1]`` (HTTP base URL) and ``argv[2]`` (gRPC
host:port). Prints one JSON document with the outputs and what came back.

A process of its own because kserve's gRPC stubs and tritonclient's define the same protobuf message names,
which one process cannot hold twice.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import numpy as np
import orjson
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _request(x: np.ndarray, binary: bool, request_id: str) -> InferRequest:
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(
        model_name="max", infer_inputs=[tensor], parameters={"kernel_size": 2}, request_id=request_id
    )


async def main(url: str, grpc_url: str, x: np.ndarray) -> dict[str, Any]:
    report: dict[str, Any] = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    try:
        for binary in (False, True):
            result = await rest.infer(url, _request(x, binary, f"rest-{binary}"), model_name="max")
            report[f"rest-{binary}"] = {"id": result.id, "output": result.outputs[0].as_numpy().tolist()}
        report["rest-ready"] = await rest.is_server_ready(url) and await rest.is_model_ready(url, "max")
    finally:
        await rest.close()
    client = InferenceGRPCClient(url=grpc_url)
    try:
        result = await client.infer(_request(x, True, "grpc"))
        report["grpc"] = {"id": result.id, "output": result.outputs[0].as_numpy().tolist()}
        report["grpc-ready"] = await client.is_server_ready()
    finally:
        await client.close()
    return report


if __name__ == "__main__":
    data = np.asarray(orjson.loads(sys.stdin.buffer.read()), dtype=np.float32)
    sys.stdout.buffer.write(orjson.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], data))))
