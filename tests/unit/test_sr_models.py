"""SR backbones (dqss.sr.models): preset names, basicsr construction, SRNet padding, weight files,
checked downloads; and PSNR/SSIM (dqss.sr.metrics) against an independent computation.

Offline and on the CPU: the networks are the tiny presets, the weight files are written by the tests,
downloads read ``file://`` URLs of files in tmp_path.
"""
import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dqss.weights import save_checkpoint
from dqss.sr.metrics import mean_metrics, sr_metrics
from dqss.sr.models import (SR_PRESETS, SRNet, build_sr, create_sr_backbone, download_weights, import_basicsr,
                            load_sr_weights, parse_backbone)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ("edsr_tiny_x2", "rcan_tiny_x4", "swinir_tiny_x2", "msrresnet_tiny_x4", "msrresnet_tiny_x2")
KEY = "sr_ptq.backbones.edsr_tiny_x2"


def _build(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_sr(parse_backbone(name, overrides or None))


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- names ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, arch, scale, pad", [
    ("edsr_baseline_x2", "EDSR", 2, 1), ("swinir_light_x4", "SwinIR", 4, 8), ("rcan_x4", "RCAN", 4, 1),
    ("msrresnet_x4", "MSRResNet", 4, 1), ("edsr_x3", "EDSR", 3, 1), ("edsr_tiny_x3", "EDSR", 3, 1)])
def test_parse_backbone_presets(name, arch, scale, pad):
    bb = parse_backbone(name)
    assert bb.name == name and bb.preset.arch == arch and bb.scale == scale
    assert bb.options["upscale"] == scale
    assert bb.pad_multiple == pad
    assert bb.preset.name == name.rsplit("_x", 1)[0]


def test_parse_backbone_preset_options():
    edsr = parse_backbone("edsr_baseline_x2").options
    assert (edsr["num_feat"], edsr["num_block"], edsr["res_scale"]) == (64, 16, 1)
    large = parse_backbone("edsr_x4").options
    assert (large["num_feat"], large["num_block"], large["res_scale"]) == (256, 32, 0.1)
    swin = parse_backbone("swinir_light_x4").options
    assert swin["upsampler"] == "pixelshuffledirect" and swin["embed_dim"] == 60 and swin["window_size"] == 8
    rcan = parse_backbone("rcan_x4").options
    assert (rcan["num_group"], rcan["num_block"], rcan["num_feat"]) == (10, 20, 64)


def test_parse_backbone_unknown_preset():
    with pytest.raises(ValueError) as e:
        parse_backbone("edsr_basline_x2")
    msg = str(e.value)
    assert "edsr_basline_x2" in msg
    assert "close: ['edsr_baseline'" in msg  # the suggestion
    for preset in SR_PRESETS:
        assert f"'{preset}'" in msg  # every preset is listed
    with pytest.raises(ValueError, match="unknown SR backbone 'vdsr_x2'"):
        parse_backbone("vdsr_x2")


def test_parse_backbone_needs_a_scale():
    with pytest.raises(ValueError, match=r"<preset>_x<scale>") as e:
        parse_backbone("edsr_baseline")
    assert "edsr_baseline" in str(e.value)
    with pytest.raises(ValueError, match=r"<preset>_x<scale>"):
        parse_backbone("edsr_baseline_2")


def test_parse_backbone_unsupported_scale():
    with pytest.raises(ValueError, match=r"x5 is not supported by preset 'edsr_tiny'") as e:
        parse_backbone("edsr_tiny_x5")
    assert "[2, 3, 4]" in str(e.value)


