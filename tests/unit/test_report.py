"""Tests of dqss.report on a small synthetic results table."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from dqss import report

BACKBONES = ["resnet18", "mobilenet_v2"]
QMETHODS = ["minmax", "mse", "dqss_nofix", "dqss"]
SETTINGS = [(4, 4), (8, 8)]
SEEDS = [0, 1]
FP_TOP1 = {"resnet18": 70.0, "mobilenet_v2": 72.0}
# top1 means per (backbone, w_bits) and method; fp32 beats every quantized method (never bold)
TOP1 = {
    ("resnet18", 4): {"minmax": 50.0, "mse": 60.0, "dqss_nofix": 62.0, "dqss": 65.0},
    ("mobilenet_v2", 4): {"minmax": 40.0, "mse": 58.0, "dqss_nofix": 61.0, "dqss": 60.0},
    # mse and dqss tie at the displayed precision (69.50) although the raw means differ
    ("resnet18", 8): {"minmax": 69.0, "mse": 69.501, "dqss_nofix": 69.2, "dqss": 69.499},
    ("mobilenet_v2", 8): {"minmax": 71.9, "mse": 71.0, "dqss_nofix": 71.5, "dqss": 71.8},
}
# kl_fp (lower is better): ranks differ from top1 so the direction is really tested
KL = {
    ("resnet18", 4): {"minmax": 0.02, "mse": 0.5, "dqss_nofix": 0.4, "dqss": 0.3},
    ("mobilenet_v2", 4): {"minmax": 0.9, "mse": 0.35, "dqss_nofix": 0.2, "dqss": 0.25},
    ("resnet18", 8): {"minmax": 0.011, "mse": 0.012, "dqss_nofix": 0.013, "dqss": 0.014},
    ("mobilenet_v2", 8): {"minmax": 0.05, "mse": 0.04, "dqss_nofix": 0.03, "dqss": 0.03},
}
SR_SETS = ["Set14", "Set5"]  # deliberately not in the canonical order
SR_PSNR = {"fp32": {"Set5": 32.2, "Set14": 28.6}, "bicubic": {"Set5": 28.4, "Set14": 26.0},
           "minmax": {"Set5": 30.1, "Set14": 27.9}, "dqss": {"Set5": 31.5, "Set14": 27.5}}
PROV = {"torch": "2.5.0", "torchvision": "0.20.0", "timm": "1.0.9", "python": "3.12.1",
        "git_rev": "abcdef123456", "device": "cpu (x86_64)", "config_hash": "0123456789ab"}


def _row(task, dataset, backbone, method, w, a, seed, metric, value):
    return {"task": task, "dataset": dataset, "backbone": backbone, "method": method, "w_bits": w,
            "a_bits": a, "seed": seed, "metric": metric, "value": value}


def _synthetic() -> pd.DataFrame:
    rows = []
    for bb in BACKBONES:
        fp = FP_TOP1[bb]
        for metric, v in (("top1", fp), ("agree_fp", 100.0), ("kl_fp", 0.0)):
            rows.append(_row("cls_ptq", "imagenet", bb, "fp32", 32, 32, 0, metric, v))
        for w, a in SETTINGS:
            for k, m in enumerate(QMETHODS):
                top1, kl = TOP1[(bb, w)][m], KL[(bb, w)][m]
                for s in SEEDS:
                    sign = -1 if s == 0 else 1
                    off = sign * 0.1 * (k + 1)
                    rows.append(_row("cls_ptq", "imagenet", bb, m, w, a, s, "top1", top1 + off))
                    rows.append(_row("cls_ptq", "imagenet", bb, m, w, a, s, "agree_fp",
                                     100.0 - 1.5 * (fp - top1) + off))
                    rows.append(_row("cls_ptq", "imagenet", bb, m, w, a, s, "kl_fp", kl + off / 1000))
    for ds in SR_SETS:
        for m in ("fp32", "bicubic"):
            rows.append(_row("sr_ptq", ds, "edsr", m, 32, 32, 0, "psnr", SR_PSNR[m][ds]))
            rows.append(_row("sr_ptq", ds, "edsr", m, 32, 32, 0, "ssim", SR_PSNR[m][ds] / 35))
        for m in ("minmax", "dqss"):
            for s in SEEDS:
                off = 0.05 if s else -0.05
                rows.append(_row("sr_ptq", ds, "edsr", m, 4, 8, s, "psnr", SR_PSNR[m][ds] + off))
                rows.append(_row("sr_ptq", ds, "edsr", m, 4, 8, s, "ssim", SR_PSNR[m][ds] / 35 + off / 100))
    df = pd.DataFrame(rows)
    keys = ["task", "dataset", "backbone", "metric"]
    fp = df[df.method == "fp32"].groupby(keys)["value"].mean().rename("fp")
    df = df.join(fp, on=keys)
    df.insert(df.columns.get_loc("value") + 1, "delta_fp", df["value"] - df.pop("fp"))
    for k, v in PROV.items():
        df[k] = v
    return df


@pytest.fixture(scope="module")
def df():
    return _synthetic()


@pytest.fixture(scope="module")
def summary(df):
    return report.summarize(df)


def _assignment(backbone, w, a, seed, n_layers):
    cands = ["minmax", "mse", "percentile"]
    rng = np.random.default_rng(1000 * w + 10 * a + seed)
    layers = []
    for i in range(n_layers):
        entry = {"name": f"features.{i}.conv", "w_bits": w, "a_bits": a}
        for role in ("weight", "act"):
            p = rng.dirichlet(np.ones(len(cands)))
            entry[role] = cands[int(np.argmax(p))]
            entry[f"{role}_probs"] = {c: round(float(v), 6) for c, v in zip(cands, p)}
        layers.append(entry)
    return {"format": "dqss-assignment/1", "task": "cls_ptq", "backbone": backbone, "w_bits": w,
            "a_bits": a, "seed": seed, "candidates": cands, "layers": layers}


def _md_rows(md: str) -> tuple[list[str], dict[str, list[str]]]:
    """(column names, method -> cell texts) of the Markdown table in a table string."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    cols = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return cols, rows


