"""Quantize your own model: the library's public flow, the one the suite's own jobs run.

::

    import dqss
    calib = dqss.calibrate(model, batches)                     # BN folded, two passes of statistics
    print(calib.report())                                      # which layers are quantized, which are not, and why
    q8 = dqss.quantize(model, calib, "mse", w_bits=8, a_bits=8)        # a uniform baseline
    found = dqss.search_assignment(model, calib, inputs, w_bits=4, a_bits=4)  # DQSS: per-layer strategies
    q4 = dqss.from_assignment(model, calib, found.assignment)         # the discrete model of the search
    dqss.save_assignment(found.assignment, "assignment.yaml")         # the suite's file, read by from_assignment
    print(dqss.top1(q4, test_batches))

``model`` is any ``nn.Module`` whose quantizable layers are ``nn.Conv2d``/``nn.Linear`` modules (timm,
torchvision, basicsr, a user's own).  Every conv directly followed by a BatchNorm2d is folded first.  What is
left alone is reported with its reason (the policy's ``layer_types`` or ``keep_fp``, a track's high-precision
parts, a layer the forward pass never calls); what cannot be quantized faithfully (a ``Conv1d``, a
``ConvTranspose2d``, an ``Embedding``, a functional ``F.conv2d``/``F.linear`` on a weight outside a layer
module) is an error that names the fix, unless ``strict=False`` accepts it in full precision, reported.

Every function takes the model the user holds (not a prepared copy) and never modifies it: not its weights, and
not its mode either (the evaluation helpers run it in eval mode and restore every module's training flag).
Bad input is an error that says what was wrong and what to do instead: a model on the meta device, a missing
calibration, options of the wrong form, an assignment or statistics file that is not one (or was made for
another model: statistics carry the :func:`model_fingerprint` of the BN-folded model they were computed on).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .core.layers import LAYER_TYPES, LayerPlan, QuantPolicy, fold_batchnorm
from .core.stats import ActStats, check_stats, collect_act_stats, load_stats_file, save_stats

log = logging.getLogger(__name__)

# weight layers the suite cannot quantize: reported, and an error in strict mode unless keep_fp names them
UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Embedding,
               nn.EmbeddingBag, nn.Bilinear, nn.MultiheadAttention, nn.RNNBase)
# torch functions that apply a weight: called outside a layer module, they are a "functional" layer
FUNCTIONAL = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear",
              "bilinear"}
DEFAULT_CANDIDATES = ("minmax", "percentile", "mse", "kl", "aciq", "easyquant")
# "DQSS with the API's defaults" is the DQSS of the suite's tables: the embedded config's dqss section
# (config/config.yaml, cls_ptq.dqss) where it differs from SearchConfig's own defaults
# (tests/unit/test_api_inputs.py holds the two equal)
SUITE_SEARCH_DEFAULTS = {"iterations": 80, "tau_end": 0.05, "sweeps": 1}


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
    fingerprint: str | None = None  # model_fingerprint of the BN-folded model the statistics describe

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
        """The statistics and the fingerprint of the model they describe (the suite's ``stats.pt`` format);
        :func:`from_stats` rebuilds the rest, and refuses a model whose fingerprint differs."""
        save_stats(self.stats, path, self.fingerprint)


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


# -- checks of the arguments ---------------------------------------------------------------------
def _check_model(model, where: str = "the model") -> None:
    """A module with real weights (not on the meta device, where tensors have shapes but no values)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module as {where}, got {type(model).__name__}")
    meta = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(f"{where}'s parameters are on the meta device ({meta[0]!r}, {len(meta)} tensors in all), "
                         "where tensors have no values: load real weights first (e.g. model.to_empty(device='cpu'), "
                         "then model.load_state_dict(state_dict)) before calibrating or quantizing it")


def _check_calibration(calib, fn: str) -> None:
    if not isinstance(calib, Calibration):
        raise TypeError(f"{fn}: calib must be a Calibration (what dqss.calibrate or dqss.from_stats returns), got "
                        f"{type(calib).__name__}; make one with calib = dqss.calibrate(model, batches) and pass it "
                        "with the same model")


def _base(model: nn.Module, calib: Calibration, device, folded: bool) -> nn.Module:
    """The BN-folded copy of ``model`` the calibration planned (``folded``: ``model`` is one already)."""
    _check_model(model)
    return model if folded else prepare_model(model, calib.example, device)


def model_fingerprint(model: nn.Module) -> str:
    """A SHA-256 over a model's state: every parameter and persistent buffer, its name, dtype, shape and bytes.
    The statistics of a :class:`Calibration` carry the fingerprint of the BN-folded model they were computed
    on, so that :func:`from_stats` can refuse them for another model (or for this one after its weights
    changed); equal weights on any device give the same fingerprint."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):  # a module's extra state
            h.update(f"{name}={t!r}\n".encode())
            continue
        t = t.detach()
        t = t.to_dense() if t.is_sparse else t.int_repr() if t.is_quantized else t
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def strategies(kind: str | None = None) -> list[str]:
    """The registered strategy names, sorted (``kind``: ``"ptq"`` range strategies, the uniform baselines and
    DQSS's candidates; ``"qat"`` trained quantizers; None: both).  Every file in ``baselines/`` registers its
    own (:func:`dqss.core.strategy.register_strategy`)."""
    from .core.strategy import strategy_names

    if kind not in (None, "ptq", "qat"):
        raise ValueError(f"kind must be 'ptq', 'qat' or None (both), got {kind!r}")
    return strategy_names(kind)


def _check_options(name: str, options, where: str) -> dict:
    """``options`` (None or a dict) of the registered strategy ``name``: known keys of the right types."""
    from .core.strategy import STRATEGIES, options_problem

    cls = STRATEGIES[name].Options
    valid = {f.name: f for f in dataclasses.fields(cls)}
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        form = (f"a dict of strategy '{name}''s keyword options, e.g. {{{next(iter(valid))!r}: "
                f"{next(iter(valid.values())).default!r}}}" if valid else f"None: strategy '{name}' takes no options")
        raise TypeError(f"{where} must be {form}; got the {type(options).__name__} {options!r}")
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown} of strategy '{name}'; valid options are "
                         f"{list(valid)}")
    problem = options_problem(cls, options)
    if problem:
        defaults = {f.name: f.default for f in valid.values()}
        raise TypeError(f"{where}: strategy '{name}' option {problem} (its options and their defaults: {defaults})")
    return dict(options)


def _per_strategy(options, where: str = "options") -> dict:
    """Options of several strategies: a dict of each strategy's keyword options by name."""
    example = "{'mse': {'p': 2.0}}"
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{where} must be a dict of each strategy's options by name, e.g. {example}; got the "
                        f"{type(options).__name__} {options!r}")
    for k, v in options.items():
        if v is not None and not isinstance(v, Mapping):
            raise TypeError(f"{where}[{k!r}] is a {type(v).__name__}: {where} are per strategy, a dict of each "
                            f"strategy's keyword options by name, e.g. {example}")
    return dict(options)


def _strategy(strategy, options, where: str = "options"):
    """A strategy object: ``strategy`` itself, or the registered strategy of that name with ``options``."""
    from .core.strategy import STRATEGIES, Strategy, get_strategy, load_baselines

    if isinstance(strategy, Strategy):
        if options:
            raise ValueError(f"{where}: options go with a strategy name; the {type(strategy).__name__} object "
                             "given carries its own (set them when you build it)")
        return strategy
    name = str(strategy)
    load_baselines()
    if name in STRATEGIES:
        options = _check_options(name, options, where)
    return get_strategy(name, options)


# -- the flow ----------------------------------------------------------------------------------
def prepare_model(model: nn.Module, example: torch.Tensor, device="cpu",
                  folded_bn: list | None = None) -> nn.Module:
    """A BN-folded eval copy of ``model`` on ``device`` (the user's model is not touched)."""
    _check_model(model)
    try:
        folded = fold_batchnorm(model, example.to(next(iter(model.parameters()), example).device), pairs=folded_bn)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise _cannot_run(example, exc) from exc
    return folded.to(device)


def _setup(model: nn.Module, example: torch.Tensor, policy, device, strict: bool, folded: bool = False):
    """What calibrate and from_stats share: the BN-folded copy (``folded``: ``model`` is one already) and its
    fingerprint, the plans at W8A8, the layer survey, and the Calibration of ``stats`` on them (its stats
    filled in by the caller)."""
    if not isinstance(policy, QuantPolicy):
        raise TypeError(f"policy must be a dqss.QuantPolicy (layer types, keep_fp, bits of the first and last "
                        f"layers, grids), got {type(policy).__name__}; QuantPolicy() is calibrate's default")
    _check_model(model)
    pairs: list = []
    base = model if folded else prepare_model(model, example, device, pairs)
    fingerprint = model_fingerprint(base)
    ex = example.to(device)
    try:
        plans = policy.layer_plans(base, 8, 8, ex)
    except ValueError as exc:
        raise ValueError(f"{exc}: the model has no nn.Conv2d/nn.Linear layer that the policy "
                         f"(layer_types={policy.layer_types}, keep_fp={policy.keep_fp}) quantizes; quantize a model "
                         "built from such layer modules, or widen the policy") from None
    rows = survey_layers(base, policy, ex, plans, strict)
    calib = Calibration({}, policy, example, rows, pairs, lambda w, a: policy.layer_plans(base, w, a, ex),
                        fingerprint)
    return base, plans, calib


def calibrate(model: nn.Module, batches, policy: QuantPolicy | None = None, *, bins: int = 2048,
              samples: int = 16, device="cpu", strict: bool = True) -> Calibration:
    """Fold BN, plan the quantized layers under ``policy`` (default: every Conv2d and Linear, first and last
    at 8 bits, per-channel symmetric weights) and collect the activation statistics of their inputs in two
    passes over ``batches`` (tensors, or (inputs, labels) pairs; re-iterable)."""
    policy = policy or QuantPolicy()
    _check_model(model)
    inputs = _Inputs(batches)
    folded, plans, calib = _setup(model, _first(inputs)[:1].detach().cpu(), policy, device, strict)
    layers = {n: folded.get_submodule(n) for n in plans}
    calib.stats = collect_act_stats(folded, layers, inputs, bins=bins, n_samples=samples, device=device,
                                    desc="calibrate")
    return calib


def from_stats(model: nn.Module, stats, policy: QuantPolicy | None, example: torch.Tensor, *, device="cpu",
               strict: bool = True, folded: bool = False) -> Calibration:
    """A :class:`Calibration` of statistics computed before (a dict of :class:`~dqss.core.stats.ActStats`, or the
    path of a ``stats.pt`` that :meth:`Calibration.save` wrote) for ``model`` under ``policy`` (None: calibrate's
    default), ``example`` one input.  ``folded``: ``model`` is already a BN-folded copy on ``device`` (the suite's
    jobs).

    A file records the :func:`model_fingerprint` of the (BN-folded) model its statistics were computed on; a
    model whose fingerprint differs is refused (its layers' inputs are no longer what the statistics describe).
    A file written before fingerprints were recorded is accepted with a logged warning; a dict carries no
    fingerprint and is not checked."""
    recorded, path = None, None
    if isinstance(stats, (str, Path)):
        path = stats
        stats, recorded = load_stats_file(path)
    elif isinstance(stats, Mapping):
        stats = dict(stats)
        check_stats(stats, "from_stats takes a dict of layer name -> dqss.core.stats.ActStats (Calibration.stats) or the "
                    "path of a stats.pt", "statistics that no range can be computed from: calibrate again "
                    "(dqss.calibrate(model, batches))")
    else:
        raise TypeError(f"from_stats takes the path of a stats.pt (Calibration.save) or a dict of layer name -> "
                        f"ActStats, got {type(stats).__name__}")
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be one input tensor of the model ([1, C, H, W] for an image model), got "
                        f"{type(example).__name__}")
    ex = _Inputs([example]).check(example)[:1].detach().cpu()
    _, _, calib = _setup(model, ex, policy or QuantPolicy(), device, strict, folded)
    if path is not None and recorded is None:
        log.warning("statistics file %s has no model fingerprint (written before dqss recorded one): it cannot be "
                    "checked against this model; recompute it with dqss.calibrate(model, batches).save(path) to "
                    "record one", path)
    elif recorded is not None and recorded != calib.fingerprint:
        raise ValueError(f"the statistics in {path} were computed on another model (or on this one before its "
                         f"weights changed): their model fingerprint {recorded[:12]}... differs from this model's "
                         f"{calib.fingerprint[:12]}... (a SHA-256 of the BN-folded model's parameters and buffers), so "
                         "their ranges would be stale. Calibrate this model again: "
                         "dqss.calibrate(model, batches).save(path)")
    calib.stats = stats
    return calib


