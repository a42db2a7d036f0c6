"""The public API (dqss.api, dqss.deploy) on bad input: every mistake an outside user made is an error that says
what was wrong and what to do instead; and the public names the API promises exist."""
from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import dqss
from dqss import api
from dqss.core.layers import QuantPolicy
from dqss.core.stats import ActStats, load_stats, save_stats

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("single_thread")


def net(seed: int = 0) -> nn.Module:
    """Two convs (the first with a BN to fold) and a classifier, on 8x8 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()


def images(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return net()


@pytest.fixture(scope="module")
def calib(model):
    return dqss.calibrate(model, [images()], bins=64, samples=4)


@pytest.fixture(scope="module")
def assignment(model, calib):
    """A valid assignment of the model (the layers in the model's order)."""
    return {"format": "dqss-assignment/1", "w_bits": 4, "a_bits": 4,
            "layers": [{"name": n, "w_bits": 8 if n in ("0", "7") else 4, "a_bits": 8 if n in ("0", "7") else 4,
                        "weight": "minmax", "act": "mse"} for n in calib.quantized]}


TINY_SEARCH = {"iterations": 2, "batch_size": 8, "sweeps": 1, "top_k": 1}


# -- 1. a model on the meta device -------------------------------------------------------------------
def test_meta_model_names_the_fix():
    with torch.device("meta"):
        m = net()
    with pytest.raises(ValueError, match=r"meta device.*to_empty.*load_state_dict"):
        dqss.calibrate(m, [images()])


def test_meta_model_in_the_other_entry_points(model, calib):
    with torch.device("meta"):
        m = net()
    with pytest.raises(ValueError, match="meta device"):
        dqss.quantize(m, calib, "minmax")


# -- 2. options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, error, message", [
    ([1, 2], TypeError, r"options.*a dict of strategy 'mse''s keyword options.*\{'p': 2\.0\}"),
    ({"p": "x"}, TypeError, r"strategy 'mse' option p must be a number.*got 'x'"),
    ({"grid": 2.5}, TypeError, r"option grid must be an integer"),
    ({"nope": 1}, ValueError, r"unknown option.*'nope'.*valid options are \['p', 'grid'"),
])
def test_quantize_options_name_the_expected_form(model, calib, options, error, message):
    with pytest.raises(error, match=message):
        dqss.quantize(model, calib, "mse", options=options)


@pytest.mark.parametrize("options, message", [
    ([1, 2], r"options.*a dict of each strategy's options by name.*\{'mse': \{'p': 2\.0\}\}"),
    ({"p": 2.0}, r"options\['p'\].*per strategy.*\{'mse': \{'p': 2\.0\}\}"),
    ({"mse": {"p": "x"}}, r"strategy 'mse' option p must be a number"),
])
def test_search_options_are_per_strategy(model, calib, options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        dqss.search_assignment(model, calib, images(), candidates=("minmax", "mse"), options=options,
                               config=TINY_SEARCH)


# -- 3. the calibration argument -------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda m, a: dqss.quantize(m, None),
    lambda m, a: dqss.search_assignment(m, None, images()),
    lambda m, a: dqss.from_assignment(m, None, a),
    lambda m, a: dqss.integer_graph(m, m, None, [images()]),
])
def test_a_missing_calibration_names_dqss_calibrate(model, assignment, call):
    with pytest.raises(TypeError, match=r"a Calibration.*got NoneType.*dqss\.calibrate\(model, batches\)"):
        call(model, assignment)


# -- 4. assignments ----------------------------------------------------------------------------------
def _changed(record: dict, changes: dict) -> dict:
    """``record`` with ``changes`` set in place (a value None removes the key)."""
    for k, v in changes.items():
        if v is None:
            record.pop(k)
        else:
            record[k] = v
    return record


def _edit(assignment, layer=None, **changes):
    out = {**assignment, "layers": [dict(e) for e in assignment["layers"]]}
    _changed(out if layer is None else out["layers"][layer], changes)
    return out


