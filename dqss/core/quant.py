"""Uniform affine fake quantization with a straight-through gradient.

A tensor ``x`` is mapped to the integer grid ``q = clamp(round(x / s) + z, qmin, qmax)``
and back to ``(q - z) * s``.  The gradient is the clipped straight-through estimator:
1 inside the representable range, 0 outside (Bengio et al. 2013; the rule every
quantizer in ``baselines/`` inherits unless its paper says otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..options import BIT_MAX, BIT_MIN

ROLES = ("weight", "act")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: bit width, grid shape and granularity.

    ``signed`` is ``None`` for activations until calibration has seen whether the
    tensor is non-negative (after a ReLU) and can use the unsigned grid.
    """

    bits: int
    symmetric: bool = True
    signed: bool | None = True
    per_channel: bool = False
    channel_axis: int = 0

    def __post_init__(self):
        if not isinstance(self.bits, int) or not BIT_MIN <= self.bits <= BIT_MAX:
            raise ValueError(f"bit width must be an integer in {BIT_MIN}..{BIT_MAX}, got {self.bits!r}; "
                             "fix the w_bits/a_bits (or first_last_bits) entry in the config")
        if not self.symmetric and self.signed is False:
            # an asymmetric grid places its own zero point, signedness is meaningless
            object.__setattr__(self, "signed", True)

    @property
    def qmin(self) -> int:
        if self.symmetric and self.signed:
            return -(2 ** (self.bits - 1))
        return 0

    @property
    def qmax(self) -> int:
        if self.symmetric and self.signed:
            return 2 ** (self.bits - 1) - 1
        return 2 ** self.bits - 1

    def resolved(self, nonnegative: bool) -> QuantSpec:
        """Fix the sign of an activation spec once calibration saw its range."""
        if self.signed is not None:
            return self
        return QuantSpec(self.bits, self.symmetric, not nonnegative, self.per_channel, self.channel_axis)


