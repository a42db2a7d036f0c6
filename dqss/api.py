"""Quantize your own model: the library's public flow, the one the suite's own jobs run.

::

    import dqss
    calib = dqss.calibrate(model, batches)                     # BN folded, two passes of statistics
    print(calib.report())                                      # which layers are quantized, which are not, and why
    q8 = dqss.quantize(model, calib, "mse", w_bits=8, a_bits=8)        # a uniform baseline
    found = dqss.search_assignment(model, calib, inputs, w_bits=4, a_bits=4)  # DQSS: per-layer strategies
    q4 = dqss.from_assignment(model, calib, found.assignment)         # the discrete model of the search
    print(dqss.top1(q4, test_batches))

``model`` is any ``nn.Module`` whose quantizable layers are ``nn.Conv2d``/``nn.Linear`` modules (timm,
torchvision, basicsr, a user's own).  Every conv directly followed by a BatchNorm2d is folded first.  What is
left alone is reported with its reason (the policy's ``layer_types`` or ``keep_fp``, a track's high-precision
parts, a layer the forward pass never calls); what cannot be quantized faithfully (a ``Conv1d``, a
``ConvTranspose2d``, an ``Embedding``, a functional ``F.conv2d``/``F.linear`` on a weight outside a layer
module) is an error that names the fix, unless ``strict=False`` accepts it in full precision, reported.

Every function takes the model the user holds (not a prepared copy) and never modifies it.
"""
from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .layers import LAYER_TYPES, LayerPlan, QuantPolicy, execution_order, fold_batchnorm
from .stats import ActStats, collect_act_stats, load_stats, save_stats

log = logging.getLogger(__name__)

# weight layers the suite cannot quantize: reported, and an error in strict mode unless keep_fp names them
UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Embedding,
               nn.EmbeddingBag, nn.Bilinear, nn.MultiheadAttention, nn.RNNBase)
# torch functions that apply a weight: called outside a layer module, they are a "functional" layer
FUNCTIONAL = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear",
              "bilinear"}
DEFAULT_CANDIDATES = ("minmax", "percentile", "mse", "kl", "aciq", "easyquant")


@dataclass
class LayerReport:
    """One weight layer of the model and what the library does with it."""

    name: str
    kind: str  # the module's class name (or "F.conv2d" for a functional call)
    quantized: bool
    reason: str = ""  # why it is left alone (empty when quantized)
    w_bits: int | None = None  # at the plan asked for (calibrate: W8A8)
    a_bits: int | None = None


@dataclass
class Calibration:
    """What :func:`calibrate` returns: the statistics every strategy and bit width derives its ranges from,
    and what :func:`quantize`, :func:`search_assignment` and :func:`from_assignment` need to plan the same
    layers again."""

    stats: dict[str, ActStats]
    policy: QuantPolicy
    example: torch.Tensor  # one input (batch of 1) the layers are traced with
    layers: list[LayerReport] = field(default_factory=list)
    folded_bn: list[tuple[str, str]] = field(default_factory=list)  # (conv, batch norm) pairs folded
    plans_of: object = field(default=None, repr=False)  # (w_bits, a_bits) -> the calibrated model's plans

    @property
    def quantized(self) -> list[str]:
        return [r.name for r in self.layers if r.quantized]

    @property
    def skipped(self) -> dict[str, str]:
        return {r.name: r.reason for r in self.layers if not r.quantized}

    def report(self, w_bits: int | None = None, a_bits: int | None = None) -> str:
        """A table of every weight layer: quantized (with its bits at W{w_bits}A{a_bits}, default W8A8), or the
        reason it is left alone; then the folded batch norms."""
        rows = self.layers
        if w_bits is not None or a_bits is not None:
            rows = _report_rows(self.layers, self.plans_of(w_bits or 8, a_bits or 8))
        width = max([len(r.name) for r in rows] + [5])
        lines = [f"{'layer':<{width}}  {'type':<18} status"]
        for r in rows:
            status = f"W{r.w_bits}A{r.a_bits}" if r.quantized else f"full precision: {r.reason}"
            lines.append(f"{r.name:<{width}}  {r.kind:<18} {status}")
        n_q = sum(r.quantized for r in rows)
        lines.append(f"{n_q} layers quantized, {len(rows) - n_q} left in full precision; "
                     f"{len(self.folded_bn)} batch norms folded into their convs")
        return "\n".join(lines)

    def save(self, path) -> None:
        """The statistics alone (the suite's ``stats.pt`` format); :meth:`from_stats` rebuilds the rest."""
        save_stats(self.stats, path)


