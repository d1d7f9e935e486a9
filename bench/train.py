"""Training benchmark: one small CNN per pooling method, several seeds, on scikit-learn's digits.

    python bench/train.py                 # 6 methods x 2 layouts x 5 seeds x 20 epochs (CPU: minutes)
    python bench/train.py --quick         # 1 seed, 2 epochs, 300 training images (a smoke run: seconds)
    python bench/train.py --device cuda   # the same on a GPU

The data ship with scikit-learn (1797 8x8 grey images of the digits 0-9, read from the package, never
downloaded). One stratified split, fixed for every run (``--train-size`` images to train on, the rest
to test on); the seeds change the initial weights, the batch order and the pooling draws. No augmentation,
no dropout, no weight decay: a small training set and nothing else against overfitting, the setting in
which Zeiler & Fergus (2013) compared stochastic pooling with max and average pooling.

Two layouts, the same network shape in each:

- ``2d``: the image, ``(N, 1, 8, 8)``: conv 3x3 -> ReLU -> pool 2 -> conv 3x3 -> ReLU -> pool 2 -> linear.
- ``1d``: the image's rows as a sequence, ``(N, 8, 8)`` (8 columns as channels, 8 rows as positions):
  conv 3 -> ReLU -> pool 2 -> conv 3 -> ReLU -> pool 2 -> linear.

Methods: torch's max and average pooling (the controls) and poolcore's stochastic, mixed (``p_max=0.5``),
Lp (``learn_p``, from p=2) and GeM (``learn_p``, from p=3), each as the module a user would write.

Output (``--out``, default ``bench/results/``): ``train.md`` (a table of test accuracy mean ± std over the
seeds, the train/test accuracy gap, the mean time per training epoch and the peak memory), ``train.json``
(every figure, per seed and epoch) and ``train_curves.png`` (train and test accuracy per epoch, mean over
seeds; needs matplotlib, otherwise the run says so and writes the rest).

Peak memory: on CPU each (layout, method) trains in a fresh subprocess that reads its peak resident set
size (``ru_maxrss``) after loading the data and again after training; the table shows the difference, which
is what training that model added. ``--in-process`` (the smoke test's mode) skips the subprocesses and the
column. On CUDA, ``torch.cuda.max_memory_allocated`` in process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import poolcore.nn as pnn

__all__ = ["METHODS", "main"]

METHODS = ("max", "avg", "stochastic", "mixed", "lp", "gem")
LAYOUTS = ("2d", "1d")
SPLIT_SEED = 0  # the train/test split is the same for every run


def pool_layer(method: str, dims: int) -> nn.Module:
    """The pooling module for ``method``: kernel 2, stride 2, the way each family is used in a CNN."""
    factories: dict[str, Callable[[], nn.Module]] = {
        "max": lambda: (nn.MaxPool1d, nn.MaxPool2d)[dims - 1](2),
        "avg": lambda: (nn.AvgPool1d, nn.AvgPool2d)[dims - 1](2),
        "stochastic": lambda: (pnn.StochasticPool1d, pnn.StochasticPool2d)[dims - 1](2),
        "mixed": lambda: (pnn.MixedPool1d, pnn.MixedPool2d)[dims - 1](2, p_max=0.5),
        "lp": lambda: (pnn.LPPool1d, pnn.LPPool2d)[dims - 1](2.0, 2, learn_p=True),
        "gem": lambda: (pnn.GeMPool1d, pnn.GeMPool2d)[dims - 1](2, p=3.0, learn_p=True),
    }
    if method not in factories:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    return factories[method]()


def model(method: str, layout: str) -> nn.Module:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    dims = 2 if layout == "2d" else 1
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    c_in = 1 if dims == 2 else 8
    flat = 64 * (2 * 2 if dims == 2 else 2)  # 8 -> 4 -> 2 per spatial dim
    return nn.Sequential(
        conv(c_in, 32, 3, padding=1),
        nn.ReLU(),
        pool_layer(method, dims),
        conv(32, 64, 3, padding=1),
        nn.ReLU(),
        pool_layer(method, dims),
        nn.Flatten(),
        nn.Linear(flat, 10),
    )


def digits(layout: str, train_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits, scaled to [0, 1], in the layout's shape; one fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0  # (1797, 8, 8), pixel values 0..16
    y = torch.tensor(data.target, dtype=torch.long)
    if not 10 <= train_size <= len(x) - 10:
        raise ValueError(f"train_size must be in [10, {len(x) - 10}] (got {train_size})")
    train, test = train_test_split(
        range(len(x)), train_size=train_size, stratify=y.numpy(), random_state=SPLIT_SEED
    )
    x = x.unsqueeze(1) if layout == "2d" else x  # 2d: one channel; 1d: rows as positions, columns as channels
    return x[train], y[train], x[test], y[test]


@dataclass
class Run:
    """One (layout, method, seed): accuracy per epoch and the time each training epoch took."""

    layout: str
    method: str
    seed: int
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)
    p: float | None = None  # the learned p after training (lp, gem)


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def train_one(
    layout: str, method: str, seed: int, data: Sequence[Tensor], epochs: int, device: torch.device
) -> Run:
    x_train, y_train, x_test, y_test = (t.to(device) for t in data)
    torch.manual_seed(seed)  # initial weights, batch order and the pooling draws (torch's default generator)
    net = model(method, layout).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    run = Run(layout, method, seed)
    for _ in range(epochs):
        net.train()
        start = time.perf_counter()
        for batch in torch.randperm(len(x_train), device=device).split(32):
            optimiser.zero_grad(set_to_none=True)
            loss_fn(net(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        run.epoch_s.append(time.perf_counter() - start)
        run.train_acc.append(accuracy(net, x_train, y_train))
        run.test_acc.append(accuracy(net, x_test, y_test))
    learnable = (pnn.LPPool1d, pnn.LPPool2d, pnn.GeMPool1d, pnn.GeMPool2d)
    learned = [float(torch.as_tensor(m.power()).detach()) for m in net.modules() if isinstance(m, learnable)]
    if learned:  # both pooling layers learn their own p; report the mean
        run.p = statistics.fmean(learned)
    return run


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def run_case(
    layout: str, method: str, seeds: Sequence[int], epochs: int, train_size: int, device: torch.device
) -> dict[str, Any]:
    """Every seed of one (layout, method) in this process; the peak memory the training added."""
    data = digits(layout, train_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = peak_rss_bytes()
    runs = [train_one(layout, method, s, data, epochs, device) for s in seeds]
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()) - base
    return {"runs": [asdict(r) for r in runs], "peak_bytes": peak}


def run_case_subprocess(
    layout: str, method: str, seeds: Sequence[int], epochs: int, train_size: int, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        f"{layout}:{method}",
        "--seeds",
        str(len(seeds)),
        "--epochs",
        str(epochs),
        "--train-size",
        str(train_size),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{layout} {method} failed (exit {done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results: dict[str, dict[str, dict[str, Any]]], measured_memory: bool) -> str:
    lines = [
        "| layout | method | test accuracy (mean ± std) | train − test gap | time / epoch | peak memory "
        "| learned p |",
        "|---|---|---|---|---|---|---|",
    ]
    for layout, by_method in results.items():
        for method, case in by_method.items():
            runs = case["runs"]
            test_m, test_s = mean_std([r["test_acc"][-1] for r in runs])
            gap_m, gap_s = mean_std([r["train_acc"][-1] - r["test_acc"][-1] for r in runs])
            epoch_ms = 1000 * statistics.median(s for r in runs for s in r["epoch_s"])
            memory = f"{case['peak_bytes'] / 2**20:.1f} MiB" if measured_memory else "–"
            ps = [r["p"] for r in runs if r["p"] is not None]
            p = f"{statistics.fmean(ps):.2f}" if ps else ""
            lines.append(
                f"| {layout} | {method} | {100 * test_m:.2f} ± {100 * test_s:.2f} % "
                f"| {100 * gap_m:+.2f} ± {100 * gap_s:.2f} pp | {epoch_ms:.0f} ms | {memory} | {p} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> str | None:
    """Train (dashed) and test (solid) accuracy per epoch, mean over seeds; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (layout, by_method) in zip(axes[0], results.items(), strict=True):
        for i, (method, case) in enumerate(by_method.items()):
            colour = f"C{i}"
            for key, style in (("test_acc", "-"), ("train_acc", "--")):
                curves = [r[key] for r in case["runs"]]
                mean = [statistics.fmean(epoch) for epoch in zip(*curves, strict=True)]
                label = method if key == "test_acc" else None
                ax.plot(range(1, len(mean) + 1), mean, style, color=colour, label=label, linewidth=1.2)
        ax.set_title(f"{layout} pooling: test (solid) and train (dashed) accuracy")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (mean over seeds)")
        ax.set_ylim(0.5, 1.005)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 300 training images")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5; --quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help="default 20; --quick 2")
    parser.add_argument("--train-size", type=int, default=None, help="default 500; --quick 300")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="2d, 1d or both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="cases trained at once, one subprocess each")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per case (no memory column)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # layout:method, run by the parent process
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 5)
    args.epochs = args.epochs or (2 if args.quick else 20)
    args.train_size = args.train_size or (300 if args.quick else 500)
    for name in ("seeds", "epochs", "threads", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seeds = list(range(args.seeds))
    if args.worker:
        layout, method = args.worker.split(":")
        print(json.dumps(run_case(layout, method, seeds, args.epochs, args.train_size, device)))
        return {}
    methods = [m for m in args.methods.split(",") if m]
    layouts = [m for m in args.layouts.split(",") if m]
    for m in methods:
        pool_layer(m, 2)  # unknown names fail here, before any training
    for layout in layouts:
        if layout not in LAYOUTS:
            raise SystemExit(f"--layouts: each must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    subprocesses = not args.in_process and device.type == "cpu"
    measured_memory = subprocesses or device.type == "cuda"
    started = time.perf_counter()

    def one(layout: str, method: str) -> dict[str, Any]:
        if subprocesses:
            case = run_case_subprocess(layout, method, seeds, args.epochs, args.train_size, args)
        else:
            case = run_case(layout, method, seeds, args.epochs, args.train_size, device)
        last = [r["test_acc"][-1] for r in case["runs"]]
        print(f"{layout} {method:10s} test accuracy {100 * statistics.fmean(last):.2f} %", flush=True)
        return case

    cases = [(layout, method) for layout in layouts for method in methods]
    with ThreadPoolExecutor(args.jobs if subprocesses else 1) as pool:
        done = dict(zip(cases, pool.map(lambda c: one(*c), cases), strict=True))
    results = {layout: {method: done[layout, method] for method in methods} for layout in layouts}
    args.out.mkdir(parents=True, exist_ok=True)
    conditions = (
        f"{args.seeds} seed(s), {args.epochs} epochs, {args.train_size} training and "
        f"{1797 - args.train_size} test images, Adam lr 1e-3, batch 32, device {device}, "
        f"{args.threads} thread(s) x {args.jobs} job(s), torch {torch.__version__}, "
        f"{time.perf_counter() - started:.0f} s in all, "
        f"load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    text = f"{conditions}\n\n{table(results, measured_memory)}"
    (args.out / "train.md").write_text(text)
    (args.out / "train.json").write_text(json.dumps({"conditions": conditions, "results": results}))
    png = plot(results, args.out / "train_curves.png")
    print(text)
    print(f"learning curves: {png}" if png else "learning curves: not drawn (matplotlib is not installed)")
    return results


if __name__ == "__main__":
    main()
