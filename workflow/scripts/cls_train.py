import _repo  # noqa: F401  (puts the repository's library on sys.path)
from dqss.cls_ptq import run_train
from dqss.workflow import cls_ptq_config, setup

device = setup(snakemake)
run_train(cls_ptq_config(snakemake), snakemake.wildcards.backbone, snakemake.output.ckpt,
          snakemake.output.history, device)
