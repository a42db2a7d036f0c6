"""The results contract: paths built and parsed by one module, settings carried into metrics.csv."""
import json
from pathlib import Path

import pytest

from dqss import results
from dqss.results import Layout, parse_job_path


def test_layout_round_trip():
    lay = Layout("cls_ptq", "digits")
    p = lay.job("metrics.json", "dqss", 4, 8, 1, "mobilenetv2_100.ra_in1k")  # timm names hold dots
    assert p == "results/cls_ptq/digits/mobilenetv2_100.ra_in1k/dqss/w4a8/seed1/metrics.json"
    assert parse_job_path(p) == results.JobPath("cls_ptq", "digits", "mobilenetv2_100.ra_in1k", "dqss", 4, 8, 1,
                                                "metrics.json")
    fp = parse_job_path(lay.fp("logits.pt", 0, "resnet18"))
    assert (fp.method, fp.w_bits, fp.a_bits, fp.seed, fp.file) == ("fp32", 32, 32, 0, "logits.pt")
    # wildcards stay wildcards (the rules' patterns)
    assert lay.job("train.csv") == "results/cls_ptq/digits/{backbone}/{method}/w{w}a{a}/seed{seed}/train.csv"
    assert lay.calib("stats.pt") == "results/cls_ptq/digits/{backbone}/calib/seed{seed}/stats.pt"


@pytest.mark.parametrize("path", ["results/cls_ptq/digits/resnet18/dqss/w4/seed0/metrics.json",
                                  "results/cls_ptq/digits/resnet18/calib/seed0/stats.pt", "elsewhere.json"])
def test_parse_refuses_other_paths(path):
    with pytest.raises(ValueError, match="not a job result path"):
        parse_job_path(path)


def test_reserved_names():
    assert results.is_dqss("dqss_retrain") and not results.is_dqss("kl")
    assert results.is_uniform("aciq") and not results.is_uniform("fp32") and not results.is_uniform("dqss_argmax")
    from dqss.core.strategy import register_strategy

    for name in ("fp32", "bicubic", "dqss_argmax", "dqss_new"):
        with pytest.raises(ValueError, match="reserved method name"):
            register_strategy(name)(type("X", (), {}))


def test_settings_become_columns(tmp_path):
    prov = {k: "x" for k in results.PROVENANCE}
    paths = []
    for method, settings in (("fp32", {"weights": "train"}),
                             ("dqss", {"weights": "train", "candidates": ["kl", "mse"], "iterations": 80,
                                       "select": "measured", "high_precision": ["head", "tail"],
                                       "high_precision_bits": None})):
        p = tmp_path / f"{method}.json"
        results.write_metrics(p, task="sr_ptq", dataset="embedded", backbone="edsr", method=method, w_bits=4,
                              a_bits=4, seed=0, metrics={"psnr": 30.0}, prov=prov, settings=settings)
        paths.append(p)
    df = results.gather(paths)
    assert list(df.columns) == results.CSV_COLUMNS
    row = df[df.method == "dqss"].iloc[0]
    assert row["candidates"] == "kl+mse" and row["iterations"] == "80" and row["high_precision"] == "head+tail"
    assert (df[df.method == "fp32"]["candidates"] == "").all()  # a setting that does not apply stays empty
    assert json.loads(paths[1].read_text())["settings"]["high_precision_bits"] == ""


def test_unknown_setting_is_refused(tmp_path):
    with pytest.raises(ValueError, match="add it to dqss.results.SETTINGS"):
        results.write_metrics(tmp_path / "m.json", task="t", dataset="d", backbone="b", method="m", w_bits=8,
                              a_bits=8, seed=0, metrics={}, prov={}, settings={"epochz": 3})


def test_write_csv_is_atomic_and_takes_every_key(tmp_path):
    p = tmp_path / "a.csv"
    results.write_csv(p, [{"a": 1}, {"a": 2, "b": 3}])
    assert p.read_text().splitlines() == ["a,b", "1,", "2,3"]
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="no rows"):
        results.write_csv(p, [])


