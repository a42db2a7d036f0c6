"""Packaging and conventions: pins mirrored, CI runs the README's test command, registry discovery."""
from __future__ import annotations

import pkgutil
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins_pyproject() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def _pins_env(path: Path) -> set[str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return {p for p in pip if not p.startswith("-e")}


def test_every_dependency_is_pinned():
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", d) for d in _pins_pyproject())


def test_environment_files_mirror_pyproject():
    assert _pins_env(ROOT / "environment.yml") == _pins_pyproject()
    assert _pins_env(ROOT / "workflow/envs/dqss.yaml") == _pins_pyproject()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    command = "python -m pytest -q"
    assert command in readme and command in ci


def test_every_baseline_module_registers_and_template_does_not():
    import baselines
    from dqss.strategy import STRATEGIES, strategy_names

    names = strategy_names()
    modules = {m.name for m in pkgutil.iter_modules(baselines.__path__)
               if m.name != "TEMPLATE" and not m.name.startswith("_")}  # private helpers register nothing
    registered_modules = {c.__module__.split(".")[-1] for c in STRATEGIES.values()}
    assert modules <= registered_modules
    assert "template" not in names
    for cls in STRATEGIES.values():
        assert cls.__doc__ or __import__(cls.__module__).__doc__


def test_template_registers_when_imported(monkeypatch):
    """Copying TEMPLATE.py is all a new baseline needs: importing it registers the strategy."""
    import importlib

    from dqss import strategy as registry

    monkeypatch.setattr(registry, "STRATEGIES", dict(registry.STRATEGIES))
    importlib.import_module("baselines.TEMPLATE")
    assert "template" in registry.STRATEGIES
    s = registry.get_strategy("template", {"shrink": 0.5})
    assert s.options.shrink == 0.5
