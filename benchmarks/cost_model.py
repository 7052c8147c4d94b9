"""Predicted against measured kernel time on the OpenCL CPU target, for layers the calibration did not see.

Calibration (``compiler.cost.calibrate``): random layers of each kernel family, kernel times from
OpenCL profiling events, kept as a JSON profile per device (reused; remade with --recalibrate, or
when the kernels change). Held out, never sampled by the calibration:

  zoo layers   every distinct conv / linear layer of ResNet-18 and MobileNetV2 at 224x224, batch 8
  ranks        Tucker-2 chains (1x1 -> 3x3 -> 1x1) of ResNet-18's 256->256 3x3 layer at 14x14 and of
               its 128->128 layer at 28x28, batch 8, at ranks 16 .. 192: the candidates a budget
               search chooses between. Spearman rho over the ranks of one layer says whether the
               model orders them as the device does.

  models       ResNet-18 and MobileNetV2, original, pruned (0.3), Tucker-2 factorized (0.5), and
               factorized as a budget plan does it (Tucker-2 for k x k convs, SVD for 1x1 convs, both
               at 0.5: on MobileNetV2, whose k x k convs are depthwise or the stem, only that touches
               its layers), at 224x224 batch 8 and batch 1: the whole compiled model's wall time
               (``wall_ms_each``: the least of 8 block medians, the 16 models timed in turns spread over 90 s, as the
               calibration times its random networks), against ``compiler.cost.predict_compiled``
               over the runtime's real launch list.

For each: the share of predictions within +-10% of the measured time, the median absolute error,
calibrated and analytic (roofline only), and rho. Layers: measured = least kernel time over repeats
in 3 passes over all of them, each layer's input written by another layer first (``prepare_layer``).

    .venv/bin/python benchmarks/cost_model.py [--recalibrate] [--per-family N] [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402  (also unshadows the runtime package)

from scipy.stats import spearmanr  # noqa: E402

import compiler  # noqa: E402
from compiler import Plan, zoo  # noqa: E402
from compiler.analysis import count_macs  # noqa: E402
from compiler.cost import (PASSES, CostModel, Profile, analytic_ms, calibrate, default_profile_path,  # noqa: E402
                           kernel_ms_pass, predict_compiled, prepare_layer, wall_ms_each)
from compiler.errors import CalibrationError  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402
from runtime.opencl import open_device  # noqa: E402

RANKS = (16, 24, 32, 48, 64, 96, 128, 192)
VARIANTS = {"": "default",
            " pruned 0.3": ["cleanup", "fold_bn", {"name": "prune_channels", "ratio": 0.3}, "fuse"],
            " tucker2 0.5": ["cleanup", "fold_bn", {"name": "factorize", "method": "tucker2", "rank": 0.5}, "fuse"]}


def budget_style(net: nn.Module, rank: float = 0.5) -> list:
    """The pipeline factorizing ``net`` as the budget pass would at one rank: every conv and linear but the
    first and last, grouped and depthwise ones, Tucker-2 for k x k convs and SVD for 1x1 convs and Linears."""
    layers = [(p, m) for p, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    plan = Plan(layers={p: {"method": "svd" if isinstance(m, nn.Linear) or m.kernel_size == (1, 1) else "tucker2",
                            "rank": rank} for p, m in layers[1:-1] if getattr(m, "groups", 1) == 1})
    return ["cleanup", "fold_bn", *plan.pipeline(), "fuse"]


def zoo_layers(batch: int) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Distinct conv and linear layers of ResNet-18 and MobileNetV2 with their input shapes."""
    tv = zoo.import_torchvision()
    out, seen = [], set()
    for arch in ("resnet18", "mobilenet_v2"):
        model = getattr(tv.models, arch)(weights=None).eval()
        shapes: dict[str, tuple[int, ...]] = {}

        def record(m, inputs, output, name):
            shapes.setdefault(name, tuple(inputs[0].shape))  # returns None: the output stays

        hooks = [m.register_forward_hook(lambda m, i, o, name=name: record(m, i, o, name))
                 for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
        with torch.no_grad():
            model(torch.randn(batch, 3, 224, 224))
        for h in hooks:
            h.remove()
        for name, shape in shapes.items():
            m = model.get_submodule(name)
            key = (repr(m), shape)
            if key not in seen:
                seen.add(key)
                out.append((f"{arch}.{name}", m, shape))
    return out


def tucker_chain(c: int, r: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, r, 1, bias=False), nn.Conv2d(r, r, 3, 1, 1, bias=False), nn.Conv2d(r, c, 1))


