from dqss.tracks.sr_ptq import run_uniform
from dqss.workflow import run_job

# a (metrics.json, crop.png) pair per (strategy, W, A) of params.jobs, in the order of the rule's outputs
files = iter(snakemake.output)
run_job(snakemake, run_uniform, outputs={tuple(k): (next(files), next(files)) for k in snakemake.params.jobs})