@pytest.mark.parametrize("changes, message", [
    (dict(layer=1, w_bits="four"), r"layer 1 \('3'\): w_bits must be an integer bit width.*got 'four'"),
    (dict(w_bits="four"), r"w_bits must be an integer bit width.*got 'four'"),
    (dict(layer=0, act=None), r"layer 0 \('0'\) has no 'act'.*name, w_bits, a_bits, weight, act"),
    (dict(layer=0, weight=3), r"layer 0 \('0'\): weight must be a strategy name"),
    (dict(layers="x"), r"'layers' must be a list"),
])
def test_bad_assignment_fields_are_named(model, calib, assignment, tmp_path, changes, message):
    bad = _edit(assignment, **changes)
    with pytest.raises(ValueError, match=message):
        dqss.from_assignment(model, calib, bad)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(ValueError, match=message):
        dqss.from_assignment(model, calib, path)


def test_an_assignment_file_of_random_bytes(model, calib, tmp_path):
    path = tmp_path / "random.yaml"
    path.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(ValueError, match=r"random\.yaml is not a text file.*assignment\.yaml.*dqss\.save_assignment") \
            as info:
        dqss.from_assignment(model, calib, path)
    assert not isinstance(info.value, UnicodeDecodeError)
    with pytest.raises(FileNotFoundError, match="no assignment file"):
        dqss.from_assignment(model, calib, tmp_path / "missing.yaml")


def test_assignment_layers_in_another_order_are_matched_by_name(model, calib, assignment):
    reordered = {**assignment, "layers": assignment["layers"][::-1]}
    q = dqss.from_assignment(model, calib, reordered)
    ref = dqss.from_assignment(model, calib, assignment)
    x = images(4)
    assert torch.equal(dqss.outputs(q, [x]), dqss.outputs(ref, [x]))


def test_assignment_of_other_layers_names_them(model, calib, assignment):
    other = _edit(assignment, layer=1, name="body.conv")
    with pytest.raises(ValueError, match=r"missing \['3'\].*not in the model \['body\.conv'\]"):
        dqss.from_assignment(model, calib, other)
    twice = {**assignment, "layers": assignment["layers"] + assignment["layers"][:1]}
    with pytest.raises(ValueError, match=r"layer '0' more than once"):
        dqss.from_assignment(model, calib, twice)


def test_reconstructed_candidate_needs_strategies(model, calib, assignment):
    recon = _edit(assignment, layer=1, weight="adaround")
    with pytest.raises(ValueError, match=r"'adaround' is a reconstruction method.*strategies=\{'adaround': "):
        dqss.from_assignment(model, calib, recon)


# -- 5. search config and inputs ------------------------------------------------------------------------
def test_unknown_search_config_key_lists_the_valid_ones(model, calib):
    with pytest.raises(ValueError, match=r"config: unknown option\(s\) \['iters'\]; valid options are .*'iterations'"):
        dqss.search_assignment(model, calib, images(), config={"iters": 2})
    with pytest.raises(TypeError, match=r"config must be a dict of SearchConfig's fields or a SearchConfig"):
        dqss.search_assignment(model, calib, images(), config=[2])


def test_non_finite_search_inputs_are_refused_up_front(model, calib):
    x = images()
    x[5, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"search inputs hold non-finite values \(NaN or inf\).*item 5"):
        dqss.search_assignment(model, calib, x, candidates=("minmax", "mse"), config=TINY_SEARCH)


# -- 6. evaluation helpers --------------------------------------------------------------------------------
def test_top1_and_outputs_of_no_batches_raise(model):
    with pytest.raises(ValueError, match="no batches"):
        dqss.top1(model, [])
    with pytest.raises(ValueError, match="no batches"):
        dqss.outputs(model, [])
    with pytest.raises(ValueError, match="no batches"):
        dqss.correct(model, [])


def test_agreement_of_mismatched_outputs(model):
    a, b = torch.randn(4, 10), torch.randn(5, 10)
    with pytest.raises(ValueError, match=r"4 and 5 items.*same inputs"):
        dqss.agreement(a, b)
    with pytest.raises(ValueError, match=r"class scores.*\[N, classes\]"):
        dqss.agreement(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match=r"\(4, 10\) and \(4, 3\)"):
        dqss.agreement(a, torch.randn(4, 3))
    assert dqss.agreement(a, a) == 100.0