def range_to_qparams(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec,
                     eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that represent the clipping range ``[lo, hi]`` on ``spec``'s grid."""
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    lo = torch.minimum(lo, torch.zeros_like(lo))  # the grid always holds an exact zero
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if spec.symmetric and spec.signed:
        bound = torch.maximum(-lo, hi)
        scale = (bound / spec.qmax).clamp_min(eps)
        zero = torch.zeros_like(scale)
    elif spec.symmetric:  # unsigned: [0, hi]
        scale = (hi / spec.qmax).clamp_min(eps)
        zero = torch.zeros_like(scale)
    else:
        scale = ((hi - lo) / (spec.qmax - spec.qmin)).clamp_min(eps)
        zero = torch.round(-lo / scale).clamp(spec.qmin, spec.qmax)
    return scale, zero


def broadcast_along(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """``t`` (a scalar, or one value per channel) shaped to broadcast against ``x`` along ``axis``."""
    if t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def _grid_values(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s``, in place on one new tensor (the same operations in the
    same order as the expression, so the same values, without five temporaries of the size of ``x``)."""
    q = torch.div(x, s)
    q.round_().add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)
    return q


class _StraightThrough(torch.autograd.Function):
    """Forward the grid's values; backward the gradient where ``x`` lies on the grid's closed range, 0 outside."""

    @staticmethod
    def forward(ctx, x, s, z, qmin, qmax):
        inside = (x >= (qmin - z) * s) & (x <= (qmax - z) * s)
        ctx.save_for_backward(inside)
        return _grid_values(x, s, z, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                  qmin: int, qmax: int, channel_axis: int = 0) -> torch.Tensor:
    """Quantize-dequantize ``x``; gradient 1 inside the grid's range (ties included), 0 outside.

    Without a gradient to compute (no grad mode, or ``x`` needs none) only the values are computed: no mask."""
    s = broadcast_along(scale, x, channel_axis).to(x.dtype)
    z = broadcast_along(zero, x, channel_axis).to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        return _StraightThrough.apply(x, s, z, qmin, qmax)
    return _grid_values(x, s, z, qmin, qmax)


# -- biases: what an int8 runtime adds -------------------------------------------------------
# An integer convolution accumulates (x_q - z_x) * w_q in int32 and adds its bias in the same units: the bias
# is stored as int32 codes on the step s_x * s_w[c] (ONNX QDQ's bias, ONNX Runtime's WeightBiasQuantization,
# TFLite, TensorRT).  The largest code kept is a float32-exact bound just below 2^31.
INT32_BIAS_LIMIT = 2 ** 31 - 128


def bias_step(act_step: torch.Tensor, weight_step: torch.Tensor) -> torch.Tensor:
    """The int32 bias's step ``s_x * s_w[c]``, in float32 as the runtime computes it (``[C]``, or a scalar for
    a per-tensor weight)."""
    return act_step.detach().float() * weight_step.detach().float()


def bias_codes(bias: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``clamp(round(b / step))``: the bias's int32 codes (float values) on ``step``."""
    return torch.clamp(torch.round(bias.detach().float() / step), -INT32_BIAS_LIMIT, INT32_BIAS_LIMIT)


def int32_bias_pairs(bias: torch.Tensor, act_steps: torch.Tensor, weight_steps: torch.Tensor) -> torch.Tensor:
    """``b_ij``: the bias rounded to int32 codes on the step ``s_x,i * s_w,j[c]`` of every pair of grids,
    ``[N_A, N_W, C or 1]`` (no gradient); ``act_steps`` is ``[N_A]``, ``weight_steps`` ``[N_W, C]`` or
    ``[N_W, 1]`` (per tensor)."""
    step = bias_step(act_steps[:, None, None], weight_steps[None])
    return bias_codes(bias, step) * step


def int32_bias(bias: torch.Tensor, act_step: torch.Tensor, weight_step: torch.Tensor) -> torch.Tensor:
    """The bias rounded to int32 codes on the step ``s_x * s_w[c]`` of one activation grid (a scalar step) and one
    weight grid (``[C]``, or a scalar per tensor), with a straight-through gradient to ``bias``.  A DQSS mixture
    rounds it on every pair of its candidates' grids (:func:`int32_bias_pairs`) and mixes them (:func:`mix_bias`).
    """
    return mix_bias(int32_bias_pairs(bias, act_step.reshape(1), weight_step.reshape(1, -1)), bias)


def mix_bias(pairs: torch.Tensor, bias: torch.Tensor, act_probs: torch.Tensor | None = None,
             weight_probs: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_ij alpha_i beta_j b_ij`` of the rounded biases ``pairs`` (:func:`int32_bias_pairs`), with the
    straight-through gradient of ``bias``; without probabilities, the one pair ``b_00``.

    This is exactly the bias term of the naive relaxation ``sum_ij alpha_i beta_j (A_i * W_j + b_ij)``, since the
    pairs' weights sum to one, so the efficient convolution stays equal to it; the probabilities get their
    gradient through it."""
    pairs = pairs.to(bias.dtype)
    if act_probs is None and weight_probs is None:
        value = pairs[0, 0]
    else:
        pa = act_probs if act_probs is not None else pairs.new_ones(pairs.shape[0])
        pw = weight_probs if weight_probs is not None else pairs.new_ones(pairs.shape[1])
        value = torch.einsum("i,j,ijc->c", pa.to(pairs.dtype), pw.to(pairs.dtype), pairs)
    return with_bias_gradient(value.expand(bias.shape), bias)


def with_bias_gradient(value: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``value`` with the straight-through gradient of ``bias`` (rounding passes it unchanged)."""
    return value + (bias - bias.detach())


class FakeQuantizer(nn.Module):
    """A fixed-range quantizer: what a PTQ range strategy builds for one tensor."""

    def __init__(self, spec: QuantSpec, lo: torch.Tensor, hi: torch.Tensor, strategy: str = ""):
        super().__init__()
        if spec.signed is None:
            raise ValueError("activation spec must be resolved (signed or unsigned) before building a quantizer")
        self.spec = spec
        self.strategy = strategy
        scale, zero = range_to_qparams(lo, hi, spec)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero)

    @property
    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return ((self.spec.qmin - self.zero_point) * self.scale,
                (self.spec.qmax - self.zero_point) * self.scale)

    def step_size(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The grid's step, a scalar or one per channel.  Every quantizer class has this method: a layer
        rounds its bias to int32 on the product of its input's and its weight's steps (:func:`int32_bias`)."""
        return self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self.scale, self.zero_point, self.spec.qmin, self.spec.qmax,
                             self.spec.channel_axis)

    def values_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q(x) without autograd, and the straight-through mask (x inside the range)."""
        ax = self.spec.channel_axis
        s = broadcast_along(self.scale, x, ax).to(x.dtype)
        z = broadcast_along(self.zero_point, x, ax).to(x.dtype)
        inside = (x >= (self.spec.qmin - z) * s) & (x <= (self.spec.qmax - z) * s)
        return _grid_values(x, s, z, self.spec.qmin, self.spec.qmax), inside  # the same rule as fake_quantize

    def extra_repr(self) -> str:
        g = "per-channel" if self.spec.per_channel else "per-tensor"
        kind = "symmetric" if self.spec.symmetric else "asymmetric"
        sign = "signed" if self.spec.signed else "unsigned"
        return f"{self.strategy}, {self.spec.bits} bit, {kind} {sign} {g}"
