"""A readable progress line for a Snakemake run: ``python -m dqss.progress snakemake ARGS...``.

It runs the command, passes every line of its output through unchanged, and adds two kinds of lines of its own,
each starting with ``progress:``:

* after each of Snakemake's ``N of M steps (P%) done`` lines: the jobs done, the time elapsed and an estimate of
  the time left (the mean time of the finished jobs of each rule, the overall mean for a rule with none finished
  yet, spread over the run's cores);
* every ``--every`` seconds while jobs run: each running job (rule and wildcards) with the last line of its log,
  which for a long job is its progress bar (``search: 45/80 [00:20<00:15]``): the bars are in the jobs' log
  files, and this shows them in the run's own output.

The exit status is the command's.  ``./suite run`` runs Snakemake through it.  No torch: it starts in a blink.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

STEPS = re.compile(r"^(\d+) of (\d+) steps \(\d+%\) done")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")
CORES = re.compile(r"^Provided cores: (\d+)")
STATS_ROW = re.compile(r"^(\w+)\s+(\d+)$")
BAR_TAIL = 4096  # bytes read from the end of a running job's log


@dataclass
class _Job:
    rule: str
    started: float
    jobid: str = ""
    log: str = ""
    wildcards: str = ""


@dataclass
class Tracker:
    """What the run's output has said so far; ``feed`` it each line (with the time it was read)."""

    start: float
    cores: int = 1
    planned: dict = field(default_factory=dict)  # rule -> jobs, from Snakemake's "Job stats" table
    done: dict = field(default_factory=dict)  # rule -> [seconds of each finished job]
    running: dict = field(default_factory=dict)  # jobid -> _Job
    _pending: _Job | None = None
    _in_stats: bool = False

    def feed(self, line: str, now: float) -> str | None:
        """Take one line of the output; return a progress line to print after it, or None."""
        text = line.strip()
        if m := CORES.match(text):
            self.cores = max(1, int(m.group(1)))
        elif text == "Job stats:":
            self._in_stats, self.planned = True, {}
        elif self._in_stats:
            if m := STATS_ROW.match(text):
                if m.group(1) != "total":
                    self.planned[m.group(1)] = self.planned.get(m.group(1), 0) + int(m.group(2))
            elif text and not text.startswith(("job", "---")):
                self._in_stats = False
        if m := RULE.match(text):
            self._pending = _Job(m.group(1), now)
        elif self._pending is not None and text.startswith(("log:", "jobid:", "wildcards:")):
            key, value = text.split(":", 1)
            setattr(self._pending, key, value.strip().split(",")[0] if key == "log" else value.strip())
            if key == "jobid":
                self.running[self._pending.jobid] = self._pending
        elif m := FINISHED.match(text):
            job = self.running.pop(m.group(1), None)
            if job is not None:
                self.done.setdefault(job.rule, []).append(now - job.started)
        elif m := STEPS.match(text):
            return self.summary(int(m.group(1)), int(m.group(2)), now)
        return None

    def expected(self, rule: str) -> float:
        """Seconds a job of ``rule`` is expected to take: its finished jobs' mean, else every finished job's."""
        own = self.done.get(rule)
        if own:
            return sum(own) / len(own)
        every = [s for times in self.done.values() for s in times]
        return sum(every) / len(every) if every else 0.0

    def seconds_left(self, now: float) -> float:
        """The job-seconds still to run (jobs not started, and what is left of the running ones), over the cores."""
        left = 0.0
        for rule, count in self.planned.items():
            started = len(self.done.get(rule, [])) + sum(j.rule == rule for j in self.running.values())
            left += max(0, count - started) * self.expected(rule)
        for job in self.running.values():
            left += max(0.0, self.expected(job.rule) - (now - job.started))
        return left / self.cores

    def summary(self, done: int, total: int, now: float) -> str:
        line = f"progress: {done} of {total} jobs done, {_clock(now - self.start)} elapsed"
        if done < total:
            line += f", about {_clock(self.seconds_left(now))} left (from the jobs finished so far)"
        return line

    def running_lines(self, root: Path, now: float) -> list[str]:
        """One line per running job: rule, wildcards, time so far and the last line of its log."""
        out = []
        for job in sorted(self.running.values(), key=lambda j: j.started):
            what = f"{job.rule}" + (f" ({job.wildcards})" if job.wildcards else "")
            last = last_log_line(root / job.log) if job.log else ""
            out.append(f"progress: running {what}, {_clock(now - job.started)}" + (f": {last}" if last else ""))
        return out


def last_log_line(path: Path) -> str:
    """The last non-empty line of a log, a progress bar's last refresh included (tqdm ends those with \\r)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - BAR_TAIL))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in re.split(r"[\r\n]", tail) if p.strip()]
    return parts[-1][:160] if parts else ""


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run(cmd: list[str], every: float = 60.0, root: Path = Path("."), out=sys.stdout) -> int:
    """Run ``cmd`` with its output passed through, adding the progress lines; return its exit status."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            errors="replace")
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    # Ctrl-C reaches Snakemake directly (same process group); this process only waits for it to stop
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    tracker, last_report = Tracker(time.monotonic()), time.monotonic()
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, every - (time.monotonic() - last_report)))
            except queue.Empty:
                line = ""
            now = time.monotonic()
            if line is None:
                break
            if line:
                out.write(line)
                extra = tracker.feed(line, now)
                if extra:
                    out.write(extra + "\n")
            if now - last_report >= every:
                last_report = now
                for extra in tracker.running_lines(root, now):
                    out.write(extra + "\n")
            out.flush()
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    every = float(os.environ.get("DQSS_PROGRESS_EVERY", 60))
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    return run(args, every=every)


if __name__ == "__main__":
    sys.exit(main())
