"""EasyQuant: the scale that maximises the cosine similarity of the layer's output.

Wu et al., "EasyQuant: Post-training quantization via scale optimization" (2020).
Starting from the min/max range, a grid of shrink factors is scored by the cosine
similarity between the layer's FP output and its output with the quantized tensor,
on a few real calibration inputs, and the best factor wins (ties: the smallest factor).
As in the paper, the score is the mean over the N samples of a per-sample cosine
(eq. 3-4: ``1/N sum_i cos(O_i, Q(O_i))``), computed in float64:

- activations (per tensor, FP weights): each sample's whole layer output, flattened;
- weights (per output channel, FP inputs): each sample's output of that channel
  (a conv's ``H x W`` map, a linear layer's tokens); a per-tensor weight grid averages
  the channels' scores.

Departures, deliberate: (1) where a channel's output of one sample is a single number
(a linear layer on ``[N, features]``, e.g. a classifier head) its cosine is only a sign,
so that channel is scored by one cosine over the samples' outputs instead; (2) the paper
alternates weight and activation searches; here each role is searched once against the FP
other, so the two roles stay independent candidates for DQSS.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dqss.plugin import Strategy, fake_quantize, range_to_qparams, register_strategy, row_minmax, shrink_grid


def sample_cosine(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean over samples (dim 0) of the cosine of each sample's flattened output, in float64."""
    y, ref = y.double().flatten(1), ref.double().flatten(1)
    return F.cosine_similarity(y, ref, dim=1, eps=1e-12).mean()


def channel_sample_cosine(y: torch.Tensor, ref: torch.Tensor, axis: int) -> torch.Tensor:
    """Per output channel (``axis``: 1 for a conv's NCHW output, -1 for a linear layer's ``[..., out]``),
    the mean over samples of the cosine of that sample's channel output, in float64; where that output
    is a single number per sample, one cosine over the samples instead (see the module docstring)."""
    n, c = y.shape[0], y.shape[axis]
    y = y.double().movedim(axis, 1).reshape(n, c, -1)
    ref = ref.double().movedim(axis, 1).reshape(n, c, -1)
    if y.shape[2] == 1:
        return F.cosine_similarity(y[:, :, 0].T, ref[:, :, 0].T, dim=1, eps=1e-12)
    return F.cosine_similarity(y, ref, dim=2, eps=1e-12).mean(0)


@register_strategy("easyquant")
class EasyQuant(Strategy):
    needs_samples = True

    @dataclass
    class Options:
        grid: int = 50
        min_ratio: float = 0.5

        def __post_init__(self):
            if self.grid < 2 or not 0 < self.min_ratio < 1:
                raise ValueError("grid must be >= 2 and min_ratio in (0, 1)")

    def _samples(self, ctx):
        if ctx.samples is None or len(ctx.samples) == 0:
            raise RuntimeError(f"EasyQuant needs calibration inputs of layer '{ctx.name}'; collect statistics "
                               "with calibration.samples > 0")
        return ctx.samples.float()

    @torch.no_grad()
    def weight_range(self, w, spec, ctx):
        x = self._samples(ctx)
        weight = ctx.module.weight.detach().float()
        ref = ctx.run(x, weight)
        lo, hi = row_minmax(w)
        axis = -1 if isinstance(ctx.module, torch.nn.Linear) else 1
        best, best_f = None, torch.ones_like(lo)
        for f in shrink_grid(self.options.grid, self.options.min_ratio):
            s, z = range_to_qparams(lo * f, hi * f, spec)
            wq = fake_quantize(w, s, z, spec.qmin, spec.qmax).reshape(weight.shape)
            cos = channel_sample_cosine(ctx.run(x, wq), ref, axis)
            if not spec.per_channel:
                cos = cos.mean().reshape(1)
            if best is None:
                best, best_f = cos, torch.full_like(lo, float(f))
            else:
                better = cos > best
                best = torch.where(better, cos, best)
                best_f = torch.where(better, f, best_f)
        return lo * best_f, hi * best_f

    @torch.no_grad()
    def act_range(self, stats, spec, ctx):
        x = self._samples(ctx)
        weight = ctx.module.weight.detach().float()
        ref = ctx.run(x, weight)
        lo, hi = torch.tensor(stats.min), torch.tensor(stats.max)
        best, best_f = -2.0, 1.0
        for f in shrink_grid(self.options.grid, self.options.min_ratio):
            s, z = range_to_qparams(lo * f, hi * f, spec)
            cos = float(sample_cosine(ctx.run(fake_quantize(x, s, z, spec.qmin, spec.qmax), weight), ref))
            if cos > best:
                best, best_f = cos, float(f)
        return float(lo) * best_f, float(hi) * best_f