def test_correct_is_per_image_and_top1_uses_it(model):
    x, y = images(12), torch.arange(12) % 10
    got = dqss.correct(model, [(x[:5], y[:5]), (x[5:], y[5:])])
    assert got.dtype == torch.bool and got.shape == (12,)
    assert torch.equal(got, model(x).argmax(1) == y)
    assert dqss.top1(model, [(x, y)]) == pytest.approx(100.0 * got.float().mean().item())
    with pytest.raises(ValueError, match=r"batch 0 has 12 inputs and 3 labels"):
        dqss.correct(model, [(x, y[:3])])


def test_evaluation_restores_the_training_mode():
    m = net()
    m.train()
    m[1].eval()  # a frozen BN inside a training model stays frozen
    flags = [mod.training for mod in m.modules()]
    x, y = images(4), torch.zeros(4, dtype=torch.long)
    dqss.outputs(m, [x])
    assert [mod.training for mod in m.modules()] == flags
    dqss.top1(m, [(x, y)])
    assert [mod.training for mod in m.modules()] == flags
    dqss.correct(m, [(x, y)])
    assert [mod.training for mod in m.modules()] == flags


# -- 7. statistics files -------------------------------------------------------------------------------------
def test_save_and_load_round_trip_with_fingerprint(model, calib, tmp_path):
    calib.save(tmp_path / "stats.pt")
    again = dqss.from_stats(model, tmp_path / "stats.pt", calib.policy, images(2))
    assert again.fingerprint == calib.fingerprint and len(calib.fingerprint) == 64
    assert set(again.stats) == set(calib.stats)
    q1, q2 = dqss.quantize(model, calib, "mse"), dqss.quantize(model, again, "mse")
    assert torch.equal(dqss.outputs(q1, [images(4)]), dqss.outputs(q2, [images(4)]))


def test_statistics_of_a_changed_model_are_refused(model, calib, tmp_path):
    calib.save(tmp_path / "stats.pt")
    changed = net()
    changed[3] = nn.Conv2d(4, 4, 3, padding=1)  # a layer replaced, same names and shapes
    with pytest.raises(ValueError, match=r"computed on another model.*fingerprint.*dqss\.calibrate"):
        dqss.from_stats(changed, tmp_path / "stats.pt", calib.policy, images(2))


def test_statistics_without_fingerprint_load_with_a_warning(model, calib, tmp_path, caplog):
    torch.save({k: v.state() for k, v in calib.stats.items()}, tmp_path / "old.pt")  # the former layout
    with caplog.at_level(logging.WARNING, logger="dqss.api"):
        again = dqss.from_stats(model, tmp_path / "old.pt", calib.policy, images(2))
    assert "no model fingerprint" in caplog.text
    assert set(again.stats) == set(calib.stats)


def _state(calib, **changes):
    return _changed(calib.stats["3"].state(), changes)


@pytest.mark.parametrize("changes, message", [
    (dict(min=float("nan")), r"layer '3': min is nan"),
    (dict(hist_pos=None), r"layer '3': field 'hist_pos' is missing"),
    (dict(colour=1), r"layer '3': unknown field\(s\) \['colour'\]"),
    (dict(bins="many"), r"layer '3': bins must be an integer"),
])
def test_bad_statistics_files_name_the_layer_and_field(calib, tmp_path, changes, message):
    path = tmp_path / "bad.pt"
    torch.save({"3": _state(calib, **changes)}, path)
    with pytest.raises(ValueError, match=message + r".*dqss\.calibrate"):
        load_stats(path)


def test_non_finite_statistics_are_refused_on_save_and_in_from_stats(model, calib, tmp_path):
    bad = {k: ActStats.from_state(v.state()) for k, v in calib.stats.items()}
    bad["3"].max = float("inf")
    with pytest.raises(ValueError, match=r"layer '3': max is inf"):
        save_stats(bad, tmp_path / "s.pt")
    assert not (tmp_path / "s.pt").exists()
    with pytest.raises(ValueError, match=r"layer '3': max is inf"):
        dqss.from_stats(model, bad, calib.policy, images(2))


