"""dqss.deploy: fake-quantized models exported to ONNX QDQ and run by ONNX Runtime (CPU).

The models are built through the suite's own path (BN folding, the policy's plans, calibration
statistics, a range strategy).  Agreement between ONNX Runtime and the fake-quantized model is
checked in two steps:

* the QDQ graph's activation codes (every QuantizeLinear, ORT unoptimised) equal the suite's codes
  except where a value lies on a rounding tie up to float error (the float convolutions sum in
  another order): there they may differ by one code, and only in a small fraction of the elements;
* the output of the optimised session (integer kernels) differs from the fake-quantized output by
  at most what one code of difference in every input of the last layer can make,
  ``s_in * max_c sum|W_q[c]|`` (+ float rounding): that bound fails for a wrong scale, zero point,
  a grid narrower than its container without its clip, or two codes of difference.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from torch import nn

from dqss import deploy
from dqss.layers import QuantLayer, QuantPolicy, fold_batchnorm
from dqss.ptq import quantize_mixed, quantize_uniform
from dqss.stats import collect_act_stats
from dqss.strategy import get_strategy


# -- models -------------------------------------------------------------------------------------
def conv_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))


def depthwise_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 1))


def linear_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 10))


class ResidualNet(nn.Module):
    """stem conv -> relu -> [conv -> relu -> conv] + skip -> relu -> conv -> pool -> logits."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 10, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.head(torch.relu(x + y)).mean((2, 3))


MODELS = {"conv": conv_net, "depthwise": depthwise_net, "linear": linear_net, "residual": ResidualNet}


