"""The QAT baselines (LSQ, LSQ+, PACT, DoReFa) against their papers' formulas.

Every reference below is written out from the paper in plain torch, independently of
the quantizer code: forward values, the closed-form gradients (incl. LSQ's gradient
scale g), autograd through the formula with a straight-through round, and the inits.
"""
import math

import pytest
import torch
from torch import nn

from dqss.core.layers import QuantLayer
from dqss.core.mixed import MixedQuantizer
from dqss.core.qat import LearnedQuantizer
from dqss.core.quant import QuantSpec
from dqss.core.stats import ActStats
from dqss.core.strategy import LayerContext, Strategy, get_strategy, strategy_names

QAT = ("lsq", "lsq_plus", "pact", "dorefa")  # the methods whose papers are checked below
# every registered QAT strategy (importing the registry loads baselines/): the generic tests run over
# these, so a new QAT baseline is tested without editing this file
REGISTERED = strategy_names("qat")
TOL = dict(rtol=1e-5, atol=1e-5)

pytestmark = pytest.mark.usefixtures("single_thread")


# -- helpers ------------------------------------------------------------------------------
def _ste(u):
    return u + (torch.round(u) - u).detach()


def _clamp(u, lo, hi):
    """clamp with gradient 1 on the closed interval [lo, hi] as in the papers (torch.clamp's
    own gradient is 0 at the bounds, e.g. at the exact zeros after a ReLU)."""
    return torch.where((u >= lo) & (u <= hi), u, torch.clamp(u, lo, hi).detach())


def _layer(kind="conv", seed=0):
    torch.manual_seed(seed)
    m = nn.Conv2d(3, 6, 3) if kind == "conv" else nn.Linear(12, 5)
    with torch.no_grad():  # channels of different magnitude, one outlier
        w = torch.randn_like(m.weight) * torch.linspace(0.1, 1.0, m.weight.shape[0]).reshape(
            -1, *[1] * (m.weight.dim() - 1))
        w.view(-1)[3] = 4.0
        m.weight.copy_(w)
    return LayerContext("layer", m)


def _stats(x):
    return ActStats.of([x])


def _act(signed, shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2.0 + 0.3
    return x if signed else x.relu()


def _run(q, x, upstream):
    """Values and gradients (input, then each learnable parameter) of ``q`` via autograd."""
    x = x.clone().requires_grad_(True)
    out = q(x)
    out.backward(upstream)
    return out.detach(), x.grad, [getattr(q, n).grad.clone() for n in q.param_names]


def _rows_view(t, x):
    """A per-channel (dim 0) tensor or a scalar, broadcast against ``x``."""
    return t.reshape(-1, *[1] * (x.dim() - 1)) if t.dim() else t


def _sum_to(g, p):
    return g.sum(dim=list(range(1, g.dim()))) if p.dim() else g.sum()


# -- registry -----------------------------------------------------------------------------
def test_registered_as_qat_only():
    assert set(QAT) <= set(strategy_names("qat"))
    assert not set(QAT) & set(strategy_names("ptq"))


@pytest.mark.parametrize("name", REGISTERED)
def test_registered_qat_strategy(name):
    s = get_strategy(name)
    assert isinstance(s, Strategy) and s.kind == "qat" and s.name == name


# -- LSQ ----------------------------------------------------------------------------------
def _lsq_reference(v, s, qmin, qmax, upstream, n_per_step):
    """Esser et al. eq. 1 and eq. 3 (with g = 1/sqrt(N Q_P)) written out."""
    sv = _rows_view(s, v)
    u = v / sv
    vq = torch.round(torch.clamp(u, qmin, qmax)) * sv
    inside = (u >= qmin) & (u <= qmax)
    dv = upstream * inside.float()
    ds_el = torch.where(u < qmin, torch.full_like(u, qmin),
                        torch.where(u > qmax, torch.full_like(u, qmax), torch.round(u) - u))
    g = 1.0 / math.sqrt(n_per_step * qmax)
    return vq, dv, _sum_to(upstream * ds_el, s) * g, inside


def _lsq_autograd(v, s, qmin, qmax, upstream, g):
    v = v.clone().requires_grad_(True)
    s = s.clone().requires_grad_(True)
    sv = _rows_view(s, v)
    (_ste(_clamp(v / sv, qmin, qmax)) * sv).backward(upstream)
    return v.grad, s.grad * g


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("method", ["lsq", "lsq_plus"])
def test_lsq_weight_quantizer(method, kind, per_channel, bits):
    ctx = _layer(kind)
    w = ctx.module.weight.detach()
    q = get_strategy(method).build_weight_quantizer(QuantSpec(bits, per_channel=per_channel), ctx)
    assert isinstance(q, LearnedQuantizer) and q.param_names == ("step",)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert (q.spec.qmin, q.spec.qmax) == (qmin, qmax)
    # a step that clips part of every channel, so both branches of eq. 3 are exercised
    amax = w.flatten(1).abs().amax(1) if per_channel else w.abs().max()
    with torch.no_grad():
        q.step.copy_(amax / (1.5 * qmax + 1))
    torch.manual_seed(2)
    upstream = torch.randn_like(w)
    out, gw, (gs,) = _run(q, w, upstream)

    n = w[0].numel() if per_channel else w.numel()
    vq, dv, ds, inside = _lsq_reference(w, q.step.detach(), qmin, qmax, upstream, n)
    assert inside.any() and not inside.all()
    assert gs.shape == q.step.shape == ((w.shape[0],) if per_channel else ())
    torch.testing.assert_close(out, vq)
    torch.testing.assert_close(gw, dv)
    torch.testing.assert_close(gs, ds, **TOL)
    ag_w, ag_s = _lsq_autograd(w, q.step.detach(), qmin, qmax, upstream, 1.0 / math.sqrt(n * qmax))
    torch.testing.assert_close(gw, ag_w)
    torch.testing.assert_close(gs, ag_s, **TOL)
    # on the grid: integer multiples of the step within [qmin, qmax]
    k = out / _rows_view(q.step.detach(), w)
    torch.testing.assert_close(k, torch.round(k).clamp(qmin, qmax), rtol=0, atol=1e-4)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 10)])
