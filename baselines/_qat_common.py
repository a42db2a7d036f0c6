"""Helpers shared by the QAT baselines (``lsq``, ``lsq_plus``, ``pact``, ``dorefa``).

Private module (leading underscore): imported by those files, never registered itself.
"""
from __future__ import annotations

import torch

from dqss.plugin import Grid, QuantSpec, make_grid

# A learned step or clip is clamped to at least EPS in the forward pass (and in the
# gradient formulas), so a step driven to zero or below by SGD cannot divide by zero or
# flip the grid.  The gradient still reaches the raw parameter (straight through the
# clamp), so it can move back up.
EPS = 1e-8


def symmetric_grid(spec: QuantSpec, signed: bool) -> QuantSpec:
    """``spec``'s bit width and granularity on the symmetric grid: signed
    [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1].  A quantizer without an offset
    (LSQ, PACT, DoReFa) cannot use an asymmetric grid, whatever the policy asks."""
    return QuantSpec(spec.bits, True, signed, spec.per_channel, spec.channel_axis)


def act_grid(spec: QuantSpec, nonnegative: bool) -> QuantSpec:
    """The activation grid: ``spec`` resolved with the calibration sign (unsigned after a
    ReLU), made symmetric (an asymmetric policy still gets the unsigned grid for a
    non-negative tensor)."""
    resolved = spec.resolved(nonnegative)
    return symmetric_grid(resolved, resolved.signed if resolved.symmetric else not nonnegative)


def weight_rows(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``w`` as ``[channels, elements]`` along ``spec.channel_axis`` (one row if per-tensor)."""
    w = w.detach().float()
    if not spec.per_channel:
        return w.reshape(1, -1)
    return w.movedim(spec.channel_axis, 0).flatten(1)


def per_step(values: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """A per-row init (``[channels]``) as a parameter tensor: ``[C]`` per-channel, ``()`` per-tensor."""
    values = values.float()
    return values if spec.per_channel else values.reshape(())


def elements_per_step(x: torch.Tensor, role: str, spec: QuantSpec) -> int:
    """N of LSQ's gradient scale g = 1/sqrt(N Q_P): the elements that share one step.

    Weights: the elements of one output channel (per-channel) or of the whole tensor;
    activations: the features of one sample, ``x.numel() // x.shape[0]``.
    """
    if role == "act":
        return x.numel() // x.shape[0] if x.dim() > 1 else x.numel()
    if spec.per_channel:
        return x.numel() // x.shape[spec.channel_axis]
    return x.numel()


def clip_export_grid(step: torch.Tensor, spec: QuantSpec) -> Grid:
    """The grid of a clipped activation (PACT, DoReFa): levels ``0..Q_P`` (signed: ``-Q_P..Q_P``) on ``step``,
    zero point 0, per tensor."""
    qmax = spec.qmax
    return make_grid(step, torch.zeros(()), -qmax if spec.signed else 0, qmax, 0)
