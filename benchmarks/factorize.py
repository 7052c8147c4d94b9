"""Factorization benchmark: compile time per method, error vs parameter ratio, layer latency.

    .venv/bin/python benchmarks/factorize.py [--quick] [--json out.json] [--cp-backends | --tucker-hooi]

1. Wall time of the factorize pass over every eligible layer of ResNet-50 and VGG-16 (224x224,
   rank 0.25, default skip rules), per method.
2. Weight reconstruction error against parameter ratio for one ResNet-50 layer (layer3.1.conv2,
   256->256 3x3), per method. Weights are random-init (no downloads here): trained kernels have
   decaying spectra, so these errors are an upper bound on what trained layers see.
3. Measured latency of single factorized layers against the original, in torch eager and in
   onnxruntime (2 threads each), median over repeats, interleaved.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, median_ms  # noqa: E402

import compiler  # noqa: E402
from compiler import zoo  # noqa: E402
from passes.decompose import METHODS, parse_rank, resolve_ranks  # noqa: E402
from runtime.onnx import OrtRunner  # noqa: E402

ALL = ["svd", "spatial_svd", "tucker2", "cp", "tt"]


def compile_times(models: list[str]) -> tuple[list[dict], str]:
    tv = zoo.import_torchvision()
    out, rows = [], []
    for name in models:
        model = zoo.randomize(getattr(tv.models, name)(weights=None))
        x = torch.randn(1, 3, 224, 224)
        for method in ALL:
            gm = compiler.trace(model, x)
            t0 = time.perf_counter()
            _, report = compiler.PassManager(["fold_bn", {"name": "factorize", "method": method, "rank": 0.25}], verify=False).run(gm, (x,))
            seconds = time.perf_counter() - t0
            d = report.row("factorize").details
            pb, pa = sum(r["params_before"] for r in d), sum(r["params_after"] for r in d)
            out.append({"model": name, "method": method, "layers": len(d), "seconds": seconds, "param_ratio": pa / max(pb, 1)})
            rows.append([name, method, str(len(d)), f"{seconds:.1f}", f"{pb / max(pa, 1):.2f}x"])
            print(f"{name} {method}: {seconds:.1f} s", file=sys.stderr)
    return out, markdown_table(["model", "method", "layers", "factorize s", "params reduced (those layers)"], rows)


def error_curve() -> tuple[list[dict], str]:
    tv = zoo.import_torchvision()
    torch.manual_seed(0)
    w = tv.models.resnet50(weights=None).layer3[1].conv2.weight.detach()
    out, rows = [], []
    for method in ALL:
        m = METHODS[(method, "conv")]
        cells = []
        for f in (0.05, 0.1, 0.25, 0.5):
            r = resolve_ranks(parse_rank(f), m, w)
            err = ((m.reconstruct(m.decompose(w, r)) - w).norm() / w.norm()).item()
            ratio = m.params(tuple(w.shape), r) / w.numel()
            out.append({"method": method, "fraction": f, "ranks": list(r), "param_ratio": ratio, "weight_rel_err": err})
            cells.append(f"{ratio:.3f} / {err:.3f}")
        rows.append([method, *cells])
    return out, markdown_table(["method", "rank 0.05", "rank 0.1", "rank 0.25", "rank 0.5"], rows)


LAYER_CASES = [
    # (label, layer factory, input shape, method, rank)
    ("conv 256->256 3x3 @14x14 b8", lambda: nn.Conv2d(256, 256, 3, padding=1), (8, 256, 14, 14), "tucker2", 128),
    ("conv 256->256 3x3 @14x14 b8", lambda: nn.Conv2d(256, 256, 3, padding=1), (8, 256, 14, 14), "tucker2", 32),
    ("conv 64->64 3x3 @56x56 b8", lambda: nn.Conv2d(64, 64, 3, padding=1), (8, 64, 56, 56), "tucker2", 48),
    ("conv 256->256 3x3 @14x14 b8", lambda: nn.Conv2d(256, 256, 3, padding=1), (8, 256, 14, 14), "svd", 64),
    ("conv 256->256 3x3 @14x14 b8", lambda: nn.Conv2d(256, 256, 3, padding=1), (8, 256, 14, 14), "spatial_svd", 192),
    ("conv 256->256 3x3 @14x14 b8", lambda: nn.Conv2d(256, 256, 3, padding=1), (8, 256, 14, 14), "cp", 256),
    ("conv 256->256 3x3 @14x14 b8", lambda: nn.Conv2d(256, 256, 3, padding=1), (8, 256, 14, 14), "tt", 64),
    ("linear 4096x4096 b8", lambda: nn.Linear(4096, 4096), (8, 4096), "svd", 256),
    ("linear 4096x4096 b8", lambda: nn.Linear(4096, 4096), (8, 4096), "tt", 64),
]


def layer_latency(repeats: int, cases) -> tuple[list[dict], str]:
    out, rows = [], []
    with tempfile.TemporaryDirectory() as d:
        for i, (label, make, shape, method, rank) in enumerate(cases):
            torch.manual_seed(0)
            layer = nn.Sequential(make()).eval()  # a root module is traced through; wrap it to keep a layer node
            x = torch.randn(shape)
            cm = compiler.compile(layer, x, pipeline=[{"name": "factorize", "method": method, "rank": rank,
                                                       "skip_first": False, "skip_last": False}])
            det = cm.report.row("factorize").details[0]
            orig = compiler.compile(layer, x, pipeline="none")
            ort_f = OrtRunner(cm.export_onnx(Path(d) / f"f{i}.onnx").path, layer(x), threads=2)
            ort_o = OrtRunner(orig.export_onnx(Path(d) / f"o{i}.onnx").path, layer(x), threads=2)
            ms = median_ms({"eager": lambda: layer(x), "eager_f": lambda: cm(x), "ort": lambda: ort_o(x), "ort_f": lambda: ort_f(x)},
                           repeats=repeats)
            flops = det["macs_before"] / det["macs_after"]
            out.append({"layer": label, "method": method, "rank": det["rank"], "mac_reduction": flops, "median_ms": ms})
            rows.append([label, method, "x".join(map(str, det["rank"])), f"{flops:.2f}x",
                         f"{ms['eager']:.2f} -> {ms['eager_f']:.2f} ({ms['eager'] / ms['eager_f']:.2f}x)",
                         f"{ms['ort']:.2f} -> {ms['ort_f']:.2f} ({ms['ort'] / ms['ort_f']:.2f}x)"])
            print(f"{label} {method} {rank}: {ms}", file=sys.stderr)
    return out, markdown_table(["layer", "method", "rank", "MACs fewer", "eager ms (speed-up)", "onnxruntime ms (speed-up)"], rows)


def cp_backend_comparison() -> str:
    """parafac on a 512-channel 3x3 kernel at the CP rank of ``rank=0.25``: TensorLy's default
    tensor-algebra backend against the einsum backend our wrapper uses (25 ALS sweeps each)."""
    import tensorly as tl
    from tensorly.decomposition import parafac

    w = torch.randn(512, 512, 3, 3)
    r = resolve_ranks(parse_rank(0.25), METHODS[("cp", "conv")], w)[0]
    rows = []
    for backend in ("core", "einsum"):
        with tl.backend_context("pytorch"), tl.tenalg.backend_context(backend):
            t0 = time.perf_counter()
            parafac(w, rank=r, n_iter_max=25, init="svd", tol=1e-12)
            rows.append([backend, str(r), f"{time.perf_counter() - t0:.1f}"])
        print(f"parafac {backend}: {rows[-1][2]} s", file=sys.stderr)
    return markdown_table(["tensorly tenalg backend", "CP rank", "parafac s"], rows)


def tucker_hooi_comparison(repeats: int = 3) -> str:
    """Tucker-2 of random 3x3 kernels with a decaying spectrum: our HOOI (``passes/decompose/tucker.py``)
    against TensorLy's ``partial_tucker`` (same start, sweeps and tolerance), median seconds over
    ``repeats`` and the relative reconstruction error (Frobenius) of each."""
    import statistics

    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    from passes.decompose.tucker import HOOI_ITERS, HOOI_TOL, tucker2, tucker2_reconstruct

    def theirs(w, r):
        with tl.backend_context("pytorch"), tl.tenalg.backend_context("einsum"):
            (core, (u_out, u_in)), _ = partial_tucker(w, rank=list(r), modes=[0, 1], n_iter_max=HOOI_ITERS,
                                                      init="svd", tol=HOOI_TOL)
        return torch.einsum("ab,bchw,dc->adhw", u_out, core, u_in)

    rows = []
    torch.manual_seed(0)
    for c in (512, 256):
        w = torch.randn(c, c, 3, 3)
        q = torch.linalg.qr(torch.randn(c, c))[0]
        w = torch.einsum("ab,bchw->achw", q * torch.linspace(1, 0.05, c), w)
        for f in (0.75, 0.25):
            r = resolve_ranks(parse_rank(f), METHODS[("tucker2", "conv")], w)
            got = {}
            for name, fn in (("tensorly", theirs), ("ours", lambda w, r: tucker2_reconstruct(tucker2(w, r)))):
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    rec = fn(w, r)
                    times.append(time.perf_counter() - t0)
                got[name] = (statistics.median(times), ((rec - w).norm() / w.norm()).item())
            rows.append([f"{c}x{c}x3x3", f"{f} ({r[0]}x{r[1]})", f"{got['tensorly'][0]:.2f}", f"{got['ours'][0]:.2f}",
                         f"{got['tensorly'][0] / got['ours'][0]:.1f}x", f"{got['tensorly'][1]:.6f}", f"{got['ours'][1]:.6f}"])
            print(rows[-1], file=sys.stderr)
    return markdown_table(["kernel", "rank", "partial_tucker s", "ours s", "speed-up", "partial_tucker err", "ours err"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ResNet-50 only for compile time, fewer layers and repeats")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--cp-backends", action="store_true", help="only time CP with TensorLy's two tensor-algebra backends (~2 min)")
    ap.add_argument("--tucker-hooi", action="store_true", help="only time our Tucker-2 HOOI against TensorLy's (~30 s)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.cp_backends:
        print(cp_backend_comparison())
        return
    if args.tucker_hooi:
        print(tucker_hooi_comparison())
        return
    results = {}
    results["compile"], t1 = compile_times(["resnet50"] if args.quick else ["resnet50", "vgg16"])
    results["error_curve"], t2 = error_curve()
    results["latency"], t3 = layer_latency(5 if args.quick else 30, LAYER_CASES[:3] if args.quick else LAYER_CASES)
    print("## Factorize wall time (rank 0.25)\n\n" + t1)
    print("\n## Parameter ratio / weight reconstruction error, ResNet-50 layer3.1.conv2\n\n" + t2)
    print("\n## Layer latency, original -> factorized (median)\n\n" + t3)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
