"""Properties of the uniform fake quantizer (dqss/core/quant.py)."""
import itertools

import pytest
import torch

from dqss.options import BIT_MAX, BIT_MIN
from dqss.core.quant import FakeQuantizer, QuantSpec, fake_quantize, range_to_qparams

BITS = list(range(BIT_MIN, BIT_MAX + 1))

pytestmark = pytest.mark.usefixtures("single_thread")
# (symmetric, signed)
GRIDS = [(True, True), (True, False), (False, True)]
GRID_IDS = ["sym-signed", "sym-unsigned", "asym"]


def _spec(bits, symmetric, signed, **kw):
    return QuantSpec(bits, symmetric=symmetric, signed=signed, **kw)


def _range_for(symmetric, signed):
    """A clipping range that suits the grid (non-negative data for the unsigned grid)."""
    if symmetric and not signed:
        return torch.tensor(0.0), torch.tensor(2.7)
    return torch.tensor(-1.3), torch.tensor(2.9)


def _data(lo, hi, n=4000, seed=0, margin=0.5):
    g = torch.Generator().manual_seed(seed)
    span = float(hi - lo)
    return torch.rand(n, generator=g) * span * (1 + 2 * margin) + float(lo) - margin * span


def _fq(x, spec, lo, hi):
    scale, zero = range_to_qparams(lo, hi, spec)
    return fake_quantize(x, scale, zero, spec.qmin, spec.qmax), scale, zero


