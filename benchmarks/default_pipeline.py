"""Latency of the default pipeline (cleanup, fold_bn, fuse) against its peers, measured in one run.

Runners, all on the same CPU with 2 threads:
  eager        the original torchvision model, torch eager
  fxcompress   the compiled GraphModule (target "torch"), torch eager
  onnxruntime  our ONNX export, onnxruntime CPU, graph optimizations all, 2 intra-op threads

    .venv/bin/python benchmarks/default_pipeline.py [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, median_ms  # noqa: E402

import compiler  # noqa: E402
from compiler import zoo  # noqa: E402
from runtime.onnx import OrtRunner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 1 only, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    repeats = args.repeats or (5 if args.quick else 15)
    batches = (1,) if args.quick else (1, 8)
    tv = zoo.import_torchvision()

    results, rows = [], []
    with tempfile.TemporaryDirectory() as d:
        for name in ("resnet18", "mobilenet_v2"):
            model = zoo.randomize(getattr(tv.models, name)(weights=None))
            for b in batches:
                x = torch.randn(b, 3, 224, 224)
                cm = compiler.compile(model, x)
                res = cm.export_onnx(Path(d) / f"{name}.onnx")
                ort = OrtRunner(res.path, cm.graph_module(x), threads=2)
                ms = median_ms({"eager": lambda: model(x), "fxcompress": lambda: cm(x), "onnxruntime": lambda: ort(x)},
                               repeats=repeats)
                results.append({"model": name, "batch": b, "median_ms": ms, "repeats": repeats})
                rows.append([name, str(b), f"{ms['eager']:.1f}", f"{ms['fxcompress']:.1f}", f"{ms['onnxruntime']:.1f}",
                             f"{ms['eager'] / ms['fxcompress']:.2f}x"])
                print(f"{name} b{b}: {ms}", file=sys.stderr)
    print(markdown_table(["model", "batch", "eager ms", "fxcompress (torch) ms", "onnxruntime ms", "fxcompress vs eager"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
