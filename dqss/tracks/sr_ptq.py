"""Super-resolution PTQ track: the jobs the workflow runs, as plain functions.

The same quantizer core, strategies, mixed layers and search as the classification PTQ track;
what differs is the data (LR/HR pairs, calibration crops from training images), the backbones
(basicsr architectures, :mod:`dqss.sr.models`), the metrics (PSNR/SSIM on Y, :mod:`dqss.sr.metrics`)
and the search loss (L1 distillation to the FP network's output by default).

One ``metrics.json`` per job holds the results of every test set (``results`` list); the
aggregate turns each into rows with ``dataset`` = the test set.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..options import BIT_MAX, BIT_MIN, SEED_MAX, build_section, check_options, option
from . import Track, register_track
from .config import PTQTrackConfig, given, track_key
from .deploy import DeploySection, LastOutput, OrtModule, check_job
from ..core.layers import QuantPolicy, fold_batchnorm, plan_layers
from ..algorithms.ptq_search import selection_summary
from ..results import (BICUBIC_METHOD, DQSS_ARGMAX, DQSS_METHOD, DQSS_RECON, FP_METHOD, REFERENCE_METHODS, provenance,
                       write_csv, write_metrics)
from ..algorithms.recon import ReconSection, mse_task_loss
from ..algorithms.search import SearchConfig
from ..sr.data import SRData, SRDataConfig, bicubic_upsample, detail_box, load_sr_data, to_tensor, to_uint8
from ..sr.metrics import mean_metrics, sr_metrics
from ..sr.models import PARTS, SRNet, create_sr_backbone, parse_backbone
from .common import (calibrate, dqss_save, dqss_search, load_calibration, recon_candidates, reconstruct_job,
                    uniform_grid)

log = logging.getLogger(__name__)

TASK = "sr_ptq"
WEIGHTS_DIR = "data/pretrained"  # where the download rule puts {url, sha256} weights unless weights_dir says


@dataclass
class SRTrainConfig:
    """FP training of the embedded backbones: L1 on random crops, Adam, cosine decay."""

    iterations: int = option(600, ge=1)  # Adam steps
    batch_size: int = option(8, ge=1)  # crops per step
    patch: int = option(32, ge=4)  # LR crop size (pixels)
    lr: float = option(2e-3, gt=0)  # initial learning rate, decayed to 0 by a cosine
    seed: int = option(0, ge=0, le=SEED_MAX)  # initialisation and crop draw

    def __post_init__(self):
        check_options(self)


@dataclass
class SRCalibConfig:
    """The ``sr_ptq.calibration`` section: each seed's LR crops and the activation statistics collected on them."""

    size: int = option(64, ge=1)  # LR crops drawn from the training images per seed
    patch: int = option(32, ge=4)  # LR crop size (pixels)
    batch_size: int = option(16, ge=1)  # crops per forward pass while collecting the statistics
    bins: int = option(2048, ge=256)  # histogram bins of each layer's input statistics
    samples: int = option(4, ge=0)  # layer inputs (crops) kept per layer for strategies that evaluate the layer
    images: int | None = option(None, ge=1)  # folders: training images the crops are drawn from (null = all)
    hold_fraction: float = option(0.25, gt=0, lt=1)  # held part of the draw: the DQSS selection's guard

    def __post_init__(self):
        check_options(self)


@dataclass
class SRQuantPolicy(QuantPolicy):
    """``quant:`` of the SR track: the classification policy plus the parts kept at higher precision."""

    # weight and activation bits of the first and last quantized layer; null = the run's W/A like the others
    first_last_bits: int | None = option(None, ge=BIT_MIN, le=BIT_MAX)
    # network parts kept at high precision (their layers' name patterns: dqss.sr.models.PARTS)
    high_precision: list[str] = option(factory=lambda: ["head", "upsampler", "tail"], choices=PARTS)
    high_precision_bits: int | None = option(None, ge=BIT_MIN, le=BIT_MAX)  # bits of those parts; null = full precision

    def patterns(self) -> list[str]:
        return [pat for part in self.high_precision for pat in PARTS[part]]

    def skip_reason(self, name: str) -> str:
        for part in self.high_precision:
            if any(fnmatch.fnmatch(name, p) for p in PARTS[part]):
                return f"the {part}, kept in full precision (quant.high_precision)"
        return super().skip_reason(name)

    def layer_plans(self, model, w_bits: int, a_bits: int, example: torch.Tensor):
        """plan_layers with the high-precision parts left in FP or moved to ``high_precision_bits``."""
        pats = self.patterns()
        if self.high_precision_bits is None:
            policy = QuantPolicy(self.layer_types, self.first_last_bits, [*self.keep_fp, *pats],
                                 self.weight_per_channel, self.weight_symmetric, self.act_symmetric,
                                 self.int32_bias)
            return plan_layers(model, policy, w_bits, a_bits, example)
        plans = plan_layers(model, self, w_bits, a_bits, example)
        hb = self.high_precision_bits
        for name, plan in plans.items():
            if any(fnmatch.fnmatch(name, p) for p in pats):
                plan.w_spec, plan.a_spec = self.weight_spec(hb), self.act_spec(hb)
        return plans


