"""Access control and what every response says about itself: API keys (POOLSERVE_API_KEYS), CORS
(POOLSERVE_CORS_ORIGINS) and the security headers."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.middleware import SECURITY_HEADERS

from .support import npy_bytes, test_settings

KEYS = ("k-first-3f9a-0123456", "k-second-77c1-0123456")
X = npy_bytes(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
NPY = {"content-type": "application/x-npy"}


@pytest.fixture(scope="module")
def keyed() -> Iterator[TestClient]:
    with TestClient(create_app(test_settings(api_keys=",".join(KEYS)))) as client:
        yield client


@pytest.fixture(scope="module")
def open_client() -> Iterator[TestClient]:
    with TestClient(create_app(test_settings())) as client:
        yield client


GUARDED = [
    ("POST", "/pool/avg?kernel_size=2"),
    ("GET", "/methods"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("POST", "/pool/unknown"),  # no hint of which methods exist without a key
]


class TestApiKeys:
    @pytest.mark.parametrize(("verb", "path"), GUARDED)
    def test_no_key_is_401_with_challenge(self, keyed: TestClient, verb: str, path: str) -> None:
        r = keyed.request(verb, path, content=X, headers=NPY)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json() == {"detail": "this route needs an API key: send Authorization: Bearer <key>"}

    @pytest.mark.parametrize("key", KEYS)
    def test_each_key_opens_every_route(self, keyed: TestClient, key: str) -> None:
        auth = {"authorization": f"Bearer {key}"}
        assert keyed.post("/pool/avg?kernel_size=2", content=X, headers={**NPY, **auth}).status_code == 200
        assert keyed.get("/methods", headers=auth).status_code == 200
        assert keyed.get("/metrics", headers=auth).status_code == 200

    @pytest.mark.parametrize(
        ("authorization", "detail"),
        [
            (f"Bearer {KEYS[0]}x", "invalid API key"),
            (f"Bearer {KEYS[0][:-1]}", "invalid API key"),
            ("Bearer ", "the Authorization header must be Bearer <key>"),
            (f"Basic {KEYS[0]}", "the Authorization header must be Bearer <key>"),
            (KEYS[0], "the Authorization header must be Bearer <key>"),
        ],
    )
    def test_wrong_key_is_401(self, keyed: TestClient, authorization: str, detail: str) -> None:
        r = keyed.get("/methods", headers={"authorization": authorization})
        assert r.status_code == 401 and r.json() == {"detail": detail}
        assert "error=" in r.headers["www-authenticate"]

    def test_scheme_is_case_insensitive(self, keyed: TestClient) -> None:
        assert keyed.get("/methods", headers={"authorization": f"bearer {KEYS[1]}"}).status_code == 200

    @pytest.mark.parametrize("path", ["/health", "/ready"])
    def test_probes_stay_open(self, keyed: TestClient, path: str) -> None:
        assert keyed.get(path).status_code == 200

    def test_keys_are_never_logged(self, keyed: TestClient, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG):
            keyed.get("/methods", headers={"authorization": f"Bearer {KEYS[0]}"})
            keyed.get("/methods", headers={"authorization": "Bearer wrong-key-value"})
        assert caplog.records  # something was logged, or this checks nothing
        text = "\n".join(record.getMessage() for record in caplog.records)
        assert KEYS[0] not in text and "wrong-key-value" not in text

    def test_keys_are_not_in_the_settings_repr(self) -> None:
        assert KEYS[0] not in repr(test_settings(api_keys=",".join(KEYS)))

    def test_openapi_declares_the_bearer_scheme(self, keyed: TestClient) -> None:
        doc = keyed.get("/openapi.json", headers={"authorization": f"Bearer {KEYS[0]}"}).json()
        assert doc["components"]["securitySchemes"]["apiKey"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "POOLSERVE_API_KEYS",
        }
        assert doc["paths"]["/pool/{method}"]["post"]["security"] == [{"apiKey": []}]
        assert "security" not in doc["paths"]["/health"]["get"]

    def test_without_keys_everything_is_open(self, open_client: TestClient) -> None:
        assert open_client.post("/pool/avg?kernel_size=2", content=X, headers=NPY).status_code == 200
        assert open_client.get("/methods").status_code == 200


class TestSecurityHeaders:
    @pytest.mark.parametrize(
        ("verb", "path"), [("GET", "/health"), ("POST", "/pool/avg?kernel_size=2"), ("POST", "/pool/nope")]
    )
    def test_every_response_carries_them(self, open_client: TestClient, verb: str, path: str) -> None:
        r = open_client.request(verb, path, content=X, headers=NPY)
        for name, value in SECURITY_HEADERS:
            assert r.headers[name.decode()] == value.decode()

    def test_the_ui_page_carries_them(self, open_client: TestClient) -> None:
        r = open_client.get("/ui/")
        assert r.status_code == 200
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"

    def test_a_500_reveals_no_internals(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from service.routes import pool as pool_route

        def broken(*args: object) -> object:
            raise RuntimeError("secret internal path /srv/poolserve/model.py")

        monkeypatch.setattr(pool_route, "_answer_batch", broken)
        with TestClient(create_app(test_settings()), raise_server_exceptions=False) as client:
            r = client.post("/pool/avg?kernel_size=2", content=X, headers=NPY)
        assert r.status_code == 500
        assert "secret" not in r.text and "Traceback" not in r.text and "/srv" not in r.text
        assert r.json()["detail"].startswith("internal server error (request id ")


class TestCors:
    def test_off_by_default(self, open_client: TestClient) -> None:
        r = open_client.get("/health", headers={"origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers

    def test_allowed_origin_and_preflight_with_keys(self) -> None:
        settings = test_settings(cors_origins="https://app.example", api_keys=KEYS[0])
        with TestClient(create_app(settings)) as client:
            preflight = client.options(
                "/pool/avg",
                headers={
                    "origin": "https://app.example",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization,content-type",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "https://app.example"
            r = client.get(
                "/methods", headers={"origin": "https://app.example", "authorization": f"Bearer {KEYS[0]}"}
            )
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == "https://app.example"
            other = client.get(
                "/methods", headers={"origin": "https://evil.example", "authorization": f"Bearer {KEYS[0]}"}
            )
            assert "access-control-allow-origin" not in other.headers
