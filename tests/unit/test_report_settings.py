"""The report names the settings that produced its numbers (from metrics.csv's settings columns), and decides a
table's kind from the data it reads, not from track names: dqss.report.format, dqss.report.tables, the report's
per-track settings table and the paper tables' captions."""
from __future__ import annotations

import pandas as pd
import pytest

from dqss import report
from dqss.report.format import method_settings, setting_values, settings_line
from dqss.report.paper import (PAPER_TABLES, ClsPaperTable, SRPaperTable, cls_paper_table, layout_kinds, layout_params,
                               paper_table_classes, paper_tables, sr_paper_table, write_paper_tables)
from dqss.results import SETTING_COLUMNS

FP = dict(w_bits=32, a_bits=32)
DQSS = dict(candidates="minmax+mse", iterations="80", loss="kl", hold_fraction="0.25")


def row(backbone, method, value, *, task="cls_ptq", dataset="digits", w=8, a=8, seed=0, metric="top1", **settings):
    bits = FP if method in ("fp32", "bicubic") else dict(w_bits=w, a_bits=a)
    base = {} if method in ("fp32", "bicubic") else dict(calib_size="256")
    return dict(task=task, dataset=dataset, backbone=backbone, method=method, **bits, seed=seed, metric=metric,
                value=value, weights="train", **{**base, **settings})


def cls_frame(iterations="80", task="cls_ptq", **extra) -> pd.DataFrame:
    """One backbone: fp32, minmax and dqss (DQSS settings, select measured) and dqss_argmax (select argmax)."""
    dq = {**DQSS, "iterations": iterations}
    rows = [row("r18", "fp32", 70.0, task=task)]
    for seed in (0, 1):
        rows += [row("r18", "minmax", 60.0 + seed, seed=seed, task=task, **extra),
                 row("r18", "dqss", 65.0, seed=seed, task=task, select="measured", **dq, **extra),
                 row("r18", "dqss_argmax", 64.0, seed=seed, task=task, select="argmax", **dq, **extra)]
    df = pd.DataFrame(rows)
    for c in SETTING_COLUMNS:  # every settings column, empty where a setting does not apply (as gather writes)
        df[c] = df[c].fillna("") if c in df.columns else ""
    return df


# -- the settings line ------------------------------------------------------------------------
def test_settings_line_lists_the_settings_the_rows_share():
    df = cls_frame()
    assert setting_values(df)["iterations"] == ["80"] and "epochs" not in setting_values(df)  # empty: left out
    line = settings_line(df)
    assert line.startswith("Settings: weights train, calib_size 256, hold_fraction 0.25, ")  # SETTINGS order
    assert "iterations 80" in line and "select argmax/measured (differs between rows)" in line
    assert settings_line(df.drop(columns=SETTING_COLUMNS)) == ""  # no settings columns: no line
    common, differ, table = method_settings(df)
    assert common == {"weights": ["train"], "calib_size": ["256"]}
    assert differ == ["hold_fraction", "candidates", "iterations", "loss", "select"]
    assert table["minmax"]["iterations"] == "" and table["dqss"]["select"] == "measured"


def test_report_table_names_its_settings_and_follows_the_metrics():
    df = cls_frame()
    md, tex = report.cls_tables(report.summarize(df), "cls_ptq", df=df)["cls_ptq_digits_w8a8_top1"]
    assert "iterations 80" in md.splitlines()[-1] and "% Settings: weights train" in tex and "iterations 80" in tex
    df = cls_frame(iterations="120")
    md, tex = report.cls_tables(report.summarize(df), "cls_ptq", df=df)["cls_ptq_digits_w8a8_top1"]
    assert "iterations 120" in md and "iterations 80" not in md and "iterations 120" in tex
    md, _ = report.cls_tables(report.summarize(df), "cls_ptq")["cls_ptq_digits_w8a8_top1"]
    assert "Settings:" not in md  # without the metrics rows: no line, the numbers as before


def test_write_report_has_a_settings_table_per_task(tmp_path):
    df = cls_frame()
    csv = tmp_path / "metrics.csv"
    df.to_csv(csv, index=False)
    text = (tmp_path / "out" / "report.md").read_text() if report.write_report(csv, [], tmp_path / "out") else ""
    assert "### cls_ptq: settings" in text
    assert "Same for every row that has them: weights train, calib_size 256." in text
    assert "| Method | hold_fraction | candidates | iterations | loss | select |" in text
    assert "| dqss | 0.25 | minmax+mse | 80 | kl | measured |" in text and "| minmax |  |  |  |  |  |" in text
    table = (tmp_path / "out" / "tables" / "cls_ptq_digits_w8a8_top1.md").read_text()
    assert "iterations 80" in table  # the table file carries its settings line too


