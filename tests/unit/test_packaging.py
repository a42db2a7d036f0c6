"""Packaging and conventions: pins mirrored, CI runs the README's test command, registry discovery."""
from __future__ import annotations

import os
import pkgutil
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _pins_pyproject() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def _pip_entries(path: Path) -> list[str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    return next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)


def _pins_env(path: Path) -> set[str]:
    return {p for p in _pip_entries(path) if not p.startswith("-e")}


def test_every_dependency_is_pinned():
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", d) for d in _pins_pyproject())


def test_environment_files_mirror_pyproject():
    assert _pins_env(ROOT / "environment.yml") == _pins_pyproject()
    assert _pins_env(ROOT / "workflow/envs/dqss.yaml") == _pins_pyproject()


# -- one way to import the library: the editable install --------------------------------------
@pytest.mark.parametrize("env", ["environment.yml", "workflow/envs/dqss.yaml"])
def test_conda_environments_install_the_repository_editable(env):
    """conda resolves a relative pip path against the directory of the file it reads: each file names the
    repository root from where it lies.  Snakemake creates the rules' environment from its copy
    ``.snakemake/conda/<hash>.yaml`` of the working directory, from which the same path is that directory
    (the repository root, where the workflow is run)."""
    path = ROOT / env
    editable = [e.split(None, 1)[1].strip() for e in _pip_entries(path) if e.startswith("-e ")]
    assert len(editable) == 1, editable
    assert Path(os.path.normpath(path.parent / editable[0])) == ROOT
    if path.parent != ROOT:
        assert Path(os.path.normpath(ROOT / ".snakemake/conda" / editable[0])) == ROOT


def test_workflow_imports_the_library_only_as_installed():
    """No sys.path or PYTHONPATH edits in the Snakefile, the rules or the scripts: jobs import the installed
    package, which ./suite installs editable."""
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk")),
             *sorted((ROOT / "workflow/scripts").glob("*.py"))]
    for f in files:
        text = f.read_text()
        for needle in ("sys.path", "PYTHONPATH", "import _repo"):
            assert needle not in text, f"{f.relative_to(ROOT)} mentions {needle}"
    assert re.search(r"-m pip install .*-e \.\s", (ROOT / "suite").read_text())
    snakefile = (ROOT / "Snakefile").read_text()
    assert "except ModuleNotFoundError" in snakefile and "pip install -e ." in snakefile


def _quick_start() -> list[str]:
    """The commands of the README's quick start (its first code block), comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_ci_runs_the_readme_test_command():
    """The README's quick start is two commands; .ci/run calls the second one literally."""
    commands = _quick_start()
    assert commands == ["./suite run", "./suite test"]
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert "./suite test" in ci
    # then the embedded default from the clean clone, checked against the reference
    assert ci.index("./suite test") < ci.index("./suite run") < ci.index(
        ".venv/bin/python -m dqss.reference check results/metrics.csv")
    # the two verbs run the documented commands for people who manage their own environment
    suite = (ROOT / "suite").read_text()
    readme = (ROOT / "README.md").read_text()
    for command in ("snakemake --cores all", "python -m pytest -q"):
        assert f"exec {command} " in suite or f"exec python -m dqss.progress {command} " in suite
        assert f"`{command}`" in readme


def test_reference_results_cover_the_embedded_default():
    """The checked-in reference holds a value for every row the embedded default writes (no more, no less)."""
    import pandas as pd

    from dqss.reference import REFERENCE, ROW_KEYS

    ref = pd.read_csv(ROOT / REFERENCE)
    assert list(ref.columns) == ROW_KEYS + ["value"]
    assert not ref.duplicated(ROW_KEYS).any()
    assert set(ref.task) == {"cls_ptq", "cls_qat", "sr_ptq"}
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for task in ("cls_ptq", "cls_qat", "sr_ptq"):
        assert set(ref[ref.task == task].backbone) == set(config[task]["backbones"]), task
    assert set(ref.seed) == set(config["seeds"])


# -- ./suite's set-up, with a fake interpreter (no install, no network) ------------------------
FAKE_PYTHON = """#!/bin/bash
# answers like python: its version, -m venv (makes the venv with a copy of itself), -m pip, -m pytest
log="$SUITE_LOG"
case "$1 $2" in
  "-c "*) echo "${FAKE_VERSION:-3.11}" ;;
  "-m venv") mkdir -p "${@: -1}/bin" && cp "$0" "${@: -1}/bin/python" && echo venv >> "$log" ;;
  "-m pip") echo pip >> "$log" ;;
  "-m pytest") shift 2; echo "pytest $*" >> "$log" ;;
  "-m dqss.workflow") shift 2; echo "dqss.workflow $*" >> "$log"; exit "${FAKE_CHECK_RC:-0}" ;;
  "-m dqss.progress") shift 2; echo "dqss.progress" >> "$log"; exec "$@" ;;
  *) exit 3 ;;
esac
"""


