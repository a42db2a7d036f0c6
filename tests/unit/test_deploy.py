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
  a bias off its int32 grid, a grid narrower than its container without its clip, or two codes of
  difference.

The default layout (u8 activations, u8 weights) is exact on every x86 CPU, so these tests hold on any
CPU kind.  The u8 x s8 layouts are exact only where the CPU has VNNI: without it ONNX Runtime multiplies
through VPMADDUBSW, whose int16 pair sums saturate.  That path is checked on its arithmetic here (a numpy
model of it reproduces ONNX Runtime's output where this CPU takes it), and run for real under an AVX2-only
CPU model (Haswell, ``qemu-x86_64``) by ``test_avx2_kernel_path_under_qemu``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from torch import nn

from dqss import deploy
from dqss.core.layers import QuantLayer, QuantPolicy
from dqss.algorithms.ptq import quantize_mixed
from dqss.core.stats import collect_act_stats
from dqss.core.strategy import get_strategy
from helpers import MODELS, build, check_outputs, images, last_layer_bound


# -- the models (MODELS) and their build, images and check_outputs: tests/helpers.py --------------
def check_codes(qmodel, path, x, max_fraction=1e-3, layout=deploy.DEFAULT_LAYOUT):
    ours, theirs = deploy.torch_act_codes(qmodel, x, layout), deploy.onnx_act_codes(path, x)
    assert set(ours) == set(theirs) and ours
    for name in ours:
        d = (ours[name] - theirs[name]).abs()
        assert d.max() <= 1, f"{name}: codes differ by {float(d.max())}"
        assert (d > 0).float().mean() <= max_fraction, f"{name}: {int((d > 0).sum())} codes differ"


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
    first = deploy.torch_act_codes(qmodel, x, "grid")[next(iter(deploy.quant_layers(qmodel)))]
    assert (first == first.max()).sum() > 10 and first.max() == 2 ** (bits[1] - 1) - 1
    stored = deploy.torch_act_codes(qmodel, x)[next(iter(deploy.quant_layers(qmodel)))]
    assert torch.equal(stored, first + 128)  # u8u8: the signed input grid's codes moved into uint8
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


# -- the integer kernels' arithmetic on CPUs with and without VNNI -----------------------------------
HASWELL = {"fma", "avx", "avx2", "sse4_1", "sse4_2", "ssse3"}  # an AVX2 CPU without AVX-512 or VNNI
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_kernel_dispatch_by_cpu_flags():
    """Which MLAS kernel each layout runs on, by CPU kind (ONNX Runtime's platform.cpp)."""
    vnni = HASWELL | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}
    for flags, u8s8 in [(HASWELL, True), (HASWELL | {"avx_vnni"}, False), (vnni, False),
                        (vnni - {"avx512_vnni"}, True), (vnni | {"amx_tile", "amx_int8"}, False)]:
        assert deploy.int8_kernel("u8s8", flags).saturates is u8s8
        assert deploy.int8_kernel("s8s8", flags).saturates is u8s8  # run as u8 x s8
        assert not deploy.int8_kernel("u8u8", flags).saturates  # VPMADDWD / VPDPBUUD: int32 sums
    assert deploy.int8_kernel("u8s8", HASWELL).instruction == "VPMADDUBSW"
    assert deploy.int8_kernel("u8u8", HASWELL | {"avx_vnni_int8"}).instruction == "VPDPBUUD"
    assert not deploy.int8_kernel("u8s8", {"asimd", "asimddp"}).saturates


