"""GPU benchmark on ImageNet-sized inputs: one DQSS search step, one selection sweep and one DQSS-QAT
step, each against the step it competes with, side by side in one run.

The network is ``--backbone`` (default resnet50) with random weights, at its timm input size (224x224),
batch ``--batch`` (64); the candidates, quantizer options and selection settings are those of the
config's tracks (default config/paper.yaml: six PTQ strategies, four QAT methods).  The cost does not
depend on the weights or the images, so neither data nor pretrained weights are needed.

- ``fp_step``: one FP training step of the network (forward, cross-entropy, backward, SGD step).
- ``search_step``: one step of :func:`dqss.algorithms.search.search` on the BN-folded mixed model (every layer's
  weight and activation a softmax mixture of all candidates, the efficient convolution), batch ``--batch``.
  Target: at most 1.3x ``fp_step``.
- ``selection_sweep``: one coordinate-descent sweep of :func:`dqss.algorithms.select.measured_selection` over every
  (layer, role) on the search part of ``--calib`` images, guarded on the held part (the config's
  ``top_k``, ``block_cache`` and evaluation batch); reported against ``fp_step`` for scale (no target).
- ``qat``: one DQSS-QAT step with every QAT candidate over one LSQ step (:mod:`dqss.bench.qat`, same
  network and batch).  Target: at most 1.5x.
``--compile`` also times the search and QAT steps with the models wrapped in ``torch.compile``.

Steps are timed with the device synchronised around each one (:mod:`dqss.timing`); every figure is the median
of ``--steps`` timed steps after ``--warmup`` untimed ones.  The whole benchmark is one command::

    python -m dqss.bench.gpu --device cuda                       # results/benchmarks/gpu.csv
    python -m dqss.bench.gpu --device cpu --backbone resnet18 --size 32 --batch 8 --calib 32 --steps 2
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
from pathlib import Path

import torch

from ..timing import clock, round_robin

log = logging.getLogger(__name__)

TARGETS = {"search_step": 1.3, "qat_dqss_efficient": 1.5}  # the ceilings, over fp_step / lsq


def fp_step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One FP training step of ``model`` (SGD with momentum, as the FP recipes train)."""
    import torch.nn.functional as F

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()  # the search step reads its loss every step too
    return step


