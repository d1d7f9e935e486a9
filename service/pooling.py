"""The one in-process entry point that both the HTTP route and the Gradio UI call.

``run_pool`` and ``pool_many`` are synchronous on purpose: callers run them in one of the app's torch
worker threads (:mod:`service.workers`), never on the event loop. ``pool_many`` is the route's batch path:
requests that ask the same deterministic question of same-shaped inputs are answered by one operator call
on their inputs stacked plane by plane, which gives each the bytes it would get alone (every method pools
each plane on its own), at a fraction of the per-call overhead for small inputs.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

import numpy as np
import orjson
import torch
from torch import Tensor

import poolcore
from poolcore.registry import MethodSpec
from poolcore.windows import infer_dims

from .errors import InvalidInput, ServiceError, ServiceUnavailable, shorten
from .limits import DEFAULT_LIMITS, WorkLimits, check_work

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = [
    "MAX_SEED",
    "Job",
    "PoolOutcome",
    "PoolRequest",
    "answer_jobs",
    "answer_many",
    "check_input",
    "device_faults",
    "pool_many",
    "poolcore_errors",
    "run_pool",
]

log = logging.getLogger("poolserve")

Mode = Literal["eval", "train"]
J = TypeVar("J")  # a protocol's job (see answer_many)
C = TypeVar("C")  # what that protocol's encode needs of its decoded request
_SMALL = 1 << 16  # elements: inputs up to this size are checked with numpy (see check_input)
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
MAX_SEED = 2**63 - 1  # seeds are drawn from, and accepted in, [0, 2**63 - 1]


@contextmanager
def poolcore_errors() -> Iterator[None]:
    """poolcore's ``ValueError``/``TypeError`` (bad parameters or input, with a message naming them) as
    :class:`InvalidInput` (a 422); ``UnknownMethodError`` passes through (a 404), and so do errors already
    typed. Only around validation and calls into poolcore: a stray ``ValueError`` elsewhere is a bug, and
    stays a 500."""
    try:
        yield
    except (poolcore.UnknownMethodError, ServiceError):
        raise
    except (ValueError, TypeError) as error:
        raise InvalidInput(str(error)) from None


@dataclass(frozen=True)
class PoolOutcome:
    output: Tensor  # on the CPU; made under inference_mode, so clone() it before editing in place
    method: str
    params: dict[str, Any]  # resolved: defaults filled in, presets applied, plus mode and seed
    device: str
    elapsed_ms: float
    batch: int = 1  # requests answered by the same operator call (see pool_many)


def check_input(x: Tensor) -> None:
    """What every method needs of its input: a real floating tensor of rank 1 to 5, all finite."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor (got {type(x).__name__})")
    if not 1 <= x.dim() <= 5:
        raise ValueError(f"input must have rank 1 to 5 (got rank {x.dim()}, shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"input must be a real floating-point tensor (got dtype {x.dtype})")
    if x.numel() == 0:
        return  # the operator names the empty dimension
    if not _all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"input must be finite ({bad} values are NaN or infinite)")


def _all_finite(x: Tensor) -> bool:
    """Whether a non-empty floating tensor holds no NaN or infinity."""
    if x.numel() <= _SMALL and x.device.type == "cpu" and x.dtype in _NUMPY_FLOATS:
        # numpy keeps the GIL for a small array: each torch call here would hand the GIL to the event
        # loop and wait to get it back, which costs a small request more than the check itself.
        return bool(np.isfinite(x.numpy()).all())
    # One min/max pass (NaN propagates, ±inf shows) instead of materialising isfinite's mask.
    low, high = (float(v) for v in torch.aminmax(x))
    return math.isfinite(low) and math.isfinite(high)


@dataclass(frozen=True)
class PoolRequest:
    """One call of :func:`run_pool`, as :func:`pool_many` takes them."""

    x: Tensor
    method: str
    params: Mapping[str, Any] | None = None
    mode: Mode = "eval"
    seed: int | None = None
    device: torch.device | str = "cpu"
    limits: WorkLimits = DEFAULT_LIMITS  # output size and working memory


