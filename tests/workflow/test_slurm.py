"""A real SLURM run: `snakemake --profile profiles/slurm` submits the tiny config's jobs to a SLURM controller
(in CI the one-node cluster that .ci/slurm-up starts), every compute job completes there, and its
results/metrics.csv holds the checked-in reference numbers (tests/reference/tiny_metrics.csv), the numbers a
local run gives (test_workflow.py::test_tiny_run_matches_the_reference checks a local run against the same file).

The run is the session's one run of the tiny config (tests/conftest.py starts it through SLURM when this test is
selected and a controller answers), so the tiny config is not run twice.  Skipped where no SLURM controller
answers or the executor plugin is missing; under CI (CI=true) that is a failure instead, since .ci/run starts the
cluster and installs the plugin."""
from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from helpers import IN_CI, TINY_REFERENCE, tiny_reference_moved

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def slurm_ready(slurm_missing):
    why = slurm_missing
    if why and IN_CI:
        pytest.fail("CI runs the SLURM test, but " + "; ".join(why) +
                    ". .ci/run starts a one-node cluster with .ci/slurm-up and installs the plugin with "
                    "pip install -e '.[slurm]'; see their output above.")
    if why:
        pytest.skip("no SLURM here: " + "; ".join(why) + " (.ci/slurm-up starts a one-node cluster as root)")


@pytest.fixture(scope="module")
def slurm_run(slurm_ready, tiny_run, tiny_run_info):
    """The tiny config through profiles/slurm: (work dir, combined output, seconds, submission start): the
    session's run, which tests/conftest.py starts through SLURM when this test is selected and SLURM is ready
    (slurm_ready judges the same record)."""
    assert tiny_run_info["executor"] == "slurm", tiny_run_info
    return tiny_run[0], tiny_run_info["log"], tiny_run_info["seconds"], datetime.fromisoformat(tiny_run_info["start"])


def sacct_jobs(work: Path, since: datetime) -> pd.DataFrame:
    """The jobs accounting has for the run's directory since it started: id, rule (from the plugin's job
    comment rule_<name>[_wildcards_...]), state."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since.strftime("%Y-%m-%dT%H:%M:%S"),
                          "-o", "JobID,Comment,WorkDir,State,AllocCPUS"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    df = pd.DataFrame(rows, columns=["jobid", "comment", "workdir", "state", "cpus"])
    df = df[df.workdir == str(work)].copy()
    df["rule"] = df.comment.str.extract(r"^rule_(\w+?)(?:_wildcards_.*)?$", expand=False)
    return df


def test_slurm_run_matches_the_local_run(slurm_ready, slurm_run, capsys, record_property):
    """The tiny config through profiles/slurm: every compute job a completed SLURM job, metrics.csv the reference
    numbers of a local run.  (slurm_ready is asked for first: no run is waited for where the test is skipped.)"""
    work, log, seconds, start = slurm_run
    jobs = sacct_jobs(work, start)
    # what Snakemake submitted (rule X) and ran itself (localrule X), from its log
    submitted = pd.Series(re.findall(r"^rule (\w+):$", log, flags=re.M)).value_counts().sort_index()
    local = set(re.findall(r"^localrule (\w+):$", log, flags=re.M))
    with capsys.disabled():
        print(f"\nSLURM run: {seconds:.0f} s, {len(jobs)} jobs submitted through SLURM "
              f"({len(local)} local rules: {', '.join(sorted(local))})")
    record_property("slurm_run_seconds", round(seconds, 1))
    record_property("slurm_jobs", len(jobs))

    assert re.search(r"^Using profiles? profiles/slurm\b", log, flags=re.M), log[:500]
    assert local == {"all", "aggregate", "report", "deploy_summary"}
    # every compute job went through SLURM, once, and finished there
    assert len(jobs) == submitted.sum() >= 15, jobs
    assert (jobs.state == "COMPLETED").all(), jobs
    assert (jobs.cpus == "1").all(), jobs
    assert jobs.rule.value_counts().sort_index().to_dict() == submitted.to_dict()

    # the numbers of a local run (same code and threads; the kernels pinned to AVX2): every cell of the
    # reference, under the reference check's per-metric tolerances (exact for top-1)
    moved = tiny_reference_moved(work)
    assert not moved, f"the SLURM run's numbers differ from a local run's ({TINY_REFERENCE}):\n{moved}"
    assert (work / "results/report/report.md").is_file()
