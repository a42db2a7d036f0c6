"""The workflow: the README's commands from the repo root, dry runs, lint, config errors before any job,
and one real run end to end whose config edits rerun exactly the jobs that read them."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from helpers import (BAD_CONFIG_LIBRARY, BAD_CONFIGS, ROOT, TEST_CONFIG, TINY_REFERENCE, edited, job_counts,
                     paper_inputs, snakemake, snakemake_each, tiny_reference_moved, write_config)

END = {"aggregate", "report", "all"}


def reordered(d, under: str = ""):
    """``d`` with the keys of every mapping in reverse order, except the test sets (whose first one is the
    default crop set: their order means something)."""
    if isinstance(d, dict):
        items = list(d.items()) if under == "test_sets" else list(reversed(d.items()))
        return {k: reordered(v, k) for k, v in items}
    return d


EMBEDDED_COUNTS = {
    # classification PTQ: 3 backbones x 2 seeds x 2 bit widths of DQSS, one uniform job per backbone and seed
    "cls_train": 3, "cls_evaluate_fp": 3, "cls_calibrate": 6, "cls_uniform": 6, "cls_dqss": 12,
    # QAT: resnet20 x 2 seeds x (4 methods + dqss + dqss_nofix + dqss_retrain)
    "cls_qat_train": 1, "cls_qat_evaluate_fp": 1, "cls_qat_uniform": 8, "cls_qat_dqss": 4, "cls_qat_retrain": 2,
    # SR: 2 backbones x 2 seeds x 2 bit widths of DQSS, one uniform and one calibration job per backbone and seed
    "sr_train": 2, "sr_evaluate_fp": 2, "sr_calibrate": 4, "sr_uniform": 4, "sr_dqss": 8,
    # deployment check: one job per PTQ backbone (3 classification, 2 SR), on the first seed
    "deploy_check": 5, "deploy_summary": 1,
    "aggregate": 1, "report": 1, "all": 1,
}
TEST_COUNTS = {"cls_train": 1, "cls_evaluate_fp": 1, "cls_calibrate": 1, "cls_uniform": 1, "cls_dqss": 1,
               "cls_qat_train": 1, "cls_qat_evaluate_fp": 1, "cls_qat_uniform": 2, "cls_qat_dqss": 2,
               "cls_qat_retrain": 1, "sr_train": 1, "sr_evaluate_fp": 1, "sr_calibrate": 1, "sr_uniform": 1, "sr_dqss": 1,
               "deploy_check": 2, "deploy_summary": 1, "aggregate": 1, "report": 1, "all": 1}


# -- the README's commands, literally, from the repository root -----------------------------
def test_readme_main_command_from_repo_root():
    """`snakemake --cores all` (as a forced dry run, so a finished run in the checkout changes nothing)."""
    assert job_counts(snakemake("-n", "-F", "--cores", "all")) == EMBEDDED_COUNTS


def test_configfile_replaces_the_default_from_repo_root(tmp_path):
    """A --configfile replaces config/config.yaml: the tiny config stays tiny (no backbones of the default)."""
    res = snakemake("-n", "-F", "--cores", "2", "--configfile", "config/test.yaml")
    assert job_counts(res) == TEST_COUNTS
    assert "resnet18" not in res.stdout and "msrresnet_tiny_x2" not in res.stdout
    # --config alone still edits the default, which is loaded underneath it
    res = snakemake("-n", "-F", "--cores", "2", "--config", "device=cpu")
    assert job_counts(res) == EMBEDDED_COUNTS


def test_readme_paper_command_from_repo_root(tmp_path):
    """`snakemake --profile profiles/gpu --configfile config/paper.yaml` (dry run).  Where the datasets and
    weights are missing (as on CI), it stops before any job, naming the config key and the expected
    layout; with them in place (stand-ins here) it plans every paper job."""
    args = ["-n", "-F", "--profile", "profiles/gpu", "--configfile", "config/paper.yaml"]
    res = snakemake(*args, check=False)
    out = res.stdout + res.stderr
    assert "edsr_tiny_x2" not in out and "'train' is only available" not in out  # nothing merged in
    if res.returncode != 0:
        assert "not found" in out and any(f"{t}." in out for t in ("cls_ptq", "cls_qat", "sr_ptq")), out[-2000:]
        assert "Expected" in out or "expected" in out
    paper_inputs(tmp_path)
    counts = job_counts(snakemake(*args, "--directory", str(tmp_path)))
    assert counts["cls_dqss"] == 5 * 3 * 2 and counts["cls_uniform"] == 5 * 3  # ImageNet: 5 backbones, 3 seeds
    assert counts["cls_qat_train"] == 2 and counts["cls_qat_dqss"] == 2 * 3 * 2
    assert counts["sr_dqss"] == 8 * 3 * 2 and counts["sr_download_weights"] == 1  # one {url, sha256} file
    assert "sr_train" not in counts and "cls_train" not in counts  # official weights: nothing trained


def test_unlock_needs_no_cores(tmp_path):
    """`snakemake --unlock` is what Snakemake prints after a kill -9; it must work without --cores."""
    res = snakemake("--unlock", "--directory", str(tmp_path), "--configfile", str(ROOT / "config/test.yaml"),
                    check=False)
    assert res.returncode == 0, res.stderr[-2000:]


def test_dry_run_single_track(tmp_path):
    """A config may hold only some tracks; run from the repo root, nothing of the default is added."""
    cfg = copy.deepcopy(TEST_CONFIG)
    del cfg["cls_ptq"], cfg["sr_ptq"]
    path = write_config(tmp_path / "qat_only.yaml", cfg)
    counts = job_counts(snakemake("-n", "-F", "--cores", "1", "--configfile", str(path)))
    assert set(counts) == {"cls_qat_train", "cls_qat_evaluate_fp", "cls_qat_uniform", "cls_qat_dqss",
                           "cls_qat_retrain"} | END


def test_dry_run_sr_only(tmp_path):
    cfg = copy.deepcopy(TEST_CONFIG)
    del cfg["cls_ptq"], cfg["cls_qat"]
    path = write_config(tmp_path / "sr_only.yaml", cfg)
    counts = job_counts(snakemake("-n", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(path)))
    assert set(counts) == {"sr_train", "sr_evaluate_fp", "sr_calibrate", "sr_uniform", "sr_dqss", "deploy_check",
                           "deploy_summary"} | END


def test_lint():
    res = snakemake("--lint", check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Congratulations" in res.stdout + res.stderr


def test_local_weight_files_are_inputs(tmp_path):
    """Replacing a local weight file in place reruns every job that loads it (it is a rule input)."""
    cfg = copy.deepcopy(TEST_CONFIG)
    cls_w, sr_w = tmp_path / "w" / "test_resnet.pth", tmp_path / "w" / "edsr.pth"
    cls_w.parent.mkdir()
    cls_w.touch()
    sr_w.touch()
    cfg["cls_ptq"]["backbones"]["test_resnet"]["weights"] = str(cls_w)
    cfg["sr_ptq"]["backbones"]["edsr_tiny_x2"]["weights"] = str(sr_w)
    path = write_config(tmp_path / "local.yaml", cfg)
    res = snakemake("-n", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(path))
    users = {}
    rule = None
    for line in res.stdout.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("input:") and rule:
            users.setdefault(rule, set()).update(p.strip() for p in line.split(":", 1)[1].split(","))
    assert {r for r, ins in users.items() if str(cls_w) in ins} == {"cls_evaluate_fp", "cls_calibrate", "cls_uniform",
                                                                   "cls_dqss", "deploy_check"}
    assert {r for r, ins in users.items() if str(sr_w) in ins} == {"sr_evaluate_fp", "sr_calibrate", "sr_uniform",
                                                                  "sr_dqss", "deploy_check"}
    assert "cls_train" not in job_counts(res) and "sr_train" not in job_counts(res)


def test_bad_config_fails_before_any_job(tmp_path):
    """A bad config stops the dry run with a message naming the key, and nothing is written: one error of the
    schema and one of the library, through Snakemake (every case of BAD_CONFIGS is checked in-process, with the
    same check_config the workflow runs: tests/unit/test_config_check.py)."""
    cases = [i for i, (_edit, message) in enumerate(BAD_CONFIGS) if message in ("maximum", BAD_CONFIG_LIBRARY)]
    assert len(cases) == 2

    runs = []
    for i in cases:
        work = tmp_path / f"case{i}"
        work.mkdir()
        path = write_config(work / "bad.yaml", edited(BAD_CONFIGS[i][0]))
        runs.append(["-n", "--cores", "1", "--directory", str(work), "--configfile", str(path)])
    wrong = []
    for i, res in zip(cases, snakemake_each(runs, check=False)):
        message, out = BAD_CONFIGS[i][1], res.stdout + res.stderr
        if res.returncode == 0 or message not in out or (tmp_path / f"case{i}/results").exists():
            wrong.append(f"case {i} ({message!r}): exit {res.returncode}, output ends {out[-600:]!r}")
    assert not wrong, "\n".join(wrong)


# `snakemake ARGS` in a Python where the library is not installed: importing dqss fails as it does there
WITHOUT_DQSS = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "dqss":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
sys.argv[0] = "snakemake"
from snakemake.cli import main
main()
"""