def _report_rows(layers: list[LayerReport], plans: dict) -> list[LayerReport]:
    out = []
    for r in layers:
        p = plans.get(r.name)
        out.append(LayerReport(r.name, r.kind, p is not None, r.reason if p is None else "",
                               p.w_spec.bits if p else None, p.a_spec.bits if p else None))
    return out


# -- inputs -------------------------------------------------------------------------------------
class _Inputs:
    """The model inputs of calibration batches: tensors, or the first element of ``(x, y)`` pairs (a
    DataLoader); re-iterable, checked batch by batch (floating dtype, one shape)."""

    def __init__(self, batches):
        if isinstance(batches, torch.Tensor):
            raise TypeError("calibrate takes batches (a list of tensors, a DataLoader), not one tensor; pass "
                            "torch.split(x, 64) or [x]")
        if not isinstance(batches, Iterable) or isinstance(batches, Iterator):
            raise TypeError("calibration batches must be re-iterable (a list or tuple of tensors, torch.split(x, n), "
                            "a DataLoader without random augmentation): statistics take two passes; wrap a "
                            "generator in list(...)")
        self.batches = batches
        self.shape: tuple | None = None

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, b in enumerate(self.batches):
            yield self.check(b, i)

    def check(self, b, i: int = 0) -> torch.Tensor:
        x = b[0] if isinstance(b, (tuple, list)) and b else b
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"calibration batch {i} is a {type(x).__name__}, not a tensor: give tensors, or (inputs, "
                            "labels) pairs as a DataLoader yields them")
        if not x.is_floating_point():
            raise TypeError(f"calibration batch {i} has dtype {x.dtype}; the model takes floating-point inputs: "
                            "convert and normalise the images as at training (e.g. x.float() / 255, then the mean "
                            "and std of the model's data config)")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"calibration batch {i} has shape {tuple(x.shape)}; a batch is [N, ...] with N >= 1 "
                             "(add the batch dimension with x.unsqueeze(0))")
        if self.shape is None:
            self.shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"calibration batch {i} has items of shape {tuple(x.shape[1:])}, batch 0 of {self.shape}; "
                             "resize or crop every calibration input to one shape")
        return x


def _first(batches) -> torch.Tensor:
    for b in batches:
        return b
    raise ValueError("no calibration batch: give at least one batch of inputs")


