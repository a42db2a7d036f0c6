from dqss.deploy_check import run_deploy
from dqss.workflow import run_job

run_job(snakemake, run_deploy)
