"""Super-resolution backbones: basicsr's architectures behind named, scale-carrying presets.

A backbone name is ``{preset}_x{scale}`` (``edsr_baseline_x2``, ``swinir_light_x4``): the
preset fixes the basicsr architecture and its size, the suffix the upscaling factor, so every
results row names both.  Presets register at their definition with :func:`register_sr_preset`
(the registry pattern of timm's ``register_model`` and basicsr's ``ARCH_REGISTRY``); a config
may override any architecture option (``backbones.<name>.options``).

Every network is wrapped in :class:`SRNet`, which takes RGB in [0, 1] and pads the input to
the architecture's size multiple (SwinIR's window), so the quantization code, the calibration
and the evaluation never see the architecture's input constraints.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import check_finite, require_weight_file

log = logging.getLogger(__name__)
# the remedy of a missing weight file (dqss.weights.require_weight_file)
WEIGHT_FIX = (". Put the official pretrained file there (basicsr layout: experiments/pretrained_models/<file>.pth), "
              "give its url and sha256 to download it, or use weights: train on the embedded data")

SCALES = (2, 3, 4)
NAME_PATTERN = re.compile(r"^(?P<preset>[a-z0-9_]+?)_x(?P<scale>\d+)$")
# the parts of an SR network that papers commonly keep at higher precision; layer-name patterns
# of the wrapped network (basicsr names these layers alike in EDSR, RCAN, MSRResNet and SwinIR)
PARTS = {
    "head": ["net.conv_first"],
    "upsampler": ["net.upsample.*", "net.upconv*", "net.conv_before_upsample.*"],
    "tail": ["net.conv_last", "net.conv_hr"],
}


@dataclass
class SRPreset:
    name: str
    arch: str  # a basicsr ARCH_REGISTRY name
    options: Callable[[int], dict]  # scale -> architecture keyword arguments
    pad_multiple: Callable[[dict], int] = lambda opts: 1
    scales: tuple[int, ...] = SCALES
    doc: str = ""


SR_PRESETS: dict[str, SRPreset] = {}


def register_sr_preset(name: str, arch: str, scales: tuple[int, ...] = SCALES, pad=None):
    """Decorator: ``fn(scale) -> options`` becomes the preset ``name`` of basicsr's ``arch``."""
    def wrap(fn):
        if name in SR_PRESETS:
            raise ValueError(f"SR preset '{name}' is registered twice")
        SR_PRESETS[name] = SRPreset(name, arch, fn, pad or (lambda opts: 1), scales, (fn.__doc__ or "").strip())
        return fn
    return wrap


def _window(opts: dict) -> int:
    return int(opts.get("window_size", 8))


# -- the paper's backbones ------------------------------------------------------------------
@register_sr_preset("edsr_baseline", "EDSR")
def edsr_baseline(scale):
    """EDSR baseline (Lim et al. 2017): 16 residual blocks of 64 features, no residual scaling."""
    return dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=scale, res_scale=1)


@register_sr_preset("edsr", "EDSR")
def edsr_large(scale):
    """EDSR (Lim et al. 2017): 32 blocks of 256 features, residual scaling 0.1."""
    return dict(num_in_ch=3, num_out_ch=3, num_feat=256, num_block=32, upscale=scale, res_scale=0.1)


@register_sr_preset("rcan", "RCAN")
def rcan(scale):
    """RCAN (Zhang et al. 2018): 10 residual groups of 20 channel-attention blocks, 64 features."""
    return dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_group=10, num_block=20, squeeze_factor=16,
                upscale=scale, res_scale=1)


@register_sr_preset("swinir_light", "SwinIR", pad=_window)
def swinir_light(scale):
    """SwinIR lightweight (Liang et al. 2021): 4 RSTBs of depth 6, 60 channels, window 8, one-step upsampler."""
    return dict(upscale=scale, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6, 6, 6, 6],
                embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler="pixelshuffledirect",
                resi_connection="1conv")


@register_sr_preset("msrresnet", "MSRResNet")
def msrresnet(scale):
    """MSRResNet (Wang et al. 2018, SRResNet without BN): 16 blocks of 64 features."""
    return dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=scale)


# -- tiny versions the embedded default trains on a CPU --------------------------------------
@register_sr_preset("edsr_tiny", "EDSR")
def edsr_tiny(scale):
    """EDSR with 4 blocks of 16 features (embedded default)."""
    return dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=4, upscale=scale, res_scale=1)


