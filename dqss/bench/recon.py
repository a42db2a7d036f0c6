"""Calibration and reconstruction time per method and backbone, side by side in one run.

For each classification backbone of a config (randomly initialised: the cost does not depend on the
weights) at one bit width, on the config's calibration size of random inputs, this times

* ``calibration``: the one statistics pass every range strategy shares;
* each range strategy of ``strategies``: building its quantized model from those statistics;
* each method of ``reconstruction.methods``: the whole reconstruction on the config's schedule
  (``reconstruction.iterations`` per unit and pass), with its statistics pass included;

and reports the median of ``--repeats`` runs per (backbone, method), and its ratio to the calibration
pass.  ``--iterations`` overrides the schedule (the cost grows linearly with it):

    python -m dqss.bench.recon config/config.yaml --bits 4 --repeats 1 --device cpu

Results in results/benchmarks/recon_time.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys

import torch

from ..timing import round_robin
from .select import build_search_setup

log = logging.getLogger(__name__)


def _time(fn, device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (no warm-up), the device synchronised around each."""
    return statistics.median(round_robin({"fn": fn}, repeats, device=device)["fn"])


def bench(cfg, backbones: list[str], bits: int, device, repeats: int, iterations: int | None = None) -> list[dict]:
    from ..algorithms.ptq import quantize_uniform
    from ..algorithms.recon import get_reconstruction, kl_task_loss, reconstruct
    from ..core.stats import collect_act_stats

    rec = cfg.reconstruction
    if iterations is not None:
        rec = dataclasses.replace(rec, iterations=iterations)
    c = cfg.calibration
    rows = []
    for bb in backbones:
        s = build_search_setup(cfg, bb, bits, device)
        folded, plans, x = s["folded"], s["plans"], s["x"]
        layers = {k: folded.get_submodule(k) for k in plans}

        def calib():
            return collect_act_stats(folded, layers, torch.split(x, c.batch_size), bins=c.bins, n_samples=c.samples,
                                     device=device)

        t_cal = _time(calib, device, repeats)
        stats = calib()
        rows.append({"backbone": bb, "bits": bits, "method": "calibration", "kind": "statistics", "seconds": t_cal})
        for name in cfg.strategies:
            strat = cfg.strategy(name)
            t = _time(lambda: quantize_uniform(folded, plans, stats, strat), device, repeats)
            rows.append({"backbone": bb, "bits": bits, "method": name, "kind": "range", "seconds": t})
        for name in rec.methods:
            method = get_reconstruction(name)
            t = _time(lambda: reconstruct(method, folded, plans, calib(), x, rec, strategy=cfg.strategy,
                                          task_loss=kl_task_loss, seed=0, device=device, batch_size=c.batch_size,
                                          example=x[:1].to(device)), device, repeats)
            rows.append({"backbone": bb, "bits": bits, "method": name, "kind": "reconstruction", "seconds": t,
                         "iterations": rec.iterations})
        for r in rows:
            if r["backbone"] == bb:
                r["vs_calibration"] = r["seconds"] / t_cal
        log.info("%s: %s", bb, {r["method"]: round(r["seconds"], 2) for r in rows if r["backbone"] == bb})
    return rows


def main(argv=None) -> int:
    import yaml

    from ..results import write_csv
    from ..tracks.common import resolve_device
    from ..workflow import track_config

    ap = argparse.ArgumentParser(prog="python -m dqss.bench.recon", description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--backbones", nargs="*", help="default: the config's cls_ptq backbones")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--iterations", type=int, help="reconstruction steps per unit (default: the config's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/benchmarks/recon_time.csv")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    with open(args.config) as f:
        cfg = track_config(yaml.safe_load(f), "cls_ptq")
    if cfg is None:
        raise SystemExit(f"{args.config} has no cls_ptq section")
    rows = bench(cfg, args.backbones or list(cfg.backbones), args.bits, resolve_device(args.device), args.repeats,
                 args.iterations)
    write_csv(args.out, rows, ["backbone", "bits", "method", "kind", "seconds", "vs_calibration", "iterations"])
    for r in rows:
        print(f"{r['backbone']:18s} {r['method']:12s} {r['kind']:15s} {r['seconds']:9.2f} s  "
              f"{r['vs_calibration']:8.1f}x calibration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
