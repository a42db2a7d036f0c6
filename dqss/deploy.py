"""Deployment check: a fake-quantized model exported to ONNX QDQ and run by ONNX Runtime (CPU).

What the exported graph contains (:func:`export_onnx`, TorchScript exporter, opset 17, batch
dimension dynamic).  Every :class:`~dqss.core.layers.QuantLayer` becomes

* its input activation: ``QuantizeLinear -> DequantizeLinear`` per tensor, with the suite's scale
  and zero point;
* its weight: an 8-bit initializer holding the grid codes, then ``DequantizeLinear`` per output
  channel (axis 0) with the suite's scales, so the file stores one byte per weight;
* its bias, where the layer rounds it to int32 (:meth:`~dqss.core.layers.QuantLayer.rounds_bias`, the
  default ``quant.int32_bias``): an ``int32`` initializer of the codes ``round(b / (s_x s_w[c]))``
  and its ``DequantizeLinear``, the bias the simulation adds, bit for bit; else a float initializer;
* then the float ``Conv`` / ``Gemm`` (``MatMul``) of the original layer.

The *layout* (:data:`LAYOUTS`) says which 8-bit containers hold the codes; a signed grid moves into
``uint8`` (or an unsigned one into ``int8``) by shifting its codes and zero point by 128, which leaves
every value ``(q - z) s`` unchanged.  The default ``u8u8`` stores activations and weights as ``uint8``
(symmetric weights with zero point 128) because that is the one ONNX Runtime multiplies exactly on
every x86 CPU (:func:`int8_kernel`): its u8 x s8 kernel on CPUs without VNNI (AVX2, AVX-512 without
VNNI) is VPMADDUBSW, which adds two u8*s8 products into a saturating int16, and 255 * 127 * 2 >
32767; s8 activations fare worse, since MLAS adds 128 to them to run u8 x s8, so every code near zero
becomes a large one.  Measured on an AVX2-only CPU, the test's conv net at W8A8 was 0.14 off in u8s8
(the bound of one step: 0.02), exact in u8u8; 7-bit weights (ONNX Runtime's ``reduce_range``) are
exact too but change the model.

In the papers' placement nothing else is quantized: adds, pools, activations and the layers the policy
keeps in full precision stay float, as in the fake-quantized model.  In the integer-graph placement
(:mod:`dqss.core.placement`) each module whose output is quantized (its ``dqss_point``) gets a
``QuantizeLinear -> DequantizeLinear`` pair after it too (:class:`QDQ`).  Grids narrower than their 8-bit
container (bit widths < 8, PACT's or DoReFa's symmetric ``-Q_P..Q_P``) are *emulated*: the
weight codes already lie on the narrow grid; an activation gets a float ``Clip`` to the
grid's range ``[(qmin - z) s, (qmax - z) s]`` before its ``QuantizeLinear``.  Such layers are
listed in :attr:`ExportInfo.emulated`, never silently.

What ONNX Runtime 1.32 runs (:func:`integer_kernels` counts the op types of the graph ORT optimises at
``ORT_ENABLE_ALL``, the level :func:`ort_session` uses).  ORT fuses ``DequantizeLinear(act),
DequantizeLinear(weight), DequantizeLinear(bias) -> Conv -> [Relu] -> QuantizeLinear`` into one
``QLinearConv`` (int32 accumulation, NHWC with ``Transpose`` around it; the ReLU is absorbed by the
``uint8`` output grid) only when the conv's output (after its ReLU) goes to QuantizeLinear nodes and
nowhere else; a linear layer likewise becomes a ``QGemm``.  Every other quantized layer runs as a
float convolution (``Conv``/``FusedConv``/``NchwcConv``, ``Gemm``) on dequantized inputs, and its
weight is dequantized at every run.  Measured on timm ``resnet18`` (10 classes, input 32x32, BN
folded, W8A8, first/last layer 8 bit; 21 quantized layers): 8 ``QLinearConv`` (the ``conv1`` of each
basic block: conv -> BN -> ReLU -> ``conv2``'s QDQ) and 13 float kernels: each block's ``conv2`` and
the 3 ``downsample`` convs (their outputs go to the float residual ``Add``), the stem conv (its output
goes to the max-pool) and the classifier ``Gemm`` (its output is the logits).  At W4A4 no conv is
fused (the emulating ``Clip`` separates every conv from the next ``QuantizeLinear``): the graph
checks the 4-bit model's numerics, not 4-bit speed.

Agreement.  Run unoptimised (``ORT_DISABLE_ALL``, :func:`ort_session` with ``optimize=False``), the
QDQ graph reproduces the suite's activation codes except where a value lies on a rounding tie up to
float error (the float convolutions sum in another order): there a code differs by one, and a deep
network propagates it (:func:`onnx_act_codes` and :func:`torch_act_codes` compare them layer by
layer).  Optimised, the integer kernels compute the same int32 sums (in ``u8u8``, on every CPU).

:func:`compare` checks ORT's output against the fake-quantized PyTorch model on the same
inputs (top-1 agreement, largest logit difference), :func:`latency` times a session
(median of ``runs``), :func:`compare_latency` times several sessions interleaved;
:mod:`dqss.tracks.deploy` (the workflow's ``deploy_check`` job) does all of it for a track's models.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .core.layers import QuantLayer
from .core.placement import POINT, attach, points_of
from .core.quant import bias_codes, bias_step
from .timing import medians, round_robin

DEFAULT_OPSET = 17
# How the codes are stored: (activation container, weight container).  None keeps a grid's own container
# (uint8 for an unsigned grid, int8 for a signed one).  ONNX Runtime's x86 integer kernels compute
# u8 x u8 exactly on every CPU; u8 x s8 (and s8 x s8, which they run as u8 x s8) through VPMADDUBSW, whose
# int16 pair sums saturate, on CPUs without VNNI (:func:`int8_kernels` says which this CPU uses).
LAYOUTS = {"u8u8": ("uint8", "uint8"), "u8s8": ("uint8", "int8"), "s8s8": ("int8", "int8"), "grid": (None, None)}
DEFAULT_LAYOUT = "u8u8"
MIN_OPSET = 13  # per-channel DequantizeLinear
CONTAINERS = {"int8": (-128, 127, torch.int8), "uint8": (0, 255, torch.uint8)}


# -- grids ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """The integer grid a quantizer rounds to: ``value = (clamp(round(x / s) + z, qmin, qmax) - z) * s``.

    ``scale`` is float32, a scalar (per tensor) or ``[C]`` (per channel along ``axis``);
    ``zero_point`` an integer tensor of the same shape.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int = 0

    @property
    def container(self) -> str:
        """The 8-bit ONNX type holding the codes: ``uint8`` for a grid with ``qmin >= 0``, else ``int8``."""
        return "uint8" if self.qmin >= 0 else "int8"

    @property
    def emulated(self) -> bool:
        """True when the grid is narrower than its 8-bit container (the codes use part of it)."""
        lo, hi, _ = CONTAINERS[self.container]
        return (self.qmin, self.qmax) != (lo, hi)

    @property
    def per_channel(self) -> bool:
        return self.scale.dim() > 0 and self.scale.numel() > 1

    def stored_as(self, container: str) -> Grid:
        """The same grid with its codes shifted into ``container`` (``int8`` <-> ``uint8``: codes and zero point
        move by 128, the values ``(q - z) s`` do not)."""
        if container not in CONTAINERS:
            raise ValueError(f"container must be one of {sorted(CONTAINERS)}, got {container!r}")
        shift = CONTAINERS[container][0] - CONTAINERS[self.container][0]
        if shift == 0:
            return self
        lo, hi, _ = CONTAINERS[container]
        if self.qmin + shift < lo or self.qmax + shift > hi:
            raise ValueError(f"the grid [{self.qmin}, {self.qmax}] cannot be stored as {container}")
        return Grid(self.scale, self.zero_point + shift, self.qmin + shift, self.qmax + shift, self.axis)

    def check(self, what: str) -> None:
        lo, hi, _ = CONTAINERS[self.container]
        if not (lo <= self.qmin <= self.qmax <= hi):
            raise ValueError(f"{what}: the grid [{self.qmin}, {self.qmax}] does not fit the 8-bit {self.container} "
                             "that ONNX QDQ stores; only grids of at most 8 bits can be exported")
        z = self.zero_point
        if z.numel() and (int(z.min()) < lo or int(z.max()) > hi):
            raise ValueError(f"{what}: zero point outside the {self.container} range [{lo}, {hi}]")
        if not torch.isfinite(self.scale).all() or (self.scale <= 0).any():
            raise ValueError(f"{what}: the scale must be finite and positive")

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """``(codes - z) * s`` (what DequantizeLinear computes) for codes shaped like the tensor."""
        s, z = _view(self.scale, codes, self.axis), _view(self.zero_point.float(), codes, self.axis)
        return (codes.float() - z) * s

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """``clamp(round(x / s) + z, qmin, qmax)`` (what QuantizeLinear computes, on this grid)."""
        s, z = _view(self.scale, x, self.axis), _view(self.zero_point.float(), x, self.axis)
        return torch.clamp(torch.round(x / s) + z, self.qmin, self.qmax)


