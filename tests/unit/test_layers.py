"""Layer swapping, BN folding, the layer plan, mixed layers and building quantized models."""
import timm
import pytest
import torch
from torch import nn

from dqss.core.layers import QuantLayer, QuantPolicy, execution_order, fold_batchnorm, plan_layers
from dqss.core.mixed import arch_parameters, mixed_layers, set_mode, set_temperature
from dqss.algorithms.ptq import (export_assignment, load_assignment, quantize_from_assignment, quantize_mixed,
                      quantize_per_layer, quantize_uniform, save_assignment)
from dqss.core.quant import FakeQuantizer
from dqss.core.stats import collect_act_stats
from dqss.core.strategy import get_strategy, strategy_names
from helpers import mixed_forward_backward, mixed_layer

PTQ = strategy_names("ptq")  # every registered PTQ strategy: a new baseline is tested for free

pytestmark = pytest.mark.usefixtures("single_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randomize_bn(model, seed):
    g = _gen(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _model(name, seed=0):
    torch.manual_seed(seed)
    return _randomize_bn(timm.create_model(name, pretrained=False, num_classes=10), seed)


def _bn_count(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _rel_mse(y, ref):
    return float(((y - ref) ** 2).mean() / (ref ** 2).mean())


@pytest.fixture(scope="module")
def images():
    g = _gen(100)
    return {"example": torch.randn(2, 3, 32, 32, generator=g),
            "calib": [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)],
            "eval": torch.randn(4, 3, 32, 32, generator=g)}


@pytest.fixture(scope="module")
def small(images, single_thread):
    """A BN-folded tiny timm ResNet, its W4A4 plan and calibration statistics."""
    fp = fold_batchnorm(_model("test_resnet", seed=1), images["example"])
    plans = plan_layers(fp, QuantPolicy(), 4, 4, images["example"])
    layers = {n: fp.get_submodule(n) for n in plans}
    stats = collect_act_stats(fp, layers, images["calib"], bins=512, n_samples=2)
    return fp, plans, stats


# -- batch-norm folding -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100"])
def test_fold_batchnorm_preserves_outputs(name, images):
    model = _model(name, seed=2)
    assert _bn_count(model) > 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = _bn_count(model)
    folded = fold_batchnorm(model, images["example"])
    assert _bn_count(folded) == 0
    for x in (images["example"], images["eval"]):
        with torch.no_grad():
            ref, out = model(x), folded(x)
        assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    # the original model is untouched
    assert _bn_count(model) == n_bn
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # folded convs carry the BN shift as a bias
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)


def test_fold_batchnorm_keeps_unfoldable_bn():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4),  # foldable (conv has a bias)
                          nn.ReLU(), nn.BatchNorm2d(4),                      # follows a ReLU: not foldable
                          nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, affine=False))  # foldable, no affine
    _randomize_bn(model, 3)
    x = torch.randn(2, 3, 8, 8, generator=_gen(3))
    folded = fold_batchnorm(model, x)
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[5], nn.Identity)
    assert isinstance(folded[3], nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_fold_batchnorm_conv_feeding_two_bns_is_left_alone():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn_a = nn.BatchNorm2d(4)
            self.bn_b = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn_a(y) + self.bn_b(y)

    torch.manual_seed(4)
    model = _randomize_bn(Two(), 4)
    x = torch.randn(2, 3, 8, 8, generator=_gen(4))
    folded = fold_batchnorm(model, x)
    assert _bn_count(folded) == 2
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-6)


