"""DQSS-PTQ search: optimise only the strategy logits on the calibration set."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .layers import first_nonfinite_output
from .mixed import MODES, RELAXATIONS, arch_parameters, mixed_layers, set_mode, set_relaxation, set_temperature

log = logging.getLogger(__name__)

LOSSES = ("kl", "ce", "l1", "mse")


@dataclass
class SearchConfig:
    """The ``dqss:`` config section (PTQ)."""

    iterations: int = 200
    batch_size: int = 32
    lr: float = 0.05
    beta1: float = 0.5  # Adam's momentum on the logits: higher averages the noisy strategy gradients longer
    loss: str = "kl"
    tau_start: float = 1.0
    tau_end: float = 1.0
    mode: str = "efficient"
    candidates: list[str] | None = None
    # soft: the softmax mixture throughout; hard: argmax forward with the softmax's gradient
    # (straight-through) for the last ``1 - soft_fraction`` of the iterations
    relaxation: str = "soft"
    soft_fraction: float = 0.5
    # the final assignment (dqss.select): 'measured' = coordinate descent on the discrete objective of the
    # calibration's search part, guarded on its held part; 'argmax' = the logits' argmax (the paper's rule)
    select: str = "measured"
    objective: str | None = None  # the selection objective; null = the track's (kl for classification, mse_y for SR)
    sweeps: int = 2  # coordinate-descent sweeps over (layer, role) at most
    accept_z: float = 2.0  # a move is accepted when its mean decrease exceeds accept_z paired standard errors
    top_k: int | None = 2  # alternatives tried per (layer, role): the lowest layer-local output error; null = all
    block_cache: bool = True  # rerun a trial only from the changed layer's block (chain-shaped models)

    def __post_init__(self):
        from .select import PTQ_OBJECTIVES, RULES

        if self.select not in RULES:
            raise ValueError(f"dqss.select: unknown '{self.select}'; valid values are {list(RULES)}")
        if self.objective is not None and self.objective not in PTQ_OBJECTIVES:
            raise ValueError(f"dqss.objective: unknown '{self.objective}'; valid values are {list(PTQ_OBJECTIVES)} "
                             "or null (the track's default)")
        if not isinstance(self.sweeps, int) or isinstance(self.sweeps, bool) or not 1 <= self.sweeps <= 20:
            raise ValueError(f"dqss.sweeps must be an integer in 1..20, got {self.sweeps!r}")
        if isinstance(self.accept_z, bool) or not isinstance(self.accept_z, (int, float)) \
                or not 0.0 <= self.accept_z <= 10.0:
            raise ValueError(f"dqss.accept_z must be a number in [0, 10], got {self.accept_z!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool)
                                       or self.top_k < 1):
            raise ValueError(f"dqss.top_k must be an integer >= 1 or null (every alternative), got {self.top_k!r}")
        if not isinstance(self.block_cache, bool):
            raise ValueError(f"dqss.block_cache must be true or false, got {self.block_cache!r}")
        if self.relaxation not in RELAXATIONS:
            raise ValueError(f"dqss.relaxation: unknown '{self.relaxation}'; valid values are {list(RELAXATIONS)}")
        if not 0.0 <= self.soft_fraction <= 1.0:
            raise ValueError("dqss.soft_fraction must lie in [0, 1]")
        if self.loss not in LOSSES:
            raise ValueError(f"dqss.loss: unknown '{self.loss}'; valid values are {list(LOSSES)}")
        if self.mode not in MODES:
            raise ValueError(f"dqss.mode: unknown '{self.mode}'; valid values are {list(MODES)}")
        if self.iterations < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("dqss.iterations and dqss.batch_size must be >= 1 and dqss.lr > 0")
        if not 0.0 <= self.beta1 < 1.0:
            raise ValueError("dqss.beta1 must lie in [0, 1)")
        if self.tau_start <= 0 or self.tau_end <= 0:
            raise ValueError("dqss.tau_start and dqss.tau_end must be positive")

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
