"""Each range strategy checked against an independent computation, the registry, ActStats."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.aciq import optimal_clip
from baselines.kl import kl_divergences, kl_threshold_bins, weight_hist, without_zero_spike
from dqss.options import BIT_MAX, BIT_MIN
from dqss.core.quant import QuantSpec
from dqss.core.stats import ActStats, collect_act_stats, hist_bins, load_stats, save_stats
from dqss.core.strategy import (STRATEGIES, LayerContext, Strategy, get_strategy, register_strategy,
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
    return ActStats.of(batches, bins=bins)


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
def _resnet_like(shape, seed=0, outliers=True):
    """Kaiming-scaled conv weights of a real shape, each output channel with its own scale and a few outliers."""
    g = _gen(seed)
    fan_in = int(np.prod(shape[1:]))
    w = torch.randn(*shape, generator=g) * (2.0 / fan_in) ** 0.5
    w = w * torch.exp(0.5 * torch.randn(shape[0], *[1] * (len(shape) - 1), generator=g))
    if outliers:
        rows = w.view(shape[0], -1)
        idx = torch.randint(0, rows.shape[1], (shape[0], 2), generator=g)
        rows.scatter_(1, idx, rows.gather(1, idx) * 6)
    return w


def _weight_cases():
    g = _gen(40)
    return {
        "gaussian": torch.randn(32, 1000, generator=g) * torch.linspace(0.1, 2.0, 32)[:, None],
        "laplace": torch.distributions.Laplace(0.0, 1.0).sample((32, 1000)),
        "conv_64x3x7x7": _resnet_like((64, 3, 7, 7), seed=41).flatten(1),
        "conv_512x512x3x3": _resnet_like((512, 512, 3, 3), seed=42).flatten(1)[:12],  # 12 rows, to keep it short
    }


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99, 90.0, 100.0, 75.3])
@pytest.mark.parametrize("case", ["gaussian", "laplace", "conv_64x3x7x7", "conv_512x512x3x3"])
def test_percentile_weight_is_inverted_cdf(p, case):
    """Weights: exactly numpy's inverted-CDF quantile (|w| for a symmetric grid; each tail for an asymmetric one)."""
    torch.manual_seed(43)
    w = _weight_cases()[case]
    strat = get_strategy("percentile", {"percentile": p})
    wn = w.double().numpy()
    lo, hi = strat.weight_range(w, QuantSpec(8, per_channel=True), _ctx())
    ref = np.quantile(np.abs(wn), p / 100, axis=1, method="inverted_cdf")
    np.testing.assert_array_equal(hi.double().numpy(), ref)
    np.testing.assert_array_equal(lo.double().numpy(), -ref)
    lo, hi = strat.weight_range(w, QuantSpec(8, symmetric=False, per_channel=True), _ctx())
    np.testing.assert_array_equal(hi.double().numpy(), np.quantile(wn, p / 100, axis=1, method="inverted_cdf"))
    np.testing.assert_array_equal(lo.double().numpy(), -np.quantile(-wn, p / 100, axis=1, method="inverted_cdf"))
    if p < 100:  # not the linear interpolation of torch.quantile (the old weight rule) where they differ
        lin = np.quantile(np.abs(wn), p / 100, axis=1)
        assert np.isin(hi.double().numpy(), wn).all()  # always an observed value
        assert (lin != ref).any()


def _activation_sample(dist: str, seed: int) -> torch.Tensor:
    """Three batches of 20,000 activations: Gaussian, Laplace, ReLU'd Gaussian, or Student-t (3 dof)
    with five outliers at 60."""
    torch.manual_seed(seed)
    if dist == "student_t":
        x = torch.distributions.StudentT(3.0).sample((3, 20000))
        x[0, :5] = 60.0
    elif dist == "laplace":
        x = torch.distributions.Laplace(0.0, 1.0).sample((3, 20000))
    else:
        x = torch.randn(3, 20000, generator=_gen(seed))
        if dist == "relu":
            x = x.clamp_min(0)
    return x


@pytest.mark.parametrize("dist", ["gaussian", "laplace", "relu", "student_t"])
@pytest.mark.parametrize("p", [99.0, 99.99])
def test_percentile_activation_within_a_bin_of_inverted_cdf(dist, p):
    """Activations: the same definition at bin resolution, never below it and at most one bin above."""
    x = _activation_sample(dist, 44)
    st = _stats(list(x))
    strat = get_strategy("percentile", {"percentile": p})
    a = x.double().numpy().ravel()
    _, hi = strat.act_range(st, QuantSpec(8, signed=not st.nonnegative), _ctx())
    exact = np.quantile(np.abs(a), p / 100, method="inverted_cdf")
    assert exact - 1e-9 <= hi <= exact + st.bin_width + 1e-9
    lo, hi = strat.act_range(st, QuantSpec(8, symmetric=False), _ctx())
    exact_hi = np.quantile(a, p / 100, method="inverted_cdf")
    exact_lo = -np.quantile(-a, p / 100, method="inverted_cdf")
    assert exact_hi - 1e-9 <= hi <= exact_hi + st.bin_width + 1e-9
    assert exact_lo - st.bin_width - 1e-9 <= lo <= exact_lo + 1e-9


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
    # (numpy's default, linearly interpolated percentile can differ from the data's own by more than a
    # bin in the sparse tail: 123 values lie below the 1st percentile of 12288)


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
    """The grid stage (refine: 0) picks exactly the best factor of the grid."""
    w = _weight_rows(seed=6)
    spec = QuantSpec(bits, symmetric=symmetric, signed=True, per_channel=True)
    strat = get_strategy("mse", {"p": p, "grid": grid, "min_ratio": min_ratio, "refine": 0})
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
    strat = get_strategy("mse", {"grid": 50, "min_ratio": 0.1, "refine": 0})
    lo, hi = strat.act_range(st, spec, _ctx())
    counts, centers = st.signed_hist()
    factors = shrink_grid(50, 0.1).double().numpy()
    idx, _ = _np_best_factor(centers.numpy()[None], np.array([st.min]), np.array([st.max]), factors,
                             bits, True, spec.signed, 2.0, counts.numpy()[None])
    assert hi == pytest.approx(st.max * factors[idx[0]], abs=1e-6)
    assert lo == pytest.approx(st.min * factors[idx[0]], abs=1e-6)
    assert factors[idx[0]] < 1


