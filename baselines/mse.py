"""MSE / Lp-norm clipping search: the range that minimises the quantization error.

Choukroun et al., "Low-bit quantization of neural networks for efficient inference"
(OMSE, 2019), with the Lp generalisation of Nahshan et al. (LAPQ, 2019).  The min/max
range is shrunk by a grid of factors; each candidate is scored by the mean
``|x - Q(x)|^p`` on the real grid (weights exactly, per channel; activations over the
calibration histogram) and the best factor wins; ``refine`` rounds of local search
around it (default 2: +-3 grid steps at a tenth of the step, then +-3 tenths at a
hundredth) follow, because at 8 bit the error varies faster with the factor than the
100-point grid resolves: the grid alone lands up to 17% above the brute-force optimum (a
5000-factor scan), with the refinement within 0.2% (tests/unit/test_strategies.py).
"""
from dataclasses import dataclass

import torch

from dqss.plugin import Strategy, quant_error, register_strategy, row_minmax, shrink_grid


REFINE_SPAN = 3  # a refinement round scans +-3 steps of the previous round ...
REFINE_DIVISION = 10  # ... at a tenth of its step (61 factors)


def _around(centre: torch.Tensor, step: float, low: float, top: float) -> list[torch.Tensor]:
    """A refinement round's factors: ``REFINE_SPAN`` steps either side of ``centre`` at a ``REFINE_DIVISION``-th
    of ``step``, the centre itself left out, clamped to the grid's span."""
    return [(centre + float(t) * step / REFINE_DIVISION).clamp(low, top)
            for t in torch.arange(-REFINE_SPAN * REFINE_DIVISION, REFINE_SPAN * REFINE_DIVISION + 1) if t != 0]


def best_shrink(values, lo, hi, spec, p, grid, weights=None, refine=0, chunk_elems: int = 1 << 18):
    """Per row, the factor ``f`` whose range ``(f*lo, f*hi)`` has the smallest Lp error.

    First the best of ``grid`` (ascending, evenly spaced; ties go to the smallest factor); then
    ``refine`` rounds, each scanning the factors within ``REFINE_SPAN`` steps either side of the
    incumbent at a ``REFINE_DIVISION``-th of the step (clamped to the grid's span; the incumbent
    is kept unless strictly beaten), the step shrinking tenfold each round.  A NaN error never wins.

    ``values`` of at most ``chunk_elems / 2`` elements (an activation's 2048-bin histogram, a small layer's
    weights) have several factors scored per pass (:func:`_best_shrink_batched`); a larger tensor, one factor
    per pass.  Both give the same factors, bit for bit (``tests/unit/test_strategies.py``).
    """
    rows, n = values.shape
    per = chunk_elems // max(1, rows * n)
    if per >= 2:
        return _best_shrink_batched(values, lo, hi, spec, p, grid, weights, refine, per)
    best_err = torch.full_like(lo, float("inf"))
    best_f = torch.ones_like(lo)

    def consider(f):
        nonlocal best_err, best_f
        err = quant_error(values, lo * f, hi * f, spec, p, weights)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_f = torch.where(better, f, best_f)

    for f in grid:
        consider(torch.full_like(lo, float(f)))
    step, low, top = float(grid[1] - grid[0]), float(grid[0]), float(grid[-1])
    for _ in range(refine):
        for f in _around(best_f, step, low, top):
            consider(f)
        step /= REFINE_DIVISION
    return best_f


def _best_shrink_batched(values, lo, hi, spec, p, grid, weights, refine, per: int):
    """:func:`best_shrink` with ``per`` factors of a round scored in one pass over ``[per x rows, n]``: each row's
    error is computed alone, as in one pass per factor, and the pick is the loop's (the first factor reaching the
    minimum; the incumbent kept unless strictly beaten).  For a 2048-bin histogram, 3 passes instead of 220."""
    rows, n = values.shape

    def errors(factors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        fs = torch.stack(factors)  # [k, rows]
        out = []
        for f in torch.split(fs, per):
            k = len(f)
            v = values.expand(k, rows, n).reshape(k * rows, n)
            wt = weights if weights is None or weights.shape[0] == 1 else weights.expand(k, rows, n).reshape(k * rows, n)
            out.append(quant_error(v, (lo * f).reshape(-1), (hi * f).reshape(-1), spec, p, wt).reshape(k, rows))
        return fs, torch.cat(out).nan_to_num(nan=float("inf"))

    def pick(fs, err, best_f, best_err):
        m = err.min(0).values
        first = (err == m).int().argmax(0)  # the first factor reaching the minimum (argmax: first of ties)
        better = m < best_err
        return torch.where(better, fs.gather(0, first[None])[0], best_f), torch.where(better, m, best_err)

    best_f, best_err = torch.ones_like(lo), torch.full_like(lo, float("inf"))
    best_f, best_err = pick(*errors([torch.full_like(lo, float(f)) for f in grid]), best_f, best_err)
    step, low, top = float(grid[1] - grid[0]), float(grid[0]), float(grid[-1])
    for _ in range(refine):
        best_f, best_err = pick(*errors(_around(best_f, step, low, top)), best_f, best_err)
        step /= REFINE_DIVISION
    return best_f


@register_strategy("mse")
class MSE(Strategy):
    @dataclass
    class Options:
        p: float = 2.0
        grid: int = 100
        min_ratio: float = 0.05
        refine: int = 2  # rounds of local refinement after the grid (0: the grid only)

        def __post_init__(self):
            if self.p <= 0:
                raise ValueError(f"p must be positive, got {self.p}")
            if self.grid < 2 or not 0 < self.min_ratio < 1:
                raise ValueError("grid must be >= 2 and min_ratio in (0, 1)")
            if self.refine < 0:
                raise ValueError(f"refine must be >= 0, got {self.refine}")

    def _search(self, values, lo, hi, spec, grid, weights=None):
        return best_shrink(values, lo, hi, spec, self.options.p, grid, weights, self.options.refine)

    def weight_range(self, w, spec, ctx):
        lo, hi = row_minmax(w)
        f = self._search(w, lo, hi, spec, shrink_grid(self.options.grid, self.options.min_ratio))
        return lo * f, hi * f

    def act_range(self, stats, spec, ctx):
        counts, centers = stats.signed_hist()
        lo = torch.tensor([stats.min], dtype=torch.float64)
        hi = torch.tensor([stats.max], dtype=torch.float64)
        f = self._search(centers[None], lo, hi, spec,
                         shrink_grid(self.options.grid, self.options.min_ratio).double(), counts[None])
        return float(lo * f), float(hi * f)
