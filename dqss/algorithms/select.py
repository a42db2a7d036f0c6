"""Measured selection of the final DQSS assignment.

The argmax of the searched logits is not the best discrete assignment: the relaxed objective's
optimum lies inside the simplex (a blend of grids with independent rounding errors dithers), and
the logit gradient ranks candidates by how their errors correlate, not by how good each is alone
(see docs/method.md, "Which DQSS row is which").  Evaluating a discrete assignment costs one no-grad
forward once the mixed layers are pinned (:func:`dqss.core.mixed.pin`), so the final choice is made on
the discrete objective, with the gradient search as one proposal:

1. start from the best on the search part S of {every uniform strategy, the argmax};
2. coordinate descent on S: one layer's weight or activation strategy changes at a time, and a
   move is accepted only when a paired per-item test says it lowers the objective by more than
   noise (mean decrease above ``accept_z`` standard errors);
3. guard: the descent's result stays unless another of {every uniform strategy, the start, the end of
   each earlier sweep} is lower on the held part H by more than noise (the same paired test at
   ``accept_z``); then the lowest such one replaces it.  So on H the result is never *significantly*
   worse than the best uniform strategy, and a held part too small to tell them apart (25 images of a
   100-image calibration draw, say) leaves the search's result in place, with a warning and
   ``held_too_small`` in the record, instead of overturning it on noise.

One implementation serves both PTQ tracks; only the per-item objective differs (:func:`item_losses`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core.layers import QuantLayer
from ..core.mixed import MixedQuantLayer, mixed_layers, pin
from ..core.quant import FakeQuantizer

log = logging.getLogger(__name__)

RULES = ("measured", "argmax")
PTQ_OBJECTIVES = ("kl", "mse_y", "l1", "mse")  # against the FP outputs
OBJECTIVES = (*PTQ_OBJECTIVES, "ce")  # ce: against labels (the QAT freeze)
ROLES = ("weight", "act")
# basicsr's rgb2ycbcr (y_only) on RGB in [0, 1]: Y in [16, 235]
_Y_COEF = (65.481, 128.553, 24.966)

Assignment = dict[str, tuple[str, str]]


def item_losses(kind: str, out: torch.Tensor, ref: torch.Tensor, border: int = 0) -> torch.Tensor:
    """The objective of each item (first dimension) of a batch, in float64.

    ``kl``: KL(FP softmax || quantized softmax) of logits (the ``kl_fp`` metric per image); ``ce``: the
    cross-entropy of logits against labels (``ref``);
    ``mse_y``: MSE on the Y channel of the clamped, 8-bit-rounded images, ``border`` pixels cropped
    (what PSNR measures, on a [0, 1] scale); ``l1`` / ``mse``: on the raw outputs."""
    out = out.double()
    ref = ref if kind == "ce" else ref.double()
    if kind == "kl":
        lp, lq = F.log_softmax(ref, 1), F.log_softmax(out, 1)
        return (lp.exp() * (lp - lq)).sum(1)
    if kind == "mse_y":
        coef = out.new_tensor(_Y_COEF).reshape(1, 3, 1, 1)  # Y in 0..255 (+16, which cancels)
        y_out = (torch.round(out.clamp(0, 1) * 255.0) / 255.0 * coef).sum(1)
        y_ref = (torch.round(ref.clamp(0, 1) * 255.0) / 255.0 * coef).sum(1)
        if border:
            y_out, y_ref = y_out[:, border:-border, border:-border], y_ref[:, border:-border, border:-border]
        return ((y_out - y_ref) / 255.0).pow(2).flatten(1).mean(1)
    if kind == "ce":  # ``ref`` holds the labels (QAT selects on the task loss)
        return F.cross_entropy(out, ref.long(), reduction="none")
    if kind == "l1":
        return (out - ref).abs().flatten(1).mean(1)
    if kind == "mse":
        return (out - ref).pow(2).flatten(1).mean(1)
    raise ValueError(f"unknown selection objective '{kind}'; valid objectives are {list(OBJECTIVES)}")


def block_chain(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module]] | None:
    """The model as a chain of blocks (its children, nested ``Sequential``s flattened), or None when running
    them one after the other does not reproduce the model's output exactly (a residual around a child, say)."""

    def flat(prefix, m):
        if isinstance(m, nn.Sequential):
            for n, c in m.named_children():
                yield from flat(f"{prefix}.{n}", c)
        else:
            yield prefix, m

    blocks = [b for n, c in model.named_children() for b in flat(n, c)]
    if len(blocks) < 2:
        return None
    with torch.no_grad():
        ref, y = model(example), example
        try:
            for _, b in blocks:
                y = b(y)
        except (RuntimeError, TypeError, ValueError):
            return None
        if not (y.shape == ref.shape and torch.allclose(y, ref, rtol=1e-5, atol=1e-6)):
            return None
        finer, y = [], example
        for name, b in blocks:
            finer += _split(name, b, y)
            y = b(y)
    return finer


