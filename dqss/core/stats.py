"""Calibration statistics, collected once per model and shared by every range strategy.

For each quantized layer's input activation we keep the exact minimum, maximum and
moments, and two magnitude histograms (positive values and negated negative values)
over the fixed range ``[0, M]`` with ``M = max|x| * (1 + 2**-12)`` (``M`` strictly above
every value, so no value sits on the closing edge).  The range is known only after
every batch has been seen, so collection takes two passes over the calibration batches,
like TensorRT's legacy calibrator: the first records the exact minimum, maximum, moments,
zero count and samples, the second fills the histograms over the now fixed range.  The
histograms therefore depend only on the data, not on how it was batched or ordered
(growing the range while batches arrive, as NVIDIA's pytorch-quantization and earlier
versions of this module do, makes the bins depend on the batch order).  Bins follow
``numpy.histogram`` exactly (float64 edges ``k * M / bins``, last bin closed).
Strategies that need the layer's real inputs (EasyQuant) ask for a small sample.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .nonfinite import first_nonfinite_output

log = logging.getLogger(__name__)

# 2: histograms over the exact range found by a first pass.  (Files without the key are
# format 1, whose range grew by doubling with the batches; they are refused, not reused.)
STATS_FORMAT = 2
_CHUNK = 1 << 22  # values binned at a time in the second pass


def hist_bins(mag: torch.Tensor, bins: int, top) -> torch.Tensor:
    """The bin of each value of ``mag`` (all in ``[0, top]``) among ``bins`` equal bins of
    ``[0, top]``, exactly as ``numpy.histogram(mag, bins, range=(0, top))`` assigns it: float64
    edges ``k * (top / bins)``, the last bin closed.  ``top`` may be a tensor broadcasting
    against ``mag`` (one range per row)."""
    mag = mag.double()
    top = torch.as_tensor(top, dtype=torch.float64, device=mag.device)
    step = top / bins
    idx = (mag * (bins / top)).floor().long().clamp(0, bins - 1)
    # numpy's correction against the edges themselves, so rounding never moves a value across an edge
    idx = idx - (mag < idx.double() * step).long()
    upper = torch.where(idx == bins - 1, top, (idx + 1).double() * step)
    return idx + ((mag >= upper) & (idx < bins - 1)).long()


@dataclass
class ActStats:
    """Statistics of one tensor over all calibration batches.

    Filled in two passes over the same batches: ``update_range`` for each batch, then
    ``fix_range``, then ``update_hist`` for each batch (``ActStats.of`` does all three for a
    list of tensors; ``collect_act_stats`` for a model's layer inputs).
    """
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

    @classmethod
    def of(cls, batches, bins: int = 2048) -> ActStats:
        """The statistics of the tensors ``batches`` (any iterable; it is listed once)."""
        batches = list(batches)
        st = cls(bins=bins)
        for x in batches:
            st.update_range(x)
        st.fix_range()
        for x in batches:
            st.update_hist(x)
        st.check_complete()
        return st

    def update_range(self, x: torch.Tensor) -> None:
        """First pass: the exact minimum, maximum, moments and zero count, batch by batch."""
        if self.hist_pos is not None:
            raise RuntimeError("the histogram range is already fixed: update_range belongs to the first pass, "
                               "before fix_range()")
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

    def fix_range(self) -> None:
        """End of the first pass: the histograms' range ``[0, max|x| * (1 + 2**-12)]``."""
        if self.count == 0:
            raise RuntimeError("no values were recorded in the first pass; the histogram range is unknown")
        amax = max(abs(self.min), abs(self.max))
        # strictly above every value (TensorRT's legacy calibrator likewise histograms [0, max|x|])
        self.hist_max = amax * (1 + 2 ** -12) if amax > 0 else 1e-8
        self.hist_pos = torch.zeros(self.bins, dtype=torch.float64)
        self.hist_neg = torch.zeros(self.bins, dtype=torch.float64)

    def update_hist(self, x: torch.Tensor) -> None:
        """Second pass: add one batch to the histograms over the fixed range."""
        if self.hist_pos is None:
            raise RuntimeError("the histogram range is not fixed yet: call update_range on every batch, then "
                               "fix_range(), before update_hist")
        x = x.detach().float().flatten()
        top = float(x.abs().max()) if x.numel() else 0.0
        if not top <= self.hist_max:  # also false for NaN
            raise RuntimeError(f"a value in the second calibration pass (max |x| = {top}) lies "
                               f"outside the range of the first pass ({self.hist_max}): both passes must see the "
                               "same batches (a list of tensors or a loader without random augmentation)")
        counts = torch.zeros(2 * self.bins, dtype=torch.float64, device=x.device)
        for part in x.split(_CHUNK):  # bounded float64/int64 temporaries
            idx = hist_bins(part.abs(), self.bins, self.hist_max) + self.bins * (part < 0).long()
            counts += torch.bincount(idx, minlength=2 * self.bins).double()
        counts = counts.cpu()
        self.hist_pos += counts[:self.bins]
        self.hist_neg += counts[self.bins:]

    def check_complete(self) -> None:
        """Both passes saw the same number of values."""
        seen = int(self.abs_hist().sum()) if self.hist_pos is not None else 0
        if seen != self.count:
            raise RuntimeError(f"the second calibration pass saw {seen} values, the first {self.count}: both "
                               "passes must see the same batches (a list of tensors or a loader without random "
                               "augmentation or shuffling of a subset)")

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
        d["format"] = STATS_FORMAT
        return d

    @classmethod
    def from_state(cls, d: dict) -> ActStats:
        """The statistics of a :meth:`state` record, checked field by field (a ValueError names the field)."""
        if not isinstance(d, dict):
            raise ValueError(f"holds a {type(d).__name__}, not a statistics record (a dict of ActStats fields)")
        fmt = d.get("format", 1)
        if fmt != STATS_FORMAT:
            raise ValueError(f"calibration statistics of format {fmt}, this version reads format {STATS_FORMAT} "
                             "(histograms over the exact range of a first pass; format 1 grew the range by doubling, "
                             "so its histograms depend on the batch order)")
        problem = state_problem(d)
        if problem:
            raise ValueError(problem)
        d = {k: v for k, v in d.items() if k != "format"}
        samples = d.pop("samples")
        out = cls(**d)
        out.samples = [samples] if samples is not None else []
        return out

    def check(self) -> None:
        """A ValueError naming the first field that a :meth:`state` record could not hold (a NaN, say)."""
        problem = state_problem(self.state())
        if problem:
            raise ValueError(problem)


# the fields of a statistics record (ActStats.state): the scalars by type, then the tensors
_INT_FIELDS = ("bins", "count", "zeros")
_FLOAT_FIELDS = ("hist_max", "min", "max", "sum", "sum_sq", "abs_sum")
_TENSOR_FIELDS = ("hist_pos", "hist_neg", "samples")
STATE_FIELDS = (*_INT_FIELDS, *_FLOAT_FIELDS, *_TENSOR_FIELDS, "format")


def state_problem(d: dict) -> str | None:
    """What is wrong with the statistics record ``d`` (missing, unknown or ill-typed fields, non-finite values,
    histograms of the wrong length), or None.  A layer the forward pass never reached (``count`` 0) keeps an
    empty range (``min`` inf, ``max`` -inf) and no histograms."""
    unknown = sorted(set(d) - set(STATE_FIELDS))
    if unknown:
        return f"unknown field(s) {unknown}; a statistics record has the fields {list(STATE_FIELDS)}"
    missing = [k for k in STATE_FIELDS if k not in d]
    if missing:
        return f"field '{missing[0]}' is missing (a statistics record has the fields {list(STATE_FIELDS)})"
    for k in _INT_FIELDS:
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "bins" else 0):
            return f"{k} must be an integer >= {1 if k == 'bins' else 0}, got {v!r}"
    empty = d["count"] == 0
    for k in _FLOAT_FIELDS:
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{k} must be a number, got {v!r}"
        if not math.isfinite(v) and not (empty and k in ("min", "max")):
            return f"{k} is {v}: non-finite statistics (a NaN or inf in the calibration inputs or the model)"
    if not empty and not d["min"] <= d["max"]:
        return f"min {d['min']} is above max {d['max']}"
    for k in _TENSOR_FIELDS:
        v = d[k]
        if v is None and (empty or k == "samples"):
            continue
        if not isinstance(v, torch.Tensor):
            return f"{k} must be a tensor, got {type(v).__name__}"
        if k != "samples" and tuple(v.shape) != (d["bins"],):
            return f"{k} has shape {tuple(v.shape)}, expected ({d['bins']},) (one count per bin)"
        if v.is_floating_point() and not torch.isfinite(v).all():
            return f"{k} holds non-finite values"
        if k != "samples" and (v < 0).any():
            return f"{k} holds negative counts"
    return None


