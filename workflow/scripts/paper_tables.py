import logging
import sys
from pathlib import Path

from dqss.report.paper import write_paper_tables

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
write_paper_tables(snakemake.input[0], snakemake.params.layouts, Path(snakemake.output[0]).parent,
                   kinds=snakemake.params.kinds)