@pytest.mark.parametrize("content, message", [
    ([1, 2], r"holds a list, not the statistics of a model's layers"),
    ({"3": [1, 2]}, r"layer '3' holds a list, not a statistics record"),
])
def test_statistics_file_of_another_kind(tmp_path, content, message):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        load_stats(path)
    with pytest.raises(FileNotFoundError, match="no statistics file"):
        load_stats(tmp_path / "missing.pt")


# -- 8. ONNX export and run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def q8(model, calib):
    return dqss.quantize(model, calib, "minmax")


def test_export_onnx_bad_paths(q8, tmp_path):
    from dqss.deploy import export_onnx

    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"is a file, not a folder"):
        export_onnx(q8, images(1), tmp_path / "file" / "model.onnx")
    with pytest.raises(IsADirectoryError, match=r"is a folder.*model\.onnx"):
        export_onnx(q8, images(1), tmp_path)


def test_export_onnx_example_of_the_wrong_shape(q8, tmp_path):
    from dqss.deploy import export_onnx

    with pytest.raises(ValueError, match=r"cannot run the example input of shape \(1, 1, 8, 8\).*one input"):
        export_onnx(q8, torch.rand(1, 1, 8, 8), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_run_onnx_other_image_size_or_batch_size(q8, tmp_path):
    from dqss.deploy import export_onnx, ort_session, run_onnx

    export_onnx(q8, images(1), tmp_path / "m.onnx")
    session = ort_session(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"items of shape \(3, 16, 16\).*exported for \(3, 8, 8\).*dynamic_hw=True"):
        run_onnx(session, torch.rand(2, 3, 16, 16), 2)
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        run_onnx(session, images(2), 0)
    assert run_onnx(session, images(3), 2).shape == (3, 10)


# -- 9. public names ----------------------------------------------------------------------------------------
def test_strategies_lists_the_registry():
    from dqss.core.strategy import strategy_names

    assert dqss.strategies() == strategy_names()
    assert set(api.DEFAULT_CANDIDATES) <= set(dqss.strategies("ptq"))
    assert "lsq" in dqss.strategies("qat") and "lsq" not in dqss.strategies("ptq")
    with pytest.raises(ValueError, match="kind"):
        dqss.strategies("int8")


def test_save_assignment_round_trip(model, calib, assignment, tmp_path):
    from dqss.results import load_assignment

    path = tmp_path / "a" / "assignment.yaml"
    dqss.save_assignment(assignment, path)
    assert load_assignment(path) == assignment
    assert [p.name for p in path.parent.iterdir()] == ["assignment.yaml"]  # no temporary file left behind
    with pytest.raises(ValueError, match=r"layer 0 \('0'\) has no 'act'"):
        dqss.save_assignment(_edit(assignment, layer=0, act=None), tmp_path / "b.yaml")
    assert not (tmp_path / "b.yaml").exists()


def test_public_names_are_listed_and_reachable():
    import dqss as pkg

    for name in ("QuantPolicy", "deploy", "strategies", "save_assignment", "correct", "SelectionSummary",
                 "calibrate", "top1"):
        assert name in pkg.__all__ and name in dir(pkg), name
        assert getattr(pkg, name) is not None
    assert pkg.deploy.export_onnx is not None
    assert pkg.QuantPolicy is QuantPolicy
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018


def test_search_result_has_a_typed_selection(model, calib):
    found = dqss.search_assignment(model, calib, images(), candidates=("minmax", "mse"), config=TINY_SEARCH)
    sel = found.selection
    assert isinstance(sel, dqss.SelectionSummary)
    rec = found.outcome.record
    assert sel.rule == "measured" and sel.chosen == rec["chosen"]
    assert sel.held_best_uniform == rec["held_best_uniform"] in ("minmax", "mse")
    assert set(sel.held_losses) >= {"uniform minmax", "uniform mse", "argmax", "start"}
    assert sel.held_losses["uniform mse"] == rec["stages"]["uniform mse"]["held"]
    assert sel.changed_argmax == (found.outcome.selected != found.outcome.argmax)
    assert isinstance(sel.overturned, bool) and (sel.overturned_by is None) == (not sel.overturned)
    guard = rec.get("guard") or {}
    assert sel.held_too_small == guard.get("held_too_small", rec.get("held_too_small"))
    argmax = dqss.search_assignment(model, calib, images(), candidates=("minmax", "mse"),
                                    config={**TINY_SEARCH, "select": "argmax"})
    assert argmax.selection.rule == "argmax" and argmax.selection.chosen == "argmax"
    assert not argmax.selection.changed_argmax and not argmax.selection.overturned


def test_selection_summary_reads_the_guard_fields_when_present():
    record = {"rule": "measured", "chosen": "uniform mse", "start": "argmax", "held_best_uniform": "mse",
              "search_best_uniform": "minmax", "sweeps_run": 1,
              "stages": {"uniform mse": {"search": 1.0, "held": 0.5}, "sweep 1": {"search": 0.9, "held": 0.7}},
              "significant": True, "held_too_small": False}
    sel = api.SelectionSummary.of(record, changed_argmax=True)
    assert sel.significant is True and sel.held_too_small is False
    assert sel.overturned and sel.overturned_by == "uniform mse"  # the held-lowest stage replaced the last sweep
    del record["significant"], record["held_too_small"]
    sel = api.SelectionSummary.of(record, changed_argmax=True)
    assert sel.significant is None and sel.held_too_small is None and sel.overturned
    record["guard"] = {"overturned": False, "by": None, "held_too_small": True}  # the guard's own record
    sel = api.SelectionSummary.of(record, changed_argmax=False)
    assert not sel.overturned and sel.overturned_by is None and sel.held_too_small is True


# -- 10. the API's search defaults are the suite's --------------------------------------------------------
def test_api_search_defaults_are_the_embedded_configs(model, calib, monkeypatch):
    from dqss.algorithms import ptq_search
    from dqss.workflow import track_config

    suite = track_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), "cls_ptq")
    used = {}

    class Stop(Exception):
        pass

    def capture(*args, **kwargs):
        used.update(kwargs)
        raise Stop

    monkeypatch.setattr(ptq_search, "search_and_select", capture)
    with pytest.raises(Stop):
        dqss.search_assignment(model, calib, images())
    assert dataclasses.replace(used["cfg"], candidates=None) == dataclasses.replace(suite.dqss, candidates=None)
    assert list(api.DEFAULT_CANDIDATES) == suite.dqss.candidates
    assert used["hold_fraction"] == suite.calibration.hold_fraction
    assert used["batch_size"] == suite.calibration.batch_size
    params = inspect.signature(dqss.search_assignment).parameters
    assert params["objective"].default == "kl" and params["w_bits"].default == 4
    # a partial config keeps the suite's other defaults
    with pytest.raises(Stop):
        dqss.search_assignment(model, calib, images(), config={"iterations": 5})
    assert used["cfg"].iterations == 5 and used["cfg"].tau_end == suite.dqss.tau_end


