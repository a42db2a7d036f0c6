"""Config errors as the workflow meets them: the Snakefile refuses a YTE template (a --configfile one after Snakemake
has evaluated it, a default config/config.yaml before), and a dry run stops with the message of the config
checker (`python -m dqss.workflow check`, tested in-process in tests/unit/test_config_check.py)."""
from __future__ import annotations

from helpers import BAD_CHECKS, TEST_CONFIG, edited, run_check, snakemake_each, write_config, yte_template


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
    res = snakemake_each([["-n", "--cores", "1", *args] for args in runs], check=False)
    out = res[0].stdout + res[0].stderr
    assert res[0].returncode != 0 and f"{path}: this config is a YTE template" in out, out[-3000:]
    assert "already evaluated" in out and "python -m dqss.workflow check" in out, out[-3000:]
    assert (given / "MARK").exists()  # Snakemake evaluated it before the Snakefile could look
    out = res[1].stdout + res[1].stderr
    assert res[1].returncode != 0 and "config/config.yaml: this config is a YTE template" in out, out[-3000:]
    assert not (default / "MARK").exists()
    assert not (given / "results").exists() and not (default / "results").exists()


def test_checker_and_workflow_refuse_with_the_same_message(tmp_path, capsys):
    """A schema error and a library error: the dry run stops with the checker's message; and --config
    'seeds=[0]' (the README's way to edit the default) is accepted."""
    cases = ["unknown top-level key", "rising temperature"]
    messages = []
    for i, case in enumerate(cases):
        path = write_config(tmp_path / f"bad{i}.yaml", edited(BAD_CHECKS[case][0]))
        status, out = run_check(capsys, path)
        assert status == 1 and out.startswith(f"{path}: "), out
        messages.append(out.strip()[len(f"{path}: "):])
    ok = tmp_path / "ok"
    (ok / "config").mkdir(parents=True)
    write_config(ok / "config/config.yaml", TEST_CONFIG)
    runs = [["--directory", str(tmp_path / f"w{i}"), "--configfile", str(tmp_path / f"bad{i}.yaml")]
            for i in range(len(cases))] + [["--directory", str(ok), "--config", "seeds=[0, 1]"]]
    res = snakemake_each([["-n", "--cores", "1", *args] for args in runs], check=False)
    for case, message, r in zip(cases, messages, res):
        out = r.stdout + r.stderr
        assert r.returncode != 0 and message in out, f"{case}: the checker says {message!r}; Snakemake:\n{out[-3000:]}"
    out = res[-1].stdout + res[-1].stderr
    assert res[-1].returncode == 0, out[-3000:]
    assert "seed1" in out and "not of type" not in out, out[-3000:]
