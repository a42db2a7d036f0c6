"""The workflow tier: every test here runs Snakemake in a subprocess (dry runs, lint, real runs; the session's
`tiny_run` of tests/conftest.py) or belongs with those that do.  Each is marked `workflow` by its place, so
`python -m pytest -m "not workflow"` leaves exactly this folder out; a test module here needs no marker of
its own (`slow` still marks the long ones)."""
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # a conftest's hook sees every collected item, not only this folder's
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.workflow)
