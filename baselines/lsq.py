"""LSQ: quantization-aware training with a learned step size.

Esser, McKinley, Bablani, Appuswamy and Modha, "Learned Step Size Quantization"
(ICLR 2020).  Each tensor is quantized as ``v_hat = round(clamp(v / s, Q_N, Q_P)) * s``
(eq. 1) with a learnable step ``s``: one scalar per tensor, or one per output channel
for per-channel weights.  Gradients (eq. 3, straight-through round):

* ``d v_hat / d v = 1`` for ``Q_N <= v/s <= Q_P``, else 0;
* ``d v_hat / d s = round(v/s) - v/s`` inside, ``Q_N`` below, ``Q_P`` above,
  multiplied by ``g = 1 / sqrt(N * Q_P)`` (section 2.2), N the elements per step.

Initialisation (section 2.1): ``s = 2 <|v|> / sqrt(Q_P)``, from the weight tensor (per
channel when per-channel) and from the calibration mean ``E|x|`` for activations.
Weights use the signed symmetric grid; activations the unsigned grid [0, 2^b-1] after a
ReLU and the signed one otherwise.  The forward clamps the step to >= 1e-8 (our guard).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from baselines._qat_common import EPS, act_grid, elements_per_step, per_step, symmetric_grid, weight_rows
from dqss.plugin import Grid, LearnedQuantizer, Strategy, grad_scale, make_grid, register_strategy


class LSQQuantizer(LearnedQuantizer):
    """``round(clamp(v/s, Q_N, Q_P)) * s`` with LSQ's gradients; ``role`` is "weight" or "act"."""

    param_names = ("step",)

    def __init__(self, spec, step: torch.Tensor, role: str, strategy: str = "lsq"):
        super().__init__(spec, strategy)
        if role not in ("weight", "act"):
            raise ValueError(f"role must be 'weight' or 'act', got {role!r}")
        self.role = role
        self.step = nn.Parameter(torch.as_tensor(step, dtype=torch.float32).clamp_min(EPS).clone())

    def step_size(self, weight=None):
        return self.step.detach().clamp_min(EPS)

    def export_grid(self, weight=None) -> Grid:
        """``Q_N..Q_P`` on the learned step, zero point 0; per channel along the spec's axis when the step is."""
        s = self.step_size()
        return make_grid(s, torch.zeros(s.shape), self.spec.qmin, self.spec.qmax, self.spec.channel_axis)

    def quantize(self, x, s):
        s = self.channel_view(s.clamp_min(EPS), x)
        # round(clamp(x / s, Q_N, Q_P)) * s, in place on one new tensor
        return torch.div(x, s).clamp_(self.spec.qmin, self.spec.qmax).round_().mul_(s)

    def grads(self, x, grad, s):
        sv = self.channel_view(s.clamp_min(EPS), x)
        u = x / sv
        inside = (u >= self.spec.qmin) & (u <= self.spec.qmax)
        r = torch.clamp(u, self.spec.qmin, self.spec.qmax).round_()  # Q_N / Q_P outside
        ds = torch.where(inside, u.sub_(r).neg_(), r)  # eq. 3: r - u inside (u is not needed after this)
        g = grad_scale(elements_per_step(x, self.role, self.spec), self.spec.qmax)
        step_grad = (self.reduce_product(grad, ds, s) * g).to(s.dtype)
        return r.mul_(sv), inside, (step_grad,)


def lsq_init(mean_abs, qmax: int):
    """The paper's step init ``2 <|v|> / sqrt(Q_P)`` (a float or one value per channel)."""
    return 2.0 * mean_abs / math.sqrt(qmax)


@register_strategy("lsq", kind="qat")
class LSQ(Strategy):
    def build_weight_quantizer(self, spec, ctx):
        spec = symmetric_grid(spec, signed=True)
        rows = weight_rows(ctx.module.weight, spec)
        return LSQQuantizer(spec, per_step(lsq_init(rows.abs().mean(1), spec.qmax), spec), "weight", self.name)

    def build_act_quantizer(self, spec, stats, ctx):
        spec = act_grid(spec, stats.nonnegative)
        return LSQQuantizer(spec, torch.tensor(lsq_init(stats.mean_abs, spec.qmax)), "act", self.name)