@dataclass
class SREvalConfig:
    """The ``sr_ptq.eval`` section: the crop of a test image the report's figure shows for every method."""

    crop_set: str | None = None  # the test set of the figure's crop (null: the first)
    crop_image: int = option(0, ge=0)  # index of the image in that set (the last if the set is smaller)
    crop_size: int = option(64, ge=8)  # side of the crop (HR pixels)

    def __post_init__(self):
        check_options(self)


@dataclass(kw_only=True)
class SRPTQConfig(PTQTrackConfig):
    data: SRDataConfig
    train: SRTrainConfig
    calibration: SRCalibConfig
    quant: SRQuantPolicy
    dqss: SearchConfig
    reconstruction: ReconSection  # the reconstruction baselines (AdaRound, BRECQ, QDrop); none by default
    deploy: DeploySection  # the ONNX Runtime check of the DQSS and best uniform models (deploy_check)
    eval: SREvalConfig
    weights_dir: str = track_key(lambda v, key, kind: str(v or WEIGHTS_DIR), default=WEIGHTS_DIR)
    task: ClassVar[str] = TASK
    # SR distils and selects on images: no class logits, so no kl (or ce)
    section_defaults: ClassVar[dict] = {"dqss": {"loss": "l1"}}
    section_choices: ClassVar[dict] = {"dqss": {"loss": ("l1", "mse"), "objective": ("mse_y", "l1", "mse")}}
    choice_reasons: ClassVar[dict] = {"dqss.loss": "needs class logits; SR distils its network's outputs",
                                      "dqss.objective": "needs class logits; SR selects on its network's outputs"}

    def check(self, key: str) -> None:
        """Every backbone known (and its weights and training override valid), the crop's test set a test set."""
        super().check(key)
        for name, spec in self.backbones.items():
            parse_backbone(name, spec.get("options"))
            if given(self.data):
                self.weight_source(name)
            if given(self.train):
                self.train_for(name)
        if given(self.eval, self.data) and self.eval.crop_set is not None \
                and self.eval.crop_set not in self.data.test_set_names():
            raise ValueError(f"{key}.eval.crop_set: '{self.eval.crop_set}' is not a test set; test sets are "
                             f"{self.data.test_set_names()}")

    def weight_source(self, backbone: str) -> str:
        """'train', 'url' (downloaded by the workflow) or 'file'."""
        w = self.backbones[backbone].get("weights", "train")
        key = f"{TASK}.backbones.{backbone}.weights"
        if w == "train":
            if self.data.name != "embedded":
                raise ValueError(f"{key}: 'train' is only available on the embedded data; give a weight file or "
                                 "{url, sha256}")
            return "train"
        if isinstance(w, dict):
            extra = sorted(set(w) - {"url", "sha256"})
            if extra:
                raise ValueError(f"{key}: unknown key(s) {extra}; a download is {{url: ..., sha256: ...}}")
            for part in ("url", "sha256"):
                if not str(w.get(part) or "").strip():
                    raise ValueError(f"{key}.{part} is missing or empty; a download needs both url and sha256 (the "
                                     "file's SHA-256, or at least its first 8 hex digits)")
            return "url"
        if isinstance(w, str) and w:
            return "file"
        raise ValueError(f"{key}: expected 'train', a path to a weight file, or {{url, sha256}}; got {w!r}")

    def weights(self, backbone: str) -> str:
        return self.weight_source(backbone)

    def weight_file(self, backbone: str) -> str | None:
        return str(self.backbones[backbone]["weights"]) if self.weight_source(backbone) == "file" else None

    def check_inputs(self, trainable: tuple[str, ...]) -> None:
        """The SR folders and local weight files are where the config says ('train' is checked by
        :meth:`weight_source`: embedded data only)."""
        from ..sr.data import check_folders
        from ..sr.models import WEIGHT_FIX
        from ..weights import require_weight_file

        if self.data.name == "folders":
            check_folders(self.data, sorted({self.scale(b) for b in self.backbones}))
        for name in self.backbones:
            if self.weight_source(name) == "file":
                require_weight_file(str(self.backbones[name]["weights"]), f"{TASK}.backbones.{name}.weights",
                                    WEIGHT_FIX)

    def setting(self, key: str):
        if key == "eval":  # the crop's test set resolved: the sets' order is free
            return {**(self.raw.get("eval") or {}), "crop_set": self.crop_set()}
        return super().setting(key)

    def reference_methods(self) -> list[str]:
        return list(REFERENCE_METHODS)

    def quant_row_settings(self) -> dict:
        return {"high_precision": self.quant.high_precision, "high_precision_bits": self.quant.high_precision_bits}

    def download_path(self, backbone: str) -> str:
        """Where the download rule puts a backbone's {url, sha256} weights."""
        return str(Path(self.weights_dir) / f"{backbone}.pth")

    def train_for(self, backbone: str) -> SRTrainConfig:
        """``train:`` with the backbone's own ``train:`` overrides."""
        own = self.backbones[backbone].get("train") or {}
        merged = {f: getattr(self.train, f) for f in SRTrainConfig.__dataclass_fields__} | dict(own)
        return build_section(SRTrainConfig, merged, f"{TASK}.backbones.{backbone}.train")

    def scale(self, backbone: str) -> int:
        return parse_backbone(backbone, self.backbones[backbone].get("options")).scale

    def crop_set(self) -> str:
        return self.eval.crop_set or self.data.test_set_names()[0]


