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


def _examples(title: str) -> list[tuple[str, str | None]]:
    """Each bash block of a section with the output block (```text) that follows it, if any. A block that
    sets up an environment (``python3 -m venv``) is left out: it installs from the network, and the
    fresh-clone run of the README's two commands covers what it leads to."""
    pairs = re.findall(r"```bash\n(.*?)```(?:\n```text\n(.*?)```)?", _section(title), flags=re.DOTALL)
    return [(code, output or None) for code, output in pairs if not code.startswith("python3 -m venv")]


def _matches(expected: str, actual: str) -> bool:
    """An output block against what the block printed: line by line, ``...`` standing for any text and
    the X-Pool-Seed value (drawn per request) for any number."""
    want = [line for line in expected.strip().splitlines()]
    got = [line.rstrip("\r") for line in actual.strip().splitlines()]
    if len(want) != len(got):
        return False
    for pattern, line in zip(want, got):
        regex = ".*".join(re.escape(part) for part in pattern.split("..."))
        if pattern.lower().startswith("x-pool-seed: "):
            regex = r"x-pool-seed: \d+"
        if not re.fullmatch(regex, line, flags=re.IGNORECASE):
            return False
    return True


def test_every_http_example_shows_its_output() -> None:
    examples = _examples(QUICK_START) + _examples(HTTP_API)
    assert len(examples) >= 2
    assert all(output is not None for _, output in examples)


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("bash") is None, reason="needs bash and curl"
)
def test_the_http_examples_run_against_a_real_server(tmp_path: Path) -> None:
    """Every bash block of the quick start and the HTTP API, as written, in a scratch directory that sees
    the checkout's files; curl fails the block on any HTTP error, and each block prints the output the
    README shows under it."""
    from tests.service.support import live_server

    (tmp_path / "service").symlink_to(ROOT / "service")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'
    with live_server() as base:
        for code, expected in _examples(QUICK_START) + _examples(HTTP_API):
            run = subprocess.run(
                ["bash", "-c", prelude + code.replace("http://127.0.0.1:8000", base)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, run.stdout + run.stderr
            assert expected is not None and _matches(expected, run.stdout), (code, run.stdout)
    # The examples write into a scratch folder of their own, never into the folder they run from.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["service"]


def test_output_matching_is_strict() -> None:
    assert _matches("a...c\nx-pool-seed: 12", "abbbc\nX-Pool-Seed: 99\r")
    assert not _matches("a...c", "abd")
    assert not _matches("a\nb", "a")


def test_models_section_swaps_trains_exports_and_compiles() -> None:
    """The "poolcore in your model" block, verbatim in a fresh interpreter: replace_pooling, training, ONNX
    export run in onnxruntime, torch.compile; and it prints nothing (no warning a user reads as an
    error). The section names the extra it needs."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    assert "pip install -e '.[export]'" in _section(MODELS)
    blocks = _blocks(MODELS, "python")
    assert len(blocks) == 1
    for word in ("replace_pooling", "backward", "torch.onnx.export", "InferenceSession", "torch.compile"):
        assert word in blocks[0], word
    run = subprocess.run(
        [sys.executable, "-c", blocks[0]],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout + run.stderr == ""


def test_the_settings_doc_lists_every_setting() -> None:
    """docs/configuration.md has a row for every setting, with its default; the README keeps a few."""
    from service.config import Settings

    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = {
        m.group(1): m.group(2) for m in re.finditer(r"^\| `POOLSERVE_([A-Z_]+)` \| ([^|]*) \|", doc, re.M)
    }
    for name, field in Settings.model_fields.items():
        assert name.upper() in rows, name
        default = field.default
        if isinstance(default, bool):
            assert rows[name.upper()].startswith(f"`{str(default).lower()}`"), name
        elif isinstance(default, (int, float)) and default:
            number = int(default) if float(default).is_integer() else default
            assert rows[name.upper()].startswith(f"`{number}`"), (name, rows[name.upper()])
    readme_rows = re.findall(r"^\| `POOLSERVE_", _section("## Settings"), re.M)
    assert 3 <= len(readme_rows) <= 6
