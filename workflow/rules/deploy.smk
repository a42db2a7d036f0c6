# Deployment check (part of all): the DQSS assignment and the held-best uniform strategy of each PTQ backbone, at
# every bit width, exported to ONNX (QuantizeLinear/DequantizeLinear with the suite's scales) and run as integers by
# ONNX Runtime's CPU execution provider against the fake-quantized model: results/deploy/deploy.csv, a report table.


rule deploy_check:
    """The DQSS and best uniform models of one backbone in ONNX Runtime (int8 QDQ) vs fake quantization."""
    input:
        unpack(deploy_inputs),
    output:
        table="results/deploy/{track}/{backbone}_seed{seed}.csv",
    wildcard_constraints:
        track=DEPLOY_PATTERN,  # the tracks with a deployment check (dqss.tracks: Track.deploy)
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