_MODEL, _QUANT = ("backbones", "data"), ("quant", "calibration")
_EVAL = (*_MODEL, "dataset", "eval")
TRACK = register_track(Track(
    name=TASK, config=SRPTQConfig, table="sr", family="sr",
    description="super-resolution PTQ on basicsr backbones (leave out to skip)", deploy=True,
    job_keys={
        "download": ("backbones",),
        "train": (*_MODEL, "train"),
        "evaluate_fp": _EVAL,
        "calibrate": (*_MODEL, *_QUANT),
        "uniform": (*_EVAL, *_QUANT, "strategies", "strategy_options"),
        "dqss": (*_EVAL, *_QUANT, "dqss", "strategy_options"),
        "reconstruct": (*_EVAL, *_QUANT, "reconstruction", "strategy_options"),
        "dqss_recon": (*_EVAL, *_QUANT, "dqss", "reconstruction", "strategy_options"),
        "deploy": (*_EVAL, *_QUANT, "dqss", "strategy_options", "deploy"),
    }))


# -- shared pieces --------------------------------------------------------------------------
def prepare(cfg: SRPTQConfig, backbone: str, ckpt=None):
    key = f"{TASK}.backbones.{backbone}.weights"
    spec = dict(cfg.backbones[backbone])
    if cfg.weight_source(backbone) == "file":
        spec["weights"] = str(spec["weights"])
    return create_sr_backbone(backbone, spec, key, ckpt)


def _example(cfg: SRPTQConfig) -> torch.Tensor:
    p = cfg.calibration.patch
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, p, p, generator=g)


@torch.no_grad()
def super_resolve(model, lr: np.ndarray, device) -> np.ndarray:
    return to_uint8(model(to_tensor(lr)[None].to(device)))


def evaluate_sets(model, data: SRData, device, desc: str, crop: tuple | None = None):
    """Per test set mean PSNR/SSIM; with ``crop`` = (set, image index, y, x, size) also that HR crop of
    the output.  ``model`` None means bicubic upsampling."""
    results, crop_img = [], None
    for name, pairs in data.test_sets.items():
        per_image = []
        for i, p in enumerate(tqdm(pairs, desc=f"{desc} {name}", leave=False)):
            sr = bicubic_upsample(p.lr, data.scale) if model is None else super_resolve(model, p.lr, device)
            per_image.append(sr_metrics(sr, p.hr, data.scale))
            if crop is not None and crop[0] == name and crop[1] == i:
                _, _, y, x, s = crop
                crop_img = sr[y:y + s, x:x + s]
        results.append({"dataset": name, "metrics": mean_metrics(per_image), "n_images": len(pairs),
                        "per_image": {k: [round(float(m[k]), 8) for m in per_image] for k in per_image[0]}
                        if per_image else {}})
    return results, crop_img


