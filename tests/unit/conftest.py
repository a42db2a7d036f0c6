"""The unit tier: every test here runs in this process.  Starting Snakemake in a subprocess (the program, or
`python -m snakemake`) fails the test, naming the fix: such a test belongs in tests/workflow/, which is marked
`workflow`, so that `-m "not workflow"` and `python -m pytest tests/unit` stay free of Snakemake runs.  The
session's `tiny_run` (a whole Snakemake run) is refused here for the same reason."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

import helpers

HERE = Path(__file__).resolve().parent
MOVE = ("move it into tests/workflow/ (the tier whose tests run Snakemake in a subprocess; `-m \"not workflow\"` "
        "leaves them out)")


def runs_snakemake(args) -> bool:
    """Whether a subprocess's arguments start Snakemake: a word that is the program (any folder, e.g. after
    `timeout`) or tests/snakefork.py (the server helpers.snakemake forks its runs from), or the module of
    `python -m snakemake`.  A string is split as a shell would."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = shlex.split(os.fsdecode(args))
    words = [os.fsdecode(a) if isinstance(a, (str, bytes, os.PathLike)) else str(a) for a in args]
    for i, word in enumerate(words):
        if os.path.basename(word) in ("snakemake", "snakefork.py") or word == "-msnakemake":
            return True
        if word == "-m" and i + 1 < len(words) and words[i + 1].split(".")[0] == "snakemake":
            return True
    return False


class _NoSnakemakePopen(subprocess.Popen):
    """subprocess.Popen (under run, call, check_call and check_output too) that refuses to start Snakemake."""

    def __init__(self, args, *rest, **kwargs):
        if runs_snakemake(args):
            pytest.fail(f"a unit test started Snakemake in a subprocess ({args!r}): {MOVE}", pytrace=False)
        super().__init__(args, *rest, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def _no_snakemake_in_unit_tests():
    """Module-scoped, so the module's own module-scoped fixtures (set up after it) are guarded too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", _NoSnakemakePopen)
        # helpers.snakemake forks its runs from a server a workflow test of this process may have started
        mp.setattr(helpers, "REFUSE_SNAKEMAKE", f"a unit test ran Snakemake (helpers.snakemake): {MOVE}")
        yield


def pytest_collection_modifyitems(config, items):
    # a conftest's hook sees every collected item, not only this folder's
    for item in items:
        if HERE in Path(item.path).resolve().parents and "tiny_run" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} asks for tiny_run (a Snakemake run of config/test.yaml): {MOVE}")
