"""ACIQ: the analytical clip that minimises expected error under a Laplace/Gaussian prior.

Banner, Nahshan and Soudry, "Post training 4-bit quantization of convolutional networks
for rapid-deployment" (NeurIPS 2019).  The tensor is modelled as Laplace(b) (or
Gaussian(sigma)); the clip ``alpha`` minimises clipping noise + rounding noise
``alpha^2 / (3 * 4^M)`` for a symmetric grid of M bits (reproducing the paper's
alpha = 2.83b, 3.89b, ..., 9.89b for M = 2..8).  A non-negative tensor (after ReLU)
uses the one-sided model (exponential with mean b over its non-zero values, weighted by
their fraction; rounding noise ``alpha^2/(12*4^M)``).
"""
from dataclasses import dataclass
import math

import torch

from dqss.strategy import Strategy, register_strategy


def optimal_clip(scale: torch.Tensor, bits: int, prior: str = "laplace", one_sided: bool = False,
                 tail_mass: float = 1.0, grid: int = 4000) -> torch.Tensor:
    """alpha minimising the expected squared error, in units of ``scale`` (b or sigma).

    Two-sided: Laplace(b) / N(0, sigma^2) on ``[-alpha, alpha]``.  One-sided: the
    exponential (mean b) / half-normal (sigma) on ``[0, alpha]``, whose clipping noise
    equals the two-sided one, with a finer grid; ``tail_mass`` is the fraction of
    values the model describes (the non-zero ones after a ReLU).
    """
    t = torch.linspace(0.05, 20.0, grid, dtype=torch.float64)  # alpha / scale
    levels = 4.0 ** bits
    rounding = t ** 2 / ((12.0 if one_sided else 3.0) * levels)
    if prior == "laplace":
        clipping = 2.0 * torch.exp(-t)
    else:  # gaussian: E[(X - alpha)^2; X > alpha] per tail
        tail = 0.5 * torch.erfc(t / math.sqrt(2.0))
        pdf = torch.exp(-t ** 2 / 2) / math.sqrt(2 * math.pi)
        clipping = 2.0 * ((1 + t ** 2) * tail - t * pdf)
    best = t[torch.argmin(rounding + tail_mass * clipping)]
    return scale * best.to(scale.dtype)


@register_strategy("aciq")
class ACIQ(Strategy):
    @dataclass
    class Options:
        prior: str = "laplace"

        def __post_init__(self):
            if self.prior not in ("laplace", "gaussian"):
                raise ValueError(f"prior must be 'laplace' or 'gaussian', got {self.prior!r}")

    def _scale(self, mean_abs_dev, std):
        return mean_abs_dev if self.options.prior == "laplace" else std

    def weight_range(self, w, spec, ctx):
        mu = w.mean(1, keepdim=True)
        scale = self._scale((w - mu).abs().mean(1), w.std(1, unbiased=False))
        alpha = optimal_clip(scale.double(), spec.bits, self.options.prior).float()
        lo, hi = w.min(1).values, w.max(1).values
        if spec.symmetric:
            t = torch.minimum(alpha + mu.squeeze(1).abs(), torch.maximum(-lo, hi))
            return -t, t
        mu = mu.squeeze(1)
        return torch.maximum(mu - alpha, lo), torch.minimum(mu + alpha, hi)

    def act_range(self, stats, spec, ctx):
        if spec.symmetric and not spec.signed:  # one-sided prior for ReLU outputs, zeros apart
            nonzero = max(stats.count - stats.zeros, 1)
            scale = (stats.sum / nonzero if self.options.prior == "laplace"
                     else math.sqrt(stats.sum_sq / nonzero))
            alpha = float(optimal_clip(torch.tensor(scale, dtype=torch.float64), spec.bits, self.options.prior,
                                       one_sided=True, tail_mass=nonzero / max(stats.count, 1)))
            return 0.0, min(alpha, stats.max)
        scale = self._scale(stats.mean_abs_deviation(), stats.std)
        alpha = float(optimal_clip(torch.tensor(scale, dtype=torch.float64), spec.bits, self.options.prior))
        if spec.symmetric:
            t = min(alpha + abs(stats.mean), max(-stats.min, stats.max))
            return -t, t
        return max(stats.mean - alpha, stats.min), min(stats.mean + alpha, stats.max)
