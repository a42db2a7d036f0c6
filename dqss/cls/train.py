"""Full-precision training of the embedded classification backbones (the paper uses pretrained weights)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..core.training import random_shift, step
from ..options import SEED_MAX, check_options, option

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The ``train:`` section of a classification track: the FP recipe of the backbones trained here (weights:
    train): SGD with Nesterov momentum and cosine decay."""

    epochs: int = option(15, ge=1)  # passes over the training set
    batch_size: int = option(64, ge=1)  # images per SGD step
    lr: float = option(0.05, gt=0)  # initial learning rate, decayed to 0 by a cosine
    momentum: float = option(0.9, ge=0)  # SGD (Nesterov) momentum
    weight_decay: float = option(5e-4, ge=0)  # L2 penalty on every parameter
    label_smoothing: float = option(0.0, ge=0, le=1)  # label smoothing of the cross-entropy (0 = one-hot targets)
    shift: int = option(2, ge=0)  # random translation (pixels) as augmentation
    seed: int = option(0, ge=0, le=SEED_MAX)  # initialisation, batch order and augmentation

    def __post_init__(self):
        check_options(self)


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
            step(opt, sched, loss, f"non-finite training loss at epoch {epoch}; lower train.lr")
            running += loss.item() * len(y)
            seen += len(y)
            bar.update()
        history.append({"epoch": epoch, "loss": running / seen})
        log.info("epoch %d loss %.4f", epoch, running / seen)
    bar.close()
    return history