def _layout(layout: str) -> tuple[str | None, str | None]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown ONNX layout {layout!r}; choose one of {sorted(LAYOUTS)} (u8u8: exact on every "
                         "x86 CPU, the default)")
    return LAYOUTS[layout]


def _view(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def make_grid(scale, zero, qmin, qmax, axis=0) -> Grid:
    """A :class:`Grid` from a quantizer's step ``scale`` (scalar or ``[C]``), its zero point ``zero`` (an integer
    value, possibly held in a float tensor; a scalar is broadcast to the scale's shape), the code range
    ``qmin..qmax`` and the channel ``axis``: what a quantizer's ``export_grid(weight=None)`` returns."""
    scale = torch.as_tensor(scale).detach().float().clone()
    zero = torch.as_tensor(zero).detach()
    if zero.is_floating_point():
        if not torch.equal(zero, torch.round(zero)):
            raise ValueError("zero point is not an integer")
    zero = zero.round().to(torch.int32)
    if zero.shape != scale.shape:
        zero = zero.expand(scale.shape).clone() if zero.numel() == 1 else zero
    return Grid(scale, zero, int(qmin), int(qmax), int(axis))


def _buffer_grid(q, weight=None) -> Grid:
    """FakeQuantizer, AdaRoundQuantizer, FrozenWeightQuantizer: ``scale``/``zero_point`` buffers on ``spec``."""
    return make_grid(q.step_size(weight), q.zero_point, q.spec.qmin, q.spec.qmax, q.spec.channel_axis)


def _step_grid(q, weight=None) -> Grid:
    if not q.enabled or q.drop_prob > 0:
        raise ValueError(f"StepQuantizer with enabled={q.enabled}, drop_prob={q.drop_prob} is a training state; "
                         "export needs enabled=True and drop_prob=0 (what evaluation uses)")
    return make_grid(q.step_size(), q.zero_point, q.spec.qmin, q.spec.qmax, q.spec.channel_axis)


def _grid_makers() -> list[tuple[type, object]]:
    """The grids of the core quantizers; every other quantizer (the QAT baselines' included) exports through its
    own ``export_grid(weight=None)`` method."""
    from .core.quant import FakeQuantizer
    from .algorithms.recon import AdaRoundQuantizer, FrozenWeightQuantizer, StepQuantizer
    return [(FakeQuantizer, _buffer_grid), (AdaRoundQuantizer, _buffer_grid), (FrozenWeightQuantizer, _buffer_grid),
            (StepQuantizer, _step_grid)]


def resolve(quantizer: nn.Module) -> nn.Module:
    """The quantizer a layer really applies: a pinned :class:`~dqss.core.mixed.MixedQuantizer`'s candidate."""
    from .core.mixed import MixedQuantizer
    if isinstance(quantizer, MixedQuantizer):
        if quantizer.pinned is None:
            raise ValueError("an unpinned MixedQuantizer (a DQSS search's mixture) has no single grid to export; "
                             "build the discrete model from its assignment (dqss.algorithms.ptq.quantize_from_assignment) "
                             "or pin every layer (dqss.core.mixed.pin) first")
        return resolve(quantizer.candidates[quantizer.pinned])
    return quantizer


def tensor_grid(quantizer: nn.Module, weight: torch.Tensor | None = None) -> Grid:
    """The integer grid of ``quantizer`` with the scale it computes with (float32-equal to the suite's).

    ``weight`` (the layer's weight, given for a weight quantizer) is needed only by quantizers whose grid depends
    on the tensor (DoReFa's weights).  The core quantizers' grids are read here; every other quantizer class (the
    QAT baselines', a user's) is exported by its own method ``export_grid(weight=None) -> Grid`` (build the grid
    with :func:`make_grid`).
    """
    q = resolve(quantizer)
    if hasattr(q, "export_grid"):
        return q.export_grid(weight)
    for cls, make in _grid_makers():
        if type(q) is cls:
            return make(q, weight)
    known = ", ".join(c.__name__ for c, _ in _grid_makers())
    raise TypeError(f"cannot export quantizer {type(q).__module__}.{type(q).__qualname__}: dqss.deploy knows {known}; "
                    "to make it exportable give the class a method export_grid(weight=None) -> dqss.deploy.Grid "
                    "returning dqss.deploy.make_grid(scale, zero_point, qmin, qmax, axis) (the scale, integer zero "
                    "point, code range and channel axis of the grid its forward rounds to)")


def weight_codes(quantizer: nn.Module, weight: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The integer codes of the quantized weight on ``grid``, checked against the quantizer's own output."""
    from .algorithms.recon import AdaRoundQuantizer, FrozenWeightQuantizer
    q = resolve(quantizer)
    with torch.no_grad():
        if isinstance(q, FrozenWeightQuantizer):
            codes = q.codes.float()
        elif isinstance(q, AdaRoundQuantizer):
            codes = q.integers()  # the hard rounding (v >= 0), as after reconstruction
        else:
            values = q(weight.detach().float())
            codes = grid.codes(values)
            err = (grid.values(codes) - values).abs() - 1e-5 * _view(grid.scale, values, grid.axis)
            if (err > 0).any():
                raise ValueError(f"{type(q).__name__}'s weight values are not on its grid (largest miss "
                                 f"{float(err.max()):.3g}); it cannot be stored as integer codes")
    if codes.min() < grid.qmin or codes.max() > grid.qmax:
        raise ValueError(f"weight codes outside the grid [{grid.qmin}, {grid.qmax}]")
    return codes


# -- the export modules -------------------------------------------------------------------------
class _ActQDQ(torch.autograd.Function):
    """QuantizeLinear -> DequantizeLinear per tensor (``scale``: float scalar, ``zero``: int8/uint8 scalar)."""

    @staticmethod
    def forward(ctx, x, scale, zero):
        lo, hi = (0, 255) if zero.dtype == torch.uint8 else (-128, 127)
        z = zero.float()
        return (torch.clamp(torch.round(x / scale) + z, lo, hi) - z) * scale

    @staticmethod
    def symbolic(g, x, scale, zero):
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero), scale, zero)


