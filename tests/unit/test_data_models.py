"""Data sources, backbones and checkpoints, config validation, and a tiny real cls_ptq job chain.

Everything runs offline on the CPU: timm's pretrained loading is never reached over the network
(HF_HUB_OFFLINE=1 everywhere), the ImageFolder tree is a few PIL images written to tmp_path, and the
job chain trains timm's ``test_resnet`` for one epoch on scikit-learn's digits.
"""
import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dqss.tracks.cls_ptq import (ClsPTQConfig, prepare, run_calibrate, run_dqss, run_evaluate_fp, run_train,
                          run_uniform)
from dqss.cls.data import DATASETS, ClassificationData, DataConfig, digits, load_classification
from dqss.core.layers import fold_batchnorm, plan_layers
from dqss.cls.models import check_backbone, create_backbone, data_config
from dqss.weights import load_checkpoint, save_checkpoint
from dqss.core.strategy import strategy_names
from dqss.workflow import JOB_KEYS, job_settings, track_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N_DIGITS = 1797
TINY = "test_resnet"  # timm's 0.37 M parameter ResNet, fine at 32x32

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _cls_section(**overrides) -> dict:
    d = copy.deepcopy(CONFIG["cls_ptq"])
    d.update(overrides)
    return d


# -- digits ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_split():
    cfg = DataConfig(name="digits", input_size=16, split_seed=0)
    return cfg, digits(cfg, IMAGENET_MEAN, IMAGENET_STD)


def _split_ids(data: ClassificationData):
    return [int(i.split(":")[1]) for i in data.ids]


def test_digits_split_is_deterministic(digits_split):
    cfg, a = digits_split
    b = digits(DataConfig(name="digits", input_size=16, split_seed=0), IMAGENET_MEAN, IMAGENET_STD)
    for da, db in ((a.train, b.train), (a.test, b.test)):
        for ta, tb in zip(da.tensors, db.tensors):
            assert torch.equal(ta, tb)
    assert a.ids == b.ids
    c = digits(DataConfig(name="digits", input_size=16, split_seed=1), IMAGENET_MEAN, IMAGENET_STD)
    assert c.ids != a.ids
    assert len(c.train) == len(a.train)
    assert not torch.equal(c.train.tensors[0], a.train.tensors[0])