def test_provenance_names_the_cpu_kernels():
    import torch

    prov = results.provenance("cpu", {"a": 1})
    assert set(prov) == set(results.PROVENANCE)
    assert prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and prov["cpu"]
    assert prov["threads"] == torch.get_num_threads()


def test_cpu_kernels_pin_the_jobs_environment(monkeypatch):
    from dqss import workflow

    monkeypatch.setattr(workflow.platform, "machine", lambda: "x86_64")
    env = {}
    assert workflow.pin_cpu_kernels({"cpu_kernels": "avx2"}, env) == "avx2"
    assert env == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}
    env = {}
    assert workflow.pin_cpu_kernels({}, env) == "avx2" and env  # the default pins
    env = {}
    assert workflow.pin_cpu_kernels({"cpu_kernels": "native"}, env) == "native" and env == {}
    with pytest.raises(ValueError, match="cpu_kernels: 'avx512' is not one of"):
        workflow.pin_cpu_kernels({"cpu_kernels": "avx512"}, {})
    monkeypatch.setattr(workflow.platform, "machine", lambda: "aarch64")
    env = {}
    workflow.pin_cpu_kernels({"cpu_kernels": "avx2"}, env)
    assert env == {}  # nothing to pin on another architecture


def test_a_job_outside_the_pinned_environment_stops(monkeypatch):
    import torch

    from dqss import workflow

    monkeypatch.setattr(workflow.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.raises(RuntimeError, match="started without the workflow's environment"):
        workflow.check_cpu_kernels("avx2", "cpu")
    workflow.check_cpu_kernels("native", "cpu")  # native: whatever the CPU has
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with pytest.raises(RuntimeError, match="no AVX2: set cpu_kernels: native"):
        workflow.check_cpu_kernels("avx2", "cpu")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    workflow.check_cpu_kernels("avx2", "cpu")


def _interrupted(real, exc=KeyboardInterrupt):
    """A writer that writes half its file, then is interrupted (a killed job, a full disk)."""
    def write(obj, f, *args, **kwargs):
        if hasattr(f, "write"):  # a file object (matplotlib)
            f.write(b"half")
        else:
            Path(f).write_bytes(b"half")
        raise exc("interrupted")
    return write


def _keeps_the_old_file(path: Path, call) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"complete")
    with pytest.raises(KeyboardInterrupt):
        call()
    assert path.read_bytes() == b"complete"  # the earlier, complete file is still there, never half of a new one
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # and no half-written temporary


def test_checkpoint_and_fp_logits_are_written_atomically(tmp_path, monkeypatch):
    """Item: model.pt and the FP logits, which later jobs trust, were written in place."""
    import torch

    from dqss.tracks import classification
    from dqss import weights

    monkeypatch.setattr(torch, "save", _interrupted(torch.save))
    net = torch.nn.Linear(2, 2)
    _keeps_the_old_file(tmp_path / "fp32/model.pt", lambda: weights.save_checkpoint(net, "lin", tmp_path / "fp32/model.pt"))

    class Prep:
        model = net
        data = type("D", (), {"test": [(torch.zeros(2), 0)]})()

    monkeypatch.setattr(classification, "prepare", lambda cfg, backbone, ckpt: Prep)
    monkeypatch.setattr(classification, "predict", lambda *a, **k: (torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)))
    cfg = type("C", (), {"eval_batch_size": 1, "data": type("DC", (), {"workers": 0})()})()
    _keeps_the_old_file(tmp_path / "fp32/logits.pt", lambda: classification.run_evaluate_fp(
        cfg, backbone="lin", seed=0, metrics=tmp_path / "m.json", logits=tmp_path / "fp32/logits.pt", device="cpu"))


def test_report_figures_are_written_atomically(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from dqss.report.style import new_figure, save_figure

    fig = new_figure()
    fig.add_subplot().plot([0, 1])
    monkeypatch.setattr(Figure, "savefig", lambda self, f, **kw: _interrupted(None)(None, f))
    _keeps_the_old_file(tmp_path / "fig.png", lambda: save_figure(fig, tmp_path / "fig", ("png",)))
