"""dqss.core.placement: the integer-graph placement (residual adds, concatenations and pooling inputs quantized), its
simulation, its export and what ONNX Runtime makes of it."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dqss import deploy
from dqss.core import placement
from dqss.core.quant import FakeQuantizer
from dqss.core.strategy import get_strategy
from dqss.core.layers import QuantPolicy
from helpers import build, check_outputs, images

SPEC8 = QuantPolicy().act_spec(8)  # the run's activation grid, its sign resolved per tensor


class Block(nn.Module):
    """A timm-like basic block: conv-bn-relu-conv, + shortcut (a 1x1 conv where the width changes), relu module."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.down = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x if self.down is None else self.down(x)
        y = self.conv2(self.act1(self.bn1(self.conv1(x))))
        y += shortcut
        return self.act2(y)


class Net(nn.Module):
    """stem -> relu -> max-pool -> two blocks -> concat with a branch -> conv -> relu -> global pool -> linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.block1 = Block(8, 8)
        self.block2 = Block(8, 16)
        self.branch = nn.Conv2d(16, 8, 1)
        self.mix = nn.Conv2d(24, 24, 1)
        self.act_mix = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.pool(self.act(self.stem(x)))))
        x = self.act_mix(self.mix(torch.cat([x, self.branch(x)], 1)))
        return self.fc(self.gap(x).flatten(1))


def quantized(w=8, a=8, strategy="minmax"):
    from dqss.core.layers import fold_batchnorm
    from dqss.algorithms.ptq import quantize_uniform
    from dqss.core.stats import collect_act_stats

    torch.manual_seed(0)
    model = Net().eval()
    calib = images(32, 8, seed=2)
    folded = fold_batchnorm(model, calib[:2])
    plans = QuantPolicy().layer_plans(folded, w, a, calib[:2])
    stats = collect_act_stats(folded, {n: folded.get_submodule(n) for n in plans}, torch.split(calib, 16),
                              n_samples=16)
    return folded, quantize_uniform(folded, plans, stats, get_strategy(strategy)), calib


def test_points_of_a_residual_network():
    folded, q, calib = quantized()
    found = placement.find_points(q, calib[:2])
    pts = found.points
    # the stem's relu (max-pool input), the pool (first add's shortcut, read by block1.conv1 too), each add's
    # conv2 input and its output after the relu module, the downsample conv, the concat's branch, the pool's input
    # (the concat's output is read by a quantized layer only, which quantizes it)
    assert set(pts) == {"act", "pool", "block1.conv2", "block1.act2", "block2.conv2", "block2.down",
                        "block2.act2", "branch", "act_mix"}, set(pts)
    assert pts["pool"].readers == ["block1.conv1"]
    assert set(pts["block1.act2"].readers) == {"block2.conv1", "block2.down"}
    assert [o.split()[-1] for o in pts["block1.act2"].ops] == ["output"]
    assert [o.split()[-1] for o in pts["block2.down"].ops] == ["input"]
    assert found.unplaced == []
    assert found.tied == [["block2.down", "block2.conv1"]]  # one tensor read by two quantized layers, in call order


def test_integer_placement_simulates_what_onnx_runtime_runs(tmp_path):
    folded, q, calib = quantized()
    qi = copy.deepcopy(q)
    before = set(q.state_dict())
    rep = placement.place_integer(qi, folded, torch.split(calib, 16), SPEC8)
    assert rep.shared + rep.calibrated == len(rep.points) == 9 and rep.calibrated > 0
    # no module renamed: every key of the papers' model is still there, plus the points' quantizers
    assert before <= set(qi.state_dict())
    # the quantized tensors are on their grids: the concat's inputs, the pool's input
    seen = {}
    hooks = [qi.get_submodule(n).register_forward_hook(lambda _m, _a, out, n=n: seen.__setitem__(n, out))
             for n in ("branch", "block2.act2", "act")]
    x = images(8, 8, seed=5)
    with torch.no_grad():
        out_i, out_l = qi(x), q(x)
    for h in hooks:
        h.remove()
    for n, t in seen.items():
        g = deploy.tensor_grid(getattr(qi.get_submodule(n), placement.POINT))
        codes = t / g.scale + g.zero_point
        assert torch.allclose(codes, codes.round(), atol=1e-3), n
    assert not torch.equal(out_i, out_l)  # the placement changes the model: it is simulated, not only exported
    # a copy carries its placement (the hooks look their quantizer up on the copy)
    assert torch.equal(copy.deepcopy(qi)(x), out_i)
    # ONNX Runtime runs the adds and every conv as integers, and computes the simulated model
    info = deploy.export_onnx(qi, calib[:2], tmp_path / "q.onnx")
    k = deploy.integer_kernels(info.path)
    assert k["integer"] == {"QGemm": 1, "QLinearAdd": 2, "QLinearConcat": 1, "QLinearConv": 8}, k
    assert k["float"] == {}, k
    check_outputs(qi, info.path, x)
    kl = deploy.integer_kernels(deploy.export_onnx(q, calib[:2], tmp_path / "l.onnx").path)
    assert "QLinearAdd" not in kl["integer"] and sum(kl["float"].values()) > 0  # the papers' placement


def test_integer_placement_at_4_bits_is_emulated_and_agrees(tmp_path):
    folded, q, calib = quantized(4, 4)
    placement.place_integer(q, folded, torch.split(calib, 16), QuantPolicy().act_spec(4))
    info = deploy.export_onnx(q, calib[:2], tmp_path / "q.onnx")
    assert info.emulated
    check_outputs(q, info.path, images(8, 8, seed=5))


def test_functional_relu_after_the_add_is_followed():
    """torch.relu(x + y) in a forward: no module returns the sum; the reading layer's quantizer covers it.  The
    skip input torch.relu(stem(x)) is returned by no module either, and the add reads it: reported, left float."""
    _, q, calib = build("residual")
    found = placement.find_points(q, calib)
    assert set(found.points) == {"conv2"} and found.points["conv2"].ops == ["add 0 input"]
    assert found.unplaced == ["add 0 input"]  # the skip; the add's output (read by head only) is not listed
    assert "left in float: add 0 input" in found.summary()


def test_a_sum_no_module_returns_is_reported_unplaced():
    class TwoSums(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return (self.a(x) + self.b(x)) + self.c(x)  # the inner sum feeds the outer add directly

    from dqss.algorithms.ptq import quantize_uniform
    from dqss.core.stats import collect_act_stats

    model, x = TwoSums().eval(), images(8, 8)
    plans = QuantPolicy(first_last_bits=None).layer_plans(model, 8, 8, x)
    stats = collect_act_stats(model, {n: model.get_submodule(n) for n in plans}, [x])
    found = placement.find_points(quantize_uniform(model, plans, stats, get_strategy("minmax")), x)
    assert any("add 0 output" in u for u in found.unplaced), found.unplaced
    assert "left in float" in found.summary()


def test_placing_twice_and_without_batches_are_refused():
    folded, q, calib = quantized()
    with pytest.raises(ValueError, match="at least one calibration batch"):
        placement.place_integer(q, folded, [], SPEC8)
    placement.place_integer(q, folded, [calib], SPEC8)
    with pytest.raises(ValueError, match="already has an integer-graph placement"):
        placement.place_integer(q, folded, [calib], SPEC8)


def test_points_share_one_quantizer_with_their_reading_layers():
    folded, q, calib = quantized(strategy="easyquant")  # a per-layer range: readers' ranges differ before
    assert q.block2.conv1.act_quant is not q.block2.down.act_quant
    placement.place_integer(q, folded, [calib], SPEC8)
    assert q.block2.conv1.act_quant is q.block2.down.act_quant  # one tensor, one grid
    assert getattr(q.block1.act2, placement.POINT) is q.block2.down.act_quant  # the first reader's
    assert isinstance(getattr(q.block2.conv2, placement.POINT), FakeQuantizer)  # read by the add only: own range


def test_deploy_table_shows_the_placement_and_marks_low_agreement():
    import pandas as pd

    from dqss.tracks.deploy import COLUMNS
    from dqss.report.deploy import deploy_tables

    base = {c: 0 for c in COLUMNS} | {"task": "cls_ptq", "dataset": "digits", "backbone": "resnet18", "method": "dqss",
                                       "strategy": "per layer", "w_bits": 8, "a_bits": 8, "layout": "u8u8",
                                       "metric": "top1", "int8_kernel": "AVX2 VPMADDWD", "int16_saturation": False,
                                       "quantized_layers": 21, "size_ratio": 0.26, "latency_ratio_b64": 0.9}
    df = pd.DataFrame([base | {"placement": "layers", "agreement": 100.0, "integer_kernels": 9},
                       base | {"placement": "integer", "agreement": 99.0, "integer_kernels": 29}])
    md, tex = deploy_tables(df)["deploy_cls_ptq"]
    head, _, layers, integer = md.splitlines()[:4]
    assert "placement" in head and "| layers |" in layers and "| integer |" in integer
    assert "(!)" in integer and "(!)" not in layers
    assert "resnet18 dqss W8A8 integer u8u8" in md and "integer" in tex


def test_api_integer_graph_copies_and_checks_its_bits():
    import dqss

    torch.manual_seed(0)
    model, calib_x = Net().eval(), images(32, 8, seed=2)
    calib = dqss.calibrate(model, torch.split(calib_x, 16))
    q = dqss.quantize(model, calib, "minmax", w_bits=8, a_bits=8)
    keys = set(q.state_dict())
    qi = dqss.integer_graph(model, q, calib, torch.split(calib_x, 16), bits=6)
    assert set(q.state_dict()) == keys and not placement.points_of(q)  # the user's quantized model untouched
    own = [getattr(m, placement.POINT) for m in placement.points_of(qi).values()]
    assert {p.spec.bits for p in own if isinstance(p, FakeQuantizer) and p.spec.bits != 8} == {6}
    assert len(qi.integer_placement.points) == 9
    with pytest.raises(ValueError, match="from 2 to 8"):
        dqss.integer_graph(model, q, calib, [calib_x], bits=16)
