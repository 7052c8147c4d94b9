"""Latency-budgeted compression against MAC-uniform compression, measured on the OpenCL target.

For each model and each budget (a fraction of the original's predicted latency), the ``budget`` pass
chooses per layer between keeping it and Tucker-2 / SVD at several ranks with the device's cost
model (its calibration profile when ``fxcompress calibrate`` made one). The baseline factorizes the
same layers with one uniform rank fraction, bisected until its MACs match the budget plan's. Both
are compiled for OpenCL and timed in the same run (median over blocks), and their output error
against eager is measured (max |y - y_ref| / max |y_ref| on random inputs; randomised weights, so
this is the numerical effect of the rewrite, not accuracy).

Reported per point: the latency budget, measured latency of the original, of the budget plan and
of the MAC-uniform plan, whether the budget is met within 10%, and both output errors.

    .venv/bin/python benchmarks/budget.py [--quick] [--models resnet18,mobilenet_v2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import blocked_median_ms, markdown_table  # noqa: E402  (also unshadows the runtime package)

import compiler  # noqa: E402
from compiler import Budget, Plan, zoo  # noqa: E402
from compiler.analysis import count_macs  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402
from compiler.instruments import output_error  # noqa: E402


def _macs(cm) -> int:
    return count_macs(cm.graph_module)


def _err(model, cm, x) -> float:
    with torch.no_grad():
        return output_error(model(x), cm(x))[1]


def uniform_like(model, x, candidates: dict[str, str], target_macs: int):
    """The MAC-uniform baseline: every layer the budget pass considered, one rank fraction, bisected
    so the model's MACs match ``target_macs`` (within the bisection's resolution)."""
    lo, hi, best = 0.02, 0.98, None
    for _ in range(5):
        f = (lo + hi) / 2
        uni = Plan(layers={p: {"method": m, "rank": round(f, 4)} for p, m in candidates.items()})
        cm = compiler.compile(model, x, pipeline=["cleanup", "fold_bn", *uni.pipeline(), "fuse"], target="opencl")
        best = (cm, f)
        lo, hi = (f, hi) if _macs(cm) < target_macs else (lo, f)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ResNet-18 only, budgets 0.7 and 0.5")
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    models = ["resnet18"] if args.quick else args.models.split(",")
    ratios = (0.7, 0.5) if args.quick else (0.7, 0.5, 0.35)
    tv = zoo.import_torchvision()
    rows, results = [], []
    for name in models:
        model = zoo.randomize(getattr(tv.models, name)(weights=None)).eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        original = compiler.compile(model, x, target="opencl")
        for r in ratios:
            t0 = time.perf_counter()
            cm = compiler.compile(model, x, target="opencl", budget=Budget(latency_ratio=r))
            plan_s = time.perf_counter() - t0
            row = next(row for row in cm.report.rows if row.name == "budget")
            summary = row.details[-1]
            base, f = uniform_like(model, x, summary["considered"], _macs(cm))
            ms = blocked_median_ms({"original": lambda: original(x), "budget": lambda: cm(x), "uniform": lambda: base(x)},
                                   rounds=3, per_block=5, settle_s=0.25)
            goal = r * ms["original"]
            res = {"model": name, "ratio": r, "measured_ms": ms, "budget_ms": goal, "met": ms["budget"] <= 1.1 * goal,
                   "predicted_ms": summary["after"]["ms"], "predicted_before_ms": summary["before"]["ms"],
                   "macs": {"original": _macs(original), "budget": _macs(cm), "uniform": _macs(base)},
                   "uniform_rank": f, "layers_factorized": len(summary["plan"]), "plan_s": plan_s,
                   "err": {"budget": _err(model, cm, x), "uniform": _err(model, base, x)}}
            results.append(res)
            rows.append([name, f"{r:.2f}", f"{ms['original']:.2f}", f"{goal:.2f}", f"{ms['budget']:.2f}",
                         "yes" if res["met"] else "no", f"{res['err']['budget']:.3f}", f"{ms['uniform']:.2f}",
                         f"{res['err']['uniform']:.3f}", f"{res['macs']['budget'] / res['macs']['original']:.2f}"])
            print(json.dumps(res), file=sys.stderr, flush=True)
    print(markdown_table(["model", "budget", "original ms", "budget ms", "planned ms", "met (10%)", "planned err",
                          "MAC-uniform ms", "MAC-uniform err", "MACs kept"], rows))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
