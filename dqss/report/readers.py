"""What the report reads: the metrics table, training curves, SR crops and DQSS assignment files.

Paths and files follow the results contract of :mod:`dqss.results` (job-directory layout, assignment
format, provenance columns).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..results import GROUP_KEYS, SETTING_COLUMNS, load_assignment, parse_job_path
from ..results import PROVENANCE as PROVENANCE_COLUMNS

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = GROUP_KEYS + ["seed", "value"]


# -- metrics.csv ----------------------------------------------------------------------------
def load_metrics(metrics_csv):
    """``results/metrics.csv`` checked: the key columns typed, the provenance and settings columns as text
    (empty where a setting does not apply: the settings line of a table quotes them as written)."""
    import pandas as pd

    df = pd.read_csv(metrics_csv, dtype={c: str for c in SETTING_COLUMNS})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{metrics_csv}: missing columns {missing}; is it the output of dqss.results.gather?")
    for c in ("w_bits", "a_bits", "seed"):
        df[c] = df[c].astype("int64")
    for c in ("task", "dataset", "backbone", "method", "metric"):
        df[c] = df[c].astype(str)
    for c in PROVENANCE_COLUMNS:
        df[c] = df[c].fillna("").astype(str) if c in df.columns else ""
    for c in SETTING_COLUMNS:
        if c in df.columns:
            df[c] = df[c].fillna("")
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


def provenance_line(df) -> str:
    def uniq(c):
        vals = sorted({v for v in df[c] if v}) if c in df.columns else []
        return ", ".join(f"`{v}`" for v in vals) if vals else "n/a"

    n_settings = len({v for v in df["config_hash"] if v})
    parts = [f"git_rev {uniq('git_rev')}", f"device {uniq('device')}", f"cpu {uniq('cpu')}",
             f"CPU kernels {uniq('cpu_capability')}", f"threads per job {uniq('threads')}", f"torch {uniq('torch')}",
             f"timm {uniq('timm')}", f"job settings: {n_settings} (a config_hash per job; one per table cell)"]
    revs = {v for v in df["git_rev"] if v}
    if len(revs) > 1:
        log.warning("results come from %d git revisions: %s", len(revs), sorted(revs))
    warn = f" — **warning: results mix {len(revs)} revisions**" if len(revs) > 1 else ""
    dirty = " — **warning: uncommitted changes (-dirty)**" if any(v.endswith("-dirty") for v in revs) else ""
    kernels = {v for v in df["cpu_capability"] if v} if "cpu_capability" in df.columns else set()
    mixed = (f" — **warning: results mix CPU kernel sets {sorted(kernels)}: their numbers differ in the last bits, "
             "and a trained model by whole points (cpu_kernels in the README)**" if len(kernels) > 1 else "")
    return "**Provenance:** " + " · ".join(parts) + warn + dirty + mixed


# -- training curves, crops, assignments ----------------------------------------------------
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


def load_assignments(paths) -> dict[tuple[str, str], list[dict]]:
    """The DQSS assignment files by (task, backbone), read with the jobs' own check."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for p in sorted(Path(p) for p in paths):
        data = load_assignment(p)
        task = data.get("task") or parse_job_path(p).task
        grouped.setdefault((str(task), str(data.get("backbone", "unknown"))), []).append(data)
    return grouped
