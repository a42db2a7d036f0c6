"""The paper's tables (dqss.report.paper, rule paper_tables): layout and order, bold, ± std, missing cells,
display names, escaping and errors on small frames; the layout read from a config.  The tables that
`snakemake paper_tables` builds: tests/workflow/test_paper_tables_workflow.py."""
from __future__ import annotations

import copy
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from dqss.report.paper import (ClsPaperTable, SRPaperTable, cls_paper_table, paper_layouts, paper_outputs,
                               paper_tables, read_metrics, sr_paper_table, tex_text, write_paper_tables)
from helpers import ROOT, TEST_CONFIG, md_cells, md_head, md_rows, sr_cells, write_config

FP = dict(w_bits=32, a_bits=32)
KINDS = {"cls_ptq": "cls", "cls_qat": "cls", "sr_ptq": "sr"}  # track -> kind of table (the registry's)


def row(backbone, method, value, *, task="cls_ptq", dataset="digits", w=8, a=8, seed=0, metric="top1"):
    bits = FP if method in ("fp32", "bicubic") else dict(w_bits=w, a_bits=a)
    return dict(task=task, dataset=dataset, backbone=backbone, method=method, **bits, seed=seed, metric=metric,
                value=value)


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows)


@pytest.fixture
def cls_df():
    """Two backbones; W8A8 with two seeds, W4A4 with one; mse missing on mbv2; fp32 better than all."""
    rows = [row("r18", "fp32", 70.0), row("mbv2", "fp32", 72.0)]
    for seed, (mm, ms, dq) in enumerate([(60.0, 65.0, 66.0), (62.0, 67.0, 66.0)]):
        rows += [row("r18", "minmax", mm, seed=seed), row("r18", "mse", ms, seed=seed),
                 row("r18", "dqss", dq, seed=seed), row("mbv2", "minmax", 50.0 + seed, seed=seed),
                 row("mbv2", "dqss", 55.0, seed=seed), row("r18", "dqss_argmax", 40.0, seed=seed),
                 row("mbv2", "dqss_argmax", 41.0, seed=seed)]
    rows += [row("r18", "minmax", 10.0, w=4, a=4), row("r18", "dqss", 99.0, w=4, a=4)]
    rows += [row("r18", "minmax", 0.5, metric="kl_fp"), row("r18", "dqss", 0.25, metric="kl_fp"),
             row("r18", "fp32", 0.0, metric="kl_fp")]
    return frame(rows)


# -- classification ----------------------------------------------------------------------------
def test_cls_default_order_std_and_bold(cls_df):
    md, tex = cls_paper_table(cls_df, "cls_ptq", ClsPaperTable(w=8, a=8))
    head, body = md_head(md), md_rows(md)
    assert head == ["Method", "mbv2", "r18"]  # backbones of the results, sorted, without a layout
    assert [r[0] for r in body] == ["fp32", "minmax", "mse", "dqss_argmax", "dqss"]  # fp32, uniform, DQSS last
    cells = md_cells(md)
    assert cells[("fp32", "r18")] == "70.00"  # one seed: no spread; a reference row, never bold
    assert cells[("minmax", "r18")] == "61.00 ± 1.41"  # sample std over the two seeds
    assert cells[("mse", "r18")] == "**66.00 ± 1.41**" and cells[("dqss", "r18")] == "**66.00 ± 0.00**"  # a tie
    assert cells[("dqss", "mbv2")] == "**55.00 ± 0.00**" and cells[("minmax", "mbv2")] == "50.50 ± 0.71"
    assert cells[("mse", "mbv2")] == "–"  # missing cell shown, not dropped
    assert "– = no result." in md and "99.00" not in md and "10.00" not in md  # W4A4 stays out
    assert r"\textbf{66.00 $\pm$ 1.41}" in tex and r"\begin{tabular}{lrr}" in tex
    assert "mse & -- & \\textbf{66.00 $\\pm$ 1.41} \\\\" in tex
    # the reference rows are ruled off from the ranked ones
    lines = tex.splitlines()
    assert lines[lines.index(r"fp32 & 72.00 & 70.00 \\") + 1] == r"\midrule"
    assert "toprule" in tex and "bottomrule" in tex and r"\label{tab:cls_ptq}" in tex


