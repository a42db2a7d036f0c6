"""EasyQuant: the scale that maximises the cosine similarity of the layer's output.

Wu et al., "EasyQuant: Post-training quantization via scale optimization" (2020).
Starting from the min/max range, a grid of shrink factors is scored by the cosine
similarity between the layer's FP output and its output with the quantized tensor,
on a few real calibration inputs: per output channel for weights (with FP inputs),
per tensor for activations (with FP weights).  The paper alternates weight and
activation searches; here each role is searched once against the FP other, so the two
roles stay independent candidates for DQSS.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dqss.quant import fake_quantize, range_to_qparams
from dqss.strategy import Strategy, register_strategy, row_minmax, shrink_grid


def _cosine_per_channel(y: torch.Tensor, ref: torch.Tensor, axis: int) -> torch.Tensor:
    """Cosine similarity per output channel; ``axis`` is the channel dimension (1 for a conv's
    NCHW output, -1 for a linear layer's ``[..., out]`` output, e.g. a transformer's tokens)."""
    y = y.movedim(axis, 0).reshape(y.shape[axis], -1)
    ref = ref.movedim(axis, 0).reshape(ref.shape[axis], -1)
    return F.cosine_similarity(y, ref, dim=1, eps=1e-12)


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
            cos = _cosine_per_channel(ctx.run(x, wq), ref, axis)
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
        ref = ctx.run(x, weight).flatten()
        lo, hi = torch.tensor(stats.min), torch.tensor(stats.max)
        best, best_f = -2.0, 1.0
        for f in shrink_grid(self.options.grid, self.options.min_ratio):
            s, z = range_to_qparams(lo * f, hi * f, spec)
            y = ctx.run(fake_quantize(x, s, z, spec.qmin, spec.qmax), weight).flatten()
            cos = float(F.cosine_similarity(y, ref, dim=0, eps=1e-12))
            if cos > best:
                best, best_f = cos, float(f)
        return float(lo) * best_f, float(hi) * best_f
