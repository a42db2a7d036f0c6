"""Classification PTQ track: the jobs the workflow runs, as plain functions.

Each function reads its inputs from files, writes its outputs, and is called by a
short shim in ``workflow/scripts``; tests call them directly.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import DataLoader

from .config import (Section, TrackMethods, check_candidates, check_names, check_options, eval_batch_size, given,
                     option, parse_backbones, parse_bits, parse_options)
from .data import DataConfig, load_classification
from .evaluate import classification_metrics, per_image, predict
from .layers import QuantPolicy, fold_batchnorm, plan_layers
from .mixed import pinned
from .models import create_backbone, data_config, save_checkpoint
from .ptq import assignment_choice, export_assignment, load_assignment, quantize_uniform, save_assignment
from .ptq_search import assignment_meta, search_and_select, selection_summary, write_history, write_selection
from .results import FP_METHOD, provenance, write_metrics
from .search import SearchConfig
from .stats import collect_act_stats, load_stats, save_stats
from .train import TrainConfig, train_classifier

log = logging.getLogger(__name__)

TASK = "cls_ptq"


@dataclass
class CalibConfig:
    """The ``calibration:`` section of a classification track: each seed's draw of training images and the
    activation statistics collected on it."""

    size: int = option(256, ge=1)  # training images drawn per seed
    batch_size: int = option(64, ge=1)  # images per forward pass while collecting the statistics
    bins: int = option(2048, ge=256)  # histogram bins of each layer's input statistics
    samples: int = option(16, ge=0)  # layer inputs (images) kept per layer for strategies that evaluate the layer
    # held part of the draw: the DQSS selection's guard (BRECQ/AdaRound: 1024 -> 768/256)
    hold_fraction: float = option(0.25, gt=0, lt=1)

    def __post_init__(self):
        check_options(self)


@dataclass
class ClsPTQConfig(TrackMethods):
    dataset: str
    data: DataConfig
    backbones: dict[str, dict]
    train: TrainConfig
    bits: list[tuple[int, int]]
    calibration: CalibConfig
    strategies: list[str]
    strategy_options: dict[str, dict]
    quant: QuantPolicy
    dqss: SearchConfig
    eval_batch_size: int = 256
    classes: int | None = None  # num_classes of real data (digits: 10)
    raw: dict = field(default_factory=dict)
    task: ClassVar[str] = TASK
    section_choices: ClassVar[dict] = {"dqss": {"objective": ("kl", "l1", "mse")}}  # mse_y measures images

    @classmethod
    def from_dict(cls, d: dict, key: str = TASK, partial: bool = False) -> ClsPTQConfig:
        """The track config from its section; ``partial``: from a job's settings (see :mod:`dqss.config`)."""
        s = Section(d, key, partial)
        cfg = cls(**classification_sections(s, "ptq", SearchConfig), calibration=s.build("calibration", CalibConfig))
        objective = cfg.dqss.objective if given(cfg.dqss) else None
        if objective not in (None, *cls.section_choices["dqss"]["objective"]):
            raise ValueError(f"{key}.dqss.objective: '{objective}' measures images; classification selects on 'kl' "
                             "(the default), 'l1' or 'mse' of the logits")
        return cfg

    def num_classes(self) -> int | None:
        return 10 if self.data.name == "digits" else self.classes


def classification_sections(s: Section, kind: str, search_class, **extra_sections) -> dict:
    """The config fields both classification tracks read the same way (``kind``: their strategies'), less
    ``calibration``; ``extra_sections`` adds track-specific dataclass sections (QAT's ``qat``)."""
    key = s.key
    strategies = s.get("strategies", lambda v: check_names(v, f"{key}.strategies", kind), required=True)
    dq = s.build("dqss", search_class)
    if given(dq):
        dq.candidates = check_candidates(dq.candidates or strategies, f"{key}.dqss.candidates", kind)
    return dict(dataset=s.get("dataset", required=True), data=s.build("data", DataConfig),
                backbones=s.get("backbones", parse_backbones, required=True), train=s.build("train", TrainConfig),
                bits=s.get("bits", lambda v: parse_bits(v, key), required=True), strategies=strategies,
                strategy_options=s.get("strategy_options", lambda v: parse_options(v, key, kind)),
                quant=s.build("quant", QuantPolicy), dqss=dq, eval_batch_size=s.get("eval", eval_batch_size),
                classes=s.get("num_classes"), raw=dict(s.d),
                **{name: s.build(name, c) for name, c in extra_sections.items()})


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but CUDA is not available; set device: auto or cpu")
    return torch.device(device)


@dataclass
class Prepared:
    model: torch.nn.Module
    data: object
    data_config: dict


