"""The unit tier starts no Snakemake (tests/unit/conftest.py): neither in a subprocess nor through
helpers.snakemake, whose runs are forked from a server (tests/snakefork.py) a workflow test may have started."""
from __future__ import annotations

import subprocess
import sys

import pytest

import helpers


def test_helpers_snakemake_is_refused():
    with pytest.raises(AssertionError, match="move it into tests/workflow/"):
        helpers.snakemake("-n")
    with pytest.raises(AssertionError, match="move it into tests/workflow/"):
        helpers.snakemake_each([["-n"], ["--lint"]])


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "snakemake", "-n"], ["snakemake", "-n"],
                                 [sys.executable, str(helpers.ROOT / "tests/snakefork.py")]])
def test_subprocess_snakemake_is_refused(cmd):
    with pytest.raises(pytest.fail.Exception, match="move it into tests/workflow/"):
        subprocess.run(cmd, capture_output=True)
