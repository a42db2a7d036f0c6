"""The paper's tables, from ``results/metrics.csv`` alone, laid out by the config's ``paper_tables:`` section.

One table per track, as a paper prints it, in Markdown and booktabs LaTeX (``results/paper/{track}.md|tex``,
rule ``paper_tables``), of the kind the track's registry record names (:data:`PAPER_TABLES`):

* ``cls`` (classification): rows = methods (the full-precision reference first, then the uniform strategies, then
  DQSS), columns = backbones, a cell = the metric's mean over seeds (``± std`` with more than one seed), at one
  bit width;
* ``sr`` (super-resolution): row groups = backbones (a backbone name carries its scale), rows = methods, column
  groups = test sets with PSNR and SSIM sub-columns, at one bit width.

The caption says what the rows are from the rows themselves: quantization-aware training where they carry QAT
settings (``epochs``), else post-training quantization; and it ends with the settings the table's rows share
(:func:`dqss.report.format.settings_line`, from the settings columns of metrics.csv).

The best quantized value of every column (per backbone group for SR) is bold, ties at the shown precision
all bold; the reference rows (fp32, bicubic) are not ranked.  A missing cell reads "–"; a backbone, method
or test set the layout names but the results lack is listed in a note under the table (its cells read "–").

The layout (:class:`ClsPaperTable`, :class:`SRPaperTable`) is configuration: which bit width, the order
of backbones, methods and test sets, their display names, the caption and the LaTeX label.
:func:`paper_layouts` reads it from a config, filling what it leaves out from the track's own section
(its first bit width, its data set, its backbones in the config's order).  The table functions are pure
functions of a metrics frame and a layout.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..options import BIT_MAX, BIT_MIN, build_section, check_options, option
from ..results import REFERENCE_METHODS, RESULTS_DIR, write_text
from .format import (best_shown, format_number, md_escape, metric_decimals, seeds_text, setting_values, settings_line,
                     tex_text)
from .readers import REQUIRED_COLUMNS, check_one_setting, load_metrics
from .style import (LOWER_IS_BETTER, METRIC_LABELS, METRIC_UNITS, SR_METRICS, SR_PSNR_DECIMALS, SR_SSIM_DECIMALS,
                    method_order, sr_dataset_order, sr_tasks)
from .tables import summarize

log = logging.getLogger(__name__)

PAPER_DIR = f"{RESULTS_DIR}/paper"
MISSING = "–"  # a cell without a result (LaTeX: --)
CLS_METRICS = ("top1", "top5", "agree_fp", "kl_fp")
SR_DECIMALS = {"psnr": SR_PSNR_DECIMALS, "ssim": SR_SSIM_DECIMALS}
QAT_SETTINGS = ("epochs",)  # a row that carries one of these settings was trained: quantization-aware training


# -- the layout (config) --------------------------------------------------------------------
@dataclass
class PaperTable:
    """The layout of one paper table: which results, in which order, under which names."""

    # weight bits of the table's quantized rows (null: the track's first entry of bits)
    w: int | None = option(None, ge=BIT_MIN, le=BIT_MAX)
    # activation bits of the table's quantized rows (null: the track's first entry of bits)
    a: int | None = option(None, ge=BIT_MIN, le=BIT_MAX)
    # the backbones, in order (null: the track's backbones in the config's order)
    backbones: list[str] | None = None
    # the methods, in order (null: every method in the results: fp32 and bicubic first, the uniform strategies, DQSS)
    methods: list[str] | None = None
    backbone_names: dict[str, str] = field(default_factory=dict)  # backbone -> its name in the table (default: its own)
    method_names: dict[str, str] = field(default_factory=dict)  # method -> its name in the table (default: its own)
    caption: str | None = None  # plain text, escaped for LaTeX (null: says what the table shows)
    label: str | None = None  # the LaTeX label (null: tab:<track>)

    def __post_init__(self):
        check_options(self)
        for name in ("backbone_names", "method_names", "test_set_names"):
            names = getattr(self, name, {})
            if not isinstance(names, dict):
                raise ValueError(f"{name} must be a mapping name -> display name, got {names!r}")
            bad = {k: v for k, v in names.items() if not isinstance(v, str)}
            if bad:
                raise ValueError(f"{name}: the names must be strings, got {bad}; quote them in the YAML")
        for name in ("backbones", "methods"):
            values = getattr(self, name)
            if values is None:
                continue
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"{name}: {dup} listed more than once; list each once")
            names = getattr(self, name[:-1] + "_names")
            unknown = sorted(set(names) - set(values))
            if unknown:
                raise ValueError(f"{name[:-1]}_names: {unknown} not among {name} {values}; name only what the "
                                 "table shows")
        if (self.w is None) != (self.a is None):
            raise ValueError("w and a: give both bit widths, or neither (then the track's first bit width)")


@dataclass
class ClsPaperTable(PaperTable):
    """A classification track's paper table (paper_tables.cls_ptq, paper_tables.cls_qat): rows = methods,
    columns = backbones."""

    metric: str = option("top1", choices=CLS_METRICS)  # the metric in the cells
    dataset: str | None = None  # the results' data set (null: the track's dataset)
    std: bool = True  # cells read mean ± std over seeds where a cell has more than one seed (false: the mean)


@dataclass
class SRPaperTable(PaperTable):
    """The SR track's paper table (paper_tables.sr_ptq): row groups = backbones, rows = methods, column groups =
    test sets with PSNR and SSIM sub-columns."""

    # the test sets, in order (null: every test set in the results: Set5, Set14, B100, Urban100, then the others)
    test_sets: list[str] | None = None
    test_set_names: dict[str, str] = field(default_factory=dict)  # test set -> its name in the table (default: its own)
    std: bool = False  # cells read mean ± std over seeds where a cell has more than one seed (false: the mean)

    def __post_init__(self):
        super().__post_init__()
        if self.test_sets is not None:
            dup = sorted({v for v in self.test_sets if self.test_sets.count(v) > 1})
            if dup:
                raise ValueError(f"test_sets: {dup} listed more than once; list each once")
            unknown = sorted(set(self.test_set_names) - set(self.test_sets))
            if unknown:
                raise ValueError(f"test_set_names: {unknown} not among test_sets {self.test_sets}")


PAPER_TABLES = {"cls": ClsPaperTable, "sr": SRPaperTable}  # the layout class of each kind of table
PAPER_TABLES_DESCRIPTION = ("the layout of the paper's tables (rule paper_tables: results/paper/<track>.md and .tex, "
                            "from results/metrics.csv alone), per track; a track left out gets the defaults")


def paper_table_classes(kinds: dict[str, str]) -> dict[str, type[PaperTable]]:
    """Track -> its layout class, from ``kinds`` (track -> "cls" or "sr", the tracks' registry records)."""
    bad = {t: k for t, k in kinds.items() if k not in PAPER_TABLES}
    if bad:
        raise ValueError(f"paper tables: unknown kind(s) {bad}; the kinds are {list(PAPER_TABLES)}")
    return {t: PAPER_TABLES[k] for t, k in kinds.items()}


def layout_kind(layout: PaperTable) -> str:
    """The kind ("cls" or "sr") of a layout object."""
    for kind, cls in PAPER_TABLES.items():
        if type(layout) is cls:
            return kind
    raise ValueError(f"{type(layout).__name__} is not a paper-table layout; the layouts are "
                     f"{[c.__name__ for c in PAPER_TABLES.values()]}")


def layout_kinds(layouts: dict[str, PaperTable]) -> dict[str, str]:
    """Track -> the kind of its layout (the rule's params beside :func:`layout_params`)."""
    return {t: layout_kind(layout) for t, layout in layouts.items()}


def paper_layouts(config: dict, kinds: dict[str, str]) -> dict[str, PaperTable]:
    """The layout of every configured track's table: ``paper_tables.<track>`` over the defaults of its kind
    (``kinds``: track -> "cls" or "sr", every known track, in the tables' order), with the bit width, data set,
    backbones and label it leaves out taken from the track's section.  A layout for a track the config does not run
    is refused (it would make no table)."""
    classes = paper_table_classes(kinds)
    section = config.get("paper_tables") or {}
    if not isinstance(section, dict):
        raise ValueError(f"paper_tables: expected a mapping track -> layout, got {type(section).__name__}")
    unknown = sorted(set(section) - set(classes))
    if unknown:
        raise ValueError(f"paper_tables: unknown track(s) {unknown}; valid keys are {list(classes)}")
    idle = sorted(t for t in section if config.get(t) is None)
    if idle:
        raise ValueError(f"paper_tables: {idle} laid out but not in the config (no results, no table); remove "
                         "the layout or add the track")
    out = {}
    for track, cls in classes.items():
        tc = config.get(track)
        if tc is None:
            continue
        key = f"paper_tables.{track}"
        layout = build_section(cls, section.get(track), key)
        if layout.w is None:
            bits = (tc.get("bits") or [{}])[0]
            layout.w, layout.a = bits.get("w"), bits.get("a")
        if layout.backbones is None:
            layout.backbones = list(tc.get("backbones") or {})
        if isinstance(layout, ClsPaperTable) and layout.dataset is None:
            layout.dataset = tc.get("dataset")
        layout.label = layout.label or f"tab:{track}"
        out[track] = layout
    return out


def layout_params(layouts: dict[str, PaperTable]) -> dict[str, dict]:
    """The layouts as plain dicts (the rule's params: a change of layout reruns the rule)."""
    return {t: asdict(layout) for t, layout in layouts.items()}


def from_params(track: str, layout, kind: str | None = None) -> PaperTable:
    """A layout of ``kind`` from :func:`layout_params`' dict (a layout object passes through; a dict needs its
    kind)."""
    if isinstance(layout, PaperTable):
        if kind is not None and layout_kind(layout) != kind:
            raise ValueError(f"paper_tables.{track}: a {type(layout).__name__} where a {kind} table is laid out")
        return layout
    if kind is None:
        raise ValueError(f"paper_tables.{track}: a layout given as a mapping needs its kind ({list(PAPER_TABLES)})")
    return build_section(paper_table_classes({track: kind})[track], dict(layout), f"paper_tables.{track}")


def paper_outputs(tracks) -> list[str]:
    """The files the rule writes for ``tracks``."""
    return [f"{PAPER_DIR}/{t}.{ext}" for t in tracks for ext in ("md", "tex")]


# -- reading --------------------------------------------------------------------------------
def read_metrics(path):
    """``results/metrics.csv`` with the report's checks; an empty file, or one without rows, is an error."""
    import pandas as pd

    try:
        df = load_metrics(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty: rebuild it with `snakemake --cores all results/metrics.csv` "
                         "(the aggregate of every job)") from None
    if df.empty:
        raise ValueError(f"{path} has a header but no rows: rebuild it with `snakemake --cores all "
                         "results/metrics.csv` (the aggregate of every job)")
    return df


def check_frame(df, source: str = "the metrics table") -> None:
    """The columns :func:`dqss.results.gather` writes that the tables need, and at least one row."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source} lacks the column(s) {missing}; the tables read the output of dqss.results.gather "
                         "(results/metrics.csv), which has them")
    if df.empty:
        raise ValueError(f"{source} has no rows; rebuild results/metrics.csv (snakemake results/metrics.csv)")
    if "config_hash" in df.columns:
        check_one_setting(df.assign(config_hash=df["config_hash"].fillna("").astype(str)), source)


# -- text helpers ---------------------------------------------------------------------------
def _name(names: dict, key: str) -> str:
    return str(names.get(key, key))


def _only(values, what: str, key: str):
    values = sorted(set(values))
    if len(values) > 1:
        raise ValueError(f"the results hold several {what} {values}; set {key} to the one the table shows")
    return values[0] if values else None


def _absent(names: dict, keys) -> list[str]:
    """Absent entries for the note: their display name, and their key where it differs."""
    return [f"{names[k]} ({k})" if names.get(k, k) != k else k for k in keys]


def _cell(mean, std, n, dec: int, with_std: bool) -> tuple[str | None, str, str]:
    """(shown mean, Markdown, LaTeX) of one cell; a missing cell is (None, –, --)."""
    m = format_number(mean, dec)
    if m == "—":
        return None, MISSING, "--"
    if with_std and n > 1:
        s = format_number(std, dec)
        return m, f"{m} ± {s}", rf"{m} $\pm$ {s}"
    return m, m, m


def _notes(absent: dict[str, list[str]], any_missing: bool) -> list[str]:
    parts = [f"{kind} {', '.join(names)}" for kind, names in absent.items() if names]
    notes = []
    if parts:
        notes.append("Not in the results (shown as –): " + "; ".join(parts) + ".")
    elif any_missing:
        notes.append("– = no result.")
    return notes


def _stats(summary, keys) -> dict:
    """(key values) -> (mean, std, n_seeds) of summary rows."""
    out = {}
    for row in summary.itertuples(index=False):
        k = tuple(getattr(row, c) for c in keys)
        out.setdefault(k, (row.mean, row.std, int(row.n_seeds)))
    return out


def _at_bits(sub, layout, key: str, keys: tuple[str, ...]):
    """The layout's bit width (or the results' only one), the per-``keys`` statistics of ``sub`` at it, the
    reference rows (which have no bit width) included, and those rows."""
    ref = sub["method"].isin(REFERENCE_METHODS)
    w, a = layout.w, layout.a
    if w is None:
        bits = _only(zip(sub.loc[~ref, "w_bits"], sub.loc[~ref, "a_bits"]), "bit widths", f"{key}.w and a")
        w, a = bits if bits else (None, None)
    sub = sub[ref | ((sub["w_bits"] == w) & (sub["a_bits"] == a))]
    return w, a, _stats(summarize(sub), keys) if len(sub) else {}, sub


def _training(rows) -> str:
    """How the table's rows quantize, from their settings: trained (QAT settings) or post-training."""
    trained = set(setting_values(rows)) & set(QAT_SETTINGS)
    return "quantization-aware training" if trained else "post-training quantization"


