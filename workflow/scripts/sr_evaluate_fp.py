from dqss.tracks.sr_ptq import run_evaluate_fp
from dqss.workflow import run_job

run_job(snakemake, run_evaluate_fp)
