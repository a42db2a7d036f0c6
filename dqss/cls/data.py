"""Classification data: the embedded digits set, ImageNet-style ImageFolder trees and CIFAR-10.

Every source yields a train set (FP training and the calibration pool) and a test set,
and names its calibration images so that the drawn list can be saved next to the
results.
"""
from __future__ import annotations

import copy
import functools
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from ..options import SEED_MAX, check_options, option

log = logging.getLogger(__name__)

DATASETS = ("digits", "imagefolder", "cifar10")
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR10_LAYOUT = "<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}"
CIFAR10_TRAIN_SIZE = 50_000
DIGITS_SIZE = 1797  # scikit-learn's load_digits (tests/unit/test_data_models.py checks it)


@dataclass
class DataConfig:
    """The ``data:`` section of a classification track: which images, and how they are split and read."""

    name: str = option("digits", choices=DATASETS)  # digits (embedded), imagefolder (ImageNet layout) or cifar10
    root: str | None = None  # directory of the data (imagefolder: with train/ and val/; cifar10: holding its folder)
    input_size: int = option(32, ge=8)  # digits: side (pixels) the 8x8 images are upsampled to (others: timm's)
    split_seed: int = option(0, ge=0, le=SEED_MAX)  # digits: seed of the fixed train/test split
    test_fraction: float = option(0.33, gt=0, lt=1)  # digits: part of the images held out as the test set
    workers: int = option(0, ge=0)  # data-loader worker processes (0 = load in the job's own process)
    download: bool = False  # cifar10: let torchvision fetch the archive into root (network needed)

    def __post_init__(self):
        check_options(self)
        if self.name == "imagefolder" and not self.root:
            raise ValueError("root must name the ImageNet directory (with train/ and val/ in ImageFolder layout) "
                             "when name is 'imagefolder'")
        if self.name == "cifar10" and not self.root:
            raise ValueError(f"root must name the directory holding {CIFAR10_DIR}/ when name is 'cifar10' (layout "
                             f"{CIFAR10_LAYOUT}); with download: true the archive is fetched into it")


def train_size(cfg: DataConfig) -> int | None:
    """How many training images ``cfg`` holds, where that is known without reading the data."""
    if cfg.name == "digits":
        return DIGITS_SIZE - int(round(DIGITS_SIZE * cfg.test_fraction))
    if cfg.name == "cifar10":
        return CIFAR10_TRAIN_SIZE
    return None  # an ImageFolder tree: counted when it is read


def check_data_root(cfg: DataConfig, key: str) -> None:
    """The data folders ``cfg`` names exist (a cheap check before any job runs; the loaders check the rest)."""
    if cfg.name == "imagefolder":
        for sub in ("train", "val"):
            if not (Path(cfg.root) / sub).is_dir():
                raise FileNotFoundError(f"{key}.root: directory {Path(cfg.root) / sub} not found. Expected "
                                        f"ImageFolder layout {cfg.root}/train/<class_id>/<image>.JPEG and "
                                        f"{cfg.root}/val/<class_id>/<image>.JPEG (ILSVRC-2012 with val/ sorted into "
                                        f"class folders); set {key}.root to where the data lies")
    elif cfg.name == "cifar10" and not cfg.download:
        root = Path(cfg.root)
        missing = _missing_cifar10_files(root)
        if missing:
            raise FileNotFoundError(_cifar10_message(root, f"{root / CIFAR10_DIR} lacks {', '.join(missing)}",
                                                     key=f"{key}.root"))


@dataclass
class ClassificationData:
    train: Dataset
    test: Dataset
    num_classes: int
    ids: list[str]  # one name per train item, for the saved calibration list
    train_aug: Dataset | None = None  # the train items with training augmentation (train stays plain)

    def training_set(self) -> Dataset:
        """What FP/QAT training iterates over: the augmented view where the source has one."""
        return self.train if self.train_aug is None else self.train_aug

    def calibration(self, size: int, seed: int) -> tuple[Subset, list[str]]:
        """``size`` train items drawn without replacement by ``seed``."""
        n = len(self.train)
        if size > n:
            raise ValueError(f"calibration.size={size} exceeds the {n} training images available")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:size].sort().values.tolist()
        return Subset(self.train, idx), [self.ids[i] for i in idx]


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits as ``load_digits`` reads them (its ``images``, 8x8 floats 0..16,
    and ``target``), from the file the package ships, without importing scikit-learn: its import (scipy and
    all) costs about 2 s, paid by every classification job (tests/unit/test_data_models.py checks the arrays
    against ``load_digits``)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the embedded digits need scikit-learn (pip install -e .)")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def digits(cfg: DataConfig, mean, std) -> ClassificationData:
    """scikit-learn's 1,797 handwritten digits (8x8, 0..16) as normalised RGB images."""
    images, target = read_digits()
    x = torch.tensor(images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).repeat(1, 3, 1, 1)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.tensor(target, dtype=torch.long)
    perm = np.random.RandomState(cfg.split_seed).permutation(len(y))
    n_test = int(round(len(y) * cfg.test_fraction))
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return ClassificationData(TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx]),
                              10, [f"digits:{i}" for i in train_idx])