# -- the model's weight layers -------------------------------------------------------------------------
class _Functional(TorchFunctionMode):
    """Records weight-applying torch functions called outside every layer module (``F.conv2d(x, w)`` in a
    forward), with the module that called them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.stack: list[str] = []
        self.found: list[tuple[str, str]] = []
        self.handles = []
        for name, m in model.named_modules():
            layer = isinstance(m, (*LAYER_TYPES.values(), *UNSUPPORTED))
            self.handles.append(m.register_forward_pre_hook(self._enter(name, layer)))
            self.handles.append(m.register_forward_hook(self._leave))

    def _enter(self, name: str, layer: bool):
        def hook(_m, _a):
            self.stack.append((name, layer))
        return hook

    def _leave(self, *_):
        self.stack.pop()  # (returns None: a forward hook's return value would replace the output)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in FUNCTIONAL and not any(lay for _, lay in self.stack):
            where = self.stack[-1][0] if self.stack else ""
            self.found.append((where or "(the model's forward)", f"F.{name}"))
        return func(*args, **(kwargs or {}))

    def remove(self):
        for h in self.handles:
            h.remove()


def _cannot_run(example: torch.Tensor, exc: Exception) -> ValueError:
    return ValueError(f"the model cannot run an input of shape {tuple(example.shape)} and dtype {example.dtype}: "
                      f"{exc}. Give calibration batches shaped as the model's input ([N, C, H, W] for an image "
                      "model, normalised as at training)")


def _survey(model: nn.Module, example: torch.Tensor) -> tuple[list[str], list[tuple[str, str]]]:
    """Names of the modules the forward pass calls (in order) and the functional weight calls it makes."""
    called: list[str] = []
    probe = _Functional(model)
    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: called.append(n)) for n, m in model.named_modules()]
    try:
        with probe, torch.no_grad():
            model.eval()(example)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise _cannot_run(example, exc) from exc
    finally:
        probe.remove()
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(called)), list(dict.fromkeys(probe.found))


def survey_layers(model: nn.Module, policy, example: torch.Tensor, plans: dict[str, LayerPlan],
                  strict: bool = True) -> list[LayerReport]:
    """Every weight layer of ``model`` (folded) with what the plan does to it; in ``strict`` mode a layer the suite
    cannot quantize (unsupported type not in keep_fp, functional call) is an error naming the fix."""
    called, functional = _survey(model, example)
    wanted = tuple(LAYER_TYPES[t] for t in policy.layer_types)
    rows, problems = [], []
    for name, m in model.named_modules():
        if not isinstance(m, (*LAYER_TYPES.values(), *UNSUPPORTED)):
            continue
        kind = type(m).__name__
        if name in plans:
            p = plans[name]
            rows.append(LayerReport(name, kind, True, "", p.w_spec.bits, p.a_spec.bits))
        elif name not in called:
            rows.append(LayerReport(name, kind, False, "never called by the forward pass (used through its parent's "
                                                       "weights, or unused)"))
        elif isinstance(m, UNSUPPORTED):
            kept = any(fnmatch.fnmatch(name, pat) for pat in policy.keep_fp)
            rows.append(LayerReport(name, kind, False,
                                    f"{kind} is not quantized by the suite (Conv2d and Linear only)"))
            if not kept:
                problems.append(f"layer '{name}' is a {kind}, which the suite cannot quantize")
        elif not isinstance(m, wanted):
            rows.append(LayerReport(name, kind, False, f"the policy's layer_types {policy.layer_types} exclude it"))
        else:
            rows.append(LayerReport(name, kind, False, policy.skip_reason(name)))
    for where, fn in functional:
        rows.append(LayerReport(where, fn, False, f"a functional {fn} call: its weight is not a layer module"))
        problems.append(f"'{where}' calls {fn} on a weight of its own, which no quantizer can reach")
    if problems and strict:
        raise ValueError("cannot quantize this model faithfully: " + "; ".join(problems) + ". Fix: make each an "
                         "nn.Conv2d/nn.Linear module, or leave it in full precision on purpose (an unsupported "
                         "layer: add its name to policy.keep_fp; either: strict=False), and it is reported as such")
    for r in rows:
        if not r.quantized:
            log.info("left in full precision: %s (%s): %s", r.name, r.kind, r.reason)
    return rows


# -- the flow ----------------------------------------------------------------------------------
def prepare_model(model: nn.Module, example: torch.Tensor, device="cpu",
                  folded_bn: list | None = None) -> nn.Module:
    """A BN-folded eval copy of ``model`` on ``device`` (the user's model is not touched)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    try:
        folded = fold_batchnorm(model, example.to(next(iter(model.parameters()), example).device), pairs=folded_bn)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise _cannot_run(example, exc) from exc
    return folded.to(device)


def _setup(model: nn.Module, example: torch.Tensor, policy, device, strict: bool, folded: bool = False):
    """What calibrate and from_stats share: the BN-folded copy (``folded``: ``model`` is one already), the
    plans at W8A8, the layer survey, and the Calibration of ``stats`` on them (its stats filled in by the caller)."""
    pairs: list = []
    base = model if folded else prepare_model(model, example, device, pairs)
    ex = example.to(device)
    try:
        plans = policy.layer_plans(base, 8, 8, ex)
    except ValueError as exc:
        raise ValueError(f"{exc}: the model has no nn.Conv2d/nn.Linear layer that the policy "
                         f"(layer_types={policy.layer_types}, keep_fp={policy.keep_fp}) quantizes; quantize a model "
                         "built from such layer modules, or widen the policy") from None
    rows = survey_layers(base, policy, ex, plans, strict)
    calib = Calibration({}, policy, example, rows, pairs, lambda w, a: policy.layer_plans(base, w, a, ex))
    return base, plans, calib


def calibrate(model: nn.Module, batches, policy: QuantPolicy | None = None, *, bins: int = 2048,
              samples: int = 16, device="cpu", strict: bool = True) -> Calibration:
    """Fold BN, plan the quantized layers under ``policy`` (default: every Conv2d and Linear, first and last
    at 8 bits, per-channel symmetric weights) and collect the activation statistics of their inputs in two
    passes over ``batches`` (tensors, or (inputs, labels) pairs; re-iterable)."""
    policy = policy or QuantPolicy()
    inputs = _Inputs(batches)
    folded, plans, calib = _setup(model, _first(inputs)[:1].detach().cpu(), policy, device, strict)
    layers = {n: folded.get_submodule(n) for n in plans}
    calib.stats = collect_act_stats(folded, layers, inputs, bins=bins, n_samples=samples, device=device,
                                    desc="calibrate")
    return calib


def from_stats(model: nn.Module, stats, policy: QuantPolicy, example: torch.Tensor, *, device="cpu",
               strict: bool = True, folded: bool = False) -> Calibration:
    """A :class:`Calibration` of statistics computed before (a dict, or the path of a ``stats.pt``).
    ``folded``: ``model`` is already a BN-folded copy on ``device`` (the suite's jobs)."""
    _, _, calib = _setup(model, example[:1].detach().cpu(), policy, device, strict, folded)
    calib.stats = load_stats(stats) if isinstance(stats, (str, Path)) else stats
    return calib


def _strategy(strategy, options: dict | None):
    from .strategy import Strategy, get_strategy

    if isinstance(strategy, Strategy):
        return strategy
    return get_strategy(str(strategy), options)


def plans(model_or_folded: nn.Module, calib: Calibration, w_bits: int, a_bits: int, device="cpu"):
    """The planned layers at W{w_bits}A{a_bits}, checked against the calibration's statistics."""
    plan = calib.policy.layer_plans(model_or_folded, w_bits, a_bits, calib.example.to(device))
    missing = [n for n in plan if n not in calib.stats]
    if missing:
        raise ValueError(f"layers {missing[:5]} have no calibration statistics: this calibration was made for another "
                         "model or policy; calibrate this model again")
    return plan


def quantize(model: nn.Module, calib: Calibration, strategy="minmax", *, w_bits: int = 8, a_bits: int = 8,
             options: dict | None = None, device="cpu", folded: bool = False) -> nn.Module:
    """A uniform baseline: every planned layer quantized by one registered strategy (a name with its
    ``options``, or a :class:`dqss.strategy.Strategy`).  ``folded``: ``model`` is already a BN-folded copy
    on ``device`` (the suite's jobs)."""
    from .ptq import quantize_uniform

    base = model if folded else prepare_model(model, calib.example, device)
    return quantize_uniform(base, plans(base, calib, w_bits, a_bits, device), calib.stats,
                            _strategy(strategy, options))


@dataclass
class SearchResult:
    """What :func:`search_assignment` returns: the selected assignment (the file format of the suite's
    ``assignment.yaml``), the logits' argmax one, and the search's full outcome."""

    assignment: dict
    argmax: dict
    outcome: object  # dqss.ptq_search.Outcome
    plans: dict
    strategies: dict


def search_assignment(model: nn.Module, calib: Calibration, inputs, *, w_bits: int = 4, a_bits: int = 4,
                      candidates=DEFAULT_CANDIDATES, options: dict | None = None, config=None, labels=None,
                      objective: str = "kl", hold_fraction: float = 0.25, batch_size: int = 64, seed: int = 0,
                      ids: list[str] | None = None, border: int = 0, device="cpu", extra: dict | None = None,
                      folded: bool = False) -> SearchResult:
    """DQSS: search every layer's (weight, activation) strategy among ``candidates`` on ``inputs`` (a tensor, or
    batches) by the softmax relaxation, then choose the final assignment on the search part with the held
    part (``hold_fraction``) as guard (``config.select``; see :class:`dqss.search.SearchConfig`).
    ``objective``: kl (classification logits) or mse_y (SR).  ``extra``: more candidate strategies by name."""
    from .ptq import export_assignment
    from .ptq_search import search_and_select
    from .search import SearchConfig

    cfg = config if isinstance(config, SearchConfig) else SearchConfig(**(config or {}))
    x = inputs if isinstance(inputs, torch.Tensor) else torch.cat(list(_Inputs(inputs)))
    _Inputs([x]).check(x)
    options = options or {}
    names = list(cfg.candidates or candidates)
    strategies = {s: _strategy(s, options.get(s)) for s in names} | (extra or {})
    if len(strategies) < 2:
        raise ValueError(f"DQSS searches over at least two candidate strategies, got {list(strategies)}")
    base = model if folded else prepare_model(model, calib.example, device)
    plan = plans(base, calib, w_bits, a_bits, device)
    ids = ids or [str(i) for i in range(len(x))]
    out = search_and_select(base, plan, calib.stats, strategies, x, ids, cfg=cfg, hold_fraction=hold_fraction,
                            seed=seed, device=device, objective=objective, batch_size=batch_size, labels=labels,
                            border=border)
    meta = {"w_bits": w_bits, "a_bits": a_bits, "seed": seed, "candidates": list(strategies),
            "strategy_options": {s: options.get(s, {}) for s in names},
            "reference_uniform": out.record.get("held_best_uniform"), "calibration": out.split}
    return SearchResult(export_assignment(out.qmodel, plan, {**meta, "select": cfg.select}, out.selected),
                        export_assignment(out.qmodel, plan, {**meta, "select": "argmax"}, out.argmax),
                        out, plan, strategies)


def from_assignment(model: nn.Module, calib: Calibration, assignment, *, strategies: dict | None = None,
                    device="cpu", folded: bool = False) -> nn.Module:
    """The discrete model of an assignment (a dict or the path of an ``assignment.yaml``): each layer quantized
    by its chosen weight and activation strategy, with the options the assignment records (``strategies``:
    strategy objects by name, e.g. reconstructed methods, for candidates that are not registered names)."""
    from .ptq import quantize_from_assignment
    from .results import load_assignment

    if isinstance(assignment, (str, Path)):
        assignment = load_assignment(assignment)
    layers = assignment.get("layers") or []
    if not layers:
        raise ValueError("the assignment has no layers; give the dict a search returned or an assignment.yaml file")
    w, a = _assignment_bits(assignment)
    used = sorted({e[r] for e in layers for r in ("weight", "act")})
    recorded = assignment.get("strategy_options") or {}
    given = strategies or {}
    strats = {s: given[s] if s in given else _strategy(s, recorded.get(s)) for s in used}
    base = model if folded else prepare_model(model, calib.example, device)
    return quantize_from_assignment(base, plans(base, calib, w, a, device), calib.stats, assignment, strats)


def _assignment_bits(assignment: dict) -> tuple[int, int]:
    if "w_bits" in assignment and "a_bits" in assignment:
        return int(assignment["w_bits"]), int(assignment["a_bits"])
    bits = {(e["w_bits"], e["a_bits"]) for e in assignment["layers"]}
    return min(bits)


def integer_graph(model: nn.Module, qmodel: nn.Module, calib: Calibration, batches, *, bits: int = 8,
                  strategy="mse", options: dict | None = None, device="cpu", folded: bool = False) -> nn.Module:
    """A copy of ``qmodel`` (from :func:`quantize` or :func:`from_assignment` of ``model``) in the integer-graph
    placement (:mod:`dqss.placement`): the inputs and outputs of residual adds and concatenations and the inputs
    of pooling quantized too, so an int8 runtime keeps the network in integers.  A tensor a quantized layer reads
    takes that layer's input quantizer; the others get ``strategy``'s range on a ``bits`` activation grid from
    ``model``'s outputs on ``batches`` (calibration inputs).  ``folded``: ``model`` is already a BN-folded copy on
    ``device``.  What was placed is logged and kept in the copy's ``integer_placement`` attribute."""
    import copy

    from .config import BIT_MIN
    from .placement import place_integer

    if isinstance(bits, bool) or not isinstance(bits, int) or not BIT_MIN <= bits <= 8:
        raise ValueError(f"bits={bits!r}: the integer graph's own tensors need an integer from {BIT_MIN} to 8 (they "
                         "are stored in the int8 runtime's 8-bit container)")
    base = model if folded else prepare_model(model, calib.example, device)
    out = copy.deepcopy(qmodel)
    report = place_integer(out, base, [x.to(device) for x in _Inputs(batches)], calib.policy.act_spec(bits),
                           strategy=_strategy(strategy, options), example=calib.example.to(device), device=device)
    out.integer_placement = report
    return out


# -- evaluation helpers ------------------------------------------------------------------------
@torch.no_grad()
def outputs(model: nn.Module, batches, device="cpu") -> torch.Tensor:
    """The model's outputs on every batch (tensors or (inputs, labels) pairs), concatenated on the CPU."""
    model.eval()
    return torch.cat([model(x.to(device)).float().cpu() for x in _Inputs(batches)])


@torch.no_grad()
def top1(model: nn.Module, batches, device="cpu") -> float:
    """Top-1 accuracy (%) on (inputs, labels) batches."""
    model.eval()
    right = total = 0
    for i, b in enumerate(batches):
        if not (isinstance(b, (tuple, list)) and len(b) >= 2):
            raise TypeError(f"batch {i}: top1 needs (inputs, labels) pairs, as a DataLoader of a labelled "
                            "dataset yields them")
        x = _Inputs([b]).check(b, i)
        right += int((model(x.to(device)).argmax(1).cpu() == b[1].cpu()).sum())
        total += len(b[1])
    return 100.0 * right / max(total, 1)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share (%) of items whose top-1 class is the same in two output tensors."""
    return 100.0 * float((a.argmax(1) == b.argmax(1)).float().mean())

