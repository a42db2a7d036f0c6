# Config validation and the lists every track's rules expand over.
from snakemake.utils import validate

from dqss.workflow import track_config, valid_backbones_pattern

validate(config, "../schemas/config.schema.yaml")

CLS_PTQ = track_config(config, "cls_ptq")
SEEDS = [int(s) for s in config["seeds"]]
DEVICE = config.get("device", "auto")
GPU = 0 if DEVICE == "cpu" else 1


wildcard_constraints:
    seed=r"\d+",
    w=r"\d+",
    a=r"\d+",
    backbone=valid_backbones_pattern(config),
