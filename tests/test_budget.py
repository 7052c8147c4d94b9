"""Budgets: validation, allocation over candidate tables, the budget pass, plans as replayable data."""
import copy
import re
from dataclasses import replace

import pytest
import torch
from torch import nn

import compiler
from compiler.budget import Budget, Plan
from compiler.cost.allocate import Candidate, _greedy, allocate
from compiler.errors import BudgetError
from compiler.target import Target

from .conftest import rel_err

CPU = Target(name="test cpu", kind="cpu", compute_units=2, clock_mhz=2600, simd_width=16, local_mem_bytes=1 << 20,
             global_mem_bytes=1 << 34, peak_gflops=200.0, bandwidth_gbs=40.0, launch_us=5.0, source="test")


@pytest.mark.parametrize("kwargs,match", [
    ({"latency_ms": -1}, "latency_ms must be a positive number"),
    ({"latency_ratio": 1.5}, "at most 1"),
    ({"latency_ms": 3, "latency_ratio": 0.5}, "not both"),
    ({"max_output_error": 0.1}, "needs at least one of"),
    ({"params": float("nan")}, "params must be a positive number"),
])
def test_bad_budgets_are_typed_errors(kwargs, match):
    with pytest.raises(BudgetError, match=match):
        Budget(**kwargs)
    with pytest.raises(BudgetError, match=r"unknown budget keys \['latency'\]"):
        Budget.from_dict({"latency": 3})


def _c(ms, err, choice="x"):
    return Candidate(None if choice is None else {"method": "tucker2", "rank": choice}, ms, int(ms * 10), int(ms * 100), err)


TABLES = {
    "a": [_c(10, 0, None), _c(9, 0.0005, 0.75), _c(5, 0.1, 0.25)],
    "b": [_c(10, 0, None), _c(5, 0.06, 0.5)],
    "c": [_c(4, 0, None), _c(3, 0.5, 0.5)],
}


def test_allocation_meets_the_limit_at_least_error_and_is_never_worse_than_greedy():
    fixed = {"ms": 1.0}
    for limit in (24.0, 20.0, 16.0, 14.0):
        a = allocate(TABLES, {"ms": limit}, fixed)
        assert a.totals["ms"] <= limit
        greedy = _greedy(TABLES, lambda c: c.ms / limit,
                         lambda p: 1 + sum(c.ms for c in p.values()) <= limit)[1]
        assert a.error <= sum(c.error for c in greedy.values()) + 1e-12
    # brute force over the 12 combinations: the allocation is optimal on this table at 20 ms
    best = min((x.error + y.error + z.error, (x, y, z)) for x in TABLES["a"] for y in TABLES["b"] for z in TABLES["c"]
               if 1 + x.ms + y.ms + z.ms <= 20)
    assert allocate(TABLES, {"ms": 20.0}, fixed).error == pytest.approx(best[0])


def test_several_limits_hold_together():
    a = allocate(TABLES, {"ms": 22.0, "params": 190.0})
    assert a.totals["ms"] <= 22 and a.totals["params"] <= 190


def test_impossible_budget_names_the_closest_achievable():
    with pytest.raises(BudgetError, match=r"closest achievable.*ms 13 \(limit 10\)"):
        allocate(TABLES, {"ms": 10.0})
    with pytest.raises(BudgetError, match="limits must be some of"):
        allocate(TABLES, {"watts": 3.0})


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(64, 64, 1), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(torch.relu(self.stem(x))).mean((2, 3)))


def _budget_row(cm):
    return next(r for r in cm.report.rows if r.name == "budget")


def test_budget_pass_meets_the_predicted_budget_and_its_plan_replays(tmp_path):
    model, x = Net().eval(), torch.randn(2, 3, 32, 32)
    plan_path = tmp_path / "plan.json"
    pipeline = ["cleanup", {"name": "budget", "budget": Budget(latency_ratio=0.7), "target": CPU,
                            "plan_path": str(plan_path), "prune_ratios": []}, "fuse"]
    cm = compiler.compile(model, x, pipeline=pipeline)
    summary = _budget_row(cm).summary
    assert summary["prune"] == {}
    assert summary["after"]["ms"] <= 0.7 * summary["before"]["ms"] * 1.0001
    assert summary["plan"] and set(summary["plan"]) <= {"body.0", "body.2", "body.4"}  # stem and head kept
    assert {c["method"] for c in summary["plan"].values()} <= {"tucker2", "svd"}
    plan = Plan.load(plan_path)
    assert plan.layers == summary["plan"]
    replayed = compiler.compile(model, x, pipeline=["cleanup"] + plan.pipeline() + ["fuse"])
    with torch.no_grad():
        assert rel_err(cm(x), replayed(x)) < 1e-5  # the same decompositions, from data


