"""The workflow: dry runs, lint, config errors before any job, and one real run end to end."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def snakemake(*args, cwd=ROOT, check=True):
    res = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/paper.yaml", "config/test.yaml"])
def test_dry_run(configfile, tmp_path):
    res = snakemake("-n", "--cores", "2", "--directory", str(tmp_path), "--configfile", str(ROOT / configfile))
    out = res.stdout + res.stderr
    assert "cls_dqss" in out and "cls_uniform" in out and "aggregate" in out
    assert "cls_qat_dqss" in out and "cls_qat_uniform" in out
    assert "sr_dqss" in out and "sr_uniform" in out and "sr_evaluate_fp" in out
    if configfile == "config/paper.yaml":  # official weights: one downloaded (checked by SHA-256), no training
        assert "sr_download_weights" in out and "sr_train" not in out


def test_dry_run_job_counts(tmp_path):
    """The embedded matrix: 3 backbones x 2 seeds x 2 bit widths of DQSS, one uniform job per backbone and seed."""
    res = snakemake("-n", "--cores", "2", "--directory", str(tmp_path), "--configfile",
                    str(ROOT / "config/config.yaml"))
    counts = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["cls_dqss"] == 12
    assert counts["cls_uniform"] == 6
    assert counts["cls_calibrate"] == 6
    assert counts["cls_train"] == 3
    # QAT: resnet20 x 2 seeds x (4 methods + dqss + dqss_nofix)
    assert counts["cls_qat_uniform"] == 8
    assert counts["cls_qat_dqss"] == 4
    assert counts["cls_qat_train"] == 1
    # SR: 2 backbones x 2 seeds x 2 bit widths of DQSS, one uniform and one calibration job per backbone and seed
    assert counts["sr_train"] == 2 and counts["sr_evaluate_fp"] == 2
    assert counts["sr_calibrate"] == 4 and counts["sr_uniform"] == 4 and counts["sr_dqss"] == 8


def test_dry_run_single_track(tmp_path):
    """A config may hold only some tracks."""
    cfg = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    del cfg["cls_ptq"], cfg["sr_ptq"]
    path = tmp_path / "qat_only.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(path))
    out = res.stdout + res.stderr
    assert "cls_qat_dqss" in out and "cls_dqss" not in out.replace("cls_qat_dqss", "") and "sr_dqss" not in out


def test_dry_run_sr_only(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    del cfg["cls_ptq"], cfg["cls_qat"]
    path = tmp_path / "sr_only.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(path)).stdout
    assert "sr_dqss" in out and "cls_" not in out


def test_lint():
    res = snakemake("--lint", check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Congratulations" in res.stdout + res.stderr


def _bad_config(tmp_path, edit):
    cfg = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["cls_ptq"]["backbones"].update({"resnet_nonexistent": {"weights": "train"}}), "unknown backbone"),
    (lambda c: c["cls_ptq"]["strategies"].append("nope"), "registered PTQ strategies"),
    (lambda c: c["cls_ptq"]["bits"].append({"w": 9, "a": 8}), "maximum"),
    (lambda c: c["cls_ptq"]["dqss"].update({"lossy": 1}), "lossy"),
    (lambda c: c["cls_qat"]["strategies"].append("minmax"), "registered QAT strategies"),
    (lambda c: c["cls_qat"]["dqss"].update({"search_fraction": 0}), "search_fraction"),
    (lambda c: c["cls_qat"]["backbones"].update({"resnet21": {"weights": "train"}}), "unknown backbone"),
    (lambda c: c["cls_ptq"]["strategy_options"].update({"percentile": {"percentile": 20}})
     if c["cls_ptq"].get("strategy_options") else c["cls_ptq"].update(
        {"strategy_options": {"percentile": {"percentile": 20}}}), "percentile must lie"),
    (lambda c: c["sr_ptq"]["backbones"].update({"edsr_x9": {"weights": "train"}}), "not supported"),
    (lambda c: c["sr_ptq"]["backbones"].update({"vdsr_x2": {"weights": "train"}}), "unknown SR backbone"),
    (lambda c: c["sr_ptq"]["bits"].append({"w": 8, "a": 1}), "minimum"),
    (lambda c: c["sr_ptq"]["strategies"].append("lsq"), "registered PTQ strategies"),
    (lambda c: c["sr_ptq"]["quant"].update({"high_precision": ["neck"]}) if c["sr_ptq"].get("quant")
     else c["sr_ptq"].update({"quant": {"high_precision": ["neck"]}}), "neck"),
    (lambda c: c["sr_ptq"]["backbones"]["edsr_tiny_x2"].update({"weights": {"url": "https://x/y.pth",
                                                                           "sha256": "zz"}}), "sha256"),
])
def test_bad_config_fails_before_any_job(tmp_path, edit, message):
    path = _bad_config(tmp_path, edit)
    res = snakemake("-n", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(path), check=False)
    assert res.returncode != 0
    assert message in res.stdout + res.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_end_to_end(tmp_path):
    """A real run of the tiny config: every job, the CSV contract, the report, and an idempotent rerun."""
    work = tmp_path / "run"
    work.mkdir()
    args = ["--cores", "2", "--directory", str(work), "--configfile", str(ROOT / "config/test.yaml")]
    snakemake(*args)
    df = pd.read_csv(work / "results/metrics.csv")
    for col in ["task", "dataset", "backbone", "method", "w_bits", "a_bits", "seed", "metric", "value",
                "delta_fp", "torch", "timm", "basicsr", "git_rev", "device", "config_hash"]:
        assert col in df.columns, col
    assert set(df.task) == {"cls_ptq", "cls_qat", "sr_ptq"}
    sr = df[df.task == "sr_ptq"]
    assert set(sr.metric) == {"psnr", "ssim"} and set(df[df.task != "sr_ptq"].metric) == {"top1", "agree_fp", "kl_fp"}
    assert set(sr.dataset) == {"tiny", "grey"} and set(sr.backbone) == {"edsr_tiny_x2"}
    assert set(sr.method) == {"fp32", "bicubic", "minmax", "mse", "dqss"}
    psnr = sr[sr.metric == "psnr"]
    assert (psnr.value > 15).all() and (sr[sr.metric == "ssim"].value <= 1).all()
    fp_psnr = psnr[psnr.method == "fp32"].set_index("dataset")["value"]
    for r in psnr.itertuples():
        assert r.delta_fp == pytest.approx(r.value - fp_psnr[r.dataset])
    assert (work / "results/report/tables/sr_ptq_edsr_tiny_x2_w4a4.tex").is_file()
    assert (work / "results/report/figures/sr_ptq_edsr_tiny_x2_crops.png").is_file()
    assert (work / "results/report/figures/assign_sr_ptq_edsr_tiny_x2.png").is_file()
    assert "sr_ptq_edsr_tiny_x2_w4a4" in (work / "results/report/report.md").read_text()
    df = df[df.task != "sr_ptq"]
    qat = df[df.task == "cls_qat"]
    assert set(qat.method) == {"fp32", "lsq", "pact", "dqss", "dqss_nofix"}
    assert set(qat.backbone) == {"resnet20"}
    df = df[df.task == "cls_ptq"]
    assert set(df.method) == {"fp32", "minmax", "mse", "dqss"}
    fp = df[(df.method == "fp32")].set_index("metric")["value"]
    assert fp["agree_fp"] == 100.0 and fp["kl_fp"] == 0.0
    q = df[df.method != "fp32"]
    assert (q.w_bits == 4).all() and (q.a_bits == 4).all()
    assert q[q.metric == "top1"]["value"].between(0, 100).all()
    top1 = df[df.metric == "top1"].set_index("method")
    assert (top1["delta_fp"] == top1["value"] - top1.loc["fp32", "value"]).all()

    # QAT: training curves per method, the fix froze half-way, the assignment came from the search
    qdir = work / "results/cls_qat/digits/resnet20"
    curve = pd.read_csv(qdir / "dqss/w4a4/seed0/train.csv")
    assert list(curve.phase) == ["search", "fixed"]
    assert list(pd.read_csv(qdir / "dqss_nofix/w4a4/seed0/train.csv").phase) == ["search", "search"]
    assert curve["test_top1"].between(0, 100).all()
    qassign = yaml.safe_load((qdir / "dqss/w4a4/seed0/assignment.yaml").read_text())
    assert qassign["method"] == "dqss" and qassign["frozen_at_step"] > 0
    assert {e["act"] for e in qassign["layers"]} <= {"lsq", "pact"}

    report = (work / "results/report/report.md").read_text()
    assert "cls_ptq" in report and "cls_qat" in report
    assert (work / "results/report/figures/cls_qat_training_curves.png").is_file()
    assign = yaml.safe_load(next(work.glob("results/cls_ptq/digits/test_resnet/dqss/w4a4/seed0/assignment.yaml"))
                            .read_text())
    assert {e["weight"] for e in assign["layers"]} <= {"minmax", "mse"}
    assert any((work / "results/report/figures").glob("assign_*test_resnet*.png"))

    # nothing to redo on a rerun; after an interruption (a job's result and the aggregate
    # missing) only that job and the aggregation run again
    res = snakemake(*args, "-n")
    assert "Nothing to be done" in res.stdout + res.stderr
    victim = work / "results/cls_ptq/digits/test_resnet/dqss/w4a4/seed0/metrics.json"
    before = victim.read_text()
    victim.unlink()
    (work / "results/metrics.csv").unlink()
    res = snakemake(*args, "-n")
    jobs = res.stdout
    assert "cls_dqss" in jobs and "cls_uniform" not in jobs and "cls_train" not in jobs
    snakemake(*args)
    # determinism: the recomputed DQSS result equals the first one up to provenance
    import json

    a, b = json.loads(before), json.loads(victim.read_text())
    assert a["metrics"] == b["metrics"]
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
