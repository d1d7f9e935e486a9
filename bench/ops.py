"""Operator benchmark: poolcore's methods against torch's own pooling ops, on the same input, in one run.

    python bench/ops.py                  # CPU, fp32, 16x64x112x112, kernel 3/2 and 2/2
    python bench/ops.py --quick          # a smoke run in under a minute: small input, eager rows only
    python bench/ops.py --device cuda    # the same on a GPU
    python bench/ops.py --baseline main  # adds every method of poolcore at a git revision, old beside new

Large windows (kernel 5, 7 and 11 at stride 1) get stochastic-only rows with a memory column: windows of
more than 25 positions once built (P, K) tensors (3.3 GB for one 2048^2 plane at kernel 7).

For each window it prints every method's median time and its ratio to the torch op it replaces, with
the target and PASS/MISS; the speed-up of stochastic pooling over the usual unfold + multinomial code;
and each method's peak extra memory as a multiple of the input size. At the end it prints the same
figures as Markdown tables, ready for docs/benchmarks.md.

``--baseline REV`` imports the whole ``poolcore`` package as it was at git revision REV (``git archive``
into a temporary folder, imported as the package ``poolcore_baseline``) and times every method old beside
new, interleaved in the same rounds: train and eval forwards, and forward+backward for stochastic and mixed
training and for lp and gem with a learnable p, printing new/old.

Timing: methods run interleaved (one call of each per round) so that load from other processes hits them
alike; the median over rounds is reported. On a shared machine the ratios are more stable than the times.

Memory: on CPU each method runs once in a fresh subprocess that creates the input and then reads the peak
resident set size (``resource.getrusage(...).ru_maxrss``) before and after the call; the difference, which
includes the output itself, is divided by the input's size. On CUDA, ``torch.cuda.max_memory_allocated``
does the same in process.

Methods are looked up through the registry (``poolcore.get_spec``), so the families that land later are
benchmarked once merged and reported as "not registered yet" until then.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import poolcore
from poolcore.registry import UnknownMethodError

__all__ = ["main"]

FULL = (16, 64, 112, 112)
QUICK = (2, 16, 56, 56)
WINDOWS = ((3, 2), (2, 2))
LARGE_WINDOWS = ((5, 1), (7, 1), (11, 1))
# Methods timed for the large windows (stochastic only, against max_pool2d and the baseline if given).
LARGE_METHODS = (
    "F.max_pool2d",
    "F.avg_pool2d",
    "stochastic train",
    "stochastic train, compiled",
    "stochastic eval",
    "stochastic eval, compiled",
    "stochastic train, baseline",
    "stochastic eval, baseline",
)
# A git revision whose poolcore package is benchmarked beside the current one (--baseline).
BASELINE: dict[str, Any] = {}
_BASELINE_PACKAGE = "poolcore_baseline"


def _baseline_module() -> Any:
    """poolcore at the --baseline revision: ``git archive REV poolcore`` unpacked into a temporary folder
    (removed at exit) and imported as the package ``poolcore_baseline``, beside the current ``poolcore``.
    Every module of it is the old one (its imports are relative), so each method runs its old code."""
    if "module" not in BASELINE:
        rev = BASELINE["rev"]
        root = Path(__file__).resolve().parents[1]
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev, "poolcore"], cwd=root, capture_output=True, check=True
        ).stdout
        folder = Path(tempfile.mkdtemp(prefix="poolcore-baseline-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            # Our own git's archive; the "data" filter where this Python has it (3.11.4+, 3.12).
            extract: Any = tar.extractall
            if hasattr(tarfile, "data_filter"):
                extract(folder, filter="data")
            else:
                extract(folder)
        (folder / "poolcore").rename(folder / _BASELINE_PACKAGE)
        # Custom operators (torch.library) are registered once per name: the old ones get their own
        # namespace, or importing the old package would fail on the current one's registrations.
        for path in (folder / _BASELINE_PACKAGE).rglob("*.py"):
            text = path.read_text()
            for old, new in (
                ('Library("poolcore"', f'Library("{_BASELINE_PACKAGE}"'),
                ('"poolcore::', f'"{_BASELINE_PACKAGE}::'),
                ("torch.ops.poolcore.", f"torch.ops.{_BASELINE_PACKAGE}."),
            ):
                text = text.replace(old, new)
            path.write_text(text)
        sys.path.insert(0, str(folder))
        try:
            BASELINE["module"] = importlib.import_module(_BASELINE_PACKAGE)
        finally:
            sys.path.remove(str(folder))
    return BASELINE["module"]


@dataclass(frozen=True)
class Case:
    """One timed method: ``ref`` names the torch op (or method) it is compared with, and ``target`` the
    ratio it must stay under (``speedup`` targets are a minimum speed-up instead)."""

    name: str
    ref: str | None = None
    target: float | None = None


def _unfold_multinomial(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """Stochastic pooling the way public code usually writes it: unfold every window (k^2 copies of the
    input), normalise, ``torch.multinomial``, gather."""
    b, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    cols = F.unfold(x, k, stride=s).view(b, c, k * k, oh * ow).permute(0, 1, 3, 2).reshape(-1, k * k)
    probs = cols / cols.sum(-1, keepdim=True).clamp_min(1e-12)
    idx = torch.multinomial(probs, 1)
    return cols.gather(1, idx).view(b, c, oh, ow)


def _registered(name: str) -> bool:
    try:
        poolcore.get_spec(name)
    except UnknownMethodError:
        return False
    return True


def _methods(k: int, s: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor] | None]:
    """Every benchmarked callable for one window; None where a method is not registered yet."""

    def registry(name: str, training: bool, **params: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if not _registered(name):
            return None
        return lambda x: poolcore.pool(x, name, training=training, kernel_size=k, stride=s, **params)

    return {
        "F.max_pool2d": lambda x: F.max_pool2d(x, k, s),
        "F.avg_pool2d": lambda x: F.avg_pool2d(x, k, s),
        "F.lp_pool2d p=2": lambda x: F.lp_pool2d(x, 2, k, s),
        "F.lp_pool2d p=3": lambda x: F.lp_pool2d(x, 3, k, s),
        "stochastic train": registry("stochastic", True),
        "stochastic train, check_input=False": (
            (lambda x: poolcore.stochastic_pool(x, k, s, training=True, check_input=False))
            if _registered("stochastic")
            else None
        ),
        "stochastic train, compiled": (
            (lambda x: poolcore.stochastic_pool(x, k, s, training=True, compiled=True))
            if _registered("stochastic")
            else None
        ),
        "stochastic eval": registry("stochastic", False),
        "stochastic eval, compiled": (
            (lambda x: poolcore.stochastic_pool(x, k, s, compiled=True))
            if _registered("stochastic")
            else None
        ),
        "stochastic train, baseline": (
            (lambda x: _baseline_module().stochastic_pool(x, k, s, training=True)) if BASELINE else None
        ),
        "stochastic eval, baseline": (
            (lambda x: _baseline_module().stochastic_pool(x, k, s)) if BASELINE else None
        ),
        "mixed train": registry("mixed", True),
        "lp p=2": registry("lp", False, p=2),
        "gem p=3": registry("gem", False, p=3),
        "unfold+multinomial": lambda x: _unfold_multinomial(x, k, s),
    }


CASES = [
    Case("F.max_pool2d"),
    Case("F.avg_pool2d"),
    Case("F.lp_pool2d p=2"),
    Case("F.lp_pool2d p=3"),
    Case("stochastic train", "F.max_pool2d", 1.0),
    Case("stochastic train, check_input=False", "F.max_pool2d", 1.0),
    Case("stochastic train, compiled", "F.max_pool2d", 1.0),
    Case("stochastic eval", "F.avg_pool2d", 3.0),
    Case("stochastic eval, compiled", "F.avg_pool2d", 3.0),
    Case("stochastic train, baseline", "stochastic train"),
    Case("stochastic eval, baseline", "stochastic eval"),
    Case("mixed train", "F.max_pool2d", 1.3),
    Case("lp p=2", "F.lp_pool2d p=2", 1.0),
    Case("gem p=3", "F.lp_pool2d p=3", 1.0),
    Case("unfold+multinomial"),
]


def _input(size: tuple[int, ...], device: str) -> torch.Tensor:
    # Non-negative, as after a ReLU: stochastic pooling requires it.
    return torch.rand(size, generator=torch.Generator().manual_seed(0)).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, repeats: int, device: str
) -> dict[str, float]:
    """Median seconds per method; one call of each per round, rounds interleaved."""
    for name, fn in fns.items():  # warm-up (allocator, lazy init, CUDA kernels, torch.compile)
        start = time.perf_counter()
        fn(x)
        if "compiled" in name:
            print(f"  ({name}: first call, compiling included, {time.perf_counter() - start:.1f} s)")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    slow = {"unfold+multinomial"}
    for r in range(repeats):
        for name, fn in fns.items():
            if name in slow and r >= max(3, repeats // 3):
                continue  # the baseline is slow; a few rounds give its median
            _sync(device)
            start = time.perf_counter()
            fn(x)
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _current_rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(name: str, k: int, s: int, size: tuple[int, ...]) -> None:
    """Runs in a fresh process: growth of the peak RSS during one call, over the input size.

    ``ru_maxrss`` alone would not do: it already holds the peak of importing torch (and, after fork and
    exec, the parent's RSS), so the peak mark is reset just before the call.
    """
    fn = _methods(k, s)[name]
    if fn is None:
        print(json.dumps({"ratio": None}))
        return
    # Lazy initialisation outside the measurement; compiled methods compile for the real shape first, so
    # that compiler memory is not counted (the warm-up's freed buffers may then be reused: a lower bound).
    fn(_input(size if "compiled" in name else (1, 1, 16, 16), "cpu"))  # 16: kernel 11 fits
    x = _input(size, "cpu")
    if not _reset_peak_rss():
        print(json.dumps({"ratio": None, "why": "cannot reset the peak RSS mark"}))
        return
    before = _current_rss_bytes()
    y = fn(x)
    peak = _peak_rss_bytes()
    del y
    print(json.dumps({"ratio": (peak - before) / (x.numel() * x.element_size())}))


def _memory(name: str, k: int, s: int, size: tuple[int, ...], device: str) -> float | None:
    if device.startswith("cuda"):
        fn = _methods(k, s)[name]
        if fn is None:
            return None
        x = _input(size, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / (x.numel() * x.element_size())
    cmd = [sys.executable, __file__, "--memory-child", name, "--window", f"{k}/{s}"]
    if BASELINE:
        cmd += ["--baseline", BASELINE["rev"]]
    cmd += ["--size", *map(str, size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        print(f"  (memory probe for {name} failed: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["ratio"]


# Methods timed eager against torch.compile(fullgraph=True) of the same call (stochastic rows: see above).
COMPILED = ("avg", "max", "lp p=2", "gem p=3", "mixed train", "mixed eval", "adaptive gem (5, 7)")


def _compiled_pairs(k: int, s: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    def call(name: str, training: bool = False, **params: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        # The module, validated once: the functional ``poolcore.pool`` validates (pydantic) on every call.
        window = params if "output_size" in params else {"kernel_size": k, "stride": s, **params}
        return poolcore.nn.Pool(name, **window, dims=2).train(training)

    return {
        "avg": call("avg"),
        "max": call("max"),
        "lp p=2": call("lp", p=2.0),
        "gem p=3": call("gem", p=3.0),
        "mixed train": call("mixed", True),
        "mixed eval": call("mixed"),
        "adaptive gem (5, 7)": call("gem", p=3.0, output_size=(5, 7)),
    }


def _compiled_rows(k: int, s: int, x: torch.Tensor, repeats: int, device: str) -> None:
    """Each method eager and compiled (fullgraph, static shapes), interleaved; target: compiled <= eager."""
    # Every Pool module shares one forward: each instance is a recompile of it, more than dynamo's default 8.
    torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for name, fn in _compiled_pairs(k, s).items():
        fns[name] = fn
        fns[f"{name}, compiled"] = torch.compile(fn, fullgraph=True, dynamic=False)
    times = _time(fns, x, repeats, device)
    print(f"  {'eager vs compiled':38s} {'eager ms':>10s} {'compiled':>10s} {'ratio':>8s}  target  verdict")
    for name in COMPILED:
        eager, compiled = times[name], times[f"{name}, compiled"]
        ratio = compiled / eager
        print(
            f"  {name:38s} {eager * 1e3:10.1f} {compiled * 1e3:10.1f} {ratio:7.2f}x  <= 1.0x  "
            f"{_verdict(ratio <= 1.0)}"
        )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# Methods timed old beside new (--baseline): (registry name, parameters); lp and gem also with a learnable p.
PACKAGE_METHODS: tuple[tuple[str, dict[str, float]], ...] = (
    ("avg", {}),
    ("max", {}),
    ("stochastic", {}),
    ("mixed", {}),
    ("lp", {"p": 2.0}),
    ("gem", {"p": 3.0}),
    ("softpool", {}),
)
LEARNABLE = (("lp", "LPPool2d", 2.0), ("gem", "GeMPool2d", 3.0))


def _package_rows(pkg: Any, k: int, s: int) -> dict[str, Callable[[torch.Tensor], object] | None]:
    """Every method of one poolcore package (the current one or the baseline) for one window, by row name;
    None where that package lacks the method. Randomised methods get train and eval rows, deterministic
    ones one forward row; forwards run under ``torch.no_grad``, the fwd+bwd rows from a leaf input."""

    def has(name: str) -> bool:
        try:
            pkg.get_spec(name)
        except Exception:  # the package's own UnknownMethodError
            return False
        return True

    def forward(module: torch.nn.Module, training: bool) -> Callable[[torch.Tensor], object]:
        module.train(training)

        def call(x: torch.Tensor) -> object:
            with torch.no_grad():
                return module(x)

        return call

    def backward(module: torch.nn.Module) -> Callable[[torch.Tensor], object]:
        module.train()

        def call(x: torch.Tensor) -> object:
            leaf = x.detach().requires_grad_()
            module(leaf).sum().backward()
            return leaf.grad

        return call

    rows: dict[str, Callable[[torch.Tensor], object] | None] = {}
    for name, params in PACKAGE_METHODS:
        label = " ".join([name, *(f"{key}={value:g}" for key, value in params.items())])
        present = has(name)

        def make(name: str = name, params: dict[str, float] = params) -> torch.nn.Module:
            return pkg.nn.Pool(name, kernel_size=k, stride=s, dims=2, **params)

        if name in ("stochastic", "mixed"):
            rows[f"{label} train"] = forward(make(), True) if present else None
            rows[f"{label} eval"] = forward(make(), False) if present else None
            rows[f"{label} train, fwd+bwd"] = backward(make()) if present else None
        else:
            rows[f"{label} forward"] = forward(make(), False) if present else None
    for name, cls, p in LEARNABLE:
        module = getattr(pkg.nn, cls, None)
        learnable = None if module is None else module(kernel_size=k, stride=s, p=p, learn_p=True)
        rows[f"{name} learnable p={p:g}, fwd+bwd"] = None if learnable is None else backward(learnable)
    return rows


def _baseline_rows(
    k: int, s: int, x: torch.Tensor, repeats: int, device: str
) -> dict[str, tuple[float, float]]:
    """Each method's median time, current and --baseline, timed interleaved in the same rounds."""
    new, old = _package_rows(poolcore, k, s), _package_rows(_baseline_module(), k, s)
    fns: dict[str, Callable[[torch.Tensor], object]] = {}
    for row, fn in new.items():
        before = old.get(row)
        if fn is not None and before is not None:
            fns[f"{row} | new"], fns[f"{row} | old"] = fn, before
    times = _time(fns, x, repeats, device)  # type: ignore[arg-type]
    rev = BASELINE["rev"]
    print(
        f"  {'old beside new (--baseline ' + rev + ')':38s} {'new ms':>10s} {'old ms':>10s} {'new/old':>8s}"
    )
    pairs: dict[str, tuple[float, float]] = {}
    for row, fn in new.items():
        if f"{row} | new" not in times:
            why = "not registered yet" if fn is None else f"not in {rev}"
            print(f"  {row:38s} {why}")
            continue
        pairs[row] = (times[f"{row} | new"], times[f"{row} | old"])
        now, then = pairs[row]
        print(f"  {row:38s} {now * 1e3:10.1f} {then * 1e3:10.1f} {now / then:7.2f}x")
    return pairs


def _markdown(summary: dict[tuple[int, int], dict[str, Any]], header: str) -> None:
    """The run's figures as Markdown tables (docs/benchmarks.md's operator section)."""
    windows = [w for w in WINDOWS if w in summary]
    if not windows:
        return
    cols = " | ".join(f"kernel {k} / stride {s}" for k, s in windows)
    print(f"\nMarkdown ({header}):\n")
    print(f"| method (target) | {cols} |")
    print("|---|" + "---|" * len(windows))

    def row(label: str, cell: Callable[[dict[str, Any]], str | None]) -> None:
        cells = [cell(summary[w]) for w in windows]
        if any(c is not None for c in cells):
            print(f"| {label} | " + " | ".join(c or "" for c in cells) + " |")

    def ratio(name: str, ref: str) -> Callable[[dict[str, Any]], str | None]:
        def cell(run: dict[str, Any]) -> str | None:
            t = run["times"]
            return f"{t[name] / t[ref]:.2f}×" if name in t and ref in t else None

        return cell

    def ms(run: dict[str, Any]) -> str | None:
        t = run["times"]
        return " / ".join(f"{t[n] * 1e3:.1f}" for n in ("F.max_pool2d", "F.avg_pool2d", "F.lp_pool2d p=2"))

    row("`F.max_pool2d` / `F.avg_pool2d` / `F.lp_pool2d` p=2, ms", ms)
    for case in CASES:
        if case.target is not None and case.ref is not None:
            goal = (
                f" (≤ {case.target:g}×)"
                if "compiled" not in case.name and "check_input" not in case.name
                else ""
            )
            row(f"{case.name} / {case.ref}{goal}", ratio(case.name, case.ref))
    row("stochastic train / unfold + multinomial (≤ 0.2×)", ratio("stochastic train", "unfold+multinomial"))
    row(
        "stochastic train, baseline / stochastic train",
        ratio("stochastic train, baseline", "stochastic train"),
    )
    names = ("stochastic train", "stochastic eval", "mixed train", "lp p=2", "gem p=3")

    def memory(run: dict[str, Any]) -> str | None:
        extra = run.get("memory", {})
        return ", ".join(f"{extra[n]:.2f}" if n in extra else "–" for n in names) if extra else None

    row(f"peak extra memory / input (≤ 2×): {', '.join(names)}", memory)
    if not any("baseline" in summary[w] for w in windows):
        return
    rev = BASELINE["rev"]
    print(
        f"\n| method, old beside new ({rev}) | "
        + " | ".join(f"{k}/{s}: new ms, new/old" for k, s in windows)
        + " |"
    )
    print("|---|" + "---|" * len(windows))
    rows = list(dict.fromkeys(r for w in windows for r in summary[w].get("baseline", {})))
    for r in rows:
        cells = []
        for w in windows:
            pair = summary[w].get("baseline", {}).get(r)
            cells.append(f"{pair[0] * 1e3:.1f} ms, {pair[0] / pair[1]:.2f}×" if pair else f"not in {rev}")
        print(f"| {r} | " + " | ".join(cells) + " |")


def run(
    size: tuple[int, ...], repeats: int, device: str, memory: bool, large: bool = True, compiled: bool = True
) -> None:
    x = _input(size, device)
    print(
        f"input {tuple(size)} float32 on {device} ({x.numel() * 4 / 2**20:.0f} MiB), "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, repeats {repeats}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if device == "cpu" and torch.get_num_threads() > 1 and load > cores:
        print(
            f"note: load average {load:.1f} exceeds {cores} cores; multi-threaded ops then wait on "
            "descheduled threads once per op, which penalises multi-op methods against single-kernel "
            "torch ops. Compare with --threads 1 as well."
        )
    summary: dict[tuple[int, int], dict[str, Any]] = {}
    for k, s in WINDOWS + (LARGE_WINDOWS if large else ()):
        fns = _methods(k, s)
        if (k, s) in LARGE_WINDOWS:
            fns = {name: (fn if name in LARGE_METHODS else None) for name, fn in fns.items()}
        if not compiled:  # --quick: eager rows only (compiling takes longer than the whole smoke run)
            fns = {name: (None if "compiled" in name else fn) for name, fn in fns.items()}
        present = {name: fn for name, fn in fns.items() if fn is not None}
        print(f"\nkernel {k}, stride {s}")
        times = _time(present, x, repeats, device)
        summary[(k, s)] = {"times": times}
        print(f"  {'method':38s} {'median ms':>10s} {'ratio':>8s}  {'target':>10s}  verdict")
        for case in CASES:
            if fns[case.name] is None:
                if (
                    (k, s) not in LARGE_WINDOWS
                    and "baseline" not in case.name
                    and "compiled" not in case.name
                ):
                    print(f"  {case.name:38s} {'':>10s} {'':>8s}  {'':>10s}  not registered yet")
                continue
            ms = times[case.name] * 1e3
            if case.ref is None:
                print(f"  {case.name:38s} {ms:10.1f}")
                continue
            if case.target is None:  # the baseline: its time over the current one's
                ratio = times[case.name] / times[case.ref]
                print(f"  {case.name:38s} {ms:10.1f} {ratio:7.2f}x  (baseline / current {case.ref})")
                continue
            ratio = times[case.name] / times[case.ref]
            goal = f"<= {case.target:.1f}x {case.ref.split()[0]}"
            verdict = _verdict(ratio <= (case.target or 0))
            print(f"  {case.name:38s} {ms:10.1f} {ratio:7.2f}x  {goal:>10s}  {verdict}")
        for name in ("stochastic train", "stochastic train, compiled"):
            if name in times and "unfold+multinomial" in times:
                speedup = times["unfold+multinomial"] / times[name]
                print(
                    f"  speed-up of {name} over unfold+multinomial: {speedup:.1f}x "
                    f"(target >= 5x)  {_verdict(speedup >= 5)}"
                )
        if BASELINE and (k, s) in WINDOWS:
            summary[(k, s)]["baseline"] = _baseline_rows(k, s, x, repeats, device)
        if compiled:
            _compiled_rows(k, s, x, repeats, device)
        if memory:
            print("  peak extra memory, as a multiple of the input (includes the output; target <= 2x):")
            for name in (
                "F.max_pool2d",
                "stochastic train",
                "stochastic train, compiled",
                "stochastic eval",
                "stochastic eval, compiled",
                "stochastic train, baseline",
                "stochastic eval, baseline",
                "mixed train",
                "lp p=2",
                "gem p=3",
                "unfold+multinomial",
            ):
                if fns[name] is None:
                    continue
                extra = _memory(name, k, s, size, device)
                if extra is None:
                    continue
                summary[(k, s)].setdefault("memory", {})[name] = extra
                verdict = "" if name.startswith(("F.", "unfold")) else f"  {_verdict(extra <= 2.0)}"
                print(f"    {name:36s} {extra:5.2f}x{verdict}")
    _markdown(
        summary,
        f"{time.strftime('%Y-%m-%d')}, {device}, fp32, input {tuple(size)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, medians of {repeats}, load average {load:.2f} at the start",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run in under a minute: input {QUICK}, 3 repeats, eager rows only (no compiled, "
        "memory or large-window rows)",
    )
    parser.add_argument("--size", type=int, nargs=4, metavar=("N", "C", "H", "W"), help=f"default {FULL}")
    parser.add_argument("--repeats", type=int, help="timed rounds per method (default 15, quick 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument(
        "--baseline",
        help="git revision whose poolcore package is timed beside the current one, method by method",
    )
    parser.add_argument("--no-large", action="store_true", help="skip the kernel 5/7/11 stochastic rows")
    parser.add_argument(
        "--no-compiled", action="store_true", help="skip the torch.compile rows (compiling takes minutes)"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--window", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.baseline:
        BASELINE["rev"] = args.baseline
    size = tuple(args.size) if args.size else (QUICK if args.quick else FULL)
    if args.memory_child:
        k, s = map(int, args.window.split("/"))
        _memory_child(args.memory_child, k, s, size)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA device is available")
    repeats = args.repeats or (3 if args.quick else 15)
    full = not args.quick
    run(
        size,
        repeats,
        args.device,
        memory=full and not args.no_memory,
        large=full and not args.no_large,
        compiled=full and not args.no_compiled,
    )


if __name__ == "__main__":
    main()