def test_fold_batchnorm_constant_channel_keeps_its_output_on_ordinary_weights():
    """A BN channel that never varied (a dead input: variance ~1e-25, as trained mobilenetv2s have) folds with
    factor 1: the same output, without weights blown up by gamma / sqrt(eps)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                          nn.BatchNorm2d(4))
    _randomize_bn(model, 5)
    with torch.no_grad():
        model[0].weight[2].zero_()
        model[0].bias[2] = -1.0  # channel 2 is dead after the ReLU: the depthwise conv sees zeros
        model[2].bias[2] = 0.25  # so its output is the constant bias, which BN's statistics saw
        bn = model[3]
        bn.running_mean[2], bn.running_var[2], bn.weight[2], bn.bias[2] = 0.25, 1e-25, 3.0, 0.7
    x = torch.randn(4, 3, 8, 8, generator=_gen(5))
    folded = fold_batchnorm(model, x)
    conv = folded[2]
    with torch.no_grad():
        out, ref = folded(x), model(x)
    assert (out - ref).abs().max() <= 1e-5
    assert torch.allclose(out[:, 2], torch.full_like(out[:, 2], 0.7))
    assert conv.weight[2].abs().max() <= model[2].weight[2].abs().max()  # factor 1, not 3 / sqrt(1e-5) ~ 949
    others = [c for c in range(4) if c != 2]
    factor = bn.weight[others] / torch.sqrt(bn.running_var[others] + bn.eps)
    assert torch.allclose(conv.weight[others], model[2].weight[others] * factor.reshape(-1, 1, 1, 1))


# -- int32 biases -------------------------------------------------------------------------------
def test_layer_rounds_its_bias_to_int32_on_the_product_of_its_steps(small, images):
    fp, plans, stats = small
    q = quantize_uniform(fp, plans, stats, get_strategy("mse"))
    name = next(iter(plans))
    m = q.get_submodule(name)
    step = m.act_quant.scale * m.weight_quant.scale  # s_x * s_w[c]
    b = m.layer.bias
    expected = torch.round(b / step) * step
    assert m.rounds_bias() and torch.equal(m.deployed_bias(), expected) and not torch.equal(expected, b)
    x = images["eval"]
    xq = m.act_quant(torch.randn(2, *images["example"].shape[1:], generator=_gen(9)))
    with torch.no_grad():
        ref = nn.functional.conv2d(xq, m.weight_quant(m.layer.weight), expected, m.layer.stride, m.layer.padding)
        assert torch.equal(m(xq), ref)
    # float biases on request, and wherever an input stays float (what the runtime adds there)
    m.int32_bias = False
    assert m.deployed_bias() is b
    m.int32_bias = True
    assert QuantLayer(m.layer, m.weight_quant, None).deployed_bias() is b
    assert all(p.int32_bias for p in plans.values())
    assert not any(p.int32_bias for p in QuantPolicy(int32_bias=False).layer_plans(fp, 4, 4, x[:1]).values())


def test_int32_bias_gradient_and_mixture_pinned(small, images):
    """The bias keeps a straight-through gradient; a mixture pinned to one pair adds that pair's bias."""
    fp, plans, stats = small
    mixed = quantize_mixed(fp, plans, stats, {s: get_strategy(s) for s in ("minmax", "mse")})
    uniform = quantize_uniform(fp, plans, stats, get_strategy("mse"))
    name = next(iter(plans))
    m, u = mixed.get_submodule(name), uniform.get_submodule(name)
    m.weight_quant.pin("mse")
    m.act_quant.pin("mse")
    assert torch.equal(m.deployed_bias(), u.deployed_bias())
    m.weight_quant.pin(None)
    m.act_quant.pin(None)
    pairs = m.bias_pairs()
    assert pairs.shape == (2, 2, m.layer.weight.shape[0]) and m.bias_pairs() is pairs  # cached: PTQ steps are fixed
    assert torch.equal(pairs[1, 1], u.deployed_bias())  # (act mse, weight mse)
    from dqss.core.quant import mix_bias
    b = m.layer.bias.detach().clone().requires_grad_(True)
    pa, pw = m.act_quant.probs().detach().requires_grad_(True), m.weight_quant.probs().detach().requires_grad_(True)
    mixed_bias = mix_bias(pairs, b, pa, pw)
    assert torch.allclose(mixed_bias, torch.einsum("i,j,ijc->c", pa, pw, pairs))
    mixed_bias.sum().backward()
    assert torch.equal(b.grad, torch.ones_like(b)) and pa.grad.abs().sum() > 0


# -- the layer plan ---------------------------------------------------------------------------
def test_plan_first_last_bits(images):
    model = _model("test_resnet", seed=5)
    order = execution_order(model, images["example"])
    plans = plan_layers(model, QuantPolicy(), 4, 4, images["example"])
    assert list(plans) == order
    assert order[0] == "conv1.0" and order[-1] == "fc"
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert len(plans) == n_layers
    for i, (name, p) in enumerate(plans.items()):
        expect = 8 if i in (0, len(plans) - 1) else 4
        assert p.name == name
        assert (p.w_spec.bits, p.a_spec.bits) == (expect, expect), name
        assert p.w_spec.per_channel and p.w_spec.signed is True
        assert p.a_spec.signed is None and not p.a_spec.per_channel
    # without the first/last exception every layer gets the requested bits
    plans = plan_layers(model, QuantPolicy(first_last_bits=None), 3, 5, images["example"])
    assert {(p.w_spec.bits, p.a_spec.bits) for p in plans.values()} == {(3, 5)}


