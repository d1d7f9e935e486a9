"""The Open Inference Protocol's gRPC service (KServe v2 ``inference.GRPCInferenceService``), served by
``grpc.aio`` in the same process and on the same event loop as the HTTP app, on ``POOLSERVE_GRPC_PORT``
(off when unset).

It shares everything with the REST routes (:mod:`service.routes.v2`): the models and errors of
:mod:`service.inference`, the torch worker threads and their batching (``app.state.workers``), the limits
(a message over ``max_body_bytes`` is refused by gRPC itself), the metrics (route label: the RPC's path)
and the API keys: ``authorization: Bearer <key>`` metadata, compared as the HTTP middleware compares
them; ServerLive and ServerReady stay open, as the HTTP probes do. The app's lifespan starts it and, at
shutdown, stops it gracefully: new RPCs are refused and those in flight finish first.

The messages in :mod:`service.oip_grpc` are generated from the protocol's ``.proto`` and checked in (see
that package); this module is imported only when the port is set, because protobuf keeps one registry of
message names per process and other OIP stubs (tritonclient's, kserve's) define the same ones.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import grpc.aio
import numpy as np
from starlette.datastructures import State

from .codecs import Limits, oip
from .config import Settings
from .errors import BadRequest
from .inference import (
    MODEL_VERSION,
    InferJob,
    error_status,
    infer_batch,
    is_ready,
    model_metadata,
    model_spec,
    server_metadata,
)
from .limits import RESPONSE_FRAMING, check_response
from .middleware import _key_problem
from .oip_grpc import open_inference_grpc_pb2 as pb2
from .pooling import PoolOutcome

__all__ = ["GrpcInferenceServicer", "start_grpc"]

log = logging.getLogger("poolserve")

_SERVICE = "/inference.GRPCInferenceService/"
# HTTP statuses of our errors as gRPC codes.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Which field of InferTensorContents holds each datatype's numbers (FP16 has none: raw bytes only).
_CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
}


class _Unauthenticated(Exception):
    status_code = 401


def _parameters(parameters: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise BadRequest(f"parameter {key!r} has no value")
        values[key] = getattr(parameter, choice)
    return values


def decode_request(request: pb2.ModelInferRequest, limits: Limits) -> oip.Decoded:
    """A ModelInferRequest's one input (``raw_input_contents`` or ``contents``), parameters and id."""
    inputs = request.inputs
    if len(inputs) != 1:
        if not inputs:
            raise BadRequest("the request has no inputs: send one input tensor")
        names = ", ".join(repr(i.name) for i in inputs)
        raise BadRequest(f"a pooling model takes one input tensor (got {len(inputs)}: {names})")
    tensor_msg = inputs[0]
    shape = list(tensor_msg.shape)
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise BadRequest(f"raw_input_contents has {len(raw)} entries for one input")
        if tensor_msg.HasField("contents"):
            raise BadRequest("the input has both contents and raw_input_contents: send one of them")
        tensor = oip.from_raw(raw[0], tensor_msg.datatype, shape, limits)
    else:
        field = _CONTENTS.get(tensor_msg.datatype)
        if tensor_msg.datatype == "FP16":
            raise BadRequest("FP16 data has no contents field in the protocol: send raw_input_contents")
        if field is None or not tensor_msg.HasField("contents"):
            # An unknown datatype is named by from_numbers; a known one needs its numbers.
            data: list[Any] = []
            if field is not None:
                raise BadRequest("the input has neither contents nor raw_input_contents")
        else:
            data = list(getattr(tensor_msg.contents, field))
        tensor = oip.from_numbers(data, tensor_msg.datatype, shape, limits)
    params, mode, seed = oip.run_options(_parameters(request.parameters))
    for output in request.outputs:
        if output.name != oip.OUTPUT_NAME:
            raise BadRequest(
                f"unknown output {output.name!r}: a pooling model has one output, {oip.OUTPUT_NAME!r}"
            )
    return oip.Decoded(tensor, params, mode, seed, request.id or None)