def load_rgb(path: str):
    """ImageFolder's loader, with a one-line error naming a corrupt file instead of PIL's traceback."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for a broken file
        raise ValueError(f"{path}: corrupt or not an image ({type(exc).__name__}: {exc}); replace the file or "
                         "delete it") from None


def _image_folder(path: Path, key: str, transform):
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise FileNotFoundError(f"{key}: directory {path} not found. Expected ImageFolder layout "
                                f"{path}/<class_id>/<image>.JPEG (e.g. ILSVRC-2012 with val/ sorted into class "
                                "folders); set the config key to where the data lies")
    try:
        return ImageFolder(str(path), transform=transform, loader=load_rgb)
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


# -- CIFAR-10 ------------------------------------------------------------------------------------
class _CIFARUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10's python files hold: dicts, lists, strings, bytes, numbers and numpy
    arrays.  A plain ``pickle.load`` imports and calls whatever a file names, so a tampered file runs
    code; here any other global is refused before anything is called."""

    # numpy's array reconstruction, and codecs.encode, with which Python 3's protocol 2 writes bytes
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR-10 file holds (a "
                                         "tampered or foreign pickle; nothing in it was run)")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct
            return _reconstruct
        if module == "_codecs":
            import codecs
            return codecs.encode
        return getattr(np, name)


def read_cifar_pickle(path: Path):
    """One CIFAR-10 python file, unpickled with :class:`_CIFARUnpickler` (latin1, as the Python 2 files need)."""
    with open(path, "rb") as f:
        return _CIFARUnpickler(f, encoding="latin1").load()


