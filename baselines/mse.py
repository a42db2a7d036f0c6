"""MSE / Lp-norm clipping search: the range that minimises the quantization error.

Choukroun et al., "Low-bit quantization of neural networks for efficient inference"
(OMSE, 2019), with the Lp generalisation of Nahshan et al. (LAPQ, 2019).  The min/max
range is shrunk by a grid of factors; each candidate is scored by the mean
``|x - Q(x)|^p`` on the real grid (weights exactly, per channel; activations over the
calibration histogram) and the best factor wins.
"""
from dataclasses import dataclass

import torch

from dqss.strategy import Strategy, quant_error, register_strategy, row_minmax, shrink_grid


def best_shrink(values, lo, hi, spec, p, grid, weights=None):
    """Per row, the factor of ``grid`` whose range ``(f*lo, f*hi)`` has the smallest Lp error."""
    best_err = torch.full_like(lo, float("inf"))
    best_f = torch.ones_like(lo)
    for f in grid:
        err = quant_error(values, lo * f, hi * f, spec, p, weights)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_f = torch.where(better, f.to(lo.dtype), best_f)
    return best_f


@register_strategy("mse")
class MSE(Strategy):
    @dataclass
    class Options:
        p: float = 2.0
        grid: int = 100
        min_ratio: float = 0.05

        def __post_init__(self):
            if self.p <= 0:
                raise ValueError(f"p must be positive, got {self.p}")
            if self.grid < 2 or not 0 < self.min_ratio < 1:
                raise ValueError("grid must be >= 2 and min_ratio in (0, 1)")

    def weight_range(self, w, spec, ctx):
        lo, hi = row_minmax(w)
        f = best_shrink(w, lo, hi, spec, self.options.p, shrink_grid(self.options.grid, self.options.min_ratio))
        return lo * f, hi * f

    def act_range(self, stats, spec, ctx):
        counts, centers = stats.signed_hist()
        lo = torch.tensor([stats.min], dtype=torch.float64)
        hi = torch.tensor([stats.max], dtype=torch.float64)
        f = best_shrink(centers[None], lo, hi, spec, self.options.p,
                        shrink_grid(self.options.grid, self.options.min_ratio).double(), counts[None])
        return float(lo * f), float(hi * f)