class _ActClipQDQ(torch.autograd.Function):
    """Clip to a narrow grid's range, then QuantizeLinear -> DequantizeLinear on the 8-bit container."""

    @staticmethod
    def forward(ctx, x, scale, zero, lo, hi):
        return _ActQDQ.forward(ctx, torch.clamp(x, lo, hi), scale, zero)

    @staticmethod
    def symbolic(g, x, scale, zero, lo, hi):
        return _ActQDQ.symbolic(g, g.op("Clip", x, lo, hi), scale, zero)


class _WeightDQ(torch.autograd.Function):
    """DequantizeLinear of an int8/uint8 initializer, per channel along ``axis`` (per tensor for a scalar scale)."""

    @staticmethod
    def forward(ctx, codes, scale, zero, axis):
        return Grid(scale, zero, 0, 0, axis).values(codes)

    @staticmethod
    def symbolic(g, codes, scale, zero, axis):
        return g.op("DequantizeLinear", codes, scale, zero, axis_i=axis)


def _act_buffers(module: nn.Module, quantizer: nn.Module, act_type: str | None, what: str) -> Grid:
    """Register ``module``'s ``a_scale``/``a_zero`` (and the emulating clip's ``a_lo``/``a_hi``) for an activation
    quantized by ``quantizer``, stored in the container ``act_type`` (None: the grid's own); returns that grid."""
    g = tensor_grid(quantizer)
    g.check(what)
    if g.per_channel:
        raise ValueError(f"{what}: per-channel activation grids are not exported (per tensor only)")
    stored = g.stored_as(act_type or g.container)
    dtype = CONTAINERS[stored.container][2]
    module.register_buffer("a_scale", g.scale.reshape(()).clone())
    module.register_buffer("a_zero", stored.zero_point.reshape(()).to(dtype))
    z = stored.zero_point.reshape(()).float()
    module.register_buffer("a_lo", (stored.qmin - z) * module.a_scale)
    module.register_buffer("a_hi", (stored.qmax - z) * module.a_scale)
    return stored