def _reference_digits(size, mean, std):
    """All 1,797 images, preprocessed independently of dqss.cls.data."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x, torch.tensor(raw.target)


def test_digits_split_is_disjoint_and_complete(digits_split):
    cfg, data = digits_split
    train_ids = _split_ids(data)
    assert len(train_ids) == len(set(train_ids)) == len(data.train)
    assert all(0 <= i < N_DIGITS for i in train_ids)
    assert len(data.test) == round(N_DIGITS * cfg.test_fraction)
    assert len(data.train) + len(data.test) == N_DIGITS
    # the test set is exactly the complement of the train ids (in index order)
    x, y = _reference_digits(cfg.input_size, IMAGENET_MEAN, IMAGENET_STD)
    test_ids = sorted(set(range(N_DIGITS)) - set(train_ids))
    assert torch.allclose(data.train.tensors[0], x[train_ids], atol=1e-6)
    assert torch.equal(data.train.tensors[1], y[train_ids])
    assert torch.allclose(data.test.tensors[0], x[test_ids], atol=1e-6)
    assert torch.equal(data.test.tensors[1], y[test_ids])


def test_digits_images_and_labels(digits_split):
    cfg, data = digits_split
    for ds in (data.train, data.test):
        x, y = ds.tensors
        assert x.shape[1:] == (3, cfg.input_size, cfg.input_size)
        assert x.dtype == torch.float32 and y.dtype == torch.long
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        raw = x * std + mean
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
        assert raw.max() > 0.9  # the strokes are there, not all background
        # the three channels are copies of one grey image
        assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-5)
        assert set(y.tolist()) == set(range(10))
    assert data.num_classes == 10
    x0, y0 = data.train[0]
    assert x0.shape == (3, cfg.input_size, cfg.input_size) and 0 <= int(y0) <= 9


def test_digits_calibration_draw(digits_split):
    _, data = digits_split
    sub_a, ids_a = data.calibration(50, seed=3)
    sub_b, ids_b = data.calibration(50, seed=3)
    assert ids_a == ids_b and sub_a.indices == sub_b.indices
    _, ids_c = data.calibration(50, seed=4)
    assert ids_c != ids_a
    assert len(ids_a) == len(set(ids_a)) == len(sub_a) == 50
    assert set(ids_a) <= set(data.ids)
    # the subset items are the train items the ids name
    for k in (0, 17, 49):
        i = sub_a.indices[k]
        assert ids_a[k] == data.ids[i]
        assert torch.equal(sub_a[k][0], data.train[i][0])
    _, all_ids = data.calibration(len(data.train), seed=0)
    assert sorted(all_ids) == sorted(data.ids)
    with pytest.raises(ValueError, match="calibration.size"):
        data.calibration(len(data.train) + 1, seed=0)


def test_dataconfig_validation():
    from dqss.options import build_section

    with pytest.raises(ValueError, match=r"^cls_ptq\.data\.name: unknown 'mnist'") as e:
        build_section(DataConfig, {"name": "mnist"}, "cls_ptq.data")
    for name in DATASETS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match=r"^cls_ptq\.data\.root"):
        build_section(DataConfig, {"name": "imagefolder"}, "cls_ptq.data")
    with pytest.raises(ValueError, match=r"^test_fraction must be a number in \(0, 1\), got 1\.0"):
        DataConfig(test_fraction=1.0)  # built directly: the field's name, relative to its section


# -- ImageFolder ----------------------------------------------------------------------------
WNIDS = ("n01440764", "n01443537", "n01484850")


def _write_tree(root: Path, splits=("train", "val"), wnids=WNIDS, per_class=4):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    sizes = [(50, 37), (37, 50), (41, 29), (64, 33)]
    for split in splits:
        for c, wnid in enumerate(wnids):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                px = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(px, "RGB").save(d / f"img{i}.JPEG", format="JPEG")
    return root


@pytest.fixture(scope="module")
def tiny_dcfg():
    import timm

    return data_config(timm.create_model(TINY, pretrained=False), 32)


def test_imagefolder_loads(tmp_path, tiny_dcfg):
    root = _write_tree(tmp_path / "imagenet")
    data = load_classification(DataConfig(name="imagefolder", root=str(root)), tiny_dcfg)
    assert data.num_classes == 3
    assert len(data.train) == len(data.test) == 12
    x, y = data.train[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32)
    assert torch.isfinite(x).all()
    assert data.test[11][0].shape == (3, 32, 32) and data.test[11][1] == 2
    assert sorted({int(data.train[i][1]) for i in range(len(data.train))}) == [0, 1, 2]
    assert "train/n01440764/img0.JPEG" in data.ids
    _, ids = data.calibration(5, seed=0)
    assert len(set(ids)) == 5
    for i in ids:
        assert not Path(i).is_absolute() and i.startswith("train/n014")
        assert (root / i).is_file()


def _layout_error(match_extra, root, dcfg):
    with pytest.raises(FileNotFoundError) as e:
        load_classification(DataConfig(name="imagefolder", root=str(root)), dcfg)
    msg = str(e.value)
    assert "data.root" in msg
    assert "<class_id>/<image>.JPEG" in msg
    assert match_extra in msg
    return msg


def test_imagefolder_missing_root(tmp_path, tiny_dcfg):
    _layout_error("train", tmp_path / "nowhere", tiny_dcfg)


def test_imagefolder_missing_val(tmp_path, tiny_dcfg):
    root = _write_tree(tmp_path / "imagenet", splits=("train",))
    _layout_error("val", root, tiny_dcfg)


def test_imagefolder_empty_train(tmp_path, tiny_dcfg):
    root = _write_tree(tmp_path / "imagenet", splits=("val",))
    (root / "train").mkdir()
    _layout_error("train", root, tiny_dcfg)
    # class folders without any image are not a usable tree either
    (root / "train" / WNIDS[0]).mkdir()
    _layout_error("train", root, tiny_dcfg)


def test_imagefolder_class_mismatch(tmp_path, tiny_dcfg):
    root = _write_tree(tmp_path / "imagenet", splits=("train",))
    _write_tree(root, splits=("val",), wnids=WNIDS[:2] + ("n09999999",))
    with pytest.raises(ValueError, match="different class folders"):
        load_classification(DataConfig(name="imagefolder", root=str(root)), tiny_dcfg)


# -- backbones and checkpoints --------------------------------------------------------------
def test_check_backbone():
    check_backbone("resnet18")
    check_backbone(TINY)
    with pytest.raises(ValueError, match="resnet_does_not_exist") as e:
        check_backbone("resnet_does_not_exist")
    assert "timm.list_models()" in str(e.value)
    with pytest.raises(ValueError, match="Close matches") as e:
        check_backbone("resnet19")  # a typo close enough for difflib
    assert "'resnet18'" in str(e.value)


def _resnet18_file(tmp_path, suffix):
    import timm

    torch.manual_seed(123)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    sd = model.state_dict()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return sd, path


def _file_suffixes():
    out = [".pth"]
    try:
        import safetensors  # noqa: F401
        out.append(".safetensors")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("suffix", _file_suffixes())
def test_create_backbone_local_file_backbone(tmp_path, suffix):
    sd, path = _resnet18_file(tmp_path, suffix)
    model = create_backbone("resnet18", str(path), 10, "cls_ptq.backbones.resnet18.weights")
    assert not model.training
    got = model.state_dict()
    assert set(got) == set(sd)
    differ = [k for k in sd if not k.startswith("fc.") and not torch.equal(got[k], sd[k])]
    assert differ == []


@pytest.mark.parametrize("suffix", _file_suffixes())
def test_create_backbone_local_file_classifier(tmp_path, suffix):
    """The file's classifier is kept (timm would drop a head it believes is 1000-class)."""
    sd, path = _resnet18_file(tmp_path, suffix)
    got = create_backbone("resnet18", str(path), 10, "k").state_dict()
    assert torch.equal(got["fc.weight"], sd["fc.weight"]) and torch.equal(got["fc.bias"], sd["fc.bias"])