@torch.no_grad()
def collect_act_stats(model: nn.Module, layers: dict[str, nn.Module], batches,
                      bins: int = 2048, n_samples: int = 0, device: str | torch.device = "cpu",
                      desc: str = "calibration", outputs: bool = False) -> dict[str, ActStats]:
    """Two passes over ``batches`` recording every listed layer's input statistics (``outputs``: its output's,
    for the integer graph's tensors, :mod:`dqss.core.placement`).

    The first pass records the exact minimum, maximum, moments and zero count, the second
    the histograms over the range the first found, so ``batches`` must be re-iterable and
    yield the same tensors twice: a list or tuple of tensors (``torch.split`` of a tensor), or
    a loader without random augmentation.  A one-shot iterator or generator is refused with
    a TypeError (wrap it in ``list(...)``); batches that differ between the passes raise a
    RuntimeError (a GPU kernel's rounding may differ between the passes: the range's margin
    of ``2**-12`` absorbs it).  ``n_samples`` inputs per layer (the first images of the first pass) are
    kept for strategies that evaluate the layer itself.
    """
    if isinstance(batches, Iterator):
        raise TypeError("collect_act_stats makes two passes over the calibration batches, so they must be "
                        "re-iterable (a list or tuple of tensors, torch.split(...), a DataLoader), not a one-shot "
                        "iterator or generator; wrap it in list(...)")
    stats = {name: ActStats(bins=bins) for name in layers}
    kept = {name: 0 for name in layers}

    def first(name):
        def fn(x):
            stats[name].update_range(x)
            if kept[name] < n_samples:
                take = x[: n_samples - kept[name]].detach().cpu()
                stats[name].samples.append(take)
                kept[name] += take.shape[0]
        return fn

    def second(name):
        return stats[name].update_hist

    model.eval()
    _pass(model, layers, first, batches, device, f"{desc} (range)", outputs)
    for st in stats.values():
        if st.count:  # a layer the forward pass never reached keeps no histogram
            st.fix_range()
    _pass(model, layers, second, batches, device, f"{desc} (histograms)", outputs)
    for name, st in stats.items():
        try:
            st.check_complete()
        except RuntimeError as exc:
            raise RuntimeError(f"layer '{name}': {exc}") from None
    log.info("collected statistics of %d layers", len(stats))
    return stats


