"""Quantization-aware training: one recipe for every method, and DQSS-QAT.

Every method (a uniform QAT strategy or the DQSS mixture) is trained by :func:`train_qat`
from the same FP checkpoint with the same recipe (the ``qat:`` config section).  For
DQSS one forward and one backward per mini-batch update three groups with their own
optimisers (METHOD.md, "QAT with DQSS"):

* the network weights (SGD, ``qat.lr``, cosine decay),
* the quantizers' learnable parameters, every candidate's own (SGD, ``qat.quant_lr``),
* the strategy logits (Adam, ``dqss.arch_lr``, smaller: the assignment moves slowly).

No bi-level train/validation alternation.  Against under-fitting (the network is
trained under the mixture but deployed under the argmax) the default is to search for
the first ``dqss.search_fraction`` of the schedule, then freeze the argmax strategies
and keep training the weights and the chosen quantizers (method ``dqss``); without the
fix the mixture is trained for the whole schedule and discretised at the end
(``dqss_nofix``).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..options import check_annealing, check_options, option
from ..core.layers import QuantLayer, swap_layers
from ..core.nonfinite import first_nonfinite_output
from ..core.mixed import (MODES, MixedQuantizer, MixedQuantLayer, arch_parameters, discretize, mixed_layers, sample_paths,
                    set_mode, set_temperature)
from ..core.qat import LearnedQuantizer
from .select import RULES
from ..core.strategy import LayerContext
from ..core.training import random_shift

log = logging.getLogger(__name__)


@dataclass
class QATRecipe:
    """The ``qat:`` config section: the training recipe shared by every QAT method."""

    epochs: int = option(4, ge=1)  # passes over the training set
    batch_size: int = option(64, ge=1)  # images per step
    lr: float = option(0.01, gt=0)  # learning rate of the network weights (SGD, Nesterov momentum, cosine decay)
    momentum: float = option(0.9, ge=0)  # SGD momentum of the weights and of the quantizer parameters
    weight_decay: float = option(5e-4, ge=0)  # L2 penalty on the network weights
    # learning rate of the quantizer parameters (LSQ steps, PACT clips): SGD, the same cosine decay
    quant_lr: float = option(0.01, gt=0)
    quant_weight_decay: float = option(0.0, ge=0)  # L2 penalty on the quantizer parameters
    label_smoothing: float = option(0.0, ge=0, le=1)  # label smoothing of the cross-entropy (0 = one-hot targets)
    shift: int = option(2, ge=0)  # random translation (pixels) on tensor data; 0 where the dataset augments itself

    def __post_init__(self):
        check_options(self)


SAMPLINGS = ("mixture", "single_path")


@dataclass
class DQSSQATConfig:
    """The ``dqss:`` section of the QAT track."""

    candidates: list[str] | None = None  # the QAT strategies searched over, at least two; null = the track's
    arch_lr: float = option(0.005, gt=0)  # Adam's learning rate on the strategy logits
    tau_start: float = option(1.0, gt=0)  # softmax temperature at the first search step
    tau_end: float = option(0.1, gt=0)  # softmax temperature at the last search step (annealed geometrically)
    # the under-fitting fix: search this part of the schedule, then freeze the assignment (1 = no fix)
    search_fraction: float = option(0.5, gt=0, le=1)
    # mixed layers' forward: efficient = one conv of the mixed input and mixed weight, naive = one conv per
    # (input, weight) candidate pair; equal results, efficient is faster and leaner
    mode: str = option("efficient", choices=MODES)
    # the frozen assignment: 'measured' = the PTQ tracks' selection on the calibration draw's search part
    # (task loss, BN statistics re-estimated per assignment), guarded on its held part; 'argmax' = the logits'
    # argmax
    select: str = option("measured", choices=RULES)
    sweeps: int = option(1, ge=1, le=20)  # coordinate-descent sweeps over (layer, role) at most
    # a move is accepted when its mean decrease exceeds accept_z paired standard errors
    accept_z: float = option(2.0, ge=0, le=10)
    # search-phase forward: 'mixture' = every candidate weighted by its softmax (the paper's relaxation);
    # 'single_path' = one candidate per tensor per step, drawn from the softmax (SPOS/GDAS): full gradients
    sampling: str = option("mixture", choices=SAMPLINGS)

    def __post_init__(self):
        check_options(self)
        check_annealing(self, "")

    def search_steps(self, total: int, fix: bool) -> int:
        return max(1, round(self.search_fraction * total)) if fix else total

    def tau(self, step: int, steps: int) -> float:
        frac = min(step / max(steps - 1, 1), 1.0)
        return self.tau_start * (self.tau_end / self.tau_start) ** frac


class QATDiverged(FloatingPointError):
    pass


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable parameters of every QAT quantizer in ``model`` (candidates included)."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, LearnedQuantizer):
            for p in m.learned():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """The three parameter groups :func:`train_qat` gives their own optimisers: the network weights (those
    that train), the quantizers' learnable parameters, and the DQSS strategy logits."""
    quant = quantizer_parameters(model)
    arch = arch_parameters(model)
    special = {id(p) for p in quant + arch}
    weights = [p for p in model.parameters() if id(p) not in special and p.requires_grad]
    return weights, quant, arch