def run(config: str = "config/paper.yaml", backbone: str = "resnet50", batch: int = 64, size: int | None = None,
        calib: int | None = None, bits: int = 4, steps: int = 10, warmup: int = 3, device: str = "auto",
        compile: bool = False, out: Path = Path("results/benchmarks/gpu.csv")) -> list[dict]:
    import copy

    from .qat import run as run_qat
    from .select import build_search_setup, evaluators
    from ..tracks.cls_ptq import ClsPTQConfig
    from ..tracks.cls_qat import ClsQATConfig
    from ..algorithms.ptq import quantize_mixed
    from ..results import write_csv
    from ..algorithms.search import search
    from ..algorithms.select import argmax_assignment, measured_selection
    from ..tracks.common import resolve_device
    from ..workflow import load_yaml

    dev = torch.device(resolve_device(device))
    raw = load_yaml(config)
    cfg = ClsPTQConfig.from_dict(raw["cls_ptq"], "cls_ptq")  # no data check: the inputs are random
    qat_cfg = ClsQATConfig.from_dict(raw["cls_qat"], "cls_qat")
    setup = build_search_setup(cfg, backbone, bits, dev, seed=0, n=calib, size=size)
    size = setup["size"]
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, size, size, generator=g).to(dev)
    y = torch.randint(0, cfg.num_classes() or 1000, (batch,), generator=g).to(dev)
    common = {"backbone": backbone, "batch": batch, "input_size": size, "bits": bits, "device": str(dev),
              "steps": steps, "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "",
              "torch": torch.__version__}
    rows = []

    def add(name, ms, ref=None, target=None, **extra):
        med = statistics.median(ms)
        ratio = med / ref if ref else None
        rows.append({"measure": name, "ms_median": round(med, 2), "ms_min": round(min(ms), 2),
                     "ms_max": round(max(ms), 2), "ratio": None if ratio is None else round(ratio, 3),
                     "target": target, "meets": None if target is None else bool(ratio <= target),
                     **extra, **common})
        log.info("%-26s %10.1f ms%s", name, med, "" if ratio is None else
                 f"   x{ratio:.2f}" + ("" if target is None else f" (target <= {target}: "
                                         f"{'met' if ratio <= target else 'NOT met'})"))
        return med

    # one FP training step and one search step (search() itself, one iteration a call, on the calibration's
    # search part), timed round-robin
    fp_model = copy.deepcopy(setup["model"]).to(dev)
    s_cfg = dataclasses.replace(cfg.dqss, iterations=1, batch_size=batch)
    xs, ts = setup["x"][setup["s_idx"]], setup["teacher"][setup["s_idx"]]
    if len(xs) < batch:  # the search part must hold one batch: repeat it (timing only)
        reps = -(-batch // len(xs))
        xs, ts = xs.repeat(reps, 1, 1, 1), ts.repeat(reps, 1)
    fns = {"fp_step": fp_step_fn(fp_model, x, y)}
    counter = iter(range(10 ** 9))
    for suffix, wrap in [("", lambda m: m)] + ([("_compiled", torch.compile)] if compile else []):
        qmodel = quantize_mixed(setup["folded"], setup["plans"], setup["stats"], setup["strategies"], cfg.dqss.mode)
        runner = wrap(qmodel.to(dev))
        fns[f"search_step{suffix}"] = lambda r=runner: search(r, xs, ts, s_cfg, next(counter), dev)
    times = {name: [s * 1000 for s in t] for name, t in round_robin(fns, steps, warmup, dev).items()}  # ms
    fp = add("fp_step", times.pop("fp_step"))
    for name, ms in times.items():
        add(name, ms, fp, TARGETS["search_step"], candidates=len(setup["strategies"]), layers=len(setup["plans"]))
    del fp_model, fns

    # one selection sweep from the searched model's argmax
    ev_s, ev_h = evaluators(qmodel, setup, cfg, dev)
    sweep_ms = []
    for r in range(max(1, min(steps, 3))):
        sel, seconds = clock(lambda q=qmodel, evs=(ev_s, ev_h): measured_selection(
            q, list(setup["strategies"]), argmax_assignment(q), *evs, sweeps=1, accept_z=cfg.dqss.accept_z,
            top_k=cfg.dqss.top_k, samples=setup["samples"], progress="bench"), dev)
        sweep_ms.append(seconds * 1000)
    add("selection_sweep", sweep_ms, fp, evaluations=sel.record.get("evaluations"),
        moves_tried=sel.record.get("moves_tried"), search_items=len(setup["s_idx"]),
        held_items=len(setup["h_idx"]), candidates=len(setup["strategies"]), layers=len(setup["plans"]))
    del qmodel, ev_s, ev_h

    # DQSS-QAT over LSQ: the QAT benchmark's round-robin timing on the same network and batch
    methods = tuple(qat_cfg.dqss.candidates or qat_cfg.strategies)
    for suffix, flag in [("", False)] + ([("_compiled", True)] if compile else []):
        qrows = run_qat(out.with_name(out.stem + f"_qat{suffix}.csv"), backbone, batch, size, steps, warmup,
                        str(dev), methods, ("efficient",), bits, compile=flag,
                        num_classes=cfg.num_classes() or 1000)
        by = {r["method"]: r for r in qrows}
        ref = by["lsq"]["ms_per_step"]
        for name, r in by.items():
            target = TARGETS["qat_dqss_efficient"] if name == "dqss_efficient" else None
            add(f"qat_{name}{suffix}", [r["ms_per_step"]], ref, target, candidates=r["n_candidates"])
            rows[-1]["ms_min"] = rows[-1]["ms_max"] = None  # the QAT benchmark reports medians only
    write_csv(out, rows)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config/paper.yaml", help="whose cls_ptq/cls_qat candidates and options")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=None, help="input size (default: the backbone's timm data config)")
    p.add_argument("--calib", type=int, default=None, help="calibration images (default: the config's size)")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd search and QAT steps")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/gpu.csv"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = run(a.config, a.backbone, a.batch, a.size, a.calib, a.bits, a.steps, a.warmup, a.device, a.compile,
               a.out)
    missed = [r["measure"] for r in rows if r["meets"] is False]
    print(f"wrote {a.out}; targets missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