def _np_brute_force_mse(values, lo, hi, bits, symmetric, signed, weights=None, n=5000, min_ratio=0.05):
    """Per row, the smallest MSE over ``n`` evenly spaced shrink factors of (lo, hi), in float64."""
    best = np.full(len(values), np.inf)
    for f in np.linspace(min_ratio, 1.0, n):
        e = (values - np_fake_quant(values, lo * f, hi * f, bits, symmetric, signed)) ** 2
        best = np.minimum(best, e.mean(1) if weights is None else (e * weights).sum(1) / weights.sum(1))
    return best


def _np_mse_of(values, lo, hi, bits, symmetric, signed, weights=None):
    e = (values - np_fake_quant(values, lo, hi, bits, symmetric, signed)) ** 2
    return e.mean(1) if weights is None else (e * weights).sum(1) / weights.sum(1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("case", ["gaussian", "laplace", "conv_64x3x7x7", "conv_512x512x3x3"])
def test_mse_weight_within_0p2_percent_of_brute_force_at_8_bit(case, symmetric):
    torch.manual_seed(51)
    w = _weight_cases()[case]
    wn = w.double().numpy()
    spec = QuantSpec(8, symmetric=symmetric, signed=True, per_channel=True)
    lo, hi = get_strategy("mse").weight_range(w, spec, _ctx())
    got = _np_mse_of(wn, lo.double().numpy(), hi.double().numpy(), 8, symmetric, True)
    ref = _np_brute_force_mse(wn, wn.min(1), wn.max(1), 8, symmetric, True)
    assert (got <= 1.002 * ref).all(), f"worst row {np.max(got / ref):.5f} x the brute-force optimum"
    if case == "conv_64x3x7x7":  # the 100-point grid alone is not enough (what the refinement is for)
        lo, hi = get_strategy("mse", {"refine": 0}).weight_range(w, spec, _ctx())
        grid_only = _np_mse_of(wn, lo.double().numpy(), hi.double().numpy(), 8, symmetric, True)
        assert np.max(grid_only / ref) > 1.002


@pytest.mark.parametrize("dist", ["gaussian", "laplace", "relu", "student_t"])
def test_mse_activation_within_0p2_percent_of_brute_force_at_8_bit(dist):
    x = _activation_sample(dist, 52)
    st = _stats(list(x))
    spec = QuantSpec(8, signed=None).resolved(st.nonnegative)
    lo, hi = get_strategy("mse").act_range(st, spec, _ctx())
    counts, centers = (t.numpy()[None] for t in st.signed_hist())
    got = _np_mse_of(centers, [lo], [hi], 8, True, spec.signed, counts)
    ref = _np_brute_force_mse(centers, np.array([st.min]), np.array([st.max]), 8, True, spec.signed, counts)
    assert got[0] <= 1.002 * ref[0], got[0] / ref[0]


# -- kl ---------------------------------------------------------------------------------------
def kl_reference(hist, levels, stride=1, start=128, full_range=False):
    """NVIDIA's entropy calibration (pytorch-quantization ``_compute_amax_entropy``) for one
    histogram row, written directly in float64: the zero bin flattened (bins[0] = bins[1]);
    for each candidate i, P = bins[:i] with sum(bins[i:]) added to P[i-1]; Q = bins[:i]
    grouped by np.digitize over np.linspace(0, i, levels + 1), each group's sum spread evenly
    over its non-empty bins; KL with scipy's conventions (0 where P = 0, inf where P > 0 = Q).
    Returns NVIDIA's pick (the last argmin) and every candidate's KL.  ``full_range`` adds the
    candidate i = B when the stride misses it (the library's documented departure); a Q of
    all zeros is inf here (NVIDIA's code gets NaN)."""
    bins = np.array(hist, dtype=np.float64)
    bins[0] = bins[1]
    B = len(bins)
    cands = list(range(start, B + 1, stride))
    if full_range and cands[-1] != B:
        cands.append(B)
    kls = {}
    for i in cands:
        group = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        nonempty = bins[:i] > 0
        g = group[nonempty]
        group_sum = np.bincount(g, weights=bins[:i][nonempty], minlength=levels)
        group_nonempty = np.bincount(g, minlength=levels)
        q = np.zeros(i)
        q[nonempty] = group_sum[g] / group_nonempty[g]
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        if q.sum() == 0:
            kls[i] = np.inf
            continue
        P, Q = p / p.sum(), q / q.sum()
        m = P > 0
        kls[i] = np.inf if (Q[m] == 0).any() else float(np.sum(P[m] * np.log(P[m] / Q[m])))
    values = np.array([kls[i] for i in cands])
    return cands[len(cands) - 1 - int(np.argmin(values[::-1]))], kls


def assert_kl_pick(got, ref_i, kls, where=""):
    """The library's pick is NVIDIA's, up to its documented tie rule: candidates within 1e-10
    of the minimum tie and the largest of them wins."""
    best = min(kls.values())
    tied = [i for i, v in kls.items() if v <= best + 1e-10]
    assert got == max(tied), (f"{where}: library picks {got} (KL {kls.get(got)!r}), NVIDIA's rule {ref_i} "
                              f"(KL {kls[ref_i]!r}), ties {tied}")
    assert ref_i in tied


def _abs_hist_np(x, bins=2048):
    """|x| histogrammed over [0, max|x| (1 + 2**-12)] with numpy in float64."""
    a = np.abs(np.asarray(x, dtype=np.float64)).ravel()
    top = a.max() * (1 + 2 ** -12)
    return np.histogram(a, bins=bins, range=(0.0, top))[0].astype(np.float64), top


def _realistic(kind, n, seed):
    """Activation-like float32 tensors: Gaussian, Laplace, ReLU'd Gaussian, Student-t with outliers."""
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        x = rng.standard_normal(n)
    elif kind == "laplace":
        x = rng.laplace(size=n)
    elif kind == "relu":
        x = np.maximum(rng.standard_normal(n) * 1.5 + 0.2, 0.0)
    elif kind == "student":  # a sparse tail: many empty bins between the bulk and the outliers
        x = rng.standard_t(3, n)
        x[rng.choice(n, 5, replace=False)] *= 40
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def _resnet_like(shape, seed):
    """Kaiming-normal conv weights with a few outliers per layer, like a trained resnet18's."""
    g = _gen(seed)
    w = torch.randn(*shape, generator=g) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
    w.view(-1)[torch.randperm(w.numel(), generator=g)[:max(2, w.numel() // 5000)]] *= 6
    return w


def _kl_histograms(B, seed):
    rng = np.random.default_rng(seed)
    out = []
    # a decaying |activation|-like histogram with a sparse long tail
    out.append(np.floor(2000 * np.exp(-np.arange(B) / (B / 12)) + rng.poisson(0.3, B)))
    # random counts with many empty bins
    out.append(rng.poisson(20, B).astype(float) * (rng.random(B) < 0.6))
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


@pytest.mark.parametrize("levels,B,stride", [(8, 64, 1), (16, 128, 1), (128, 256, 1), (16, 160, 4), (8, 68, 4)])
def test_kl_threshold_matches_reference(levels, B, stride):
    hists = _kl_histograms(B, seed=levels * 1000 + B + stride)
    got = kl_threshold_bins(without_zero_spike(torch.tensor(hists)), levels, stride)
    assert got.shape == (len(hists),)
    for r, h in enumerate(hists):
        ref_i, kls = kl_reference(h, levels, stride, start=min(levels, 128))
        assert_kl_pick(int(got[r]), ref_i, kls, f"row {r}")


def test_kl_rows_do_not_depend_on_the_chunk():
    """Rows are scored in chunks that stay in the CPU's cache: every chunk size gives each row's KL values and
    pick bit for bit (so the chunk size is a speed setting, never a result setting)."""
    w = torch.randn(37, 300, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.1, 2, 37)[:, None]
    hist = without_zero_spike(weight_hist(w, 512)[0])
    cand = torch.arange(128, 513, 4)
    whole = kl_divergences(hist, cand, 128)
    assert torch.equal(torch.cat([kl_divergences(hist[r:r + 5], cand, 128) for r in range(0, 37, 5)]), whole)
    picks = [kl_threshold_bins(hist, 128, 4, chunk_elems=c) for c in (1, 1 << 14, 1 << 18, 1 << 30)]
    assert all(torch.equal(p, picks[0]) for p in picks[1:])


@pytest.mark.parametrize("kind", ["gauss", "laplace", "relu", "student"])
@pytest.mark.parametrize("levels", [128, 256, 8])  # 8 bit signed, 8 bit unsigned (start 128 < levels), 4 bit
def test_kl_divergences_equal_reference_on_activation_histograms(kind, levels):
    """Every candidate's KL (finite and infinite alike) equals the direct rule on 2048-bin histograms of
    realistic tensors, and the pick is NVIDIA's."""
    h, _ = _abs_hist_np(_realistic(kind, 200_000, seed=levels + len(kind)))
    if kind == "student":
        assert (h[:-1] == 0).sum() > 1000  # most bins empty: the inf case does occur
    ref_i, kls = kl_reference(h, levels, start=min(levels, 128))
    hist = without_zero_spike(torch.tensor(h)[None])
    cand = torch.tensor(sorted(kls))
    got = kl_divergences(hist, cand, levels)[0].numpy()
    ref = np.array([kls[int(i)] for i in cand])
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-9, atol=1e-12)
    if kind == "student":
        assert np.isinf(ref).any()
    assert_kl_pick(int(kl_threshold_bins(hist, levels)[0]), ref_i, kls, kind)


def test_kl_never_picks_an_empty_last_bin_with_outliers():
    """The finding this rule fixes: a candidate whose last kept bin is empty while values lie beyond it
    is infinite, so it never wins, though folding the outliers into Q as well (the former rule) made
    such candidates the best on sparse tails."""
    hists = []
    for seed in range(6):
        h, _ = _abs_hist_np(_realistic("student", 20_000, seed=100 + seed))
        hists.append(h)
    hists = without_zero_spike(torch.tensor(np.stack(hists)))
    for levels in (128, 8):
        picks = kl_threshold_bins(hists, levels)
        for h, i in zip(hists, picks.tolist()):
            assert h[i - 1] > 0 or h[i:].sum() == 0, (levels, i)
            ref_i, kls = kl_reference(h.numpy(), levels, start=min(levels, 128))
            assert_kl_pick(i, ref_i, kls)
    # a hand-made case: bins 0..9 hold the bulk, bin 12 is empty, one outlier sits in bin 15
    h = torch.zeros(1, 16, dtype=torch.float64)
    h[0, :10] = torch.tensor([50., 50, 40, 30, 20, 10, 5, 3, 2, 1])
    h[0, 15] = 1
    kl = kl_divergences(h, torch.arange(8, 17), 8)[0]
    assert torch.isinf(kl[torch.arange(8, 17) == 13]).all()
    _, kls = kl_reference(h[0].numpy(), 8, start=8)
    assert kls[13] == np.inf and kls[11] == np.inf and np.isfinite(kls[10])


def test_kl_weights_match_reference_on_resnet_like_convs():
    """Per-channel KL of conv weights equals NVIDIA's rule on numpy histograms of each channel's |w|
    over [0, max|w|] (512 bins, stride 4, the threshold the bin edge, never above max|w|)."""
    strat = get_strategy("kl")
    for shape, bits, rows in (((64, 3, 7, 7), 8, 64), ((64, 3, 7, 7), 4, 64), ((512, 512, 3, 3), 8, 24)):
        w = _resnet_like(shape, seed=sum(shape) + bits).flatten(1)
        lo, hi = strat.weight_range(w, QuantSpec(bits, per_channel=True), _ctx())
        assert torch.equal(lo, -hi)
        wn = np.abs(w.double().numpy())
        levels = 2 ** (bits - 1)
        for r in np.linspace(0, w.shape[0] - 1, rows).astype(int):
            amax = wn[r].max()
            h, edges = np.histogram(wn[r], bins=512, range=(0.0, amax))
            ref_i, kls = kl_reference(h, levels, stride=4, start=min(levels, 128), full_range=True)
            i = int(round(float(hi[r]) / amax * 512))
            assert_kl_pick(i, ref_i, kls, f"{shape} row {r}")
            assert float(hi[r]) == pytest.approx(edges[i], rel=1e-6)
            assert float(hi[r]) <= np.float32(amax)


def test_kl_weight_histogram_is_numpys():
    w = _resnet_like((64, 3, 7, 7), seed=5).flatten(1)
    hist, amax = weight_hist(w, 512)
    for r in range(w.shape[0]):
        a = np.abs(w[r].double().numpy())
        np.testing.assert_array_equal(hist[r].numpy(), np.histogram(a, bins=512, range=(0.0, a.max()))[0])
        assert float(amax[r]) == a.max()


def test_kl_activation_range_matches_reference_and_is_capped():
    for kind, spec in (("laplace", QuantSpec(4)), ("relu", QuantSpec(8, signed=False)), ("gauss", QuantSpec(8))):
        x = _realistic(kind, 100_000, seed=7)
        st = ActStats.of(torch.from_numpy(x).split(25_000), bins=2048)
        h, top = _abs_hist_np(x)
        assert st.hist_max == top
        lo, hi = get_strategy("kl").act_range(st, spec, _ctx())
        levels = 2 ** spec.bits if spec.signed is False else 2 ** (spec.bits - 1)
        ref_i, kls = kl_reference(h, levels, start=min(levels, 128))
        i = int(round(hi / (top / 2048)))
        assert_kl_pick(i, ref_i, kls, kind)
        assert hi == pytest.approx(min(np.linspace(0, top, 2049)[i], np.abs(x).max()), rel=1e-12)
        assert lo == -hi
    # a flat histogram keeps the full range, which is capped at max|x|, not the histogram's end
    x = torch.linspace(-1.0, 3.0, 50_001)
    st = ActStats.of([x], bins=2048)
    _, hi = get_strategy("kl").act_range(st, QuantSpec(8), _ctx())
    assert st.hist_max > 3.0 and hi == 3.0


def test_kl_start_bin_departure_below_8_bit():
    """Below 8 bit, candidates start at the level count, not NVIDIA's bin 128: on a heavy tail the
    4-bit threshold lies below 128 bins, which NVIDIA's rule cannot pick."""
    x = np.concatenate([_realistic("laplace", 100_000, seed=9), np.float32([150.0, -140.0])])
    h, _ = _abs_hist_np(x)
    i = int(kl_threshold_bins(without_zero_spike(torch.tensor(h)[None]), 8)[0])
    ref_i, kls = kl_reference(h, 8, start=8)
    assert_kl_pick(i, ref_i, kls)
    assert i < 128
    nvidia_i, _ = kl_reference(h, 8, start=128)
    assert nvidia_i >= 128
    # at 8 bit the start is NVIDIA's bin 128, for the unsigned grid (256 levels) too
    assert int(kl_threshold_bins(torch.tensor(h)[None], 256, start=None)[0]) >= 128
    with pytest.raises(ValueError):
        kl_threshold_bins(torch.ones(1, 100), 256)


def test_kl_full_range_candidate_departure_with_stride():
    """Every strided candidate ends on an empty bin with a value beyond it (all infinite under NVIDIA's
    rule); the full range, always a candidate here, wins."""
    h = np.zeros(67)
    h[[1, 2, 3, 5]] = [10, 8, 6, 3]
    h[66] = 2
    _, kls = kl_reference(h, 8, stride=3, start=8)
    assert all(v == np.inf for v in kls.values())
    assert int(kl_threshold_bins(without_zero_spike(torch.tensor(h)[None]), 8, 3)[0]) == 67


def test_kl_ties_pick_the_largest_threshold():
    """Exact ties of the rule (KL = 0 for every candidate whose groups each hold one non-empty bin) go
    to the largest threshold, as NVIDIA's last argmin does, however the prefix sums round."""
    h = np.zeros(256)
    h[[1, 40, 90, 200]] = [7, 3, 5, 2]
    ref_i, kls = kl_reference(h, 16, start=16)
    assert ref_i == 256 and kls[256] == 0.0
    assert int(kl_threshold_bins(without_zero_spike(torch.tensor(h)[None]), 16)[0]) == 256


def test_kl_empty_histogram_keeps_the_full_range():
    h = torch.zeros(2, 64, dtype=torch.float64)
    h[1, 5] = 3
    assert kl_threshold_bins(h, 8).tolist()[0] == 64


def test_kl_threshold_chunking_does_not_change_result():
    hists = _kl_histograms(128, seed=11)
    full = kl_threshold_bins(torch.tensor(hists), 16)
    chunked = kl_threshold_bins(torch.tensor(hists), 16, chunk_elems=1)
    assert torch.equal(full, chunked)


def test_kl_rejects_too_few_bins():
    with pytest.raises(ValueError):
        kl_threshold_bins(torch.ones(1, 64), 128)


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


def _np_one_sided_error(t, bits, prior):
    """Expected squared error per non-zero value, in units of the prior's scale, of the one-sided model,
    written independently in float64: exponential(1) or half-normal(1) on the unsigned M-bit grid [0, t]."""
    t = np.asarray(t, dtype=np.float64)
    rounding = (t / (2 ** bits - 1)) ** 2 / 12
    if prior == "laplace":  # int_t^inf (y - t)^2 e^-y dy
        clipping = 2 * np.exp(-t)
    else:  # int_t^inf (y - t)^2 2 phi(y) dy
        erfc = np.vectorize(math.erfc)(t / math.sqrt(2))
        phi = np.exp(-t ** 2 / 2) / math.sqrt(2 * math.pi)
        clipping = (1 + t ** 2) * erfc - 2 * t * phi
    return rounding + clipping


@pytest.mark.parametrize("prior", ["laplace", "gaussian"])
@pytest.mark.parametrize("bits", range(BIT_MIN, BIT_MAX + 1))
def test_aciq_one_sided_clip_minimises_numpy_expected_error(prior, bits):
    t = np.linspace(0.05, 20.0, 200_001)
    ref = t[np.argmin(_np_one_sided_error(t, bits, prior))]
    got = float(optimal_clip(torch.tensor(1.0, dtype=torch.float64), bits, prior, one_sided=True))
    assert got == pytest.approx(ref, abs=0.006)  # the library's 4000-point grid step is 0.005
    # the clipping term against a direct numerical integral of the prior (closed forms above are not assumed)
    y = np.linspace(0, 60, 600_001)
    dens = np.exp(-y) if prior == "laplace" else 2 * np.exp(-y ** 2 / 2) / math.sqrt(2 * math.pi)
    integral = np.trapezoid(np.where(y > ref, (y - ref) ** 2, 0.0) * dens, y)
    assert _np_one_sided_error(ref, bits, prior) - (ref / (2 ** bits - 1)) ** 2 / 12 == pytest.approx(integral,
                                                                                                    rel=1e-3)


def _relu_stats(seed, extra_zeros=0):
    x = torch.randn(4, 50_000, generator=_gen(seed)).clamp_min(0)
    batches = list(x) + ([torch.zeros(extra_zeros)] if extra_zeros else [])
    return x, _stats(batches)


@pytest.mark.parametrize("prior", ["laplace", "gaussian"])
def test_aciq_one_sided_clip_ignores_the_fraction_of_zeros(prior):
    """Zeros quantize exactly: adding zeros scales the expected error but must not move the clip."""
    _, dense = _relu_stats(45)
    _, sparse = _relu_stats(45, extra_zeros=1_000_000)  # 5x more zeros than non-zeros
    strat = get_strategy("aciq", {"one_sided_prior": prior})
    spec = QuantSpec(4, signed=False)
    assert strat.act_range(sparse, spec, _ctx()) == strat.act_range(dense, spec, _ctx())


@pytest.mark.parametrize("bits", [4, 8])
def test_aciq_one_sided_priors_on_relu_gaussian(bits):
    """ReLU'd N(0, 1): the half-normal prior's clip is MSE-near-optimal, the exponential's too wide at 4 bit."""
    x, st = _relu_stats(46)
    xn = x.double().numpy().ravel()[None]

    def mse(clip):
        return float(((xn - np_fake_quant(xn, [0.0], [clip], bits, True, False)) ** 2).mean())

    best = min(mse(c) for c in np.linspace(0.5, float(x.max()), 2000))
    spec = QuantSpec(bits, signed=False)
    _, hi_g = get_strategy("aciq", {"one_sided_prior": "gaussian"}).act_range(st, spec, _ctx())
    _, hi_l = get_strategy("aciq", {"one_sided_prior": "laplace"}).act_range(st, spec, _ctx())
    assert mse(hi_g) <= (1.02 if bits == 4 else 1.05) * best  # at 8 bit the clip is the sample maximum
    if bits == 4:
        assert hi_g == pytest.approx(2.90, abs=0.05)
        assert hi_l == pytest.approx(min(4.86, st.max), abs=0.1)  # 4.86 sigma, or the maximum
        assert mse(hi_l) >= 1.5 * best


def test_aciq_defaults():
    """Two-sided: the paper's Laplace prior; one-sided: 'auto', half-normal up to 4 bits, exponential above
    (the choice measured by dqss.bench.aciq, see baselines/aciq.py)."""
    strat = get_strategy("aciq")
    assert strat.options.prior == "laplace" and strat.options.one_sided_prior == "auto"
    _, st = _relu_stats(47)
    for bits in range(BIT_MIN, BIT_MAX + 1):
        chosen = "gaussian" if bits <= 4 else "laplace"
        spec = QuantSpec(bits, signed=False)
        fixed = get_strategy("aciq", {"one_sided_prior": chosen}).act_range(st, spec, _ctx())
        assert strat.act_range(st, spec, _ctx()) == fixed, bits
    with pytest.raises(ValueError, match="one_sided_prior"):
        get_strategy("aciq", {"one_sided_prior": "cauchy"})


def test_bench_aciq_ratios(tmp_path, capsys):
    """The measurement behind the default: ratios to a brute-force optimum are >= 1 and per layer/bits/prior."""
    from dqss.bench import aciq as bench_aciq

    _, relu = _relu_stats(48)
    exp = _stats([torch.empty(100_000).exponential_(generator=_gen(49))])
    save_stats({"relu": relu, "exp": exp, "signed": _stats(_batches(seed=50, n=1))}, tmp_path / "stats.pt")
    out = tmp_path / "bench.csv"
    assert bench_aciq.main([str(tmp_path / "stats.pt"), "--out", str(out)]) == 0
    import pandas as pd

    df = pd.read_csv(out)
    assert len(df) == 2 * 2 * 2 and set(df.layer) == {"relu", "exp"}  # the signed tensor is left out
    assert (df.ratio >= 0.999).all() and (df.optimal_mse > 0).all()
    r = df.set_index(["layer", "bits", "prior"]).ratio
    assert r["relu", 4, "gaussian"] < r["relu", 4, "laplace"]  # each prior wins on its own distribution
    assert r["exp", 4, "laplace"] < r["exp", 4, "gaussian"]
    assert "geomean" in capsys.readouterr().out


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
def _np_cos_rows(a, b):
    """Cosine of each row of two float64 arrays (0 where a row is all zeros, like the library's eps)."""
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1)) * np.sqrt((b * b).sum(1))
    return num / np.maximum(den, 1e-12)


def np_sample_cosine(y, ref):
    """The paper's score: the mean over samples of each sample's output cosine (eq. 3-4), float64."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(_np_cos_rows(y.reshape(len(y), -1), ref.reshape(len(ref), -1)).mean())


def np_channel_sample_cosine(y, ref, axis):
    """Per channel, the mean over samples of the cosine of that sample's channel output, float64."""
    y, ref = (np.moveaxis(np.asarray(a, np.float64), axis, 1) for a in (y, ref))
    n, c = y.shape[:2]
    y, ref = y.reshape(n, c, -1), ref.reshape(n, c, -1)
    if y.shape[2] == 1:  # a single number per sample: one cosine over the samples (the documented departure)
        return _np_cos_rows(y[:, :, 0].T, ref[:, :, 0].T)
    return np.stack([_np_cos_rows(y[:, k], ref[:, k]) for k in range(c)]).mean(1)


def _fq_torch64(x, lo, hi, spec):
    out = np_fake_quant(x.double().reshape(1, -1).numpy(), np.array([lo]), np.array([hi]), spec.bits,
                        spec.symmetric, spec.signed)
    return torch.from_numpy(out).reshape(x.shape)


def _student_t_inputs(shape, seed, relu=False):
    """Student-t (3 dof) activations with three large outliers, all in the first sample."""
    torch.manual_seed(seed)
    x = torch.distributions.StudentT(3.0).sample(shape)
    x[0].view(-1)[:3] = 100.0
    return x.clamp_min(0) if relu else x


def _easyquant_act_scores(conv, x, st, spec, grid):
    w64, b64 = conv.weight.detach().double(), conv.bias.detach().double()
    ref = F.conv2d(x.double(), w64, b64, padding=conv.padding).numpy()

    def out(f):
        return F.conv2d(_fq_torch64(x, st.min * f, st.max * f, spec), w64, b64, padding=conv.padding).numpy()

    per_sample = np.array([np_sample_cosine(out(f), ref) for f in grid])
    pooled = np.array([float(_np_cos_rows(out(f).reshape(1, -1), ref.reshape(1, -1))[0]) for f in grid])
    return per_sample, pooled


@pytest.mark.parametrize("relu,bits", [(False, 8), (True, 8), (False, 4), (True, 3)])
def test_easyquant_activation_is_argmax_of_mean_sample_cosine(relu, bits):
    """Student-t inputs with outliers in a conv of real shape: the chosen factor maximises the mean per-sample
    cosine of a float64 implementation over the grid (the paper's rule), which is not the pooled cosine's."""
    torch.manual_seed(53)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    x = _student_t_inputs((16, 16, 14, 14), seed=53, relu=relu)
    st = _stats([x])
    spec = QuantSpec(bits, signed=None).resolved(st.nonnegative)
    grid = torch.linspace(0.3, 1.0, 50).tolist()
    lo, hi = get_strategy("easyquant", {"grid": 50, "min_ratio": 0.3}).act_range(st, spec, _ctx(conv, x))
    per_sample, pooled = _easyquant_act_scores(conv, x, st, spec, grid)
    f = hi / st.max
    k = int(np.argmin([abs(f - v) for v in grid]))
    assert abs(grid[k] - f) < 1e-6  # a grid factor
    assert per_sample[k] >= per_sample.max() - 1e-9, (grid[k], grid[int(per_sample.argmax())])
    if bits == 8:  # the outlier samples dominate a pooled cosine: it clips less than the per-sample mean
        assert grid[int(pooled.argmax())] > grid[int(per_sample.argmax())] + 0.05


def _easyquant_weight_check(module, x, spec, run):
    strat = get_strategy("easyquant", {"grid": 20, "min_ratio": 0.4})
    w = module.weight.detach()
    rows = w.flatten(1) if spec.per_channel else w.reshape(1, -1)
    lo, hi = strat.weight_range(rows, spec, _ctx(module, x))
    ref = run(w.double()).numpy()
    rlo, rhi = rows.min(1).values.double().numpy(), rows.max(1).values.double().numpy()
    grid = torch.linspace(0.4, 1.0, 20).double().numpy()
    axis = -1 if isinstance(module, nn.Linear) else 1

    def scores(lo_, hi_):
        wq = torch.from_numpy(np_fake_quant(rows.double().numpy(), lo_, hi_, spec.bits, True, True)).reshape(w.shape)
        c = np_channel_sample_cosine(run(wq).numpy(), ref, axis)
        return c if spec.per_channel else c.mean(keepdims=True)

    chosen = scores(lo.double().numpy(), hi.double().numpy())
    all_scores = np.stack([scores(rlo * f, rhi * f) for f in grid])
    assert (chosen >= all_scores.max(0) - 1e-9).all()
    return all_scores


@pytest.mark.parametrize("bits", [3, 8])
def test_easyquant_weight_is_argmax_per_channel_of_mean_sample_cosine(bits):
    conv = _conv(seed=13)
    x = _student_t_inputs((6, 4, 8, 8), seed=13)
    b64 = conv.bias.detach().double()
    _easyquant_weight_check(conv, x, QuantSpec(bits, per_channel=True),
                            lambda w: F.conv2d(x.double(), w, b64, padding=1))
    _easyquant_weight_check(conv, x, QuantSpec(bits, per_channel=False),
                            lambda w: F.conv2d(x.double(), w, b64, padding=1))


def test_easyquant_weight_linear_tokens_and_single_outputs():
    """A linear layer on tokens [N, T, C]: per sample and channel over the tokens; on [N, C] each sample's
    channel output is one number, so that channel is scored by one cosine over the samples (documented)."""
    torch.manual_seed(54)
    lin = nn.Linear(24, 10)
    b64 = lin.bias.detach().double()
    tokens = _student_t_inputs((5, 7, 24), seed=54)
    _easyquant_weight_check(lin, tokens, QuantSpec(4, per_channel=True), lambda w: F.linear(tokens.double(), w, b64))
    flat = _student_t_inputs((12, 24), seed=55)
    scores = _easyquant_weight_check(lin, flat, QuantSpec(4, per_channel=True),
                                     lambda w: F.linear(flat.double(), w, b64))
    assert (np.abs(scores) < 1 - 1e-6).any()  # a real cosine over samples, not the sign a per-sample one would be


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
    ("mse", {"bits": 4}, ["p", "grid", "min_ratio", "refine"]),
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
    ("mse", {"refine": -1}),
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


def test_histogram_over_the_exact_range_matches_numpy():
    """Growing batches (scale 1, 3, 5, 7): the range is the exact max|x| (1 + 2**-12) and the counts are
    numpy's histogram of all the data over it, positive and negative parts alike."""
    batches = _batches(seed=15, n=4)
    st = _stats(batches, bins=64)
    x = torch.cat(batches).double().numpy()
    assert st.hist_max == float(np.abs(x).max()) * (1 + 2 ** -12)
    ref, _ = np.histogram(np.abs(x), bins=64, range=(0.0, st.hist_max))
    np.testing.assert_array_equal(st.abs_hist().numpy(), ref)
    np.testing.assert_array_equal(st.hist_pos.numpy(), np.histogram(x[x >= 0], bins=64, range=(0.0, st.hist_max))[0])
    np.testing.assert_array_equal(st.hist_neg.numpy(), np.histogram(-x[x < 0], bins=64, range=(0.0, st.hist_max))[0])


def test_hist_bins_match_numpy_at_the_edges():
    """Values on and next to every bin edge land where numpy puts them."""
    top = 3.7 * (1 + 2 ** -12)
    edges = np.linspace(0.0, top, 2049)
    v = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)])
    v = v[(v >= 0) & (v <= top)]
    got = torch.bincount(hist_bins(torch.from_numpy(v), 2048, top), minlength=2048).numpy()
    np.testing.assert_array_equal(got, np.histogram(v, bins=2048, range=(0.0, top))[0])