@torch.no_grad()
def _first_nonfinite_layer(model: nn.Module, x: torch.Tensor) -> str:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    for name, m in layers.items():
        for role, q in (("weight", m.weight_quant), ("act", m.act_quant)):
            bad = [p for p in q.parameters() if not torch.isfinite(p).all()]
            if bad:
                return f"{name} ({role} quantizer parameters)"
    return first_nonfinite_output(model, x, layers)


def qat_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: list[torch.optim.Optimizer],
             label_smoothing: float = 0.0, where: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step of :func:`train_qat` on the mini-batch ``(x, y)``: forward, cross-entropy, a check that
    the loss is finite (:class:`QATDiverged` naming the first non-finite layer otherwise; ``where``: the
    (epoch, step) it names), every optimiser's gradients zeroed, one backward, then every optimiser steps, in
    ``opts``' order (weights, quantizer parameters, then the DQSS logits while searching).  The learning-rate
    schedules step after it.  Returns the model's output and the loss."""
    out = model(x)
    loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
    if not torch.isfinite(loss):
        layer = _first_nonfinite_layer(model, x)
        at = f" at epoch {where[0]}, step {where[1]}" if where is not None else ""
        raise QATDiverged(f"QAT diverged: non-finite loss{at}; first non-finite layer: {layer}. Lower qat.lr, "
                          "qat.quant_lr or dqss.arch_lr")
    for o in opts:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in opts:
        o.step()
    return out, loss


