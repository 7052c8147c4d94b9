"""Factorization examples: Tucker-2 on ResNet-18, TT on a Linear-heavy model.

    .venv/bin/python examples/factorize_resnet.py

Prints each compile report: one row per pass, then the per-layer factorization table with totals
(params and MACs before -> after, weight reconstruction error, output error of the layer).
Weights are random here (no downloads), so the errors show the method, not a trained network:
trained kernels have decaying spectra and factorize with far lower error.
"""
import tempfile
from pathlib import Path

import torch
from torch import nn

import compiler
from compiler import zoo


def main() -> None:
    torch.manual_seed(0)
    tv = zoo.import_torchvision()
    resnet = zoo.randomize(tv.models.resnet18(weights=None))
    x = torch.randn(1, 3, 224, 224)
    pipeline = ["cleanup", "fold_bn", {"name": "factorize", "method": "tucker2", "rank": 0.25, "progress": True}, "fuse"]
    cm = compiler.compile(resnet, x, pipeline=pipeline)
    print(cm.report, "\n")

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                        nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)).eval()
    x = torch.randn(8, 1, 28, 28)
    cm = compiler.compile(mlp, x, pipeline=[{"name": "factorize", "method": "tt", "rank": 16, "skip_first": False}, "fuse"])
    print(cm.report)
    with tempfile.TemporaryDirectory() as d:
        res = cm.export_onnx(Path(d) / "mlp_tt.onnx")
        print(f"\nTT model exported: {res.size_bytes / 1e3:.0f} kB, onnxruntime max rel err {res.max_rel_err:.1e}")


if __name__ == "__main__":
    main()
