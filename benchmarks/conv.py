"""Per-layer convolution latency: our OpenCL kernels against torch eager and onnxruntime.

Layers, batch 8, from 224x224 models: ResNet-18's 7x7 stem and 3x3 convs, each with its ReLU (the
BatchNorm folded into the conv, as the default pipeline leaves it), and MobileNetV2's depthwise 3x3
convs with their ReLU6. Each layer is compiled alone (``compiler.compile(..., target="opencl")``),
so conv + activation is one fused op for every runner. Runners, 2 threads each:

  opencl kernel  the kernel's execution time from OpenCL profiling events: what the layer costs
                 inside a compiled model, where activations stay on the device
  opencl call    cm(x): the input uploaded to NHWC, the kernel, the output downloaded (reference)
  eager          the torch module, NCHW
  onnxruntime    the compiled graph exported with ``cm.export_onnx``, CPU provider, graph
                 optimisations all (``runtime.onnx.OrtRunner``)

Each runner is timed in its own block - a pause, warmup calls, then the repeats - never call by
call interleaved: PoCL's worker threads keep spinning for a while after a kernel and would steal a
core from torch or onnxruntime timed right after. Each layer runs ``--rounds`` rounds of the four
blocks; times are medians over all repeats of all rounds. GFLOP/s counts 2 * MACs (the epilogue
not counted). "kernel / ort" is the opencl kernel time over onnxruntime's, of the medians and of the
minimums (on a shared machine the minimums are the steadier estimate of what each can do).

    .venv/bin/python benchmarks/conv.py [--repeats N] [--rounds N] [--only resnet|mobilenet] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
# The repo before benchmarks/, so that `runtime` is the package even though benchmarks/runtime.py exists.
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
from _timing import markdown_table  # noqa: E402

import compiler  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402
from runtime.onnx import OrtRunner  # noqa: E402

BATCH = 8
# name: (cin, cout, kernel, stride, padding, groups, input size, activation)
LAYERS = {
    "resnet18 stem 3->64 7x7 s2 @224": (3, 64, 7, 2, 3, 1, 224, nn.ReLU),
    "resnet18 64->64 3x3 @56": (64, 64, 3, 1, 1, 1, 56, nn.ReLU),
    "resnet18 64->128 3x3 s2 @56": (64, 128, 3, 2, 1, 1, 56, nn.ReLU),
    "resnet18 128->128 3x3 @28": (128, 128, 3, 1, 1, 1, 28, nn.ReLU),
    "resnet18 128->256 3x3 s2 @28": (128, 256, 3, 2, 1, 1, 28, nn.ReLU),
    "resnet18 256->256 3x3 @14": (256, 256, 3, 1, 1, 1, 14, nn.ReLU),
    "resnet18 256->512 3x3 s2 @14": (256, 512, 3, 2, 1, 1, 14, nn.ReLU),
    "resnet18 512->512 3x3 @7": (512, 512, 3, 1, 1, 1, 7, nn.ReLU),
    "mobilenet_v2 dw 32 @112": (32, 32, 3, 1, 1, 32, 112, nn.ReLU6),
    "mobilenet_v2 dw 96 s2 @112": (96, 96, 3, 2, 1, 96, 112, nn.ReLU6),
    "mobilenet_v2 dw 144 @56": (144, 144, 3, 1, 1, 144, 56, nn.ReLU6),
    "mobilenet_v2 dw 192 @28": (192, 192, 3, 1, 1, 192, 28, nn.ReLU6),
    "mobilenet_v2 dw 576 @14": (576, 576, 3, 1, 1, 576, 14, nn.ReLU6),
    "mobilenet_v2 dw 960 @7": (960, 960, 3, 1, 1, 960, 7, nn.ReLU6),
}


def block_samples(fn: Callable[[], object], *, repeats: int, own_ms: bool = False, warmup: int = 3,
                  settle_s: float = 0.5) -> list[float]:
    """ms per call of ``fn`` after a pause and warmup: wall time, or what ``fn`` returns if ``own_ms``."""
    time.sleep(settle_s)
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = fn()
            out.append(got if own_ms else (time.perf_counter() - t0) * 1e3)
    return out


def measure(name: str, spec: tuple, *, repeats: int, rounds: int, tmp: Path) -> dict:
    cin, cout, k, s, p, g, size, act = spec
    model = nn.Sequential(nn.Conv2d(cin, cout, k, s, p, groups=g), act()).eval()
    x = torch.randn(BATCH, cin, size, size)
    cm = compiler.compile(model, x, target="opencl")
    kinds = sorted({step.kernel for step in cm._runner.lowered.steps})
    ort = OrtRunner(cm.export_onnx(tmp / "layer.onnx").path, cm.graph_module(x), threads=2)
    with torch.no_grad():
        ref = model(x)
        err = ((cm(x) - ref).abs().max() / ref.abs().max()).item()
    runners = {"opencl kernel": lambda: sum(cm._runner.profile(x).values()), "opencl call": lambda: cm(x),
               "eager": lambda: model(x), "onnxruntime": lambda: ort(x)}
    samples: dict[str, list[float]] = {r: [] for r in runners}
    for _ in range(rounds):
        for r, fn in runners.items():
            samples[r] += block_samples(fn, repeats=repeats, own_ms=r == "opencl kernel")
    oh = (size + 2 * p - k) // s + 1
    gflop = 2 * BATCH * oh * oh * cout * k * k * (cin // g) / 1e9
    return {"layer": name, "kernels": kinds, "gflop": gflop, "max_rel_err": err,
            "median_ms": {r: statistics.median(v) for r, v in samples.items()},
            "min_ms": {r: min(v) for r, v in samples.items()}}


HEAD = ["layer (batch 8)", "GFLOP", "opencl kernel ms", "GFLOP/s", "opencl call ms", "eager ms", "onnxruntime ms",
        "ort GFLOP/s", "kernel / ort", "kernel / ort (min)"]


def _row(r: dict) -> list[str]:
    ms, best, gf = r["median_ms"], r["min_ms"], r["gflop"]
    ours, ort = ms["opencl kernel"], ms["onnxruntime"]
    return [r["layer"], f"{gf:.2f}", f"{ours:.2f}", f"{gf / ours * 1e3:.0f}", f"{ms['opencl call']:.2f}",
            f"{ms['eager']:.2f}", f"{ort:.2f}", f"{gf / ort * 1e3:.0f}", f"{ours / ort:.2f}",
            f"{best['opencl kernel'] / best['onnxruntime']:.2f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per block")
    ap.add_argument("--rounds", type=int, default=2, help="blocks per runner and layer")
    ap.add_argument("--only", choices=["resnet", "mobilenet"], help="one model's layers")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    results, rows = [], []
    with tempfile.TemporaryDirectory() as d:
        for name, spec in LAYERS.items():
            if args.only and not name.startswith(args.only):
                continue
            r = measure(name, spec, repeats=args.repeats, rounds=args.rounds, tmp=Path(d))
            results.append(r)
            rows.append(_row(r))
            print(f"{name}: {r['median_ms']} ({', '.join(r['kernels'])}) err {r['max_rel_err']:.1e}", file=sys.stderr,
                  flush=True)
    print(markdown_table(HEAD, rows))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
