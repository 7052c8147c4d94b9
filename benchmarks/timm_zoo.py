"""The timm zoo through every rewrite and the OpenCL target: the tuning set beside the held-out set.

``compiler.zoo.TIMM_ZOO`` is what the tests run and the rewrites were developed against;
``TIMM_HOLDOUT`` (other families, other variants) is never tuned on. Each model (timm 1.0.31,
``pretrained=False``, randomised BatchNorm statistics, batch 1 at 64x64 or its fixed size) gets:

  default   compile(model, x): BatchNorms after a conv/linear folded (of those there), onnxruntime
            parity of the export (max rel err)
  prune     prune_channels at 0.3: the share of parameters kept
  opencl    compile(model, x, target="opencl"): parity with eager and the nodes that ran on torch
  factorize (with --factorize) each method at rank 0.25: layers factorized / refused with a reason;
            it fails when a conv or linear is neither (the tests run one method per model)

    .venv/bin/python benchmarks/timm_zoo.py [--set tuning|holdout|all] [--models a,b] [--factorize] [--json out.json]
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
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

import compiler  # noqa: E402
from compiler import zoo  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402
from compiler.graph import is_module  # noqa: E402

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = nn.modules.batchnorm._BatchNorm


def _bn_after_layers(gm) -> int:
    return sum(1 for n in gm.graph.nodes if is_module(gm, n, NORMS) and is_module(gm, n.args[0], LAYERS))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"


METHODS = ("svd", "spatial_svd", "tucker2", "cp", "tt")


def factorize_all(model, x) -> dict[str, str]:
    """Per method: "taken/refused", or "UNNAMED k" when k layers were neither factorized nor refused."""
    base = compiler.compile(model, x, pipeline=["cleanup", "fold_bn"], verify=False).graph_module
    layers = {n.name: n.target for n in base.graph.nodes
              if n.op == "call_module" and type(base.get_submodule(n.target)) in (nn.Conv2d, nn.Linear)}
    out = {}
    for method in METHODS:
        cm = compiler.compile(model, x, pipeline=["cleanup", "fold_bn", {"name": "factorize", "method": method, "rank": 0.25}],
                              verify=False)
        row = cm.report.row("factorize")
        taken, refused = {d["layer"] for d in row.details}, {r.node for r in row.refusals}
        unnamed = [n for n, path in layers.items() if path not in taken and n not in refused]
        out[method] = f"UNNAMED {len(unnamed)}" if unnamed else f"{len(taken)}/{len(refused)}"
    return out


def check(name: str, workdir: Path, factorize: bool = False) -> dict:
    row: dict = {"model": name}
    t0 = time.perf_counter()
    try:
        model, x = zoo.build_timm(name)
        with torch.no_grad():
            ref = model(x)
        params = sum(p.numel() for p in model.parameters())
        traced = compiler.trace(model, (x,))
        row["bn_to_fold"] = _bn_after_layers(traced)
        cm = compiler.compile(model, x)
        row["bn_folded"] = cm.report.row("fold_bn").matches
        row["onnx_rel_err"] = cm.export_onnx(workdir / f"{name}.onnx").max_rel_err
        pruned = compiler.compile(model, x, pipeline=["cleanup", {"name": "prune_channels", "ratio": 0.3}], verify=False)
        row["prune_kept"] = sum(p.numel() for p in pruned.graph_module.parameters()) / params
        ocl = compiler.compile(model, x, target="opencl")
        with torch.no_grad():
            row["opencl_rel_err"] = _rel(ref, ocl(x))
        row["fallbacks"] = ocl.report.backend["fallbacks"]
        if factorize:
            row["factorize"] = factorize_all(model, x)
    except Exception as e:  # noqa: BLE001 - a model that fails is a result
        row["error"] = _first_line(e)
    row["seconds"] = time.perf_counter() - t0
    return row


def passed(r: dict, kind: str) -> dict[str, bool]:
    ok = "error" not in r
    return {
        "default": ok and r["bn_folded"] == r["bn_to_fold"] and r["onnx_rel_err"] <= 1e-4,
        "prune": ok and r["prune_kept"] <= 0.85,
        "opencl": ok and r["opencl_rel_err"] <= 1e-3 and (kind != "cnn" or not r["fallbacks"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("tuning", "holdout", "all"), default="all")
    ap.add_argument("--models", help="comma-separated timm names (default: the --set)")
    ap.add_argument("--factorize", action="store_true", help="also every factorization method on every model (slow)")
    ap.add_argument("--json", help="write the rows here (atomically, after every model)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sets = {"tuning": zoo.TIMM_ZOO, "holdout": zoo.TIMM_HOLDOUT}
    table = {n: ("tuning", *v) for n, v in zoo.TIMM_ZOO.items()} | {n: ("holdout", *v) for n, v in zoo.TIMM_HOLDOUT.items()}
    names = args.models.split(",") if args.models else [n for s, t in sets.items() if args.set in (s, "all") for n in t]
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"unknown models {unknown}: not in TIMM_ZOO or TIMM_HOLDOUT")

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in tqdm(names, desc="timm zoo", unit="model"):
            r = check(name, Path(d), args.factorize)
            r["set"], r["family"], r["kind"] = table[name]
            rows.append(r)
            if args.json:
                write_text_atomic(args.json, json.dumps(rows, indent=2))

    def fmt(r):
        if "error" in r:
            return [r["model"], r["set"], r["family"], r["kind"], "-", "-", "-", "-", "-", r["error"].replace("|", "/")] + \
                (["-"] if args.factorize else [])
        ops = sorted({f.split(" ", 1)[1] for f in r["fallbacks"]})
        fz = [" ".join(f"{m}:{v}" for m, v in r["factorize"].items())] if args.factorize else []
        return [r["model"], r["set"], r["family"], r["kind"], f"{r['bn_folded']}/{r['bn_to_fold']}", f"{r['onnx_rel_err']:.1e}",
                f"{100 * r['prune_kept']:.0f}%", f"{r['opencl_rel_err']:.1e}", str(len(r["fallbacks"])), " ".join(ops), *fz]

    print(markdown_table(["model", "set", "family", "kind", "BN folded", "ONNX rel err", "params kept @0.3",
                          "OpenCL rel err", "on torch", "ops on torch / error"]
                         + (["factorize taken/refused per method"] if args.factorize else []), [fmt(r) for r in rows]))
    print()
    summary = []
    for s in ("tuning", "holdout"):
        part = [r for r in rows if r["set"] == s]
        if not part:
            continue
        checks = [passed(r, r["kind"]) for r in part]
        cnns = [c for c, r in zip(checks, part) if r["kind"] == "cnn"]
        summary.append([s, str(len(part)), str(len({r['family'] for r in part})),
                        f"{sum(c['default'] for c in checks)}/{len(part)}", f"{sum(c['prune'] for c in checks)}/{len(part)}",
                        f"{sum(c['opencl'] for c in cnns)}/{len(cnns)}"])
    print(markdown_table(["set", "models", "families", "default pipeline + ONNX", "prune 0.3 shrinks >= 15%",
                          "CNNs on OpenCL, no fallback"], summary))


if __name__ == "__main__":
    main()