@dataclass(frozen=True)
class _Checked:
    """A request whose method, parameters, mode, seed and input passed every check."""

    x: Tensor
    spec: MethodSpec
    resolved: dict[str, Any]
    resolved_key: bytes  # canonical JSON of ``resolved``
    training: bool
    seed: int | None  # drawn if train mode needs one and none was given; None where unused
    device: torch.device

    def batch_key(self) -> Hashable | None:
        """Requests with equal keys may run as one call; None for one that must run alone: it draws random
        numbers, or its method's output could change in the last bit when stacked with others."""
        if self.seed is not None or not self.spec.stackable:
            return None
        shape = tuple(self.x.shape)
        return (self.spec.name, self.resolved_key, self.training, shape, self.x.dtype, self.device)

    def params(self) -> dict[str, Any]:
        """The resolved parameters as reported: defaults filled in, plus mode and the seed used."""
        return {**self.resolved, "mode": "train" if self.training else "eval", "seed": self.seed}

    def outcome(
        self, output: Tensor, elapsed_ms: float, params: dict[str, Any], batch: int = 1
    ) -> PoolOutcome:
        return PoolOutcome(output, self.spec.name, params, str(self.device), elapsed_ms, batch)


def _check(request: PoolRequest) -> _Checked:
    """Every check of a request, before anything is allocated; what fails is the client's mistake."""
    with poolcore_errors():
        return _checked(request)


def _checked(request: PoolRequest) -> _Checked:
    mode, seed = request.mode, request.seed
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train' (got {shorten(mode)})")
    bad_seed = isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
    if seed is not None and bad_seed:
        raise ValueError(f"seed must be an integer from 0 to 2**63-1 (got {shorten(seed)})")
    spec = poolcore.get_spec(request.method)
    resolved, resolved_key = _resolve(spec, request.params)
    check_input(request.x)
    training = mode == "train"
    if not (training and spec.random):
        seed = None  # not used: reported as null
    elif seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    device = torch.device(request.device)
    shape = tuple(request.x.shape)
    check_work(
        spec, resolved, shape, request.x.dtype, training, device, request.limits
    )  # 413 before allocating
    return _Checked(request.x, spec, resolved, resolved_key, training, seed, device)


_RESOLVED: dict[tuple[str, bytes], tuple[MethodSpec, dict[str, Any], bytes]] = {}
_RESOLVED_MAX = 1024


def _resolve(spec: MethodSpec, params: Mapping[str, Any] | None) -> tuple[dict[str, Any], bytes]:
    """``spec.resolve(params)`` and its canonical JSON, remembered per method and parameters: clients
    repeat the same few parameter sets, and validating them is a good part of a small request's cost.
    The resolved dict is shared between requests, so nothing may change it in place."""
    try:
        key = (spec.name, orjson.dumps(params or {}, option=orjson.OPT_SORT_KEYS))
    except TypeError:  # not JSON (a caller's own objects): validate without remembering
        resolved = spec.resolve(params)
        return resolved, orjson.dumps(resolved, option=orjson.OPT_SORT_KEYS, default=repr)
    hit = _RESOLVED.get(key)
    if hit is not None and hit[0] is spec:  # the same spec object: a re-registered name is resolved anew
        return hit[1], hit[2]
    resolved = spec.resolve(params)
    canonical = orjson.dumps(resolved, option=orjson.OPT_SORT_KEYS)
    if len(_RESOLVED) >= _RESOLVED_MAX:  # a client sending ever-new parameters: start over
        _RESOLVED.clear()
    _RESOLVED[key] = (spec, resolved, canonical)
    return resolved, canonical


def _check_output(output: Tensor, method: str) -> Tensor:
    """A finite input can still give a result its dtype cannot hold (lp's sum over float16 near 65504):
    a ``ValueError`` (422) naming the cause, never an answer with NaN, inf or JSON ``null`` in it."""
    if output.numel() and output.is_floating_point() and not _all_finite(output):
        bad = int((~torch.isfinite(output)).sum())
        raise InvalidInput(
            f"the result of {method} is not finite: {bad} values overflow {str(output.dtype)[6:]} (largest "
            f"{torch.finfo(output.dtype).max:g}); send float32 or float64 input, smaller values or smaller p"
        )
    return output


# Messages of torch's RuntimeErrors that are the device's fault, not the request's: torch raises
# OutOfMemoryError for CUDA and AcceleratorError for other CUDA errors, but a CPU allocation failure and
# older CUDA paths (cuBLAS, cuDNN) are plain RuntimeErrors.
_DEVICE_FAULTS = (
    "CUDA error",
    "CUDA out of memory",
    "CUBLAS_STATUS_",
    "CUDNN_STATUS_",
    "can't allocate memory",
)