def test_plan_keep_fp_and_layer_types(images):
    model = _model("test_resnet", seed=5)
    all_plans = plan_layers(model, QuantPolicy(), 4, 4, images["example"])
    policy = QuantPolicy(keep_fp=["conv1.*", "*.downsample.*", "fc"])
    plans = plan_layers(model, policy, 4, 4, images["example"])
    assert not any(n.startswith("conv1.") or ".downsample." in n or n == "fc" for n in plans)
    expect = [n for n in all_plans if not (n.startswith("conv1.") or ".downsample." in n or n == "fc")]
    assert list(plans) == expect
    names = list(plans)
    # the first/last bits move to the first/last *quantized* layers
    assert plans[names[0]].w_spec.bits == 8 and plans[names[-1]].w_spec.bits == 8
    assert all(plans[n].w_spec.bits == 4 for n in names[1:-1])
    only_linear = plan_layers(model, QuantPolicy(layer_types=["linear"]), 4, 4, images["example"])
    assert list(only_linear) == ["fc"]
    with pytest.raises(ValueError, match="no layer"):
        plan_layers(model, QuantPolicy(keep_fp=["*"]), 4, 4, images["example"])


@pytest.mark.parametrize("kwargs", [{"layer_types": ["conv3d"]}, {"layer_types": []},
                                    {"first_last_bits": 1}, {"first_last_bits": 16}])
def test_policy_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        QuantPolicy(**kwargs)


def test_unknown_layer_type_message():
    with pytest.raises(ValueError, match="conv3d"):
        QuantPolicy(layer_types=["conv2d", "conv3d"])


# -- mixed layers: efficient == naive (mixed_layer, mixed_forward_backward: tests/helpers.py) ---------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["conv", "depthwise", "linear", "conv_nobias"])
def test_efficient_equals_naive(kind, dtype):
    torch.manual_seed(6)
    g = _gen(6)
    if kind == "conv":
        layer, x = nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.randn(2, 8, 9, 9, generator=g)
    elif kind == "conv_nobias":
        layer, x = nn.Conv2d(8, 16, 3, bias=False), torch.randn(2, 8, 9, 9, generator=g)
    elif kind == "depthwise":
        layer, x = nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.randn(2, 8, 9, 9, generator=g)
    else:
        layer, x = nn.Linear(32, 10), torch.randn(5, 32, generator=g)
    layer.requires_grad_(False)
    x[0].mul_(3)  # outliers: the candidates clip differently
    m = mixed_layer(layer, x).to(dtype)
    x = x.to(dtype)
    with torch.no_grad():
        out_shape = m(x).shape
    r = torch.randn(out_shape, generator=g, dtype=dtype)  # a non-uniform upstream gradient
    y_e, gw_e, ga_e, gx_e = mixed_forward_backward(m, x, "efficient", r)
    y_n, gw_n, ga_n, gx_n = mixed_forward_backward(m, x, "naive", r)
    # float32: the logit gradients are small differences of large terms (softmax Jacobian; the int32 bias of
    # every pair adds nearly the same term, which cancels there), so they only agree to a few 1e-3 relative;
    # in float64 everything agrees to rounding
    out_tol, grad_tol = (1e-5, 1e-2) if dtype == torch.float32 else (1e-10, 1e-9)
    assert (y_e - y_n).abs().max() <= out_tol * y_n.abs().max()
    for a, b in ((gw_e, gw_n), (ga_e, ga_n), (gx_e, gx_n)):
        assert (a - b).abs().max() <= grad_tol * b.abs().max()
    # the gradients are not trivially zero: the logits really steer the output
    assert gw_n.abs().max() > 0 and ga_n.abs().max() > 0
    # the candidates really differ, so the mixture is not a single quantizer in disguise
    outs = m.act_quant.outputs(x)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    outs = m.weight_quant.outputs(m.layer.weight)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_mixture_at_one_hot_logits_is_the_candidate():
    torch.manual_seed(7)
    layer = nn.Conv2d(4, 6, 3).requires_grad_(False)
    x = torch.randn(2, 4, 7, 7, generator=_gen(7))
    m = mixed_layer(layer, x, names=("minmax", "mse", "aciq"))
    with torch.no_grad():
        m.weight_quant.logits.copy_(torch.tensor([0.0, 200.0, 0.0]))
        m.act_quant.logits.copy_(torch.tensor([0.0, 0.0, 200.0]))
    assert m.weight_quant.choice() == "mse" and m.act_quant.choice() == "aciq"
    single = QuantLayer(layer, m.weight_quant.candidates[1], m.act_quant.candidates[2])
    with torch.no_grad():
        ref = single(x)
        for mode in ("efficient", "naive"):
            m.mode = mode
            assert torch.allclose(m(x), ref, atol=1e-6), mode


