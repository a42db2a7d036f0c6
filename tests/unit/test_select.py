"""The measured selection of the final DQSS assignment: pinned candidates, the calibration split, the
guard property, identical candidates, a planted layer the selection must find, and its options."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from dqss.core.layers import QuantPolicy, plan_layers
from dqss.core.mixed import mixed_layers, pin
from dqss.algorithms.ptq import (export_assignment, load_assignment, quantize_from_assignment, quantize_mixed,
                      quantize_per_layer, save_assignment)
from dqss.algorithms.ptq_search import split_calibration
from dqss.algorithms.select import Evaluator, item_losses, measured_selection, significant_decrease, uniform
from dqss.report.significance import bootstrap_interval, compare, mcnemar_exact, sign_flip_p
from dqss.sr.models import build_sr, parse_backbone
from dqss.tracks.sr_ptq import SRQuantPolicy
from dqss.core.stats import collect_act_stats
from dqss.core.strategy import get_strategy, strategy_names

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]


class ConvNet(nn.Module):
    """conv, depthwise conv and linear: the three layer kinds a pinned model must get right."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def _calibrated(net, plans, x, samples=4):
    layers = {n: net.get_submodule(n) for n in plans}
    return collect_act_stats(net, layers, torch.split(x, 16), bins=512, n_samples=samples)


def _random_assignment(plans, names, seed):
    g = torch.Generator().manual_seed(seed)
    pick = lambda: names[int(torch.randint(len(names), (1,), generator=g))]  # noqa: E731
    return {n: (pick(), pick()) for n in plans}


def _pinned_equals_rebuilt(net, plans, stats, x, seed):
    names = strategy_names("ptq")
    strategies = {s: get_strategy(s) for s in names}
    mixed = quantize_mixed(net, plans, stats, strategies)
    for k in range(3):
        choice = _random_assignment(plans, names, seed + k)
        rebuilt = quantize_per_layer(net, plans, stats, {n: (strategies[w], strategies[a])
                                                        for n, (w, a) in choice.items()})
        pin(mixed, choice)
        with torch.no_grad():
            assert torch.equal(mixed(x), rebuilt(x)), choice
    pin(mixed, None)
    assert all(m.weight_quant.pinned is None and m.act_quant.pinned is None for m in mixed_layers(mixed).values())


def test_pinned_model_equals_the_rebuilt_one_cls():
    torch.manual_seed(0)
    net = ConvNet().eval()
    x = torch.randn(32, 3, 8, 8)
    plans = plan_layers(net, QuantPolicy(first_last_bits=None), 4, 4, x[:1])
    assert {type(net.get_submodule(n)).__name__ for n in plans} == {"Conv2d", "Linear"}
    assert net.dw.groups == 8 and "dw" in plans
    _pinned_equals_rebuilt(net, plans, _calibrated(net, plans, x), x, 0)


def test_pinned_model_equals_the_rebuilt_one_sr():
    torch.manual_seed(0)
    net = build_sr(parse_backbone("edsr_tiny_x2")).eval()
    x = torch.rand(8, 3, 12, 12)
    plans = SRQuantPolicy().layer_plans(net, 4, 4, x[:1])
    _pinned_equals_rebuilt(net, plans, _calibrated(net, plans, x), x, 10)


def test_pin_refuses_a_partial_or_unknown_assignment():
    net = ConvNet().eval()
    x = torch.randn(8, 3, 8, 8)
    plans = plan_layers(net, QuantPolicy(first_last_bits=None), 4, 4, x[:1])
    mixed = quantize_mixed(net, plans, _calibrated(net, plans, x), {s: get_strategy(s) for s in ("minmax", "mse")})
    with pytest.raises(ValueError, match="exactly the model's mixed layers"):
        pin(mixed, {"conv": ("minmax", "minmax")})
    with pytest.raises(KeyError, match="not a candidate"):
        pin(mixed, {n: ("kl", "minmax") for n in plans})


