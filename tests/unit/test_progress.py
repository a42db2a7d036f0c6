"""dqss.progress: the run's own output passed through, with the jobs done, the time left and each running
job's progress bar added (`./suite run` runs Snakemake through it)."""
import sys

from dqss.progress import Tracker, last_log_line, main, run

HEADER = """Building DAG of jobs...
Provided cores: 2
Job stats:
job          count
---------  -------
train            2
search           4
all              1
total            7

Select jobs to execute...
"""


def job(rule, jobid, log=None, wildcards=None):
    lines = ["[Mon Dec  7 11:03:23 2026]", f"rule {rule}:", f"    output: x/{jobid}"]
    if log:
        lines.append(f"    log: {log}")
    lines.append(f"    jobid: {jobid}")
    if wildcards:
        lines.append(f"    wildcards: {wildcards}")
    return lines


def feed(tracker, lines, now):
    return [out for line in lines if (out := tracker.feed(line + "\n", now))]


def test_time_left_from_the_jobs_finished_so_far(tmp_path):
    t = Tracker(start=0.0)
    assert feed(t, HEADER.splitlines(), 0.0) == []
    assert t.cores == 2 and t.planned == {"train": 2, "search": 4, "all": 1}
    feed(t, job("train", "1", "logs/a.log", "backbone=a") + job("train", "2"), 0.0)
    assert set(t.running) == {"1", "2"}
    # train 1 takes 100 s; every other job is expected to take as long (no search has finished yet)
    out = feed(t, ["Finished jobid: 1 (Rule: train)", "1 of 7 steps (14%) done"], 100.0)
    assert out == ["progress: 1 of 7 jobs done, 1m40s elapsed, about 4m10s left (from the jobs finished so far)"]
    # left: train 2 is 0 s from its 100 s expected ... (0 + 4 searches x 100 + all x 100) / 2 cores = 250 s
    assert t.seconds_left(100.0) == 250.0
    feed(t, ["Finished jobid: 2 (Rule: train)"] + job("search", "3"), 120.0)
    feed(t, ["Finished jobid: 3 (Rule: search)"], 130.0)  # searches take 10 s: the estimate follows
    assert t.expected("search") == 10.0 and t.expected("train") == 110.0
    # 3 searches x 10 s + `all` at the mean of every finished job (100 + 120 + 10) / 3, over 2 cores
    out = feed(t, ["3 of 7 steps (43%) done"], 130.0)
    assert out == ["progress: 3 of 7 jobs done, 2m10s elapsed, about 53s left (from the jobs finished so far)"]
    # the last step: no estimate
    assert feed(t, ["7 of 7 steps (100%) done"], 200.0) == ["progress: 7 of 7 jobs done, 3m20s elapsed"]


def test_running_jobs_show_the_last_refresh_of_their_progress_bar(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/a.log").write_text("2026 INFO dqss: rule search on cpu\n"
                                         "search:   0%|  | 0/80 [00:00<?, ?it/s]\rsearch:  56%|##| 45/80 [00:20<00:15]\r")
    t = Tracker(start=0.0)
    feed(t, HEADER.splitlines() + job("search", "4", "logs/a.log", "backbone=a, seed=0") + job("train", "5"), 10.0)
    assert t.running_lines(tmp_path, 75.0) == [
        "progress: running search (backbone=a, seed=0), 1m05s: search:  56%|##| 45/80 [00:20<00:15]",
        "progress: running train, 1m05s"]
    assert last_log_line(tmp_path / "missing.log") == ""


def test_run_passes_the_output_through_and_keeps_the_exit_status(tmp_path, capsys):
    script = tmp_path / "fake.py"
    script.write_text("import sys\nprint('Job stats:')\nprint('a 1')\nprint('total 1')\nprint('rule a:')\n"
                      "print('    jobid: 1')\nprint('Finished jobid: 1 (Rule: a)')\nprint('1 of 1 steps (100%) done')\n"
                      "print('oops', file=sys.stderr)\nsys.exit(3)\n")

    class Out(list):
        def write(self, s):
            self.append(s)

        def flush(self):
            pass

    out = Out()
    assert run([sys.executable, str(script)], every=3600, root=tmp_path, out=out) == 3
    text = "".join(out)
    assert "rule a:\n" in text and "oops\n" in text
    assert "progress: 1 of 1 jobs done" in text
    assert main([]) == 2 and "python -m dqss.progress" in capsys.readouterr().out
