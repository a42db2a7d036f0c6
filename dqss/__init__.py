"""DQSS: differentiable quantization strategy search, and the benchmark suite's library.

Modules are imported on demand (``import dqss`` stays light).  The package is layered (docs/architecture.md):
``options`` and ``results`` (leaves: config limits, the results contract), ``core`` (quantizer math, statistics,
the strategy registry, layers, the DQSS mixture), ``algorithms`` (building, searching, selecting, QAT,
reconstruction), ``cls`` and ``sr`` (data, models and metrics of each task), ``api``, ``deploy`` and ``plugin``
(the public flow, ONNX export, the one module ``baselines/`` import), ``tracks`` (the workflow's jobs, one module
per track), ``report`` (tables and figures from ``results/``), ``workflow``/``schema``/``reference`` (Snakemake
glue) and ``bench`` (measurement CLIs).  The public flow (:mod:`dqss.api`) is reachable from the package itself
(``dqss.calibrate``, ...), and so are ``dqss.QuantPolicy`` and ``dqss.deploy`` (ONNX export and ONNX Runtime);
``__all__`` lists them.
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
        from .core.layers import QuantPolicy

        return QuantPolicy
    if name in _MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'dqss' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(__all__))
