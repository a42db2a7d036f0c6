"""Reporting: summary statistics, Markdown/LaTeX tables, figures and ``report.md``.

Input is the tidy long table written by :func:`dqss.results.gather` (``results/metrics.csv``)
and, optionally, the per-layer assignment files of DQSS searches
(:func:`dqss.algorithms.ptq.export_assignment` / :func:`dqss.algorithms.ptq.save_assignment`), the QAT jobs' training
curves, the SR jobs' output crops, the jobs' per-image values and the DQSS jobs' selection records.

The package, by purpose (no module imports this one, :mod:`.style` imports none of the others, and
pandas, matplotlib and numpy are imported only inside the functions that use them):

* :mod:`.style`: method order and colours, plot style, number formats, labels, figure and file helpers, which
  tasks are super-resolution (their rows carry PSNR/SSIM: the report never tests a track's name);
* :mod:`.format`: numbers, Markdown/LaTeX escaping, and the settings line of a table (the settings columns of
  metrics.csv its rows share) and the settings by method of a task;
* :mod:`.readers`: metrics.csv and its checks, training curves, crops, assignment files, provenance;
* :mod:`.tables`: the summary over seeds, classification and SR tables, Markdown/LaTeX, significance marks;
* :mod:`.paper`: the paper's tables (rule paper_tables), laid out by kind (cls or sr) from the config;
* :mod:`.deploy`: the deployment check's tables;
* :mod:`.figures`: accuracy drop, assignment map, training curves, SR crops;
* :mod:`.selection`: the DQSS selection's discretization-gap tables and softmax-vs-measured figure;
* here: :func:`write_report`, which assembles ``report.md``, and the package's public names.

Everything written is deterministic (see :mod:`.style`): rerunning the report on the same results gives
byte-identical files.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..results import DQSS_ARGMAX, REFERENCE_METHODS, write_frame, write_text
from .figures import best_uniform, plot_accuracy_drop, plot_assignment_map, plot_sr_crops, plot_training_curves
from .format import latex_escape, method_settings_lines
from .readers import (REQUIRED_COLUMNS, check_one_setting, load_assignments, load_metrics, provenance_line, read_crops,
                      read_histories)
from .selection import GAP_ROWS, gap_tables, load_selections, plot_softmax_vs_measured
from .style import (DECIMALS, DEFAULT_DECIMALS, HELD_ROW, LOWER_IS_BETTER, METRIC_LABELS, METRIC_ORDER, METRIC_UNITS,
                    ORACLE_ROW, PALETTE, PDF_METADATA, PNG_METADATA, SR_DATASET_ORDER, SR_PSNR_DECIMALS,
                    SR_SSIM_DECIMALS, STYLE, method_colors, method_order, safe_stem, sr_tasks)
from .tables import SIGNIFICANCE_TEXT, cls_tables, sr_tables, summarize

__all__ = [
    "DECIMALS", "DEFAULT_DECIMALS", "DROP_METRICS", "GAP_ROWS", "HELD_ROW", "LOWER_IS_BETTER", "METRIC_LABELS",
    "METRIC_ORDER", "METRIC_UNITS", "ORACLE_ROW", "PALETTE", "PDF_METADATA", "PNG_METADATA", "REQUIRED_COLUMNS",
    "SIGNIFICANCE_TEXT", "SR_DATASET_ORDER", "SR_PSNR_DECIMALS", "SR_SSIM_DECIMALS", "STYLE", "best_uniform",
    "check_one_setting", "cls_tables", "gap_tables", "latex_escape", "load_selections", "method_colors",
    "method_order", "plot_accuracy_drop", "plot_assignment_map", "plot_softmax_vs_measured", "plot_sr_crops",
    "plot_training_curves", "read_crops", "read_histories", "sr_tables", "summarize", "write_report",
]

log = logging.getLogger(__name__)

DROP_METRICS = ("top1", "agree_fp")  # accuracy-drop figures written by write_report


def _deploy_section(deploy_path, tdir: Path, written: list) -> list[str]:
    """The deployment check's tables (one per task) and what they show."""
    import pandas as pd

    from .deploy import deploy_tables

    if not deploy_path:
        return []
    df = pd.read_csv(deploy_path)
    if not len(df):
        return []
    lines = ["## Deployment check: ONNX Runtime int8 vs fake quantization", "",
             "Each model exported to ONNX with QuantizeLinear/DequantizeLinear pairs carrying the suite's scales and "
             "zero points (per-channel weights stored as int8, per-tensor activations, uint8 after a ReLU), run by "
             "ONNX Runtime's CPU execution provider on the test set, against the fake-quantized PyTorch model. "
             "*Integer kernels*: QLinearConv/QLinearMatMul/... nodes in ONNX Runtime's optimised graph, out of the "
             "quantized layers (a layer whose output feeds a float operation, e.g. a residual Add, keeps its "
             "dequantized inputs and a float kernel). W4A4 runs as 4-bit codes on the int8 grid (a float Clip to the "
             "4-bit range before each QuantizeLinear): it checks the 4-bit values, and since the Clip keeps ONNX "
             "Runtime from fusing integer kernels, not 4-bit speed. Latency: median of the runs, int8 and FP "
             "interleaved, one thread. Source: `results/deploy/deploy.csv`.", ""]
    return lines + _table_lines(deploy_tables(df), tdir, written)


