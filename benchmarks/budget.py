"""Latency-budgeted compression against MAC-uniform compression, measured on the OpenCL target.

For each model and each budget (a fraction of the original's predicted latency), the ``budget`` pass
chooses per layer between keeping it, Tucker-2 / SVD at several ranks, and pruning each channel
group at 25%, 50% or 75% (its default candidates, or ``--ranks`` / ``--prune-ratios``), with the device's cost model (its calibration profile when ``fxcompress
calibrate`` made one). Two baselines at the same MACs as the budget plan: the same layers factorized
with one uniform rank fraction, and every channel group pruned by one uniform ratio (multiples of 8
channels, as the plan's), each bisected until its MACs match. All are compiled for OpenCL and timed
in the same run (``best_block_ms``: the least of 8 block medians taken in turns over 20 s, as the
cost model's calibration times its networks; this host has slow phases of seconds), and their output error
against eager is measured (max |y - y_ref| / max |y_ref| on random inputs; randomised weights, so
this is the numerical effect of the rewrite, not accuracy).

Reported per point: the latency budget, measured latency of the original, of the budget plan and
of the two MAC-uniform baselines, whether the budget is met within 10% when measured, and the
output errors.

Equal MACs are not equal latency, so each row also compares at the plan's measured latency: each
uniform baseline is swept over its fraction (``SWEEP``), every point timed in the row's timing block,
and its output error read off that sweep (linear between the two points that bracket the plan's
latency). "Better than MACs" is the plan's error below both, or no uniform point as fast as the plan.

    .venv/bin/python benchmarks/budget.py [--quick] [--models resnet18,mobilenet_v2] [--ratios 0.7,0.5,0.35]
                                          [--ranks 0.75,0.5,...] [--prune-ratios 0.25,0.5,...] [--json out.json]
                                          [--plans DIR]

A budget beyond the candidates' reach (the pass raises BudgetError) is a row saying so, with the
closest achievable plan the pass found.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_block_ms, markdown_table  # noqa: E402  (also unshadows the runtime package)

import compiler  # noqa: E402
from compiler import Budget, Plan, zoo  # noqa: E402
from compiler.errors import BudgetError  # noqa: E402
from compiler.analysis import count_macs  # noqa: E402
from compiler.budget import PRUNE_ROUND_TO  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402
from compiler.instruments import output_error  # noqa: E402


def _macs(cm) -> int:
    return count_macs(cm.graph_module)


def _err(model, cm, x) -> float:
    with torch.no_grad():
        return output_error(model(x), cm(x))[1]


def _bisect(model, x, build, target_macs: int, *, grows: bool):
    """The compiled ``build(f)`` whose MACs come closest to ``target_macs``, bisecting f in (0, 1);
    ``grows``: MACs grow with f (a rank fraction), else shrink (a pruning ratio)."""
    lo, hi, best = 0.02, 0.98, None
    for _ in range(6):
        f = (lo + hi) / 2
        cm = compiler.compile(model, x, pipeline=["cleanup", "fold_bn", *build(f), "fuse"], target="opencl")
        if best is None or abs(_macs(cm) - target_macs) < abs(_macs(best[0]) - target_macs):
            best = (cm, f)
        if (_macs(cm) > target_macs) == grows:
            hi = f
        else:
            lo = f
    return best


def _uniform_rank(candidates: dict[str, str]):
    layers = {p: m for p, m in candidates.items() if m != "prune"}
    return lambda f: Plan(layers={p: {"method": m, "rank": round(f, 4)} for p, m in layers.items()}).pipeline()


def _fmt_err(e: float | None) -> str:
    return "none as fast" if e is None else f"{e:.3f}"


def _uniform_prune(f: float) -> list[dict]:
    return [{"name": "prune_channels", "ratio": round(f, 4), "round_to": PRUNE_ROUND_TO}]


# Uniform fractions timed in every row, to read each baseline's error at the plan's measured latency.
SWEEP = {"uniform rank": (0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.4, 0.55, 0.7),
         "uniform prune": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}


def _err_at(points: list[tuple[float, float]], ms: float) -> float | None:
    """The error of a swept baseline at ``ms``, linear between the (ms, err) points bracketing it;
    the least error of the points faster than it when the sweep is not monotone there; None when no
    point is as fast."""
    faster = [(t, e) for t, e in points if t <= ms]
    if not faster:
        return None
    t0, e0 = max(faster)
    slower = [(t, e) for t, e in points if t > ms]
    if not slower:
        return min(e for _, e in faster)
    t1, e1 = min(slower)
    return min(min(e for _, e in faster), e0 + (e1 - e0) * (ms - t0) / (t1 - t0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="budgets 0.7 and 0.5 only")
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--ratios", default="0.7,0.5,0.35", help="latency budgets, fractions of the original's")
    ap.add_argument("--ranks", help="the budget pass's rank candidates, e.g. 0.75,0.5,0.35,0.25,0.15 (default: its own)")
    ap.add_argument("--prune-ratios", help="its pruning candidates, e.g. 0.25,0.5,0.75 (default: its own)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--plans", help="write each row's plan here, as <model>-<budget>.json (see profile_steps.py)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    models = args.models.split(",")
    ratios = (0.7, 0.5) if args.quick else tuple(float(r) for r in args.ratios.split(","))
    tv = zoo.import_torchvision()
    rows, results = [], []
    for name in models:
        torch.manual_seed(0)  # the same weights, so the same sensitivities and plans, in every run
        model = zoo.randomize(getattr(tv.models, name)(weights=None)).eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        original = compiler.compile(model, x, target="opencl")
        sweeps: dict[tuple, tuple[dict, dict]] = {}  # considered layers -> (compiled sweep, its errors)
        for r in ratios:
            t0 = time.perf_counter()
            try:
                if args.ranks or args.prune_ratios:  # the budget pass with other candidates than its defaults
                    options = {k: [float(v) for v in a.split(",")] for k, a in
                               (("ranks", args.ranks), ("prune_ratios", args.prune_ratios)) if a}
                    cm = compiler.compile(model, x, target="opencl", pipeline=[
                        "cleanup", "fold_bn", {"name": "budget", "budget": {"latency_ratio": r}, **options}, "fuse"])
                else:
                    cm = compiler.compile(model, x, target="opencl", budget=Budget(latency_ratio=r))
            except BudgetError as e:  # out of the candidates' reach: a row saying so, with the closest
                results.append({"model": name, "ratio": r, "unreachable": str(e), "plan_s": time.perf_counter() - t0})
                rows.append([name, f"{r:.2f}", "-", "-", "unreachable: " + str(e).rpartition("is ")[2], "no"] + ["-"] * 8)
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
                continue
            plan_s = time.perf_counter() - t0
            row = next(row for row in cm.report.rows if row.name == "budget")
            summary = row.summary
            if args.plans:
                Path(args.plans).mkdir(parents=True, exist_ok=True)
                Plan(layers=summary["plan"], prune=summary["prune"]).save(Path(args.plans) / f"{name}-{r}.json")
            builds = {"uniform rank": _uniform_rank(summary["considered"]), "uniform prune": _uniform_prune}
            rank_cm, f_rank = _bisect(model, x, builds["uniform rank"], _macs(cm), grows=True)
            prune_cm, f_prune = _bisect(model, x, builds["uniform prune"], _macs(cm), grows=False)
            runs = {"original": original, "budget": cm, "uniform rank": rank_cm, "uniform prune": prune_cm}
            key = tuple(sorted(summary["considered"].items()))  # the same layers in every row, as a rule
            if key not in sweeps:  # compiled, and their output errors taken, once per model
                swept = {(k, f): compiler.compile(model, x, target="opencl",
                                                  pipeline=["cleanup", "fold_bn", *builds[k](f), "fuse"])
                         for k, fs in SWEEP.items() for f in fs}
                sweeps[key] = (swept, {kf: _err(model, m, x) for kf, m in swept.items()})
            swept, swept_err = sweeps[key]
            timed = best_block_ms({k: (lambda m=m: m(x)) for k, m in [*runs.items(), *swept.items()]},
                                  rounds=8, span_s=20)
            ms = {k: timed[k] for k in runs}
            goal = r * ms["original"]
            res = {"model": name, "ratio": r, "measured_ms": ms, "budget_ms": goal, "met": ms["budget"] <= 1.1 * goal,
                   "predicted_ms": summary["after"]["ms"], "predicted_before_ms": summary["before"]["ms"],
                   "macs": {k: _macs(m) for k, m in runs.items()}, "uniform_rank": f_rank, "uniform_prune": f_prune,
                   "plan": summary["plan"], "prune": summary["prune"], "plan_s": plan_s,
                   "measured_corrections": summary.get("measured_corrections", []),
                   "err": {k: _err(model, m, x) for k, m in runs.items() if k != "original"}}
            res["sweep"] = {k: [(f, timed[(k, f)], swept_err[(k, f)]) for f in fs] for k, fs in SWEEP.items()}
            res["err_at_plan_ms"] = {k: _err_at([(t, e) for _, t, e in pts], ms["budget"]) for k, pts in res["sweep"].items()}
            res["better_than_macs"] = all(e is None or res["err"]["budget"] < e for e in res["err_at_plan_ms"].values())
            results.append(res)
            rows.append([name, f"{r:.2f}", f"{ms['original']:.2f} ({summary['before']['ms']:.2f})", f"{goal:.2f}",
                         f"{ms['budget']:.2f} ({summary['after']['ms']:.2f})",
                         "yes" if res["met"] else "no", f"{res['err']['budget']:.3f}",
                         f"{ms['uniform rank']:.2f} / {res['err']['uniform rank']:.3f}",
                         f"{ms['uniform prune']:.2f} / {res['err']['uniform prune']:.3f}",
                         *(_fmt_err(res["err_at_plan_ms"][k]) for k in SWEEP),
                         "yes" if res["better_than_macs"] else "no",
                         f"{res['macs']['budget'] / res['macs']['original']:.2f}",
                         f"{len(summary['plan'])} / {len(summary['prune'])}"])
            print(json.dumps(res), file=sys.stderr, flush=True)
    print(markdown_table(["model", "budget", "original ms (predicted)", "budget ms", "planned ms (predicted)", "met (10%)",
                          "planned err", "uniform rank: ms / err", "uniform prune: ms / err",
                          "uniform rank err at planned ms", "uniform prune err at planned ms", "better than MACs",
                          "MACs kept", "factorized / pruned groups"], rows))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