def plans(model_or_folded: nn.Module, calib: Calibration, w_bits: int, a_bits: int, device="cpu"):
    """The planned layers at W{w_bits}A{a_bits}, checked against the calibration's statistics."""
    _check_calibration(calib, "plans")
    plan = calib.policy.layer_plans(model_or_folded, w_bits, a_bits, calib.example.to(device))
    missing = [n for n in plan if n not in calib.stats]
    if missing:
        raise ValueError(f"layers {missing[:5]} have no calibration statistics: this calibration was made for another "
                         "model or policy; calibrate this model again")
    return plan


def quantize(model: nn.Module, calib: Calibration, strategy="minmax", *, w_bits: int = 8, a_bits: int = 8,
             options: dict | None = None, device="cpu", folded: bool = False) -> nn.Module:
    """A uniform baseline: every planned layer quantized by one registered strategy (a name with its
    ``options``, a dict of the strategy's keyword options such as ``{"p": 2.0}``, or a
    :class:`dqss.core.strategy.Strategy`).  ``folded``: ``model`` is already a BN-folded copy on ``device`` (the
    suite's jobs)."""
    from .algorithms.ptq import quantize_uniform

    _check_calibration(calib, "quantize")
    strategy = _strategy(strategy, options)
    base = _base(model, calib, device, folded)
    return quantize_uniform(base, plans(base, calib, w_bits, a_bits, device), calib.stats, strategy)


