"""Classification PTQ track: the jobs the workflow runs, as plain functions.

Each function reads its inputs from files, writes its outputs, and is called by a short shim in
``workflow/scripts`` with keyword arguments named like its rule's wildcards, inputs and outputs; tests
call them directly.  The FP jobs (training, evaluation) are shared with the QAT track
(:mod:`dqss.tracks.classification`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import api
from . import Track, register_track
from .classification import (EVAL_KEYS, MODEL_KEYS, TRAIN_KEYS, ClassificationConfig, calibration_tensors,
                             evaluate_test, example_input, load_fp_logits, prepare, run_evaluate_fp,
                             run_train)  # noqa: F401  (this track's FP jobs)
from .config import PTQTrackConfig
from ..deploy import run_onnx
from .deploy import DeploySection, check_job, test_subset
from ..core.layers import fold_batchnorm
from ..algorithms.ptq_search import selection_summary
from ..algorithms.recon import ReconSection, kl_task_loss
from ..results import DQSS_ARGMAX, DQSS_METHOD, DQSS_RECON, provenance, write_metrics
from ..algorithms.search import SearchConfig
from .common import (calibrate, dqss_save, dqss_search, load_calibration, recon_candidates, reconstruct_job,
                    uniform_grid)

log = logging.getLogger(__name__)

TASK = "cls_ptq"


@dataclass(kw_only=True)
class ClsPTQConfig(ClassificationConfig, PTQTrackConfig):
    dqss: SearchConfig
    reconstruction: ReconSection  # the reconstruction baselines (AdaRound, BRECQ, QDrop); none by default
    deploy: DeploySection  # the ONNX Runtime check of the DQSS and best uniform models (deploy_check)
    task: ClassVar[str] = TASK
    section_choices: ClassVar[dict] = {"dqss": {"objective": ("kl", "l1", "mse")}}
    choice_reasons: ClassVar[dict] = {"dqss.objective": "measures images; classification selects on its logits"}


_QUANT = ("quant", "calibration")
TRACK = register_track(Track(
    name=TASK, config=ClsPTQConfig, table="cls", family="cls",
    description="classification PTQ: calibration, uniform strategies and the DQSS search (leave out to skip)",
    trainable=("digits",), deploy=True,
    job_keys={
        "train": TRAIN_KEYS,
        "evaluate_fp": EVAL_KEYS,
        "calibrate": (*MODEL_KEYS, *_QUANT),
        "uniform": (*EVAL_KEYS, *_QUANT, "strategies", "strategy_options"),
        "dqss": (*EVAL_KEYS, *_QUANT, "dqss", "strategy_options"),
        "reconstruct": (*EVAL_KEYS, *_QUANT, "reconstruction", "strategy_options"),
        "dqss_recon": (*EVAL_KEYS, *_QUANT, "dqss", "reconstruction", "strategy_options"),
        "deploy": (*EVAL_KEYS, *_QUANT, "dqss", "strategy_options", "deploy"),
    }))


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
    (``dqss``: ``dqss.algorithms.select``; ``dqss_argmax``: the logits' argmax), rebuild both discrete models from
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
    found = dqss_search(cfg, folded, example_input(prep).to(device), stats, x, ids, seed=seed, w=w, a=a,
                        device=device, objective="kl", labels=y, extra=extra)
    out = found.outcome
    fp_logits, _ = load_fp_logits(fp)
    results = dqss_save(cfg, found, backbone=backbone, seed=seed, w=w, a=a,
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


def run_deploy(cfg, *, backbone: str, seed: int, ckpt=None, stats, assignments, table, device) -> None:
    """The classification PTQ track's deployment check of one backbone (``table``: its CSV): top-1 of the
    fake-quantized model and of ONNX Runtime on the test set, their agreement and largest logit difference."""
    cpu = torch.device("cpu")  # ONNX Runtime's CPU execution provider against the PyTorch CPU model
    prep = prepare(cfg, backbone, ckpt)
    ex = example_input(prep)
    folded = fold_batchnorm(prep.model, ex).to(cpu)
    calib = load_calibration(cfg, folded, ex, stats, cpu)
    batches = torch.split(calibration_tensors(prep, cfg, seed)[0], cfg.calibration.batch_size)
    items = [prep.data.test[i] for i in test_subset(len(prep.data.test), cfg.deploy.test_items)]
    x = torch.stack([torch.as_tensor(t[0]) for t in items])
    labels = torch.as_tensor([int(t[1]) for t in items])
    bs = cfg.eval_batch_size

    def compare(qmodel, session, unoptimized):
        fake, ort = api.outputs(qmodel, torch.split(x, bs)), run_onnx(session, x, bs)
        ort_un = run_onnx(unoptimized, x, bs)
        right_fake, right_ort = int((fake.argmax(1) == labels).sum()), int((ort.argmax(1) == labels).sum())
        return [{"dataset": cfg.dataset, "metric": "top1", "fake": round(100 * right_fake / len(x), 4),
                 "ort": round(100 * right_ort / len(x), 4), "diff": round(100 * (right_ort - right_fake) / len(x), 4),
                 "diff_items": right_ort - right_fake, "n_items": len(x),
                 "agreement": round(api.agreement(fake, ort), 4),
                 "max_abs_diff": round(float((fake - ort).abs().max()), 6),
                 "ort_unoptimized": round(100 * int((ort_un.argmax(1) == labels).sum()) / len(x), 4),
                 "agreement_unoptimized": round(api.agreement(fake, ort_un), 4)}]

    check_job(cfg, backbone, seed, folded, ex, calib, batches, assignments, table, lambda m: m, compare)
