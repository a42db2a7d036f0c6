from dqss.sr_ptq import run_download
from dqss.workflow import job_config, setup

setup(snakemake)
run_download(job_config(snakemake), snakemake.wildcards.backbone, snakemake.output[0])
