"""Super-resolution data (dqss.sr.data): basicsr folder layout, embedded photos, crops, bicubic degradation.

Offline and on the CPU: the folder source reads a tiny basicsr-layout tree that the tests write to
tmp_path with cv2 (``Set5/GTmod12`` HR, ``Set5/LRbicx{2,3}`` LR made by ``bicubic_downsample`` of the
mod-cropped HR, ``DIV2K/DIV2K_train_HR`` without LR); only one test reads the embedded photographs.
"""
import hashlib
import math

import cv2
import numpy as np
import pytest
import torch

from dqss.sr.data import (EMBEDDED_TEST_SETS, EMBEDDED_TRAIN, SRData, SRDataConfig, SRPair, bicubic_downsample,
                          bicubic_upsample, detail_box, folder_pairs, load_sr_data, mod_crop, read_image,
                          to_tensor, to_uint8, training_batch)

pytestmark = pytest.mark.usefixtures("single_thread")

HR_SHAPE = (41, 53)  # H x W, a multiple of neither 2 nor 3, so mod-crop and the LR*scale cut matter
TRAIN_SHAPE = (44, 40)
SET5 = {"hr": "Set5/GTmod12", "lr": "Set5/LRbicx{scale}"}
DIV2K = {"hr": "DIV2K/DIV2K_train_HR"}


