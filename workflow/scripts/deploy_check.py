from dqss.workflow import run_job, track_job

run_job(snakemake, track_job(snakemake.wildcards.track, "deploy"))
