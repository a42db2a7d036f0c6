"""Classification QAT track: FP checkpoint -> every QAT method and DQSS-QAT, one recipe.

The FP training and evaluation jobs are shared with the PTQ track (:mod:`dqss.tracks.classification`), run
with this track's config; this module adds the quantization-aware training jobs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import Track, register_track
from .classification import (EVAL_KEYS, TRAIN_KEYS, ClassificationConfig, calibration_tensors, evaluate_test,
                             example_input, load_fp_logits, prepare)
from ..cls.evaluate import predict
from ..core.layers import plan_layers
from ..algorithms.ptq import export_assignment, save_assignment
from ..algorithms.ptq_search import selection_summary
from ..algorithms.qat_train import DQSSQATConfig, QATRecipe, quantize_qat, reestimate_bn, train_qat
from ..results import DQSS_METHOD, DQSS_NOFIX, DQSS_RETRAIN, assignment_meta, provenance, write_csv, write_metrics
from ..core.stats import collect_act_stats

log = logging.getLogger(__name__)

TASK = "cls_qat"
DQSS_VARIANTS = {DQSS_METHOD: True, DQSS_NOFIX: False}  # method name -> under-fitting fix on
RETRAIN_METHOD = DQSS_RETRAIN  # the frozen DQSS assignment (of method dqss), retrained from the FP checkpoint


@dataclass(kw_only=True)
class ClsQATConfig(ClassificationConfig):
    qat: QATRecipe
    dqss: DQSSQATConfig
    task: ClassVar[str] = TASK
    kind: ClassVar[str] = "qat"
    section_defaults: ClassVar[dict] = {"calibration": {"samples": 0}}  # QAT's initialisation keeps no samples

    def methods(self) -> list[str]:
        return self.strategies + list(DQSS_VARIANTS) + [RETRAIN_METHOD]

    def row_settings(self, backbone: str, method: str) -> dict:
        """Beside every track's settings: the QAT recipe's, and DQSS-QAT's search settings on its rows."""
        from ..results import REFERENCE_METHODS, is_dqss

        out = super().row_settings(backbone, method)
        if method in REFERENCE_METHODS:
            return out
        out.update(first_last_bits=self.quant.first_last_bits, epochs=self.qat.epochs, lr=self.qat.lr,
                   quant_lr=self.qat.quant_lr)
        if not is_dqss(method):
            return out
        out.update(self.dqss_row_settings(method))
        if method != DQSS_RETRAIN:
            d = self.dqss
            out.update(arch_lr=d.arch_lr, sampling=d.sampling,
                       search_fraction=1.0 if method == DQSS_NOFIX else d.search_fraction)
        return out


_QAT = ("quant", "calibration", "qat")
TRACK = register_track(Track(
    name=TASK, config=ClsQATConfig, table="cls", family="cls",
    description="classification QAT: one recipe for every QAT strategy and DQSS-QAT (leave out to skip)",
    trainable=("digits", "cifar10"), jobs_per_method=True,
    job_keys={
        "train": TRAIN_KEYS,
        "evaluate_fp": EVAL_KEYS,
        "uniform": (*EVAL_KEYS, *_QAT, "strategies", "strategy_options"),
        "dqss": (*EVAL_KEYS, *_QAT, "dqss", "strategy_options"),
    }))


def init_stats(model: nn.Module, plans, prep, cfg: ClsQATConfig, seed: int, device):
    """FP activation statistics on the seed's calibration draw (quantizer initialisation)."""
    x, _, _ = calibration_tensors(prep, cfg, seed)
    layers = {n: model.get_submodule(n) for n in plans}
    return collect_act_stats(model, layers, torch.split(x, cfg.calibration.batch_size),
                             bins=cfg.calibration.bins, device=device, desc="init statistics")


def _test_top1(prep, cfg, device):
    loader = DataLoader(prep.data.test, batch_size=cfg.eval_batch_size, num_workers=cfg.data.workers)

    def evaluate(model):
        logits, labels = predict(model, loader, device, desc="eval")
        return 100.0 * float((logits.argmax(1) == labels).float().mean())

    return evaluate