# -- grid bounds --------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_qmin_qmax(bits):
    s = QuantSpec(bits, symmetric=True, signed=True)
    assert (s.qmin, s.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    u = QuantSpec(bits, symmetric=True, signed=False)
    assert (u.qmin, u.qmax) == (0, 2 ** bits - 1)
    for signed in (True, False):
        a = QuantSpec(bits, symmetric=False, signed=signed)
        assert (a.qmin, a.qmax) == (0, 2 ** bits - 1)
        assert a.qmax - a.qmin + 1 == 2 ** bits
    # every grid has exactly 2**bits levels
    assert s.qmax - s.qmin + 1 == 2 ** bits
    assert u.qmax - u.qmin + 1 == 2 ** bits


@pytest.mark.parametrize("bits", [1, 9, 4.5, 0, "8"])
def test_spec_rejects_bad_bits(bits):
    with pytest.raises(ValueError, match="config"):
        QuantSpec(bits)


def test_resolved_picks_sign_from_calibration():
    act = QuantSpec(4, symmetric=True, signed=None)
    nonneg = act.resolved(True)
    assert nonneg.signed is False
    assert (nonneg.qmin, nonneg.qmax) == (0, 15)
    neg = act.resolved(False)
    assert neg.signed is True
    assert (neg.qmin, neg.qmax) == (-8, 7)
    # other fields are kept
    assert (nonneg.bits, nonneg.symmetric, nonneg.per_channel, nonneg.channel_axis) == (4, True, False, 0)
    # an already resolved spec is not changed by calibration
    fixed = QuantSpec(4, symmetric=True, signed=True)
    assert fixed.resolved(True) is fixed
    # an asymmetric grid has no sign: always 0..2^b-1
    asym = QuantSpec(4, symmetric=False, signed=None).resolved(True)
    assert (asym.qmin, asym.qmax) == (0, 15)


def test_quantizer_rejects_unresolved_spec():
    with pytest.raises(ValueError):
        FakeQuantizer(QuantSpec(4, signed=None), torch.tensor(-1.0), torch.tensor(1.0))


# -- fake-quant properties ------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("grid", GRIDS, ids=GRID_IDS)
def test_outputs_on_grid(bits, grid):
    spec = _spec(bits, *grid)
    lo, hi = _range_for(*grid)
    x = _data(lo, hi, seed=bits)
    y, scale, zero = _fq(x, spec, lo, hi)
    q = y / scale + zero
    assert torch.allclose(q, q.round(), atol=1e-3), "output is not a grid point"
    assert q.round().min() >= spec.qmin and q.round().max() <= spec.qmax
    # and the grid is really used: at this range every level can be hit
    assert len(torch.unique(q.round())) > 2 ** bits // 2


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("grid", GRIDS, ids=GRID_IDS)
def test_idempotent(bits, grid):
    spec = _spec(bits, *grid)
    lo, hi = _range_for(*grid)
    x = _data(lo, hi, seed=10 + bits)
    y, scale, zero = _fq(x, spec, lo, hi)
    y2 = fake_quantize(y, scale, zero, spec.qmin, spec.qmax)
    assert torch.equal(y2, y)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("grid", GRIDS, ids=GRID_IDS)
def test_error_bounded_inside_and_clamped_outside(bits, grid):
    spec = _spec(bits, *grid)
    lo, hi = _range_for(*grid)
    q = FakeQuantizer(spec, lo, hi, "test")
    r_lo, r_hi = (float(v) for v in q.range)
    s = float(q.scale)
    # the representable range is the requested one (an asymmetric grid shifts it by at most
    # half a step to put zero on the grid) and always holds zero
    if spec.symmetric:
        assert r_lo <= float(lo) + 1e-6 and r_hi >= float(hi) - 1e-6
    else:
        assert r_hi - r_lo == pytest.approx(float(hi - lo), rel=1e-5)
        assert abs(r_lo - float(lo)) <= s / 2 + 1e-6
    assert r_lo <= 0.0 <= r_hi
    x = _data(r_lo, r_hi, n=20000, seed=20 + bits)
    y = q(x)
    inside = (x >= r_lo) & (x <= r_hi)
    outside_hi, outside_lo = x > r_hi, x < r_lo
    assert inside.any() and outside_hi.any()
    err = (x - y).abs()[inside]
    assert err.max() <= s / 2 * (1 + 1e-5)
    # nearly the full half step is reached: rounding, not truncation or a bigger step
    assert err.max() >= 0.45 * s
    assert torch.allclose(y[outside_hi], torch.full_like(y[outside_hi], r_hi), rtol=1e-6, atol=0)
    if outside_lo.any():
        assert torch.allclose(y[outside_lo], torch.full_like(y[outside_lo], r_lo), rtol=1e-6, atol=1e-7)
    assert y.min() >= r_lo - 1e-6 and y.max() <= r_hi + 1e-6


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("grid", GRIDS, ids=GRID_IDS)
def test_scale_matches_range(bits, grid):
    spec = _spec(bits, *grid)
    lo, hi = _range_for(*grid)
    scale, zero = range_to_qparams(lo, hi, spec)
    if grid == (True, True):
        expect = max(-float(lo), float(hi)) / spec.qmax
        assert float(zero) == 0.0
    elif grid == (True, False):
        expect = float(hi) / spec.qmax
        assert float(zero) == 0.0
    else:
        expect = (float(hi) - float(lo)) / (spec.qmax - spec.qmin)
        assert abs(float(zero) - (-float(lo) / expect)) <= 0.5 + 1e-4
    assert float(scale) == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("grid", GRIDS, ids=GRID_IDS)
@pytest.mark.parametrize("rng", [(-1.3, 2.9), (0.4, 2.0), (-3.0, -0.7), (-0.01, 5.0)])
def test_zero_exactly_representable(bits, grid, rng):
    spec = _spec(bits, *grid)
    lo, hi = torch.tensor(rng[0]), torch.tensor(rng[1])
    scale, zero = range_to_qparams(lo, hi, spec)
    assert float(zero) == int(zero)
    assert spec.qmin <= int(zero) <= spec.qmax
    x = torch.tensor([0.0, -0.0])
    y = fake_quantize(x, scale, zero, spec.qmin, spec.qmax)
    assert torch.equal(y.abs(), torch.zeros(2))


def test_zero_range_does_not_divide_by_zero():
    spec = QuantSpec(8)
    scale, zero = range_to_qparams(torch.tensor(0.0), torch.tensor(0.0), spec)
    assert float(scale) > 0
    y = fake_quantize(torch.tensor([0.0, 1.0, -1.0]), scale, zero, spec.qmin, spec.qmax)
    assert torch.isfinite(y).all()
    assert float(y[0]) == 0.0


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_broadcast_along_axis0(symmetric):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 3, 3, 3, generator=g) * torch.linspace(0.1, 3.0, 6).reshape(-1, 1, 1, 1)
    spec = QuantSpec(4, symmetric=symmetric, signed=True, per_channel=True)
    rows = w.flatten(1)
    lo, hi = rows.min(1).values, rows.max(1).values
    q = FakeQuantizer(spec, lo, hi, "minmax")
    assert q.scale.shape == (6,)
    y = q(w)
    assert y.shape == w.shape
    # scales differ a lot between channels, so a wrong axis would break this
    for c in range(6):
        sc, zc = range_to_qparams(lo[c], hi[c], spec)
        yc = fake_quantize(w[c], sc, zc, spec.qmin, spec.qmax)
        assert torch.equal(y[c], yc), f"channel {c} not quantized with its own scale"
    # and the per-channel quantizer is strictly better than one shared scale here
    shared = FakeQuantizer(QuantSpec(4, symmetric=symmetric, signed=True), lo.min(), hi.max())
    assert ((y - w) ** 2).mean() < ((shared(w) - w) ** 2).mean()


