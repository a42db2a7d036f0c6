# Classification PTQ: FP model -> shared calibration -> uniform baselines and DQSS.


rule cls_train:
    """Train a full-precision backbone on the embedded data."""
    output:
        ckpt=CLS.model(),
        history=CLS.model("train.csv"),
    params:
        track="cls_ptq",
        settings=settings("cls_ptq", "train"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
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
        metrics=CLS.fp("metrics.json"),
        logits=CLS.fp("logits.pt"),
    params:
        track="cls_ptq",
        settings=settings("cls_ptq", "evaluate_fp"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
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
    """Calibration statistics (two passes over the draw: range, then histograms), shared by every strategy."""
    input:
        ckpt=cls_checkpoint,
    output:
        stats=CLS.calib("stats.pt"),
        images=CLS.calib("images.txt"),
    params:
        track="cls_ptq",
        settings=settings("cls_ptq", "calibrate"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
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
        fp=CLS.fp("logits.pt", CLS_PTQ.train.seed),
    output:
        list(uniform_outputs().values()),
    params:
        track="cls_ptq",
        settings=settings("cls_ptq", "uniform"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
        jobs=list(uniform_outputs()),
    conda:
        ENV
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
    """DQSS search of per-layer strategies; the measured selection (dqss) and the argmax (dqss_argmax) evaluated."""
    input:
        ckpt=cls_checkpoint,
        stats=rules.cls_calibrate.output.stats,
        fp=CLS.fp("logits.pt", CLS_PTQ.train.seed),
    output:
        metrics=CLS.job("metrics.json", DQSS_METHOD),
        assignment=CLS.job("assignment.yaml", DQSS_METHOD),
        history=CLS.job("search.csv", DQSS_METHOD),
        selection=CLS.job("selection.json", DQSS_METHOD),
        argmax_metrics=CLS.job("metrics.json", DQSS_ARGMAX),
        argmax_assignment=CLS.job("assignment.yaml", DQSS_ARGMAX),
    params:
        track="cls_ptq",
        settings=settings("cls_ptq", "dqss"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
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


rule cls_reconstruct:
    """A reconstruction baseline (AdaRound, BRECQ, QDrop) on the calibration draw; its frozen quantizers kept."""
    input:
        ckpt=cls_checkpoint,
        stats=rules.cls_calibrate.output.stats,
        fp=CLS.fp("logits.pt", CLS_PTQ.train.seed),
    output:
        metrics=CLS.job("metrics.json"),
        state=CLS.job("reconstruction.pt"),
        history=CLS.job("reconstruction.csv"),
    wildcard_constraints:
        method=recon_pattern("cls_ptq"),
    params:
        track="cls_ptq",
        settings=settings("cls_ptq", "reconstruct"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/cls_ptq/{backbone}/{method}_w{w}a{a}_seed{seed}.log",
    benchmark:
        "benchmarks/cls_ptq/{backbone}/{method}_w{w}a{a}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=240,
    script:
        "../scripts/cls_reconstruct.py"


rule cls_dqss_recon:
    """DQSS with the reconstructed methods as frozen candidates beside the range strategies (dqss_recon)."""
    input:
        ckpt=cls_checkpoint,
        stats=rules.cls_calibrate.output.stats,
        fp=CLS.fp("logits.pt", CLS_PTQ.train.seed),
        recon=recon_states(CLS, CLS_PTQ),
    output:
        metrics=CLS.job("metrics.json", DQSS_RECON),
        assignment=CLS.job("assignment.yaml", DQSS_RECON),
        history=CLS.job("search.csv", DQSS_RECON),
        selection=CLS.job("selection.json", DQSS_RECON),
    params:
        track="cls_ptq",
        settings=settings("cls_ptq", "dqss_recon"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/cls_ptq/{backbone}/dqss_recon_w{w}a{a}_seed{seed}.log",
    benchmark:
        "benchmarks/cls_ptq/{backbone}/dqss_recon_w{w}a{a}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=240,
    script:
        "../scripts/cls_dqss_recon.py"
