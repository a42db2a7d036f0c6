"""SR PTQ track: config checks, the high-precision parts, every strategy on tiny SR nets, and the
job chain (train -> FP/bicubic -> calibrate -> uniform -> DQSS) on a tiny embedded split."""
from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dqss.core.layers import fold_batchnorm
from dqss.core.mixed import mixed_layers
from dqss.algorithms.ptq import quantize_mixed, quantize_uniform
from dqss.algorithms.search import SearchConfig, search
from dqss.sr.models import build_sr, parse_backbone
from dqss.tracks.sr_ptq import (SRPTQConfig, SRQuantPolicy, calibration_crops, run_calibrate, run_dqss, run_evaluate_fp,
                         run_train, run_uniform)
from dqss.core.stats import collect_act_stats
from dqss.core.strategy import get_strategy, strategy_names
from dqss.workflow import job_settings

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]
BB = "edsr_tiny_x2"
W, A = 4, 4


def _section() -> dict:
    d = copy.deepcopy(yaml.safe_load((ROOT / "config/test.yaml").read_text())["sr_ptq"])
    d["backbones"] = {BB: {"weights": "train"}}
    return d


# -- config ---------------------------------------------------------------------------------
def test_shipped_sr_sections_are_valid():
    for name in ("config.yaml", "paper.yaml", "test.yaml"):
        cfg = SRPTQConfig.from_dict(yaml.safe_load((ROOT / "config" / name).read_text())["sr_ptq"])
        assert cfg.dqss.loss == "l1"
        assert cfg.quant.high_precision == ["head", "upsampler", "tail"]
        assert all(cfg.scale(b) in (2, 4) for b in cfg.backbones)


def test_paper_config_covers_the_issue_backbones():
    cfg = SRPTQConfig.from_dict(yaml.safe_load((ROOT / "config/paper.yaml").read_text())["sr_ptq"])
    archs = {(parse_backbone(b).preset.arch, cfg.scale(b)) for b in cfg.backbones}
    for arch in ("EDSR", "RCAN", "SwinIR", "MSRResNet"):
        assert {(arch, 2), (arch, 4)} <= archs, arch
    assert cfg.data.test_set_names() == ["Set5", "Set14", "B100", "Urban100"]
    assert parse_backbone("edsr_baseline_x2").options["num_feat"] == 64
    assert cfg.weight_source("swinir_light_x2") == "url"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["backbones"].update({"edsr_huge_x2": {}}), "unknown SR backbone"),
    (lambda d: d["backbones"].update({"edsr_tiny_x7": {}}), "not supported"),
    (lambda d: d["backbones"].update({"edsr_tiny_x4": {"weights": {"url": "http://x/y.pth"}}}), "sha256"),
    (lambda d: d["backbones"].update({"edsr_tiny_x4": {"weights": "train", "options": {"upscale": 2}}}),
     "contradicts"),
    (lambda d: d.update({"quant": {"high_precision": ["body"]}}), r"sr_ptq\.quant\.high_precision: unknown \['body'\]"),
    (lambda d: d.update({"quant": {"high_precision_bits": 12}}), "high_precision_bits"),
    (lambda d: d.update({"dqss": {"loss": "kl"}}), "needs class logits"),
    (lambda d: d.update({"strategies": ["lsq"]}), "registered PTQ strategies"),
    (lambda d: d.update({"bits": [{"w": 1, "a": 8}]}), "out of range"),
    (lambda d: d.update({"eval": {"crop_set": "Set5"}}), "not a test set"),
    (lambda d: d.update({"train": {"iterations": 0}}), "sr_ptq.train"),
    (lambda d: d.update({"calibration": {"images": 0}}), "calibration.images"),
    (lambda d: d["data"].update({"name": "folders"}), "sr_ptq.data.train.hr"),
    (lambda d: d["data"].update({"test_sets": {"a": ["skimage/camera.png"]}}), "both training and test"),
])
def test_bad_sr_config(edit, message):
    d = _section()
    edit(d)
    with pytest.raises((ValueError, KeyError), match=message):
        SRPTQConfig.from_dict(d)


def test_train_weights_need_embedded_data(tmp_path):
    d = _section()
    d["data"] = {"name": "folders", "train": {"hr": str(tmp_path)}, "test_sets": {"Set5": {"hr": str(tmp_path)}}}
    with pytest.raises(ValueError, match="only available on the embedded data"):
        SRPTQConfig.from_dict(d)


def test_per_backbone_train_overrides():
    d = _section()
    d["backbones"][BB]["train"] = {"iterations": 7}
    cfg = SRPTQConfig.from_dict(d)
    assert cfg.train_for(BB).iterations == 7 and cfg.train_for(BB).patch == cfg.train.patch


