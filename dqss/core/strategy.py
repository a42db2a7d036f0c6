"""Quantization strategies and their registry.

A *strategy* is one complete quantization algorithm for one tensor role (weight or
activation) at a given bit width: from the calibration statistics (activations) or the
tensor itself (weights) it builds a quantizer module.  Every file in ``baselines/``
registers strategies with :func:`register_strategy`; the uniform baselines of the
benchmark and the DQSS search space are both just lists of registered names.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .quant import FakeQuantizer, QuantSpec, range_to_qparams
from ..results import REFERENCE_METHODS, RESERVED_METHODS, is_dqss
from .stats import ActStats

STRATEGIES: dict[str, type[Strategy]] = {}


@dataclass
class LayerContext:
    """What a strategy may know about the layer it quantizes."""

    name: str
    module: nn.Module  # the (BN-folded) Conv2d or Linear
    samples: torch.Tensor | None = None  # a few real inputs, for strategies with ``needs_samples``

    def run(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, weight, m.bias)


def options_problem(options_cls, options: dict) -> str | None:
    """What is wrong with the type of a given option of ``options_cls`` (``"p must be a number, got 'x'"``), or None;
    unknown keys and the options' limits are left to the dataclass and the strategy's own checks."""
    from ..options import check_value, type_hints, unpack_optional

    try:
        hints = type_hints(options_cls)
    except Exception:  # an annotation that cannot be evaluated: the strategy's own checks decide
        return None
    names = {f.name for f in dataclasses.fields(options_cls)}
    for key, value in options.items():
        if key not in names or key not in hints:
            continue
        base, optional = unpack_optional(hints[key])
        if value is None and optional:
            continue
        problem = ((None if isinstance(value, str) else " must be a string") if base is str
                   else check_value(value, base, {}))
        if problem:
            return f"{key}{problem}, got {value!r}"
    return None


class Strategy:
    """Base class of PTQ range strategies (QAT strategies override ``build_*``)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "ptq"
    needs_samples: ClassVar[bool] = False

    @dataclass
    class Options:
        pass

    def __init__(self, **options):
        try:
            self.options = self.Options(**options)
        except TypeError as exc:  # an unknown key, or a value of the wrong type reaching the strategy's own checks
            problem = options_problem(self.Options, options)
            if problem:
                raise ValueError(f"strategy '{self.name}': option {problem}") from exc
            valid = [f.name for f in dataclasses.fields(self.Options)]
            raise ValueError(f"strategy '{self.name}': {exc}; valid options are {valid}") from exc

    # -- to implement -----------------------------------------------------------------
    def weight_range(self, w: torch.Tensor, spec: QuantSpec, ctx: LayerContext):
        """Clipping range ``(lo, hi)`` per row of ``w`` (shape ``[channels, elements]``)."""
        raise NotImplementedError

    def act_range(self, stats: ActStats, spec: QuantSpec, ctx: LayerContext):
        """Clipping range ``(lo, hi)`` of an activation, from its calibration statistics."""
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------------
    def build_weight_quantizer(self, spec: QuantSpec, ctx: LayerContext) -> nn.Module:
        w = ctx.module.weight.detach().float()
        rows = w.flatten(1) if spec.per_channel else w.reshape(1, -1)
        lo, hi = self.weight_range(rows, spec, ctx)
        lo, hi = torch.as_tensor(lo).float(), torch.as_tensor(hi).float()
        if not spec.per_channel:
            lo, hi = lo.reshape(()), hi.reshape(())
        return FakeQuantizer(spec, lo, hi, self.name)

    def build_act_quantizer(self, spec: QuantSpec, stats: ActStats, ctx: LayerContext) -> nn.Module:
        spec = spec.resolved(stats.nonnegative)
        lo, hi = self.act_range(stats, spec, ctx)
        return FakeQuantizer(spec, torch.tensor(float(lo)), torch.tensor(float(hi)), self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


def register_strategy(name: str, kind: str = "ptq") -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a strategy available by ``name`` to the workflow and to DQSS."""
    if kind not in ("ptq", "qat"):
        raise ValueError(f"kind must be 'ptq' or 'qat', got {kind!r}")

    def deco(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES and STRATEGIES[name] is not cls:
            raise ValueError(f"strategy name '{name}' is registered twice "
                             f"({STRATEGIES[name].__module__} and {cls.__module__}); rename one")
        if name in RESERVED_METHODS or is_dqss(name):
            raise ValueError(f"'{name}' is a reserved method name (the reference rows {list(REFERENCE_METHODS)} and "
                             "every name starting with 'dqss' are the suite's); choose another")
        cls.name = name
        cls.kind = kind
        STRATEGIES[name] = cls
        return cls

    return deco


def load_baselines() -> None:
    """Import the ``baselines`` package, whose modules register themselves."""
    importlib.import_module("baselines")


def strategy_names(kind: str | None = None) -> list[str]:
    load_baselines()
    return sorted(n for n, c in STRATEGIES.items() if kind is None or c.kind == kind)


def get_strategy(name: str, options: dict | None = None) -> Strategy:
    load_baselines()
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy '{name}'; registered strategies: {strategy_names()}. "
                       "Add a file to baselines/ (see baselines/TEMPLATE.py) to register a new one")
    return STRATEGIES[name](**(options or {}))


# -- helpers shared by several range strategies ------------------------------------------
def quant_error(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec,
                p: float = 2.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |x - Q(x)|^p per row of ``values`` for per-row ranges ``lo, hi`` (``[R]``).

    ``weights`` (same shape as ``values``) turns it into a weighted mean, for histograms.
    """
    scale, zero = range_to_qparams(lo, hi, spec)
    # the values of fake_quantize (same operations), without its straight-through gradient
    s = scale.to(values.dtype).reshape(-1, 1) if scale.dim() else scale.to(values.dtype)
    z = zero.to(values.dtype).reshape(-1, 1) if zero.dim() else zero.to(values.dtype)
    with torch.no_grad():  # in place on one tensor: the same values as the expressions in the comments
        err = torch.div(values, s)
        err.round_().add_(z).clamp_(spec.qmin, spec.qmax).sub_(z).mul_(s)  # q = (clamp(round(v / s) + z) - z) * s
        err.sub_(values)  # q - v: the same magnitude as v - q
        err = err.square_() if p == 2 else err.abs_().pow_(p)  # |v - q|^p
    if weights is None:
        return err.mean(1)
    in_place = weights.shape == err.shape and weights.dtype == err.dtype  # else err * weights broadcasts or promotes
    return (err.mul_(weights) if in_place else err * weights).sum(1) / weights.sum(1).clamp_min(1e-12)


def shrink_grid(n: int, low: float) -> torch.Tensor:
    """``n`` shrink factors from ``low`` to 1 applied to a min/max range."""
    return torch.linspace(low, 1.0, n)


def row_minmax(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return w.min(1).values, w.max(1).values