# -- the calibration split and the assignment file ------------------------------------------------
def test_split_is_disjoint_seeded_and_sized():
    s, h = split_calibration(256, 0.25, seed=3)
    assert len(h) == 64 and len(s) == 192 and not set(s) & set(h) and sorted(s + h) == list(range(256))
    assert (s, h) == split_calibration(256, 0.25, seed=3)
    assert h != split_calibration(256, 0.25, seed=4)[1]
    with pytest.raises(ValueError, match="empty search or held part"):
        split_calibration(3, 0.1, seed=0)


def test_assignment_round_trips_with_the_split(tmp_path):
    torch.manual_seed(0)
    net = ConvNet().eval()
    x = torch.randn(16, 3, 8, 8)
    plans = plan_layers(net, QuantPolicy(first_last_bits=None), 4, 4, x[:1])
    stats = _calibrated(net, plans, x)
    strategies = {s: get_strategy(s) for s in ("minmax", "mse", "aciq")}
    mixed = quantize_mixed(net, plans, stats, strategies)
    choice = _random_assignment(plans, list(strategies), 5)
    ids = [f"img{i}" for i in range(16)]
    s_idx, h_idx = split_calibration(16, 0.25, 0)
    meta = {"task": "cls_ptq", "backbone": "convnet", "method": "dqss", "w_bits": 4, "a_bits": 4, "seed": 0,
            "calibration": {"search": [ids[i] for i in s_idx], "held": [ids[i] for i in h_idx]}}
    asg = export_assignment(mixed, plans, meta, choice)
    save_assignment(asg, tmp_path / "a.yaml")
    back = load_assignment(tmp_path / "a.yaml")
    assert back == asg
    assert back["calibration"]["held"] == [ids[i] for i in h_idx]
    assert {e["name"]: (e["weight"], e["act"]) for e in back["layers"]} == choice
    rebuilt = quantize_from_assignment(net, plans, stats, back, strategies)
    pin(mixed, choice)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), mixed(x))


# -- the selection -------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, widths):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def _select(net, x, strategies, *, proposal=None, hold=0.25, seed=0, bits=4, z=2.0):
    plans = plan_layers(net, QuantPolicy(first_last_bits=None), bits, bits, x[:1])
    s_idx, h_idx = split_calibration(len(x), hold, seed)
    stats = _calibrated(net, plans, x[s_idx])
    mixed = quantize_mixed(net, plans, stats, strategies)
    with torch.no_grad():
        ref = net(x)
    ev_s = Evaluator(mixed, x[s_idx], ref[s_idx], "kl", 128, "cpu")
    ev_h = Evaluator(mixed, x[h_idx], ref[h_idx], "kl", 128, "cpu")
    names = list(strategies)
    proposal = proposal or _random_assignment(plans, names, seed)
    sel = measured_selection(mixed, names, proposal, ev_s, ev_h, sweeps=2, accept_z=z)
    return sel, mixed, plans, ev_h


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_guard_never_above_the_best_uniform_on_held(seed):
    torch.manual_seed(seed)
    net = MLP([12, 24, 24, 10]).eval()
    x = torch.randn(160, 12) * torch.rand(1, 12) * 3
    names = ["minmax", "percentile", "mse", "aciq"]
    strategies = {s: get_strategy(s) for s in names}
    sel, mixed, plans, ev_h = _select(net, x, strategies, seed=seed, bits=3)
    stages, guard = sel.record["stages"], sel.record["guard"]
    best_uniform = min(stages[f"uniform {s}"]["held"] for s in names)
    if stages[sel.chosen]["held"] > best_uniform:  # kept only because no lower stage was significantly lower
        assert not guard["overturned"] and guard["held_too_small"] and sel.chosen == guard["chosen"]
        assert not any(t["significant"] for t in guard["tests"].values())
    else:
        assert not guard["held_too_small"] or not guard["overturned"]
    assert float(ev_h.losses(sel.assignment).mean()) == pytest.approx(stages[sel.chosen]["held"], rel=1e-12)
    assert sel.record["held_best_uniform"] in names
    for m in sel.record["moves"]:
        assert m["accepted"] == (m["accepted"] and m["delta_search"] < 0)
    assert sel.record["evaluations"] >= len(sel.record["moves"]) + len(names)