def test_cls_std_off_and_lower_is_better(cls_df):
    md, _ = cls_paper_table(cls_df, "cls_ptq", ClsPaperTable(w=8, a=8, std=False))
    assert md_cells(md)[("minmax", "r18")] == "61.00" and "±" not in md
    md, _ = cls_paper_table(cls_df, "cls_ptq", ClsPaperTable(w=8, a=8, metric="kl_fp", backbones=["r18"]))
    cells = md_cells(md)
    assert cells[("dqss", "r18")] == "**0.2500**" and cells[("minmax", "r18")] == "0.5000"  # lower is better
    assert cells[("fp32", "r18")] == "0.0000"  # the reference is lowest and still not bold


def test_cls_layout_order_names_and_absent_entries(cls_df):
    layout = ClsPaperTable(w=8, a=8, backbones=["r18", "vit", "mbv2"], methods=["fp32", "dqss", "kl", "minmax"],
                           backbone_names={"r18": "ResNet-18", "mbv2": "MobileNetV2", "vit": "ViT"},
                           method_names={"fp32": "FP32", "dqss": "DQSS"}, caption="My caption", label="tab:x")
    md, tex = cls_paper_table(cls_df, "cls_ptq", layout)
    assert md_head(md) == ["Method", "ResNet-18", "ViT", "MobileNetV2"]
    assert [r[0] for r in md_rows(md)] == ["FP32", "DQSS", "kl", "minmax"]  # mse left out by the layout
    cells = md_cells(md)
    assert all(cells[(m, "ViT")] == "–" for m in ("FP32", "DQSS", "kl", "minmax"))
    assert all(cells[("kl", b)] == "–" for b in ("ResNet-18", "ViT", "MobileNetV2"))
    assert "Not in the results (shown as –): backbones ViT (vit); methods kl." in md
    assert md.startswith("**My caption**") and r"\caption{My caption}" in tex and r"\label{tab:x}" in tex
    assert r"{\footnotesize Not in the results (shown as --): backbones ViT (vit); methods kl.}" in tex
    assert cells[("DQSS", "ResNet-18")] == "**66.00 ± 0.00**"  # mse, the other best, is not shown


def test_cls_escaping(cls_df):
    df = cls_df.replace({"r18": "res_net&1", "dqss": "dq%ss"})
    layout = ClsPaperTable(w=8, a=8, backbones=["res_net&1"], methods=["fp32", "dq%ss"],
                           backbone_names={"res_net&1": "Res|Net ×2 #1"}, caption="Top-1 (%) & more_{x}")
    md, tex = cls_paper_table(df, "cls_ptq", layout)
    assert r"Res\|Net ×2 #1" in md and r"dq%ss" in md  # Markdown: only the pipe
    assert r"Res|Net $\times$2 \#1" in tex and r"dq\%ss & \textbf{66.00 $\pm$ 0.00}" in tex
    assert r"\caption{Top-1 (\%) \& more\_\{x\}}" in tex
    assert tex_text("a_b ± c – d") == r"a\_b $\pm$ c -- d"
    assert tex.isascii()  # pdflatex without extra packages


def test_cls_bits_and_dataset_from_the_results(cls_df):
    with pytest.raises(ValueError, match=r"several bit widths \[\(4, 4\), \(8, 8\)\].*paper_tables.cls_ptq.w and a"):
        cls_paper_table(cls_df, "cls_ptq", ClsPaperTable())
    md, _ = cls_paper_table(cls_df[cls_df.w_bits != 4], "cls_ptq", ClsPaperTable())  # the only one: W8A8
    assert "under W8A8" in md
    two = pd.concat([cls_df, cls_df.assign(dataset="other")])
    with pytest.raises(ValueError, match=r"several data sets \['digits', 'other'\].*paper_tables.cls_ptq.dataset"):
        cls_paper_table(two, "cls_ptq", ClsPaperTable(w=8, a=8))
    md, _ = cls_paper_table(two.assign(value=two.value.where(two.dataset == "digits", 0.0)), "cls_ptq",
                            ClsPaperTable(w=8, a=8, dataset="digits"))
    assert md_cells(md)[("fp32", "r18")] == "70.00"