def test_parse_backbone_options_override():
    bb = parse_backbone("edsr_tiny_x2", {"num_block": 2, "num_feat": 8})
    assert bb.options["num_block"] == 2 and bb.options["num_feat"] == 8
    assert bb.options["upscale"] == 2 and bb.options["res_scale"] == 1  # the rest kept
    assert parse_backbone("edsr_tiny_x2").options["num_block"] == 4  # the preset itself is untouched
    assert parse_backbone("edsr_tiny_x2", {"upscale": 2}).options["upscale"] == 2  # agreeing is fine
    assert parse_backbone("swinir_tiny_x2", {"window_size": 4}).pad_multiple == 4  # padding follows the window
    model = build_sr(parse_backbone("edsr_tiny_x2", {"num_block": 2, "num_feat": 8}))
    assert len(model.net.body) == 2 and model.net.conv_first.out_channels == 8


def test_parse_backbone_contradicting_upscale():
    with pytest.raises(ValueError, match=r"options\.upscale=4 contradicts the name's x2"):
        parse_backbone("edsr_tiny_x2", {"upscale": 4})


def test_build_sr_bad_option_names_key():
    with pytest.raises(ValueError, match=r"sr_ptq\.backbones\.edsr_tiny_x2\.options"):
        build_sr(parse_backbone("edsr_tiny_x2", {"no_such_option": 1}))


def test_import_basicsr_registry():
    registry = import_basicsr()
    for arch in ("EDSR", "RCAN", "SwinIR", "MSRResNet"):
        assert arch in registry
        assert isinstance(registry.get(arch), type)
    assert {p.arch for p in SR_PRESETS.values()} <= {"EDSR", "RCAN", "SwinIR", "MSRResNet"}


# -- construction and padding ---------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_tiny_presets_forward(name):
    model = _build(name)
    bb = parse_backbone(name)
    assert isinstance(model, SRNet) and not model.training
    assert model.scale == bb.scale and model.pad_multiple == bb.pad_multiple
    assert type(model.net).__name__ == bb.preset.arch
    x = torch.rand(1, 3, 20, 27, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
    s = bb.scale
    assert y.shape == (1, 3, 20 * s, 27 * s)
    assert torch.isfinite(y).all()


def test_swinir_needs_padding_and_srnet_pads():
    model = _build("swinir_tiny_x2")
    assert model.pad_multiple == 8
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 20, 27, generator=g)
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            model.net(x)  # the raw network cannot take 20x27 (window 8)
        y = model(x)
        ref = model.net(F.pad(x, (0, 5, 0, 4), mode="reflect"))[..., :40, :54]
    assert y.shape == (1, 3, 40, 54)
    assert torch.allclose(y, ref, atol=1e-6, rtol=0)
    # padding depends on the padded content: reflect, not zeros
    with torch.no_grad():
        zero = model.net(F.pad(x, (0, 5, 0, 4)))[..., :40, :54]
    assert not torch.allclose(y, zero, atol=1e-4)


