"""The main job, end to end: compress a trained Fashion-MNIST network to a budget and recover it.

    make demo            # or: .venv/bin/python examples/demo.py [--out demo-out] [--epochs 1]

1. A reference CNN (``fashion_mnist.small_cnn``, 62k params) is trained for 3 epochs on first use
   (about a minute) and cached under ~/.cache/fxcompress/demo (read back with weights_only).
2. ``compiler.compile`` with ``Budget(params=p0 // 4, latency_ratio=0.5)``: the budget pass prices
   every per-layer choice (keep, prune, factorize) with the OpenCL device's cost model, plans on the
   training data and times the plan on the device; then a short distillation fine-tune (``--epochs``)
   recovers the accuracy.
3. Test accuracy, params and latency before and after, on our OpenCL kernels and in onnxruntime,
   both timed in this run at batch ``--batch``; the compressed model's ONNX file and the HTML compile
   report are written to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import compiler
from compiler import Budget, FineTune
from compiler.analysis import count_params
from compiler.cost import wall_ms_each
from compiler.data import fashion_mnist_loaders
from runtime.onnx import OrtRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import evaluate, reference  # noqa: E402

CACHE = Path.home() / ".cache" / "fxcompress" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo-out"), help="where the ONNX file and the HTML report go")
    ap.add_argument("--epochs", type=int, default=1, help="recovery fine-tune epochs after compression")
    ap.add_argument("--batch", type=int, default=64, help="batch size of the latency measurements")
    args = ap.parse_args()
    torch.manual_seed(0)
    t_start = time.perf_counter()

    data = fashion_mnist_loaders(batch_size=128)
    print("reference: small_cnn on Fashion-MNIST (trained on first use, then cached)")
    model = reference("small_cnn", data.train.dataset, cache=CACHE)
    x = next(iter(data.test))[0][: args.batch]
    p0 = count_params(model)

    print(f"compressing to Budget(params={p0 // 4:,}, latency_ratio=0.5), then {args.epochs} epoch(s) of recovery")
    cm = compiler.compile(model, (x,), target="opencl", budget=Budget(params=p0 // 4, latency_ratio=0.5),
                          finetune=FineTune(epochs=args.epochs), train_data=data.train, val_data=data.val)
    base = compiler.compile(model, (x,), target="opencl")  # the original, BN folded, on the same kernels

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = cm.export_onnx(args.out / "small_cnn-compressed.onnx").path
    base_onnx = base.export_onnx(args.out / "small_cnn.onnx").path
    report_path = args.out / "report.html"
    cm.report.save_html(report_path)

    with torch.no_grad():
        y = model(x)
    ort_base, ort_small = OrtRunner(base_onnx, y), OrtRunner(onnx_path, y)
    with torch.no_grad():  # in turns, the least block median of 8 rounds (the statistic the budget pass times by)
        ms = wall_ms_each({"ocl": lambda: base(x), "ocl_c": lambda: cm(x), "ort": lambda: ort_base(x),
                           "ort_c": lambda: ort_small(x)}, rounds=8, per_block=5)
    rows = [
        ("test accuracy %", 100 * evaluate(model, data.test)[1], 100 * evaluate(cm.graph_module, data.test)[1], "{:.2f}"),
        ("params", p0, count_params(cm.graph_module), "{:,}"),
        (f"OpenCL ms (batch {args.batch})", ms["ocl"], ms["ocl_c"], "{:.2f}"),
        (f"onnxruntime ms (batch {args.batch})", ms["ort"], ms["ort_c"], "{:.2f}"),
    ]
    print()
    print(cm.report)
    print()
    print(f"{'':28} {'before':>10} {'after':>10} {'ratio':>7}")
    for name, before, after, fmt in rows:
        ratio = f"{before / after:.2f}x" if "accuracy" not in name else f"{after - before:+.2f}"
        print(f"{name:28} {fmt.format(before):>10} {fmt.format(after):>10} {ratio:>7}")
    print()
    print(f"ONNX:   {onnx_path}")
    print(f"report: {report_path}  (open it in a browser)")
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
