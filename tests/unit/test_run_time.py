"""dqss.bench.run_time: per-rule time, the critical path and the idle cores of a run, from Snakemake's log."""
from __future__ import annotations

import pytest

from dqss.bench import run_time
from helpers import ROOT

# a 2-core run: train (0-100 s) -> calibrate (100-110 s) -> two searches side by side (110-150 s and 110-130 s)
# -> report (150-155 s); "other" runs alone beside train (0-40 s)
LOG = """Building DAG of jobs...
Provided cores: 2
Rules claiming more threads will be scaled down.

[Mon Dec  7 10:00:00 2026]
localrule train:
    output: m.pt
    jobid: 1
    reason: Missing output files: m.pt
    resources: tmpdir=/tmp

[Mon Dec  7 10:00:00 2026]
localrule other:
    output: o.csv
    jobid: 6

[Mon Dec  7 10:00:40 2026]
Finished jobid: 6 (Rule: other)
1 of 6 steps (17%) done

[Mon Dec  7 10:01:40 2026]
Finished jobid: 1 (Rule: train)

[Mon Dec  7 10:01:40 2026]
localrule calibrate:
    input: m.pt
    output: s.pt
    jobid: 2

[Mon Dec  7 10:01:50 2026]
Finished jobid: 2 (Rule: calibrate)

[Mon Dec  7 10:01:50 2026]
localrule search:
    input: m.pt, s.pt
    output: a.json
    jobid: 3
    wildcards: w=4

[Mon Dec  7 10:01:50 2026]
localrule search:
    input: m.pt, s.pt
    output: b.json
    jobid: 4
    threads: 1

[Mon Dec  7 10:02:10 2026]
Finished jobid: 4 (Rule: search)

[Mon Dec  7 10:02:30 2026]
Finished jobid: 3 (Rule: search)

[Mon Dec  7 10:02:30 2026]
localrule report:
    input: a.json, b.json, o.csv
    output: r.md
    jobid: 5

[Mon Dec  7 10:02:35 2026]
Finished jobid: 5 (Rule: report)
"""


def test_jobs_and_rules_from_the_log():
    jobs, cores = run_time.parse_log(LOG)
    assert cores == 2 and sorted(jobs) == [1, 2, 3, 4, 5, 6]
    assert (jobs[3].rule, jobs[3].seconds, jobs[3].inputs) == ("search", 40, ["m.pt", "s.pt"])
    rows = {r["rule"]: r for r in run_time.per_rule(jobs)}
    assert rows["search"]["jobs"] == 2 and rows["search"]["seconds"] == 60 and rows["search"]["mean_seconds"] == 30
    assert run_time.per_rule(jobs)[0]["rule"] == "train"
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1)


def test_critical_path_follows_the_longest_chain():
    jobs, _ = run_time.parse_log(LOG)
    path = run_time.critical_path(jobs)
    assert [j.jobid for j in path] == [1, 2, 3, 5]  # the 40 s search, not the 20 s one; not "other"
    assert sum(j.seconds for j in path) == 155


def test_idle_cores():
    jobs, _ = run_time.parse_log(LOG)
    use = run_time.idle(jobs, 2)
    assert use["wall"] == 155 and use["busy"] == 40 + 100 + 10 + 40 + 20 + 5
    assert use["idle"] == 2 * 155 - use["busy"]
    # one job only: 40-100 s (train), 100-110 s (calibrate), 130-150 s (one search), 150-155 s (report)
    assert use["underfull"] == 60 + 10 + 20 + 5


def test_an_unfinished_job_is_left_out():
    jobs, _ = run_time.parse_log(LOG.split("[Mon Dec  7 10:02:35 2026]")[0])
    assert 5 not in jobs and len(jobs) == 5


def test_the_block_is_written_and_a_missing_block_refused(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- run-time -->\nold figures\n<!-- /run-time -->\nrest\n")
    (tmp_path / "run.log").write_text(LOG)
    assert run_time.main([str(tmp_path / "run.log"), "--write-block", str(doc), "--out", str(tmp_path / "r.csv")]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n<!-- run-time -->\nMeasured from the workflow's own log") and "old" not in text
    assert "6 jobs in 2 min 35 s of wall time on 2 cores" in text and text.endswith("<!-- /run-time -->\nrest\n")
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "rule,jobs,seconds,mean_seconds,share"
    doc.write_text("no block\n")
    with pytest.raises(SystemExit, match="no '<!-- run-time -->'"):
        run_time.write_block(doc, "x")


def test_the_readme_has_the_block():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert run_time.BLOCK.search(text), "README.md lost its <!-- run-time --> block"
    assert "python -m dqss.bench.run_time" in run_time.BLOCK.search(text).group(0)
