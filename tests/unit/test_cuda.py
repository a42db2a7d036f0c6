"""The library on a CUDA device, against the same computation on the CPU: every strategy's calibration and
quantized model, the efficient mixture against the naive one, the search, the measured selection, QAT steps
and SR padding.

Skipped (with the reason) where CUDA is not available; on a GPU machine ``python -m pytest -m cuda`` runs
them.  ``DQSS_TEST_DEVICE=cpu`` runs the same tests with the CPU as the "device", which checks the tests'
own logic on a machine without a GPU (the comparisons are then trivially tight).  TF32 is switched off
here: these tests compare our code across devices, not the GPU's reduced-precision matmul mode.
"""
from __future__ import annotations

import copy
import os

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from dqss.core.layers import QuantPolicy, fold_batchnorm, plan_layers
from dqss.core.mixed import arch_parameters, mixed_layers
from dqss.algorithms.ptq import quantize_mixed, quantize_uniform
from dqss.algorithms.ptq_search import split_calibration
from dqss.algorithms.qat_train import DQSSQATConfig, QATRecipe, quantize_qat, quantizer_parameters, train_qat
from dqss.core.quant import QuantSpec
from dqss.algorithms.search import SearchConfig, search
from dqss.algorithms.select import Evaluator, measured_selection
from dqss.sr.models import build_sr, parse_backbone
from dqss.core.stats import ActStats, collect_act_stats
from dqss.core.strategy import LayerContext, get_strategy, strategy_names
from helpers import mixed_forward_backward, mixed_layer

pytestmark = pytest.mark.cuda

PTQ = strategy_names("ptq")
QAT = strategy_names("qat")


@pytest.fixture(scope="module")
def dev():
    want = os.environ.get("DQSS_TEST_DEVICE", "cuda")
    if want.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA is not available (torch.cuda.is_available() is False); these tests run on a GPU "
                    "machine: python -m pytest -m cuda (DQSS_TEST_DEVICE=cpu checks their logic on the CPU)")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device(want)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _rel_mse(y, ref) -> float:
    y, ref = y.detach().cpu().double(), ref.detach().cpu().double()
    return float(((y - ref) ** 2).mean() / (ref ** 2).mean())


@pytest.fixture(scope="module")
def small():
    """A BN-folded tiny timm ResNet with non-trivial BN statistics, its calibration and test images."""
    torch.manual_seed(1)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    x = torch.randn(2, 3, 32, 32, generator=g)
    folded = fold_batchnorm(model, x)
    calib = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
    return folded, calib, torch.randn(8, 3, 32, 32, generator=g)


def _calibrated(folded, calib, bits, device):
    model = copy.deepcopy(folded).to(device)
    plans = plan_layers(model, QuantPolicy(), bits, bits, calib[0][:2].to(device))
    stats = collect_act_stats(model, {n: model.get_submodule(n) for n in plans}, calib, bins=512, n_samples=2,
                              device=device)
    return model, plans, stats


# -- every strategy -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PTQ)
def test_every_ptq_strategy_on_device_matches_cpu(name, small, dev):
    """Calibration statistics, ranges and the quantized model computed on the device agree with the CPU's."""
    folded, calib, x = small
    out = {}
    for d in ("cpu", dev):
        model, plans, stats = _calibrated(folded, calib, 8, d)
        q = quantize_uniform(model, plans, stats, get_strategy(name))
        with torch.no_grad():
            out[str(d)] = q.to(d)(x.to(d))
        assert out[str(d)].device.type == torch.device(d).type
    ref = out["cpu"]
    assert torch.isfinite(out[str(dev)]).all()
    assert _rel_mse(out[str(dev)], ref) < 1e-4, name
    with torch.no_grad():
        fp = folded(x)
    assert _rel_mse(out[str(dev)], fp) < 0.05, f"{name}: 8-bit model far from FP on the device"


