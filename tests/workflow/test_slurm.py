"""A real SLURM run: `snakemake --profile profiles/slurm` submits the tiny config's jobs to a SLURM controller
(in CI the one-node cluster that .ci/slurm-up starts), and its results/metrics.csv equals the local run's.

Skipped where no SLURM controller answers or the executor plugin is missing; under CI (CI=true) that is a
failure instead, since .ci/run starts the cluster and installs the plugin."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import ROOT, SNAKEMAKE

pytestmark = pytest.mark.slow

RUN_LIMIT = 1500  # seconds: the run is killed past this (the plugin polls sacct for ever if accounting is off)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _answers(*cmd: str) -> str | None:
    """None when the command succeeds, else why not."""
    if shutil.which(cmd[0]) is None:
        return f"`{cmd[0]}` is not installed"
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` did not answer within 30 s"
    if res.returncode != 0:
        return f"`{' '.join(cmd)}` failed: {first_line(res.stderr or res.stdout)}"
    return None


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "(no output)")


def missing_slurm() -> list[str]:
    """Why the SLURM run cannot happen here (empty when it can)."""
    why = []
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        why.append("the SLURM executor plugin is not installed (pip install -e .[slurm])")
    ping = _answers("scontrol", "ping")
    if ping is None:
        state = subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout
        ping = None if "UP" in state else f"no SLURM controller is up (`scontrol ping`: {first_line(state)})"
    why += [w for w in (ping, _answers("sinfo"), _answers("sacct", "-n", "-X", "-S", "now")) if w]
    return why


@pytest.fixture(scope="session")
def slurm_ready():
    why = missing_slurm()
    if why and IN_CI:
        pytest.fail("CI runs the SLURM test, but " + "; ".join(why) +
                    ". .ci/run starts a one-node cluster with .ci/slurm-up and installs the plugin with "
                    "pip install -e '.[slurm]'; see their output above.")
    if why:
        pytest.skip("no SLURM here: " + "; ".join(why) + " (.ci/slurm-up starts a one-node cluster as root)")


def ci_overrides() -> list[str]:
    """The command line's changes to profiles/slurm for the tiny run on a small node: 1 thread per job, as the
    local run (torch's results can depend on its thread count, and metrics.csv records it), and memory and
    runtime that fit; the first status check after 5 s rather than 40 (the jobs take seconds).  The executor,
    jobs, latency-wait, partition and the Snakefile's localrules stay as the profile and workflow say."""
    prof = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    rules = sorted(prof["set-threads"])
    return ["--set-threads", *(f"{r}=1" for r in rules),
            "--set-resources", *(f"{r}:{k}={v}" for r in rules for k, v in (("mem_mb", 2000), ("runtime", 30))),
            "--slurm-init-seconds-before-status-checks", "5"]


@pytest.fixture(scope="module")
def slurm_run(slurm_ready, tmp_path_factory):
    """The tiny config through profiles/slurm: (work dir, combined output, seconds, submission start)."""
    work = tmp_path_factory.mktemp("slurm")
    start = datetime.now() - timedelta(seconds=5)
    cmd = ["timeout", "-k", "30", str(RUN_LIMIT), *SNAKEMAKE, "--profile", "profiles/slurm",
           "--configfile", "config/test.yaml", "--directory", str(work), *ci_overrides()]
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.monotonic() - t0
    if res.returncode in (124, 137):
        pytest.fail(f"the SLURM run was killed after {RUN_LIMIT} s (does sacct know its jobs? accounting must "
                    f"be on):\n{res.stdout[-4000:]}")
    assert res.returncode == 0, f"the SLURM run failed:\n{res.stdout[-6000:]}"
    yield work, res.stdout, seconds, start
    shutil.rmtree(work / ".snakemake", ignore_errors=True)


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


def test_slurm_run_matches_the_local_run(slurm_ready, slurm_run, tiny_run, capsys, record_property):
    """The tiny config through profiles/slurm: every compute job a completed SLURM job, metrics.csv equal to
    the local run's.  (slurm_ready is asked for first: no local run where the SLURM run is skipped.)"""
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

    # the same numbers as the local run, in every column (same code, checkout, machine and threads: nothing
    # legitimately differs, so nothing is excluded)
    local_work, _ = tiny_run
    ours = pd.read_csv(work / "results/metrics.csv")
    theirs = pd.read_csv(local_work / "results/metrics.csv")
    differing = [c for c in theirs.columns if c not in ours or not ours[c].equals(theirs[c])]
    assert list(ours.columns) == list(theirs.columns) and not differing, (
        f"columns that differ from the local run: {differing}")
    pd.testing.assert_frame_equal(ours, theirs)
    assert (work / "results/report/report.md").is_file()
