"""``python -m dqss.bench``: the measurement CLIs of :mod:`dqss.bench` and what each measures."""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def benchmarks() -> dict[str, str]:
    """``{name: first line of its docstring}`` of every module of this package (read, not imported: no torch)."""
    out = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        out[path.stem] = first.split(". ")[0].split("?  ")[0].rstrip(".") + ("?" if "?  " in first.split(". ")[0] else "")
    return out


def main(argv: list[str]) -> int:
    lines = [f"  python -m dqss.bench.{name:<15} {doc}" for name, doc in benchmarks().items()]
    text = "The measurement CLIs (each takes --help):\n" + "\n".join(lines)
    if argv:
        print(f"python -m dqss.bench takes no arguments: name the benchmark, e.g. python -m dqss.bench.mixed "
              f"{' '.join(argv)}\n\n{text}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