def test_histogram_chunks_do_not_change_counts(monkeypatch):
    import dqss.core.stats

    x = torch.from_numpy(_realistic("laplace", 10_000, seed=4))
    whole = ActStats.of([x], bins=256)
    monkeypatch.setattr(dqss.core.stats, "_CHUNK", 77)
    chunked = ActStats.of([x], bins=256)
    assert torch.equal(whole.hist_pos, chunked.hist_pos) and torch.equal(whole.hist_neg, chunked.hist_neg)


def _shuffled_batches(x, n, seed):
    perm = torch.randperm(x.shape[0], generator=_gen(seed))
    return list(x[perm].chunk(n))


@pytest.mark.parametrize("kind", ["laplace", "relu", "student"])
def test_histogram_does_not_depend_on_batching_or_order(kind):
    """The same tensor in 1, 4 and 16 batches, in shuffled order: identical range and histograms (numpy's
    over that range, float64), hence identical KL, percentile and MSE activation ranges.  (Growing the
    range by doubling while batches arrive gave thresholds up to 8% apart here.)"""
    x = torch.from_numpy(_realistic(kind, 64 * 4096, seed=31)).reshape(64, 16, 16, 16)
    if kind == "laplace":
        x[torch.randperm(64, generator=_gen(1))[:3], 0, 0, 0] *= 30  # outliers in a few images
    runs = [ActStats.of(_shuffled_batches(x, n, seed), bins=2048)
            for n, seed in ((1, 0), (4, 1), (16, 2), (16, 3))]
    h, top = _abs_hist_np(x.numpy())
    specs = (QuantSpec(4), QuantSpec(8), QuantSpec(4, signed=False), QuantSpec(8, symmetric=False))
    ranges = []
    for st in runs:
        assert st.hist_max == top
        np.testing.assert_array_equal(st.abs_hist().numpy(), h)
        ranges.append([get_strategy(s).act_range(st, spec, _ctx()) for s in ("kl", "percentile", "mse")
                       for spec in specs if spec.symmetric or s != "kl"])
    assert all(r == ranges[0] for r in ranges)