@pytest.mark.parametrize("name", QAT)
def test_every_qat_strategy_forward_and_backward_on_device(name, dev):
    """Each QAT quantizer's output and gradients (input and its own parameters) on the device equal the CPU's."""
    g = torch.Generator().manual_seed(3)
    layer = nn.Conv2d(4, 6, 3)
    x = torch.randn(4, 4, 9, 9, generator=g)
    st = ActStats.of([x], bins=256)
    s = get_strategy(name)
    grads = {}
    for d in ("cpu", dev):
        lay = copy.deepcopy(layer).to(d)
        ctx = LayerContext("l", lay, x.to(d))
        wq = s.build_weight_quantizer(QuantSpec(4, per_channel=True), ctx).to(d)
        aq = s.build_act_quantizer(QuantSpec(4, signed=None), st, ctx).to(d)
        xd = x.to(d).requires_grad_(True)
        y = F.conv2d(aq(xd), wq(lay.weight), lay.bias)
        y.square().mean().backward()
        grads[str(d)] = (y.detach().cpu(), xd.grad.cpu(),
                         [p.grad.cpu() for p in [*wq.parameters(), *aq.parameters()] if p.grad is not None])
    (y_c, gx_c, gp_c), (y_d, gx_d, gp_d) = grads["cpu"], grads[str(dev)]
    assert torch.allclose(y_d, y_c, rtol=1e-4, atol=1e-5)
    assert torch.allclose(gx_d, gx_c, rtol=1e-3, atol=1e-6)
    assert len(gp_d) == len(gp_c)
    for a, b in zip(gp_d, gp_c):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * max(1.0, float(b.abs().max())))


# -- the efficient mixture ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["conv", "depthwise", "linear"])
def test_efficient_equals_naive_on_device(kind, dev):
    torch.manual_seed(6)
    g = torch.Generator().manual_seed(6)
    if kind == "conv":
        layer, x = nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.randn(2, 8, 9, 9, generator=g)
    elif kind == "depthwise":
        layer, x = nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.randn(2, 8, 9, 9, generator=g)
    else:
        layer, x = nn.Linear(32, 10), torch.randn(5, 32, generator=g)
    layer.requires_grad_(False)
    x[0].mul_(3)
    m = mixed_layer(layer, x).to(dev)  # the CPU test's mixture of four strategies at 3 bits, on the device
    x = x.to(dev)
    r = torch.randn(m(x).shape, generator=g).to(dev)
    got = {mode: mixed_forward_backward(m, x, mode, r) for mode in ("efficient", "naive")}
    (y_e, *g_e), (y_n, *g_n) = got["efficient"], got["naive"]
    assert y_e.device.type == dev.type
    assert (y_e - y_n).abs().max() <= 1e-5 * y_n.abs().max()
    for a, b in zip(g_e, g_n):
        assert (a - b).abs().max() <= 1e-3 * b.abs().max()
    assert g_n[0].abs().max() > 0 and g_n[1].abs().max() > 0


# -- the search and the selection ---------------------------------------------------------------------
def test_search_on_device_trains_only_logits_and_lowers_loss(small, dev):
    folded, calib, _ = small
    x = torch.cat(calib)
    model, plans, stats = _calibrated(folded, calib, 3, dev)
    with torch.no_grad():
        teacher = model(x.to(dev)).cpu()
    q = quantize_mixed(model, plans, stats, {s: get_strategy(s) for s in ("minmax", "mse", "aciq")})
    frozen = {n: p.detach().clone() for n, p in q.named_parameters() if not n.endswith("logits")}
    hist = search(q, x, teacher, SearchConfig(iterations=30, batch_size=8, lr=0.1), seed=0, device=dev)
    first, last = sum(h["loss"] for h in hist[:5]) / 5, sum(h["loss"] for h in hist[-5:]) / 5
    assert last < first
    assert all(p.device.type == dev.type for p in arch_parameters(q))
    for n, p in q.named_parameters():
        if not n.endswith("logits"):
            assert torch.equal(p, frozen[n]), f"{n} changed during the search"


