"""Glue between Snakemake and the library: config checks, job settings and the script-shim set-up.

Every rule passes its job, as ``params.settings``, exactly the keys of its track's config section
that the job reads (its track's ``job_keys``: :func:`job_keys`, projected by :func:`job_settings`), and the job
builds its config from them alone (:func:`job_config`).  Snakemake reruns a job when its params change, so
editing a key reruns exactly the jobs that read it; a job that touches a key it was not given fails
(:class:`dqss.tracks.config.NotGiven`).  The settings' hash is each result's ``config_hash``, and the
aggregate refuses a result whose hash is not the one the current config gives.
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

# the config's JSON schema, generated from the config dataclasses by dqss.schema
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
DEVICES = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# ``cpu_kernels``: the kernel dispatch of every job on a CPU.  ATen's vectorised kernels, oneDNN's
# convolutions and MKL's GEMMs each pick their code path by the CPU's instruction sets, and the paths
# round differently; an FP model trained for thousands of steps amplifies the last bits into points of
# top-1.  Pinning all three to AVX2 makes an x86-64 CPU with AVX2 (or wider) run the same code paths.
# The variables are read when each library initialises, so they are set in the Snakemake process and
# inherited by every job (local, cluster or container), never in the job itself.
CPU_KERNEL_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"},
                  "native": {}}
CPU_KERNELS = tuple(CPU_KERNEL_ENV)  # the top-level cpu_kernels: the first is the default


def tracks():
    """The registered tracks (:mod:`dqss.tracks`), sorted by name."""
    from .tracks import tracks as registered

    return registered()


def track_names() -> list[str]:
    return [t.name for t in tracks()]


def __getattr__(name: str):
    """The registry's views under their former names, computed on use (the registry imports the track modules,
    and torch with them; importing this module stays light): ``TRACKS``, ``TRAINABLE``, ``JOB_KEYS``."""
    if name == "TRACKS":
        return tuple(track_names())
    if name == "TRAINABLE":
        return {t.name: t.trainable for t in tracks() if t.trainable}
    if name == "JOB_KEYS":
        return {t.name: dict(t.job_keys) for t in tracks()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def job_keys(track: str, job: str) -> tuple[str, ...]:
    """The keys of ``track``'s section that ``job`` reads (its :class:`dqss.tracks.Track` record's ``job_keys``):
    "backbones" is cut to the job's backbone, "dqss" carries its resolved candidates (so it needs no "strategies"),
    "strategies" and "strategy_options" are cut to the strategies the job runs."""
    from .tracks import get_track

    keys = get_track(track).job_keys
    if job not in keys:
        raise ValueError(f"track {track} has no job '{job}'; its jobs are {list(keys)} (dqss.tracks.{track}: "
                         "TRACK.job_keys)")
    return tuple(keys[job])


class Checked(NamedTuple):
    """A config that passed :func:`check_config`: its seeds, each track's config (None when left out) and the
    layout of the paper's tables."""

    seeds: list[int]
    tracks: dict
    paper_tables: dict


def check_config(config) -> Checked:
    """Everything checked before any job, in the workflow (``workflow/rules/common.smk``) and in ``python -m
    dqss.workflow check`` alike: the JSON schema (structure, types, ranges, unknown keys), then the library
    (registered names, cross-field rules, data folders and weight files)."""
    from .report.paper import paper_layouts

    require_a_track(config)  # before the schema, whose message for this would print the whole config
    check_schema(config)
    seeds = check_top_level(config)
    configs = {t.name: track_config(config, t.name) for t in tracks()}
    return Checked(seeds, configs, paper_layouts(config, {t.name: t.table for t in tracks()}))


@functools.cache
def _schema_validator():
    import jsonschema
    import yaml

    # libyaml's loader where PyYAML has it: the same data, read 10x faster (0.5 s of every Snakemake start)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return jsonschema.Draft202012Validator(yaml.load(SCHEMA_PATH.read_text(encoding="utf-8"), Loader=loader))


