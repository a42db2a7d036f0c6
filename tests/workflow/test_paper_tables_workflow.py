"""The paper's tables as the workflow builds them (rule paper_tables): planned after every paper job by a dry run
of config/paper.yaml, and built by `snakemake paper_tables` from a real run's metrics.csv, whose values they
must show (as rounded).  Their layout and formatting in-process: tests/unit/test_paper_tables.py."""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest

from dqss.report.paper import paper_outputs
from helpers import (ROOT, TEST_CONFIG, job_counts, md_cells, md_head, md_rows, paper_inputs, snakemake, sr_cells,
                     write_config)


def test_paper_dry_run_plans_the_tables(tmp_path):
    """`snakemake -n paper_tables --configfile config/paper.yaml` plans the rule after every paper job (stand-in
    inputs as in tests/workflow/test_workflow.py); it is not part of `all`."""
    paper_inputs(tmp_path)
    args = ["-n", "--cores", "1", "--directory", str(tmp_path), "--configfile", "config/paper.yaml"]
    res = snakemake("paper_tables", *args)  # the target first: --configfile takes every word after it
    counts = job_counts(res)
    assert counts["paper_tables"] == 1 and counts["aggregate"] == 1 and "report" not in counts
    assert counts["cls_dqss"] == 5 * 3 * 2  # the whole paper run first: the tables need results/metrics.csv
    for path in paper_outputs(["cls_ptq", "cls_qat", "sr_ptq"]):
        assert path in res.stdout
    assert "paper_tables" not in job_counts(snakemake(*args))  # `all` leaves it out


def _value(df, **keys) -> float:
    sel = df
    for k, v in keys.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, keys  # one seed in the tiny run
    return float(sel["value"].iloc[0])


@pytest.mark.slow
def test_paper_tables_of_a_real_run(tiny_run_copy, tmp_path):
    """`snakemake paper_tables` on the tiny run, with a layout naming its backbones and methods (no display
    names) and one method and one test set it lacks: only the rule runs, and every cell is the metrics.csv
    value, rounded."""
    work, args = tiny_run_copy
    cfg = copy.deepcopy(TEST_CONFIG)
    cfg["paper_tables"] = {
        "cls_ptq": {"backbones": ["test_resnet"], "methods": ["fp32", "minmax", "mse", "percentile", "dqss_argmax",
                                                              "dqss"]},
        "cls_qat": {"backbones": ["resnet20"], "methods": ["fp32", "lsq", "pact", "dqss_nofix", "dqss_retrain",
                                                           "dqss"]},
        "sr_ptq": {"backbones": ["edsr_tiny_x2"], "methods": ["bicubic", "fp32", "minmax", "mse", "dqss_argmax",
                                                              "dqss"], "test_sets": ["tiny", "grey", "Set5"]},
    }
    config = str(write_config(tmp_path / "paper_layout.yaml", cfg))
    assert job_counts(snakemake("paper_tables", *args, "-n", "--configfile", config)) == {"paper_tables": 1}
    snakemake("paper_tables", *args, "--configfile", config)
    df = pd.read_csv(work / "results/metrics.csv")
    out = work / "results/paper"
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(p).name for p in paper_outputs(cfg["paper_tables"]))

    def plain(cell):
        return cell.strip("*")

    for track, layout in cfg["paper_tables"].items():
        if track == "sr_ptq":
            continue
        md, tex = (out / f"{track}.md").read_text(), (out / f"{track}.tex").read_text()
        cells = md_cells(md)
        assert [r[0] for r in md_rows(md)] == layout["methods"] and md_head(md)[1:] == layout["backbones"]
        quantized = {}
        for m in layout["methods"]:
            got = plain(cells[(m, "resnet20" if track == "cls_qat" else "test_resnet")])
            if m == "percentile":
                assert got == "–"
                continue
            value = _value(df, task=track, method=m, metric="top1")
            assert got == f"{value:.2f}", (track, m)
            assert f"{value:.2f}" in tex
            if m != "fp32":
                quantized[m] = round(value, 2)
        best = max(quantized.values())
        assert {m for m in quantized if cells[(m, md_head(md)[1])].startswith("**")} == \
            {m for m, v in quantized.items() if v == best}
        assert ("Not in the results (shown as –): methods percentile." in md) == (track == "cls_ptq")
        assert f"\\label{{tab:{track}}}" in tex
        assert ("test\\_resnet" in tex) == (track == "cls_ptq") and "dqss\\_argmax" not in md

    md = (out / "sr_ptq.md").read_text()
    cells = sr_cells(md)
    for m in cfg["paper_tables"]["sr_ptq"]["methods"]:
        for ts in ("tiny", "grey"):
            for metric, dec in (("psnr", 2), ("ssim", 4)):
                value = _value(df, task="sr_ptq", method=m, dataset=ts, metric=metric)
                assert plain(cells[("edsr_tiny_x2", m, f"{ts} {metric.upper()}")]) == f"{value:.{dec}f}"
        assert cells[("edsr_tiny_x2", m, "Set5 PSNR")] == "–"
    assert "Not in the results (shown as –): test sets Set5." in md
    # the layout unchanged: nothing to do; the default layout (config/test.yaml): the rule reruns alone
    assert job_counts(snakemake("paper_tables", *args, "-n", "--configfile", config)) == {}
    assert job_counts(snakemake("paper_tables", *args, "-n", "--configfile", str(ROOT / "config/test.yaml"))) == \
        {"paper_tables": 1}
