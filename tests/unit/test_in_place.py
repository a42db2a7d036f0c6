"""The quantizers' in-place arithmetic gives bit for bit what the plain expressions give (values, gradients and
the sign of zeros), and a mixture of one candidate equals the general mixture without its cost."""
import pytest
import torch

from baselines.dorefa import clip_quantize
from baselines.lsq import LSQQuantizer
from baselines.lsq_plus import LSQPlusActQuantizer
from baselines._qat_common import elements_per_step
from dqss.core import mixed
from dqss.core.quant import FakeQuantizer, QuantSpec, broadcast_along, fake_quantize, mix_bias, range_to_qparams
from dqss.core.strategy import quant_error
from dqss.plugin import grad_scale

EPS = 1e-8


def same(a, b):
    """Equal bit for bit, the sign of zeros included."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            same(u, v)
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b) and torch.equal(torch.signbit(a.float()), torch.signbit(b.float()))


def data(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, 4, 3, generator=g) * scale
    x.view(-1)[:6] = torch.tensor([0.0, -0.0, 0.5, -0.5, 1e-9, -1e-9])  # zeros and ties
    return x, torch.randn(x.shape, generator=g)


# the expressions as they were written before the in-place versions
def plain_fake_quantize(x, scale, zero, qmin, qmax):
    s, z = broadcast_along(scale, x, 0).to(x.dtype), broadcast_along(zero, x, 0).to(x.dtype)
    inside = (x >= (qmin - z) * s) & (x <= (qmax - z) * s)
    xq = (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s
    return xq.detach() + (x - x.detach()) * inside


def plain_quant_error(values, lo, hi, spec, p, weights):
    scale, zero = range_to_qparams(lo, hi, spec)
    s, z = scale.to(values.dtype).reshape(-1, 1), zero.to(values.dtype).reshape(-1, 1)
    q = (torch.clamp(torch.round(values / s) + z, spec.qmin, spec.qmax) - z) * s
    err = (values - q).abs()
    err = err.square() if p == 2 else err.pow(p)
    return err.mean(1) if weights is None else (err * weights).sum(1) / weights.sum(1).clamp_min(1e-12)


GRIDS = [(-128, 127), (0, 255), (-8, 7), (0, 15)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("qmin,qmax", GRIDS)
@pytest.mark.parametrize("per_channel", [True, False])
def test_fake_quantize_values_and_gradient(seed, qmin, qmax, per_channel):
    x, g = data(seed, scale=seed + 0.3)
    if per_channel:
        scale = torch.rand(6, generator=torch.Generator().manual_seed(seed)) * 0.1 + 1e-3
        zero = torch.full((6,), float(qmin + (qmax - qmin) // 3 * (seed % 2)))
    else:
        scale, zero = torch.tensor(0.05), torch.tensor(float(qmin + (qmax - qmin) // 3 * (seed % 2)))
    same(fake_quantize(x, scale, zero, qmin, qmax), plain_fake_quantize(x, scale, zero, qmin, qmax))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fake_quantize(a, scale, zero, qmin, qmax), plain_fake_quantize(b, scale, zero, qmin, qmax)
    ya.backward(g)
    yb.backward(g)
    same(ya, yb)
    same(a.grad, b.grad)
    q = FakeQuantizer(QuantSpec(bits=8, symmetric=False, signed=False, per_channel=False), torch.tensor(-1.0),
                      torch.tensor(2.0))
    same(q.values_and_mask(x)[0], plain_fake_quantize(x, q.scale, q.zero_point, q.spec.qmin, q.spec.qmax))


@pytest.mark.parametrize("p", [2.0, 2.4, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [None, "same", "double"])
def test_quant_error(p, dtype, weighted):
    x, _ = data(1)
    x = x.reshape(6, -1).to(dtype)
    weights = None if weighted is None else torch.rand(x.shape, generator=torch.Generator().manual_seed(2)).to(
        dtype if weighted == "same" else torch.float64)
    for spec in (QuantSpec(bits=8, symmetric=True, signed=True, per_channel=True),
                 QuantSpec(bits=4, symmetric=False, signed=False, per_channel=True)):
        lo, hi = x.min(1).values * 0.7, x.max(1).values * 0.8
        same(quant_error(x, lo, hi, spec, p, weights), plain_quant_error(x, lo, hi, spec, p, weights))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_learned_quantizers(seed, bits, signed, per_channel):
    x, grad = data(seed, scale=seed + 0.5)
    spec = QuantSpec(bits=bits, symmetric=True, signed=signed, per_channel=per_channel)
    step = torch.rand(6) * 0.3 + 0.01 if per_channel else torch.tensor(0.2)
    for role in ("weight", "act"):
        q = LSQQuantizer(spec, step, role)
        s = q.channel_view(q.step.clamp_min(EPS), x)
        u = x / s
        inside = (u >= spec.qmin) & (u <= spec.qmax)
        r = torch.round(torch.clamp(u, spec.qmin, spec.qmax))
        gs = q.reduce_product(grad, torch.where(inside, r - u, r), q.step) * grad_scale(
            elements_per_step(x, role, spec), spec.qmax)
        same(q.quantize(x, q.step), r * s)
        same(q.grads(x, grad, q.step), (r * s, inside, (gs.to(q.step.dtype),)))
    alpha = torch.tensor(1.3)
    lo = -alpha if signed else torch.zeros_like(alpha)
    y = torch.clamp(x, lo, alpha)
    same(clip_quantize(x, alpha, signed, spec.qmax),
         (torch.round(y / (alpha / spec.qmax)) * (alpha / spec.qmax), (x >= lo) & (x <= alpha)))
    if not signed and not per_channel:
        q = LSQPlusActQuantizer(spec, 0.2, -0.3)
        s, b = q.step.clamp_min(EPS), q.offset
        u = (x - b) / s
        inside = (u >= spec.qmin) & (u <= spec.qmax)
        r = torch.round(torch.clamp(u, spec.qmin, spec.qmax))
        g = grad_scale(elements_per_step(x, "act", spec), spec.qmax)
        want = (r * s + b, inside, ((q.reduce_product(grad, torch.where(inside, r - u, r), q.step) * g),
                                    q.reduce_to(torch.where(inside, 0.0, grad), q.offset) * g))
        same(q.quantize(x, q.step, q.offset), torch.round(torch.clamp(u, spec.qmin, spec.qmax)) * s + b)
        same(q.grads(x, grad, q.step, q.offset), want)


@pytest.mark.parametrize("hard", [False, True])
def test_mixture_of_one_candidate_equals_the_general_mixture(hard):
    q = FakeQuantizer(QuantSpec(bits=4, symmetric=False, signed=False, per_channel=False), torch.tensor(-0.5),
                      torch.tensor(2.0), "minmax")
    one, general = mixed.MixedQuantizer({"a": q}), mixed.MixedQuantizer({"a": q})
    one.hard = general.hard = hard
    x, g = data(3)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = one(a), mixed._LeanMixture.apply(b, general.probs(), (q,))
    ya.backward(g)
    yb.backward(g)
    same(ya, yb)
    same(a.grad, b.grad)
    same(one.logits.grad, general.logits.grad)  # zero: a softmax of one logit is constant


def test_efficient_layer_of_one_candidate_needs_no_weight_gradient():
    """Its weight and bias are constants for the logits (a softmax of one value is 1): no weight-gradient
    kernel runs, yet the output equals the general formula's."""
    conv = torch.nn.Conv2d(3, 4, 3, bias=True)
    spec_w = QuantSpec(bits=8, symmetric=True, signed=True, per_channel=True)
    spec_a = QuantSpec(bits=8, symmetric=False, signed=False, per_channel=False)
    with torch.no_grad():
        rows = conv.weight.reshape(4, -1)
        wq = FakeQuantizer(spec_w, rows.min(1).values, rows.max(1).values)
    aq = FakeQuantizer(spec_a, torch.tensor(-1.0), torch.tensor(2.0))
    conv.requires_grad_(False)
    layer = mixed.MixedQuantLayer(conv, mixed.MixedQuantizer({"w": wq}), mixed.MixedQuantizer({"a": aq}))
    x, _ = data(0)
    x = x.reshape(2, 3, 6, 10)
    weights = layer.weight_candidates()
    assert not layer.deployed_bias().requires_grad
    y = layer(x.clone().requires_grad_())
    beta, alpha = layer.weight_quant.probs(), layer.act_quant.probs()
    general = layer.compute(mixed._LeanMixture.apply(x, alpha, (aq,)), torch.tensordot(beta, weights, dims=1),
                            mix_bias(layer.bias_pairs(), conv.bias, alpha, beta))
    same(y, general.detach())
