"""The plugin boundary: a baseline imports the library through ``dqss.plugin`` only, and the library imports no
baseline (it finds them by scanning the ``baselines`` package, :func:`dqss.core.strategy.load_baselines`)."""
from __future__ import annotations

import ast
from pathlib import Path

import dqss.plugin

ROOT = Path(__file__).resolve().parents[2]

# The one place the library reaches the baselines: the registries' scan of the package (by name, at run time).
SCAN = {"dqss/core/strategy.py"}
# Modules of dqss/ allowed to import a baseline module, with the reason.
ALLOWED = {
    # a measurement CLI of the ACIQ baseline's own formula (its priors and clipping), not library code
    "dqss/bench/aciq.py": {"baselines.aciq"},
}


def _imports(path: Path) -> list[tuple[str, int]]:
    """The absolute module names ``path`` imports (``from X import`` gives X), with their line numbers."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, node.lineno))
    return out


def test_baselines_import_dqss_through_the_plugin_only():
    files = sorted((ROOT / "baselines").glob("*.py"))
    assert any(f.name == "TEMPLATE.py" for f in files) and any(f.name == "_qat_common.py" for f in files)
    bad = [f"{f.relative_to(ROOT)}:{line}: {mod}" for f in files for mod, line in _imports(f)
           if (mod == "dqss" or mod.startswith("dqss.")) and mod != "dqss.plugin"]
    assert not bad, ("baselines import the library through dqss.plugin only (add the name to dqss/plugin.py "
                     "and its __all__ if a baseline needs it): " + "; ".join(bad))


def test_the_library_imports_no_baseline():
    bad = []
    for f in sorted((ROOT / "dqss").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        for mod, line in _imports(f):
            if (mod == "baselines" or mod.startswith("baselines.")) and mod not in ALLOWED.get(rel, ()):
                bad.append(f"{rel}:{line}: {mod}")
    assert not bad, ("dqss/ must not import a baseline: give the baseline's class a public method the library "
                     "calls (as export_grid for the ONNX export), or reach it through a registry: " + "; ".join(bad))


def test_the_registries_still_discover_the_baselines_by_scanning():
    for rel in SCAN:
        assert 'import_module("baselines")' in (ROOT / rel).read_text()
    from dqss.algorithms.recon import reconstruction_names
    from dqss.core.strategy import strategy_names

    assert {"minmax", "lsq", "lsq_plus", "pact", "dorefa"} <= set(strategy_names())
    assert {"adaround", "brecq", "qdrop"} <= set(reconstruction_names())


def test_plugin_all_names_exist():
    assert len(dqss.plugin.__all__) == len(set(dqss.plugin.__all__))
    missing = [n for n in dqss.plugin.__all__ if not hasattr(dqss.plugin, n)]
    assert not missing, missing
    # every name a baseline imports from the plugin is in __all__
    used = set()
    for f in (ROOT / "baselines").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dqss.plugin":
                used |= {a.name for a in node.names}
    assert used <= set(dqss.plugin.__all__), sorted(used - set(dqss.plugin.__all__))
