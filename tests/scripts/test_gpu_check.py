"""scripts/gpu_check.py (``make gpu-check``) on a machine without a CUDA device: it says so and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_gpu_it_says_so_writes_the_report_and_exits_zero(tmp_path: Path) -> None:
    report = tmp_path / "gpu-check.md"
    # No device visible, also on a machine that has one: the no-GPU path is what runs.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--report", str(report)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no CUDA device" in done.stdout
    assert "no CUDA device" in report.read_text()


def test_unknown_step_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--steps", "tests,lint", "--report", str(tmp_path / "r.md")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown lint" in done.stderr