def encode_response(outcome: PoolOutcome, decoded: oip.Decoded) -> pb2.ModelInferResponse:
    """The output as ``raw_output_contents`` (as Triton answers), the parameters and seed used, the id."""
    array = np.ascontiguousarray(outcome.output.numpy())
    response = pb2.ModelInferResponse(
        model_name=outcome.method, model_version=MODEL_VERSION, id=decoded.request_id or ""
    )
    for key, value in oip.reported_parameters(outcome.params).items():
        parameter = response.parameters[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = value
    response.outputs.add(name=oip.OUTPUT_NAME, datatype=oip.datatype_of(outcome.output), shape=array.shape)
    response.raw_output_contents.append(array.tobytes())
    return response


class _Rpc:
    """A request as it arrived: its size on the wire (for the metrics and the batching) and its message."""

    __slots__ = ("message", "size")

    def __init__(self, size: int, message: Any) -> None:
        self.size = size
        self.message = message


class GrpcInferenceServicer:
    """Every RPC of the service on the app's state (workers, limits, device, metrics, readiness).

    Registered with handlers of its own (:meth:`handler`) rather than the generated
    ``add_GRPCInferenceServiceServicer_to_server``: each request keeps its size on the wire (protobuf's
    ``ByteSize`` serializes the whole message again to count it), and answers are serialized by the
    handlers, ModelInfer's in its worker thread, so no tensor-sized copy runs on the event loop.
    """

    def __init__(self, state: State, settings: Settings) -> None:
        self.state = state
        self.keys = tuple(key.encode() for key in settings.api_key_list)

    def _check_key(self, context: grpc.aio.ServicerContext) -> None:
        if not self.keys:
            return
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value.encode() if isinstance(value, str) else value
        problem = _key_problem(authorization, self.keys)
        if problem is not None:
            raise _Unauthenticated(problem[0])

    def handler(self, rpc: str, request_type: Any, *, open_: bool = False) -> grpc.RpcMethodHandler:
        """The method handler of ``rpc``: the API key check (unless ``open_``), the metrics, and our
        errors as gRPC status codes with their messages, around the method of that name."""
        method = getattr(self, rpc)

        async def behavior(call: _Rpc, context: grpc.aio.ServicerContext) -> bytes:
            start = time.perf_counter()
            status, sent, label = 200, 0, [""]  # label: the pooling method, once known
            try:
                if not open_:
                    self._check_key(context)
                answer = await method(call, label)
                data: bytes = answer if isinstance(answer, bytes) else answer.SerializeToString()
                sent = len(data)
                return data
            except Exception as error:
                if isinstance(error, _Unauthenticated):
                    status, message = 401, str(error)
                else:
                    status, message = error_status(error)
                await context.abort(_CODES.get(status, grpc.StatusCode.INTERNAL), message)
                raise  # not reached: abort raises
            finally:
                elapsed = time.perf_counter() - start
                self.state.metrics.observe(_SERVICE + rpc, label[0], status, elapsed, call.size, sent)

        def deserialize(data: bytes) -> _Rpc:
            return _Rpc(len(data), request_type.FromString(data))

        # No response serializer: the behaviour answers serialized bytes.
        return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=deserialize)

    def handlers(self) -> grpc.GenericRpcHandler:
        table = {
            "ServerLive": self.handler("ServerLive", pb2.ServerLiveRequest, open_=True),
            "ServerReady": self.handler("ServerReady", pb2.ServerReadyRequest, open_=True),
            "ServerMetadata": self.handler("ServerMetadata", pb2.ServerMetadataRequest),
            "ModelReady": self.handler("ModelReady", pb2.ModelReadyRequest),
            "ModelMetadata": self.handler("ModelMetadata", pb2.ModelMetadataRequest),
            "ModelInfer": self.handler("ModelInfer", pb2.ModelInferRequest),
        }
        return grpc.method_handlers_generic_handler(_SERVICE.strip("/"), table)

    async def ServerLive(self, call: _Rpc, label: list[str]) -> Any:
        return pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, call: _Rpc, label: list[str]) -> Any:
        return pb2.ServerReadyResponse(ready=is_ready(self.state))

    async def ServerMetadata(self, call: _Rpc, label: list[str]) -> Any:
        return pb2.ServerMetadataResponse(**server_metadata())

    async def ModelReady(self, call: _Rpc, label: list[str]) -> Any:
        label[0] = model_spec(call.message.name, call.message.version).name
        return pb2.ModelReadyResponse(ready=is_ready(self.state))

    async def ModelMetadata(self, call: _Rpc, label: list[str]) -> Any:
        spec = model_spec(call.message.name, call.message.version)
        label[0] = spec.name
        return pb2.ModelMetadataResponse(**model_metadata(spec))

    async def ModelInfer(self, call: _Rpc, label: list[str]) -> bytes:
        request = call.message
        spec = model_spec(request.model_name, request.model_version)
        label[0] = spec.name
        state = self.state

        def encode(outcome: PoolOutcome, decoded: oip.Decoded) -> bytes:
            rest = {"id": decoded.request_id, "parameters": oip.reported_parameters(outcome.params)}
            # 413 (RESOURCE_EXHAUSTED) before encoding
            check_response(outcome.output, "raw", state.work_limits, rest, RESPONSE_FRAMING)
            return encode_response(outcome, decoded).SerializeToString()

        job = InferJob(
            spec.name,
            lambda: decode_request(request, state.limits),
            encode,
            state.device,
            state.metrics,
            state.work_limits,
        )
        answer: bytes = await state.workers.run_batched(infer_batch, job, call.size)
        return answer


class GrpcServer:
    """The running ``grpc.aio`` server and how to stop it."""

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self.server = server
        self.port = port

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs, let those in flight finish (for at most ``grace`` seconds), then close."""
        await self.server.stop(grace)


async def start_grpc(state: State, settings: Settings) -> GrpcServer:
    """Serve the protocol's gRPC service on ``settings.grpc_host:grpc_port``, on the running loop."""
    port_number = settings.grpc_port
    if port_number is None:
        raise ValueError("grpc_port is not set")
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers((GrpcInferenceServicer(state, settings).handlers(),))
    address = f"{settings.grpc_host}:{port_number}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise RuntimeError(f"cannot serve gRPC on {address}: {error}") from None
    if port == 0:
        raise RuntimeError(f"cannot serve gRPC on {address}")
    await server.start()
    log.info("poolserve gRPC (Open Inference Protocol) on %s:%d", settings.grpc_host, port)
    return GrpcServer(server, port)
