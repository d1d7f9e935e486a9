"""bench/train.py --quick: a smoke run of the training benchmark (the full run is not part of the suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the training benchmark reads scikit-learn's digits (the test extra)")

from bench import train


def test_quick_run_trains_every_method_and_writes_table_and_plot(tmp_path: Path) -> None:
    results = train.main(["--quick", "--in-process", "--out", str(tmp_path)])

    assert list(results) == list(train.LAYOUTS)
    for layout, by_method in results.items():
        assert list(by_method) == list(train.METHODS), layout
        for method, case in by_method.items():
            (run,) = case["runs"]
            assert len(run["test_acc"]) == len(run["train_acc"]) == len(run["epoch_s"]) == 2
            # Chance is 10 %; with 1497 test images 15 % is over five standard errors above it, so a method
            # whose gradient or eval path is broken fails here, while two seeded epochs clear it.
            assert run["test_acc"][-1] > 0.15, (layout, method, run["test_acc"])
            assert (run["p"] is not None) == (method in {"lp", "gem"}), (layout, method)
    table = (tmp_path / "train.md").read_text()
    for layout in train.LAYOUTS:
        for method in train.METHODS:
            assert f"| {layout} | {method} |" in table
    assert (tmp_path / "train.json").is_file()
    try:
        import matplotlib  # noqa: F401  (optional: without it the run says so and draws nothing)
    except ImportError:
        assert not (tmp_path / "train_curves.png").exists()
    else:
        assert (tmp_path / "train_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "median"], "method must be one of"),
        (["--layouts", "3d"], "--layouts"),
    ],
)
def test_unknown_names_fail_before_training(argv: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises((ValueError, SystemExit), match=message):
        train.main(["--quick", "--in-process", "--out", str(tmp_path), *argv])
