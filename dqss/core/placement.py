"""Where the activation quantizers sit: the papers' placement, and the integer graph an int8 runtime needs.

``layers`` (the papers' convention, every table's default) quantizes the input and the weight of each
Conv2d/Linear; whatever lies between two such layers (residual adds, pooling, concatenations) runs in float.
ONNX Runtime can then fuse a conv into an integer kernel only where its output feeds nothing but the next
layer's QuantizeLinear: in resnet18 8 of 21 layers, the rest are float convolutions on dequantized inputs.

``integer`` also quantizes every tensor that enters or leaves an integer operation of the graph: both inputs and
the output of each residual add and concatenation (the output after the activation that follows it, where an
int8 runtime fuses it), and the input of each pooling.  ONNX Runtime then runs the adds as ``QLinearAdd``, the
convolutions feeding them as ``QLinearConv`` and the pooling on integer inputs.  Each such tensor has one
quantizer, shared by all its consumers: where a quantized layer reads the tensor, its own input quantizer
(the method's, unchanged) is applied at the tensor's producer and shared by the other readers; a tensor no layer
reads is quantized on the range of ``strategy`` (``mse`` by default: the L2-optimal clipping of its calibration
histogram) on the grid the caller gives (:func:`dqss.api.integer_graph`'s ``bits``; the deploy check's
``deploy.integer_bits``, 8 by default).  The quantizer is applied to the output of the innermost module that returns the tensor (a
forward hook), so no module is renamed and the model keeps its state-dict keys.

The graph is found by running an example under a :class:`~torch.overrides.TorchFunctionMode` that records the
integer operations with the identity (object and version) of their tensors; a tensor that no module returns
(the sum of two functional expressions) cannot carry a quantizer and is reported as unplaced.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .layers import QuantLayer
from .quant import QuantSpec
from .stats import collect_act_stats

log = logging.getLogger(__name__)

PLACEMENTS = ("layers", "integer")
DEFAULT_PLACEMENT = "layers"
POINT = "dqss_point"  # the submodule that quantizes its parent's output (see place_integer)

# torch functions whose inputs and outputs the integer graph keeps in integers (matched on the function name)
_ADDS = {"add", "add_", "__add__", "__radd__", "__iadd__"}
_CATS = {"cat", "concat", "concatenate"}
# pooling: their inputs are quantized (the output feeds a layer, which quantizes it, or an add)
_POOLS = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d",
          "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "mean"}
# modules an add's output passes through before it is quantized (an int8 runtime fuses them into the add)
_PASS = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout)
_PASS_FUNCS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_"}  # the same as functions (torch.relu(x + y))


def _key(t: torch.Tensor) -> tuple[int, int]:
    return id(t), t._version


@dataclass
class Point:
    """One tensor of the integer graph: the module whose output it is, the integer operations that read it,
    and the quantized layers that read it too (whose input quantizer it then shares)."""

    carrier: str  # the innermost module returning the tensor, called once per forward
    ops: list[str] = field(default_factory=list)  # e.g. "add input", "add output", "max_pool2d input"
    readers: list[str] = field(default_factory=list)  # quantized layers whose input it is


@dataclass
class Placement:
    """What :func:`place_integer` did."""

    points: dict[str, Point]  # carrier name -> point
    unplaced: list[str] = field(default_factory=list)  # integer operations with a tensor no module returns
    # quantized layers reading one tensor: all take the first one's input quantizer (one tensor, one grid)
    tied: list[list[str]] = field(default_factory=list)
    shared: int = 0  # points quantized by a reading layer's own input quantizer
    calibrated: int = 0  # points quantized on their own calibrated range

    def summary(self) -> str:
        return (f"{len(self.points)} integer-graph tensors quantized ({self.shared} with a reading layer's "
                f"quantizer, {self.calibrated} on their own range); "
                f"{sum(len(t) - 1 for t in self.tied)} layers share the input quantizer of another reader"
                + (f"; left in float: {', '.join(self.unplaced)}" if self.unplaced else ""))


class _Trace(TorchFunctionMode):
    """Records, during one forward pass, which module returns which tensor, which quantized layer reads which
    tensor, and the integer operations (adds, concatenations, pooling) with their input and output tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.keep: list[torch.Tensor] = []  # every tensor seen stays alive, so no id is reused during the pass
        self.returned: dict[tuple, list[str]] = {}  # tensor -> modules returning it, innermost first
        self.read_by: dict[tuple, list[str]] = {}  # tensor -> modules reading it (first positional input)
        self.ops: list[tuple[str, list[tuple], tuple | None]] = []  # (function, input tensors, output tensor)
        self.types: dict[str, type] = {}
        self.calls: list[tuple[str, tuple, tuple]] = []  # (module, input tensor, output tensor) per call
        self.stack: list[tuple | None] = []
        self.count: dict[str, int] = {}  # calls per module in the pass
        self.depth = 0  # > 0 inside a quantized layer (its quantizers and conv are not the graph's)
        self.handles = []
        inner = {n for q, m in model.named_modules() if isinstance(m, QuantLayer)
                 for n, _ in m.named_modules(prefix=q) if n != q}
        for name, m in model.named_modules():
            if name in inner or not name:
                continue
            self.types[name] = type(m)
            self.handles.append(m.register_forward_pre_hook(self._pre(name, isinstance(m, QuantLayer))))
            self.handles.append(m.register_forward_hook(self._post(name, isinstance(m, QuantLayer))))

    def _pre(self, name: str, layer: bool):
        def hook(_m, args):
            key = None
            if self.depth == 0 and args and isinstance(args[0], torch.Tensor):
                self.keep.append(args[0])
                key = _key(args[0])
                self.read_by.setdefault(key, []).append(name)
            self.stack.append(key)
            self.depth += layer
        return hook

    def _post(self, name: str, layer: bool):
        def hook(_m, _args, out):
            self.depth -= layer
            key_in = self.stack.pop()
            if self.depth == 0:
                self.count[name] = self.count.get(name, 0) + 1
            if self.depth == 0 and isinstance(out, torch.Tensor):
                self.keep.append(out)
                self.returned.setdefault(_key(out), []).append(name)
                if key_in is not None:
                    self.calls.append((name, key_in, _key(out)))
        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _PASS_FUNCS and not self.depth and args and isinstance(args[0], torch.Tensor):
            key_in = _key(args[0])
            self.keep.append(args[0])
            out = func(*args, **kwargs)
            self.keep.append(out)
            self.read_by.setdefault(key_in, []).append(f"F.{name}")
            self.types[f"F.{name}"] = nn.ReLU
            self.calls.append((f"F.{name}", key_in, _key(out)))
            return out
        kind = "add" if name in _ADDS else "cat" if name in _CATS else name if name in _POOLS else None
        if kind is None or self.depth:
            return func(*args, **kwargs)
        flat = list(args[0]) if kind == "cat" and isinstance(args[0], (list, tuple)) else list(args)
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        if kind == "add" and len(tensors) < 2:  # x + constant: not a residual add
            return func(*args, **kwargs)
        if kind == "mean" and not _spatial_mean(args, kwargs):
            return func(*args, **kwargs)
        self.keep.extend(tensors)
        ins = [_key(t) for t in tensors]
        out = func(*args, **kwargs)
        if isinstance(out, tuple):  # max_pool2d_with_indices
            out = out[0]
        self.keep.append(out)
        self.ops.append((kind, ins, _key(out)))
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def _spatial_mean(args, kwargs) -> bool:
    """``x.mean((2, 3))``-like: a global average pool over the last two dimensions of a 4-d tensor."""
    x = args[0] if args else None
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or dim is None:
        return False
    dims = {d % 4 for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    return dims == {2, 3}


def find_points(qmodel: nn.Module, example: torch.Tensor) -> Placement:
    """The tensors of ``qmodel``'s integer graph (see the module docstring), found on one forward pass."""
    trace = _Trace(qmodel)
    was = qmodel.training
    try:
        with torch.no_grad(), trace:
            final = qmodel.eval()(example)
    finally:
        trace.remove()
        qmodel.train(was)
    points: dict[str, Point] = {}
    unplaced: list[str] = []

    op_inputs = {k for _, ins, _ in trace.ops for k in ins}

    def place(key, what: str):
        # a module called more than once (torchvision's BasicBlock reuses its ReLU) cannot carry a quantizer for
        # one of its calls: then the next enclosing module that returns the tensor does (the block)
        carriers = [c for c in trace.returned.get(key, []) if trace.count.get(c) == 1]
        readers = trace.read_by.get(key, [])
        layers = [r for r in readers if issubclass(trace.types[r], QuantLayer)]
        if not carriers:
            # no module returns it (torch.relu(x + y) in a forward): fine where only quantized layers read it,
            # whose input quantizers then quantize it; else it stays float
            if key in op_inputs or len(layers) < len(readers) or not readers:
                unplaced.append(what)
            return
        p = points.setdefault(carriers[0], Point(carriers[0]))
        p.ops.append(what)
        p.readers.extend(r for r in layers if r not in p.readers)

    for i, (kind, ins, out) in enumerate(trace.ops):
        if kind in ("add", "cat"):
            for k in ins:
                place(k, f"{kind} {i} input")
            place(_after_activation(trace, out), f"{kind} {i} output")
        elif not (isinstance(final, torch.Tensor) and out == _key(final)):  # a pool, unless it gives the output
            for k in ins:
                place(k, f"{kind} {i} input")
    tied = [[r for r in readers if issubclass(trace.types[r], QuantLayer)] for readers in trace.read_by.values()]
    return Placement(points, unplaced, [t for t in tied if len(t) > 1])


def _after_activation(trace: _Trace, key: tuple) -> tuple:
    """The tensor an operation's output ``key`` becomes through the activation (and identity) modules that
    follow it, which an int8 runtime fuses into the operation: the tensor to quantize."""
    seen = {key}
    while True:
        nxt = [out for name, k, out in trace.calls if k == key and issubclass(trace.types[name], _PASS)
               and out not in seen]
        if not nxt:
            return key
        key = nxt[0]
        seen.add(key)


class _QuantizeOutput:
    """A forward hook: the module's output through its ``dqss_point`` submodule."""

    def __call__(self, module: nn.Module, _args, output):
        return getattr(module, POINT)(output)


def attach(module: nn.Module, quantizer: nn.Module) -> None:
    """Quantize ``module``'s output with ``quantizer`` (kept as its ``dqss_point`` submodule, so copies and the
    exporter find it)."""
    if hasattr(module, POINT):
        raise ValueError(f"{type(module).__name__} already quantizes its output")
    module.add_module(POINT, quantizer)
    module.register_forward_hook(_QuantizeOutput())


def points_of(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of ``model`` whose output is quantized (an integer-graph placement), by name."""
    return {n: m for n, m in model.named_modules() if isinstance(getattr(m, POINT, None), nn.Module)}


def place_integer(qmodel: nn.Module, fp_model: nn.Module, batches, spec: QuantSpec, *, strategy="mse",
                  example: torch.Tensor | None = None, device="cpu") -> Placement:
    """Turn ``qmodel`` (fake-quantized in the papers' placement) into the integer-graph placement, in place.

    ``fp_model``: the BN-folded float model ``qmodel`` was made from (same module names), whose outputs on the
    calibration ``batches`` (tensors) give the ranges of the tensors no quantized layer reads, by ``strategy``
    (a registered name or a Strategy) on the grid ``spec`` (the run's activation grid).  Returns what was placed.
    """
    from .strategy import LayerContext, Strategy, get_strategy

    batches = list(batches)
    if not batches:
        raise ValueError("place_integer needs at least one calibration batch")
    ex = (example if example is not None else batches[0][:1]).to(device)
    placement = find_points(qmodel, ex)
    if hasattr(qmodel, POINT) or points_of(qmodel):
        raise ValueError("the model already has an integer-graph placement")
    for group in placement.tied:  # one tensor, one grid: every reader quantizes it as the first one does
        first = qmodel.get_submodule(group[0]).act_quant
        if not isinstance(first, nn.Identity):
            for r in group[1:]:
                layer = qmodel.get_submodule(r)
                if not isinstance(layer.act_quant, nn.Identity):
                    layer.act_quant = first
    own = [n for n, p in placement.points.items() if not _reader_quantizer(qmodel, p)]
    stats = (collect_act_stats(fp_model, {n: fp_model.get_submodule(n) for n in own}, batches, device=device,
                               desc="integer-graph calibration", outputs=True) if own else {})
    strat = strategy if isinstance(strategy, Strategy) else get_strategy(str(strategy))
    for name, p in placement.points.items():
        q = _reader_quantizer(qmodel, p)
        if q is not None:
            placement.shared += 1
        else:
            st = stats[name]
            q = strat.build_act_quantizer(spec, st, LayerContext(name, qmodel.get_submodule(name))).to(device)
            placement.calibrated += 1
        attach(qmodel.get_submodule(name), q)
    log.info("integer graph: %s", placement.summary())
    return placement


def _reader_quantizer(qmodel: nn.Module, p: Point) -> nn.Module | None:
    """The input quantizer of the first quantized layer reading the point's tensor, if any has one."""
    for r in p.readers:
        q = qmodel.get_submodule(r).act_quant
        if not isinstance(q, nn.Identity):
            return q
    return None


def check_placement(placement: str) -> str:
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement '{placement}'; choose one of {list(PLACEMENTS)}")
    return placement