@pytest.mark.parametrize("ranks", [[], [0.5, 0.25]])
def test_budget_prunes_channel_groups_and_the_plan_replays(tmp_path, ranks):
    model, x = Net().eval(), torch.randn(2, 3, 32, 32)
    plan_path = tmp_path / "plan.json"
    pipeline = ["cleanup", {"name": "budget", "budget": Budget(latency_ratio=0.6), "target": CPU, "ranks": ranks,
                            "prune_ratios": [0.25, 0.5], "plan_path": str(plan_path)}, "fuse"]
    cm = compiler.compile(model, x, pipeline=pipeline)
    summary = _budget_row(cm).summary
    assert summary["after"]["ms"] <= 0.6 * summary["before"]["ms"] * 1.0001  # met after applying, pruning included
    assert summary["prune"] and set(summary["prune"].values()) <= {0.25, 0.5}
    assert summary["considered"][f"prune:{next(iter(summary['prune']))}"] == "prune"
    widths = [m.out_channels for m in cm.graph_module.modules() if isinstance(m, nn.Conv2d)]
    assert sum(widths) < 32 + 64 * 3 and all(w % 8 == 0 for w in widths)  # fewer channels, multiples of 8
    plan = Plan.load(plan_path)
    assert plan.prune == summary["prune"] and plan.pipeline()[0]["name"] == "prune_channels"
    replayed = compiler.compile(model, x, pipeline=["cleanup"] + plan.pipeline() + ["fuse"])
    with torch.no_grad():
        assert rel_err(cm(x), replayed(x)) < 1e-5
    bad = tmp_path / "bad.json"
    bad.write_text(plan_path.read_text().replace('"prune": {', '"prune": {"x": 2, '))
    with pytest.raises(BudgetError, match=r"prune\['x'\] must be a ratio in \(0, 1\), got 2"):
        Plan.load(bad)


def test_budget_pass_options_are_checked():
    from passes.budget import BudgetPass

    with pytest.raises(compiler.PipelineError, match="ranks or prune_ratios"):
        BudgetPass(budget={"params": 10}, ranks=(), prune_ratios=())
    with pytest.raises(compiler.PipelineError, match=r"prune_ratios must be fractions in \(0, 1\), got \[1.5\]"):
        BudgetPass(budget={"params": 10}, prune_ratios=(1.5,))


def test_compile_budget_inserts_the_pass_before_fuse():
    from compiler.api import with_budget

    names = [p.name for p in with_budget("default", Budget(params=1000))]
    assert names == ["cleanup", "fold_bn", "budget", "fuse"]
    with pytest.raises(compiler.PipelineError, match="already has a 'budget' pass"):
        with_budget([{"name": "budget", "budget": {"params": 10}}], Budget(params=1000))


def test_impossible_budget_in_compile_is_a_budget_error():
    model, x = Net().eval(), torch.randn(1, 3, 16, 16)
    with pytest.raises(BudgetError, match="closest achievable"):
        compiler.compile(model, x, pipeline=["cleanup", {"name": "budget", "budget": {"params": 100}, "target": CPU}])


def test_never_slower_drops_factorizations_the_target_runs_slower():
    from passes.budget import BudgetPass

    # launches dominate: a 3-kernel Tucker-2 chain is slower than the conv it replaces
    slow_launch = replace(CPU, launch_us=5000.0)
    model, x = Net().eval(), torch.randn(1, 3, 16, 16)
    gm = compiler.compile(model, x, pipeline=["cleanup"]).graph_module
    p = BudgetPass(budget=Budget(latency_ratio=0.9), target=slow_launch)
    node = next(n for n in gm.graph.nodes if n.target == "body.2")
    inp = torch.randn(1, 64, 16, 16)
    score = {}

    def sensitivity(g):  # the budget pass scores a candidate on the graph with it swapped in
        score[type(g.get_submodule("body.2")).__name__] = 1
        return 0.5

    assert [c.choice for c in p._candidates(gm, node, inp, p.cost_model(), sensitivity)] == [None]
    fast = BudgetPass(budget=Budget(latency_ratio=0.9), target=CPU)
    table = fast._candidates(gm, node, inp, fast.cost_model(), sensitivity)
    assert len(table) > 1 and all(c.ms < table[0].ms and c.error == 0.5 for c in table[1:])
    assert score == {"Sequential": 1} and type(gm.get_submodule("body.2")) is nn.Conv2d  # swapped back


def test_max_output_error_holds_when_measured():
    model, x = Net().eval(), torch.randn(2, 3, 32, 32)
    loose = compiler.compile(model, x, pipeline=["cleanup", {"name": "budget", "target": CPU,
                                                             "budget": {"latency_ratio": 0.9}}])
    err = _budget_row(loose).summary["output_rel_err"]
    assert err > 0
    tight = compiler.compile(model, x, pipeline=["cleanup", {"name": "budget", "target": CPU,
                                                             "budget": {"latency_ratio": 1.0, "max_output_error": err / 2}}])
    summary = _budget_row(tight).summary
    assert summary["output_rel_err"] <= err / 2
    with torch.no_grad():
        assert rel_err(model(x), tight(x)) <= err / 2 + 1e-6


def test_search_meets_the_budget_and_is_never_worse_than_the_allocation(tmp_path):
    pytest.importorskip("optuna")
    model, x = Net().eval(), torch.randn(2, 3, 32, 32)

    def run(**extra):
        cm = compiler.compile(model, x, pipeline=["cleanup", {"name": "budget", "budget": {"latency_ratio": 0.6},
                                                              "target": CPU, **extra}])
        return _budget_row(cm).summary

    allocated = run()
    found = run(search={"trials": 12, "sampler": "tpe", "seed": 0})
    assert found["allocator"] == "search (tpe)" and found["search"]["trials"] == 12
    assert found["after"]["ms"] <= 0.6 * found["before"]["ms"] * 1.0001
    assert found["output_rel_err"] <= allocated["output_rel_err"] + 1e-9
    front = found["search"]["pareto"]
    assert front and all(a["ms"] < b["ms"] and a["error"] > b["error"] for a, b in zip(front, front[1:]))
    assert run(search={"trials": 12, "sampler": "tpe", "seed": 0})["plan"] == found["plan"]  # seeded: repeatable
    nsga = run(search={"trials": 8, "sampler": "nsga2", "seed": 1})
    assert nsga["after"]["ms"] <= 0.6 * nsga["before"]["ms"] * 1.0001


