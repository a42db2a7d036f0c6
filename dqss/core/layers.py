"""Quantized layers by module swapping: BN folding, layer selection, the per-layer plan.

Every selected ``Conv2d``/``Linear`` of a model is replaced in place by a
:class:`QuantLayer` that fake-quantizes the layer's input activation and its weight.
No FX tracing and no ``torch.ao.quantization``: this works for any timm model.
"""
from __future__ import annotations

import copy
import fnmatch
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..options import BIT_MAX, BIT_MIN, check_options, option
from .quant import QuantSpec, int32_bias

log = logging.getLogger(__name__)

LAYER_TYPES = {"conv2d": nn.Conv2d, "linear": nn.Linear}


class QuantLayer(nn.Module):
    """A Conv2d or Linear whose input and weight pass through quantizers.

    With ``int32_bias`` (the default; ``quant.int32_bias``) and both inputs quantized, the bias is rounded to
    int32 codes on the step ``s_x * s_w[c]``, as an integer runtime adds it (:func:`~dqss.core.quant.int32_bias`):
    the simulated layer is the deployed one.  Every quantizer then needs a ``step_size(weight=None)`` method.
    """

    def __init__(self, layer: nn.Module, weight_quant: nn.Module | None = None,
                 act_quant: nn.Module | None = None, int32_bias: bool = True):
        super().__init__()
        self.layer = layer
        self.weight_quant = weight_quant if weight_quant is not None else nn.Identity()
        self.act_quant = act_quant if act_quant is not None else nn.Identity()
        self.int32_bias = int32_bias

    def compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The layer on ``x`` with ``weight`` and ``bias`` (None: the layer's own float bias)."""
        m = self.layer
        b = m.bias if bias is None else bias
        if isinstance(m, nn.Conv2d):
            return m._conv_forward(x, weight, b)
        return F.linear(x, weight, b)

    def rounds_bias(self) -> bool:
        """Whether the bias is on the int32 grid: ``int32_bias``, a bias, and both inputs quantized (with a float
        input or weight the runtime adds a float bias)."""
        return (self.int32_bias and self.layer.bias is not None and not isinstance(self.act_quant, nn.Identity)
                and not isinstance(self.weight_quant, nn.Identity) and getattr(self.act_quant, "enabled", True))

    def deployed_bias(self) -> torch.Tensor | None:
        """The bias the forward adds: on the int32 grid where :meth:`rounds_bias`, else the float one."""
        b = self.layer.bias
        if not self.rounds_bias():
            return b
        return int32_bias(b, step_size(self.act_quant), step_size(self.weight_quant, self.layer.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compute(self.act_quant(x), self.weight_quant(self.layer.weight), self.deployed_bias())


def step_size(quantizer: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The step of ``quantizer``'s grid (a scalar, or one per channel): its ``step_size(weight)``, or the scale
    of a user quantizer's ``export_grid`` (:func:`dqss.deploy.tensor_grid`)."""
    if hasattr(quantizer, "step_size"):
        return quantizer.step_size(weight)
    if hasattr(quantizer, "export_grid"):
        try:
            return quantizer.export_grid(weight).scale
        except NotImplementedError:  # LearnedQuantizer's declaration, not implemented: the error below names the fix
            pass
    raise TypeError(f"{type(quantizer).__module__}.{type(quantizer).__qualname__} has no step_size(weight=None) "
                    "method, which the int32 bias of its layer needs: add one returning its grid's step (a scalar, "
                    "or one per channel), or set quant.int32_bias: false to keep float biases")


@dataclass
class QuantPolicy:
    """Which layers are quantized and on which grids (the ``quant:`` config section)."""

    # the kinds of layer quantized
    layer_types: list[str] = option(factory=lambda: ["conv2d", "linear"], choices=LAYER_TYPES, min_items=1)
    # weight and activation bits of the first and last quantized layer; null = the run's W/A like the others
    first_last_bits: int | None = option(8, ge=BIT_MIN, le=BIT_MAX)
    keep_fp: list[str] = field(default_factory=list)  # fnmatch patterns of layer names left in full precision
    weight_per_channel: bool = True  # one weight scale per output channel (false: one per tensor)
    weight_symmetric: bool = True  # weight grid symmetric around 0 (false: with a zero point)
    act_symmetric: bool = True  # activation grid symmetric around 0 (false: with a zero point)
    # each bias rounded to int32 on the step s_act * s_weight[c], as int8 runtimes add it (false: float biases)
    int32_bias: bool = True

    def __post_init__(self):
        check_options(self)

    def weight_spec(self, bits: int) -> QuantSpec:
        return QuantSpec(bits, symmetric=self.weight_symmetric, signed=True, per_channel=self.weight_per_channel)

    def act_spec(self, bits: int) -> QuantSpec:
        return QuantSpec(bits, symmetric=self.act_symmetric, signed=None, per_channel=False)

    def skip_reason(self, name: str) -> str:
        """Why a Conv2d/Linear of a type the policy quantizes is not planned (for the API's report)."""
        for pat in self.keep_fp:
            if fnmatch.fnmatch(name, pat):
                return f"keep_fp pattern '{pat}'"
        return "left out by the policy"

    def layer_plans(self, model: nn.Module, w_bits: int, a_bits: int, example: torch.Tensor) -> dict:
        """The planned layers of ``model`` at W{w_bits}A{a_bits} under this policy (a track's policy may
        override it: SR keeps its head, upsampler and tail at higher precision)."""
        return plan_layers(model, self, w_bits, a_bits, example)


@dataclass
class LayerPlan:
    name: str
    w_spec: QuantSpec
    a_spec: QuantSpec
    int32_bias: bool = True  # the layer's bias on the int32 grid (QuantPolicy.int32_bias)


def execution_order(model: nn.Module, example: torch.Tensor, types=(nn.Conv2d, nn.Linear)) -> list[str]:
    """Names of the modules of ``types`` in the order a forward pass calls them."""
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: order.append(n))
               for n, m in model.named_modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    seen = set()
    return [n for n in order if not (n in seen or seen.add(n))]


def plan_layers(model: nn.Module, policy: QuantPolicy, w_bits: int, a_bits: int,
                example: torch.Tensor) -> dict[str, LayerPlan]:
    """The quantized layers in execution order with their weight and activation grids."""
    types = tuple(LAYER_TYPES[t] for t in policy.layer_types)
    names = [n for n in execution_order(model, example, types)
             if not any(fnmatch.fnmatch(n, pat) for pat in policy.keep_fp)]
    if not names:
        raise ValueError("no layer to quantize: check quant.layer_types and quant.keep_fp")
    plans = {}
    for i, n in enumerate(names):
        edge = i in (0, len(names) - 1) and policy.first_last_bits is not None
        wb, ab = (policy.first_last_bits, policy.first_last_bits) if edge else (w_bits, a_bits)
        plans[n] = LayerPlan(n, policy.weight_spec(wb), policy.act_spec(ab), policy.int32_bias)
    return plans


def swap_layers(model: nn.Module, new: dict[str, nn.Module]) -> nn.Module:
    for name, module in new.items():
        model.set_submodule(name, module)
    return model


# -- batch-norm folding -----------------------------------------------------------------
# a BN channel whose running variance is at most this fraction of its eps is constant (see fold_batchnorm)
CONSTANT_CHANNEL_VAR = 1e-6


class _ActAfterBN(nn.Sequential):
    """What remains of timm's BatchNormAct2d once its BN is folded: drop and activation."""


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor, pairs: list | None = None) -> nn.Module:
    """Return a copy of ``model`` with every BN that directly follows a conv folded into it
    (``pairs``: a list that receives the folded ``(conv, bn)`` names).

    Pairs are found by running ``example`` and matching each BN's input tensor with a
    conv's output tensor, so any module structure works (timm's ``BatchNormAct2d``
    keeps its activation).  A channel whose running variance is ~0 (at most
    ``CONSTANT_CHANNEL_VAR * eps``) outputs a constant; it is folded with factor 1 instead of
    ``gamma / sqrt(var + eps)``, which gives the same output without inflating its weights.
    """
    model = copy.deepcopy(model).eval()
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    found: list[tuple[str, str]] = []
    consumers: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(
                lambda _m, _a, out, n=name: outputs.__setitem__(id(out), (n, out))))
        elif isinstance(m, nn.BatchNorm2d):
            def pre(_m, args, n=name):
                hit = outputs.get(id(args[0]))
                if hit is not None and hit[1] is args[0]:
                    found.append((hit[0], n))
                    consumers[hit[0]] = consumers.get(hit[0], 0) + 1
            handles.append(m.register_forward_pre_hook(pre))
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
        outputs.clear()
    folded, n_constant = [], 0
    for conv_name, bn_name in dict.fromkeys(found):
        if consumers[conv_name] != 1:
            continue  # a conv feeding several BNs cannot be folded
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        # A channel whose conv output never varied (variance ~0, e.g. after a dead input channel) outputs the
        # constant beta; its factor gamma / sqrt(eps) (~300 gamma) only inflates its weights, whose scale then
        # rounds the int32 bias by whole units.  Folded with factor 1 it outputs beta + (y - mean) = beta all the
        # same, on ordinary weights.
        constant = bn.running_var <= CONSTANT_CHANNEL_VAR * bn.eps
        factor = torch.where(constant, torch.ones_like(factor), factor)
        n_constant += int(constant.sum())
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.copy_(conv.weight * factor.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(beta + (bias - bn.running_mean) * factor)
        rest = [getattr(bn, k) for k in ("drop", "act") if isinstance(getattr(bn, k, None), nn.Module)]
        model.set_submodule(bn_name, _ActAfterBN(*rest) if rest else nn.Identity())
        folded.append((conv_name, bn_name))
    if pairs is not None:
        pairs.extend(folded)
    log.info("folded %d batch-norm layers (%d constant channels with factor 1)", len(folded), n_constant)
    return model
