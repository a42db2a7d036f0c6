"""The training-loop helpers that the FP trainers (:mod:`dqss.cls.train`, :mod:`dqss.sr.train`) and the QAT recipe
(:mod:`dqss.algorithms.qat_train`) share: one optimiser step that stops on a non-finite loss, and the random-shift
augmentation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, pixels: int, g: torch.Generator) -> torch.Tensor:
    if pixels == 0:
        return x
    padded = F.pad(x, [pixels] * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pixels + 1, (2,), generator=g).tolist()
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def step(opt, sched, loss, diverged: str) -> None:
    """One optimiser and schedule step on ``loss``; a non-finite loss stops training with ``diverged``."""
    if not torch.isfinite(loss):
        raise FloatingPointError(diverged)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