def test_missing_library_names_the_fix(tmp_path):
    """Without the editable install the Snakefile stops before anything else, naming the two fixes."""
    res = subprocess.run([sys.executable, "-c", WITHOUT_DQSS, "-n", "--cores", "1", "--directory", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "'dqss' is not installed" in out and "pip install -e ." in out and "./suite run" in out, out[-2000:]
    assert not (tmp_path / "results").exists()


def test_default_config_syntax_error_names_file_line_column(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text("seeds: [0, 1]\ncls_ptq:\n  data: {name: digits\n  bits: []\n")
    res = snakemake("-n", "--cores", "1", "--directory", str(tmp_path), check=False)
    assert res.returncode != 0
    assert "config/config.yaml, line 4, column" in res.stdout + res.stderr


# -- one real run of the tiny config (the session's `tiny_run`, tests/conftest.py) ----------------------
def qsel_assignment(record, assignment):
    """The assignment the selection record says it chose: the file's layers, which the record's chosen stage
    must name (a uniform stage is every layer on one strategy)."""
    chosen = record["chosen"]
    layers = {e["name"]: (e["weight"], e["act"]) for e in assignment["layers"]}
    if chosen.startswith("uniform "):
        s = chosen.split(" ", 1)[1]
        return {n: (s, s) for n in layers}
    return layers


def test_tiny_run_matches_the_reference(tiny_run, tiny_run_info):
    """The session's run (local, or through SLURM where test_slurm.py runs) gives the checked-in numbers of
    config/test.yaml, under the reference check's per-metric tolerances (exact for top-1): the kernels are pinned
    to AVX2, so every x86-64 CPU gives them.  A change that moves them refreshes the file, deliberately:
    python -m dqss.reference update <run>/results/metrics.csv --reference tests/reference/tiny_metrics.csv."""
    moved = tiny_reference_moved(tiny_run[0])
    assert not moved, f"the {tiny_run_info['executor']} run of config/test.yaml moved from {TINY_REFERENCE}:\n{moved}"


@pytest.mark.slow
def test_end_to_end(tiny_run, tmp_path):
    """Every job, the CSV contract, the report, and an idempotent rerun."""
    work, args = tiny_run
    df = pd.read_csv(work / "results/metrics.csv")
    for col in ["task", "dataset", "backbone", "method", "w_bits", "a_bits", "seed", "metric", "value",
                "delta_fp", "torch", "timm", "basicsr", "git_rev", "device", "config_hash"]:
        assert col in df.columns, col
    assert set(df.task) == {"cls_ptq", "cls_qat", "sr_ptq"}
    sr = df[df.task == "sr_ptq"]
    assert set(sr.metric) == {"psnr", "ssim"} and set(df[df.task != "sr_ptq"].metric) == {"top1", "agree_fp", "kl_fp"}
    assert set(sr.dataset) == {"tiny", "grey"} and set(sr.backbone) == {"edsr_tiny_x2"}
    assert set(sr.method) == {"fp32", "bicubic", "minmax", "mse", "dqss_argmax", "dqss"}
    psnr = sr[sr.metric == "psnr"]
    assert (psnr.value > 15).all() and (sr[sr.metric == "ssim"].value <= 1).all()
    fp_psnr = psnr[psnr.method == "fp32"].set_index("dataset")["value"]
    for r in psnr.itertuples():
        assert r.delta_fp == pytest.approx(r.value - fp_psnr[r.dataset])
    assert (work / "results/report/tables/sr_ptq_edsr_tiny_x2_w4a4.tex").is_file()
    assert (work / "results/report/figures/sr_ptq_edsr_tiny_x2_crops.png").is_file()
    assert (work / "results/report/figures/assign_sr_ptq_edsr_tiny_x2.png").is_file()
    assert "sr_ptq_edsr_tiny_x2_w4a4" in (work / "results/report/report.md").read_text()
    # every row of one job shares the hash of that job's settings; jobs of one kind agree across methods
    cls = df[df.task == "cls_ptq"]
    assert cls.groupby("method")["config_hash"].nunique().max() == 1
    assert cls[cls.method.isin(["minmax", "mse"])]["config_hash"].nunique() == 1
    df = df[df.task != "sr_ptq"]
    qat = df[df.task == "cls_qat"]
    assert set(qat.method) == {"fp32", "lsq", "pact", "dqss", "dqss_nofix", "dqss_retrain"}
    assert set(qat.backbone) == {"resnet20"}
    df = df[df.task == "cls_ptq"]
    assert set(df.method) == {"fp32", "minmax", "mse", "dqss_argmax", "dqss"}
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
    qsel = json.loads((qdir / "dqss/w4a4/seed0/selection.json").read_text())
    assert qsel["rule"] == "measured" and qsel["objective"] == "ce"
    held = qsel["stages"]
    best_held = min(held[f"uniform {s}"]["held"] for s in ("lsq", "pact"))
    guard = qsel["guard"]  # above the best uniform on H only when that difference was not significant
    assert held[qsel["chosen"]]["held"] <= best_held or (guard["held_too_small"] and not guard["overturned"])
    assert {e["name"]: (e["weight"], e["act"]) for e in qassign["layers"]} == \
        {k: tuple(v) for k, v in qsel_assignment(qsel, qassign).items()}

    report = (work / "results/report/report.md").read_text()
    assert "cls_ptq" in report and "cls_qat" in report
    assert (work / "results/report/figures/cls_qat_training_curves.png").is_file()
    assign = yaml.safe_load(next(work.glob("results/cls_ptq/digits/test_resnet/dqss/w4a4/seed0/assignment.yaml"))
                            .read_text())
    assert {e["weight"] for e in assign["layers"]} <= {"minmax", "mse"}
    assert any((work / "results/report/figures").glob("assign_*test_resnet*.png"))
    # the selection's records: the gap tables, the significance marks, the softmax-vs-measured figure
    for stem in ("gap_cls_ptq_test_resnet_w4a4", "gap_sr_ptq_edsr_tiny_x2_w4a4"):
        assert (work / f"results/report/tables/{stem}.md").is_file(), stem
    assert "uniform: held-chosen" in report and "uniform: oracle" in report and "H=" in report
    assert any((work / "results/report/figures").glob("softmax_vs_measured_*.png"))

    # the deployment check: the dqss job's model and the held-best uniform one, rebuilt and run in ONNX Runtime
    dep = pd.read_csv(work / "results/deploy/deploy.csv")
    assert set(dep.task) == {"cls_ptq", "sr_ptq"} and set(dep.method) == {"dqss", "best_uniform"}
    assert (dep.w_bits == 4).all() and (dep.emulated_layers > 0).all()  # W4A4 on the int8 grid, said so
    assert (dep.emulated_layers <= dep.quantized_layers).all() and (dep.size_ratio < 1).all()
    assert ((dep.fp_ms_b1 > 0) & (dep.int8_ms_b1 > 0)).all()
    # the default layout, exact on every x86 CPU, and the kernel this CPU ran it with
    assert (dep.layout == "u8u8").all() and not dep.int16_saturation.any() and dep.int8_kernel.str.len().gt(0).all()
    # both placements of each model: the papers' (the tables' model) and the integer graph, whose extra tensors
    # are quantized too (the test ResNet's residual adds)
    assert dep.groupby(["task", "backbone", "method", "dataset"]).placement.apply(set).eq({"layers", "integer"}).all()
    cls_int = dep[(dep.task == "cls_ptq") & (dep.placement == "integer")]
    assert (cls_int.integer_points > 0).all() and (cls_int.unplaced_points == 0).all()
    assert (dep[dep.placement == "layers"].integer_points == 0).all()
    full = pd.read_csv(work / "results/metrics.csv")
    for r in dep[dep.placement == "layers"].itertuples():
        method = "dqss" if r.method == "dqss" else r.strategy
        if r.method == "best_uniform":
            sel = json.loads(next(work.glob(f"results/{r.task}/*/{r.backbone}/dqss/w4a4/seed0/selection.json")).read_text())
            assert r.strategy == sel["held_best_uniform"]
        metric = "top1" if r.task == "cls_ptq" else "psnr"
        want = full[(full.task == r.task) & (full.backbone == r.backbone) & (full.method == method) & (full.seed == 0)
                     & (full.w_bits == 4) & (full.metric == metric) & (full.dataset == r.dataset)]["value"]
        assert r.fake == pytest.approx(float(want.iloc[0]), abs=1e-3), (r.task, r.method)  # the very same model
        assert 0 <= r.ort and (r.task == "sr_ptq" or 0 <= r.agreement <= 100)
    assert "Deployment check" in report and (work / "results/report/tables/deploy_cls_ptq.tex").is_file()
    assert (work / "results/report/tables/deploy_sr_ptq.md").is_file()

    # nothing to redo on a rerun, nor for the same config with its keys reordered
    # (dry runs without the lock: other tests read the shared run at the same time)
    res = snakemake(*args, "--configfile", str(ROOT / "config/test.yaml"), "-n", "--nolock")
    assert "Nothing to be done" in res.stdout + res.stderr
    path = write_config(tmp_path / "reordered.yaml", reordered(TEST_CONFIG))
    assert list(yaml.safe_load(path.read_text())) != list(TEST_CONFIG)
    assert "Nothing to be done" in snakemake(*args, "--configfile", str(path), "-n", "--nolock").stdout


CLS_ALL = {"cls_train", "cls_evaluate_fp", "cls_calibrate", "cls_uniform", "cls_dqss"}
QAT_ALL = {"cls_qat_train", "cls_qat_evaluate_fp", "cls_qat_uniform", "cls_qat_dqss", "cls_qat_retrain"}
QAT_DQSS = {"cls_qat_dqss", "cls_qat_retrain"}  # the retrained row follows its dqss job
SR_ALL = {"sr_train", "sr_evaluate_fp", "sr_calibrate", "sr_uniform", "sr_dqss"}
CLS_Q = {"cls_calibrate", "cls_uniform", "cls_dqss"}
SR_Q = {"sr_calibrate", "sr_uniform", "sr_dqss"}
# (key path, new value, the jobs that must rerun: rule -> count, or a set of rules with their full counts)
EDITS = [
    (("cls_ptq", "data", "test_fraction"), 0.3, CLS_ALL),
    (("cls_ptq", "train", "epochs"), 3, CLS_ALL),
    (("cls_ptq", "calibration", "bins"), 1024, CLS_Q),
    (("cls_ptq", "quant", "first_last_bits"), 6, CLS_Q),
    (("cls_ptq", "strategies"), ["minmax", "mse", "percentile"], {"cls_uniform", "cls_dqss"}),
    (("cls_ptq", "strategy_options"), {"mse": {"grid": 50}}, {"cls_uniform", "cls_dqss"}),
    (("cls_ptq", "dqss", "iterations"), 6, {"cls_dqss"}),
    (("cls_ptq", "eval", "batch_size"), 128, {"cls_evaluate_fp", "cls_uniform", "cls_dqss"}),
    (("cls_qat", "train", "epochs"), 2, QAT_ALL),
    (("cls_qat", "calibration", "size"), 32, {"cls_qat_uniform"} | QAT_DQSS),
    (("cls_qat", "qat", "lr"), 0.02, {"cls_qat_uniform"} | QAT_DQSS),
    (("cls_qat", "dqss", "arch_lr"), 0.02, QAT_DQSS),
    (("cls_qat", "strategy_options"), {"pact": {"rescale": False}},
     {"cls_qat_uniform": 1, "cls_qat_dqss": 2, "cls_qat_retrain": 1}),
    (("cls_qat", "eval", "batch_size"), 128, {"cls_qat_evaluate_fp", "cls_qat_uniform"} | QAT_DQSS),
    (("sr_ptq", "train", "iterations"), 20, SR_ALL),
    (("sr_ptq", "calibration", "size"), 8, SR_Q),
    (("sr_ptq", "quant", "high_precision"), ["head", "tail"], SR_Q),
    (("sr_ptq", "dqss", "lr"), 0.1, {"sr_dqss"}),
    (("sr_ptq", "eval", "crop_size"), 24, {"sr_evaluate_fp", "sr_uniform", "sr_dqss"}),
    (("device",), "auto", CLS_ALL | QAT_ALL | SR_ALL),
    (("seeds",), [0, 1], {"cls_calibrate": 1, "cls_uniform": 1, "cls_dqss": 1, "cls_qat_uniform": 2,
                          "cls_qat_dqss": 2, "cls_qat_retrain": 1, "sr_calibrate": 1, "sr_uniform": 1,
                          "sr_dqss": 1}),  # seed 1 only
]


def deploy_reruns(want: dict, keys: tuple = ()) -> dict:
    """The deployment check of a track reruns with its DQSS job of the first seed (it reads the assignments and
    the same settings)."""
    n = 0 if keys == ("seeds",) else int("cls_dqss" in want) + int("sr_dqss" in want)
    return {"deploy_check": n, "deploy_summary": 1} if n else {}


@pytest.mark.slow
def test_config_edit_reruns_exactly_its_jobs(tiny_run, tmp_path):
    """In the finished run, an edit of one key of each section schedules exactly the jobs that read it
    (and what depends on their outputs), as a dry run shows (dry runs only: the shared run is not changed)."""
    work, args = tiny_run

    runs = []
    for i, (keys, value, _) in enumerate(EDITS):
        cfg = copy.deepcopy(TEST_CONFIG)
        d = cfg
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
        path = write_config(tmp_path / f"edit{i}.yaml", cfg)
        runs.append([*args, "--configfile", str(path), "-n", "--nolock"])
    got = [job_counts(res) for res in snakemake_each(runs)]
    wrong = []
    for (keys, value, want), counts in zip(EDITS, got):
        if isinstance(want, set):
            want = {r: TEST_COUNTS[r] for r in want}
        want = {**want, **deploy_reruns(want, keys), **{r: 1 for r in END}}
        if counts != want:
            wrong.append(f"{'.'.join(keys)} = {value!r}: scheduled {counts}, expected {want}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_interrupted_or_deleted_job_is_recomputed(tiny_run_copy):
    """After an interruption (a result and the aggregate missing) only that job and the aggregation run
    again, and give the same numbers; a deleted job directory is scheduled again.  (Its rerun, and its numbers
    reaching metrics.csv, is the SR test below, on its own copy, so that the two workers of the test run share
    the reruns.)"""
    work, args = tiny_run_copy
    args = [*args, "--configfile", str(ROOT / "config/test.yaml")]
    victim = work / "results/cls_ptq/digits/test_resnet/dqss/w4a4/seed0/metrics.json"
    before = json.loads(victim.read_text())
    victim.unlink()
    (work / "results/metrics.csv").unlink()
    counts = job_counts(snakemake(*args, "-n"))
    assert counts == {"cls_dqss": 1, **deploy_reruns({"cls_dqss": 1}), **{r: 1 for r in END}}
    snakemake(*args)
    assert json.loads(victim.read_text())["metrics"] == before["metrics"]  # determinism

    # a whole job directory deleted and nothing else touched: metrics.csv, the report and the deployment check
    # are up to date, so Snakemake would not recompute the missing files without them being targets too
    shutil.rmtree(work / "results/cls_ptq/digits/test_resnet/dqss/w4a4/seed0")
    assert job_counts(snakemake(*args, "-n")) == {"cls_dqss": 1, **deploy_reruns({"cls_dqss": 1}),
                                                  **{r: 1 for r in END}}


@pytest.mark.slow
def test_deleted_job_numbers_reach_metrics_csv(tiny_run_copy):
    """A deleted job directory is recomputed and its numbers reach metrics.csv."""
    work, args = tiny_run_copy
    args = [*args, "--configfile", str(ROOT / "config/test.yaml")]
    # a whole job directory deleted; the numbers in metrics.csv are made stale on purpose, so that a
    # metrics.csv not rebuilt from the recomputed job would show
    job_dir = work / "results/sr_ptq/embedded/edsr_tiny_x2/dqss/w4a4/seed0"
    shutil.rmtree(job_dir)
    csv = work / "results/metrics.csv"
    df = pd.read_csv(csv)
    sel = (df.task == "sr_ptq") & (df.method == "dqss")
    df.loc[sel, "value"] = -1.0
    df.to_csv(csv, index=False)
    assert job_counts(snakemake(*args, "-n")) == {"sr_dqss": 1, **deploy_reruns({"sr_dqss": 1}), **{r: 1 for r in END}}
    snakemake(*args)
    job = json.loads((job_dir / "metrics.json").read_text())
    df = pd.read_csv(csv)
    for r in job["results"]:
        for metric, value in r["metrics"].items():
            row = df[(df.task == "sr_ptq") & (df.method == "dqss") & (df.dataset == r["dataset"])
                     & (df.metric == metric)]
            assert row["value"].tolist() == [pytest.approx(value)]