def test_create_backbone_errors(tmp_path):
    key = "cls_ptq.backbones.resnet18.weights"
    with pytest.raises(FileNotFoundError, match=key.replace(".", r"\.")) as e:
        create_backbone("resnet18", str(tmp_path / "missing.pth"), 10, key)
    assert "missing.pth" in str(e.value)
    with pytest.raises(ValueError, match="checkpoint"):
        create_backbone("resnet18", "train", 10, key)
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet_does_not_exist", "train", 10, key, tmp_path / "x.pt")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(RuntimeError, match=key.replace(".", r"\.")):
        create_backbone("resnet18", str(bad), 10, key)


def test_checkpoint_roundtrip(tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TINY, pretrained=False, num_classes=10)
    path = tmp_path / "fp.pt"
    save_checkpoint(model, TINY, path, num_classes=10, train_seed=7)
    ckpt = load_checkpoint(path, TINY)
    assert ckpt["arch"] == TINY and ckpt["num_classes"] == 10 and ckpt["train_seed"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v)
    loaded = create_backbone(TINY, "train", 10, "k", checkpoint=path)
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_checkpoint_errors(tmp_path):
    import timm

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(RuntimeError, match="delete it") as e:
        load_checkpoint(corrupt, TINY)
    assert "rerun" in str(e.value)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt", TINY)
    torch.save({"arch": TINY}, tmp_path / "nostate.pt")
    with pytest.raises(RuntimeError, match="no state_dict"):
        load_checkpoint(tmp_path / "nostate.pt", TINY)
    other = tmp_path / "other.pt"
    save_checkpoint(timm.create_model(TINY, pretrained=False, num_classes=10), TINY, other)
    with pytest.raises(RuntimeError, match="resnet18"):
        load_checkpoint(other, "resnet18")
    with pytest.raises(RuntimeError, match=TINY):
        create_backbone("resnet18", "train", 10, "k", checkpoint=other)


def test_data_config_override():
    import timm

    model = timm.create_model(TINY, pretrained=False)
    d = data_config(model, 48)
    assert d["input_size"] == (3, 48, 48)
    assert len(d["mean"]) == len(d["std"]) == 3


# -- config validation ----------------------------------------------------------------------
def test_embedded_config_is_valid():
    cfg = ClsPTQConfig.from_dict(_cls_section())
    assert cfg.bits == [(8, 8), (4, 4)]
    assert cfg.dqss.candidates == cfg.strategies  # null = all uniform strategies
    assert cfg.num_classes() == 10
    cfg2 = track_config(copy.deepcopy(CONFIG), "cls_ptq")
    assert list(cfg2.backbones) == list(CONFIG["cls_ptq"]["backbones"])


def test_unknown_strategy():
    with pytest.raises(ValueError, match="nosuch") as e:
        ClsPTQConfig.from_dict(_cls_section(strategies=["minmax", "nosuch"]))
    for name in strategy_names("ptq"):
        assert name in str(e.value)


