"""Which layer produced the first non-finite value: the diagnosis in the errors of a calibration, a search or a QAT
run that met a NaN or an infinity."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def first_nonfinite_output(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module]) -> str:
    """Name of the first of ``layers`` whose output on ``x`` is not finite (for error messages)."""
    found: list[str] = []

    def hook(name):
        def fn(_m, _a, out):
            if not found and not torch.isfinite(out).all():
                found.append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else "none (the loss itself)"

