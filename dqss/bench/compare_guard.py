"""The DQSS selection's guard before and after a change, from two finished runs of the same config.

    python -m dqss.bench.compare_guard BEFORE AFTER [--bits 4 4] [--task cls_ptq]   # the runs' working directories

For every (backbone, seed) of the classification PTQ track at one bit width: the top-1 of ``dqss`` in
both runs, of ``dqss_argmax`` and of the held-chosen uniform strategy (the one each DQSS job recorded
as lowest on its held part), the stage each run's guard kept, and McNemar's exact test on the paired
test images (``+`` / ``-``: the after-run's ``dqss`` significantly better / worse at p < 0.05, ``=``
not significant), against the other three; and the before-run's ``dqss`` against ``dqss_argmax`` and the
held-chosen uniform (``before_vs_*``).  ``dqss_argmax`` and the uniform rows do not depend on
the guard, so they are read from the after-run.  A markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..results import RESULTS_DIR, Layout
from ..report.significance import ALPHA, mcnemar_exact


def _job(root: Path, task: str, dataset: str, backbone: str, method: str, w: int, a: int, seed: int,
         optional: bool = False) -> dict | None:
    path = Path(root) / Layout(task, dataset).job("metrics.json", method, w, a, seed, backbone)
    if not path.is_file():
        if optional:  # a track without that row (QAT has no dqss_argmax)
            return None
        raise SystemExit(f"{path}: missing; both runs must be finished runs of the same config")
    return json.loads(path.read_text())


def mark(first: list[int], second: list[int]) -> tuple[str, float]:
    """McNemar of two per-image correctness lists: (mark of ``first`` against ``second``, p)."""
    if len(first) != len(second):
        raise SystemExit("the two runs evaluated different test sets")
    b = sum(x and not y for x, y in zip(first, second))
    c = sum(y and not x for x, y in zip(first, second))
    p = mcnemar_exact(b, c)
    return ("=" if p >= ALPHA else "+" if b > c else "-"), p


def rows(before: Path, after: Path, task: str, w: int, a: int) -> list[dict]:
    out = []
    for metrics in sorted(Path(after).glob(f"{RESULTS_DIR}/{task}/*/*/dqss/w{w}a{a}/seed*/metrics.json")):
        new = json.loads(metrics.read_text())
        key = (task, new["dataset"], new["backbone"])
        seed = new["seed"]
        old = _job(before, *key, "dqss", w, a, seed)
        argmax = _job(after, *key, "dqss_argmax", w, a, seed, optional=True)
        held = new["extra"].get("selection_held_best_uniform")
        uni = _job(after, *key, held, w, a, seed) if held else None
        top = lambda d: d["per_image"]["top1"]  # noqa: E731
        row = {"backbone": new["backbone"], "seed": seed,
               "before": old["metrics"]["top1"], "before_kept": old["extra"].get("selection_chosen"),
               "after": new["metrics"]["top1"], "after_kept": new["extra"].get("selection_chosen"),
               "guard": new["extra"].get("selection_guard", "-"),
               "dqss_argmax": argmax["metrics"]["top1"] if argmax else "-",
               "held_uniform": f"{held} {uni['metrics']['top1']:.2f}" if uni else "-"}
        for name, first, other in (("vs_before", new, old), ("vs_argmax", new, argmax), ("vs_held", new, uni),
                                   ("before_vs_argmax", old, argmax), ("before_vs_held", old, uni)):
            if other is None:
                row[name] = "-"
                continue
            m, p = mark(top(first), top(other))
            row[name] = f"{m} (p={p:.3g})"
        out.append(row)
    if not out:
        raise SystemExit(f"{after}: no {task} dqss results at W{w}A{a}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path, help="the working directory (holding results/) of the run before the change")
    p.add_argument("after", type=Path, help="that of the run after it")
    p.add_argument("--bits", type=int, nargs=2, default=(4, 4), metavar=("W", "A"))
    p.add_argument("--task", default="cls_ptq")
    args = p.parse_args(argv)
    table = rows(args.before, args.after, args.task, *args.bits)
    cols = list(table[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in table:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
