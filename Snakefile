# DQSS quantization benchmark suite.
#   snakemake --cores all                                 embedded default (CPU, minutes)
#   snakemake --cores all --configfile config/paper.yaml  the paper's setting (GPU, datasets)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
if CLS_PTQ:

    include: "workflow/rules/cls_ptq.smk"


if CLS_QAT:

    include: "workflow/rules/cls_qat.smk"


if SR_PTQ:

    include: "workflow/rules/sr_ptq.smk"


include: "workflow/rules/report.smk"
include: "workflow/rules/benchmark.smk"


rule all:
    default_target: True
    input:
        "results/metrics.csv",
        "results/report/report.md",
