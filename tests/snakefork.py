"""The workflow tests' Snakemake runs, forked from one process that has imported Snakemake and the library.

`python -m snakemake` spends most of a dry run importing: Snakemake with its plugins, torch and the track and
strategy registries the Snakefile validates the config with (about 4 of 5 seconds on the 2-core CI machine).
The tier runs Snakemake about fifty times, so tests/helpers.py's ``snakemake`` sends each run here instead: this
process imports all that once, then forks one child per run, which is `snakemake ARGS` in a fresh process in
every other respect (its own working directory, environment, argv, output files; its exit status).  It never
runs torch code nor starts a thread itself, so the fork copies no held lock and no thread pool.

Protocol (one JSON object per line): the client writes ``{"runs": [{"args", "cwd", "env", "out", "err"}, ...],
"parallel": N}``; this process runs them, at most N at once, and answers ``{"rcs": [...]}`` in the same order.
It exits when its standard input closes (the test process ended).
"""
from __future__ import annotations

import json
import os
import sys
import traceback


def preload() -> None:
    """What every Snakemake start of this workflow imports (the Snakefile, its rules files, the config check)."""
    import snakemake.api  # noqa: F401  (the scheduler, the executor plugins)
    import snakemake.cli  # noqa: F401

    import dqss.report.paper  # noqa: F401
    import dqss.workflow  # noqa: F401
    from dqss.core.strategy import strategy_names
    from dqss.tracks import tracks

    tracks()  # every track module, torch with them
    strategy_names("ptq")  # baselines/


def child(run: dict) -> int:
    """`snakemake ARGS` in this (forked) process; its exit status."""
    os.chdir(run["cwd"])
    os.environ.clear()
    os.environ.update(run["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, run["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, run["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        new = os.open(path, flags, 0o644)
        os.dup2(new, fd)
        os.close(new)
    sys.argv = ["snakemake", *run["args"]]
    code = 1
    try:
        from snakemake.cli import main

        main(run["args"])
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (as the interpreter would: the traceback, exit status 1)
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
    return code


def run_batch(runs: list[dict], parallel: int) -> list[int]:
    rcs: list = [None] * len(runs)
    pending, running = list(enumerate(runs)), {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            i, run = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os._exit(child(run))
            running[pid] = i
        pid, status = os.wait()
        if pid in running:
            rcs[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    return rcs


def main() -> None:
    preload()
    for line in sys.stdin:
        if line.strip():
            req = json.loads(line)
            print(json.dumps({"rcs": run_batch(req["runs"], int(req.get("parallel", 1)))}), flush=True)


if __name__ == "__main__":
    main()
