# Not part of `all`: timings need the machine to themselves.
#   snakemake --cores all benchmark_mixed_conv


rule benchmark_mixed_conv:
    """Search-step time and peak memory of the efficient vs naive mixture, N = 1..8."""
    output:
        "results/benchmarks/mixed_conv.csv",
    conda:
        ENV
    log:
        "logs/benchmark_mixed_conv.log",
    benchmark:
        "benchmarks/benchmark_mixed_conv.tsv"
    threads: lambda wildcards: workflow.cores  # a callable: --unlock and --lint need no --cores
    resources:
        gpu=GPU,
        mem_mb=16000,
        runtime=60,
    params:
        device=DEVICE,
    shell:
        "python -m dqss.bench.mixed --out {output} --device {params.device} > {log} 2>&1"


rule benchmark_qat_step:
    """One DQSS-QAT training step with every candidate vs one step of each QAT method."""
    output:
        "results/benchmarks/qat_step.csv",
    conda:
        ENV
    log:
        "logs/benchmark_qat_step.log",
    benchmark:
        "benchmarks/benchmark_qat_step.tsv"
    threads: lambda wildcards: workflow.cores  # a callable: --unlock and --lint need no --cores
    resources:
        gpu=GPU,
        mem_mb=16000,
        runtime=60,
    params:
        device=DEVICE,
    shell:
        "python -m dqss.bench.qat --out {output} --device {params.device} > {log} 2>&1"


rule benchmark_gpu:
    """On ImageNet-sized inputs (resnet50, 224x224, batch 64, random weights; config/paper.yaml's candidates):
    one search step and one selection sweep against one FP training step, one DQSS-QAT step against one LSQ step."""
    output:
        "results/benchmarks/gpu.csv",
    conda:
        ENV
    log:
        "logs/benchmark_gpu.log",
    benchmark:
        "benchmarks/benchmark_gpu.tsv"
    threads: lambda wildcards: workflow.cores  # a callable: --unlock and --lint need no --cores
    resources:
        gpu=GPU,
        mem_mb=32000,
        runtime=60,
    params:
        device=DEVICE,
    shell:
        "python -m dqss.bench.gpu --config config/paper.yaml --out {output} --device {params.device} > {log} 2>&1"
