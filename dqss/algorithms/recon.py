"""Reconstruction-based PTQ: learned rounding (AdaRound) and block reconstruction (BRECQ, QDrop).

One engine serves the three methods of ``baselines/adaround.py``, ``brecq.py`` and ``qdrop.py``:

* **Learned rounding** (Nagel et al., "Up or down? Adaptive rounding for post-training
  quantization", ICML 2020).  A weight on the grid of scale ``s`` and zero point ``z`` is
  ``W~ = s * (clamp(floor(W/s) + h(V) + z, qmin, qmax) - z)`` with the rectified sigmoid
  ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1``.
  ``V`` starts where ``h(V)`` equals the fractional part of ``W/s`` (so ``W~ = W`` inside the
  range) and is trained by Adam on the reconstruction loss plus the regulariser
  ``lambda * sum(1 - |2 h(V) - 1|^beta)``, off for the first ``warmup`` fraction of the
  iterations, then with ``beta`` annealed linearly from ``beta_start`` (20) to ``beta_end`` (2),
  which drives every ``h(V)`` to 0 or 1.  Afterwards the rounding is hard: up where ``V >= 0``
  (``h(V) >= 1/2``).  The scale ``s`` is the one a range strategy gives the weight
  (``weight_init``, MSE by default as in the reference code).
* **Units.**  AdaRound reconstructs each layer's output; BRECQ and QDrop reconstruct *blocks*
  (:data:`BLOCK_TYPES`: the residual blocks of ResNet/RegNet, the inverted residuals of
  MobileNetV2, the residual blocks of EDSR/MSRResNet); a layer outside every block is its own
  unit.  Units are reconstructed in execution order; a unit's input comes from the model whose
  earlier units are already quantized and its target from the FP model (the reference codes'
  ``asym=True``).
* **Losses.**  ``mse``: ``sum over channels of |y~ - y|^p``, averaged over batch and positions (the
  reference ``lp_loss``).  ``fisher`` (BRECQ, Li et al., ICLR 2021): the squared error weighted
  per element by ``(|g| + 1)^2``, ``g`` the gradient of the task loss (KL of the quantized model's
  logits to the FP logits; for SR the MSE to the FP output) with respect to the unit's output,
  computed once per unit with the unit at nearest rounding, as in the reference code.
* **Activations.**  AdaRound's activations take the ranges of a range strategy (``act_strategy``)
  and are not quantized while the weights are reconstructed.  BRECQ then learns every activation
  step (LSQ-style, straight-through rounding) in a second pass with the rounding frozen, Adam with a
  cosine schedule.  QDrop (Wei et al., ICLR 2022) learns the rounding and the steps together with
  activation quantization on, and during its reconstruction each activation element keeps its
  quantization with probability ``1 - drop_prob`` and passes in FP otherwise (the unit's input as
  well: quantized-model input or FP-model input, element by element).

Once reconstructed a quantizer is frozen (:class:`FrozenWeightQuantizer`, a
:class:`~dqss.core.quant.FakeQuantizer` for activations); :func:`save_reconstruction` keeps the
integer weights and scales, from which :class:`ReconstructedStrategy` rebuilds the same quantizers,
so a reconstructed method is also a DQSS candidate.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..options import check_options, option
from ..core.layers import LayerPlan, QuantLayer, execution_order, swap_layers
from ..core.quant import FakeQuantizer, QuantSpec, broadcast_along
from ..core.stats import ActStats
from ..core.strategy import LayerContext, Strategy

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1
BLOCK_TYPES = ("BasicBlock", "Bottleneck", "InvertedResidual", "DepthwiseSeparableConv", "ResidualBlockNoBN",
               "RCAB")
RECONSTRUCTIONS: dict[str, type[Reconstruction]] = {}
RECON_FORMAT = "dqss-reconstruction-1"


# -- quantizers ---------------------------------------------------------------------------------------
def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """``sum(1 - |2h - 1|^beta)``: 0 when every ``h`` is 0 or 1."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


