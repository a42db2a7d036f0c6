import logging
import sys

from dqss.results import gather

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
df = gather(snakemake.input, expected=snakemake.params.expected)
df.to_csv(snakemake.output[0], index=False)
logging.info("%d rows from %d jobs", len(df), len(snakemake.input))