# -- what gets quantized --------------------------------------------------------------------
def _plans(name, policy, w=4, a=4):
    net = build_sr(parse_backbone(name))
    ex = torch.rand(1, 3, 16, 16)
    return net, policy.layer_plans(net, w, a, ex), ex


@pytest.mark.parametrize("name", ["edsr_tiny_x2", "rcan_tiny_x4", "swinir_tiny_x2", "msrresnet_tiny_x4"])
def test_high_precision_parts_stay_in_fp(name):
    net, plans, _ = _plans(name, SRQuantPolicy())
    assert plans, name
    for part in ("net.conv_first", "net.conv_last", "net.upsample.0", "net.upconv1", "net.conv_hr"):
        assert part not in plans
    everything = SRQuantPolicy(high_precision=[]).layer_plans(net, 4, 4, torch.rand(1, 3, 16, 16))
    assert "net.conv_first" in everything and len(everything) > len(plans)
    assert {(p.w_spec.bits, p.a_spec.bits) for p in plans.values()} == {(4, 4)}


def test_high_precision_bits_moves_the_parts_to_that_width():
    _, plans, _ = _plans("edsr_tiny_x2", SRQuantPolicy(high_precision=["head", "tail"], high_precision_bits=8))
    assert (plans["net.conv_first"].w_spec.bits, plans["net.conv_first"].a_spec.bits) == (8, 8)
    assert plans["net.conv_last"].w_spec.bits == 8
    assert plans["net.upsample.0"].w_spec.bits == 4  # not a listed part: quantized like the body
    assert plans["net.body.0.conv1"].w_spec.bits == 4


def test_swinir_linear_layers_are_quantized():
    _, plans, _ = _plans("swinir_tiny_x2", SRQuantPolicy())
    linear = [n for n in plans if n.endswith((".qkv", ".proj", ".fc1", ".fc2"))]
    assert len(linear) == 2 * 2 * 4  # 2 RSTBs x depth 2 x (qkv, proj, fc1, fc2)


@pytest.mark.parametrize("name", ["edsr_tiny_x2", "swinir_tiny_x2"])
def test_every_strategy_uniform_and_mixed_on_sr_nets(name):
    torch.manual_seed(0)
    net, plans, ex = _plans(name, SRQuantPolicy())
    x = torch.rand(6, 3, 12, 20)  # not a multiple of SwinIR's window
    folded = fold_batchnorm(net, ex)
    stats = collect_act_stats(folded, {n: folded.get_submodule(n) for n in plans}, [x], n_samples=2)
    with torch.no_grad():
        ref = folded(x)
    for s in strategy_names("ptq"):
        q = quantize_uniform(folded, plans, stats, get_strategy(s))
        with torch.no_grad():
            out = q(x)
        assert out.shape == ref.shape and torch.isfinite(out).all(), s
        assert not torch.equal(out, ref), f"{s} quantized nothing"
        assert (out - ref).abs().mean() < 0.2 * ref.abs().mean(), s
    strategies = {s: get_strategy(s) for s in ("minmax", "mse", "aciq")}
    eff = quantize_mixed(folded, plans, stats, strategies, "efficient")
    naive = quantize_mixed(folded, plans, stats, strategies, "naive")
    for m in (eff, naive):  # the same random logits in both
        g = torch.Generator().manual_seed(1)
        for layer in mixed_layers(m).values():
            for q in (layer.weight_quant, layer.act_quant):
                q.logits.data.copy_(torch.randn(q.logits.shape, generator=g))
    # layer by layer, on the same inputs: through the whole network a float difference of 1e-7 between the
    # two (equal) forms can flip a rounding in a later quantizer, a jump of one step that says nothing about them
    inputs = {}
    naive_layers, eff_layers = mixed_layers(naive), mixed_layers(eff)
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: inputs.__setitem__(n, a[0]))
             for n, m in naive_layers.items()]
    with torch.no_grad():
        naive(x)
    for h in hooks:
        h.remove()
    assert set(inputs) == set(naive_layers) == set(eff_layers)
    with torch.no_grad():
        for n, xin in inputs.items():
            torch.testing.assert_close(eff_layers[n](xin), naive_layers[n](xin), rtol=1e-4, atol=1e-4,
                                       msg=lambda m, n=n: f"{n}: {m}")


