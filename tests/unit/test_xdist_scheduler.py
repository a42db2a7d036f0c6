"""The test session's pytest-xdist scheduler (tests/conftest.py): a module is one unit of work, so that its module
fixtures are built on one worker only; test_workflow.py's tests are units of their own; another --dist keeps
pytest-xdist's own scheduler."""
import importlib.util
from types import SimpleNamespace

from helpers import ROOT


def _conftest():
    spec = importlib.util.spec_from_file_location("tests_root_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Config(SimpleNamespace):
    def getvalue(self, name):
        return getattr(self, name)


def test_a_module_is_one_unit_and_test_workflow_spreads():
    conftest = _conftest()
    sched = conftest.pytest_xdist_make_scheduler(_Config(dist="loadscope", tx=["2*popen"]), log=None)
    scope = sched._split_scope
    recon = "tests/workflow/test_recon_workflow.py"
    assert scope(f"{recon}::test_reconstruction_target_runs_only_its_jobs") == recon
    assert scope(f"{recon}::test_bad_reconstruction_config[section0-x]") == recon
    wf = "tests/workflow/test_workflow.py::test_end_to_end"
    assert scope(wf) == wf
    assert scope("tests/workflow/test_workflow.py::test_deleted_job_numbers_reach_metrics_csv") != scope(wf)


def test_another_dist_keeps_xdists_scheduler():
    assert _conftest().pytest_xdist_make_scheduler(_Config(dist="load"), log=None) is None