@dataclass
class SelectionSummary:
    """How the final assignment of a search was chosen (:mod:`dqss.algorithms.select`), typed; the selection's full record
    (every move tried, the search part's objectives) stays in ``SearchResult.outcome.record``.

    The gradient search's argmax is the *proposal*; the measured selection runs a coordinate descent on the
    search part from the best of {uniform strategies, proposal}, then a guard on the held part keeps the
    descent's result or replaces it by another stage (a uniform strategy, the start, an earlier sweep)."""

    rule: str  # 'measured' (descent and guard) or 'argmax' (the proposal itself, the paper's rule)
    chosen: str  # the stage kept: 'uniform <name>', 'start', 'sweep <k>'; 'argmax' under the argmax rule
    start: str | None  # the stage the descent started from (None under the argmax rule)
    held_best_uniform: str | None  # the uniform strategy lowest on the held part (None under the argmax rule)
    search_best_uniform: str | None  # the uniform strategy lowest on the search part
    held_losses: dict[str, float]  # the held part's objective of every stage measured ('uniform <name>', ...)
    changed_argmax: bool  # the selected assignment differs from the gradient search's argmax (the proposal)
    overturned: bool  # the held-part guard replaced the descent's result by another stage
    overturned_by: str | None = None  # the stage that replaced it (None when the guard kept it)
    # the guard's paired test found a held stage significantly lower (the record's 'significant'); None where the
    # selection does not record it
    significant: bool | None = None
    held_too_small: bool | None = None  # a held stage was lower, not significantly: the held part too small to decide

    @classmethod
    def of(cls, record: dict, changed_argmax: bool) -> SelectionSummary:
        """From a selection record (``Outcome.record``; fields a version of :mod:`dqss.algorithms.select` does not write
        are None)."""
        rule = record.get("rule", "measured")
        stages = record.get("stages") or {}
        held = {k: float(v["held"]) for k, v in stages.items() if isinstance(v, dict) and "held" in v}
        chosen = record.get("chosen", "argmax" if rule == "argmax" else "")
        guard = record.get("guard") if isinstance(record.get("guard"), dict) else {}
        if "overturned" in guard:
            overturned, by = bool(guard["overturned"]), guard.get("by")
        elif "overturned" in record:
            overturned, by = bool(record["overturned"]), record.get("overturned_by")
        elif rule != "measured":
            overturned, by = False, None
        else:  # the lowest held stage was kept: the descent's result (its last sweep) was overturned if it was higher
            runs = record.get("sweeps_run", 0)
            proposed = record.get("proposed") or (f"sweep {runs}" if runs else "start")
            overturned = (chosen != proposed and chosen in held and proposed in held
                          and held[chosen] < held[proposed])
            by = chosen if overturned else None
        significant = record.get("significant", guard.get("significant"))
        too_small = record.get("held_too_small", guard.get("held_too_small"))
        return cls(rule, chosen, record.get("start"), record.get("held_best_uniform"),
                   record.get("search_best_uniform"), held, bool(changed_argmax), overturned,
                   by if overturned else None, None if significant is None else bool(significant),
                   None if too_small is None else bool(too_small))