def test_lsq_act_quantizer(shape, signed, bits):
    x = _act(signed, shape)
    q = get_strategy("lsq").build_act_quantizer(QuantSpec(bits, signed=None), _stats(x), _layer())
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    assert (q.spec.qmin, q.spec.qmax) == (qmin, qmax) and q.spec.signed == signed
    with torch.no_grad():
        q.step.fill_(float(x.abs().max()) / (1.5 * qmax + 1))
    torch.manual_seed(3)
    upstream = torch.randn_like(x)
    out, gx, (gs,) = _run(q, x, upstream)
    n = x[0].numel()  # features per sample
    vq, dv, ds, inside = _lsq_reference(x, q.step.detach(), qmin, qmax, upstream, n)
    assert not inside.all()
    torch.testing.assert_close(out, vq)
    torch.testing.assert_close(gx, dv)
    torch.testing.assert_close(gs, ds, **TOL)
    ag_x, ag_s = _lsq_autograd(x, q.step.detach(), qmin, qmax, upstream, 1.0 / math.sqrt(n * qmax))
    torch.testing.assert_close(gx, ag_x)
    torch.testing.assert_close(gs, ag_s, **TOL)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_lsq_init(per_channel, bits):
    ctx = _layer("conv")
    w = ctx.module.weight.detach()
    q = get_strategy("lsq").build_weight_quantizer(QuantSpec(bits, per_channel=per_channel), ctx)
    qp = 2 ** (bits - 1) - 1
    if per_channel:
        expect = torch.stack([2 * w[c].abs().mean() / math.sqrt(qp) for c in range(w.shape[0])])
    else:
        expect = 2 * w.abs().mean() / math.sqrt(qp)
    torch.testing.assert_close(q.step.detach(), expect)

    x = torch.tensor([[-1.0, 2.0, 0.5, -3.5], [0.0, 1.0, -0.25, 4.0]])
    for data, qp_act in ((x, 2 ** (bits - 1) - 1), (x.relu(), 2 ** bits - 1)):
        qa = get_strategy("lsq").build_act_quantizer(QuantSpec(bits, signed=None), _stats(data), ctx)
        mean_abs = data.abs().sum().item() / data.numel()
        assert qa.step.item() == pytest.approx(2 * mean_abs / math.sqrt(qp_act), rel=1e-6)


