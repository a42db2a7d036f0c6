# Config validation and the lists every track's rules expand over.
import sys
from pathlib import Path

from snakemake.utils import validate

# The library sits next to the Snakefile (jobs find it through scripts/_repo.py).
sys.path.insert(0, workflow.basedir)

from dqss.workflow import track_config, valid_backbones_pattern

validate(config, "../schemas/config.schema.yaml")

# None when the config leaves a track out
CLS_PTQ = track_config(config, "cls_ptq")
CLS_QAT = track_config(config, "cls_qat")
SR_PTQ = track_config(config, "sr_ptq")
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
CLS = f"results/cls_ptq/{CLS_PTQ.dataset if CLS_PTQ else 'none'}/{{backbone}}"
QAT = f"results/cls_qat/{CLS_QAT.dataset if CLS_QAT else 'none'}/{{backbone}}"
SR = f"results/sr_ptq/{SR_PTQ.dataset if SR_PTQ else 'none'}/{{backbone}}"


def cls_checkpoint(wildcards):
    """The trained checkpoint for 'train' weights; nothing for timm or local weights."""
    if CLS_PTQ.weights(wildcards.backbone) == "train":
        return f"{CLS}/fp32/model.pt"
    return []


def qat_checkpoint(wildcards):
    """The FP checkpoint QAT starts from, when the workflow trains it."""
    if CLS_QAT.weights(wildcards.backbone) == "train":
        return f"{QAT}/fp32/model.pt"
    return []


def sr_checkpoint(wildcards):
    """The weights an SR job loads when the workflow makes them: trained here or downloaded."""
    source = SR_PTQ.weight_source(wildcards.backbone)
    if source == "train":
        return f"{SR}/fp32/model.pt".format(backbone=wildcards.backbone)
    if source == "url":
        return SR_PTQ.download_path(wildcards.backbone)
    return []


def sr_fp_dir(backbone, method="fp32"):
    return f"{SR}/{method}/w32a32/seed{SR_PTQ.train.seed}".format(backbone=backbone)


def sr_ptq_targets():
    if SR_PTQ is None:
        return []
    out = []
    for bb in SR_PTQ.backbones:
        out += [f"{sr_fp_dir(bb)}/metrics.json", f"{sr_fp_dir(bb, 'bicubic')}/metrics.json"]
        for seed in SEEDS:
            for w, a in SR_PTQ.bits:
                for method in SR_PTQ.strategies + ["dqss"]:
                    out.append(f"{SR}/{method}/w{w}a{a}/seed{seed}/metrics.json".format(backbone=bb))
    return out


def sr_uniform_outputs():
    if SR_PTQ is None:
        return {}
    return {
        (m, w, a): f"{SR}/{m}/w{w}a{a}/seed{{seed}}"
        for w, a in SR_PTQ.bits
        for m in SR_PTQ.strategies
    }


def all_crops():
    """The SR outputs' crops the report composes into its figure."""
    crops = [p.replace("metrics.json", "crop.png") for p in sr_ptq_targets()]
    return crops + [f"{sr_fp_dir(bb)}/crop_gt.png" for bb in (SR_PTQ.backbones if SR_PTQ else [])]


def cls_ptq_targets():
    if CLS_PTQ is None:
        return []
    out = []
    for bb in CLS_PTQ.backbones:
        out.append(f"{CLS}/fp32/w32a32/seed{CLS_PTQ.train.seed}/metrics.json".format(backbone=bb))
        for seed in SEEDS:
            for w, a in CLS_PTQ.bits:
                for method in CLS_PTQ.strategies + ["dqss"]:
                    out.append(f"{CLS}/{method}/w{w}a{a}/seed{seed}/metrics.json".format(backbone=bb))
    return out


def cls_qat_targets():
    if CLS_QAT is None:
        return []
    out = []
    for bb in CLS_QAT.backbones:
        out.append(f"{QAT}/fp32/w32a32/seed{CLS_QAT.train.seed}/metrics.json".format(backbone=bb))
        for seed in SEEDS:
            for w, a in CLS_QAT.bits:
                for method in CLS_QAT.methods():
                    out.append(f"{QAT}/{method}/w{w}a{a}/seed{seed}/metrics.json".format(backbone=bb))
    return out


def qat_methods_pattern():
    return "|".join(CLS_QAT.strategies) if CLS_QAT else "none"


def uniform_outputs():
    if CLS_PTQ is None:
        return {}
    return {
        (m, w, a): f"{CLS}/{m}/w{w}a{a}/seed{{seed}}/metrics.json"
        for w, a in CLS_PTQ.bits
        for m in CLS_PTQ.strategies
    }


def all_metric_files():
    return cls_ptq_targets() + cls_qat_targets() + sr_ptq_targets()


def all_assignments():
    dqss = [p for p in all_metric_files() if Path(p).parts[-4] in ("dqss", "dqss_nofix")]
    return [p.replace("metrics.json", "assignment.yaml") for p in dqss]


def all_histories():
    """The QAT training curves."""
    return [p.replace("metrics.json", "train.csv") for p in cls_qat_targets() if Path(p).parts[-4] != "fp32"]
