import _repo  # noqa: F401  (puts the repository's library on sys.path)
from dqss.sr_ptq import run_dqss
from dqss.workflow import job_config, setup

device = setup(snakemake)
wc, out = snakemake.wildcards, snakemake.output
run_dqss(job_config(snakemake), wc.backbone, int(wc.seed), int(wc.w), int(wc.a), snakemake.input.get("ckpt") or None,
         snakemake.input.stats, snakemake.input.crops, out.metrics, out.assignment, out.history, out.crop, device)
