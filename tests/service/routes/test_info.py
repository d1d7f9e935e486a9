"""/methods, /health, /ready, /metrics, /docs and the optional bench route."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import poolcore
from service.app import create_app

from ..support import headless_settings


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(headless_settings())) as c:
        yield c


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready", "device": "cpu"}
    assert str(client.app.state.device) == "cpu"  # type: ignore[attr-defined]


def test_not_ready_without_lifespan() -> None:
    """Without the lifespan (no device, no warm-up) /ready says 503."""
    r = TestClient(create_app(headless_settings())).get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "starting"


def test_methods_lists_the_registry(client: TestClient) -> None:
    doc = client.get("/methods").json()
    assert [m["name"] for m in doc["methods"]] == poolcore.methods()
    for entry in doc["methods"]:
        spec = poolcore.get_spec(entry["name"])
        assert entry["description"] == spec.description
        assert entry["guide"] == {
            "formula": spec.guide.formula,
            "paper": spec.guide.paper,
            "use": spec.guide.use,
            "training": spec.guide.training,
        }
        assert entry["schema"] == spec.params.model_json_schema()
        for name, field in spec.params.model_fields.items():
            if not field.is_required():
                assert name in entry["defaults"]
        assert entry["run"]["mode"]["enum"] == ["eval", "train"]
        assert entry["run"]["seed"]["used"] is spec.random
    assert (
        "output_size" in next(m for m in doc["methods"] if m["name"] == "adaptive_avg")["schema"]["required"]
    )


def test_methods_and_openapi_offer_dilation_for_kernel_windows_only(client: TestClient) -> None:
    doc = {m["name"]: m for m in client.get("/methods").json()["methods"]}
    for name in ["avg", "max", "mixed", "stochastic", "lp", "gem"]:
        assert doc[name]["defaults"]["dilation"] == 1, name
        assert "dilation" in doc[name]["schema"]["properties"]
    for name in ["adaptive_avg", "adaptive_max", "global_avg", "global_max"]:
        assert "dilation" not in doc[name]["schema"]["properties"], name
    query = client.get("/openapi.json").json()["paths"]["/pool/{method}"]["post"]["parameters"]
    assert "dilation" in {p["name"] for p in query}


def test_openapi_has_an_example_per_content_type(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/pool/{method}"]["post"]
    content = op["requestBody"]["content"]
    for media in ("application/json", "application/x-npy", "image/png", "image/jpeg", "multipart/form-data"):
        assert content[media]["examples"], media
    names = {p["name"] for p in op["parameters"]}
    assert {"method", "mode", "seed", "kernel_size", "output_size"} <= names
    method_param = next(p for p in op["parameters"] if p["name"] == "method")
    assert method_param["schema"]["enum"] == poolcore.methods()
    assert set(op["responses"]) >= {"200", "400", "404", "406", "413", "415", "422"}
    assert client.get("/docs").status_code == 200


def test_openapi_json_example_is_true(client: TestClient) -> None:
    """The documented response example is what the server answers for the documented request."""
    op = client.get("/openapi.json").json()["paths"]["/pool/{method}"]["post"]
    request = op["requestBody"]["content"]["application/json"]["examples"]["kernel"]["value"]
    example = op["responses"]["200"]["content"]["application/json"]["example"]
    assert client.post("/pool/avg", json=request).json() == example


def test_metrics_count_requests_bytes_errors(client: TestClient) -> None:
    client.post("/pool/max", json={"data": [[1.0, 2.0, 3.0, 4.0]], "params": {"kernel_size": 2, "dims": 1}})
    client.post("/pool/max", json={"data": [[1.0, 2.0]], "params": {"kernel_size": 5, "dims": 1}})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    route = "/pool/{method}"
    assert value("poolserve_requests_total", route=route, method="max", status="200") >= 1
    assert value("poolserve_errors_total", route=route, method="max", status="422") >= 1
    assert value("poolserve_request_bytes_total", route=route, method="max") > 0
    assert value("poolserve_response_bytes_total", route=route, method="max") > 0
    assert value("poolserve_request_seconds_count", route=route, method="max") >= 2
    assert value("poolserve_pool_seconds_count", method="max") >= 1


def test_many_apps_each_with_own_metrics() -> None:
    apps = [create_app(headless_settings()) for _ in range(3)]
    assert len({id(a.state.metrics.registry) for a in apps}) == 3


def test_request_id_echoed_or_made(client: TestClient) -> None:
    assert client.get("/health", headers={"x-request-id": "abc-1"}).headers["x-request-id"] == "abc-1"
    made = client.get("/health", headers={"x-request-id": "bad id\x7f"}).headers["x-request-id"]
    assert made != "bad id\x7f" and len(made) == 32


def test_http_errors_use_detail(client: TestClient) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404 and isinstance(r.json()["detail"], str)
    r = client.get("/pool/avg")
    assert r.status_code == 405 and isinstance(r.json()["detail"], str)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(client: TestClient, page: str) -> None:
    """No CDN at run time: every script, stylesheet and icon of the docs pages is served by us."""
    html = client.get(page).text
    urls = re.findall(r'(?:src|href)=["\']([^"\']+)', html) + re.findall(r'url: ?["\']([^"\']+)', html)
    assert urls, f"{page} references no assets"
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("enabled", [False, True])
def test_opentelemetry_providers_are_looked_up_only_when_enabled(
    enabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI's native telemetry checks the global OpenTelemetry providers on every request unless told
    not to; POOLSERVE_OPENTELEMETRY (off by default) decides."""
    from opentelemetry import trace

    lookups = 0
    original = trace.get_tracer_provider

    def counting() -> trace.TracerProvider:
        nonlocal lookups
        lookups += 1
        return original()

    monkeypatch.setattr(trace, "get_tracer_provider", counting)
    with TestClient(create_app(headless_settings(opentelemetry=enabled))) as c:
        before = lookups
        for _ in range(3):
            assert c.get("/health").status_code == 200
        assert (lookups - before >= 3) is enabled


