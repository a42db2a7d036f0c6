"""Classification metrics: accuracy and fidelity to the full-precision model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device, desc: str = "evaluate") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every item of ``loader``."""
    model.eval().to(device)
    logits, labels = [], []
    try:
        for x, y in tqdm(loader, desc=desc, leave=False):
            logits.append(model(x.to(device)).float().cpu())
            labels.append(y)
    except ValueError as exc:
        msg = str(exc).strip()
        if "DataLoader worker" in msg:  # torch prepends the worker's traceback: keep the data's one-line error
            raise ValueError(msg.splitlines()[-1].removeprefix("ValueError: ")) from None
        raise
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           fp_logits: torch.Tensor | None = None) -> dict[str, float]:
    """``top1`` (%), and against the FP logits ``agree_fp`` (% same top-1) and ``kl_fp``
    (mean KL(FP softmax || model softmax))."""
    out = {"top1": 100.0 * (logits.argmax(1) == labels).double().mean().item()}
    if fp_logits is not None:
        if fp_logits.shape != logits.shape:
            raise ValueError(f"FP logits of shape {tuple(fp_logits.shape)} do not match {tuple(logits.shape)}; "
                             "they were computed on another test set")
        out["agree_fp"] = 100.0 * (logits.argmax(1) == fp_logits.argmax(1)).double().mean().item()
        out["kl_fp"] = F.kl_div(F.log_softmax(logits.double(), 1), F.log_softmax(fp_logits.double(), 1),
                                reduction="batchmean", log_target=True).item()
    return out


def per_image(logits: torch.Tensor, labels: torch.Tensor, fp_logits: torch.Tensor | None = None) -> dict[str, list]:
    """The per-image values behind :func:`classification_metrics` (what paired significance tests need):
    ``top1`` and ``agree_fp`` as 0/1, ``kl_fp`` as floats; their means are the metrics (in %)."""
    out = {"top1": (logits.argmax(1) == labels).int().tolist()}
    if fp_logits is not None:
        out["agree_fp"] = (logits.argmax(1) == fp_logits.argmax(1)).int().tolist()
        lp, lq = F.log_softmax(fp_logits.double(), 1), F.log_softmax(logits.double(), 1)
        out["kl_fp"] = [round(v, 10) for v in (lp.exp() * (lp - lq)).sum(1).tolist()]
    return out
