"""DQSS: differentiable quantization strategy search, and the benchmark suite's library.

Modules are imported on demand (``import dqss`` stays light): ``quant`` (fake
quantization), ``stats`` (shared calibration statistics), ``strategy`` (the registry
that ``baselines/`` fills), ``layers`` (module swapping, BN folding), ``mixed`` and
``search`` (DQSS), ``ptq`` (building quantized models), ``results`` (the results contract: method
names, columns, the ``results/`` layout), ``track`` and ``classification`` (what the tracks' jobs share),
``cls_ptq``, ``cls_qat``, ``sr_ptq`` (each track's jobs).
"""

__version__ = "0.1.0"

# the public flow (dqss.api), imported on first use
_API = ("calibrate", "quantize", "search_assignment", "from_assignment", "from_stats", "integer_graph", "top1",
        "outputs", "agreement", "Calibration", "SearchResult")


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "QuantPolicy":
        from .layers import QuantPolicy

        return QuantPolicy
    raise AttributeError(f"module 'dqss' has no attribute '{name}'")