def check_schema(config: dict) -> None:
    """``config`` against ``workflow/schemas/config.schema.yaml``, as it is written (no defaults filled in: every
    job's settings hash is computed from the config as given).  The message names the key at fault
    (``cls_ptq.dataset: '../../escape' does not match '^[A-Za-z0-9_-]+$'``)."""
    from jsonschema.exceptions import best_match

    error = best_match(_schema_validator().iter_errors(config))
    if error is None:
        return
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    message = error.message
    if error.validator == "additionalProperties" and isinstance(error.schema.get("properties"), dict):
        message += f"; valid keys are {sorted(error.schema['properties'])}"
    elif error.validator == "pattern" and error.schema.get("description"):
        message += f" ({error.schema['description']})"
    raise ValueError(f"{where}: {message}" if where else message)


def apply_config_args(config: dict, given) -> None:
    """Type the values ``snakemake --config`` set (``given``: Snakemake's ``config_settings.config``) as a config
    file's would be.  Snakemake reads a ``--config`` value's YAML with every scalar a string (``seeds=[0]``
    gives ``['0']``), so the README's ``--config 'seeds=[0, 1]'`` would fail the schema; ``config`` is changed
    in place, at the keys ``given`` sets and nowhere else."""
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            apply_config_args(config[key], value)
        else:
            config[key] = _as_in_a_file(value)