def _is_device_fault(error: BaseException) -> bool:
    if isinstance(
        error, (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", torch.OutOfMemoryError))
    ):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _DEVICE_FAULTS)


@contextmanager
def device_faults(device: torch.device) -> Iterator[None]:
    """An out-of-memory or other device error inside the operator as a 503 (the client may retry), after
    freeing the CUDA cache so the next request starts from a clean allocator; anything else passes."""
    try:
        yield
    except Exception as error:
        if not _is_device_fault(error):
            raise
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        what = "ran out of memory" if "memory" in str(error).lower() else "failed"
        raise ServiceUnavailable(f"the {device.type} device {what} while pooling; retry later") from None


def _execute(checked: _Checked) -> Tensor:
    generator = None
    if checked.seed is not None:
        generator = torch.Generator(device=checked.device).manual_seed(checked.seed)
    with device_faults(checked.device), torch.inference_mode(), poolcore_errors():
        x = checked.x.to(checked.device)
        output = checked.spec.run(x, checked.resolved, training=checked.training, generator=generator).cpu()
    return _check_output(output, checked.spec.name)


def _execute_stacked(group: Sequence[_Checked]) -> list[Tensor]:
    """One operator call for same-shaped inputs with equal parameters: every input's planes (the
    dimensions before the pooled ones) side by side in one ``(1, planes, *spatial)`` batch."""
    first = group[0]
    shape = tuple(first.x.shape)
    window = first.resolved
    dims = infer_dims(len(shape), window.get("kernel_size"), window.get("output_size"), window.get("dims"))
    spatial = shape[len(shape) - dims :]
    with device_faults(first.device), torch.inference_mode(), poolcore_errors():
        planes = torch.stack([c.x for c in group]).to(first.device).reshape(1, -1, *spatial)
        pooled = first.spec.run(planes, {**window, "dims": dims}, training=first.training).cpu()
    _check_output(pooled, first.spec.name)  # else each runs alone, for its own error
    outputs = pooled.reshape(len(group), *shape[: len(shape) - dims], *pooled.shape[2:]).unbind(0)
    return list(outputs)


def run_pool(
    x: Tensor,
    method: str,
    params: Mapping[str, Any] | None = None,
    *,
    mode: Mode = "eval",
    seed: int | None = None,
    device: torch.device | str = "cpu",
    limits: WorkLimits | None = None,
) -> PoolOutcome:
    """Validate, move to ``device``, pool under ``inference_mode`` and bring the result back to the CPU.

    In train mode a random method uses ``seed``, or a freshly drawn one, and reports it in
    ``params["seed"]``: the same call with that seed gives the same output on the same device.

    Raises ``poolcore.UnknownMethodError`` for an unknown name and ``ValueError``/``TypeError`` for bad
    parameters or input, each with a message naming the problem; ``PayloadTooLarge`` (413) for an output
    or working memory over ``limits`` (default: the service's), checked before anything is allocated; and
    ``ServiceUnavailable`` (503) for a device fault (out of memory) while pooling.
    """
    checked = _check(PoolRequest(x, method, params, mode, seed, device, limits or DEFAULT_LIMITS))
    start = time.perf_counter()
    output = _execute(checked)
    return checked.outcome(output, (time.perf_counter() - start) * 1e3, checked.params())


