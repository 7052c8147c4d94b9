"""Where a whole-model prediction goes wrong: per kernel family, predicted against measured kernel time,
and the per-launch cost a run really pays against the one the cost model fitted.

One compiled model (a zoo model as it is, pruned, factorized, or with a budget plan's JSON replayed),
timed two ways on the OpenCL CPU target:

  kernels   each launch on its own (the queue finished after each), its OpenCL profiling-event time,
            the least over ``--repeats`` runs, summed per kernel family; against the cost model's
            kernel time for the same launches, before and after the composition's scale
  wall      the whole call (``best_block_ms``: the least of 8 block medians in turns over 10 s)

``(wall - measured kernels) / launches`` is what a launch costs beyond its kernel in a real run; the
model charges ``step_us`` for it (fitted to the calibration's networks).

    .venv/bin/python benchmarks/profile_steps.py [--model mobilenet_v2] [--batch 1]
        [--variant original|pruned|tucker2|svd+tucker2 | --plan plan.json] [--steps] [--repeats 15]

A plan file is what the budget pass writes (``plan_path``; ``benchmarks/budget.py --plans DIR``).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_model import VARIANTS, budget_style  # noqa: E402  (first: its _timing import unshadows the runtime package)
from _timing import best_block_ms, markdown_table  # noqa: E402

import compiler  # noqa: E402
from compiler import Plan, zoo  # noqa: E402
from compiler.cost import compiled_work, predict_compiled  # noqa: E402
from compiler.cost.calibrate import device_cost_model  # noqa: E402


def kernel_ms(cm, x: torch.Tensor, repeats: int) -> list[float]:
    """Per launch of ``cm``'s OpenCL run, the least profiling-event time over ``repeats`` runs (nan for a
    torch-fallback step, which has no event)."""
    r = cm._runner
    best = [min(col) for col in zip(*(r.step_ms(x) for _ in range(repeats)))]
    return [math.nan if step.fallback else ms for step, ms in zip(r.lowered.steps, best)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2", choices=["resnet18", "mobilenet_v2"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--variant", default="original", choices=["original", "pruned", "tucker2", "svd+tucker2"])
    ap.add_argument("--plan", help="a budget plan's JSON (Plan.load), replayed instead of --variant")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", action="store_true", help="also print every launch")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tv = zoo.import_torchvision()
    torch.manual_seed(0)  # the weights budget.py and cost_model.py build
    net = zoo.randomize(getattr(tv.models, args.model)(weights=None)).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    if args.plan:
        pipeline = ["cleanup", "fold_bn", *Plan.load(args.plan).pipeline(), "fuse"]
    else:
        pipeline = {"original": VARIANTS[""], "pruned": VARIANTS[" pruned 0.3"], "tucker2": VARIANTS[" tucker2 0.5"],
                    "svd+tucker2": budget_style(net)}[args.variant]
    cm = compiler.compile(net, x, pipeline=pipeline, target="opencl")
    model = device_cost_model(None)
    work = compiled_work(cm)
    measured = kernel_ms(cm, x, args.repeats)
    wall = best_block_ms({"m": lambda: cm(x)}, rounds=8, span_s=10)["m"]
    predicted = predict_compiled(cm, model).total_ms

    by_family: dict[str, list[float]] = {}
    for w, m in zip(work, measured):
        if math.isnan(m):
            continue
        f = by_family.setdefault(w.kernel, [0, 0.0, 0.0])
        f[0] += 1
        f[1] += model.work_ms(w)
        f[2] += m
        if args.steps:
            shape = (w.layer.n, w.layer.cin, w.layer.cout, w.layer.h, w.layer.kh, w.layer.stride) if w.layer else ""
            print(f"{w.node:28s} {w.kernel:16s} {str(shape):30s} predicted {1e3 * model.work_ms(w):8.1f} us  "
                  f"measured {1e3 * m:8.1f} us")
    rows = [[k, str(n), f"{p:.3f}", f"{model.scale * p:.3f}", f"{m:.3f}", f"{p / m:.2f}"]
            for k, (n, p, m) in sorted(by_family.items(), key=lambda kv: -kv[1][2])]
    kp = sum(v[1] for v in by_family.values())
    km = sum(v[2] for v in by_family.values())
    rows.append(["all kernels", str(sum(v[0] for v in by_family.values())), f"{kp:.3f}", f"{model.scale * kp:.3f}",
                 f"{km:.3f}", f"{kp / km:.2f}"])
    print(markdown_table(["family", "launches", "predicted ms", "x scale", "measured ms", "predicted / measured"], rows))
    launches = len(cm._runner.lowered.steps)
    print(f"\nwall {wall:.3f} ms, predicted {predicted:.3f} ms ({100 * (predicted / wall - 1):+.1f}%); "
          f"{launches} launches cost {1e3 * (wall - km) / launches:.1f} us each beyond their kernels in the run, "
          f"the model charges {model.step_us:.1f} us (+ {1e3 * model.call_ms:.0f} us a call; scale {model.scale:.3f})")


if __name__ == "__main__":
    main()