def _fake_checkout(tmp_path, version="3.11"):
    import os
    import shutil
    import stat

    repo, bin_ = tmp_path / "repo", tmp_path / "bin"
    repo.mkdir()
    bin_.mkdir()
    shutil.copy2(ROOT / "suite", repo / "suite")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for name in ("python3.11", "python3", "python"):
        (bin_ / name).write_text(FAKE_PYTHON)
        (bin_ / name).chmod(stat.S_IRWXU)
    for tool in ("dirname", "cat", "sha256sum", "cut", "rm", "mkdir", "cp", "id"):  # only these, no real python
        os.symlink(shutil.which(tool), bin_ / tool)
    env = {"PATH": str(bin_), "SUITE_LOG": str(tmp_path / "log"), "FAKE_VERSION": version, "HOME": str(tmp_path)}
    return repo, env


def _suite(repo, env, *args):
    import shutil
    import subprocess

    return subprocess.run([shutil.which("bash"), str(repo / "suite"), *args], env=env, capture_output=True,
                          text=True)


def _log(tmp_path) -> list[str]:
    log = tmp_path / "log"
    return log.read_text().splitlines() if log.exists() else []


def test_suite_setup_is_idempotent_and_follows_pyproject(tmp_path):
    repo, env = _fake_checkout(tmp_path)
    assert _suite(repo, env, "setup").returncode == 0
    assert _log(tmp_path) == ["venv", "pip"]
    again = _suite(repo, env, "setup")  # nothing changed: no reinstall
    assert again.returncode == 0 and "up to date" in again.stderr
    assert _log(tmp_path) == ["venv", "pip"]
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '2'\n")
    assert _suite(repo, env, "setup").returncode == 0  # pyproject.toml changed: reinstall, same venv
    assert _log(tmp_path) == ["venv", "pip", "pip"]
    res = _suite(repo, env, "test", "-k", "x")  # set-up (current) then the README's test command
    assert res.returncode == 0, res.stderr
    assert _log(tmp_path) == ["venv", "pip", "pip", "pytest -q -k x"]
    assert _suite(repo, env, "test", "--fast", "-k", "x").returncode == 0  # the fast tier: in-process, not slow
    assert _log(tmp_path)[-1] == "pytest -q tests/unit -m not slow -k x"


def test_suite_rebuilds_a_venv_of_another_python(tmp_path):
    repo, env = _fake_checkout(tmp_path)
    _suite(repo, env, "setup")
    (repo / ".venv/bin/python").write_text("#!/bin/bash\necho 3.9\n")  # a stale venv of Python 3.9
    assert _suite(repo, env, "setup").returncode == 0
    assert _log(tmp_path) == ["venv", "pip", "venv", "pip"]


def test_suite_names_what_to_install_without_python_311(tmp_path):
    repo, env = _fake_checkout(tmp_path, version="3.9")
    res = _suite(repo, env, "run")
    assert res.returncode != 0
    assert "Python 3.11 is required" in res.stderr and "apt install python3.11" in res.stderr
    assert "python3=3.9" in res.stderr and _log(tmp_path) == []
    res = _suite(repo, {**env, "PYTHON": str(tmp_path / "bin/python3")}, "setup")
    assert res.returncode != 0 and "is not Python 3.11" in res.stderr
    assert _suite(repo, env, "build").returncode != 0  # an unknown verb says how to call it


def test_suite_says_the_checkout_is_not_writable(tmp_path):
    """Item: run by a user who cannot write the checkout, ./suite took the venv for broken, tried `venv --clear`
    and advised installing python3.11-venv.  It now says the checkout is not writable (root writes anywhere, so
    as root the checkout's user is dropped to nobody)."""
    import os
    import shutil
    import stat
    import subprocess
    import tempfile

    as_root = os.geteuid() == 0
    if as_root and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: no way to be a user who cannot write")
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="suite-ro-"))  # reachable by another user
    try:
        base.chmod(0o755)
        repo, env = _fake_checkout(base)
        for f in (base / "bin").iterdir():
            if not f.is_symlink():
                f.chmod(0o755)
        env["SUITE_LOG"] = str(base / "log")
        repo.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        cmd = [shutil.which("bash"), str(repo / "suite")]
        if as_root:
            cmd = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        for verb in ("setup", "run"):
            res = subprocess.run([*cmd, verb], env=env, capture_output=True, text=True)
            assert res.returncode != 0
            assert "is not writable by you" in res.stderr and "python3.11-venv" not in res.stderr, res.stderr
            assert not (repo / ".venv").exists() and not (base / "log").exists()  # nothing tried
    finally:
        repo.chmod(stat.S_IRWXU)
        shutil.rmtree(base)


