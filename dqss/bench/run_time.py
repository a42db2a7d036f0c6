"""Where a finished workflow run spent its time: per-rule job time, the critical path and the idle cores, from
Snakemake's own log.

    python -m dqss.bench.run_time [.snakemake/log/<run>.snakemake.log] [--cores N] [--out results/benchmarks/run_time.csv]
                                  [--write-block README.md]

The log (default: the newest under ``.snakemake/log/``) names each job's rule, inputs, outputs and threads, and
stamps when it started and finished (to the second).  From it:

* **per rule**: jobs, summed job seconds, mean, share of all job time;
* **the critical path**: the chain of jobs, each needing an output of the one before, whose summed times are the
  longest -- the wall time no number of cores could beat;
* **idle cores**: ``cores x wall - busy core-seconds`` (a job holds its ``threads``), and the seconds in which
  fewer jobs ran than there were cores.

``--write-block FILE`` rewrites the text between ``<!-- run-time -->`` and ``<!-- /run-time -->`` in FILE with the
run's figures, so that the README's timings come from a log, not from a hand.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")
CORES = re.compile(r"^Provided cores: (\d+)")
BLOCK = re.compile(r"(<!-- run-time -->\n).*?(<!-- /run-time -->)", re.S)


@dataclass
class Job:
    jobid: int
    rule: str
    start: float
    end: float | None = None
    threads: int = 1
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.end or self.start) - self.start


def _stamp(text: str) -> float:
    return datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y").timestamp()


def parse_log(text: str) -> tuple[dict[int, Job], int | None]:
    """The jobs of a Snakemake log (by jobid) and the cores it was given (None when the log does not say)."""
    jobs: dict[int, Job] = {}
    cores, now, pending = None, None, None
    for line in text.splitlines():
        m = CORES.match(line)
        if m:
            cores = int(m.group(1))
            continue
        m = STAMP.match(line)
        if m:
            now, pending = _stamp(m.group(1)), None
            continue
        m = START.match(line)
        if m and now is not None:
            pending = {"rule": m.group(1), "start": now, "inputs": [], "outputs": [], "threads": 1}
            continue
        m = FINISHED.match(line)
        if m and now is not None:
            job = jobs.get(int(m.group(1)))
            if job is not None:
                job.end = now
            continue
        if pending is not None:
            key, _, value = line.strip().partition(": ")
            if key in ("input", "output"):
                pending[key + "s"] = [v.strip() for v in value.split(",") if v.strip()]
            elif key == "threads":
                pending["threads"] = int(value)
            elif key == "jobid":
                jobs[int(value)] = Job(int(value), **pending)
    return {k: j for k, j in jobs.items() if j.end is not None}, cores


def per_rule(jobs: dict[int, Job]) -> list[dict]:
    """One row per rule, most job time first."""
    total = sum(j.seconds for j in jobs.values()) or 1.0
    rules: dict[str, list[float]] = {}
    for j in jobs.values():
        rules.setdefault(j.rule, []).append(j.seconds)
    rows = [{"rule": r, "jobs": len(s), "seconds": sum(s), "mean_seconds": sum(s) / len(s),
             "share": sum(s) / total} for r, s in rules.items()]
    return sorted(rows, key=lambda r: (-r["seconds"], r["rule"]))


def critical_path(jobs: dict[int, Job]) -> list[Job]:
    """The chain of jobs (each reading an output of the one before) with the longest summed time."""
    producer = {out: j.jobid for j in jobs.values() for out in j.outputs}
    order = sorted(jobs.values(), key=lambda j: (j.start, j.jobid))
    best: dict[int, tuple[float, int | None]] = {}
    for j in order:
        parents = {producer[i] for i in j.inputs if i in producer and producer[i] != j.jobid}
        parents = [p for p in parents if p in best]
        before = max(parents, key=lambda p: (best[p][0], -p), default=None)
        best[j.jobid] = (j.seconds + (best[before][0] if before is not None else 0.0), before)
    if not best:
        return []
    last = max(best, key=lambda k: (best[k][0], -k))
    path = []
    while last is not None:
        path.append(jobs[last])
        last = best[last][1]
    return path[::-1]


def idle(jobs: dict[int, Job], cores: int) -> dict:
    """Wall seconds, busy and idle core-seconds, and the seconds in which fewer jobs than cores were running."""
    if not jobs:
        return {"wall": 0.0, "busy": 0.0, "idle": 0.0, "idle_share": 0.0, "underfull": 0.0}
    t0, t1 = min(j.start for j in jobs.values()), max(j.end for j in jobs.values())
    busy = sum(j.seconds * min(j.threads, cores) for j in jobs.values())
    events = sorted([(j.start, min(j.threads, cores)) for j in jobs.values()]
                    + [(j.end, -min(j.threads, cores)) for j in jobs.values()], key=lambda e: (e[0], e[1]))
    underfull, running, last = 0.0, 0, t0
    for t, delta in events:
        if running < cores:
            underfull += t - last
        running, last = running + delta, t
    wall = t1 - t0
    return {"wall": wall, "busy": busy, "idle": cores * wall - busy,
            "idle_share": (cores * wall - busy) / (cores * wall) if wall else 0.0, "underfull": underfull}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"


def summary(jobs: dict[int, Job], cores: int) -> str:
    """The run's figures in one paragraph (what ``--write-block`` writes)."""
    use, path = idle(jobs, cores), critical_path(jobs)
    top = per_rule(jobs)[:3]
    return (f"Measured from the workflow's own log (`python -m dqss.bench.run_time`): {len(jobs)} jobs in "
            f"{_minutes(use['wall'])} of wall time on {cores} cores; {use['busy']:.0f} core-seconds of jobs "
            f"(most: " + ", ".join(f"`{r['rule']}` {r['seconds']:.0f} s" for r in top) + "); "
            f"critical path {_minutes(sum(j.seconds for j in path))} over {len(path)} jobs; idle cores "
            f"{100 * use['idle_share']:.0f} % of the core-time.")


