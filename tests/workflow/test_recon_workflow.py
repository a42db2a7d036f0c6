"""The reconstruction target end to end on the tiny config: every method's job in both PTQ tracks, dqss_recon
with them as candidates, and the reconstruction report; its config is checked and projected per job."""
import copy
import math
import shutil

import pandas as pd
import pytest
import yaml

from dqss.algorithms.recon import load_reconstruction
from dqss.results import DQSS_RECON
from dqss.workflow import job_settings, track_config
from helpers import ROOT, job_counts, snakemake

METHODS = ["adaround", "brecq", "qdrop"]
CONFIG = yaml.safe_load((ROOT / "config/test.yaml").read_text())


@pytest.fixture(scope="module")
def recon_run(tiny_run, tmp_path_factory):
    """The tiny run copied (the shared one stays as it is), then the reconstruction target run in the copy."""
    work, _ = tiny_run
    run = tmp_path_factory.mktemp("recon") / "run"
    shutil.copytree(work, run, symlinks=True)
    args = ["reconstruction", "--cores", "2", "--directory", str(run), "--configfile", str(ROOT / "config/test.yaml")]
    plan = snakemake("-n", *args)  # what the target would run (a dry run prints its job table on stdout)
    snakemake(*args)
    return run, plan


@pytest.mark.slow
def test_reconstruction_target_runs_only_its_jobs(recon_run):
    _, res = recon_run
    assert job_counts(res) == {"cls_reconstruct": 3, "sr_reconstruct": 3, "cls_dqss_recon": 1, "sr_dqss_recon": 1,
                               "reconstruction_aggregate": 1, "reconstruction_report": 1, "reconstruction": 1}


@pytest.mark.slow
def test_reconstruction_rows_beside_the_default_rows(recon_run):
    run, _ = recon_run
    recon = pd.read_csv(run / "results/reconstruction/metrics.csv")
    default = pd.read_csv(run / "results/metrics.csv")
    for task, metric in (("cls_ptq", "top1"), ("sr_ptq", "psnr")):
        for m in [*METHODS, DQSS_RECON]:
            v = recon[(recon.task == task) & (recon.method == m) & (recon.metric == metric)]["value"]
            assert len(v) >= 1 and all(math.isfinite(x) for x in v), (task, m)
    # the default rows are the default target's, unchanged
    keys = ["task", "dataset", "backbone", "method", "w_bits", "a_bits", "seed", "metric"]
    same = recon.merge(default, on=keys, suffixes=("", "_default"))
    assert len(same) == len(default)
    assert (same["value"] == same["value_default"]).all()
    report = (run / "results/reconstruction/report/report.md").read_text()
    assert all(m in report for m in [*METHODS, DQSS_RECON])


@pytest.mark.slow
def test_reconstruction_files_and_dqss_recon_candidates(recon_run):
    run, _ = recon_run
    cls = run / "results/cls_ptq/digits/test_resnet"
    for m in METHODS:
        state = load_reconstruction(cls / m / "w4a4/seed0/reconstruction.pt")
        assert state["method"] == m and state["layers"]
        for e in state["layers"].values():
            codes = e["w_codes"]
            bits = e["w_bits"]
            assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
        assert pd.read_csv(cls / m / "w4a4/seed0/reconstruction.csv")["loss"].notna().all()
    assignment = yaml.safe_load((cls / DQSS_RECON / "w4a4/seed0/assignment.yaml").read_text())
    assert set(METHODS) <= set(assignment["candidates"])
    assert (cls / DQSS_RECON / "w4a4/seed0/selection.json").is_file()
    assert (run / "results/sr_ptq/embedded/edsr_tiny_x2/qdrop/w4a4/seed0/crop.png").is_file()


# -- config ------------------------------------------------------------------------------------------------
def _with(track, **section):
    cfg = copy.deepcopy(CONFIG)
    cfg[track]["reconstruction"] = {**cfg[track]["reconstruction"], **section}
    return cfg


@pytest.mark.parametrize("section,match", [
    ({"methods": ["nosuch"]}, "unknown reconstruction method 'nosuch'"),
    ({"act_strategy": "lsq"}, "act_strategy: 'lsq' is not a registered PTQ range strategy"),
    ({"weight_init": "nosuch"}, "weight_init"),
    ({"iterations": 0}, "iterations"),
    ({"drop_prob": 1.0}, "drop_prob"),
])
def test_bad_reconstruction_config(section, match):
    with pytest.raises(ValueError, match=match):
        track_config(_with("cls_ptq", **section), "cls_ptq")


def test_a_method_named_like_a_strategy_is_refused(monkeypatch):
    from dqss.core.strategy import STRATEGIES, load_baselines

    load_baselines()
    monkeypatch.setitem(STRATEGIES, "adaround", STRATEGIES["minmax"])  # a range strategy of the same name
    cfg = _with("sr_ptq", methods=["adaround"])
    cfg["sr_ptq"]["strategies"] = ["minmax", "adaround"]
    with pytest.raises(ValueError, match="also a range strategy of this track; rename one"):
        track_config(cfg, "sr_ptq")


def test_job_settings_of_a_method_name_only_itself():
    """Adding a method reruns nothing already reconstructed; dqss_recon reads them all."""
    cfg = track_config(CONFIG, "cls_ptq")
    fewer = track_config(_with("cls_ptq", methods=["adaround"]), "cls_ptq")
    one = job_settings(cfg, "reconstruct", "test_resnet", "adaround")
    assert one == job_settings(fewer, "reconstruct", "test_resnet", "adaround")
    assert one["reconstruction"]["methods"] == ["adaround"]
    assert set(one["strategy_options"]) <= {"mse"}
    assert job_settings(cfg, "dqss_recon", "test_resnet") != job_settings(fewer, "dqss_recon", "test_resnet")
    # the default target's jobs do not read the section at all
    assert job_settings(cfg, "dqss", "test_resnet") == job_settings(fewer, "dqss", "test_resnet")


def test_run_job_passes_one_file_as_a_path_and_several_as_a_list(monkeypatch):
    """dqss_recon's named input holds one reconstruction per method: the job must get all of them."""
    from snakemake.iocontainers import InputFiles, OutputFiles, Params, Wildcards

    import dqss.workflow as wf

    cfg = track_config(CONFIG, "cls_ptq")
    inputs = InputFiles(["ckpt.pt", "a.pt", "b.pt", "c.pt"])
    inputs._set_name("ckpt", 0)
    inputs._set_name("recon", 1, 4)
    outputs = OutputFiles(["m.json"])
    outputs._set_name("metrics", 0)
    params = Params([], fromdict={"track": "cls_ptq", "settings": job_settings(cfg, "dqss_recon", "test_resnet")})
    wildcards = Wildcards(fromdict={"backbone": "test_resnet", "w": "4", "a": "4", "seed": "0"})
    smk = type("Smk", (), {"input": inputs, "output": outputs, "params": params, "wildcards": wildcards})()
    monkeypatch.setattr(wf, "setup", lambda s: "cpu")
    got = {}
    wf.run_job(smk, lambda cfg, **kw: got.update(kw))
    assert got["ckpt"] == "ckpt.pt" and got["recon"] == ["a.pt", "b.pt", "c.pt"] and got["metrics"] == "m.json"
    assert (got["w"], got["seed"], got["device"]) == (4, 0, "cpu")
