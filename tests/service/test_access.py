"""Access control and what every response says about itself: API keys (POOLSERVE_API_KEYS), CORS
(POOLSERVE_CORS_ORIGINS) and the security headers."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi import FastAPI
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

        monkeypatch.setattr(pool_route, "answer_jobs", broken)
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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttled_app(**overrides: str) -> tuple[FastAPI, FakeClock]:
    app = create_app(test_settings(api_keys=",".join(KEYS), **overrides))
    clock = FakeClock()
    app.state.auth_throttle.clock = clock  # the lock-out's minute passes when the test says so
    return app, clock


def _throttled(app: FastAPI) -> float:
    return app.state.metrics.registry.get_sample_value("poolserve_auth_throttled_total") or 0.0


WRONG = {"authorization": "Bearer wrong-key-0123456789"}
RIGHT = {"authorization": f"Bearer {KEYS[0]}"}


class TestKeyThrottle:
    """Issue 17, finding 9: after 20 wrong keys from one address within a minute, 429 for a minute."""

    def test_20_wrong_keys_lock_the_address_out_even_with_a_right_key(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        app, clock = _throttled_app()
        caplog.set_level(logging.WARNING, logger="poolserve")
        with TestClient(app) as client:
            for _ in range(19):
                assert client.get("/methods", headers=WRONG).status_code == 401
            assert client.get("/methods", headers=RIGHT).status_code == 200  # 19: still open
            assert client.get("/methods", headers=WRONG).status_code == 401  # the 20th
            assert _throttled(app) == 0
            refused = client.get("/methods", headers=RIGHT)  # the 21st request: locked out
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "60"
            assert refused.json() == {"detail": "too many wrong API keys from this address; retry after 60 s"}
            assert (
                client.post("/pool/avg?kernel_size=2", content=X, headers={**NPY, **RIGHT}).status_code == 429
            )
            assert client.get("/metrics").status_code == 429  # no key at all: locked too
            assert _throttled(app) == 3
            clock.now += 30
            assert client.get("/methods", headers=RIGHT).headers["retry-after"] == "30"
            clock.now += 30
            assert client.get("/methods", headers=RIGHT).status_code == 200  # the minute is over
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("wrong API key refused" in r.getMessage() for r in warnings) == 20
        assert sum("too many wrong API keys" in r.getMessage() for r in warnings) == 4
        request_id = refused.headers["x-request-id"]
        assert any(request_id in r.getMessage() and "testclient" in r.getMessage() for r in warnings)
        assert KEYS[0] not in caplog.text and "wrong-key-0123456789" not in caplog.text

    def test_probes_are_exempt(self) -> None:
        app, _ = _throttled_app()
        with TestClient(app) as client:
            for _ in range(25):
                client.get("/methods", headers=WRONG)
            assert client.get("/methods", headers=RIGHT).status_code == 429
            for path in ("/health", "/ready", "/v2/health/live", "/v2/health/ready"):
                assert client.get(path, headers=WRONG).status_code == 200, path

    def test_missing_or_malformed_keys_do_not_count(self) -> None:
        app, _ = _throttled_app()
        with TestClient(app) as client:
            for _ in range(15):
                assert client.get("/methods").status_code == 401
                assert (
                    client.get("/methods", headers={"authorization": f"Basic {KEYS[0]}"}).status_code == 401
                )
            assert client.get("/methods", headers=RIGHT).status_code == 200
            assert _throttled(app) == 0

    def test_the_client_behind_a_trusted_proxy_is_locked_not_the_proxy(self) -> None:
        # TestClient's peer address is "testclient"; here it plays the trusted reverse proxy.
        app, _ = _throttled_app(trusted_proxies="testclient")
        with TestClient(app) as client:
            guesser, other = {"x-forwarded-for": "203.0.113.9"}, {"x-forwarded-for": "198.51.100.4"}
            for _ in range(20):
                client.get("/methods", headers={**WRONG, **guesser})
            assert client.get("/methods", headers={**RIGHT, **guesser}).status_code == 429
            assert client.get("/methods", headers={**RIGHT, **other}).status_code == 200

    def test_a_forged_forwarded_for_does_not_escape_the_lock(self) -> None:
        app, _ = _throttled_app()  # no trusted proxies: the header is the client's own claim
        with TestClient(app) as client:
            for i in range(20):
                client.get("/methods", headers={**WRONG, "x-forwarded-for": f"203.0.113.{i}"})
            r = client.get("/methods", headers={**RIGHT, "x-forwarded-for": "198.51.100.4"})
            assert r.status_code == 429
