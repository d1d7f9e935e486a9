"""bench/service.py --baseline: the old revision it serves is exactly that revision's tracked files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import service


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=service.ROOT, capture_output=True, text=True, check=True).stdout


def test_export_revision_writes_the_revisions_tracked_files(tmp_path: Path) -> None:
    if subprocess.run(["git", "rev-parse"], cwd=service.ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    commit = _git("rev-parse", "HEAD~1").strip()
    tree = service.export_revision("HEAD~1", tmp_path)
    tracked = set(_git("ls-tree", "-r", "--name-only", commit).split())
    exported = {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() or p.is_symlink()}
    assert exported == tracked
    for path in ("service/workers.py", "bench/service.py"):
        assert (tree / path).read_text() == _git("show", f"{commit}:{path}")


def test_an_unknown_revision_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--baseline 'no-such-rev': not a revision"):
        service.export_revision("no-such-rev", tmp_path)