def test_search_workers_share_a_study_through_storage(tmp_path):
    pytest.importorskip("optuna")
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'study.db'}"
    script = f"""
import torch, compiler
from tests.test_budget import Net, CPU
torch.manual_seed(0)
model, x = Net().eval(), torch.randn(2, 3, 32, 32)
cm = compiler.compile(model, x, pipeline=["cleanup", {{"name": "budget", "budget": {{"latency_ratio": 0.6}}, "target": CPU,
                                                      "search": {{"trials": 5, "storage": "{url}"}}}}])
print(next(r for r in cm.report.rows if r.name == "budget").summary["search"]["trials"])
"""
    workers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outs
    seen = sorted(int(out.split()[-1]) for out, _ in outs)
    assert seen[-1] >= 10 - 1 and seen[-1] <= 11  # the last worker to finish saw both workers' trials
    import optuna

    study = optuna.load_study(study_name="fxcompress-budget", storage=url)
    assert len(study.trials) >= 10


@pytest.mark.parametrize("spec,match", [
    ({"sampler": "grid"}, r"unknown search sampler 'grid', valid samplers are"),
    ({"trials": 0}, "trials must be an int >= 1"),
    ({"storage": "study.db"}, "must be an Optuna storage URL"),
    ({"workers": 2}, r"unknown search keys \['workers'\]"),
])
def test_bad_search_specs_are_typed_errors(spec, match):
    from compiler.cost.search import Search

    with pytest.raises(BudgetError, match=match):
        Search.from_dict(spec)


def test_example_search_pipeline_loads_as_data():
    from pathlib import Path

    from compiler.cost.search import Search
    from compiler.pipelines import load_toml

    passes = load_toml(Path(__file__).parent.parent / "examples" / "pipelines" / "budget_search.toml")
    budget = next(p for p in passes if p.name == "budget")
    assert [p.name for p in passes] == ["cleanup", "fold_bn", "budget", "fuse"]
    assert budget.search == Search(trials=20, sampler="tpe", storage="sqlite:///study.db", study="resnet18-0.6")
    assert budget.prune_ratios == (0.25, 0.5) and budget.budget.latency_ratio == 0.6


def test_a_device_target_without_the_device_is_a_typed_error_and_presets_plan_offline(monkeypatch):
    from runtime.opencl.errors import NoOpenCLError

    model, x = Net().eval(), torch.randn(1, 3, 16, 16)
    monkeypatch.setenv("FXCOMPRESS_OPENCL_DEVICE", "9:9")  # a device this machine does not have
    with pytest.raises(compiler.PassError, match=r"'budget' pass.*'9:9' \(from \$FXCOMPRESS_OPENCL_DEVICE\).*valid "
                                                  r"devices are") as info:
        compiler.compile(model, x, pipeline=["cleanup", {"name": "budget", "budget": {"latency_ratio": 0.8}}])
    assert isinstance(info.value.__cause__, NoOpenCLError)
    big = torch.randn(8, 3, 64, 64)  # enough work that a GPU's launches do not dominate
    cm = compiler.compile(model, big, pipeline=["cleanup", {"name": "budget", "budget": {"latency_ratio": 0.8},
                                                            "target": "rx580"}])  # a spec sheet: no device needed
    summary = _budget_row(cm).summary
    assert summary["after"]["ms"] <= 0.8 * summary["before"]["ms"] * 1.0001


def test_search_over_tables_meets_limits_and_names_a_bad_storage(tmp_path):
    pytest.importorskip("optuna")
    from compiler.cost.search import Search, search

    def evaluate(picks):  # the tables' own sums: the brute-force optimum at 20 ms is known
        t = {r: 1.0 + sum(c.get(r) for c in picks.values()) for r in ("ms", "params", "macs")}
        return {**t, "error": sum(c.error for c in picks.values())}

    best = allocate(TABLES, {"ms": 20.0}, {"ms": 1.0})
    found = search(TABLES, evaluate, {"ms": 20.0}, Search(trials=15, seed=0), initial=best.picks)
    assert found.totals["ms"] <= 20.0 and found.totals["error"] <= best.error + 1e-12
    assert found.trials == 15 and found.pareto[-1]["error"] == found.totals["error"]
    with pytest.raises(BudgetError, match=r"none of 30 trials meets the budget; the closest achievable found is ms 1[34] "):
        search(TABLES, evaluate, {"ms": 10.0}, Search(trials=30, seed=0))
    with pytest.raises(BudgetError, match="cannot open Optuna storage 'sqlite:////no/such/dir/s.db'"):
        search(TABLES, evaluate, {"ms": 20.0}, Search(trials=1, storage="sqlite:////no/such/dir/s.db"))


