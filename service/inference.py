"""The Open Inference Protocol's side of the service, shared by its REST routes
(:mod:`service.routes.v2`) and its gRPC server (:mod:`service.grpc_server`): models, metadata, errors, and
the job a worker answers.

Every method and preset of the registry is a model named after it, with one version, ``1``. An infer
request is an :class:`InferJob`, answered in a worker thread by the same batch function as ``POST /pool``
(:func:`service.pooling.answer_jobs`), so same-shaped, same-parameter requests share one operator call
whichever protocol they came by.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import poolcore
from poolcore.registry import ALIASES, MethodSpec

from .codecs import oip
from .errors import Problem, ServiceError, describe, shorten
from .limits import DEFAULT_LIMITS, WorkLimits
from .metrics import Metrics
from .pooling import PoolOutcome, PoolRequest

__all__ = [
    "MODEL_VERSION",
    "SERVER_EXTENSIONS",
    "InferJob",
    "NotFound",
    "error_status",
    "is_ready",
    "model_metadata",
    "model_spec",
    "server_metadata",
]

log = logging.getLogger("poolserve")

MODEL_VERSION = "1"
SERVER_NAME = "poolserve"
SERVER_VERSION = "0.1.0"
SERVER_EXTENSIONS = ("binary_tensor_data",)
_PLATFORM = "pytorch"
_VARIABLE_SHAPE = [-1, -1, -1, -1]  # (N, C, H, W) by default; ranks 1 to 5 are accepted (see properties)


class NotFound(ServiceError):
    status_code = 404


def model_spec(name: str, version: str | None = None) -> MethodSpec:
    """The registry entry a model name (a method, preset or alias) stands for; 404 for an unknown name or
    a version other than ``1``."""
    try:
        spec = poolcore.get_spec(name)
    except poolcore.UnknownMethodError:
        known = ", ".join([*poolcore.methods(), *ALIASES])
        raise NotFound(f"unknown model {shorten(name)}; the models are: {known}") from None
    if version not in (None, "", MODEL_VERSION):
        raise NotFound(
            f"model {spec.name!r} has no version {shorten(version)} (its one version is {MODEL_VERSION!r})"
        )
    return spec


def is_ready(state: Any) -> bool:
    """Ready for inference, for both protocols: warmed up (``app.state.ready``) and not draining (set by
    :class:`service.server.DrainingServer` on SIGTERM), as ``/ready`` says."""
    return bool(getattr(state, "ready", False)) and not bool(getattr(state, "draining", False))


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(SERVER_EXTENSIONS)}


def model_metadata(spec: MethodSpec) -> dict[str, Any]:
    """Name, versions, platform and tensors: any size (-1) in each dimension. A tensor's metadata has one
    datatype, so FP32 stands there; ``properties`` lists every input datatype and the ranks accepted."""
    return {
        "name": spec.name,
        "versions": [MODEL_VERSION],
        "platform": _PLATFORM,
        "inputs": [{"name": oip.INPUT_NAME, "datatype": "FP32", "shape": _VARIABLE_SHAPE}],
        "outputs": [{"name": oip.OUTPUT_NAME, "datatype": "FP32", "shape": _VARIABLE_SHAPE}],
        "properties": {
            "description": spec.description,
            "input_datatypes": ",".join(oip.DATATYPES),
            "input_ranks": "1,2,3,4,5",
            "output_datatype": "FP16, FP32 or FP64, as the input (integers pool as FP32)",
        },
    }


def error_status(error: BaseException, request_id: str | None = None) -> Problem:
    """A failed request as the protocol says it (:func:`service.errors.describe`): the protocol has 400
    for bad input, so our 422s (parameters poolcore refuses) are 400 here; every other status keeps its
    meaning."""
    problem = describe(error, request_id)
    return replace(problem, status=400) if problem.status == 422 else problem


@dataclass(frozen=True)
class InferJob:
    """One infer request for a worker (a :class:`service.pooling.Job`): ``read`` reads the protocol's
    request (REST body or gRPC message) into an :class:`oip.Decoded`; ``write`` writes the protocol's
    response from the outcome. Answered by :func:`service.pooling.answer_jobs`, with ``/pool``'s jobs."""

    method: str
    read: Callable[[], oip.Decoded]
    write: Callable[[PoolOutcome, oip.Decoded], Any]
    device: Any
    metrics: Metrics
    work: WorkLimits = DEFAULT_LIMITS  # output size, working memory and work, as for /pool

    def decode(self) -> tuple[oip.Decoded, PoolRequest]:
        request = self.read()
        pool_request = PoolRequest(
            request.tensor, self.method, request.params, request.mode, request.seed, self.device, self.work
        )
        return request, pool_request

    def encode(self, request: oip.Decoded, outcome: PoolOutcome) -> Any:
        return self.write(outcome, request)
