"""The project's claims about itself match what is tested: the lowest Python it says it runs on is the one
mypy checks and ruff targets, and the one the suite runs on."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _floor() -> tuple[int, int]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    match = re.fullmatch(r">=\s*3\.(\d+)", project["project"]["requires-python"])
    assert match is not None, project["project"]["requires-python"]
    return 3, int(match.group(1))


def test_the_python_floor_is_what_mypy_and_ruff_check() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    major, minor = _floor()
    assert config["tool"]["mypy"]["python_version"] == f"{major}.{minor}"
    assert config["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert f"sys.version_info < ({major}, {minor})" in makefile


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI runs the claimed floor; yours may be newer")
def test_the_suite_runs_on_the_claimed_floor() -> None:
    """CI runs the suite on the floor itself, so nothing newer slips in unseen (a 3.10 claim once hid a
    TimeoutError that only 3.11 catches)."""
    assert sys.version_info[:2] == _floor()