def test_mode_and_temperature():
    torch.manual_seed(8)
    layer = nn.Linear(6, 3).requires_grad_(False)
    x = torch.randn(4, 6, generator=_gen(8))
    m = mixed_layer(layer, x, names=("minmax", "aciq"))
    with pytest.raises(ValueError):
        m.mode = "fast"
    model = nn.Sequential(m)
    p0 = m.act_quant.probs()
    set_temperature(model, 0.25)
    p1 = m.act_quant.probs()
    assert torch.allclose(p1, torch.softmax(m.act_quant.logits / 0.25, 0))
    assert p1.max() > p0.max()  # lower temperature sharpens
    set_mode(model, "naive")
    assert m.mode == "naive"
    assert set(map(id, arch_parameters(model))) == {id(m.weight_quant.logits), id(m.act_quant.logits)}
    assert mixed_layers(model) == {"0": m}


# -- building quantized models ---------------------------------------------------------------
@pytest.mark.parametrize("strategy", PTQ)
def test_quantize_uniform_swaps_every_planned_layer(strategy, small, images):
    fp, plans, stats = small
    q = quantize_uniform(fp, plans, stats, get_strategy(strategy))
    assert not any(isinstance(m, QuantLayer) for m in fp.modules())  # the FP model is not modified
    for name, plan in plans.items():
        m = q.get_submodule(name)
        assert type(m) is QuantLayer, name
        assert isinstance(m.weight_quant, FakeQuantizer) and isinstance(m.act_quant, FakeQuantizer)
        assert m.weight_quant.strategy == strategy and m.act_quant.strategy == strategy
        assert m.weight_quant.spec.bits == plan.w_spec.bits and m.act_quant.spec.bits == plan.a_spec.bits
        assert m.act_quant.spec.signed == (not stats[name].nonnegative)
    # every conv/linear is wrapped: none is left bare
    wrapped = {id(m.layer) for m in q.modules() if isinstance(m, QuantLayer)}
    bare = [n for n, m in q.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in wrapped]
    assert bare == []
    assert not any(p.requires_grad for p in q.parameters())


@pytest.mark.parametrize("strategy", PTQ)
def test_quantize_uniform_8bit_is_close(strategy, small, images):
    fp, _, stats = small
    plans8 = plan_layers(fp, QuantPolicy(), 8, 8, images["example"])
    q = quantize_uniform(fp, plans8, stats, get_strategy(strategy))
    with torch.no_grad():
        ref, out = fp(images["eval"]), q(images["eval"])
    err = _rel_mse(out, ref)
    assert 0 < err < 1e-2, err


def test_quantize_uniform_4bit_worse_than_8bit(small, images):
    fp, plans4, stats = small
    plans8 = plan_layers(fp, QuantPolicy(), 8, 8, images["example"])
    plans2 = plan_layers(fp, QuantPolicy(), 2, 2, images["example"])
    with torch.no_grad():
        ref = fp(images["eval"])
        errs = [_rel_mse(quantize_uniform(fp, p, stats, get_strategy("minmax"))(images["eval"]), ref)
                for p in (plans8, plans4, plans2)]
    assert errs[0] < errs[1] < errs[2], errs