def _guard_case(n_held: int, held_gap: float, seed: int = 0):
    """One layer, two strategies; the descent ended on the mix (a, b).  On the held part uniform a is lower than
    the mix by ``held_gap`` on average, with per-item noise of sd 1e-2; the rest are far above."""
    g = torch.Generator().manual_seed(seed)
    stages = {"uniform a": {"l": ("a", "a")}, "uniform b": {"l": ("b", "b")}, "start": {"l": ("a", "a")},
              "sweep 1": {"l": ("a", "b")}}
    base = torch.ones(n_held, dtype=torch.float64)
    noise = torch.randn(n_held, generator=g, dtype=torch.float64)
    noise = (noise - noise.mean()) / noise.std() * 1e-2  # mean 0, sd 1e-2: t = -gap / (1e-2 / sqrt(n))
    per_stage = {"uniform a": base - held_gap + noise,
                 "uniform b": base + 1.0, "sweep 1": base}
    held_losses = {tuple(sorted(stages[k].items())): v for k, v in per_stage.items()}
    objective = {k: {"held": float(held_losses[tuple(sorted(a.items()))].mean())} for k, a in stages.items()}
    return stages, objective, held_losses


@pytest.mark.parametrize("n_held, gap, overturned", [(25, 2e-3, False), (25, 5e-2, True), (400, 2e-3, True)])
def test_guard_overturns_the_search_only_on_a_significant_held_difference(n_held, gap, overturned):
    """Item: the guard replaced the search's assignment by a uniform strategy on a 25-image held part whose
    difference was noise.  Now a lower held stage replaces the descent's result only when the paired test
    says so; a small gap on 25 items keeps the search's result and says the held part is too small."""
    from dqss.algorithms.select import held_guard

    stages, objective, held_losses = _guard_case(n_held, gap)
    guard = held_guard(stages, objective, list(stages), "sweep 1", held_losses, 2.0, n_held)
    assert objective["uniform a"]["held"] < objective["sweep 1"]["held"]  # the old guard always took uniform a
    assert guard["overturned"] is overturned
    assert guard["chosen"] == ("uniform a" if overturned else "sweep 1")
    assert guard["held_too_small"] is (not overturned)


def test_identical_candidates_give_the_uniform_with_no_move():
    torch.manual_seed(0)
    net = MLP([8, 16, 10]).eval()
    x = torch.randn(64, 8)
    strategies = {"first": get_strategy("minmax"), "second": get_strategy("minmax")}
    sel, *_ = _select(net, x, strategies)
    assert sel.record["moves_tried"] == 0 and sel.record["moves_accepted"] == 0
    assert sel.chosen == "uniform first" and sel.assignment == uniform(list(sel.assignment), "first")
    assert sel.record["differ_from_held_best_uniform"]["layers"] == 0


def _planted_net():
    """Three linear layers; only the second one's input has rare huge outliers (on a channel the second
    layer ignores), so clipping wins there while MinMax wins on the bounded inputs elsewhere.

    The first layer averages inputs 1..15 (positive rows summing to 1) rather than copying them: with a
    copy, the second layer's percentile clip repeated the first's, so the first layer's choice changed
    the loss only by rounding noise whose sign flipped with a few-% change of a histogram bin."""
    torch.manual_seed(0)
    net = MLP([16, 16, 16, 10]).eval()
    with torch.no_grad():
        l1, l2 = net.layers[0], net.layers[1]
        mix = torch.rand(15, 15, generator=torch.Generator().manual_seed(5))
        l1.weight.zero_()
        l1.weight[1:, 1:] = mix / mix.sum(1, keepdim=True)
        l1.bias.zero_()
        l1.weight[0, 0], l1.bias[0] = 3000.0, -0.99 * 3000.0  # channel 0: 0 except ~1 % of inputs, up to 30
        l2.weight[:, 0] = 0.0
    return net