def test_sr_search_moves_only_logits_and_lowers_l1():
    torch.manual_seed(0)
    net, plans, ex = _plans("edsr_tiny_x2", SRQuantPolicy(), w=3, a=3)
    x = torch.rand(16, 3, 12, 12)
    stats = collect_act_stats(net, {n: net.get_submodule(n) for n in plans}, [x])
    with torch.no_grad():
        teacher = net(x)
    q = quantize_mixed(net, plans, stats, {s: get_strategy(s) for s in ("minmax", "percentile", "aciq")})
    frozen = {n: p.detach().clone() for n, p in q.named_parameters() if not n.endswith("logits")}
    hist = search(q, x, teacher, SearchConfig(iterations=25, batch_size=8, lr=0.1, loss="l1"), 0, "cpu")
    assert np.mean([h["loss"] for h in hist[-5:]]) < np.mean([h["loss"] for h in hist[:5]])
    for n, p in q.named_parameters():
        if not n.endswith("logits"):
            assert torch.equal(p, frozen[n]), n


# -- the job chain (its tests are `slow`: the fast tier leaves the chain out) ------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    out = tmp_path_factory.mktemp("sr_chain")
    cfg = SRPTQConfig.from_dict(_section())
    dev = torch.device("cpu")
    p = {k: out / v for k, v in dict(
        ckpt="fp32/model.pt", history="fp32/train.csv", fp="fp32/metrics.json", bicubic="bicubic/metrics.json",
        gt_crop="fp32/crop_gt.png", fp_crop="fp32/crop.png", bicubic_crop="bicubic/crop.png",
        stats="calib/stats.pt", crops="calib/crops.txt", dqss="dqss/metrics.json",
        assignment="dqss/assignment.yaml", search="dqss/search.csv", dqss_crop="dqss/crop.png",
        selection="dqss/selection.json", argmax="dqss_argmax/metrics.json",
        argmax_assignment="dqss_argmax/assignment.yaml", argmax_crop="dqss_argmax/crop.png").items()}
    for v in p.values():
        v.parent.mkdir(parents=True, exist_ok=True)
    def job(name):  # each job sees only its settings, as in the workflow
        return SRPTQConfig.from_dict(job_settings(cfg, name, BB), partial=True)

    run_train(job("train"), backbone=BB, ckpt=p["ckpt"], history=p["history"], device=dev)
    run_evaluate_fp(job("evaluate_fp"), backbone=BB, seed=cfg.train.seed, ckpt=p["ckpt"], fp=p["fp"],
                    bicubic=p["bicubic"], gt_crop=p["gt_crop"], fp_crop=p["fp_crop"], bicubic_crop=p["bicubic_crop"],
                    device=dev)
    run_calibrate(job("calibrate"), backbone=BB, seed=0, ckpt=p["ckpt"], stats=p["stats"], crops=p["crops"],
                  device=dev)
    uniform = {(m, W, A): (str(out / m / "metrics.json"), str(out / m / "crop.png")) for m in cfg.strategies}
    run_uniform(job("uniform"), backbone=BB, seed=0, ckpt=p["ckpt"], stats=p["stats"], outputs=uniform, device=dev)
    run_dqss(job("dqss"), **_dqss_args(p, p), device=dev)
    return cfg, out, p, uniform


def _dqss_args(p, out, crops=None):
    """run_dqss's keyword arguments: inputs from ``p`` (``crops`` replaces its crop list), outputs from ``out``."""
    return dict(backbone=BB, seed=0, w=W, a=A, ckpt=p["ckpt"], stats=p["stats"], crops=crops or p["crops"],
                metrics=out["dqss"], assignment=out["assignment"], history=out["search"], selection=out["selection"],
                crop=out["dqss_crop"], argmax_metrics=out["argmax"], argmax_assignment=out["argmax_assignment"],
                argmax_crop=out["argmax_crop"])


def _results(path):
    d = json.loads(Path(path).read_text())
    assert d["task"] == "sr_ptq" and d["backbone"] == BB and d["extra"]["scale"] == 2
    return d, {r["dataset"]: r["metrics"] for r in d["results"]}


@pytest.mark.slow
def test_chain_metrics(chain):
    cfg, out, p, uniform = chain
    _, fp = _results(p["fp"])
    _, bic = _results(p["bicubic"])
    assert set(fp) == set(bic) == {"tiny", "grey"}
    for ds in fp:
        assert set(fp[ds]) == {"psnr", "ssim"}
        assert 15 < bic[ds]["psnr"] < 45 and 0 < bic[ds]["ssim"] <= 1
        assert fp[ds]["psnr"] != bic[ds]["psnr"]
    for (m, w, a), (metrics, crop) in uniform.items():
        d, res = _results(metrics)
        assert (d["method"], d["w_bits"], d["a_bits"], d["seed"]) == (m, w, a, 0)
        assert all(math.isfinite(v["psnr"]) and 0 < v["ssim"] <= 1 for v in res.values())
    for key, method in (("dqss", "dqss"), ("argmax", "dqss_argmax")):
        d, res = _results(p[key])
        assert d["method"] == method and d["settings"]["loss"] == "l1"
        assert d["settings"]["candidates"] == "+".join(cfg.strategies)
        assert d["settings"]["high_precision"] == "+".join(cfg.quant.high_precision)
        assert d["extra"]["selection_objective"] == "mse_y"
        for r in d["results"]:  # per-image values behind each mean (the significance tests)
            assert len(r["per_image"]["psnr"]) == r["n_images"]
            assert abs(np.mean(r["per_image"]["psnr"]) - r["metrics"]["psnr"]) < 1e-6


