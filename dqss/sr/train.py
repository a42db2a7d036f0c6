"""Full-precision training of the embedded SR backbones: L1 on random aligned crops, Adam with cosine decay (the paper
uses pretrained weights)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.training import step
from .data import training_batch


def fit_sr(model, pairs, tc, scale: int, device, name: str = "model") -> list[dict]:
    """SR training: L1 on random aligned crops of ``pairs`` (``tc``: an SR ``train:`` section), Adam with cosine
    decay; the loss history (20 points)."""
    g = np.random.default_rng(tc.seed)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tc.iterations, eta_min=tc.lr * 0.01)
    history, running = [], []
    every = max(1, tc.iterations // 20)
    for it in tqdm(range(tc.iterations), desc=f"train {name}", leave=False):
        lr, hr = training_batch(pairs, tc.batch_size, tc.patch, scale, g)
        loss = F.l1_loss(model(lr.to(device)), hr.to(device))
        step(opt, sched, loss, f"training {name} diverged at iteration {it}; lower sr_ptq.train.lr")
        running.append(loss.item())
        if (it + 1) % every == 0 or it + 1 == tc.iterations:
            history.append({"iteration": it + 1, "loss": float(np.mean(running))})
            running = []
    return history