def _with_settings(caption: str, rows) -> str:
    line = settings_line(rows)
    return f"{caption} {line}" if line else caption


# -- classification -------------------------------------------------------------------------
def cls_paper_table(df, track: str, layout: ClsPaperTable) -> tuple[str, str]:
    """(Markdown, LaTeX) of a classification track's paper table from the long metrics frame ``df``."""
    layout = from_params(track, layout, "cls")
    check_frame(df)
    key = f"paper_tables.{track}"
    sub = df[df["task"] == track]
    dataset = layout.dataset or _only(sub["dataset"], "data sets", f"{key}.dataset")
    sub = sub[(sub["dataset"] == dataset) & (sub["metric"] == layout.metric)]
    w, a, stats, rows = _at_bits(sub, layout, key, ("method", "backbone"))
    have_m = sorted({m for m, _ in stats})
    have_b = sorted({b for _, b in stats})
    methods = list(layout.methods) if layout.methods is not None else method_order(have_m)
    backbones = list(layout.backbones) if layout.backbones is not None else have_b
    _log_left_out(track, "methods", have_m, methods)
    _log_left_out(track, "backbones", have_b, backbones)
    dec = metric_decimals(layout.metric)
    md, tex, shown = {}, {}, {}
    for m in methods:
        for b in backbones:
            mean, std, n = stats.get((m, b), (None, None, 0))
            shown[(m, b)], md[(m, b)], tex[(m, b)] = _cell(mean, std, n, dec, layout.std)
    bold = set()
    for b in backbones:
        bold |= best_shown({k: v for k, v in shown.items() if k[1] == b and v is not None
                       and k[0] not in REFERENCE_METHODS}, lower=layout.metric in LOWER_IS_BETTER)
    absent = {"backbones": _absent(layout.backbone_names, [b for b in backbones if b not in have_b]),
              "methods": _absent(layout.method_names, [m for m in methods if m not in have_m])}
    notes = _notes(absent, any(v is None for v in shown.values()))
    seeds = [n for (m, _), (_, _, n) in stats.items() if m not in REFERENCE_METHODS]
    rows = rows[rows["method"].isin(methods) & rows["backbone"].isin(backbones)]
    caption = _with_settings(layout.caption or _cls_caption(layout, dataset, w, a, seeds, _training(rows)), rows)
    cols = [_name(layout.backbone_names, b) for b in backbones]
    rows = [_name(layout.method_names, m) for m in methods]
    n_ref = _leading_references(methods)
    cells_md = [[_bold_md(md[(m, b)], (m, b) in bold) for b in backbones] for m in methods]
    cells_tex = [[_bold_tex(tex[(m, b)], (m, b) in bold) for b in backbones] for m in methods]
    md_text = _md_table(caption, ["Method", *cols], [[r, *c] for r, c in zip(rows, cells_md)], 1, notes)
    head = [" & ".join(["Method", *(tex_text(c) for c in cols)]) + r" \\"]
    body = [" & ".join([tex_text(r), *c]) + r" \\" for r, c in zip(rows, cells_tex)]
    if 0 < n_ref < len(body):
        body.insert(n_ref, r"\midrule")
    tex_out = _tex_table(caption, layout.label or f"tab:{track}", "l" + "r" * len(cols), head, [body], notes)
    return md_text, tex_out


