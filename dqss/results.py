"""The results contract, in one place: method names, the job-directory layout (built *and* parsed
here), the columns of ``results/metrics.csv``, the settings and provenance each row carries, and the
atomic writers.  The rules, the jobs, the report and the strategy registry import from here.

Each job writes one ``metrics.json``; :func:`gather` turns them into a tidy long CSV, one row per
(job, dataset, metric), with the row's settings and provenance as columns.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# -- method names ---------------------------------------------------------------------------
FP_METHOD = "fp32"  # the full-precision model, re-measured in the same run
BICUBIC_METHOD = "bicubic"  # SR: bicubic upsampling, the floor of every SR table
DQSS_METHOD = "dqss"  # DQSS with its default final choice (dqss.algorithms.select)
DQSS_ARGMAX = "dqss_argmax"  # PTQ: the argmax of the same search's logits (the paper's rule)
DQSS_NOFIX = "dqss_nofix"  # QAT: trained under the mixture to the end (no under-fitting fix)
DQSS_RETRAIN = "dqss_retrain"  # QAT: dqss's frozen assignment retrained from the FP checkpoint
DQSS_RECON = "dqss_recon"  # PTQ: dqss with the reconstruction baselines (frozen) among its candidates
REFERENCE_METHODS = (FP_METHOD, BICUBIC_METHOD)  # reference rows: shown, never ranked
DQSS_METHODS = (DQSS_NOFIX, DQSS_ARGMAX, DQSS_METHOD, DQSS_RECON)  # the tables list them last, in this order
PTQ_DQSS_METHODS = (DQSS_ARGMAX, DQSS_METHOD)  # the rows one PTQ DQSS job writes
QAT_DQSS_METHODS = (DQSS_METHOD, DQSS_NOFIX, DQSS_RETRAIN)
RESERVED_METHODS = frozenset(REFERENCE_METHODS + DQSS_METHODS + (DQSS_RETRAIN,))


def is_dqss(method: str) -> bool:
    """A row of DQSS (any variant); a strategy may not be named like one."""
    return str(method).startswith(DQSS_METHOD)


def is_uniform(method: str) -> bool:
    """A uniform strategy's row: neither a reference row nor DQSS."""
    return method not in REFERENCE_METHODS and not is_dqss(method)


# -- the job-directory layout ---------------------------------------------------------------
# results/{task}/{dataset}/{backbone}/{method}/w{W}a{A}/seed{S}/{file}; never '.' as a separator
# (timm names contain dots).  Every argument may be a Snakemake wildcard such as "{seed}".
RESULTS_DIR = "results"
FP_BITS = 32
_PART = r"[^/]+"
JOB_PATH = re.compile(rf"(?:^|/)(?P<task>{_PART})/(?P<dataset>{_PART})/(?P<backbone>{_PART})/"
                      rf"(?P<method>{_PART})/w(?P<w_bits>\d+)a(?P<a_bits>\d+)/seed(?P<seed>\d+)/(?P<file>{_PART})$")


@dataclass(frozen=True)
class Layout:
    """The paths of one track's results (``dataset`` is the track's data, e.g. ``digits``)."""

    task: str
    dataset: str

    def backbone_dir(self, backbone="{backbone}") -> str:
        return f"{RESULTS_DIR}/{self.task}/{self.dataset}/{backbone}"

    def job(self, file: str, method="{method}", w="{w}", a="{a}", seed="{seed}", backbone="{backbone}") -> str:
        """A file of one job result."""
        return f"{self.backbone_dir(backbone)}/{method}/w{w}a{a}/seed{seed}/{file}"

    def fp(self, file: str, seed="{seed}", backbone="{backbone}", method=FP_METHOD) -> str:
        """A file of a full-precision reference row (``fp32`` or ``bicubic``)."""
        return self.job(file, method, FP_BITS, FP_BITS, seed, backbone)

    def model(self, file: str = "model.pt", backbone="{backbone}") -> str:
        """The FP model the workflow trains, and its training curve."""
        return f"{self.backbone_dir(backbone)}/{FP_METHOD}/{file}"

    def calib(self, file: str, seed="{seed}", backbone="{backbone}") -> str:
        """The seed's calibration statistics and its list of images or crops."""
        return f"{self.backbone_dir(backbone)}/calib/seed{seed}/{file}"