def vpmaddubsw_gemm(a_u8: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a @ w.T`` as MLAS's AVX2 u8 x s8 kernel adds it: each pair of neighbouring products along K summed
    into an int16 that saturates (VPMADDUBSW), the pairs then added in int32."""
    prod = a_u8.astype(np.int64)[:, None, :] * w.astype(np.int64)[None, :, :]
    if prod.shape[-1] % 2:
        prod = np.concatenate([prod, np.zeros_like(prod[..., :1])], -1)
    return np.clip(prod[..., 0::2] + prod[..., 1::2], -32768, 32767).sum(-1)


def one_gemm_graph(w_codes, w_scale, w_zero, a_scale, a_zero, out_scale):
    """input -> Q -> DQ, DQ(weight) -> Gemm -> Q: one fused QGemm (the output its uint8 codes, zero point 128)."""
    from onnx import TensorProto, helper, numpy_helper
    init = [numpy_helper.from_array(v, k) for k, v in dict(w=w_codes, sw=w_scale, zw=w_zero, sa=a_scale, za=a_zero,
                                                            so=out_scale, zo=np.array(128, np.uint8)).items()]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sa", "za"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Gemm", ["xd", "wd"], ["y"], transB=1),
             helper.make_node("QuantizeLinear", ["y", "so", "zo"], ["out"])]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("out", TensorProto.UINT8, None)], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("layout", ["u8s8", "u8u8"])
def test_saturating_arithmetic_model_reproduces_onnx_runtime(tmp_path, layout):
    """On any CPU: where this CPU's u8 x s8 kernel saturates (AVX2, AVX-512 without VNNI), ONNX Runtime's fused
    GEMM equals the numpy model of VPMADDUBSW and not the exact sum; where it does not (VNNI, AMX), the exact
    sum.  u8 x u8 is the exact sum on every CPU."""
    g = np.random.default_rng(0)
    w = np.where(g.random((16, 64)) < 0.5, 127, -127) * (g.random((16, 64)) < 0.9)  # many extreme weights
    a = g.integers(0, 256, (32, 64))  # activation codes (zero point 0) spanning uint8
    scale_w, scale_a = g.uniform(0.005, 0.02, 16).astype(np.float32), np.array(0.05, np.float32)
    exact = a @ w.T
    saturated = vpmaddubsw_gemm(a, w)
    assert (saturated != exact).mean() > 0.1  # large codes do saturate on that arithmetic
    out_scale = np.array(np.abs(exact * scale_w * scale_a).max() / 120, np.float32)
    if layout == "u8s8":
        wc, wz = w.astype(np.int8), np.zeros(16, np.int8)
    else:
        wc, wz = (w + 128).astype(np.uint8), np.full(16, 128, np.uint8)
    path = tmp_path / "gemm.onnx"
    path.write_bytes(one_gemm_graph(wc, scale_w, wz, scale_a, np.array(0, np.uint8), out_scale).SerializeToString())
    assert deploy.integer_kernels(path)["integer"] == {"QGemm": 1}
    out = deploy.ort_session(path).run(None, {"x": (a * scale_a).astype(np.float32)})[0]

    def codes(acc):
        return np.clip(np.round(acc * (scale_a * scale_w) / out_scale) + 128, 0, 255)

    expected = saturated if deploy.int8_kernel(layout).saturates else exact
    assert np.abs(out.astype(np.int64) - codes(expected)).max() <= 1  # float requantisation ties
    assert np.abs(codes(saturated) - codes(exact)).max() > 5


QEMU_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    np.save(path + ".out.npy", s.run(None, {s.get_inputs()[0].name: x})[0])
"""


def test_avx2_kernel_path_under_qemu(tmp_path):
    """ONNX Runtime run for real on an AVX2-only CPU (qemu-x86_64's Haswell model, whatever CPU runs the test):
    the default u8u8 export agrees with the fake-quantized model there, and the u8s8 export of the same model
    does not (its int16 saturation shows), so this test would catch a layout that breaks on such CPUs."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        msg = "qemu-x86_64 is not installed (Debian: apt install qemu-user); it runs ONNX Runtime on an AVX2-only CPU"
        if IN_CI:
            pytest.fail("CI runs the AVX2 kernel test, but " + msg)
        pytest.skip(msg)
    _, qmodel, example = build("conv", 8, 8, policy=QuantPolicy(first_last_bits=None))
    x = 2 * images(20, seed=3)
    np.save(tmp_path / "x.npy", x.numpy())
    paths = {layout: deploy.export_onnx(qmodel, example, tmp_path / f"{layout}.onnx", layout=layout).path
             for layout in ("u8u8", "u8s8")}
    (tmp_path / "run.py").write_text(QEMU_SCRIPT)
    res = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, str(tmp_path / "run.py"), str(tmp_path / "x.npy"),
                          *map(str, paths.values())], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    ref = deploy.torch_outputs(qmodel, x, 20)
    diff = {k: float((torch.from_numpy(np.load(f"{p}.out.npy")) - ref).abs().max()) for k, p in paths.items()}
    bound = last_layer_bound(qmodel) + 1e-4 * float(ref.abs().max())
    assert diff["u8u8"] <= bound, diff
    assert diff["u8s8"] > 2 * bound, diff  # VPMADDUBSW's saturation: ONNX Runtime's AVX2 path really ran


def test_u8s8_agrees_only_where_the_kernel_is_exact(tmp_path):
    """The u8s8 export natively: within one step of the fake-quantized model where this CPU multiplies it
    exactly (VNNI, AMX), off by more where it saturates; either way the test passes, and says which ran."""
    _, qmodel, example = build("conv", 8, 8, policy=QuantPolicy(first_last_bits=None))
    x = 2 * images(20, seed=3)
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx", layout="u8s8")
    ref = deploy.torch_outputs(qmodel, x, 20)
    out = deploy.run_onnx(deploy.ort_session(info.path), x, 20)
    bound = last_layer_bound(qmodel) + 1e-4 * float(ref.abs().max())
    within = float((out - ref).abs().max()) <= bound
    assert within is not deploy.int8_kernel("u8s8").saturates, str(deploy.int8_kernel("u8s8"))


# -- (e): the graph holds the suite's grids --------------------------------------------------------
@pytest.mark.parametrize("bits", [(8, 8), (4, 4)])
def test_graph_holds_the_suites_scales_and_int8_codes(tmp_path, bits):
    _, qmodel, example = build("residual", *bits)
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    assert info.layout == "u8u8"
    proto = onnx.load(info.path)
    consts = deploy.onnx_constants(proto)
    dq_inputs = [n.input for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    for name, m in deploy.quant_layers(qmodel).items():
        wq, aq = m.weight_quant, m.act_quant
        assert np.array_equal(consts[f"{name}.a_scale"], aq.scale.numpy())  # float32-equal
        assert consts[f"{name}.a_scale"].dtype == np.float32
        shift = 128 if aq.spec.qmin < 0 else 0  # a signed grid's codes move into uint8
        assert int(consts[f"{name}.a_zero"]) == int(aq.zero_point) + shift
        assert consts[f"{name}.a_zero"].dtype == np.uint8
        assert np.array_equal(consts[f"{name}.w_scale"], wq.scale.numpy())
        codes = consts[f"{name}.w_codes"]
        assert codes.dtype == np.uint8 and codes.shape == tuple(m.layer.weight.shape)
        assert (consts[f"{name}.w_zero"] == 128).all()
        codes = codes.astype(np.int64) - 128
        assert wq.spec.qmin <= codes.min() and codes.max() <= wq.spec.qmax
        assert (codes.min(), codes.max()) != (0, 0)
        # the codes times the scales are the suite's quantized weight, bit for bit
        values = torch.from_numpy(codes).float() * wq.scale.reshape(-1, 1, 1, 1)
        assert torch.equal(values, wq(m.layer.weight))
        assert [f"{name}.w_codes", f"{name}.w_scale", f"{name}.w_zero"] in [list(i) for i in dq_inputs]
        # the bias: int32 codes on s_act * s_w[c], exactly the bias the fake-quantized layer adds
        bias = consts[f"{name}.b_codes"]
        assert bias.dtype == np.int32 and [f"{name}.b_codes", f"{name}.b_scale", f"{name}.b_zero"] in \
            [list(i) for i in dq_inputs]
        assert np.array_equal(consts[f"{name}.b_scale"], (aq.scale * wq.scale).numpy())
        assert torch.equal(torch.from_numpy(bias.copy()).float() * (aq.scale * wq.scale), m.deployed_bias())
        assert not torch.equal(m.deployed_bias(), m.layer.bias)  # the rounding is real
    # one byte a weight: the weights are the 8-bit initializers; float ones are only scales
    layers = deploy.quant_layers(qmodel).values()
    sizes = {np.dtype(np.uint8): 0, np.dtype(np.float32): 0}
    for init in proto.graph.initializer:
        a = onnx.numpy_helper.to_array(init)
        sizes[a.dtype] = sizes.get(a.dtype, 0) + a.size
    assert sizes[np.dtype(np.uint8)] >= sum(m.layer.weight.numel() for m in layers)
    assert sizes[np.dtype(np.float32)] <= sum(2 * m.layer.weight.shape[0] + 3 for m in layers)
    assert sizes[np.dtype(np.int32)] >= sum(m.layer.bias.numel() for m in layers)


@pytest.mark.parametrize("layout", sorted(deploy.LAYOUTS))
def test_every_layout_stores_the_same_values(tmp_path, layout):
    """A layout changes how codes are stored, never the values: the export module equals the suite's
    model bit for bit, and the graph run as written (no integer kernel) gives the same codes."""
    _, qmodel, example = build("residual", 8, 8)
    x = images(20, seed=3)
    exported, layers = deploy.export_model(qmodel, layout)
    with torch.no_grad():
        assert torch.equal(exported(x), qmodel(x))
    act, weight = deploy.LAYOUTS[layout]
    assert all(e.act == (act or ("uint8" if e.act_grid[0] >= 0 else "int8")) for e in layers)
    assert all(e.weight == (weight or "int8") for e in layers)
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx", layout=layout)
    assert info.layout == layout
    check_codes(qmodel, info.path, x, layout=layout)
    unoptimized = deploy.run_onnx(deploy.ort_session(info.path, optimize=False), x, 20)
    assert float((unoptimized - deploy.torch_outputs(qmodel, x, 20)).abs().max()) <= last_layer_bound(qmodel)
    with pytest.raises(ValueError, match="u8u8"):
        deploy.export_onnx(qmodel, example, tmp_path / "bad.onnx", layout="u4u4")


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
    from dqss.algorithms.recon import AdaRoundQuantizer
    _, qmodel, example = build("conv", 4, 4, policy=QuantPolicy(first_last_bits=None))
    g = torch.Generator().manual_seed(5)
    for m in deploy.quant_layers(qmodel).values():
        ada = AdaRoundQuantizer(m.weight_quant, m.layer.weight)
        ada.v.data = torch.randn(ada.v.shape, generator=g)  # a rounding other than to-nearest
        m.weight_quant = ada.freeze()
    info = deploy.export_onnx(qmodel, example, tmp_path / "q.onnx")
    consts = deploy.onnx_constants(onnx.load(info.path))
    for name, m in deploy.quant_layers(qmodel).items():
        assert np.array_equal(consts[f"{name}.w_codes"].astype(np.int16) - 128, m.weight_quant.codes.numpy())
    x = images(20, seed=3)
    check_codes(qmodel, info.path, x)
    check_outputs(qmodel, info.path, x)


def test_pinned_mixture_exports_its_candidate(tmp_path):
    from dqss.core.mixed import mixed_layers
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
    from dqss.algorithms.recon import StepQuantizer
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
        assert codes.dtype == np.uint8  # u8u8: a signed grid's codes and zero point move by 128
        shift = 128 if wq.spec.qmin < 0 else 0
        assert np.array_equal(consts[f"{name}.w_scale"], wq.scale.numpy())
        assert np.array_equal(consts[f"{name}.w_zero"].astype(np.float32), wq.zero_point.numpy() + shift)
    x = images(20, seed=3)
    check_codes(qmodel, info.path, x)
    check_outputs(qmodel, info.path, x)
