"""The config check: `python -m dqss.workflow check FILE` runs exactly the checks of the workflow (the JSON schema,
then the library's) and refuses a YTE template without evaluating it; a `--config` value means what it would
mean in a config file.  That the Snakefile refuses the same configs with the same messages:
tests/workflow/test_config_errors.py."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from dqss import workflow
from dqss.workflow import check_config_file, main
from helpers import BAD_CHECKS, BAD_CONFIGS, ROOT, TEST_CONFIG, edited, run_check, write_config, yte_template


# -- item 3: a config that runs code ---------------------------------------------------------------
def test_a_yte_template_runs_code_when_snakemake_loads_it(tmp_path):
    """The threat the checks below guard against: Snakemake's config loader evaluates the template."""
    from snakemake.common.configfile import load_configfile

    marker = tmp_path / "MARK"
    config = load_configfile(yte_template(tmp_path / "shared.yaml", marker))
    assert marker.read_text() == "ran" and config["seeds"] == [0] and "__use_yte__" not in config


def test_check_refuses_a_yte_template_without_running_it(tmp_path, capsys):
    marker = tmp_path / "MARK"
    path = yte_template(tmp_path / "shared.yaml", marker)
    status, out = run_check(capsys, path)
    assert status == 1
    assert f"{path}: this config is a YTE template" in out and "run Python code" in out, out
    assert "plain-data configs only" in out, out
    assert not marker.exists()
    # the light check ./suite runs on every config file before Snakemake
    assert main(["check-yte", str(path), str(ROOT / "config/test.yaml")]) == 1
    assert not marker.exists()
    assert main(["check-yte", str(ROOT / "config/test.yaml"), str(ROOT / "config/config.yaml")]) == 0


@pytest.mark.parametrize("text", ["__use_yte__: false\nseeds: [0]\n", '{"__use_yte__": true, "seeds": [0]}\n',
                                  "base: &b {__use_yte__: true}\n<<: *b\nseeds: [0]\n"])
def test_any_top_level_yte_key_is_refused(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="YTE template"):
        check_config_file(path)


def test_check_yte_is_light(tmp_path):
    """./suite runs it before every workflow run: it must not import torch (seconds) or Snakemake."""
    path = yte_template(tmp_path / "shared.yaml", tmp_path / "MARK")
    code = ("import sys\nfrom dqss.workflow import main\nstatus = main(['check-yte', sys.argv[1]])\n"
            "print(' '.join(sys.modules))\nsys.exit(status)\n")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert "YTE template" in res.stderr and not (tmp_path / "MARK").exists()
    assert not {"torch", "snakemake", "yte", "jsonschema"} & set(res.stdout.split())
    res = subprocess.run([sys.executable, "-m", "dqss.workflow", "check-yte", str(ROOT / "config/test.yaml")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr


# -- item 4: what the checker refuses (the workflow, the same: tests/workflow/test_config_errors.py) ----
@pytest.mark.parametrize("case", list(BAD_CHECKS))
def test_check_refuses(case, tmp_path, capsys):
    edit, message = BAD_CHECKS[case]
    path = write_config(tmp_path / "bad.yaml", edited(edit))
    status, out = run_check(capsys, path)
    assert status == 1 and message in out, out
    assert out.startswith(f"{path}: ") and "Traceback" not in out, out


@pytest.mark.parametrize("case", range(len(BAD_CONFIGS)))
def test_bad_config_is_refused_before_any_job(case, tmp_path, monkeypatch):
    """Every bad config of BAD_CONFIGS fails ``check_config``, the check the workflow runs before building its DAG
    (workflow/rules/common.smk), with a message naming the key; nothing is written.  Relative paths are relative to
    the working directory, as under ``snakemake --directory``.  (Two of them also run through Snakemake:
    tests/workflow/test_workflow.py.)"""
    edit, message = BAD_CONFIGS[case]
    monkeypatch.chdir(tmp_path)
    config = workflow.load_config_data(write_config(tmp_path / "bad.yaml", edited(edit)))
    with pytest.raises(Exception) as err:
        workflow.check_config(config)
    assert message in str(err.value), str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_check_accepts_a_constant_temperature(tmp_path, capsys):
    cfg = edited(lambda c: c["cls_ptq"]["dqss"].update(tau_start=0.5, tau_end=0.5))
    assert run_check(capsys, write_config(tmp_path / "ok.yaml", cfg)) == (0, f"{tmp_path / 'ok.yaml'}: ok\n")


def test_config_args_are_typed_as_in_a_config_file():
    """Snakemake reads a --config value's YAML with every scalar a string (seeds=[0] gives ['0']); the workflow
    reads it as the config file would, at the keys --config sets and nowhere else."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    given = parse_config(["seeds=[0, 1]", "device=cpu", "cls_ptq={dqss: {tau_end: 0.5, iterations: 3, "
                          "candidates: [minmax, mse]}, quant: {first_last_bits: null}}"])
    assert given["seeds"] == ["0", "1"]
    config = copy.deepcopy(TEST_CONFIG)
    config["cls_ptq"]["dataset"] = "2024"  # not set by --config: left as the file has it
    update_config(config, copy.deepcopy(given))  # what Snakemake does with them
    workflow.apply_config_args(config, given)
    assert config["seeds"] == [0, 1] and config["device"] == "cpu"
    assert config["cls_ptq"]["dqss"] == {**TEST_CONFIG["cls_ptq"]["dqss"], "tau_end": 0.5, "iterations": 3,
                                         "candidates": ["minmax", "mse"]}
    assert config["cls_ptq"]["quant"] == {"first_last_bits": None}
    assert config["cls_ptq"]["dataset"] == "2024" and config["cls_ptq"]["bits"] == [{"w": 4, "a": 4}]


def test_the_api_refuses_a_rising_temperature_too():
    """The API builds the dqss section directly (search_assignment(config=...)): the same refusal as the config's."""
    from dqss.algorithms.qat_train import DQSSQATConfig
    from dqss.algorithms.search import SearchConfig

    for cls in (SearchConfig, DQSSQATConfig):
        with pytest.raises(ValueError, match=r"^tau_start=0.01 is below tau_end=5.0"):
            cls(tau_start=0.01, tau_end=5.0)
        assert cls(tau_start=0.5, tau_end=0.5).tau_end == 0.5
