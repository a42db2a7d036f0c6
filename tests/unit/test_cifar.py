"""CIFAR backbones registered with timm (dqss.cls.cifar_models) and CIFAR-10 data (dqss.cls.data.cifar10).

Offline and on the CPU: the CIFAR-10 set is a few random images written to tmp_path in the exact
format of the python archive (Python 2 pickles of dicts with byte-string keys, b"data" a uint8
[N, 3072] array of row-major R, G, B planes), which torchvision's md5 check would reject.
"""
import io
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dqss.cls.data import CIFAR10_LAYOUT, DataConfig, load_classification
from dqss.cls.models import check_backbone, create_backbone, data_config, register_models
from dqss.cls.train import TrainConfig, train_classifier

register_models()
import timm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
NAMES = ("resnet20", "mobilenetv2_050_cifar", "mobilenetv2_100_cifar")
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH, N_TEST = 3, 4  # 5 train batches of 3 images, a test batch of 4

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count(model: nn.Module, cls) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


# -- registration ---------------------------------------------------------------------------
def test_registered_names_are_ours():
    from timm.models import is_model_in_modules

    for name in NAMES:
        assert timm.is_model(name), name
        assert is_model_in_modules(name, ["cifar_models"]), name
        check_backbone(name)
    assert set(NAMES) <= set(timm.list_models(module="cifar_models"))
    with pytest.raises(ValueError, match="mobilenetv2_050_cifar"):  # offered as a close match
        check_backbone("mobilenetv2_050_cifr")


