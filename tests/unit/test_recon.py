"""Reconstruction PTQ (AdaRound, BRECQ, QDrop): the papers' formulas written here in numpy float64, the
units of each backbone family, that reconstruction lowers the output error, that the rounding ends binary,
and that a saved reconstruction rebuilds the same quantizers (a DQSS candidate)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dqss.core.layers import QuantPolicy, fold_batchnorm, plan_layers
from dqss.algorithms.ptq import quantize_per_layer, quantize_uniform
from dqss.core.quant import QuantSpec
from dqss.algorithms.recon import (GAMMA, ZETA, AdaRoundQuantizer, FrozenWeightQuantizer, Pass, ReconConfig,
                        ReconstructedStrategy, StepQuantizer, fisher_weights, optimise_unit, find_units,
                        get_reconstruction, kl_task_loss, load_reconstruction, lp_loss, reconstruct,
                        reconstruction_names, reconstruction_state, rounding_regularizer, save_reconstruction)
from dqss.core.stats import collect_act_stats
from dqss.core.strategy import get_strategy


# -- tiny models --------------------------------------------------------------------------------
class BasicBlock(nn.Module):  # the class name makes it a block (dqss.algorithms.recon.BLOCK_TYPES)
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class TinyNet(nn.Module):
    def __init__(self, c=8, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.block1 = BasicBlock(c)
        self.block2 = BasicBlock(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.block2(self.block1(x))
        return self.fc(x.mean((2, 3)))


def _setup(bits=4, seed=0, n=64):
    torch.manual_seed(seed)
    model = TinyNet().eval()
    x = torch.randn(n, 3, 8, 8)
    policy = QuantPolicy(first_last_bits=None)
    plans = plan_layers(model, policy, bits, bits, x[:1])
    stats = collect_act_stats(model, {k: model.get_submodule(k) for k in plans}, torch.split(x, 16), bins=512)
    return model, x, plans, stats


def _cfg(**kw):
    base = dict(iterations=300, batch_size=16, lr=1e-2, act_lr=1e-3, weight_init="mse", act_strategy="mse")
    return ReconConfig(**{**base, **kw})


def _recon(method, bits=4, **kw):
    model, x, plans, stats = _setup(bits)
    r = reconstruct(get_reconstruction(method), model, plans, stats, x, _cfg(**kw), strategy=get_strategy,
                    task_loss=kl_task_loss, seed=0, device="cpu", batch_size=32, example=x[:1])
    return model, x, plans, stats, r


# -- formulas ------------------------------------------------------------------------------------
def _h_numpy(v):
    s = 1.0 / (1.0 + np.exp(-v))
    return np.clip(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def test_constants_are_the_papers():
    assert (ZETA, GAMMA) == (1.1, -0.1)


def test_adaround_init_forward_and_hard_rounding_match_the_formula():
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3) * 0.2
    spec = QuantSpec(4, per_channel=True)
    base = get_strategy("minmax").build_weight_quantizer(spec, _ctx(w))
    q = AdaRoundQuantizer(base, w)
    wn = w.double().numpy()
    s = base.scale.double().numpy().reshape(-1, 1, 1, 1)
    floor = np.floor(wn / s)
    rest = wn / s - floor
    # V starts where h(V) is the fractional part of W/s: floor + h(V) = W/s
    np.testing.assert_allclose(q.w_floor.double().numpy() + _h_numpy(q.v.detach().double().numpy()), wn / s,
                               atol=1e-5)
    floor = q.w_floor.double().numpy()  # float32's floor (differs from float64's on exact grid points)
    rest = wn / s - floor
    # soft forward: s * (clamp(floor + h, qmin, qmax) - z), z = 0 on the symmetric grid
    soft = s * np.clip(floor + _h_numpy(q.v.detach().double().numpy()), spec.qmin, spec.qmax)
    np.testing.assert_allclose(q().detach().double().numpy(), soft, rtol=1e-5, atol=1e-6)
    # inside the grid that is the weight itself
    inside = (floor + rest >= spec.qmin) & (floor + rest <= spec.qmax)
    np.testing.assert_allclose(q().detach().double().numpy()[inside], wn[inside], atol=1e-5)
    # hard: up where h >= 1/2, i.e. nearest rounding at the start
    q.soft = False
    hard = s * np.clip(floor + (rest >= 0.5), spec.qmin, spec.qmax)
    np.testing.assert_allclose(q().detach().double().numpy(), hard, rtol=1e-5, atol=1e-6)
    frozen = q.freeze()
    assert isinstance(frozen, FrozenWeightQuantizer)
    torch.testing.assert_close(frozen(w), q())


def _ctx(w):
    from dqss.core.strategy import LayerContext

    conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], bias=False)
    conv.weight.data = w.clone()
    return LayerContext("layer", conv)


@pytest.mark.parametrize("beta", [20.0, 8.0, 2.0])
def test_regularizer_is_the_papers(beta):
    h = torch.rand(1000, dtype=torch.float64)
    h[:10] = 0.0
    h[10:20] = 1.0
    ref = np.sum(1.0 - np.abs(2.0 * h.numpy() - 1.0) ** beta)
    assert float(rounding_regularizer(h, beta)) == pytest.approx(ref, rel=1e-12)
    assert float(rounding_regularizer(torch.tensor([0.0, 1.0, 1.0]), beta)) == 0.0
    assert float(rounding_regularizer(torch.tensor([0.5]), beta)) == 1.0


def test_beta_schedule_is_linear_after_the_warmup():
    cfg = ReconConfig(iterations=1000, warmup=0.2, beta_start=20.0, beta_end=2.0)
    assert cfg.beta(0) is None and cfg.beta(199) is None
    for t in (200, 400, 600, 999):
        assert cfg.beta(t) == pytest.approx(2.0 + 18.0 * max(0.0, 1.0 - (t - 200) / 800))


def test_lp_loss_sums_channels_and_averages_the_rest():
    torch.manual_seed(2)
    a, b, w = torch.randn(4, 5, 3, 3), torch.randn(4, 5, 3, 3), torch.rand(4, 5, 3, 3)
    an, bn, wn = a.double().numpy(), b.double().numpy(), w.double().numpy()
    assert float(lp_loss(a, b, 2.0)) == pytest.approx(((an - bn) ** 2).sum(1).mean(), rel=1e-5)
    assert float(lp_loss(a, b, 2.4, w)) == pytest.approx((np.abs(an - bn) ** 2.4 * wn).sum(1).mean(), rel=1e-5)


def test_fisher_weights_are_the_squared_gradient_plus_one():
    model, x, plans, stats = _setup()
    qmodel = quantize_uniform(model, plans, stats, get_strategy("minmax"))
    with torch.no_grad():
        teacher = model(x)
    got = fisher_weights(qmodel, "block1", x, teacher, 16, "cpu", kl_task_loss)
    # independent: split the quantized model at block1's output and differentiate the batch-mean KL
    ref = []
    for b, t in zip(torch.split(x, 16), torch.split(teacher, 16)):
        with torch.no_grad():
            y = qmodel.block1(F.relu(qmodel.stem(b)))
        y.requires_grad_(True)
        out = qmodel.fc(qmodel.block2(y).mean((2, 3)))
        p = F.softmax(t.double(), 1)
        kl = (p * (torch.log(p) - F.log_softmax(out.double(), 1))).sum() / len(b)
        (g,) = torch.autograd.grad(kl, y)
        ref.append((g.abs() + 1.0) ** 2)
    torch.testing.assert_close(got.double(), torch.cat(ref).double(), rtol=1e-4, atol=1e-6)


def test_step_quantizer_drops_elements_with_its_probability():
    base = get_strategy("minmax").build_act_quantizer(QuantSpec(4, signed=None), _stats_of(torch.randn(4000)), None)
    q = StepQuantizer(base, learn=True)
    x = torch.randn(200_000) * 0.37
    xq = q(x)
    assert (xq != x).float().mean() > 0.9
    q.drop_prob = 0.5
    torch.manual_seed(3)
    kept_fp = (q(x) == x).float().mean().item()
    exact = (xq == x).float().mean().item()  # values already on the grid
    assert kept_fp == pytest.approx(0.5 + 0.5 * exact, abs=0.01)
    q.enabled = False
    assert torch.equal(q(x), x)
    # the step's gradient is LSQ's: d/ds of s * clamp(round(x/s)) with a straight-through round
    q.enabled, q.drop_prob = True, 0.0
    x = torch.tensor([0.13, -0.5, 2.0, 9.0])
    q(x).sum().backward()
    s = float(base.scale)
    v = x.double().numpy() / s
    inside = (v >= q.spec.qmin) & (v <= q.spec.qmax)
    lsq = np.where(inside, np.round(v) - v, np.where(v < q.spec.qmin, q.spec.qmin, q.spec.qmax))
    assert float(q.scale.grad) == pytest.approx(lsq.sum(), rel=1e-4)


def _stats_of(x):
    from dqss.core.stats import ActStats

    return ActStats.of([x], bins=256)


# -- units --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone,block,outside", [
    ("resnet18", "layer1.0", ["conv1", "fc"]),
    ("regnetx_002", "s1.b1", ["stem.conv", "head.fc"]),
    ("mobilenetv2_100", "blocks.1.0", ["conv_stem", "conv_head", "classifier"]),
])
def test_blocks_of_timm_backbones(backbone, block, outside):
    import timm

    model = timm.create_model(backbone, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    folded = fold_batchnorm(model, x)
    plans = plan_layers(folded, QuantPolicy(), 4, 4, x)
    units = find_units(folded, list(plans), "block")
    names = [u for u, _ in units]
    assert block in names
    for layer in outside:
        assert (layer, [layer]) in units
    assert [n for _, ls in units for n in ls] == list(plans)  # every layer once, in order
    blocks = dict(units)
    assert all(n.startswith(block + ".") for n in blocks[block]) and len(blocks[block]) >= 2
    assert find_units(folded, list(plans), "layer") == [(n, [n]) for n in plans]


def test_blocks_of_sr_backbones():
    from dqss.sr.models import build_sr, parse_backbone

    for name in ("edsr_tiny_x2", "msrresnet_tiny_x2"):
        model = build_sr(parse_backbone(name)).eval()
        x = torch.rand(1, 3, 16, 16)
        plans = plan_layers(model, QuantPolicy(first_last_bits=None), 4, 4, x)
        units = find_units(model, list(plans), "block")
        blocks = [u for u, ls in units if len(ls) == 2]
        assert blocks, units
        assert all(type(model.get_submodule(u)).__name__ == "ResidualBlockNoBN" for u in blocks)


def test_unknown_granularity_and_method():
    with pytest.raises(ValueError, match="granularity"):
        find_units(TinyNet(), ["stem"], "stage")
    with pytest.raises(KeyError, match="registered"):
        get_reconstruction("nosuch")
    assert reconstruction_names() == ["adaround", "brecq", "qdrop"]


# -- reconstruction --------------------------------------------------------------------------------------
def _layer_error(qmodel, model, x, name):
    """Output error of layer ``name`` with the FP model's input (weights only)."""
    caps = {}
    layer = model.get_submodule(name)
    h = layer.register_forward_pre_hook(lambda _m, a: caps.setdefault("x", a[0]))
    with torch.no_grad():
        model(x)
    h.remove()
    q = qmodel.get_submodule(name)
    with torch.no_grad():
        return float((q.compute(caps["x"], q.weight_quant(q.layer.weight)) - layer(caps["x"])).pow(2).mean())


