"""The results contract: one ``metrics.json`` per job, gathered into a tidy long CSV."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

KEYS = ["task", "dataset", "backbone", "method", "w_bits", "a_bits", "seed"]
COLUMNS = KEYS + ["metric", "value"]
PROVENANCE = ["torch", "torchvision", "timm", "basicsr", "python", "git_rev", "device", "config_hash"]
FP_METHOD = "fp32"


def config_hash(section: dict) -> str:
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()})"


def provenance(device, section: dict) -> dict:
    return {"torch": _version("torch"), "torchvision": _version("torchvision"), "timm": _version("timm"),
            "basicsr": _version("basicsr-fixed") if _version("basicsr-fixed") != "absent" else _version("basicsr"),
            "python": platform.python_version(), "git_rev": git_revision(), "device": device_name(device),
            "config_hash": config_hash(section)}


def write_json(path, payload: dict) -> None:
    """Write atomically: a crash never leaves a truncated file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_csv(path, rows: list[dict]) -> None:
    """Rows (dicts with the same keys, in order) as a CSV, written atomically like :func:`write_json`."""
    import csv

    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def write_metrics(path, *, task: str, dataset: str, backbone: str, method: str, w_bits: int, a_bits: int,
                  seed: int, metrics: dict[str, float], prov: dict, extra: dict | None = None,
                  results: list[dict] | None = None, per_image: dict[str, list] | None = None) -> None:
    """One job's result.  ``results`` (SR: one entry ``{dataset, metrics, per_image, ...}`` per test set)
    puts several datasets in one file; ``dataset`` then names the training/calibration source.
    ``per_image`` holds each metric's per-image values (in test-set order) for paired significance tests."""
    payload = {"task": task, "dataset": dataset, "backbone": backbone, "method": method,
               "w_bits": int(w_bits), "a_bits": int(a_bits), "seed": int(seed),
               "metrics": {k: float(v) for k, v in metrics.items()}, "provenance": prov,
               "extra": extra or {}}
    if per_image is not None:
        payload["per_image"] = per_image
    if results is not None:
        payload["results"] = [{**r, "metrics": {k: float(v) for k, v in r["metrics"].items()}} for r in results]
    write_json(path, payload)


def _per_dataset(d: dict):
    """(dataset, metrics) pairs of a job result: its ``results`` list, else its single dataset."""
    if "results" in d:
        return [(r["dataset"], r["metrics"]) for r in d["results"]]
    return [(d["dataset"], d["metrics"])]


def check_settings(d: dict, path, expected: str) -> None:
    """A job result must come from the settings the current config gives its job."""
    got = d.get("provenance", {}).get("config_hash")
    if got != expected:
        raise ValueError(f"{path} was computed with other settings than the config gives its job (settings hash "
                         f"{got}, the config's {expected}): Snakemake reruns a job whose settings change, so this "
                         "file was copied in or its records in .snakemake/ were lost. Delete the file (or rerun its "
                         "rule with --forcerun) and run the workflow again")


def gather(paths, expected: dict | None = None) -> "pandas.DataFrame":
    """Long table: one row per (job, metric), with provenance columns and the delta to FP.

    ``expected`` maps a path to the settings hash its job must have recorded (every path is checked)."""
    import pandas as pd

    rows = []
    for p in paths:
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read job result {p}: {exc}; delete it and rerun the workflow") from exc
        if expected is not None:
            check_settings(d, p, expected[str(p)])
        for dataset, metrics in _per_dataset(d):
            for metric, value in metrics.items():
                rows.append({**{k: d[k] for k in KEYS}, "dataset": dataset, "metric": metric, "value": value,
                             **{k: d["provenance"].get(k, "") for k in PROVENANCE}})
    df = pd.DataFrame(rows, columns=COLUMNS + PROVENANCE)
    fp = (df[df.method == FP_METHOD].groupby(["task", "dataset", "backbone", "metric"])["value"].mean()
          .rename("fp_value"))
    df = df.join(fp, on=["task", "dataset", "backbone", "metric"])
    df.insert(df.columns.get_loc("value") + 1, "delta_fp", df["value"] - df.pop("fp_value"))
    return df.sort_values(KEYS + ["metric"], kind="stable").reset_index(drop=True)