@pytest.mark.parametrize("grid", GRIDS, ids=GRID_IDS)
def test_straight_through_gradient(grid):
    spec = _spec(4, *grid)
    lo, hi = _range_for(*grid)
    q = FakeQuantizer(spec, lo, hi)
    r_lo, r_hi = (float(v) for v in q.range)
    span = r_hi - r_lo
    inside = torch.linspace(r_lo + 0.01 * span, r_hi - 0.01 * span, 37)
    above = torch.tensor([r_hi + 0.1, r_hi + 5.0])
    below = torch.tensor([r_lo - 0.1, r_lo - 5.0])
    x = torch.cat([inside, above, below]).requires_grad_(True)
    weights = torch.linspace(0.5, 2.0, len(x))  # a non-constant upstream gradient
    (q(x) * weights).sum().backward()
    n = len(inside)
    assert torch.equal(x.grad[:n], weights[:n])
    assert torch.equal(x.grad[n:], torch.zeros(len(x) - n))


def test_per_channel_straight_through_gradient():
    spec = QuantSpec(3, per_channel=True)
    lo, hi = torch.tensor([-1.0, -4.0]), torch.tensor([1.0, 4.0])
    q = FakeQuantizer(spec, lo, hi)
    x = torch.tensor([[0.5, 2.0, -3.0], [0.5, 2.0, -3.0]], requires_grad=True)
    q(x).sum().backward()
    # channel 0 range is about [-1.14, 1]: 2.0 and -3.0 are clipped; channel 1 keeps all
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))


def test_quantizer_buffers_and_repr():
    q = FakeQuantizer(QuantSpec(4, per_channel=True), torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0]),
                      "mse")
    assert set(dict(q.named_buffers())) == {"scale", "zero_point"}
    assert list(q.parameters()) == []
    assert "mse" in repr(q) and "4 bit" in repr(q) and "per-channel" in repr(q)


@pytest.mark.parametrize("bits,grid", list(itertools.product([2, 8], GRIDS)))
def test_more_bits_never_coarser(bits, grid):
    """Same range, more bits: a step that is at least 2x finer per extra bit."""
    lo, hi = _range_for(*grid)
    s_low, _ = range_to_qparams(lo, hi, _spec(bits, *grid))
    s_high, _ = range_to_qparams(lo, hi, _spec(min(bits + 1, 8), *grid))
    if bits < 8:
        assert float(s_high) < float(s_low) / 1.9
