from dqss.cls_ptq import run_evaluate_fp
from dqss.workflow import job_config, setup

device = setup(snakemake)
run_evaluate_fp(job_config(snakemake), snakemake.wildcards.backbone, snakemake.input.get("ckpt") or None,
                snakemake.output.metrics, snakemake.output.logits, device, seed=int(snakemake.wildcards.seed))