def images(n, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def build(kind="conv", w=8, a=8, strategy="minmax", policy=None, seed=0):
    torch.manual_seed(seed)
    model = MODELS[kind]().eval()
    for m in model.modules():  # non-trivial BN statistics, so folding changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    size = 4 if kind == "linear" else 8
    calib = images(32, size, seed=2)
    example = calib[:2]
    folded = fold_batchnorm(model, example)
    plans = (policy or QuantPolicy()).layer_plans(folded, w, a, example)
    stats = collect_act_stats(folded, {n: folded.get_submodule(n) for n in plans}, torch.split(calib, 16),
                              n_samples=16)
    return folded, quantize_uniform(folded, plans, stats, get_strategy(strategy)), example


def last_layer_bound(qmodel) -> float:
    """What one code of difference in every input of the last quantized layer can change its output by."""
    last = list(deploy.quant_layers(qmodel).values())[-1]
    g = deploy.tensor_grid(last.act_quant)
    wq = last.weight_quant(last.layer.weight).detach()  # a row: every input one output channel sums over
    return float(g.scale) * float(wq.abs().flatten(1).sum(1).max())


def check_codes(qmodel, path, x, max_fraction=1e-3):
    ours, theirs = deploy.torch_act_codes(qmodel, x), deploy.onnx_act_codes(path, x)
    assert set(ours) == set(theirs) and ours
    for name in ours:
        d = (ours[name] - theirs[name]).abs()
        assert d.max() <= 1, f"{name}: codes differ by {float(d.max())}"
        assert (d > 0).float().mean() <= max_fraction, f"{name}: {int((d > 0).sum())} codes differ"


def check_outputs(qmodel, path, x):
    session = deploy.ort_session(path)
    ref = deploy.torch_outputs(qmodel, x, 16)
    out = deploy.run_onnx(session, x, 5)  # batches of another size than the example: dynamic batch
    assert out.shape == ref.shape
    tol = last_layer_bound(qmodel) + 1e-4 * float(ref.abs().max())
    assert float((out - ref).abs().max()) <= tol
    return ref, out


# -- (a)-(d): ORT agrees with the fake-quantized model --------------------------------------------
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("bits", [(8, 8), (4, 4)])
def test_onnx_runtime_matches_fake_quant(tmp_path, kind, bits):
    policy = QuantPolicy(first_last_bits=None)  # every layer at the width under test
    _, qmodel, example = build(kind, *bits, policy=policy)
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    assert info.emulated_bits == (bits != (8, 8))
    if bits == (4, 4):
        assert info.emulated == list(deploy.quant_layers(qmodel))
    # twice the calibration's spread: the inputs exceed the calibrated ranges, so the grids' clipping
    # (the Clip of a grid narrower than its container) is exercised
    x = 2 * images(20, 4 if kind == "linear" else 8, seed=3)
    first = deploy.torch_act_codes(qmodel, x)[next(iter(deploy.quant_layers(qmodel)))]
    assert (first == first.max()).sum() > 10 and first.max() == 2 ** (bits[1] - 1) - 1
    # the export module computes exactly what the suite computes
    exported, _ = deploy.export_model(qmodel)
    with torch.no_grad():
        assert torch.equal(exported(x), qmodel(x))
    check_codes(qmodel, info.path, x)
    check_outputs(qmodel, info.path, x)


@pytest.mark.parametrize("strategy", ["mse", "percentile"])
def test_other_range_strategies(tmp_path, strategy):
    _, qmodel, example = build("residual", 8, 8, strategy)
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    x = images(20, seed=3)
    check_codes(qmodel, info.path, x)
    check_outputs(qmodel, info.path, x)


def test_asymmetric_activation_grid_uses_its_zero_point(tmp_path):
    _, qmodel, example = build("linear", 8, 8, policy=QuantPolicy(act_symmetric=False))
    first = next(iter(deploy.quant_layers(qmodel).values()))
    assert float(first.act_quant.zero_point) != 0  # the input image is signed: the zero point moves
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    consts = deploy.onnx_constants(onnx.load(info.path))
    for name, m in deploy.quant_layers(qmodel).items():
        z = consts[f"{name}.a_zero"]
        assert z.dtype == np.uint8 and int(z) == int(m.act_quant.zero_point)
    check_outputs(qmodel, info.path, images(20, 4, seed=3))


# -- (e): the graph holds the suite's grids --------------------------------------------------------
@pytest.mark.parametrize("bits", [(8, 8), (4, 4)])
def test_graph_holds_the_suites_scales_and_int8_codes(tmp_path, bits):
    _, qmodel, example = build("residual", *bits)
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    proto = onnx.load(info.path)
    consts = deploy.onnx_constants(proto)
    dq_inputs = [n.input for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    for name, m in deploy.quant_layers(qmodel).items():
        wq, aq = m.weight_quant, m.act_quant
        assert np.array_equal(consts[f"{name}.a_scale"], aq.scale.numpy())  # float32-equal
        assert consts[f"{name}.a_scale"].dtype == np.float32
        assert int(consts[f"{name}.a_zero"]) == int(aq.zero_point)
        assert consts[f"{name}.a_zero"].dtype == (np.uint8 if aq.spec.qmin >= 0 else np.int8)
        assert np.array_equal(consts[f"{name}.w_scale"], wq.scale.numpy())
        codes = consts[f"{name}.w_codes"]
        assert codes.dtype == np.int8 and codes.shape == tuple(m.layer.weight.shape)
        assert wq.spec.qmin <= codes.min() and codes.max() <= wq.spec.qmax
        assert (codes.min(), codes.max()) != (0, 0)
        # the codes times the scales are the suite's quantized weight, bit for bit
        values = torch.from_numpy(codes.copy()).float() * wq.scale.reshape(-1, 1, 1, 1)
        assert torch.equal(values, wq(m.layer.weight))
        assert [f"{name}.w_codes", f"{name}.w_scale", f"{name}.w_zero"] in [list(i) for i in dq_inputs]
    # one byte a weight: the weights are the 8-bit initializers; float ones are only biases and scales
    layers = deploy.quant_layers(qmodel).values()
    sizes = {np.dtype(np.int8): 0, np.dtype(np.float32): 0}
    for init in proto.graph.initializer:
        a = onnx.numpy_helper.to_array(init)
        sizes[a.dtype] = sizes.get(a.dtype, 0) + a.size
    assert sizes[np.dtype(np.int8)] >= sum(m.layer.weight.numel() for m in layers)
    assert sizes[np.dtype(np.float32)] <= sum(m.layer.bias.numel() + m.layer.weight.shape[0] + 3 for m in layers)


def test_export_is_deterministic_and_batch_is_dynamic(tmp_path):
    _, qmodel, example = build("conv")
    a = deploy.export_onnx(qmodel, example, tmp_path / "a.onnx")
    b = deploy.export_onnx(qmodel, example, tmp_path / "b.onnx")
    assert a.path.read_bytes() == b.path.read_bytes()
    dim = onnx.load(a.path).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_integer_kernels_of_the_residual_block(tmp_path):
    _, qmodel, example = build("residual")
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    k = deploy.integer_kernels(info.path)
    # only conv1 feeds nothing but a QuantizeLinear (after its ReLU): one QLinearConv.  The stem's output
    # also feeds the float skip Add, conv2 feeds that Add and the head gives the output: float
    # convolutions on dequantized inputs
    assert k["integer"] == {"QLinearConv": 1}, k
    assert sum(k["float"].values()) == 3, k
    for layer in ("stem", "conv2", "head"):
        assert any(layer in n for n in k["float_nodes"]), (layer, k["float_nodes"])
    fp = deploy.export_onnx(build("residual")[0], example, tmp_path / "fp.onnx")
    kf = deploy.integer_kernels(fp.path)
    assert kf["integer"] == {} and kf["quantize"] == 0 and sum(kf["float"].values()) == 4


def test_compare_and_latency(tmp_path):
    folded, qmodel, example = build("residual")
    q = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    f = deploy.export_onnx(folded, example, tmp_path / "fp.onnx")
    sq, sf = deploy.ort_session(q.path), deploy.ort_session(f.path)
    x = images(40, seed=4)
    cq, cf = deploy.compare(qmodel, sq, x, 16), deploy.compare(folded, sf, x, 16)
    assert cq["n"] == 40 and cq["top1_agreement"] >= 0.95 and cq["max_abs_diff"] <= last_layer_bound(qmodel) + 1e-4
    assert cf["top1_agreement"] == 1.0 and cf["max_abs_diff"] < 1e-4
    times = deploy.compare_latency({"int8": sq, "fp": sf}, x[:1], runs=20, warmup=2)
    assert set(times) == {"int8", "fp"} and all(0 < t < 1 for t in times.values())
    assert 0 < deploy.latency(sq, x[:4], runs=20) < 1
    sizes = deploy.file_sizes(q.path, f.path)
    assert sizes["int8_bytes"] == q.bytes and sizes["ratio"] < 1


# -- (f): QAT and reconstruction quantizers ---------------------------------------------------------
def test_lsq_layer_exports_its_learned_steps(tmp_path):
    _, qmodel, example = build("conv", 4, 4, "lsq", policy=QuantPolicy(first_last_bits=None))
    for m in deploy.quant_layers(qmodel).values():  # as if trained: steps moved off their init
        m.weight_quant.step.data.mul_(1.1)
        m.act_quant.step.data.mul_(0.9)
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    consts = deploy.onnx_constants(onnx.load(info.path))
    for name, m in deploy.quant_layers(qmodel).items():
        assert np.array_equal(consts[f"{name}.w_scale"], m.weight_quant.step.detach().numpy())
        assert np.array_equal(consts[f"{name}.a_scale"], m.act_quant.step.detach().numpy())
    x = images(20, seed=3)
    check_codes(qmodel, info.path, x)
    check_outputs(qmodel, info.path, x)


def test_lsq_plus_offset_exports_only_on_a_whole_number_of_steps(tmp_path):
    _, qmodel, example = build("conv", 8, 8, "lsq_plus")
    with pytest.raises(ValueError, match="whole number of steps"):
        deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    for m in deploy.quant_layers(qmodel).values():
        m.act_quant.offset.data = -3 * m.act_quant.step.data  # zero point 3
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    consts = deploy.onnx_constants(onnx.load(info.path))
    assert all(int(consts[f"{n}.a_zero"]) == 3 for n in deploy.quant_layers(qmodel))
    check_outputs(qmodel, info.path, images(20, seed=3))


@pytest.mark.parametrize("strategy", ["pact", "dorefa"])
def test_pact_and_dorefa_grids(tmp_path, strategy):
    _, qmodel, example = build("conv", 4, 4, strategy, policy=QuantPolicy(first_last_bits=None))
    first = next(iter(deploy.quant_layers(qmodel).values()))
    g = deploy.tensor_grid(first.act_quant)
    assert (g.qmin, g.qmax) == (-7, 7)  # the signed image input: levels -Q_P..Q_P
    gw = deploy.tensor_grid(first.weight_quant, first.layer.weight)
    assert (gw.qmin, gw.qmax) == (-15, 15)  # DoReFa weights: odd codes -(2^b-1)..2^b-1
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    x = images(20, seed=3)
    exported, _ = deploy.export_model(qmodel)
    with torch.no_grad():
        assert torch.allclose(exported(x), qmodel(x), rtol=1e-5, atol=1e-5)
    check_outputs(qmodel, info.path, x)


def test_dorefa_8_bit_weights_do_not_fit_int8():
    _, qmodel, _ = build("conv", 8, 8, "dorefa")
    m = next(iter(deploy.quant_layers(qmodel).values()))
    with pytest.raises(ValueError, match="7 bits or fewer"):
        deploy.tensor_grid(m.weight_quant, m.layer.weight)


def test_frozen_reconstructed_weights_export_their_codes(tmp_path):
    from dqss.recon import AdaRoundQuantizer
    _, qmodel, example = build("conv", 4, 4, policy=QuantPolicy(first_last_bits=None))
    g = torch.Generator().manual_seed(5)
    for m in deploy.quant_layers(qmodel).values():
        ada = AdaRoundQuantizer(m.weight_quant, m.layer.weight)
        ada.v.data = torch.randn(ada.v.shape, generator=g)  # a rounding other than to-nearest
        m.weight_quant = ada.freeze()
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    consts = deploy.onnx_constants(onnx.load(info.path))
    for name, m in deploy.quant_layers(qmodel).items():
        assert np.array_equal(consts[f"{name}.w_codes"], m.weight_quant.codes.numpy().astype(np.int8))
    x = images(20, seed=3)
    check_codes(qmodel, info.path, x)
    check_outputs(qmodel, info.path, x)


def test_pinned_mixture_exports_its_candidate(tmp_path):
    from dqss.mixed import mixed_layers
    torch.manual_seed(0)
    folded, uniform, example = build("conv")
    calib = images(32, seed=2)
    plans = QuantPolicy().layer_plans(folded, 8, 8, example)
    stats = collect_act_stats(folded, {n: folded.get_submodule(n) for n in plans}, torch.split(calib, 16))
    mixed = quantize_mixed(folded, plans, stats, {s: get_strategy(s) for s in ("minmax", "percentile")})
    with pytest.raises(ValueError, match="quantize_from_assignment"):
        deploy.export_onnx(mixed, example, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    for m in mixed_layers(mixed).values():
        m.weight_quant.pin("minmax")
        m.act_quant.pin("minmax")
    info = deploy.export_onnx(mixed, example, tmp_path / "m.onnx")
    ref = deploy.export_onnx(uniform, example, tmp_path / "u.onnx")
    cm, cu = deploy.onnx_constants(onnx.load(info.path)), deploy.onnx_constants(onnx.load(ref.path))
    for name in plans:
        for k in ("w_codes", "w_scale", "a_scale", "a_zero"):
            assert np.array_equal(cm[f"{name}.{k}"], cu[f"{name}.{k}"])


# -- (g): errors ---------------------------------------------------------------------------------
def test_step_quantizer_in_training_state_is_refused():
    from dqss.recon import StepQuantizer
    _, qmodel, _ = build("conv")
    m = next(iter(deploy.quant_layers(qmodel).values()))
    step = StepQuantizer(m.act_quant, learn=True)
    assert deploy.tensor_grid(step).scale.item() == m.act_quant.scale.item()
    step.drop_prob = 0.5
    with pytest.raises(ValueError, match="drop_prob=0"):
        deploy.tensor_grid(step)


def test_unknown_quantizer_type_names_the_class_and_the_fix(tmp_path):
    class RoundTo(nn.Module):
        def forward(self, x):
            return torch.round(x * 4) / 4

    _, qmodel, example = build("conv")
    name = next(iter(deploy.quant_layers(qmodel)))
    qmodel.get_submodule(name).act_quant = RoundTo()
    with pytest.raises(TypeError, match=r"RoundTo.*export_grid"):
        deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")

    RoundTo.export_grid = lambda self, weight=None: deploy.Grid(torch.tensor(0.25), torch.tensor(0), -128, 127)
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")  # the hook makes it exportable
    check_outputs(qmodel, info.path, images(8, seed=3))


def test_corrupt_onnx_file_names_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07not an onnx model")
    with pytest.raises(RuntimeError, match=r"model\.onnx.*re-export"):
        deploy.ort_session(bad)
    _, qmodel, example = build("conv")
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    data = info.path.read_bytes()
    info.path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(RuntimeError, match=r"q\.onnx.*re-export"):
        deploy.ort_session(info.path)
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        deploy.ort_session(tmp_path / "missing.onnx")


def test_model_that_cannot_be_exported_is_a_clear_error(tmp_path):
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.linalg.eigvalsh(self.conv(x)[:, :, :4, :4])

    with pytest.raises(RuntimeError, match=r"cannot export Spectral.*eigvalsh"):
        deploy.export_onnx(Spectral().eval(), images(2), tmp_path / "s.onnx")
    assert not list(tmp_path.iterdir())  # no partial file

    class Several(nn.Module):
        def forward(self, x):
            return {"a": x}

    with pytest.raises(TypeError, match="one tensor output"):
        deploy.export_onnx(Several(), images(2), tmp_path / "s.onnx")


def test_quantized_layer_of_another_kind_is_refused(tmp_path):
    model = nn.Sequential(nn.Flatten(2), QuantLayer(nn.Conv1d(3, 4, 3)))
    with pytest.raises(TypeError, match="Conv1d"):
        deploy.export_onnx(model, images(2), tmp_path / "c.onnx")


@pytest.mark.parametrize("policy", [QuantPolicy(weight_per_channel=False), QuantPolicy(weight_symmetric=False)],
                         ids=["per-tensor", "asymmetric"])
def test_other_weight_grids(tmp_path, policy):
    _, qmodel, example = build("residual", 8, 8, policy=policy)
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    consts = deploy.onnx_constants(onnx.load(info.path))
    for name, m in deploy.quant_layers(qmodel).items():
        wq = m.weight_quant
        codes = consts[f"{name}.w_codes"]
        assert codes.dtype == (np.uint8 if wq.spec.qmin >= 0 else np.int8)
        assert np.array_equal(consts[f"{name}.w_scale"], wq.scale.numpy())
        assert np.array_equal(consts[f"{name}.w_zero"].astype(np.float32), wq.zero_point.numpy())
    x = images(20, seed=3)
    check_codes(qmodel, info.path, x)
    check_outputs(qmodel, info.path, x)
