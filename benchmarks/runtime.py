"""Latency of our OpenCL target against torch eager and onnxruntime, measured in one run.

Runners, all on the same 2-core CPU:
  opencl       compile(..., target="opencl"): our kernels on PoCL's CPU device
  eager        the original model, torch eager, 2 threads
  onnxruntime  our ONNX export, onnxruntime CPU, graph optimizations all, 2 intra-op threads

Models: ResNet-18, MobileNetV2, timm's MobileNetV2 (mobilenetv2_100), and ResNet-18 pruned (0.3) and
Tucker-2 factorized (rank 0.5); at
batch 1 and 8, 224x224 and 32x32. Times are medians over repeats timed in blocks, runner by runner
(PoCL's, OpenMP's and onnxruntime's thread pools keep spinning after a call and would slow whichever
runner comes next call by call), over several rounds. For each model at batch 8 it also prints where
the OpenCL time goes (per kernel family, from profiling events) with the GFLOP/s of the conv and GEMM
families against this machine's roofline: the FMA peak (``probe.fma_peak_gflops``) and copy bandwidth,
our GEMM and torch's (oneDNN) at 1024^3; and the compile time of a new process with an empty program
cache (cold) and with a primed one (warm).

    .venv/bin/python benchmarks/runtime.py [--quick] [--repeats N] [--models a,b] [--points 224x8,32x1] [--json out.json]
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
from _timing import blocked_median_ms, markdown_table  # noqa: E402  (also unshadows the runtime package)

import compiler  # noqa: E402
from compiler import zoo  # noqa: E402
from compiler.analysis import node_macs  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402
from runtime.onnx import OrtRunner  # noqa: E402
from runtime.opencl import Gemm, open_device  # noqa: E402
from runtime.opencl.probe import fma_peak_gflops, measure_target  # noqa: E402

COMPRESSED = ["cleanup", "fold_bn", {"name": "prune_channels", "ratio": 0.3},
              {"name": "factorize", "method": "tucker2", "rank": 0.5}, "fuse"]
MODELS = {"resnet18": ("resnet18", "default"), "mobilenet_v2": ("mobilenet_v2", "default"),
          "timm mobilenetv2_100": ("timm:mobilenetv2_100", "default"),
          "resnet18 pruned+tucker2": ("resnet18", COMPRESSED)}


# Kernel families that do a node's MACs (Winograd: its GEMMs, credited with the direct conv's MACs).
COMPUTE = ("conv", "conv 1x1 (gemm)", "dwconv", "gemm", "winograd")


def family_gflops(cm, prof: dict[str, float]) -> dict[str, float]:
    """GFLOP/s (2 * MACs / kernel time) of each compute kernel family in a profile."""
    gm = cm.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    macs: dict[str, int] = {}
    seen = set()
    for step in cm._runner.lowered.steps:
        if step.kernel in COMPUTE and step.node not in seen:  # a node's MACs go to its first kernel
            seen.add(step.node)
            macs[step.kernel] = macs.get(step.kernel, 0) + node_macs(gm, nodes[step.node])
    return {k: round(2 * m / (prof[k] * 1e-3) / 1e9, 1) for k, m in macs.items() if prof.get(k)}


def roofline(rounds: int = 5) -> dict[str, float]:
    """This machine's ceilings and the 1024^3 GEMM: ours (profiling events) and torch's, in blocks."""
    device = open_device()
    peak = fma_peak_gflops(device)
    target = measure_target(device)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    gemm, q = Gemm(device, b), device.queue(profiling=True)
    a_buf, c_buf = device.alloc(hostbuf=a.numpy()), device.alloc(n * n * 4)
    events: list[float] = []

    def ours() -> None:
        ev = gemm.enqueue(q, a_buf, c_buf, n)
        q.finish()
        events.append((ev.profile.end - ev.profile.start) * 1e-6)

    ms = blocked_median_ms({"ours": ours, "torch": lambda: torch.matmul(a, b, out=c)}, rounds=rounds, per_block=10,
                           settle_s=0.25)
    flop = 2 * n**3
    ours_gflops = flop / (sorted(events)[len(events) // 2] * 1e-3) / 1e9
    return {"fma_peak_gflops": round(peak, 1), "copy_gbs": target.bandwidth_gbs,
            "gemm1024_ours_gflops": round(ours_gflops, 1), "gemm1024_torch_gflops": round(flop / (ms["torch"] * 1e-3) / 1e9, 1)}


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
    ap.add_argument("--models", help=f"comma-separated, of {list(MODELS)} (default: all)")
    ap.add_argument("--points", help="comma-separated SIZExBATCH, e.g. 224x8,32x1 (default: by --quick)")
    args = ap.parse_args()
    models = args.models.split(",") if args.models else list(MODELS)
    if bad := [m for m in models if m not in MODELS]:
        ap.error(f"unknown models {bad}; valid choices: {list(MODELS)}")
    torch.set_num_threads(2)
    repeats = args.repeats or (5 if args.quick else 15)
    points = [(224, 8), (32, 1)] if args.quick else [(224, 1), (224, 8), (32, 1), (32, 8)]
    if args.points:
        points = [tuple(int(v) for v in p.split("x")) for p in args.points.split(",")]
    tv = zoo.import_torchvision()
    results, rows, breakdowns = [], [], []
    with tempfile.TemporaryDirectory() as d:
        for label, (arch, pipeline) in ((m, MODELS[m]) for m in models):
            if arch.startswith("timm:"):
                model = zoo.randomize(zoo.import_timm().create_model(arch[5:], pretrained=False)).eval()
            else:
                model = zoo.randomize(getattr(tv.models, arch)(weights=None)).eval()
            for size, batch in points:
                x = torch.randn(batch, 3, size, size)
                cm = compiler.compile(model, x, pipeline=pipeline, target="opencl")
                onnx = cm.export_onnx(Path(d) / "m.onnx")
                ort = OrtRunner(onnx.path, cm.graph_module(x), threads=2)
                with torch.no_grad():
                    ref = model(x) if pipeline == "default" else cm.graph_module(x)
                    err = ((cm(x) - ref).abs().max() / ref.abs().max()).item()
                ms = blocked_median_ms({"opencl": lambda: cm(x), "eager": lambda: model(x),
                                        "onnxruntime": lambda: ort(x)},
                                       rounds=3, per_block=-(-repeats // 3), settle_s=0.25)
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
                    flops = family_gflops(cm, prof)
                    breakdowns.append((label, {k: round(v, 2) for k, v in prof.items()}, flops))
                    results[-1]["kernel_ms"], results[-1]["kernel_gflops"] = prof, flops
                    print(f"  where the time goes ({total:.1f} ms synchronised): "
                          + ", ".join(f"{k} {v:.1f}" for k, v in prof.items()), file=sys.stderr)
    print(markdown_table(["model", "input", "batch", "opencl ms", "eager ms", "onnxruntime ms", "opencl / ort",
                          "device MiB"], rows))
    roof = roofline()
    print(f"\nroofline: FMA peak {roof['fma_peak_gflops']} GFLOP/s, copy {roof['copy_gbs']} GB/s; GEMM 1024^3: ours "
          f"{roof['gemm1024_ours_gflops']} GFLOP/s, torch (oneDNN) {roof['gemm1024_torch_gflops']} "
          f"({roof['gemm1024_ours_gflops'] / roof['gemm1024_torch_gflops']:.2f}x)")
    for label, prof, flops in breakdowns:
        print(f"\n{label}, 224x224 batch 8, ms per kernel family: {prof}")
        print("  GFLOP/s (% of FMA peak): " + ", ".join(
            f"{k} {g} ({100 * g / roof['fma_peak_gflops']:.0f}%)" for k, g in flops.items()))
    cold, warm = _cold_warm("resnet18", 224)
    print(f"\nresnet18 compile for opencl in a new process: cold cache {cold:.1f} s, warm cache {warm:.1f} s")
    if args.json:
        write_text_atomic(args.json, json.dumps({"points": results, "roofline": roof, "compile_cold_s": cold, "compile_warm_s": warm},
                                                indent=2) + "\n")


if __name__ == "__main__":
    main()
