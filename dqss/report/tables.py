"""The report's tables: summary statistics over seeds, classification and SR layouts, and their
Markdown and booktabs LaTeX rendering with bold and significance marks (:mod:`dqss.report.paired`)."""
from __future__ import annotations

import logging
import re

from ..results import BICUBIC_METHOD, FP_METHOD, GROUP_KEYS, REFERENCE_METHODS
from .readers import REQUIRED_COLUMNS
from .format import (best_shown, format_number, latex_escape, md_escape, metric_decimals, seeds_text,
                     settings_line)
from .style import (HELD_ROW, LOWER_IS_BETTER, METRIC_LABELS, METRIC_UNITS, ORACLE_ROW, SR_METRICS, SR_PSNR_DECIMALS,
                    SR_SSIM_DECIMALS, method_order, metric_order, safe_stem, sr_dataset_order, sr_tasks)

log = logging.getLogger(__name__)


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
def _metric_text(metric: str) -> str:
    label = METRIC_LABELS.get(metric, metric)
    unit = METRIC_UNITS.get(metric)
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    return f"{label} ({unit + ', ' if unit else ''}{better} is better)"


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
    from .paired import cell_marks

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
        text = f"{format_number(means[info['oracle']], dec)} ({info['oracle']})"
        md_cells[(ORACLE_ROW, col)] = text
        tex_cells[(ORACLE_ROW, col)] = latex_escape(text)
    if info["held_mean"] is not None:
        names = "/".join(sorted(set(info["held"].values())))
        text = f"{format_number(info['held_mean'], dec)} ({names})"
        md_cells[(HELD_ROW, col)] = text
        tex_cells[(HELD_ROW, col)] = latex_escape(text)


