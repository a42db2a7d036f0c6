from dqss.tracks.cls_ptq import run_dqss_recon
from dqss.workflow import run_job

run_job(snakemake, run_dqss_recon)