def test_collect_act_stats_does_not_depend_on_batching_or_order():
    torch.manual_seed(23)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.from_numpy(_realistic("laplace", 32 * 3 * 10 * 10, seed=23)).reshape(32, 3, 10, 10)
    layers = {"0": model[0], "2": model[2]}
    runs = [collect_act_stats(model, layers, _shuffled_batches(x, n, seed), bins=256)
            for n, seed in ((1, 0), (4, 1), (16, 2))]
    for name in layers:
        for st in runs[1:]:
            assert st[name].hist_max == runs[0][name].hist_max
            assert st[name].min == runs[0][name].min and st[name].max == runs[0][name].max
            assert torch.equal(st[name].hist_pos, runs[0][name].hist_pos)
            assert torch.equal(st[name].hist_neg, runs[0][name].hist_neg)
    with torch.no_grad():
        h = model[1](model[0](x))
    ref, _ = np.histogram(np.abs(h.double().numpy()), bins=256, range=(0.0, runs[0]["2"].hist_max))
    np.testing.assert_array_equal(runs[0]["2"].abs_hist().numpy(), ref)


def test_collect_act_stats_needs_re_iterable_batches():
    model = nn.Sequential(nn.Linear(4, 3))
    batches = [torch.randn(5, 4, generator=_gen(24 + i)) for i in range(3)]
    with pytest.raises(TypeError, match="re-iterable"):
        collect_act_stats(model, {"0": model[0]}, iter(batches))
    with pytest.raises(TypeError, match="list"):
        collect_act_stats(model, {"0": model[0]}, (b for b in batches))
    assert collect_act_stats(model, {"0": model[0]}, tuple(batches))["0"].count == 15 * 4

    class Augmented:  # re-iterable, but the second pass sees other values (random augmentation)
        def __init__(self):
            self.passes = 0

        def __iter__(self):
            self.passes += 1
            return iter([b * self.passes for b in batches])

    with pytest.raises(RuntimeError, match="same batches"):
        collect_act_stats(model, {"0": model[0]}, Augmented())

    class Fewer(Augmented):  # the second pass sees fewer batches
        def __iter__(self):
            self.passes += 1
            return iter(batches if self.passes == 1 else batches[:2])

    with pytest.raises(RuntimeError, match="layer '0'.*same batches"):
        collect_act_stats(model, {"0": model[0]}, Fewer())


