"""The README's examples run: the library blocks (and docs/library.md's) in process, the HTTP examples with
bash and curl against a real server.

A library block is skipped only when it needs a method or a ``poolcore``/``poolcore.nn`` name that is not
registered on this branch yet; any other error fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import poolcore

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LIBRARY = "## The library: poolcore"
QUICK_START = "## Quick start"
HTTP_API = "## HTTP API"
MODELS = "## poolcore in your model"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end != -1 else len(text)]


def _blocks(title: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(title), flags=re.DOTALL)


LIBRARY_DOC = ROOT / "docs" / "library.md"
METHOD_BLOCKS = re.findall(r"```python\n(.*?)```", LIBRARY_DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
BLOCKS = _blocks(LIBRARY, "python") + METHOD_BLOCKS


def test_the_library_doc_has_the_five_methods() -> None:
    assert len(METHOD_BLOCKS) >= 5


def test_the_readme_opens_with_the_two_commands() -> None:
    first = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert commands == ["make serve", "make test"]


def test_nothing_points_outside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    assert "shared/" not in text and "seed post" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i + 1}")
def test_readme_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = compile(BLOCKS[index], f"README.md block {index + 1}", "exec")
    try:
        exec(code, {"__name__": "__readme__"})
    except poolcore.UnknownMethodError as error:
        pytest.skip(f"needs a method not registered yet: {error}")
    except AttributeError as error:
        if error.obj in (poolcore, poolcore.nn) and not hasattr(error.obj, error.name or ""):
            pytest.skip(f"needs poolcore name {error.name!r}, not on this branch yet")
        raise


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("bash") is None, reason="needs bash and curl"
)
def test_the_http_examples_run_against_a_real_server(tmp_path: Path) -> None:
    """Every bash block of the quick start and the HTTP API, as written, in a scratch directory that sees
    the checkout's files; curl fails the block on any HTTP error, and the output is checked."""
    from tests.service.support import live_server

    (tmp_path / "service").symlink_to(ROOT / "service")
    script = "\n".join(_blocks(QUICK_START, "bash") + _blocks(HTTP_API, "bash"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with live_server() as base:
        script = script.replace("http://127.0.0.1:8000", base)
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'
        run = subprocess.run(
            ["bash", "-c", prelude + script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert '"data":[[[[2.5,0.5],[0.5,3.0]]]]' in out  # the first request
    assert re.search(r"(?im)^x-pool-shape: 1,64,10,7", out)
    assert "(1, 64, 10, 7)" in out
    assert re.search(r"(?im)^x-pool-seed: \d+", out)
    assert (tmp_path / "pooled.png").read_bytes().startswith(b"\x89PNG")


def test_models_section_swaps_trains_exports_and_compiles() -> None:
    """The "poolcore in your model" block: replace_pooling, training, ONNX export run in onnxruntime,
    torch.compile."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    blocks = _blocks(MODELS, "python")
    assert len(blocks) == 1
    for word in ("replace_pooling", "backward", "torch.onnx.export", "InferenceSession", "torch.compile"):
        assert word in blocks[0], word
    exec(compile(blocks[0], "README.md poolcore in your model", "exec"), {"__name__": "__readme__"})
