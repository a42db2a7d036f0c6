"""Packaging as a Snakemake run meets it: a checkout whose path has a space runs script jobs (the rest of the
packaging checks, in-process: tests/unit/test_packaging.py)."""
from __future__ import annotations

from pathlib import Path

from helpers import ROOT


def test_a_checkout_path_with_a_space_runs_script_jobs(tmp_path):
    """Item: in a checkout whose path has a space every job failed with exit status 127, because Snakemake
    writes the interpreter's path unquoted into a script job's shell command.  The Snakefile quotes it: a
    script rule runs under an interpreter whose path has a space."""
    import subprocess
    import sys
    import sysconfig

    where = tmp_path / "my clone"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where / "venv")], check=True)
    site = Path(sysconfig.get_paths()["purelib"])
    (next((where / "venv/lib").glob("python*/site-packages")) / "outer.pth").write_text(f"{site}\n")
    work = where / "work"
    (work / "workflow").mkdir(parents=True)
    head = (ROOT / "Snakefile").read_text()
    end = "    _sys.executable = _shlex.quote(_sys.executable)\n"
    block = head[head.index("# Snakemake 9 puts the interpreter's path"):head.index(end) + len(end)]
    (work / "Snakefile").write_text(block + 'rule all:\n    output: "out.txt"\n    script: "workflow/job.py"\n')
    (work / "workflow/job.py").write_text('open(snakemake.output[0], "w").write("ran")\n')
    res = subprocess.run([str(where / "venv/bin/python"), "-m", "snakemake", "--cores", "1"], cwd=work,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (work / "out.txt").read_text() == "ran"
