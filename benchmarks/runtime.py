"""Latency of our OpenCL target against torch eager and onnxruntime, measured in one run.

Runners, all on the same 2-core CPU:
  opencl       compile(..., target="opencl"): our kernels on PoCL's CPU device
  eager        the original model, torch eager, 2 threads
  onnxruntime  our ONNX export, onnxruntime CPU, graph optimizations all, 2 intra-op threads

Models: ResNet-18, MobileNetV2, and ResNet-18 pruned (0.3) and Tucker-2 factorized (rank 0.5); at
batch 1 and 8, 224x224 and 32x32. Times are medians over interleaved repeats. For each model at
batch 8 it also prints where the OpenCL time goes (per kernel family, from profiling events), and
the compile time of a new process with an empty program cache (cold) and with a primed one (warm).

    .venv/bin/python benchmarks/runtime.py [--quick] [--repeats N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, median_ms  # noqa: E402  (also unshadows the runtime package)

import compiler  # noqa: E402
from compiler import zoo  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402
from runtime.onnx import OrtRunner  # noqa: E402

COMPRESSED = ["cleanup", "fold_bn", {"name": "prune_channels", "ratio": 0.3},
              {"name": "factorize", "method": "tucker2", "rank": 0.5}, "fuse"]
MODELS = {"resnet18": ("resnet18", "default"), "mobilenet_v2": ("mobilenet_v2", "default"),
          "resnet18 pruned+tucker2": ("resnet18", COMPRESSED)}


def _cold_warm(name: str, size: int) -> tuple[float, float]:
    """Seconds to compile for the OpenCL target in a fresh process: empty caches, then primed ones."""
    code = ("import time, torch, compiler\nfrom compiler import zoo\ntv = zoo.import_torchvision()\n"
            f"m = zoo.randomize(getattr(tv.models, '{name}')(weights=None)); x = torch.randn(1, 3, {size}, {size})\n"
            "t = time.perf_counter(); compiler.compile(m, x, target='opencl'); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, FXCOMPRESS_CACHE_DIR=str(Path(d) / "fx"), POCL_CACHE_DIR=str(Path(d) / "pocl"))
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout.split()[-1]) for _ in range(2)]
    return runs[0], runs[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="224x224 batch 8 and 32x32 batch 1 only, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    repeats = args.repeats or (5 if args.quick else 15)
    points = [(224, 8), (32, 1)] if args.quick else [(224, 1), (224, 8), (32, 1), (32, 8)]
    tv = zoo.import_torchvision()
    results, rows, breakdowns = [], [], []
    with tempfile.TemporaryDirectory() as d:
        for label, (arch, pipeline) in MODELS.items():
            model = zoo.randomize(getattr(tv.models, arch)(weights=None)).eval()
            for size, batch in points:
                x = torch.randn(batch, 3, size, size)
                cm = compiler.compile(model, x, pipeline=pipeline, target="opencl")
                onnx = cm.export_onnx(Path(d) / "m.onnx")
                ort = OrtRunner(onnx.path, cm.graph_module(x), threads=2)
                with torch.no_grad():
                    ref = model(x) if pipeline == "default" else cm.graph_module(x)
                    err = ((cm(x) - ref).abs().max() / ref.abs().max()).item()
                ms = median_ms({"opencl": lambda: cm(x), "eager": lambda: model(x), "onnxruntime": lambda: ort(x)},
                               repeats=repeats)
                info = cm.report.backend
                results.append({"model": label, "size": size, "batch": batch, "median_ms": ms, "max_rel_err": err,
                                "fallbacks": info["fallbacks"], "peak_device_bytes": info["peak_device_bytes"]})
                rows.append([label, f"{size}", f"{batch}", f"{ms['opencl']:.2f}", f"{ms['eager']:.2f}",
                             f"{ms['onnxruntime']:.2f}", f"{ms['opencl'] / ms['onnxruntime']:.2f}",
                             f"{info['peak_device_bytes'] / 2**20:.1f}"])
                print(f"{label} {size} b{batch}: {ms} err {err:.1e}", file=sys.stderr, flush=True)
                if (size, batch) == (224, 8):
                    prof = cm._runner.profile(x)
                    total = sum(prof.values())
                    breakdowns.append((label, {k: round(v, 2) for k, v in prof.items()}))
                    results[-1]["kernel_ms"] = prof
                    print(f"  where the time goes ({total:.1f} ms synchronised): "
                          + ", ".join(f"{k} {v:.1f}" for k, v in prof.items()), file=sys.stderr)
    print(markdown_table(["model", "input", "batch", "opencl ms", "eager ms", "onnxruntime ms", "opencl / ort",
                          "device MiB"], rows))
    for label, prof in breakdowns:
        print(f"\n{label}, 224x224 batch 8, ms per kernel family: {prof}")
    cold, warm = _cold_warm("resnet18", 224)
    print(f"\nresnet18 compile for opencl in a new process: cold cache {cold:.1f} s, warm cache {warm:.1f} s")
    if args.json:
        write_text_atomic(args.json, json.dumps({"points": results, "compile_cold_s": cold, "compile_warm_s": warm},
                                                indent=2) + "\n")


if __name__ == "__main__":
    main()
