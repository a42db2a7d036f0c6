"""Cost of the measured selection against the gradient search, per backbone, side by side in one run.

For each backbone of a track's config, one mixed model over the configured candidates is built at one
bit width; the gradient search (``dqss.iterations`` steps) and the measured selection (the config's
``sweeps``, ``top_k``, ``block_cache``) run on the same calibration-sized input, and the medians of
``--repeats`` runs are reported with their ratio.  The cost does not depend on the weights, so the
backbones are randomly initialised and the inputs random (no data or training needed):

    python -m dqss.bench.select config/config.yaml --track cls_ptq --bits 4 --repeats 3 --device cpu

Results in results/bench_select.csv (medians, ratio, evaluations, moves tried).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys

import torch

from ..timing import clock

log = logging.getLogger(__name__)


def build_search_setup(cfg, backbone: str, bits: int, device, seed: int = 0, n: int | None = None,
                       size: int | None = None) -> dict:
    """A randomly initialised ``backbone`` of a track config, BN-folded and calibrated on ``n`` random
    images (default: the config's calibration size) of ``size`` pixels (default: the config's or the
    backbone's) at ``bits``: everything the search and the selection
    need (the cost does not depend on the weights or the images)."""
    import timm

    from ..core.layers import fold_batchnorm, plan_layers
    from ..cls.models import data_config, register_models
    from ..algorithms.ptq_search import split_calibration
    from ..core.stats import collect_act_stats

    register_models()
    torch.manual_seed(seed)
    model = timm.create_model(backbone, pretrained=False, num_classes=cfg.num_classes() or 1000).eval()
    size = size or (cfg.data.input_size if cfg.data.name == "digits" else data_config(model)["input_size"][-1])
    n = n or cfg.calibration.size
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    folded = fold_batchnorm(model, x[:1]).to(device)
    plans = plan_layers(folded, cfg.quant, bits, bits, x[:1].to(device))
    stats = collect_act_stats(folded, {k: folded.get_submodule(k) for k in plans},
                              torch.split(x, cfg.calibration.batch_size), bins=cfg.calibration.bins,
                              n_samples=cfg.calibration.samples, device=device)
    strategies = {s: cfg.strategy(s) for s in cfg.dqss.candidates}
    with torch.no_grad():
        teacher = torch.cat([folded(b.to(device)).cpu() for b in torch.split(x, cfg.calibration.batch_size)])
    s_idx, h_idx = (torch.tensor(i) for i in split_calibration(n, cfg.calibration.hold_fraction, seed))
    samples = {k: torch.cat(st.samples).to(device) for k, st in stats.items() if k in plans and st.samples}
    return {"model": model, "folded": folded, "plans": plans, "stats": stats, "strategies": strategies,
            "x": x, "teacher": teacher, "s_idx": s_idx, "h_idx": h_idx, "samples": samples, "size": size}


def evaluators(qmodel, setup: dict, cfg, device):
    """The selection's two evaluators (search and held part of the calibration), as the jobs build them."""
    from ..algorithms.select import Evaluator

    x, teacher, s_idx, h_idx = setup["x"], setup["teacher"], setup["s_idx"], setup["h_idx"]
    ev_s = Evaluator(qmodel, x[s_idx], teacher[s_idx], "kl", cfg.calibration.batch_size, device,
                     cache=cfg.dqss.block_cache)
    ev_h = Evaluator(qmodel, x[h_idx], teacher[h_idx], "kl", cfg.calibration.batch_size, device)
    return ev_s, ev_h


def bench_backbone(cfg, backbone: str, bits: int, device, repeats: int, seed: int = 0) -> dict:
    from ..algorithms.ptq import quantize_mixed
    from ..algorithms.search import search
    from ..algorithms.select import argmax_assignment, measured_selection

    setup = build_search_setup(cfg, backbone, bits, device, seed)
    folded, plans, stats, strategies = (setup[k] for k in ("folded", "plans", "stats", "strategies"))
    x, teacher, s_idx, samples = setup["x"], setup["teacher"], setup["s_idx"], setup["samples"]
    times = {"search": [], "selection": []}
    record = {}
    for r in range(repeats):
        qmodel = quantize_mixed(folded, plans, stats, strategies, cfg.dqss.mode)
        _, seconds = clock(lambda: search(qmodel, x[s_idx], teacher[s_idx], cfg.dqss, seed + r, device), device)
        times["search"].append(seconds)
        ev_s, ev_h = evaluators(qmodel, setup, cfg, device)
        sel, seconds = clock(lambda: measured_selection(
            qmodel, list(strategies), argmax_assignment(qmodel), ev_s, ev_h, sweeps=cfg.dqss.sweeps,
            accept_z=cfg.dqss.accept_z, top_k=cfg.dqss.top_k, samples=samples), device)
        times["selection"].append(seconds)
        record = sel.record
    search_s, select_s = (statistics.median(times[k]) for k in ("search", "selection"))
    return {"task": cfg.task, "backbone": backbone, "bits": bits, "device": str(device), "layers": len(plans),
            "candidates": len(strategies), "search_steps": cfg.dqss.iterations,
            "search_s_median": round(search_s, 3), "selection_s_median": round(select_s, 3),
            "ratio_selection_over_search": round(select_s / search_s, 3),
            "evaluations": record.get("evaluations"), "moves_tried": record.get("moves_tried"),
            "sweeps_run": record.get("sweeps_run"), "block_cache": record.get("block_cache"),
            "top_k": record.get("top_k"), "repeats": repeats}


def main(argv=None) -> int:
    from ..tracks.common import resolve_device
    from ..results import write_csv
    from ..workflow import load_yaml, track_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--track", default="cls_ptq", choices=["cls_ptq"])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", action="append", help="only these backbones (default: all of the config)")
    ap.add_argument("--out", default="results/bench_select.csv")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = track_config(load_yaml(args.config), args.track)
    if cfg is None:
        raise SystemExit(f"{args.config} has no {args.track} section")
    device = resolve_device(args.device)
    rows = [bench_backbone(cfg, b, args.bits, device, args.repeats) for b in (args.backbone or cfg.backbones)]
    write_csv(args.out, rows)
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
