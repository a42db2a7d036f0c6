"""Super-resolution data: benchmark test sets, training/calibration crops, bicubic degradation.

Two sources, one interface (:class:`SRData`):

* ``folders``: basicsr's usual layout, e.g. ``datasets/Set5/GTmod12`` (HR) with
  ``datasets/Set5/LRbicx2`` (LR, same file names) for test sets and ``DIV2K_train_HR`` (with
  ``DIV2K_train_LR_bicubic/X2`` or none) for training and calibration crops.  A set without an
  LR folder gets its LR images made here: mod-crop to the scale, then basicsr's MATLAB-compatible
  bicubic ``imresize``, rounded to 8 bit as the published LR files are.
* ``embedded``: the real photographs that ship inside scikit-image and scikit-learn, split into
  training images and held-out test sets (calibration never sees a test image).

Images are RGB ``uint8`` HWC arrays; networks get RGB float in [0, 1].
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..options import check_options, option

log = logging.getLogger(__name__)

SOURCES = ("embedded", "folders")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FOLDER_LAYOUT = ("basicsr's layout: an HR folder of images (e.g. datasets/Set5/GTmod12) and optionally an LR "
                 "folder with the same file names (e.g. datasets/Set5/LRbicx{scale}); {scale} in a path is "
                 "replaced by the backbone's scale")

# the embedded split: held-out test sets and training images, by package and file
EMBEDDED_TEST_SETS = {
    "photos": ["skimage/astronaut.png", "skimage/chelsea.png", "skimage/coffee.png", "sklearn/china.jpg",
               "sklearn/flower.jpg"],
    "textures": ["skimage/brick.png", "skimage/grass.png", "skimage/gravel.png"],
}
EMBEDDED_TRAIN = ["skimage/rocket.jpg", "skimage/hubble_deep_field.jpg", "skimage/ihc.png", "skimage/retina.jpg",
                  "skimage/motorcycle_left.png", "skimage/camera.png", "skimage/moon.png", "skimage/coins.png",
                  "skimage/page.png", "skimage/text.png", "skimage/cell.png", "skimage/clock_motion.png",
                  "skimage/microaneurysms.png"]


@dataclass
class SRDataConfig:
    """The ``sr_ptq.data`` section: the training images (FP training, calibration crops) and the test sets."""

    name: str = option("embedded", choices=SOURCES)  # embedded (photos shipped with the packages) or folders
    root: str | None = None  # folders: base of relative folder paths
    # folders: {hr, lr} folders of the training images; embedded: list of images (null = the default split)
    train: dict | list | None = None
    # test set name -> folders: {hr, lr} folders; embedded: list of images (null = the default split)
    test_sets: dict | None = None

    def __post_init__(self):
        check_options(self)
        if self.name == "folders":
            if not isinstance(self.train, dict) or not self.train.get("hr"):
                raise ValueError("train.hr must name the training HR folder (e.g. DIV2K/DIV2K_train_HR) when name is "
                                 f"'folders'; {FOLDER_LAYOUT}")
            if not self.test_sets:
                raise ValueError("test_sets must map each test set name to {hr: ..., lr: ...} when name is "
                                 f"'folders'; {FOLDER_LAYOUT}")
            for name, spec in self.test_sets.items():
                if not isinstance(spec, dict) or not spec.get("hr"):
                    raise ValueError(f"test_sets.{name}.hr must name the set's HR folder; {FOLDER_LAYOUT}")
        else:
            self.train = list(self.train or EMBEDDED_TRAIN)
            self.test_sets = {k: list(v) for k, v in (self.test_sets or EMBEDDED_TEST_SETS).items()}
            overlap = set(self.train) & {i for v in self.test_sets.values() for i in v}
            if overlap:
                raise ValueError(f"images {sorted(overlap)} are both training and test images")
            for i in [*self.train, *(i for v in self.test_sets.values() for i in v)]:
                _embedded_path(i)  # fails early on an unknown name

    def test_set_names(self) -> list[str]:
        return list(self.test_sets)


@dataclass
class SRPair:
    name: str
    hr: np.ndarray  # H x W x 3 uint8 RGB, H and W multiples of the scale
    lr: np.ndarray  # H/s x W/s x 3 uint8 RGB


@dataclass
class SRData:
    scale: int
    train: list[SRPair]
    test_sets: dict[str, list[SRPair]] = field(default_factory=dict)

    def calibration(self, size: int, patch: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """``size`` LR crops of ``patch`` pixels from the training images, drawn by ``seed``;
        returns the batch and one ``image y x`` line per crop (positions in LR pixels)."""
        g = np.random.default_rng(seed)
        fits = _fitting(self.train, patch, "sr_ptq.calibration.patch")
        crops, ids = [], []
        for _ in range(size):
            p, y, x = _random_crop(fits, patch, g)
            crops.append(to_tensor(p.lr[y:y + patch, x:x + patch]))
            ids.append(f"{p.name} {y} {x}")
        return torch.stack(crops), ids


def _fitting(pairs: list[SRPair], patch: int, key: str) -> list[SRPair]:
    fits = [p for p in pairs if min(p.lr.shape[:2]) >= patch]
    if not fits:
        raise ValueError(f"{key}={patch} is larger than every training image's LR size")
    return fits


def _random_crop(fits: list[SRPair], patch: int, g: np.random.Generator) -> tuple[SRPair, int, int]:
    """An image and the top-left LR corner of a ``patch`` crop in it, uniformly at random."""
    p = fits[int(g.integers(len(fits)))]
    return p, int(g.integers(p.lr.shape[0] - patch + 1)), int(g.integers(p.lr.shape[1] - patch + 1))


# -- conversions ----------------------------------------------------------------------------
def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB -> float CHW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float CHW (or 1CHW) in [0, 1] -> uint8 HWC, clamped and rounded as basicsr's tensor2img."""
    t = t.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    return (t.clamp(0, 1).numpy().transpose(1, 2, 0) * 255.0).round().astype(np.uint8)