def test_stats_passes_in_order():
    st = ActStats(bins=16)
    with pytest.raises(RuntimeError, match="fix_range"):
        st.update_hist(torch.ones(3))
    st.update_range(torch.ones(3))
    st.fix_range()
    with pytest.raises(RuntimeError, match="first pass"):
        st.update_range(torch.ones(3))
    with pytest.raises(RuntimeError, match="outside the range"):
        st.update_hist(torch.full((3,), 2.0))
    # an all-zero tensor gets a tiny positive range
    z = ActStats.of([torch.zeros(10)], bins=16)
    assert z.hist_max == 1e-8 and float(z.hist_pos[0]) == 10


def test_stats_state_round_trip(tmp_path):
    x = torch.randn(2, 3, 4, 4, generator=_gen(18))
    st = _stats(_batches(seed=18, n=3), bins=256)
    st.samples = [x[:1], x[1:]]
    back = ActStats.from_state(st.state())
    for k in ("bins", "hist_max", "min", "max", "count", "zeros", "sum", "sum_sq", "abs_sum"):
        assert getattr(back, k) == getattr(st, k), k
    assert torch.equal(back.hist_pos, st.hist_pos) and torch.equal(back.hist_neg, st.hist_neg)
    assert torch.equal(torch.cat(back.samples), x)
    save_stats({"a": st, "b": ActStats.from_state(_stats(_batches(seed=19, n=1)).state())}, tmp_path / "s.pt")
    loaded = load_stats(tmp_path / "s.pt")
    assert set(loaded) == {"a", "b"}
    assert torch.equal(loaded["a"].abs_hist(), st.abs_hist()) and loaded["a"].mean == st.mean
    assert loaded["b"].samples == []