def test_assignment_round_trip(small, images, tmp_path):
    fp, plans, stats = small
    strategies = {n: get_strategy(n) for n in ("minmax", "percentile", "aciq")}
    mixed = quantize_mixed(fp, plans, stats, strategies)
    assert set(mixed_layers(mixed)) == set(plans)
    g = _gen(9)
    with torch.no_grad():
        for p in arch_parameters(mixed):
            p.copy_(torch.randn(p.shape, generator=g) * 3)
    meta = {"backbone": "test_resnet", "w_bits": 4, "a_bits": 4}
    assignment = export_assignment(mixed, plans, meta)
    assert assignment["backbone"] == "test_resnet" and len(assignment["layers"]) == len(plans)
    path = tmp_path / "assignment.yaml"
    save_assignment(assignment, path)
    loaded = load_assignment(path)
    assert loaded == assignment
    names = list(strategies)
    choice = {}
    for entry, (name, plan) in zip(loaded["layers"], plans.items()):
        m = mixed.get_submodule(name)
        assert entry["name"] == name
        assert (entry["w_bits"], entry["a_bits"]) == (plan.w_spec.bits, plan.a_spec.bits)
        assert entry["weight"] == names[int(m.weight_quant.logits.argmax())]
        assert entry["act"] == names[int(m.act_quant.logits.argmax())]
        probs = torch.tensor([entry["act_probs"][n] for n in names])
        assert torch.allclose(probs, torch.softmax(m.act_quant.logits.detach(), 0), atol=1e-6)
        choice[name] = (strategies[entry["weight"]], strategies[entry["act"]])
    # the random logits pick more than one strategy, so the check below is not trivial
    assert len({e["weight"] for e in loaded["layers"]} | {e["act"] for e in loaded["layers"]}) > 1
    rebuilt = quantize_from_assignment(fp, plans, stats, loaded, strategies)
    direct = quantize_per_layer(fp, plans, stats, choice)
    with torch.no_grad():
        x = images["eval"]
        out_rebuilt, out_direct = rebuilt(x), direct(x)
        assert torch.allclose(out_rebuilt, out_direct, atol=1e-6, rtol=0)
        # and it is not just the uniform model of one strategy
        uni = quantize_uniform(fp, plans, stats, strategies["minmax"])(x)
        assert not torch.allclose(out_rebuilt, uni, atol=1e-6, rtol=0)
        # with one-hot logits the searched (mixed) model equals the discrete one
        for name in plans:
            m = mixed.get_submodule(name)
            for q in (m.weight_quant, m.act_quant):
                one_hot = torch.full_like(q.logits, -1e4)
                one_hot[q.logits.argmax()] = 0.0
                q.logits.copy_(one_hot)
        assert torch.allclose(mixed(x), out_direct, atol=1e-5 * float(out_direct.abs().max()), rtol=0)


@pytest.mark.parametrize("content", [
    "{{{ not yaml: [",
    "just a string",
    "- a\n- list\n",
    "format: something-else/1\nlayers: []\n",
    "format: dqss-assignment/1\n",
    "",
])
def test_load_assignment_rejects_foreign_files(content, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ValueError):
        load_assignment(path)


def test_load_assignment_missing_or_binary_file(tmp_path):
    with pytest.raises(ValueError):
        load_assignment(tmp_path / "missing.yaml")
    path = tmp_path / "bin.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError):
        load_assignment(path)


def test_assignment_for_other_bits_or_layers_rejected(small, images, tmp_path):
    fp, plans, stats = small
    strategies = {n: get_strategy(n) for n in ("minmax", "aciq")}
    mixed = quantize_mixed(fp, plans, stats, strategies)
    with torch.no_grad():
        mixed.get_submodule(next(iter(plans))).act_quant.logits.copy_(torch.tensor([0.0, 1.0]))  # aciq
    assignment = export_assignment(mixed, plans, {})
    path = tmp_path / "a.yaml"
    save_assignment(assignment, path)
    loaded = load_assignment(path)
    plans8 = plan_layers(fp, QuantPolicy(), 8, 8, images["example"])
    with pytest.raises(ValueError, match="W"):
        quantize_from_assignment(fp, plans8, stats, loaded, strategies)
    fewer = {n: p for n, p in plans.items() if n != "fc"}
    with pytest.raises(ValueError):
        quantize_from_assignment(fp, fewer, stats, loaded, strategies)
    with pytest.raises(KeyError):
        quantize_from_assignment(fp, plans, stats, loaded, {"minmax": strategies["minmax"]})
