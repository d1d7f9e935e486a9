"""schemathesis against the app's own OpenAPI document: every operation, every check, in process (ASGI,
with the lifespan and so the worker threads running), derandomized so a CI run is reproducible."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.schemas import BaseSchema

from service.app import create_app
from tests.service.support import npy_bytes, test_settings

# The schema says the raw bodies and the multipart `file` are .npy, PNG or JPEG; JSON Schema cannot say
# what those bytes look like, so teach schemathesis to make real ones. Then positive cases reach the
# operator instead of stopping at the decoder. (Truncated and corrupted bytes are the job of the codec
# property tests, tests/service/codecs/test_properties.py.)
_SHAPES = hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=6)
_DTYPES = st.sampled_from(["<f2", "<f4", ">f4", "<f8", "<i4", "|u1", "<i8"])


@st.composite
def _npy(draw: st.DrawFn) -> bytes:
    dtype = np.dtype(draw(_DTYPES))
    low = 0 if dtype.kind == "u" else -100
    elements = hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False, min_value=low, max_value=100)
    array = draw(hnp.arrays(dtype, _SHAPES, elements=elements))
    return npy_bytes(np.asfortranarray(array) if draw(st.booleans()) else array)


@st.composite
def _image(draw: st.DrawFn, fmt: str) -> bytes:
    mode = draw(st.sampled_from(["L", "RGB", "RGBA"] if fmt == "PNG" else ["L", "RGB"]))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = draw(hnp.arrays(np.uint8, (height, width, channels)))
    buf = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


schemathesis.openapi.media_type("application/x-npy", _npy(), aliases=["application/octet-stream"])
schemathesis.openapi.media_type("image/png", _image("PNG"))
schemathesis.openapi.media_type("image/jpeg", _image("JPEG"))

# Two statuses added to schemathesis's expectations, each for a reason no schema can remove:
# - A 413 rejects a request as surely as a 400 does: a body, an input or an output over its limit.
# - POST /pool: JSON Schema cannot relate one value to another, and a pooling request is made of such
#   relations: a window no larger than the padded input, padding at most half the window, one window size
#   per spatial dim, only the chosen method's parameters (the path picks the method; the schema lists
#   every method's), equal lengths in nested lists, output elements within POOLSERVE_MAX_ELEMENTS. A
#   schema-valid request can break any of them, and gets 422 (or 413). Everything the schema can say, it
#   says, so every other rejection of valid data (400, 406, 408, 415...) still fails the check.
_REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
_CHECKS = {
    "checks": {"negative_data_rejection": {"expected-statuses": _REJECTED}},
    "operations": [
        {
            "include-path": "/pool/{method}",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "401", "403", "404", "409", "413", "422", "429", "5xx"]
                }
            },
        },
        # The inference protocol's infer: the same relations as /pool (plus a tensor's data against its
        # shape and datatype), and the protocol answers them with 400 where /pool says 422.
        {
            "include-path-regex": "^/v2/models/.*infer$",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "413", "429", "5xx"]
                }
            },
        },
    ],
}
_KEY = "fuzz-key-0123456789"


@pytest.fixture(scope="module")
def api_schema() -> Iterator[BaseSchema]:
    """Built when the test runs, not when the suite is collected. schemathesis starts the app's lifespan
    (the worker threads) on its first request and keeps it for the process: stop it when done."""
    config = SchemathesisConfig.from_dict(_CHECKS)
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(test_settings()), config=config)
    shutdown_lifespans()


@pytest.fixture(scope="module")
def keyed_schema() -> Iterator[BaseSchema]:
    """The same app with POOLSERVE_API_KEYS set: the schema then declares the bearer scheme, and
    schemathesis's ignored_auth check sends each request again without the key, and with a wrong one,
    expecting a refusal. Random phase only (the edge cases are the run above's)."""
    config = SchemathesisConfig.from_dict(
        {
            **_CHECKS,
            "headers": {"Authorization": f"Bearer {_KEY}"},
            "phases": {"coverage": {"enabled": False}},
        }
    )
    app = create_app(test_settings(api_keys=_KEY))
    auth = {"Authorization": f"Bearer {_KEY}"}
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config, headers=auth)
    shutdown_lifespans()


schema = schemathesis.pytest.from_fixture("api_schema")
keyed = schemathesis.pytest.from_fixture("keyed_schema")


# The coverage phase (schemathesis's deterministic edge cases, ~550 for /pool) runs whatever the
# count; max_examples bounds the random phase (150: the whole run stays well under a minute on 2 cores).
@schema.parametrize()
@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    database=None,
)
def test_api(case: schemathesis.Case) -> None:
    case.call_and_validate()


@keyed.parametrize()
@settings(max_examples=25, derandomize=True, deadline=None, database=None)
def test_api_with_keys(case: schemathesis.Case) -> None:
    case.call_and_validate()


def test_schemathesis_still_needs_the_pytest_pin() -> None:
    """Upstream workaround check: schemathesis 4.32's pytest plugin uses ``Node._nodeid``, which pytest
    9.2 removed, so pyproject.toml pins pytest below 9.2. When this fails, schemathesis no longer uses it:
    drop the pin (and this test)."""
    import inspect

    import schemathesis.pytest.lazy as lazy

    assert "_nodeid" in inspect.getsource(lazy), "schemathesis no longer uses Node._nodeid: unpin pytest"
