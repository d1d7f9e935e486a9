"""The Kubernetes manifest's process settings follow its resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOYMENT = Path(__file__).parent.parent / "deploy" / "kubernetes" / "deployment.yaml"


def test_torch_threads_follow_the_cpu_request() -> None:
    # torch's default is the node's core count; a pod gets its CPU request.
    manifest: dict[str, Any] = yaml.safe_load(DEPLOYMENT.read_text())
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    source = env["POOLSERVE_TORCH_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert source["resource"] == "requests.cpu"
    assert source.get("containerName", container["name"]) == container["name"]
    assert str(source.get("divisor", "1")) == "1"  # whole cores: the setting is a thread count
    assert "cpu" in container["resources"]["requests"]
