"""The report's shared text formatting: numbers, escaping for Markdown and LaTeX, the seeds phrase, the best
shown value of a column, and the settings line that says which settings produced a table's cells.

The settings come from ``results/metrics.csv`` alone: every row carries the settings that define it as the
columns :data:`dqss.results.SETTINGS` lists (empty where a setting does not apply to the row).
"""
from __future__ import annotations

import math
import re

from ..results import REFERENCE_METHODS, SETTING_COLUMNS
from .style import DECIMALS, DEFAULT_DECIMALS, method_order

MISSING_NUMBER = "—"  # a number without a value
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
# what LaTeX (pdflatex, no extra package) cannot take as text, after latex_escape
_TEX_UNICODE = {"×": r"$\times$", "±": r"$\pm$", "–": "--", "—": "---", "·": r"$\cdot$", "Δ": r"$\Delta$"}


# -- numbers and text -----------------------------------------------------------------------
def format_number(x, decimals: int) -> str:
    """``x`` at ``decimals`` places ("—" for None or NaN; never "-0.00")."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING_NUMBER
    s = f"{float(x):.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def metric_decimals(metric: str) -> int:
    return DECIMALS.get(metric, DEFAULT_DECIMALS)


def latex_escape(text) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


def tex_text(text) -> str:
    """Plain text for LaTeX: its special characters escaped, the Unicode the tables use as LaTeX."""
    out = latex_escape(text)
    for u, t in _TEX_UNICODE.items():
        out = out.replace(u, t)
    return out


def md_escape(text) -> str:
    return str(text).replace("|", r"\|")


def seeds_text(ns) -> str:
    """"3 seeds", "1 seed" or "2–3 seeds" from the cells' seed counts."""
    ns = sorted({int(n) for n in ns})
    if not ns:
        return "seeds"
    if len(ns) == 1:
        return f"{ns[0]} seed{'s' if ns[0] != 1 else ''}"
    return f"{ns[0]}–{ns[-1]} seeds"


def best_shown(values: dict, lower: bool) -> set:
    """Keys whose displayed value is the best; ``values`` maps key -> displayed string."""
    nums = {k: float(v) for k, v in values.items() if v != MISSING_NUMBER}
    if not nums:
        return set()
    best = min(nums.values()) if lower else max(nums.values())
    return {k for k, v in nums.items() if v == best}


# -- the settings of a table's rows -----------------------------------------------------------
def _cell(value) -> str:
    """A settings cell as text ("" for an empty one; read from the CSV they are text already)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def setting_values(rows) -> dict[str, list[str]]:
    """Setting -> its distinct non-empty values over ``rows`` (sorted), in :data:`dqss.results.SETTINGS` order;
    a setting empty in every row (or not a column of the frame) is left out."""
    out = {}
    for c in SETTING_COLUMNS:
        if c in getattr(rows, "columns", ()):
            vals = sorted({_cell(v) for v in rows[c]} - {""})
            if vals:
                out[c] = vals
    return out


def settings_line(rows) -> str:
    """"Settings: calib_size 256, iterations 80, select argmax/measured (differs between rows)." of the table
    whose cells ``rows`` (metrics.csv rows) are; "" without settings columns."""
    parts = [f"{k} {'/'.join(v)}" + (" (differs between rows)" if len(v) > 1 else "")
             for k, v in setting_values(rows).items()]
    return f"Settings: {', '.join(parts)}." if parts else ""


def method_settings(rows) -> tuple[dict[str, list[str]], list[str], dict[str, dict[str, str]]]:
    """The settings of a track's rows by method: (settings every row that has them shares, as in
    :func:`setting_values` but single-valued; the settings that differ between the quantized methods;
    quantized method -> setting -> its values joined by '/', "" where empty)."""
    methods = [m for m in method_order(rows["method"]) if m not in REFERENCE_METHODS]
    per = {m: setting_values(rows[rows["method"] == m]) for m in methods}
    every = setting_values(rows)
    differ = [c for c in every if len({tuple(per[m].get(c, ())) for m in methods}) > 1]
    common = {c: v for c, v in every.items() if c not in differ and len(v) == 1}
    return common, differ, {m: {c: "/".join(per[m].get(c, ())) for c in differ} for m in methods}


def method_settings_lines(rows) -> list[str]:
    """Markdown: the settings shared by the rows, then a table method -> the settings that differ between the
    quantized methods (a cell left empty where the setting does not apply); [] without settings columns."""
    common, differ, table = method_settings(rows)
    lines = []
    if common:
        lines.append("Same for every row that has them: " + ", ".join(f"{k} {v[0]}" for k, v in common.items()) + ".")
    if differ and table:
        lines += ["", "| Method | " + " | ".join(md_escape(c) for c in differ) + " |", "|:---|" + ":---|" * len(differ)]
        lines += ["| " + " | ".join([md_escape(m), *(md_escape(v[c]) for c in differ)]) + " |"
                  for m, v in table.items()]
    return lines
