"""Backbones by timm name, with weights trained here, from timm, or from a local file."""
from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHT_SOURCES = ("train", "timm")  # or a path to a local file


def register_models() -> None:
    """Register the suite's own timm models (dqss.cls.cifar_models: resnet20, mobilenetv2_*_cifar).

    Idempotent and cheap after the first call; call it before ``timm.create_model`` on a suite name.
    """
    from . import cifar_models  # noqa: F401  (registration happens at import)


def check_backbone(name: str) -> None:
    import timm

    register_models()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ValueError(f"unknown backbone '{name}': not a timm model name. Close matches: {close}; "
                         "all valid names: timm.list_models()")


def create_backbone(name: str, weights: str, num_classes: int | None, key: str,
                    checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """Build ``name`` with ``weights``: 'train' (``checkpoint`` written by the workflow),
    'timm' (timm's pretrained weights) or the path of a local weight file.

    ``key`` is the config key that chose the weights, for error messages.
    """
    import timm

    register_models()
    check_backbone(name)
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if weights == "train":
        if checkpoint is None:
            raise ValueError(f"{key}: 'train' weights need the checkpoint written by the train rule")
        model = timm.create_model(name, pretrained=False, **extra)
        model.load_state_dict(load_checkpoint(checkpoint, name)["state_dict"])
    elif weights == "timm":
        try:
            model = timm.create_model(name, pretrained=True, **extra)
        except Exception as exc:  # no network, no cache, or no pretrained tag
            raise RuntimeError(f"{key}: timm could not load pretrained weights for '{name}' ({exc}). On an "
                               "offline machine set HF_HUB_OFFLINE=1 with the weights in the Hugging Face "
                               "cache, or set the key to a local weight file") from exc
    else:
        path = require_weight_file(weights, key, name)
        try:
            # the overlay's num_classes tells timm the file's classifier matches the model,
            # otherwise it silently drops it as a 1000-class head
            overlay = {"file": str(path), **({} if num_classes is None else {"num_classes": num_classes})}
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **extra)
        except Exception as exc:
            raise RuntimeError(f"{key}: cannot load weight file {path} into '{name}' ({exc}); is it the "
                               "state dict of that architecture?") from exc
    return check_finite(model, f"{key} ({checkpoint if weights == 'train' else weights})").eval()


def require_weight_file(path, key: str, name: str) -> Path:
    """``path`` if it is a file; else an error naming the config ``key`` (checked before any job, and on load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: weight file {path} not found (relative paths are relative to the working "
                                f"directory {Path.cwd()}); set it to an existing .pth/.bin/.safetensors file for "
                                f"'{name}', or to 'timm' or 'train'")
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
    from ..results import atomic_write

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


def data_config(model: nn.Module, input_size: int | None = None) -> dict:
    """timm's preprocessing for ``model``; ``input_size`` overrides the resolution."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    if input_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], input_size, input_size)
    return cfg
