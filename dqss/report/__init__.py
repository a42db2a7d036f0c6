"""Reporting: summary statistics, Markdown/LaTeX tables, figures and ``report.md``.

Input is the tidy long table written by :func:`dqss.results.gather` (``results/metrics.csv``)
and, optionally, the per-layer assignment files of DQSS searches
(:func:`dqss.ptq.export_assignment` / :func:`dqss.ptq.save_assignment`).

Everything written here is deterministic: no timestamps, a fixed plotting style, a fixed colour
per method, and figure metadata stripped, so rerunning the report on the same results gives
byte-identical files.  Plots use the Agg canvas directly (no pyplot, no global backend switch).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from ..results import (BICUBIC_METHOD, DQSS_ARGMAX, DQSS_METHOD, DQSS_METHODS, FP_METHOD, GROUP_KEYS,
                      REFERENCE_METHODS, is_dqss, load_assignment, parse_job_path)
from ..results import PROVENANCE as PROVENANCE_COLUMNS

log = logging.getLogger(__name__)

HELD_ROW = "uniform: held-chosen"
ORACLE_ROW = "uniform: oracle"
LOWER_IS_BETTER = frozenset({"kl_fp"})
REQUIRED_COLUMNS = GROUP_KEYS + ["seed", "value"]

DECIMALS = {"top1": 2, "top5": 2, "agree_fp": 2, "kl_fp": 4, "psnr": 2, "ssim": 3}
DEFAULT_DECIMALS = 2
SR_PSNR_DECIMALS = 2
SR_SSIM_DECIMALS = 4  # the SR cell reads "32.45/0.9012", as SR papers report SSIM
METRIC_ORDER = ["top1", "top5", "agree_fp", "kl_fp", "psnr", "ssim"]
METRIC_LABELS = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "agree_fp": "agreement with FP",
                 "kl_fp": "KL(FP || quantized)", "psnr": "PSNR", "ssim": "SSIM"}
METRIC_UNITS = {"top1": "%", "top5": "%", "agree_fp": "%", "psnr": "dB"}
SR_DATASET_ORDER = ["set5", "set14", "b100", "urban100"]
DROP_METRICS = ("top1", "agree_fp")  # accuracy-drop figures written by write_report

# Fixed palette (tab10, then the light tab20 shades); a method's colour is the palette entry at its
# position in method_order over all methods present, so it is the same in every figure of a report.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]

# The project plot style (rcParams); applied with rc_context around figure creation and saving.
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.axisbelow": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "errorbar.capsize": 2,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.facecolor": "white",
    "pdf.fonttype": 42,
    "svg.hashsalt": "dqss-report",
    "svg.fonttype": "none",
    "path.simplify": True,
}
PNG_METADATA = {"Software": None}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}


# -- ordering and colours -------------------------------------------------------------------
def method_order(methods) -> list[str]:
    """fp32, bicubic, the baselines alphabetically, the two best-uniform rows, other ``dqss*`` variants,
    dqss_nofix, dqss_argmax, dqss."""
    uniq = sorted({str(m) for m in methods})

    def rank(m: str):
        if m == FP_METHOD:
            return (0, "")
        if m == BICUBIC_METHOD:
            return (1, "")
        if m in DQSS_METHODS:
            return (5, str(DQSS_METHODS.index(m)))
        if is_dqss(m):
            return (4, m)
        if m in (HELD_ROW, ORACLE_ROW):
            return (3, m)
        return (2, m)

    return sorted(uniq, key=rank)


def method_colors(methods) -> dict[str, str]:
    """A fixed colour per method: the palette entry at its method_order position (cycling)."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(method_order(methods))}


def _metric_order(metrics) -> list[str]:
    ms = {str(m) for m in metrics}
    return [m for m in METRIC_ORDER if m in ms] + sorted(ms - set(METRIC_ORDER))


def _sr_dataset_order(datasets) -> list[str]:
    def rank(d: str):
        k = d.lower()
        return (SR_DATASET_ORDER.index(k), "") if k in SR_DATASET_ORDER else (len(SR_DATASET_ORDER), k)

    return sorted({str(d) for d in datasets}, key=rank)


def _is_sr(task: str) -> bool:
    return str(task).startswith("sr")


# -- summary --------------------------------------------------------------------------------
def summarize(df) -> "pandas.DataFrame":
    """Per (task, dataset, backbone, method, w_bits, a_bits, metric): mean, std, n_seeds, delta_fp.

    ``std`` is the sample std (ddof=1) over seeds, 0 for a single seed; ``delta_fp`` is the mean
    over seeds of the per-seed difference to the FP value.
    """
    import pandas as pd

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}; expected the dqss.results.gather layout")
    df = df if "delta_fp" in df.columns else _with_delta_fp(df)
    g = df.groupby(GROUP_KEYS, sort=True, dropna=False)
    out = pd.DataFrame({"mean": g["value"].mean(), "std": g["value"].std(ddof=1),
                        "n_seeds": g["value"].count(), "delta_fp": g["delta_fp"].mean()}).reset_index()
    out.loc[out["n_seeds"] == 1, "std"] = 0.0
    out["n_seeds"] = out["n_seeds"].astype("int64")
    rank = {m: i for i, m in enumerate(method_order(out["method"].unique()))}
    return (out.sort_values(GROUP_KEYS, key=lambda s: s.map(rank) if s.name == "method" else s,
                            kind="stable").reset_index(drop=True))