def _split(name: str, module: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """``module`` as the finest chain of its descendants that gives its output on ``x`` bit for bit: a module
    whose forward runs its children one after the other (timm's RegNet stage, a conv-norm-act unit) is replaced
    by them, recursively; a residual block, a mixed layer and a module without a mixed layer stay whole.  A trial
    in a stage's last block then reruns that block, not the stage."""
    children = list(module.named_children())
    if (len(children) < 2 or isinstance(module, QuantLayer)
            or not any(isinstance(m, MixedQuantLayer) for m in module.modules())):
        return [(name, module)]
    ref, y = module(x), x
    try:
        for _, c in children:
            y = c(y)
    except (RuntimeError, TypeError, ValueError):
        return [(name, module)]
    if not (isinstance(y, torch.Tensor) and y.shape == ref.shape and torch.equal(y, ref)):
        return [(name, module)]
    out, y = [], x
    for n, c in children:
        out += _split(f"{name}.{n}", c, y)
        y = c(y)
    return out


class Evaluator:
    """Per-item objective of discrete assignments of one mixed model on one part of the calibration data.

    With ``cache`` and a model that is a chain of blocks (:func:`block_chain`), the inputs of every block
    under the *current* assignment (:meth:`set_current`) are kept, so a trial that changes one layer reruns
    only from that layer's block: the same numbers, in about half the work of a sweep."""

    def __init__(self, qmodel: nn.Module, inputs: torch.Tensor, reference: torch.Tensor, objective: str,
                 batch_size: int, device, border: int = 0, cache: bool = False, prepare=None):
        if len(inputs) == 0:
            raise ValueError("a selection part has no items; raise calibration.size or change "
                             "calibration.hold_fraction")
        self.qmodel, self.objective, self.border = qmodel, objective, border
        self.device = torch.device(device)
        self.batches = [(x.to(self.device), r.to(self.device))
                        for x, r in zip(torch.split(inputs, batch_size), torch.split(reference, batch_size))]
        self.n = len(inputs)
        self.count = 0  # evaluations so far
        self.prepare = prepare  # called with the model pinned, before it is measured (QAT: BN re-estimation)
        self.blocks = block_chain(qmodel, self.batches[0][0][:1]) if cache and prepare is None else None
        self.block_of: dict[str, int] = {}
        if self.blocks is not None:
            for name in mixed_layers(qmodel):
                hit = [i for i, (b, _) in enumerate(self.blocks) if name == b or name.startswith(b + ".")]
                if len(hit) != 1:
                    self.blocks = None
                    break
                self.block_of[name] = hit[0]
        self.current: Assignment | None = None
        self.cache: list[list[torch.Tensor]] = []  # cache[k][batch]: block k's input under ``current``

    def set_current(self, assignment: Assignment, keep_upto: int = 0) -> None:
        """The assignment trials are compared with; the cached inputs of blocks ``<= keep_upto`` stay valid."""
        self.current = dict(assignment)
        del self.cache[keep_upto + 1:]

    def block_index(self, layer: str) -> int:
        return self.block_of.get(layer, 0)

    def _fill(self, k: int) -> None:
        if not self.cache:
            self.cache.append([x for x, _ in self.batches])
        pin(self.qmodel, self.current)
        while len(self.cache) <= k:
            block = self.blocks[len(self.cache) - 1][1]
            self.cache.append([block(x) for x in self.cache[-1]])

    def _outputs(self, assignment: Assignment | None, changed: str | None):
        if self.blocks is None or changed is None or self.current is None:
            pin(self.qmodel, assignment)
            if self.prepare is not None:
                self.prepare(self.qmodel)
            return [self.qmodel(x) for x, _ in self.batches]
        k = self.block_of[changed]
        self._fill(k)
        pin(self.qmodel, assignment)
        outs = []
        for x in self.cache[k]:
            for _, block in self.blocks[k:]:
                x = block(x)
            outs.append(x)
        return outs

    @torch.no_grad()
    def losses(self, assignment: Assignment | None, changed: str | None = None) -> torch.Tensor:
        """Per-item objective of ``assignment`` (None: the mixture at the model's current temperature);
        ``changed`` names the one layer in which it differs from the current assignment (for the cache)."""
        try:
            outs = self._outputs(assignment, changed)
            out = torch.cat([item_losses(self.objective, o, r, self.border).cpu()
                             for o, (_, r) in zip(outs, self.batches)])
        finally:
            pin(self.qmodel, None)
        if not torch.isfinite(out).all():
            raise FloatingPointError("the selection objective is not finite for an assignment; check the calibration "
                                     "statistics (rerun the calibration) and the FP model's outputs")
        self.count += 1
        return out


@torch.no_grad()
def local_errors(layer: nn.Module, samples: torch.Tensor, role: str, other: str) -> dict[str, float]:
    """Output MSE of one mixed layer alone, on FP input samples, for each candidate of ``role`` with the
    other role's quantizer fixed to ``other``: the cheap screen of the coordinate descent's moves."""
    w = layer.layer.weight
    ref = layer.compute(samples, w)
    wq, aq = layer.weight_quant, layer.act_quant
    if role == "weight":
        x = aq.candidates[aq.names.index(other)](samples)
        return {n: float((layer.compute(x, q(w)) - ref).pow(2).mean()) for n, q in zip(wq.names, wq.candidates)}
    weight = wq.candidates[wq.names.index(other)](w)
    return {n: float((layer.compute(q(samples), weight) - ref).pow(2).mean()) for n, q in zip(aq.names, aq.candidates)}


@dataclass
class Selection:
    """The chosen assignment and everything needed to see how it was chosen."""

    assignment: Assignment
    chosen: str  # which stage the guard kept: 'uniform <name>', 'start' or 'sweep <k>'
    record: dict = field(default_factory=dict)


def uniform(layers, strategy: str) -> Assignment:
    return {n: (strategy, strategy) for n in layers}


def argmax_assignment(qmodel: nn.Module) -> Assignment:
    return {n: (m.weight_quant.choice(), m.act_quant.choice()) for n, m in mixed_layers(qmodel).items()}


def layers_differing(assignment: Assignment, strategy: str) -> dict[str, int]:
    """How many layers (and tensors of each role) differ from the uniform ``strategy``."""
    w = sum(c[0] != strategy for c in assignment.values())
    a = sum(c[1] != strategy for c in assignment.values())
    return {"layers": sum(c != (strategy, strategy) for c in assignment.values()), "weight": w, "act": a}


def _same(q: nn.Module, i: int, j: int, weights: torch.Tensor | None) -> bool:
    """Candidates i and j of a mixed quantizer quantize identically (so a move between them is void)."""
    if weights is not None:
        return torch.equal(weights[i], weights[j])
    a, b = q.candidates[i], q.candidates[j]
    return (isinstance(a, FakeQuantizer) and isinstance(b, FakeQuantizer) and a.spec == b.spec
            and torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point))