# -- LSQ+ ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 10)])
def test_lsq_plus_act_quantizer(shape, signed, bits):
    x = _act(signed, shape)
    q = get_strategy("lsq_plus").build_act_quantizer(QuantSpec(bits, signed=None), _stats(x), _layer())
    assert q.param_names == ("step", "offset")
    qmin, qmax = 0, 2 ** bits - 1  # always the unsigned grid
    assert (q.spec.qmin, q.spec.qmax) == (qmin, qmax)
    lo, hi = float(x.min()), float(x.max())
    s, beta = (hi - lo) / (1.4 * qmax), lo + 0.2 * (hi - lo)  # clip on both sides
    with torch.no_grad():
        q.step.fill_(s)
        q.offset.fill_(beta)
    torch.manual_seed(4)
    upstream = torch.randn_like(x)
    out, gx, (gs, gb) = _run(q, x, upstream)

    s_t, b_t = torch.tensor(s), torch.tensor(beta)
    u = (x - b_t) / s_t
    inside = (u >= qmin) & (u <= qmax)
    assert (u < qmin).any() and (u > qmax).any() and inside.any()
    g = 1.0 / math.sqrt(x[0].numel() * qmax)
    ds_el = torch.where(u < qmin, float(qmin), torch.where(u > qmax, float(qmax), torch.round(u) - u))
    torch.testing.assert_close(out, torch.round(torch.clamp(u, qmin, qmax)) * s_t + b_t)
    torch.testing.assert_close(gx, upstream * inside.float())
    torch.testing.assert_close(gs, (upstream * ds_el).sum() * g, **TOL)
    torch.testing.assert_close(gb, (upstream * (~inside).float()).sum() * g, **TOL)

    # autograd through the formula with the STE round
    xa, sa, ba = x.clone().requires_grad_(True), s_t.clone().requires_grad_(True), b_t.clone().requires_grad_(True)
    (_ste(_clamp((xa - ba) / sa, qmin, qmax)) * sa + ba).backward(upstream)
    torch.testing.assert_close(gx, xa.grad)
    torch.testing.assert_close(gs, sa.grad * g, **TOL)
    torch.testing.assert_close(gb, ba.grad * g, **TOL)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_plus_init(bits):
    ctx = _layer("linear")
    w = ctx.module.weight.detach()
    for per_channel in (True, False):
        q = get_strategy("lsq_plus").build_weight_quantizer(QuantSpec(bits, per_channel=per_channel), ctx)
        rows = w if per_channel else w.reshape(1, -1)
        expect = []
        for r in rows:
            mu, sigma = r.mean(), (((r - r.mean()) ** 2).mean()).sqrt()
            expect.append(max(abs(mu - 3 * sigma), abs(mu + 3 * sigma)) / 2 ** (bits - 1))
        expect = torch.stack(expect) if per_channel else expect[0]
        torch.testing.assert_close(q.step.detach(), expect)

    x = torch.tensor([[-1.5, 0.25, 3.0], [0.5, 2.0, -0.75]])
    for data in (x, x.relu() + 0.5):
        qa = get_strategy("lsq_plus").build_act_quantizer(QuantSpec(bits, signed=None), _stats(data), ctx)
        mn, mx = float(data.min()), float(data.max())
        assert qa.step.item() == pytest.approx((mx - mn) / (2 ** bits - 1), rel=1e-6)
        assert qa.offset.item() == pytest.approx(mn, rel=1e-6)  # beta = min - Q_N s, Q_N = 0
        # min and max are represented exactly at init
        out = qa(torch.tensor([mn, mx])).detach()
        torch.testing.assert_close(out, torch.tensor([mn, mx]))