def render_table(caption: str, rows: list[str], cols: list[str], md_cells: dict, tex_cells: dict,
                 bold: set, n_ref: int, settings: str = "") -> tuple[str, str]:
    """(caption + Markdown table, booktabs LaTeX tabular) from per-(row, col) cell texts; ``settings`` (the
    :func:`dqss.report.format.settings_line` of the cells' rows) under the Markdown table and in the LaTeX
    comment."""
    import pandas as pd

    md = [f"| Method | {' | '.join(md_escape(c) for c in cols)} |",
          "|:---|" + "---:|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            t = md_cells.get((r, c), "—")
            cells.append(f"**{t}**" if (r, c) in bold else t)
        md.append(f"| {md_escape(r)} | {' | '.join(cells)} |")
    md_text = f"{caption}\n\n" + "\n".join(md) + "\n" + (f"\n{md_escape(settings)}\n" if settings else "")

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
    comment = "".join(_tex_comment(text) for text in (caption, settings) if text)
    return md_text, comment + tex


def _tex_comment(text: str) -> str:
    plain = re.sub(r"\*\*|\s+", lambda m: "" if m.group() == "**" else " ", text)
    return "% " + plain.replace("±", "+/-").replace("—", "-").replace("–", "-") + "\n"  # ASCII-only


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


def cls_tables(summary, task: str, per_image=None, df=None) -> dict[str, tuple[str, str]]:
    """One table per (dataset, W/A bits, metric) of a classification task.

    Rows are methods (FP reference first), columns backbones; a cell is "mean ± std" (std only
    with more than one seed).  With ``per_image`` (:class:`dqss.report.paired.PerImage`) every quantized cell
    carries its significance marks against the held-chosen and the oracle best uniform strategy, both
    shown as rows, and **bold** is the best method and every method not significantly worse than it;
    without, the best at the displayed precision is bold.  With ``df`` (the metrics.csv rows), a line under each
    table names the settings its rows share (:func:`dqss.report.format.settings_line`).  Keys are file stems
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
            for metric in metric_order(qs["metric"].unique()):
                qm = qs[qs["metric"] == metric]
                rm = ref[(ref["metric"] == metric) & ref["backbone"].isin(qm["backbone"].unique())]
                cols = sorted(qm["backbone"].unique())
                methods = method_order(set(rm["method"]) | set(qm["method"]))
                n_ref = sum(m in REFERENCE_METHODS for m in methods)
                stats = _stats(rm) | _stats(qm)
                dec = metric_decimals(metric)
                md_cells, tex_cells = {}, {}
                for key, (mean, std, n, _) in stats.items():
                    m = format_number(mean, dec)
                    spread = n > 1 and m != "—"
                    md_cells[key] = f"{m} ± {format_number(std, dec)}" if spread else m
                    tex_cells[key] = rf"{m} $\pm$ {format_number(std, dec)}" if spread else m
                bold, marked = set(), False
                for c in cols:
                    shown = {(m, c): format_number(stats[(m, c)][0], dec) for m in methods
                             if m not in REFERENCE_METHODS and (m, c) in stats}
                    means = {m: stats[(m, c)][0] for m in methods if m not in REFERENCE_METHODS and (m, c) in stats}
                    info = _marks_for_column(per_image, means, task=task, dataset=dataset, backbone=c, w=w, a=a,
                                             metric=metric, lower_is_better=metric in LOWER_IS_BETTER)
                    if info is None:
                        bold |= best_shown(shown, metric in LOWER_IS_BETTER)
                        continue
                    marked = True
                    bold |= _apply_marks(info, means, dec, md_cells, tex_cells, c)
                if marked:
                    methods = method_order(set(methods) | {k[0] for k in md_cells})
                rule = ("**bold** = the best quantized method per backbone and every one not significantly worse "
                        f"than it; {SIGNIFICANCE_TEXT}; " if marked else
                        "**bold** = best quantized method per backbone (ties at the shown precision all bold); ")
                caption = (f"**{task} — {dataset}, W{w}A{a}: {_metric_text(metric)}.** Mean ± std over "
                           f"{seeds_text(qm['n_seeds'])}; " + rule + _reference_text(methods))
                stem = safe_stem(f"{task}_{dataset}_w{w}a{a}_{metric}")
                rows = _rows(df, task, w, a, dataset=[dataset], metric=[metric], backbone=cols)
                tables[stem] = render_table(caption, methods, cols, md_cells, tex_cells, bold, n_ref,
                                            settings_line(rows))
    return tables


def sr_tables(summary, task: str | None = None, per_image=None, df=None) -> dict[str, tuple[str, str]]:
    """One table per (backbone, W/A bits) of a super-resolution task.

    Rows are methods (fp32 and bicubic references first), columns the test sets (Set5, Set14,
    B100, Urban100, then others); a cell is "PSNR/SSIM" (means over seeds).  The best quantized
    method per test set by PSNR is bold; with ``per_image``, the marks and bold of :func:`cls_tables`
    by PSNR.  ``task`` None: the only task whose rows carry SR metrics; ``df``: as in :func:`cls_tables`.  Keys
    are file stems ``{task}_{backbone}_w{W}a{A}``.
    """
    if task is None:
        tasks = sr_tasks(summary)
        if len(tasks) != 1:
            raise ValueError(f"the results hold SR metrics ({', '.join(SR_METRICS)}) of {len(tasks)} tasks {tasks}; "
                             "name the task")
        task = tasks[0]
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
            cols = sr_dataset_order(qs["dataset"].unique())
            rows_frame = _concat([rb[rb["dataset"].isin(cols)], qs])
            methods = method_order(rows_frame["method"].unique())
            n_ref = sum(m in REFERENCE_METHODS for m in methods)
            cell = {}
            for r in rows_frame.itertuples(index=False):
                cell.setdefault((r.method, r.dataset), {}).setdefault(r.metric, r.mean)
            rank_metric = "psnr" if (qs["metric"] == "psnr").any() else "ssim"
            md_cells, shown = {}, {}
            for key, vals in cell.items():
                p = format_number(vals.get("psnr"), SR_PSNR_DECIMALS)
                s = format_number(vals.get("ssim"), SR_SSIM_DECIMALS)
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
                    bold |= best_shown({k: v for k, v in shown.items() if k[1] == c}, lower=False)
                    continue
                marked = True
                bold |= _apply_marks(info, means, dec, md_cells, tex_cells, c)
            if marked:
                methods = method_order(set(methods) | {k[0] for k in md_cells})
            rule = (f"**bold** = the best quantized method per test set by {rank_metric.upper()} and every one not "
                    f"significantly worse than it; {SIGNIFICANCE_TEXT}; " if marked else
                    f"**bold** = best quantized method per test set by {rank_metric.upper()} (ties all bold); ")
            caption = (f"**{task} — {backbone}, W{w}A{a}: PSNR (dB) / SSIM per test set (higher is "
                       f"better).** Mean over {seeds_text(qs['n_seeds'])}; " + rule + _reference_text(methods))
            stem = safe_stem(f"{task}_{backbone}_w{w}a{a}")
            rows = _rows(df, task, w, a, dataset=cols, metric=SR_METRICS, backbone=[backbone], borrowed=BICUBIC_METHOD)
            tables[stem] = render_table(caption, methods, cols, md_cells, tex_cells, bold, n_ref,
                                        settings_line(rows))
    return tables


def _rows(df, task: str, w: int, a: int, borrowed: str | None = None, **among):
    """The metrics rows of one table: ``task``, each column of ``among`` in its values, at W``w``A``a`` (the
    reference rows at theirs), and the ``borrowed`` reference's rows of the task whatever their backbone; None
    without ``df``."""
    if df is None:
        return None
    keep = (df["task"] == task) & (df["method"].isin(REFERENCE_METHODS) | ((df["w_bits"] == w) & (df["a_bits"] == a)))
    for col, values in among.items():
        ok = df[col].isin(list(values))
        keep &= ok | (df["method"] == borrowed) if col == "backbone" else ok
    return df[keep]


def _concat(frames):
    import pandas as pd

    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=GROUP_KEYS + ["mean", "std", "n_seeds", "delta_fp"])
