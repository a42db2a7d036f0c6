from dqss.tracks.classification import run_train
from dqss.workflow import run_job

run_job(snakemake, run_train)
