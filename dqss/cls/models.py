"""Backbones by timm name, with weights trained here, from timm, or from a local file."""
from __future__ import annotations

import difflib
import logging
import os
import sys

from torch import nn

from ..weights import check_finite, load_checkpoint, require_weight_file

log = logging.getLogger(__name__)

WEIGHT_SOURCES = ("train", "timm")  # or a path to a local file
# the remedy of a missing weight file (dqss.weights.require_weight_file)
WEIGHT_FIX = "; set it to an existing .pth/.bin/.safetensors file for '{name}', or to 'timm' or 'train'"


def register_models() -> None:
    """Register the suite's own timm models (dqss.cls.cifar_models: resnet20, mobilenetv2_*_cifar).

    Idempotent and cheap after the first call; call it before ``timm.create_model`` on a suite name.
    """
    from . import cifar_models  # noqa: F401  (registration happens at import)


def check_backbone(name: str) -> None:
    """A timm model name (the suite's own included), or an error naming the close matches.

    The workflow checks every backbone before it builds its DAG, and importing timm takes seconds; so a name
    found once is remembered in a small file of the user's cache (``$XDG_CACHE_HOME/dqss``, else ``~/.cache/dqss``),
    one per timm version and version of the suite's own models.  An unknown name is never remembered."""
    cache = known_names_file()
    try:
        if cache is not None and name in cache.read_text().split():
            if "timm" in sys.modules:  # timm is loaded anyway: it knows the suite's names after a check, as below
                register_models()
            return
    except OSError:
        pass
    import timm

    register_models()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ValueError(f"unknown backbone '{name}': not a timm model name. Close matches: {close}; "
                         "all valid names: timm.list_models()")
    if cache is not None:
        try:  # best effort: a read-only home only means timm is imported next time too
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            known = cache.read_text().split() if cache.exists() else []
            tmp.write_text("\n".join(sorted({*known, name})) + "\n")
            tmp.replace(cache)
        except OSError:
            pass


def known_names_file():
    """The cache file of backbone names already found in timm, for this timm and these suite models (None when
    timm is not installed)."""
    import hashlib
    from importlib import metadata
    from pathlib import Path

    try:
        version = metadata.version("timm")
    except metadata.PackageNotFoundError:
        return None
    ours = hashlib.sha256((Path(__file__).parent / "cifar_models.py").read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dqss"
    return base / f"timm-{version}-models-{ours}.txt"


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
        path = require_weight_file(weights, key, WEIGHT_FIX.format(name=name))
        try:
            # the overlay's num_classes tells timm the file's classifier matches the model,
            # otherwise it silently drops it as a 1000-class head
            overlay = {"file": str(path), **({} if num_classes is None else {"num_classes": num_classes})}
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **extra)
        except Exception as exc:
            raise RuntimeError(f"{key}: cannot load weight file {path} into '{name}' ({exc}); is it the "
                               "state dict of that architecture?") from exc
    return check_finite(model, f"{key} ({checkpoint if weights == 'train' else weights})").eval()


def data_config(model: nn.Module, input_size: int | None = None) -> dict:
    """timm's preprocessing for ``model``; ``input_size`` overrides the resolution."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    if input_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], input_size, input_size)
    return cfg
