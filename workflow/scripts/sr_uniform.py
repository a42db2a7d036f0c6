from dqss.sr_ptq import run_uniform
from dqss.workflow import job_config, setup

device = setup(snakemake)
files = iter(snakemake.output)
outputs = {tuple(k): (next(files), next(files)) for k in snakemake.params.jobs}
run_uniform(job_config(snakemake), snakemake.wildcards.backbone, int(snakemake.wildcards.seed),
            snakemake.input.get("ckpt") or None, snakemake.input.stats, outputs, device)