def _pass(model: nn.Module, layers: dict[str, nn.Module], hook, batches, device, desc: str,
          outputs: bool = False) -> None:
    """One forward pass over ``batches`` with ``hook(name)(tensor)`` on every listed layer's input (``outputs``:
    its output); a non-finite activation is traced to the first module that outputs it."""
    if outputs:
        handles = [m.register_forward_hook(lambda _m, _a, out, f=hook(n): f(out)) for n, m in layers.items()]
    else:
        handles = [m.register_forward_pre_hook(lambda _m, args, f=hook(n): f(args[0])) for n, m in layers.items()]
    try:
        try:
            total = len(batches)
        except TypeError:  # a loader or wrapper without a length
            total = None
        # one iter() per pass (tqdm.auto would call it twice: a DataLoader would start its workers twice)
        for i, images in enumerate(tqdm(iter(batches), total=total, desc=desc, leave=False)):
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
        i, images = bad
        if not torch.isfinite(images).all():
            where = "the input images themselves"
        else:
            layer = first_nonfinite_output(model, images.to(device), _leaves(model))
            where = "an operation outside any module" if layer.startswith("none") else f"layer '{layer}'"
        raise FloatingPointError(f"non-finite activation during calibration (batch {i}): the first non-finite output "
                                 f"comes from {where}; check the model weights and the input normalisation")


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and not any(True for _ in m.children())}


# a statistics file: {"format": STATS_FILE, "fingerprint": the model's (dqss.api.model_fingerprint), "layers": {...}};
# a file without the key is the earlier layout (the layers alone, no fingerprint)
STATS_FILE = "dqss-stats/1"


