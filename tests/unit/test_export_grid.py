"""The QAT baselines' own ``export_grid`` gives, bit for bit, the grid dqss.deploy used to compute for them.

The reference functions below are the grid makers dqss/deploy.py held for LSQ, LSQ+, PACT and DoReFa before the
baselines exported their own grids (copied verbatim; ``make_grid``, which they call, did not change), so the ONNX files do not change.
"""
from __future__ import annotations

import pytest
import torch

from baselines.dorefa import DoReFaActQuantizer, DoReFaWeightQuantizer
from baselines.lsq import LSQQuantizer
from baselines.lsq_plus import LSQPlusActQuantizer
from baselines.pact import PACTQuantizer
from dqss import deploy
from dqss.core.quant import QuantSpec
from dqss.plugin import LearnedQuantizer


# -- the old formulas of dqss/deploy.py (reference) ------------------------------------------------------------
_grid = deploy.make_grid  # unchanged: only the per-baseline formulas moved


def _lsq_grid(q, weight=None):
    s = q.step_size()
    return _grid(s, torch.zeros(s.shape), q.spec.qmin, q.spec.qmax, q.spec.channel_axis)


def _lsq_plus_grid(q, weight=None):
    s = q.step_size()
    z = -q.offset.detach() / s
    zr = torch.round(z)
    if (z - zr).abs() > 1e-4:
        raise ValueError(f"LSQ+ activation offset {float(q.offset):.6g} is not a whole number of steps "
                         f"({float(z):.4f} steps of {float(s):.6g}); a QDQ zero point is an integer, so this "
                         "grid cannot be exported exactly")
    return _grid(s, zr, q.spec.qmin, q.spec.qmax, 0)


def _clip_grid(q, weight=None):
    qmax = q.spec.qmax
    return _grid(q.step_size(), torch.zeros(()), -qmax if q.spec.signed else 0, qmax, 0)


def _dorefa_weight_grid(q, weight):
    n = 2 ** q.spec.bits - 1
    if n > 127:
        raise ValueError(f"DoReFa {q.spec.bits}-bit weights take the odd codes -{n}..{n}, which do not fit int8; "
                         "DoReFa weights export at 7 bits or fewer")
    if weight is None:
        raise ValueError("the DoReFa weight grid depends on the weight: call tensor_grid(quantizer, weight)")
    s = q.step_size(weight)
    return _grid(s, torch.zeros(s.shape), -n, n, q.spec.channel_axis)


# -- the cases -------------------------------------------------------------------------------------------------
def _weight():
    return torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.2


def _cases():
    w = _weight()
    per_ch = QuantSpec(4, True, True, per_channel=True)
    per_t = QuantSpec(4, True, True)
    unsigned = QuantSpec(4, True, False)
    signed8 = QuantSpec(8, True, True)
    steps = torch.rand(6, generator=torch.Generator().manual_seed(1)) * 0.1 + 0.01
    cases = [
        ("lsq weight per-channel", LSQQuantizer(per_ch, steps, "weight"), w, _lsq_grid),
        ("lsq weight per-tensor", LSQQuantizer(per_t, torch.tensor(0.037), "weight"), w, _lsq_grid),
        ("lsq act unsigned", LSQQuantizer(unsigned, torch.tensor(0.11), "act"), None, _lsq_grid),
        ("lsq act signed", LSQQuantizer(signed8, torch.tensor(0.013), "act"), None, _lsq_grid),
        ("lsq step below EPS", LSQQuantizer(per_t, torch.tensor(-1.0), "weight"), w, _lsq_grid),
        ("lsq_plus act", LSQPlusActQuantizer(QuantSpec(4, False, True), 0.05, -3 * 0.05), None, _lsq_plus_grid),
        ("lsq_plus act zero offset", LSQPlusActQuantizer(QuantSpec(8, False, True), 0.02, 0.0), None,
         _lsq_plus_grid),
        ("pact act unsigned", PACTQuantizer(unsigned, 6.0), None, _clip_grid),
        ("pact act signed", PACTQuantizer(signed8, 2.5), None, _clip_grid),
        ("dorefa act unsigned", DoReFaActQuantizer(unsigned, 1.0), None, _clip_grid),
        ("dorefa act signed", DoReFaActQuantizer(signed8, 0.7), None, _clip_grid),
        ("dorefa weight per-channel", DoReFaWeightQuantizer(per_ch), w, _dorefa_weight_grid),
        ("dorefa weight per-tensor", DoReFaWeightQuantizer(per_t), w, _dorefa_weight_grid),
        ("dorefa weight no rescale", DoReFaWeightQuantizer(per_ch, rescale=False), w, _dorefa_weight_grid),
        ("dorefa weight 7 bit", DoReFaWeightQuantizer(QuantSpec(7, True, True, per_channel=True)), w,
         _dorefa_weight_grid),
    ]
    return cases


CASES = _cases()


def _same(a: deploy.Grid, b: deploy.Grid):
    assert torch.equal(a.scale, b.scale) and a.scale.dtype == b.scale.dtype
    assert torch.equal(a.zero_point, b.zero_point) and a.zero_point.dtype == b.zero_point.dtype
    assert (a.qmin, a.qmax, a.axis) == (b.qmin, b.qmax, b.axis)


@pytest.mark.parametrize("name, q, weight, reference", CASES, ids=[c[0] for c in CASES])
def test_export_grid_is_the_old_grid_bit_for_bit(name, q, weight, reference):
    with torch.no_grad():  # a trained value, not the init
        for p in q.parameters():
            p.mul_(1.0 + 1e-3)
    _same(q.export_grid(weight), reference(q, weight))
    _same(deploy.tensor_grid(q, weight), reference(q, weight))  # the exporter's dispatch reaches the method


@pytest.mark.parametrize("q, weight", [
    (LSQPlusActQuantizer(QuantSpec(4, False, True), 0.05, 0.012), None),   # offset not a whole number of steps
    (DoReFaWeightQuantizer(QuantSpec(8, True, True, per_channel=True)), _weight()),  # codes -255..255
    (DoReFaWeightQuantizer(QuantSpec(4, True, True, per_channel=True)), None),       # needs the weight
], ids=["lsq_plus offset", "dorefa 8 bit", "dorefa no weight"])
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # the reference's float(q.offset)
def test_export_grid_refuses_what_the_old_grid_refused(q, weight):
    reference = _lsq_plus_grid if isinstance(q, LSQPlusActQuantizer) else _dorefa_weight_grid
    with pytest.raises(ValueError) as old:
        reference(q, weight)
    with pytest.raises(ValueError) as new:
        q.export_grid(weight)
    assert str(new.value) == str(old.value)


def test_a_learned_quantizer_without_export_grid_names_the_fix():
    class NoGrid(LearnedQuantizer):
        pass

    q = NoGrid(QuantSpec(4))
    with pytest.raises(NotImplementedError, match=r"implement export_grid\(weight=None\) in .*NoGrid to deploy it"):
        deploy.tensor_grid(q)