def _act_qdq(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The QDQ pair of the buffers :func:`_act_buffers` registered (a clip first on an emulated grid)."""
    if module.act.emulated:
        return _ActClipQDQ.apply(x, module.a_scale, module.a_zero, module.a_lo, module.a_hi)
    return _ActQDQ.apply(x, module.a_scale, module.a_zero)


class QDQ(nn.Module):
    """What an integer-graph point's quantizer (:mod:`dqss.core.placement`) becomes for export: the QDQ pair of its
    grid, in the activation container of ``layout``."""

    def __init__(self, name: str, quantizer: nn.Module, layout: str = DEFAULT_LAYOUT):
        super().__init__()
        self.act = _act_buffers(self, quantizer, _layout(layout)[0], f"output of '{name}'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _act_qdq(self, x)


class QDQLayer(nn.Module):
    """What a QuantLayer becomes for export: integer weight codes, the activation's QDQ pair and, where the layer
    rounds its bias to int32 (:meth:`~dqss.core.layers.QuantLayer.deployed_bias`), the int32 bias codes, each stored in
    the containers of ``layout`` (:data:`LAYOUTS`)."""

    def __init__(self, name: str, qlayer: QuantLayer, layout: str = DEFAULT_LAYOUT):
        super().__init__()
        m = qlayer.layer
        if type(m) not in (nn.Conv2d, nn.Linear):
            raise TypeError(f"layer '{name}' is a {type(m).__name__}; dqss.deploy exports quantized Conv2d and "
                            "Linear layers only")
        act_type, weight_type = _layout(layout)
        self.layer = copy.deepcopy(m)
        weight = m.weight.detach().float()
        self.layer.weight = None  # replaced by the dequantized codes
        self.act = self.weight = None
        self.w_axis = 0
        if not isinstance(qlayer.weight_quant, nn.Identity):
            g = tensor_grid(qlayer.weight_quant, weight)
            g.check(f"weight of layer '{name}'")
            if g.per_channel and g.axis != 0:
                raise ValueError(f"layer '{name}': per-channel weight grid along axis {g.axis}; export expects axis 0")
            codes = weight_codes(qlayer.weight_quant, weight, g)
            stored = g.stored_as(weight_type or g.container)
            codes = codes + (stored.qmin - g.qmin)
            dtype = CONTAINERS[stored.container][2]
            self.register_buffer("w_codes", codes.to(dtype))
            self.register_buffer("w_scale", g.scale.clone())
            self.register_buffer("w_zero", stored.zero_point.to(dtype))
            self.w_axis = g.axis
            self.weight = stored
        else:
            self.register_buffer("w_float", weight)
        if not isinstance(qlayer.act_quant, nn.Identity):
            self.act = _act_buffers(self, qlayer.act_quant, act_type, f"input activation of layer '{name}'")
        self.int32_bias = qlayer.rounds_bias()
        if self.int32_bias:  # the int32 codes and their step s_x * s_w[c], as the simulation rounds them
            step = bias_step(self.a_scale, self.w_scale)
            self.register_buffer("b_codes", bias_codes(m.bias, step).to(torch.int32))
            self.register_buffer("b_scale", step)
            self.register_buffer("b_zero", torch.zeros(step.shape, dtype=torch.int32))
            self.layer.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = _act_qdq(self, x)
        w = (_WeightDQ.apply(self.w_codes, self.w_scale, self.w_zero, self.w_axis) if self.weight is not None
             else self.w_float)
        b = _WeightDQ.apply(self.b_codes, self.b_scale, self.b_zero, 0) if self.int32_bias else self.layer.bias
        m = self.layer
        if isinstance(m, nn.Conv2d):
            return m._conv_forward(x, w, b)
        return F.linear(x, w, b)


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


@dataclass
class LayerExport:
    name: str
    weight: str  # "int8", "uint8" or "float"
    act: str     # "int8", "uint8" or "float" (no QDQ)
    weight_grid: tuple[int, int] | None
    act_grid: tuple[int, int] | None
    emulated: bool  # a grid narrower than its 8-bit container


@dataclass
class ExportInfo:
    path: Path
    opset: int
    seconds: float
    bytes: int
    layers: list[LayerExport] = field(default_factory=list)
    layout: str = DEFAULT_LAYOUT  # the containers of the codes (LAYOUTS)

    @property
    def emulated(self) -> list[str]:
        """Layers whose weight or activation grid is narrower than 8 bit, emulated in the 8-bit container."""
        return [x.name for x in self.layers if x.emulated]

    @property
    def emulated_bits(self) -> bool:
        return bool(self.emulated)


def export_model(qmodel: nn.Module, layout: str = DEFAULT_LAYOUT) -> tuple[nn.Module, list[LayerExport]]:
    """A copy of ``qmodel`` with every QuantLayer replaced by a :class:`QDQLayer` (the module exported)."""
    _layout(layout)
    model = copy.deepcopy(qmodel).cpu().eval().float()
    layers = []
    for name, ql in quant_layers(model).items():
        new = QDQLayer(name, ql, layout)
        model.set_submodule(name, new)
        if hasattr(ql, POINT):  # an integer-graph point at the layer's output
            attach(new, getattr(ql, POINT))
        w, a = new.weight, new.act
        layers.append(LayerExport(name, w.container if w else "float", a.container if a else "float",
                                  (w.qmin, w.qmax) if w else None, (a.qmin, a.qmax) if a else None,
                                  bool((w and w.emulated) or (a and a.emulated))))
    for name, m in points_of(model).items():
        setattr(m, POINT, QDQ(name, getattr(m, POINT), layout))
    return model, layers


def export_onnx(qmodel: nn.Module, example: torch.Tensor, path, *, opset: int = DEFAULT_OPSET,
                dynamic_hw: bool = False, layout: str = DEFAULT_LAYOUT) -> ExportInfo:
    """Write ``qmodel`` (fake-quantized, or a float model) as an ONNX QDQ model to ``path`` (atomically).

    Input ``input``, output ``output``, both with a dynamic batch dimension; ``example`` fixes the other
    dimensions, unless ``dynamic_hw`` (image-to-image models, SR) makes height and width dynamic too.
    ``layout`` picks the 8-bit containers of the activation and weight codes (:data:`LAYOUTS`; the default
    ``u8u8`` runs exactly on every x86 CPU).  Returns where it went, how long it took, its size and how each
    quantized layer was stored.
    """
    import onnx
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} lacks per-channel DequantizeLinear; use opset >= {MIN_OPSET}")
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be one input tensor of the model ([1, C, H, W] for an image model), got "
                        f"{type(example).__name__}")
    path = Path(path)
    _check_target(path)
    start = time.perf_counter()
    model, layers = export_model(qmodel, layout)
    example = example.detach().cpu().float()
    try:
        with torch.no_grad():
            out = model(example)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"the model cannot run the example input of shape {tuple(example.shape)}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. Give one "
                         "input shaped as the model's inputs ([1, C, H, W] for an image model, as calibrated): the "
                         "exported graph takes inputs of its shape (any batch size)") from exc
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{type(qmodel).__name__}'s forward returns {type(out).__name__}; export_onnx exports "
                        "a model with one tensor output")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            try:
                torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["output"],
                                  dynamic_axes=_dynamic_axes(example, dynamic_hw))
            except Exception as e:
                raise RuntimeError(f"cannot export {type(qmodel).__name__} to ONNX (opset {opset}): "
                                   f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}; "
                                   "its forward must trace to ONNX operators (tensors in and out, no operator "
                                   "without an ONNX equivalent)") from e
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto)
        _check_weights(proto, layers)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportInfo(path, opset, time.perf_counter() - start, path.stat().st_size, layers, layout)


def _check_target(path: Path) -> None:
    """``path`` can be written to: not a folder, and no file where one of its folders should be."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the path of the file to write, e.g. {path / 'model.onnx'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder; choose a path in a "
                                         "folder (missing folders are created)")
            break


