"""How the suite times code: one owner for the measurement loop every benchmark (``dqss.bench``) and the
deployment's latency comparison (:func:`dqss.deploy.compare_latency`) use.

- :func:`sync`: wait for the device's queued work (CUDA; a no-op on the CPU), so that a clock reading covers the
  work of the call it brackets and no other.
- :func:`clock`: one call, the device synchronised before and after it; its result and its seconds.
- :func:`round_robin`: several candidates timed in turn within each round (a, b, a, b, ...) after untimed
  warm-up calls, so that drift of the machine hits all alike; the seconds of every timed call.
- :func:`medians`: the median of each candidate's calls, the figure every table reports.
- :func:`saved_tensor_mb`: the memory autograd keeps for one backward, where no allocator peak is tracked (CPU).

Times are seconds from :func:`time.perf_counter`; a caller that reports milliseconds multiplies by 1000.
A leaf module: it imports torch only, and nothing of the suite.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

__all__ = ["clock", "medians", "round_robin", "saved_tensor_mb", "sync"]


def _is_cuda(device) -> bool:
    if device is None:
        return False
    import torch

    return torch.device(device).type == "cuda"


def sync(device) -> None:
    """Wait for the work queued on ``device`` (a torch device or its name; None: the CPU, nothing to wait for)."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize()


def clock(fn: Callable, device=None) -> tuple[object, float]:
    """``fn()``'s result and the seconds it took, ``device`` synchronised before and after the call."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def round_robin(fns: dict[str, Callable], rounds: int, warmup: int = 0, device=None,
                interleave_warmup: bool = False) -> dict[str, list[float]]:
    """Seconds of each call of each of ``fns`` (by name), timed round-robin: ``rounds`` rounds of one call of
    each, in ``fns``' order, each call bracketed by :func:`sync` of ``device``, after ``warmup`` untimed calls
    of each (all of one candidate's before the next's; ``interleave_warmup``: in rounds too)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if interleave_warmup:
        for _ in range(warmup):
            for fn in fns.values():
                fn()
    else:
        for fn in fns.values():
            for _ in range(warmup):
                fn()
    cuda = _is_cuda(device)
    if cuda:
        import torch
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            out[name].append(time.perf_counter() - t0)
    return out


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """The median of each candidate's timed calls."""
    return {name: statistics.median(t) for name, t in times.items()}


def saved_tensor_mb(forward: Callable, persistent=()) -> float:
    """MB of distinct storages autograd keeps for the backward of ``forward()``, apart
    from ``persistent`` tensors (parameters, buffers, cached weights) that exist anyway."""
    import torch

    skip = {t.untyped_storage().data_ptr() for t in persistent}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values()) / 2 ** 20