def test_planted_layer_is_found_and_beats_every_uniform():
    net = _planted_net()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1024, 16, generator=g)
    strategies = {"minmax": get_strategy("minmax"), "percentile": get_strategy("percentile", {"percentile": 90.0})}
    proposal = {n: ("percentile", "percentile") for n in ("layers.0", "layers.1", "layers.2")}
    sel, *_ = _select(net, x, strategies, proposal=proposal)
    planted = {"layers.0": ("minmax", "minmax"), "layers.1": ("minmax", "percentile"),
               "layers.2": ("minmax", "minmax")}
    assert sel.assignment == planted, sel.record["moves"]
    stages = sel.record["stages"]
    assert stages[sel.chosen]["held"] < min(stages["uniform minmax"]["held"], stages["uniform percentile"]["held"])
    best = sel.record["held_best_uniform"]
    assert sel.record["differ_from_held_best_uniform"]["layers"] == sum(planted[n] != (best, best) for n in planted)


def test_acceptance_rejects_noise():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(200, generator=g, dtype=torch.float64)
    assert not significant_decrease(noise * 1e-3, 2.0)[0]  # zero-mean noise: no move
    assert significant_decrease(noise * 1e-3 - 1e-3, 2.0)[0]  # a consistent decrease: accepted
    assert not significant_decrease(noise * 1e-3 + 1e-3, 0.0)[0]  # an increase never is
    assert significant_decrease(torch.full((5,), -1e-6, dtype=torch.float64), 2.0)[0]


def test_mse_y_matches_basicsr_psnr_on_rounded_images():
    from basicsr.metrics.psnr_ssim import calculate_psnr

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 20, 20, generator=g)
    out = (ref + 0.05 * torch.randn(2, 3, 20, 20, generator=g)).clamp(0, 1)
    mse = item_losses("mse_y", out, ref, border=2)
    for i in range(2):
        to_bgr = lambda t: (t[i].permute(1, 2, 0).numpy()[..., ::-1] * 255.0).round()  # noqa: E731
        want = calculate_psnr(to_bgr(out), to_bgr(ref), crop_border=2, test_y_channel=True)
        assert 10 * math.log10(1.0 / float(mse[i])) == pytest.approx(want, abs=1e-6)


# -- significance ----------------------------------------------------------------------------------
def test_mcnemar_matches_scipy_binomial_test():
    from scipy.stats import binomtest

    for b, c in [(0, 0), (3, 0), (10, 2), (7, 7), (1, 20), (600, 590), (1100, 3)]:  # n > 1023 too
        want = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(want, rel=1e-9)


def test_sign_flip_matches_enumeration_by_hand():
    d = np.array([0.3, -0.1, 0.2, 0.4])
    means = [abs(np.mean(d * s)) for s in __import__("itertools").product([1, -1], repeat=4)]
    assert sign_flip_p(d) == pytest.approx(np.mean([m >= abs(d.mean()) - 1e-12 for m in means]))


