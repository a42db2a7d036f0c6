"""Which one-sided prior makes ACIQ's clip of non-negative activations closest to the MSE optimum.

For every non-negative activation (the unsigned grid: a ReLU's output) in calibration statistics
files, and for 4 and 8 bits, the quantization MSE of the clip of each one-sided prior of
``baselines/aciq.py`` (exponential = ``laplace``, half-normal = ``gaussian``) is divided by the MSE of
the brute-force MSE-optimal clip.  The MSE is that of the suite's own quantizer
(:func:`dqss.core.strategy.quant_error`) over the calibration histogram, i.e. at bin resolution.  Only
calibration statistics are read, never a test set:

    python -m dqss.bench.aciq results/*/*/*/calib/seed0/stats.pt

Writes one row per layer, bit width and prior to ``--out`` (default
results/benchmarks/aciq_one_sided.csv) and prints the median and geometric mean of the ratio per
bit width and prior, with how often each prior is the closer one.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

from ..core.quant import QuantSpec
from ..core.stats import ActStats, load_stats
from ..core.strategy import quant_error

BITS = (4, 8)  # the default; --bits for others
OPTIMUM_GRID = 500  # clips from max/OPTIMUM_GRID to max, then refined around the best


def hist_mse(stats: ActStats, clips: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantization MSE over the histogram of a non-negative activation for each clip of ``clips``."""
    counts, centers = stats.hist_pos, stats.centers()
    n = len(clips)
    return quant_error(centers.expand(n, -1), torch.zeros(n, dtype=torch.float64), clips.double(), spec, 2.0,
                       counts.expand(n, -1))


def optimal_mse(stats: ActStats, spec: QuantSpec) -> tuple[float, float]:
    """Brute-force MSE-optimal clip (a grid over ``(0, max]``, then a finer grid around its best) and its MSE."""
    top = stats.max
    clips = torch.linspace(top / OPTIMUM_GRID, top, OPTIMUM_GRID, dtype=torch.float64)
    errs = hist_mse(stats, clips, spec)
    for _ in range(2):
        i = int(errs.argmin())
        step = float(clips[1] - clips[0])
        lo, hi = max(float(clips[i]) - step, top / OPTIMUM_GRID / 10), min(float(clips[i]) + step, top)
        clips = torch.cat([clips[i:i + 1], torch.linspace(lo, hi, 401, dtype=torch.float64)])
        errs = hist_mse(stats, clips, spec)
    i = int(errs.argmin())
    return float(clips[i]), float(errs[i])


def measure(paths: list[str], bits_list=BITS) -> list[dict]:
    from baselines.aciq import PRIORS, one_sided_clip

    rows = []
    for path in paths:
        for layer, st in load_stats(path).items():
            if not st.nonnegative or st.max <= 0 or st.count <= st.zeros:
                continue
            for bits in bits_list:
                spec = QuantSpec(bits, symmetric=True, signed=False)
                best_clip, best = optimal_mse(st, spec)
                for prior in PRIORS:
                    clip = min(one_sided_clip(st, bits, prior), st.max)
                    mse = float(hist_mse(st, torch.tensor([clip]), spec)[0])
                    rows.append({"stats": str(path), "layer": layer, "bits": bits, "prior": prior,
                                 "nonzero_fraction": 1 - st.zeros / st.count, "max": st.max, "clip": clip,
                                 "optimal_clip": best_clip, "mse": mse, "optimal_mse": best,
                                 "ratio": mse / best if best > 0 else 1.0})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for bits in sorted({r["bits"] for r in rows}):
        sel = [r for r in rows if r["bits"] == bits]
        priors = sorted({r["prior"] for r in sel})
        by_layer: dict[tuple, dict] = {}
        for r in sel:
            by_layer.setdefault((r["stats"], r["layer"]), {})[r["prior"]] = r["ratio"]
        for prior in priors:
            ratios = [r["ratio"] for r in sel if r["prior"] == prior]
            wins = sum(1 for d in by_layer.values() if d[prior] < min(v for k, v in d.items() if k != prior))
            out.append({"bits": bits, "prior": prior, "layers": len(ratios), "median": statistics.median(ratios),
                        "geomean": math.exp(statistics.fmean(math.log(max(x, 1e-300)) for x in ratios)),
                        "max": max(ratios), "wins": wins})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stats", nargs="+", help="calibration statistics files (stats.pt)")
    ap.add_argument("--bits", type=int, nargs="+", default=list(BITS), help="bit widths (default: 4 8)")
    ap.add_argument("--out", default="results/benchmarks/aciq_one_sided.csv")
    args = ap.parse_args(argv)
    from ..results import write_csv

    rows = measure(args.stats, args.bits)
    if not rows:
        sys.exit("no non-negative activation in the given statistics files")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(args.out, rows)
    print(f"{'bits':>4}  {'prior':<9} {'layers':>6}  {'median':>8}  {'geomean':>8}  {'max':>8}  wins")
    for s in summarize(rows):
        print(f"{s['bits']:>4}  {s['prior']:<9} {s['layers']:>6}  {s['median']:8.3f}  {s['geomean']:8.3f}  "
              f"{s['max']:8.2f}  {s['wins']}")
    print(f"per layer: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