def test_srnet_no_padding_on_multiple_of_window():
    model = _build("swinir_tiny_x2")
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x))
    edsr = _build("edsr_tiny_x2")
    x = torch.rand(1, 3, 7, 9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(edsr(x), edsr.net(x))  # pad multiple 1: the network unchanged


def test_srnet_replicates_inputs_smaller_than_the_pad():
    model = _build("swinir_tiny_x2")
    x = torch.rand(1, 3, 3, 11, generator=torch.Generator().manual_seed(4))  # ph=5 >= h=3: no reflection
    with torch.no_grad():
        y = model(x)
        ref = model.net(F.pad(x, (0, 5, 0, 5), mode="replicate"))[..., :6, :22]
    assert y.shape == (1, 3, 6, 22) and torch.allclose(y, ref, atol=1e-6, rtol=0)


# -- weight files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edsr_pair():
    """Two differently initialised edsr_tiny_x2 networks and a third one."""
    a, b, c = _build("edsr_tiny_x2", 0), _build("edsr_tiny_x2", 1), _build("edsr_tiny_x2", 2)
    assert not _states_equal(a.net.state_dict(), b.net.state_dict())
    return a, b, c


@pytest.mark.parametrize("layout", ["params", "params_ema", "plain", "module_prefix", "state_dict"])
def test_load_sr_weights_layouts(tmp_path, edsr_pair, layout):
    src, other, _ = edsr_pair
    sd = src.net.state_dict()
    obj = {"params": {"params": sd},
           "params_ema": {"params": {k: v + 1 for k, v in sd.items()}, "params_ema": sd},  # ema preferred
           "plain": sd,
           "module_prefix": {"params": {f"module.{k}": v for k, v in sd.items()}},
           "state_dict": {"state_dict": sd, "arch": "edsr_tiny_x2"}}[layout]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    dst = _build("edsr_tiny_x2", 1)
    assert not _states_equal(dst.net.state_dict(), sd)
    out = load_sr_weights(dst, path, KEY)
    assert out is dst
    assert _states_equal(dst.net.state_dict(), sd)


def test_load_sr_weights_param_key(tmp_path, edsr_pair):
    a, b, _ = edsr_pair
    path = tmp_path / "w.pth"
    torch.save({"params_ema": a.net.state_dict(), "params": b.net.state_dict()}, path)
    dst = _build("edsr_tiny_x2", 2)
    load_sr_weights(dst, path, KEY, param_key="params")  # an explicit choice wins
    assert _states_equal(dst.net.state_dict(), b.net.state_dict())
    with pytest.raises(KeyError) as e:
        load_sr_weights(dst, path, KEY, param_key="params_swa")
    assert "params_swa" in str(e.value) and "param_key" in str(e.value)


def test_load_sr_weights_missing_file(tmp_path, edsr_pair):
    with pytest.raises(FileNotFoundError) as e:
        load_sr_weights(edsr_pair[0], tmp_path / "nope" / "EDSR_x2.pth", "sr_ptq.backbones.my_key")
    msg = str(e.value)
    assert msg.startswith("sr_ptq.backbones.my_key:")
    assert "EDSR_x2.pth" in msg and "pretrained_models" in msg and "sha256" in msg and "weights: train" in msg


def test_load_sr_weights_corrupt_file(tmp_path, edsr_pair):
    path = tmp_path / "w.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RuntimeError, match="corrupt") as e:
        load_sr_weights(edsr_pair[0], path, KEY)
    assert KEY in str(e.value) and str(path) in str(e.value)


def test_load_sr_weights_not_a_state_dict(tmp_path, edsr_pair):
    path = tmp_path / "w.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(RuntimeError, match="not a state dict"):
        load_sr_weights(edsr_pair[0], path, KEY)


@pytest.mark.parametrize("other", ["rcan_tiny_x2", "edsr_tiny_x3", "edsr_baseline_x2"])
def test_load_sr_weights_wrong_architecture(tmp_path, edsr_pair, other):
    path = tmp_path / "w.pth"
    torch.save({"params": _build(other).net.state_dict()}, path)
    with pytest.raises(RuntimeError, match="does not fit this architecture") as e:
        load_sr_weights(_build("edsr_tiny_x2", 1), path, KEY)
    assert KEY in str(e.value) and "scale" in str(e.value)


def test_create_sr_backbone_train_weights(tmp_path, edsr_pair):
    name = "edsr_tiny_x2"
    with pytest.raises(ValueError, match=r"sr_ptq\.backbones\.edsr_tiny_x2: 'train' weights need"):
        create_sr_backbone(name, {"weights": "train"}, KEY)
    with pytest.raises(ValueError, match="'train' weights need"):
        create_sr_backbone(name, {}, KEY)  # train is the default
    src = edsr_pair[0]
    ckpt = tmp_path / "edsr_tiny_x2.pt"
    save_checkpoint(src.net, name, ckpt, epoch=3)
    model = create_sr_backbone(name, {"weights": "train"}, KEY, checkpoint=ckpt)
    assert isinstance(model, SRNet) and not model.training
    assert _states_equal(model.net.state_dict(), src.net.state_dict())
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    # the same weights saved under another backbone name are refused
    wrong = tmp_path / "other.pt"
    save_checkpoint(src.net, "edsr_tiny_x3", wrong)
    with pytest.raises(RuntimeError, match="is for 'edsr_tiny_x3', not 'edsr_tiny_x2'"):
        create_sr_backbone(name, {"weights": "train"}, KEY, checkpoint=wrong)


def test_create_sr_backbone_file_weights(tmp_path, edsr_pair):
    a, b, _ = edsr_pair
    path = tmp_path / "EDSR_tiny_x2.pth"
    torch.save({"params_ema": a.net.state_dict(), "params": b.net.state_dict()}, path)
    m = create_sr_backbone("edsr_tiny_x2", {"weights": str(path)}, KEY)
    assert _states_equal(m.net.state_dict(), a.net.state_dict())
    m = create_sr_backbone("edsr_tiny_x2", {"weights": str(path), "param_key": "params"}, KEY)
    assert _states_equal(m.net.state_dict(), b.net.state_dict())
    with pytest.raises(ValueError, match="sr_download_weights"):
        create_sr_backbone("edsr_tiny_x2", {"weights": {"url": "https://example.invalid/x.pth", "sha256": "0" * 8}},
                           KEY)
    # a download rule's file is passed as the checkpoint (and verified against its sha256)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    m = create_sr_backbone("edsr_tiny_x2", {"weights": {"url": "https://example.invalid/x.pth", "sha256": sha}},
                           KEY, checkpoint=path)
    assert _states_equal(m.net.state_dict(), a.net.state_dict())
    # options apply before the weights: a smaller net does not fit
    with pytest.raises(RuntimeError, match="does not fit"):
        create_sr_backbone("edsr_tiny_x2", {"weights": str(path), "options": {"num_block": 2}}, KEY)
    with pytest.raises(FileNotFoundError, match=KEY):
        create_sr_backbone("edsr_tiny_x2", {"weights": str(tmp_path / "missing.pth")}, KEY)


