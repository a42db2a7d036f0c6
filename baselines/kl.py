"""KL / entropy calibration: the threshold whose quantized histogram diverges least.

Migacz, "8-bit inference with TensorRT" (GTC 2017); the rule is that of NVIDIA's
entropy calibrator (pytorch-quantization ``_compute_amax_entropy``, also in ModelOpt).
The magnitudes are histogrammed (2048 bins for activations) and the zero bin is
flattened (``bins[0] = bins[1]``: a ReLU's spike of exact zeros would otherwise decide
the threshold).  For every candidate ``i`` (a threshold at the upper edge of bin
``i - 1``):

- P is ``bins[:i]`` with every count beyond the threshold (the outliers) added to its
  last bin ``P[i-1]``;
- Q is ``bins[:i]`` merged into the grid's number of levels (bin ``j`` in group
  ``floor(j * levels / i)``), each group's sum spread evenly over the group's NON-EMPTY
  bins; empty bins stay 0.  Q never sees the outliers;
- both are normalised and KL(P || Q) is scored with the usual conventions: 0 where
  P = 0, infinite where P > 0 and Q = 0.  So a candidate whose last kept bin is empty
  while values lie beyond it (P[i-1] > 0, Q[i-1] = 0) is infinite and never wins.

The threshold is the bin edge of the minimising candidate, capped at max|x|.  Because Q
is constant on each group, KL reduces to per-group sums that prefix sums give in
O(levels) per candidate, so all candidates are scored at once (``kl_threshold_bins``;
``tests/unit/test_strategies.py`` checks it against a direct float64 loop of the rule above).

Deliberate departures from NVIDIA's code, each pinned by a test:

- Candidates start at ``min(levels, 128)`` bins.  NVIDIA starts at bin 128 for every bit
  width (it calibrates int8); at 8 bit (signed 128, unsigned 256 levels) the two agree.
  Below 8 bit a 2**(b-1)-level grid can be best served by a threshold under 1/16 of the
  histogram range (heavy tails, outliers), which a 128-bin floor would forbid.
- With a stride, the full range (``i = bins``) is always a candidate, also when the
  stride grid misses it; otherwise a sparse row whose strided candidates all end on an
  empty bin with values beyond would have only infinite candidates.
- Ties: NVIDIA takes the last (largest) minimiser; so do we, but candidates within
  ``TIE_TOL`` of the minimum count as tied, so that exact ties of the rule (e.g. several
  candidates with KL = 0 on a sparse histogram) are not broken by the rounding of the
  prefix-sum form.
- A candidate whose kept bins are all empty while values lie beyond is infinite here
  (P > 0 where Q = 0); NVIDIA's code gets NaN there (0/0 in the normalisation of Q), which
  its ``np.argmin`` would select.
- A histogram with no counts at all (after flattening the zero bin) keeps the full range.
- Weights: TensorRT keeps weights at max; here KL is also offered for weights, per output
  channel, on a histogram of the channel's magnitudes over ``[0, max|w|]`` with
  ``weight_bins`` (512) bins and a candidate stride of ``weight_stride`` (4).  A channel
  has few values (147 for a [64, 3, 7, 7] conv, 4608 for [512, 512, 3, 3]): 2048 bins
  would leave the histogram mostly empty, and the stride keeps the cost of hundreds of
  channels small.
"""
from dataclasses import dataclass

import torch

from dqss.plugin import Strategy, hist_bins, register_strategy

START_BIN = 128  # NVIDIA's first candidate (the int8 level count)
TIE_TOL = 1e-10  # KL values this close to the minimum are ties; the largest threshold wins