def report(jobs: dict[int, Job], cores: int) -> str:
    use, path = idle(jobs, cores), critical_path(jobs)
    lines = ["| rule | jobs | seconds | mean s | share |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['rule']} | {r['jobs']} | {r['seconds']:.0f} | {r['mean_seconds']:.1f} | "
              f"{100 * r['share']:.1f} % |" for r in per_rule(jobs)]
    lines += ["", f"critical path ({sum(j.seconds for j in path):.0f} s):"]
    lines += [f"  {j.rule} (jobid {j.jobid}): {j.seconds:.0f} s" for j in path]
    lines += ["", f"wall {use['wall']:.0f} s on {cores} cores: busy {use['busy']:.0f} core-s, idle {use['idle']:.0f} "
              f"core-s ({100 * use['idle_share']:.1f} %); fewer jobs than cores for {use['underfull']:.0f} s", "",
              summary(jobs, cores)]
    return "\n".join(lines)


def write_block(path: Path, text: str) -> None:
    """Replace the marked block of ``path`` with ``text``; a file without the markers is an error."""
    doc = path.read_text(encoding="utf-8")
    if not BLOCK.search(doc):
        raise SystemExit(f"{path} has no '<!-- run-time -->' ... '<!-- /run-time -->' block to write into")
    path.write_text(BLOCK.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc), encoding="utf-8")


def newest_log(root: Path = Path(".snakemake/log")) -> Path:
    logs = sorted(root.glob("*.snakemake.log"))
    if not logs:
        raise SystemExit(f"no Snakemake log under {root}; run the workflow first, or name the log")
    return logs[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dqss.bench.run_time", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", nargs="?", type=Path)
    ap.add_argument("--cores", type=int, help="the run's cores (default: what the log says)")
    ap.add_argument("--out", type=Path, help="per-rule CSV")
    ap.add_argument("--write-block", type=Path, help="a file whose run-time block gets the run's figures")
    args = ap.parse_args(argv)
    path = args.log or newest_log()
    jobs, cores = parse_log(path.read_text(encoding="utf-8"))
    cores = args.cores or cores
    if not cores:
        raise SystemExit(f"{path} does not say how many cores the run had: give --cores")
    if not jobs:
        raise SystemExit(f"{path} holds no finished job")
    print(report(jobs, cores))
    if args.out:
        from ..results import write_csv

        write_csv(args.out, per_rule(jobs))
    if args.write_block:
        write_block(args.write_block, summary(jobs, cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
