"""Classification data: the embedded digits set and ImageNet-style ImageFolder trees.

Every source yields a train set (FP training and the calibration pool) and a test set,
and names its calibration images so that the drawn list can be saved next to the
results.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

log = logging.getLogger(__name__)

DATASETS = ("digits", "imagefolder")


@dataclass
class DataConfig:
    """The ``data:`` section of a classification track."""

    name: str = "digits"
    root: str | None = None
    input_size: int = 32
    split_seed: int = 0
    test_fraction: float = 0.33
    workers: int = 0

    def __post_init__(self):
        if self.name not in DATASETS:
            raise ValueError(f"data.name: unknown dataset '{self.name}'; valid values are {list(DATASETS)}")
        if self.name == "imagefolder" and not self.root:
            raise ValueError("data.root must name the ImageNet directory (with train/ and val/ in "
                             "ImageFolder layout) when data.name is 'imagefolder'")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie in (0, 1), got {self.test_fraction}")


@dataclass
class ClassificationData:
    train: Dataset
    test: Dataset
    num_classes: int
    ids: list[str]  # one name per train item, for the saved calibration list

    def calibration(self, size: int, seed: int) -> tuple[Subset, list[str]]:
        """``size`` train items drawn without replacement by ``seed``."""
        n = len(self.train)
        if size > n:
            raise ValueError(f"calibration.size={size} exceeds the {n} training images available")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:size].sort().values.tolist()
        return Subset(self.train, idx), [self.ids[i] for i in idx]


def digits(cfg: DataConfig, mean, std) -> ClassificationData:
    """scikit-learn's 1,797 handwritten digits (8x8, 0..16) as normalised RGB images."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).repeat(1, 3, 1, 1)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.tensor(raw.target, dtype=torch.long)
    perm = np.random.RandomState(cfg.split_seed).permutation(len(y))
    n_test = int(round(len(y) * cfg.test_fraction))
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return ClassificationData(TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx]),
                              10, [f"digits:{i}" for i in train_idx])


def _image_folder(path: Path, key: str, transform):
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise FileNotFoundError(f"{key}: directory {path} not found. Expected ImageFolder layout "
                                f"{path}/<class_id>/<image>.JPEG (e.g. ILSVRC-2012 with val/ sorted into class "
                                "folders); set the config key to where the data lies")
    try:
        return ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FileNotFoundError(f"{key}: {path} is not an ImageFolder tree ({exc}); expected "
                                f"{path}/<class_id>/<image>.JPEG") from exc


def imagefolder(cfg: DataConfig, data_config: dict) -> ClassificationData:
    """ImageNet (or any ImageFolder pair ``root/train``, ``root/val``) with timm's eval transform."""
    from timm.data import create_transform

    root = Path(cfg.root)
    transform = create_transform(**data_config, is_training=False)
    train = _image_folder(root / "train", "data.root (train/)", transform)
    test = _image_folder(root / "val", "data.root (val/)", transform)
    if train.classes != test.classes:
        raise ValueError(f"data.root: train/ and val/ have different class folders under {root}")
    ids = [str(Path(p).relative_to(root)) for p, _ in train.samples]
    return ClassificationData(train, test, len(train.classes), ids)


def load_classification(cfg: DataConfig, data_config: dict) -> ClassificationData:
    if cfg.name == "digits":
        return digits(cfg, data_config["mean"], data_config["std"])
    return imagefolder(cfg, data_config)