def crop_spec(cfg: SRPTQConfig, data: SRData):
    name = cfg.crop_set()
    pairs = data.test_sets[name]
    i = min(cfg.eval.crop_image, len(pairs) - 1)
    hr = pairs[i].hr
    s = min(cfg.eval.crop_size, hr.shape[0], hr.shape[1])
    y, x = detail_box(hr, s)
    return name, i, y, x, s


def save_png(img: np.ndarray, path) -> None:
    """Write an RGB uint8 image atomically (opencv writes BGR)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    if not cv2.imwrite(str(tmp), np.ascontiguousarray(img[..., ::-1])):
        raise OSError(f"cannot write {path}")
    tmp.replace(path)


def _write(path, cfg, backbone, method, w, a, seed, results, device, extra=None):
    write_metrics(path, task=TASK, dataset=cfg.dataset, backbone=backbone, method=method, w_bits=w, a_bits=a,
                  seed=seed, metrics={}, results=results, prov=provenance(device, cfg.raw),
                  settings=cfg.row_settings(backbone, method), extra={"scale": cfg.scale(backbone), **(extra or {})})


# -- jobs -----------------------------------------------------------------------------------
def run_download(cfg: SRPTQConfig, *, backbone: str, weights) -> None:
    """Fetch a backbone's ``{url, sha256}`` weights into ``weights`` and check them."""
    from ..sr.models import download_weights

    w = cfg.backbones[backbone]["weights"]
    download_weights(w["url"], w["sha256"], weights, f"{TASK}.backbones.{backbone}.weights")


def run_train(cfg: SRPTQConfig, *, backbone: str, ckpt, history, device) -> None:
    """Train the FP network (weights: train) with L1 on random crops of the training images."""
    from ..weights import save_checkpoint
    from ..sr.models import build_sr
    from ..sr.train import fit_sr

    if cfg.weight_source(backbone) != "train":
        raise ValueError(f"{TASK}.backbones.{backbone}.weights is not 'train': nothing to train")
    tc = cfg.train_for(backbone)
    torch.manual_seed(tc.seed)
    model = build_sr(parse_backbone(backbone, cfg.backbones[backbone].get("options"))).to(device).train()
    data = load_sr_data(cfg.data, cfg.scale(backbone), with_test=False)
    curve = fit_sr(model, data.train, tc, data.scale, device, backbone)
    model = model.cpu().eval()
    save_checkpoint(model.net, backbone, ckpt, scale=data.scale, train_seed=tc.seed)
    write_csv(history, curve, ["iteration", "loss"])


def run_evaluate_fp(cfg: SRPTQConfig, *, backbone: str, seed: int, ckpt=None, fp, bicubic, gt_crop, fp_crop,
                    bicubic_crop, device) -> None:
    """The FP network and bicubic upsampling on every test set (rows labelled ``seed``), plus the figure's
    GT/bicubic/FP crops."""
    model = prepare(cfg, backbone, ckpt).to(device)
    data = load_sr_data(cfg.data, cfg.scale(backbone), with_train=False)
    crop = crop_spec(cfg, data)
    fp_results, fp_img = evaluate_sets(model, data, device, f"FP {backbone}", crop)
    bic_results, bic_img = evaluate_sets(None, data, device, "bicubic", crop)
    name, i, y, x, s = crop
    save_png(data.test_sets[name][i].hr[y:y + s, x:x + s], gt_crop)
    save_png(bic_img, bicubic_crop)
    save_png(fp_img, fp_crop)
    meta = {"crop": {"set": name, "image": data.test_sets[name][i].name, "y": y, "x": x, "size": s}}
    _write(fp, cfg, backbone, FP_METHOD, 32, 32, seed, fp_results, device, meta)
    _write(bicubic, cfg, backbone, BICUBIC_METHOD, 32, 32, seed, bic_results, device, meta)
    log.info("%s FP %s; bicubic %s", backbone, fp_results, bic_results)


def run_calibrate(cfg: SRPTQConfig, *, backbone: str, seed: int, ckpt=None, stats, crops, device) -> None:
    """Two passes over the seed's calibration crops (range, then histograms); statistics shared by every strategy and bit width."""
    folded, ex = _folded(cfg, backbone, ckpt, device)
    x, ids = calibration_crops(cfg, backbone, seed)
    calibrate(cfg, folded, ex, x, ids, stats=stats, listing=crops, device=device,
              desc=f"calibrate {backbone} seed {seed}")