def _settings_lines(rows, task: str) -> list[str]:
    """The task's settings by method (from its metrics.csv rows): those every row shares, and a table of those
    that differ between its quantized methods; [] where the rows carry no settings."""
    body = method_settings_lines(rows)
    if not body:
        return []
    return [f"### {task}: settings", "", "The settings that produced this task's rows (columns of metrics.csv; "
            "an empty cell: the setting does not apply to the method).", "", *body, ""]


def _table_lines(tables: dict[str, tuple[str, str]], tdir: Path, written: list) -> list[str]:
    """Write each ``{stem: (markdown, latex)}`` table under ``tdir`` (appended to ``written``); the report's
    lines showing them."""
    lines = []
    for stem, (md, tex) in tables.items():
        for suffix, text in ((".md", md), (".tex", tex)):
            p = tdir / f"{stem}{suffix}"
            write_text(p, text)
            written.append(p)
        lines += [f"### {stem}", "", md.rstrip("\n"), "",
                  f"Files: [tables/{stem}.md](tables/{stem}.md), [tables/{stem}.tex](tables/{stem}.tex)", ""]
    return lines


def write_report(metrics_csv, assignment_paths: list, outdir, history_paths: list | None = None,
                 crop_paths: list | None = None, job_paths: list | None = None,
                 selection_paths: list | None = None, deploy_path=None) -> list[Path]:
    """Summary CSV, tables (.md, .tex), figures (.png, .pdf) and ``report.md`` under ``outdir``.

    ``job_paths`` (the jobs' metrics.json files) give the per-image values of the significance marks;
    ``selection_paths`` (the DQSS jobs' selection.json) the discretization-gap tables and the figure of
    softmax weights against measured effects; ``deploy_path`` (``results/deploy/deploy.csv``) the table of
    the deployment check in ONNX Runtime."""
    from .paired import load_per_image

    outdir = Path(outdir)
    tdir, fdir = outdir / "tables", outdir / "figures"
    tdir.mkdir(parents=True, exist_ok=True)
    fdir.mkdir(parents=True, exist_ok=True)
    df = load_metrics(metrics_csv)
    summary = summarize(df)
    per_image = load_per_image(job_paths) if job_paths else None
    selections = load_selections(selection_paths)
    written: list[Path] = []
    write_frame(outdir / "summary.csv", summary)
    written.append(outdir / "summary.csv")

    groups = load_assignments(assignment_paths or [])
    strategies = {s for items in groups.values() for a in items for s in (a.get("candidates") or [])}
    strategies |= {e[r] for items in groups.values() for a in items for e in a["layers"] for r in ("weight", "act")}
    colors = method_colors(set(summary["method"]) | strategies)

    lines = ["# DQSS benchmark report", "", provenance_line(df), "",
             f"Source: `{Path(metrics_csv).name}` — {len(df)} rows, tasks "
             f"{', '.join(f'`{t}`' for t in sorted(df['task'].unique()))}. "
             f"Per-group statistics: [summary.csv](summary.csv).", ""]
    sr = set(sr_tasks(df))  # tasks whose rows carry SR metrics: SR tables and crops
    for task in sorted(summary["task"].unique()):
        is_sr = task in sr
        tables = (sr_tables if is_sr else cls_tables)(summary, task, per_image, df=df)
        tables |= gap_tables([r for r in selections if r["task"] == task], df)
        lines += [f"## {task}", ""]
        if not tables:
            lines += ["_No quantized results for this task._", ""]
        lines += _settings_lines(df[df["task"] == task], task)
        lines += _table_lines(tables, tdir, written)
        if is_sr:
            crops = read_crops(crop_paths or [])
            for backbone in sorted({k[1] for k in crops if k[0] == task}):
                stem = safe_stem(f"{task}_{backbone}_crops")
                written += plot_sr_crops(summary, crops, task, backbone, fdir / stem)
                lines += [f"### Figure: {task}, {backbone}, output crops", "",
                          f"![{task} {backbone} crops](figures/{stem}.png)", ""]
            continue
        for metric in DROP_METRICS:
            sel = summary[(summary["task"] == task) & (summary["metric"] == metric)
                          & ~summary["method"].isin(REFERENCE_METHODS)]
            if sel["delta_fp"].notna().sum() == 0:
                log.info("no %s results with an FP reference for %s; skipping its figure", metric, task)
                continue
            stem = safe_stem(f"{task}_{metric}_drop")
            paths = plot_accuracy_drop(summary, task, metric, fdir / stem, colors=colors)
            written += paths
            lines += [f"### Figure: {task}, change in {metric} vs FP", "",
                      f"![{task} {metric} drop](figures/{stem}.png)", "",
                      f"[PNG](figures/{stem}.png) · [PDF](figures/{stem}.pdf)", ""]
    hist = read_histories(history_paths or [])
    for task in sorted(hist["task"].unique()) if len(hist) else []:
        stem = safe_stem(f"{task}_training_curves")
        written += plot_training_curves(hist, task, fdir / stem, colors=colors)
        lines += [f"### Figure: {task}, training curves", "", f"![{task} training curves](figures/{stem}.png)", "",
                  f"[PNG](figures/{stem}.png) · [PDF](figures/{stem}.pdf)", ""]
    if groups:
        lines += ["## DQSS strategy assignments", "",
                  "Per layer, the strategy DQSS chose for weights and activations; paler cells had a "
                  "lower softmax probability; a dot marks a tensor whose strategy differs from the uniform "
                  "strategy chosen on the held calibration part.", ""]
    for (task, backbone), items in sorted(groups.items()):
        stem = safe_stem(f"assign_{task}_{backbone}")
        paths = plot_assignment_map(items, fdir / stem, f"DQSS assignment — {task}, {backbone}", colors=colors)
        written += paths
        lines += [f"### {task}, {backbone}", "", f"![assignment {task} {backbone}](figures/{stem}.png)", ""]
    measured = [r for r in selections if r.get("rule") == "measured" and r.get("moves")]
    if measured:
        rec = min(measured, key=lambda r: (r["task"], r["backbone"], r["w_bits"], r["a_bits"], r["seed"]))
        match = [a for a in groups.get((rec["task"], rec["backbone"]), [])
                 if a.get("method") == DQSS_ARGMAX and (a.get("w_bits"), a.get("a_bits"), a.get("seed"))
                 == (rec["w_bits"], rec["a_bits"], rec["seed"])]
        if match:
            stem = safe_stem(f"softmax_vs_measured_{rec['task']}_{rec['backbone']}")
            written += plot_softmax_vs_measured(rec, match[0], fdir / stem)
            lines += ["## DQSS: softmax weight against measured effect", "",
                      "As in DARTS-PT (Wang et al., ICLR 2021, Fig. 1): a candidate's softmax weight does not say "
                      "how good it is alone; each point is one tensor switched to one candidate in the first "
                      "selection sweep.", "", f"![softmax vs measured](figures/{stem}.png)", ""]
    lines += _deploy_section(deploy_path, tdir, written)
    report = outdir / "report.md"
    write_text(report, "\n".join(lines).rstrip("\n") + "\n")
    written.append(report)
    log.info("report: wrote %d files under %s", len(written), outdir)
    return written