def _random_rgb(rng, shape) -> np.ndarray:
    """A smooth-ish but textured RGB uint8 image (noise plus ramps), distinct per call."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 255 / h, xx * 255 / w, (yy + xx) * 127 / (h + w)], axis=2)
    img = base + rng.normal(0, 40, (h, w, 3))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _write_rgb(path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))  # cv2 writes BGR


@pytest.fixture
def sr_tree(tmp_path):
    """A basicsr-layout tree; returns (root, {"hr": {stem: rgb}, "lr2": ..., "lr3": ..., "train": ...})."""
    rng = np.random.default_rng(1234)
    arrays = {"hr": {}, "lr2": {}, "lr3": {}, "train": {}}
    for stem in ("a", "b"):
        hr = _random_rgb(rng, HR_SHAPE)
        arrays["hr"][stem] = hr
        _write_rgb(tmp_path / "Set5" / "GTmod12" / f"{stem}.png", hr)
        for s in (2, 3):
            lr = bicubic_downsample(mod_crop(hr, s), s)
            arrays[f"lr{s}"][stem] = lr
            _write_rgb(tmp_path / "Set5" / f"LRbicx{s}" / f"{stem}.png", lr)
    for stem in ("0001", "0002"):
        hr = _random_rgb(rng, TRAIN_SHAPE)
        arrays["train"][stem] = hr
        _write_rgb(tmp_path / "DIV2K" / "DIV2K_train_HR" / f"{stem}.png", hr)
    return tmp_path, arrays


def _folders(root, test_sets=None, train=None) -> SRDataConfig:
    return SRDataConfig(name="folders", root=str(root), train=train or dict(DIV2K),
                        test_sets=test_sets or {"Set5": dict(SET5)})


# -- folders --------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3])
def test_folders_read_lr_files_and_cut_hr(sr_tree, scale):
    root, arrays = sr_tree
    data = load_sr_data(_folders(root), scale)
    assert data.scale == scale
    assert list(data.test_sets) == ["Set5"]
    pairs = data.test_sets["Set5"]
    assert [p.name for p in pairs] == ["a", "b"]
    for p in pairs:
        want_lr = arrays[f"lr{scale}"][p.name]  # {scale} picked LRbicx<scale>
        assert p.lr.dtype == np.uint8 and p.hr.dtype == np.uint8
        np.testing.assert_array_equal(p.lr, want_lr)  # PNG is lossless: exactly what was written
        h, w = want_lr.shape[0] * scale, want_lr.shape[1] * scale
        assert p.hr.shape == (h, w, 3)
        assert h < HR_SHAPE[0] or w < HR_SHAPE[1]  # the cut did something
        np.testing.assert_array_equal(p.hr, arrays["hr"][p.name][:h, :w])


@pytest.mark.parametrize("scale", [2, 3])
def test_folders_without_lr_make_bicubic_lr(sr_tree, scale):
    root, arrays = sr_tree
    cfg = _folders(root, test_sets={"Set5": {"hr": "Set5/GTmod12", "lr": None}})
    data = load_sr_data(cfg, scale)
    for pairs, source in ((data.train, arrays["train"]), (data.test_sets["Set5"], arrays["hr"])):
        assert [p.name for p in pairs] == sorted(source)
        for p in pairs:
            hr = mod_crop(source[p.name], scale)
            assert p.hr.shape[0] % scale == 0 and p.hr.shape[1] % scale == 0
            np.testing.assert_array_equal(p.hr, hr)
            np.testing.assert_array_equal(p.lr, bicubic_downsample(hr, scale))
            assert p.lr.shape == (p.hr.shape[0] // scale, p.hr.shape[1] // scale, 3)
    # a generated LR equals the published-style LR file written from the same HR
    for p in data.test_sets["Set5"]:
        np.testing.assert_array_equal(p.lr, arrays[f"lr{scale}"][p.name])


def test_folders_absolute_paths_draw_and_flags(sr_tree):
    root, arrays = sr_tree
    spec = {"hr": str(root / "Set5" / "GTmod12"), "lr": str(root / "Set5" / "LRbicx{scale}")}
    pairs = folder_pairs(spec, None, 2, "sr_ptq.data.test_sets.Set5")  # absolute paths, no root
    assert [p.name for p in pairs] == ["a", "b"]
    np.testing.assert_array_equal(pairs[1].lr, arrays["lr2"]["b"])
    # draw=(n, seed): n files drawn by seed, the same ones for the same seed
    drawn = {seed: [p.name for p in folder_pairs(spec, None, 2, "k", draw=(1, seed))] for seed in range(8)}
    assert all(len(v) == 1 and v[0] in ("a", "b") for v in drawn.values())
    assert {v[0] for v in drawn.values()} == {"a", "b"}
    assert [p.name for p in folder_pairs(spec, None, 2, "k", draw=(1, 5))] == drawn[5]
    one = folder_pairs(spec, None, 2, "k", draw=(1, 5))[0]
    np.testing.assert_array_equal(one.lr, arrays["lr2"][one.name])  # drawn HR still paired with its own LR
    assert [p.name for p in folder_pairs(spec, None, 2, "k", draw=(5, 0))] == ["a", "b"]  # n >= files: all
    data = load_sr_data(_folders(root), 2, with_train=False)
    assert data.train == [] and list(data.test_sets) == ["Set5"]
    data = load_sr_data(_folders(root), 2, with_test=False, train_draw=(1, 0))
    assert data.test_sets == {} and len(data.train) == 1 and data.train[0].name in arrays["train"]


def test_folders_keep_rgb_order(tmp_path):
    red = np.zeros((12, 10, 3), np.uint8)
    red[..., 0] = 255  # pure red in RGB
    _write_rgb(tmp_path / "hr" / "red.png", red)  # stored as BGR (0, 0, 255)
    on_disk = cv2.imread(str(tmp_path / "hr" / "red.png"))
    assert on_disk[0, 0].tolist() == [0, 0, 255]  # really BGR in the file
    np.testing.assert_array_equal(read_image(tmp_path / "hr" / "red.png"), red)
    (p,) = folder_pairs({"hr": "hr"}, str(tmp_path), 2, "sr_ptq.data.train")
    for img in (p.hr, p.lr):
        assert (img[..., 0] == 255).all() and (img[..., 1:] == 0).all()


def test_folders_grey_png_becomes_three_channels(tmp_path):
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (14, 16), dtype=np.uint8)
    (tmp_path / "hr").mkdir()
    assert cv2.imwrite(str(tmp_path / "hr" / "g.png"), grey)
    assert cv2.imread(str(tmp_path / "hr" / "g.png"), cv2.IMREAD_UNCHANGED).ndim == 2
    (p,) = folder_pairs({"hr": "hr"}, str(tmp_path), 2, "sr_ptq.data.train")
    assert p.hr.shape == (14, 16, 3) and p.lr.shape == (7, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(p.hr[..., c], grey)
        np.testing.assert_array_equal(p.lr[..., c], p.lr[..., 0])


# -- folder errors --------------------------------------------------------------------------
def test_missing_hr_folder_names_key_and_layout(sr_tree):
    root, _ = sr_tree
    cfg = _folders(root, test_sets={"Set5": {"hr": "Set5/GTmod12_typo", "lr": SET5["lr"]}})
    with pytest.raises(FileNotFoundError) as e:
        load_sr_data(cfg, 2)
    msg = str(e.value)
    assert "sr_ptq.data.test_sets.Set5.hr" in msg
    assert "GTmod12_typo" in msg  # the folder it looked for
    assert "layout" in msg and "LRbicx{scale}" in msg  # and what it expected


def test_missing_train_folder_names_key(sr_tree):
    root, _ = sr_tree
    with pytest.raises(FileNotFoundError, match=r"sr_ptq\.data\.train\.hr"):
        load_sr_data(_folders(root, train={"hr": "DIV2K/nothing"}), 2)


def test_empty_folder(sr_tree):
    root, _ = sr_tree
    (root / "Set14" / "GTmod12").mkdir(parents=True)
    (root / "Set14" / "GTmod12" / "readme.txt").write_text("not an image")
    cfg = _folders(root, test_sets={"Set14": {"hr": "Set14/GTmod12"}})
    with pytest.raises(FileNotFoundError, match=r"sr_ptq\.data\.test_sets\.Set14\.hr: no images") as e:
        load_sr_data(cfg, 2)
    assert "layout" in str(e.value)


def test_lr_folder_missing_a_file(sr_tree):
    root, _ = sr_tree
    (root / "Set5" / "LRbicx2" / "b.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_sr_data(_folders(root), 2)
    msg = str(e.value)
    assert "sr_ptq.data.test_sets.Set5.lr" in msg and "b.png" in msg and "a.png" not in msg
    assert "same" in msg or "share" in msg


def test_lr_folder_missing_entirely(sr_tree):
    root, _ = sr_tree
    with pytest.raises(FileNotFoundError, match=r"sr_ptq\.data\.test_sets\.Set5\.lr"):
        load_sr_data(_folders(root), 4)  # LRbicx4 was never written


def test_lr_of_smaller_scale_is_refused(sr_tree):
    """x2 LR images read for a x3 backbone: HR is smaller than LR*3."""
    root, _ = sr_tree
    cfg = _folders(root, test_sets={"Set5": {"hr": "Set5/GTmod12", "lr": "Set5/LRbicx2"}})
    with pytest.raises(ValueError) as e:
        load_sr_data(cfg, 3)
    msg = str(e.value)
    assert "sr_ptq.data.test_sets.Set5" in msg and "a" in msg
    assert "is not its LR image" in msg and "x3" in msg and "another scale" in msg


def test_lr_of_larger_scale_is_refused(sr_tree):
    """x3 LR images read for a x2 backbone: HR (41x53) is far larger than LR*2 (26x34), so these are not
    the HR image's x2 LR images.  A mod-crop accounts for fewer than ``scale`` pixels per side; anything
    more means the LR folder is for another scale and every PSNR would be computed on a cut-off HR."""
    root, _ = sr_tree
    cfg = _folders(root, test_sets={"Set5": {"hr": "Set5/GTmod12", "lr": "Set5/LRbicx3"}})
    with pytest.raises(ValueError, match="scale"):
        load_sr_data(cfg, 2)


def test_corrupt_image(sr_tree):
    root, _ = sr_tree
    bad = root / "Set5" / "GTmod12" / "a.png"
    bad.write_bytes(b"this is not a PNG file at all" * 4)
    with pytest.raises(ValueError, match="cannot read image") as e:
        load_sr_data(_folders(root), 2)
    assert str(bad) in str(e.value)


def _data_section(**kwargs) -> SRDataConfig:
    from dqss.options import build_section

    return build_section(SRDataConfig, kwargs, "sr_ptq.data")


def test_folders_config_needs_train_and_test_sets():
    with pytest.raises(ValueError, match=r"^sr_ptq\.data\.train\.hr") as e:
        _data_section(name="folders")
    assert "DIV2K" in str(e.value)
    with pytest.raises(ValueError, match=r"^sr_ptq\.data\.test_sets"):
        _data_section(name="folders", train=dict(DIV2K))
    with pytest.raises(ValueError, match=r"^sr_ptq\.data\.test_sets\.Set5\.hr"):
        _data_section(name="folders", train=dict(DIV2K), test_sets={"Set5": {"lr": "Set5/LRbicx2"}})


def test_unknown_source():
    with pytest.raises(ValueError, match=r"^sr_ptq\.data\.name.*'div2k'") as e:
        _data_section(name="div2k")
    assert "embedded" in str(e.value) and "folders" in str(e.value)


# -- embedded -------------------------------------------------------------------------------
def test_embedded_default_split_loads_without_overlap():
    cfg = SRDataConfig()
    train_names = set(cfg.train)
    test_names = {i for v in cfg.test_sets.values() for i in v}
    assert train_names == set(EMBEDDED_TRAIN)
    assert test_names == {i for v in EMBEDDED_TEST_SETS.values() for i in v}
    assert not train_names & test_names
    data = load_sr_data(cfg, 2)
    assert [p.name for p in data.train] == EMBEDDED_TRAIN
    assert {k: [p.name for p in v] for k, v in data.test_sets.items()} == EMBEDDED_TEST_SETS
    digests = {}
    for p in [*data.train, *(p for v in data.test_sets.values() for p in v)]:
        assert p.hr.dtype == np.uint8 and p.hr.ndim == 3 and p.hr.shape[2] == 3
        assert p.hr.shape[0] % 2 == 0 and p.hr.shape[1] % 2 == 0
        assert p.lr.shape == (p.hr.shape[0] // 2, p.hr.shape[1] // 2, 3)
        assert p.hr.std() > 1.0  # a real photograph, not a blank
        digests[p.name] = hashlib.sha256(p.hr.tobytes()).hexdigest()
    # no test photograph is a training photograph under another name
    train_d = {digests[n] for n in EMBEDDED_TRAIN}
    assert not train_d & {digests[n] for n in test_names}
    assert len(set(digests.values())) == len(digests)


def test_embedded_unknown_image():
    with pytest.raises(ValueError, match="does not ship") as e:
        SRDataConfig(train=["skimage/no_such_photo.png"])
    assert "no_such_photo.png" in str(e.value) and "astronaut.png" in str(e.value)  # lists what there is
    with pytest.raises(ValueError, match="skimage/<file>"):
        SRDataConfig(test_sets={"x": ["imageio/chelsea.png"]})


def test_embedded_overlap_is_refused():
    with pytest.raises(ValueError, match="both training and test") as e:
        SRDataConfig(train=["skimage/rocket.jpg", "skimage/chelsea.png"])
    assert "skimage/chelsea.png" in str(e.value) and "rocket" not in str(e.value)
    with pytest.raises(ValueError, match="both training and test"):
        SRDataConfig(train=["skimage/camera.png"], test_sets={"t": ["skimage/moon.png", "skimage/camera.png"]})


# -- calibration crops ----------------------------------------------------------------------
def _hand_data():
    rng = np.random.default_rng(7)
    train = []
    for name, shape, colour in (("t_red", (12, 15), (200, 20, 20)), ("t_green", (9, 20), (20, 200, 20)),
                                ("t_tiny", (5, 5), (20, 20, 200))):
        lr = np.clip(np.array(colour)[None, None] + rng.integers(-15, 16, (*shape, 3)), 0, 255).astype(np.uint8)
        train.append(SRPair(name, np.repeat(np.repeat(lr, 2, 0), 2, 1), lr))
    white = np.full((16, 16, 3), 255, np.uint8)
    tests = {"set": [SRPair("test_white", np.full((32, 32, 3), 255, np.uint8), white)]}
    return SRData(2, train, tests)


def test_calibration_is_deterministic_per_seed():
    data = _hand_data()
    a, ids_a = data.calibration(24, 8, seed=3)
    b, ids_b = data.calibration(24, 8, seed=3)
    assert torch.equal(a, b) and ids_a == ids_b
    c, ids_c = data.calibration(24, 8, seed=4)
    assert ids_c != ids_a and not torch.equal(a, c)


def test_calibration_crops_come_from_training_images():
    data = _hand_data()
    by_name = {p.name: p for p in data.train}
    size, patch = 40, 8
    crops, ids = data.calibration(size, patch, seed=0)
    assert crops.shape == (size, 3, patch, patch) and crops.dtype == torch.float32
    assert len(ids) == size
    seen = set()
    for crop, line in zip(crops, ids):
        name, y, x = line.split(" ")
        y, x = int(y), int(x)
        assert name in by_name and name != "t_tiny"  # the 5x5 image cannot give an 8x8 crop
        lr = by_name[name].lr
        assert 0 <= y <= lr.shape[0] - patch and 0 <= x <= lr.shape[1] - patch
        assert torch.equal(crop, to_tensor(lr[y:y + patch, x:x + patch]))
        # and the dominant colour is that training image's, never the white test image
        dominant = int(crop.mean(dim=(1, 2)).argmax())
        assert dominant == {"t_red": 0, "t_green": 1}[name]
        assert crop.min() < 0.9
        seen.add(name)
    assert seen == {"t_red", "t_green"}


def test_calibration_patch_larger_than_every_image():
    data = _hand_data()
    with pytest.raises(ValueError, match=r"sr_ptq\.calibration\.patch=21"):
        data.calibration(4, 21, seed=0)  # the test image (16x16 LR) would fit, but it is not a training image
    crops, ids = data.calibration(4, 12, seed=0)  # only t_red (12x15) fits
    assert {i.split()[0] for i in ids} == {"t_red"} and crops.shape == (4, 3, 12, 12)


# -- training crops -------------------------------------------------------------------------
def _dihedral(a: np.ndarray):
    """The 8 flips/transposes of an HWC array, as (label, array)."""
    out = []
    for t in (False, True):
        b = a.transpose(1, 0, 2) if t else a
        for fy in (False, True):
            for fx in (False, True):
                c = b[::-1] if fy else b
                c = c[:, ::-1] if fx else c
                out.append(((t, fy, fx), c))
    return out


@pytest.mark.parametrize("scale", [2, 3])
def test_training_batch_is_aligned(scale):
    rng = np.random.default_rng(11)
    lr = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    hr = np.repeat(np.repeat(lr, scale, 0), scale, 1)  # LR is exactly hr[::s, ::s], whatever the flip
    np.testing.assert_array_equal(hr[::scale, ::scale], lr)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # too small for the patch: never drawn
    pairs = [SRPair("p", hr, lr), SRPair("small", np.repeat(np.repeat(small, scale, 0), scale, 1), small)]
    batch, patch = 48, 6
    lrs, hrs = training_batch(pairs, batch, patch, scale, np.random.default_rng(0))
    assert lrs.shape == (batch, 3, patch, patch) and hrs.shape == (batch, 3, patch * scale, patch * scale)
    assert lrs.dtype == torch.float32 and hrs.dtype == torch.float32
    assert 0 <= float(lrs.min()) and float(lrs.max()) <= 1 and 0 <= float(hrs.min()) and float(hrs.max()) <= 1
    windows = {lr[y:y + patch, x:x + patch].tobytes()
               for y in range(lr.shape[0] - patch + 1) for x in range(lr.shape[1] - patch + 1)}
    transforms = set()
    for lt, ht in zip(lrs, hrs):
        l8, h8 = to_uint8(lt), to_uint8(ht)
        np.testing.assert_array_equal(h8[::scale, ::scale], l8)
        np.testing.assert_array_equal(h8, np.repeat(np.repeat(l8, scale, 0), scale, 1))
        # the LR crop is a flip/transpose of a window of the LR image
        found = [k for k, c in _dihedral(l8) if np.ascontiguousarray(c).tobytes() in windows]
        assert found, "LR crop is not a (flipped) window of the LR image"
        transforms.add(found[0])
    assert len(transforms) >= 4  # the random flips and transposes were exercised
    # the same generator state gives the same batch
    lrs2, hrs2 = training_batch(pairs, batch, patch, scale, np.random.default_rng(0))
    assert torch.equal(lrs, lrs2) and torch.equal(hrs, hrs2)


# -- bicubic, conversions, detail box ---------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_downsample_matches_basicsr(scale):
    from basicsr.utils.matlab_functions import imresize

    rng = np.random.default_rng(scale)
    hr = _random_rgb(rng, (37, 50))
    lr = bicubic_downsample(hr, scale)
    assert lr.dtype == np.uint8
    assert lr.shape == (math.ceil(37 / scale), math.ceil(50 / scale), 3)
    ref = imresize(hr.astype(np.float64) / 255.0, 1.0 / scale)
    ref = np.clip(np.round(np.asarray(ref, np.float64) * 255.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(lr, ref)
    # antialiased: the LR of a constant image is that constant, of a mod-cropped image exactly H/s x W/s
    np.testing.assert_array_equal(bicubic_downsample(np.full((24, 36, 3), 77, np.uint8), scale),
                                  np.full((24 // scale, 36 // scale, 3), 77, np.uint8))
    assert bicubic_downsample(mod_crop(hr, scale), scale).shape == (37 // scale, 50 // scale, 3)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_upsample(scale):
    from basicsr.utils.matlab_functions import imresize

    rng = np.random.default_rng(10 + scale)
    lr = _random_rgb(rng, (9, 13))
    sr = bicubic_upsample(lr, scale)
    assert sr.dtype == np.uint8 and sr.shape == (9 * scale, 13 * scale, 3)
    ref = np.clip(np.round(np.asarray(imresize(lr / 255.0, float(scale)), np.float64) * 255), 0, 255)
    np.testing.assert_array_equal(sr, ref.astype(np.uint8))
    np.testing.assert_array_equal(bicubic_upsample(np.full((5, 6, 3), 200, np.uint8), scale),
                                  np.full((5 * scale, 6 * scale, 3), 200, np.uint8))


def test_to_tensor_to_uint8_round_trip():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    img[..., 1] = img[..., 1][::-1]
    img[..., 2] = 255 - img[..., 2]
    t = to_tensor(img)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert torch.allclose(t[0].flatten(), torch.arange(256, dtype=torch.float32) / 255)
    np.testing.assert_array_equal(to_uint8(t), img)
    np.testing.assert_array_equal(to_uint8(t[None]), img)  # 1CHW accepted
    # clamped and rounded like basicsr's tensor2img
    odd = torch.tensor([-0.3, 1.7, 10.4 / 255, 10.6 / 255]).view(1, 1, 4).expand(3, 1, 4)
    assert to_uint8(odd)[0, :, 0].tolist() == [0, 255, 10, 11]


def test_detail_box_finds_texture():
    rng = np.random.default_rng(2)
    for (ty, tx) in ((30, 44), (3, 5), (41, 12)):
        img = np.full((64, 80, 3), 128, np.uint8)
        img[ty:ty + 10, tx:tx + 10] = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
        size = 24
        y, x = detail_box(img, size)
        assert 0 <= y <= 64 - size and 0 <= x <= 80 - size
        assert y <= ty and ty + 10 <= y + size, (ty, y)
        assert x <= tx and tx + 10 <= x + size, (tx, x)
        assert detail_box(img, size) == (y, x)  # deterministic


def test_detail_box_reaches_the_bottom_right_corner():
    """A detail in the bottom-right corner: the window with the most gradient energy is the one ending
    at the image's last row and column; a window that stops short cuts the detail off."""
    rng = np.random.default_rng(3)
    img = np.full((64, 80, 3), 128, np.uint8)
    img[54:, 70:] = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    y, x = detail_box(img, 24)
    assert (y, x) == (64 - 24, 80 - 24)
