# Super-resolution PTQ: FP network -> shared calibration -> uniform baselines and DQSS, PSNR/SSIM per test set.


rule sr_download_weights:
    """Fetch a backbone's official pretrained weights and check their SHA-256."""
    output:
        f"{SR_PTQ.weights_dir}/{{backbone}}.pth",
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


rule sr_train:
    """Train a tiny full-precision SR network on crops of the embedded training photos."""
    output:
        ckpt=f"{SR}/fp32/model.pt",
        history=f"{SR}/fp32/train.csv",
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "train"),
        device=DEVICE,
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
        fp=f"{SR}/fp32/w32a32/seed{{seed}}/metrics.json",
        bicubic=f"{SR}/bicubic/w32a32/seed{{seed}}/metrics.json",
        gt_crop=f"{SR}/fp32/w32a32/seed{{seed}}/crop_gt.png",
        fp_crop=f"{SR}/fp32/w32a32/seed{{seed}}/crop.png",
        bicubic_crop=f"{SR}/bicubic/w32a32/seed{{seed}}/crop.png",
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "evaluate_fp"),
        device=DEVICE,
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
    """One pass over the seed's calibration crops (training images only): statistics for every strategy."""
    input:
        ckpt=sr_checkpoint,
    output:
        stats=f"{SR}/calib/seed{{seed}}/stats.pt",
        crops=f"{SR}/calib/seed{{seed}}/crops.txt",
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "calibrate"),
        device=DEVICE,
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
        [f"{d}/{f}" for d in sr_uniform_outputs().values() for f in ("metrics.json", "crop.png")],
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "uniform"),
        device=DEVICE,
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
        metrics=f"{SR}/dqss/w{{w}}a{{a}}/seed{{seed}}/metrics.json",
        assignment=f"{SR}/dqss/w{{w}}a{{a}}/seed{{seed}}/assignment.yaml",
        history=f"{SR}/dqss/w{{w}}a{{a}}/seed{{seed}}/search.csv",
        selection=f"{SR}/dqss/w{{w}}a{{a}}/seed{{seed}}/selection.json",
        crop=f"{SR}/dqss/w{{w}}a{{a}}/seed{{seed}}/crop.png",
        argmax_metrics=f"{SR}/dqss_argmax/w{{w}}a{{a}}/seed{{seed}}/metrics.json",
        argmax_assignment=f"{SR}/dqss_argmax/w{{w}}a{{a}}/seed{{seed}}/assignment.yaml",
        argmax_crop=f"{SR}/dqss_argmax/w{{w}}a{{a}}/seed{{seed}}/crop.png",
    params:
        track="sr_ptq",
        settings=settings("sr_ptq", "dqss"),
        device=DEVICE,
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
