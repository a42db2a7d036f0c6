"""Per-image results of every job, and the table cells' significance against the best uniform strategy.

Each quantized row of a table is compared with two "best uniform" strategies of its cell:

* **held-chosen** (H): the uniform strategy with the lowest objective on the held part of the
  calibration data, which the DQSS job of each seed records (``selection_held_best_uniform``): what a
  user could pick without the test set;
* **oracle** (O): the uniform strategy with the best mean test metric, which no method can be sure to
  beat.

A mark reads ``H+`` (significantly better than H), ``H-`` (significantly worse) or ``H=`` (not
significant), then the same for O; :mod:`dqss.report.significance` does the paired tests.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..results import DQSS_METHOD, is_uniform  # noqa: F401  (is_uniform: re-exported for the report)
from .significance import compare


@dataclass
class PerImage:
    """``values[(task, dataset, backbone, method, w, a, seed)][metric]`` = per-image list;
    ``held[(task, backbone, w, a, seed)]`` = the held-chosen uniform strategy of that DQSS job."""

    values: dict = field(default_factory=dict)
    held: dict = field(default_factory=dict)

    def seeds(self, task, dataset, backbone, method, w, a, metric) -> dict[int, list]:
        return {k[6]: v[metric] for k, v in self.values.items()
                if k[:6] == (task, dataset, backbone, method, w, a) and metric in v}

    def held_choice(self, task, backbone, w, a) -> dict[int, str]:
        return {k[4]: v for k, v in self.held.items() if k[:4] == (task, backbone, w, a)}


def load_per_image(paths) -> PerImage:
    """Read the per-image values and held choices of job results (``metrics.json`` files)."""
    out = PerImage()
    for p in paths or []:
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read job result {p}: {exc}; delete it and rerun the workflow") from exc
        base = (d["task"], d["backbone"], d["method"], int(d["w_bits"]), int(d["a_bits"]), int(d["seed"]))
        entries = [(r["dataset"], r.get("per_image")) for r in d["results"]] if "results" in d \
            else [(d["dataset"], d.get("per_image"))]
        for dataset, values in entries:
            if values:
                out.values[(base[0], dataset, *base[1:])] = values
        held = d.get("extra", {}).get("selection_held_best_uniform")
        if held and d["method"] == DQSS_METHOD:
            out.held[(base[0], base[1], base[3], base[4], base[5])] = held
    return out


def _pairs(first: dict[int, list], second: dict[int, list]):
    seeds = sorted(set(first) & set(second))
    return [first[s] for s in seeds], [second[s] for s in seeds]


def cell_marks(per_image: PerImage, means: dict[str, float], *, task, dataset, backbone, w, a, metric,
               lower_is_better: bool) -> dict:
    """Significance marks of every method in one table cell.

    ``means`` maps each quantized method of the cell to its mean test metric.  Returns ``{"marks":
    {method: "H= O+"}, "oracle": name, "held": {seed: name}, "held_mean": value or None, "tied": set of
    methods not significantly worse than the best}``."""
    uniforms = [m for m in means if is_uniform(m)]
    pick = min if lower_is_better else max
    oracle = pick(uniforms, key=lambda m: means[m]) if uniforms else None
    held = per_image.held_choice(task, backbone, w, a)
    vals = {m: per_image.seeds(task, dataset, backbone, m, w, a, metric) for m in means}
    held_vals = {s: per_image.seeds(task, dataset, backbone, name, w, a, metric).get(s) for s, name in held.items()}
    held_vals = {s: v for s, v in held_vals.items() if v is not None}

    def mark(method, other, tag):
        if other is None or not vals[method]:
            return f"{tag}?"
        a_, b_ = _pairs(vals[method], other)
        if not a_:
            return f"{tag}?"
        if a_ == b_:
            return f"{tag}·"  # the row is that strategy itself
        v = compare(a_, b_, metric, lower_is_better=lower_is_better)["verdict"]
        return tag + {"better": "+", "worse": "-", "ns": "="}[v]

    marks = {}
    for m in means:
        parts = []
        if held_vals:
            parts.append(mark(m, held_vals, "H"))
        parts.append(mark(m, vals.get(oracle) if oracle else None, "O"))
        marks[m] = " ".join(parts)
    best = pick(means, key=lambda m: means[m]) if means else None
    tied = set()
    for m in means:
        if m == best:
            tied.add(m)
            continue
        if vals.get(m) and vals.get(best):
            a_, b_ = _pairs(vals[m], vals[best])
            if a_ and compare(a_, b_, metric, lower_is_better=lower_is_better)["verdict"] == "ns":
                tied.add(m)
    held_mean = None
    if held_vals:
        held_mean = float(np.mean([np.mean(v) for v in held_vals.values()]))
        if metric in ("top1", "top5", "agree_fp"):
            held_mean *= 100.0
    return {"marks": marks, "oracle": oracle, "held": held, "held_mean": held_mean, "tied": tied}
