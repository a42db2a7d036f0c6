"""Glue between Snakemake and the library: config checks and the script-shim set-up."""
from __future__ import annotations

import logging
import re
import sys

TRACKS = {"cls_ptq"}


def track_config(config: dict, track: str):
    """The validated config of ``track``; any unknown backbone, strategy or bit width fails
    here, before any job runs, with the list of valid values."""
    from .cls_ptq import ClsPTQConfig
    from .models import check_backbone

    section = config.get(track)
    if section is None:
        raise ValueError(f"config has no '{track}' section")
    cfg = ClsPTQConfig.from_dict(section, track)
    for name, spec in cfg.backbones.items():
        check_backbone(name)
        weights = str(spec.get("weights", "train"))
        if weights == "train" and cfg.data.name != "digits":
            raise ValueError(f"{track}.backbones.{name}.weights: 'train' is only available on the embedded "
                             "digits data; use 'timm' or a weight file")
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
