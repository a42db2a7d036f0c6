"""The report's view of the DQSS selection: discretization-gap tables and the softmax-vs-measured figure.

Both read the ``selection.json`` record each PTQ DQSS job writes (:func:`dqss.algorithms.ptq_search.write_selection`).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..results import DQSS_ARGMAX, DQSS_METHOD
from .format import format_number, latex_escape, settings_line
from .style import HELD_ROW, STYLE, figure_path, method_colors, new_figure, safe_stem, save_figure, sr_tasks
from .tables import render_table

GAP_ROWS = ("mixture (relaxed)", DQSS_ARGMAX, HELD_ROW, "dqss (selected)")


def load_selections(paths) -> list[dict]:
    out = []
    for p in sorted(Path(p) for p in paths or []):
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read selection record {p}: {exc}; delete it and rerun its DQSS job") from exc
        if "stages" not in d or "task" not in d:
            raise ValueError(f"{p} is not a DQSS selection record (no 'stages'); rerun its DQSS job")
        out.append(d)
    return out


def _test_value(df, rec: dict, method: str, metric: str):
    rows = df[(df["task"] == rec["task"]) & (df["backbone"] == rec["backbone"]) & (df["method"] == method)
              & (df["w_bits"] == rec["w_bits"]) & (df["a_bits"] == rec["a_bits"]) & (df["seed"] == rec["seed"])
              & (df["metric"] == metric)]
    return float(rows["value"].mean()) if len(rows) else None


def _mixture_test(rec: dict, metric: str):
    import numpy as np

    mix = (rec.get("test") or {}).get("mixture") or {}
    if metric in mix:
        return float(mix[metric])
    vals = [m[metric] for m in mix.values() if isinstance(m, dict) and metric in m]
    return float(np.mean(vals)) if vals else None


def gap_tables(selections: list[dict], df) -> dict[str, tuple[str, str]]:
    """One table per (task, backbone, bits): the selection objective of the mixture, the argmax, the
    held-chosen best uniform strategy and the selection on both calibration parts, and their test metric
    (classification: kl_fp; SR: PSNR averaged over the test sets).  Means over seeds."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for rec in selections:
        if rec.get("rule") != "measured":
            continue
        groups.setdefault((rec["task"], rec["backbone"], int(rec["w_bits"]), int(rec["a_bits"])), []).append(rec)
    tables = {}
    sr = set(sr_tasks(df))
    for (task, backbone, w, a), recs in sorted(groups.items()):
        metric = "psnr" if task in sr else "kl_fp"
        cols = ["search part", "held part", f"test {metric}"]
        cells: dict[tuple[str, str], list[float]] = {}
        for rec in recs:
            st = rec["stages"]
            stage_of = {"mixture (relaxed)": "mixture", DQSS_ARGMAX: "argmax",
                        HELD_ROW: f"uniform {rec['held_best_uniform']}", "dqss (selected)": rec["chosen"]}
            test = {"mixture (relaxed)": _mixture_test(rec, metric),
                    DQSS_ARGMAX: _test_value(df, rec, DQSS_ARGMAX, metric),
                    HELD_ROW: _test_value(df, rec, rec["held_best_uniform"], metric),
                    "dqss (selected)": _test_value(df, rec, DQSS_METHOD, metric)}
            for row, stage in stage_of.items():
                for part, col in (("search", cols[0]), ("held", cols[1])):
                    if stage in st and part in st[stage]:
                        cells.setdefault((row, col), []).append(st[stage][part])
                if test[row] is not None:
                    cells.setdefault((row, cols[2]), []).append(test[row])
        md = {}
        for key, vals in cells.items():
            v = float(np.mean(vals))
            md[key] = format_number(v, 2) if key[1].endswith("psnr") else f"{v:.4g}"
        tex = {k: latex_escape(v) for k, v in md.items()}
        objective = recs[0].get("objective", "?")
        caption = (f"**{task} — {backbone}, W{w}A{a}: the discretization gap.** Selection objective "
                   f"(`{objective}`, lower is better) on the calibration's search and held parts, and the test "
                   f"{metric}; mean over {len(recs)} seed(s). The mixture is the relaxed model the gradient search "
                   "optimised; the argmax and the selection are discrete models.")
        methods = {DQSS_ARGMAX, DQSS_METHOD} | {r["held_best_uniform"] for r in recs}
        rows = df[(df["task"] == task) & (df["backbone"] == backbone) & (df["w_bits"] == w) & (df["a_bits"] == a)
                  & df["method"].isin(methods)]
        tables[safe_stem(f"gap_{task}_{backbone}_w{w}a{a}")] = render_table(caption, list(GAP_ROWS), cols, md, tex,
                                                                            set(), 0, settings_line(rows))
    return tables


def plot_softmax_vs_measured(record: dict, assignment: dict, path) -> list[Path]:
    """DARTS-PT's Fig. 1 for one DQSS job: per (layer, role) and candidate, the softmax weight the search
    gave it (x) against the measured change of the search-part objective when that tensor alone switches
    to it in the first sweep (y; below 0 = better than the sweep's current choice)."""
    import matplotlib
    import numpy as np

    probs = {(e["name"], role): e.get(f"{role}_probs") or {}
             for e in assignment["layers"] for role in ("weight", "act")}
    moves = [m for m in record.get("moves", []) if m["sweep"] == 1]
    if not moves:
        raise ValueError("the selection record has no first-sweep moves to plot")
    colors = method_colors({m["to"] for m in moves})
    with matplotlib.rc_context(STYLE):
        fig = new_figure(figsize=(6.4, 3.6), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, role in zip(axes, ("weight", "act")):
            for name in sorted(colors):
                pts = [(probs[(m["layer"], role)].get(name, np.nan), m["delta_search"]) for m in moves
                       if m["role"] == role and m["to"] == name]
                if pts:
                    x, y = zip(*pts)
                    ax.scatter(x, y, s=9, color=colors[name], label=name, alpha=0.8)
            ax.axhline(0.0, color="#555555", linewidth=0.8)
            ys = np.abs([m["delta_search"] for m in moves if m["delta_search"] != 0])
            if len(ys):  # a few harmful candidates would flatten the rest: linear near 0, log beyond
                ax.set_yscale("symlog", linthresh=float(np.median(ys)))
            ax.set_xlabel(f"softmax weight ({role})")
            ax.set_title(f"{role} quantizers")
        axes[0].set_ylabel("change of the search-part objective\n(symlog; < 0 = better)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", frameon=False, title="candidate")
        fig.suptitle(f"{record['task']}, {record['backbone']} W{record['w_bits']}A{record['a_bits']} seed "
                     f"{record['seed']}\nsoftmax weight vs measured effect of switching one tensor")
        return save_figure(fig, figure_path(path), ("png",))