def _cls_caption(layout, dataset, w, a, seeds, training: str) -> str:
    label = METRIC_LABELS.get(layout.metric, layout.metric)
    unit = METRIC_UNITS.get(layout.metric)
    better = "lower" if layout.metric in LOWER_IS_BETTER else "higher"
    spread = " ± std" if layout.std and any(n > 1 for n in seeds) else ""
    bits = f"W{w}A{a}" if w is not None else "the configured bit width"
    return (f"{label[0].upper()}{label[1:]}{f' ({unit})' if unit else ''} on {dataset} under {bits} "
            f"{training} ({better} is better): mean{spread} over {seeds_text(seeds)}; the best quantized "
            "value per backbone in bold.")


# -- super-resolution -----------------------------------------------------------------------
def sr_paper_table(df, layout: SRPaperTable, track: str | None = None) -> tuple[str, str]:
    """(Markdown, LaTeX) of an SR track's paper table from the long metrics frame ``df`` (``track`` None: the only
    task whose rows carry SR metrics)."""
    check_frame(df)
    if track is None:
        tasks = sr_tasks(df)
        if len(tasks) != 1:
            raise ValueError(f"the results hold SR metrics of {len(tasks)} tasks {tasks}; name the track")
        track = tasks[0]
    layout = from_params(track, layout, "sr")
    key = f"paper_tables.{track}"
    sub = df[(df["task"] == track) & df["metric"].isin(SR_METRICS)]
    w, a, stats, rows = _at_bits(sub, layout, key, ("backbone", "method", "dataset", "metric"))
    have_b = sorted({k[0] for k in stats})
    have_m = sorted({k[1] for k in stats})
    have_t = sr_dataset_order({k[2] for k in stats})
    backbones = list(layout.backbones) if layout.backbones is not None else have_b
    methods = list(layout.methods) if layout.methods is not None else method_order(have_m)
    sets = list(layout.test_sets) if layout.test_sets is not None else have_t
    for what, have, shown_ in (("backbones", have_b, backbones), ("methods", have_m, methods),
                               ("test sets", have_t, sets)):
        _log_left_out(track, what, have, shown_)
    md, tex, shown = {}, {}, {}
    for b in backbones:
        for m in methods:
            for t in sets:
                for metric in SR_METRICS:
                    mean, std, n = stats.get((b, m, t, metric), (None, None, 0))
                    k = (b, m, t, metric)
                    shown[k], md[k], tex[k] = _cell(mean, std, n, SR_DECIMALS[metric], layout.std)
    bold = set()
    for b in backbones:
        for t in sets:
            for metric in SR_METRICS:
                bold |= best_shown({k: v for k, v in shown.items() if k[0] == b and k[2] == t and k[3] == metric
                               and v is not None and k[1] not in REFERENCE_METHODS}, lower=False)
    absent = {"backbones": _absent(layout.backbone_names, [b for b in backbones if b not in have_b]),
              "methods": _absent(layout.method_names, [m for m in methods if m not in have_m]),
              "test sets": _absent(layout.test_set_names, [t for t in sets if t not in have_t])}
    notes = _notes(absent, any(v is None for v in shown.values()))
    seeds = [n for k, (_, _, n) in stats.items() if k[1] not in REFERENCE_METHODS]
    rows = rows[rows["method"].isin(methods) & rows["backbone"].isin(backbones) & rows["dataset"].isin(sets)]
    caption = _with_settings(layout.caption or _sr_caption(layout, w, a, seeds, _training(rows)), rows)
    set_names = [_name(layout.test_set_names, t) for t in sets]
    md_head = ["Model", "Method", *(f"{s} {metric.upper()}" for s in set_names for metric in SR_METRICS)]
    md_rows, groups = [], []
    n_ref = _leading_references(methods)
    for b in backbones:
        body = []
        for i, m in enumerate(methods):
            vals = [(md[(b, m, t, x)], tex[(b, m, t, x)], (b, m, t, x) in bold) for t in sets for x in SR_METRICS]
            model = _name(layout.backbone_names, b) if i == 0 else ""
            md_rows.append([model, _name(layout.method_names, m), *(_bold_md(v, bo) for v, _, bo in vals)])
            body.append(" & ".join([tex_text(model), tex_text(_name(layout.method_names, m)),
                                    *(_bold_tex(v, bo) for _, v, bo in vals)]) + r" \\")
        if 0 < n_ref < len(body):  # the reference rows ruled off from the ranked ones
            body.insert(n_ref, rf"\cmidrule(l){{2-{2 + 2 * len(sets)}}}")
        groups.append(body)
    md_text = _md_table(caption, md_head, md_rows, 2, notes)
    n = len(sets)
    head = []
    if n:
        head.append(" & ".join(["", "", *(rf"\multicolumn{{2}}{{c}}{{{tex_text(s)}}}" for s in set_names)]) + r" \\")
        head.append(" ".join(rf"\cmidrule(lr){{{3 + 2 * i}-{4 + 2 * i}}}" for i in range(n)))
    head.append(" & ".join(["Model", "Method", *(x.upper() for _ in sets for x in SR_METRICS)]) + r" \\")
    tex_out = _tex_table(caption, layout.label or f"tab:{track}", "ll" + "rr" * n, head, groups, notes)
    return md_text, tex_out