def _dynamic_axes(example: torch.Tensor, hw: bool) -> dict:
    """The batch dimension dynamic; with ``hw`` (images of any size: SR) also the last two."""
    axes = {0: "batch"}
    if hw:
        if example.dim() != 4:
            raise ValueError(f"dynamic height and width need an image input [N, C, H, W], got {tuple(example.shape)}")
        axes |= {2: "height", 3: "width"}
    out = {0: "batch", 2: "out_height", 3: "out_width"} if hw else {0: "batch"}
    return {"input": axes, "output": out}


def onnx_constants(proto) -> dict:
    """Every constant of an ONNX graph by name, as numpy arrays: its initializers, and the outputs of the
    ``Identity`` nodes the exporter puts in place of a duplicate initializer (equal scales, equal codes)."""
    from onnx import numpy_helper
    values = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Identity" and n.input[0] in values:
            values[n.output[0]] = values[n.input[0]]
        elif n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def _check_weights(proto, layers: list[LayerExport]) -> None:
    """Every quantized weight is stored as 8-bit codes: an int8/uint8 constant feeding a DequantizeLinear
    (the exporter must not have folded it to float)."""
    import numpy as np
    consts = onnx_constants(proto)
    fed = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    for x in layers:
        if x.weight == "float":
            continue
        name = f"{x.name}.w_codes"
        codes = consts.get(name)
        if name not in fed or codes is None or codes.dtype not in (np.int8, np.uint8):
            raise RuntimeError(f"the exported graph does not store layer '{x.name}''s weight as 8-bit codes "
                               "feeding a DequantizeLinear; the exporter changed the weights' representation")