@dataclass(frozen=True)
class JobPath:
    """What a job result's path says."""

    task: str
    dataset: str
    backbone: str
    method: str
    w_bits: int
    a_bits: int
    seed: int
    file: str


def parse_job_path(path) -> JobPath:
    """The parts of a job result's path; a path outside the layout is an error naming the layout."""
    m = JOB_PATH.search(Path(path).as_posix())
    if m is None:
        raise ValueError(f"{path}: not a job result path; expected {RESULTS_DIR}/{{task}}/{{dataset}}/{{backbone}}/"
                         "{method}/w{W}a{A}/seed{S}/{file}")
    d = m.groupdict()
    return JobPath(**{k: int(v) if k in ("w_bits", "a_bits", "seed") else v for k, v in d.items()})


# -- columns --------------------------------------------------------------------------------
KEYS = ["task", "dataset", "backbone", "method", "w_bits", "a_bits", "seed"]
COLUMNS = KEYS + ["metric", "value"]
GROUP_KEYS = [k for k in KEYS if k != "seed"] + ["metric"]  # one table cell: mean and std over seeds
# The settings that define a row, as columns of metrics.csv (empty where a setting does not apply):
SETTINGS = {
    "weights": "where the FP weights come from: train (here), timm, file or url",
    "calib_size": "calibration images (crops for SR) per seed",
    "hold_fraction": "the part of the calibration draw held out for DQSS's selection guard",
    "first_last_bits": "bit width of the first and last layer (classification; empty = the row's)",
    "high_precision": "SR parts kept at high precision (head, upsampler, tail)",
    "high_precision_bits": "their bit width (empty = full precision)",
    "candidates": "DQSS's candidate strategies, joined by '+'",
    "iterations": "PTQ DQSS search iterations",
    "loss": "PTQ DQSS search loss",
    "recon_iterations": "reconstruction baselines (AdaRound, BRECQ, QDrop): Adam steps per reconstruction unit",
    "select": "DQSS's final choice: measured or argmax",
    "sweeps": "coordinate-descent sweeps of the measured selection, at most",
    "epochs": "QAT epochs",
    "lr": "QAT learning rate of the weights",
    "quant_lr": "QAT learning rate of the quantizers' parameters",
    "arch_lr": "DQSS-QAT learning rate of the logits",
    "search_fraction": "DQSS-QAT: the part of the schedule searched before the freeze (1 = no fix)",
    "sampling": "DQSS-QAT search forward: mixture or single_path",
}
SETTING_COLUMNS = list(SETTINGS)
PROVENANCE = ["torch", "torchvision", "timm", "basicsr", "python", "git_rev", "device", "cpu", "cpu_capability",
              "threads", "config_hash"]
CSV_COLUMNS = COLUMNS + ["delta_fp"] + SETTING_COLUMNS + PROVENANCE


def setting_value(value) -> str:
    """A setting as its CSV cell: lists joined by '+', booleans lower case, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def check_settings_keys(settings: dict) -> dict:
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown row setting(s) {unknown}: a setting that defines a row must be a column of "
                         "metrics.csv; add it to dqss.results.SETTINGS with a description")
    return {k: setting_value(v) for k, v in settings.items()}


# -- provenance -----------------------------------------------------------------------------
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


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device, section: dict) -> dict:
    """What produced a row besides its settings.  ``cpu_capability`` is the kernel set ATen dispatches to
    (AVX2 under ``cpu_kernels: avx2``, whatever the CPU), and ``threads`` the intra-op threads: both can
    change the last bits of a float sum, and a long training amplifies them."""
    import torch

    sr = "basicsr-fixed" if _version("basicsr-fixed") != "absent" else "basicsr"
    return {"torch": _version("torch"), "torchvision": _version("torchvision"), "timm": _version("timm"),
            "basicsr": _version(sr), "python": platform.python_version(), "git_rev": git_revision(),
            "device": device_name(device), "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "config_hash": config_hash(section)}


# -- writers --------------------------------------------------------------------------------
def atomic_write(path, write) -> None:
    """``write(tmp)`` then rename: a crash never leaves a truncated file that looks complete, and a reader
    never sees a half-written one (every file a later job or run trusts is written this way)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the path of the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # this process's own (the writer creates it: umask mode)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # an interrupted write leaves no temporary file behind
            tmp.unlink()


