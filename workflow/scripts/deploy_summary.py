import logging
import sys

from dqss.tracks.deploy import summarize_tables

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
summarize_tables(list(snakemake.input), snakemake.output[0])