# -- PACT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 10)])
def test_pact_act_quantizer(shape, signed, bits):
    x = _act(signed, shape) - (0.0 if signed else 0.2)  # an unsigned layer may still see x < 0
    st = _stats(_act(signed, shape))
    q = get_strategy("pact").build_act_quantizer(QuantSpec(bits, signed=None), st, _layer())
    assert q.param_names == ("alpha",)
    alpha = 0.6 * float(x.abs().max())
    with torch.no_grad():
        q.alpha.fill_(alpha)
    torch.manual_seed(5)
    upstream = torch.randn_like(x)
    out, gx, (ga,) = _run(q, x, upstream)

    a = torch.tensor(alpha)
    if signed:  # our symmetric extension: [-alpha, alpha], step alpha / (2^(b-1) - 1)
        n = 2 ** (bits - 1) - 1
        y = torch.clamp(x, -alpha, alpha)
        inside = (x >= -alpha) & (x <= alpha)
        da = (x >= alpha).float() - (x <= -alpha).float()
        assert (x < -alpha).any()
    else:  # Choi et al. eqs. 1-3
        n = 2 ** bits - 1
        y = torch.clamp(x, 0, alpha)
        inside = (x >= 0) & (x <= alpha)
        da = (x >= alpha).float()
        assert (x < 0).any()
    assert (x > alpha).any() and inside.any()
    torch.testing.assert_close(out, torch.round(y * n / a) * a / n)
    torch.testing.assert_close(gx, upstream * inside.float())
    torch.testing.assert_close(ga, (upstream * da).sum(), **TOL)

    xa, aa = x.clone().requires_grad_(True), a.clone().requires_grad_(True)
    lo = -aa if signed else torch.zeros(())
    ya = torch.minimum(torch.maximum(xa, lo), aa)
    # PACT's STE is on the whole quantizer, d y_q / d y = 1 (eq. 3), so alpha's gradient
    # only comes through the clip (an STE on the round alone would add LSQ's round(u) - u)
    (ya + (torch.round(ya * n / aa) * aa / n - ya).detach()).backward(upstream)
    torch.testing.assert_close(gx, xa.grad)
    torch.testing.assert_close(ga, aa.grad, **TOL)


def test_pact_init_and_weights():
    x = torch.tensor([[-1.5, 0.25, 3.0], [0.5, 2.0, -4.75]])
    ctx = _layer()
    q = get_strategy("pact").build_act_quantizer(QuantSpec(4, signed=None), _stats(x.relu()), ctx)
    assert q.alpha.item() == pytest.approx(3.0) and not q.spec.signed
    q = get_strategy("pact").build_act_quantizer(QuantSpec(4, signed=None), _stats(x), ctx)
    assert q.alpha.item() == pytest.approx(4.75) and q.spec.signed
    q = get_strategy("pact", {"alpha_init": 10}).build_act_quantizer(QuantSpec(4, signed=None), _stats(x), ctx)
    assert q.alpha.item() == 10.0  # the paper's init
    from baselines.dorefa import DoReFaWeightQuantizer
    wq = get_strategy("pact", {"rescale": False}).build_weight_quantizer(QuantSpec(4, per_channel=True), ctx)
    assert isinstance(wq, DoReFaWeightQuantizer) and not wq.rescale


