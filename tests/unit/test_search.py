"""DQSS-PTQ search: only the logits move, the loss falls, and divergence names step and layer."""
from __future__ import annotations

import pytest
import timm
import torch

from dqss.core.layers import QuantPolicy, fold_batchnorm, plan_layers
from dqss.core.mixed import arch_parameters, mixed_layers
from dqss.algorithms.ptq import quantize_mixed
from dqss.algorithms.search import SearchConfig, SearchDiverged, search
from dqss.core.stats import collect_act_stats
from dqss.core.strategy import get_strategy

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10).eval()
    x = torch.randn(32, 3, 32, 32)
    folded = fold_batchnorm(model, x[:2])
    plans = plan_layers(folded, QuantPolicy(), 3, 3, x[:2])
    stats = collect_act_stats(folded, {n: folded.get_submodule(n) for n in plans}, [x])
    with torch.no_grad():
        teacher = folded(x)
    strategies = {s: get_strategy(s) for s in ("minmax", "mse", "aciq")}
    return folded, plans, stats, strategies, x, teacher


def test_search_trains_only_logits_and_lowers_loss(setup):
    folded, plans, stats, strategies, x, teacher = setup
    q = quantize_mixed(folded, plans, stats, strategies)
    frozen = {n: p.detach().clone() for n, p in q.named_parameters() if not n.endswith("logits")}
    hist = search(q, x, teacher, SearchConfig(iterations=30, batch_size=16, lr=0.1), seed=0, device="cpu")
    assert len(hist) == 30
    first, last = sum(h["loss"] for h in hist[:5]) / 5, sum(h["loss"] for h in hist[-5:]) / 5
    assert last < first
    for n, p in q.named_parameters():
        if n.endswith("logits"):
            assert p.requires_grad
        else:
            assert torch.equal(p, frozen[n]), f"{n} changed during the search"
    assert any(float(p.detach().abs().max()) > 0 for p in arch_parameters(q))


def test_temperature_schedule():
    cfg = SearchConfig(iterations=11, tau_start=1.0, tau_end=0.01)
    assert cfg.tau(0) == pytest.approx(1.0) and cfg.tau(10) == pytest.approx(0.01)
    assert cfg.tau(5) == pytest.approx(0.1)


def test_nan_stops_with_step_and_layer(setup):
    folded, plans, stats, strategies, x, teacher = setup
    q = quantize_mixed(folded, plans, stats, strategies)
    name = list(mixed_layers(q))[2]
    with torch.no_grad():
        mixed_layers(q)[name].act_quant.logits.fill_(float("nan"))
    with pytest.raises(SearchDiverged, match=rf"step 0.*{name}.*dqss\.lr"):
        search(q, x, teacher, SearchConfig(iterations=3, batch_size=8), seed=0, device="cpu")


@pytest.mark.parametrize("bad", [dict(loss="hinge"), dict(mode="fast"), dict(iterations=0), dict(tau_end=0)])
def test_bad_search_config(bad):
    from dqss.options import build_section

    with pytest.raises(ValueError, match=rf"^cls_ptq\.dqss\.{next(iter(bad))}"):
        build_section(SearchConfig, bad, "cls_ptq.dqss")


def test_hard_relaxation_forward_is_the_argmax_model(setup):
    """Straight-through: the forward value is the discrete (argmax) model, the gradient the softmax's."""
    from dqss.core.mixed import discretize, set_relaxation

    folded, plans, stats, strategies, x, teacher = setup
    q = quantize_mixed(folded, plans, stats, strategies)
    g = torch.Generator().manual_seed(3)
    for p in arch_parameters(q):
        p.data.copy_(torch.randn(p.shape, generator=g))
    def moved(relaxation):
        for p in arch_parameters(q):
            p.grad = None
        set_relaxation(q, relaxation)
        out = q(x[:4])
        (out ** 2).mean().backward()
        return out, [p.grad is not None and float(p.grad.abs().sum()) > 0 for p in arch_parameters(q)]

    _, soft = moved("soft")
    out, hard = moved("hard")
    assert hard == soft and any(hard)  # the softmax's gradient reaches the same logits
    import copy

    with torch.no_grad():
        ref = copy.deepcopy(q)
        discretize(ref)
        torch.testing.assert_close(out.detach(), ref(x[:4]), rtol=1e-5, atol=1e-5)
        set_relaxation(q, "soft")
        assert not torch.allclose(q(x[:4]), out.detach(), atol=1e-5)


def test_hard_phase_follows_soft_fraction():
    cfg = SearchConfig(iterations=10, relaxation="hard", soft_fraction=0.3)
    assert [cfg.hard(s) for s in range(10)] == [False] * 3 + [True] * 7
    assert not any(SearchConfig(iterations=10).hard(s) for s in range(10))


@pytest.mark.parametrize("kwargs, message", [({"relaxation": "gumbel"}, "relaxation"),
                                             ({"soft_fraction": 1.5}, "soft_fraction"),
                                             ({"beta1": 1.0}, "beta1")])
def test_search_config_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**kwargs)
