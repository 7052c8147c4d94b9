"""What one OpenCL kernel launch costs from Python on this device, three ways (median of repeats):

  call      ``kernel(queue, global, local, *args)``: pyopencl sets every argument, then enqueues
  prebound  ``enqueue_nd_range_kernel`` on a kernel whose arguments were set once
  finish    prebound, plus ``queue.finish()`` after each launch (a synchronised launch)

The kernel copies 64 floats, so the figures are overhead. The runtime queues every step back to
back; these numbers say how much binding arguments once per compiled model would save.

    .venv/bin/python benchmarks/launch_overhead.py [--launches N] [--repeats R]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyopencl as cl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402,F401  (unshadows the runtime package: benchmarks/runtime.py exists)

from runtime.opencl import open_device  # noqa: E402
from runtime.opencl.programs import build_program, kernel_source  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--launches", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dev = open_device()
    q = dev.queue()
    k = cl.Kernel(build_program(dev, kernel_source("eltwise.cl"), ["-DOP=(x)"], name="eltwise.cl"), "eltwise_flat")
    a, b = dev.alloc(4096 * 4), dev.alloc(4096 * 4)
    i32 = np.int32
    bound = (b, i32(0), a, i32(0), a, i32(0), i32(0), i32(64))

    def call():
        k(q, (64,), (64,), *bound)

    def prebound():
        cl.enqueue_nd_range_kernel(q, k, (64,), (64,))

    def finish():
        cl.enqueue_nd_range_kernel(q, k, (64,), (64,))
        q.finish()

    results = {}
    for name, fn in (("call", call), ("prebound", prebound), ("finish", finish)):
        k.set_args(*bound)
        fn()
        q.finish()
        samples = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(args.launches):
                fn()
            q.finish()
            samples.append((time.perf_counter() - t0) / args.launches * 1e6)
        results[name] = statistics.median(samples)
    print(" | ".join(f"{k}: {v:.1f} us/launch" for k, v in results.items()) + f"  ({dev.name})")


if __name__ == "__main__":
    main()