def test_suite_run_checks_every_config_file_before_snakemake(tmp_path):
    """Item: a --configfile that is a YTE template runs its code while Snakemake loads it.  ./suite run reads every
    config file it is given as plain data first (python -m dqss.workflow check-yte, tested in
    test_config_check.py) and stops before Snakemake when one is refused."""
    repo, env = _fake_checkout(tmp_path)
    snakemake = tmp_path / "bin/snakemake"
    snakemake.write_text('#!/bin/bash\necho "snakemake $*" >> "$SUITE_LOG"\n')
    snakemake.chmod(0o755)
    args = ["--configfile", "a.yaml", "b.yaml", "--cores", "1", "--configfiles=c.yaml"]
    res = _suite(repo, {**env, "FAKE_CHECK_RC": "1"}, "run", *args)
    assert res.returncode != 0 and "not run: a config file above is refused" in res.stderr
    assert _log(tmp_path)[-1] == "dqss.workflow check-yte a.yaml b.yaml c.yaml"  # and no snakemake line
    assert _suite(repo, env, "run", "-n").returncode == 0  # no --configfile: the default config is checked
    # Snakemake through the progress lines (dqss.progress, tested in test_progress.py)
    assert _log(tmp_path)[-3:] == ["dqss.workflow check-yte config/config.yaml", "dqss.progress",
                                   "snakemake --cores all -n"]


def test_every_baseline_module_registers_and_template_does_not():
    import baselines
    from dqss.algorithms.recon import RECONSTRUCTIONS
    from dqss.core.strategy import STRATEGIES, strategy_names

    names = strategy_names()
    modules = {m.name for m in pkgutil.iter_modules(baselines.__path__)
               if m.name != "TEMPLATE" and not m.name.startswith("_")}  # private helpers register nothing
    registered = [*STRATEGIES.values(), *RECONSTRUCTIONS.values()]  # range/QAT strategies and reconstructions
    registered_modules = {c.__module__.split(".")[-1] for c in registered}
    assert modules <= registered_modules
    assert "template" not in names
    undocumented = [cls for cls in registered if not _teaching_docstring(cls)]
    assert not undocumented, f"strategies without a docstring on the class or its module: {undocumented}"


def _teaching_docstring(cls) -> str:
    """The docstring of a strategy class, else of the module that defines it (not of its package, which
    always has one)."""
    return (cls.__doc__ or "").strip() or (sys.modules[cls.__module__].__doc__ or "").strip()


def test_docstring_check_fails_without_one(monkeypatch):
    """The check above can fail: a class without a docstring in a module without one, inside the documented
    ``baselines`` package, has none."""
    import baselines
    from dqss.core.strategy import Strategy

    module = types.ModuleType("baselines.undocumented")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    cls = type("Undocumented", (Strategy,), {"__module__": module.__name__})
    assert cls.__doc__ is None and baselines.__doc__
    assert _teaching_docstring(cls) == ""
    module.__doc__ = "What it does, and where it departs from its paper."
    assert _teaching_docstring(cls) == module.__doc__


def test_template_registers_when_imported(monkeypatch):
    """Copying TEMPLATE.py is all a new baseline needs: importing it registers the strategy."""
    import importlib

    from dqss.core import strategy as registry

    monkeypatch.setattr(registry, "STRATEGIES", dict(registry.STRATEGIES))
    importlib.import_module("baselines.TEMPLATE")
    assert "template" in registry.STRATEGIES
    s = registry.get_strategy("template", {"shrink": 0.5})
    assert s.options.shrink == 0.5


# -- the Snakemake workflow catalog's usage file and the config documentation ------------------------
CATALOG_KEYS = {  # what the catalog reads from .snakemake-workflow-catalog.yml
    "mandatory-flags": {"desc", "flags"},
    "software-stack-deployment": {"conda", "apptainer", "apptainer+conda"},
    "report": None,
}


def _rules(text: str) -> list[str]:
    """The rule blocks of a .smk file."""
    return re.split(r"^(?=rule \w+:)", text, flags=re.M)[1:]


