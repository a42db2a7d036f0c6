"""Reference results: does a run of the embedded default give the numbers checked into the repository?

    python -m dqss.reference check  [results/metrics.csv] [--reference tests/reference/embedded_metrics.csv]
    python -m dqss.reference update [results/metrics.csv] [--reference ...]   # deliberately, then commit

``check`` compares every (task, dataset, backbone, method, w_bits, a_bits, seed, metric) value with the
reference under the per-metric tolerance of :data:`TOLERANCES`, prints every cell that moved (and every
row missing on either side) and exits 1 if any did.  ``update`` rewrites the reference from a run and
prints the same list of changes, for the commit message.

Under ``cpu_kernels: avx2`` (the embedded default) ATen, oneDNN and MKL run their AVX2 code paths on any
x86-64 CPU, so the same commit gives the same numbers to the last bit with the pinned torch build: the
tolerances are that tight on purpose.  They absorb only a last-bit difference of an *evaluation* (e.g. a
library update that reorders a sum in a test-set pass); a training that took another path moves top-1
by whole images, which must fail.  Another architecture (aarch64) or another BLAS build is another
platform: make a reference for it with ``update``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from .results import KEYS

REFERENCE = Path("tests/reference/embedded_metrics.csv")
ROW_KEYS = KEYS + ["metric"]


@dataclass(frozen=True)
class Tolerance:
    """|got - reference| <= abs + rel * |reference|."""

    abs: float = 0.0
    rel: float = 0.0

    def allows(self, ref: float, got: float) -> bool:
        if ref != ref or got != got:  # NaN: equal only to NaN
            return ref != ref and got != got
        return abs(got - ref) <= self.abs + self.rel * abs(ref)


TOLERANCES = {
    "top1": Tolerance(),  # % of test images: one image (0.17 point on the digits) is a real change
    "agree_fp": Tolerance(),
    "kl_fp": Tolerance(abs=1e-9, rel=1e-6),
    "psnr": Tolerance(abs=1e-6),  # dB
    "ssim": Tolerance(abs=1e-8),
}
DEFAULT_TOLERANCE = Tolerance(abs=1e-9, rel=1e-6)


def read(path):
    """The reference columns of a metrics table."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {path}: {exc}")
    missing = [c for c in ROW_KEYS + ["value"] if c not in df.columns]
    if missing:
        raise SystemExit(f"{path} lacks the columns {missing}; is it results/metrics.csv (dqss.results.gather)?")
    df = df[ROW_KEYS + ["value"]].copy()
    value = pd.to_numeric(df["value"], errors="coerce")
    bad = df[value.isna() & df["value"].notna()]
    if len(bad):
        raise SystemExit(f"{path}: {len(bad)} values are not numbers, e.g. {_cells(bad.head(3))}; a metrics table "
                         "holds numbers only: rebuild it from the jobs' files with `snakemake --cores all` (rule "
                         "aggregate), or restore the reference from git")
    df["value"] = value
    dup = df[df.duplicated(ROW_KEYS, keep=False)]
    if len(dup):
        raise SystemExit(f"{path}: {len(dup)} rows share their cell ({', '.join(ROW_KEYS)}), e.g. "
                         f"{_cells(dup.head(3))}; a metrics table has one row per cell, so the check cannot tell "
                         "which to compare: rebuild it with `snakemake --cores all` (rule aggregate), or restore the "
                         "reference from git")
    return df


def _cell(r: dict) -> str:
    """One cell's name, e.g. ``cls_ptq/digits/resnet18/dqss W4A4 seed 0 top1``."""
    return ("/".join(str(r[k]) for k in ("task", "dataset", "backbone", "method"))
            + f" W{r['w_bits']}A{r['a_bits']} seed {r['seed']} {r['metric']}")


def _cells(rows) -> str:
    return "; ".join(f"{_cell(r)} = {r['value']!r}" for r in rows.to_dict("records"))


def compare(ref, got) -> list[dict]:
    """Every cell that moved beyond its tolerance, or that only one side has."""
    merged = ref.merge(got, on=ROW_KEYS, how="outer", suffixes=("_ref", "_got"), indicator=True)
    moved = []
    for r in merged.to_dict("records"):
        tol = TOLERANCES.get(r["metric"], DEFAULT_TOLERANCE)
        if r["_merge"] == "both" and tol.allows(float(r["value_ref"]), float(r["value_got"])):
            continue
        moved.append({**{k: r[k] for k in ROW_KEYS}, "reference": r["value_ref"], "got": r["value_got"],
                      "status": {"both": "moved", "left_only": "missing in run", "right_only": "not in reference"}
                      [r["_merge"]], "tolerance": tol})
    return moved


def describe(moved: list[dict]) -> str:
    """The moved cells as a fixed-width table (one line per cell)."""
    lines = []
    for m in moved:
        cell = _cell(m)
        if m["status"] == "moved":
            diff = float(m["got"]) - float(m["reference"])
            t = m["tolerance"]
            lines.append(f"  {cell}: {float(m['reference']):.10g} -> {float(m['got']):.10g} "
                         f"(diff {diff:+.3g}; tolerance abs {t.abs:g} + rel {t.rel:g})")
        else:
            lines.append(f"  {cell}: {m['status']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dqss.reference", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["check", "update"])
    ap.add_argument("metrics", nargs="?", default="results/metrics.csv", type=Path)
    ap.add_argument("--reference", default=REFERENCE, type=Path)
    args = ap.parse_args(argv)
    got = read(args.metrics)
    if args.command == "update":
        old = read(args.reference) if args.reference.is_file() else got.iloc[0:0]
        moved = compare(old, got)
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        from .results import write_frame

        write_frame(args.reference, got.sort_values(ROW_KEYS, kind="stable"))
        print(f"{args.reference}: {len(got)} values from {args.metrics}; {len(moved)} changed:")
        print(describe(moved) or "  (none)")
        return 0
    if not args.reference.is_file():
        print(f"no reference at {args.reference}; make one with: python -m dqss.reference update {args.metrics}",
              file=sys.stderr)
        return 2
    moved = compare(read(args.reference), got)
    if moved:
        print(f"{len(moved)} of {len(got)} values differ from {args.reference}:\n{describe(moved)}\n"
              "If the change is intended, refresh the reference with `python -m dqss.reference update` and show "
              "this list in the commit message (docs/running.md: Reference results).", file=sys.stderr)
        return 1
    print(f"{args.metrics}: all {len(got)} values equal {args.reference} within the stated tolerances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