@dataclass
class SearchResult:
    """What :func:`search_assignment` returns: the selected assignment (the file format of the suite's
    ``assignment.yaml``: :func:`save_assignment` writes it), the logits' argmax one, how the selection chose
    (:class:`SelectionSummary`) and the search's full outcome."""

    assignment: dict
    argmax: dict
    outcome: object  # dqss.algorithms.ptq_search.Outcome
    plans: dict
    strategies: dict
    selection: SelectionSummary | None = None


def search_config(config=None):
    """The :class:`dqss.algorithms.search.SearchConfig` :func:`search_assignment` runs: a SearchConfig as given, or the
    fields of the dict ``config`` over the suite's embedded defaults (``config/config.yaml``'s ``cls_ptq.dqss``:
    80 iterations, temperature 1.0 -> 0.05, one sweep), so that DQSS with the API's defaults is the DQSS of the
    suite's tables."""
    from .options import build_section, check_annealing
    from .algorithms.search import SearchConfig

    if not isinstance(config, SearchConfig):
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict of SearchConfig's fields or a SearchConfig, got "
                            f"{type(config).__name__}; the fields are "
                            f"{[f.name for f in dataclasses.fields(SearchConfig)]}")
        config = build_section(SearchConfig, {**SUITE_SEARCH_DEFAULTS, **(config or {})}, "config")
    check_annealing(config, "config")
    return config


