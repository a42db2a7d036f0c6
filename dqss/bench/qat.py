"""QAT step benchmark: one DQSS-QAT training step with every candidate vs one step of each
uniform QAT method (LSQ is the reference), side by side in one process.

A step is :func:`dqss.algorithms.qat_train.qat_step`, what :func:`~dqss.algorithms.qat_train.train_qat` runs per
mini-batch: forward, cross-entropy, one backward, then the optimiser steps (weights, quantizer parameters
and, for DQSS, the logits).  All models are built first; then the methods are timed round-robin (one step of
each per round) so that drift of the machine hits all of them alike; the table reports
the median per method.  Memory: CUDA allocator peak per step on a GPU; on CPU the bytes
of the distinct tensors autograd saves for one step's backward, parameters apart.
Usage::

    python -m dqss.bench.qat --out results/benchmarks/qat_step.csv
"""
from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

from ..results import write_csv
from ..timing import round_robin, saved_tensor_mb, sync

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("lsq", "lsq_plus", "pact", "dorefa")


def build(method: str, model, plans, stats, candidates, mode: str):
    import torch

    from ..algorithms.qat_train import param_groups, quantize_qat
    from ..core.mixed import arch_parameters, set_mode
    from ..core.strategy import get_strategy

    names = candidates if method.startswith("dqss") else [method]
    strategies = {n: get_strategy(n) for n in names}
    qmodel = quantize_qat(model, plans, stats, {n: strategies for n in plans}, mode).train()
    weights, quant, arch = param_groups(qmodel)
    opts = [torch.optim.SGD(weights, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)]
    if quant:
        opts.append(torch.optim.SGD(quant, lr=1e-3, momentum=0.9))
    if arch_parameters(qmodel):
        set_mode(qmodel, mode)
        opts.append(torch.optim.Adam(arch, lr=1e-3, betas=(0.5, 0.999)))
    return qmodel, opts


def run(out: Path, backbone: str = "resnet20", batch: int = 128, size: int = 32, steps: int = 20,
        warmup: int = 3, device: str = "auto", methods=DEFAULT_METHODS, modes=("efficient", "naive"),
        bits: int = 4, compile: bool = False, num_classes: int = 10) -> list[dict]:
    """Time one step of each method (and of DQSS-QAT over all ``methods`` in each of ``modes``); with
    ``compile`` every model's forward runs through ``torch.compile`` (the optimiser steps stay eager)."""
    import torch
    import torch.nn.functional as F

    from ..algorithms.qat_train import qat_step
    from ..core.layers import QuantPolicy, plan_layers
    from ..cls.models import register_models
    from ..core.stats import collect_act_stats

    import timm

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    register_models()
    torch.manual_seed(0)
    model = timm.create_model(backbone, num_classes=num_classes).eval()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, num_classes, (batch,))
    plans = plan_layers(model, QuantPolicy(), bits, bits, x[:2])
    stats = collect_act_stats(model, {k: model.get_submodule(k) for k in plans}, [x])
    runs = {m: build(m, model, plans, stats, list(methods), "efficient") for m in methods}
    for mode in modes:
        runs[f"dqss_{mode}"] = build("dqss", model, plans, stats, list(methods), mode)
    x, y = x.to(dev), y.to(dev)
    for qmodel, _ in runs.values():
        qmodel.to(dev)

    forwards = {name: torch.compile(q) if compile else q for name, (q, _) in runs.items()}

    def step(name):  # train_qat's own step (its learning-rate schedules apart)
        qat_step(forwards[name], x, y, runs[name][1])

    fns = {name: lambda name=name: step(name) for name in runs}
    times = {name: [s * 1000 for s in t] for name, t in round_robin(fns, steps, warmup, dev).items()}  # ms
    peaks = {}
    for name, (qmodel, _) in runs.items():
        if dev.type == "cuda":
            sync(dev)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(name)
            sync(dev)
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        else:
            peaks[name] = saved_tensor_mb(lambda q=qmodel: F.cross_entropy(q(x), y),
                                          [*qmodel.parameters(), *qmodel.buffers()])
    ref = statistics.median(times["lsq"]) if "lsq" in times else None
    rows = []
    for name, t in times.items():
        med = statistics.median(t)
        rows.append({"method": name, "n_candidates": len(methods) if name.startswith("dqss") else 1,
                     "ms_per_step": round(med, 2), "over_lsq": round(med / ref, 3) if ref else None,
                     "mem_mb": round(peaks[name], 1), "backbone": backbone, "batch": batch, "input_size": size,
                     "bits": bits, "steps": steps, "device": device, "threads": torch.get_num_threads(),
                     "compiled": compile,
                     "mem_measure": "cuda_peak_allocated" if dev.type == "cuda" else "autograd_saved"})
        log.info("%-16s %8.1f ms/step  x%.2f of lsq  %7.1f MB", name, med, med / ref if ref else float("nan"),
                 peaks[name])
    write_csv(out, rows)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/qat_step.csv"))
    p.add_argument("--device", default="auto")
    p.add_argument("--backbone", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(a.out, a.backbone, a.batch, a.size, a.steps, device=a.device)


if __name__ == "__main__":
    main()