def calibration_crops(cfg: SRPTQConfig, backbone: str, seed: int):
    """The seed's LR calibration crops (from training images only) and their ``image y x`` list."""
    c = cfg.calibration
    draw = None if c.images is None else (c.images, seed)
    data = load_sr_data(cfg.data, cfg.scale(backbone), with_test=False, train_draw=draw)
    return data.calibration(c.size, c.patch, seed)


def _calibration_inputs(cfg, backbone, seed, list_path=None):
    """The seed's calibration crops and their ids, checked against the calibration job's list."""
    x, ids = calibration_crops(cfg, backbone, seed)
    if list_path is not None and Path(list_path).is_file():
        saved = Path(list_path).read_text().split("\n")[:-1]
        if saved != ids:
            raise RuntimeError(f"the calibration crops of seed {seed} differ from those in {list_path}; the "
                               "training images changed since calibration: delete the calib folder and rerun")
    return x, ids


def _folded(cfg, backbone, ckpt, device):
    """The FP network (BN folded, if it has any) on ``device`` and an example input for layer planning."""
    ex = _example(cfg)
    return fold_batchnorm(prepare(cfg, backbone, ckpt), ex).to(device), ex.to(device)


def run_uniform(cfg: SRPTQConfig, *, backbone: str, seed: int, ckpt=None, stats,
                outputs: dict[tuple[str, int, int], tuple[str, str]], device) -> None:
    """Every (strategy, bit width) applied uniformly; one metrics file and one crop per job (``outputs``)."""
    folded, ex = _folded(cfg, backbone, ckpt, device)
    data = load_sr_data(cfg.data, cfg.scale(backbone), with_train=False)
    spec = crop_spec(cfg, data)

    def finish(qmodel, method, w, a, paths):
        metrics_path, crop_path = paths
        results, crop_img = evaluate_sets(qmodel, data, device, f"{method} W{w}A{a}", spec)
        log.info("%s %s W%dA%d seed %d: %s", backbone, method, w, a, seed, results)
        save_png(crop_img, crop_path)
        _write(metrics_path, cfg, backbone, method, w, a, seed, results, device)

    uniform_grid(cfg, folded, ex, stats, outputs, finish)


def run_dqss(cfg: SRPTQConfig, *, backbone: str, seed: int, w: int, a: int, ckpt=None, stats, crops, metrics,
             assignment, history, selection, crop, argmax_metrics, argmax_assignment, argmax_crop,
             device) -> None:
    """Search per-layer strategies (L1 distillation to the FP output on the calibration crops' search part),
    choose the final assignment (``dqss``: ``dqss.algorithms.select``, by default MSE on Y of the 8-bit output;
    ``dqss_argmax``: the logits' argmax), rebuild both from their files and evaluate on every test set."""
    _search_job(cfg, backbone, seed, w, a, ckpt, stats, crops, history, selection, device,
                {DQSS_ARGMAX: ("argmax", argmax_metrics, argmax_assignment, argmax_crop),
                 DQSS_METHOD: ("selected", metrics, assignment, crop)})


def run_dqss_recon(cfg: SRPTQConfig, *, backbone: str, seed: int, w: int, a: int, ckpt=None, stats, crops, recon,
                   metrics, assignment, history, selection, crop, device) -> None:
    """``dqss_recon``: the search and selection with the reconstructed methods (``recon``: their files, in
    ``reconstruction.methods`` order) as frozen candidates beside the range strategies."""
    _search_job(cfg, backbone, seed, w, a, ckpt, stats, crops, history, selection, device,
                {DQSS_RECON: ("selected", metrics, assignment, crop)}, extra=recon_candidates(cfg, recon))