@pytest.mark.slow  # reconstructs a backbone: minutes on 2 CPU cores (the fast tier leaves it out)
def test_adaround_lowers_every_layers_output_error():
    model, x, plans, stats, r = _recon("adaround", bits=3, reg_weight=1e-3)  # lambda scaled to the tiny layers
    nearest = quantize_uniform(model, plans, stats, get_strategy("mse"))
    errs = {n: (_layer_error(r.model, model, x, n), _layer_error(nearest, model, x, n)) for n in plans}
    # lower by a fifth (geometric mean of the per-layer ratios), and no layer worse by more than 1% (the
    # 3-channel stem's error is mostly clipping, which rounding cannot change: there both are within 0.2%)
    assert math.exp(np.mean([math.log(a / b) for a, b in errs.values()])) < 0.8, errs
    assert all(a < 1.01 * b for a, b in errs.values()), errs
    assert sum(a < b for a, b in errs.values()) >= len(errs) - 1, errs
    assert [u for u, _ in r.units] == list(plans)


@pytest.mark.slow  # reconstructs a backbone: minutes on 2 CPU cores (the fast tier leaves it out)
@pytest.mark.parametrize("method", ["brecq", "qdrop"])
def test_block_reconstruction_lowers_the_output_error(method):
    model, x, plans, stats, r = _recon(method, bits=3)
    nearest = quantize_uniform(model, plans, stats, get_strategy("mse"))
    with torch.no_grad():
        ref = model(x)
        err_r = float((r.model(x) - ref).pow(2).mean())
        err_n = float((nearest(x) - ref).pow(2).mean())
    assert err_r < err_n
    assert [u for u, _ in r.units] == ["stem", "block1", "block2", "fc"]
    # the learned steps moved away from the range strategy's
    moved = [float(r.model.get_submodule(n).act_quant.scale) != float(nearest.get_submodule(n).act_quant.scale)
             for n in plans]
    assert any(moved)


