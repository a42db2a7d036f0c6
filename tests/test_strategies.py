"""Each range strategy checked against an independent computation, the registry, ActStats."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.aciq import optimal_clip
from baselines.kl import kl_threshold_bins
from dqss.config import BIT_MAX, BIT_MIN
from dqss.quant import QuantSpec
from dqss.stats import ActStats, collect_act_stats, load_stats, save_stats
from dqss.strategy import (STRATEGIES, LayerContext, Strategy, get_strategy, register_strategy,
                           shrink_grid, strategy_names)

SIX = ("minmax", "percentile", "mse", "kl", "aciq", "easyquant")  # the paper's strategies
# every registered PTQ strategy (importing the registry loads baselines/): the generic tests run over
# these, so a new baseline is tested without editing this file
PTQ = strategy_names("ptq")

pytestmark = pytest.mark.usefixtures("single_thread")


# -- helpers ------------------------------------------------------------------------------
def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _conv(seed=0, cin=4, cout=8, groups=1):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups)
    with torch.no_grad():  # channels of very different magnitude, a few outliers
        conv.weight.mul_(torch.linspace(0.2, 3.0, cout).reshape(-1, 1, 1, 1))
        conv.weight[0, 0, 0, 0] = 4 * conv.weight[0].abs().max()
    return conv


def _weight_rows(seed=0, rows=6, cols=300):
    g = _gen(seed)
    w = torch.randn(rows, cols, generator=g) * torch.linspace(0.1, 2.0, rows)[:, None]
    w[:, :3] *= 4  # heavy tail in each row
    return w


def _batches(seed=0, n=3, shape=(4096,), growing=True, relu=False):
    g = _gen(seed)
    out = []
    for i in range(n):
        x = torch.randn(*shape, generator=g) * (1.0 + (2.0 * i if growing else 0.0))
        out.append(x.clamp_min(0) if relu else x)
    return out


def _stats(batches, bins=2048):
    st = ActStats(bins=bins)
    for b in batches:
        st.update(b)
    return st


def np_fake_quant(x, lo, hi, bits, symmetric, signed):
    """Independent float64 quantizer for rows of ``x`` with per-row ranges (lo, hi)."""
    x = np.asarray(x, dtype=np.float64)
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)[:, None]
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)[:, None]
    if symmetric and signed:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        s = np.maximum(np.maximum(-lo, hi) / qmax, 1e-8)
        z = 0.0
    elif symmetric:
        qmin, qmax = 0, 2 ** bits - 1
        s = np.maximum(hi / qmax, 1e-8)
        z = 0.0
    else:
        qmin, qmax = 0, 2 ** bits - 1
        s = np.maximum((hi - lo) / (qmax - qmin), 1e-8)
        z = np.clip(np.round(-lo / s), qmin, qmax)
    q = np.clip(np.round(x / s) + z, qmin, qmax)
    return (q - z) * s


def _ctx(module=None, samples=None):
    return LayerContext("layer", module if module is not None else _conv(), samples)


# -- minmax ---------------------------------------------------------------------------------
def test_minmax_weight_rows():
    w = _weight_rows()
    spec = QuantSpec(4, per_channel=True)
    lo, hi = get_strategy("minmax").weight_range(w, spec, _ctx())
    assert torch.equal(lo, w.min(1).values) and torch.equal(hi, w.max(1).values)


def test_minmax_weight_quantizer_per_channel_and_per_tensor():
    conv = _conv()
    w = conv.weight.detach()
    strat = get_strategy("minmax")
    q = strat.build_weight_quantizer(QuantSpec(8, per_channel=True), _ctx(conv))
    rows = w.flatten(1)
    bound = torch.maximum(-rows.min(1).values, rows.max(1).values)
    assert torch.allclose(q.scale, bound / 127, rtol=1e-6)
    assert q.strategy == "minmax"
    qt = strat.build_weight_quantizer(QuantSpec(8, per_channel=False), _ctx(conv))
    assert qt.scale.shape == ()
    assert float(qt.scale) == pytest.approx(float(w.abs().max()) / 127, rel=1e-6)


def test_minmax_activation_over_batches():
    batches = _batches(seed=1, n=4)
    st = _stats(batches)
    x = torch.cat(batches)
    lo, hi = get_strategy("minmax").act_range(st, QuantSpec(8), _ctx())
    assert lo == float(x.min()) and hi == float(x.max())
    q = get_strategy("minmax").build_act_quantizer(QuantSpec(8, signed=None), st, _ctx())
    assert q.spec.signed is True
    assert float(q.scale) == pytest.approx(float(x.abs().max()) / 127, rel=1e-6)
    # non-negative data resolves to the unsigned grid: step max/255
    st_relu = _stats(_batches(seed=1, n=4, relu=True))
    q = get_strategy("minmax").build_act_quantizer(QuantSpec(8, signed=None), st_relu, _ctx())
    assert q.spec.signed is False
    assert float(q.scale) == pytest.approx(st_relu.max / 255, rel=1e-6)


# -- percentile -----------------------------------------------------------------------------
@pytest.mark.parametrize("p", [99.0, 99.9, 90.0, 100.0])
def test_percentile_weight_symmetric(p):
    w = _weight_rows(seed=2)
    lo, hi = get_strategy("percentile", {"percentile": p}).weight_range(w, QuantSpec(4, per_channel=True), _ctx())
    ref = np.percentile(np.abs(w.double().numpy()), p, axis=1, method="linear")
    np.testing.assert_allclose(hi.numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(lo.numpy(), -ref, rtol=1e-5)


@pytest.mark.parametrize("p", [99.0, 95.0])
def test_percentile_weight_asymmetric(p):
    w = _weight_rows(seed=3)
    spec = QuantSpec(4, symmetric=False, per_channel=True)
    lo, hi = get_strategy("percentile", {"percentile": p}).weight_range(w, spec, _ctx())
    wn = w.double().numpy()
    np.testing.assert_allclose(hi.numpy(), np.percentile(wn, p, axis=1), rtol=1e-5)
    np.testing.assert_allclose(lo.numpy(), np.percentile(wn, 100 - p, axis=1), rtol=1e-5)


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99, 95.0])
def test_percentile_activation_symmetric(p):
    batches = _batches(seed=4, n=3)
    st = _stats(batches)
    lo, hi = get_strategy("percentile", {"percentile": p}).act_range(st, QuantSpec(8), _ctx())
    a = np.abs(torch.cat(batches).double().numpy())
    assert lo == -hi
    # the histogram percentile is the upper edge of the bin holding the exact (inverted-CDF) percentile
    exact = np.percentile(a, p, method="inverted_cdf")
    assert exact - 1e-9 <= hi <= exact + st.bin_width + 1e-9, (hi, exact, st.bin_width)
    if p <= 99.9:  # where the data is dense, also within a bin of the interpolated (torch) percentile
        assert abs(hi - np.percentile(a, p)) <= st.bin_width


@pytest.mark.parametrize("p", [99.0, 99.9])
def test_percentile_activation_asymmetric(p):
    g = _gen(5)
    batches = [torch.randn(4096, generator=g) * 2 + 1.5 for _ in range(3)]  # skewed: tails differ
    st = _stats(batches)
    lo, hi = get_strategy("percentile", {"percentile": p}).act_range(st, QuantSpec(8, symmetric=False), _ctx())
    x = torch.cat(batches).double().numpy()
    exact_hi = np.percentile(x, p, method="inverted_cdf")
    exact_lo = -np.percentile(-x, p, method="inverted_cdf")
    assert abs(hi - exact_hi) <= st.bin_width
    assert abs(lo - exact_lo) <= st.bin_width
    if p <= 99.0:
        assert abs(hi - np.percentile(x, p)) <= st.bin_width
        assert abs(lo - np.percentile(x, 100 - p)) <= st.bin_width


# -- mse --------------------------------------------------------------------------------------
def _np_best_factor(values, lo, hi, grid, bits, symmetric, signed, p, weights=None):
    values = np.asarray(values, dtype=np.float64)
    errs = []
    for f in grid:
        q = np_fake_quant(values, lo * f, hi * f, bits, symmetric, signed)
        e = np.abs(values - q) ** p
        errs.append(e.mean(1) if weights is None else (e * weights).sum(1) / weights.sum(1))
    errs = np.stack(errs)  # [grid, rows]
    return errs.argmin(0), errs


@pytest.mark.parametrize("bits,symmetric,p,grid,min_ratio", [
    (4, True, 2.0, 100, 0.05),
    (3, True, 2.0, 40, 0.2),
    (4, False, 2.0, 60, 0.1),
    (2, True, 1.0, 50, 0.05),
])
def test_mse_weight_brute_force(bits, symmetric, p, grid, min_ratio):
    w = _weight_rows(seed=6)
    spec = QuantSpec(bits, symmetric=symmetric, signed=True, per_channel=True)
    strat = get_strategy("mse", {"p": p, "grid": grid, "min_ratio": min_ratio})
    lo, hi = strat.weight_range(w, spec, _ctx())
    factors = torch.linspace(min_ratio, 1.0, grid).numpy().astype(np.float64)
    wlo, whi = w.min(1).values.double().numpy(), w.max(1).values.double().numpy()
    idx, errs = _np_best_factor(w.numpy(), wlo, whi, factors, bits, symmetric, True, p)
    best = factors[idx]
    np.testing.assert_allclose(lo.double().numpy(), wlo * best, atol=1e-6, rtol=0)
    np.testing.assert_allclose(hi.double().numpy(), whi * best, atol=1e-6, rtol=0)
    # the search really clips: at least one row does not keep the min/max range
    assert (best < 1).any()


@pytest.mark.parametrize("bits,relu", [(4, False), (3, True)])
def test_mse_activation_brute_force(bits, relu):
    st = _stats(_batches(seed=7, n=3, relu=relu), bins=512)
    spec = QuantSpec(bits, signed=None).resolved(st.nonnegative)
    strat = get_strategy("mse", {"grid": 50, "min_ratio": 0.1})
    lo, hi = strat.act_range(st, spec, _ctx())
    counts, centers = st.signed_hist()
    factors = shrink_grid(50, 0.1).double().numpy()
    idx, _ = _np_best_factor(centers.numpy()[None], np.array([st.min]), np.array([st.max]), factors,
                             bits, True, spec.signed, 2.0, counts.numpy()[None])
    assert hi == pytest.approx(st.max * factors[idx[0]], abs=1e-6)
    assert lo == pytest.approx(st.min * factors[idx[0]], abs=1e-6)
    assert factors[idx[0]] < 1


# -- kl ---------------------------------------------------------------------------------------
def kl_reference(hist, levels, stride=1):
    """Direct TensorRT-style entropy calibration for one histogram row."""
    hist = np.asarray(hist, dtype=np.float64)
    B = len(hist)
    best_i, best_kl, all_kl = None, np.inf, {}
    for i in range(levels, B + 1, stride):
        P = hist[:i].copy()
        P[i - 1] += hist[i:].sum()
        Q = np.zeros(i)
        group = (np.arange(i) * levels) // i
        for g in range(levels):
            members = group == g
            nz = members & (P > 0)
            if nz.any():
                Q[nz] = hist[:i][members].sum() / nz.sum()
        if Q.sum() == 0:
            kl = np.inf
        else:
            p, q = P / P.sum(), Q / Q.sum()
            m = p > 0
            kl = np.inf if (q[m] == 0).any() else float(np.sum(p[m] * np.log(p[m] / q[m])))
        all_kl[i] = kl
        if best_i is None or kl < best_kl:  # strict: the first candidate wins ties
            best_i, best_kl = i, kl
    return best_i, all_kl


def _kl_histograms(B, seed):
    rng = np.random.default_rng(seed)
    out = []
    # a decaying |activation|-like histogram with a sparse long tail
    h = np.floor(2000 * np.exp(-np.arange(B) / (B / 12)) + rng.poisson(0.3, B))
    out.append(h)
    # random counts with many empty bins
    h = rng.poisson(20, B).astype(float) * (rng.random(B) < 0.6)
    out.append(h)
    # a half-normal shaped histogram with empty bins around candidate boundaries
    h = np.floor(500 * np.exp(-(np.arange(B) / (B / 4)) ** 2)) + rng.integers(0, 3, B)
    h[B // 2: B // 2 + 5] = 0
    h[-8:-3] = 0
    out.append(h)
    # only a few non-empty bins
    h = np.zeros(B)
    h[rng.choice(B, 6, replace=False)] = rng.integers(1, 50, 6)
    out.append(h)
    return np.stack(out)


@pytest.mark.parametrize("levels,B,stride", [(8, 64, 1), (16, 128, 1), (128, 256, 1), (16, 160, 4), (8, 67, 3)])
def test_kl_threshold_matches_reference(levels, B, stride):
    hists = _kl_histograms(B, seed=levels * 1000 + B + stride)
    got = kl_threshold_bins(torch.tensor(hists), levels, stride)
    assert got.shape == (len(hists),)
    for r, h in enumerate(hists):
        ref_i, kls = kl_reference(h, levels, stride)
        g = int(got[r])
        assert g in kls, f"row {r}: candidate {g} is not on the stride grid"
        assert g == ref_i, (f"row {r}: library picks {g} (KL {kls[g]!r}), reference {ref_i} "
                            f"(KL {kls[ref_i]!r})")


def test_kl_threshold_chunking_does_not_change_result():
    hists = _kl_histograms(128, seed=11)
    full = kl_threshold_bins(torch.tensor(hists), 16)
    chunked = kl_threshold_bins(torch.tensor(hists), 16, chunk_elems=1)
    assert torch.equal(full, chunked)


def test_kl_rejects_too_few_bins():
    with pytest.raises(ValueError):
        kl_threshold_bins(torch.ones(1, 64), 128)


def test_kl_activation_range_uses_threshold_bins():
    st = _stats(_batches(seed=8, n=2), bins=512)
    _, hi = get_strategy("kl").act_range(st, QuantSpec(4), _ctx())
    i, _ = kl_reference(st.abs_hist().numpy(), 8)
    assert hi == pytest.approx(i * st.bin_width, rel=1e-9)


# -- aciq -------------------------------------------------------------------------------------
LAPLACE = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.20, 6: 7.41, 7: 8.64, 8: 9.89}
GAUSS = {2: 1.71, 3: 2.15, 4: 2.55, 5: 2.94, 6: 3.29, 7: 3.61, 8: 3.92}


@pytest.mark.parametrize("bits", range(BIT_MIN, BIT_MAX + 1))
def test_aciq_published_tables(bits):
    one = torch.tensor(1.0, dtype=torch.float64)
    assert float(optimal_clip(one, bits, "laplace")) == pytest.approx(LAPLACE[bits], abs=0.02)
    assert float(optimal_clip(one, bits, "gaussian")) == pytest.approx(GAUSS[bits], abs=0.02)
    # linear in the scale
    assert float(optimal_clip(3.0 * one, bits, "laplace")) == pytest.approx(3 * LAPLACE[bits], abs=0.06)


def test_aciq_one_sided_exponential_is_near_mse_optimal():
    """For exponential data the one-sided clip is (close to) the empirical MSE optimum."""
    g = _gen(9)
    x = torch.empty(100_000).exponential_(generator=g)
    bits = 4
    n = 2 ** bits - 1

    def err(a):
        s = a / n
        return float(((x - torch.clamp(torch.round(x / s), 0, n) * s) ** 2).mean())

    alpha = float(optimal_clip(torch.tensor(1.0, dtype=torch.float64), bits, "laplace", one_sided=True))
    best = min(err(float(a)) for a in np.linspace(3.0, 9.0, 61))
    assert err(alpha) <= 1.02 * best


@pytest.mark.parametrize("prior", ["laplace", "gaussian"])
def test_aciq_weight_range_shrinks_with_fewer_bits(prior):
    g = _gen(10)
    torch.manual_seed(10)
    w = torch.distributions.Laplace(0.0, 1.0).sample((4, 4096)) if prior == "laplace" else \
        torch.randn(4, 4096, generator=g)
    strat = get_strategy("aciq", {"prior": prior})
    ts = []
    for bits in range(BIT_MIN, BIT_MAX + 1):
        _, hi = strat.weight_range(w, QuantSpec(bits, per_channel=True), _ctx())
        ts.append(hi)
    ts = torch.stack(ts)  # [bits, rows]
    assert (ts[1:] >= ts[:-1]).all()
    assert (ts[0] < ts[3]).all()  # 2 bit strictly tighter than 5 bit
    assert (ts[-1] <= w.abs().max(1).values + 1e-6).all()  # never beyond min/max


def test_aciq_activation_laplace_clip():
    torch.manual_seed(11)
    x = torch.distributions.Laplace(0.0, 0.5).sample((3, 20000))
    st = _stats(list(x))
    lo, hi = get_strategy("aciq").act_range(st, QuantSpec(4), _ctx())
    # b estimated from the histogram: alpha = 5.03 b (+|mean|)
    assert hi == pytest.approx(5.03 * 0.5, rel=0.05)
    assert lo == -hi


# -- easyquant ------------------------------------------------------------------------------
def _cos(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()))


def _fq_torch64(x, lo, hi, spec):
    out = np_fake_quant(x.double().reshape(1, -1).numpy(), np.array([lo]), np.array([hi]), spec.bits,
                        spec.symmetric, spec.signed)
    return torch.from_numpy(out).reshape(x.shape)


@pytest.mark.parametrize("relu,bits", [(False, 4), (True, 3), (False, 2)])
def test_easyquant_activation_is_argmax_of_cosine(relu, bits):
    conv = _conv(seed=12)
    g = _gen(12)
    x = torch.randn(4, 4, 8, 8, generator=g)
    x[0, 1, 2, 3] = 9.0
    x[2, 0, 5, 5] = -7.0 if not relu else 8.0
    if relu:
        x = x.clamp_min(0)
    st = _stats([x])
    spec = QuantSpec(bits, signed=None).resolved(st.nonnegative)
    strat = get_strategy("easyquant", {"grid": 30, "min_ratio": 0.3})
    lo, hi = strat.act_range(st, spec, _ctx(conv, x))
    w64, b64 = conv.weight.detach().double(), conv.bias.detach().double()
    ref = F.conv2d(x.double(), w64, b64, padding=1)

    def score(a, b):
        return _cos(F.conv2d(_fq_torch64(x, a, b, spec), w64, b64, padding=1), ref)

    chosen = score(lo, hi)
    grid = torch.linspace(0.3, 1.0, 30).tolist()
    scores = [score(st.min * f, st.max * f) for f in grid]
    assert chosen >= score(st.min, st.max) - 1e-7
    assert chosen >= max(scores) - 1e-7
    # the chosen range is one of the grid ranges
    f = hi / st.max
    assert min(abs(f - v) for v in grid) < 1e-6
    assert f < 1  # clipping the outliers helps at these bit widths


def test_easyquant_weight_is_argmax_per_channel():
    conv = _conv(seed=13)
    x = torch.randn(4, 4, 8, 8, generator=_gen(13))
    spec = QuantSpec(3, per_channel=True)
    strat = get_strategy("easyquant", {"grid": 20, "min_ratio": 0.4})
    w = conv.weight.detach()
    rows = w.flatten(1)
    lo, hi = strat.weight_range(rows, spec, _ctx(conv, x))
    b64 = conv.bias.detach().double()
    ref = F.conv2d(x.double(), w.double(), b64, padding=1)
    rlo, rhi = rows.min(1).values.double().numpy(), rows.max(1).values.double().numpy()
    grid = torch.linspace(0.4, 1.0, 20).double().numpy()

    def per_channel_cos(lo_, hi_):
        wq = torch.from_numpy(np_fake_quant(rows.double().numpy(), lo_, hi_, 3, True, True)).reshape(w.shape)
        y = F.conv2d(x.double(), wq, b64, padding=1)
        return np.array([_cos(y[:, c], ref[:, c]) for c in range(w.shape[0])])

    chosen = per_channel_cos(lo.double().numpy(), hi.double().numpy())
    all_scores = np.stack([per_channel_cos(rlo * f, rhi * f) for f in grid])
    assert (chosen >= all_scores.max(0) - 1e-7).all()


def test_easyquant_without_samples_fails_clearly():
    with pytest.raises(RuntimeError, match="samples"):
        get_strategy("easyquant").build_act_quantizer(QuantSpec(8, signed=None), _stats(_batches(n=1)),
                                                      _ctx(samples=None))


# -- registry -------------------------------------------------------------------------------
def test_registry_names():
    names = strategy_names("ptq")
    for n in SIX:
        assert n in names
    assert names == sorted(names)
    assert not set(SIX) & set(strategy_names("qat"))


@pytest.mark.parametrize("name", PTQ)
def test_registered_ptq_strategy(name):
    s = get_strategy(name)
    assert isinstance(s, Strategy) and s.name == name and s.kind == "ptq"


def test_unknown_strategy_lists_registered():
    with pytest.raises(KeyError) as e:
        get_strategy("nope")
    msg = str(e.value)
    assert "nope" in msg
    for n in strategy_names():
        assert n in msg


@pytest.mark.parametrize("name,options,valid", [
    ("percentile", {"pct": 99}, ["percentile"]),
    ("mse", {"bits": 4}, ["p", "grid", "min_ratio"]),
    ("minmax", {"x": 1}, []),
])
def test_unknown_option(name, options, valid):
    with pytest.raises(ValueError) as e:
        get_strategy(name, options)
    msg = str(e.value)
    assert list(options)[0] in msg
    for v in valid:
        assert v in msg


@pytest.mark.parametrize("name,options", [
    ("percentile", {"percentile": 30}),
    ("percentile", {"percentile": 100.5}),
    ("mse", {"p": -1}),
    ("mse", {"grid": 1}),
    ("aciq", {"prior": "cauchy"}),
    ("kl", {"weight_bins": 100}),
    ("easyquant", {"min_ratio": 1.5}),
])
def test_bad_option_values(name, options):
    with pytest.raises(ValueError):
        get_strategy(name, options)


def test_duplicate_registration_rejected():
    before = dict(STRATEGIES)

    class Other(Strategy):
        pass

    with pytest.raises(ValueError, match="twice"):
        register_strategy("minmax")(Other)
    with pytest.raises(ValueError, match="reserved"):
        register_strategy("fp32")(Other)
    with pytest.raises(ValueError):
        register_strategy("other_kind_test", kind="bogus")
    # re-registering the same class is harmless
    register_strategy("minmax")(STRATEGIES["minmax"])
    assert STRATEGIES == before


# -- ActStats -------------------------------------------------------------------------------
def test_stats_moments():
    batches = _batches(seed=14, n=4)
    st = _stats(batches, bins=128)
    x = torch.cat(batches).double().numpy()
    assert st.count == x.size
    assert st.min == x.min() and st.max == x.max()
    assert st.mean == pytest.approx(x.mean(), abs=1e-9)
    assert st.std == pytest.approx(x.std(), rel=1e-9)
    assert not st.nonnegative
    assert _stats(_batches(seed=14, n=2, relu=True)).nonnegative


def test_histogram_doubling_keeps_all_counts():
    batches = _batches(seed=15, n=4)  # scale grows 1, 3, 5, 7: the range doubles twice
    st = _stats(batches, bins=64)
    x = torch.cat(batches)
    assert st.hist_max >= float(x.abs().max())
    ratio = st.hist_max / (float(batches[0].abs().max()) * (1 + 2 ** -12))
    assert any(abs(ratio - k) < 1e-9 for k in (2.0, 4.0, 8.0))  # it did double
    assert float(st.abs_hist().sum()) == x.numel()
    assert float(st.hist_pos.sum()) == int((x >= 0).sum())
    assert float(st.hist_neg.sum()) == int((x < 0).sum())


def test_histogram_without_doubling_matches_numpy():
    batches = _batches(seed=16, n=3, growing=False)
    batches[0][0] = 10.0  # the first batch fixes the range, later ones stay inside
    st = _stats(batches, bins=64)
    assert st.hist_max == pytest.approx(10.0 * (1 + 2 ** -12), rel=1e-12)
    a = torch.cat(batches).abs().double().numpy()
    ref, _ = np.histogram(a, bins=64, range=(0.0, st.hist_max))
    np.testing.assert_array_equal(st.abs_hist().numpy(), ref)


def test_histogram_doubling_close_to_numpy():
    """Whatever happens at the bin edges, merging keeps every element within one bin of its place."""
    batches = _batches(seed=17, n=4)
    st = _stats(batches, bins=64)
    a = torch.cat(batches).abs().double().numpy()
    ref, _ = np.histogram(a, bins=64, range=(0.0, st.hist_max))
    got = st.abs_hist().numpy()
    assert np.abs(np.cumsum(got) - np.cumsum(ref)).max() <= 1
    assert np.abs(got - ref).sum() <= 2


def test_histogram_doubling_matches_numpy():
    """After the range doubles, counts equal a histogram of all data over the final range.

    Guards the edge case where a value equal to the initial range end would land in the
    last bin and, after merging, in the wrong half of the doubled range.
    """
    batches = _batches(seed=17, n=4)
    st = _stats(batches, bins=64)
    a = torch.cat(batches).abs().double().numpy()
    ref, _ = np.histogram(a, bins=64, range=(0.0, st.hist_max))
    diff = np.nonzero(st.abs_hist().numpy() - ref)[0]
    assert diff.size == 0, (f"bins {diff.tolist()} differ: ActStats {st.abs_hist().numpy()[diff].tolist()} "
                            f"vs numpy {ref[diff].tolist()}; first batch max |x| = "
                            f"{float(batches[0].abs().max())}, final hist_max = {st.hist_max}")


def test_stats_state_round_trip(tmp_path):
    x = torch.randn(2, 3, 4, 4, generator=_gen(18))
    st = _stats(_batches(seed=18, n=3), bins=256)
    st.samples = [x[:1], x[1:]]
    back = ActStats.from_state(st.state())
    for k in ("bins", "hist_max", "min", "max", "count", "sum", "sum_sq"):
        assert getattr(back, k) == getattr(st, k), k
    assert torch.equal(back.hist_pos, st.hist_pos) and torch.equal(back.hist_neg, st.hist_neg)
    assert torch.equal(torch.cat(back.samples), x)
    save_stats({"a": st, "b": ActStats.from_state(_stats(_batches(seed=19, n=1)).state())}, tmp_path / "s.pt")
    loaded = load_stats(tmp_path / "s.pt")
    assert set(loaded) == {"a", "b"}
    assert torch.equal(loaded["a"].abs_hist(), st.abs_hist()) and loaded["a"].mean == st.mean
    assert loaded["b"].samples == []
    # a restored object keeps accumulating exactly like the original
    more = torch.randn(1000, generator=_gen(20)) * 30
    back.update(more)
    st.update(more)
    assert torch.equal(back.abs_hist(), st.abs_hist()) and back.hist_max == st.hist_max


def test_load_stats_corrupt_file(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_text("not a torch file")
    with pytest.raises(RuntimeError, match="rerun"):
        load_stats(p)


def test_collect_act_stats_hooks_inputs():
    torch.manual_seed(21)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    batches = [torch.randn(3, 3, 8, 8, generator=_gen(21 + i)) for i in range(3)]
    layers = {"0": model[0], "3": model[3]}
    stats = collect_act_stats(model, layers, batches, bins=128, n_samples=4)
    assert set(stats) == {"0", "3"}
    x = torch.cat(batches)
    assert stats["0"].count == x.numel() and stats["0"].max == float(x.max())
    with torch.no_grad():
        h = torch.relu(model[0](x)).flatten(1)
    assert stats["3"].count == h.numel() and stats["3"].nonnegative
    assert stats["3"].max == pytest.approx(float(h.max()), rel=1e-6)
    s = torch.cat(stats["0"].samples)
    assert s.shape[0] == 4 and torch.equal(s, x[:4])
    # hooks are removed afterwards
    assert not model[0]._forward_pre_hooks and not model[3]._forward_pre_hooks


def test_stats_reject_non_finite():
    st = ActStats(bins=16)
    with pytest.raises(FloatingPointError):
        st.update(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("n", PTQ)
def test_all_strategies_build_quantizers(n):
    conv = _conv(seed=22)
    x = torch.randn(2, 4, 8, 8, generator=_gen(22))
    st = _stats([x])
    st.samples = [x]
    ctx = _ctx(conv, x)
    s = get_strategy(n)
    wq = s.build_weight_quantizer(QuantSpec(4, per_channel=True), ctx)
    aq = s.build_act_quantizer(QuantSpec(4, signed=None), st, ctx)
    assert wq.strategy == n and aq.strategy == n
    assert wq.scale.shape == (8,) and aq.scale.shape == ()
    assert torch.isfinite(wq(conv.weight)).all() and torch.isfinite(aq(x)).all()
    # a range never exceeds min/max (up to the grid's asymmetry)
    lo_a, hi_a = (float(v) for v in aq.range)
    assert hi_a <= max(abs(st.min), abs(st.max)) * (1 + 1e-5) + 1e-6, n