def test_workflow_catalog_file_uses_the_catalogs_keys():
    catalog = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    assert list(catalog) == ["usage"]
    usage = catalog["usage"]
    assert set(usage) <= set(CATALOG_KEYS), set(usage) - set(CATALOG_KEYS)
    flags = usage["mandatory-flags"]
    assert set(flags) <= CATALOG_KEYS["mandatory-flags"] and isinstance(flags["desc"], str)
    assert isinstance(flags["flags"], str) or all(isinstance(f, str) for f in flags["flags"])
    deploy = usage["software-stack-deployment"]
    assert set(deploy) <= CATALOG_KEYS["software-stack-deployment"]
    assert all(isinstance(v, bool) for v in deploy.values()) and isinstance(usage["report"], bool)
    # report: true says `snakemake --report` works, and it does: the Snakefile names the report's workflow
    # description and the report rule's outputs are report() items with their captions
    supports_report = (re.search(r'^report: "workflow/report/workflow\.rst"$', (ROOT / "Snakefile").read_text(), re.M)
                       and "report(" in (ROOT / "workflow/rules/report.smk").read_text()
                       and (ROOT / "workflow/report/workflow.rst").is_file())
    assert supports_report and usage["report"] is True, "the workflow supports snakemake --report: report: true"
    # what it says holds: every rule that runs code has the conda environment; no container is declared
    smk = {f.name: f.read_text() for f in (ROOT / "workflow/rules").glob("*.smk")}
    assert deploy["conda"] and (ROOT / "workflow/envs/dqss.yaml").is_file()
    for name, text in smk.items():
        for rule in _rules(text):
            if re.search(r"^    (script|shell|run|notebook|wrapper):", rule, flags=re.M):
                assert re.search(r"^    conda:", rule, flags=re.M), f"{name}: {rule.splitlines()[0]}"
    if not (deploy.get("apptainer") or deploy.get("apptainer+conda")):
        assert not any("container:" in t for t in [*smk.values(), (ROOT / "Snakefile").read_text()])
    # the catalog shows config/README.md; the commands it names exist
    assert (ROOT / "config/README.md").is_file()
    assert "--configfile config/paper.yaml" in flags["desc"] and (ROOT / "config/paper.yaml").is_file()


def _schema_keys(node) -> set[str]:
    if isinstance(node, dict):
        own = set(node["properties"]) if isinstance(node.get("properties"), dict) else set()
        return own.union(*(_schema_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_schema_keys(v) for v in node))
    return set()


def test_config_readme_names_every_config_key():
    """config/README.md mentions (in backticks) every key of the schema and of the config dataclasses."""
    from dataclasses import fields

    from dqss.tracks.classification import CalibConfig
    from dqss.cls.data import DataConfig
    from dqss.core.layers import QuantPolicy
    from dqss.algorithms.qat_train import DQSSQATConfig, QATRecipe
    from dqss.algorithms.search import SearchConfig
    from dqss.sr.data import SRDataConfig
    from dqss.tracks.sr_ptq import SRCalibConfig, SREvalConfig, SRQuantPolicy, SRTrainConfig
    from dqss.cls.train import TrainConfig

    text = (ROOT / "config/README.md").read_text()
    documented = set(re.findall(r"[A-Za-z_]\w*", " ".join(re.findall(r"`([^`]*)`", text))))
    keys = _schema_keys(yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text()))
    assert {"seeds", "device", "cls_ptq", "cls_qat", "sr_ptq", "hold_fraction", "weights_dir"} <= keys
    for cls in (DataConfig, TrainConfig, CalibConfig, QuantPolicy, SearchConfig, QATRecipe, DQSSQATConfig,
                SRDataConfig, SRTrainConfig, SRCalibConfig, SRQuantPolicy, SREvalConfig):
        keys |= {f.name for f in fields(cls)}
    assert not keys - documented, f"config/README.md does not mention {sorted(keys - documented)}"


# -- the tiers: a unit test that starts Snakemake fails (tests/unit/conftest.py) ---------------------
def test_a_unit_test_that_starts_snakemake_fails():
    """Snakemake in a subprocess, as a program (wherever it lies, under a wrapper, as a shell string) or as
    `python -m snakemake`, fails a unit test with the fix (the tests/workflow/ tier) before anything starts;
    other programs run, a path that merely contains the name included."""
    import subprocess

    for argv in ([sys.executable, "-m", "snakemake", "--version"], ["snakemake", "--version"], "snakemake --version",
                 ["/opt/env/bin/snakemake", "--version"], ["timeout", "60", sys.executable, "-m", "snakemake", "-h"]):
        with pytest.raises(pytest.fail.Exception, match="move it into tests/workflow/"):
            subprocess.run(argv, capture_output=True)
    res = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout == "ok\n"
    assert subprocess.run(["ls", str(ROOT / ".snakemake-workflow-catalog.yml")], capture_output=True).returncode == 0
