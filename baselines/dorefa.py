"""DoReFa-Net: tanh-normalised weights and clipped activations, trained through a STE.

Zhou, Wu, Ni, Zhou, Wen and Zou, "DoReFa-Net: Training low bitwidth convolutional neural
networks with low bitwidth gradients" (arXiv 1606.06160, 2016).  With
``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)`` and a straight-through round:

* weights (eq. 9): ``w_q = 2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``; the
  gradient flows through tanh and the max by plain autograd (no learnable parameter),
  so this quantizer is not closed-form.  The max is per tensor as in the paper, or per
  output channel for a per-channel spec.  Our QAT starts from an FP checkpoint, whose
  weights are far from the [-1, 1] range of ``w_q``; ``rescale=True`` (default)
  multiplies ``w_q`` by ``max|w|`` (detached, per tensor/channel) so the quantized model
  starts close to the FP one.  ``rescale=False`` is the paper's exact form.
* activations (section 2.6): ``y_q = quantize_k(clamp(x, 0, 1))``, gradient 1 on [0, 1]
  and 0 outside, no learnable parameter.  ``clip`` replaces the upper bound 1
  (``quantize_k`` then acts on ``x / clip``).  A signed input (the image into the first
  conv) is clipped to ``[-clip, clip]`` on the signed grid, levels ``-Q_P..Q_P``
  (our extension).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines._qat_common import EPS, act_grid, clip_export_grid
from dqss.plugin import Grid, LearnedQuantizer, Strategy, make_grid, register_strategy


def round_ste(r: torch.Tensor) -> torch.Tensor:
    """round(r) in the forward, identity in the backward."""
    return r + (torch.round(r) - r).detach()


def clip_quantize(x: torch.Tensor, alpha: torch.Tensor, signed: bool, qmax: int):
    """``x`` clipped to ``[0, alpha]`` (``[-alpha, alpha]`` if signed) on ``qmax`` steps of
    ``alpha / qmax``; returns the values and the mask where the input gradient is 1."""
    lo = -alpha if signed else torch.zeros_like(alpha)
    step = alpha / qmax
    y = torch.clamp(x, lo, alpha)
    return y.div_(step).round_().mul_(step), (x >= lo) & (x <= alpha)  # round(y / step) * step, in place


class DoReFaWeightQuantizer(LearnedQuantizer):
    """DoReFa's weight quantizer (eq. 9) in plain autograd; no learnable parameters."""

    closed_form = False

    def __init__(self, spec, rescale: bool = True, strategy: str = "dorefa"):
        super().__init__(spec, strategy)
        self.rescale = rescale

    def _max(self, t: torch.Tensor) -> torch.Tensor:
        if not self.spec.per_channel:
            return t.amax()
        dims = [d for d in range(t.dim()) if d != self.spec.channel_axis]
        return t.amax(dim=dims, keepdim=True)

    def step_size(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The odd codes ``-n..n`` (``n = 2^b - 1``) on the step ``m / n``, ``m = max|w|`` (per channel) with
        ``rescale``, else 1: the grid depends on the weight."""
        if weight is None:
            raise ValueError("the DoReFa weight grid depends on the weight: call step_size(weight)")
        n = 2 ** self.spec.bits - 1
        if self.rescale:
            m = self._max(weight.detach().abs())
            m = m.reshape(-1) if self.spec.per_channel else m.reshape(())
        else:
            m = weight.new_ones(weight.shape[self.spec.channel_axis] if self.spec.per_channel else ())
        return m.float() / n

    def export_grid(self, weight: torch.Tensor | None = None) -> Grid:
        """``(2k - n)/n * m`` as the odd codes ``-n..n`` on the step ``m / n`` (see :meth:`step_size`), zero point
        0, per channel along the spec's axis when per-channel; it needs the layer's ``weight``."""
        n = 2 ** self.spec.bits - 1
        if n > 127:
            raise ValueError(f"DoReFa {self.spec.bits}-bit weights take the odd codes -{n}..{n}, which do not fit "
                             "int8; DoReFa weights export at 7 bits or fewer")
        if weight is None:
            raise ValueError("the DoReFa weight grid depends on the weight: call tensor_grid(quantizer, weight)")
        s = self.step_size(weight)
        return make_grid(s, torch.zeros(s.shape), -n, n, self.spec.channel_axis)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        n = 2 ** self.spec.bits - 1
        t = torch.tanh(w)
        r = t / (2 * self._max(t.abs()).clamp_min(EPS)) + 0.5
        w_q = 2 * round_ste(n * r) / n - 1
        if self.rescale:
            w_q = w_q * self._max(w.detach().abs())
        return w_q

    def quantize(self, w, *params):
        with torch.no_grad():
            return self.forward(w)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rescale={self.rescale}"


class DoReFaActQuantizer(LearnedQuantizer):
    """``quantize_k(clamp(x, 0, clip))`` (signed: ``[-clip, clip]``); closed form, no parameters."""

    param_names = ()

    def __init__(self, spec, clip: float = 1.0, strategy: str = "dorefa"):
        super().__init__(spec, strategy)
        self.clip = float(clip)

    def step_size(self, weight=None):
        return torch.tensor(self.clip / self.spec.qmax)

    def export_grid(self, weight=None) -> Grid:
        """Levels ``0..Q_P`` (signed: ``-Q_P..Q_P``) on the step ``clip / Q_P``, per tensor."""
        return clip_export_grid(self.step_size(), self.spec)

    def quantize(self, x):
        return clip_quantize(x, x.new_tensor(self.clip), self.spec.signed, self.spec.qmax)[0]

    def grads(self, x, grad):
        values, inside = clip_quantize(x, x.new_tensor(self.clip), self.spec.signed, self.spec.qmax)
        return values, inside, ()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip={self.clip}"


@register_strategy("dorefa", kind="qat")
class DoReFa(Strategy):
    @dataclass
    class Options:
        rescale: bool = True  # multiply w_q by max|w| (False: the paper's w_q in [-1, 1])
        clip: float = 1.0     # activation clip (the paper: 1)

        def __post_init__(self):
            if not isinstance(self.rescale, bool):
                raise ValueError(f"rescale must be true or false, got {self.rescale!r}")
            if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)) or not 0 < self.clip < float("inf"):
                raise ValueError(f"clip must be a positive number (the activation's upper clip), got {self.clip!r}")

    def build_weight_quantizer(self, spec, ctx):
        return DoReFaWeightQuantizer(spec, self.options.rescale, self.name)

    def build_act_quantizer(self, spec, stats, ctx):
        return DoReFaActQuantizer(act_grid(spec, stats.nonnegative), self.options.clip, self.name)