@pytest.mark.slow  # reconstructs a backbone: minutes on 2 CPU cores (the fast tier leaves it out)
def test_rounding_ends_binary():
    model, x, plans, stats = _setup(bits=3)
    from dqss.algorithms.recon import build

    cfg = _cfg(iterations=1500, reg_weight=0.05)
    qmodel = build(model, plans, stats, cfg, get_strategy, learn_acts=False)
    layer = qmodel.block1.conv1
    with torch.no_grad():
        xin = F.relu(model.stem(x))
        target = model.block1.conv1(xin)
    start = layer.weight_quant.h().detach()
    assert ((start > 0) & (start < 1)).float().mean() > 0.9  # fractional parts to begin with
    ps = Pass(learn_weights=True, learn_acts=False, loss="mse", act_quant=False)
    from dqss.algorithms.recon import set_act_quant

    set_act_quant(qmodel, False)
    optimise_unit(layer, [layer], xin, None, target, None, ps, cfg, torch.Generator().manual_seed(0), "cpu")
    h = layer.weight_quant.h().detach()
    assert ((h == 0) | (h == 1)).all(), f"{int(((h > 0) & (h < 1)).sum())} of {h.numel()} not binary"
    # the frozen codes are floor(W/s) + h
    codes = layer.weight_quant.freeze().codes.float()
    assert torch.equal(codes, torch.clamp(layer.weight_quant.w_floor + h, -4, 3))