def test_openapi_documents_every_route(client: TestClient) -> None:
    """/docs lists every route a client calls: /pool, the info routes and the inference protocol's."""
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        "/pool/{method}",
        "/methods",
        "/health",
        "/ready",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
    }
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        expected |= {prefix, f"{prefix}/ready", f"{prefix}/infer"}
    assert expected <= set(paths)
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert infer["responses"]["400"]["content"]["application/json"]["schema"]["required"] == ["error"]


def test_the_documented_v2_example_is_true(client: TestClient) -> None:
    """The infer example pools to what /pool's documented example answers."""
    doc = client.get("/openapi.json").json()
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    request = infer["requestBody"]["content"]["application/json"]["example"]
    answer = client.post("/v2/models/avg/infer", json=request)
    assert answer.status_code == 200, answer.text
    pooled = doc["paths"]["/pool/{method}"]["post"]["responses"]["200"]["content"]["application/json"]
    expected = [v for row in pooled["example"]["data"][0][0] for v in row]
    assert answer.json()["outputs"][0]["data"] == expected


def test_each_query_parameter_says_its_own_form_and_default(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/pool/{method}"]["post"]
    described = {p["name"]: p for p in op["parameters"]}
    # No one sentence pasted onto every parameter.
    for name, parameter in described.items():
        assert "Written as text" not in parameter["description"], name
    assert "`true` or `false`" in described["ceil_mode"]["description"]
    assert "`true` or `false`" not in described["kernel_size"]["description"]
    assert "`2,3`" in described["kernel_size"]["description"]
    assert "`null,7`" in described["output_size"]["description"]
    # Defaults: one shared default in the schema; per-method defaults named by method.
    assert described["padding"]["schema"]["default"] == 0
    assert "`2.0` (lp)" in described["p"]["description"] and "`3.0` (gem)" in described["p"]["description"]
    assert "lp:" in described["p"]["description"] and "gem:" in described["p"]["description"]
    assert described["count_include_pad"]["description"].split(".")[0]  # a description of its own
    assert "`region`" in described["scope"]["description"]


def test_the_jpeg_example_is_its_own(client: TestClient) -> None:
    content = client.get("/openapi.json").json()["paths"]["/pool/{method}"]["post"]["requestBody"]["content"]
    png, jpeg = content["image/png"]["examples"]["png"], content["image/jpeg"]["examples"]["jpeg"]
    assert png != jpeg and "image/jpeg" in jpeg["description"]


def test_building_the_schema_runs_no_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """/openapi.json is built on the event loop: its examples are static, so no pooling runs there."""
    import service.pooling

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an operator ran while building the schema")

    monkeypatch.setattr(service.pooling, "run_pool", refuse)
    monkeypatch.setattr("service.docs.run_pool", refuse, raising=False)  # a name bound at import
    app = create_app(headless_settings())
    assert "/pool/{method}" in app.openapi()["paths"]