# -- DoReFa -------------------------------------------------------------------------------
def _dorefa_weight_reference(w, bits, per_channel, rescale):
    """Zhou et al. eq. 9, the max taken per output channel (loop) or over the tensor."""
    n = 2 ** bits - 1
    outs = []
    rows = list(w) if per_channel else [w]
    for r in rows:
        t = torch.tanh(r)
        q = 2 * (_ste(n * (t / (2 * t.abs().max()) + 0.5)) / n) - 1
        outs.append(q * r.detach().abs().max() if rescale else q)
    return torch.stack(outs) if per_channel else outs[0]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_dorefa_weight_quantizer(kind, rescale, per_channel, bits):
    ctx = _layer(kind)
    w = ctx.module.weight.detach()
    q = get_strategy("dorefa", {"rescale": rescale}).build_weight_quantizer(
        QuantSpec(bits, per_channel=per_channel), ctx)
    assert not q.closed_form and q.param_names == ()
    torch.manual_seed(6)
    upstream = torch.randn_like(w)
    out, gw, _ = _run(q, w, upstream)

    wr = w.clone().requires_grad_(True)
    ref = _dorefa_weight_reference(wr, bits, per_channel, rescale)
    ref.backward(upstream)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(gw, wr.grad)

    # 2^k levels of 2/(2^k - 1) in [-1, 1] (times max|w| per tensor/channel with rescale)
    scale = (w.flatten(1).abs().amax(1).reshape(-1, *[1] * (w.dim() - 1)) if per_channel
             else w.abs().max()) if rescale else torch.tensor(1.0)
    k = (out / scale + 1) * (2 ** bits - 1) / 2
    torch.testing.assert_close(k, torch.round(k), rtol=0, atol=1e-3)
    assert k.min() >= -1e-3 and k.max() <= 2 ** bits - 1 + 1e-3
    # d w_q / d w = (1 - tanh^2) / max|tanh| elementwise, plus the path through the max,
    # which reaches only the argmax element of each tensor/channel
    t = torch.tanh(w)
    m = t.flatten(1).abs().amax(1).reshape(-1, *[1] * (w.dim() - 1)) if per_channel else t.abs().max()
    elementwise = upstream * (1 - t ** 2) / m * scale
    is_max = t.abs() == m
    torch.testing.assert_close(gw[~is_max], elementwise[~is_max], **TOL)
    assert not torch.allclose(gw[is_max], elementwise[is_max])


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("clip", [1.0, 2.5])
def test_dorefa_act_quantizer(clip, signed, bits):
    x = _act(signed, (4, 3, 5, 5)) - (0.0 if signed else 0.1)
    st = _stats(_act(signed, (4, 3, 5, 5)))
    q = get_strategy("dorefa", {"clip": clip}).build_act_quantizer(QuantSpec(bits, signed=None), st, _layer())
    assert q.closed_form and q.param_names == () and list(q.parameters()) == []
    torch.manual_seed(7)
    upstream = torch.randn_like(x)
    out, gx, grads = _run(q, x, upstream)
    assert grads == []
    if signed:
        n, lo = 2 ** (bits - 1) - 1, -clip
    else:  # quantize_k(clamp(x, 0, 1)) with the upper bound ``clip``
        n, lo = 2 ** bits - 1, 0.0
    r = torch.clamp(x, lo, clip) / clip
    inside = (x >= lo) & (x <= clip)
    assert inside.any() and not inside.all()
    torch.testing.assert_close(out, torch.round(n * r) / n * clip)
    torch.testing.assert_close(gx, upstream * inside.float())
    xa = x.clone().requires_grad_(True)
    (_ste(n * torch.clamp(xa, lo, clip) / clip) / n * clip).backward(upstream)
    torch.testing.assert_close(gx, xa.grad)