def test_finetune_runs_between_the_steps_of_a_budget_plan():
    from compiler.finetune import FineTune

    model, x = Net().eval(), torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(4)]
    # pruning alone (0.25) cannot reach 0.4 of the latency: the plan prunes and factorizes
    pipeline = ["cleanup", {"name": "budget", "budget": Budget(latency_ratio=0.4), "target": CPU, "ranks": [0.5, 0.25],
                            "prune_ratios": [0.25]}, "fuse"]

    def run(between_steps):
        cfg = FineTune(epochs=1, between_steps=between_steps, lr=1e-3, progress=False)
        return compiler.compile(model, x, pipeline=pipeline, finetune=cfg, train_data=data, val_data=data[:1])

    cm = run(1)
    summary = _budget_row(cm).summary
    steps = (["prune_channels"] if summary["prune"] else []) + [
        f"factorize {m}" for m in sorted({c["method"] for c in summary["plan"].values()})]
    assert len(steps) >= 2  # pruning and a factorization: there is a "between"
    between = cm.report.finetune["between_steps"]
    assert [b["after"] for b in between] == steps
    assert all(len(b["history"]) == 1 and b["history"][0]["train_loss"] > 0 for b in between)
    from passes.budget import BudgetPass

    mine = BudgetPass(budget=Budget(latency_ratio=0.4), target=CPU, ranks=(0.5,), prune_ratios=(0.5,))
    compiler.compile(model, x, pipeline=["cleanup", mine], train_data=data,
                     finetune=FineTune(epochs=1, between_steps=1, progress=False))
    assert mine.recover is None  # the caller's pass object is not left holding this call's fine-tune
    plain = run(0)  # the same plan without the fine-tunes between its steps
    assert "between_steps" not in plain.report.finetune
    assert _budget_row(plain).summary["plan"] == summary["plan"]
    with torch.no_grad():
        assert rel_err(cm(x), plain(x)) > 1e-3  # the factorizations saw fine-tuned weights
    with pytest.raises(compiler.FineTuneError, match="between the steps of a budget plan"):
        compiler.compile(model, x, pipeline=["cleanup"], finetune=FineTune(between_steps=1, progress=False), train_data=data)
    with pytest.raises(compiler.FineTuneError, match="between_steps must be an int >= 0"):
        FineTune(between_steps=-1)
    with pytest.raises(compiler.PipelineError, match="recover must be a callable"):
        compiler.compile(model, x, pipeline=[{"name": "budget", "budget": {"params": 10}, "recover": "finetune"}])


def test_a_factorization_that_its_layers_pruning_makes_no_faster_is_not_applied():
    from compiler.pass_base import Analyses, PassContext
    from passes.budget import PRUNE, BudgetPass

    # 40 us a launch: the 3-launch Tucker-2 chain of body.2 (64 -> 64 channels, 3x3) saves more than its two
    # extra launches cost, but once the 0.75 pruning leaves it 16 channels it no longer does
    target = replace(CPU, launch_us=40.0)
    model, x = Net().eval(), torch.randn(2, 3, 32, 32)
    gm = compiler.compile(model, x, pipeline=["cleanup"]).graph_module
    ctx = PassContext((x,), Analyses(gm, (x,)))
    p = BudgetPass(budget=Budget(latency_ratio=0.5), target=target, ranks=(0.5,), prune_ratios=(0.75,))
    cm = p.cost_model()
    node = next(n for n in gm.graph.nodes if n.target == "body.2")
    table = p._candidates(gm, node, torch.randn(2, 64, 32, 32), cm, lambda g: 0.1)
    assert [c.choice for c in table] == [None, {"method": "tucker2", "rank": 0.5}]  # faster, unpruned
    factor = {"body.2": table[1]}
    assert p._slower_once_pruned(gm, ctx, cm, factor) == set()  # nothing pruned: nothing to re-check
    prune = {PRUNE + "body.2": Candidate({"prune": 0.75}, 0.0, 0, 0)}
    assert p._slower_once_pruned(gm, ctx, cm, {**factor, **prune}) == {"body.2"}
    assert p._slower_once_pruned(gm, ctx, cm, {**factor, PRUNE + "body.2": Candidate(None, 0.0, 0, 0)}) == set()


def test_allocation_reallocates_around_factorizations_that_pruning_makes_no_faster(monkeypatch):
    import passes.budget as budget_pass
    from passes.budget import PRUNE, BudgetPass

    # added up, factorizing "a" (-4 ms, error 0.01) with pruning its group (-5, 0.02) is the cheapest way to
    # save 9 ms; applied together the factorization saves nothing. The pass must find the plan that holds.
    tables = {"a": [_c(10, 0, None), _c(6, 0.01, 0.5)],
              PRUNE + "a": [Candidate(None, 0, 0, 0), Candidate({"prune": 0.75}, -5, 0, 0, 0.02)],
              PRUNE + "b": [Candidate(None, 0, 0, 0), Candidate({"prune": 0.75}, -9, 0, 0, 0.5)]}

    def both(picks):
        return picks["a"].choice is not None and picks[PRUNE + "a"].choice is not None

    def true_ms(picks):  # what applying the picks gives
        return 1 + sum(c.ms for c in picks.values()) + (4 if both(picks) else 0)

    monkeypatch.setattr(budget_pass, "_applied", lambda gm, picks, ctx: picks)
    monkeypatch.setattr(budget_pass, "_totals", lambda picks, cm, ctx: {"ms": true_ms(picks), "params": 0, "macs": 0})
    p = BudgetPass(budget=Budget(latency_ratio=0.5), target=CPU)
    checked = []

    def slower(gm, ctx, cm, picks):
        checked.append(both(picks))
        return {"a"} if both(picks) else set()

    monkeypatch.setattr(p, "_slower_once_pruned", slower)
    assert allocate(tables, {"ms": 2.0}, {"ms": 1.0}).error == pytest.approx(0.03)  # added up: both picked
    got = p._allocate(None, None, None, tables, {"ms": 2.0}, {"ms": 1.0})
    assert checked[0] and not checked[-1]
    assert not both(got.picks) and true_ms(got.picks) <= 2.0 and got.picks[PRUNE + "b"].choice == {"prune": 0.75}


