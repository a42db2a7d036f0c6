"""DQSS: differentiable quantization strategy search, and the benchmark suite's library.

Modules are imported on demand (``import dqss`` stays light): ``quant`` (fake
quantization), ``stats`` (shared calibration statistics), ``strategy`` (the registry
that ``baselines/`` fills), ``layers`` (module swapping, BN folding), ``mixed`` and
``search`` (DQSS), ``ptq`` (building quantized models), ``results`` (the results contract: method
names, columns, the ``results/`` layout), ``track`` and ``classification`` (what the tracks' jobs share),
``cls_ptq``, ``cls_qat``, ``sr_ptq`` (each track's jobs).
"""

__version__ = "0.1.0"