def test_closed_interval_at_the_bounds():
    """The papers' masks are closed: ``Q_N <= v/s <= Q_P`` (LSQ), ``0 <= x <= alpha`` and
    ``x >= alpha`` (PACT), checked on exact bound values."""
    st = _stats(torch.tensor([0.0, 1.0]))
    q = get_strategy("lsq").build_act_quantizer(QuantSpec(2, signed=None), st, _layer())  # grid 0..3
    with torch.no_grad():
        q.step.fill_(0.5)
    x = torch.tensor([[-0.5, 0.0, 0.75, 1.5, 2.0]])
    _, gx, (gs,) = _run(q, x, torch.ones_like(x))
    torch.testing.assert_close(gx, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))
    # ds: Q_N=0 below, round(u)-u inside (0, 0, 0.5, 0), Q_P=3 above; g = 1/sqrt(5 * 3)
    assert gs.item() == pytest.approx((0 + 0 + 0.5 + 0 + 3) / math.sqrt(15))

    q = get_strategy("pact", {"alpha_init": 2.0}).build_act_quantizer(QuantSpec(2, signed=None), st, _layer())
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0, 4.0])
    out, gx, (ga,) = _run(q, x, torch.tensor([1.0, 1.0, 1.0, 1.0, 10.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 2.0 / 3, 2.0, 2.0]))
    torch.testing.assert_close(gx, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    assert ga.item() == 11.0  # x = alpha and x = 4 (upstream 1 + 10)


# -- options, robustness, training ---------------------------------------------------------
@pytest.mark.parametrize("name, options, needle", [
    ("lsq", {"alpha_init": 1.0}, "valid options are []"),
    ("lsq_plus", {"bits": 4}, "valid options are []"),
    ("pact", {"alpha": 3.0}, "['alpha_init', 'rescale']"),
    ("pact", {"alpha_init": -1.0}, "alpha_init must be a positive number"),
    ("pact", {"alpha_init": "10"}, "alpha_init must be a positive number"),
    ("pact", {"rescale": "yes"}, "rescale must be true or false"),
    ("dorefa", {"clamp": 1.0}, "['rescale', 'clip']"),
    ("dorefa", {"clip": 0.0}, "clip must be a positive number"),
    ("dorefa", {"rescale": 1}, "rescale must be true or false"),
])
def test_options_validation(name, options, needle):
    with pytest.raises(ValueError) as info:
        get_strategy(name, options)
    assert needle in str(info.value)


def test_step_stays_positive_and_dtypes():
    x = _act(True, (2, 3, 4, 4))
    st = _stats(x)
    q = get_strategy("lsq").build_act_quantizer(QuantSpec(4, signed=None), st, _layer())
    with torch.no_grad():
        q.step.fill_(-0.5)  # SGD overshoot: the forward uses max(step, 1e-8)
    out = q(x)
    assert torch.isfinite(out).all() and out.abs().max() <= 8 * 1e-8 + 1e-12
    # a float64 input: values in float64, parameter gradients in the parameter's float32
    for name in REGISTERED:
        qa = get_strategy(name).build_act_quantizer(QuantSpec(4, signed=None), st, _layer())
        xd = x.double().requires_grad_(True)
        y = qa(xd)
        y.sum().backward()
        assert y.dtype == torch.float64 and xd.grad.dtype == torch.float64
        assert all(getattr(qa, n).grad.dtype == torch.float32 for n in qa.param_names)


def test_lean_mixture_of_every_act_quantizer_matches_autograd_sum():
    """grads() agrees with forward inside DQSS's recomputing mixture of every registered QAT strategy."""
    x = _act(False, (3, 2, 4, 4))
    st = _stats(x)
    cands = {n: get_strategy(n).build_act_quantizer(QuantSpec(3, signed=None), st, _layer()) for n in REGISTERED}
    with torch.no_grad():  # every learned parameter halved, so that the learned ranges clip a part of x
        for q in cands.values():
            for p in q.learned():
                p.mul_(0.5)
    mix = MixedQuantizer(cands)
    logits = {"lsq": 0.2, "lsq_plus": -0.4, "pact": 0.7, "dorefa": 0.1}
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([logits.get(n, 0.3) for n in cands]))
    torch.manual_seed(8)
    upstream = torch.randn_like(x)
    xa = x.clone().requires_grad_(True)
    mix(xa).backward(upstream)
    lean = (xa.grad, [getattr(q, n).grad.clone() for q in cands.values() for n in q.param_names])
    for q in cands.values():
        q.zero_grad()
    xb = x.clone().requires_grad_(True)
    p = torch.softmax(mix.logits.detach(), 0)
    sum(p[i] * q(xb) for i, q in enumerate(cands.values())).backward(upstream)
    torch.testing.assert_close(lean[0], xb.grad)
    for a, (q, n) in zip(lean[1], [(q, n) for q in cands.values() for n in q.param_names]):
        torch.testing.assert_close(a, getattr(q, n).grad, **TOL)
        assert a.abs() > 0


@pytest.mark.parametrize("name", REGISTERED)
def test_one_sgd_step_moves_quantizer_parameters(name):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(8, 3, 6, 6)
    ctx = LayerContext("conv", conv)
    strat = get_strategy(name)
    layer = QuantLayer(conv, strat.build_weight_quantizer(QuantSpec(3, per_channel=True), ctx),
                       strat.build_act_quantizer(QuantSpec(3, signed=None), _stats(x), ctx))
    with torch.no_grad():  # clip part of the input, so every parameter's gradient is non-zero
        for p in layer.act_quant.parameters():
            p.mul_(0.5)
    qparams = [p for q in (layer.weight_quant, layer.act_quant) for p in q.learned()]
    expected = {"lsq": 2, "lsq_plus": 3, "pact": 1, "dorefa": 0}.get(name)  # the papers' parameters
    if expected is not None:
        assert len(qparams) == expected
    before = [p.detach().clone() for p in qparams]
    w_before = conv.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    target = torch.randn(8, 4, 6, 6)
    loss = ((layer(x) - target) ** 2).mean()
    loss.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    for p in qparams:
        assert p.grad is not None and p.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(conv.weight.detach(), w_before)
    for p, b in zip(qparams, before):
        assert not torch.equal(p.detach(), b)
