"""Calibration statistics, collected once per model and shared by every range strategy.

For each quantized layer's input activation we keep the exact minimum, maximum and
moments, and two magnitude histograms (positive values and negated negative values)
over a common range ``[0, M]``.  When a batch exceeds ``M`` the histograms are merged
pairwise and ``M`` doubles, so the histogram stays exact at its resolution without a
second pass (the histogram-calibrator idea of NVIDIA's pytorch-quantization).
Strategies that need the layer's real inputs (EasyQuant) ask for a small sample.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class ActStats:
    bins: int = 2048
    hist_max: float = 0.0
    hist_pos: torch.Tensor | None = None
    hist_neg: torch.Tensor | None = None
    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0
    zeros: int = 0
    sum: float = 0.0
    sum_sq: float = 0.0
    abs_sum: float = 0.0
    samples: list[torch.Tensor] = field(default_factory=list)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if not torch.isfinite(x).all():
            raise FloatingPointError("non-finite activation during calibration; check the model weights "
                                     "and the input normalisation")
        self.min = min(self.min, x.min().item())
        self.max = max(self.max, x.max().item())
        self.count += x.numel()
        self.zeros += int((x == 0).sum())
        self.sum += x.sum(dtype=torch.float64).item()
        self.sum_sq += (x.double() ** 2).sum().item()
        self.abs_sum += x.abs().sum(dtype=torch.float64).item()
        amax = max(abs(self.min), abs(self.max))
        if self.hist_pos is None:
            # strictly above every value, so no value ever sits on the right edge of a bin
            # that a later doubling would split
            self.hist_max = amax * (1 + 2 ** -12) if amax > 0 else 1e-8
            self.hist_pos = torch.zeros(self.bins, dtype=torch.float64)
            self.hist_neg = torch.zeros(self.bins, dtype=torch.float64)
        while amax >= self.hist_max:
            self.hist_pos = _merge_pairs(self.hist_pos)
            self.hist_neg = _merge_pairs(self.hist_neg)
            self.hist_max *= 2.0
        pos = x[x >= 0]
        neg = -x[x < 0]
        self.hist_pos += torch.histc(pos, self.bins, 0.0, self.hist_max).double().cpu()
        self.hist_neg += torch.histc(neg, self.bins, 0.0, self.hist_max).double().cpu()

    # -- derived quantities -------------------------------------------------------
    @property
    def nonnegative(self) -> bool:
        return self.min >= 0.0

    @property
    def mean(self) -> float:
        return self.sum / max(self.count, 1)

    @property
    def mean_abs(self) -> float:
        """Exact E|x| (LSQ initialises its step from it)."""
        return self.abs_sum / max(self.count, 1)

    @property
    def std(self) -> float:
        var = self.sum_sq / max(self.count, 1) - self.mean ** 2
        return max(var, 0.0) ** 0.5

    @property
    def bin_width(self) -> float:
        return self.hist_max / self.bins

    def centers(self) -> torch.Tensor:
        return (torch.arange(self.bins, dtype=torch.float64) + 0.5) * self.bin_width

    def abs_hist(self) -> torch.Tensor:
        """Histogram of |x| over ``[0, hist_max]``."""
        return self.hist_pos + self.hist_neg

    def signed_hist(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts and bin centres of x over ``[-hist_max, hist_max]``, ascending."""
        c = self.centers()
        return (torch.cat([self.hist_neg.flip(0), self.hist_pos]),
                torch.cat([-c.flip(0), c]))

    def mean_abs_deviation(self) -> float:
        counts, centers = self.signed_hist()
        return float((counts * (centers - self.mean).abs()).sum() / counts.sum().clamp_min(1))

    def state(self) -> dict:
        d = {k: getattr(self, k) for k in ("bins", "hist_max", "hist_pos", "hist_neg", "min", "max",
                                           "count", "zeros", "sum", "sum_sq", "abs_sum")}
        d["samples"] = torch.cat(self.samples) if self.samples else None
        return d

    @classmethod
    def from_state(cls, d: dict) -> ActStats:
        d = dict(d)
        samples = d.pop("samples")
        out = cls(**d)
        out.samples = [samples] if samples is not None else []
        return out


def _merge_pairs(h: torch.Tensor) -> torch.Tensor:
    merged = h.view(-1, 2).sum(1)
    return torch.cat([merged, torch.zeros_like(merged)])


@torch.no_grad()
def collect_act_stats(model: nn.Module, layers: dict[str, nn.Module], batches,
                      bins: int = 2048, n_samples: int = 0, device: str | torch.device = "cpu",
                      desc: str = "calibration") -> dict[str, ActStats]:
    """One pass over ``batches`` recording every listed layer's input statistics.

    ``n_samples`` inputs per layer (the first images seen) are kept for strategies that
    evaluate the layer itself.
    """
    stats = {name: ActStats(bins=bins) for name in layers}
    kept = {name: 0 for name in layers}

    def hook(name):
        def fn(_module, args):
            x = args[0]
            stats[name].update(x)
            if kept[name] < n_samples:
                take = x[: n_samples - kept[name]].detach().cpu()
                stats[name].samples.append(take)
                kept[name] += take.shape[0]
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    model.eval()
    try:
        for i, images in enumerate(tqdm(batches, desc=desc, leave=False)):
            try:
                model(images.to(device))
            except FloatingPointError:
                bad = (i, images)
                break
        else:
            bad = None
    finally:
        for h in handles:
            h.remove()
    if bad is not None:
        from .layers import first_nonfinite_output

        i, images = bad
        if not torch.isfinite(images).all():
            where = "the input images themselves"
        else:
            layer = first_nonfinite_output(model, images.to(device), _leaves(model))
            where = "an operation outside any module" if layer.startswith("none") else f"layer '{layer}'"
        raise FloatingPointError(f"non-finite activation during calibration (batch {i}): the first non-finite output "
                                 f"comes from {where}; check the model weights and the input normalisation")
    log.info("collected statistics of %d layers", len(stats))
    return stats


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and not any(True for _ in m.children())}


def save_stats(stats: dict[str, ActStats], path) -> None:
    torch.save({k: v.state() for k, v in stats.items()}, path)


def load_stats(path) -> dict[str, ActStats]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise RuntimeError(f"cannot read calibration statistics {path}: {exc}. Delete the file and rerun "
                           "the workflow to recompute it") from exc
    return {k: ActStats.from_state(v) for k, v in raw.items()}
