import shutil
import subprocess
import sys
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


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tiny-tensor tests on one intra-op thread (robust on small, shared CPUs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """config/test.yaml run to the end in a fresh directory, once per test session and shared by every module
    that needs a finished run: (work dir, snakemake args).  A test that changes the run restores it (the
    workflow's tests rerun what they delete, deterministically)."""
    work = tmp_path_factory.mktemp("run")
    args = ["--cores", "2", "--directory", str(work)]
    cmd = [sys.executable, "-m", "snakemake", *args, "--configfile", str(ROOT / "config/test.yaml")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"the tiny run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    yield work, args
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