def test_unknown_candidate():
    d = _cls_section()
    d["dqss"] = {**d["dqss"], "candidates": ["minmax", "bogus"]}
    with pytest.raises(ValueError, match="candidates.*bogus"):
        ClsPTQConfig.from_dict(d)


@pytest.mark.parametrize("w,a", [(9, 8), (8, 1), (1, 4), (4, 16)])
def test_bits_out_of_range(w, a):
    with pytest.raises(ValueError, match=r"2\.\.8"):
        ClsPTQConfig.from_dict(_cls_section(bits=[{"w": 8, "a": 8}, {"w": w, "a": a}]))


@pytest.mark.parametrize("section", ["dqss", "train", "calibration", "quant", "data"])
def test_unknown_option(section):
    d = _cls_section()
    d[section] = {**(d.get(section) or {}), "frobnicate": 1}
    with pytest.raises(ValueError, match=f"{section}.*frobnicate") as e:
        ClsPTQConfig.from_dict(d)
    assert "valid options" in str(e.value)
    some_valid = {"dqss": "iterations", "train": "epochs", "calibration": "size", "quant": "keep_fp",
                  "data": "input_size"}[section]
    assert some_valid in str(e.value)


def test_bad_strategy_options():
    d = _cls_section()
    d["strategy_options"] = {**d["strategy_options"], "percentile": {"percentile": 20}}
    with pytest.raises(ValueError, match="percentile"):
        ClsPTQConfig.from_dict(d)
    d["strategy_options"] = {"percentile": {"pct": 99.0}}
    with pytest.raises(ValueError, match="valid options"):
        ClsPTQConfig.from_dict(d)


def test_options_for_unknown_strategy():
    # rejected before any work, with the registered names
    d = _cls_section()
    d["strategy_options"] = {"nosuch": {}}
    with pytest.raises(ValueError, match="nosuch") as e:
        ClsPTQConfig.from_dict(d)
    assert "minmax" in str(e.value)


def test_bad_section_values():
    d = _cls_section()
    d["dqss"] = {**d["dqss"], "loss": "hinge"}
    with pytest.raises(ValueError, match="dqss.loss"):
        ClsPTQConfig.from_dict(d)
    d = _cls_section()
    d["data"] = {**d["data"], "name": "mnist"}
    with pytest.raises(ValueError, match="digits"):
        ClsPTQConfig.from_dict(d)


def test_track_config_errors(tmp_path):
    config = copy.deepcopy(CONFIG)
    config["cls_ptq"]["backbones"] = {"resnet18": {"weights": "train"}, "resnett18": {"weights": "train"}}
    with pytest.raises(ValueError, match="resnett18"):
        track_config(config, "cls_ptq")
    config = copy.deepcopy(CONFIG)
    root = tmp_path / "imagenet"
    config["cls_ptq"]["data"] = {"name": "imagefolder", "root": str(root)}
    with pytest.raises(ValueError, match=r"weights.*'train'.*digits"):
        track_config(config, "cls_ptq")
    config["cls_ptq"]["backbones"] = {"resnet18": {"weights": "timm"}}
    with pytest.raises(FileNotFoundError, match=r"cls_ptq\.data\.root: directory .*imagenet/train not found"):
        track_config(config, "cls_ptq")  # checked before any job runs
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    cfg = track_config(config, "cls_ptq")  # timm weights on ImageNet: valid, nothing loaded yet
    assert cfg.data.name == "imagefolder"
    with pytest.raises(ValueError, match="unknown track 'seg'"):
        track_config(config, "seg")
    del config["cls_ptq"]
    assert track_config(config, "cls_ptq") is None  # a config may run only some tracks


# -- a tiny real job chain (its tests are `slow`: the fast tier leaves the chain out) ----------
W, A = 4, 4
SEED = 0


def _chain_section() -> dict:
    d = _cls_section()
    d["backbones"] = {TINY: {"weights": "train"}}
    d["train"] = {**d["train"], "epochs": 1}
    d["calibration"] = {**d["calibration"], "size": 32, "samples": 4}
    d["strategies"] = ["minmax", "percentile"]
    d["dqss"] = {**d["dqss"], "iterations": 3, "batch_size": 8}
    d["bits"] = [{"w": W, "a": A}]
    return d