def test_cls_table_without_results_of_its_track(cls_df):
    md, tex = cls_paper_table(cls_df, "cls_qat", ClsPaperTable(w=4, a=4, backbones=["resnet20"],
                                                                 methods=["fp32", "lsq"]))
    assert md_cells(md) == {("fp32", "resnet20"): "–", ("lsq", "resnet20"): "–"}
    assert "Not in the results (shown as –): backbones resnet20; methods fp32, lsq." in md


# -- super-resolution --------------------------------------------------------------------------
@pytest.fixture
def sr_df():
    rows = []
    for bb, off in (("edsr_x2", 0.0), ("edsr_x4", -4.0)):
        for ts, base in (("Urban100", 30.0), ("Set5", 36.0), ("photos", 33.0)):
            for method, d in (("fp32", 0.5), ("bicubic", -3.0), ("minmax", -0.4), ("mse", 0.1), ("dqss", 0.1)):
                for seed in (0, 1) if method not in ("fp32", "bicubic") else (0,):
                    kw = dict(task="sr_ptq", dataset=ts, seed=seed)
                    rows.append(row(bb, method, base + off + d + 0.02 * seed, metric="psnr", **kw))
                    rows.append(row(bb, method, 0.9 + d / 100 + 0.001 * seed, metric="ssim", **kw))
    df = frame(rows)
    return df[~((df.backbone == "edsr_x4") & (df.method == "mse") & (df.dataset == "Set5"))]


def test_sr_layout_groups_bold_and_missing(sr_df):
    md, tex = sr_paper_table(sr_df, SRPaperTable(w=8, a=8))
    head = md_head(md)
    assert head == ["Model", "Method", "Set5 PSNR", "Set5 SSIM", "Urban100 PSNR", "Urban100 SSIM", "photos PSNR",
                    "photos SSIM"]  # the usual test sets first, in the SR papers' order
    body = md_rows(md)
    assert [r[0] for r in body] == ["edsr_x2", "", "", "", "", "edsr_x4", "", "", "", ""]
    assert [r[1] for r in body[:5]] == ["fp32", "bicubic", "minmax", "mse", "dqss"]
    cells = sr_cells(md)
    assert cells[("edsr_x2", "fp32", "Set5 PSNR")] == "36.50"  # reference: not bold although the best
    assert cells[("edsr_x2", "mse", "Set5 PSNR")] == "**36.11**" == cells[("edsr_x2", "dqss", "Set5 PSNR")]
    assert cells[("edsr_x2", "minmax", "Set5 SSIM")] == "0.8965"  # 4 decimals, the mean of 0.8960 and 0.8970
    assert cells[("edsr_x4", "mse", "Set5 PSNR")] == "–" == cells[("edsr_x4", "mse", "Set5 SSIM")]
    assert cells[("edsr_x4", "dqss", "Set5 PSNR")] == "**32.11**"  # bold per model group: its own best
    assert "– = no result." in md and "±" not in md  # SR shows the mean unless std: true
    assert r"& & \multicolumn{2}{c}{Set5} & \multicolumn{2}{c}{Urban100} & \multicolumn{2}{c}{photos} \\" \
        in tex.replace("&  &", "& &")
    assert r"\cmidrule(lr){3-4} \cmidrule(lr){5-6} \cmidrule(lr){7-8}" in tex
    assert r"\begin{tabular}{llrrrrrr}" in tex and tex.count(r"\midrule") == 2  # one rule per model group
    lines = tex.splitlines()  # and a light one under each group's references
    assert lines[lines.index(r" & bicubic & 33.00 & 0.8700 & 27.00 & 0.8700 & 30.00 & 0.8700 \\") + 1] == \
        r"\cmidrule(l){2-8}"
    md, _ = sr_paper_table(sr_df, SRPaperTable(w=8, a=8, std=True))
    assert sr_cells(md)[("edsr_x2", "minmax", "Set5 PSNR")] == "35.61 ± 0.01"


