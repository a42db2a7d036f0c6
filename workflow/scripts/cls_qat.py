from dqss.cls_qat import run_qat
from dqss.workflow import job_config, setup

device = setup(snakemake)
wc, out = snakemake.wildcards, snakemake.output
run_qat(job_config(snakemake), wc.backbone, wc.method, int(wc.seed), int(wc.w), int(wc.a),
        snakemake.input.get("ckpt") or None, snakemake.input.fp, out.metrics, out.history, device,
        out.get("assignment"), out_selection=out.get("selection"), assignment=snakemake.input.get("assignment"))