def search_assignment(model: nn.Module, calib: Calibration, inputs, *, w_bits: int = 4, a_bits: int = 4,
                      candidates=DEFAULT_CANDIDATES, options: dict | None = None, config=None, labels=None,
                      objective: str = "kl", hold_fraction: float = 0.25, batch_size: int = 64, seed: int = 0,
                      ids: list[str] | None = None, border: int = 0, device="cpu", extra: dict | None = None,
                      folded: bool = False) -> SearchResult:
    """DQSS: search every layer's (weight, activation) strategy among ``candidates`` on ``inputs`` (a tensor, or
    batches) by the softmax relaxation, then choose the final assignment on the search part with the held
    part (``hold_fraction``) as guard (``config.select``; see :class:`dqss.algorithms.search.SearchConfig`).
    ``config``: a SearchConfig, or a dict of its fields over the suite's defaults (:func:`search_config`).
    ``options``: per strategy, ``{"mse": {"p": 2.0}}``.  ``objective``: kl (classification logits) or mse_y
    (SR).  ``extra``: more candidate strategy objects by name."""
    from .algorithms.ptq import export_assignment
    from .algorithms.ptq_search import search_and_select
    from .results import assignment_meta

    _check_calibration(calib, "search_assignment")
    cfg = search_config(config)
    x = inputs if isinstance(inputs, torch.Tensor) else torch.cat(list(_Inputs(inputs)))
    _Inputs([x]).check(x)
    bad = (~torch.isfinite(x.detach().flatten(1))).any(1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the search inputs hold non-finite values (NaN or inf) in {len(bad)} item(s), first in "
                         f"item {bad[0]}: the search would diverge on them. Remove or repair those items (check the "
                         "input normalisation) before searching")
    options = _per_strategy(options)
    if isinstance(candidates, str) or not isinstance(candidates, Iterable):
        raise TypeError(f"candidates must be a list of strategy names, e.g. {list(DEFAULT_CANDIDATES[:2])}, got "
                        f"{candidates!r}")
    names = list(cfg.candidates or candidates)
    extra = dict(extra or {})
    for s in options:
        if s not in names and s not in extra:
            _strategy(s, options[s], f"options[{s!r}]")  # checked, though not searched
    cands = {s: _strategy(s, options.get(s), f"options[{s!r}]") for s in names} | extra
    if len(cands) < 2:
        raise ValueError(f"DQSS searches over at least two candidate strategies, got {list(cands)}")
    base = _base(model, calib, device, folded)
    plan = plans(base, calib, w_bits, a_bits, device)
    ids = ids or [str(i) for i in range(len(x))]
    out = search_and_select(base, plan, calib.stats, cands, x, ids, cfg=cfg, hold_fraction=hold_fraction,
                            seed=seed, device=device, objective=objective, batch_size=batch_size, labels=labels,
                            border=border)
    used = {s: options[s] for s in names if s in options}  # the extra candidates come built: no options of theirs

    def meta(select: str) -> dict:
        return assignment_meta(w_bits=w_bits, a_bits=a_bits, seed=seed, candidates=cands, strategy_options=used,
                               select=select, outcome=out)
    return SearchResult(export_assignment(out.qmodel, plan, meta(cfg.select), out.selected),
                        export_assignment(out.qmodel, plan, meta("argmax"), out.argmax),
                        out, plan, cands, SelectionSummary.of(out.record, out.selected != out.argmax))