def test_load_stats_refuses_the_doubling_format(tmp_path):
    """Files of the former format (no ``format`` key; histogram range grown by doubling) fail, naming the fix."""
    old = _stats(_batches(seed=18, n=2), bins=64).state()
    del old["format"]
    with pytest.raises(ValueError, match="format 1"):
        ActStats.from_state(old)
    torch.save({"a": old}, tmp_path / "old.pt")
    with pytest.raises(RuntimeError, match="format 1.*rerun the workflow"):
        load_stats(tmp_path / "old.pt")


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
        st.update_range(torch.tensor([1.0, float("nan")]))


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


# -- the one-row MSE search (activations) scores a round's factors in one pass -------------------------
@pytest.mark.parametrize("kind", ["gauss", "laplace", "relu", "student", "zeros"])
def test_mse_one_row_search_is_the_loop_bit_for_bit(kind):
    """An activation's histogram (one row) is scored a round at a time: the same factor as the loop of one pass per
    factor, bit for bit, for every grid shape and p (ties, as on a histogram of zeros, go to the smallest)."""
    from baselines.mse import best_shrink
    from dqss.core.strategy import shrink_grid

    x = torch.zeros(5000) if kind == "zeros" else torch.as_tensor(_realistic(kind, 50_000, seed=len(kind)))
    stats = ActStats.of([x.float()], bins=2048)
    counts, centers = stats.signed_hist()
    lo = torch.tensor([stats.min], dtype=torch.float64)
    hi = torch.tensor([stats.max], dtype=torch.float64)
    grid = shrink_grid(100, 0.05).double()
    for spec in (QuantSpec(8, True, not stats.nonnegative), QuantSpec(4, True, not stats.nonnegative),
                 QuantSpec(4, False, True)):
        for p in (2.0, 2.4):
            want = best_shrink(centers[None], lo, hi, spec, p, grid, counts[None], 2, chunk_elems=1)  # the loop
            got = best_shrink(centers[None], lo, hi, spec, p, grid, counts[None], 2)
            assert torch.equal(got, want), (spec, p)