def _job_config(cfg):
    """The config a job of ``cfg``'s track builds from its rule's settings (dqss.workflow.job_settings)."""
    return lambda job: type(cfg).from_dict(job_settings(cfg, job, TINY), cfg.task, partial=True)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out = tmp_path_factory.mktemp("chain")
            cfg = ClsPTQConfig.from_dict(_chain_section())
            dev = torch.device("cpu")
            p = {k: out / v for k, v in dict(
                ckpt="fp.pt", history="train.csv", fp_metrics="fp/metrics.json", fp_logits="fp/logits.pt",
                stats="stats.pt", calib_list="calib.txt", assignment="dqss/assignment.yaml",
                dqss_metrics="dqss/metrics.json", dqss_history="dqss/history.csv", selection="dqss/selection.json",
                argmax_metrics="dqss_argmax/metrics.json", argmax_assignment="dqss_argmax/assignment.yaml").items()}
            for v in p.values():
                v.parent.mkdir(parents=True, exist_ok=True)
            job = _job_config(cfg)  # each job sees only its settings, as in the workflow
            run_train(job("train"), backbone=TINY, ckpt=p["ckpt"], history=p["history"], device=dev)
            run_evaluate_fp(job("evaluate_fp"), backbone=TINY, seed=cfg.train.seed, ckpt=p["ckpt"],
                            metrics=p["fp_metrics"], logits=p["fp_logits"], device=dev)
            run_calibrate(job("calibrate"), backbone=TINY, seed=SEED, ckpt=p["ckpt"], stats=p["stats"],
                          images=p["calib_list"], device=dev)
            uniform = {(m, W, A): str(out / "uniform" / m / "metrics.json") for m in cfg.strategies}
            run_uniform(job("uniform"), backbone=TINY, seed=SEED, ckpt=p["ckpt"], stats=p["stats"],
                        fp=p["fp_logits"], outputs=uniform, device=dev)
            run_dqss(job("dqss"), **_dqss_args(p, p), device=dev)
            yield cfg, out, p, uniform
        finally:
            torch.set_num_threads(n)


def _dqss_args(p, out):
    """run_dqss's keyword arguments: inputs from ``p``, outputs from ``out``."""
    return dict(backbone=TINY, seed=SEED, w=W, a=A, ckpt=p["ckpt"], stats=p["stats"], fp=p["fp_logits"],
                metrics=out["dqss_metrics"], assignment=out["assignment"], history=out["dqss_history"],
                selection=out["selection"], argmax_metrics=out["argmax_metrics"],
                argmax_assignment=out["argmax_assignment"])


def _check_metrics(path, method, w, a, seed):
    d = json.loads(Path(path).read_text())
    for k in ("task", "dataset", "backbone", "method", "w_bits", "a_bits", "seed", "metrics", "provenance"):
        assert k in d, k
    assert (d["task"], d["dataset"], d["backbone"], d["method"]) == ("cls_ptq", "digits", TINY, method)
    assert (d["w_bits"], d["a_bits"], d["seed"]) == (w, a, seed)
    m = d["metrics"]
    assert set(m) == {"top1", "agree_fp", "kl_fp"}
    assert 0.0 <= m["top1"] <= 100.0 and 0.0 <= m["agree_fp"] <= 100.0
    assert m["kl_fp"] >= -1e-9 and math.isfinite(m["kl_fp"])
    for k in ("torch", "timm", "config_hash", "device"):
        assert d["provenance"][k]
    return d


@pytest.mark.slow
def test_chain_files(chain):
    cfg, out, p, uniform = chain
    for v in list(p.values()) + [Path(u) for u in uniform.values()]:
        assert Path(v).is_file() and Path(v).stat().st_size > 0, v
    rows = list(csv.DictReader(p["history"].open()))
    assert [r["epoch"] for r in rows] == ["0"] and math.isfinite(float(rows[0]["loss"]))
    ckpt = load_checkpoint(p["ckpt"], TINY)
    assert ckpt["num_classes"] == 10 and ckpt["train_seed"] == cfg.train.seed
    hist = list(csv.DictReader(p["dqss_history"].open()))
    assert [int(r["step"]) for r in hist] == list(range(cfg.dqss.iterations))
    assert all(math.isfinite(float(r["loss"])) for r in hist)