def test_sr_layout_names_and_absent_test_set(sr_df):
    layout = SRPaperTable(w=8, a=8, backbones=["edsr_x4", "rcan_x4"], methods=["bicubic", "dqss"],
                          test_sets=["Set5", "Set14"], test_set_names={"Set5": "Set-5"},
                          backbone_names={"edsr_x4": "EDSR ×4"}, method_names={"dqss": "DQSS"})
    md, tex = sr_paper_table(sr_df, layout)
    assert md_head(md) == ["Model", "Method", "Set-5 PSNR", "Set-5 SSIM", "Set14 PSNR", "Set14 SSIM"]
    cells = sr_cells(md)
    assert cells[("EDSR ×4", "DQSS", "Set-5 PSNR")] == "**32.11**" and cells[("EDSR ×4", "DQSS", "Set14 SSIM")] == "–"
    assert cells[("rcan_x4", "bicubic", "Set-5 PSNR")] == "–"
    assert "Not in the results (shown as –): backbones rcan_x4; test sets Set14." in md
    assert r"EDSR $\times$4 & bicubic & 29.00" in tex and r"\multicolumn{2}{c}{Set-5}" in tex


# -- errors -----------------------------------------------------------------------------------
def test_frame_and_file_errors(cls_df, tmp_path):
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['metric'\]"):
        paper_tables(cls_df.drop(columns="metric"), {"cls_ptq": ClsPaperTable(w=8, a=8)})
    with pytest.raises(ValueError, match="has no rows"):
        cls_paper_table(cls_df.iloc[:0], "cls_ptq", ClsPaperTable(w=8, a=8))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.csv is empty: rebuild it"):
        read_metrics(empty)
    header = tmp_path / "header.csv"
    cls_df.iloc[:0].to_csv(header, index=False)
    with pytest.raises(ValueError, match="header but no rows"):
        write_paper_tables(header, {"cls_ptq": ClsPaperTable(w=8, a=8)}, tmp_path / "out")
    short = tmp_path / "short.csv"
    cls_df.drop(columns=["seed"]).to_csv(short, index=False)
    with pytest.raises(ValueError, match=r"missing columns \['seed'\]"):
        read_metrics(short)
    assert not (tmp_path / "out").exists()
    mixed = cls_df.assign(config_hash=cls_df.seed.map({0: "a", 1: "b"}))  # a cell's two seeds, two settings
    with pytest.raises(ValueError, match="different settings"):
        cls_paper_table(mixed, "cls_ptq", ClsPaperTable(w=8, a=8))


@pytest.mark.parametrize("options, match", [
    (dict(methods=["dqss", "dqss"]), r"methods: \['dqss'\] listed more than once"),
    (dict(methods=["dqss"], method_names={"mse": "MSE"}), r"method_names: \['mse'\] not among methods"),
    (dict(backbones=["r18"], backbone_names={"r50": "ResNet-50"}), r"backbone_names: \['r50'\] not among"),
    (dict(w=8), "give both bit widths, or neither"),
    (dict(w=9, a=8), "w must be an integer in 2..8"),
    (dict(metric="psnr"), "metric: unknown 'psnr'"),
    (dict(method_names=["FP32"]), "method_names must be a mapping"),
    (dict(backbones=["r18"], backbone_names={"r18": 18}), "names must be strings"),
])
def test_layout_errors(options, match):
    with pytest.raises(ValueError, match=match):
        ClsPaperTable(**options)


def test_sr_layout_errors():
    with pytest.raises(ValueError, match=r"test_set_names: \['Set14'\] not among test_sets"):
        SRPaperTable(test_sets=["Set5"], test_set_names={"Set14": "x"})
    with pytest.raises(ValueError, match=r"test_sets: \['Set5'\] listed more than once"):
        SRPaperTable(test_sets=["Set5", "Set5"])


# -- the layout from a config ------------------------------------------------------------------
def test_layouts_take_what_they_leave_out_from_the_tracks():
    cfg = copy.deepcopy(TEST_CONFIG)
    cfg["cls_ptq"]["bits"] = [{"w": 6, "a": 8}, {"w": 4, "a": 4}]
    cfg["cls_ptq"]["backbones"] = {"b": {}, "a": {}}
    layouts = paper_layouts(cfg, KINDS)
    assert list(layouts) == ["cls_ptq", "cls_qat", "sr_ptq"]
    ptq = layouts["cls_ptq"]
    assert (ptq.w, ptq.a, ptq.backbones, ptq.dataset, ptq.label, ptq.methods) == (6, 8, ["b", "a"], "digits",
                                                                                  "tab:cls_ptq", None)
    assert isinstance(layouts["sr_ptq"], SRPaperTable) and layouts["sr_ptq"].std is False
    assert paper_outputs(layouts) == [f"results/paper/{t}.{e}" for t in layouts for e in ("md", "tex")]
    cfg["paper_tables"] = {"cls_ptq": {"w": 4, "a": 4, "backbones": ["a"], "label": "tab:ptq"}, "sr_ptq": None}
    ptq = paper_layouts(cfg, KINDS)["cls_ptq"]
    assert (ptq.w, ptq.a, ptq.backbones, ptq.label) == (4, 4, ["a"], "tab:ptq")
    del cfg["cls_qat"]
    assert list(paper_layouts(cfg, KINDS)) == ["cls_ptq", "sr_ptq"]


