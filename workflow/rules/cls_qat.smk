# Classification QAT: FP model -> every QAT method and DQSS-QAT, one recipe for all.


rule cls_qat_train:
    """Train a full-precision backbone for the QAT track."""
    output:
        ckpt=QAT.model(),
        history=QAT.model("train.csv"),
    params:
        track="cls_qat",
        settings=settings("cls_qat", "train"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/cls_qat/{backbone}/train.log",
    benchmark:
        "benchmarks/cls_qat/{backbone}/train.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=600,
    script:
        "../scripts/cls_train.py"


rule cls_qat_evaluate_fp:
    """Measure the FP model of the QAT track and keep its logits."""
    input:
        ckpt=qat_checkpoint,
    output:
        metrics=QAT.fp("metrics.json"),
        logits=QAT.fp("logits.pt"),
    params:
        track="cls_qat",
        settings=settings("cls_qat", "evaluate_fp"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/cls_qat/{backbone}/fp32_seed{seed}.log",
    benchmark:
        "benchmarks/cls_qat/{backbone}/fp32_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/cls_evaluate_fp.py"


rule cls_qat_uniform:
    """Quantization-aware training with one QAT method on every layer."""
    input:
        ckpt=qat_checkpoint,
        fp=QAT.fp("logits.pt", CLS_QAT.train.seed if CLS_QAT else 0),
    output:
        metrics=QAT.job("metrics.json"),
        history=QAT.job("train.csv"),
    wildcard_constraints:
        method=qat_methods_pattern(),
    params:
        track="cls_qat",
        settings=settings("cls_qat", "uniform"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/cls_qat/{backbone}/{method}_w{w}a{a}_seed{seed}.log",
    benchmark:
        "benchmarks/cls_qat/{backbone}/{method}_w{w}a{a}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=1440,
    script:
        "../scripts/cls_qat.py"


rule cls_qat_dqss:
    """DQSS-QAT: strategies, quantizers and weights trained in one pass (with or without the fix); the frozen
    assignment is chosen by dqss.algorithms.select."""
    input:
        ckpt=qat_checkpoint,
        fp=QAT.fp("logits.pt", CLS_QAT.train.seed if CLS_QAT else 0),
    output:
        metrics=QAT.job("metrics.json"),
        history=QAT.job("train.csv"),
        assignment=QAT.job("assignment.yaml"),
        selection=QAT.job("selection.json"),
    wildcard_constraints:
        method=f"{DQSS_METHOD}|{DQSS_NOFIX}",
    params:
        track="cls_qat",
        settings=settings("cls_qat", "dqss"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/cls_qat/{backbone}/{method}_w{w}a{a}_seed{seed}.log",
    benchmark:
        "benchmarks/cls_qat/{backbone}/{method}_w{w}a{a}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=1440,
    script:
        "../scripts/cls_qat.py"


rule cls_qat_retrain:
    """The frozen DQSS-QAT assignment retrained from the FP checkpoint for the full schedule (dqss_retrain)."""
    input:
        ckpt=qat_checkpoint,
        fp=QAT.fp("logits.pt", CLS_QAT.train.seed if CLS_QAT else 0),
        dqss_assignment=QAT.job("assignment.yaml", DQSS_METHOD),
    output:
        metrics=QAT.job("metrics.json"),
        history=QAT.job("train.csv"),
    wildcard_constraints:
        method=DQSS_RETRAIN,
    params:
        track="cls_qat",
        settings=settings("cls_qat", "dqss"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/cls_qat/{backbone}/{method}_w{w}a{a}_seed{seed}.log",
    benchmark:
        "benchmarks/cls_qat/{backbone}/{method}_w{w}a{a}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=1440,
    script:
        "../scripts/cls_qat.py"
