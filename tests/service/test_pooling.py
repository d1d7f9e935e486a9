"""run_pool, the entry point shared by the route and the UI, and pool_many, the route's batch path."""

from __future__ import annotations

import pytest
import torch

import poolcore
from service.pooling import PoolOutcome, PoolRequest, pool_many, run_pool

from .support import default_params


@pytest.mark.parametrize("method", poolcore.methods())
def test_matches_poolcore(method: str) -> None:
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    params = default_params(method)
    out = run_pool(x, method, params)
    torch.testing.assert_close(out.output, poolcore.get_spec(method)(x, params))
    assert out.method == poolcore.get_spec(method).name
    assert out.params == {**poolcore.get_spec(method).resolve(params), "mode": "eval", "seed": None}
    assert out.device == "cpu" and out.elapsed_ms >= 0
    assert out.output.device.type == "cpu"


def test_known_torch_reference() -> None:
    x = torch.rand(1, 2, 9, 7, generator=torch.Generator().manual_seed(1))
    out = run_pool(x, "max", {"kernel_size": (3, 2), "stride": (2, 1), "padding": 1})
    torch.testing.assert_close(out.output, torch.nn.functional.max_pool2d(x, (3, 2), (2, 1), 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "test"}, "mode must be"),
        ({"mode": "train", "seed": -1}, "seed must be"),
        ({"mode": "train", "seed": True}, "seed must be"),
        ({"mode": "train", "seed": 2**63}, "seed must be"),
    ],
)
def test_bad_run_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_pool(torch.ones(1, 4, 4), "avg", {"kernel_size": 2}, **kwargs)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.ones(()), "rank 1 to 5"),
        (torch.ones(1, 1, 1, 1, 2, 2), "rank 1 to 5"),
        (torch.ones(4, 4, dtype=torch.int64), "floating-point"),
        (torch.tensor([[1.0, float("nan")]]), "finite"),
        (torch.tensor([[1.0, float("inf")]]), "finite"),
    ],
)
def test_bad_input(x: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_pool(x, "avg", {"kernel_size": 1})


def test_unknown_method() -> None:
    with pytest.raises(poolcore.UnknownMethodError, match="known methods"):
        run_pool(torch.ones(4, 4), "nope")


def test_non_random_train_mode_has_no_seed() -> None:
    out = run_pool(torch.ones(1, 4, 4), "avg", {"kernel_size": 2, "dims": 2}, mode="train", seed=3)
    assert out.params["mode"] == "train" and out.params["seed"] is None


# Shapes of every accepted rank and window form: 1d unbatched/batched, 2d single-channel/unbatched/batched,
# 3d batched; each (shape, params) pair is valid for every method that takes a sliding window.
_SHAPES = [
    ((7,), {"kernel_size": 2}),
    ((3, 9), {"kernel_size": 3, "stride": 2, "dims": 1}),
    ((5, 6), {"kernel_size": 2, "dims": 2}),
    ((2, 5, 7), {"kernel_size": 2, "ceil_mode": True, "dims": 2}),
    ((2, 3, 6, 6), {"kernel_size": 3, "padding": 1}),
    ((1, 2, 4, 5, 6), {"kernel_size": 2}),
]


def _sliding(method: str) -> bool:
    return "kernel_size" in poolcore.get_spec(method).params.model_fields


@pytest.mark.parametrize("method", [m for m in poolcore.methods() if _sliding(m)])
@pytest.mark.parametrize(("shape", "params"), _SHAPES)
def test_pool_many_batch_gives_each_request_its_own_bytes(
    method: str, shape: tuple[int, ...], params: dict[str, object]
) -> None:
    """Requests that share one operator call get exactly what each would get from run_pool alone."""
    generator = torch.Generator().manual_seed(1)
    xs = [torch.rand(shape, generator=generator) + 0.1 for _ in range(4)]
    outcomes = pool_many([PoolRequest(x, method, params) for x in xs])
    for x, outcome in zip(xs, outcomes, strict=True):
        assert isinstance(outcome, PoolOutcome)
        alone = run_pool(x, method, params)
        assert outcome.output.shape == alone.output.shape
        assert torch.equal(outcome.output, alone.output)
        assert outcome.params == alone.params and outcome.method == alone.method
        # Stackable methods really shared one call (else this test would compare run_pool with itself).
        assert outcome.batch == (len(xs) if poolcore.get_spec(method).stackable else 1)


@pytest.mark.parametrize("method", ["global_avg", "global_max"])
def test_pool_many_batches_global_presets(method: str) -> None:
    xs = [torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    outcomes = pool_many([PoolRequest(x, method, {"dims": 2}) for x in xs])
    for x, outcome in zip(xs, outcomes, strict=True):
        assert isinstance(outcome, PoolOutcome)
        assert torch.equal(outcome.output, run_pool(x, method, {"dims": 2}).output)
        assert outcome.batch == len(xs)


def test_pool_many_keeps_each_request_apart_where_they_differ() -> None:
    """Different shapes, parameters, and bad requests in one batch: each answered as run_pool would."""
    generator = torch.Generator().manual_seed(2)
    good = torch.rand(1, 2, 6, 6, generator=generator)
    requests = [
        PoolRequest(good, "avg", {"kernel_size": 2}),
        PoolRequest(good, "avg", {"kernel_size": 3}),
        PoolRequest(good[:, :1], "avg", {"kernel_size": 2}),
        PoolRequest(torch.full((1, 1, 4, 4), float("nan")), "avg", {"kernel_size": 2}),
        PoolRequest(good, "avg", {"kernel_size": 9}),  # window larger than the input
        PoolRequest(good, "nope"),
        PoolRequest(good, "avg", {"kernel_size": 2}, mode="sideways"),  # type: ignore[arg-type]
        PoolRequest(good, "max", {"kernel_size": 2}),
    ]
    outcomes = pool_many(requests)
    assert len(outcomes) == len(requests)
    for request, outcome in zip(requests, outcomes, strict=True):
        try:
            alone: PoolOutcome | Exception = run_pool(
                request.x, request.method, request.params, mode=request.mode, seed=request.seed
            )
        except Exception as error:
            alone = error
        if isinstance(alone, Exception):
            assert type(outcome) is type(alone) and str(outcome) == str(alone)
        else:
            assert isinstance(outcome, PoolOutcome) and torch.equal(outcome.output, alone.output)


def test_pool_many_failing_batch_gives_each_request_its_error() -> None:
    """Same shape and parameters, so one call, which fails (the window is larger than the input): each
    request still gets the error run_pool raises."""
    xs = [torch.full((1, 1, 2, 2), float(i)) for i in range(3)]
    outcomes = pool_many([PoolRequest(x, "avg", {"kernel_size": 3}) for x in xs])
    with pytest.raises(ValueError) as alone:
        run_pool(xs[0], "avg", {"kernel_size": 3})
    assert [str(o) for o in outcomes] == [str(alone.value)] * 3


@pytest.mark.parametrize("method", [m for m in poolcore.methods() if poolcore.get_spec(m).random])
def test_pool_many_random_train_requests_keep_their_seeds(method: str) -> None:
    """Train mode of a random method is never batched: a seeded request reproduces run_pool exactly, and
    two requests with the same seed agree."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    params = {"kernel_size": 2}
    requests = [PoolRequest(x, method, params, "train", seed) for seed in (5, 6, 5)]
    outcomes = pool_many(requests)
    assert all(isinstance(o, PoolOutcome) for o in outcomes)
    first, second, third = (o.output for o in outcomes if isinstance(o, PoolOutcome))
    assert torch.equal(first, run_pool(x, method, params, mode="train", seed=5).output)
    assert torch.equal(first, third) and not torch.equal(first, second)


def test_a_shared_call_that_fails_where_alone_succeeds_is_logged_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stacking bug (the shared call fails, each request alone succeeds) is never silent: each request
    still gets its own answer, and the failure is logged with its traceback and reported for the metric.
    A client's mistake, which fails alone too, is neither."""
    import service.pooling as pooling

    def broken(checked: object) -> None:
        raise RuntimeError("stacking broke")

    monkeypatch.setattr(pooling, "_execute_stacked", broken)
    fallbacks: list[str] = []
    xs = [torch.full((1, 1, 4, 4), float(i)) for i in range(3)]
    with caplog.at_level("WARNING", logger="poolserve"):
        outcomes = pool_many([PoolRequest(x, "avg", {"kernel_size": 2}) for x in xs], fallbacks.append)
    for x, outcome in zip(xs, outcomes, strict=True):
        assert isinstance(outcome, PoolOutcome)
        assert torch.equal(outcome.output, torch.nn.functional.avg_pool2d(x, 2))
    assert fallbacks == ["avg"]
    assert any("stacking broke" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    caplog.clear()
    fallbacks.clear()
    small = [torch.full((1, 1, 2, 2), float(i)) for i in range(3)]  # a window larger than the input
    with caplog.at_level("WARNING", logger="poolserve"):
        outcomes = pool_many([PoolRequest(x, "avg", {"kernel_size": 3}) for x in small], fallbacks.append)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert fallbacks == [] and not caplog.records


def test_the_stack_fallback_metric_is_exported() -> None:
    from service.metrics import Metrics

    metrics = Metrics()
    metrics.observe_stack_fallback("avg")
    from prometheus_client import generate_latest

    assert 'poolserve_stack_fallbacks_total{method="avg"} 1.0' in generate_latest(metrics.registry).decode()


def test_a_bug_in_service_code_is_not_a_client_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the checks and poolcore's calls turn a ValueError into a 422 (InvalidInput); one raised by
    service code elsewhere (here, encoding) stays an internal error for the error boundary."""
    from service.errors import InvalidInput, Unprocessable
    from service.pooling import answer_many

    with pytest.raises(InvalidInput) as refused:
        run_pool(torch.ones(1, 1, 2, 2), "avg", {"kernel_size": 3})
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, Unprocessable)

    def decode(job: int) -> tuple[None, PoolRequest]:
        return None, PoolRequest(torch.ones(1, 1, 4, 4), "avg", {"kernel_size": 2 if job else 9})

    def encode(job: int, context: None, outcome: PoolOutcome) -> object:
        raise ValueError("a bug in an encoder")

    bug, mistake = answer_many([1, 0], decode, encode)
    assert type(bug) is ValueError  # not made a 422
    assert isinstance(mistake, InvalidInput)


def test_requests_of_every_protocol_share_one_call() -> None:
    """/pool's and the inference protocol's jobs are answered by one batch function: queued together,
    same-question requests from both share one operator call, and each gets its own protocol's answer."""
    import orjson

    from service.codecs import Limits, oip
    from service.inference import InferJob
    from service.limits import DEFAULT_LIMITS
    from service.metrics import Metrics
    from service.pooling import answer_jobs
    from service.routes.pool import _Job

    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    metrics = Metrics()
    limits = Limits(1 << 20, 1 << 20)
    body = orjson.dumps({"data": x.tolist(), "params": {"kernel_size": 2}})
    pool_job = _Job(
        "avg", body, "application/json", "application/json", [], limits, "cpu", metrics, DEFAULT_LIMITS
    )
    infer_doc = {
        "inputs": [
            {"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": x.flatten().tolist()}
        ],
        "parameters": {"kernel_size": 2},
    }

    def read() -> oip.Decoded:
        return oip.decode_rest(orjson.dumps(infer_doc), None, limits, 1 << 20)

    def write(outcome: PoolOutcome, request: oip.Decoded) -> PoolOutcome:
        return outcome

    infer_job = InferJob("avg", read, write, "cpu", metrics)
    response, outcome = answer_jobs([pool_job, infer_job])
    expected = torch.nn.functional.avg_pool2d(x, 2)
    assert response.headers["x-pool-batch"] == "2" and outcome.batch == 2
    assert orjson.loads(response.body)["data"] == expected.tolist()
    assert torch.equal(outcome.output, expected)
