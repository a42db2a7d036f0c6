"""Code every track's jobs share: device resolution, and the PTQ job steps that classification and
super-resolution run the same way (calibration pass, uniform grid, DQSS search and its two assignments).

A track module (``cls_ptq``, ``sr_ptq``, ``cls_qat``) says only what is its own: how to load its model
and data, how to evaluate and what a result row holds.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from .. import api
from ..core.mixed import pinned
from ..algorithms.ptq import assignment_choice
from ..algorithms.ptq_search import write_history, write_selection
from ..results import (DQSS_ARGMAX, DQSS_METHOD, job_assignment, load_assignment, save_assignment, write_csv,
                       write_text)
from ..core.stats import load_stats

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; an unavailable CUDA device is an error naming the fix."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but CUDA is not available; set device: auto or cpu")
    return torch.device(device)


# -- PTQ job steps ----------------------------------------------------------------------------
def calibrate(cfg, folded, example, inputs: torch.Tensor, ids: list[str], *, stats, listing, device,
              desc: str) -> None:
    """Two passes over the calibration draw (range, then histograms) by the public :func:`dqss.api.calibrate`:
    the statistics every strategy and bit width derives its ranges from (written to ``stats``) and the
    draw's item list (``listing``).  The layers it leaves in full precision are logged with their reason."""
    c = cfg.calibration
    calib = api.calibrate(folded, torch.split(inputs, c.batch_size), cfg.quant, bins=c.bins, samples=c.samples,
                          device=device)
    log.info("%s:\n%s", desc, calib.report())
    calib.save(stats)
    write_text(listing, "".join(f"{x}\n" for x in ids))  # one calibration image or crop a line


def load_calibration(cfg, folded, example, stats, device) -> api.Calibration:
    """The calibration a PTQ job reads (its statistics file) as the API's :class:`~dqss.api.Calibration`."""
    return api.from_stats(folded, stats, cfg.quant, example, device=device, folded=True)


def uniform_grid(cfg, folded, example, stats, outputs: dict, finish: Callable) -> None:
    """Every (strategy, bit width) of ``outputs`` applied uniformly to all planned layers by the public
    :func:`dqss.api.quantize`; ``finish(qmodel, method, w, a, output)`` evaluates one and writes its result."""
    device = example.device
    calib = load_calibration(cfg, folded, example, stats, device)
    for (method, w, a), output in outputs.items():
        qmodel = api.quantize(folded, calib, cfg.strategy(method), w_bits=w, a_bits=a, device=device, folded=True)
        finish(qmodel, method, w, a, output)


def reconstruct_job(cfg, folded, example, stats, inputs: torch.Tensor, *, method: str, seed: int, w: int, a: int,
                    device, task_loss, state, history):
    """Reconstruct the W{w}A{a} model by ``method`` on the seed's calibration draw; its frozen quantizers
    (``state``, a DQSS candidate) and per-unit losses (``history``) are written; returns the result."""
    from ..algorithms.recon import get_reconstruction, reconstruct, reconstruction_state, save_reconstruction

    plans = cfg.quant.layer_plans(folded, w, a, example)
    result = reconstruct(get_reconstruction(method), folded, plans, load_stats(stats), inputs, cfg.reconstruction,
                         strategy=cfg.strategy, task_loss=task_loss, seed=seed, device=device,
                         batch_size=cfg.calibration.batch_size, example=example)
    meta = {"task": cfg.task, "dataset": cfg.dataset, "method": method, "w_bits": w, "a_bits": a, "seed": seed,
            "seconds": round(result.seconds, 3)}
    save_reconstruction(reconstruction_state(result.model, plans, meta), state)
    write_csv(history, result.history, ["pass", "unit", "layers", "loss"])
    log.info("%s W%dA%d seed %d reconstructed in %.1f s (%d units)", method, w, a, seed, result.seconds,
             len(result.units))
    return result