class AdaRoundQuantizer(nn.Module):
    """Learned up/down rounding of one weight on a fixed grid (the scale of ``base``)."""

    def __init__(self, base: FakeQuantizer, weight: torch.Tensor):
        super().__init__()
        self.spec = base.spec
        self.strategy = base.strategy
        w = weight.detach().float()
        ax = self.spec.channel_axis
        s = broadcast_along(base.scale, w, ax)
        self.register_buffer("scale", base.scale.clone())
        self.register_buffer("zero_point", base.zero_point.clone())
        self.register_buffer("w_floor", torch.floor(w / s))
        rest = (w / s - self.w_floor).clamp(1e-6, 1 - 1e-6)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0))
        self.soft = True

    def h(self) -> torch.Tensor:
        return rectified_sigmoid(self.v)

    def step_size(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale

    def integers(self) -> torch.Tensor:
        """The grid codes of the hard rounding (up where ``V >= 0``)."""
        z = broadcast_along(self.zero_point, self.w_floor, self.spec.channel_axis)
        return torch.clamp(self.w_floor + (self.v.detach() >= 0).float() + z, self.spec.qmin, self.spec.qmax)

    def forward(self, _w: torch.Tensor | None = None) -> torch.Tensor:
        ax = self.spec.channel_axis
        s = broadcast_along(self.scale, self.w_floor, ax)
        z = broadcast_along(self.zero_point, self.w_floor, ax)
        r = self.h() if self.soft else (self.v >= 0).float()
        return (torch.clamp(self.w_floor + r + z, self.spec.qmin, self.spec.qmax) - z) * s

    def freeze(self) -> FrozenWeightQuantizer:
        return FrozenWeightQuantizer(self.spec, self.scale, self.zero_point, self.integers(), self.strategy)


class FrozenWeightQuantizer(nn.Module):
    """A weight quantizer whose grid codes are fixed (a reconstructed rounding): its output is
    ``s * (q - z)`` whatever weight it is given."""

    def __init__(self, spec: QuantSpec, scale: torch.Tensor, zero: torch.Tensor, codes: torch.Tensor,
                 strategy: str = ""):
        super().__init__()
        if codes.min() < spec.qmin or codes.max() > spec.qmax:
            raise ValueError(f"weight codes outside the {spec.bits}-bit grid [{spec.qmin}, {spec.qmax}]")
        self.spec = spec
        self.strategy = strategy
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("zero_point", zero.detach().float().clone())
        self.register_buffer("codes", codes.detach().to(torch.int16).clone())

    def step_size(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale

    def forward(self, w: torch.Tensor | None = None) -> torch.Tensor:
        ax = self.spec.channel_axis
        q = self.codes.float()
        out = (q - broadcast_along(self.zero_point, q, ax)) * broadcast_along(self.scale, q, ax)
        return out if w is None else out.to(w.dtype)

    def extra_repr(self) -> str:
        return f"{self.strategy}, {self.spec.bits} bit, frozen codes"


class StepQuantizer(nn.Module):
    """An activation quantizer whose step is learned (LSQ-style: straight-through rounding, the
    step's gradient from autograd), with QDrop's random drop and an on/off switch."""

    def __init__(self, base: FakeQuantizer, learn: bool):
        super().__init__()
        self.spec = base.spec
        self.strategy = base.strategy
        if learn:
            self.scale = nn.Parameter(base.scale.clone())
        else:
            self.register_buffer("scale", base.scale.clone())
        self.register_buffer("zero_point", base.zero_point.clone())
        self.enabled = True
        self.drop_prob = 0.0

    def step_size(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale.detach().clamp_min(1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        s = self.scale.clamp_min(1e-8)
        v = x / s
        q = torch.clamp(v + (torch.round(v) - v).detach() + self.zero_point, self.spec.qmin, self.spec.qmax)
        xq = (q - self.zero_point) * s
        if self.drop_prob > 0:
            xq = torch.where(torch.rand_like(x) < self.drop_prob, x, xq)
        return xq

    def freeze(self) -> FakeQuantizer:
        out = FakeQuantizer(self.spec, torch.tensor(0.0), torch.tensor(1.0), self.strategy)
        out.scale = self.scale.detach().clone().clamp_min(1e-8)
        out.zero_point = self.zero_point.clone()
        return out


# -- configuration ------------------------------------------------------------------------------------
@dataclass
class ReconConfig:
    """One reconstruction method's schedule (a track's ``reconstruction:`` section, per method)."""

    iterations: int = option(20000, ge=1)  # Adam steps per unit (and per pass)
    batch_size: int = option(32, ge=1)  # calibration items per step
    lr: float = option(1e-3, gt=0)  # Adam on the rounding variables V
    act_lr: float = option(4e-5, gt=0)  # Adam on the activation steps (BRECQ, QDrop), cosine-annealed
    reg_weight: float = option(0.01, ge=0)  # lambda of the rounding regulariser
    beta_start: float = option(20.0, gt=0)  # the regulariser's beta at the end of the warm-up ...
    beta_end: float = option(2.0, gt=0)  # ... annealed linearly to this
    warmup: float = option(0.2, ge=0, lt=1)  # fraction of the iterations without the regulariser
    p: float = option(2.0, gt=0)  # the reconstruction loss's norm
    drop_prob: float = option(0.5, ge=0, lt=1)  # QDrop: probability that an activation element is not quantized
    weight_init: str = "mse"  # range strategy giving each weight's grid (scale) before learned rounding
    act_strategy: str = "mse"  # range strategy giving the activation ranges (AdaRound) / the initial steps

    def __post_init__(self):
        check_options(self)

    def beta(self, step: int) -> float | None:
        """The regulariser's beta at ``step`` (None: warm-up, no regulariser)."""
        start = self.warmup * self.iterations
        if step < start:
            return None
        rel = (step - start) / max(self.iterations - start, 1)
        return self.beta_end + (self.beta_start - self.beta_end) * max(0.0, 1.0 - rel)


@dataclass
class ReconSection(ReconConfig):
    """A PTQ track's ``reconstruction:`` section: the reconstruction baselines it runs and their schedule."""

    methods: list[str] = option(factory=list)  # registered reconstruction methods (baselines/); [] = none
    as_candidates: bool = True  # also run dqss_recon: DQSS over the range strategies plus these, frozen

    def check(self, key: str, strategies: list[str]) -> None:
        """Every method registered and not named like a range strategy; the two range strategies it uses
        registered PTQ strategies."""
        from ..core.strategy import strategy_names

        known = reconstruction_names()
        for m in self.methods:
            if m not in known:
                raise ValueError(f"{key}.methods: unknown reconstruction method '{m}'; registered: {known}")
            if m in strategies:
                raise ValueError(f"{key}.methods: '{m}' is also a range strategy of this track; rename one")
        ptq = strategy_names("ptq")
        for name in ("weight_init", "act_strategy"):
            if getattr(self, name) not in ptq:
                raise ValueError(f"{key}.{name}: '{getattr(self, name)}' is not a registered PTQ range strategy; "
                                 f"choose one of {ptq}")


@dataclass
class Pass:
    """One sweep over the units: what is learned, with which loss, with activations quantized or not."""

    learn_weights: bool
    learn_acts: bool
    loss: str  # mse | fisher
    act_quant: bool
    drop: bool = False


class Reconstruction:
    """A reconstruction method: its unit granularity and its passes (subclasses in ``baselines/``)."""

    name: ClassVar[str] = ""
    granularity: ClassVar[str] = "layer"  # layer | block
    passes: ClassVar[tuple[Pass, ...]] = ()
    learns_acts: ClassVar[bool] = False


def register_reconstruction(name: str):
    def deco(cls):
        if name in RECONSTRUCTIONS and RECONSTRUCTIONS[name] is not cls:
            raise ValueError(f"reconstruction '{name}' is registered twice")
        cls.name = name
        RECONSTRUCTIONS[name] = cls
        return cls
    return deco


def reconstruction_names() -> list[str]:
    from ..core.strategy import load_baselines

    load_baselines()
    return sorted(RECONSTRUCTIONS)


def get_reconstruction(name: str) -> type[Reconstruction]:
    names = reconstruction_names()
    if name not in RECONSTRUCTIONS:
        raise KeyError(f"unknown reconstruction method '{name}'; registered: {names}")
    return RECONSTRUCTIONS[name]


# -- units ---------------------------------------------------------------------------------------------
def find_units(model: nn.Module, layer_names: list[str], granularity: str) -> list[tuple[str, list[str]]]:
    """``[(unit name, its planned layers)]`` in execution order: the outermost :data:`BLOCK_TYPES` module
    holding a layer, or the layer itself (``granularity='layer'``, or a layer outside every block)."""
    if granularity not in ("layer", "block"):
        raise ValueError(f"granularity must be 'layer' or 'block', got {granularity!r}")
    blocks = []
    if granularity == "block":
        for name, m in model.named_modules():
            if type(m).__name__ in BLOCK_TYPES and not any(name.startswith(b + ".") for b in blocks):
                blocks.append(name)
    units: list[tuple[str, list[str]]] = []
    for layer in layer_names:
        owner = next((b for b in blocks if layer.startswith(b + ".")), layer)
        if units and units[-1][0] == owner:
            units[-1][1].append(layer)
        elif any(u == owner for u, _ in units):
            raise ValueError(f"block '{owner}' is entered twice in execution order; reconstruct layer by layer")
        else:
            units.append((owner, [layer]))
    return units


# -- the engine -------------------------------------------------------------------------------------------
def lp_loss(pred: torch.Tensor, target: torch.Tensor, p: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the channel dimension of ``|pred - target|^p`` (times ``weight``), mean over the rest."""
    err = (pred - target).abs().pow(p)
    if weight is not None:
        err = err * weight
    return err.sum(1).mean() if err.dim() > 1 else err.mean()


class _Capture:
    """Forward hooks that keep a module's input and output (and, on request, make the output a leaf
    whose gradient is kept)."""

    def __init__(self, module: nn.Module, grad: bool = False):
        self.input = self.output = None
        self.grad = grad
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    # copies: what follows a module may work in place on its output (timm's ReLU(inplace=True) after a conv)
    def _pre(self, _m, args):
        self.input = args[0].detach().clone()

    def _post(self, _m, _a, out):
        if self.grad:
            leaf = out.detach().requires_grad_(True)
            self.output = leaf
            return leaf.clone()  # what follows may work in place (timm's ReLU(inplace=True)); the leaf keeps its grad
        self.output = out.detach().clone()

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def unit_io(model: nn.Module, unit: str, inputs: torch.Tensor, batch_size: int, device
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The unit's inputs and outputs over ``inputs``, from one pass of ``model``."""
    cap = _Capture(model.get_submodule(unit))
    ins, outs = [], []
    try:
        for b in torch.split(inputs, batch_size):
            model(b.to(device))
            ins.append(cap.input.cpu())
            outs.append(cap.output.cpu())
    finally:
        cap.remove()
    return torch.cat(ins), torch.cat(outs)


def fisher_weights(qmodel, unit, inputs, teacher, batch_size, device, task_loss) -> torch.Tensor:
    """``(|dL/dy| + 1)^2`` at the unit's output ``y``, the unit at nearest rounding (BRECQ)."""
    cap = _Capture(qmodel.get_submodule(unit), grad=True)
    grads = []
    try:
        for b, t in zip(torch.split(inputs, batch_size), torch.split(teacher, batch_size)):
            out = qmodel(b.to(device))
            task_loss(out, t.to(device)).backward()
            grads.append(cap.output.grad.detach().cpu())
    finally:
        cap.remove()
    return (torch.cat(grads).abs() + 1.0).pow(2)


def kl_task_loss(out: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(FP || quantized) of the class probabilities, batch mean (BRECQ's Fisher for classification)."""
    return F.kl_div(F.log_softmax(out, 1), F.softmax(teacher, 1), reduction="batchmean")


def mse_task_loss(out: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error to the FP output (the Fisher's task loss for super-resolution)."""
    return F.mse_loss(out, teacher)


@dataclass
class Result:
    model: nn.Module  # the quantized model, every quantizer frozen
    seconds: float
    units: list[tuple[str, list[str]]]
    history: list[dict]


def build(model: nn.Module, plans: dict[str, LayerPlan], stats: dict[str, ActStats], cfg: ReconConfig,
          strategy: Callable[[str], Strategy], learn_acts: bool) -> nn.Module:
    """A copy of ``model`` whose planned layers carry an :class:`AdaRoundQuantizer` (grid of ``weight_init``)
    and a :class:`StepQuantizer` (range of ``act_strategy``)."""
    from .ptq import layer_context

    qmodel = copy.deepcopy(model).eval().requires_grad_(False)
    w_strat, a_strat = strategy(cfg.weight_init), strategy(cfg.act_strategy)
    new = {}
    for name, plan in plans.items():
        ctx = layer_context(qmodel, plan, stats)
        wq = AdaRoundQuantizer(w_strat.build_weight_quantizer(plan.w_spec, ctx), ctx.module.weight)
        aq = StepQuantizer(a_strat.build_act_quantizer(plan.a_spec, stats[name], ctx), learn_acts)
        new[name] = QuantLayer(ctx.module, wq, aq, plan.int32_bias)
    return swap_layers(qmodel, new).requires_grad_(False)


def _layers(qmodel: nn.Module, names: list[str]) -> list[QuantLayer]:
    return [qmodel.get_submodule(n) for n in names]


def set_act_quant(qmodel: nn.Module, on: bool) -> None:
    for m in qmodel.modules():
        if isinstance(m, StepQuantizer):
            m.enabled = on


def reconstruct(method: type[Reconstruction], model: nn.Module, plans: dict[str, LayerPlan],
                stats: dict[str, ActStats], inputs: torch.Tensor, cfg: ReconConfig, *,
                strategy: Callable[[str], Strategy], task_loss: Callable, seed: int, device,
                batch_size: int = 64, example: torch.Tensor | None = None) -> Result:
    """Reconstruct ``model`` (BN folded) on the calibration ``inputs`` by ``method``; every quantizer of the
    returned model is frozen.  ``batch_size`` is the batch of the caching passes (not of the optimisation)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    fp = model.to(device).eval()
    qmodel = build(fp, plans, stats, cfg, strategy, method.learns_acts).to(device)
    order = list(plans)
    if example is not None:
        order = [n for n in execution_order(fp, example.to(device)) if n in plans]
    units = find_units(qmodel, order, method.granularity)
    with torch.no_grad():
        teacher = torch.cat([fp(b.to(device)).cpu() for b in torch.split(inputs, batch_size)])
    history = []
    for k, ps in enumerate(method.passes):
        set_act_quant(qmodel, ps.act_quant)
        for unit, names in tqdm(units, desc=f"{method.name} pass {k + 1}", leave=False):
            layers = _layers(qmodel, names)
            for m in layers:  # the unit starts from nearest rounding for its caches and Fisher
                if isinstance(m.weight_quant, AdaRoundQuantizer):
                    m.weight_quant.soft = False
            q_in, _ = unit_io(qmodel, unit, inputs, batch_size, device)
            fp_in, target = unit_io(fp, unit, inputs, batch_size, device)  # one FP pass: QDrop's inputs, the target
            fp_in = fp_in if ps.drop else None
            fisher = (fisher_weights(qmodel, unit, inputs, teacher, batch_size, device, task_loss)
                      if ps.loss == "fisher" else None)
            loss = optimise_unit(qmodel.get_submodule(unit), layers, q_in, fp_in, target, fisher, ps, cfg, gen, device)
            history.append({"pass": k + 1, "unit": unit, "layers": len(names), "loss": loss})
    for name in plans:
        m = qmodel.get_submodule(name)
        if isinstance(m.weight_quant, AdaRoundQuantizer):
            m.weight_quant = m.weight_quant.freeze()
        m.act_quant = m.act_quant.freeze()
    qmodel.requires_grad_(False)
    return Result(qmodel, time.perf_counter() - t0, units, history)


def optimise_unit(unit_module, layers, q_in, fp_in, target, fisher, ps: Pass, cfg: ReconConfig, gen, device) -> float:
    """One pass ``ps`` of reconstruction over one unit: its rounding (AdaRound) and activation steps learned
    (Adam, ``cfg.iterations`` steps) so that its output on the cached inputs matches ``target``; the last loss."""
    wqs = [m.weight_quant for m in layers if isinstance(m.weight_quant, AdaRoundQuantizer)]
    aqs = [m.act_quant for m in layers if isinstance(m.act_quant, StepQuantizer)]
    groups = []
    if ps.learn_weights and wqs:
        for q in wqs:
            q.soft = True
            q.v.requires_grad_(True)
        groups.append({"params": [q.v for q in wqs], "lr": cfg.lr})
    if ps.learn_acts and aqs:
        for q in aqs:
            q.scale.requires_grad_(True)
        groups.append({"params": [q.scale for q in aqs], "lr": cfg.act_lr})
    if not groups:
        return float("nan")
    opt = torch.optim.Adam(groups)
    sched = None
    if ps.learn_acts:
        lam = [lambda s: 1.0] * (len(groups) - 1) + [lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.iterations))]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    for q in aqs:
        q.drop_prob = cfg.drop_prob if ps.drop else 0.0
    n = len(q_in)
    last = float("nan")
    try:
        for step in range(cfg.iterations):
            idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
            x = q_in[idx].to(device)
            if fp_in is not None:  # QDrop: the unit's input element-wise from the quantized or the FP model
                keep = torch.rand(x.shape, generator=gen) >= cfg.drop_prob
                x = torch.where(keep.to(device), x, fp_in[idx].to(device))
            out = unit_module(x)
            rec = lp_loss(out, target[idx].to(device), cfg.p, None if fisher is None else fisher[idx].to(device))
            beta = cfg.beta(step) if ps.learn_weights else None
            reg = sum(rounding_regularizer(q.h(), beta) for q in wqs) * cfg.reg_weight if beta is not None else 0.0
            loss = rec + reg
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite reconstruction loss at step {step}; lower reconstruction.lr "
                                         "or act_lr, or check the calibration inputs")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            last = rec.item()
    finally:
        for q in wqs:
            q.soft = False
            q.v.requires_grad_(False)
        for q in aqs:
            q.drop_prob = 0.0
            q.scale.requires_grad_(False)
    return last


# -- saving and reuse as DQSS candidates ------------------------------------------------------------------
def reconstruction_state(qmodel: nn.Module, plans: dict[str, LayerPlan], meta: dict) -> dict:
    """The frozen quantizers of a reconstructed model: integer weights, scales and zero points per layer."""
    layers = {}
    for name in plans:
        m = qmodel.get_submodule(name)
        wq, aq = m.weight_quant, m.act_quant
        entry = {"act_scale": aq.scale.cpu(), "act_zero": aq.zero_point.cpu(), "act_signed": aq.spec.signed,
                 "w_bits": wq.spec.bits, "a_bits": aq.spec.bits}
        if isinstance(wq, FrozenWeightQuantizer):
            entry.update(w_codes=wq.codes.cpu(), w_scale=wq.scale.cpu(), w_zero=wq.zero_point.cpu())
        layers[name] = entry
    return {"format": RECON_FORMAT, **meta, "layers": layers}


def save_reconstruction(state: dict, path) -> None:
    from ..results import atomic_write

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_reconstruction(path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"cannot read reconstruction {path}: {exc}. Delete it and rerun the workflow to "
                           "reconstruct again") from exc
    if not isinstance(state, dict) or state.get("format") != RECON_FORMAT:
        raise RuntimeError(f"{path} is not a {RECON_FORMAT} file; delete it and rerun the workflow")
    return state


class ReconstructedStrategy(Strategy):
    """A reconstructed method as a frozen strategy: the quantizers a reconstruction job saved, per layer
    (a DQSS candidate among the range strategies)."""

    def __init__(self, method: str, state: dict):
        super().__init__()
        self.method = method
        self.state = state
        self.name = method

    def _entry(self, ctx: LayerContext, spec: QuantSpec) -> dict:
        e = self.state["layers"].get(ctx.name)
        if e is None:
            raise KeyError(f"the {self.method} reconstruction has no layer '{ctx.name}'; it was made for another "
                           "model or quantization policy: rerun it")
        return e

    def build_weight_quantizer(self, spec: QuantSpec, ctx: LayerContext) -> nn.Module:
        e = self._entry(ctx, spec)
        if e["w_bits"] != spec.bits or "w_codes" not in e:
            raise ValueError(f"the {self.method} reconstruction of '{ctx.name}' is for {e['w_bits']}-bit weights, "
                             f"the plan asks {spec.bits}")
        return FrozenWeightQuantizer(spec, e["w_scale"], e["w_zero"], e["w_codes"], self.method)

    def build_act_quantizer(self, spec: QuantSpec, stats: ActStats, ctx: LayerContext) -> nn.Module:
        e = self._entry(ctx, spec)
        spec = spec.resolved(stats.nonnegative)
        if e["a_bits"] != spec.bits or e["act_signed"] != spec.signed:
            raise ValueError(f"the {self.method} reconstruction of '{ctx.name}' does not match the plan's "
                             f"{spec.bits}-bit activation grid")
        out = FakeQuantizer(spec, torch.tensor(0.0), torch.tensor(1.0), self.method)
        out.scale = e["act_scale"].clone().float()
        out.zero_point = e["act_zero"].clone().float()
        return out
