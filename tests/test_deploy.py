"""The Kubernetes manifests' process settings follow their resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

KUBERNETES = Path(__file__).parent.parent / "deploy" / "kubernetes"


def _container(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((KUBERNETES / name).read_text())
    if manifest["kind"] == "Deployment":
        spec = manifest["spec"]["template"]["spec"]
    else:  # KServe's InferenceService
        spec = manifest["spec"]["predictor"]
    (container,) = spec["containers"]
    return container


@pytest.mark.parametrize("manifest", ["deployment.yaml", "inferenceservice.yaml"])
def test_torch_threads_follow_the_cpu_request(manifest: str) -> None:
    # torch's default is the node's core count; a pod gets its CPU request.
    container = _container(manifest)
    env = {e["name"]: e for e in container["env"]}
    source = env["POOLSERVE_TORCH_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert source["resource"] == "requests.cpu"
    assert source.get("containerName", container["name"]) == container["name"]
    assert str(source.get("divisor", "1")) == "1"  # whole cores: the setting is a thread count
    assert "cpu" in container["resources"]["requests"]
