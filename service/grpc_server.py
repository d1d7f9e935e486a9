"""The Open Inference Protocol's gRPC service (KServe v2 ``inference.GRPCInferenceService``), served by
``grpc.aio`` in the same process and on the same event loop as the HTTP app, on ``POOLSERVE_GRPC_PORT``
(off when unset).

It shares everything with the REST routes (:mod:`service.routes.v2`): the models and errors of
:mod:`service.inference`, the torch worker threads and their batching (``app.state.workers``), the limits
(a message over ``max_body_bytes`` is refused by gRPC itself), the metrics (route label: the RPC's path)
and the API keys: ``authorization: Bearer <key>`` metadata, checked by :func:`service.keys.key_problem`
and throttled by the app's one ``AuthThrottle`` (20 wrong keys from a client address within a minute:
RESOURCE_EXHAUSTED with ``retry-after`` trailing metadata for a minute); ServerLive and ServerReady stay
open, as the HTTP probes do. The app's lifespan starts it and, at shutdown, stops it gracefully: new RPCs
are refused and those in flight finish first.

What a client can make the server hold while its messages arrive:

- a call is refused from its metadata (key, throttle) before its message is read: every method is served
  as a stream-request handler, since grpc reads a unary call's whole message before its handler runs;
- ``POOLSERVE_GRPC_MAX_STREAMS`` streams a connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; grpc
  resets streams past it); a connection with no call for ``POOLSERVE_GRPC_IDLE_SECONDS`` is closed;
- a message not in within ``POOLSERVE_BODY_TIMEOUT`` of its call's start ends the call
  (DEADLINE_EXCEEDED), which frees what grpc buffered of it;
- a message is read only once ``max_body_bytes`` (the most it can be) is reserved out of
  ``POOLSERVE_GRPC_MAX_BUFFERED_BYTES`` for all connections; a call that gets no room within a second
  is refused with RESOURCE_EXHAUSTED. Until it is read, a stream's HTTP/2 window stays at 64 KiB (BDP
  probing is off; with it grpc opens every stream to 8 MiB, read or not).

So the bytes buffered for arriving messages are at most ``POOLSERVE_GRPC_MAX_BUFFERED_BYTES`` for those
being read, plus 64 KiB for each stream not yet read: ``POOLSERVE_GRPC_MAX_STREAMS`` × 64 KiB = 6.25 MiB
a connection by default. That second term grows with the number of connections, which gRPC does not cap.

The messages in :mod:`service.oip_grpc` are generated from the protocol's ``.proto`` and checked in (see
that package); this module is imported only when the port is set, because protobuf keeps one registry of
message names per process and other OIP stubs (tritonclient's, kserve's) define the same ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import grpc.aio
import numpy as np
from google.protobuf.message import DecodeError
from starlette.datastructures import State

from .codecs import Limits, oip
from .config import Settings
from .errors import BadRequest, clip_status, shorten
from .grpc_limits import ArrivalRoom, peer_host
from .inference import (
    MODEL_VERSION,
    InferJob,
    error_status,
    is_ready,
    model_metadata,
    model_spec,
    server_metadata,
)
from .keys import client_address, encode_keys, key_problem
from .limits import RESPONSE_FRAMING, check_response
from .oip_grpc import open_inference_grpc_pb2 as pb2
from .pooling import PoolOutcome, answer_jobs

__all__ = ["GrpcInferenceServicer", "start_grpc"]

log = logging.getLogger("poolserve")

_SERVICE = "/inference.GRPCInferenceService/"
# HTTP statuses of our errors as gRPC codes.
# How long a call waits for room for its message before RESOURCE_EXHAUSTED: long enough for a burst of
# small messages, each holding its room for a moment, to take turns; short enough that clients held up by
# messages arriving slowly learn so at once rather than at their message's deadline.
_ROOM_WAIT = 1.0
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


class _Refused(Exception):
    """A call stopped by the transport's own checks (its key, the throttle, the limits on arriving
    messages): the HTTP status it counts as in the metrics, its gRPC code and trailing metadata."""

    def __init__(
        self, status: int, code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.trailing = trailing


def _parameters(parameters: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise BadRequest(f"parameter {shorten(key)} has no value")
        values[key] = getattr(parameter, choice)
    return values


def decode_request(request: pb2.ModelInferRequest, limits: Limits) -> oip.Decoded:
    """A ModelInferRequest's one input (``raw_input_contents`` or ``contents``), parameters and id."""
    inputs = request.inputs
    if len(inputs) != 1:
        if not inputs:
            raise BadRequest("the request has no inputs: send one input tensor")
        raise oip.several_inputs(len(inputs), [shorten(i.name) for i in inputs[:3]])
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
                f"unknown output {shorten(output.name)}: a pooling model has one output, {oip.OUTPUT_NAME!r}"
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
        self.keys = encode_keys(settings.api_key_list)
        self.trusted_proxies = tuple(p.strip() for p in settings.trusted_proxies.split(",") if p.strip())
        self.body_timeout = settings.body_timeout
        # Each read reserves the largest message allowed, or all the room when that is less (then one
        # message arrives at a time, and the bound is max_body_bytes).
        self.message_room = min(settings.max_body_bytes, settings.grpc_max_buffered_bytes)
        self.room = ArrivalRoom(settings.grpc_max_buffered_bytes)

    def _check_key(self, rpc: str, context: grpc.aio.ServicerContext) -> None:
        """Refuse the call from its metadata alone, before its message is read: a client locked out for
        guessing (even with a right key), then a missing, malformed or wrong key."""
        if not self.keys:
            return
        metadata: dict[str, str | bytes] = {}
        for key, value in context.invocation_metadata() or ():
            if key in ("authorization", "x-forwarded-for"):
                metadata[key] = value
        forwarded = metadata.get("x-forwarded-for")
        if isinstance(forwarded, bytes):
            forwarded = forwarded.decode("latin-1")
        client = client_address(peer_host(context.peer()), forwarded, self.trusted_proxies)
        throttle = self.state.auth_throttle
        wait = throttle.retry_after(client)
        if wait is not None:
            log.warning("gRPC %s from %s refused: locked out for %s s", rpc, client, wait)
            message = f"too many wrong API keys from this address: retry after {wait} s"
            raise _Refused(429, grpc.StatusCode.RESOURCE_EXHAUSTED, message, (("retry-after", str(wait)),))
        problem = key_problem(metadata.get("authorization"), self.keys)
        if problem is None:
            return
        if problem.wrong_key:
            throttle.failed(client)
        log.warning("gRPC %s from %s refused: %s", rpc, client, problem.detail)
        raise _Refused(401, grpc.StatusCode.UNAUTHENTICATED, problem.detail)

    async def _receive(self, rpc: str, context: grpc.aio.ServicerContext, deadline: float) -> _Rpc:
        """The call's message, read once there is room for it, all within the body timeout; past it the
        call is ended, which frees what grpc buffered of the message."""
        loop = asyncio.get_running_loop()
        try:
            wait = min(_ROOM_WAIT, deadline - loop.time())
            await asyncio.wait_for(self.room.reserve(self.message_room), wait)
        except TimeoutError:
            log.warning("gRPC %s from %s cancelled: no room for its message", rpc, context.peer())
            message = (
                f"no room for the message: messages arriving may hold {self.room.capacity} bytes in all "
                "(POOLSERVE_GRPC_MAX_BUFFERED_BYTES), and that room is taken; retry later"
            )
            raise _Refused(503, grpc.StatusCode.RESOURCE_EXHAUSTED, message) from None
        try:
            call: _Rpc = await asyncio.wait_for(context.read(), deadline - loop.time())
        except TimeoutError:
            log.warning("gRPC %s from %s cancelled: its message did not arrive in time", rpc, context.peer())
            message = f"the message did not arrive within {self.body_timeout:g} s"
            raise _Refused(408, grpc.StatusCode.DEADLINE_EXCEEDED, message) from None
        finally:
            self.room.release(self.message_room)
        if call is grpc.aio.EOF:
            raise _Refused(400, grpc.StatusCode.INVALID_ARGUMENT, "the call carries no message")
        return call

    def handler(self, rpc: str, request_type: Any, *, open_: bool = False) -> grpc.RpcMethodHandler:
        """The method handler of ``rpc``: the API key check (unless ``open_``), the message's arrival, the
        metrics, and our errors as gRPC status codes with their messages, around the method of that name.

        Served as a stream-request handler, whatever the protocol says (the wire is the same): grpc reads
        a unary call's message before its handler runs, and this one must look at the metadata first, and
        bound how long the message takes and how much room it holds while it arrives."""
        method = getattr(self, rpc)

        async def behavior(_messages: Any, context: grpc.aio.ServicerContext) -> bytes:
            # The message is read with context.read() (in _receive), under its limits, not from _messages.
            start = time.perf_counter()
            deadline = asyncio.get_running_loop().time() + self.body_timeout
            status, size, sent, label = 200, 0, 0, [""]  # label: the pooling method, once known
            try:
                if not open_:
                    self._check_key(rpc, context)
                call = await self._receive(rpc, context, deadline)
                size = call.size
                if call.message is None:  # see deserialize
                    raise BadRequest(f"the request is not a {rpc} request message (protobuf)")
                answer = await method(call, label)
                data: bytes = answer if isinstance(answer, bytes) else answer.SerializeToString()
                sent = len(data)
                return data
            except _Refused as refused:
                status = refused.status
                await context.abort(
                    refused.code, clip_status(str(refused)), trailing_metadata=refused.trailing
                )
                raise  # not reached: abort raises
            except Exception as error:
                problem = error_status(error)
                status = problem.status
                await context.abort(grpc.StatusCode[problem.grpc_code], clip_status(problem.message))
                raise  # not reached: abort raises
            finally:
                elapsed = time.perf_counter() - start
                self.state.metrics.observe(_SERVICE + rpc, label[0], status, elapsed, size, sent)

        def deserialize(data: bytes) -> _Rpc:
            # An unreadable message is answered by the behaviour, as INVALID_ARGUMENT in our words: grpc
            # would answer UNKNOWN, naming protobuf's exception class.
            try:
                return _Rpc(len(data), request_type.FromString(data))
            except DecodeError:
                return _Rpc(len(data), None)

        # No response serializer: the behaviour answers serialized bytes.
        return grpc.stream_unary_rpc_method_handler(behavior, request_deserializer=deserialize)

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
        answer: bytes = await state.workers.run_batched(answer_jobs, job, call.size)
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
            # Advertised as SETTINGS_MAX_CONCURRENT_STREAMS; grpc refuses streams past it.
            ("grpc.max_concurrent_streams", settings.grpc_max_streams),
            ("grpc.max_connection_idle_ms", max(1, round(settings.grpc_idle_seconds * 1000))),
            # Without BDP probing a stream's window stays at HTTP/2's 64 KiB until its message is read
            # (then grpc opens it to the message's size): with probing it grows to 8 MiB and more on
            # every stream, read or not, and 100 idle streams could hold 800 MiB a connection.
            ("grpc.http2.bdp_probe", 0),
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