def _bold_cells(md: str) -> set[tuple[str, str]]:
    cols, rows = _md_rows(md)
    return {(m, c) for m, cells in rows.items() for c, t in zip(cols, cells) if t.startswith("**")}


# -- ordering and summary ------------------------------------------------------------------------------
def test_method_order():
    got = report.method_order(["dqss", "mse", "fp32", "dqss_nofix", "aciq", "bicubic", "minmax", "mse"])
    assert got == ["fp32", "bicubic", "aciq", "minmax", "mse", "dqss_nofix", "dqss"]
    colors = report.method_colors(["dqss", "minmax", "fp32"])
    assert colors == {"fp32": report.PALETTE[0], "minmax": report.PALETTE[1], "dqss": report.PALETTE[2]}


def test_summarize_matches_direct_computation(df, summary):
    keys = ["task", "dataset", "backbone", "method", "w_bits", "a_bits", "metric"]
    assert len(summary) == len(df.groupby(keys))
    for key, grp in df.groupby(keys):
        row = summary.set_index(keys).loc[key]
        vals = grp["value"].to_numpy()
        assert row["mean"] == pytest.approx(np.mean(vals))
        assert row["std"] == pytest.approx(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
        assert row["n_seeds"] == len(vals)
        assert row["delta_fp"] == pytest.approx(grp["delta_fp"].mean())
    fp = summary[summary.method == "fp32"]
    assert (fp["std"] == 0).all() and (fp["n_seeds"] == 1).all()
    # methods come out in method_order inside each group
    first = summary[(summary.task == "cls_ptq") & (summary.backbone == "resnet18") & (summary.metric == "top1")]
    assert list(dict.fromkeys(first.method)) == ["fp32", "minmax", "mse", "dqss_nofix", "dqss"]


# -- classification tables --------------------------------------------------------------------------
def test_cls_tables_keys_layout_and_fp_row(summary):
    tables = report.cls_tables(summary, "cls_ptq")
    expected = {f"cls_ptq_imagenet_w{w}a{a}_{m}" for w, a in SETTINGS for m in ("top1", "agree_fp", "kl_fp")}
    assert set(tables) == expected
    for md, _ in tables.values():
        first = md.splitlines()[0]
        assert "bold" in first.lower() and "fp32" in first and "reference" in first
        cols, rows = _md_rows(md)
        assert cols == sorted(BACKBONES)
        assert list(rows) == ["fp32", "minmax", "mse", "dqss_nofix", "dqss"]
        assert all("±" not in c for c in rows["fp32"])  # one seed: no std
        assert all("±" in c for c in rows["dqss"])
    _, rows = _md_rows(tables["cls_ptq_imagenet_w4a4_top1"][0])
    std = np.std([65.0 - 0.4, 65.0 + 0.4], ddof=1)
    assert rows["dqss"][sorted(BACKBONES).index("resnet18")] == f"**65.00 ± {std:.2f}**"
    assert rows["fp32"][sorted(BACKBONES).index("resnet18")] == "70.00"
    _, rows = _md_rows(tables["cls_ptq_imagenet_w4a4_kl_fp"][0])
    assert re.fullmatch(r"\*\*0\.0200 ± 0\.\d{4}\*\*", rows["minmax"][sorted(BACKBONES).index("resnet18")])


@pytest.mark.parametrize("metric", ["top1", "agree_fp", "kl_fp"])
def test_cls_bold_is_best_quantized(df, summary, metric):
    tables = report.cls_tables(summary, "cls_ptq")
    dec = report.DECIMALS[metric]
    for w, a in SETTINGS:
        md, tex = tables[f"cls_ptq_imagenet_w{w}a{a}_{metric}"]
        q = df[(df.metric == metric) & (df.w_bits == w) & (df.method != "fp32")]
        means = q.groupby(["backbone", "method"])["value"].mean().round(dec)
        expected = set()
        for bb, grp in means.groupby(level="backbone"):
            best = grp.min() if metric == "kl_fp" else grp.max()
            expected |= {(m, bb) for (_, m), v in grp.items() if v == best}
        got = _bold_cells(md)
        assert got == expected
        assert not any(m == "fp32" for m, _ in got)
        body = [ln for ln in tex.splitlines() if ln.endswith(r"\\")][1:]
        assert sum(ln.count(r"\textbf{") for ln in body) == len(expected)


def test_cls_bold_known_cells(summary):
    tables = report.cls_tables(summary, "cls_ptq")
    assert _bold_cells(tables["cls_ptq_imagenet_w4a4_top1"][0]) == {("dqss", "resnet18"),
                                                                     ("dqss_nofix", "mobilenet_v2")}
    # a tie at the displayed precision: both bold
    assert ("mse", "resnet18") in _bold_cells(tables["cls_ptq_imagenet_w8a8_top1"][0])
    assert ("dqss", "resnet18") in _bold_cells(tables["cls_ptq_imagenet_w8a8_top1"][0])
    # lower is better for kl_fp, and fp32 (kl 0) is never bold
    assert _bold_cells(tables["cls_ptq_imagenet_w4a4_kl_fp"][0]) == {("minmax", "resnet18"),
                                                                      ("dqss_nofix", "mobilenet_v2")}


def test_latex_booktabs_and_escaping(summary):
    _, tex = report.cls_tables(summary, "cls_ptq")["cls_ptq_imagenet_w4a4_top1"]
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\textbf{"):
        assert rule in tex
    assert r"dqss\_nofix" in tex and r"mobilenet\_v2" in tex
    body = [ln for ln in tex.splitlines() if not ln.startswith("%")]  # the caption comment is free text
    assert r"$\pm$" in tex and not any("±" in ln for ln in body)
    assert not any(re.search(r"(?<!\\)_", ln) for ln in body)
    assert tex.count(r"\midrule") == 2  # header rule + the rule below the FP reference row


# -- super-resolution tables ------------------------------------------------------------------------
def test_sr_tables(summary):
    tables = report.sr_tables(summary)
    assert set(tables) == {"sr_ptq_edsr_w4a8"}
    md, tex = tables["sr_ptq_edsr_w4a8"]
    cols, rows = _md_rows(md)
    assert cols == ["Set5", "Set14"]
    assert list(rows) == ["fp32", "bicubic", "minmax", "dqss"]
    for cells in rows.values():
        for c in cells:
            assert re.fullmatch(r"(\*\*)?\d+\.\d{2}/\d\.\d{4}(\*\*)?", c), c
    assert rows["fp32"][0] == f"32.20/{32.2 / 35:.4f}"
    assert _bold_cells(md) == {("dqss", "Set5"), ("minmax", "Set14")}
    assert r"\toprule" in tex and r"\textbf{" in tex and tex.index("Set5") < tex.index("Set14")


# -- figures ------------------------------------------------------------------------------------
def test_figures_written_and_byte_stable(summary, tmp_path):
    paths = [report.plot_accuracy_drop(summary, "cls_ptq", "top1", tmp_path / f"run{i}" / "drop.png")
             for i in (0, 1)]
    assert [p.suffix for p in paths[0]] == [".png", ".pdf"]
    for a, b in zip(*paths):
        assert a.stat().st_size > 1000 and a.read_bytes() == b.read_bytes()
    assert paths[0][0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"CreationDate" not in paths[0][1].read_bytes()

    items = [_assignment("resnet18", w, a, s, 70) for w, a in SETTINGS for s in SEEDS][::-1]
    maps = [report.plot_assignment_map(items, tmp_path / f"map{i}.png", "resnet18") for i in (0, 1)]
    assert maps[0][0].read_bytes() == maps[1][0].read_bytes()
    with pytest.raises(ValueError, match="one backbone"):
        report.plot_assignment_map(items + [_assignment("vit", 4, 4, 0, 3)], tmp_path / "x.png", "x")


# -- the whole report -----------------------------------------------------------------------------------
def test_write_report(df, tmp_path):
    csv = tmp_path / "metrics.csv"
    df.to_csv(csv, index=False)
    assign = []
    for bb, n in (("resnet18", 12), ("mobilenet_v2", 8)):
        for w, a in SETTINGS:
            p = tmp_path / "assign" / f"cls_ptq_{bb}_w{w}a{a}_s0.yaml"
            p.parent.mkdir(exist_ok=True)
            p.write_text(yaml.safe_dump(_assignment(bb, w, a, 0, n), sort_keys=False))
            assign.append(p)
    out = tmp_path / "out"
    written = report.write_report(csv, assign, out)
    assert all(p.exists() for p in written) and len(set(written)) == len(written)
    text = (out / "report.md").read_text()
    tables = sorted((out / "tables").iterdir())
    assert {p.suffix for p in tables} == {".md", ".tex"} and len(tables) == 2 * (6 + 1)
    for p in tables:
        assert f"tables/{p.name}" in text
    for p in (out / "figures").glob("*.png"):
        assert f"figures/{p.name}" in text
    names = {p.name for p in (out / "figures").iterdir()}
    assert {"cls_ptq_top1_drop.png", "cls_ptq_top1_drop.pdf", "cls_ptq_agree_fp_drop.png",
            "assign_cls_ptq_resnet18.png", "assign_cls_ptq_mobilenet_v2.png"} <= names
    assert "abcdef123456" in text and "job settings: 1 " in text and "2.5.0" in text
    assert "| dqss |" in text  # the Markdown tables are included, not only linked
    summary = pd.read_csv(out / "summary.csv")
    assert {"mean", "std", "n_seeds", "delta_fp"} <= set(summary.columns)
    # a rerun gives byte-identical files
    again = report.write_report(csv, assign, tmp_path / "out2")
    assert [p.relative_to(tmp_path / "out2") for p in again] == [p.relative_to(out) for p in written]
    for a, b in zip(written, again):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_write_report_partial_results(df, tmp_path):
    """Only cls_ptq, no agree_fp metric, no assignments, and gathered through dqss.results."""
    from dqss.results import gather, write_metrics

    part = df[(df.task == "cls_ptq") & (df.metric != "agree_fp")]
    keys = ["task", "dataset", "backbone", "method", "w_bits", "a_bits", "seed"]
    paths = []
    for i, (key, grp) in enumerate(part.groupby(keys)):
        p = tmp_path / "jobs" / f"{i}.json"
        write_metrics(p, **dict(zip(keys, key)), metrics=dict(zip(grp.metric, grp.value)), prov=PROV)
        paths.append(p)
    csv = tmp_path / "metrics.csv"
    gather(paths).to_csv(csv, index=False)
    written = report.write_report(csv, [], tmp_path / "out")
    names = {p.name for p in written}
    assert "cls_ptq_imagenet_w4a4_kl_fp.md" in names and "cls_ptq_top1_drop.png" in names
    assert not any("agree_fp" in n or n.startswith("sr_") for n in names)
    assert "report.md" in names


# -- SR crop figure ---------------------------------------------------------------------------------
def _crop_files(root, methods, w=4, a=8):
    from matplotlib.image import imsave

    paths = []
    rng = np.random.default_rng(0)
    for m, (ww, aa) in methods:
        d = root / "sr_ptq" / "embedded" / "edsr" / m / f"w{ww}a{aa}" / "seed0"
        d.mkdir(parents=True, exist_ok=True)
        for name in (["crop.png", "crop_gt.png"] if m == "fp32" else ["crop.png"]):
            imsave(d / name, rng.random((16, 16, 3)))
            paths.append(d / name)
    return paths


def test_sr_crop_figure(summary, tmp_path):
    paths = _crop_files(tmp_path, [("fp32", (32, 32)), ("bicubic", (32, 32)), ("minmax", (4, 8)), ("dqss", (4, 8))])
    crops = report.read_crops(paths)
    assert ("sr_ptq", "edsr", "gt", 32, 32, 0) in crops and ("sr_ptq", "edsr", "dqss", 4, 8, 0) in crops
    assert report.best_uniform(summary, "sr_ptq", "edsr", 4, 8) == "minmax"
    out = [report.plot_sr_crops(summary, crops, "sr_ptq", "edsr", tmp_path / f"fig{i}") for i in (0, 1)]
    assert out[0][0].suffix == ".png" and out[0][0].read_bytes() == out[1][0].read_bytes()
    no_gt = {k: v for k, v in crops.items() if k[2] != "gt"}
    with pytest.raises(ValueError, match="ground-truth"):
        report.plot_sr_crops(summary, no_gt, "sr_ptq", "edsr", tmp_path / "bad")
    with pytest.raises(ValueError, match="not a job result path"):
        report.read_crops([tmp_path / "elsewhere.png"])
    with pytest.raises(ValueError, match="not an output crop"):
        report.read_crops(["results/sr_ptq/embedded/edsr/dqss/w4a8/seed0/metrics.json"])


# -- one configuration per table cell --------------------------------------------------------------
def test_report_refuses_a_cell_mixing_settings(df, tmp_path):
    """A mean +- std over seeds whose rows come from two configurations is refused, naming the cell."""
    csv = tmp_path / "metrics.csv"
    mixed = df.copy()
    sel = (mixed.method == "mse") & (mixed.backbone == "resnet18") & (mixed.seed == 1)
    mixed.loc[sel, "config_hash"] = "fedcba987654"
    mixed.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"different settings .*resnet18/mse"):
        report.write_report(csv, [], tmp_path / "report")
    df.to_csv(csv, index=False)  # one hash per cell: fine
    assert report.write_report(csv, [], tmp_path / "ok")


def test_gather_refuses_a_result_of_other_settings(tmp_path):
    """The aggregate knows the settings hash each job must have recorded under the current config."""
    from dqss.results import gather, write_metrics

    path = tmp_path / "m.json"
    write_metrics(path, task="cls_ptq", dataset="digits", backbone="resnet18", method="mse", w_bits=4, a_bits=4,
                  seed=0, metrics={"top1": 50.0}, prov={**PROV, "config_hash": "aaaaaaaaaaaa"})
    assert len(gather([path], expected={str(path): "aaaaaaaaaaaa"})) == 1
    with pytest.raises(ValueError, match=r"m\.json was computed with other settings .*bbbbbbbbbbbb.*\.snakemake"):
        gather([path], expected={str(path): "bbbbbbbbbbbb"})


# -- significance marks ----------------------------------------------------------------------------
def _paired_case(extra_right: int):
    """One cell: minmax and mse uniform, dqss = mse plus ``extra_right`` images right, 2 seeds of 593 images;
    the DQSS job of each seed names mse as the held-chosen uniform strategy."""
    from dqss.report.paired import PerImage

    rng = np.random.default_rng(0)
    base = (rng.random(593) < 0.8).astype(int)
    wrong = np.flatnonzero(base == 0)
    per = {"minmax": (rng.random(593) < 0.5).astype(int), "mse": base}
    dqss = base.copy()
    dqss[wrong[:extra_right]] = 1
    per["dqss"] = dqss
    values, rows = {}, []
    for m, v in per.items():
        for s in SEEDS:
            values[("cls_ptq", "digits", "resnet18", m, 4, 4, s)] = {"top1": v.tolist()}
            rows.append({**_row("cls_ptq", "digits", "resnet18", m, 4, 4, s, "top1", 100.0 * v.mean()),
                         "delta_fp": 0.0})
    held = {("cls_ptq", "resnet18", 4, 4, s): "mse" for s in SEEDS}
    return report.summarize(pd.DataFrame(rows)), PerImage(values, held)


def test_one_image_win_is_not_significant_and_not_bolded_alone():
    summary, per_image = _paired_case(1)
    md, tex = report.cls_tables(summary, "cls_ptq", per_image)["cls_ptq_digits_w4a4_top1"]
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "H= O=" in rows["dqss"]  # one image better than mse (held-chosen and oracle): not significant
    assert "**" in rows["mse"] and "**" in rows["dqss"]  # both bold: mse is not significantly worse
    assert "**" not in rows["minmax"] and "H- O-" in rows["minmax"]
    assert "(mse)" in rows["uniform: held-chosen"] and "(mse)" in rows["uniform: oracle"]
    assert "H· O·" in rows["mse"]
    assert "H=" in tex and "uniform: held-chosen" in tex


def test_a_clear_win_is_marked_and_bolded_alone():
    summary, per_image = _paired_case(30)
    md, _ = report.cls_tables(summary, "cls_ptq", per_image)["cls_ptq_digits_w4a4_top1"]
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "H+ O+" in rows["dqss"] and "**" in rows["dqss"]
    assert "**" not in rows["mse"]


def test_provenance_line_names_the_cpu_kernels_and_warns_on_a_mix():
    import pandas as pd

    from dqss.report.readers import provenance_line

    base = {"git_rev": "abc", "device": "cpu (x86_64)", "cpu": "AMD EPYC", "threads": "1", "torch": "2.14.1",
            "timm": "1.0.31", "config_hash": "h"}
    one = pd.DataFrame([{**base, "cpu_capability": "AVX2"}] * 2)
    line = provenance_line(one)
    assert "cpu `AMD EPYC`" in line and "CPU kernels `AVX2`" in line and "threads per job `1`" in line
    assert "warning" not in line
    mixed = pd.DataFrame([{**base, "cpu_capability": "AVX2"}, {**base, "cpu_capability": "AVX512"}])
    assert "results mix CPU kernel sets ['AVX2', 'AVX512']" in provenance_line(mixed)