def _identical_pairs(qmodel: nn.Module) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """Per (layer, role), the pairs of candidate names that give the same quantized tensor (weights only
    while frozen: trained weights change under every candidate)."""
    out = {}
    for name, m in mixed_layers(qmodel).items():
        roles = [("act", m.act_quant, None)]
        if not m.layer.weight.requires_grad:
            roles.insert(0, ("weight", m.weight_quant, m.weight_candidates()))
        for role, q, weights in roles:
            pairs = set()
            for i in range(len(q.names)):
                for j in range(i + 1, len(q.names)):
                    if _same(q, i, j, weights):
                        pairs |= {(q.names[i], q.names[j]), (q.names[j], q.names[i])}
            out[name, role] = pairs
    return out


def significant_decrease(d: torch.Tensor, z: float) -> tuple[bool, float]:
    """Paired test of per-item differences ``d`` (new - current): (accept, t statistic)."""
    mean = float(d.mean())
    se = float(d.std(unbiased=True)) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    if se == 0.0:
        return mean < 0.0, (-math.inf if mean < 0 else 0.0)
    t = mean / se
    return mean < 0.0 and t < -z, t


def held_guard(stages: dict[str, Assignment], objective: dict[str, dict], guarded: list[str], proposed: str,
               held_losses: dict[tuple, torch.Tensor], z: float, n_held: int) -> dict:
    """The guard: keep the descent's result ``proposed`` unless another guarded stage (a uniform strategy, the
    start, an earlier sweep) is lower on the held part by more than noise, by the paired test the descent
    uses (:func:`significant_decrease` at ``z``).  The overturning stage is the lowest such one on the held
    part.  When a stage is lower on the held part but not significantly, the held part was too small to
    decide between them and the proposal stays; the record says so (``held_too_small``).

    The stage reported for the kept assignment is the first guarded stage with the same assignment (so a
    descent that ended on a uniform strategy reports ``uniform <name>``)."""
    key = lambda k: tuple(sorted(stages[k].items()))  # noqa: E731
    base = held_losses[key(proposed)]
    lower = sorted((k for k in guarded if objective[k]["held"] < objective[proposed]["held"]),
                   key=lambda k: objective[k]["held"])
    tests = {}
    for k in lower:
        ok, t = significant_decrease(held_losses[key(k)] - base, z)
        tests[k] = {"t": t if math.isfinite(t) else -1e9, "significant": ok}
    overturn = next((k for k in lower if tests[k]["significant"]), None)
    kept = overturn or proposed
    chosen = next(k for k in guarded if key(k) == key(kept))
    too_small = overturn is None and bool(lower)
    if too_small:
        best = lower[0]
        log.warning("selection guard: %s is lower than the search's result on the held part (%.6g < %.6g) but not "
                    "significantly (t = %.2f > -%.2f on %d held items): the held part is too small to decide, so "
                    "the search's result stays; more calibration images (calibration.size) make the guard "
                    "decisive", best, objective[best]["held"], objective[proposed]["held"], tests[best]["t"], z,
                    n_held)
    elif overturn is not None:
        log.info("selection guard: %s is significantly lower on the held part (t = %.2f): it replaces the "
                 "search's result", overturn, tests[overturn]["t"])
    return {"proposed": proposed, "chosen": chosen, "overturned": overturn is not None, "by": overturn,
            "held_too_small": too_small, "accept_z": z, "held_items": n_held, "tests": tests}


