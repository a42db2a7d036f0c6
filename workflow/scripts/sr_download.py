from dqss.tracks.sr_ptq import run_download
from dqss.workflow import run_job

run_job(snakemake, run_download)