def pool_many(
    requests: Sequence[PoolRequest], on_fallback: Callable[[str], None] | None = None
) -> list[PoolOutcome | Exception]:
    """:func:`run_pool` for each request, in order: its outcome, or the exception ``run_pool`` would raise.

    Requests of a stackable method (``MethodSpec.stackable``) that draw no random numbers and agree on
    method, resolved parameters, mode, input shape, dtype and device run as one operator call
    (``elapsed_ms`` is then that call's time, ``batch`` the number of requests it answered). Should such a
    call fail, its requests run one by one, so each gets its own error; the failure is logged with its
    traceback and reported to ``on_fallback(method)`` (a metric), since a stackable method should never
    fail where its requests alone would not.
    """
    results: list[PoolOutcome | Exception | None] = [None] * len(requests)
    groups: dict[Hashable, list[tuple[int, _Checked]]] = {}
    for index, request in enumerate(requests):
        try:
            checked = _check(request)
        except Exception as error:
            results[index] = error
            continue
        key = checked.batch_key()
        groups.setdefault(index if key is None else key, []).append((index, checked))
    for members in groups.values():
        shared_failure: Exception | None = None
        if len(members) > 1:
            start = time.perf_counter()
            try:
                outputs = _execute_stacked([checked for _, checked in members])
            except Exception as error:
                shared_failure = error  # run them one by one below, each raising its own error
            else:
                elapsed_ms = (time.perf_counter() - start) * 1e3
                # One params dict for the group: equal for all of them, and callers may rely on the identity
                # to treat the group's outcomes alike (the route builds their headers once).
                params = members[0][1].params()
                for (index, checked), output in zip(members, outputs, strict=True):
                    results[index] = checked.outcome(output, elapsed_ms, params, len(members))
                continue
        for index, checked in members:
            start = time.perf_counter()
            try:
                output = _execute(checked)
            except Exception as error:
                results[index] = error
            else:
                elapsed_ms = (time.perf_counter() - start) * 1e3
                results[index] = checked.outcome(output, elapsed_ms, checked.params())
        if shared_failure is not None and any(
            not isinstance(results[index], Exception) for index, _ in members
        ):
            # The requests ran alone where their shared call failed: a bug in stacking, not the client's
            # mistake (which fails alone too, and is answered as such).
            method = members[0][1].spec.name
            log.warning(
                "a shared call of %s for %d requests failed where they ran alone",
                method,
                len(members),
                exc_info=shared_failure,
            )
            if on_fallback is not None:
                on_fallback(method)
    return cast(list[PoolOutcome | Exception], results)  # every slot was filled above


def answer_many(
    jobs: Sequence[J],
    decode: Callable[[J], tuple[C, PoolRequest]],
    encode: Callable[[J, C, PoolOutcome], Any],
    on_fallback: Callable[[str], None] | None = None,
) -> list[Any]:
    """The batch path of every protocol (``/pool``, ``/v2``, gRPC), in a worker thread: ``decode`` each job
    into its request (plus what ``encode`` needs of it), :func:`pool_many` them all (same-question requests
    share one call), then ``encode`` each outcome. Each job gets its answer, or the exception that becomes
    its error (poolcore's ``ValueError``/``TypeError`` as a 422)."""
    answers: list[Any] = [None] * len(jobs)
    decoded: list[tuple[int, C]] = []
    requests: list[PoolRequest] = []
    for index, job in enumerate(jobs):
        try:
            context, request = decode(job)
        except Exception as error:
            answers[index] = error
            continue
        decoded.append((index, context))
        requests.append(request)
    for (index, context), outcome in zip(decoded, pool_many(requests, on_fallback), strict=True):
        try:
            if isinstance(outcome, Exception):
                raise outcome  # typed where it was found: a client's mistake is InvalidInput
            answers[index] = encode(jobs[index], context, outcome)
        except Exception as error:
            answers[index] = error
    return answers


class Job(Protocol):
    """One request of any protocol, as a worker answers it: ``decode`` reads it (in the worker) into what
    ``encode`` needs and the :class:`PoolRequest`; ``encode`` writes the protocol's answer."""

    @property
    def metrics(self) -> Metrics: ...

    def decode(self) -> tuple[Any, PoolRequest]: ...

    def encode(self, context: Any, outcome: PoolOutcome) -> Any: ...


def answer_jobs(jobs: Sequence[Job]) -> list[Any]:
    """The one batch function of the workers, for every protocol (``/pool``, ``/v2``, gRPC): the jobs
    queued together, whatever their protocol, are decoded, pooled (same-question requests in one call,
    across protocols) and encoded by :func:`answer_many`."""

    def encode(job: Job, context: Any, outcome: PoolOutcome) -> Any:
        answer = job.encode(context, outcome)
        # A shared call counts once in the sum: each of its requests observes its share.
        job.metrics.observe_pool(outcome.method, outcome.elapsed_ms / 1e3 / outcome.batch)
        return answer

    fallback = jobs[0].metrics.observe_stack_fallback if jobs else None
    return answer_many(jobs, lambda job: job.decode(), encode, fallback)