def _as_in_a_file(value):
    """A value of ``--config`` with each string scalar read as YAML would read it in a file (0 an integer,
    true a boolean, null None); any other string stays a string."""
    import yaml

    if isinstance(value, Mapping):
        return {k: _as_in_a_file(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_in_a_file(v) for v in value]
    if not isinstance(value, str) or value == "":
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value


def require_a_track(config: dict) -> None:
    names = track_names()
    if not any(t in config for t in names):
        raise ValueError(f"the config has none of the tracks {names}; is it the right file?")


def check_top_level(config: dict) -> list[int]:
    """The keys outside the tracks: ``seeds`` (returned), ``device`` and ``cpu_kernels``."""
    from .tracks.config import parse_seeds

    require_a_track(config)
    device = str(config.get("device", "auto"))
    if not DEVICES.match(device):
        raise ValueError(f"device: '{device}' is not auto, cpu, cuda or cuda:<index>")
    cpu_kernels(config)
    return parse_seeds(config.get("seeds"))


def cpu_kernels(config: dict) -> str:
    """The config's ``cpu_kernels`` (default avx2), checked."""
    choice = config.get("cpu_kernels", CPU_KERNELS[0])
    if choice not in CPU_KERNELS:
        raise ValueError(f"cpu_kernels: {choice!r} is not one of {list(CPU_KERNELS)} (avx2: the same results on "
                         "every x86-64 CPU with AVX2; native: each library's fastest code path for this CPU)")
    return choice


def pin_cpu_kernels(config: dict, environ=os.environ) -> str:
    """Put the config's kernel dispatch into ``environ`` (the Snakemake process's, which its jobs inherit)."""
    choice = cpu_kernels(config)
    if platform.machine().lower() in ("x86_64", "amd64"):
        environ.update(CPU_KERNEL_ENV[choice])
    return choice


def check_cpu_kernels(choice: str | None, device) -> None:
    """A job on the CPU runs the kernels its config pins; else its numbers would not be the reference's."""
    import torch

    if choice != "avx2" or torch.device(device).type != "cpu" or platform.machine().lower() not in ("x86_64",
                                                                                                  "amd64"):
        return
    got = torch.backends.cpu.get_cpu_capability()
    if got != "AVX2":
        env = " ".join(f"{k}={v}" for k, v in CPU_KERNEL_ENV["avx2"].items())
        why = ("this CPU has no AVX2: set cpu_kernels: native" if got == "DEFAULT" else
               f"the job was started without the workflow's environment: run it through Snakemake, or set {env}")
        raise RuntimeError(f"cpu_kernels: avx2, but ATen dispatches {got} kernels; {why}")


def track_config(config: dict, track: str):
    """The validated config of ``track`` (``None`` when the config has no such section).

    Everything that can be known before a job runs is checked here: unknown backbones, strategies
    or bit widths, and the data folders and weight files the config names (so that a typo stops the
    workflow before hours of training, with the key to fix): the config class's ``check_inputs``."""
    from .tracks import get_track

    record = get_track(track)
    section = config.get(track)
    if section is None:
        return None
    cfg = record.config.from_dict(section, track)
    cfg.check_inputs(record.trainable)
    return cfg


def job_settings(cfg, job: str, backbone: str, method: str | None = None) -> dict:
    """The keys of ``cfg``'s section that ``job`` reads, for ``backbone`` (and a QAT ``method``)."""
    raw = cfg.raw
    keys = job_keys(cfg.task, job)
    runs = None  # the strategies this job runs or searches over
    if job in ("dqss", "deploy"):  # deploy_check rebuilds the DQSS model and the best uniform among the candidates
        runs = list(cfg.dqss.candidates)
    elif job == "uniform":
        runs = [method] if method is not None else list(cfg.strategies)
    elif job in ("reconstruct", "dqss_recon"):  # the range strategies giving the grids, and DQSS's candidates
        rec = cfg.reconstruction
        runs = list(dict.fromkeys([*(cfg.dqss.candidates if job == "dqss_recon" else []), rec.weight_init,
                                   rec.act_strategy]))
    out = {}
    for k in keys:
        if k == "backbones":
            out[k] = {backbone: raw["backbones"][backbone]}
        elif k == "reconstruction":  # a method's job reads its own name only: adding a method reruns nothing
            sec = raw.get("reconstruction") or {}
            out[k] = {**sec, "methods": [method]} if job == "reconstruct" else dict(sec)
        elif k == "dqss":
            out[k] = {**(raw.get("dqss") or {}), "candidates": list(cfg.dqss.candidates)}
        elif k == "strategies":
            out[k] = runs
        elif k == "strategy_options":
            opts = raw.get("strategy_options") or {}
            out[k] = {s: opts[s] for s in runs if s in opts}
        else:
            out[k] = cfg.setting(k)  # as written, or as the track resolves it (SR's eval: its crop's test set)
    return canonical(out)


def canonical(value):
    """``value`` with every mapping's keys sorted: Snakemake compares params by ``repr``, and a reordered
    (but equal) config must not rerun anything.  List order is kept: it can matter."""
    if isinstance(value, dict):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def track_job(track: str, job: str):
    """The function of ``track``'s module that runs ``job`` (``run_<job>``): the entry of a rule shared by tracks."""
    import importlib

    from .tracks import get_track

    return getattr(importlib.import_module(get_track(track).config.__module__), f"run_{job}")


def job_config(smk):
    """The config of a job, built from its rule's ``params.settings`` only."""
    from .tracks import get_track

    track = smk.params.track
    return get_track(track).config.from_dict(smk.params.settings, track, partial=True)


def load_yaml(path) -> object:
    """A YAML file; a syntax error names the file, line and column (PyYAML's own message names neither
    file nor, through Snakemake, anything)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = "; ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        raise ValueError(f"{where}: YAML syntax error: {problem or exc}") from None


# A top-level key that makes Snakemake's config loader a YTE template engine (yte.process_yaml)
YTE_KEY = "__use_yte__"


def template_message(path, evaluated: bool = False) -> str:
    """Why a config with a top-level ``__use_yte__`` is refused; ``evaluated``: Snakemake has already loaded it."""
    message = (f"{path}: this config is a YTE template (top-level {YTE_KEY}), whose `?` expressions run Python "
               "code when Snakemake loads the file. The suite accepts plain-data configs only: remove "
               f"{YTE_KEY} and write the values out")
    if evaluated:
        message += (". Snakemake has already evaluated this --configfile (its code has run); the workflow stops "
                    "here. Check a shared config with `python -m dqss.workflow check FILE`, or run it through "
                    "`./suite run --configfile FILE`, which refuses it before anything runs")
    return message


def load_config_data(path, evaluated: bool = False) -> object:
    """A config file read as plain data (``yaml.safe_load``, never through YTE); a YTE template is refused.
    ``evaluated``: the file is a ``--configfile`` Snakemake has already loaded (the message says so)."""
    data = load_yaml(path)
    if isinstance(data, dict) and YTE_KEY in data:
        raise ValueError(template_message(path, evaluated))
    return data


def refuse_templates(paths, evaluated: bool = False) -> None:
    """Each config file read as plain data (:func:`load_config_data`): a ValueError at the first YTE template."""
    for path in paths:
        load_config_data(path, evaluated)


def check_config_file(path) -> dict:
    """Everything the workflow checks before any job (:func:`check_config`), on one config file read as plain
    data, without Snakemake."""
    config = load_config_data(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config file is a mapping of keys (seeds, device, cls_ptq, ...), not a "
                         f"{type(config).__name__}")
    check_config(config)
    return config


def valid_backbones_pattern(config: dict) -> str:
    names = sorted({b for t in track_names() if t in config for b in config[t]["backbones"]})
    return "|".join(re.escape(n) for n in names)


def setup(smk):
    """Route logging and progress bars to the rule's log, pin threads, resolve the device.

    Returns the device.
    """
    import torch

    from .tracks.common import resolve_device

    if smk.log:
        stream = open(smk.log[0], "a", buffering=1)
        sys.stderr = stream
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    torch.set_num_threads(max(1, int(smk.threads)))
    device = resolve_device(str(smk.params.get("device", "auto")))
    check_cpu_kernels(smk.params.get("cpu_kernels"), device)
    logging.getLogger("dqss").info("rule %s on %s, %d thread(s), %s kernels", smk.rule, device, smk.threads,
                                   torch.backends.cpu.get_cpu_capability())
    return device


INT_WILDCARDS = ("seed", "w", "a")


def run_job(smk, job, **extra) -> None:
    """Run a job function as every rule does: its config from the rule's settings, then its wildcards (``seed``,
    ``w``, ``a`` as integers), the rule's named inputs and outputs and ``extra`` as keyword arguments (a job's
    parameters are named like its rule's keys, so a swapped or missing file is an error, not a silent mix-up),
    and the device.  An input the rule leaves empty (no checkpoint for timm weights) is passed as None, one of
    several files as their list."""
    device = setup(smk)
    kwargs = {k: int(v) if k in INT_WILDCARDS else v for k, v in smk.wildcards.items()}
    cfg = job_config(smk)
    track = kwargs.pop("track", cfg.task)  # a rule shared by tracks (deploy_check) runs its track's job
    if track != cfg.task:
        raise ValueError(f"{smk.rule} for {track} was given the {cfg.task} settings")
    for name, value in [*smk.input.items(), *smk.output.items()]:
        # a named input or output of several files (dqss_recon's reconstructions) is passed as the list
        kwargs[name] = value if isinstance(value, str) else (None if len(value) == 0 else
                                                             value[0] if len(value) == 1 else list(value))
    job(cfg, **kwargs, **extra, device=device)


def main(argv=None) -> int:
    """``python -m dqss.workflow check FILE...``: check config files without running Snakemake: YAML syntax
    (with file, line and column), plain data (no YTE template), then everything the workflow checks before any
    job.  ``check-yte FILE...``: only whether each file reads as plain data (no YTE template; light: no torch),
    for ./suite before Snakemake loads them.  Exit status 1 when a file is refused (each named on stderr)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dqss.workflow", description=main.__doc__)
    ap.add_argument("command", choices=["check", "check-yte"])
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    status = 0
    for f in args.files:
        try:
            if args.command == "check-yte":
                load_config_data(f)
                continue
            check_config_file(f)
            print(f"{f}: ok")
        except (ValueError, KeyError, FileNotFoundError) as exc:
            print(str(exc) if str(exc).startswith(str(f)) else f"{f}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
