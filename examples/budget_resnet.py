"""Latency-budgeted compression on the OpenCL device: the cost model chooses, per layer, keep,
factorize (method and rank) or prune (ratio) to meet a fraction of the original's latency; the
device checks the plan; the plan is saved as JSON and replayed on the original model.

    .venv/bin/python examples/budget_resnet.py [--model resnet18] [--ratio 0.5] [--plan plan.json]

Run ``.venv/bin/fxcompress calibrate`` once per device first (a few minutes) for calibrated
predictions; without a profile the roofline alone decides, and a warning says so. Planning
ResNet-18 takes about a minute here (every candidate is scored by a forward pass, the plan is timed).
Random weights (no downloads here), so "output error" is the numerical effect of the rewrite, not
accuracy: fine-tune with ``compile(..., finetune=FineTune(...))`` to win accuracy back.
"""
import argparse

import torch

import compiler
from compiler import Plan, zoo
from compiler.instruments import output_error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", help="a torchvision model name, e.g. mobilenet_v2")
    ap.add_argument("--ratio", type=float, default=0.5, help="latency budget, a fraction of the original's")
    ap.add_argument("--plan", default="plan.json", help="where the plan goes (JSON)")
    args = ap.parse_args()
    torch.manual_seed(0)
    tv = zoo.import_torchvision()
    model = zoo.randomize(getattr(tv.models, args.model)(weights=None)).eval()
    x = torch.randn(1, 3, 224, 224)

    budget = {"name": "budget", "budget": {"latency_ratio": args.ratio}, "plan_path": args.plan, "progress": True}
    cm = compiler.compile(model, x, target="opencl", pipeline=["cleanup", "fold_bn", budget, "fuse"])
    s = cm.report.row("budget").summary
    print(f"\nplan ({args.plan}): layers factorized {len(s['plan'])}, channel groups pruned {len(s['prune'])}")
    for path, choice in s["plan"].items():
        print(f"  factorize {path}: {choice['method']} rank {choice['rank']}")
    for path, ratio in s["prune"].items():
        print(f"  prune {path}'s channel group by {ratio}")
    before, after = s["before"], s["after"]
    print(f"predicted: {before['ms']:.2f} -> {after['ms']:.2f} ms (goal {args.ratio} x), "
          f"MACs {before['macs'] / 1e9:.2f} -> {after['macs'] / 1e9:.2f} G, "
          f"params {before['params'] / 1e6:.1f} -> {after['params'] / 1e6:.1f} M")
    m = s["measured_ms"]
    print(f"measured on the device: {m['before']:.2f} -> {m['after']:.2f} ms ({m['after'] / m['before']:.2f} x)")
    print(f"output error against the original: {s['output_rel_err']:.3f} (max |dy| / max |y|)")
    for w in cm.report.warnings:
        print("warning:", w)

    # the plan is data: replayed on the original model, it gives the same graph
    replayed = compiler.compile(model, x, target="opencl",
                                pipeline=["cleanup", "fold_bn", *Plan.load(args.plan).pipeline(), "fuse"])
    with torch.no_grad():
        err = output_error(cm(x), replayed(x))[1]
    print(f"replayed from {args.plan}: output differs from the planned model by {err:.1e}")


if __name__ == "__main__":
    main()