def test_compare_pairs_images_and_pools_seeds():
    rng = np.random.default_rng(0)
    a = (rng.random((2, 593)) < 0.9).astype(float)
    one_more = a.copy()
    one_more[0, np.flatnonzero(a[0] == 0)[0]] = 1.0  # one image better in one seed: noise
    assert compare(one_more.tolist(), a.tolist(), "top1")["verdict"] == "ns"
    much = a.copy()
    much[:, np.flatnonzero(a[0] == 0)[:40]] = 1.0
    assert compare(much.tolist(), a.tolist(), "top1")["verdict"] == "better"
    assert compare(a.tolist(), much.tolist(), "top1")["verdict"] == "worse"
    kl = rng.random((2, 100))
    assert compare((kl - 0.1).tolist(), kl.tolist(), "kl_fp", lower_is_better=True)["verdict"] == "better"
    lo, hi = bootstrap_interval(rng.normal(0, 1, 500))
    assert lo < 0 < hi
    # three SR test images all slightly better: the exact sign-flip test cannot call that significant
    three = compare([[30.1, 31.2, 29.9]], [[30.0, 31.1, 29.8]], "psnr")
    assert three["test"] == "signflip" and three["verdict"] == "ns" and three["p"] == pytest.approx(0.25)
    twelve = compare([list(np.arange(12) + 0.5)], [list(np.arange(12.0))], "psnr")
    assert twelve["verdict"] == "better" and twelve["p"] == pytest.approx(2 / 4096)
    with pytest.raises(ValueError, match="paired"):
        compare(a[:1].tolist(), a.tolist(), "top1")


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("track, path, value, message", [
    ("cls_ptq", ("calibration", "hold_fraction"), 1.5, r"calibration.hold_fraction must be a number in \(0, 1\)"),
    ("cls_ptq", ("calibration", "hold_fraction"), 0, r"hold_fraction must be a number in \(0, 1\)"),
    ("sr_ptq", ("calibration", "hold_fraction"), -0.1,
     r"sr_ptq.calibration.hold_fraction must be a number in \(0, 1\)"),
    ("cls_ptq", ("dqss", "select"), "best", r"dqss.select: unknown 'best'; valid values are \['measured', 'argmax'\]"),
    ("sr_ptq", ("dqss", "objective"), "psnr", r"dqss.objective: unknown 'psnr'; valid values are"),
    ("cls_ptq", ("dqss", "sweeps"), 0, r"dqss.sweeps must be an integer in 1..20"),
    ("sr_ptq", ("dqss", "accept_z"), -1, r"dqss.accept_z must be a number in \[0, 10\]"),
])
def test_bad_selection_options_fail_at_parse_time(track, path, value, message):
    from dqss.workflow import track_config

    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    section = copy.deepcopy(config)
    section[track][path[0]][path[1]] = value
    with pytest.raises(ValueError, match=message):
        track_config(section, track)


def test_cls_objective_must_suit_the_track():
    from dqss.workflow import track_config

    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    config["cls_ptq"]["dqss"]["objective"] = "mse_y"
    with pytest.raises(ValueError, match="cls_ptq.dqss.objective"):
        track_config(config, "cls_ptq")
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    config["sr_ptq"]["dqss"]["objective"] = "kl"
    with pytest.raises(ValueError, match="sr_ptq.dqss.objective"):
        track_config(config, "sr_ptq")


# -- the block-input cache and the screen ----------------------------------------------------------
def _timm_mixed(name="resnet18"):
    import timm

    from dqss.core.layers import fold_batchnorm

    torch.manual_seed(0)
    net = fold_batchnorm(timm.create_model(name, pretrained=False, num_classes=10).eval(), torch.rand(1, 3, 16, 16))
    x = torch.rand(24, 3, 16, 16)
    plans = plan_layers(net, QuantPolicy(), 4, 4, x[:1])
    stats = _calibrated(net, plans, x)
    strategies = {s: get_strategy(s) for s in ("minmax", "percentile", "aciq")}
    with torch.no_grad():
        ref = net(x)
    return quantize_mixed(net, plans, stats, strategies), plans, stats, x, ref, list(strategies)


def test_block_cache_equals_the_full_forward():
    mixed, plans, _, x, ref, names = _timm_mixed()
    cached = Evaluator(mixed, x, ref, "kl", 8, "cpu", cache=True)
    full = Evaluator(mixed, x, ref, "kl", 8, "cpu", cache=False)
    assert cached.blocks is not None and full.blocks is None
    assert len({cached.block_index(n) for n in plans}) > 3
    current = _random_assignment(plans, names, 0)
    cached.set_current(current)
    for k, layer in enumerate(list(plans)[::3]):
        trial = dict(current)
        trial[layer] = (names[k % 3], names[(k + 1) % 3])
        torch.testing.assert_close(cached.losses(trial, changed=layer), full.losses(trial), rtol=1e-6, atol=1e-9)
        if k % 2:  # accept the move: the cache before its block stays, the rest is rebuilt
            current = trial
            cached.set_current(current, keep_upto=cached.block_index(layer))


