"""DQSS-PTQ search: optimise only the strategy logits on the calibration set."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..options import check_annealing, check_options, option
from ..core.nonfinite import first_nonfinite_output
from ..core.mixed import MODES, RELAXATIONS, arch_parameters, mixed_layers, set_mode, set_relaxation, set_temperature
from .select import PTQ_OBJECTIVES, RULES

log = logging.getLogger(__name__)

LOSSES = ("kl", "ce", "l1", "mse")


@dataclass
class SearchConfig:
    """The ``dqss:`` config section (PTQ): the gradient search of the strategy logits and the selection."""

    iterations: int = option(200, ge=1)  # Adam steps on the strategy logits
    batch_size: int = option(32, ge=1)  # calibration images (SR: crops) per search step
    lr: float = option(0.05, gt=0)  # Adam's learning rate on the logits
    beta1: float = option(0.5, ge=0, lt=1)  # Adam's momentum on the logits: higher averages the noisy gradients longer
    loss: str = option("kl", choices=LOSSES)  # search loss against the FP outputs (ce: against the labels)
    tau_start: float = option(1.0, gt=0)  # softmax temperature at the first step
    tau_end: float = option(1.0, gt=0)  # softmax temperature at the last step (annealed geometrically)
    # mixed layers' forward: efficient = one conv of the mixed input and mixed weight, naive = one conv per
    # (input, weight) candidate pair; equal results, efficient is faster and leaner
    mode: str = option("efficient", choices=MODES)
    candidates: list[str] | None = None  # the strategies searched over, at least two; null = the track's strategies
    # soft: the softmax mixture throughout; hard: argmax forward with the softmax's gradient
    # (straight-through) for the last ``1 - soft_fraction`` of the iterations
    relaxation: str = option("soft", choices=RELAXATIONS)
    soft_fraction: float = option(0.5, ge=0, le=1)  # relaxation hard: part of the iterations run soft first
    # the final assignment (dqss.algorithms.select): 'measured' = coordinate descent on the discrete objective of the
    # calibration's search part, guarded on its held part; 'argmax' = the logits' argmax (the paper's rule)
    select: str = option("measured", choices=RULES)
    # the selection objective; null = the track's (kl for classification, mse_y for SR)
    objective: str | None = option(None, choices=PTQ_OBJECTIVES)
    sweeps: int = option(2, ge=1, le=20)  # coordinate-descent sweeps over (layer, role) at most
    # a move is accepted when its mean decrease exceeds accept_z paired standard errors
    accept_z: float = option(2.0, ge=0, le=10)
    # alternatives tried per (layer, role): the lowest layer-local output error; null = all
    top_k: int | None = option(2, ge=1)
    block_cache: bool = True  # rerun a trial only from the changed layer's block (chain-shaped models)

    def __post_init__(self):
        check_options(self)
        check_annealing(self, "")  # the API builds this section directly: the same refusal as the config's

    def hard(self, step: int) -> bool:
        return self.relaxation == "hard" and step >= round(self.soft_fraction * self.iterations)

    def tau(self, step: int) -> float:
        """Softmax temperature, annealed geometrically from tau_start to tau_end."""
        frac = step / max(self.iterations - 1, 1)
        return self.tau_start * (self.tau_end / self.tau_start) ** frac


class SearchDiverged(FloatingPointError):
    pass


def distillation_loss(kind: str, out: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None):
    if kind == "kl":
        return F.kl_div(F.log_softmax(out, 1), F.log_softmax(teacher, 1), reduction="batchmean", log_target=True)
    if kind == "ce":
        if labels is None:
            raise ValueError("dqss.loss 'ce' needs labels on the calibration set")
        return F.cross_entropy(out, labels)
    if kind == "l1":
        return F.l1_loss(out, teacher)
    return F.mse_loss(out, teacher)


@torch.no_grad()
def _first_nonfinite_layer(qmodel: nn.Module, x: torch.Tensor) -> str:
    for name, m in mixed_layers(qmodel).items():
        for role, q in (("weight", m.weight_quant), ("act", m.act_quant)):
            if not torch.isfinite(q.logits).all():
                return f"{name} ({role} logits)"
    return first_nonfinite_output(qmodel, x, mixed_layers(qmodel))


def search(qmodel: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, cfg: SearchConfig, seed: int,
           device, labels: torch.Tensor | None = None) -> list[dict]:
    """Train the logits of ``qmodel``'s mixed layers to match ``targets`` (the FP outputs).

    Returns the loss history.  A non-finite loss stops with the step and the first layer
    whose output (or logits) went non-finite.
    """
    params = arch_parameters(qmodel)
    if not params:
        raise ValueError("the model has no mixed layers to search")
    set_mode(qmodel, cfg.mode)
    qmodel.to(device).eval()
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, 0.999))
    g = torch.Generator().manual_seed(seed)
    n = len(inputs)
    order, pos = torch.randperm(n, generator=g), 0
    history = []
    bar = tqdm(range(cfg.iterations), desc="search", leave=False)
    for step in bar:
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        x = inputs[idx].to(device)
        set_temperature(qmodel, cfg.tau(step))
        set_relaxation(qmodel, "hard" if cfg.hard(step) else "soft")
        out = qmodel(x)
        loss = distillation_loss(cfg.loss, out, targets[idx].to(device),
                                 None if labels is None else labels[idx].to(device))
        if not torch.isfinite(loss):
            layer = _first_nonfinite_layer(qmodel, x)
            raise SearchDiverged(f"DQSS search diverged: non-finite loss at step {step}, first non-finite layer: "
                                 f"{layer}. Lower dqss.lr or check the calibration statistics")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step, "loss": loss.item(), "tau": cfg.tau(step)})
        bar.set_postfix(loss=f"{loss.item():.4f}")
    set_temperature(qmodel, 1.0)
    set_relaxation(qmodel, "soft")
    return history
