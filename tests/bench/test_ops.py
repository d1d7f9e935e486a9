"""bench/ops.py --quick: a smoke run of the operator benchmark; --baseline imports a whole old package."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import ops

ROOT = Path(__file__).resolve().parents[2]


def _git_head() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_run_prints_every_row_and_markdown(
    capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    ops.main(["--quick", "--threads", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    for k, s in ops.WINDOWS:
        assert f"kernel {k}, stride {s}" in out
    assert "stochastic train / F.max_pool2d (≤ 1×)" in out  # the Markdown table's rows
    assert "| `F.max_pool2d` / `F.avg_pool2d` / `F.lp_pool2d` p=2, ms |" in out
    assert "compiled" not in out.split("Markdown")[0]  # --quick: eager rows only


def test_baseline_times_every_method_old_beside_new(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    head = _git_head()
    if head is None:
        pytest.skip("needs a git checkout (git archive of a revision)")
    monkeypatch.setattr(ops, "BASELINE", {})
    monkeypatch.setattr(ops, "WINDOWS", ((2, 2),))
    ops.main(["--quick", "--threads", "1", "--repeats", "1", "--baseline", head])
    out = capsys.readouterr().out
    baseline = ops.BASELINE["module"]
    # The old package is its own copy, not the current one under another name.
    assert (
        baseline.__name__ == "poolcore_baseline"
        and baseline.stochastic_pool is not ops.poolcore.stochastic_pool
    )
    rows = ops._package_rows(ops.poolcore, 2, 2)
    assert len(rows) >= 12
    for row in rows:  # HEAD is the code under test: every method is in both, with a ratio
        line = next(line for line in out.splitlines() if line.startswith(f"| {row} |"))
        assert line.endswith("× |"), line
