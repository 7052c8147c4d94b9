"""OpenCL GEMM benchmark: our kernel against torch.matmul (oneDNN) and numpy (OpenBLAS), same run.

    .venv/bin/python benchmarks/gemm.py [--repeats N] [--config MR,NV,L0,L1] [--json out.json]

Shapes: 1024^3, and the GEMMs of convolutions and a classifier at batch 8:
  M = 8*56*56, N = 64,   K = 576    (64 -> 64 3x3 conv at 56x56, im2col)
  M = 8*14*14, N = 256,  K = 2304   (256 -> 256 3x3 conv at 14x14)
  M = 8,       N = 1000, K = 512    (ResNet-18's fc)
Our kernel is timed two ways: OpenCL profiling events (kernel execution only) and wall time of
enqueue + finish (what a caller that synchronises pays). torch and numpy get 2 threads. Methods run
in blocks over 5 rounds, each after a pause that lets the previous thread pool go idle (see
blocked_median_ms); medians per call are reported, and load from other processes on this shared
machine hits all three alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# The repo before benchmarks/, so that `runtime` is the package even though benchmarks/runtime.py exists.
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
from _timing import blocked_median_ms, markdown_table  # noqa: E402

from runtime.opencl import Gemm, GemmConfig, open_device  # noqa: E402

SHAPES = [(1024, 1024, 1024), (8 * 56 * 56, 64, 576), (8 * 14 * 14, 256, 2304), (8, 1000, 512)]


def _busy_seconds() -> float | None:
    """CPU seconds all processes have used (Linux /proc/stat), to see how much others took."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OthersLoad:
    """Share of the machine's cores used by other processes between ``start()`` and ``share()``."""

    def start(self) -> None:
        self.busy, self.ours, self.wall = _busy_seconds(), sum(os.times()[:2]), time.perf_counter()

    def share(self) -> float | None:
        busy = _busy_seconds()
        if busy is None or self.busy is None:
            return None
        others = (busy - self.busy) - (sum(os.times()[:2]) - self.ours)
        return max(0.0, others) / ((time.perf_counter() - self.wall) * (os.cpu_count() or 1))


def bench_shape(device, m: int, n: int, k: int, repeats: int | None, config: GemmConfig) -> dict:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    c = torch.empty(m, n)
    a_np, b_np, c_np = a.numpy(), b.numpy(), np.empty((m, n), np.float32)

    gemm = Gemm(device, b, config=config)
    queue = device.queue(profiling=True)
    a_buf = device.alloc(hostbuf=a_np)
    c_buf = device.alloc(m * n * 4)
    ref = a.double() @ b.double()
    err = ((gemm(a).double() - ref).abs().max() / ref.abs().max()).item()

    event_s: list[float] = []

    def ours() -> None:
        ev = gemm.enqueue(queue, a_buf, c_buf, m)
        queue.finish()
        event_s.append((ev.profile.end - ev.profile.start) * 1e-9)

    flop = 2 * m * n * k
    if repeats is None:  # about 0.3 s per method at 150 GFLOP/s, within [25, 500]
        repeats = int(min(500, max(25, 0.3 / (flop / 150e9))))
    rounds, warmup = 5, 2
    per_block = -(-repeats // rounds)
    load = OthersLoad()
    load.start()
    ms = blocked_median_ms({"ours": ours, "torch": lambda: torch.matmul(a, b, out=c),
                            "numpy": lambda: np.matmul(a_np, b_np, out=c_np)},
                           rounds=rounds, per_block=per_block, warmup=warmup, settle_s=0.25)
    gflops = {name: flop / (t * 1e-3) / 1e9 for name, t in ms.items()}
    timed = [t for i, t in enumerate(event_s) if i % (warmup + per_block) >= warmup]  # not the warm-up calls
    gflops["ours_events"] = flop / statistics.median(timed) / 1e9
    return {"m": m, "n": n, "k": k, "repeats": rounds * per_block, "max_rel_err": err, "gflops": gflops,
            "others_cpu_share": load.share()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per method (default: ~0.3 s each)")
    ap.add_argument("--config", help="kernel blocking MR,NV,L0,L1 (default: GemmConfig())")
    ap.add_argument("--device", default=None, help="OpenCL device selector (default: $FXCOMPRESS_OPENCL_DEVICE or PoCL)")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()

    torch.set_num_threads(2)
    config = GemmConfig()
    if args.config:
        mr, nv, l0, l1 = (int(x) for x in args.config.split(","))
        config = GemmConfig(mr=mr, nv=nv, local=(l0, l1))
    device = open_device(args.device)
    results = [bench_shape(device, m, n, k, args.repeats, config) for m, n, k in SHAPES]

    def f(x: float) -> str:
        return f"{x:.0f}" if x >= 10 else f"{x:.2g}"

    rows = []
    for r in results:
        g = r["gflops"]
        others = "?" if r["others_cpu_share"] is None else f"{100 * r['others_cpu_share']:.0f}%"
        rows.append([f"{r['m']}x{r['n']}x{r['k']}", f(g["ours_events"]), f(g["ours"]), f(g["torch"]), f(g["numpy"]),
                     f"{g['ours'] / g['torch']:.2f}", f"{g['ours_events'] / g['torch']:.2f}", f"{r['max_rel_err']:.1e}",
                     others])
    print(f"device: {device.name}; config: {config}; torch threads: {torch.get_num_threads()}\n")
    print(markdown_table(["M x N x K", "ours (events)", "ours (wall)", "torch", "numpy", "ours/torch (wall)",
                          "ours/torch (events)", "max rel err", "others' CPU"], rows))
    calls = sorted(r["repeats"] for r in results)
    print(f"\nGFLOP/s, medians over {calls[0]} to {calls[-1]} calls per method. \"others' CPU\": the share of "
          "the cores other processes used while that row was measured (the machine is shared).")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device.name, "config": repr(config), "results": results}, indent=1))


if __name__ == "__main__":
    main()