# -- the kind of table from the data ------------------------------------------------------------
def sr_frame(task="superres") -> pd.DataFrame:
    rows = []
    for ds, base in (("Set5", 32.0), ("Set14", 28.0)):
        for m, off in (("fp32", 0.0), ("bicubic", -3.0)):
            rows += [row("edsr_x2", m, base + off, task=task, dataset=ds, metric="psnr"),
                     row("edsr_x2", m, 0.9, task=task, dataset=ds, metric="ssim")]
        for seed in (0, 1):
            rows += [row("edsr_x2", "minmax", base - 1, task=task, dataset=ds, seed=seed, metric=x, calib_size="128")
                     for x in ("psnr", "ssim")]
            rows += [row("edsr_x2", "dqss", base - 0.5, task=task, dataset=ds, seed=seed, metric=x, calib_size="128",
                         **DQSS) for x in ("psnr", "ssim")]
    df = pd.DataFrame(rows)
    df.loc[df.metric == "ssim", "value"] = 0.8
    return df.fillna("")


def test_sr_tables_are_chosen_by_their_metrics_not_the_task_name(tmp_path):
    df = sr_frame()
    tables = report.sr_tables(report.summarize(df), df=df)  # the only task with PSNR/SSIM rows
    md, _ = tables["superres_edsr_x2_w8a8"]
    assert "PSNR (dB) / SSIM" in md and "calib_size 128" in md and "iterations 80" in md
    csv = tmp_path / "metrics.csv"
    df.to_csv(csv, index=False)
    report.write_report(csv, [], tmp_path / "out")
    assert (tmp_path / "out" / "tables" / "superres_edsr_x2_w8a8.md").exists()  # an SR table, not a cls one
    assert not list((tmp_path / "out" / "tables").glob("superres_Set5*"))


def test_paper_caption_names_its_settings_and_follows_the_metrics():
    md, tex = cls_paper_table(cls_frame(), "cls_ptq", ClsPaperTable(w=8, a=8))
    caption = md.splitlines()[0]
    assert "post-training quantization" in caption and "iterations 80" in caption
    assert r"\caption{" in tex and "iterations 80" in tex and r"calib\_size 256" in tex
    md, tex = cls_paper_table(cls_frame(iterations="120"), "cls_ptq", ClsPaperTable(w=8, a=8))
    assert "iterations 120" in md.splitlines()[0] and "iterations 80" not in md and "iterations 120" in tex
    # a custom caption keeps its text and gains the settings
    md, _ = cls_paper_table(cls_frame(), "cls_ptq", ClsPaperTable(w=8, a=8, caption="Mine."))
    assert md.splitlines()[0].startswith("**Mine. Settings: weights train")


def test_paper_caption_says_qat_from_the_rows_settings():
    """Quantization-aware training where the rows carry QAT settings (epochs), whatever the track's name."""
    md, _ = cls_paper_table(cls_frame(task="anything", epochs="4", lr="0.01"), "anything", ClsPaperTable(w=8, a=8))
    assert "quantization-aware training" in md and "epochs 4" in md and "lr 0.01" in md
    md, _ = cls_paper_table(cls_frame(task="cls_qat"), "cls_qat", ClsPaperTable(w=8, a=8))
    assert "post-training quantization" in md  # no QAT settings in the rows: not QAT, whatever the name


def test_paper_tables_by_kind(tmp_path):
    df = pd.concat([cls_frame(task="imagenet_ptq"), sr_frame()], ignore_index=True)
    kinds = {"imagenet_ptq": "cls", "superres": "sr"}
    assert paper_table_classes(kinds) == {"imagenet_ptq": ClsPaperTable, "superres": SRPaperTable}
    assert set(PAPER_TABLES) == {"cls", "sr"}
    layouts = {"imagenet_ptq": ClsPaperTable(w=8, a=8), "superres": SRPaperTable(w=8, a=8)}
    assert layout_kinds(layouts) == kinds
    out = paper_tables(df, layout_params(layouts), kinds)  # dicts, as the rule passes them: their kind given
    assert "Set5 PSNR" in out["superres"][0] and "| Method | r18 |" in out["imagenet_ptq"][0]
    assert out == paper_tables(df, layouts)  # layout objects carry their kind
    assert sr_paper_table(df, SRPaperTable(w=8, a=8)) == out["superres"]  # the only task with SR metrics
    written = write_paper_tables(_csv(df, tmp_path), layout_params(layouts), tmp_path / "paper", kinds=kinds)
    assert sorted(p.name for p in written) == ["imagenet_ptq.md", "imagenet_ptq.tex", "superres.md", "superres.tex"]
    with pytest.raises(ValueError, match="unknown kind"):
        paper_table_classes({"x": "detection"})
    with pytest.raises(ValueError, match="no kind of table for track 'imagenet_ptq'"):
        paper_tables(df, layout_params(layouts))


def _csv(df, tmp_path):
    p = tmp_path / "metrics.csv"
    df.to_csv(p, index=False)
    return p
