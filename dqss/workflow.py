"""Glue between Snakemake and the library: config checks and the script-shim set-up."""
from __future__ import annotations

import logging
import re
import sys

TRACKS = ("cls_ptq", "cls_qat", "sr_ptq")
# where the workflow may train the FP backbone itself (weights: train)
TRAINABLE = {"cls_ptq": ("digits",), "cls_qat": ("digits", "cifar10")}


def _config_class(track: str):
    if track == "cls_ptq":
        from .cls_ptq import ClsPTQConfig
        return ClsPTQConfig
    if track == "cls_qat":
        from .cls_qat import ClsQATConfig
        return ClsQATConfig
    if track == "sr_ptq":
        from .sr_ptq import SRPTQConfig
        return SRPTQConfig
    raise ValueError(f"unknown track '{track}'; valid tracks are {list(TRACKS)}")


def track_config(config: dict, track: str):
    """The validated config of ``track`` (``None`` when the config has no such section); any
    unknown backbone, strategy or bit width fails here, before any job runs, with the list
    of valid values."""
    from .models import check_backbone

    config_class = _config_class(track)
    section = config.get(track)
    if section is None:
        return None
    cfg = config_class.from_dict(section, track)
    if track == "sr_ptq":
        return cfg  # SR backbone names and weights are checked by SRPTQConfig itself
    for name, spec in cfg.backbones.items():
        check_backbone(name)
        weights = str(spec.get("weights", "train"))
        if weights == "train" and cfg.data.name not in TRAINABLE[track]:
            raise ValueError(f"{track}.backbones.{name}.weights: 'train' is only available on "
                             f"{list(TRAINABLE[track])} data in this track; use 'timm' or a weight file")
    return cfg


def valid_backbones_pattern(config: dict) -> str:
    names = sorted({b for t in TRACKS if t in config for b in config[t]["backbones"]})
    return "|".join(re.escape(n) for n in names)


def setup(smk):
    """Route logging and progress bars to the rule's log, pin threads, resolve the device.

    Returns ``(track config, device)``.
    """
    import torch

    from .cls_ptq import resolve_device

    if smk.log:
        stream = open(smk.log[0], "a", buffering=1)
        sys.stderr = stream
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    torch.set_num_threads(max(1, int(smk.threads)))
    device = resolve_device(str(smk.config.get("device", "auto")))
    logging.getLogger("dqss").info("rule %s on %s, %d thread(s)", smk.rule, device, smk.threads)
    return device


def cls_ptq_config(smk):
    from .cls_ptq import ClsPTQConfig

    return ClsPTQConfig.from_dict(smk.config["cls_ptq"])


def track_of(smk):
    """The config of the track a job belongs to (its ``track`` param)."""
    track = smk.params.track
    return _config_class(track).from_dict(smk.config[track], track)