def test_repair_takes_moves_judged_on_applied_plans_until_the_limits_hold(monkeypatch):
    import passes.budget as budget_pass
    from compiler.cost.allocate import Allocation
    from passes.budget import BudgetPass

    tables = {"a": [_c(10, 0, None), _c(8, 0.01, 0.5), _c(5, 0.1, 0.25)], "b": [_c(10, 0, None), _c(7, 0.02, 0.5)]}

    def true_ms(picks):  # factorizing "a" costs 3 ms more than its table says, applied
        return 1 + sum(c.ms for c in picks.values()) + (3 if picks["a"].choice else 0)

    monkeypatch.setattr(budget_pass, "_applied", lambda gm, picks, ctx: picks)
    monkeypatch.setattr(budget_pass, "_totals", lambda picks, cm, ctx: {"ms": true_ms(picks), "params": 0, "macs": 0})
    p = BudgetPass(budget=Budget(latency_ratio=0.5), target=CPU)
    monkeypatch.setattr(p, "_slower_once_pruned", lambda gm, ctx, cm, picks: set())
    start = {"a": tables["a"][1], "b": tables["b"][0]}
    got_alloc, got = p._repair(None, None, None, tables, {"ms": 16.0}, Allocation(start, {}, 0.01, "greedy"),
                               {"ms": true_ms(start)})
    assert got["ms"] == 16.0 and got_alloc.picks == {"a": tables["a"][2], "b": tables["b"][1]}
    assert got_alloc.error == pytest.approx(0.12) and got_alloc.allocator == "greedy + repair"
    # out of reach: every move taken, the closest returned for the error message
    closest, got = p._repair(None, None, None, tables, {"ms": 10.0}, Allocation(start, {}, 0.01, "greedy"),
                             {"ms": true_ms(start)})
    assert got["ms"] == 16.0 and got["ms"] > 10.0


def test_the_report_holds_latency_measured_on_the_device_before_and_after(tmp_path, monkeypatch):
    import passes.budget as budget_pass

    model, x = Net().eval(), torch.randn(2, 3, 32, 32)
    plan_path = tmp_path / "plan.json"

    def run(**extra):
        return compiler.compile(model, x, pipeline=["cleanup", {"name": "budget", "target": CPU, "plan_path": str(plan_path),
                                                                "budget": {"latency_ratio": 0.6}, "measure_span_s": 0,
                                                                **extra}, "fuse"])

    assert "measured_ms" not in _budget_row(run()).summary  # an offline target: nothing to time
    row = _budget_row(run(measure=True))
    measured = row.summary["measured_ms"]
    assert set(measured) == {"before", "after"} and all(0 < v < 1e4 for v in measured.values())
    assert row.details and all(d["measured_ms_after"] > 0 and d["measured_ms_before"] > 0 for d in row.details)  # per layer, node by node
    assert Plan.load(plan_path).predicted["measured_ms"] == measured
    # the warnings, with the timings fixed: slower than the original, then over the budget by more than 10%
    for times, match in (({"before": 1.0, "after": 1.2}, "slower than the original"),
                         ({"before": 1.0, "after": 0.7}, r"more than 10% over the latency budget \(0.6 ms")):
        monkeypatch.setattr(budget_pass, "_measured_ms", lambda graphs, ctx, span_s, t=times: dict(t))
        assert any(re.search(match, w) for w in run(measure=True).report.warnings), match
    monkeypatch.setattr(budget_pass, "_measured_ms", lambda graphs, ctx, span_s: {"before": 1.0, "after": 0.65})
    assert not [w for w in run(measure=True).report.warnings if "budget" in w]


def test_timing_on_the_device_comes_through_the_pass_context(monkeypatch):
    """The budget pass times plans with the context's device runner (compile() wires the OpenCL
    runtime's); run by hand without one, measure=True is a typed error and the default a warning.
    passes/ imports nothing from runtime/."""
    from pathlib import Path

    gm = compiler.compile(Net().eval(), torch.randn(2, 3, 32, 32), pipeline=["cleanup"]).graph_module
    x = torch.randn(2, 3, 32, 32)
    step = {"name": "budget", "target": CPU, "budget": {"latency_ratio": 0.6}, "measure_span_s": 0}
    with pytest.raises(compiler.PassError, match=r"budget.*measure=True .* no device runner: run it through compiler.compile\(\)"):
        compiler.PassManager([{**step, "measure": True}], verify=False).run(copy.deepcopy(gm), (x,))
    calls = []

    def device(g, inputs):
        calls.append(g)
        return lambda: g(*inputs)

    _, report = compiler.PassManager([{**step, "measure": True}], verify=False, device=device).run(copy.deepcopy(gm), (x,))
    assert len(calls) >= 2 and set(report.row("budget").summary["measured_ms"]) == {"before", "after"}
    from compiler.cost import CostModel
    from passes.budget import BudgetPass

    monkeypatch.setattr(BudgetPass, "cost_model", lambda self: CostModel(CPU))  # the live device's, priced offline
    _, report = compiler.PassManager([{**step, "target": "device"}], verify=False).run(copy.deepcopy(gm), (x,))
    assert "measured_ms" not in report.row("budget").summary
    assert [w for w in report.warnings if "not timed on the device: the pass context has no device runner" in w]
    offenders = [str(f) for f in (Path(__file__).parents[1] / "passes").rglob("*.py")
                 if re.search(r"^\s*(from runtime|import runtime)", f.read_text(), re.M)]
    assert offenders == []


