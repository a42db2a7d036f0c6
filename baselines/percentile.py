"""Percentile: clip at the p-th percentile of the magnitudes, discarding rare outliers.

McKinstry et al., "Discovering low-precision networks close to full-precision networks
for efficient embedded inference" (2018); also the percentile calibrator of NVIDIA's
pytorch-quantization.  Symmetric grids clip |x| at the percentile; asymmetric grids
clip both tails, each by the same rule (the lower clip is minus the percentile of -x).

One definition for weights and activations: the inverted CDF, the smallest value whose
empirical CDF reaches q = percentile / 100 (numpy's ``method='inverted_cdf'``; no
interpolation, so the clip is always an observed value).  Weights use it exactly on their
sorted values; activations at the calibration histogram's resolution: the upper edge of the
first bin whose cumulative count reaches q, capped at the observed extreme, so it lies at most
one bin above the exact value.
"""
from dataclasses import dataclass
import math

import torch

from dqss.plugin import Strategy, register_strategy


def inverted_cdf(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per row of ``x``, the smallest value whose empirical CDF reaches ``q``; the index rule of numpy's
    ``quantile(..., method='inverted_cdf')`` (``n*q - 1`` rounded up, in float64), so equal to it."""
    n = x.shape[1]
    k = n * q - 1
    idx = min(max(math.floor(k) + (k != math.floor(k)), 0), n - 1)
    return x.sort(dim=1).values[:, idx]


def hist_quantile(counts: torch.Tensor, edges_hi: torch.Tensor, q: float) -> float:
    """Upper edge of the first bin whose cumulative count reaches the fraction ``q``."""
    cdf = counts.cumsum(0) / counts.sum().clamp_min(1e-12)
    idx = int(torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype)).clamp(max=len(cdf) - 1))
    return float(edges_hi[idx])


@register_strategy("percentile")
class Percentile(Strategy):
    @dataclass
    class Options:
        percentile: float = 99.99

        def __post_init__(self):
            if not 50.0 < self.percentile <= 100.0:
                raise ValueError(f"percentile must lie in (50, 100], got {self.percentile}")

    def weight_range(self, w, spec, ctx):
        q = self.options.percentile / 100.0
        if spec.symmetric:
            t = inverted_cdf(w.abs(), q)
            return -t, t
        return -inverted_cdf(-w, q), inverted_cdf(w, q)

    def act_range(self, stats, spec, ctx):
        q = self.options.percentile / 100.0
        width = stats.bin_width
        if spec.symmetric:
            edges = (torch.arange(stats.bins, dtype=torch.float64) + 1) * width
            t = min(hist_quantile(stats.abs_hist(), edges, q), max(abs(stats.min), abs(stats.max)))
            return -t, t
        counts, centers = stats.signed_hist()
        hi = min(hist_quantile(counts, centers + width / 2, q), stats.max)
        lo = max(-hist_quantile(counts.flip(0), -(centers.flip(0) - width / 2), q), stats.min)
        return lo, hi