@functools.cache
def _cifar10_class():
    """torchvision's CIFAR10 (file list, download, ``__getitem__``) reading its files safely.

    torchvision unpickles the files with ``pickle.load``; this class reads the same files with
    :func:`read_cifar_pickle`.  Without download, integrity means "every expected file exists":
    torchvision's md5 check passes only the official files, and a copy written elsewhere in the same
    format is fine here.  With download the md5 check stays.  Built on first use, so importing this
    module does not import torchvision; picklable as ``dqss.cls.data.CIFAR10Files``.
    """
    from torchvision.datasets import CIFAR10, VisionDataset

    class CIFAR10Files(CIFAR10):
        def __init__(self, root, train: bool = True, transform=None, target_transform=None,
                     download: bool = False):
            VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
            self.train = train
            if download:
                self.download()  # torchvision's: fetches the archive and checks its md5 sum
                if not self._check_integrity():
                    raise RuntimeError("the downloaded files do not match the official md5 sums")
            base = Path(self.root) / self.base_folder
            data, targets = [], []
            for name, _md5 in (self.train_list if train else self.test_list):
                entry = self._read(base / name)
                labels = entry.get("labels", entry.get("fine_labels"))
                if not isinstance(entry.get("data"), np.ndarray) or labels is None:
                    raise ValueError(f"{base / name} holds no 'data' array and 'labels' list")
                if entry["data"].dtype != np.uint8 or entry["data"].ndim != 2 \
                        or entry["data"].shape[1] != 3 * 32 * 32 or len(labels) != len(entry["data"]):
                    raise ValueError(f"{base / name}: 'data' is {entry['data'].dtype} {entry['data'].shape} with "
                                     f"{len(labels)} labels; each batch needs uint8 [N, 3072] and N labels")
                data.append(entry["data"])
                targets.extend(int(v) for v in labels)
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC
            self.targets = targets
            meta = self._read(base / self.meta["filename"])
            if not isinstance(meta.get(self.meta["key"]), list):
                raise ValueError(f"{base / self.meta['filename']} holds no '{self.meta['key']}' list")
            self.classes = [str(c) for c in meta[self.meta["key"]]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        @staticmethod
        def _read(path: Path) -> dict:
            try:
                entry = read_cifar_pickle(path)
            except OSError:
                raise
            except Exception as exc:  # unpickling garbage raises almost anything
                raise ValueError(f"{path} is not a CIFAR-10 python pickle ({type(exc).__name__}: {exc})") from None
            if not isinstance(entry, dict):
                raise ValueError(f"{path} holds a {type(entry).__name__}, not the dict of a CIFAR-10 file")
            return entry

    CIFAR10Files.__module__ = __name__
    CIFAR10Files.__qualname__ = "CIFAR10Files"
    return CIFAR10Files


def __getattr__(name: str):
    if name == "CIFAR10Files":
        return _cifar10_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _missing_cifar10_files(root: Path) -> list[str]:
    return [n for n in CIFAR10_FILES if not (root / CIFAR10_DIR / n).is_file()]


def _cifar10_message(root: Path, problem: str, key: str = "data.root") -> str:
    return (f"{key}: {problem}. CIFAR-10 is read from the python version of the archive "
            f"(cifar-10-python.tar.gz, unpacked), layout {CIFAR10_LAYOUT} in python pickle format, with "
            f"<root> = {root}; set {key} to where it lies, or set data.download: true to fetch it there")


def _open_cifar10(root: Path, train: bool, download: bool, transform):
    base = root / CIFAR10_DIR
    if not download:
        if not root.is_dir():
            raise FileNotFoundError(_cifar10_message(root, f"directory {root} not found"))
        missing = _missing_cifar10_files(root)
        if missing:
            raise FileNotFoundError(_cifar10_message(root, f"{base} lacks {', '.join(missing)}"))
    try:
        ds = _cifar10_class()(str(root), train=train, transform=transform, download=download)
    except ValueError as exc:  # a file that is not what it should be: the message names it
        raise ValueError(_cifar10_message(root, str(exc))) from None
    except Exception as exc:
        if download and isinstance(exc, RuntimeError):  # md5 mismatch after the download
            raise ValueError(_cifar10_message(root, f"the files in {base} do not match the official archive's "
                                                    f"md5 sums ({exc})")) from exc
        if download and isinstance(exc, OSError):  # urllib/socket errors
            raise RuntimeError(_cifar10_message(root, f"data.download: true could not fetch CIFAR-10 ({exc})")) \
                from exc
        if isinstance(exc, OSError):
            raise FileNotFoundError(_cifar10_message(root, f"cannot read {getattr(exc, 'filename', None) or base} "
                                                           f"({exc})")) from exc
        raise
    labels = np.asarray(ds.targets)
    if len(labels) == 0:
        raise ValueError(_cifar10_message(root, f"the {'train' if train else 'test'} batches in {base} hold no "
                                                "images"))
    if labels.min() < 0 or labels.max() >= len(ds.classes):
        raise ValueError(_cifar10_message(root, f"labels in {base} lie outside 0..{len(ds.classes) - 1} "
                                                "(the label_names of batches.meta)"))
    return ds


def cifar10_transforms(data_config: dict) -> tuple:
    """(eval, train) transforms: ToTensor + Normalize, the train one after RandomCrop with 4-pixel padding
    (scaled with the size) and a horizontal flip; resized only if the model's input is not 32x32."""
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as T

    size = tuple(int(v) for v in data_config["input_size"][-2:])
    norm = [T.ToTensor(), T.Normalize(data_config["mean"], data_config["std"])]
    resize = [] if size == (32, 32) else [
        T.Resize(size, interpolation=str_to_interp_mode(data_config.get("interpolation", "bilinear")))]
    pad = max(1, round(4 * size[0] / 32))
    train = T.Compose(resize + [T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip()] + norm)
    return T.Compose(resize + norm), train


def cifar10(cfg: DataConfig, data_config: dict) -> ClassificationData:
    """CIFAR-10 from ``cfg.root``/cifar-10-batches-py: the 50,000 train images (plain and augmented
    views of one decoded array) and the 10,000 test images."""
    root = Path(cfg.root)
    eval_tf, train_tf = cifar10_transforms(data_config)
    train = _open_cifar10(root, True, cfg.download, eval_tf)
    test = _open_cifar10(root, False, False, eval_tf)  # download (if any) happened above
    if list(test.classes) != list(train.classes):
        raise ValueError(_cifar10_message(root, "train and test batches disagree on the label names"))
    from torchvision.datasets.vision import StandardTransform

    train_aug = copy.copy(train)  # shares the decoded .data/.targets
    train_aug.transform, train_aug.transforms = train_tf, StandardTransform(train_tf, None)
    return ClassificationData(train, test, len(train.classes), [f"cifar10:train:{i}" for i in range(len(train))],
                              train_aug=train_aug)


def load_classification(cfg: DataConfig, data_config: dict) -> ClassificationData:
    if cfg.name == "digits":
        return digits(cfg, data_config["mean"], data_config["std"])
    if cfg.name == "cifar10":
        return cifar10(cfg, data_config)
    if cfg.name == "imagefolder":
        return imagefolder(cfg, data_config)
    raise ValueError(f"data.name: unknown dataset '{cfg.name}'; valid values are {list(DATASETS)}")