def test_a_plan_the_device_measures_over_its_goal_is_made_again_tighter(monkeypatch):
    import passes.budget as budget_pass
    from compiler.cost import CostModel

    # a device that runs every compressed graph 1.3x slower than the model predicts, the original as predicted
    model_of_device = CostModel(CPU)

    calls = []

    def measured(graphs, ctx, span_s):
        calls.append(graphs)
        before = budget_pass._predicted_ms(graphs["before"], model_of_device, ctx)
        after = budget_pass._predicted_ms(graphs["after"], model_of_device, ctx)
        return {"before": before, "after": after if after >= before * 0.999 else 1.3 * after}

    monkeypatch.setattr(budget_pass, "_measured_ms", measured)
    model, x = Net().eval(), torch.randn(2, 3, 32, 32)

    def summary(**extra):
        cm = compiler.compile(model, x, pipeline=["cleanup", {"name": "budget", "target": CPU, "prune_ratios": [],
                                                              "budget": {"latency_ratio": 0.7}, **extra}, "fuse"])
        return _budget_row(cm).summary

    trusting = summary()
    assert trusting["after"]["ms"] <= 0.7 * trusting["before"]["ms"] * 1.0001 and "measured_corrections" not in trusting
    calls.clear()
    monkeypatch.setattr(budget_pass, "MEASURED_ROUNDS", 4)  # room for the last plan to be timed within the loop
    checked = summary(measure=True)
    fixes = checked["measured_corrections"]
    assert len(fixes) <= 4 and len(calls) == len(fixes) + 1  # the report reuses the timing of the plan kept
    assert fixes and fixes[0]["measured_ms"]["after"] > 1.05 * fixes[0]["goal_ms"]  # the first plan missed, measured
    assert fixes[0]["limit_ms"] < 0.7 * checked["before"]["ms"] and checked["allocator"].endswith("+ measured")
    final = checked["measured_ms"]
    assert final["after"] <= 1.05 * 0.7 * final["before"] < fixes[0]["measured_ms"]["after"]
    # of the plans that held, the least compressed is kept (not the last one tried, nor the tightest)
    held = [f["measured_ms"]["after"] for f in fixes if f["measured_ms"]["after"] <= 1.05 * f["goal_ms"]]
    assert all(final["after"] >= h for h in held)
    # once one limit missed and one held, the next limit lies between them (bisected, not scaled again)
    tried = [(fixes[j - 1]["limit_ms"], fixes[j]["measured_ms"]["after"] <= 1.05 * fixes[j]["goal_ms"])
             for j in range(1, len(fixes))]  # (limit, held) of each re-plan timed before the next re-plan
    bisected = 0
    for j in range(1, len(fixes)):
        ok = [lim for lim, h in tried[:j] if h]
        over = [lim for lim, h in tried[:j] if not h]
        if ok and over:
            assert max(ok) < fixes[j]["limit_ms"] < min(over)
            bisected += 1
    assert bisected  # this device's plans fall on both sides of the goal, so the bracket was used
    assert checked["after"]["ms"] < trusting["after"]["ms"]  # more compression, for the device's sake


