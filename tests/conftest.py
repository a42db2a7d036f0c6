import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch

# Two tiers: tests/unit/ (in-process; a test there that starts Snakemake fails, see tests/unit/conftest.py) and
# tests/workflow/ (Snakemake in a subprocess; marked `workflow` by tests/workflow/conftest.py).  The helpers both
# share are in tests/helpers.py: this folder is on sys.path, so a test module imports them as `helpers`.
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

ROOT = TESTS.parent

from helpers import missing_slurm, slurm_command  # noqa: E402 (tests/ is on sys.path from here)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per worker: -n auto runs one worker per core, and more threads than cores make
    # torch's threads wait on each other
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tiny-tensor tests on one intra-op thread (robust on small, shared CPUs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the session's one finished run of config/test.yaml ---------------------------------------------------------
# Many workflow tests read a finished run.  It is started in the background as soon as the session knows that a
# selected test needs it (after collection), so that it runs while the other tests do; the tests that need it are
# ordered last (pytest_collection_modifyitems).  With pytest-xdist (-n) the workers share it: the first one to
# get here starts it, the others find it started.  It is read, never changed: a test that edits, deletes or
# reruns anything works on a copy (`tiny_run_copy`).
# Where the session runs the SLURM test (tests/workflow/test_slurm.py) and a SLURM controller answers, this one
# run goes through profiles/slurm, and the SLURM test checks it; elsewhere it runs locally (--cores 2).  Either
# way its results/metrics.csv must equal tests/reference/tiny_metrics.csv (test_tiny_run_matches_the_reference),
# so the two executors give the same numbers without the tiny config being run twice.
TINY_RUN_LIMIT = 1800  # seconds a test waits for the background run before failing


def shared_dir(tmp_path_factory) -> Path:
    """A directory every process of this test session shares: with pytest-xdist (-n), the workers' common
    parent of their own temporary folders; without it, the session's temporary folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _tiny_args(work: Path) -> list[str]:
    return ["--cores", "2", "--directory", str(work)]


def wants_slurm(items) -> bool:
    """Whether the session runs the SLURM test (which checks the session's run, made through SLURM)."""
    return any("slurm_run" in getattr(item, "fixturenames", ()) for item in items)


def start_tiny_run(root: Path, slurm: bool) -> None:
    """Start the run in the background once per session (a lock decides which process starts it): through
    SLURM when ``slurm`` (the session runs the SLURM test) and a controller answers, else locally.  Its exit
    status lands in tiny_run.rc, its output in tiny_run.log, its executor and start in tiny_run.json."""
    work = root / "tiny_run"
    with open(root / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if work.exists():
            return
        work.mkdir()
        config = ROOT / "config/test.yaml"
        missing = missing_slurm() if slurm else None  # why SLURM cannot run here (None: not asked)
        executor = "slurm" if missing == [] else "local"
        cmd = (slurm_command(work, config) if executor == "slurm" else
               [sys.executable, "-m", "snakemake", *_tiny_args(work), "--configfile", str(config)])
        # sacct's window starts a little before the first submission
        start = (datetime.now() - timedelta(seconds=5)).isoformat(timespec="seconds")
        (root / "tiny_run.json").write_text(json.dumps({"executor": executor, "start": start,
                                                        "missing_slurm": missing}))
        # a wrapper process records the exit status and the seconds, whichever test process ends first
        record = ("import subprocess, sys, time, pathlib; root = pathlib.Path(sys.argv[1]); t0 = time.monotonic(); "
                  "rc = subprocess.call(sys.argv[2:], stdout=open(root / 'tiny_run.log', 'w'), "
                  "stderr=subprocess.STDOUT); (root / 'tiny_run.seconds').write_text(f'{time.monotonic() - t0:.1f}'); "
                  "(root / 'tiny_run.rc.tmp').write_text(str(rc)); "
                  "(root / 'tiny_run.rc.tmp').rename(root / 'tiny_run.rc')")
        _STARTED.append((root, subprocess.Popen([sys.executable, "-c", record, str(root), *cmd], cwd=ROOT,
                                                start_new_session=True, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))


_STARTED: list = []  # (root, process) of the run this process started


def pytest_collection_finish(session):
    if any("tiny_run" in getattr(item, "fixturenames", ()) for item in session.items):
        start_tiny_run(shared_dir(session.config._tmp_path_factory), wants_slurm(session.items))


def pytest_sessionfinish(session):
    # a session that ends first (interrupted, or -x) stops the run it started; xdist workers end only after
    # every test of the session has
    for root, proc in _STARTED:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)


# Modules whose tests share nothing but the session's run: with pytest-xdist their tests spread over the workers;
# every other module's tests go to one worker, so that its module fixtures are built once.
SPREAD = ("test_workflow.py",)


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


def _spread(nodeid: str) -> bool:
    return _module(nodeid).endswith(SPREAD)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: no error under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` (pyproject.toml's addopts) with this suite's scopes: a module is one unit of work (one
    worker), except a SPREAD module, whose every test is a unit of its own.  (pytest-xdist's `loadgroup` cannot
    do it under pytest 9.2: it marks a group by rewriting the item's `_nodeid`, which pytest no longer reads, so
    every test became a unit of its own and a module fixture such as the reconstruction run was built on both
    workers.)  Units go out in the collection's order (pytest_collection_modifyitems)."""
    if config.getvalue("dist") != "loadscope":
        return None  # another --dist on the command line: pytest-xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _spread(nodeid) else _module(nodeid)

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(session, config, items):
    """Long work first and the finished run's readers last, by module (so that a module's fixtures are built
    once): modules with long tests, the rest, then the modules that read the run, the SLURM test among them (by
    then the run has finished in the background).  Within a SPREAD module the long tests go first (a long test
    started last would leave the other worker idle at the end)."""
    kinds: dict[str, set] = {}
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        kinds.setdefault(_module(item.nodeid), set()).update(
            {"run" if "tiny_run" in fixtures else "slow" if item.get_closest_marker("slow") else "quick"})
    rank = {module: 2 if "run" in k else 0 if "slow" in k else 1 for module, k in kinds.items()}
    # stable: a module's tests keep their order otherwise
    items.sort(key=lambda item: (rank[_module(item.nodeid)],
                                 not (_spread(item.nodeid) and item.get_closest_marker("slow"))))


@pytest.fixture(scope="session")
def tiny_run(request, tmp_path_factory):
    """config/test.yaml run to the end, once per test session, shared by every test (and xdist worker) that
    reads a finished run: (work dir, snakemake args for a local rerun).  Waits for the background run."""
    root = shared_dir(tmp_path_factory)
    # already started after collection, unless the test was selected another way
    start_tiny_run(root, wants_slurm(request.session.items))
    rc = root / "tiny_run.rc"
    deadline = time.monotonic() + TINY_RUN_LIMIT
    while not rc.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the tiny run did not finish within {TINY_RUN_LIMIT} s (see {root}/tiny_run.log)")
        time.sleep(1)
    status = rc.read_text()
    if status != "0":
        log = (root / "tiny_run.log").read_text()
        killed = (" (killed at its time limit: does sacct know its jobs? accounting must be on)"
                  if status in ("124", "137") else "")
        raise AssertionError(f"the tiny run ({tiny_run_info_of(root)['executor']}) failed (exit {status}){killed}:\n"
                             f"{log[-6000:]}")
    work = root / "tiny_run"
    return work, _tiny_args(work)


def tiny_run_info_of(root: Path) -> dict:
    return json.loads((root / "tiny_run.json").read_text())


@pytest.fixture(scope="session")
def slurm_missing(tmp_path_factory) -> list[str]:
    """Why a SLURM run cannot happen here (empty when it can): as judged when the session's run started (it
    asks where the session runs the SLURM test), else now."""
    record = shared_dir(tmp_path_factory) / "tiny_run.json"
    judged = json.loads(record.read_text()).get("missing_slurm") if record.exists() else None
    return missing_slurm() if judged is None else judged


@pytest.fixture(scope="session")
def tiny_run_info(tiny_run, tmp_path_factory) -> dict:
    """How the session's finished run was made: executor ('slurm' or 'local'), start (ISO time, a little before
    the first job), seconds, and log (Snakemake's whole output)."""
    root = shared_dir(tmp_path_factory)
    return {**tiny_run_info_of(root), "seconds": float((root / "tiny_run.seconds").read_text()),
            "log": (root / "tiny_run.log").read_text()}


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A private copy of the finished tiny run (same file times: Snakemake finds it finished), for a test that
    changes it: (work dir, snakemake args)."""
    work = tmp_path / "run"
    shutil.copytree(tiny_run[0], work, symlinks=True)
    return work, _tiny_args(work)