def train_qat(model: nn.Module, data: Dataset, recipe: QATRecipe, device, seed: int,
              search: DQSSQATConfig | None = None, fix: bool = True,
              evaluate: Callable[[nn.Module], float] | None = None,
              on_freeze: Callable[[nn.Module, int], None] | None = None, workers: int = 0,
              desc: str = "qat", select: Callable[[nn.Module], dict] | None = None) -> list[dict]:
    """Train ``model`` (quantized layers already swapped in) with ``recipe``.

    With mixed layers, ``search`` drives the strategy logits; ``on_freeze(model, step)`` is
    called just before the mixture is discretised (at the fix point, or after the last
    step without the fix) to ``select(model)``'s assignment (default: the argmax).
    ``evaluate(model)`` gives a test metric logged once per epoch.  Returns one history row per epoch.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=True, generator=g, drop_last=True,
                        num_workers=workers)
    if len(loader) == 0:
        raise ValueError(f"qat.batch_size={recipe.batch_size} exceeds the {len(data)} training images")
    model.to(device).train()
    weights, quant, arch = param_groups(model)
    searching = bool(arch)
    if searching and search is None:
        raise ValueError("the model has mixed layers but no DQSS search configuration was given")
    if searching:
        set_mode(model, search.mode)
    total = recipe.epochs * len(loader)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * s / total))  # noqa: E731
    opts = [torch.optim.SGD(weights, lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                            weight_decay=recipe.weight_decay)]
    if quant:
        opts.append(torch.optim.SGD(quant, lr=recipe.quant_lr, momentum=recipe.momentum,
                                    weight_decay=recipe.quant_weight_decay))
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, cosine) for o in opts]
    opt_arch = torch.optim.Adam(arch, lr=search.arch_lr, betas=(0.5, 0.999)) if searching else None
    search_steps = search.search_steps(total, fix) if searching else 0
    paths = torch.Generator().manual_seed(seed + 1)  # single-path draws: the data order stays the uniform runs'

    def freeze(step: int) -> None:
        nonlocal searching
        sample_paths(model, None)
        if on_freeze is not None:
            on_freeze(model, step)
        choice = discretize(model, select(model) if select is not None else None)
        model.train()
        searching = False
        log.info("step %d: assignment frozen (%d layers)", step, len(choice))

    history, step = [], 0
    bar = tqdm(total=total, desc=desc, leave=False)
    for epoch in range(recipe.epochs):
        running, correct, seen = 0.0, 0, 0
        phase = "search" if searching else ("fixed" if search is not None else "train")
        for x, y in loader:
            if searching and step == search_steps:
                freeze(step)
                phase = "fixed"
            if searching:
                set_temperature(model, search.tau(step, search_steps))
                if search.sampling == "single_path":
                    sample_paths(model, paths)
            x = random_shift(x, recipe.shift, g).to(device)
            y = y.to(device)
            out, loss = qat_step(model, x, y, opts + [opt_arch] if searching else opts, recipe.label_smoothing,
                                 where=(epoch, step))
            for s in scheds:
                s.step()
            running += loss.item() * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
            step += 1
            bar.update()
        row = {"epoch": epoch, "step": step, "phase": phase, "loss": running / seen,
               "train_top1": 100.0 * correct / seen,
               "tau": search.tau(min(step, search_steps) - 1, search_steps) if search is not None else None}
        if evaluate is not None:
            row["test_top1"] = evaluate(model)
            model.train()
        history.append(row)
        log.info("epoch %d %s", epoch, {k: v for k, v in row.items() if k != "epoch"})
    bar.close()
    if searching:
        freeze(step)
    if mixed_layers(model):
        raise RuntimeError("mixed layers left after training")  # discretize() must have replaced all
    return history


# -- the QAT model ---------------------------------------------------------------------------
def _contexts(model: nn.Module, plans) -> dict[str, LayerContext]:
    return {n: LayerContext(n, model.get_submodule(n)) for n in plans}


def quantize_qat(model: nn.Module, plans, stats, choice: dict[str, dict[str, object]],
                 mode: str | None = None) -> nn.Module:
    """A trainable copy of ``model`` whose planned layers carry QAT quantizers.

    ``choice[layer]`` maps strategy names to strategies: one entry gives a plain
    :class:`QuantLayer`, several a DQSS :class:`MixedQuantLayer` over them (``mode``); a
    ``(weight strategy, activation strategy)`` pair gives a plain layer with one of each.
    Every quantizer is initialised from the FP weights and ``stats``.
    """
    qmodel = copy.deepcopy(model)
    new = {}
    for name, ctx in _contexts(qmodel, plans).items():
        plan, st = plans[name], stats[name]
        if isinstance(choice[name], tuple):
            w_strat, a_strat = choice[name]
            new[name] = QuantLayer(ctx.module, w_strat.build_weight_quantizer(plan.w_spec, ctx),
                                   a_strat.build_act_quantizer(plan.a_spec, st, ctx), plan.int32_bias)
            continue
        wq = {s: strat.build_weight_quantizer(plan.w_spec, ctx) for s, strat in choice[name].items()}
        aq = {s: strat.build_act_quantizer(plan.a_spec, st, ctx) for s, strat in choice[name].items()}
        if len(choice[name]) == 1:
            new[name] = QuantLayer(ctx.module, *wq.values(), *aq.values(), plan.int32_bias)
        else:
            new[name] = MixedQuantLayer(ctx.module, MixedQuantizer(wq), MixedQuantizer(aq), mode or "efficient",
                                        plan.int32_bias)
    return swap_layers(qmodel, new).requires_grad_(True)


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches) -> None:
    """BN running statistics recomputed (cumulative average) for the model's current assignment."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for x in batches:
        model(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
        m.eval()
