import logging
import sys
from pathlib import Path

from dqss.report import write_report

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
# the deployment check's summary: the main report takes it, the reconstruction report has none
deploy = list(getattr(snakemake.input, "deploy", []))
write_report(snakemake.input.metrics, list(snakemake.input.assignments), Path(snakemake.output[0]).parent,
             list(snakemake.input.histories), list(snakemake.input.crops), job_paths=list(snakemake.input.jobs),
             selection_paths=list(snakemake.input.selections),
             deploy_path=deploy[0] if deploy else None)
