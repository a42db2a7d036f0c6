from dqss.sr_ptq import run_evaluate_fp
from dqss.workflow import job_config, setup

device = setup(snakemake)
out = snakemake.output
run_evaluate_fp(job_config(snakemake), snakemake.wildcards.backbone, snakemake.input.get("ckpt") or None, out.fp,
                out.bicubic, {"gt": out.gt_crop, "fp": out.fp_crop, "bicubic": out.bicubic_crop}, device,
                seed=int(snakemake.wildcards.seed))