def save_assignment(assignment: dict, path) -> None:
    """Write an assignment (:attr:`SearchResult.assignment`, or a dict of that form) to ``path`` as the suite's
    ``assignment.yaml`` (YAML; the ``format`` tag added when missing), atomically: a temporary file in the same
    folder, then a rename.  :func:`from_assignment` and :func:`dqss.results.load_assignment` read it back."""
    from .results import ASSIGNMENT_FORMAT, check_assignment
    from .results import save_assignment as write

    check_assignment(assignment)
    if assignment.get("format", ASSIGNMENT_FORMAT) != ASSIGNMENT_FORMAT:
        raise ValueError(f"the assignment's format is {assignment['format']!r}; this version writes and reads "
                         f"{ASSIGNMENT_FORMAT!r}")
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the path of the file to write, e.g. "
                                f"{Path(path) / 'assignment.yaml'}")
    write({"format": ASSIGNMENT_FORMAT, **assignment}, path)


def _in_plan_order(assignment: dict, plan: dict) -> dict:
    """``assignment`` with its layers in the plan's order (they are matched by name), or an error naming the
    layers that differ."""
    layers = assignment["layers"]
    names = [e["name"] for e in layers]
    if names == list(plan):
        return assignment
    if set(names) == set(plan):
        order = {n: i for i, n in enumerate(plan)}
        return {**assignment, "layers": sorted(layers, key=lambda e: order[e["name"]])}
    missing = [n for n in plan if n not in names]
    foreign = [n for n in names if n not in plan]
    raise ValueError(f"the assignment's layers are not the model's quantized layers under this calibration's policy: "
                     f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, not in the model "
                     f"{foreign[:5]}{'...' if len(foreign) > 5 else ''}; it was made for another model or policy "
                     "(use it with the model it was searched for, calibrated with the same QuantPolicy)")


