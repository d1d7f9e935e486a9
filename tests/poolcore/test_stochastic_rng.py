"""The random stream of stochastic pooling: an FFT lag scan of the chosen positions over all lags, and the
serial independence of neighbouring windows.

The scan is the outside audit's (issue 12): the removed hashed uniforms correlated the choices of windows
at one key-dependent distance (key 0xaf618a0f: distance 664576). Each scan standardises a sequence,
computes its autocorrelation at every lag with one FFT, and compares ``r_L * sqrt(N - L)`` (standard
normal under independence) with the Bonferroni line for all lags of all scans at ``ALPHA``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from scipy.stats import chi2, norm

from poolcore.nn import stochastic_pool

ALPHA = 1e-3
MIN_PAIRS = 1000  # lags with fewer pairs than this are not scanned (the normal approximation needs pairs)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lag_z(seq: torch.Tensor) -> torch.Tensor:
    """``r_L * sqrt(N - L)`` for every lag ``1 <= L <= N - MIN_PAIRS`` (non-circular, via zero padding)."""
    z = seq.double()
    z = (z - z.mean()) / z.std()
    n = z.numel()
    spectrum = torch.fft.rfft(z, n=2 * n)
    sums = torch.fft.irfft(spectrum.abs().square(), n=2 * n)[:n]  # sum_i z_i z_{i+L}
    lags = torch.arange(1, n - MIN_PAIRS + 1, dtype=torch.float64)
    return sums[1 : n - MIN_PAIRS + 1] / (n - lags).sqrt()


def _bonferroni(lags: int) -> float:
    return float(norm.isf(ALPHA / (2 * lags)))


def _old_hash_uniforms(a: int, b: int, n: int) -> torch.Tensor:
    """The removed lowbias32 uniforms, ``lowbias32(a * idx + b)`` top 24 bits (stochastic.py before)."""
    mask = 0xFFFFFFFF
    h = (torch.arange(n, dtype=torch.int64) * a + b) & mask
    h ^= h >> 16
    h = (h * 0x7FEB352D) & mask
    h ^= h >> 15
    h = (h * 0x846CA68B) & mask
    h ^= h >> 16
    return (h >> 8).double() / 2**24


# Non-overlapping windows of K nearly equal, distinct weights (1 + j/1024, exact in float32), so each output
# names the offset it chose. Each form takes a different path of stochastic_pool.
def _choices(form: str, n: int, seed: int) -> torch.Tensor:
    k = {"walk": 25, "running-walk": 49, "gather": 30, "global": 30}[form]
    weights = 1 + torch.arange(k, dtype=torch.float32) / 1024
    kwargs: dict[str, Any]
    if form == "global":
        x, kwargs = weights.expand(n, 1, k).contiguous(), {"output_size": 1, "dims": 1}
    else:
        x = weights.repeat(n).view(1, 1, -1)
        kwargs = {"output_size": n} if form == "gather" else {"kernel_size": k}
        kwargs["dims"] = 1
    y = stochastic_pool(x, training=True, generator=_gen(seed), **kwargs).flatten()
    return ((y - 1) * 1024).round().long()


SCANS = [("walk", 1 << 19), ("running-walk", 1 << 18), ("gather", 1 << 15), ("global", 1 << 16)]
SEEDS = (1, 2)


def test_lag_scan_every_path() -> None:
    # Each path, two seeds: no lag of the chosen offsets beyond the Bonferroni line over all scanned lags.
    scans = {(form, seed): _lag_z(_choices(form, n, seed)) for form, n in SCANS for seed in SEEDS}
    line = _bonferroni(sum(z.numel() for z in scans.values()))
    for (form, seed), z in scans.items():
        worst = int(z.abs().argmax())
        assert float(z.abs().max()) < line, (
            f"{form}, seed {seed}: lag {worst + 1} at z = {float(z[worst]):.1f}"
        )


def test_lag_scan_flags_the_removed_hash() -> None:
    # The scan has the power to fail: on the removed hashed uniforms with the audit's key it finds the
    # defect at distance 664576, far beyond the line (as choices of 25 equal weights did: z = 20 on 4M).
    n = 1 << 21
    u = _old_hash_uniforms(0xAF618A0F, 0x1234567, n)
    z = _lag_z((u * 25).floor())
    line = _bonferroni(z.numel())
    assert int(z.abs().argmax()) + 1 == 664576
    assert float(z.abs().max()) > line
    # The same scan on torch's generator (the new source of u) stays below the line.
    fresh = torch.rand(n, dtype=torch.float64, generator=_gen(0))
    assert float(_lag_z((fresh * 25).floor()).abs().max()) < line


@pytest.mark.parametrize("form", ["walk", "running-walk", "gather"])
def test_neighbouring_windows_independent(form: str) -> None:
    # Serial test: the choices of consecutive windows fill a K x K table as the product of the marginals.
    c = _choices(form, 1 << 15, 9)
    k = int(c.max()) + 1
    joint = torch.bincount(c[:-1] * k + c[1:], minlength=k * k).double()
    marginal = torch.bincount(c, minlength=k).double() / c.numel()
    expected = torch.outer(marginal, marginal).flatten() * joint.sum()
    stat = float(((joint - expected) ** 2 / expected).sum())
    assert float(chi2.sf(stat, (k - 1) ** 2)) > ALPHA