def _with_delta_fp(df):
    """delta_fp as dqss.results.gather computes it, for tables that lack the column."""
    keys = ["task", "dataset", "backbone", "metric"]
    fp = df[df["method"] == FP_METHOD].groupby(keys)["value"].mean().rename("_fp")
    df = df.join(fp, on=keys)
    df["delta_fp"] = df["value"] - df.pop("_fp")
    return df


# -- formatting -----------------------------------------------------------------------------
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


def _md_escape(text) -> str:
    return str(text).replace("|", r"\|")


def _num(x, decimals: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    s = f"{float(x):.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def _decimals(metric: str) -> int:
    return DECIMALS.get(metric, DEFAULT_DECIMALS)


def _metric_text(metric: str) -> str:
    label = METRIC_LABELS.get(metric, metric)
    unit = METRIC_UNITS.get(metric)
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    return f"{label} ({unit + ', ' if unit else ''}{better} is better)"


def _seeds_text(ns) -> str:
    ns = sorted({int(n) for n in ns})
    if not ns:
        return "seeds"
    if len(ns) == 1:
        return f"{ns[0]} seed{'s' if ns[0] != 1 else ''}"
    return f"{ns[0]}–{ns[-1]} seeds"


def _reference_text(methods) -> str:
    what = {FP_METHOD: "full precision", BICUBIC_METHOD: "bicubic upsampling"}
    refs = [m for m in method_order(methods) if m in REFERENCE_METHODS]
    if not refs:
        return f"no {FP_METHOD} reference row in these results."
    if len(refs) == 1:
        return f"the {refs[0]} row is the {what[refs[0]]} reference and is not ranked."
    return (f"the {' and '.join(refs)} rows are references ({', '.join(what[r] for r in refs)}) "
            f"and are not ranked.")


SIGNIFICANCE_TEXT = ("marks: H = against the uniform strategy chosen on the held calibration part (per seed), "
                     "O = against the test-chosen (oracle) best uniform; + / - = significantly better / worse "
                     "(p < 0.05; McNemar's exact test on paired images for top-1 and agreement, a paired bootstrap "
                     "95% interval otherwise, the exact sign-flip test below 17 images; seeds pooled), = not "
                     "significant, · = the row is that strategy")


def _marks_for_column(per_image, means: dict, **cell) -> dict | None:
    """The significance of one column's quantized rows, or None without per-image results."""
    from ..paired import cell_marks

    if per_image is None or not means:
        return None
    info = cell_marks(per_image, means, **cell)
    if all(m.endswith("?") for mk in info["marks"].values() for m in mk.split()):
        return None
    return info


def _apply_marks(info: dict, means: dict, dec: int, md_cells: dict, tex_cells: dict, col) -> set:
    """Append one column's marks to its cells, add its two best-uniform rows; the cells to bold."""
    for m, mk in info["marks"].items():
        md_cells[(m, col)] += f" {mk}"
        tex_cells[(m, col)] += f" {latex_escape(mk).replace('·', '.')}"
    _uniform_rows(info, means, dec, md_cells, tex_cells, col)
    return {(m, col) for m in info["tied"]}


def _uniform_rows(info: dict, means: dict, dec: int, md_cells: dict, tex_cells: dict, col) -> None:
    """The two best-uniform rows of a column: value (strategy)."""
    if info["oracle"] is not None:
        text = f"{_num(means[info['oracle']], dec)} ({info['oracle']})"
        md_cells[(ORACLE_ROW, col)] = text
        tex_cells[(ORACLE_ROW, col)] = latex_escape(text)
    if info["held_mean"] is not None:
        names = "/".join(sorted(set(info["held"].values())))
        text = f"{_num(info['held_mean'], dec)} ({names})"
        md_cells[(HELD_ROW, col)] = text
        tex_cells[(HELD_ROW, col)] = latex_escape(text)


def _safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-") or "x"


def _best(values: dict, lower: bool) -> set:
    """Keys whose displayed value is the best; ``values`` maps key -> displayed string."""
    nums = {k: float(v) for k, v in values.items() if v != "—"}
    if not nums:
        return set()
    best = min(nums.values()) if lower else max(nums.values())
    return {k for k, v in nums.items() if v == best}


def _render(caption: str, rows: list[str], cols: list[str], md_cells: dict, tex_cells: dict,
            bold: set, n_ref: int) -> tuple[str, str]:
    """(caption + Markdown table, booktabs LaTeX tabular) from per-(row, col) cell texts."""
    import pandas as pd

    md = [f"| Method | {' | '.join(_md_escape(c) for c in cols)} |",
          "|:---|" + "---:|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            t = md_cells.get((r, c), "—")
            cells.append(f"**{t}**" if (r, c) in bold else t)
        md.append(f"| {_md_escape(r)} | {' | '.join(cells)} |")
    md_text = f"{caption}\n\n" + "\n".join(md) + "\n"

    data = {"Method": [latex_escape(r) for r in rows]}
    for c in cols:
        col = []
        for r in rows:
            t = tex_cells.get((r, c), "--")
            col.append(rf"\textbf{{{t}}}" if (r, c) in bold else t)
        data[latex_escape(c)] = col
    frame = pd.DataFrame(data)
    tex = frame.style.hide(axis="index").to_latex(hrules=True, column_format="l" + "r" * len(cols))
    if 0 < n_ref < len(rows):  # a rule between the reference rows and the ranked methods
        lines = tex.splitlines()
        head = lines.index(r"\midrule")
        lines.insert(head + 1 + n_ref, r"\midrule")
        tex = "\n".join(lines) + "\n"
    plain = re.sub(r"\*\*|\s+", lambda m: "" if m.group() == "**" else " ", caption)
    comment = "% " + plain.replace("±", "+/-").replace("—", "-").replace("–", "-") + "\n"  # ASCII-only
    return md_text, comment + tex


# -- tables ---------------------------------------------------------------------------------
def _stats(frame) -> dict:
    """(method, column) -> (mean, std, n_seeds, delta_fp) from summary rows already narrowed down."""
    out = {}
    for row in frame.itertuples(index=False):
        key = (row.method, row.backbone)
        if key in out:
            log.warning("several summary rows for %s; using the first", key)
            continue
        out[key] = (row.mean, row.std, int(row.n_seeds), row.delta_fp)
    return out


def cls_tables(summary, task: str, per_image=None) -> dict[str, tuple[str, str]]:
    """One table per (dataset, W/A bits, metric) of a classification task.

    Rows are methods (FP reference first), columns backbones; a cell is "mean ± std" (std only
    with more than one seed).  With ``per_image`` (:class:`dqss.paired.PerImage`) every quantized cell
    carries its significance marks against the held-chosen and the oracle best uniform strategy, both
    shown as rows, and **bold** is the best method and every method not significantly worse than it;
    without, the best at the displayed precision is bold.  Keys are file stems
    ``{task}_{dataset}_w{W}a{A}_{metric}``.
    """
    sub = summary[summary["task"] == task]
    tables: dict[str, tuple[str, str]] = {}
    for dataset in sorted(sub["dataset"].unique()):
        d = sub[sub["dataset"] == dataset]
        ref = d[d["method"].isin(REFERENCE_METHODS)]
        quant = d[~d["method"].isin(REFERENCE_METHODS)]
        settings = sorted({(int(w), int(a)) for w, a in zip(quant["w_bits"], quant["a_bits"])})
        for w, a in settings:
            qs = quant[(quant["w_bits"] == w) & (quant["a_bits"] == a)]
            for metric in _metric_order(qs["metric"].unique()):
                qm = qs[qs["metric"] == metric]
                rm = ref[(ref["metric"] == metric) & ref["backbone"].isin(qm["backbone"].unique())]
                cols = sorted(qm["backbone"].unique())
                methods = method_order(set(rm["method"]) | set(qm["method"]))
                n_ref = sum(m in REFERENCE_METHODS for m in methods)
                stats = _stats(rm) | _stats(qm)
                dec = _decimals(metric)
                md_cells, tex_cells = {}, {}
                for key, (mean, std, n, _) in stats.items():
                    m = _num(mean, dec)
                    spread = n > 1 and m != "—"
                    md_cells[key] = f"{m} ± {_num(std, dec)}" if spread else m
                    tex_cells[key] = rf"{m} $\pm$ {_num(std, dec)}" if spread else m
                bold, marked = set(), False
                for c in cols:
                    shown = {(m, c): _num(stats[(m, c)][0], dec) for m in methods
                             if m not in REFERENCE_METHODS and (m, c) in stats}
                    means = {m: stats[(m, c)][0] for m in methods if m not in REFERENCE_METHODS and (m, c) in stats}
                    info = _marks_for_column(per_image, means, task=task, dataset=dataset, backbone=c, w=w, a=a,
                                             metric=metric, lower_is_better=metric in LOWER_IS_BETTER)
                    if info is None:
                        bold |= _best(shown, metric in LOWER_IS_BETTER)
                        continue
                    marked = True
                    bold |= _apply_marks(info, means, dec, md_cells, tex_cells, c)
                if marked:
                    methods = method_order(set(methods) | {k[0] for k in md_cells})
                rule = ("**bold** = the best quantized method per backbone and every one not significantly worse "
                        f"than it; {SIGNIFICANCE_TEXT}; " if marked else
                        "**bold** = best quantized method per backbone (ties at the shown precision all bold); ")
                caption = (f"**{task} — {dataset}, W{w}A{a}: {_metric_text(metric)}.** Mean ± std over "
                           f"{_seeds_text(qm['n_seeds'])}; " + rule + _reference_text(methods))
                stem = _safe_stem(f"{task}_{dataset}_w{w}a{a}_{metric}")
                tables[stem] = _render(caption, methods, cols, md_cells, tex_cells, bold, n_ref)
    return tables


def sr_tables(summary, task: str = "sr_ptq", per_image=None) -> dict[str, tuple[str, str]]:
    """One table per (backbone, W/A bits) of a super-resolution task.

    Rows are methods (fp32 and bicubic references first), columns the test sets (Set5, Set14,
    B100, Urban100, then others); a cell is "PSNR/SSIM" (means over seeds).  The best quantized
    method per test set by PSNR is bold; with ``per_image``, the marks and bold of :func:`cls_tables`
    by PSNR.  Keys are file stems ``{task}_{backbone}_w{W}a{A}``.
    """
    sub = summary[summary["task"] == task]
    ref = sub[sub["method"].isin(REFERENCE_METHODS)]
    quant = sub[~sub["method"].isin(REFERENCE_METHODS)]
    tables: dict[str, tuple[str, str]] = {}
    for backbone in sorted(quant["backbone"].unique()):
        qb = quant[quant["backbone"] == backbone]
        rb = ref[ref["backbone"] == backbone]
        if not (rb["method"] == BICUBIC_METHOD).any():
            # bicubic does not depend on the backbone: borrow it from wherever it was recorded
            bic = ref[ref["method"] == BICUBIC_METHOD].sort_values("backbone", kind="stable")
            rb = _concat([rb, bic.drop_duplicates(["dataset", "metric"])])
        for w, a in sorted({(int(w), int(a)) for w, a in zip(qb["w_bits"], qb["a_bits"])}):
            qs = qb[(qb["w_bits"] == w) & (qb["a_bits"] == a)]
            cols = _sr_dataset_order(qs["dataset"].unique())
            rows_frame = _concat([rb[rb["dataset"].isin(cols)], qs])
            methods = method_order(rows_frame["method"].unique())
            n_ref = sum(m in REFERENCE_METHODS for m in methods)
            cell = {}
            for r in rows_frame.itertuples(index=False):
                cell.setdefault((r.method, r.dataset), {}).setdefault(r.metric, r.mean)
            rank_metric = "psnr" if (qs["metric"] == "psnr").any() else "ssim"
            md_cells, shown = {}, {}
            for key, vals in cell.items():
                p, s = _num(vals.get("psnr"), SR_PSNR_DECIMALS), _num(vals.get("ssim"), SR_SSIM_DECIMALS)
                md_cells[key] = f"{p}/{s}"
                if key[0] not in REFERENCE_METHODS:
                    shown[key] = p if rank_metric == "psnr" else s
            tex_cells = {k: v.replace("—", "--") for k, v in md_cells.items()}
            bold, marked = set(), False
            dec = SR_PSNR_DECIMALS if rank_metric == "psnr" else SR_SSIM_DECIMALS
            for c in cols:
                means = {k[0]: v.get(rank_metric) for k, v in cell.items()
                         if k[1] == c and k[0] not in REFERENCE_METHODS and v.get(rank_metric) is not None}
                info = _marks_for_column(per_image, means, task=task, dataset=c, backbone=backbone, w=w, a=a,
                                         metric=rank_metric, lower_is_better=False)
                if info is None:
                    bold |= _best({k: v for k, v in shown.items() if k[1] == c}, lower=False)
                    continue
                marked = True
                bold |= _apply_marks(info, means, dec, md_cells, tex_cells, c)
            if marked:
                methods = method_order(set(methods) | {k[0] for k in md_cells})
            rule = (f"**bold** = the best quantized method per test set by {rank_metric.upper()} and every one not "
                    f"significantly worse than it; {SIGNIFICANCE_TEXT}; " if marked else
                    f"**bold** = best quantized method per test set by {rank_metric.upper()} (ties all bold); ")
            caption = (f"**{task} — {backbone}, W{w}A{a}: PSNR (dB) / SSIM per test set (higher is "
                       f"better).** Mean over {_seeds_text(qs['n_seeds'])}; " + rule + _reference_text(methods))
            stem = _safe_stem(f"{task}_{backbone}_w{w}a{a}")
            tables[stem] = _render(caption, methods, cols, md_cells, tex_cells, bold, n_ref)
    return tables


def _concat(frames):
    import pandas as pd

    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=GROUP_KEYS + ["mean", "std", "n_seeds", "delta_fp"])


# -- figures --------------------------------------------------------------------------------
def _new_figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, formats: tuple[str, ...]) -> list[Path]:
    written = []
    for fmt in formats:
        p = path.with_suffix("." + fmt)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = PNG_METADATA if fmt == "png" else PDF_METADATA if fmt == "pdf" else None
        fig.savefig(p, format=fmt, metadata=meta)
        written.append(p)
    return written


