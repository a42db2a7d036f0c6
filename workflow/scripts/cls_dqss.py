from dqss.tracks.cls_ptq import run_dqss
from dqss.workflow import run_job

run_job(snakemake, run_dqss)