def test_strategy_options_of_the_wrong_type_are_refused_by_the_strategy_itself():
    """The config's strategy_options reach the strategy without the API's checks: the type error names the option
    there too (it was "'<=' not supported between instances of 'str' and 'int'")."""
    from dqss.core.strategy import get_strategy

    with pytest.raises(ValueError, match=r"strategy 'mse': option p must be a number, got 'x'"):
        get_strategy("mse", {"p": "x"})
    assert get_strategy("mse", {"p": 2.0}).options.p == 2.0


def test_an_assignment_is_matched_to_the_plan_by_name():
    """The library's own reader (dqss.algorithms.ptq) takes layers in any order, and names what is missing or extra."""
    from dqss.algorithms.ptq import assignment_choice
    from dqss.core.strategy import get_strategy

    from types import SimpleNamespace

    four = SimpleNamespace(w_spec=SimpleNamespace(bits=4), a_spec=SimpleNamespace(bits=4))
    plans = {"a": four, "b": four}
    strategies = {"minmax": get_strategy("minmax")}
    entry = lambda n: {"name": n, "weight": "minmax", "act": "minmax", "w_bits": 4, "a_bits": 4}  # noqa: E731
    with pytest.raises(ValueError, match=r"missing from the assignment: \['b'\]; not in the model: \['c'\]"):
        assignment_choice({"layers": [entry("a"), entry("c")]}, plans, strategies)
    assert assignment_choice({"layers": [entry("b"), entry("a")]}, plans, strategies) == {
        "a": ("minmax", "minmax"), "b": ("minmax", "minmax")}
