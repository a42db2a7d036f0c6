"""The documentation follows the tree: the architecture page's module map lists exactly the modules of dqss/, the
README's index links every page of docs/, every relative link of the pages resolves (file and heading), and every
file and command the pages cite exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "architecture.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "results/README.md"]
INDENT = "  "  # the module tree's indentation per level (docs/architecture.md states the format)


# -- the module tree of docs/architecture.md ---------------------------------------------------------
def module_tree(text: str) -> dict[str, str]:
    """``{path: description}`` of the block after ``<!-- module-tree -->``: one entry per line, indented by two
    spaces per level under its folder; a folder ends with ``/``; a module ends with ``.py`` and is followed by at
    least two spaces and its description."""
    m = re.search(r"<!-- module-tree -->\s*```\n(.*?)```", text, re.S)
    assert m, f"{ARCHITECTURE.relative_to(ROOT)} lost its block marked <!-- module-tree -->"
    out: dict[str, str] = {}
    folders: list[str] = []  # the folder at each level
    for n, line in enumerate(m.group(1).splitlines(), 1):
        if not line.strip():
            continue
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        assert indent % len(INDENT) == 0, f"tree line {n}: indent by {len(INDENT)} spaces per level: {line!r}"
        level = indent // len(INDENT)
        assert level <= len(folders), f"tree line {n}: indented deeper than its folder: {line!r}"
        del folders[level:]
        name, _, description = stripped.partition("  ")
        path = "".join(folders) + name
        if name.endswith("/"):
            assert not description.strip(), f"tree line {n}: a folder takes no description: {line!r}"
            folders.append(name)
            continue
        assert name.endswith(".py"), f"tree line {n}: neither a folder (name/) nor a module (name.py): {line!r}"
        assert description.strip(), f"tree line {n}: {path} needs a description, after two spaces"
        assert path not in out, f"tree line {n}: {path} is listed twice"
        out[path] = description.strip()
    return out


def test_module_tree_parser():
    text = "<!-- module-tree -->\n```\npkg/\n  a.py  one\n  sub/\n    b.py    two\n  c.py  three\n```\n"
    assert module_tree(text) == {"pkg/a.py": "one", "pkg/sub/b.py": "two", "pkg/c.py": "three"}
    with pytest.raises(AssertionError, match="needs a description"):
        module_tree("<!-- module-tree -->\n```\npkg/\n  a.py\n```\n")


def test_architecture_tree_lists_every_module():
    listed = set(module_tree(ARCHITECTURE.read_text()))
    actual = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dqss").rglob("*.py") if "__pycache__" not in p.parts}
    assert not actual - listed, f"modules missing from the tree of docs/architecture.md: {sorted(actual - listed)}"
    assert not listed - actual, f"docs/architecture.md lists modules that do not exist: {sorted(listed - actual)}"


# -- links ---------------------------------------------------------------------------------------------
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not in code blocks
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # relative only


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to dashes."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    out = set()
    for title in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"))
    return out


def test_readme_index_links_every_docs_page():
    readme = ROOT / "README.md"
    index = readme.read_text().split("## Documentation", 1)
    assert len(index) == 2, "README.md lost its Documentation index"
    linked = {(ROOT / t.split("#")[0]).resolve() for t in LINK.findall(index[1]) if not re.match(r"[a-z]+:", t)}
    for target in linked:
        assert target.is_file(), f"README.md's index links {target.relative_to(ROOT)}, which does not exist"
    pages = {p.resolve() for p in DOCS.glob("*.md")}
    assert pages, "docs/ holds no page"
    assert not pages - linked, f"docs pages the README's index does not link: {sorted(p.name for p in pages - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    for target in _links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.relative_to(ROOT)} links {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.relative_to(ROOT)} links {target}: no such heading"


# -- what the pages cite ---------------------------------------------------------------------------------
CITED_FILE = re.compile(r"(?<![\w/.])((?:dqss|baselines|tests|workflow|config|profiles)/[\w/.-]*\.(?:py|smk|yaml|rst|csv))")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_files_exist(page):
    missing = sorted({f for f in CITED_FILE.findall(page.read_text()) if "*" not in f and "{" not in f
                      and not (ROOT / f).exists()})
    assert not missing, f"{page.relative_to(ROOT)} cites files that do not exist: {missing}"


def test_benchmark_commands_name_real_modules():
    bench = {p.stem for p in (ROOT / "dqss/bench").glob("*.py") if not p.stem.startswith("_")}
    cited = set()
    for page in PAGES:
        cited |= set(re.findall(r"python -m dqss\.bench\.(\w+)", page.read_text()))
    assert not cited - bench, f"the pages run benchmarks that do not exist: {sorted(cited - bench)}"
    listed = set(re.findall(r"python -m dqss\.bench\.(\w+)", (DOCS / "commands.md").read_text()))
    assert not bench - listed, f"docs/commands.md does not list {sorted(bench - listed)}"