def test_budget_with_data_scores_by_kl_keeps_floors_and_the_report_prints_accuracy(tmp_path):
    """compile(budget=, finetune=, train_data=, val_data=): candidates scored by KL to the original on
    calibration images, no pruned group under min_channels, no rank under min_rank, no layer both
    pruned and factorized, the allocation weighed against uniform plans; the report prints, saves,
    and states accuracy before compression, after it and after recovery."""
    from compiler.finetune import FineTune
    from passes.budget import BudgetPass

    model, x = Net().eval(), torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(4)]
    planner = BudgetPass(budget=Budget(latency_ratio=0.5), target=CPU, ranks=(0.5, 0.25, 0.1),
                         prune_ratios=(0.25, 0.5, 0.8), min_channels=16, min_rank=8)
    cm = compiler.compile(model, x, pipeline=["cleanup", planner, "fuse"], train_data=data, val_data=data[:2],
                          finetune=FineTune(epochs=1, progress=False))
    assert planner.calibration is None  # the caller's pass is not left holding this call's data
    s = _budget_row(cm).summary
    assert s["sensitivity"].startswith("KL divergence to the original on 32 calibration images")
    assert s["calibration"]["before"]["kl"] == pytest.approx(0, abs=1e-6) and s["calibration"]["before"]["agreement"] == 1
    assert s["calibration"]["after"]["kl"] > 0 and "accuracy" in s["calibration"]["after"]
    assert set(s["uniform"]["tried"]) and s["uniform"]["kept"]
    assert 1 < len(s["uniform"]["probed"]) <= 3 and s["uniform"]["kept"] in s["uniform"]["probed"]  # probe fine-tunes
    pts = s["uniform"]["points"]  # every plan weighed, for the report's Pareto plot: the kept one marked
    assert [p["name"] for p in pts if p["kept"]] == [s["uniform"]["kept"]] and all(p["ms"] > 0 for p in pts)
    cm.report.save_html(tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "plans weighed on calibration data (KL)" in page and "kept plan" in page and ">Accuracy</h2>" in page
    from passes.factor_layers import FactorChain

    gm = cm.graph_module
    unfactored = [m for p, m in gm.named_modules() if isinstance(m, nn.Conv2d)
                  and not isinstance(gm.get_submodule(p.rpartition(".")[0]), FactorChain)]
    widths = [m.out_channels for m in unfactored]
    assert min(widths) >= 16  # the 0.8 pruning (64 -> 16 would pass; 32 -> 8 would not)
    ranks = [m.out_channels for p, m in gm.named_modules() if isinstance(m, nn.Conv2d) and p.endswith(".0")
             and isinstance(gm.get_submodule(p.rpartition(".")[0]), FactorChain)]
    assert all(r >= 8 for r in ranks)  # min_rank
    assert 0.8 not in s["prune"].values() or all(w >= 16 for w in widths)
    for path, choice in s["plan"].items():  # rank 0.1 of 64 channels is 6, under the floor: never offered
        assert choice["rank"] != 0.1
    if not s["uniform"]["kept"].startswith("uniform"):  # the allocation's plan: no layer both pruned and factorized
        assert not set(s["plan"]) & set(s["prune"])
    a = cm.report.accuracy
    assert a["images"] == 16 and set(a) == {"images", "original", "compressed", "recovered"}
    assert a["original"]["agreement"] == 1 and 0 <= a["recovered"]["accuracy"] <= 1
    text = str(cm.report)
    assert "budget: summary" in text and "sensitivity: KL divergence" in text
    assert re.search(r"accuracy on 16 validation images: original \d+\.\d\d%, compressed \d+\.\d\d%, recovered", text)
    cm.report.save(tmp_path / "r.json")
    assert '"accuracy"' in (tmp_path / "r.json").read_text()
    without = compiler.compile(model, x, pipeline=["cleanup", {"name": "budget", "budget": Budget(latency_ratio=0.7),
                                                               "target": CPU}, "fuse"])
    assert "made without data" in _budget_row(without).summary["sensitivity"]
    assert "made without data" in str(without.report) and without.report.accuracy is None
    with pytest.raises(compiler.PipelineError, match="min_channels must be an int >= 1"):
        BudgetPass(budget=Budget(latency_ratio=0.5), min_channels=0)


def test_layer_table_prints_rows_of_different_columns():
    from compiler.report import layer_table

    lines = layer_table([{"layers": ["a"], "channels_before": 8, "channels_after": 4},
                         {"layer": "b", "method": "svd", "params_before": 10, "params_after": 5}])
    assert any("layers" in ln for ln in lines) and any("method" in ln for ln in lines)
    assert any("10 -> 5 (2.00x)" in ln for ln in lines)


def test_progressive_stages_reach_the_budget_with_recovery_between_and_the_staged_plan_replays(tmp_path):
    """FineTune(stages=...): the budget planned and applied at each fraction of the way (log scale),
    each stage recovered; the last stage meets the budget; no factor is factorized again; the report
    states accuracy after each stage; the saved plan replays every stage on the original."""
    from compiler.finetune import FineTune
    from passes.budget import BudgetPass
    from passes.budget_stages import stage_budget
    from passes.factor_layers import FactorChain

    b = Budget(params=1000, latency_ratio=0.25)
    origin, now = {"ms": 8.0, "params": 100_000, "macs": 1}, {"ms": 4.0, "params": 10_000, "macs": 1}
    half = stage_budget(b, 0.5, origin, now)
    assert half.params == 10_000 and half.latency_ratio == pytest.approx(4.0 / 4.0)  # sqrt of 100x; 8 * 0.5 = 4 ms
    assert stage_budget(b, 1.0, origin, now).latency_ratio == pytest.approx(0.5)  # 2 ms of the 4 now

    model, x = Net().eval(), torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(4)]
    p0 = sum(p.numel() for p in model.parameters())
    plan_path = tmp_path / "plan.json"
    planner = BudgetPass(budget=Budget(params=p0 // 4), target=CPU, ranks=(0.5, 0.25), prune_ratios=(0.25, 0.5),
                         min_channels=8, min_rank=4, plan_path=str(plan_path))
    cm = compiler.compile(model, x, pipeline=["cleanup", planner, "fuse"], train_data=data, val_data=data[:2],
                          finetune=FineTune(epochs=1, stages=(0.5,), stage_epochs=1, progress=False))
    assert planner.stages == () and planner.recover_stage is None  # the caller's pass is untouched
    s = _budget_row(cm).summary
    assert [st["stage"] for st in s["stages"]] == [1, 2]
    assert s["stages"][0]["budget"]["params"] == int(p0 * ((p0 // 4) / p0) ** 0.5)  # half way, log scale: 2x
    assert s["stages"][0]["plan"] or s["stages"][0]["prune"]  # each stage compresses
    assert s["stages"][1]["plan"] or s["stages"][1]["prune"]
    assert s["stages"][0]["after"]["params"] <= s["stages"][0]["budget"]["params"]
    assert sum(p.numel() for p in cm.graph_module.parameters()) <= p0 // 4
    for path, m in cm.graph_module.named_modules():  # no factor of a factor
        if isinstance(m, FactorChain):
            assert not any(isinstance(c, FactorChain) for c in m.children())
    a = cm.report.accuracy
    assert [st["after"] for st in a["stages"]] == ["stage 1 of 2"]
    assert {"compressed", "recovered"} <= set(a["stages"][0])
    assert [st["after"] for st in cm.report.finetune["stages"]] == ["stage 1 of 2"]
    assert re.search(r"after stage 1 of 2: compressed \d+\.\d\d%, recovered \d+\.\d\d%", str(cm.report))
    plan = Plan.load(plan_path)
    assert len(plan.stages) == 1 and plan.pipeline()[0]["name"] in ("prune_channels", "factorize")
    replayed = compiler.compile(model, x, pipeline=["cleanup", *plan.pipeline(), "fuse"], verify=False)
    assert sum(p.numel() for p in replayed.graph_module.parameters()) == sum(p.numel() for p in cm.graph_module.parameters())
    with pytest.raises(compiler.FineTuneError, match="increasing fractions"):
        FineTune(stages=(0.6, 0.3))
    with pytest.raises(compiler.PipelineError, match="increasing fractions"):
        BudgetPass(budget=Budget(params=10), stages=(1.0,))
    with pytest.raises(compiler.FineTuneError, match="stages reaches a budget in stages"):
        compiler.compile(model, x, train_data=data, finetune=FineTune(epochs=1, stages=(0.5,), progress=False))


def test_near_uniform_plans_take_the_fewest_groups_to_the_next_ratio_biggest_saving_first():
    """between_uniform: where uniform 0.5 is just over a params limit and 0.75 is within, every group
    at 0.5 and the fewest at 0.75 that fit, the largest saving first; probe_order gives each family
    (the allocation, uniform, near-uniform) a probe before a second plan of any family."""
    from compiler.cost.allocate import Candidate
    from passes.budget_uniform import between_uniform, probe_order

    sizes = {"a": 100, "b": 400, "c": 200, "d": 50}  # params of each channel group, unpruned
    tables = {g: [Candidate(None, 1.0, n, n)] + [Candidate({"prune": r}, 1.0, int(n * (1 - r) ** 2), n)
                                                  for r in (0.25, 0.5, 0.75)] for g, n in sizes.items()}
    calls = []

    def judged(plan):
        calls.append(plan)
        return {"params": sum(c.params for c in plan.values()), "ms": 4.0, "macs": 0.0}, 1.0

    # uniform 0.5: 25 + 100 + 50 + 12 = 187 > 150; moving b (the biggest saving) to 0.75: 187 - 75 = 112
    (name, plan), = [t for t in between_uniform(tables, (0.25, 0.5, 0.75), judged, {"params": 150}) if "0.5, 0.75" in t[0]]
    assert name == "uniform prune 0.5, 0.75 on 1 of 4 groups"
    assert plan["b"].choice == {"prune": 0.75} and all(plan[g].choice == {"prune": 0.5} for g in "acd")
    assert judged(plan)[0]["params"] <= 150
    ordered = probe_order([(0.1, "uniform prune 0.75", {}), (0.2, "uniform prune 0.5", {}), (0.3, name, {}),
                           (0.4, "greedy", {})], "greedy")
    assert [t[1] for t in ordered] == ["uniform prune 0.75", name, "greedy", "uniform prune 0.5"]


def test_every_stage_is_timed_against_the_original_so_an_early_miss_is_made_up(monkeypatch):
    """In stages to a latency ratio, each stage's device check times its plan against the original
    as well, and its goal is the stage's fraction of the original's measured latency: a stage that
    measures slower than predicted is made up by the next one. The device here is faked: a graph
    takes sqrt(MACs), so compression under-delivers on every stage."""
    import passes.budget as budget_pass
    from compiler.analysis import count_macs
    from passes.budget import MEASURED_SLACK, BudgetPass

    timed = []

    def fake(graphs, ctx, span_s):
        timed.append(sorted(graphs))
        return {k: count_macs(g) ** 0.5 / 1e3 for k, g in graphs.items()}

    monkeypatch.setattr(budget_pass, "_measured_ms", fake)
    monkeypatch.setattr(budget_pass, "_measured_layer_ms", lambda graphs, ctx: None)
    model, x = Net().eval(), torch.randn(2, 3, 32, 32)
    planner = BudgetPass(budget=Budget(latency_ratio=0.5), target=CPU, measure=True, stages=(0.5,), front_points=0,
                         ranks=(0.5, 0.25), prune_ratios=(0.25, 0.5, 0.75))
    cm = compiler.compile(model, x, pipeline=["cleanup", planner, "fuse"])
    s = _budget_row(cm).summary
    assert ["after", "before", "origin"] in timed  # the stages timed the original beside each plan
    m = s["measured_ms"]
    assert set(m) == {"origin", "before", "after"}
    last = s["stages"][-1]["budget"]["latency_ratio"]  # the last stage's goal as a ratio of the model stage 1 left
    assert m["after"] <= (1 + MEASURED_SLACK) * last * m["before"]  # timed against that model alone, it would pass
    fixes = s["measured_corrections"]  # timed against the original it misses, and the check plans again for that
    assert fixes and all(f["goal_ms"] == pytest.approx(0.5 * f["measured_ms"]["origin"]) for f in fixes)
    assert m["after"] < m["before"] and m["before"] < m["origin"]