def _assigned_strategy(name: str, options):
    """The registered strategy ``name`` an assignment names, or an error saying how to pass one that is not."""
    from .algorithms.recon import reconstruction_names
    from .core.strategy import STRATEGIES, load_baselines

    load_baselines()
    if name not in STRATEGIES and name in reconstruction_names():
        raise ValueError(f"the assignment's strategy '{name}' is a reconstruction method: its quantizers were learned "
                         "for one model by its reconstruction job, not computed from statistics. Pass them: "
                         f"from_assignment(..., strategies={{'{name}': ReconstructedStrategy('{name}', "
                         "load_reconstruction(path))}) (both from dqss.algorithms.recon; path: the job's state file)")
    if name not in STRATEGIES:
        raise KeyError(f"the assignment uses strategy '{name}', which is not registered (registered: "
                       f"{sorted(STRATEGIES)}); pass a strategy object for it: strategies={{'{name}': obj}}")
    return _strategy(name, options, f"the assignment's strategy_options[{name!r}]")


def from_assignment(model: nn.Module, calib: Calibration, assignment, *, strategies: dict | None = None,
                    device="cpu", folded: bool = False) -> nn.Module:
    """The discrete model of an assignment (a dict or the path of an ``assignment.yaml``): each layer quantized
    by its chosen weight and activation strategy, with the options the assignment records (``strategies``:
    strategy objects by name, e.g. reconstructed methods, for candidates that are not registered names).
    Its layers are matched to the model's by name (in any order)."""
    from .algorithms.ptq import quantize_from_assignment
    from .results import check_assignment, load_assignment
    from .core.strategy import Strategy

    _check_calibration(calib, "from_assignment")
    if isinstance(assignment, (str, Path)):
        if not Path(assignment).is_file():
            raise FileNotFoundError(f"no assignment file {assignment}: give the path of an assignment.yaml (a DQSS "
                                    "job's, or one dqss.save_assignment wrote), or the dict a search returned")
        assignment = load_assignment(assignment)
    else:
        assignment = check_assignment(assignment)
    layers = assignment["layers"]
    if not layers:
        raise ValueError("the assignment has no layers; give the dict a search returned or an assignment.yaml file")
    given = strategies or {}
    if not isinstance(given, Mapping) or not all(isinstance(v, Strategy) for v in given.values()):
        raise TypeError("strategies must be a dict of strategy objects by name (dqss.core.strategy.Strategy, e.g. "
                        "dqss.algorithms.recon.ReconstructedStrategy), for the names the assignment uses that are not registered")
    w, a = _assignment_bits(assignment)
    used = sorted({e[r] for e in layers for r in ("weight", "act")})
    recorded = _per_strategy(assignment.get("strategy_options"), "the assignment's strategy_options")
    strats = {s: given[s] if s in given else _assigned_strategy(s, recorded.get(s)) for s in used}
    base = _base(model, calib, device, folded)
    plan = plans(base, calib, w, a, device)
    return quantize_from_assignment(base, plan, calib.stats, _in_plan_order(assignment, plan), strats)


def _assignment_bits(assignment: dict) -> tuple[int, int]:
    if "w_bits" in assignment and "a_bits" in assignment:
        return assignment["w_bits"], assignment["a_bits"]
    bits = {(e["w_bits"], e["a_bits"]) for e in assignment["layers"]}
    return min(bits)


def integer_graph(model: nn.Module, qmodel: nn.Module, calib: Calibration, batches, *, bits: int = 8,
                  strategy="mse", options: dict | None = None, device="cpu", folded: bool = False) -> nn.Module:
    """A copy of ``qmodel`` (from :func:`quantize` or :func:`from_assignment` of ``model``) in the integer-graph
    placement (:mod:`dqss.core.placement`): the inputs and outputs of residual adds and concatenations and the inputs
    of pooling quantized too, so an int8 runtime keeps the network in integers.  A tensor a quantized layer reads
    takes that layer's input quantizer; the others get ``strategy``'s range on a ``bits`` activation grid from
    ``model``'s outputs on ``batches`` (calibration inputs).  ``folded``: ``model`` is already a BN-folded copy on
    ``device``.  What was placed is logged and kept in the copy's ``integer_placement`` attribute."""
    import copy

    from .options import BIT_MIN
    from .core.placement import place_integer

    _check_calibration(calib, "integer_graph")
    _check_model(qmodel, "qmodel")
    if isinstance(bits, bool) or not isinstance(bits, int) or not BIT_MIN <= bits <= 8:
        raise ValueError(f"bits={bits!r}: the integer graph's own tensors need an integer from {BIT_MIN} to 8 (they "
                         "are stored in the int8 runtime's 8-bit container)")
    strategy = _strategy(strategy, options)
    base = _base(model, calib, device, folded)
    out = copy.deepcopy(qmodel)
    report = place_integer(out, base, [x.to(device) for x in _Inputs(batches)], calib.policy.act_spec(bits),
                           strategy=strategy, example=calib.example.to(device), device=device)
    out.integer_placement = report
    return out


