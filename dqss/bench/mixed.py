"""Mixed-convolution benchmark: cost of one DQSS search step, efficient vs naive.

For N candidate strategies per tensor, the efficient layer runs one convolution on the
mixed activation and mixed weight; the naive one runs N x N convolutions.  Each
(N, mode) is measured in a fresh process.  Memory: on CUDA the allocator's peak over
the steps (above what the model already held); on CPU, where no allocator peak is
tracked, the bytes of the distinct tensors autograd saves for the backward pass of
one step, parameters and buffers apart (resident-set readings do not show it, because
freed memory stays with the process).  Frozen PTQ weights are quantized once per
candidate and cached; ``weight_cache_mb`` reports that cache (the same in both modes).
Usage::

    python -m dqss.bench.mixed --out results/benchmarks/mixed_conv.csv
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

from ..results import write_csv
from ..timing import round_robin, saved_tensor_mb, sync

log = logging.getLogger(__name__)

# Cheap range strategies with distinct options: the step cost does not depend on which
# range each candidate chose, only on how many candidates there are.
_CANDIDATES = [("minmax", {}), ("percentile", {"percentile": 99.99}), ("aciq", {}),
               ("percentile", {"percentile": 99.9}), ("aciq", {"prior": "gaussian"}),
               ("percentile", {"percentile": 99.0}), ("percentile", {"percentile": 99.999}),
               ("percentile", {"percentile": 98.0})]


def measure(n: int, mode: str, backbone: str = "resnet18", batch: int = 32, size: int = 32,
            steps: int = 10, warmup: int = 2, device: str = "cpu") -> dict:
    """Median milliseconds per search step and peak memory of ``n`` candidates in ``mode``."""
    import timm
    import torch

    from ..core.layers import QuantPolicy, fold_batchnorm, plan_layers
    from ..core.mixed import arch_parameters, mixed_layers, set_mode
    from ..algorithms.ptq import quantize_mixed
    from ..core.stats import collect_act_stats
    from ..core.strategy import get_strategy

    if not 1 <= n <= len(_CANDIDATES):
        raise ValueError(f"n must lie in 1..{len(_CANDIDATES)}")
    torch.manual_seed(0)
    dev = torch.device(device)
    model = timm.create_model(backbone, num_classes=10).eval()
    x = torch.randn(batch, 3, size, size)
    folded = fold_batchnorm(model, x[:2])
    plans = plan_layers(folded, QuantPolicy(), 4, 4, x[:2])
    stats = collect_act_stats(folded, {k: folded.get_submodule(k) for k in plans}, [x])
    strategies = {f"c{i}_{name}": get_strategy(name, opts) for i, (name, opts) in enumerate(_CANDIDATES[:n])}
    qmodel = quantize_mixed(folded, plans, stats, strategies, mode).to(dev)
    set_mode(qmodel, mode)
    opt = torch.optim.Adam(arch_parameters(qmodel), lr=0.01)
    target = folded.to(dev)(x.to(dev)).detach()
    x = x.to(dev)

    def loss_fn():
        return torch.nn.functional.mse_loss(qmodel(x), target)

    def step():
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = [s * 1000 for s in round_robin({"step": step}, steps, device=dev)["step"]]  # ms, after the peak reset
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        how = "cuda_peak_allocated"
    else:
        caches = [m._weight_cache for m in mixed_layers(qmodel).values() if m._weight_cache is not None]
        peak = saved_tensor_mb(loss_fn, [*qmodel.parameters(), *qmodel.buffers(), *caches])
        how = "autograd_saved"
    cache_mb = sum(m._weight_cache.numel() * m._weight_cache.element_size()
                   for m in mixed_layers(qmodel).values() if m._weight_cache is not None) / 2 ** 20
    return {"n_candidates": n, "mode": mode, "ms_per_step": statistics.median(times),
            "peak_mem_mb": round(peak, 1), "weight_cache_mb": round(cache_mb, 1), "backbone": backbone, "batch": batch, "input_size": size,
            "steps": steps, "device": device, "mem_measure": how}


def run_all(out: Path, ns=(1, 2, 4, 6, 8), modes=("efficient", "naive"), device: str = "auto", **kw) -> list[dict]:
    """Measure every (N, mode) in its own process; write the CSV."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for mode in modes:
        for n in ns:
            args = [sys.executable, "-m", "dqss.bench.mixed", "--one", str(n), mode, "--device", device,
                    "--json-kw", json.dumps(kw)]
            res = subprocess.run(args, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"benchmark N={n} {mode} failed:\n{res.stderr[-2000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            log.info("N=%d %-9s %.1f ms/step, peak %.1f MB", n, mode, row["ms_per_step"], row["peak_mem_mb"])
            rows.append(row)
    write_csv(out, rows, ["n_candidates", "mode", "ms_per_step", "peak_mem_mb", "weight_cache_mb", "backbone",
                          "batch", "input_size", "steps", "device", "mem_measure"])
    return rows


def summary(rows: list[dict]) -> dict:
    """The ratios the issue asks for."""
    get = {(r["n_candidates"], r["mode"]): r for r in rows}
    out = {}
    if (1, "efficient") in get and (8, "efficient") in get:
        out["efficient_time_n8_over_n1"] = get[8, "efficient"]["ms_per_step"] / get[1, "efficient"]["ms_per_step"]
        out["efficient_mem_n8_over_n1"] = (get[8, "efficient"]["peak_mem_mb"]
                                           / max(get[1, "efficient"]["peak_mem_mb"], 1e-9))
    if (6, "efficient") in get and (6, "naive") in get:
        out["naive_over_efficient_time_n6"] = get[6, "naive"]["ms_per_step"] / get[6, "efficient"]["ms_per_step"]
        out["naive_over_efficient_mem_n6"] = (get[6, "naive"]["peak_mem_mb"]
                                              / max(get[6, "efficient"]["peak_mem_mb"], 1e-9))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/mixed_conv.csv"))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    p.add_argument("--one", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--json-kw", default="{}", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(measure(int(a.one[0]), a.one[1], device=a.device, **json.loads(a.json_kw))))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = run_all(a.out, tuple(a.ns), device=a.device, batch=a.batch, steps=a.steps)
    for k, v in summary(rows).items():
        log.info("%s = %.2f", k, v)


if __name__ == "__main__":
    main()
