"""Full-precision training of the embedded backbones, classification and SR (the paper uses pretrained weights)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import check_seed

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    shift: int = 2  # random translation (pixels) as augmentation
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("train.epochs and train.batch_size must be >= 1 and train.lr > 0")
        check_seed(self.seed, "train.seed")


def random_shift(x: torch.Tensor, pixels: int, g: torch.Generator) -> torch.Tensor:
    if pixels == 0:
        return x
    padded = F.pad(x, [pixels] * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pixels + 1, (2,), generator=g).tolist()
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def train_classifier(model: nn.Module, data: Dataset, cfg: TrainConfig, device, workers: int = 0) -> list[dict]:
    """SGD with cosine decay; returns the per-epoch loss history."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=True,
                        num_workers=workers)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    history = []
    bar = tqdm(total=total, desc="train", leave=False)
    for epoch in range(cfg.epochs):
        running, seen = 0.0, 0
        for x, y in loader:
            x = random_shift(x, cfg.shift, g).to(device)
            loss = F.cross_entropy(model(x), y.to(device), label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch}; lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(y)
            seen += len(y)
            bar.update()
        history.append({"epoch": epoch, "loss": running / seen})
        log.info("epoch %d loss %.4f", epoch, running / seen)
    bar.close()
    return history


def fit_sr(model, pairs, tc, scale: int, device, name: str = "model") -> list[dict]:
    """SR training: L1 on random aligned crops of ``pairs`` (``tc``: an SR ``train:`` section), Adam with cosine
    decay; the loss history (20 points)."""
    import numpy as np

    from .sr_data import training_batch

    g = np.random.default_rng(tc.seed)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tc.iterations, eta_min=tc.lr * 0.01)
    history, running = [], []
    every = max(1, tc.iterations // 20)
    for it in tqdm(range(tc.iterations), desc=f"train {name}", leave=False):
        lr, hr = training_batch(pairs, tc.batch_size, tc.patch, scale, g)
        loss = torch.nn.functional.l1_loss(model(lr.to(device)), hr.to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training {name} diverged at iteration {it}; lower sr_ptq.train.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if (it + 1) % every == 0 or it + 1 == tc.iterations:
            history.append({"iteration": it + 1, "loss": float(np.mean(running))})
            running = []
    return history