@pytest.mark.parametrize("chunk", [1, 5_000, 1 << 20])  # one factor per pass (the loop), 2, all
def test_mse_per_channel_search_is_the_loop_bit_for_bit(chunk):
    """Per-channel weights: a round's factors scored several per pass (``chunk``: one factor per pass, a few, all)
    give every channel the loop's factor, bit for bit."""
    from baselines.mse import best_shrink
    from dqss.core.strategy import row_minmax, shrink_grid

    g = torch.Generator().manual_seed(7)
    w = torch.randn(24, 75, generator=g) * torch.rand(24, 1, generator=g)
    w[3] = 0.0  # a dead channel: every factor ties
    w[5, :3] = 40.0  # outliers
    lo, hi = row_minmax(w)
    grid = shrink_grid(100, 0.05)
    for spec in (QuantSpec(4, True, True, True), QuantSpec(8, False, True, True)):
        want = best_shrink(w, lo, hi, spec, 2.0, grid, None, 2, chunk_elems=1)  # one factor per pass: the loop
        assert torch.equal(best_shrink(w, lo, hi, spec, 2.0, grid, None, 2, chunk_elems=chunk), want), spec


def test_strategy_benchmark_times_each_strategy_and_restores_the_builders(tmp_path):
    """python -m dqss.bench.strategies: a row per (strategy, bits) with the weight and activation seconds of all
    layers, the CSV written, and Strategy's build methods the same objects afterwards."""
    import copy

    import pandas as pd
    import yaml

    from dqss.bench.strategies import main
    from dqss.core.strategy import Strategy

    before = (Strategy.build_weight_quantizer, Strategy.build_act_quantizer)
    from pathlib import Path

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "config.yaml").read_text("utf-8"))
    small = copy.deepcopy(config)
    small["cls_ptq"]["backbones"] = {"test_resnet": {"weights": "train"}}
    small["cls_ptq"]["calibration"]["size"] = 16
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small), encoding="utf-8")
    out = tmp_path / "s.csv"
    assert main([str(path), "--strategies", "minmax", "mse", "--bits", "4", "--repeats", "1", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df["strategy"]) == ["minmax", "mse"] and set(df["bits"]) == {4}
    assert (df["weight_s"] > 0).all() and (df["act_s"] > 0).all()
    assert (Strategy.build_weight_quantizer, Strategy.build_act_quantizer) == before