@pytest.mark.slow
def test_lazy_registration_in_fresh_process():
    """timm alone does not know the names; dqss.cls.models registers them where backbones are checked/built."""
    code = ("import timm\n"
            f"names = {NAMES!r}\n"
            "assert not any(timm.is_model(n) for n in names), 'registered before dqss was imported'\n"
            "from dqss.cls.models import check_backbone\n"
            "check_backbone('resnet20')\n"
            "assert all(timm.is_model(n) for n in names)\n"
            "assert timm.create_model('mobilenetv2_050_cifar').num_classes == 10\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- ResNet-20 ------------------------------------------------------------------------------
def test_resnet20_architecture():
    model = timm.create_model("resnet20")
    assert model.num_classes == 10
    assert _n_params(model) == 269_722  # He et al.'s 0.27 M, option-A shortcuts
    assert _count(model, nn.Conv2d) == 19 and _count(model, nn.Linear) == 1
    assert _count(model, nn.MaxPool2d) == 0
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == 16
    assert [len(model.get_submodule(f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    # the shortcuts carry no parameters
    assert sum(_n_params(m.downsample) for m in model.modules() if hasattr(m, "downsample")) == 0
    assert _n_params(timm.create_model("resnet20", num_classes=100)) == 269_722 + 90 * 65

    sizes = {}
    hooks = [model.get_submodule(f"layer{i}").register_forward_hook(
        lambda m, a, out, i=i: sizes.__setitem__(i, tuple(out.shape[1:]))) for i in (1, 2, 3)]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y = model.eval()(x)
    for h in hooks:
        h.remove()
    assert y.shape == (3, 10) and torch.isfinite(y).all()
    assert sizes == {1: (16, 32, 32), 2: (32, 16, 16), 3: (64, 8, 8)}


def test_resnet20_option_a_shortcut_pads_with_zeros():
    model = timm.create_model("resnet20").eval()
    block = model.layer2[0]
    x = torch.randn(2, 16, 32, 32)
    s = block.downsample(x)
    assert s.shape == (2, 32, 16, 16)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2])
    assert (s[:, :8] == 0).all() and (s[:, 24:] == 0).all()


def test_resnet20_projection_shortcut_option():
    model = timm.create_model("resnet20", shortcut="B")
    assert _count(model, nn.Conv2d) == 21  # two 1x1 projections
    assert _n_params(model) == 269_722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="shortcut"):
        timm.create_model("resnet20", shortcut="C")


def test_resnet20_timm_interface():
    model = timm.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 64, 8, 8)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 64)
        assert torch.allclose(model.forward_head(feats), model.get_classifier()(pre))
        assert torch.allclose(model(x), model.fc(feats.mean((2, 3))), atol=1e-6)
    assert model.get_classifier() is model.fc
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7
    feats = timm.create_model("resnet20", features_only=True)(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg(name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    assert cfg["num_classes"] == 10 and tuple(cfg["input_size"]) == (3, 32, 32)
    assert not cfg.get("url") and not cfg.get("hf_hub_id")  # weights come from local files
    model.get_submodule(cfg["first_conv"])
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    d = timm.data.resolve_data_config({}, model=model)
    assert d["input_size"] == (3, 32, 32)
    assert np.allclose(d["mean"], CIFAR_MEAN) and np.allclose(d["std"], CIFAR_STD)
    assert data_config(model) == d
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model(name, pretrained=True)


def _trained_state(name: str, seed: int) -> tuple[nn.Module, dict]:
    """A model whose BN running statistics differ from the init (so a load that skips them shows)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=10)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32) * 2 + 1)
    return model.eval(), model.state_dict()


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_050_cifar"])
def test_local_weight_file_round_trip(tmp_path, name):
    model, sd = _trained_state(name, seed=5)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    loaded = create_backbone(name, str(path), 10, f"cls_qat.backbones.{name}.weights")
    assert not loaded.training
    got = loaded.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        other, _ = _trained_state(name, seed=6)
        assert not torch.allclose(other(x), model(x))  # the equality above is not vacuous
    # timm's own path, as dqss.cls.models uses it
    direct = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "num_classes": 10})
    with torch.no_grad():
        assert torch.equal(direct.eval()(x), model(x))


# -- MobileNetV2 for CIFAR ------------------------------------------------------------------
@pytest.mark.parametrize("name,width", [("mobilenetv2_050_cifar", 0.5), ("mobilenetv2_100_cifar", 1.0)])
def test_mobilenetv2_cifar(name, width):
    from timm.models.efficientnet import EfficientNet

    model = timm.create_model(name).eval()
    assert isinstance(model, EfficientNet)
    assert model.num_classes == 10 and model.get_classifier().out_features == 10
    assert _count(model, nn.ReLU6) > 0
    assert model.conv_stem.out_channels == {0.5: 16, 1.0: 32}[width]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        assert model.forward_features(x).shape == (2, 1280, 4, 4)  # total stride 8
        assert model.forward_features(torch.randn(2, 3, 16, 16)).shape[-2:] == (2, 2)
    assert [f["reduction"] for f in model.feature_info][-1] == 8
    n = _n_params(model)
    assert {0.5: 600_000 < n < 800_000, 1.0: 2_000_000 < n < 2_500_000}[width], n


def test_mobilenetv2_cifar_widths_differ():
    small, big = (timm.create_model(n) for n in ("mobilenetv2_050_cifar", "mobilenetv2_100_cifar"))
    assert _n_params(small) < _n_params(big)
    # same depth, only the widths scale
    assert _count(small, nn.Conv2d) == _count(big, nn.Conv2d)


# -- a tiny CIFAR-10 in the archive's format --------------------------------------------------
class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (as the archive's files, pickled by Python 2, hold them):
    loaded back as ``str`` with encoding='latin1' (torchvision) and as ``bytes`` with encoding='bytes'."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else
                   pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _py2_pickle(obj) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue()


def _write_cifar(root: Path, per_batch=PER_BATCH, n_test=N_TEST, skip=(), seed=0) -> dict:
    """The python archive's files with random images; returns {split: (images [N,32,32,3] uint8, labels)}."""
    rng = np.random.RandomState(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    out = {"train": ([], []), "test": ([], [])}
    batches = [(f"data_batch_{i}", f"training batch {i} of 5", per_batch, "train") for i in range(1, 6)]
    batches.append(("test_batch", "testing batch 1 of 1", n_test, "test"))
    k = 0
    for fname, label, n, split in batches:
        imgs = rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        labels = [(k + i) % 10 for i in range(n)]
        k += n
        out[split][0].append(imgs)
        out[split][1].extend(labels)
        if fname in skip:
            continue
        entry = {b"batch_label": label.encode(), b"labels": labels,
                 b"data": imgs.transpose(0, 3, 1, 2).reshape(n, 3072),  # R plane, G plane, B plane, rows
                 b"filenames": [f"img_{fname}_{i}.png".encode() for i in range(n)]}
        (d / fname).write_bytes(_py2_pickle(entry))
    if "batches.meta" not in skip:
        meta = {b"num_cases_per_batch": per_batch, b"label_names": [s.encode() for s in LABEL_NAMES],
                b"num_vis": 3072}
        (d / "batches.meta").write_bytes(_py2_pickle(meta))
    return {s: (np.concatenate(v[0]), v[1]) for s, v in out.items()}


@pytest.fixture(scope="module")
def dcfg():
    return data_config(timm.create_model("resnet20"))


def _load(root, dcfg, **kw):
    return load_classification(DataConfig(name="cifar10", root=str(root), **kw), dcfg)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(CIFAR_STD).view(3, 1, 1) + torch.tensor(CIFAR_MEAN).view(3, 1, 1)


def test_writer_matches_archive_format(tmp_path):
    _write_cifar(tmp_path)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_2").read_bytes()
    as_bytes = pickle.loads(raw, encoding="bytes")  # how the CIFAR page reads the files
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (PER_BATCH, 3072)
    as_str = pickle.loads(raw, encoding="latin1")  # how torchvision reads them
    assert set(as_str) == {"batch_label", "labels", "data", "filenames"}
    meta = pickle.loads((tmp_path / "cifar-10-batches-py" / "batches.meta").read_bytes(), encoding="latin1")
    assert meta["label_names"] == LABEL_NAMES


def test_cifar10_loads(tmp_path, dcfg):
    ref = _write_cifar(tmp_path)
    data = _load(tmp_path, dcfg)
    assert data.num_classes == 10
    assert list(data.train.classes) == LABEL_NAMES
    assert len(data.train) == 5 * PER_BATCH and len(data.test) == N_TEST
    assert data.ids == [f"cifar10:train:{i}" for i in range(5 * PER_BATCH)]
    for split, ds in (("train", data.train), ("test", data.test)):
        imgs, labels = ref[split]
        assert [int(ds[i][1]) for i in range(len(ds))] == labels
        for i in range(len(ds)):
            x = ds[i][0]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            want = torch.from_numpy(imgs[i]).permute(2, 0, 1).float() / 255
            assert torch.allclose(_unnormalise(x), want, atol=1e-5), (split, i)
    # calibration draws name train items
    sub, ids = data.calibration(5, seed=0)
    assert len(set(ids)) == 5 and all(i.startswith("cifar10:train:") for i in ids)
    k = sub.indices[0]
    assert torch.equal(sub[0][0], data.train[k][0]) and ids[0] == f"cifar10:train:{k}"


def test_cifar10_training_set_is_augmented(tmp_path, dcfg):
    ref = _write_cifar(tmp_path)
    data = _load(tmp_path, dcfg)
    assert data.training_set() is data.train_aug and data.train_aug is not data.train
    assert data.train_aug.data is data.train.data  # decoded once, shared
    assert len(data.train_aug) == len(data.train)
    i = 4
    plain = _unnormalise(data.train[i][0])
    padded = torch.nn.functional.pad(plain, (4, 4, 4, 4))
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        x, y = data.train_aug[i]
        assert x.shape == (3, 32, 32) and int(y) == ref["train"][1][i]
        aug = _unnormalise(x)
        changed += not torch.allclose(aug, plain, atol=1e-5)
        # every augmented view is a 32x32 window of the 4-pixel zero-padded image, maybe mirrored
        windows = [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.allclose(aug, w, atol=1e-5) or torch.allclose(aug, w.flip(-1), atol=1e-5)
                   for w in windows), seed
    assert changed > 0
    # the eval views are deterministic
    assert torch.equal(data.train[i][0], data.train[i][0]) and torch.equal(data.test[0][0], data.test[0][0])


def test_cifar10_resized_for_other_input_sizes(tmp_path, dcfg):
    from torchvision import transforms as T

    _write_cifar(tmp_path)
    plain = _load(tmp_path, dcfg)
    assert not any(isinstance(t, T.Resize) for t in plain.test.transform.transforms)
    big = _load(tmp_path, {**dcfg, "input_size": (3, 48, 48)})
    assert big.test[0][0].shape == (3, 48, 48) and big.train[0][0].shape == (3, 48, 48)
    assert big.training_set()[0][0].shape == (3, 48, 48)


def test_cifar10_dataset_pickles(tmp_path, dcfg):
    """DataLoader workers started by spawn/forkserver receive the dataset pickled."""
    _write_cifar(tmp_path)
    data = _load(tmp_path, dcfg)
    for ds in (data.train, data.training_set(), data.test):
        back = pickle.loads(pickle.dumps(ds))
        assert type(back).__name__ == "CIFAR10Files" and len(back) == len(ds)
    assert torch.equal(pickle.loads(pickle.dumps(data.test))[1][0], data.test[1][0])


# -- errors ---------------------------------------------------------------------------------
def _check_message(msg: str, *extra: str):
    assert "data.root" in msg
    assert CIFAR10_LAYOUT in msg
    assert "python pickle" in msg
    assert "data.download: true" in msg
    for e in extra:
        assert e in msg, e


def test_cifar10_needs_root():
    from dqss.options import build_section

    with pytest.raises(ValueError, match=r"^cls_qat\.data\.root") as e:
        build_section(DataConfig, {"name": "cifar10"}, "cls_qat.data")
    assert "cifar-10-batches-py" in str(e.value)
    assert DataConfig(name="cifar10", root="/x").download is False


def test_cifar10_missing_root(tmp_path, dcfg):
    with pytest.raises(FileNotFoundError) as e:
        _load(tmp_path / "nowhere", dcfg)
    _check_message(str(e.value), str(tmp_path / "nowhere"))


@pytest.mark.parametrize("missing", ["data_batch_3", "test_batch", "batches.meta"])
def test_cifar10_missing_file(tmp_path, dcfg, missing):
    _write_cifar(tmp_path, skip=(missing,))
    with pytest.raises(FileNotFoundError) as e:
        _load(tmp_path, dcfg)
    _check_message(str(e.value), missing)


def test_cifar10_empty_root(tmp_path, dcfg):
    with pytest.raises(FileNotFoundError) as e:
        _load(tmp_path, dcfg)
    _check_message(str(e.value), "data_batch_1")


@pytest.mark.parametrize("victim", ["data_batch_2", "batches.meta", "test_batch"])
def test_cifar10_corrupt_pickle(tmp_path, dcfg, victim):
    _write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / victim
    path.write_bytes(np.random.RandomState(1).randint(0, 256, 2000).astype(np.uint8).tobytes())
    with pytest.raises(ValueError) as e:
        _load(tmp_path, dcfg)
    _check_message(str(e.value), "not a CIFAR-10 python pickle")
    assert str(path) in str(e.value)  # the file is named, not only its folder


class _RunsCode:
    """What a tampered pickle holds: unpickling it calls os.system (a plain pickle.load runs it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("victim", ["batches.meta", "data_batch_1", "test_batch"])
def test_cifar10_tampered_pickle_runs_no_code(tmp_path, dcfg, victim):
    """torchvision unpickles every CIFAR file with pickle.load, which runs whatever the file names; the
    suite's reader accepts only the containers, numbers, strings and numpy arrays the real files hold."""
    _write_cifar(tmp_path / "data")
    path = tmp_path / "data" / "cifar-10-batches-py" / victim
    marker = tmp_path / "code-ran"
    entry = pickle.loads(path.read_bytes(), encoding="bytes")
    entry[b"label_names" if victim == "batches.meta" else b"batch_label"] = _RunsCode(marker)
    path.write_bytes(pickle.dumps(entry, protocol=2))
    pickle.loads(path.read_bytes(), encoding="latin1")  # the plain way runs it ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError) as e:  # ... the suite's reader refuses it, naming the file
        _load(tmp_path / "data", dcfg)
    assert not marker.exists()
    msg = str(e.value)
    assert str(path) in msg and "system" in msg and "nothing in it was run" in msg


def test_cifar10_truncated_pickle(tmp_path, dcfg):
    _write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError) as e:
        _load(tmp_path, dcfg)
    _check_message(str(e.value))


def test_cifar10_inconsistent_batch(tmp_path, dcfg):
    _write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    entry = pickle.loads(path.read_bytes(), encoding="bytes")
    entry[b"labels"] = entry[b"labels"] + [0]  # one label too many
    path.write_bytes(_py2_pickle(entry))
    with pytest.raises(ValueError, match="labels") as e:
        _load(tmp_path, dcfg)
    _check_message(str(e.value))
    entry[b"labels"] = [12] * PER_BATCH  # beyond the 10 label names
    path.write_bytes(_py2_pickle(entry))
    with pytest.raises(ValueError, match="0..9"):
        _load(tmp_path, dcfg)


def test_cifar10_download_keeps_md5_check(tmp_path, dcfg, monkeypatch):
    """With data.download: true the files must be the official ones: the tiny set fails the md5 check,
    so torchvision goes to fetch the archive (faked here; the machine is offline)."""
    import urllib.error

    import torchvision.datasets.cifar as tv_cifar

    _write_cifar(tmp_path)
    calls = []

    def offline(url, root, **kw):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(RuntimeError) as e:
        _load(tmp_path, dcfg, download=True)
    assert calls and calls[0].endswith("cifar-10-python.tar.gz")
    _check_message(str(e.value), "could not fetch")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", lambda url, root, **kw: calls.append(url))
    with pytest.raises(ValueError) as e:  # "downloaded", yet still not the official files
        _load(tmp_path, dcfg, download=True)
    _check_message(str(e.value), "md5")
    assert len(calls) == 2
    assert len(_load(tmp_path, dcfg).train) == 5 * PER_BATCH  # without download they are fine


# -- training on it -------------------------------------------------------------------------
def test_train_resnet20_one_step(tmp_path, dcfg):
    _write_cifar(tmp_path)
    data = _load(tmp_path, dcfg)
    torch.manual_seed(0)
    model = timm.create_model("resnet20", num_classes=data.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = len(data.training_set())
    history = train_classifier(model, data.training_set(), TrainConfig(epochs=1, batch_size=n, shift=0),
                               torch.device("cpu"))
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and history[0]["loss"] > 0
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "conv1.weight" in changed and "fc.weight" in changed and "layer3.2.conv2.weight" in changed
    assert after["bn1.num_batches_tracked"].item() == 1  # one step


def test_backbone_check_remembers_known_names_only(tmp_path, monkeypatch):
    """The workflow checks backbones before its DAG; a name once found in timm is read from a small cache file
    (per timm version and version of the suite's models) next time, and an unknown name is never cached."""
    from dqss.cls import models

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = models.known_names_file()
    assert cache.parent == tmp_path / "dqss" and timm.__version__ in cache.name
    models.check_backbone("resnet20")
    models.check_backbone("resnet18")
    assert cache.read_text().split() == ["resnet18", "resnet20"]
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        models.check_backbone("resnet19")
    assert "resnet19" not in cache.read_text().split()
    # a cached name is accepted without asking timm (here: a name planted in the file)
    cache.write_text("planted_name\n")
    models.check_backbone("planted_name")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "missing" / "deeper"))
    (tmp_path / "missing").write_text("a file where the folder should be: the cache cannot be written")
    models.check_backbone("resnet20")  # still checked, nothing written, no error
