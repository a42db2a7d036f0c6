"""The profiles: every compute rule of every track has its threads, memory and runtime in profiles/gpu and
profiles/slurm; no profile names a rule that does not exist; each job asks for a GPU once, through the `gpu`
resource its rule declares; profiles/default (applied on top of any --profile) overrides none of their
settings.  The rules are read from the workflow's files (no Snakemake run)."""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
PROFILES = ("gpu", "slurm")
# resources that request GPUs besides the `gpu` every compute rule declares (the SLURM plugin maps gpu,
# gpus, gres and gpu_model each to sbatch options; nvidia_gpu is the job-step plugin's alias)
GPU_KEYS = {"gpu", "gpus", "gres", "gpu_model", "nvidia_gpu"}
GPU_OPTION = re.compile(r"--gres\b|--gpus\b|--gpus-per-\w+|(?<!\S)-G\b")


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())


def rule_blocks() -> dict[str, str]:
    """Every rule of the workflow (all tracks, whatever the config leaves out) and its text."""
    blocks = {}
    for path in RULE_FILES:
        for block in re.split(r"^(?=rule \w+:)", path.read_text(), flags=re.M)[1:]:
            name = re.match(r"rule (\w+):", block).group(1)
            assert name not in blocks, f"rule {name} is defined twice"
            blocks[name] = block.split("\n\n\n", 1)[0]
    return blocks


def localrules() -> set[str]:
    """The rules the Snakefile's `localrules:` directives name, and those marked `localrule: True`."""
    names = set()
    for path in RULE_FILES:
        text = path.read_text()
        for body in re.findall(r"^[ \t]*localrules:[ \t]*((?:[\w ,]*\n?)(?:[ \t]+[\w ,]+\n)*)", text, flags=re.M):
            names |= set(re.findall(r"\w+", body))
    names |= {n for n, b in rule_blocks().items() if re.search(r"^    localrule:\s*True", b, flags=re.M)}
    return names


def compute_rules() -> set[str]:
    return set(rule_blocks()) - localrules()


def problems(prof: dict, rules: set[str], local: set[str]) -> list[str]:
    """What is wrong with a profile: a rule without threads, mem_mb or runtime; a name that is no rule; a
    second GPU request."""
    found = []
    threads = prof.get("set-threads") or {}
    resources = prof.get("set-resources") or {}
    for section, names in (("set-threads", threads), ("set-resources", resources)):
        found += [f"{section} names {n!r}, which is no rule of the workflow" for n in names if n not in rules]
        found += [f"{section} names {n!r}, a local rule (it runs where Snakemake runs)" for n in names
                  if n in local]
    for rule in sorted(rules - local):
        t = threads.get(rule)
        if not (isinstance(t, int) and t >= 1):
            found.append(f"{rule}: no threads in set-threads")
        res = resources.get(rule) or {}
        for key in ("mem_mb", "runtime"):
            if not (isinstance(res.get(key), int) and res[key] > 0):
                found.append(f"{rule}: no {key} in set-resources")
    default = prof.get("default-resources") or {}
    if isinstance(default, list):  # the command line's form, KEY=VALUE
        default = dict(item.split("=", 1) for item in default)
    for where, res in [("default-resources", default), *((f"set-resources {r}", v or {}) for r, v in resources.items())]:
        for key in sorted(GPU_KEYS & set(res)):
            found.append(f"{where} sets {key}: the rules' own gpu resource is the one GPU request")
        if GPU_OPTION.search(str(res.get("slurm_extra", ""))):
            found.append(f"{where}: slurm_extra asks for GPUs; the rules' gpu resource already does")
    return found


# -- the workflow's rules ------------------------------------------------------------------------------
def test_rules_are_read_from_the_workflow():
    rules, local = set(rule_blocks()), localrules()
    assert {"cls_train", "cls_dqss", "cls_qat_retrain", "sr_dqss", "benchmark_qat_step", "aggregate", "all"} <= rules
    assert local == {"all", "aggregate", "report", "sr_download_weights", "paper_tables", "reconstruction",
                     "reconstruction_aggregate", "reconstruction_report", "deploy_summary"}
    assert len(compute_rules()) == 23


CPU_ONLY = {"deploy_check"}


