"""Accept negotiation and Content-Type dispatch."""

from __future__ import annotations

import pytest

from service.codecs import Limits, negotiate, request_family
from service.codecs.base import check_elements
from service.errors import NotAcceptable, PayloadTooLarge, UnsupportedMediaType


@pytest.mark.parametrize(
    ("accept", "default", "kind"),
    [
        (None, "npy", "npy"),
        ("", "png", "png"),
        ("*/*", "json", "json"),
        ("application/json", "npy", "json"),
        ("application/octet-stream", "json", "npy"),
        ("image/*", "json", "png"),
        ("application/*", "npy", "npy"),
        ("application/*", "png", "json"),
        ("application/json;q=0.5, application/x-npy", "json", "npy"),
        ("application/x-npy;q=0.5, application/json;q=0.5", "json", "json"),
        ("text/html, image/png;q=0.1", "json", "png"),
        ("image/png;q=0, */*", "png", "png"),  # wildcards mean the request's own kind
    ],
)
def test_negotiate(accept: str | None, default: str, kind: str) -> None:
    assert negotiate(accept, default) == kind  # type: ignore[arg-type]


@pytest.mark.parametrize("accept", ["text/html", "image/jpeg", "application/json;q=0", "video/*"])
def test_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="available"):
        negotiate(accept, "json")


@pytest.mark.parametrize(
    ("content_type", "family"),
    [
        ("application/json; charset=utf-8", "json"),
        ("APPLICATION/X-NPY", "npy"),
        ("application/octet-stream", "npy"),
        ("image/jpeg", "image"),
        ("multipart/form-data; boundary=x", "multipart"),
    ],
)
def test_request_family(content_type: str, family: str) -> None:
    assert request_family(content_type) == family


@pytest.mark.parametrize("content_type", [None, "", "text/csv", "image/gif"])
def test_unsupported(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType, match="send one of"):
        request_family(content_type)


@pytest.mark.parametrize("q", ["nan", "NaN", "inf", "1.5", "1e999"])
def test_quality_outside_0_to_1_is_not_acceptable(q: str) -> None:
    """RFC 9110 allows q from 0 to 1; anything else (``q=nan`` counted as acceptable) is ignored."""
    with pytest.raises(NotAcceptable, match="available"):
        negotiate(f"image/png;q={q}", "json")
    assert negotiate(f"image/png;q={q}, application/x-npy;q=0.1", "json") == "npy"


def test_element_check_covers_each_dimension() -> None:
    """An empty shape may claim any length: (1, 2**62, 0) has 0 elements but cannot be represented."""
    limits = Limits(max_elements=100, max_image_pixels=100)
    check_elements((1, 100, 1), limits)
    with pytest.raises(
        PayloadTooLarge, match=r"length 4611686018427387904 \(shape \(1, 4611686018427387904, 0\)\)"
    ):
        check_elements((1, 2**62, 0), limits)
    with pytest.raises(PayloadTooLarge, match="length 101"):
        check_elements((0, 101), limits)


def test_long_values_are_cut_in_messages() -> None:
    with pytest.raises(UnsupportedMediaType) as error:
        request_family("x/" + "y" * 10_000)
    assert len(str(error.value)) < 300 and "…" in str(error.value)
    with pytest.raises(NotAcceptable) as not_acceptable:
        negotiate("text/" + "h" * 10_000, "json")
    assert len(str(not_acceptable.value)) < 300
