"""The report's figures: accuracy drop, DQSS assignment map, QAT training curves and SR output crops.

Each is drawn on its own Agg figure inside the project style (:mod:`dqss.report.style`) and written
without metadata, so the files are byte-stable."""
from __future__ import annotations

import math
from pathlib import Path

from ..results import BICUBIC_METHOD, DQSS_METHOD, FP_METHOD, REFERENCE_METHODS, is_dqss
from .style import (LOWER_IS_BETTER, METRIC_LABELS, METRIC_UNITS, STYLE, figure_path, new_figure, save_figure,
                    method_colors, method_order)


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
        fig = new_figure(figsize=(panel_w * len(settings), 2.9 * len(datasets) + 0.9), layout="constrained")
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
        return save_figure(fig, figure_path(path), ("png", "pdf"))


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
            raise ValueError("an assignment lacks its 'layers' list; expected dqss.algorithms.ptq.export_assignment "
                             "output")
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
        fig = new_figure(figsize=(fig_w, fig_h), layout="constrained")
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
        return save_figure(fig, figure_path(path), ("png",))


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
        fig = new_figure(figsize=(3.4 * len(metrics), 2.5 * len(panels) + 0.8), layout="constrained")
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
        return save_figure(fig, figure_path(path), ("png", "pdf"))


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
        fig = new_figure(figsize=(9.0, 2.1 * len(settings) + 0.5), layout="constrained")
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
        return save_figure(fig, figure_path(path), ("png",))
