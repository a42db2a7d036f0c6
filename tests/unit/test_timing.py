"""dqss.timing: the one measurement loop of the benchmarks and the deployment's latency comparison (the QAT step the
QAT benchmark times is tested with the QAT training, in test_qat.py)."""
from __future__ import annotations

import pytest
import torch

from dqss.timing import clock, medians, round_robin, saved_tensor_mb, sync


def _recorder():
    calls = []
    return calls, {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}


def test_round_robin_warms_each_candidate_up_then_interleaves_the_timed_calls():
    calls, fns = _recorder()
    times = round_robin(fns, rounds=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_round_robin_can_interleave_the_warm_up_too():
    calls, fns = _recorder()
    round_robin(fns, rounds=1, warmup=2, interleave_warmup=True)
    assert calls == ["a", "b"] * 3


def test_round_robin_needs_one_round():
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        round_robin({"a": lambda: None}, rounds=0)


def test_clock_returns_the_result_and_its_seconds_and_medians_are_per_candidate():
    out, seconds = clock(lambda: 42, "cpu")
    assert out == 42 and seconds >= 0
    sync("cpu")
    sync(None)  # nothing to wait for
    assert medians({"a": [3.0, 1.0, 2.0], "b": [1.0, 4.0]}) == {"a": 2.0, "b": 2.5}


def test_saved_tensor_mb_leaves_out_persistent_tensors():
    w = torch.ones(256, 256, requires_grad=True)  # 0.25 MB
    x = torch.ones(256, 256, requires_grad=True)
    assert saved_tensor_mb(lambda: (w * x).sum()) == pytest.approx(0.5)
    assert saved_tensor_mb(lambda: (w * x).sum(), [w]) == pytest.approx(0.25)

