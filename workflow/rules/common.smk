# Config validation and the lists every track's rules expand over.
import sys

from snakemake.utils import validate

# The library sits next to the Snakefile (jobs find it through scripts/_repo.py).
sys.path.insert(0, workflow.basedir)

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


ENV = "../envs/dqss.yaml"

# results/{task}/{dataset}/{backbone}/{method}/w{W}a{A}/seed{S}/...
CLS = f"results/cls_ptq/{CLS_PTQ.dataset}/{{backbone}}"


def cls_checkpoint(wildcards):
    """The trained checkpoint for 'train' weights; nothing for timm or local weights."""
    if CLS_PTQ.weights(wildcards.backbone) == "train":
        return f"{CLS}/fp32/model.pt"
    return []


def cls_ptq_targets():
    out = []
    for bb in CLS_PTQ.backbones:
        out.append(f"{CLS}/fp32/w32a32/seed{CLS_PTQ.train.seed}/metrics.json".format(backbone=bb))
        for seed in SEEDS:
            for w, a in CLS_PTQ.bits:
                for method in CLS_PTQ.strategies + ["dqss"]:
                    out.append(f"{CLS}/{method}/w{w}a{a}/seed{seed}/metrics.json".format(backbone=bb))
    return out


def uniform_outputs():
    return {
        (m, w, a): f"{CLS}/{m}/w{w}a{a}/seed{{seed}}/metrics.json"
        for w, a in CLS_PTQ.bits
        for m in CLS_PTQ.strategies
    }


def all_metric_files():
    return cls_ptq_targets()


def all_assignments():
    return [p.replace("metrics.json", "assignment.yaml") for p in cls_ptq_targets() if "/dqss/" in p]
