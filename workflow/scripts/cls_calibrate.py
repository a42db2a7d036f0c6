from dqss.cls_ptq import run_calibrate
from dqss.workflow import job_config, setup

device = setup(snakemake)
run_calibrate(job_config(snakemake), snakemake.wildcards.backbone, int(snakemake.wildcards.seed),
              snakemake.input.get("ckpt") or None, snakemake.output.stats, snakemake.output.images, device)