def as_rgb(img: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D image array -> uint8 HWC RGB (grey replicated, alpha dropped)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        elif np.issubdtype(img.dtype, np.floating) and img.max() <= 1.0:
            img = (img * 255.0).round().astype(np.uint8)
        else:
            img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"not an RGB or grey image: shape {img.shape}")
    return np.ascontiguousarray(img)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """basicsr's mod crop: cut H and W down to multiples of ``scale``."""
    from basicsr.data.transforms import mod_crop as _mod_crop

    return _mod_crop(img, scale)


def bicubic_downsample(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-compatible bicubic downsampling (basicsr's ``imresize``, antialiased), rounded to 8 bit."""
    from basicsr.utils.matlab_functions import imresize

    lr = imresize(hr.astype(np.float64) / 255.0, 1.0 / scale)
    return np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)


def bicubic_upsample(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-compatible bicubic upsampling of an 8-bit image (the ``bicubic`` reference row)."""
    from basicsr.utils.matlab_functions import imresize

    sr = imresize(lr.astype(np.float64) / 255.0, float(scale))
    return np.clip(np.round(sr * 255.0), 0, 255).astype(np.uint8)


def make_pair(name: str, hr: np.ndarray, scale: int, lr: np.ndarray | None = None, where: str = "") -> SRPair:
    """An (HR, LR) pair: HR mod-cropped; LR made by bicubic downsampling unless given.

    A given LR is checked against the HR: HR is cut to LR x scale, as basicsr's paired dataset does."""
    hr = as_rgb(hr)
    if lr is None:
        hr = mod_crop(hr, scale)
        return SRPair(name, hr, bicubic_downsample(hr, scale))
    lr = as_rgb(lr)
    h, w = lr.shape[0] * scale, lr.shape[1] * scale
    # a mod-crop explains at most scale - 1 extra HR pixels per side; more means another scale's LR
    if not (0 <= hr.shape[0] - h < scale and 0 <= hr.shape[1] - w < scale):
        raise ValueError(f"{where}{name}: the HR image ({hr.shape[1]}x{hr.shape[0]}) is not its LR image "
                         f"({lr.shape[1]}x{lr.shape[0]}) times the scale x{scale} (up to a mod-crop); is the LR "
                         "folder for another scale?")
    return SRPair(name, np.ascontiguousarray(hr[:h, :w]), lr)


# -- embedded images ------------------------------------------------------------------------
def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the embedded images need the package '{name}' (pip install -e .)")
    return Path(spec.origin).parent


def _embedded_path(ident: str) -> Path:
    pkg, _, fname = ident.partition("/")
    # the packages' folders, found without importing them (importing sklearn.datasets takes seconds, and the
    # workflow checks these names before it builds its DAG)
    if pkg == "skimage":
        base = _package_dir("skimage") / "data"
    elif pkg == "sklearn":
        base = _package_dir("sklearn") / "datasets" / "images"
    else:
        raise ValueError(f"embedded image '{ident}' must be 'skimage/<file>' or 'sklearn/<file>'")
    path = base / fname
    if not path.is_file():
        have = sorted(p.name for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        raise ValueError(f"embedded image '{ident}' does not ship with the installed {pkg}; "
                         f"available: {have}")
    return path


def read_image(path) -> np.ndarray:
    """An image file as uint8 RGB (grey replicated); a clear error for an unreadable file."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path}: missing, corrupt or not an image")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return as_rgb(img)


def _embedded_pairs(idents: list[str], scale: int) -> list[SRPair]:
    return [make_pair(i, read_image(_embedded_path(i)), scale) for i in idents]


# -- folders --------------------------------------------------------------------------------
def _resolve(root: str | None, path: str, scale: int) -> Path:
    p = Path(str(path).replace("{scale}", str(scale)))
    return p if p.is_absolute() or root is None else Path(root) / p


def _images_in(folder: Path, key: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}: folder {folder} not found; expected {FOLDER_LAYOUT}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{key}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}; expected {FOLDER_LAYOUT}")
    return files


def check_folders(cfg: SRDataConfig, scales: list[int]) -> None:
    """Every folder a ``folders`` source names exists at every scale (a cheap check before any job)."""
    specs = {"sr_ptq.data.train": cfg.train, **{f"sr_ptq.data.test_sets.{k}": v for k, v in cfg.test_sets.items()}}
    for key, spec in specs.items():
        for part in ("hr", "lr"):
            for scale in scales:
                if spec.get(part) and not (folder := _resolve(cfg.root, spec[part], scale)).is_dir():
                    raise FileNotFoundError(f"{key}.{part}: folder {folder} not found (sr_ptq.data.root is "
                                            f"{cfg.root!r}); expected {FOLDER_LAYOUT}")


def folder_pairs(spec: dict, root: str | None, scale: int, key: str,
                 draw: tuple[int, int] | None = None) -> list[SRPair]:
    """The pairs of an HR folder (and an optional LR folder with the same file names).

    ``draw = (n, seed)`` reads only ``n`` files drawn by ``seed`` (calibration on DIV2K needs a few
    images, not all 800 of them in memory)."""
    hr_dir = _resolve(root, spec["hr"], scale)
    hr_files = _images_in(hr_dir, f"{key}.hr")
    if draw is not None and draw[0] < len(hr_files):
        pick = np.random.default_rng(draw[1]).choice(len(hr_files), size=draw[0], replace=False)
        hr_files = [hr_files[i] for i in sorted(pick)]
    lr_spec = spec.get("lr")
    if not lr_spec:
        return [make_pair(p.stem, read_image(p), scale) for p in hr_files]
    lr_dir = _resolve(root, lr_spec, scale)
    lr_files = {p.stem: p for p in _images_in(lr_dir, f"{key}.lr")}
    missing = [p.name for p in hr_files if p.stem not in lr_files]
    if missing:
        raise FileNotFoundError(f"{key}.lr: {lr_dir} lacks the LR images of {missing[:5]} (HR and LR files must share "
                                f"their names); expected {FOLDER_LAYOUT}")
    return [make_pair(p.stem, read_image(p), scale, read_image(lr_files[p.stem]), where=f"{key}: ")
            for p in hr_files]


def load_sr_data(cfg: SRDataConfig, scale: int, with_train: bool = True, with_test: bool = True,
                 train_draw: tuple[int, int] | None = None) -> SRData:
    """The training pairs and the test sets of ``cfg`` at ``scale``; ``train_draw = (n, seed)`` reads
    only ``n`` training images of a folder source, drawn by ``seed``."""
    if cfg.name == "embedded":
        train = _embedded_pairs(cfg.train, scale) if with_train else []
        tests = {k: _embedded_pairs(v, scale) for k, v in cfg.test_sets.items()} if with_test else {}
        return SRData(scale, train, tests)
    train = folder_pairs(cfg.train, cfg.root, scale, "sr_ptq.data.train", train_draw) if with_train else []
    tests = ({k: folder_pairs(v, cfg.root, scale, f"sr_ptq.data.test_sets.{k}") for k, v in cfg.test_sets.items()}
             if with_test else {})
    return SRData(scale, train, tests)


def training_batch(pairs: list[SRPair], batch: int, patch: int, scale: int, g: np.random.Generator):
    """Random aligned (LR, HR) crops with flips and transposes, as basicsr's paired training data."""
    fits = _fitting(pairs, patch, "sr_ptq.train.patch")
    lrs, hrs = [], []
    for _ in range(batch):
        p, y, x = _random_crop(fits, patch, g)
        lr = p.lr[y:y + patch, x:x + patch]
        hr = p.hr[y * scale:(y + patch) * scale, x * scale:(x + patch) * scale]
        if g.random() < 0.5:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        if g.random() < 0.5:
            lr, hr = lr[::-1], hr[::-1]
        if g.random() < 0.5:
            lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
        lrs.append(to_tensor(lr))
        hrs.append(to_tensor(hr))
    return torch.stack(lrs), torch.stack(hrs)


def detail_box(hr: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` HR window with the most gradient energy (the crop
    shown in the figure); deterministic, and the same for every method."""
    y = hr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    energy = np.zeros_like(y)
    energy[:-1, :] += np.abs(np.diff(y, axis=0))
    energy[:, :-1] += np.abs(np.diff(y, axis=1))
    s = min(size, energy.shape[0], energy.shape[1])
    ii = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    win = ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]  # win[y, x]: the window at (y, x)
    stride = max(1, s // 4)
    ys = sorted(set(range(0, win.shape[0], stride)) | {win.shape[0] - 1})
    xs = sorted(set(range(0, win.shape[1], stride)) | {win.shape[1] - 1})
    sub = win[np.ix_(ys, xs)]
    iy, ix = np.unravel_index(int(np.argmax(sub)), sub.shape)
    return int(ys[iy]), int(xs[ix])