def errors(pairs: list[tuple[float, float]]) -> dict[str, float]:
    rel = [abs(p - m) / m for p, m in pairs]
    return {"within_10pct": sum(r <= 0.10 for r in rel) / len(rel), "median_abs_err": statistics.median(rel)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recalibrate", action="store_true", help="measure a new profile even if one is cached")
    ap.add_argument("--per-family", type=int, default=30, help="calibration layers per kernel family")
    ap.add_argument("--quick", action="store_true", help="fewer held-out layers and ranks, 2 repeats")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = open_device()
    path = default_profile_path(device.name)
    try:
        if args.recalibrate:
            raise CalibrationError("recalibration requested")
        profile = Profile.load(path, device=device.name)
        print(f"calibration profile: {path} ({len(profile.samples)} layers)", file=sys.stderr)
    except CalibrationError as e:
        print(f"calibrating ({e})", file=sys.stderr)
        profile = calibrate(per_family=args.per_family)
        profile.save(path)
        print(f"saved {path}", file=sys.stderr)
    model = CostModel(profile.target, profile)
    repeats = 2 if args.quick else 5

    layers = zoo_layers(8)
    if args.quick:
        layers = layers[::4]
    chains = []  # (name, ranks, [[conv, shape], ...] per rank)
    for c, hw in ((256, 14), (128, 28)):
        ranks = [r for r in RANKS if r < c][:: 2 if args.quick else 1]
        chains.append((f"tucker2 {c}->{c} 3x3 @{hw}", ranks,
                       [[(conv, (8, conv.in_channels, hw, hw)) for conv in tucker_chain(c, r).eval()] for r in ranks]))
    # Every layer timed in PASSES passes, the least kept, as the calibration times its samples.
    todo = [(m, shape) for _, m, shape in layers] + [ls for _, _, per_rank in chains for chain in per_rank for ls in chain]
    runs = [prepare_layer(m, shape) for m, shape in todo]
    ms = [math.inf] * len(runs)
    for _ in range(PASSES):
        ms = [min(a, b) for a, b in zip(ms, kernel_ms_pass(runs, repeats=-(-repeats // PASSES)))]
    timed = iter(zip((layer for layer, _ in runs), ms))

    rows, results, cal, ana = [], [], [], []
    for name, m, shape in layers:
        layer, meas = next(timed)
        pred, roof = model.layer_ms(layer), analytic_ms(layer, profile.target)
        cal.append((pred, meas))
        ana.append((roof, meas))
        results.append({"layer": name, "family": layer.family, "measured_ms": meas, "predicted_ms": pred, "analytic_ms": roof})
    by_family = {}
    for r in results:
        by_family.setdefault(r["family"], []).append((r["predicted_ms"], r["measured_ms"]))
    for fam, pairs in sorted(by_family.items()):
        e = errors(pairs)
        rows.append([f"zoo layers: {fam}", str(len(pairs)), f"{100 * e['within_10pct']:.0f}%", f"{100 * e['median_abs_err']:.1f}%", "", ""])
    e, ea = errors(cal), errors(ana)
    rows.append(["zoo layers: all", str(len(cal)), f"{100 * e['within_10pct']:.0f}%", f"{100 * e['median_abs_err']:.1f}%",
                 f"{100 * ea['within_10pct']:.0f}% / {100 * ea['median_abs_err']:.1f}%", ""])

    rank_results = []
    for name, ranks, per_rank in chains:
        pred, meas = [], []
        for chain in per_rank:
            timed_chain = [next(timed) for _ in chain]
            pred.append(sum(model.layer_ms(layer) for layer, _ in timed_chain))
            meas.append(sum(t for _, t in timed_chain))
        rho = spearmanr(pred, meas).statistic
        e = errors(list(zip(pred, meas)))
        rank_results.append({"layer": name, "ranks": ranks, "predicted_ms": pred, "measured_ms": meas, "spearman": rho})
        c, hw = name.split()[1].split("->")[0], name.split("@")[1]
        rows.append([f"tucker2 ranks, {c}ch @{hw}", str(len(ranks)), f"{100 * e['within_10pct']:.0f}%",
                     f"{100 * e['median_abs_err']:.1f}%", "", f"{rho:.2f}"])
    runs, predicted = {}, {}
    tv = zoo.import_torchvision()
    for arch in ("resnet18", "mobilenet_v2"):
        torch.manual_seed(0)  # the same weights, so the same pruned channels, in every run
        net = zoo.randomize(getattr(tv.models, arch)(weights=None)).eval()
        base_macs: dict[int, int] = {}
        for suffix, pipeline in {**VARIANTS, " svd+tucker2 0.5": budget_style(net)}.items():
            for batch in ((8,) if args.quick else (8, 1)):
                x = torch.randn(batch, 3, 224, 224)
                cm = compiler.compile(net, x, pipeline=pipeline, target="opencl")
                key = (arch + suffix, batch)
                macs = count_macs(cm.graph_module)
                if suffix and macs == base_macs[batch]:
                    # the variant changed nothing (MobileNetV2's k x k convs are depthwise: Tucker-2 leaves
                    # them), so it would count the original twice
                    print(f"{key[0]} b{batch}: skipped, the original graph", file=sys.stderr)
                    continue
                base_macs.setdefault(batch, macs)
                runs[key] = lambda cm=cm, x=x: cm(x)
                predicted[key] = predict_compiled(cm, model).total_ms
    measured = wall_ms_each(runs, rounds=4 if args.quick else 8, per_block=repeats, span_s=0 if args.quick else 90)
    model_results, pairs = [], []
    for key, ms in measured.items():
        pairs.append((predicted[key], ms))
        model_results.append({"model": key[0], "batch": key[1], "measured_ms": ms, "predicted_ms": predicted[key]})
        print(f"{key[0]} b{key[1]}: measured {ms:.1f} ms, predicted {predicted[key]:.1f}", file=sys.stderr)
    e = errors(pairs)
    rows.append(["whole models", str(len(pairs)), f"{100 * e['within_10pct']:.0f}%", f"{100 * e['median_abs_err']:.1f}%",
                 "", ""])
    print(markdown_table(["held out", "n", "within +-10%", "median abs err", "analytic: within / err",
                          "Spearman rho"], rows))
    if args.json:
        write_text_atomic(args.json, json.dumps({"profile": str(path), "layers": results, "ranks": rank_results,
                                                 "models": model_results},
                                                indent=2) + "\n")


if __name__ == "__main__":
    main()