@pytest.mark.slow  # reconstructs a backbone: minutes on 2 CPU cores (the fast tier leaves it out)
def test_saved_reconstruction_rebuilds_the_same_model(tmp_path):
    model, x, plans, stats, r = _recon("brecq", bits=4, iterations=50)
    path = tmp_path / "recon.pt"
    save_reconstruction(reconstruction_state(r.model, plans, {"method": "brecq"}), path)
    strat = ReconstructedStrategy("brecq", load_reconstruction(path))
    rebuilt = quantize_per_layer(model, plans, stats, {n: (strat, strat) for n in plans})
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), r.model(x))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="rerun"):
        load_reconstruction(tmp_path / "bad.pt")
    plans8 = plan_layers(model, QuantPolicy(first_last_bits=None), 8, 8, x[:1])
    with pytest.raises(ValueError, match="4-bit"):
        quantize_per_layer(model, plans8, stats, {n: (strat, strat) for n in plans8})


@pytest.mark.slow  # reconstructs a backbone: minutes on 2 CPU cores (the fast tier leaves it out)
def test_reconstruction_is_deterministic():
    *_, r1 = _recon("qdrop", bits=4, iterations=30)
    *_, r2 = _recon("qdrop", bits=4, iterations=30)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(r1.model(x), r2.model(x))


def test_nonfinite_loss_fails_clearly():
    with pytest.raises(FloatingPointError, match="lower"):
        _recon("qdrop", bits=4, iterations=5, lr=float("inf"), act_lr=float("inf"))


def test_cached_unit_output_is_not_changed_by_an_inplace_activation():
    """The reconstruction target of a conv followed by timm's ReLU(inplace=True) is the conv's output."""
    from dqss.algorithms.recon import unit_io

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True)).eval()
    x = torch.randn(8, 3, 6, 6)
    _, got = unit_io(model, "0", x, 4, "cpu")
    with torch.no_grad():
        ref = model[0](x)
    assert (ref < 0).any()
    torch.testing.assert_close(got, ref)
