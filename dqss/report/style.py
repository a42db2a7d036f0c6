"""The report's fixed look: method order and colours, the plot style, number formats and labels.

Everything the report writes is deterministic: no timestamps, a fixed plotting style, a fixed colour
per method, and figure metadata stripped, so rerunning the report on the same results gives
byte-identical files.  Plots use the Agg canvas directly (no pyplot, no global backend switch).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..results import BICUBIC_METHOD, DQSS_METHODS, FP_METHOD, atomic_write, is_dqss

HELD_ROW = "uniform: held-chosen"
ORACLE_ROW = "uniform: oracle"
LOWER_IS_BETTER = frozenset({"kl_fp"})

DECIMALS = {"top1": 2, "top5": 2, "agree_fp": 2, "kl_fp": 4, "psnr": 2, "ssim": 3}
DEFAULT_DECIMALS = 2
SR_PSNR_DECIMALS = 2
SR_SSIM_DECIMALS = 4  # the SR cell reads "32.45/0.9012", as SR papers report SSIM
METRIC_ORDER = ["top1", "top5", "agree_fp", "kl_fp", "psnr", "ssim"]
METRIC_LABELS = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "agree_fp": "agreement with FP",
                 "kl_fp": "KL(FP || quantized)", "psnr": "PSNR", "ssim": "SSIM"}
METRIC_UNITS = {"top1": "%", "top5": "%", "agree_fp": "%", "psnr": "dB"}
SR_DATASET_ORDER = ["set5", "set14", "b100", "urban100"]
SR_METRICS = ("psnr", "ssim")  # a task whose rows carry these is a super-resolution task

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


def metric_order(metrics) -> list[str]:
    ms = {str(m) for m in metrics}
    return [m for m in METRIC_ORDER if m in ms] + sorted(ms - set(METRIC_ORDER))


def sr_dataset_order(datasets) -> list[str]:
    def rank(d: str):
        k = d.lower()
        return (SR_DATASET_ORDER.index(k), "") if k in SR_DATASET_ORDER else (len(SR_DATASET_ORDER), k)

    return sorted({str(d) for d in datasets}, key=rank)


def sr_tasks(frame) -> list[str]:
    """The tasks whose rows (metrics.csv or summary rows) carry SR metrics (PSNR, SSIM), sorted: the report lays
    them out as super-resolution tables, whatever the task's name."""
    return sorted({str(t) for t in frame.loc[frame["metric"].isin(SR_METRICS), "task"]})


# -- figures and file names -----------------------------------------------------------------
def new_figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path, formats: tuple[str, ...]) -> list[Path]:
    written = []
    for fmt in formats:
        p = path.with_suffix("." + fmt)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = PNG_METADATA if fmt == "png" else PDF_METADATA if fmt == "pdf" else None
        atomic_write(p, lambda tmp: fig.savefig(tmp, format=fmt, metadata=meta, bbox_inches="tight",
                                                pad_inches=0.05))  # titles, legends whole
        written.append(p)
    return written


def figure_path(path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in (".png", ".pdf") else path


def safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-") or "x"