def _sr_caption(layout, w, a, seeds, training: str) -> str:
    spread = " ± std" if layout.std and any(n > 1 for n in seeds) else ""
    bits = f"W{w}A{a}" if w is not None else "the configured bit width"
    return (f"PSNR (dB) and SSIM on the Y channel per test set under {bits} {training} (higher is "
            f"better): mean{spread} over {seeds_text(seeds)}; the best quantized value per model and column in "
            "bold.")


# -- rendering ------------------------------------------------------------------------------
def _leading_references(methods) -> int:
    n = 0
    for m in methods:
        if m not in REFERENCE_METHODS:
            break
        n += 1
    return n


def _bold_md(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def _bold_tex(text: str, bold: bool) -> str:
    return rf"\textbf{{{text}}}" if bold else text


def _md_table(caption: str, head: list[str], rows: list[list[str]], n_left: int, notes: list[str]) -> str:
    align = [":---"] * n_left + ["---:"] * (len(head) - n_left)
    lines = [f"**{md_escape(caption)}**", "", "| " + " | ".join(md_escape(h) for h in head) + " |",
             "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    if notes:
        lines += [""] + [md_escape(n) for n in notes]
    return "\n".join(lines) + "\n"


def _tex_table(caption: str, label: str, colspec: str, head: list[str], groups: list[list[str]],
               notes: list[str]) -> str:
    """A ``table`` float with a booktabs ``tabular``: head, then the row groups separated by midrules."""
    lines = ["% Generated by dqss.report.paper from results/metrics.csv (snakemake paper_tables); do not edit.",
             r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_text(caption)}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", *head]
    for body in groups:
        lines += [r"\midrule", *body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        lines += [r"\par\smallskip", r"{\footnotesize " + " ".join(tex_text(n) for n in notes) + "}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _log_left_out(track: str, what: str, have, shown) -> None:
    left = [x for x in have if x not in shown]
    if left:
        log.info("paper table %s: %s %s are in the results but not in the layout; not shown", track, what, left)


# -- all tables -----------------------------------------------------------------------------
def paper_tables(df, layouts: dict, kinds: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Track -> (Markdown, LaTeX) of each laid-out track's table; its kind from ``kinds`` (track -> "cls" or
    "sr", needed for a layout given as a mapping), else from its layout object."""
    check_frame(df)
    kinds = kinds or {}
    out = {}
    for track, layout in layouts.items():
        kind = kinds.get(track) or (layout_kind(layout) if isinstance(layout, PaperTable) else None)
        if kind not in PAPER_TABLES:
            raise ValueError(f"paper_tables: no kind of table for track '{track}' (got {kind!r}); the kinds are "
                             f"{list(PAPER_TABLES)}")
        layout = from_params(track, layout, kind)
        out[track] = sr_paper_table(df, layout, track) if kind == "sr" else cls_paper_table(df, track, layout)
    return out


def write_paper_tables(metrics_csv, layouts: dict, outdir=PAPER_DIR, kinds: dict[str, str] | None = None) -> list[Path]:
    """``{outdir}/{track}.md`` and ``.tex`` of every laid-out track, from ``metrics_csv`` alone, written
    atomically (``kinds``: as in :func:`paper_tables`)."""
    df = read_metrics(metrics_csv)
    written = []
    for track, (md, tex) in paper_tables(df, layouts, kinds).items():
        for ext, text in (("md", md), ("tex", tex)):
            path = Path(outdir) / f"{track}.{ext}"
            write_text(path, text)
            written.append(path)
    log.info("paper tables: wrote %s", [str(p) for p in written])
    return written


__all__ = ["CLS_METRICS", "MISSING", "PAPER_DIR", "PAPER_TABLES", "ClsPaperTable", "PaperTable", "SRPaperTable",
           "check_frame", "cls_paper_table", "from_params", "layout_kind", "layout_kinds", "layout_params",
           "paper_layouts", "paper_outputs", "paper_table_classes", "paper_tables", "read_metrics", "sr_paper_table",
           "tex_text", "write_paper_tables"]