def test_block_chain_splits_a_stage_into_its_blocks_bit_for_bit(monkeypatch):
    """timm's RegNet stage runs its blocks in turn, so the chain holds the blocks (a trial in s3.b4 reruns
    s3.b4 on, not s3); the residual blocks stay whole; every trial's losses equal the stage-level chain's, bit
    for bit."""
    import dqss.algorithms.select as select

    mixed, plans, _, x, ref, names = _timm_mixed("regnetx_002")
    fine = Evaluator(mixed, x, ref, "kl", 8, "cpu", cache=True)
    monkeypatch.setattr(select, "_split", lambda name, module, x: [(name, module)])
    coarse = Evaluator(mixed, x, ref, "kl", 8, "cpu", cache=True)
    monkeypatch.undo()
    blocks = [b for b, _ in fine.blocks]
    assert {"s3", "s4"} <= {b for b, _ in coarse.blocks} and "s3" not in blocks
    assert {"s3.b1", "s3.b4", "s4.b1"} <= set(blocks) and not any(b.startswith("s3.b1.") for b in blocks)
    current = _random_assignment(plans, names, 0)
    fine.set_current(current)
    coarse.set_current(current)
    for k, layer in enumerate(list(plans)[::2]):
        trial = dict(current)
        trial[layer] = (names[k % 3], names[(k + 1) % 3])
        assert torch.equal(fine.losses(trial, changed=layer), coarse.losses(trial, changed=layer))


def test_block_chain_refuses_a_residual_model():
    from dqss.algorithms.select import block_chain

    net = build_sr(parse_backbone("edsr_tiny_x2")).eval()
    assert block_chain(net, torch.rand(1, 3, 8, 8)) is None


def test_selection_is_the_same_with_and_without_the_cache():
    mixed, plans, stats, x, ref, names = _timm_mixed()
    samples = {n: torch.cat(stats[n].samples) for n in plans}
    results = []
    for cache in (True, False):
        ev_s = Evaluator(mixed, x[:16], ref[:16], "kl", 8, "cpu", cache=cache)
        ev_h = Evaluator(mixed, x[16:], ref[16:], "kl", 8, "cpu")
        sel = measured_selection(mixed, names, uniform(plans, "aciq"), ev_s, ev_h, sweeps=1, accept_z=0.5,
                                 top_k=1, samples=samples)
        results.append((sel.assignment, sel.record["moves_tried"], sel.record["moves_accepted"]))
        assert sel.record["top_k"] == 1 and sel.record["block_cache"] is cache
    assert results[0] == results[1]
    assert results[0][1] <= 2 * len(plans)  # top_k = 1: one trial per (layer, role) at most


def test_compare_guard_marks_the_after_runs_dqss(tmp_path, capsys):
    """The before/after table of the guard: McNemar marks from the per-image outcomes of both runs."""
    import json as _json

    from dqss.bench.compare_guard import main

    def job(run, method, correct, extra=None):
        d = run / f"results/cls_ptq/digits/net/{method}/w4a4/seed0"
        d.mkdir(parents=True)
        top1 = 100.0 * sum(correct) / len(correct)
        d.joinpath("metrics.json").write_text(_json.dumps({
            "dataset": "digits", "backbone": "net", "seed": 0, "metrics": {"top1": top1},
            "per_image": {"top1": correct}, "extra": extra or {}}))

    n = 100
    for run, dqss_right in (("before", 60), ("after", 90)):
        job(tmp_path / run, "dqss", [1] * dqss_right + [0] * (n - dqss_right),
            {"selection_chosen": "uniform mse" if run == "before" else "sweep 1", "selection_held_best_uniform": "mse",
             "selection_guard": "too_small"})
    job(tmp_path / "after", "dqss_argmax", [1] * 89 + [0] * 11)
    job(tmp_path / "after", "mse", [1] * 60 + [0] * 40)
    main([str(tmp_path / "before"), str(tmp_path / "after")])
    row = capsys.readouterr().out.splitlines()[2].split(" | ")
    assert row[2:5] == ["60.00", "uniform mse", "90.00"] and row[6] == "too_small"
    assert row[9].startswith("+ ") and row[10].startswith("= ") and row[11].startswith("+ ")
    assert row[12].startswith("- ") and row[13].startswith("= ")  # before: below the argmax, level with the uniform
