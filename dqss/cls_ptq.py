"""Classification PTQ track: the jobs the workflow runs, as plain functions.

Each function reads its inputs from files, writes its outputs, and is called by a short shim in
``workflow/scripts`` with keyword arguments named like its rule's wildcards, inputs and outputs; tests
call them directly.  The FP jobs (training, evaluation) are shared with the QAT track
(:mod:`dqss.classification`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .classification import (calibration_tensors, evaluate_test, example_input, load_fp_logits, prepare,
                             run_evaluate_fp, run_train)  # noqa: F401  (the FP jobs of this track's rules)
from .config import (Section, TrackMethods, check_candidates, check_names, check_options, eval_batch_size, given,
                     option, parse_backbones, parse_bits, parse_options)
from .data import DataConfig
from .layers import QuantPolicy, fold_batchnorm
from .ptq_search import selection_summary
from .results import DQSS_ARGMAX, DQSS_METHOD, provenance, write_metrics
from .search import SearchConfig
from .track import calibrate, dqss_save, dqss_search, uniform_grid
from .train import TrainConfig

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


# -- jobs -----------------------------------------------------------------------------------
def run_calibrate(cfg: ClsPTQConfig, *, backbone: str, seed: int, ckpt=None, stats, images, device) -> None:
    """One pass over the calibration draw; statistics shared by every strategy and bit width."""
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
    torch.manual_seed(seed)
    prep = prepare(cfg, backbone, ckpt)
    folded = fold_batchnorm(prep.model, example_input(prep)).to(device)
    x, y, ids = calibration_tensors(prep, cfg, seed)
    out, plans, strategies = dqss_search(cfg, folded, example_input(prep).to(device), stats, x, ids, seed=seed,
                                         w=w, a=a, device=device, objective="kl", labels=y)
    fp_logits, _ = load_fp_logits(fp)
    results = dqss_save(cfg, out, plans, strategies, backbone=backbone, seed=seed, w=w, a=a,
                        assignments={DQSS_ARGMAX: argmax_assignment, DQSS_METHOD: assignment}, history=history,
                        selection=selection, mixture_metrics=lambda r: r[0],
                        evaluate=lambda m, desc: evaluate_test(m, prep, cfg, fp_logits, device, desc))
    prov = provenance(device, cfg.raw)
    extra = {"final_loss": out.history[-1]["loss"], **selection_summary(out.record)}
    for method, path in ((DQSS_ARGMAX, argmax_metrics), (DQSS_METHOD, metrics)):
        values, images = results[method]
        write_metrics(path, task=TASK, dataset=cfg.dataset, backbone=backbone, method=method, w_bits=w, a_bits=a,
                      seed=seed, metrics=values, prov=prov, per_image=images,
                      settings=cfg.row_settings(backbone, method), extra=extra)