def test_every_compute_rule_declares_one_gpu_resource():
    """Each compute rule asks for a GPU through the standard `gpu` resource (0 where the config says
    device: cpu), and through nothing else; the deployment check runs ONNX Runtime's CPU provider: gpu=0."""
    for name in sorted(compute_rules()):
        block = rule_blocks()[name]
        want = "0" if name in CPU_ONLY else "GPU"
        assert re.search(rf"^        gpu={want},$", block, flags=re.M), f"rule {name} does not declare gpu={want}"
        assert not re.search(r"^        (gpus|gres|gpu_model|nvidia_gpu)=", block, flags=re.M), name


# -- the profiles ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROFILES)
def test_profile_covers_every_compute_rule_once(name):
    assert problems(profile(name), set(rule_blocks()), localrules()) == []


def test_profile_check_finds_what_is_wrong():
    """The check above can fail: a typo'd rule name, a rule left out, a second GPU request."""
    rules, local = set(rule_blocks()), localrules()
    good = profile("slurm")
    assert problems(good, rules, local) == []

    typo = copy.deepcopy(good)
    typo["set-threads"]["cls_dqs"] = typo["set-threads"].pop("cls_dqss")
    assert problems(typo, rules, local) == ["set-threads names 'cls_dqs', which is no rule of the workflow",
                                            "cls_dqss: no threads in set-threads"]
    missing = copy.deepcopy(good)
    del missing["set-resources"]["sr_uniform"]["runtime"]
    assert problems(missing, rules, local) == ["sr_uniform: no runtime in set-resources"]
    twice = copy.deepcopy(good)
    twice["set-resources"]["cls_uniform"]["slurm_extra"] = "'--gres=gpu:1'"
    twice["default-resources"]["gpus"] = 1
    assert problems(twice, rules, local) == [
        "default-resources sets gpus: the rules' own gpu resource is the one GPU request",
        "set-resources cls_uniform: slurm_extra asks for GPUs; the rules' gpu resource already does"]
    local_listed = copy.deepcopy(good)
    local_listed["set-threads"]["report"] = 1
    assert problems(local_listed, rules, local) == ["set-threads names 'report', a local rule (it runs where "
                                                    "Snakemake runs)"]


def test_profiles_agree_on_each_rules_resources():
    """profiles/gpu and profiles/slurm size every job alike (one table to keep up to date in two files)."""
    gpu, slurm = profile("gpu"), profile("slurm")
    assert gpu["set-threads"] == slurm["set-threads"]
    assert gpu["set-resources"] == slurm["set-resources"]


def test_slurm_profile_uses_the_plugin_with_a_default_partition():
    slurm = profile("slurm")
    assert slurm["executor"] == "slurm"
    assert isinstance(slurm["default-resources"]["slurm_partition"], str)
    assert "EDIT" in (ROOT / "profiles/slurm/config.yaml").read_text()  # the partition is the user's to set
    assert slurm["latency-wait"] >= 30  # a shared file system


def test_default_profile_overrides_nothing_of_the_other_profiles():
    """profiles/default is applied on top of every --profile and wins key by key (Snakemake 9): a key that
    both set must mean the same, or the machine's profile is silently overridden."""
    default = profile("default")
    for name in PROFILES:
        other = profile(name)
        clash = {k for k in set(default) & set(other) if default[k] != other[k]}
        assert not clash, f"profiles/default overrides profiles/{name}'s {sorted(clash)}"
    # what depends on where the jobs run stays out of the default profile
    assert not {"executor", "jobs", "cores", "latency-wait", "set-threads", "set-resources",
                "default-resources", "resources"} & set(default)


# -- the plugin the SLURM profile needs -----------------------------------------------------------------
def test_slurm_extra_is_pinned_and_mirrored():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = extras["slurm"]
    assert {p.split("==")[0] for p in pins} == {"snakemake-executor-plugin-slurm",
                                                "snakemake-executor-plugin-slurm-jobstep"}
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", p) for p in pins)
    env = (ROOT / "environment.yml").read_text()
    for pin in pins:
        assert re.search(rf"^\s*#\s*- {re.escape(pin)}$", env, flags=re.M), f"environment.yml does not mention {pin}"
