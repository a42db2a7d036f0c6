# Deployment check (part of all): the DQSS assignment and the held-best uniform strategy of each PTQ backbone, at
# every bit width, exported to ONNX (QuantizeLinear/DequantizeLinear with the suite's scales) and run as integers by
# ONNX Runtime's CPU execution provider against the fake-quantized model: results/deploy/deploy.csv, a report table.
DEPLOY_TRACKS = {"cls_ptq": CLS, "sr_ptq": SR}


def deploy_tables():
    """One CSV per backbone of each PTQ track whose deploy.enabled is true, on the first seed."""
    return [f"results/deploy/{t}/{bb}_seed{SEEDS[0]}.csv" for t in DEPLOY_TRACKS
            if TRACK[t] is not None and TRACK[t].deploy.enabled for bb in TRACK[t].backbones]


# the summary table, when a track runs the check (all and the report take it)
DEPLOY_SUMMARY = ["results/deploy/deploy.csv"] if deploy_tables() else []


def deploy_inputs(wc):
    cfg, layout = TRACK[wc.track], DEPLOY_TRACKS[wc.track]
    ckpt = {"cls_ptq": cls_checkpoint, "sr_ptq": sr_checkpoint}[wc.track](wc)
    return {"ckpt": ckpt, "stats": layout.calib("stats.pt", wc.seed, wc.backbone),
            "assignments": [layout.job("assignment.yaml", DQSS_METHOD, w, a, wc.seed, wc.backbone)
                            for w, a in cfg.bits]}


rule deploy_check:
    """The DQSS and best uniform models of one backbone in ONNX Runtime (int8 QDQ) vs fake quantization."""
    input:
        unpack(deploy_inputs),
    output:
        table="results/deploy/{track}/{backbone}_seed{seed}.csv",
    wildcard_constraints:
        track="cls_ptq|sr_ptq",
    params:
        track=lambda wc: wc.track,
        settings=lambda wc: job_settings(TRACK[wc.track], "deploy", wc.backbone),
        device="cpu",  # ONNX Runtime's CPU execution provider, against the PyTorch model on the CPU
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/deploy/{track}/{backbone}_seed{seed}.log",
    benchmark:
        "benchmarks/deploy/{track}/{backbone}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=120,
    script:
        "../scripts/deploy_check.py"


rule deploy_summary:
    """Every backbone's deployment check in one table."""
    input:
        deploy_tables(),
    output:
        "results/deploy/deploy.csv",
    conda:
        ENV
    log:
        "logs/deploy/summary.log",
    script:
        "../scripts/deploy_summary.py"