@pytest.mark.slow
def test_chain_fp_metrics(chain):
    cfg, out, p, _ = chain
    d = _check_metrics(p["fp_metrics"], "fp32", 32, 32, cfg.train.seed)
    assert d["metrics"]["agree_fp"] == 100.0
    assert d["metrics"]["kl_fp"] == 0.0
    assert d["extra"]["n_test"] == round(N_DIGITS * cfg.data.test_fraction)
    assert d["metrics"]["top1"] > 20.0  # one epoch already learns something (chance = 10 %)
    logits = torch.load(p["fp_logits"], weights_only=True)
    assert logits["logits"].shape == (d["extra"]["n_test"], 10)


@pytest.mark.slow
def test_chain_uniform_and_dqss_metrics(chain):
    cfg, out, p, uniform = chain
    for (method, w, a), path in uniform.items():
        d = _check_metrics(path, method, w, a, SEED)
        assert d["settings"]["calib_size"] == str(cfg.calibration.size)
        assert "candidates" not in d["settings"]  # a uniform row has no search settings
    for method, key in (("dqss", "dqss_metrics"), ("dqss_argmax", "argmax_metrics")):
        d = _check_metrics(p[key], method, W, A, SEED)
        assert d["settings"]["candidates"] == "minmax+percentile"
        assert d["settings"]["iterations"] == "3"
        assert d["settings"]["select"] == ("argmax" if method == "dqss_argmax" else "measured")
        assert ("sweeps" in d["settings"]) == (method == "dqss")
        n = len(d["per_image"]["top1"])
        assert n == len(d["per_image"]["kl_fp"]) and n == round(N_DIGITS * cfg.data.test_fraction)
        assert abs(100.0 * sum(d["per_image"]["top1"]) / n - d["metrics"]["top1"]) < 1e-9


@pytest.mark.slow
def test_chain_calibration_list(chain):
    cfg, out, p, _ = chain
    lines = p["calib_list"].read_text().splitlines()
    assert len(lines) == len(set(lines)) == cfg.calibration.size
    prep = prepare(cfg, TINY, p["ckpt"])
    assert set(lines) <= set(prep.data.ids)
    assert lines == prep.data.calibration(cfg.calibration.size, SEED)[1]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["assignment", "argmax_assignment"])
def test_chain_assignment(chain, which):
    cfg, out, p, _ = chain
    asg = yaml.safe_load(p[which].read_text())
    assert asg["format"] == "dqss-assignment/1"
    assert (asg["backbone"], asg["w_bits"], asg["a_bits"], asg["seed"]) == (TINY, W, A, SEED)
    prep = prepare(cfg, TINY, p["ckpt"])
    ex = prep.data.test[0][0][None]
    plans = plan_layers(fold_batchnorm(prep.model, ex), cfg.quant, W, A, ex)
    assert [e["name"] for e in asg["layers"]] == list(plans)
    cands = set(cfg.dqss.candidates)
    for e in asg["layers"]:
        assert (e["w_bits"], e["a_bits"]) == (plans[e["name"]].w_spec.bits, plans[e["name"]].a_spec.bits)
        for role in ("weight", "act"):
            probs = e[f"{role}_probs"]
            assert set(probs) == cands
            assert e[role] in cands
            assert abs(sum(probs.values()) - 1.0) < 1e-4
            assert all(0.0 <= v <= 1.0 for v in probs.values())
            if which == "argmax_assignment":
                assert probs[e[role]] == max(probs.values())
    # both calibration parts saved: disjoint, together the calibration draw
    calib = p["calib_list"].read_text().splitlines()
    search, held = asg["calibration"]["search"], asg["calibration"]["held"]
    assert sorted(search + held) == sorted(calib) and not set(search) & set(held)
    assert len(held) == round(cfg.calibration.hold_fraction * cfg.calibration.size)
    # first and last layer at first_last_bits, the rest at W/A
    bits = [(e["w_bits"], e["a_bits"]) for e in asg["layers"]]
    assert bits[0] == bits[-1] == (8, 8) and set(bits[1:-1]) == {(W, A)}


@pytest.mark.slow
def test_chain_dqss_is_deterministic(chain, tmp_path):
    cfg, out, p, _ = chain
    again = {k: tmp_path / k for k in ("dqss_metrics", "assignment", "dqss_history", "selection", "argmax_metrics",
                                        "argmax_assignment")}
    run_dqss(cfg, **_dqss_args(p, again), device=torch.device("cpu"))
    for key in ("dqss_metrics", "argmax_metrics"):
        first = json.loads(p[key].read_text())
        second = json.loads(again[key].read_text())
        assert second["metrics"] == first["metrics"]
        assert second["extra"]["final_loss"] == first["extra"]["final_loss"]
    for key in ("assignment", "argmax_assignment", "dqss_history"):
        assert again[key].read_text() == p[key].read_text()
    first, second = (json.loads(f.read_text()) for f in (p["selection"], again["selection"]))
    first.pop("seconds"), second.pop("seconds"), first.pop("search_seconds"), second.pop("search_seconds")
    assert first == second