def measured_selection(qmodel: nn.Module, candidates: list[str], proposal: Assignment, search: Evaluator,
                       held: Evaluator, *, sweeps: int = 2, accept_z: float = 2.0, top_k: int | None = None,
                       samples: dict[str, torch.Tensor] | None = None, progress: str = "select") -> Selection:
    """Coordinate descent on the search part from the best of {uniforms, ``proposal``}, guarded on the held part.

    ``proposal`` is the gradient search's argmax.  With ``top_k`` and per-layer FP input ``samples``, each
    (layer, role) tries only the ``top_k`` alternatives with the lowest layer-local output error
    (:func:`local_errors`); otherwise every alternative.  The returned record has every stage's objective
    on both parts, the moves tried (and which were accepted) and the number of evaluations."""
    t0, counted = time.perf_counter(), search.count + held.count
    layers = list(mixed_layers(qmodel))
    same = _identical_pairs(qmodel)
    stages: dict[str, Assignment] = {f"uniform {s}": uniform(layers, s) for s in candidates}
    stages["argmax"] = dict(proposal)
    stage_losses = {k: search.losses(a) for k, a in stages.items()}
    objective = {k: {"search": float(v.mean())} for k, v in stage_losses.items()}
    start_from = min(stages, key=lambda k: objective[k]["search"])  # first wins ties: uniforms before argmax
    current, cur = dict(stages[start_from]), stage_losses[start_from]
    search.set_current(current)
    mixed = mixed_layers(qmodel)
    screened = top_k is not None and samples is not None and all(n in samples for n in layers)
    if top_k is not None and not screened:
        log.warning("dqss.top_k needs the calibration's layer samples (calibration.samples > 0); trying every "
                    "alternative")
    moves: list[dict] = []
    sweep_ends: list[Assignment] = []
    for sweep in range(1, sweeps + 1):
        accepted = 0
        for name in tqdm(layers, desc=f"{progress} sweep {sweep}", leave=False):
            for r, role in enumerate(ROLES):
                here = current[name][r]
                best = None
                alternatives = [c for c in candidates if c != here and (here, c) not in same.get((name, role), ())]
                if screened and len(alternatives) > top_k:
                    err = local_errors(mixed[name], samples[name], role, current[name][1 - r])
                    alternatives = sorted(alternatives, key=lambda c: err[c])[:top_k]
                for c in alternatives:
                    trial = dict(current)
                    trial[name] = (c, current[name][1]) if r == 0 else (current[name][0], c)
                    losses = search.losses(trial, changed=name)
                    diff = losses - cur
                    ok, t = significant_decrease(diff, accept_z)
                    delta = float(diff.mean())
                    moves.append({"sweep": sweep, "layer": name, "role": role, "from": here, "to": c,
                                  "delta_search": delta, "t": t if math.isfinite(t) else -1e9, "accepted": False})
                    if ok and (best is None or delta < best[0]):
                        best = (delta, trial, losses, len(moves) - 1)
                if best is not None:
                    _, current, cur, k = best
                    moves[k]["accepted"] = True
                    accepted += 1
                    search.set_current(current, keep_upto=search.block_index(name))
        sweep_ends.append(dict(current))
        stages[f"sweep {sweep}"] = dict(current)
        objective[f"sweep {sweep}"] = {"search": float(cur.mean())}
        log.info("selection sweep %d: %d moves accepted, objective on the search part %.6g", sweep, accepted,
                 float(cur.mean()))
        if accepted == 0:
            break
    stages["start"] = stages[start_from]
    objective["start"] = dict(objective[start_from])
    held_of: dict[tuple, torch.Tensor] = {}  # an assignment reached by several stages is measured once
    for k, a in stages.items():
        key = tuple(sorted(a.items()))
        if key not in held_of:
            held_of[key] = held.losses(a)
        objective[k]["held"] = float(held_of[key].mean())
    guarded = [f"uniform {s}" for s in candidates] + ["start"] + [f"sweep {i}" for i in range(1, len(sweep_ends) + 1)]
    proposed = guarded[-1]  # the descent's result (the start when no sweep ran)
    guard = held_guard(stages, objective, guarded, proposed, held_of, accept_z, held.n)
    chosen = guard["chosen"]
    held_best = min(candidates, key=lambda s: objective[f"uniform {s}"]["held"])
    search_best = min(candidates, key=lambda s: objective[f"uniform {s}"]["search"])
    result = stages[chosen]
    record = {
        "rule": "measured", "objective": search.objective, "search_items": search.n, "held_items": held.n,
        "accept_z": accept_z, "top_k": top_k if screened else None, "block_cache": search.blocks is not None,
        "sweeps_run": len(sweep_ends), "start": start_from, "chosen": chosen, "proposed": proposed,
        "guard": guard,
        "held_best_uniform": held_best, "search_best_uniform": search_best,
        "differ_from_held_best_uniform": layers_differing(result, held_best),
        "stages": objective, "moves_tried": len(moves), "moves_accepted": sum(m["accepted"] for m in moves),
        "moves": moves, "evaluations": search.count + held.count - counted,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return Selection(result, chosen, record)
