from dqss.cls_ptq import run_train
from dqss.workflow import job_config, setup

device = setup(snakemake)
run_train(job_config(snakemake), snakemake.wildcards.backbone, snakemake.output.ckpt, snakemake.output.history,
          device)
