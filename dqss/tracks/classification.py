"""What both classification tracks (PTQ and QAT) share: the FP model and its data, the calibration draw,
test evaluation, and the two FP jobs (training on the embedded data, evaluation on the test set).

Job functions take keyword-only arguments named like their rule's wildcards, inputs and outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..options import EVAL_BATCH_SIZE, check_options, option
from .config import TrackConfig, eval_batch_size, track_key
from ..cls.data import DataConfig, load_classification
from ..cls.evaluate import classification_metrics, per_image, predict
from ..core.layers import QuantPolicy
from ..cls.models import create_backbone, data_config
from ..weights import save_checkpoint
from ..results import FP_METHOD, atomic_write, provenance, write_csv, write_metrics
from ..cls.train import TrainConfig, train_classifier

TEN_CLASSES = ("digits", "cifar10")  # data whose number of classes the suite knows (num_classes not needed)


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


@dataclass(kw_only=True)
class ClassificationConfig(TrackConfig):
    """The fields both classification tracks share (a track adds its ``dqss`` section, QAT its ``qat``)."""

    data: DataConfig
    train: TrainConfig  # the FP recipe of backbones trained here
    calibration: CalibConfig
    quant: QuantPolicy
    eval_batch_size: int = track_key(lambda v, key, kind: eval_batch_size(v), key="eval", default=EVAL_BATCH_SIZE)
    classes: int | None = track_key(lambda v, key, kind: v, key="num_classes", default=None)  # of other data

    def num_classes(self) -> int | None:
        return 10 if self.data.name in TEN_CLASSES else self.classes

    def check_inputs(self, trainable: tuple[str, ...]) -> None:
        """Every backbone known to timm, its weights available (``trainable``: the data 'train' is allowed on),
        the data where the config says and holding enough images to calibrate on."""
        from ..cls.data import check_data_root, train_size
        from ..cls.models import WEIGHT_FIX, check_backbone
        from ..weights import require_weight_file

        track = self.task
        for name, spec in self.backbones.items():
            check_backbone(name)
            weights = str(spec.get("weights", "train"))
            key = f"{track}.backbones.{name}.weights"
            if weights == "train" and self.data.name not in trainable:
                raise ValueError(f"{key}: 'train' is only available on {list(trainable)} data in this track; "
                                 "use 'timm' or a weight file")
            if weights not in ("train", "timm"):
                require_weight_file(weights, key, WEIGHT_FIX.format(name=name))
        check_data_root(self.data, f"{track}.data")
        n = train_size(self.data)
        if n is not None and self.calibration.size > n:
            raise ValueError(f"{track}.calibration.size={self.calibration.size} exceeds the {n} training images of "
                             f"'{self.data.name}' the calibration draws from; lower it to at most {n}")


# the section keys of the classification tracks' jobs ("backbones" is cut to the job's backbone)
MODEL_KEYS = ("backbones", "data", "num_classes")
TRAIN_KEYS = (*MODEL_KEYS, "train")
EVAL_KEYS = (*MODEL_KEYS, "dataset", "eval")


@dataclass
class Prepared:
    model: torch.nn.Module
    data: object
    data_config: dict


def input_size(cfg) -> int | None:
    """The embedded digits are rendered at ``data.input_size``; real data keeps timm's size."""
    return cfg.data.input_size if cfg.data.name == "digits" else None


def prepare(cfg, backbone: str, ckpt=None) -> Prepared:
    """The FP model and the data it is evaluated on (``cfg``: either classification track's config)."""
    weights = cfg.weights(backbone)
    model = create_backbone(backbone, weights, cfg.num_classes(), f"{cfg.task}.backbones.{backbone}.weights",
                            ckpt if weights == "train" else None)
    dcfg = data_config(model, input_size(cfg))
    data = load_classification(cfg.data, dcfg)
    if getattr(model, "num_classes", data.num_classes) != data.num_classes:
        raise ValueError(f"{backbone} predicts {model.num_classes} classes but the data has {data.num_classes}")
    return Prepared(model, data, dcfg)


def example_input(prep: Prepared) -> torch.Tensor:
    return prep.data.test[0][0][None]


def calibration_tensors(prep: Prepared, cfg, seed: int):
    """The seed's calibration draw from the training images: inputs, labels and image ids."""
    subset, ids = prep.data.calibration(cfg.calibration.size, seed)
    xs, ys = zip(*(subset[i] for i in range(len(subset))))
    return torch.stack(xs), torch.as_tensor(ys), ids


def load_fp_logits(path):
    d = torch.load(path, map_location="cpu", weights_only=True)
    return d["logits"], d["labels"]


def evaluate_test(model, prep: Prepared, cfg, fp_logits, device, desc: str):
    """The test metrics of ``model`` and their per-image values (for the paired significance tests)."""
    loader = DataLoader(prep.data.test, batch_size=cfg.eval_batch_size, num_workers=cfg.data.workers)
    logits, labels = predict(model, loader, device, desc=desc)
    return classification_metrics(logits, labels, fp_logits), per_image(logits, labels, fp_logits)


# -- the FP jobs ------------------------------------------------------------------------------
def run_train(cfg, *, backbone: str, ckpt, history, device) -> None:
    """Train the FP backbone (only for weights: train) with the track's ``train:`` recipe."""
    import timm

    from ..cls.models import register_models

    if cfg.weights(backbone) != "train":
        raise ValueError(f"{cfg.task}.backbones.{backbone}.weights is '{cfg.weights(backbone)}': nothing to train")
    register_models()
    torch.manual_seed(cfg.train.seed)
    model = timm.create_model(backbone, pretrained=False, num_classes=cfg.num_classes())
    data = load_classification(cfg.data, data_config(model, input_size(cfg)))
    curve = train_classifier(model, data.training_set(), cfg.train, device, workers=cfg.data.workers)
    save_checkpoint(model.cpu(), backbone, ckpt, num_classes=cfg.num_classes(), train_seed=cfg.train.seed)
    write_csv(history, curve, ["epoch", "loss"])


def run_evaluate_fp(cfg, *, backbone: str, seed: int, ckpt=None, metrics, logits, device) -> None:
    """The FP model on the test set: its metrics (the row labelled ``seed``) and its logits."""
    prep = prepare(cfg, backbone, ckpt)
    loader = DataLoader(prep.data.test, batch_size=cfg.eval_batch_size, num_workers=cfg.data.workers)
    out, labels = predict(prep.model, loader, device, desc=f"FP {backbone}")
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"the FP {backbone} gives non-finite logits on the test set; check its weights "
                                 "and the input normalisation")
    atomic_write(logits, lambda tmp: torch.save({"logits": out, "labels": labels}, tmp))
    write_metrics(metrics, task=cfg.task, dataset=cfg.dataset, backbone=backbone, method=FP_METHOD, w_bits=32,
                  a_bits=32, seed=seed, metrics=classification_metrics(out, labels, out),
                  prov=provenance(device, cfg.raw), settings=cfg.row_settings(backbone, FP_METHOD),
                  extra={"n_test": len(labels)})
