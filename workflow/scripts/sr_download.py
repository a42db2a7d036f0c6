import _repo  # noqa: F401  (puts the repository's library on sys.path)
from dqss.sr_ptq import run_download
from dqss.workflow import setup, track_of

setup(snakemake)
run_download(track_of(snakemake), snakemake.wildcards.backbone, snakemake.output[0])
