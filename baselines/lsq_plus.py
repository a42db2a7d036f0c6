"""LSQ+: LSQ with a learnable offset for activations and a better initialisation.

Bhalgat, Lee, Nagel, Blankevoort and Kwak, "LSQ+: Improving low-bit quantization
through learnable offsets and better initialization" (CVPR Workshops 2020).

Activations are asymmetric with a learnable offset beta on the unsigned grid
[0, 2^b-1] (whatever the sign of the tensor, so a Swish/GELU output or an image keeps
its full range): ``v_hat = round(clamp((v - beta)/s, Q_N, Q_P)) * s + beta``.  With
``u = (v - beta)/s`` the gradients are (straight-through round)

* ``d v_hat / d v = 1`` inside, 0 outside;
* ``d v_hat / d s = round(u) - u`` inside, ``Q_N`` below, ``Q_P`` above;
* ``d v_hat / d beta = 0`` inside, 1 outside;

and both parameter gradients are scaled by LSQ's ``g = 1/sqrt(N Q_P)``.  Initialisation
(the paper's min/max rule): ``s = (max - min)/(Q_P - Q_N)``, ``beta = min - Q_N s``.

Weights are symmetric and signed as in LSQ (same quantizer), with the paper's
initialisation ``s = max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)`` (mu, sigma of the
tensor, per output channel when per-channel; sigma the population standard deviation).
Steps are clamped to >= 1e-8 in the forward (our guard).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from baselines._qat_common import EPS, elements_per_step, per_step, symmetric_grid, weight_rows
from baselines.lsq import LSQQuantizer
from dqss.plugin import Grid, LearnedQuantizer, Strategy, grad_scale, make_grid, register_strategy


class LSQPlusActQuantizer(LearnedQuantizer):
    """``round(clamp((v - beta)/s, Q_N, Q_P)) * s + beta`` with a learned step and offset."""

    param_names = ("step", "offset")

    def __init__(self, spec, step: float, offset: float, strategy: str = "lsq_plus"):
        super().__init__(spec, strategy)
        self.step = nn.Parameter(torch.tensor(max(float(step), EPS)))
        self.offset = nn.Parameter(torch.tensor(float(offset)))

    def step_size(self, weight=None):
        return self.step.detach().clamp_min(EPS)

    def export_grid(self, weight=None) -> Grid:
        """``0..Q_P`` on the learned step with the zero point ``-offset / step``, per tensor; the offset must be a
        whole number of steps (a QDQ zero point is an integer)."""
        s = self.step_size()
        z = -self.offset.detach() / s
        zr = torch.round(z)
        if (z - zr).abs() > 1e-4:
            raise ValueError(f"LSQ+ activation offset {float(self.offset.detach()):.6g} is not a whole number of steps "
                             f"({float(z):.4f} steps of {float(s):.6g}); a QDQ zero point is an integer, so this "
                             "grid cannot be exported exactly")
        return make_grid(s, zr, self.spec.qmin, self.spec.qmax, 0)

    def quantize(self, x, s, beta):
        s, beta = self.channel_view(s.clamp_min(EPS), x), self.channel_view(beta, x)
        # round(clamp((x - beta) / s, Q_N, Q_P)) * s + beta, in place on one new tensor
        return torch.sub(x, beta).div_(s).clamp_(self.spec.qmin, self.spec.qmax).round_().mul_(s).add_(beta)

    def grads(self, x, grad, s, beta):
        sv, bv = self.channel_view(s.clamp_min(EPS), x), self.channel_view(beta, x)
        u = torch.sub(x, bv).div_(sv)
        inside = (u >= self.spec.qmin) & (u <= self.spec.qmax)
        r = torch.clamp(u, self.spec.qmin, self.spec.qmax).round_()
        g = grad_scale(elements_per_step(x, "act", self.spec), self.spec.qmax)
        gs = self.reduce_product(grad, torch.where(inside, u.sub_(r).neg_(), r), s) * g  # r - u inside
        gb = self.reduce_to(torch.where(inside, 0.0, grad), beta) * g
        return r.mul_(sv).add_(bv), inside, (gs.to(s.dtype), gb.to(beta.dtype))

    def extra_repr(self) -> str:
        return f"{self.strategy}, {self.spec.bits} bit, asymmetric [0, {self.spec.qmax}] with learned offset"


@register_strategy("lsq_plus", kind="qat")
class LSQPlus(Strategy):
    def build_weight_quantizer(self, spec, ctx):
        spec = symmetric_grid(spec, signed=True)
        rows = weight_rows(ctx.module.weight, spec)
        mu, sigma = rows.mean(1), rows.std(1, unbiased=False)
        step = torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 2 ** (spec.bits - 1)
        return LSQQuantizer(spec, per_step(step, spec), "weight", self.name)

    def build_act_quantizer(self, spec, stats, ctx):
        # resolved first (the contract), then always the unsigned asymmetric grid [0, 2^b-1]
        spec = dataclasses.replace(spec.resolved(stats.nonnegative), symmetric=False, signed=True,
                                   per_channel=False)
        step = (stats.max - stats.min) / (spec.qmax - spec.qmin)
        return LSQPlusActQuantizer(spec, step, stats.min - spec.qmin * step, self.name)