def prepare(cfg, backbone: str, checkpoint=None) -> Prepared:
    """The FP model and the data it is evaluated on (``cfg``: any classification track's config)."""
    weights = cfg.weights(backbone)
    model = create_backbone(backbone, weights, cfg.num_classes(), f"{cfg.task}.backbones.{backbone}.weights",
                            checkpoint if weights == "train" else None)
    dcfg = data_config(model, _input_size(cfg))
    data = load_classification(cfg.data, dcfg)
    if getattr(model, "num_classes", data.num_classes) != data.num_classes:
        raise ValueError(f"{backbone} predicts {model.num_classes} classes but the data has {data.num_classes}")
    return Prepared(model, data, dcfg)


def _input_size(cfg) -> int | None:
    """The embedded digits are rendered at ``data.input_size``; real data keeps timm's size."""
    return cfg.data.input_size if cfg.data.name == "digits" else None


def example_input(prep: Prepared) -> torch.Tensor:
    return prep.data.test[0][0][None]


# -- jobs -----------------------------------------------------------------------------------
def run_train(cfg, backbone: str, out_ckpt, out_history, device) -> None:
    """Train the FP backbone (only for weights: train) with the track's ``train:`` recipe."""
    import timm

    from .models import register_models

    if cfg.weights(backbone) != "train":
        raise ValueError(f"{cfg.task}.backbones.{backbone}.weights is '{cfg.weights(backbone)}': nothing to train")
    register_models()
    torch.manual_seed(cfg.train.seed)
    model = timm.create_model(backbone, pretrained=False, num_classes=cfg.num_classes())
    dcfg = data_config(model, _input_size(cfg))
    data = load_classification(cfg.data, dcfg)
    history = train_classifier(model, data.training_set(), cfg.train, device, workers=cfg.data.workers)
    save_checkpoint(model.cpu(), backbone, out_ckpt, num_classes=cfg.num_classes(), train_seed=cfg.train.seed)
    with open(out_history, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "loss"])
        w.writeheader()
        w.writerows(history)


def run_evaluate_fp(cfg, backbone: str, checkpoint, out_metrics, out_logits, device, *, seed: int) -> None:
    """The FP model on the test set: its metrics (the row labelled ``seed``) and its logits."""
    prep = prepare(cfg, backbone, checkpoint)
    loader = DataLoader(prep.data.test, batch_size=cfg.eval_batch_size, num_workers=cfg.data.workers)
    logits, labels = predict(prep.model, loader, device, desc=f"FP {backbone}")
    if not torch.isfinite(logits).all():
        raise FloatingPointError(f"the FP {backbone} gives non-finite logits on the test set; check its weights "
                                 "and the input normalisation")
    torch.save({"logits": logits, "labels": labels}, out_logits)
    write_metrics(out_metrics, task=cfg.task, dataset=cfg.dataset, backbone=backbone, method=FP_METHOD, w_bits=32,
                  a_bits=32, seed=seed, metrics=classification_metrics(logits, labels, logits),
                  prov=provenance(device, cfg.raw), extra={"n_test": len(labels)})


def _calibration_tensors(prep: Prepared, cfg: ClsPTQConfig, seed: int):
    subset, ids = prep.data.calibration(cfg.calibration.size, seed)
    xs, ys = zip(*(subset[i] for i in range(len(subset))))
    return torch.stack(xs), torch.as_tensor(ys), ids


def run_calibrate(cfg: ClsPTQConfig, backbone: str, seed: int, checkpoint, out_stats, out_list, device) -> None:
    """One pass over the calibration draw; statistics shared by every strategy and bit width."""
    prep = prepare(cfg, backbone, checkpoint)
    folded = fold_batchnorm(prep.model, example_input(prep)).to(device)
    plans = plan_layers(folded, cfg.quant, 8, 8, example_input(prep).to(device))
    layers = {n: folded.get_submodule(n) for n in plans}
    x, _, ids = _calibration_tensors(prep, cfg, seed)
    stats = collect_act_stats(folded, layers, torch.split(x, cfg.calibration.batch_size),
                              bins=cfg.calibration.bins, n_samples=cfg.calibration.samples,
                              device=device, desc=f"calibrate {backbone} seed {seed}")
    save_stats(stats, out_stats)
    Path(out_list).write_text("\n".join(ids) + "\n")


def _load_fp_logits(path):
    d = torch.load(path, map_location="cpu", weights_only=True)
    return d["logits"], d["labels"]


def _evaluate(qmodel, prep, cfg, fp_logits, device, desc):
    """The test metrics of ``qmodel`` and their per-image values (for the paired significance tests)."""
    loader = DataLoader(prep.data.test, batch_size=cfg.eval_batch_size, num_workers=cfg.data.workers)
    logits, labels = predict(qmodel, loader, device, desc=desc)
    return classification_metrics(logits, labels, fp_logits), per_image(logits, labels, fp_logits)


