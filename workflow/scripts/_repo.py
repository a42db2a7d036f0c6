"""Make the repository's library importable in a job, whatever environment runs it.

Snakemake puts this directory on ``sys.path`` of every script; the library is two
levels up.  An installed ``dqss`` (pip install -e .) resolves to the same files.
"""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
