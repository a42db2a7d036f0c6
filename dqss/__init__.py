"""DQSS: differentiable quantization strategy search, and the benchmark suite's library.

Modules are imported on demand (``import dqss`` stays light): ``quant`` (fake
quantization), ``stats`` (shared calibration statistics), ``strategy`` (the registry
that ``baselines/`` fills), ``layers`` (module swapping, BN folding), ``mixed`` and
``search`` (DQSS), ``ptq`` (building quantized models), ``results`` (the results contract: method
names, columns, the ``results/`` layout), ``track`` and ``classification`` (what the tracks' jobs share),
``cls_ptq``, ``cls_qat``, ``sr_ptq`` (each track's jobs).  The public flow (:mod:`dqss.api`) is reachable
from the package itself (``dqss.calibrate``, ...), and so are ``dqss.QuantPolicy`` and ``dqss.deploy``
(ONNX export and ONNX Runtime); ``__all__`` lists them.
"""

__version__ = "0.1.0"

# the public flow (dqss.api), imported on first use
_API = ("calibrate", "quantize", "search_assignment", "from_assignment", "from_stats", "integer_graph", "top1",
        "correct", "outputs", "agreement", "strategies", "save_assignment", "search_config", "model_fingerprint",
        "Calibration", "SearchResult", "SelectionSummary")
# submodules reachable as attributes after ``import dqss``, imported on first use
_MODULES = ("api", "deploy")

__all__ = [*_API, "QuantPolicy", *_MODULES]


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "QuantPolicy":
        from .layers import QuantPolicy

        return QuantPolicy
    if name in _MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'dqss' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(__all__))
