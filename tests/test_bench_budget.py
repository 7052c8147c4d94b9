"""The pure helper behind benchmarks/budget.py's "better than MACs" verdict: a swept baseline's
error at the plan's measured latency. No planning, no timing."""
import pytest

from .conftest import import_benchmark

bench = import_benchmark("budget")


def test_error_at_the_plans_latency_is_read_off_the_sweep():
    sweep = [(1.0, 0.9), (2.0, 0.8), (3.0, 0.5)]  # (ms, error): faster points lose more
    assert bench._err_at(sweep, 2.5) == pytest.approx(0.65)  # linear between the bracketing points
    assert bench._err_at(sweep, 2.0) == pytest.approx(0.8)
    assert bench._err_at(sweep, 5.0) == pytest.approx(0.5)  # slower than every point: the best of them
    assert bench._err_at(sweep, 0.5) is None  # no uniform point as fast as the plan
    # not monotone: a faster point with less error is what the baseline reaches at that latency
    assert bench._err_at([(1.0, 0.3), (2.0, 0.8)], 1.5) == pytest.approx(0.3)