class StatsFileError(RuntimeError, ValueError):
    """A statistics file that cannot be used (a RuntimeError, as before, and a ValueError: bad input)."""


_RECOMPUTE = ("Recompute them: dqss.calibrate(model, batches).save(path) (in the workflow: delete the file and rerun "
              "the workflow)")


def check_stats(stats: dict, takes: str, fix: str) -> None:
    """Every entry of ``stats`` a layer name with an :class:`ActStats` that a statistics record can hold (finite,
    complete): a TypeError (``takes``: what the caller takes) or a ValueError naming the layer and ``fix``."""
    for k, v in stats.items():
        if not isinstance(k, str) or not isinstance(v, ActStats):
            raise TypeError(f"{takes}; entry {k!r} is a {type(v).__name__}")
        try:
            v.check()
        except ValueError as exc:
            raise ValueError(f"layer '{k}': {exc}; {fix}") from None


def save_stats(stats: dict[str, ActStats], path, fingerprint: str | None = None) -> None:
    """Write ``stats`` (checked: names, types and finite values) with the ``fingerprint`` of the model they were
    computed on, atomically (a temporary file in the same folder, then a rename)."""
    if not isinstance(stats, dict):
        raise TypeError(f"save_stats takes a dict of layer name -> ActStats, got {type(stats).__name__}")
    check_stats(stats, "save_stats takes a dict of layer name -> ActStats",
                "refusing to save statistics that no range can be computed from. Check the model's weights and "
                "the calibration inputs, then calibrate again")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise TypeError(f"fingerprint must be a string (dqss.api.model_fingerprint), got {type(fingerprint).__name__}")
    from ..results import atomic_write

    payload = {"format": STATS_FILE, "fingerprint": fingerprint, "layers": {k: v.state() for k, v in stats.items()}}
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the path of the file to write, e.g. {path / 'stats.pt'}")
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_stats(path) -> dict[str, ActStats]:
    """The statistics of a file :func:`save_stats` wrote (checked field by field)."""
    return load_stats_file(path)[0]


def load_stats_file(path) -> tuple[dict[str, ActStats], str | None]:
    """The statistics of a file and the fingerprint of the model they were computed on (None in files of the
    earlier layout).  A missing file is a FileNotFoundError; a file that is not one, or whose records are
    incomplete, of an unknown field or non-finite, a :class:`StatsFileError` naming the layer and the field."""
    if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
        raise FileNotFoundError(f"no statistics file {path}: compute it with dqss.calibrate(model, batches).save(path)"
                                " (in the workflow: rerun the calibrate job)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise StatsFileError(f"cannot read calibration statistics {path}: {exc}. Delete the file and rerun "
                             "the workflow to recompute it") from exc
    if not isinstance(raw, dict):
        raise StatsFileError(f"{path} holds a {type(raw).__name__}, not the statistics of a model's layers (a dict of "
                             f"layer name -> statistics). {_RECOMPUTE}")
    fingerprint = None
    if isinstance(raw.get("format"), str):
        if raw["format"] != STATS_FILE or not isinstance(raw.get("layers"), dict):
            raise StatsFileError(f"{path} is a statistics file of format {raw['format']!r}; this version reads "
                                 f"{STATS_FILE!r} with a 'layers' dict. {_RECOMPUTE}")
        fingerprint = raw.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise StatsFileError(f"{path}: its fingerprint is a {type(fingerprint).__name__}, not a string. "
                                 f"{_RECOMPUTE}")
        raw = raw["layers"]
    out = {}
    for k, v in raw.items():
        if not isinstance(v, dict):
            raise StatsFileError(f"calibration statistics {path}: layer '{k}' holds a {type(v).__name__}, not a "
                                 f"statistics record. {_RECOMPUTE}")
        if v.get("format", 1) != STATS_FORMAT:
            try:
                ActStats.from_state(v)
            except ValueError as exc:
                raise StatsFileError(f"calibration statistics {path} were written by another version: {exc}. "
                                     "Delete the file and rerun the workflow to recompute it") from exc
        try:
            out[k] = ActStats.from_state(v)
        except ValueError as exc:
            raise StatsFileError(f"calibration statistics {path}, layer '{k}': {exc}. {_RECOMPUTE}") from None
    return out, fingerprint