# -- downloads ------------------------------------------------------------------------------
@pytest.fixture
def weight_file(tmp_path):
    src = tmp_path / "src" / "net_g.pth"
    src.parent.mkdir()
    src.write_bytes(np.random.default_rng(9).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.mark.parametrize("digits", [64, 8])
def test_download_weights_checks_sha256(tmp_path, weight_file, digits):
    src, sha = weight_file
    dst = tmp_path / "pretrained" / "deep" / "net_g.pth"
    download_weights(src.as_uri(), sha[:digits].upper() if digits == 8 else sha, dst, KEY)
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["net_g.pth"]  # no .part left


def test_download_weights_checksum_mismatch(tmp_path, weight_file):
    src, sha = weight_file
    dst = tmp_path / "pretrained" / "net_g.pth"
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with pytest.raises(RuntimeError, match="checksum mismatch") as e:
        download_weights(src.as_uri(), wrong, dst, KEY)
    assert KEY in str(e.value) and sha in str(e.value)
    assert not dst.exists() and not dst.with_name(dst.name + ".part").exists()
    assert list(dst.parent.iterdir()) == []
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        download_weights(src.as_uri(), wrong[:8], dst, KEY)
    assert not dst.exists()


@pytest.mark.parametrize("bad", ["not-a-sha", "abc1234", "g" * 64, "0" * 65, ""],
                         ids=["text", "7-digits", "non-hex", "65-digits", "empty"])
def test_download_weights_bad_sha256(tmp_path, weight_file, bad):
    src, _ = weight_file
    dst = tmp_path / "out" / "net_g.pth"
    with pytest.raises(ValueError, match=r"sr_ptq\.backbones\.edsr_tiny_x2\.sha256"):
        download_weights(src.as_uri(), bad, dst, KEY)
    assert not dst.exists()


def test_download_weights_missing_source(tmp_path, weight_file):
    _, sha = weight_file
    dst = tmp_path / "out" / "net_g.pth"
    url = (tmp_path / "src" / "missing.pth").as_uri()
    with pytest.raises(RuntimeError) as e:
        download_weights(url, sha, dst, KEY)
    msg = str(e.value)
    assert f"{KEY}.url" in msg and url in msg and "offline" in msg
    assert not dst.exists() and list(dst.parent.iterdir()) == []


# -- metrics --------------------------------------------------------------------------------
def _y(rgb: np.ndarray) -> np.ndarray:
    """MATLAB's rgb2ycbcr Y (BT.601) of uint8 RGB, as float in [16, 235]."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return (65.481 * r + 128.553 * g + 24.966 * b) / 255.0 + 16.0


def _reference(sr, hr, scale, swap=False):
    from skimage.metrics import structural_similarity

    if swap:  # what a wrong channel order would compute
        sr, hr = sr[..., ::-1], hr[..., ::-1]
    c = slice(scale, -scale)
    y1, y2 = _y(sr)[c, c], _y(hr)[c, c]
    mse = np.mean((y1 - y2) ** 2)
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
    ssim = structural_similarity(y1, y2, data_range=255, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    return psnr, ssim


def _colourful(seed, shape=(40, 52)):
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    hr = np.stack([200 * (xx / w), 60 + 0 * yy, 220 * (yy / h)], axis=2) + rng.normal(0, 12, (h, w, 3))
    hr = np.clip(hr, 0, 255).round().astype(np.uint8)
    noise = np.zeros((h, w, 3))
    noise[..., 0] = rng.normal(0, 14, (h, w))  # error mostly in red, little in blue: channel order matters
    noise[..., 2] = rng.normal(0, 2, (h, w))
    sr = np.clip(hr + noise, 0, 255).round().astype(np.uint8)
    return sr, hr


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_metrics_match_independent_computation(scale):
    sr, hr = _colourful(scale)
    m = sr_metrics(sr, hr, scale)
    assert set(m) == {"psnr", "ssim"} and all(isinstance(v, float) for v in m.values())
    psnr, ssim = _reference(sr, hr, scale)
    assert 20 < psnr < 45 and 0.3 < ssim < 0.99
    assert m["psnr"] == pytest.approx(psnr, abs=1e-5)
    assert m["ssim"] == pytest.approx(ssim, abs=1e-6)
    # a BGR/RGB mix-up would give clearly different numbers
    psnr_sw, ssim_sw = _reference(sr, hr, scale, swap=True)
    assert abs(psnr_sw - psnr) > 0.5 and abs(ssim_sw - ssim) > 1e-3
    # swapping R and B of one image changes the result
    assert sr_metrics(np.ascontiguousarray(sr[..., ::-1]), hr, scale)["psnr"] < m["psnr"] - 1


def test_sr_metrics_crop_the_border():
    _, hr = _colourful(7)
    scale = 3
    sr = hr.copy()
    sr[:scale] = 255 - sr[:scale]  # damage only the border that is cropped
    sr[:, -scale:] = 0
    m = sr_metrics(sr, hr, scale)
    assert m["psnr"] == math.inf and m["ssim"] == pytest.approx(1.0, abs=1e-12)
    sr[scale, scale] = 255 - sr[scale, scale]  # the first pixel inside counts
    m = sr_metrics(sr, hr, scale)
    psnr, ssim = _reference(sr, hr, scale)
    assert math.isfinite(m["psnr"]) and m["psnr"] == pytest.approx(psnr, abs=1e-5)
    assert m["ssim"] < 1 and m["ssim"] == pytest.approx(ssim, abs=1e-6)


def test_sr_metrics_identical_images():
    _, hr = _colourful(8)
    m = sr_metrics(hr, hr.copy(), 2)
    assert m["psnr"] == math.inf
    assert m["ssim"] == pytest.approx(1.0, abs=1e-12)


def test_sr_metrics_size_mismatch():
    _, hr = _colourful(9)
    with pytest.raises(ValueError, match="differ in size"):
        sr_metrics(hr[:-2], hr, 2)


def test_mean_metrics():
    per_image = [{"psnr": 30.0, "ssim": 0.9}, {"psnr": 20.0, "ssim": 0.7}, {"psnr": 31.0, "ssim": 0.8}]
    m = mean_metrics(per_image)
    assert m == {"psnr": pytest.approx(27.0), "ssim": pytest.approx(0.8)}
    assert all(isinstance(v, float) for v in m.values())


def test_downloaded_weights_verified_before_every_use(tmp_path, edsr_pair, monkeypatch):
    """A file at weights_dir/<backbone>.pth may be put there by hand, swapped later, or older than a changed
    sha256: it is checked before each use (the hash cached by size, inode and mtime), never used unverified."""
    from dqss.sr import models as sr_models

    a, b, _ = edsr_pair
    path = tmp_path / "pretrained" / "edsr_tiny_x2.pth"
    path.parent.mkdir()
    torch.save({"params": a.net.state_dict()}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = {"weights": {"url": "https://example.invalid/edsr.pth", "sha256": sha[:8]}}
    hashed = []
    monkeypatch.setattr(sr_models, "sha256_of", lambda p, real=sr_models.sha256_of: hashed.append(p) or real(p))
    m = create_sr_backbone("edsr_tiny_x2", spec, KEY, checkpoint=path)
    assert _states_equal(m.net.state_dict(), a.net.state_dict()) and len(hashed) == 1
    create_sr_backbone("edsr_tiny_x2", spec, KEY, checkpoint=path)  # unchanged file: the cached hash
    assert len(hashed) == 1
    torch.save({"params": b.net.state_dict()}, path)  # swapped in place
    with pytest.raises(RuntimeError, match=r"edsr_tiny_x2\.pth has SHA-256 .* not the configured") as e:
        create_sr_backbone("edsr_tiny_x2", spec, KEY, checkpoint=path)
    assert "Delete it and rerun" in str(e.value) and f"{KEY}.sha256" in str(e.value)
    assert len(hashed) == 2
    wrong = {"weights": {"url": "https://example.invalid/edsr.pth", "sha256": "0" * 64}}  # a changed sha256
    torch.save({"params": a.net.state_dict()}, path)
    with pytest.raises(RuntimeError, match="not the configured 0000"):
        create_sr_backbone("edsr_tiny_x2", wrong, KEY, checkpoint=path)


def test_weights_with_nan_are_refused(tmp_path, edsr_pair):
    a, _, _ = edsr_pair
    state = {k: v.clone() for k, v in a.net.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and "body" in k)
    state[name][0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save({"params": state}, path)
    with pytest.raises(ValueError, match=rf"{KEY}.*NaN or inf in net[.]{name.replace('.', '[.]')};"):
        create_sr_backbone("edsr_tiny_x2", {"weights": str(path)}, KEY)


def test_download_job_runs_on_its_settings_only(tmp_path, weight_file):
    """The download rule's job gets only its backbone's entry (url, sha256): a changed sha256 reruns it."""
    from dqss.tracks.sr_ptq import SRPTQConfig, run_download
    from dqss.workflow import job_settings

    src, sha = weight_file
    section = {"dataset": "div2k", "data": {"name": "embedded"}, "strategies": ["minmax", "mse"],
               "bits": [{"w": 8, "a": 8}],
               "backbones": {"edsr_tiny_x2": {"weights": {"url": src.as_uri(), "sha256": sha}},
                             "msrresnet_tiny_x2": {"weights": "train"}}}
    cfg = SRPTQConfig.from_dict(section)
    settings = job_settings(cfg, "download", "edsr_tiny_x2")
    assert settings == {"backbones": {"edsr_tiny_x2": {"weights": {"sha256": sha, "url": src.as_uri()}}}}
    dst = tmp_path / "pretrained" / "edsr_tiny_x2.pth"
    run_download(SRPTQConfig.from_dict(settings, partial=True), backbone="edsr_tiny_x2", weights=dst)
    assert dst.read_bytes() == src.read_bytes()