def _figure_path(path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in (".png", ".pdf") else path


def plot_accuracy_drop(summary, task: str, metric: str, path, colors: dict | None = None) -> list[Path]:
    """Grouped bars of the mean change vs FP (std error bars) per backbone, one panel per W/A.

    Writes ``path`` as PNG (dpi 150) and PDF (same stem); returns both paths.  ``colors`` maps
    method -> colour; by default :func:`method_colors` over all methods in ``summary``.
    """
    import matplotlib
    import numpy as np

    colors = colors or method_colors(summary["method"].unique())
    d = summary[(summary["task"] == task) & (summary["metric"] == metric)
                & ~summary["method"].isin(REFERENCE_METHODS)]
    d = d[d["delta_fp"].notna()]
    if d.empty:
        raise ValueError(f"no quantized results with an FP reference for task '{task}', metric '{metric}'")
    datasets = sorted(d["dataset"].unique())
    settings = sorted({(int(w), int(a)) for w, a in zip(d["w_bits"], d["a_bits"])})
    methods = method_order(d["method"].unique())
    n_bb = max(d.groupby("dataset")["backbone"].nunique())
    panel_w = min(max(1.2 + n_bb * (0.22 * len(methods) + 0.5), 3.6), 12.0)
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(figsize=(panel_w * len(settings), 2.9 * len(datasets) + 0.9), layout="constrained")
        axes = fig.subplots(len(datasets), len(settings), squeeze=False)
        width = 0.8 / len(methods)
        handles = {}
        for i, dataset in enumerate(datasets):
            for j, (w, a) in enumerate(settings):
                ax = axes[i][j]
                cell = d[(d["dataset"] == dataset) & (d["w_bits"] == w) & (d["a_bits"] == a)]
                backbones = sorted(d[d["dataset"] == dataset]["backbone"].unique())
                x = np.arange(len(backbones))
                for k, m in enumerate(methods):
                    mm = cell[cell["method"] == m].set_index("backbone")
                    idx = [b for b in backbones if b in mm.index]
                    if not idx:
                        continue
                    pos = x[[backbones.index(b) for b in idx]] - 0.4 + width * (k + 0.5)
                    err = [s if n > 1 else 0.0 for s, n in zip(mm.loc[idx, "std"], mm.loc[idx, "n_seeds"])]
                    bars = ax.bar(pos, mm.loc[idx, "delta_fp"].to_numpy(float), width * 0.92,
                                  yerr=err, color=colors.get(m, "#333333"), label=m,
                                  error_kw={"elinewidth": 0.8, "ecolor": "#222222"})
                    handles.setdefault(m, bars)
                ax.axhline(0.0, color="black", linewidth=0.8)
                ax.set_xticks(x, backbones, rotation=20 if len(backbones) > 3 else 0,
                              ha="right" if len(backbones) > 3 else "center")
                ax.set_xlim(-0.55, len(backbones) - 0.45)
                title = f"W{w}A{a}" + (f" — {dataset}" if len(datasets) > 1 else "")
                ax.set_title(title)
                if j == 0:
                    unit = METRIC_UNITS.get(metric)
                    unit = "pp" if unit == "%" else unit
                    arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
                    ax.set_ylabel(f"Δ {metric} vs FP{f' ({unit})' if unit else ''}, {arrow} better")
        fig.suptitle(f"{task}: change in {METRIC_LABELS.get(metric, metric)} vs full precision "
                     f"(mean ± std over seeds)")
        fig.legend([handles[m] for m in methods if m in handles], [m for m in methods if m in handles],
                   loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
        return _save(fig, _figure_path(path), ("png", "pdf"))


def _assignment_rows(assignments: list[dict]):
    def key(a):
        return (str(a.get("method", DQSS_METHOD)), int(a.get("w_bits", 0)), int(a.get("a_bits", 0)),
                int(a.get("seed", 0)))

    return sorted(assignments, key=key)


def plot_assignment_map(assignments: list[dict], path, title: str, colors: dict | None = None) -> list[Path]:
    """Per-layer chosen strategy of DQSS assignments of one backbone, as a categorical heat map.

    Columns are layers in network order; per assignment (sorted by w_bits, a_bits, seed) one row
    for the weight and one for the activation strategy.  The cell colour is the chosen strategy;
    its saturation is the softmax probability of that choice (pale = uncertain).  Writes a PNG
    at ``path`` (suffix .png) and returns its path.
    """
    import matplotlib
    import numpy as np
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    if not assignments:
        raise ValueError("plot_assignment_map: no assignments given")
    backbones = sorted({str(a.get("backbone", "?")) for a in assignments})
    if len(backbones) > 1:
        raise ValueError(f"plot_assignment_map draws one backbone per figure; got {backbones}")
    for a in assignments:
        if not isinstance(a.get("layers"), list):
            raise ValueError("an assignment lacks its 'layers' list; expected dqss.ptq.export_assignment output")
    rows_in = _assignment_rows(assignments)
    layers: list[str] = []
    for a in rows_in:
        for e in a["layers"]:
            if e["name"] not in layers:
                layers.append(e["name"])
    strategies = set()
    for a in rows_in:
        strategies |= set(a.get("candidates") or [])
        for e in a["layers"]:
            strategies |= {e["weight"], e["act"]}
    colors = colors or method_colors(strategies)
    order = method_order(strategies)

    n_rows, n_cols = 2 * len(rows_in), len(layers)
    img = np.full((n_rows, n_cols, 3), 0.92)  # light grey: layer absent from that assignment
    labels, differ = [], []
    col = {n: i for i, n in enumerate(layers)}
    for r, a in enumerate(rows_in):
        tag = f"W{a.get('w_bits', '?')}A{a.get('a_bits', '?')} s{a.get('seed', '?')}"
        if a.get("method", DQSS_METHOD) != DQSS_METHOD:
            tag = f"{a['method']} {tag}"
        for k, role in enumerate(("weight", "act")):
            labels.append(f"{tag} {role}")
            for e in a["layers"]:
                choice = e[role]
                probs = e.get(f"{role}_probs") or {}
                p, k_min = probs.get(choice), 1.0 / max(len(probs), 1)
                # saturation: full for a certain choice, pale for a uniform (undecided) softmax
                alpha = 1.0 if p is None or k_min >= 1 else 0.2 + 0.8 * max(float(p) - k_min, 0.0) / (1 - k_min)
                rgb = np.array(to_rgb(colors.get(choice, "#333333")))
                img[2 * r + k, col[e["name"]]] = alpha * rgb + (1 - alpha) * 1.0
                ref = a.get("reference_uniform")
                if ref and choice != ref:
                    differ.append((col[e["name"]], 2 * r + k))

    step = 1 if n_cols <= 60 else math.ceil(n_cols / 60)
    with matplotlib.rc_context(STYLE):
        longest = max(len(n) for n in layers)
        fig_w = min(max(3.0 + 0.16 * min(n_cols, 60 * step) / step + 0.02 * n_cols, 7.0), 24.0)
        fig_h = 1.6 + 0.24 * n_rows + 0.055 * min(longest, 40)
        fig = _new_figure(figsize=(fig_w, fig_h), layout="constrained")
        ax = fig.subplots()
        ax.imshow(img, aspect="auto", interpolation="nearest")
        if differ:
            xs, ys = zip(*differ)
            ax.scatter(xs, ys, s=4, color="black", marker="o", linewidths=0)
        ax.grid(False)
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        ticks = list(range(0, n_cols, step))
        ax.set_xticks(ticks, [layers[i] for i in ticks], rotation=90, fontsize=5.5)
        ax.set_yticks(range(n_rows), labels, fontsize=7)
        ax.tick_params(length=0)
        for r in range(1, len(rows_in)):
            ax.axhline(2 * r - 0.5, color="white", linewidth=2.0)
        ax.set_xlabel("layer (network order)" + (f"; one label every {step} layers" if step > 1 else ""))
        ax.set_title(title)
        used = [s for s in order if s in strategies]
        fig.legend([Patch(color=colors.get(s, "#333333")) for s in used], used, loc="outside right center",
                   title="strategy\n(pale = low prob.)", frameon=False)
        return _save(fig, _figure_path(path), ("png",))


def read_histories(paths) -> "pandas.DataFrame":
    """Training curves (``train.csv`` of QAT jobs) as one frame keyed by their result path."""
    import pandas as pd

    frames = []
    for p in sorted(str(Path(p).as_posix()) for p in paths):
        job = parse_job_path(p)
        if job.file != "train.csv":
            raise ValueError(f"{p}: not a training curve (train.csv)")
        h = pd.read_csv(p)
        for k, v in (("task", job.task), ("dataset", job.dataset), ("backbone", job.backbone),
                     ("method", job.method), ("w", job.w_bits), ("a", job.a_bits), ("seed", job.seed)):
            h[k] = v
        frames.append(h)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_training_curves(hist, task: str, path, colors: dict | None = None) -> list[Path]:
    """Per backbone and bit width: training loss and test top-1 per epoch, one line per method
    (mean over seeds, shaded min..max).  DQSS's freeze point shows as the end of its dashed
    (search) segment."""
    import matplotlib

    d = hist[hist["task"] == task]
    if d.empty:
        raise ValueError(f"no training curves for task '{task}'")
    panels = sorted({(b, int(w), int(a)) for b, w, a in zip(d["backbone"], d["w"], d["a"])})
    methods = method_order(d["method"].unique())
    colors = colors or method_colors(methods)
    metrics = [m for m in ("loss", "test_top1") if m in d.columns]
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(figsize=(3.4 * len(metrics), 2.5 * len(panels) + 0.8), layout="constrained")
        axes = fig.subplots(len(panels), len(metrics), squeeze=False)
        handles = {}
        for i, (bb, w, a) in enumerate(panels):
            cell = d[(d["backbone"] == bb) & (d["w"] == w) & (d["a"] == a)]
            for j, metric in enumerate(metrics):
                ax = axes[i][j]
                for m in methods:
                    g = cell[cell["method"] == m].groupby("epoch")[metric]
                    if not len(g):
                        continue
                    mean, lo, hi = g.mean(), g.min(), g.max()
                    x = mean.index.to_numpy() + 1
                    (line,) = ax.plot(x, mean.to_numpy(), color=colors.get(m, "#333333"), linewidth=1.3,
                                      marker="o", markersize=2.5, label=m)
                    ax.fill_between(x, lo.to_numpy(), hi.to_numpy(), color=colors.get(m, "#333333"),
                                    alpha=0.15, linewidth=0)
                    phases = cell[cell["method"] == m].groupby("epoch")["phase"].first()
                    searched = x[(phases == "search").to_numpy()]
                    if len(searched):
                        ax.axvspan(0.5, searched.max() + 0.5, color=colors.get(m, "#333333"), alpha=0.04)
                    handles.setdefault(m, line)
                ax.set_xlabel("epoch")
                ax.set_ylabel({"loss": "training loss", "test_top1": "test top-1 (%)"}[metric])
                ax.set_title(f"{bb}, W{w}A{a}")
        fig.suptitle(f"{task}: training curves\n(mean over seeds, band = min..max; shaded = DQSS search epochs)")
        fig.legend([handles[m] for m in methods if m in handles], [m for m in methods if m in handles],
                   loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
        return _save(fig, _figure_path(path), ("png", "pdf"))


def read_crops(paths) -> dict:
    """SR output crops by (task, backbone, method, w, a, seed); the ground truth under method 'gt'."""
    out = {}
    for p in sorted(str(Path(p).as_posix()) for p in paths):
        job = parse_job_path(p)
        if job.file not in ("crop.png", "crop_gt.png"):
            raise ValueError(f"{p}: not an output crop (crop.png or crop_gt.png)")
        method = "gt" if job.file == "crop_gt.png" else job.method
        out[(job.task, job.backbone, method, job.w_bits, job.a_bits, job.seed)] = p
    return out


def best_uniform(summary, task: str, backbone: str, w: int, a: int, metric: str = "psnr") -> str | None:
    """The uniform strategy with the highest mean ``metric`` averaged over the test sets."""
    d = summary[(summary["task"] == task) & (summary["backbone"] == backbone) & (summary["w_bits"] == w)
                & (summary["a_bits"] == a) & (summary["metric"] == metric)
                & ~summary["method"].isin(REFERENCE_METHODS) & ~summary["method"].map(is_dqss)]
    if d.empty:
        return None
    means = d.groupby("method")["mean"].mean()
    return str(means.sort_index().idxmax())


def plot_sr_crops(summary, crops: dict, task: str, backbone: str, path) -> list[Path]:
    """Rows = bit widths; columns = ground truth, bicubic, FP, the best uniform strategy and DQSS
    (first seed), each titled with its mean PSNR over the test sets."""
    import matplotlib
    from matplotlib.image import imread

    mine = {k: v for k, v in crops.items() if k[0] == task and k[1] == backbone}
    refs = {k[2]: v for k, v in mine.items() if k[2] in ("gt", FP_METHOD, BICUBIC_METHOD)}
    settings = sorted({(k[3], k[4]) for k in mine if k[2] not in refs})
    if not settings or set(refs) != {"gt", FP_METHOD, BICUBIC_METHOD}:
        raise ValueError(f"plot_sr_crops: {task}/{backbone} lacks the ground-truth, bicubic or FP crop, or any "
                         "quantized crop")

    def psnr(method, w=32, a=32):
        d = summary[(summary["task"] == task) & (summary["backbone"] == backbone) & (summary["method"] == method)
                    & (summary["w_bits"] == w) & (summary["a_bits"] == a) & (summary["metric"] == "psnr")]
        return f"{d['mean'].mean():.2f} dB" if len(d) else "—"

    with matplotlib.rc_context(STYLE):
        fig = _new_figure(figsize=(9.0, 2.1 * len(settings) + 0.5), layout="constrained")
        axes = fig.subplots(len(settings), 5, squeeze=False)
        for i, (w, a) in enumerate(settings):
            best = best_uniform(summary, task, backbone, w, a)
            panels = [("ground truth", refs["gt"]), (f"bicubic\n{psnr(BICUBIC_METHOD)}", refs[BICUBIC_METHOD]),
                      (f"FP\n{psnr(FP_METHOD)}", refs[FP_METHOD])]
            for label, method in ((f"best uniform: {best}", best), ("DQSS", DQSS_METHOD)):
                seed = min((k[5] for k in mine if k[2] == method and k[3:5] == (w, a)), default=None)
                panels.append((f"{label} W{w}A{a}\n{psnr(method, w, a)}",
                               mine.get((task, backbone, method, w, a, seed)) if seed is not None else None))
            for j, (title, p) in enumerate(panels):
                ax = axes[i][j]
                ax.set_axis_off()
                if p is not None:
                    ax.imshow(imread(p), interpolation="nearest")
                ax.set_title(title, fontsize=8)
        fig.suptitle(f"{task}, {backbone}: the most detailed crop of a test image\n(quantized: first seed; "
                     "PSNR = mean over test sets and seeds)")
        return _save(fig, _figure_path(path), ("png",))


# -- the report -----------------------------------------------------------------------------
def _read_metrics(metrics_csv):
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{metrics_csv}: missing columns {missing}; is it the output of dqss.results.gather?")
    for c in ("w_bits", "a_bits", "seed"):
        df[c] = df[c].astype("int64")
    for c in ("task", "dataset", "backbone", "method", "metric"):
        df[c] = df[c].astype(str)
    for c in PROVENANCE_COLUMNS:
        df[c] = df[c].fillna("").astype(str) if c in df.columns else ""
    check_one_setting(df, metrics_csv)
    return df


def check_one_setting(df, source) -> None:
    """Refuse a table cell (mean and std over seeds) whose rows come from different job settings."""
    keys = [k for k in GROUP_KEYS if k != "metric"]
    n = df[df["config_hash"] != ""].groupby(keys)["config_hash"].nunique()
    mixed = n[n > 1]
    if len(mixed):
        cells = ["/".join(str(v) for v in idx) for idx in mixed.index[:5]]
        raise ValueError(f"{source}: the seeds of {len(mixed)} result(s) come from different settings (config_hash), "
                         f"e.g. {cells}: a mean over them would mix two configurations. Rerun the workflow so that "
                         "every job is computed with the current config, then rebuild the report")


def _load_assignments(paths) -> dict[tuple[str, str], list[dict]]:
    """The DQSS assignment files by (task, backbone), read with the jobs' own check."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for p in sorted(Path(p) for p in paths):
        data = load_assignment(p)
        task = data.get("task") or parse_job_path(p).task
        grouped.setdefault((str(task), str(data.get("backbone", "unknown"))), []).append(data)
    return grouped


def _provenance_line(df) -> str:
    def uniq(c):
        vals = sorted({v for v in df[c] if v}) if c in df.columns else []
        return ", ".join(f"`{v}`" for v in vals) if vals else "n/a"

    n_settings = len({v for v in df["config_hash"] if v})
    parts = [f"git_rev {uniq('git_rev')}", f"device {uniq('device')}", f"torch {uniq('torch')}",
             f"timm {uniq('timm')}", f"job settings: {n_settings} (a config_hash per job; one per table cell)"]
    revs = {v for v in df["git_rev"] if v}
    if len(revs) > 1:
        log.warning("results come from %d git revisions: %s", len(revs), sorted(revs))
    warn = f" — **warning: results mix {len(revs)} revisions**" if len(revs) > 1 else ""
    dirty = " — **warning: uncommitted changes (-dirty)**" if any(v.endswith("-dirty") for v in revs) else ""
    return "**Provenance:** " + " · ".join(parts) + warn + dirty


def write_report(metrics_csv, assignment_paths: list, outdir, history_paths: list | None = None,
                 crop_paths: list | None = None, job_paths: list | None = None,
                 selection_paths: list | None = None) -> list[Path]:
    """Summary CSV, tables (.md, .tex), figures (.png, .pdf) and ``report.md`` under ``outdir``.

    ``job_paths`` (the jobs' metrics.json files) give the per-image values of the significance marks;
    ``selection_paths`` (the DQSS jobs' selection.json) the discretization-gap tables and the figure of
    softmax weights against measured effects."""
    from ..paired import load_per_image
    from .selection import gap_tables, load_selections, plot_softmax_vs_measured

    outdir = Path(outdir)
    tdir, fdir = outdir / "tables", outdir / "figures"
    tdir.mkdir(parents=True, exist_ok=True)
    fdir.mkdir(parents=True, exist_ok=True)
    df = _read_metrics(metrics_csv)
    summary = summarize(df)
    per_image = load_per_image(job_paths) if job_paths else None
    selections = load_selections(selection_paths)
    written: list[Path] = []
    summary.to_csv(outdir / "summary.csv", index=False)
    written.append(outdir / "summary.csv")

    groups = _load_assignments(assignment_paths or [])
    strategies = {s for items in groups.values() for a in items for s in (a.get("candidates") or [])}
    strategies |= {e[r] for items in groups.values() for a in items for e in a["layers"] for r in ("weight", "act")}
    colors = method_colors(set(summary["method"]) | strategies)

    lines = ["# DQSS benchmark report", "", _provenance_line(df), "",
             f"Source: `{Path(metrics_csv).name}` — {len(df)} rows, tasks "
             f"{', '.join(f'`{t}`' for t in sorted(df['task'].unique()))}. "
             f"Per-group statistics: [summary.csv](summary.csv).", ""]
    for task in sorted(summary["task"].unique()):
        tables = sr_tables(summary, task, per_image) if _is_sr(task) else cls_tables(summary, task, per_image)
        tables |= gap_tables([r for r in selections if r["task"] == task], df)
        lines += [f"## {task}", ""]
        if not tables:
            lines += ["_No quantized results for this task._", ""]
        for stem, (md, tex) in tables.items():
            for suffix, text in ((".md", md), (".tex", tex)):
                p = tdir / f"{stem}{suffix}"
                p.write_text(text)
                written.append(p)
            lines += [f"### {stem}", "", md.rstrip("\n"), "",
                      f"Files: [tables/{stem}.md](tables/{stem}.md), [tables/{stem}.tex](tables/{stem}.tex)", ""]
        if _is_sr(task):
            crops = read_crops(crop_paths or [])
            for backbone in sorted({k[1] for k in crops if k[0] == task}):
                stem = _safe_stem(f"{task}_{backbone}_crops")
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
            stem = _safe_stem(f"{task}_{metric}_drop")
            paths = plot_accuracy_drop(summary, task, metric, fdir / stem, colors=colors)
            written += paths
            lines += [f"### Figure: {task}, change in {metric} vs FP", "",
                      f"![{task} {metric} drop](figures/{stem}.png)", "",
                      f"[PNG](figures/{stem}.png) · [PDF](figures/{stem}.pdf)", ""]
    hist = read_histories(history_paths or [])
    for task in sorted(hist["task"].unique()) if len(hist) else []:
        stem = _safe_stem(f"{task}_training_curves")
        written += plot_training_curves(hist, task, fdir / stem, colors=colors)
        lines += [f"### Figure: {task}, training curves", "", f"![{task} training curves](figures/{stem}.png)", "",
                  f"[PNG](figures/{stem}.png) · [PDF](figures/{stem}.pdf)", ""]
    if groups:
        lines += ["## DQSS strategy assignments", "",
                  "Per layer, the strategy DQSS chose for weights and activations; paler cells had a "
                  "lower softmax probability; a dot marks a tensor whose strategy differs from the uniform "
                  "strategy chosen on the held calibration part.", ""]
    for (task, backbone), items in sorted(groups.items()):
        stem = _safe_stem(f"assign_{task}_{backbone}")
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
            stem = _safe_stem(f"softmax_vs_measured_{rec['task']}_{rec['backbone']}")
            written += plot_softmax_vs_measured(rec, match[0], fdir / stem)
            lines += ["## DQSS: softmax weight against measured effect", "",
                      "As in DARTS-PT (Wang et al., ICLR 2021, Fig. 1): a candidate's softmax weight does not say "
                      "how good it is alone; each point is one tensor switched to one candidate in the first "
                      "selection sweep.", "", f"![softmax vs measured](figures/{stem}.png)", ""]
    report = outdir / "report.md"
    report.write_text("\n".join(lines).rstrip("\n") + "\n")
    written.append(report)
    log.info("report: wrote %d files under %s", len(written), outdir)
    return written