# -- ONNX Runtime ------------------------------------------------------------------------------
def _session_options(threads: int, level=None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = level if level is not None else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only (the NCHWc serialisation notice is expected)
    return so


def ort_session(path, threads: int = 1, optimize: bool = True):
    """An ONNX Runtime CPU session (``threads`` intra-op threads) for the file ``path``: optimised
    (``ORT_ENABLE_ALL``: QDQ groups fused into integer kernels), or with ``optimize=False`` the graph as written
    (``ORT_DISABLE_ALL``: every QuantizeLinear/DequantizeLinear and float op on its own, no integer kernel), which
    tells the file's own numerics apart from the integer kernels'."""
    import onnxruntime as ort
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}; export it with dqss.deploy.export_onnx")
    level = None if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), _session_options(threads, level), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RuntimeError(f"ONNX Runtime cannot load {path} ({type(e).__name__}: {str(e).strip()[:300]}); the file "
                           "is corrupt or truncated: delete it and re-export it with dqss.deploy.export_onnx") from e


# -- which integer kernels this CPU runs -----------------------------------------------------------
def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags as Linux names them (``/proc/cpuinfo``); empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass(frozen=True)
class Int8Kernel:
    """The instruction ONNX Runtime's MLAS multiplies 8-bit codes with, for one layout, on this CPU."""

    layout: str
    isa: str          # the instruction set MLAS dispatches to
    instruction: str  # the multiply-accumulate instruction
    saturates: bool   # int16 pair sums that saturate (u8 x s8 VPMADDUBSW): results depend on the CPU

    def __str__(self) -> str:
        return f"{self.layout}: {self.isa} {self.instruction}" + (" (int16 saturation)" if self.saturates else "")


