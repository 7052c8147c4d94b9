"""Quick start: compile torchvision ResNet-18, print the report, export ONNX, check onnxruntime parity.

    make demo            # or: .venv/bin/python examples/quickstart.py
"""
import tempfile
import time
from pathlib import Path

import torch

import compiler
from compiler import zoo
from runtime.onnx import OrtRunner


def main() -> None:
    torch.manual_seed(0)
    tv = zoo.import_torchvision()
    # Random weights (no downloads here); randomised BN statistics, so outputs are far from zero
    # and the parity check below means something.
    model = zoo.randomize(tv.models.resnet18(weights=None))
    x = torch.randn(1, 3, 224, 224)

    t0 = time.perf_counter()
    cm = compiler.compile(model, x)  # trace -> cleanup -> fold_bn -> fuse, each verified against eager
    print(f"compiled in {time.perf_counter() - t0:.2f} s\n")

    with tempfile.TemporaryDirectory() as d:
        result = cm.export_onnx(Path(d) / "resnet18.onnx")
        print(cm.report)
        print()
        with torch.no_grad():
            ref = model.eval()(x)
        ort_out = OrtRunner(result.path, ref)(x)
        err = ((ort_out - ref).abs().max() / ref.abs().max()).item()
        print(f"ONNX: opset {result.opset}, {result.size_bytes / 1e6:.1f} MB")
        print(f"parity: onnxruntime vs eager PyTorch, max rel error {err:.2e} "
              f"(top-1 agrees: {bool((ort_out.argmax(1) == ref.argmax(1)).all())})")


if __name__ == "__main__":
    main()
