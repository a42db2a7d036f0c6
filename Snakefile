# DQSS quantization benchmark suite.
#   snakemake --cores all                                 embedded default (CPU, minutes); with the deployment
#                                                         check in ONNX Runtime (results/deploy/deploy.csv)
#   snakemake --cores all --configfile config/paper.yaml  the paper's setting (GPU, datasets)
#   snakemake --cores all reconstruction                  the reconstruction baselines (AdaRound, BRECQ, QDrop) and
#                                                         dqss_recon, beside every default row: results/reconstruction/
#   snakemake --cores 1 paper_tables [--configfile ...]   the paper's tables from results/metrics.csv alone
#                                                         (results/paper/{cls_ptq,cls_qat,sr_ptq}.{md,tex};
#                                                         layout: paper_tables: in the config; not part of all)
from snakemake.utils import min_version

min_version("9.0")

# Snakemake 9 puts the interpreter's path into the shell command of every `script:` job (and of every
# spawned job) without quoting it: in a checkout whose path has a space, every job failed with exit
# status 127 and an empty log.  The quoted path is the same interpreter, and a shell reads it as one word.
import shlex as _shlex
import sys as _sys

if _shlex.quote(_sys.executable) != _sys.executable:
    _sys.executable = _shlex.quote(_sys.executable)

# The library (dqss/, baselines/) is an installed package: ./suite, environment.yml and
# workflow/envs/dqss.yaml install this repository editable (pip install -e .).
try:
    from dqss.workflow import load_config_data, refuse_templates
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] != "dqss":
        raise
    raise ModuleNotFoundError(
        "the workflow's library 'dqss' is not installed in the Python that runs Snakemake. "
        "Install this repository into it from the repository root with `pip install -e .` "
        "(or `conda env create -f environment.yml`), or run `./suite run`, which sets up .venv "
        "and runs the workflow in it."
    ) from None


# Configs are plain data.  A file with a top-level __use_yte__ is a YTE template, whose `?` expressions Snakemake
# runs as Python code when it loads the file: a --configfile has been loaded before this line (its code has run;
# ./suite run refuses it before), but the plan stops here.
refuse_templates(workflow.overwrite_configfiles, evaluated=True)

# The embedded default only when no --configfile is given: a config file replaces it rather than
# being deep-merged over it (which would add the default's backbones to the user's).
if not workflow.overwrite_configfiles:
    # read as plain data before the directive evaluates it: a syntax error names the file, line and column,
    # and a YTE template is refused before any of its code runs
    load_config_data("config/config.yaml")

    configfile: "config/config.yaml"


# Snakemake's own report (snakemake --report report.html): workflow/report/*.rst
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# each track the config has (dqss.tracks registers them, one module each): its rules file workflow/rules/<name>.smk
for _track in CONFIGURED:

    include: _track.rules


include: "workflow/rules/deploy.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/benchmark.smk"


# Rules that run where Snakemake runs, never as cluster jobs (--executor slurm): light work on the finished
# results.  profiles/gpu and profiles/slurm give every other rule its threads, memory and runtime.
localrules:
    all,
    aggregate,
    report,
    reconstruction,
    reconstruction_aggregate,
    reconstruction_report,
    deploy_summary,


rule all:
    default_target: True
    input:
        "results/metrics.csv",
        "results/report/report.md",
        DEPLOY_SUMMARY,
        # every job's own results as targets too: Snakemake does not recompute a missing file whose consumers
        # (the aggregate, the report) are up to date, so a deleted job directory would otherwise stay deleted
        all_metric_files(),
        all_assignments(),
        all_selections(),
        all_histories(),
        all_crops(),
        deploy_tables(),