def int8_kernel(layout: str = DEFAULT_LAYOUT, flags: set[str] | None = None) -> Int8Kernel:
    """Which GEMM kernel ONNX Runtime 1.32's MLAS runs ``layout``'s fused convolutions and GEMMs with on a CPU
    with ``flags`` (default: this one), following its dispatch (``mlas/lib/platform.cpp``, later checks win).

    u8 x s8 (and s8 x s8, which MLAS runs as u8 x s8 after adding 128 to the activations) goes through
    VPMADDUBSW on AVX2 and on AVX-512 without VNNI: it adds two u8*s8 products into a *saturating* int16, and
    255*127*2 > 32767, so large codes give a different sum than the simulation.  VNNI's VPDPBUSD and AMX
    accumulate in int32 (exact).  u8 x u8 widens both to int16 and multiplies with VPMADDWD into int32 (exact)
    on every x86 CPU.  aarch64 kernels (UDOT/SDOT/UMMLA, or widening NEON) accumulate in int32 (exact).
    Depthwise convolutions use their own int32 kernels (exact) in every layout.
    """
    act, weight = _layout(layout)
    flags = cpu_flags() if flags is None else flags
    if "asimd" in flags or "asimddp" in flags:
        return Int8Kernel(layout, "aarch64", "UDOT/SDOT" if "asimddp" in flags else "NEON widening", False)
    signed_weights = weight in (None, "int8")
    core = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags
    if "avx2" not in flags or "fma" not in flags:
        return Int8Kernel(layout, "SSE", "PMADDWD", False)
    if signed_weights:  # u8 x s8
        kernel = Int8Kernel(layout, "AVX2", "VPMADDUBSW", True)
        if "avx_vnni" in flags:
            kernel = Int8Kernel(layout, "AVX-VNNI", "VPDPBUSD", False)
        if core:
            kernel = Int8Kernel(layout, "AVX-512BW", "VPMADDUBSW", True)
            if "avx512_vnni" in flags:
                kernel = Int8Kernel(layout, "AVX-512 VNNI", "VPDPBUSD", False)
        if {"amx_tile", "amx_int8"} <= flags:
            kernel = Int8Kernel(layout, "AMX", "TDPBUSD", False)
        return kernel
    kernel = Int8Kernel(layout, "AVX2", "VPMADDWD", False)  # u8 x u8
    if core:
        kernel = Int8Kernel(layout, "AVX-512BW", "VPMADDWD", False)
    if "avx_vnni_int8" in flags:
        kernel = Int8Kernel(layout, "AVX-VNNI-INT8", "VPDPBUUD", False)
    return kernel