def run_uniform(cfg: ClsPTQConfig, backbone: str, seed: int, checkpoint, stats_path, fp_logits_path,
                outputs: dict[tuple[str, int, int], str], device) -> None:
    """Every (strategy, bit width) applied uniformly to all layers; one metrics file each."""
    prep = prepare(cfg, backbone, checkpoint)
    folded = fold_batchnorm(prep.model, example_input(prep)).to(device)
    stats = load_stats(stats_path)
    fp_logits, _ = _load_fp_logits(fp_logits_path)
    prov = provenance(device, cfg.raw)
    plans_by_bits = {}
    for (method, w, a), path in outputs.items():
        if (w, a) not in plans_by_bits:
            plans_by_bits[w, a] = plan_layers(folded, cfg.quant, w, a, example_input(prep).to(device))
        plans = plans_by_bits[w, a]
        qmodel = quantize_uniform(folded, plans, stats, cfg.strategy(method))
        metrics, images = _evaluate(qmodel, prep, cfg, fp_logits, device, f"{method} W{w}A{a}")
        log.info("%s %s W%dA%d seed %d: %s", backbone, method, w, a, seed, metrics)
        write_metrics(path, task=TASK, dataset=cfg.dataset, backbone=backbone, method=method, w_bits=w, a_bits=a,
                      seed=seed, metrics=metrics, prov=prov, per_image=images,
                      extra={"calib_size": cfg.calibration.size, "first_last_bits": cfg.quant.first_last_bits})


def run_dqss(cfg: ClsPTQConfig, *, backbone: str, seed: int, w: int, a: int, checkpoint, stats, fp,
             metrics, assignment, history, selection, argmax_metrics, argmax_assignment, device) -> None:
    """Search the per-layer strategies on the calibration's search part, choose the final assignment
    (``dqss``: ``dqss.select``; ``dqss_argmax``: the logits' argmax), rebuild both discrete models from
    their assignment files and evaluate them on the test set."""
    torch.manual_seed(seed)
    prep = prepare(cfg, backbone, checkpoint)
    ex = example_input(prep).to(device)
    folded = fold_batchnorm(prep.model, example_input(prep)).to(device)
    act_stats = load_stats(stats)
    plans = plan_layers(folded, cfg.quant, w, a, ex)
    strategies = {s: cfg.strategy(s) for s in cfg.dqss.candidates}
    x, y, ids = _calibration_tensors(prep, cfg, seed)
    out = search_and_select(folded, plans, act_stats, strategies, x, ids, cfg=cfg.dqss,
                            hold_fraction=cfg.calibration.hold_fraction, seed=seed, device=device, objective="kl",
                            batch_size=cfg.calibration.batch_size, labels=y)
    fp_logits, _ = _load_fp_logits(fp)
    prov = provenance(device, cfg.raw)
    common = {"calib_size": cfg.calibration.size, "hold_fraction": cfg.calibration.hold_fraction,
              "iterations": cfg.dqss.iterations, "candidates": cfg.dqss.candidates,
              "final_loss": out.history[-1]["loss"], **selection_summary(out.record)}
    for method, choice, metrics_path, assignment_path in (("dqss_argmax", out.argmax, argmax_metrics,
                                                           argmax_assignment),
                                                          ("dqss", out.selected, metrics, assignment)):
        meta = assignment_meta(cfg, backbone, seed, w, a, method, out)
        save_assignment(export_assignment(out.qmodel, plans, meta, choice), assignment_path)
        with pinned(out.qmodel, assignment_choice(load_assignment(assignment_path), plans, strategies)) as final:
            values, images = _evaluate(final, prep, cfg, fp_logits, device, f"{method} W{w}A{a}")
        log.info("%s %s W%dA%d seed %d: %s", backbone, method, w, a, seed, values)
        write_metrics(metrics_path, task=TASK, dataset=cfg.dataset, backbone=backbone, method=method, w_bits=w,
                      a_bits=a, seed=seed, metrics=values, prov=prov, per_image=images,
                      extra={**common, "select": "argmax" if method == "dqss_argmax" else cfg.dqss.select})
    write_history(out.history, history)
    mixture, _ = _evaluate(out.qmodel, prep, cfg, fp_logits, device, f"mixture W{w}A{a}")
    write_selection(out, selection, {"task": TASK, "dataset": cfg.dataset, "backbone": backbone, "w_bits": w,
                                      "a_bits": a, "seed": seed}, test={"mixture": mixture})
