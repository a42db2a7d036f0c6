# DQSS quantization benchmark suite.
#   snakemake --cores all                                 embedded default (CPU, minutes)
#   snakemake --cores all --configfile config/paper.yaml  the paper's setting (GPU, datasets)
import sys

from snakemake.utils import min_version

min_version("9.0")
sys.path.insert(0, workflow.basedir)  # the library (dqss/, baselines/) sits next to this file

from dqss.workflow import load_yaml


# The embedded default only when no --configfile is given: a config file replaces it rather than
# being deep-merged over it (which would add the default's backbones to the user's).
if not workflow.overwrite_configfiles:
    load_yaml("config/config.yaml")  # a syntax error names the file, line and column

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
