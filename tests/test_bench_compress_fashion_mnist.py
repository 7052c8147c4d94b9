"""The pure helpers of benchmarks/compress_fashion_mnist.py: Pareto front, ratios, the acceptance verdict,
and that every benchmark pipeline names registered passes with valid arguments. No training, no timing."""
import pytest

from compiler.pipelines import load_pipeline

from .conftest import import_benchmark

bench = import_benchmark("compress_fashion_mnist")


def test_pareto_front_keeps_only_undominated_points_by_cost():
    costs = [10.0, 5.0, 5.0, 2.0, 8.0, 1.0]
    accs = [0.92, 0.90, 0.91, 0.85, 0.89, 0.80]
    assert bench.pareto_front(costs, accs) == [5, 3, 2, 0]  # index 1 ties on cost and loses; 4 is beaten by 2


def _row(model, point, method, params, ocl_ms, ort_ms, acc):
    lat = {"256": {"opencl_ms": ocl_ms, "onnxruntime_ms": ort_ms}}
    r = {"model": model, "point": point, "method": method, "params": params, "macs": params * 100, "latency": lat}
    return {**r, "acc_before": acc} if method == "original" else {**r, "acc_before": 0.5, "acc_kd": acc, "acc_plain": acc - 0.01}


def test_acceptance_picks_the_most_accurate_passing_point():
    rows = [_row("small_cnn", "original", "original", 40_000, 40.0, 30.0, 0.912),
            _row("small_cnn", "a", "prune", 9_000, 18.0, 16.0, 0.905),  # passes
            _row("small_cnn", "b", "prune", 8_000, 15.0, 14.0, 0.909),  # passes, more accurate
            _row("small_cnn", "c", "tucker2", 20_000, 15.0, 14.0, 0.911)]  # only 2x fewer params
    bench.add_ratios(rows)
    assert rows[1]["params_x"] == pytest.approx(40 / 9)
    assert rows[1]["latency"]["256"]["opencl_speedup"] == pytest.approx(40 / 18)
    assert rows[2]["acc_delta_pt"] == pytest.approx(-0.3)
    v = bench.acceptance(rows)
    assert v["met"] and v["point"] == "b" and v["misses"] == []
    assert v["onnxruntime_speedup"] == pytest.approx(30 / 14)


def test_acceptance_names_what_the_closest_point_misses():
    rows = [_row("small_cnn", "original", "original", 40_000, 40.0, 30.0, 0.912),
            _row("small_cnn", "a", "prune", 9_000, 30.0, 16.0, 0.890),  # misses speed and accuracy
            _row("small_cnn", "b", "prune", 9_000, 18.0, 16.0, 0.880)]  # misses accuracy only
    bench.add_ratios(rows)
    v = bench.acceptance(rows)
    assert not v["met"] and v["point"] == "b"
    assert v["misses"] == ["accuracy -3.20 pt > 1 pt"]


def test_every_benchmark_pipeline_is_valid():
    for p in bench.POINTS:
        assert len(load_pipeline(p.pipeline)) == 3 + len(p.passes)
    assert any(p.plain for p in bench.POINTS) and any(p.main for p in bench.POINTS)
    assert all(set(p.quick) <= set(p.models) <= set(bench.MODELS) for p in bench.POINTS)


def test_compass_needs_the_target_and_a_win_over_every_uniform_recipe_as_fast():
    m = bench.COMPASS_MODEL

    def rows(u1_ms, u1_acc):
        r = [_row(m, "original", "original", 300_000, 30.0, 20.0, 0.915),
             _row(m, "planner", "budget", 28_000, 9.0, 7.0, 0.910),  # 10.7x, 3.33x, -0.5 pt
             _row(m, "u1", "prune", 30_000, u1_ms, 7.0, u1_acc),
             _row(m, "u2", "prune+tucker2", 40_000, 12.0, 8.0, 0.914)]  # more accurate, but slower: no rival
        bench.add_ratios(r)
        return r

    v = bench.compass(rows(9.2, 0.905))
    assert v["met"] and v["point"] == "planner" and v["best_uniform_as_fast"] == "u1" and len(v["uniform"]) == 2
    v = bench.compass(rows(9.2, 0.911))
    assert not v["met"] and v["misses"] == ["uniform 'u1' (9.20 ms) is as accurate or more (91.10% against 91.00%)"]
    v = bench.compass(rows(9.9, 0.905))  # no uniform recipe as fast: the claim cannot be made
    assert not v["met"] and v["best_uniform_as_fast"] is None and "not compared" in v["misses"][0]