def write_text(path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_csv(path, rows: list[dict], fields: list[str] | None = None) -> None:
    """Rows (dicts) as a CSV, written atomically like :func:`write_json`; the columns are ``fields``, else
    every key in the order first seen (a row without a key leaves its cell empty)."""
    import csv

    if not rows:
        raise ValueError(f"no rows to write to {path}")
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def write_frame(path, df) -> None:
    """A pandas frame as CSV, atomically."""
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def write_metrics(path, *, task: str, dataset: str, backbone: str, method: str, w_bits: int, a_bits: int,
                  seed: int, metrics: dict[str, float], prov: dict, settings: dict | None = None,
                  extra: dict | None = None, results: list[dict] | None = None,
                  per_image: dict[str, list] | None = None) -> None:
    """One job's result.  ``settings`` (keys of :data:`SETTINGS`) become columns of metrics.csv; ``extra``
    holds what else the job reports.  ``results`` (SR: one entry ``{dataset, metrics, per_image, ...}``
    per test set) puts several datasets in one file; ``dataset`` then names the training/calibration source.
    ``per_image`` holds each metric's per-image values (in test-set order) for paired significance tests."""
    payload = {"task": task, "dataset": dataset, "backbone": backbone, "method": method,
               "w_bits": int(w_bits), "a_bits": int(a_bits), "seed": int(seed),
               "metrics": {k: float(v) for k, v in metrics.items()}, "settings": check_settings_keys(settings or {}),
               "provenance": prov, "extra": extra or {}}
    if per_image is not None:
        payload["per_image"] = per_image
    if results is not None:
        payload["results"] = [{**r, "metrics": {k: float(v) for k, v in r["metrics"].items()}} for r in results]
    write_json(path, payload)


# -- assignment files -----------------------------------------------------------------------
ASSIGNMENT_FORMAT = "dqss-assignment/1"  # a DQSS job's per-layer choice (dqss.algorithms.ptq.export_assignment)


def assignment_meta(*, w_bits: int, a_bits: int, seed: int, candidates, strategy_options: dict | None, select: str,
                    job: dict | None = None, run: dict | None = None, outcome=None) -> dict:
    """What an assignment file records besides its format tag and its layers, in the order the files list it:
    the job that wrote it (``job``: task, dataset, backbone and, for PTQ, method; :func:`job_assignment` adds it
    to an assignment made without), the bit widths and seed, what a run adds (``run``: QAT's method and freeze
    step), the candidates and each one's options (``strategy_options``: by strategy name; none is ``{}``), the
    final-choice rule (``select``: ``argmax`` or the selection's rule) and, after a PTQ search, what it measured
    (``outcome``, a :class:`dqss.algorithms.ptq_search.Outcome`: the held part's best uniform strategy and the
    calibration split).  The one builder of this metadata: :func:`dqss.api.search_assignment` and the jobs."""
    candidates = list(candidates)
    options = strategy_options or {}
    meta = {**(job or {}), "w_bits": w_bits, "a_bits": a_bits, "seed": seed, **(run or {}), "candidates": candidates,
            "strategy_options": {s: options.get(s) or {} for s in candidates}, "select": select}
    if outcome is not None:
        meta.update(reference_uniform=outcome.record.get("held_best_uniform"), calibration=outcome.split)
    return meta


def job_assignment(assignment: dict, job: dict) -> dict:
    """``assignment`` (as :func:`dqss.api.search_assignment` exports it) with the ``job`` that writes it (task,
    dataset, backbone, method) recorded first, after its format tag, as :func:`assignment_meta` orders them."""
    head = {k: assignment[k] for k in ("format",) if k in assignment}
    return {**head, **job, **{k: v for k, v in assignment.items() if k not in head and k not in job}}


def save_assignment(assignment: dict, path) -> None:
    import yaml

    write_text(path, yaml.safe_dump(assignment, sort_keys=False))


def load_assignment(path) -> dict:
    """An assignment file, checked to be one (its format tag and its layers, field by field:
    :func:`check_assignment`)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file: an assignment.yaml is YAML text (as dqss.save_assignment and "
                         "the DQSS jobs write it); give the path of one") from None
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"cannot read assignment file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != ASSIGNMENT_FORMAT:
        raise ValueError(f"{path} is not a DQSS assignment file (expected format: {ASSIGNMENT_FORMAT} with a "
                         "'layers' list); delete it and rerun its DQSS job")
    return check_assignment(data, f"assignment file {path}")


ASSIGNMENT_LAYER_KEYS = ("name", "w_bits", "a_bits", "weight", "act")


def check_assignment(data, where: str = "the assignment") -> dict:
    """``data`` if it is an assignment (a dict with a list of ``layers``, each with a name, integer bit widths
    and the names of its weight and activation strategies, no layer twice), else a ValueError naming the
    field (``where``: what the message calls it)."""
    from .options import BIT_MAX, BIT_MIN

    fix = ("; an assignment is what dqss.search_assignment returns and dqss.save_assignment writes "
           f"({{format: {ASSIGNMENT_FORMAT}, w_bits, a_bits, layers: [{{{', '.join(ASSIGNMENT_LAYER_KEYS)}}}, ...]}})")

    def bits_problem(v, key: str) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or not BIT_MIN <= v <= BIT_MAX:
            return f"{key} must be an integer bit width in {BIT_MIN}..{BIT_MAX}, got {v!r}"
        return None

    if not isinstance(data, dict):
        raise ValueError(f"{where} is a {type(data).__name__}, not an assignment dict{fix}")
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"{where}: 'layers' must be a list of per-layer entries, got {type(layers).__name__}{fix}")
    for key in ("w_bits", "a_bits"):
        problem = key in data and bits_problem(data[key], key)
        if problem:
            raise ValueError(f"{where}: {problem}{fix}")
    seen = set()
    for i, e in enumerate(layers):
        if not isinstance(e, dict):
            raise ValueError(f"{where}: layer {i} is a {type(e).__name__}, not a dict{fix}")
        label = f"layer {i} ({e.get('name')!r})"
        missing = [k for k in ASSIGNMENT_LAYER_KEYS if k not in e]
        if missing:
            raise ValueError(f"{where}: {label} has no {missing[0]!r}; each layer needs "
                             f"{', '.join(ASSIGNMENT_LAYER_KEYS)}{fix}")
        if not isinstance(e["name"], str) or not e["name"]:
            raise ValueError(f"{where}: {label}: name must be the layer's module name, got {e['name']!r}{fix}")
        for key in ("w_bits", "a_bits"):
            problem = bits_problem(e[key], key)
            if problem:
                raise ValueError(f"{where}: {label}: {problem}{fix}")
        for key in ("weight", "act"):
            if not isinstance(e[key], str) or not e[key]:
                raise ValueError(f"{where}: {label}: {key} must be a strategy name (a string), got {e[key]!r}{fix}")
        if e["name"] in seen:
            raise ValueError(f"{where} lists layer '{e['name']}' more than once; list each layer once{fix}")
        seen.add(e["name"])
    return data


# -- gathering ------------------------------------------------------------------------------
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


def read_job(path) -> dict:
    """A job's metrics.json; an unreadable one names the fix."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read job result {path}: {exc}; delete it and rerun the workflow") from exc


def gather(paths, expected: dict | None = None) -> "pandas.DataFrame":
    """Long table: one row per (job, dataset, metric), with the delta to FP, settings and provenance columns.

    ``expected`` maps a path to the settings hash its job must have recorded (every path is checked)."""
    import pandas as pd

    rows = []
    for p in paths:
        d = read_job(p)
        if expected is not None:
            check_settings(d, p, expected[str(p)])
        settings = {k: d.get("settings", {}).get(k, "") for k in SETTING_COLUMNS}
        prov = {k: d["provenance"].get(k, "") for k in PROVENANCE}
        for dataset, metrics in _per_dataset(d):
            for metric, value in metrics.items():
                rows.append({**{k: d[k] for k in KEYS}, "dataset": dataset, "metric": metric, "value": value,
                             **settings, **prov})
    df = pd.DataFrame(rows, columns=COLUMNS + SETTING_COLUMNS + PROVENANCE)
    fp = (df[df.method == FP_METHOD].groupby(["task", "dataset", "backbone", "metric"])["value"].mean()
          .rename("fp_value"))
    df = df.join(fp, on=["task", "dataset", "backbone", "metric"])
    df.insert(df.columns.get_loc("value") + 1, "delta_fp", df["value"] - df.pop("fp_value"))
    return df.sort_values(KEYS + ["metric"], kind="stable").reset_index(drop=True)