def run_onnx(session, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The session's output on ``inputs``, ``batch_size`` at a time, as one float tensor.  Inputs whose items
    differ in shape from what the model was exported for (its example's, the batch dimension aside; height and
    width are free under ``dynamic_hw``) are an error naming both shapes."""
    if isinstance(session, (str, Path)):
        raise TypeError(f"run_onnx takes an ONNX Runtime session, not a path: run_onnx(ort_session({str(session)!r}), "
                        "inputs, batch_size)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be one tensor of inputs [N, ...] (torch.cat a list of batches), got "
                        f"{type(inputs).__name__}")
    if inputs.dim() == 0 or len(inputs) == 0:
        raise ValueError(f"inputs of shape {tuple(inputs.shape)} hold no items: give a tensor [N, ...] with N >= 1")
    spec = session.get_inputs()[0]
    wanted = list(spec.shape)[1:]
    got = tuple(inputs.shape[1:])
    if len(wanted) != len(got) or any(isinstance(w, int) and w != g for w, g in zip(wanted, got)):
        shown = "(" + ", ".join(str(w) if isinstance(w, int) else "any" for w in wanted) + ("," if len(wanted) == 1
                                                                                               else "") + ")"
        raise ValueError(f"the inputs have items of shape {got}; the ONNX model was exported for {shown} (the example "
                         "given to export_onnx): resize or crop the inputs to that shape, or export again with an "
                         "example of theirs (an image-to-image model: export_onnx(..., dynamic_hw=True) takes any "
                         "height and width)")
    name = spec.name
    outs = [torch.from_numpy(session.run(None, {name: b.detach().cpu().float().contiguous().numpy()})[0])
            for b in torch.split(inputs, batch_size)]
    return torch.cat(outs)


INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QLinearConvTranspose", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QAttention", "NhwcQLinearConv"})
FLOAT_OPS = frozenset({"Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
                       "ConvTranspose"})


def integer_kernels(path, threads: int = 1) -> dict:
    """What ONNX Runtime runs for the model at ``path``: the op types of the graph it optimises at
    ``ORT_ENABLE_ALL`` (what :func:`ort_session` runs; it may hold ORT's own ops such as ``NchwcConv``).

    Returns ``{"level", "ops": {op: count}, "integer": {op: count}, "float": {op: count},
    "float_nodes": [names of the float Conv/Gemm/MatMul nodes], "quantize", "dequantize"}``.
    """
    import onnx
    import onnxruntime as ort
    path = Path(path)
    with tempfile.TemporaryDirectory() as d:
        so = _session_options(threads)
        so.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        try:
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RuntimeError(f"ONNX Runtime cannot load {path} ({type(e).__name__}); re-export it with "
                               "dqss.deploy.export_onnx") from e
        graph = onnx.load(so.optimized_model_filepath).graph
    ops = Counter(n.op_type for n in graph.node)
    return {"level": "ORT_ENABLE_ALL",
            "ops": dict(sorted(ops.items())),
            "integer": {k: v for k, v in sorted(ops.items()) if k in INTEGER_OPS},
            "float": {k: v for k, v in sorted(ops.items()) if k in FLOAT_OPS},
            "float_nodes": [n.name for n in graph.node if n.op_type in FLOAT_OPS],
            "quantize": ops.get("QuantizeLinear", 0) + ops.get("DynamicQuantizeLinear", 0),
            "dequantize": ops.get("DequantizeLinear", 0)}


# -- comparison ---------------------------------------------------------------------------------
def torch_outputs(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The PyTorch model's outputs on ``inputs`` (on the model's device), ``batch_size`` at a time, on the CPU."""
    from .api import outputs

    device = next(iter(model.state_dict().values()), torch.empty(0)).device
    return outputs(model, torch.split(inputs, batch_size), device)


def compare(qmodel: nn.Module, session, inputs: torch.Tensor, batch_size: int = 64) -> dict:
    """Fake-quantized PyTorch output vs ONNX Runtime's on the same ``inputs``.

    ``max_abs_diff`` / ``mean_abs_diff`` over all outputs; for logits (2-D outputs) ``top1_agreement``,
    the fraction of inputs whose arg-max class is the same (None otherwise).
    """
    ref = torch_outputs(qmodel, inputs, batch_size)
    out = run_onnx(session, inputs, batch_size)
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: PyTorch {tuple(ref.shape)}, ONNX Runtime {tuple(out.shape)}")
    diff = (ref - out).abs()
    top1 = None
    if ref.dim() == 2:
        top1 = float((ref.argmax(1) == out.argmax(1)).float().mean())
    return {"n": int(inputs.shape[0]), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "top1_agreement": top1}


def latency(session, x: torch.Tensor, runs: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``runs`` calls of ``session`` on the batch ``x`` (after ``warmup`` calls)."""
    return compare_latency({"_": session}, x, runs, warmup)["_"]


def compare_latency(sessions: dict, x: torch.Tensor, runs: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each session on the batch ``x``, the sessions timed in turn within
    each round (a, b, a, b, ...; :func:`dqss.timing.round_robin`, the warm-up calls in rounds too) so that a
    ratio between them sees the same machine state."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    feeds = {k: {s.get_inputs()[0].name: x.detach().cpu().float().contiguous().numpy()} for k, s in sessions.items()}
    calls = {k: (lambda s=s, feed=feeds[k]: s.run(None, feed)) for k, s in sessions.items()}
    return medians(round_robin(calls, runs, warmup, interleave_warmup=True))


def file_sizes(int8_path, fp_path) -> dict:
    """Bytes of the quantized and the float ONNX file, and their ratio."""
    q, f = Path(int8_path).stat().st_size, Path(fp_path).stat().st_size
    return {"int8_bytes": q, "fp_bytes": f, "ratio": q / f}


# -- per-layer codes (debugging a mismatch) ----------------------------------------------------------
@torch.no_grad()
def torch_act_codes(qmodel: nn.Module, inputs: torch.Tensor, layout: str = DEFAULT_LAYOUT) -> dict[str, torch.Tensor]:
    """The activation codes ``clamp(round(x / s) + z, qmin, qmax)`` each quantized layer's input gets in
    the fake-quantized model, stored as ``layout`` stores them (layers with a float input are left out)."""
    act_type = _layout(layout)[0]
    codes, handles = {}, []
    for name, m in quant_layers(qmodel).items():
        if isinstance(m.act_quant, nn.Identity):
            continue
        g = tensor_grid(m.act_quant)
        g = g.stored_as(act_type or g.container)
        handles.append(m.register_forward_pre_hook(
            lambda _m, args, name=name, g=g: codes.__setitem__(name, g.codes(args[0].float()))))
    try:
        qmodel.eval()(inputs)
    finally:
        for h in handles:
            h.remove()
    return codes


def onnx_act_codes(path, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The codes each activation ``QuantizeLinear`` of the exported file produces on ``inputs``, by layer.

    The graph is run with its QuantizeLinear outputs made graph outputs and ORT's optimisations off
    (a node producing a graph output is not fused), so these are the QDQ graph's own codes."""
    import onnx
    import onnxruntime as ort
    proto = onnx.load(str(path))
    names = {}
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1].endswith(".a_scale"):
            names[n.output[0]] = n.input[1][: -len(".a_scale")]
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.output[0]))
    so = _session_options(1, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    wanted = list(names)
    outs = session.run(wanted, {session.get_inputs()[0].name: inputs.detach().float().contiguous().numpy()})
    return {names[k]: torch.from_numpy(v.astype("float32")) for k, v in zip(wanted, outs)}