@register_sr_preset("rcan_tiny", "RCAN")
def rcan_tiny(scale):
    """RCAN with 2 groups of 2 blocks, 16 features (tests)."""
    return dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_group=2, num_block=2, squeeze_factor=4,
                upscale=scale, res_scale=1)


@register_sr_preset("swinir_tiny", "SwinIR", pad=_window)
def swinir_tiny(scale):
    """SwinIR lightweight layout with 2 RSTBs of depth 2, 24 channels, window 8 (embedded default)."""
    return dict(upscale=scale, in_chans=3, img_size=32, window_size=8, img_range=1.0, depths=[2, 2],
                embed_dim=24, num_heads=[2, 2], mlp_ratio=2, upsampler="pixelshuffledirect",
                resi_connection="1conv", drop_path_rate=0.0)


@register_sr_preset("msrresnet_tiny", "MSRResNet")
def msrresnet_tiny(scale):
    """MSRResNet with 4 blocks of 16 features (tests)."""
    return dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=4, upscale=scale)


# -- names ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SRBackbone:
    name: str
    preset: SRPreset
    scale: int
    options: dict = field(default_factory=dict)

    @property
    def pad_multiple(self) -> int:
        return self.preset.pad_multiple(self.options)


def parse_backbone(name: str, overrides: dict | None = None) -> SRBackbone:
    """``{preset}_x{scale}`` -> the preset, the scale and the architecture options."""
    m = NAME_PATTERN.match(name)
    if m is None or m["preset"] not in SR_PRESETS:
        guess = m["preset"] if m else name
        close = difflib.get_close_matches(guess, SR_PRESETS, n=3)
        raise ValueError(f"unknown SR backbone '{name}': names are <preset>_x<scale> with a preset among "
                         f"{sorted(SR_PRESETS)}{f' (close: {close})' if close else ''} and a scale in "
                         f"{list(SCALES)}, e.g. edsr_baseline_x2")
    preset, scale = SR_PRESETS[m["preset"]], int(m["scale"])
    if scale not in preset.scales:
        raise ValueError(f"SR backbone '{name}': scale x{scale} is not supported by preset '{preset.name}' "
                         f"(supported: {list(preset.scales)})")
    opts = preset.options(scale)
    overrides = dict(overrides or {})
    if "upscale" in overrides and int(overrides["upscale"]) != scale:
        raise ValueError(f"SR backbone '{name}': options.upscale={overrides['upscale']} contradicts the "
                         f"name's x{scale}")
    opts.update(overrides)
    return SRBackbone(name, preset, scale, opts)


# -- construction ---------------------------------------------------------------------------
def import_basicsr():
    """basicsr's architecture registry.  PyPI's basicsr 1.4.2 imports a torchvision module that
    was removed (``transforms.functional_tensor``); an alias makes either distribution import."""
    import torchvision.transforms.functional as tvf

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tvf)
    from basicsr.utils.registry import ARCH_REGISTRY
    import basicsr.archs  # noqa: F401  (fills the registry)

    return ARCH_REGISTRY


class SRNet(nn.Module):
    """A basicsr network taking RGB in [0, 1], padded to its size multiple and cropped back."""

    def __init__(self, net: nn.Module, scale: int, pad_multiple: int = 1):
        super().__init__()
        self.net = net
        self.scale = int(scale)
        self.pad_multiple = int(pad_multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k = self.pad_multiple
        ph, pw = (-h) % k, (-w) % k
        if ph or pw:
            # reflection is what SwinIR's own test code uses; replicate covers inputs smaller than the pad
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        y = self.net(x)
        return y[..., : h * self.scale, : w * self.scale]


def build_sr(backbone: SRBackbone) -> SRNet:
    registry = import_basicsr()
    try:
        net = registry.get(backbone.preset.arch)(**backbone.options)
    except TypeError as exc:
        raise ValueError(f"sr_ptq.backbones.{backbone.name}.options: {exc}") from exc
    return SRNet(net, backbone.scale, backbone.pad_multiple).eval()


def _state_dict_of(obj, path, key: str | None):
    """basicsr checkpoints hold ``params`` / ``params_ema``; our own hold ``state_dict``."""
    if not isinstance(obj, dict):
        raise RuntimeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if key is not None:
        if key not in obj:
            raise KeyError(f"{path} has no '{key}' entry (it has {sorted(obj)[:6]}); set param_key to one of them")
        return obj[key]
    for k in ("params_ema", "params", "state_dict"):
        if k in obj and isinstance(obj[k], dict):
            return obj[k]
    return obj


def load_sr_weights(model: SRNet, path, key: str, param_key: str | None = None, arch: str | None = None) -> SRNet:
    """Load a weight file into ``model.net`` (strict); errors name the config ``key``."""
    path = require_weight_file(path, key, WEIGHT_FIX)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{key}: {path} is corrupt or not a PyTorch weight file ({exc}); delete it and "
                           "download it again") from exc
    if arch is not None and isinstance(obj, dict) and obj.get("arch") not in (None, arch):
        raise RuntimeError(f"{key}: checkpoint {path} is for '{obj.get('arch')}', not '{arch}'")
    state = _state_dict_of(obj, path, param_key)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RuntimeError(f"{key}: {path} does not fit this architecture ({str(exc)[:400]}); check the "
                           "backbone's preset, scale and options") from exc

    return check_finite(model, f"{key} ({path})")


