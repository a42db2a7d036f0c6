from dqss.tracks.cls_ptq import run_reconstruct
from dqss.workflow import run_job

run_job(snakemake, run_reconstruct)