@pytest.mark.slow
def test_run_train_refuses_non_train_weights(chain, tmp_path):
    cfg, *_ = chain
    d = _chain_section()
    d["backbones"] = {TINY: {"weights": "timm"}}
    with pytest.raises(ValueError, match="nothing to train"):
        run_train(ClsPTQConfig.from_dict(d), backbone=TINY, ckpt=tmp_path / "x.pt", history=tmp_path / "h.csv",
                  device="cpu")


# -- inputs that must not give silent wrong numbers ------------------------------------------
def test_digits_reader_is_scikit_learns_load_digits():
    """The embedded digits are read from scikit-learn's file without importing it: the same arrays, bit for bit
    (values, dtypes, shapes), as ``load_digits``."""
    from sklearn.datasets import load_digits

    from dqss.cls.data import read_digits

    raw = load_digits()
    images, target = read_digits()
    assert images.dtype == raw.images.dtype and target.dtype == raw.target.dtype
    np.testing.assert_array_equal(images, raw.images)
    np.testing.assert_array_equal(target, raw.target)


def test_digits_size_constant_matches_scikit_learn():
    from sklearn.datasets import load_digits

    from dqss.cls.data import DIGITS_SIZE, train_size

    assert DIGITS_SIZE == len(load_digits().target)
    cfg = DataConfig(name="digits")
    assert train_size(cfg) == len(digits(cfg, IMAGENET_MEAN, IMAGENET_STD).train)


def test_corrupt_image_is_named_in_one_line(tmp_path, tiny_dcfg):
    root = _write_tree(tmp_path / "imagenet")
    bad = root / "val" / WNIDS[1] / "img2.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    data = load_classification(DataConfig(name="imagefolder", root=str(root)), tiny_dcfg)
    idx = next(i for i, (p, _) in enumerate(data.test.samples) if Path(p) == bad)
    with pytest.raises(ValueError) as e:
        data.test[idx]
    msg = str(e.value)
    assert str(bad) in msg and "corrupt" in msg and "\n" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no PIL traceback chained
    from torch.utils.data import DataLoader

    from dqss.cls.evaluate import predict

    with pytest.raises(ValueError) as e:  # from a worker process, as in evaluation with data.workers > 0
        predict(torch.nn.Flatten(), DataLoader(data.test, batch_size=4, num_workers=1), "cpu")
    assert str(bad) in str(e.value) and "corrupt" in str(e.value) and "\n" not in str(e.value)


def test_nan_weights_are_refused_when_loaded(tmp_path):
    sd, path = _resnet18_file(tmp_path, ".pth")
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    sd["fc.bias"][3] = float("inf")
    torch.save(sd, path)
    key = "cls_ptq.backbones.resnet18.weights"
    with pytest.raises(ValueError, match=r"NaN or inf in layer2\.0\.conv1\.weight, fc\.bias") as e:
        create_backbone("resnet18", str(path), 10, key)
    assert key in str(e.value) and str(path) in str(e.value)