@pytest.mark.slow
def test_chain_crops_are_the_same_window(chain):
    import cv2

    _, out, p, uniform = chain
    shapes = {cv2.imread(str(f)).shape for f in [p["gt_crop"], p["fp_crop"], p["bicubic_crop"], p["dqss_crop"],
                                                  p["argmax_crop"],
                                                  *(c for _, c in uniform.values())]}
    assert shapes == {(32, 32, 3)}
    gt, bic = cv2.imread(str(p["gt_crop"])), cv2.imread(str(p["bicubic_crop"]))
    assert 15 < 10 * math.log10(255 ** 2 / max(((gt.astype(float) - bic) ** 2).mean(), 1e-9)) < 60


@pytest.mark.slow
def test_chain_calibration_uses_training_images_only(chain):
    cfg, out, p, _ = chain
    lines = p["crops"].read_text().splitlines()
    assert len(lines) == cfg.calibration.size
    names = {ln.rsplit(" ", 2)[0] for ln in lines}
    assert names <= set(cfg.data.train)
    assert lines == calibration_crops(cfg, BB, 0)[1]
    assert lines != calibration_crops(cfg, BB, 1)[1]


@pytest.mark.slow
def test_chain_assignment_and_history(chain):
    cfg, out, p, _ = chain
    asg = yaml.safe_load(p["assignment"].read_text())
    assert (asg["task"], asg["backbone"], asg["w_bits"], asg["a_bits"]) == ("sr_ptq", BB, W, A)
    assert all(e["weight"] in cfg.strategies and e["act"] in cfg.strategies for e in asg["layers"])
    assert not any(e["name"] in ("net.conv_first", "net.conv_last", "net.upsample.0") for e in asg["layers"])
    rows = list(csv.DictReader(p["search"].open()))
    assert len(rows) == cfg.dqss.iterations and all(math.isfinite(float(r["loss"])) for r in rows)
    hist = list(csv.DictReader(p["history"].open()))
    assert hist and int(hist[-1]["iteration"]) == cfg.train.iterations


@pytest.mark.slow
def test_chain_dqss_is_deterministic(chain, tmp_path):
    cfg, out, p, _ = chain
    f = {k: tmp_path / k for k in ("dqss", "assignment", "search", "selection", "dqss_crop", "argmax",
                                    "argmax_assignment", "argmax_crop")}
    run_dqss(cfg, **_dqss_args(p, f), device="cpu")
    def by_set(path):  # the job's settings list the test sets in sorted order, the full config in its own
        return {r["dataset"]: r for r in json.loads(path.read_text())["results"]}

    for key in ("dqss", "argmax"):
        assert by_set(f[key]) == by_set(p[key])
    for key in ("assignment", "argmax_assignment"):
        assert f[key].read_text() == p[key].read_text()
    for key in ("dqss_crop", "argmax_crop"):
        assert f[key].read_bytes() == p[key].read_bytes()


@pytest.mark.slow
def test_changed_calibration_images_are_detected(chain, tmp_path):
    cfg, out, p, _ = chain
    bad = tmp_path / "crops.txt"
    bad.write_text("skimage/camera.png 0 0\n" * cfg.calibration.size)
    with pytest.raises(RuntimeError, match="calibration crops"):
        run_dqss(cfg, **_dqss_args(p, {k: tmp_path / k for k in ("dqss", "assignment", "search", "selection",
                                                                   "dqss_crop", "argmax", "argmax_assignment",
                                                                   "argmax_crop")}, crops=bad), device="cpu")


@pytest.mark.slow
def test_corrupt_checkpoint_names_the_fix(chain, tmp_path):
    cfg, *_ = chain
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt"):
        run_calibrate(cfg, backbone=BB, seed=0, ckpt=bad, stats=tmp_path / "s.pt", crops=tmp_path / "c.txt",
                      device="cpu")
    assert not (tmp_path / "s.pt").exists()
