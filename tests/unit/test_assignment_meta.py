"""dqss.results.assignment_meta: the one builder of an assignment file's metadata (the API's export, the PTQ
jobs' files and the QAT job's), and job_assignment, which records the job in an assignment the API made."""
from __future__ import annotations

from types import SimpleNamespace

from dqss.results import ASSIGNMENT_FORMAT, assignment_meta, job_assignment

OUTCOME = SimpleNamespace(record={"held_best_uniform": "percentile"}, split={"search": ["a"], "held": ["b"]})
COMMON = dict(w_bits=4, a_bits=4, seed=0, candidates=["minmax", "percentile", "adaround"],
              strategy_options={"percentile": {"percentile": 99.99}, "mse": {"p": 2.0}})


def test_the_api_meta_in_file_order():
    meta = assignment_meta(**COMMON, select="measured", outcome=OUTCOME)
    assert list(meta) == ["w_bits", "a_bits", "seed", "candidates", "strategy_options", "select",
                          "reference_uniform", "calibration"]
    # every candidate has options ({} for none), and only candidates
    assert meta["strategy_options"] == {"minmax": {}, "percentile": {"percentile": 99.99}, "adaround": {}}
    assert (meta["reference_uniform"], meta["calibration"]) == ("percentile", OUTCOME.split)


def test_a_ptq_job_file_is_the_api_export_with_the_job_first():
    job = {"task": "cls_ptq", "dataset": "digits", "backbone": "resnet18", "method": "dqss_argmax"}
    layers = [{"name": "conv1", "w_bits": 8, "a_bits": 8, "weight": "minmax", "act": "minmax"}]
    exported = {"format": ASSIGNMENT_FORMAT, **assignment_meta(**COMMON, select="argmax", outcome=OUTCOME),
                "layers": layers}
    written = job_assignment(exported, job)
    expected = {"format": ASSIGNMENT_FORMAT, **assignment_meta(**COMMON, select="argmax", outcome=OUTCOME, job=job),
                "layers": layers}
    assert list(written.items()) == list(expected.items())  # key order too: the files are YAML in dict order
    assert list(written)[:6] == ["format", "task", "dataset", "backbone", "method", "w_bits"]
    assert "format" not in job_assignment({"w_bits": 4}, {"task": "t"}) and exported["format"] == ASSIGNMENT_FORMAT


def test_the_qat_meta_keeps_its_run_after_the_seed_and_has_no_search_outcome():
    meta = assignment_meta(**COMMON, select="measured", job={"task": "cls_qat", "dataset": "digits", "backbone": "r"},
                           run={"method": "dqss", "frozen_at_step": 9})
    assert list(meta) == ["task", "dataset", "backbone", "w_bits", "a_bits", "seed", "method", "frozen_at_step",
                          "candidates", "strategy_options", "select"]
