"""KL / entropy calibration: the threshold whose quantized histogram diverges least.

Migacz, "8-bit inference with TensorRT" (GTC 2017).  The magnitudes are histogrammed
(2048 bins for activations); for every candidate threshold ``i`` the clipped
distribution P (outliers folded into its last bin) is compared with Q, the same bins
merged into the grid's number of levels and spread back evenly over P's non-empty bins;
the threshold minimising KL(P || Q) wins.  The zero bin is flattened first (a ReLU's
spike of exact zeros would otherwise decide the threshold).  Weights use a per-channel histogram with
fewer bins and a coarser threshold stride (TensorRT itself keeps weights at max).
"""
from dataclasses import dataclass

import torch

from dqss.strategy import Strategy, register_strategy


def kl_threshold_bins(hist: torch.Tensor, levels: int, stride: int = 1,
                      chunk_elems: int = 1 << 22) -> torch.Tensor:
    """For each row of ``hist`` (``[R, B]``), the number of bins ``i`` minimising KL(P||Q).

    Candidates are ``i = levels, levels + stride, ..., B``.  Because Q is constant on each
    merged group, KL(P||Q) reduces to per-group sums that prefix sums give in O(levels)
    per candidate, so all candidates are scored at once.
    """
    hist = hist.double()
    rows, nbins = hist.shape
    if nbins < levels:
        raise ValueError(f"histogram of {nbins} bins cannot be merged into {levels} levels")
    cand = torch.arange(levels, nbins + 1, stride)
    step = max(1, chunk_elems // (len(cand) * (levels + 1)))
    return torch.cat([_kl_best(hist[r:r + step], cand, levels) for r in range(0, rows, step)])


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x * torch.log(x.clamp_min(1e-300)), torch.zeros_like(x))


def _prefix(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(x[:, :1]), x.cumsum(1)], 1)


def _kl_best(hist: torch.Tensor, cand: torch.Tensor, levels: int) -> torch.Tensor:
    rows = hist.shape[0]
    n_cand = len(cand)
    count, nonzero, plogp = _prefix(hist), _prefix((hist > 0).double()), _prefix(_xlogx(hist))
    # group g of candidate i holds bins j with floor(j * levels / i) == g
    bounds = (torch.arange(levels + 1)[None, :] * cand[:, None] + levels - 1) // levels  # [K, L+1]

    def group_sum(prefix):
        at = prefix[:, bounds.flatten()].reshape(rows, n_cand, levels + 1)
        return at[..., 1:] - at[..., :-1]                                      # [R, K, L]

    sums, counts = group_sum(count), group_sum(nonzero)
    total = count[:, -1:]
    tail = total - count[:, cand]                                              # outliers beyond bin i
    last = hist[:, cand - 1]
    counts[..., -1] += ((last == 0) & (tail > 0)).double()  # the outliers make P's last bin non-empty
    p_group = sums.clone()
    p_group[..., -1] += tail
    sum_plogp = plogp[:, cand - 1] + _xlogx(last + tail)
    q = sums / counts.clamp_min(1)
    cross = torch.where(p_group > 0, p_group * torch.log(q), torch.zeros_like(q)).sum(2)
    kl = (sum_plogp - cross) / total - torch.log(total) + torch.log(count[:, cand].clamp_min(1e-300))
    return cand[kl.argmin(1)]


def without_zero_spike(hist: torch.Tensor) -> torch.Tensor:
    """Replace the first bin by the second: the spike of exact zeros after a ReLU would
    otherwise dominate KL and push the threshold to its minimum (NVIDIA's
    pytorch-quantization entropy calibrator does the same)."""
    hist = hist.clone()
    hist[..., 0] = hist[..., 1]
    return hist


def levels_for(spec) -> int:
    """Grid steps between 0 and the threshold (TensorRT: 128 for signed int8)."""
    if spec.symmetric and not spec.signed:
        return 2 ** spec.bits
    return 2 ** (spec.bits - 1)


@register_strategy("kl")
class KL(Strategy):
    @dataclass
    class Options:
        weight_bins: int = 512
        weight_stride: int = 4

        def __post_init__(self):
            if self.weight_bins < 256 or self.weight_stride < 1:
                raise ValueError("weight_bins must be >= 256 (the 8-bit unsigned level count) "
                                 "and weight_stride >= 1")

    def weight_range(self, w, spec, ctx):
        mag = w.abs()
        amax = mag.max(1).values.clamp_min(1e-12)
        nb = self.options.weight_bins
        idx = (mag / amax[:, None] * nb).long().clamp(max=nb - 1)
        hist = torch.zeros(w.shape[0], nb, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(mag).double())
        i = kl_threshold_bins(without_zero_spike(hist), levels_for(spec), self.options.weight_stride)
        t = amax * i.float() / nb
        if spec.symmetric:
            return -t, t
        return torch.maximum(w.min(1).values, -t), torch.minimum(w.max(1).values, t)

    def act_range(self, stats, spec, ctx):
        i = int(kl_threshold_bins(without_zero_spike(stats.abs_hist()[None]), levels_for(spec))[0])
        t = i * stats.bin_width
        if spec.symmetric:
            return -t, t
        return max(stats.min, -t), min(stats.max, t)
