from dqss.tracks.cls_qat import run_qat
from dqss.workflow import run_job

run_job(snakemake, run_qat)