def kl_threshold_bins(hist: torch.Tensor, levels: int, stride: int = 1, start: int | None = None,
                      chunk_elems: int = 1 << 18) -> torch.Tensor:
    """For each row of ``hist`` (``[R, B]``), the number of bins ``i`` minimising KL(P||Q).

    Candidates are ``i = start, start + stride, ..., B`` (``start`` defaults to
    ``min(levels, 128)``) and always ``B`` itself.  Rows are scored in chunks of about
    ``chunk_elems`` group entries: each row's scores do not depend on the chunk (the same values, bit for
    bit), and a chunk's dozen float64 temporaries of 2 MB stay in the CPU's cache (8-bit weights, 512 bins,
    stride 4: 3.2x faster than chunks of 4M entries on a 2-core Zen 3).
    """
    hist = hist.double()
    rows, nbins = hist.shape
    start = min(levels, START_BIN) if start is None else start
    if start < 1 or nbins < start:
        raise ValueError(f"histogram of {nbins} bins has no candidate threshold from bin {start} "
                         f"({levels} levels)")
    cand = torch.arange(start, nbins + 1, stride)
    if int(cand[-1]) != nbins:
        cand = torch.cat([cand, torch.tensor([nbins])])
    step = max(1, chunk_elems // (len(cand) * (levels + 1)))
    return torch.cat([_kl_best(hist[r:r + step], cand, levels) for r in range(0, rows, step)])


def kl_divergences(hist: torch.Tensor, cand: torch.Tensor, levels: int) -> torch.Tensor:
    """KL(P || Q) of every candidate ``cand`` (number of kept bins) for each row: ``[R, K]``."""
    hist = hist.double()
    rows = hist.shape[0]
    n_cand = len(cand)
    count, nonzero, plogp = _prefix(hist), _prefix((hist > 0).double()), _prefix(_xlogx(hist))
    # group g of candidate i holds the bins j with floor(j * levels / i) == g (NVIDIA's
    # np.digitize over np.linspace(0, i, levels + 1)), i.e. j from ceil(g * i / levels)
    bounds = (torch.arange(levels + 1)[None, :] * cand[:, None] + levels - 1) // levels  # [K, L+1]

    def group_sum(prefix):
        at = prefix[:, bounds.flatten()].reshape(rows, n_cand, levels + 1)
        return at[..., 1:] - at[..., :-1]                                      # [R, K, L]

    sums, counts = group_sum(count), group_sum(nonzero)
    total = count[:, -1:]
    kept = count[:, cand]                                                      # sum(bins[:i])
    tail = total - kept                                                        # outliers beyond bin i
    last = hist[:, cand - 1]
    # Q on a non-empty bin of group g is sums[g] / counts[g]; P is hist with the tail in bin i - 1
    log_q = torch.log(sums.clamp_min(1e-300)) - torch.log(counts.clamp_min(1))
    cross = torch.where(sums > 0, sums * log_q, torch.zeros_like(sums)).sum(2)  # sum_j hist_j log q_j
    last_group = ((cand - 1) * levels // cand).expand(rows, n_cand)[..., None]
    log_q_last = log_q.gather(2, last_group)[..., 0]
    cross = cross + torch.where(last > 0, tail * log_q_last, torch.zeros_like(tail))
    sum_plogp = plogp[:, cand - 1] + _xlogx(last + tail)
    kl = (sum_plogp - cross) / total - torch.log(total) + torch.log(kept.clamp_min(1e-300))
    # P > 0 where Q = 0: the last kept bin is empty but the outliers land in it
    return torch.where((last == 0) & (tail > 0), torch.full_like(kl, float("inf")), kl)


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x * torch.log(x.clamp_min(1e-300)), torch.zeros_like(x))


def _prefix(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(x[:, :1]), x.cumsum(1)], 1)


def _kl_best(hist: torch.Tensor, cand: torch.Tensor, levels: int) -> torch.Tensor:
    kl = kl_divergences(hist, cand, levels)
    empty = hist.sum(1) == 0
    kl[empty] = 0.0                                   # nothing to fit: every candidate ties, the full range wins
    tied = kl <= kl.min(1, keepdim=True).values + TIE_TOL
    last = len(cand) - 1 - tied.flip(1).double().argmax(1)      # the largest tied candidate
    return cand[last]


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


def weight_hist(w: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row histograms of ``|w|`` (``[R, N]``) over ``[0, max|w_r|]`` with ``bins`` bins,
    as ``numpy.histogram(|w_r|, bins, range=(0, max|w_r|))`` (float64), and the rows' max."""
    mag = w.detach().abs().double()
    amax = mag.max(1).values.clamp_min(1e-12)
    idx = hist_bins(mag, bins, amax[:, None])
    hist = torch.zeros(w.shape[0], bins, dtype=torch.float64, device=w.device)
    return hist.scatter_add_(1, idx, torch.ones_like(mag)), amax


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
        nb = self.options.weight_bins
        hist, amax = weight_hist(w, nb)
        i = kl_threshold_bins(without_zero_spike(hist).cpu(), levels_for(spec), self.options.weight_stride)
        # the bin edge i * (max / bins) (numpy's linspace edges), at most max|w| since i <= bins
        t = (i.to(amax.device).double() * (amax / nb)).minimum(amax).to(w.dtype)
        if spec.symmetric:
            return -t, t
        return torch.maximum(w.min(1).values, -t), torch.minimum(w.max(1).values, t)

    def act_range(self, stats, spec, ctx):
        i = int(kl_threshold_bins(without_zero_spike(stats.abs_hist()[None]), levels_for(spec))[0])
        t = min(i * stats.bin_width, max(abs(stats.min), abs(stats.max)))  # capped at max|x|
        if spec.symmetric:
            return -t, t
        return max(stats.min, -t), min(stats.max, t)
