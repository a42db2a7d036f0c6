"""The config check: `python -m dqss.workflow check FILE` runs exactly the checks of the workflow (the JSON schema,
then the library's), refuses a YTE template without evaluating it, and the Snakefile refuses one too; a
`--config` value means what it would mean in a config file."""
from __future__ import annotations

import copy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from dqss import workflow
from dqss.workflow import check_config_file, main

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = yaml.safe_load((ROOT / "config/test.yaml").read_text())
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def write(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def edited(edit) -> dict:
    cfg = copy.deepcopy(TEST_CONFIG)
    edit(cfg)
    return cfg


def check(capsys, path: Path) -> tuple[int, str]:
    """``python -m dqss.workflow check PATH``: its exit status and what it printed."""
    status = main(["check", str(path)])
    out = capsys.readouterr()
    return status, out.out + out.err


def yte_template(path: Path, marker: Path) -> Path:
    """config/test.yaml as a YTE template whose seeds expression writes ``marker`` (and gives [0])."""
    body = {k: v for k, v in TEST_CONFIG.items() if k != "seeds"}
    path.write_text("__use_yte__: true\n"
                    f"seeds: ?[__import__('pathlib').Path({str(marker)!r}).write_text('ran') * 0]\n"
                    + yaml.safe_dump(body, sort_keys=False))
    return path


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
    status, out = check(capsys, path)
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


@pytest.mark.workflow
def test_snakefile_refuses_yte_configs(tmp_path):
    """A --configfile template has run when Snakemake loaded it, but the plan stops, naming the file; a default
    config/config.yaml that is a template is refused before the configfile directive evaluates it."""
    given = tmp_path / "given"
    (given / "config").mkdir(parents=True)
    path = yte_template(given / "shared.yaml", given / "MARK")
    default = tmp_path / "default"
    (default / "config").mkdir(parents=True)
    yte_template(default / "config/config.yaml", default / "MARK")
    runs = [["--directory", str(given), "--configfile", str(path)], ["--directory", str(default)]]
    with ThreadPoolExecutor(2) as pool:
        res = list(pool.map(lambda args: subprocess.run([*SNAKEMAKE, "-n", "--cores", "1", *args], cwd=ROOT,
                                                        capture_output=True, text=True), runs))
    out = res[0].stdout + res[0].stderr
    assert res[0].returncode != 0 and f"{path}: this config is a YTE template" in out, out[-3000:]
    assert "already evaluated" in out and "python -m dqss.workflow check" in out, out[-3000:]
    assert (given / "MARK").exists()  # Snakemake evaluated it before the Snakefile could look
    out = res[1].stdout + res[1].stderr
    assert res[1].returncode != 0 and "config/config.yaml: this config is a YTE template" in out, out[-3000:]
    assert not (default / "MARK").exists()
    assert not (given / "results").exists() and not (default / "results").exists()


# -- item 4: the checker and the workflow agree ----------------------------------------------------------
BAD = {
    "unknown top-level key": (lambda c: c.update(epochs=3), "Additional properties are not allowed ('epochs'"),
    "dataset escapes results/": (lambda c: c["cls_ptq"].update(dataset="../../escape"),
                                 "cls_ptq.dataset: '../../escape' does not match"),
    "track not a mapping": (lambda c: c.update(cls_ptq=5), "cls_ptq: 5 is not of type 'object'"),
    "duplicate reconstruction method": (
        lambda c: c["cls_ptq"]["reconstruction"].update(methods=["adaround", "brecq", "adaround"]),
        "cls_ptq.reconstruction.methods: ['adaround'] listed more than once"),
    "empty candidates": (lambda c: c["sr_ptq"]["dqss"].update(candidates=[]),
                         "sr_ptq.dqss.candidates: [] lists no strategy; omit the key (or write null)"),
    "rising temperature": (lambda c: c["cls_ptq"]["dqss"].update(tau_start=0.01, tau_end=5.0),
                           "cls_ptq.dqss.tau_start=0.01 is below tau_end=5.0"),
    "rising temperature (QAT)": (lambda c: c["cls_qat"]["dqss"].update(tau_end=2.0),
                                 "cls_qat.dqss.tau_start=1.0 is below tau_end=2.0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_check_refuses(case, tmp_path, capsys):
    edit, message = BAD[case]
    path = write(tmp_path / "bad.yaml", edited(edit))
    status, out = check(capsys, path)
    assert status == 1 and message in out, out
    assert out.startswith(f"{path}: ") and "Traceback" not in out, out


def test_check_accepts_a_constant_temperature(tmp_path, capsys):
    cfg = edited(lambda c: c["cls_ptq"]["dqss"].update(tau_start=0.5, tau_end=0.5))
    assert check(capsys, write(tmp_path / "ok.yaml", cfg)) == (0, f"{tmp_path / 'ok.yaml'}: ok\n")


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


@pytest.mark.workflow
def test_checker_and_workflow_refuse_with_the_same_message(tmp_path, capsys):
    """A schema error and a library error: the dry run stops with the checker's message; and --config
    'seeds=[0]' (the README's way to edit the default) is accepted."""
    cases = ["unknown top-level key", "rising temperature"]
    messages = []
    for i, case in enumerate(cases):
        path = write(tmp_path / f"bad{i}.yaml", edited(BAD[case][0]))
        status, out = check(capsys, path)
        assert status == 1 and out.startswith(f"{path}: "), out
        messages.append(out.strip()[len(f"{path}: "):])
    ok = tmp_path / "ok"
    (ok / "config").mkdir(parents=True)
    write(ok / "config/config.yaml", TEST_CONFIG)
    runs = [["--directory", str(tmp_path / f"w{i}"), "--configfile", str(tmp_path / f"bad{i}.yaml")]
            for i in range(len(cases))] + [["--directory", str(ok), "--config", "seeds=[0, 1]"]]

    def dry_run(args):
        return subprocess.run([*SNAKEMAKE, "-n", "--cores", "1", *args], cwd=ROOT, capture_output=True, text=True)

    with ThreadPoolExecutor(2) as pool:
        res = list(pool.map(dry_run, runs))
    for case, message, r in zip(cases, messages, res):
        out = r.stdout + r.stderr
        assert r.returncode != 0 and message in out, f"{case}: the checker says {message!r}; Snakemake:\n{out[-3000:]}"
    out = res[-1].stdout + res[-1].stderr
    assert res[-1].returncode == 0, out[-3000:]
    assert "seed1" in out and "not of type" not in out, out[-3000:]


def test_the_api_refuses_a_rising_temperature_too():
    """The API builds the dqss section directly (search_assignment(config=...)): the same refusal as the config's."""
    from dqss.algorithms.qat_train import DQSSQATConfig
    from dqss.algorithms.search import SearchConfig

    for cls in (SearchConfig, DQSSQATConfig):
        with pytest.raises(ValueError, match=r"^tau_start=0.01 is below tau_end=5.0"):
            cls(tau_start=0.01, tau_end=5.0)
        assert cls(tau_start=0.5, tau_end=0.5).tau_end == 0.5
