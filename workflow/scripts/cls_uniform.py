from dqss.cls_ptq import run_uniform
from dqss.workflow import job_config, setup

device = setup(snakemake)
outputs = {tuple(k): path for k, path in zip(snakemake.params.jobs, snakemake.output)}
run_uniform(job_config(snakemake), snakemake.wildcards.backbone, int(snakemake.wildcards.seed),
            snakemake.input.get("ckpt") or None, snakemake.input.stats, snakemake.input.fp, outputs, device)
