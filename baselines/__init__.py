"""The compared methods: one module per method, each registering its strategies.

Every module in this package is imported here (except private ones and ``TEMPLATE``),
so a new file is all it takes for a strategy to appear as a uniform baseline and as a
DQSS candidate; see ``TEMPLATE.py``.
"""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "TEMPLATE":
        importlib.import_module(f"{__name__}.{_info.name}")