def create_sr_backbone(name: str, spec: dict, key: str, checkpoint=None) -> SRNet:
    """Build ``name`` with its weights: 'train' (``checkpoint`` written by the workflow), a local file,
    or a downloaded file (``checkpoint`` is then the path the download rule wrote)."""
    bb = parse_backbone(name, spec.get("options"))
    model = build_sr(bb)
    weights = spec.get("weights", "train")
    if weights == "train":
        if checkpoint is None:
            raise ValueError(f"{key}: 'train' weights need the checkpoint written by the sr_train rule")
        return load_sr_weights(model, checkpoint, key, param_key="state_dict", arch=name).eval()
    if isinstance(weights, dict):
        if checkpoint is None:
            raise ValueError(f"{key}: {{url, sha256}} weights need the file written by the sr_download_weights rule")
        check_sha256(checkpoint, weights["sha256"], key)
    path = checkpoint if checkpoint is not None else weights
    return load_sr_weights(model, path, key, param_key=spec.get("param_key")).eval()


# -- downloads ------------------------------------------------------------------------------
HEX = re.compile(r"^[0-9a-f]{8,64}$")


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path, sha256: str, key: str) -> None:
    """Verify a downloaded weight file before every use: it may have been put there by hand, swapped
    since, or be older than a changed ``sha256``.  The hash is cached beside the file
    (``<file>.sha256``), keyed by its size, inode and modification time."""
    path, sha256 = Path(path), str(sha256).lower()
    st = path.stat()
    stamp = {"size": st.st_size, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}
    cache = path.with_name(path.name + ".sha256")
    got = None
    try:
        saved = json.loads(cache.read_text())
        if {k: saved.get(k) for k in stamp} == stamp:
            got = str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    if got is None:
        got = sha256_of(path)
        from ..results import write_json

        try:
            write_json(cache, {**stamp, "sha256": got})
        except OSError:  # a read-only weights folder: verify again next time
            pass
    if not got.startswith(sha256):
        raise RuntimeError(f"{key}: {path} has SHA-256 {got}, not the configured {sha256}...: the file was replaced "
                           f"or is another one. Delete it and rerun (the sr_download_weights rule fetches it again), "
                           f"or correct {key}.sha256")


def download_weights(url: str, sha256: str, dst, key: str) -> None:
    """Fetch ``url`` to ``dst`` and check its SHA-256 (full or a prefix of at least 8 hex digits, as
    basicsr's and torch.hub's file names carry).  A mismatch deletes the download."""
    from torch.hub import download_url_to_file

    sha256 = str(sha256).lower()
    if not HEX.match(sha256):
        raise ValueError(f"{key}.sha256 must be the file's SHA-256 in hex (at least its first 8 digits), got "
                         f"{sha256!r}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    try:
        download_url_to_file(url, str(tmp), progress=False)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{key}.url: cannot download {url} ({exc}); on an offline machine put the file at "
                           f"{dst} or set weights to a local path") from exc
    got = sha256_of(tmp)
    if not got.startswith(sha256):
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{key}: checksum mismatch for {url}: SHA-256 {got}, expected {sha256}...; the file "
                           "was deleted. Check the url and sha256 in the config")
    tmp.replace(dst)