def freeze_selection(cfg, prep, seed: int, names: list[str], device, record: dict):
    """The DQSS-QAT freeze point's choice: ``dqss.algorithms.select`` on the seed's calibration draw.

    'measured': the PTQ tracks' selection with the task loss (cross-entropy on the draw's labels) as the
    objective and BN statistics re-estimated on the search part for each evaluated assignment; the
    model's own BN statistics are restored afterwards.  ``record`` receives the selection record."""
    from ..algorithms.ptq_search import split_calibration
    from ..algorithms.select import Evaluator, argmax_assignment, measured_selection

    def select(model):
        if cfg.dqss.select == "argmax":
            record.update(rule="argmax")
            return argmax_assignment(model)
        x, y, _ = calibration_tensors(prep, cfg, seed)
        s_idx, h_idx = (torch.tensor(i) for i in split_calibration(len(x), cfg.calibration.hold_fraction, seed))
        bs = cfg.calibration.batch_size
        search_batches = [b.to(device) for b in torch.split(x[s_idx], bs)]
        saved = {k: v.clone() for k, v in model.state_dict().items()
                 if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        model.eval()
        prepare = lambda m: reestimate_bn(m, search_batches)  # noqa: E731
        ev_s = Evaluator(model, x[s_idx], y[s_idx], "ce", bs, device, prepare=prepare)
        ev_h = Evaluator(model, x[h_idx], y[h_idx], "ce", bs, device, prepare=prepare)
        try:
            sel = measured_selection(model, names, argmax_assignment(model), ev_s, ev_h, sweeps=cfg.dqss.sweeps,
                                     accept_z=cfg.dqss.accept_z, progress="freeze")
        finally:
            model.load_state_dict(saved, strict=False)
            model.train()
        record.update(sel.record)
        return sel.assignment

    return select


def _assignment_choice(cfg, plans, path) -> dict[str, tuple]:
    """The (weight, activation) strategies of a DQSS-QAT assignment file, checked against the plan."""
    from ..algorithms.ptq import assignment_choice, load_assignment

    strategies = {s: cfg.strategy(s) for s in cfg.dqss.candidates}
    choice = assignment_choice(load_assignment(path), plans, strategies)
    return {n: (strategies[w], strategies[a]) for n, (w, a) in choice.items()}


# -- the job --------------------------------------------------------------------------------
def run_qat(cfg: ClsQATConfig, *, backbone: str, method: str, seed: int, w: int, a: int, ckpt=None, fp, metrics,
            history, device, assignment=None, selection=None, dqss_assignment=None) -> None:
    """Train ``backbone`` at W{w}A{a} with ``method`` (a QAT strategy, ``dqss``, ``dqss_nofix``, or
    ``dqss_retrain``: the frozen DQSS assignment ``dqss_assignment`` trained from the FP checkpoint for the
    full schedule), evaluate the deployed (discrete) model, write ``metrics`` and the curve ``history`` (and,
    for DQSS, the frozen ``assignment`` and the freeze point's ``selection`` record).  ``fp``: the FP logits."""
    is_dqss = method in DQSS_VARIANTS
    if not is_dqss and method != RETRAIN_METHOD and method not in cfg.strategies:
        raise ValueError(f"{TASK}: unknown method '{method}'; configured: {cfg.methods()}")
    if is_dqss and assignment is None:
        raise ValueError("a DQSS run needs an assignment output path")
    if method == RETRAIN_METHOD and dqss_assignment is None:
        raise ValueError(f"{RETRAIN_METHOD} needs the DQSS assignment file to retrain")
    torch.manual_seed(seed)
    prep = prepare(cfg, backbone, ckpt)
    fp_model = prep.model.to(device)
    ex = example_input(prep).to(device)
    plans = plan_layers(fp_model, cfg.quant, w, a, ex)
    stats = init_stats(fp_model, plans, prep, cfg, seed, device)
    names = cfg.dqss.candidates if is_dqss or method == RETRAIN_METHOD else [method]
    strategies = {s: cfg.strategy(s) for s in names}
    if method == RETRAIN_METHOD:
        qmodel = quantize_qat(fp_model, plans, stats, _assignment_choice(cfg, plans, dqss_assignment))
    else:
        qmodel = quantize_qat(fp_model, plans, stats, {n: strategies for n in plans}, cfg.dqss.mode if is_dqss else None)
    evaluate = _test_top1(prep, cfg, device)
    freeze_info, record = {}, {}
    chooser = freeze_selection(cfg, prep, seed, names, device, record) if is_dqss else None

    def on_freeze(model, step):
        freeze_info["mixture_top1"] = evaluate(model)  # the trained mixture, before the discrete choice
        freeze_info["frozen_at_step"] = step
        model.train()

    def select(model):
        choice = chooser(model)
        meta = assignment_meta(job={"task": TASK, "dataset": cfg.dataset, "backbone": backbone}, w_bits=w, a_bits=a,
                               seed=seed, run={"method": method, "frozen_at_step": freeze_info["frozen_at_step"]},
                               candidates=names, strategy_options=cfg.strategy_options, select=cfg.dqss.select)
        save_assignment(export_assignment(model, plans, meta, choice), assignment)
        return choice

    curve = train_qat(qmodel, prep.data.training_set(), cfg.qat, device, seed,
                      search=cfg.dqss if is_dqss else None, fix=DQSS_VARIANTS.get(method, True),
                      evaluate=evaluate, on_freeze=on_freeze if is_dqss else None,
                      workers=cfg.data.workers, desc=f"{method} W{w}A{a}", select=select if is_dqss else None)
    if is_dqss and selection is not None:
        from ..results import write_json

        write_json(selection, {"task": TASK, "dataset": cfg.dataset, "backbone": backbone, "w_bits": w,
                                   "a_bits": a, "seed": seed, "method": method, **record})
    qmodel.eval()
    fp_logits, _ = load_fp_logits(fp)
    values, images = evaluate_test(qmodel, prep, cfg, fp_logits, device, f"{method} W{w}A{a}")
    log.info("%s %s W%dA%d seed %d: %s", backbone, method, w, a, seed, values)
    write_csv(history, curve)
    extra = {"final_loss": curve[-1]["loss"]}
    if is_dqss:
        summary = selection_summary(record)
        extra.update(**freeze_info, **{k: summary[k] for k in ("selection_chosen", "selection_moves_accepted",
                                                               "selection_evaluations", "selection_seconds",
                                                               "selection_held_best_uniform", "selection_guard")
                                       if k in summary})
    if method == RETRAIN_METHOD:
        extra.update(retrained_from=str(dqss_assignment))
    write_metrics(metrics, task=TASK, dataset=cfg.dataset, backbone=backbone, method=method, w_bits=w,
                  a_bits=a, seed=seed, metrics=values, prov=provenance(device, cfg.raw),
                  settings=cfg.row_settings(backbone, method), extra=extra, per_image=images)