def test_selection_on_device_equals_cpu(small, dev):
    """The measured selection makes the same choice on the device as on the CPU, with the same objectives."""
    folded, calib, _ = small
    x = torch.cat(calib)
    names = ["minmax", "percentile", "mse", "aciq"]
    records = {}
    for d in ("cpu", dev):
        model, plans, stats = _calibrated(folded, calib, 3, d)
        with torch.no_grad():
            ref = model(x.to(d)).cpu()
        mixed = quantize_mixed(model, plans, stats, {s: get_strategy(s) for s in names})
        s_idx, h_idx = split_calibration(len(x), 0.25, 0)
        ev_s = Evaluator(mixed, x[s_idx], ref[s_idx], "kl", 8, d, cache=True)
        ev_h = Evaluator(mixed, x[h_idx], ref[h_idx], "kl", 8, d)
        proposal = {n: ("mse", "mse") for n in plans}
        sel = measured_selection(mixed, names, proposal, ev_s, ev_h, sweeps=1, accept_z=2.0)
        records[str(d)] = sel
    cpu, on_dev = records["cpu"], records[str(dev)]
    assert on_dev.chosen == cpu.chosen and on_dev.assignment == cpu.assignment
    for k, v in cpu.record["stages"].items():
        assert on_dev.record["stages"][k]["held"] == pytest.approx(v["held"], rel=1e-3)


# -- QAT ---------------------------------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("methods", [["lsq"], ["pact"], QAT], ids=["lsq", "pact", "dqss"])
def test_qat_steps_on_device_match_cpu(methods, dev):
    """Two QAT steps (a uniform method, or DQSS-QAT over every QAT candidate) on the device: the same losses
    as on the CPU, and weights, quantizer parameters and logits all move."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    histories, models = {}, {}
    for d in ("cpu", dev):
        torch.manual_seed(0)
        model = _Tiny().eval()
        plans = plan_layers(model, QuantPolicy(first_last_bits=8), 4, 4, x[:2])
        stats = collect_act_stats(model, {n: model.get_submodule(n) for n in plans}, [x])
        strategies = {m: get_strategy(m) for m in methods}
        q = quantize_qat(model, plans, stats, {n: strategies for n in plans}, "efficient")
        before = [p.detach().clone() for p in quantizer_parameters(q)]
        recipe = QATRecipe(epochs=1, batch_size=32, lr=0.05, quant_lr=0.05, shift=0)
        search_cfg = DQSSQATConfig(arch_lr=0.05, search_fraction=1.0) if len(methods) > 1 else None
        logits = []
        hist = train_qat(q, data, recipe, d, seed=0, search=search_cfg, fix=False,
                         on_freeze=lambda m, step: logits.extend(p.detach().cpu().clone() for p in arch_parameters(m)))
        histories[str(d)], models[str(d)] = hist, q
        moved = [not torch.equal(b, p.detach()) for b, p in zip(before, quantizer_parameters(q))]
        assert sum(moved) >= len(moved) // 2, f"{d}: quantizer parameters did not move"
        if len(methods) > 1:
            assert logits and all(float(t.abs().max()) > 0 for t in logits), f"{d}: logits did not move"
            assert not mixed_layers(q)
    assert histories[str(dev)][0]["loss"] == pytest.approx(histories["cpu"][0]["loss"], rel=1e-3)
    w_cpu = models["cpu"].state_dict()
    for k, v in models[str(dev)].state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v.cpu(), w_cpu[k], rtol=1e-3, atol=1e-4), k


# -- SR padding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(20, 27), (5, 6)], ids=["reflect", "replicate"])
def test_sr_padding_on_device(shape, dev):
    """SRNet pads to the window multiple and crops back on the device as on the CPU (reflect; replicate where
    the input is smaller than the pad)."""
    torch.manual_seed(0)
    model = build_sr(parse_backbone("swinir_tiny_x2"))
    assert model.pad_multiple == 8
    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_cpu = model(x)
        y_dev = copy.deepcopy(model).to(dev)(x.to(dev))
    assert y_dev.shape == (1, 3, 2 * shape[0], 2 * shape[1]) and y_dev.device.type == dev.type
    assert torch.allclose(y_dev.cpu(), y_cpu, rtol=1e-4, atol=1e-5)
