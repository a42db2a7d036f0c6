# Classification PTQ: FP model -> shared calibration -> uniform baselines and DQSS.
CLS = "results/cls_ptq/{dataset}/{backbone}".replace("{dataset}", str(CLS_PTQ.dataset))


def cls_checkpoint(wildcards):
    """The trained checkpoint for 'train' weights; nothing for timm or local weights."""
    if CLS_PTQ.weights(wildcards.backbone) == "train":
        return CLS + "/fp32/model.pt"
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


rule cls_train:
    """Train a full-precision backbone on the embedded data."""
    output:
        ckpt=CLS + "/fp32/model.pt",
        history=CLS + "/fp32/train.csv",
    log:
        "logs/cls_ptq/{backbone}/train.log",
    benchmark:
        "benchmarks/cls_ptq/{backbone}/train.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/cls_train.py"


rule cls_evaluate_fp:
    """Measure the FP model on the test set and keep its logits for the fidelity metrics."""
    input:
        ckpt=cls_checkpoint,
    output:
        metrics=CLS + "/fp32/w32a32/seed{seed}/metrics.json",
        logits=CLS + "/fp32/w32a32/seed{seed}/logits.pt",
    log:
        "logs/cls_ptq/{backbone}/fp32_seed{seed}.log",
    benchmark:
        "benchmarks/cls_ptq/{backbone}/fp32_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/cls_evaluate_fp.py"


rule cls_calibrate:
    """One calibration pass: statistics shared by every strategy and bit width."""
    input:
        ckpt=cls_checkpoint,
    output:
        stats=CLS + "/calib/seed{seed}/stats.pt",
        images=CLS + "/calib/seed{seed}/images.txt",
    log:
        "logs/cls_ptq/{backbone}/calibrate_seed{seed}.log",
    benchmark:
        "benchmarks/cls_ptq/{backbone}/calibrate_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/cls_calibrate.py"


rule cls_uniform:
    """Every registered strategy applied uniformly to all layers, at every bit width."""
    input:
        ckpt=cls_checkpoint,
        stats=rules.cls_calibrate.output.stats,
        fp=CLS + f"/fp32/w32a32/seed{CLS_PTQ.train.seed}/logits.pt",
    output:
        list(uniform_outputs().values()),
    params:
        jobs=list(uniform_outputs()),
    log:
        "logs/cls_ptq/{backbone}/uniform_seed{seed}.log",
    benchmark:
        "benchmarks/cls_ptq/{backbone}/uniform_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=120,
    script:
        "../scripts/cls_uniform.py"


rule cls_dqss:
    """DQSS search of per-layer strategies, then evaluation of the argmax model."""
    input:
        ckpt=cls_checkpoint,
        stats=rules.cls_calibrate.output.stats,
        fp=CLS + f"/fp32/w32a32/seed{CLS_PTQ.train.seed}/logits.pt",
    output:
        metrics=CLS + "/dqss/w{w}a{a}/seed{seed}/metrics.json",
        assignment=CLS + "/dqss/w{w}a{a}/seed{seed}/assignment.yaml",
        history=CLS + "/dqss/w{w}a{a}/seed{seed}/search.csv",
    log:
        "logs/cls_ptq/{backbone}/dqss_w{w}a{a}_seed{seed}.log",
    benchmark:
        "benchmarks/cls_ptq/{backbone}/dqss_w{w}a{a}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=240,
    script:
        "../scripts/cls_dqss.py"
