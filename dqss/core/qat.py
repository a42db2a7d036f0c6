"""Learnable quantizers for quantization-aware training (QAT), with closed-form gradients.

A QAT strategy (``baselines/lsq.py``, ``pact.py``, ...) builds :class:`LearnedQuantizer`
modules: plain ``nn.Module`` objects that own their learnable parameters (an LSQ step,
a PACT clip) and implement their paper's forward and gradient rules in closed form:

* :meth:`LearnedQuantizer.quantize` — the fake-quantized values (no autograd);
* :meth:`LearnedQuantizer.grads` — the values, the derivative w.r.t. the input (a mask:
  every quantizer here passes the gradient straight through on its range, 0 outside) and
  the gradients w.r.t. each learnable parameter, given the upstream gradient;
* :meth:`LearnedQuantizer.export_grid` — the integer grid it rounds to, read by the ONNX
  export (:mod:`dqss.deploy`); only a quantizer that is deployed needs it.

``forward`` wraps the two in one autograd function, so one quantizer is a single fused
node.  The same two methods let the DQSS mixture of QAT candidates recompute each
candidate in the backward pass instead of keeping N outputs alive (see
:class:`dqss.core.mixed.MixedQuantizer`): the memory of a mixed activation does not grow with
the number of candidates, and every candidate's parameters still get their own
gradient (scaled by its mixture weight).

A quantizer whose gradient is not elementwise (DoReFa's weights, normalised by
``max|tanh(w)|``) sets ``closed_form = False`` and overrides ``forward`` with plain
autograd; mixtures then fall back to the autograd sum for that tensor.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .quant import QuantSpec


class LearnedQuantizer(nn.Module):
    """Base class of QAT quantizers. ``param_names`` lists the learnable parameters in the
    order ``quantize``/``grads`` receive them."""

    param_names: ClassVar[tuple[str, ...]] = ()
    closed_form: ClassVar[bool] = True

    def __init__(self, spec: QuantSpec, strategy: str = ""):
        super().__init__()
        if spec.signed is None:
            raise ValueError("activation spec must be resolved (signed or unsigned) before building a quantizer")
        self.spec = spec
        self.strategy = strategy

    def learned(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, n) for n in self.param_names)

    # -- to implement -------------------------------------------------------------------
    def quantize(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        """Fake-quantized ``x`` (called without autograd)."""
        raise NotImplementedError

    def grads(self, x: torch.Tensor, grad: torch.Tensor, *params: torch.Tensor):
        """``(values, dydx, param_grads)`` for upstream gradient ``grad``: ``dydx`` is the
        elementwise derivative w.r.t. ``x`` (a bool straight-through mask, or a float tensor),
        so that ``dL/dx = grad * dydx``; each entry of ``param_grads`` has the shape of its
        parameter (already reduced and gradient-scaled)."""
        raise NotImplementedError

    def export_grid(self, weight: torch.Tensor | None = None):
        """The integer grid the forward rounds to, for the ONNX export (:func:`dqss.deploy.tensor_grid`): a
        :class:`dqss.deploy.Grid` built with ``make_grid(scale, zero_point, qmin, qmax, axis)`` (both in
        :mod:`dqss.plugin`).  ``weight`` is the layer's weight for a weight quantizer, None for an activation."""
        cls = f"{type(self).__module__}.{type(self).__qualname__}"
        raise NotImplementedError(f"{cls} cannot be exported to ONNX: implement export_grid(weight=None) in {cls} "
                                  "to deploy it (return dqss.plugin.make_grid(scale, zero_point, qmin, qmax, axis), "
                                  "the grid its forward rounds to)")

    # -- shared -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ClosedForm.apply(x, self, *self.learned())

    def channel_view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``p`` (scalar or one value per channel) shaped to broadcast against ``x``."""
        if p.dim() == 0 or p.numel() == 1:
            return p.reshape(()).to(x.dtype)
        shape = [1] * x.dim()
        shape[self.spec.channel_axis] = -1
        return p.reshape(shape).to(x.dtype)

    def reduce_product(self, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``reduce_to(a * b, p)`` without the temporary product for a scalar parameter."""
        if p.dim() == 0 or p.numel() == 1:
            return torch.dot(a.reshape(-1), b.reshape(-1).to(a.dtype)).reshape(p.shape)
        return self.reduce_to(a * b, p)

    def reduce_to(self, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Sum an elementwise gradient ``g`` down to the shape of parameter ``p``."""
        if p.dim() == 0 or p.numel() == 1:
            return g.sum().reshape(p.shape)
        axis = self.spec.channel_axis
        dims = [d for d in range(g.dim()) if d != axis]
        return g.sum(dim=dims).reshape(p.shape)

    def extra_repr(self) -> str:
        g = "per-channel" if self.spec.per_channel else "per-tensor"
        sign = "signed" if self.spec.signed else "unsigned"
        return f"{self.strategy}, {self.spec.bits} bit, {sign} {g}"


class _ClosedForm(torch.autograd.Function):
    """One learned quantizer as a single autograd node using its closed-form gradients."""

    @staticmethod
    def forward(ctx, x, quantizer, *params):
        ctx.quantizer = quantizer
        ctx.save_for_backward(x, *params)
        return quantizer.quantize(x, *params)

    @staticmethod
    def backward(ctx, grad):
        x, *params = ctx.saved_tensors
        _, dydx, param_grads = ctx.quantizer.grads(x, grad, *params)
        return (apply_derivative(grad, dydx), None, *param_grads)


def apply_derivative(grad: torch.Tensor, dydx: torch.Tensor) -> torch.Tensor:
    """``grad * dydx``; a bool mask selects without a float copy of the mask."""
    if dydx.dtype == torch.bool:
        return torch.where(dydx, grad, 0.0)
    return grad * dydx


def grad_scale(numel: int, qmax: int) -> float:
    """LSQ's gradient scale g = 1 / sqrt(N * Q_P) (Esser et al. 2020, section 2.2)."""
    return 1.0 / (numel * max(qmax, 1)) ** 0.5
