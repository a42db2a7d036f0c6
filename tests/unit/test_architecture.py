"""The layers of ``dqss/`` and their import rules (docs/architecture.md), checked on the source with ``ast``.

Every import counts, at the top of a module or inside a function: an import inside a function hides a cycle from
Python until the day it moves to the top, so the rules hold for both."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (layer, group): a module imports only modules of lower layers and of its own group.  Groups of one layer never
# import each other (cls and sr, algorithms and the adapters).
LAYERS = [
    (0, "leaves", ("dqss.options", "dqss.results", "dqss.timing")),
    (1, "core", ("dqss.core", "dqss.weights")),
    (2, "algorithms", ("dqss.algorithms",)),
    (2, "cls", ("dqss.cls",)),
    (2, "sr", ("dqss.sr",)),
    (3, "library", ("dqss", "dqss.api", "dqss.deploy", "dqss.plugin")),
    (4, "tracks", ("dqss.tracks",)),
    (5, "report", ("dqss.report",)),
    (6, "workflow", ("dqss.workflow", "dqss.schema", "dqss.reference", "dqss.progress")),
    (7, "bench", ("dqss.bench",)),
]
# what a layer may import beyond "every lower layer": the report reads results only (no torch, no tracks)
ONLY = {"report": {"leaves"}}
NOT_IMPORTED = {"bench"}  # measurement CLIs: nothing outside them imports them


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "dqss").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def group_of(module: str) -> tuple[int, str]:
    best = None
    for layer, group, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[0]):
                best = (len(p), layer, group)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)"
    return best[1], best[2]


def imports(module: str, path: Path, known: dict) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or '', line)`` of every import of ``dqss`` (or of a third party:
    ``(name, '', line)``) in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:
                full = f"{target}.{a.name}"
                out.append((full, "", node.lineno) if full in known else (target, a.name, node.lineno))
    return out


def owner(name: str, known: dict) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def edges() -> list[tuple[str, str, str, int]]:
    """``(importer, imported module, name, line)`` for every import of one dqss module by another."""
    known = modules()
    out = []
    for m, path in known.items():
        for target, name, line in imports(m, path, known):
            t = owner(target, known) if target.split(".")[0] == "dqss" else None
            if t is not None and t != m:
                out.append((m, t, name, line))
    return out


def test_every_module_is_in_a_layer():
    for m in modules():
        group_of(m)


def test_imports_follow_the_layers():
    bad = []
    for m, t, _name, line in edges():
        (lm, gm), (lt, gt) = group_of(m), group_of(t)
        if gt in NOT_IMPORTED and gm != gt:
            bad.append(f"{m}:{line} imports {t} (nothing imports dqss.bench)")
        elif gm in ONLY and gt != gm and gt not in ONLY[gm]:
            bad.append(f"{m}:{line} imports {t} ({gm} may import only {sorted(ONLY[gm])})")
        elif gt != gm and lt >= lm:
            bad.append(f"{m}:{line} imports {t} (layer {lm} {gm} -> layer {lt} {gt}: only lower layers)")
    assert not bad, "imports against the layers (docs/architecture.md):\n" + "\n".join(bad)


def test_the_report_imports_no_torch():
    known = modules()
    bad = [f"{m}:{line} imports {target}" for m, path in known.items() if group_of(m)[1] == "report"
           for target, _n, line in imports(m, path, known) if target.split(".")[0] in ("torch", "torchvision", "timm")]
    assert not bad, bad


def test_no_import_cycle():
    graph: dict[str, set] = {}
    for m, t, _n, _l in edges():
        graph.setdefault(m, set()).add(t)
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_crosses_modules():
    bad = [f"{m}:{line} imports {name} from {t}" for m, t, name, line in edges()
           if name.startswith("_") and not name.startswith("__")]
    assert not bad, "private names imported from another module (make them public):\n" + "\n".join(bad)


@pytest.mark.parametrize("rule", ["layer", "cycle", "private"])
def test_the_checks_can_fail(rule, tmp_path, monkeypatch):
    """Each rule fails on a tree that breaks it (a check that cannot fail proves nothing)."""
    src = {"layer": ("dqss/core/zz_bad.py", "from ..tracks import common\n"),
           "cycle": ("dqss/core/zz_bad.py", "from . import zz_other\n"),
           "private": ("dqss/core/zz_bad.py", "from .quant import _hidden\n")}[rule]
    tree = tmp_path / "tree"
    for path in modules().values():
        dest = tree / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (tree / src[0]).write_text(src[1], encoding="utf-8")
    if rule == "cycle":
        (tree / "dqss/core/zz_other.py").write_text("from . import zz_bad\n", encoding="utf-8")
    monkeypatch.setattr(__import__(__name__), "ROOT", tree)
    check = {"layer": test_imports_follow_the_layers, "cycle": test_no_import_cycle,
             "private": test_no_private_name_crosses_modules}[rule]
    with pytest.raises(AssertionError):
        check()