def test_calibration_names_the_first_layer_with_a_non_finite_output():
    from torch import nn

    from dqss.core.stats import collect_act_stats

    class Blowup(nn.Module):
        def forward(self, x):
            return x * float("inf")

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Blowup(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    layers = {"0": model[0], "3": model[3]}
    with pytest.raises(FloatingPointError, match=r"comes from layer '2'"):
        collect_act_stats(model, layers, [torch.rand(2, 3, 8, 8)])
    with pytest.raises(FloatingPointError, match="input images themselves"):
        collect_act_stats(model, layers, [torch.full((2, 3, 8, 8), float("nan"))])


def test_missing_weight_file_message_names_the_backbone(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        create_backbone("resnet18", str(tmp_path / "nope.pth"), 10, "k")
    assert "for 'resnet18'" in str(e.value) and "{name}" not in str(e.value)


@pytest.mark.parametrize("seeds, message", [
    ([0, 1, 0], r"\[0\] listed more than once"), ([2 ** 64], "0..4294967295"), ([-1], "0..4294967295"),
    ([1.5], "integer"), ([True], "integer"), ([], "non-empty"), ("0", "non-empty list")])
def test_seeds_validated(seeds, message):
    from dqss.workflow import check_top_level

    with pytest.raises(ValueError, match=message):
        check_top_level({"seeds": seeds, "cls_ptq": {}})


def test_duplicates_and_seed_ranges_in_sections():
    d = _cls_section()
    d["bits"] = [{"w": 8, "a": 8}, {"w": 8, "a": 8}]
    with pytest.raises(ValueError, match=r"cls_ptq\.bits: W8A8 is listed twice"):
        ClsPTQConfig.from_dict(d)
    d = _cls_section(strategies=["minmax", "mse", "minmax"])
    with pytest.raises(ValueError, match=r"cls_ptq\.strategies: \['minmax'\] listed more than once"):
        ClsPTQConfig.from_dict(d)
    d = _cls_section()
    d["train"] = {**d["train"], "seed": 2 ** 32}
    with pytest.raises(ValueError, match=r"cls_ptq\.train\.seed must be an integer in 0\.\.4294967295"):
        ClsPTQConfig.from_dict(d)
    d = _cls_section()
    d["data"] = {**d["data"], "split_seed": -3}
    with pytest.raises(ValueError, match=r"cls_ptq\.data\.split_seed"):
        ClsPTQConfig.from_dict(d)


def test_dqss_needs_two_candidates():
    from dqss.tracks.cls_qat import ClsQATConfig

    q = copy.deepcopy(CONFIG["cls_qat"])
    q["strategies"] = ["lsq"]
    with pytest.raises(ValueError, match=r"cls_qat\.dqss\.candidates: DQSS needs at least two"):
        ClsQATConfig.from_dict(q)
    with pytest.raises(ValueError, match="at least two"):
        ClsPTQConfig.from_dict(_cls_section(dqss={"candidates": ["mse"]}))


def test_error_messages_name_the_full_key():
    with pytest.raises(ValueError, match=r"^cls_ptq\.dqss\.iterations"):
        ClsPTQConfig.from_dict(_cls_section(dqss={"iterations": 0}))
    with pytest.raises(ValueError, match=r"^cls_ptq\.train\.epochs"):
        ClsPTQConfig.from_dict(_cls_section(train={"epochs": 0}))


# -- job settings: what each rule passes, and what its job may read ---------------------------
def test_job_settings_are_a_projection():
    cfg = ClsPTQConfig.from_dict(_cls_section())
    s = job_settings(cfg, "dqss", "resnet18")
    assert set(s) == set(JOB_KEYS["cls_ptq"]["dqss"])
    assert s["backbones"] == {"resnet18": {"weights": "train"}}  # only the job's backbone
    assert s["dqss"]["candidates"] == cfg.strategies  # null resolved: no need for 'strategies'
    assert set(s["strategy_options"]) <= set(cfg.strategies)
    assert list(s["data"]) == sorted(s["data"])  # canonical: a reordered config reruns nothing
    calib = job_settings(cfg, "calibrate", "resnet18")
    assert "dqss" not in calib and "strategies" not in calib and "train" not in calib
    # a job given these settings runs; touching a key it was not given fails, naming the key
    job = ClsPTQConfig.from_dict(calib, partial=True)
    assert job.calibration.size == cfg.calibration.size and job.num_classes() == 10
    for read in (lambda: job.dqss.iterations, lambda: job.train.epochs, lambda: list(job.strategies)):
        with pytest.raises(KeyError, match=r"cls_ptq\.(dqss|train|strategies) is not among this job's settings"):
            read()
    with pytest.raises(ValueError, match=r"cls_ptq\.strategies is required"):
        ClsPTQConfig.from_dict({k: v for k, v in _cls_section().items() if k != "strategies"})


@pytest.mark.slow
def test_every_job_reads_only_its_settings(chain):
    """The chain fixture ran every job on a partial config (job_settings): had one read a key outside
    JOB_KEYS, it would have failed; and each result's config_hash is the hash of its job's settings."""
    from dqss.results import config_hash

    cfg, _, p, uniform = chain
    for job, path in (("evaluate_fp", p["fp_metrics"]), ("uniform", next(iter(uniform.values()))),
                      ("dqss", p["dqss_metrics"])):
        recorded = json.loads(Path(path).read_text())["provenance"]["config_hash"]
        assert recorded == config_hash(job_settings(cfg, job, TINY)), job