def _search_job(cfg, backbone, seed, w, a, ckpt, stats, crops, history, selection, device, rows: dict, extra=None):
    torch.manual_seed(seed)
    folded, ex = _folded(cfg, backbone, ckpt, device)
    data = load_sr_data(cfg.data, cfg.scale(backbone), with_train=False)
    x, ids = _calibration_inputs(cfg, backbone, seed, crops)
    found = dqss_search(cfg, folded, ex, stats, x, ids, seed=seed, w=w, a=a, device=device, objective="mse_y",
                        border=cfg.scale(backbone), extra=extra)
    out = found.outcome
    spec = crop_spec(cfg, data)
    results = dqss_save(cfg, found, backbone=backbone, seed=seed, w=w, a=a,
                        assignments={m: r[2] for m, r in rows.items()}, history=history, selection=selection,
                        evaluate=lambda m, desc: evaluate_sets(m, data, device, desc, spec),
                        mixture_metrics=lambda r: {x["dataset"]: x["metrics"] for x in r[0]},
                        rows={m: r[0] for m, r in rows.items()})
    extra_cols = {"final_loss": out.history[-1]["loss"], **selection_summary(out.record)}
    for method, (_, metrics_path, _, crop_path) in rows.items():
        sets, crop_img = results[method]
        save_png(crop_img, crop_path)
        _write(metrics_path, cfg, backbone, method, w, a, seed, sets, device, extra_cols)


def run_reconstruct(cfg: SRPTQConfig, *, backbone: str, method: str, seed: int, w: int, a: int, ckpt=None, stats,
                    crops, metrics, crop, state, history, device) -> None:
    """A reconstruction baseline (AdaRound, BRECQ, QDrop) on the seed's calibration crops (the Fisher's task
    loss: MSE to the FP output), evaluated on every test set; its frozen quantizers (``state``) are a candidate
    of ``dqss_recon``."""
    torch.manual_seed(seed)
    folded, ex = _folded(cfg, backbone, ckpt, device)
    x, _ = _calibration_inputs(cfg, backbone, seed, crops)
    result = reconstruct_job(cfg, folded, ex, stats, x, method=method, seed=seed, w=w, a=a, device=device,
                             task_loss=mse_task_loss, state=state, history=history)
    data = load_sr_data(cfg.data, cfg.scale(backbone), with_train=False)
    sets, crop_img = evaluate_sets(result.model, data, device, f"{method} W{w}A{a}", crop_spec(cfg, data))
    log.info("%s %s W%dA%d seed %d: %s", backbone, method, w, a, seed, sets)
    save_png(crop_img, crop)
    _write(metrics, cfg, backbone, method, w, a, seed, sets, device, {"reconstruction_seconds": round(result.seconds, 3)})


def run_deploy(cfg, *, backbone: str, seed: int, ckpt=None, stats, assignments, table, device) -> None:
    """The SR PTQ track's deployment check of one backbone: PSNR (Y, border cropped, as the tables) of the
    fake-quantized model and of ONNX Runtime on every test set, and the largest output difference.  The
    basicsr network is exported; SRNet's padding to a size multiple stays in PyTorch around it."""
    cpu = torch.device("cpu")
    folded, ex = _folded(cfg, backbone, ckpt, cpu)
    calib = load_calibration(cfg, folded, ex, stats, cpu)
    batches = torch.split(calibration_crops(cfg, backbone, seed)[0], cfg.calibration.batch_size)
    data = load_sr_data(cfg.data, cfg.scale(backbone), with_train=False)

    def compare(qmodel, session, unoptimized):
        """One pass over each test set: PSNR of the three models, and the largest raw output difference."""
        models = {"fake": LastOutput(qmodel), "ort": LastOutput(SRNet(OrtModule(session, 1), qmodel.scale, qmodel.pad_multiple)),
                  "unoptimized": SRNet(OrtModule(unoptimized, 1), qmodel.scale, qmodel.pad_multiple)}
        rows = []
        for name, pairs in data.test_sets.items():
            per_image, diff = {k: [] for k in models}, 0.0
            with torch.no_grad():
                for p in tqdm(pairs, desc=f"deploy {name}", leave=False):
                    for k, m in models.items():
                        per_image[k].append(sr_metrics(super_resolve(m, p.lr, cpu), p.hr, data.scale))
                    diff = max(diff, float((models["fake"].last - models["ort"].last).abs().max()))
            psnr = {k: mean_metrics(v)["psnr"] for k, v in per_image.items()}
            rows.append({"dataset": name, "metric": "psnr", "fake": round(psnr["fake"], 4),
                         "ort": round(psnr["ort"], 4), "diff": round(psnr["ort"] - psnr["fake"], 4),
                         "n_items": len(pairs), "max_abs_diff": round(diff, 6),
                         "ort_unoptimized": round(psnr["unoptimized"], 4)})
        return rows

    check_job(cfg, backbone, seed, folded, ex, calib, batches, assignments, table, lambda m: m.net, compare)