# -- evaluation helpers ------------------------------------------------------------------------
@contextmanager
def _evaluating(model: nn.Module):
    """``model`` in eval mode, every module's training flag restored afterwards (a BN frozen in a training
    model stays frozen)."""
    _check_model(model)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def _no_batches(fn: str, what: str) -> ValueError:
    return ValueError(f"{fn}: no batches (the iterable is empty): give at least one {what}, e.g. a list of tensors, "
                      "torch.split(x, 64) or a DataLoader")


@torch.no_grad()
def outputs(model: nn.Module, batches, device="cpu") -> torch.Tensor:
    """The model's outputs on every batch (tensors or (inputs, labels) pairs), concatenated on the CPU (the
    model runs in eval mode; its training flags are restored)."""
    with _evaluating(model):
        out = [model(x.to(device)).float().cpu() for x in _Inputs(batches)]
    if not out:
        raise _no_batches("outputs", "batch of inputs")
    return torch.cat(out)


@torch.no_grad()
def correct(model: nn.Module, batches, device="cpu") -> torch.Tensor:
    """Whether the model's top-1 class is the label, one bool per item, over (inputs, labels) batches in order
    (the per-image outcomes paired tests compare; :func:`top1` is their mean).  The model runs in eval mode; its
    training flags are restored."""
    out = []
    with _evaluating(model):
        for i, b in enumerate(batches):
            if not (isinstance(b, (tuple, list)) and len(b) >= 2):
                raise TypeError(f"batch {i}: correct and top1 need (inputs, labels) pairs, as a DataLoader of a "
                                "labelled dataset yields them")
            x = _Inputs([b]).check(b, i)
            y = torch.as_tensor(b[1])
            if y.dim() != 1 or len(y) != len(x):
                raise ValueError(f"batch {i} has {len(x)} inputs and {y.numel()} labels (shape {tuple(y.shape)}): give "
                                 "one class index per input")
            out.append(model(x.to(device)).argmax(1).cpu() == y.cpu())
    if not out:
        raise _no_batches("top1/correct", "(inputs, labels) batch")
    return torch.cat(out)


def top1(model: nn.Module, batches, device="cpu") -> float:
    """Top-1 accuracy (%) on (inputs, labels) batches: the mean of :func:`correct`."""
    right = correct(model, batches, device)
    return 100.0 * int(right.sum()) / len(right)  # exact: the count over the total, as the suite's metrics


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share (%) of items whose top-1 class is the same in two output tensors ([N, classes] each, on the same
    N inputs)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"agreement compares two output tensors (dqss.outputs of two models); {name} is a "
                            f"{type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"agreement compares class scores, [N, classes] tensors; {name} has shape "
                             f"{tuple(t.shape)} (other outputs have no top-1 class: compare them with (a - b).abs())")
    if len(a) != len(b):
        raise ValueError(f"a and b have {len(a)} and {len(b)} items; agreement compares the outputs of two models on "
                         "the same inputs (dqss.outputs of each on the same batches)")
    if a.shape != b.shape:
        raise ValueError(f"a and b have shapes {tuple(a.shape)} and {tuple(b.shape)}: the outputs of models with "
                         "different numbers of classes have no common top-1")
    if len(a) == 0:
        raise ValueError("a and b hold no items: compare the outputs on at least one input")
    return 100.0 * float((a.argmax(1) == b.argmax(1)).float().mean())
