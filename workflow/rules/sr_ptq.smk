# Super-resolution PTQ: FP network -> shared calibration -> uniform baselines and DQSS, PSNR/SSIM per test set.


rule sr_download_weights:
    """Fetch a backbone's official pretrained weights and check their SHA-256."""
    output:
        weights=f"{SR_PTQ.weights_dir}/{{backbone}}.pth",
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "download"),
    conda:
        ENV
    log:
        "logs/sr_ptq/{backbone}/download.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    script:
        "../scripts/sr_download.py"


# the download needs the network, which cluster compute nodes often lack
localrules:
    sr_download_weights,


rule sr_train:
    """Train a tiny full-precision SR network on crops of the embedded training photos."""
    output:
        ckpt=SR.model(),
        history=SR.model("train.csv"),
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "train"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/sr_ptq/{backbone}/train.log",
    benchmark:
        "benchmarks/sr_ptq/{backbone}/train.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=120,
    script:
        "../scripts/sr_train.py"


rule sr_evaluate_fp:
    """PSNR/SSIM of the FP network and of bicubic upsampling on every test set, and the figure's crops."""
    input:
        ckpt=sr_checkpoint,
    output:
        fp=SR.fp("metrics.json"),
        bicubic=SR.fp("metrics.json", method=BICUBIC_METHOD),
        gt_crop=SR.fp("crop_gt.png"),
        fp_crop=SR.fp("crop.png"),
        bicubic_crop=SR.fp("crop.png", method=BICUBIC_METHOD),
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "evaluate_fp"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/sr_ptq/{backbone}/fp32_seed{seed}.log",
    benchmark:
        "benchmarks/sr_ptq/{backbone}/fp32_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/sr_evaluate_fp.py"


rule sr_calibrate:
    """Two passes over the seed's calibration crops (training images only): statistics for every strategy."""
    input:
        ckpt=sr_checkpoint,
    output:
        stats=SR.calib("stats.pt"),
        crops=SR.calib("crops.txt"),
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "calibrate"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/sr_ptq/{backbone}/calibrate_seed{seed}.log",
    benchmark:
        "benchmarks/sr_ptq/{backbone}/calibrate_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/sr_calibrate.py"


rule sr_uniform:
    """Every registered strategy applied uniformly to all quantized layers, at every bit width."""
    input:
        ckpt=sr_checkpoint,
        stats=rules.sr_calibrate.output.stats,
    output:
        [f for files in sr_uniform_outputs().values() for f in files],
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "uniform"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
        jobs=list(sr_uniform_outputs()),
    conda:
        ENV
    log:
        "logs/sr_ptq/{backbone}/uniform_seed{seed}.log",
    benchmark:
        "benchmarks/sr_ptq/{backbone}/uniform_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=240,
    script:
        "../scripts/sr_uniform.py"


rule sr_dqss:
    """DQSS search (L1 to the FP output on calibration crops); the measured selection (dqss) and the argmax
    (dqss_argmax) on every test set."""
    input:
        ckpt=sr_checkpoint,
        stats=rules.sr_calibrate.output.stats,
        crops=rules.sr_calibrate.output.crops,
    output:
        metrics=SR.job("metrics.json", DQSS_METHOD),
        assignment=SR.job("assignment.yaml", DQSS_METHOD),
        history=SR.job("search.csv", DQSS_METHOD),
        selection=SR.job("selection.json", DQSS_METHOD),
        crop=SR.job("crop.png", DQSS_METHOD),
        argmax_metrics=SR.job("metrics.json", DQSS_ARGMAX),
        argmax_assignment=SR.job("assignment.yaml", DQSS_ARGMAX),
        argmax_crop=SR.job("crop.png", DQSS_ARGMAX),
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "dqss"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/sr_ptq/{backbone}/dqss_w{w}a{a}_seed{seed}.log",
    benchmark:
        "benchmarks/sr_ptq/{backbone}/dqss_w{w}a{a}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=240,
    script:
        "../scripts/sr_dqss.py"


rule sr_reconstruct:
    """A reconstruction baseline (AdaRound, BRECQ, QDrop) on the calibration crops; its frozen quantizers kept."""
    input:
        ckpt=sr_checkpoint,
        stats=rules.sr_calibrate.output.stats,
        crops=rules.sr_calibrate.output.crops,
    output:
        metrics=SR.job("metrics.json"),
        crop=SR.job("crop.png"),
        state=SR.job("reconstruction.pt"),
        history=SR.job("reconstruction.csv"),
    wildcard_constraints:
        method=recon_pattern("sr_ptq"),
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "reconstruct"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/sr_ptq/{backbone}/{method}_w{w}a{a}_seed{seed}.log",
    benchmark:
        "benchmarks/sr_ptq/{backbone}/{method}_w{w}a{a}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=240,
    script:
        "../scripts/sr_reconstruct.py"


rule sr_dqss_recon:
    """DQSS with the reconstructed methods as frozen candidates beside the range strategies (dqss_recon)."""
    input:
        ckpt=sr_checkpoint,
        stats=rules.sr_calibrate.output.stats,
        crops=rules.sr_calibrate.output.crops,
        recon=recon_states(SR, SR_PTQ),
    output:
        metrics=SR.job("metrics.json", DQSS_RECON),
        assignment=SR.job("assignment.yaml", DQSS_RECON),
        history=SR.job("search.csv", DQSS_RECON),
        selection=SR.job("selection.json", DQSS_RECON),
        crop=SR.job("crop.png", DQSS_RECON),
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "dqss_recon"),
        device=DEVICE,
        cpu_kernels=CPU_KERNELS,
    conda:
        ENV
    log:
        "logs/sr_ptq/{backbone}/dqss_recon_w{w}a{a}_seed{seed}.log",
    benchmark:
        "benchmarks/sr_ptq/{backbone}/dqss_recon_w{w}a{a}_seed{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=240,
    script:
        "../scripts/sr_dqss_recon.py"
