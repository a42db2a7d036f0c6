"""DQSS: differentiable quantization strategy search, and the benchmark suite's library.

Modules are imported on demand (``import dqss`` stays light): ``quant`` (fake
quantization), ``stats`` (shared calibration statistics), ``strategy`` (the registry
that ``baselines/`` fills), ``layers`` (module swapping, BN folding), ``mixed`` and
``search`` (DQSS), ``ptq`` (building quantized models), ``cls_ptq`` (the workflow's jobs).
"""

__version__ = "0.1.0"
