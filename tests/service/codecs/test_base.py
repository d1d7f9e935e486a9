"""Accept negotiation and Content-Type dispatch."""

from __future__ import annotations

import pytest

from service.codecs import negotiate, request_family
from service.errors import NotAcceptable, UnsupportedMediaType


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
