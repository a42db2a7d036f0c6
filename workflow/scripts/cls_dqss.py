import _repo  # noqa: F401  (puts the repository's library on sys.path)
from dqss.cls_ptq import run_dqss
from dqss.workflow import job_config, setup

device = setup(snakemake)
wc = snakemake.wildcards
run_dqss(job_config(snakemake), wc.backbone, int(wc.seed), int(wc.w), int(wc.a),
         snakemake.input.get("ckpt") or None, snakemake.input.stats, snakemake.input.fp,
         snakemake.output.metrics, snakemake.output.assignment, snakemake.output.history, device)
