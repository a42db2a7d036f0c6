from dqss.sr_ptq import run_dqss
from dqss.workflow import job_config, setup

device = setup(snakemake)
wc = snakemake.wildcards
run_dqss(job_config(snakemake), backbone=wc.backbone, seed=int(wc.seed), w=int(wc.w), a=int(wc.a),
         checkpoint=snakemake.input.get("ckpt") or None, stats=snakemake.input.stats, crops=snakemake.input.crops,
         **dict(snakemake.output.items()), device=device)
