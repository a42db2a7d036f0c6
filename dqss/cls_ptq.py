"""Classification PTQ track: the jobs the workflow runs, as plain functions.

Each function reads its inputs from files, writes its outputs, and is called by a short shim in
``workflow/scripts`` with keyword arguments named like its rule's wildcards, inputs and outputs; tests
call them directly.  The FP jobs (training, evaluation) are shared with the QAT track
(:mod:`dqss.classification`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from .classification import (ClassificationConfig, calibration_tensors, evaluate_test, example_input,
                             load_fp_logits, prepare, run_evaluate_fp, run_train)  # noqa: F401  (this track's FP jobs)
from .deploy_check import DeploySection, run_cls_deploy  # noqa: F401  (this track's deploy_check job)
from .layers import fold_batchnorm
from .ptq_search import selection_summary
from .recon import ReconSection, kl_task_loss
from .results import DQSS_ARGMAX, DQSS_METHOD, DQSS_RECON, provenance, write_metrics
from .search import SearchConfig
from .track import calibrate, dqss_save, dqss_search, recon_candidates, reconstruct_job, uniform_grid

log = logging.getLogger(__name__)

TASK = "cls_ptq"


@dataclass(kw_only=True)
class ClsPTQConfig(ClassificationConfig):
    dqss: SearchConfig
    reconstruction: ReconSection  # the reconstruction baselines (AdaRound, BRECQ, QDrop); none by default
    deploy: DeploySection  # the ONNX Runtime check of the DQSS and best uniform models (deploy_check)
    task: ClassVar[str] = TASK
    section_choices: ClassVar[dict] = {"dqss": {"objective": ("kl", "l1", "mse")}}
    choice_reasons: ClassVar[dict] = {"dqss.objective": "measures images; classification selects on its logits"}


# -- jobs -----------------------------------------------------------------------------------
def run_calibrate(cfg: ClsPTQConfig, *, backbone: str, seed: int, ckpt=None, stats, images, device) -> None:
    """Two passes over the calibration draw (range, then histograms); statistics shared by every strategy and bit width."""
    prep = prepare(cfg, backbone, ckpt)
    folded = fold_batchnorm(prep.model, example_input(prep)).to(device)
    x, _, ids = calibration_tensors(prep, cfg, seed)
    calibrate(cfg, folded, example_input(prep).to(device), x, ids, stats=stats, listing=images, device=device,
              desc=f"calibrate {backbone} seed {seed}")


def run_uniform(cfg: ClsPTQConfig, *, backbone: str, seed: int, ckpt=None, stats, fp,
                outputs: dict[tuple[str, int, int], str], device) -> None:
    """Every (strategy, bit width) applied uniformly to all layers; one metrics file each (``outputs``)."""
    prep = prepare(cfg, backbone, ckpt)
    folded = fold_batchnorm(prep.model, example_input(prep)).to(device)
    fp_logits, _ = load_fp_logits(fp)
    prov = provenance(device, cfg.raw)

    def finish(qmodel, method, w, a, path):
        metrics, images = evaluate_test(qmodel, prep, cfg, fp_logits, device, f"{method} W{w}A{a}")
        log.info("%s %s W%dA%d seed %d: %s", backbone, method, w, a, seed, metrics)
        write_metrics(path, task=TASK, dataset=cfg.dataset, backbone=backbone, method=method, w_bits=w, a_bits=a,
                      seed=seed, metrics=metrics, prov=prov, per_image=images,
                      settings=cfg.row_settings(backbone, method))

    uniform_grid(cfg, folded, example_input(prep).to(device), stats, outputs, finish)


def run_dqss(cfg: ClsPTQConfig, *, backbone: str, seed: int, w: int, a: int, ckpt=None, stats, fp, metrics,
             assignment, history, selection, argmax_metrics, argmax_assignment, device) -> None:
    """Search the per-layer strategies on the calibration's search part, choose the final assignment
    (``dqss``: ``dqss.select``; ``dqss_argmax``: the logits' argmax), rebuild both discrete models from
    their assignment files and evaluate them on the test set."""
    _search_job(cfg, backbone, seed, w, a, ckpt, stats, fp, history, selection, device,
                {DQSS_ARGMAX: ("argmax", argmax_metrics, argmax_assignment), DQSS_METHOD: ("selected", metrics, assignment)})


def run_dqss_recon(cfg: ClsPTQConfig, *, backbone: str, seed: int, w: int, a: int, ckpt=None, stats, fp, recon,
                   metrics, assignment, history, selection, device) -> None:
    """``dqss_recon``: the DQSS search and selection with the reconstructed methods (``recon``: their files, in
    ``reconstruction.methods`` order) as frozen candidates beside the range strategies."""
    _search_job(cfg, backbone, seed, w, a, ckpt, stats, fp, history, selection, device,
                {DQSS_RECON: ("selected", metrics, assignment)}, extra=recon_candidates(cfg, recon))


def _search_job(cfg, backbone, seed, w, a, ckpt, stats, fp, history, selection, device, rows: dict, extra=None):
    torch.manual_seed(seed)
    prep = prepare(cfg, backbone, ckpt)
    folded = fold_batchnorm(prep.model, example_input(prep)).to(device)
    x, y, ids = calibration_tensors(prep, cfg, seed)
    out, plans, strategies = dqss_search(cfg, folded, example_input(prep).to(device), stats, x, ids, seed=seed,
                                         w=w, a=a, device=device, objective="kl", labels=y, extra=extra)
    fp_logits, _ = load_fp_logits(fp)
    results = dqss_save(cfg, out, plans, strategies, backbone=backbone, seed=seed, w=w, a=a,
                        assignments={m: r[2] for m, r in rows.items()}, history=history, selection=selection,
                        mixture_metrics=lambda r: r[0], rows={m: r[0] for m, r in rows.items()},
                        evaluate=lambda m, desc: evaluate_test(m, prep, cfg, fp_logits, device, desc))
    prov = provenance(device, cfg.raw)
    extra_cols = {"final_loss": out.history[-1]["loss"], **selection_summary(out.record)}
    for method, (_, path, _) in rows.items():
        values, images = results[method]
        write_metrics(path, task=TASK, dataset=cfg.dataset, backbone=backbone, method=method, w_bits=w, a_bits=a,
                      seed=seed, metrics=values, prov=prov, per_image=images,
                      settings=cfg.row_settings(backbone, method), extra=extra_cols)


def run_reconstruct(cfg: ClsPTQConfig, *, backbone: str, method: str, seed: int, w: int, a: int, ckpt=None, stats,
                    fp, metrics, state, history, device) -> None:
    """A reconstruction baseline (AdaRound, BRECQ, QDrop) on the seed's calibration draw, evaluated on the test
    set; its frozen quantizers (``state``) are a candidate of ``dqss_recon``."""
    torch.manual_seed(seed)
    prep = prepare(cfg, backbone, ckpt)
    ex = example_input(prep)
    folded = fold_batchnorm(prep.model, ex).to(device)
    x, _, _ = calibration_tensors(prep, cfg, seed)
    result = reconstruct_job(cfg, folded, ex.to(device), stats, x, method=method, seed=seed, w=w, a=a,
                             device=device, task_loss=kl_task_loss, state=state, history=history)
    fp_logits, _ = load_fp_logits(fp)
    values, images = evaluate_test(result.model, prep, cfg, fp_logits, device, f"{method} W{w}A{a}")
    log.info("%s %s W%dA%d seed %d: %s", backbone, method, w, a, seed, values)
    write_metrics(metrics, task=TASK, dataset=cfg.dataset, backbone=backbone, method=method, w_bits=w, a_bits=a,
                  seed=seed, metrics=values, prov=provenance(device, cfg.raw), per_image=images,
                  settings=cfg.row_settings(backbone, method),
                  extra={"reconstruction_seconds": round(result.seconds, 3)})
