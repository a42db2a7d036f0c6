"""PACT: a learned activation clip, with DoReFa weights.

Choi, Wang, Venkataramani, Chuang, Srinivasan and Gopalakrishnan, "PACT: Parameterized
Clipping Activation for Quantized Neural Networks" (arXiv 1805.06085, 2018).

Activations (eqs. 1-3): ``y = clamp(x, 0, alpha)``,
``y_q = round(y (2^k - 1) / alpha) alpha / (2^k - 1)`` with a learnable scalar alpha;
through the straight-through round ``d y_q / d x = 1`` for ``0 <= x <= alpha`` (else 0)
and ``d y_q / d alpha = 1`` for ``x >= alpha`` (else 0).

Our extension for a signed input (the image into the first conv): clip to
``[-alpha, alpha]`` on the signed grid with step ``alpha / Q_P`` (levels ``-Q_P..Q_P``);
``d y_q / d alpha = +1`` above alpha and ``-1`` below ``-alpha``.

Initialisation: ``alpha_init`` if given (the paper uses 10), else from the FP
statistics: ``stats.max`` (``max|x|`` for a signed tensor), so training starts from the
min/max quantizer.  alpha is clamped to >= 1e-8 in the forward (our guard).
Weights: DoReFa's quantizer (the paper's choice), see ``baselines/dorefa.py``, with
its ``rescale`` option.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from baselines._qat_common import EPS, act_grid, clip_export_grid
from baselines.dorefa import DoReFaWeightQuantizer, clip_quantize
from dqss.plugin import Grid, LearnedQuantizer, Strategy, register_strategy


class PACTQuantizer(LearnedQuantizer):
    """``y_q`` of PACT with a learned clip alpha (scalar)."""

    param_names = ("alpha",)

    def __init__(self, spec, alpha: float, strategy: str = "pact"):
        super().__init__(spec, strategy)
        self.alpha = nn.Parameter(torch.tensor(max(float(alpha), EPS)))

    def step_size(self, weight=None):
        """PACT's levels ``0..Q_P`` (signed: ``-Q_P..Q_P``) on the step ``alpha / Q_P``."""
        return self.alpha.detach().clamp_min(EPS) / self.spec.qmax

    def export_grid(self, weight=None) -> Grid:
        """Levels ``0..Q_P`` (signed: ``-Q_P..Q_P``) on the step ``alpha / Q_P``, per tensor."""
        return clip_export_grid(self.step_size(), self.spec)

    def quantize(self, x, alpha):
        return clip_quantize(x, alpha.clamp_min(EPS).to(x.dtype), self.spec.signed, self.spec.qmax)[0]

    def grads(self, x, grad, alpha):
        a = alpha.clamp_min(EPS).to(x.dtype)
        values, inside = clip_quantize(x, a, self.spec.signed, self.spec.qmax)
        da = self.reduce_to(torch.where(x >= a, grad, 0.0), alpha)
        if self.spec.signed:
            da = da - self.reduce_to(torch.where(x <= -a, grad, 0.0), alpha)
        return values, inside, (da.to(alpha.dtype),)


@register_strategy("pact", kind="qat")
class PACT(Strategy):
    @dataclass
    class Options:
        alpha_init: float | None = None  # None: from the statistics (max, or max|x| if signed)
        rescale: bool = True             # of the DoReFa weights (see baselines/dorefa.py)

        def __post_init__(self):
            a = self.alpha_init
            if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float))
                                  or not 0 < a < math.inf):
                raise ValueError(f"alpha_init must be a positive number or null (from the statistics), got {a!r}")
            if not isinstance(self.rescale, bool):
                raise ValueError(f"rescale must be true or false, got {self.rescale!r}")

    def build_weight_quantizer(self, spec, ctx):
        return DoReFaWeightQuantizer(spec, self.options.rescale, self.name)

    def build_act_quantizer(self, spec, stats, ctx):
        spec = act_grid(spec, stats.nonnegative)
        alpha = self.options.alpha_init
        if alpha is None:
            alpha = stats.max if not spec.signed else max(-stats.min, stats.max)
        return PACTQuantizer(spec, alpha, self.name)
