"""Cost of building each range strategy's quantizers, per backbone and bit width, weights and activations apart.

Every uniform job and every DQSS job builds the quantizers of its strategies (a DQSS job: all of its
candidates) before it measures anything; this times that step.  For each backbone of a track's config, a
randomly initialised, BN-folded copy is calibrated on random images as in :mod:`dqss.bench.select` (the cost
of KL's and MSE's searches does not depend on the values, only on the shapes), then each strategy quantizes
every planned layer at each ``--bits`` (the config's first and last layer bits apply), ``--repeats`` times;
the seconds spent in the weight and in the activation ranges are summed over the layers, medians reported:

    python -m dqss.bench.strategies config/config.yaml --track cls_ptq --bits 8 4 --repeats 3

Results in results/bench_strategies.csv.  Run it from two checkouts back to back to compare versions.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def timed_builds(totals: dict):
    """Seconds spent in :meth:`Strategy.build_weight_quantizer` and ``build_act_quantizer``, summed into
    ``totals[(strategy, "weight" | "act")]`` while the block runs."""
    from ..core.strategy import Strategy

    build_w, build_a = Strategy.build_weight_quantizer, Strategy.build_act_quantizer

    def weight(self, spec, ctx):
        t = time.perf_counter()
        try:
            return build_w(self, spec, ctx)
        finally:
            totals[self.name, "weight"] += time.perf_counter() - t

    def act(self, spec, stats, ctx):
        t = time.perf_counter()
        try:
            return build_a(self, spec, stats, ctx)
        finally:
            totals[self.name, "act"] += time.perf_counter() - t

    Strategy.build_weight_quantizer, Strategy.build_act_quantizer = weight, act
    try:
        yield totals
    finally:
        Strategy.build_weight_quantizer, Strategy.build_act_quantizer = build_w, build_a


def measure(cfg, backbone: str, bits: list[int], strategies: list[str], repeats: int, device) -> list[dict]:
    """One row per (strategy, bits): the median seconds of the weight and the activation ranges of all layers."""
    from .. import api
    from .select import build_search_setup

    setup = build_search_setup(cfg, backbone, bits[0], device)
    example = setup["x"][:1].to(device)
    calib = api.from_stats(setup["folded"], setup["stats"], cfg.quant, example, device=device, folded=True)
    rows = []
    for b in bits:
        for name in strategies:
            runs = []
            for _ in range(repeats):
                totals = defaultdict(float)
                with timed_builds(totals):
                    api.quantize(setup["folded"], calib, cfg.strategy(name), w_bits=b, a_bits=b, device=device,
                                 folded=True)
                runs.append(totals)
            w = statistics.median(r[name, "weight"] for r in runs)
            a = statistics.median(r[name, "act"] for r in runs)
            rows.append({"backbone": backbone, "strategy": name, "bits": b, "weight_s": round(w, 3),
                         "act_s": round(a, 3), "total_s": round(w + a, 3), "repeats": repeats})
    return rows


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from ..workflow import load_yaml, track_config

    p = argparse.ArgumentParser(prog="python -m dqss.bench.strategies", description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default="config/config.yaml")
    p.add_argument("--track", default="cls_ptq")
    p.add_argument("--backbones", nargs="*", help="default: the track's backbones")
    p.add_argument("--strategies", nargs="*", help="default: the track's strategies")
    p.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/bench_strategies.csv")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    torch.set_num_threads(1)  # as every workflow job on the CPU
    cfg = track_config(load_yaml(args.config), args.track)
    if cfg is None:
        raise SystemExit(f"{args.config} has no {args.track} section")
    rows = []
    for backbone in args.backbones or list(cfg.backbones):
        rows += measure(cfg, backbone, args.bits, args.strategies or list(cfg.strategies), args.repeats,
                        torch.device(args.device))
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    print("\nper backbone and bits, all strategies (s):")
    print(df.groupby(["backbone", "bits"])[["weight_s", "act_s", "total_s"]].sum().round(2).to_string())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
