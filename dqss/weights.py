"""Weight files and checkpoints, for both tasks: a weight file named by the config, a finite state, and an atomic save
and a checked load of the checkpoints the workflow trains."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .results import atomic_write


def require_weight_file(path, key: str, fix: str) -> Path:
    """``path`` if it is a file; else an error naming the config ``key`` and the ``fix`` (the task's remedy),
    checked before any job and on load."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: weight file {path} not found (relative paths are relative to the working "
                                f"directory {Path.cwd()}){fix}")
    return path


def check_finite(model: nn.Module, source: str) -> nn.Module:
    """``model``, if every floating-point tensor of its state is finite; else an error naming them.

    A NaN weight would otherwise pass the FP evaluation (its logits compared with themselves) and
    fail later, far from its cause."""
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{source}: the weights hold NaN or inf in {', '.join(bad[:5])}{more}; the file is damaged "
                         "or its training diverged: replace it (a checkpoint trained by the workflow: delete it and "
                         "rerun to retrain)")
    return model


def save_checkpoint(model: nn.Module, name: str, path, **meta) -> None:
    """The model's weights with its architecture name, atomically (an interrupted save leaves no model.pt)."""
    state = {"arch": name, "state_dict": model.state_dict(), **meta}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path, name: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path} is corrupt or not a checkpoint of this suite ({exc}); delete it "
                           "and rerun the workflow to retrain") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise RuntimeError(f"checkpoint {path} holds no state_dict; delete it and rerun the workflow")
    if ckpt.get("arch") != name:
        raise RuntimeError(f"checkpoint {path} is for '{ckpt.get('arch')}', not '{name}'")
    return ckpt
