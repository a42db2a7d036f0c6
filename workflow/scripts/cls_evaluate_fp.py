from dqss.tracks.classification import run_evaluate_fp
from dqss.workflow import run_job

run_job(snakemake, run_evaluate_fp)
