import logging
import sys

from dqss.results import gather, write_frame

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
df = gather(snakemake.input, expected=snakemake.params.expected)
write_frame(snakemake.output[0], df)
logging.info("%d rows from %d jobs", len(df), len(snakemake.input))
