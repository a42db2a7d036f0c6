"""The one module a baseline imports: everything a file of ``baselines/`` needs from the library.

A compared method is a file in ``baselines/`` (see ``baselines/TEMPLATE.py``) that registers itself with a
decorator; it imports from ``dqss.plugin`` only, so the library's layout can change without touching a
baseline, and the library itself never imports a baseline (``dqss.core.strategy.load_baselines`` finds them
by scanning the package).  What each name is for:

Range strategies (post-training quantization, ``kind="ptq"``):

* :class:`Strategy`, :func:`register_strategy` — the base class of a method and the decorator that registers
  it under a name (``build_weight_quantizer`` / ``build_act_quantizer`` or the range hooks);
* :class:`QuantSpec` — a tensor's grid (bits, symmetric, signed, per channel, channel axis);
* :func:`row_minmax` — per-row min and max of a weight (one row per output channel);
* :func:`shrink_grid`, :func:`quant_error` — shrink factors of a min/max range and the mean ``|x - Q(x)|^p``
  per row for given ranges (for range searches such as MSE or EasyQuant);
* :func:`range_to_qparams`, :func:`fake_quantize` — a range's scale and zero point, and the fake-quantized
  tensor on them;
* :func:`hist_bins` — the bin of each value among equal bins of ``[0, top]``, as ``numpy.histogram`` assigns
  it (KL divergence's histograms).

Quantization-aware training (``kind="qat"``):

* :class:`LearnedQuantizer` — the base class of a trained quantizer (closed-form ``quantize`` / ``grads``,
  and ``export_grid`` for the ONNX export);
* :func:`grad_scale` — LSQ's gradient scale ``1 / sqrt(N Q_P)``;
* :class:`Grid`, :func:`make_grid` — the integer grid a quantizer rounds to, what its ``export_grid`` returns
  (scale, integer zero point, ``qmin..qmax``, channel axis).

Reconstruction (AdaRound, BRECQ, QDrop):

* :class:`Reconstruction`, :class:`Pass`, :func:`register_reconstruction` — a method's unit granularity and
  passes, and the decorator that registers it.
"""
from __future__ import annotations

from .algorithms.recon import Pass, Reconstruction, register_reconstruction
from .core.qat import LearnedQuantizer, grad_scale
from .core.quant import QuantSpec, fake_quantize, range_to_qparams
from .core.stats import hist_bins
from .core.strategy import Strategy, quant_error, register_strategy, row_minmax, shrink_grid
from .deploy import Grid, make_grid

__all__ = [
    # range strategies
    "Strategy", "register_strategy", "QuantSpec", "row_minmax", "shrink_grid", "quant_error",
    "range_to_qparams", "fake_quantize", "hist_bins",
    # quantization-aware training
    "LearnedQuantizer", "grad_scale", "Grid", "make_grid",
    # reconstruction
    "Reconstruction", "Pass", "register_reconstruction",
]
