"""DQSS-PTQ from the calibration draw to the final assignments: one path for every PTQ track.

The seed's calibration draw is split into a search part S and a held part H.  The gradient search
(:func:`dqss.algorithms.search.search`) trains the logits on S; its argmax is the paper's assignment
(``dqss_argmax``); the measured selection (:mod:`dqss.algorithms.select`) gives ``dqss``.  Classification and
super-resolution differ only in the selection objective and its defaults.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.mixed import set_temperature
from .ptq import quantize_mixed
from .search import SearchConfig, search
from .select import Evaluator, argmax_assignment, measured_selection

log = logging.getLogger(__name__)


def split_calibration(n: int, hold_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the search and held parts of an ``n``-item draw (a seeded shuffle, each part sorted)."""
    held_n = round(hold_fraction * n)
    if held_n < 1 or held_n >= n:
        raise ValueError(f"calibration.hold_fraction={hold_fraction} of {n} calibration items leaves an empty search "
                         "or held part; raise calibration.size or change the fraction")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 1_000_003)).tolist()
    return sorted(order[held_n:]), sorted(order[:held_n])


@dataclass
class Outcome:
    """What a DQSS-PTQ job records: both assignments, the search history and the selection record."""

    qmodel: nn.Module  # the mixed model as the search left it (logits and final temperature)
    argmax: dict[str, tuple[str, str]]
    selected: dict[str, tuple[str, str]]
    history: list[dict]
    record: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)  # {"search": ids, "held": ids}


def search_and_select(folded: nn.Module, plans: dict, stats: dict, strategies: dict, inputs: torch.Tensor,
                      ids: list[str], *, cfg: SearchConfig, hold_fraction: float, seed: int, device,
                      objective: str, batch_size: int, labels: torch.Tensor | None = None,
                      border: int = 0) -> Outcome:
    """Search the logits on S, then choose the final assignment by ``cfg.select``.

    ``objective`` is the selection objective when ``cfg.objective`` is null (the track's default);
    ``border`` crops that many pixels of SR outputs before the objective, as PSNR does."""
    search_idx, held_idx = split_calibration(len(inputs), hold_fraction, seed)
    qmodel = quantize_mixed(folded, plans, stats, strategies, cfg.mode)
    with torch.no_grad():
        teacher = torch.cat([folded(b.to(device)).cpu() for b in torch.split(inputs, batch_size)])
    s_idx, h_idx = torch.tensor(search_idx), torch.tensor(held_idx)
    t0 = time.perf_counter()
    history = search(qmodel, inputs[s_idx], teacher[s_idx], cfg, seed, device,
                     labels=None if labels is None else labels[s_idx])
    search_seconds = time.perf_counter() - t0
    argmax = argmax_assignment(qmodel)
    kind = cfg.objective or objective
    ev_s = Evaluator(qmodel, inputs[s_idx], teacher[s_idx], kind, batch_size, device, border, cache=cfg.block_cache)
    ev_h = Evaluator(qmodel, inputs[h_idx], teacher[h_idx], kind, batch_size, device, border)
    set_temperature(qmodel, cfg.tau(cfg.iterations - 1))  # the mixture as the search left it (pins ignore it)
    mixture = {"search": float(ev_s.losses(None).mean()), "held": float(ev_h.losses(None).mean())}
    if cfg.select == "measured":
        samples = {n: torch.cat(st.samples).to(device) for n, st in stats.items() if n in plans and st.samples}
        sel = measured_selection(qmodel, list(strategies), argmax, ev_s, ev_h, sweeps=cfg.sweeps,
                                 accept_z=cfg.accept_z, top_k=cfg.top_k, samples=samples)
        selected, record = sel.assignment, sel.record
    else:
        selected = argmax
        record = {"rule": "argmax", "objective": kind, "search_items": ev_s.n, "held_items": ev_h.n,
                  "stages": {"argmax": {"search": float(ev_s.losses(argmax).mean()),
                                        "held": float(ev_h.losses(argmax).mean())}}}
    record["stages"]["mixture"] = mixture
    record["search_seconds"] = round(search_seconds, 3)
    log.info("DQSS selection (%s): %s", record["rule"], {k: v for k, v in record.items() if k in
                                                        ("start", "chosen", "moves_accepted", "evaluations")})
    split = {"search": [ids[i] for i in search_idx], "held": [ids[i] for i in held_idx]}
    return Outcome(qmodel, argmax, selected, history, record, split)


def selection_summary(record: dict) -> dict:
    """The selection facts a result row carries (the full record is the job's selection.json)."""
    keys = ("objective", "start", "chosen", "held_best_uniform", "search_best_uniform", "moves_tried",
            "moves_accepted", "evaluations", "seconds", "search_seconds")
    out = {f"selection_{k}": record[k] for k in keys if k in record}
    if "differ_from_held_best_uniform" in record:
        out["selection_layers_differ"] = record["differ_from_held_best_uniform"]["layers"]
    guard = record.get("guard")
    if guard:  # kept | overturned | too_small (a held stage was lower, not significantly: the search's result stays)
        out["selection_guard"] = ("overturned" if guard["overturned"] else
                                  "too_small" if guard["held_too_small"] else "kept")
    return out


def write_history(history: list[dict], path) -> None:
    """The search's loss per step (``search.csv``)."""
    from ..results import write_csv

    write_csv(path, [{"step": h["step"], "loss": h["loss"], "tau": h["tau"]} for h in history])


def write_selection(outcome: Outcome, path, meta: dict, test: dict | None = None) -> None:
    """The selection record: ``meta`` (task, dataset, backbone, w_bits, a_bits, seed), every stage's objective
    on both calibration parts, the moves, the split sizes; ``test`` adds test-set metrics of stages that have
    no row of their own (the mixture)."""
    from ..results import write_json

    write_json(path, {**meta, **outcome.record, "test": test or {}})