def recon_candidates(cfg, states: list[str]) -> dict:
    """The reconstructed methods as frozen DQSS candidates, from their jobs' files (in ``methods`` order)."""
    from ..algorithms.recon import ReconstructedStrategy, load_reconstruction

    states = [states] if isinstance(states, str) else list(states)  # one method: run_job passes a path
    methods = cfg.reconstruction.methods
    if len(states) != len(methods):
        raise ValueError(f"dqss_recon was given {len(states)} reconstruction file(s) for the methods {methods}; "
                         "the rule must pass one per method, in reconstruction.methods order")
    out = {}
    for m, path in zip(methods, states):
        state = load_reconstruction(path)
        if state.get("method") != m:
            raise RuntimeError(f"{path} holds a '{state.get('method')}' reconstruction, expected '{m}'; delete it "
                               "and rerun the workflow")
        out[m] = ReconstructedStrategy(m, state)
    return out


def dqss_search(cfg, folded, example, stats, inputs: torch.Tensor, ids: list[str], *, seed: int, w: int, a: int,
                device, objective: str, labels=None, border: int = 0, extra: dict | None = None) -> api.SearchResult:
    """The search on the calibration's search part and the final choice (``dqss.algorithms.select``), by the public
    :func:`dqss.api.search_assignment`: its result (both assignments, the outcome, the layer plans and the candidate
    strategies; ``extra``: more, e.g. reconstructed methods).  (The caller seeds torch before it builds the model.)"""
    calib = load_calibration(cfg, folded, example, stats, device)
    found = api.search_assignment(folded, calib, inputs, w_bits=w, a_bits=a, candidates=cfg.dqss.candidates,
                                  options=cfg.strategy_options, config=cfg.dqss, labels=labels,
                                  objective=objective, hold_fraction=cfg.calibration.hold_fraction,
                                  batch_size=cfg.calibration.batch_size, seed=seed, ids=ids, border=border,
                                  device=device, extra=extra, folded=True)
    return found


def dqss_save(cfg, found: api.SearchResult, *, backbone: str, seed: int, w: int, a: int,
              assignments: dict[str, str], history, selection, evaluate: Callable, mixture_metrics: Callable,
              rows: dict[str, str] | None = None) -> dict:
    """Write both assignment files (``dqss_argmax``: the logits' argmax; ``dqss``: the selection; each as the API
    exported it in ``found``, with the job's task, dataset, backbone and method added), evaluate the
    model each file reproduces (the mixed model pinned to the file read back), write the search history and
    the selection record.  ``evaluate(model, desc)`` returns a track's result; ``mixture_metrics`` turns the
    mixture's result into what the selection record shows.  ``rows`` maps each written method to the
    choice it reports (``argmax`` or ``selected``; default: both rows of a DQSS job).  Returns the result per
    method."""
    results = {}
    out, plans, strategies = found.outcome, found.plans, found.strategies
    rows = rows or {DQSS_ARGMAX: "argmax", DQSS_METHOD: "selected"}
    for method, which in rows.items():
        path = assignments[method]
        job = {"task": cfg.task, "dataset": cfg.dataset, "backbone": backbone, "method": method}
        save_assignment(job_assignment(found.argmax if which == "argmax" else found.assignment, job), path)
        with pinned(out.qmodel, assignment_choice(load_assignment(path), plans, strategies)) as final:
            results[method] = evaluate(final, f"{method} W{w}A{a}")
        log.info("%s %s W%dA%d seed %d: %s", backbone, method, w, a, seed, results[method][0])
    write_history(out.history, history)
    mixture = mixture_metrics(evaluate(out.qmodel, f"mixture W{w}A{a}"))
    write_selection(out, selection, {"task": cfg.task, "dataset": cfg.dataset, "backbone": backbone, "w_bits": w,
                                     "a_bits": a, "seed": seed}, test={"mixture": mixture})
    return results
