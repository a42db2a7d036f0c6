from dqss.tracks.cls_ptq import run_uniform
from dqss.workflow import run_job

# one metrics file per (strategy, W, A) of params.jobs, in the order of the rule's outputs
run_job(snakemake, run_uniform, outputs=dict(zip(map(tuple, snakemake.params.jobs), snakemake.output)))