def test_layout_config_errors_name_the_key():
    cfg = copy.deepcopy(TEST_CONFIG)
    cfg["paper_tables"] = {"cls_ptq": {"metrics": "top1"}}
    with pytest.raises(ValueError, match=r"paper_tables.cls_ptq: unknown option\(s\) \['metrics'\]"):
        paper_layouts(cfg, KINDS)
    cfg["paper_tables"] = {"cls_ptq": {"w": 1, "a": 8}}
    with pytest.raises(ValueError, match=r"paper_tables.cls_ptq.w must be an integer in 2..8"):
        paper_layouts(cfg, KINDS)
    cfg["paper_tables"] = {"imagenet": {}}
    with pytest.raises(ValueError, match=r"unknown track\(s\) \['imagenet'\]"):
        paper_layouts(cfg, KINDS)
    del cfg["cls_qat"]
    cfg["paper_tables"] = {"cls_qat": {}}
    with pytest.raises(ValueError, match=r"\['cls_qat'\] laid out but not in the config"):
        paper_layouts(cfg, KINDS)


def test_config_check_covers_the_layout(tmp_path):
    """`python -m dqss.workflow check` (and so the workflow, before any job) refuses a bad layout by its key."""
    from dqss.workflow import check_config_file

    cfg = copy.deepcopy(TEST_CONFIG)
    cfg["paper_tables"] = {"cls_ptq": {"methods": ["dqss", "dqss"]}}
    with pytest.raises(ValueError, match=r"^paper_tables.cls_ptq.methods: \['dqss'\] listed more than once"):
        check_config_file(write_config(tmp_path / "bad.yaml", cfg))
    cfg["paper_tables"] = {"cls_ptq": {"methods": ["dqss"]}}
    assert check_config_file(write_config(tmp_path / "ok.yaml", cfg))["paper_tables"] == cfg["paper_tables"]


def test_paper_config_layout_is_the_papers():
    cfg = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    layouts = paper_layouts(cfg, KINDS)
    assert (layouts["cls_ptq"].w, layouts["cls_ptq"].a, layouts["cls_qat"].w, layouts["sr_ptq"].w) == (8, 8, 4, 8)
    assert layouts["cls_ptq"].backbones == list(cfg["cls_ptq"]["backbones"])
    assert layouts["cls_ptq"].methods[0] == "fp32" and layouts["cls_ptq"].methods[-1] == "dqss"
    assert layouts["sr_ptq"].backbone_names["edsr_baseline_x4"] == "EDSR ×4"
    assert layouts["sr_ptq"].test_sets == list(cfg["sr_ptq"]["data"]["test_sets"])
    assert set(layouts["sr_ptq"].backbones) == set(cfg["sr_ptq"]["backbones"])
    for track in ("cls_ptq", "cls_qat", "sr_ptq"):  # every strategy of the track has its row
        assert set(cfg[track]["strategies"]) <= set(layouts[track].methods)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles(cls_df, sr_df, tmp_path):
    _, cls_tex = cls_paper_table(cls_df, "cls_ptq", ClsPaperTable(w=8, a=8, backbones=["r18", "vit"],
                                                                  backbone_names={"r18": "R_18 ×2 & 50%"}))
    _, sr_tex = sr_paper_table(sr_df, SRPaperTable(w=8, a=8, backbone_names={"edsr_x4": "EDSR ×4"}))
    doc = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + cls_tex + sr_tex + \
          "\\end{document}\n"
    (tmp_path / "t.tex").write_text(doc)
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:]
