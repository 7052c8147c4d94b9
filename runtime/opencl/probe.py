"""Measure a live OpenCL device into a ``compiler.target.Target``: device queries plus three
micro-benchmarks (our GEMM at 1024^3 for peak FLOP/s, a 64 MiB copy for bandwidth, and a burst of
queued empty launches for the per-launch cost). Each figure is the best of a few repeats."""
from __future__ import annotations

import time

import numpy as np
import pyopencl as cl

from compiler.target import Target

from .device import Device, open_device
from .gemm import Gemm
from .programs import build_program, kernel_source


def _best_s(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _simd_width(d: cl.Device) -> int:
    try:  # AMD GPUs expose their wavefront
        return int(d.wavefront_width_amd)
    except (cl.Error, AttributeError, cl.LogicError):
        return max(int(d.preferred_vector_width_float), 1)


def fma_peak_gflops(device: Device | None = None, *, repeats: int = 5) -> float:
    """The device's fp32 FMA throughput on a register-only float16 chain (``peak.cl``): the roofline's
    compute ceiling, reached by no real kernel."""
    device = device or open_device()
    q, iters = device.queue(), 4096
    kernel = cl.Kernel(build_program(device, kernel_source("peak.cl"), [f"-DITERS={iters}"], name="peak.cl"), "fma_peak")
    items = 512 * device.cl_device.max_compute_units  # work-groups of one: PoCL spreads them over its threads
    out = device.alloc(items * 4)
    a, b = np.float32(0.999), np.float32(0.001)
    run = lambda: (kernel(q, (items,), (1,), out, a, b), q.finish())  # noqa: E731
    _best_s(run, 3)  # warm-up: the first launch compiles the work-group function, and clocks ramp up
    seconds = _best_s(run, repeats)
    return items * 16 * 16 * 2 * iters / seconds / 1e9


def measure_target(device: Device | None = None, *, repeats: int = 5) -> Target:
    device = device or open_device()
    d, q = device.cl_device, device.queue()
    rng = np.random.default_rng(0)

    n = 1024
    gemm = Gemm(device, rng.standard_normal((n, n), dtype=np.float32))
    a = device.alloc(hostbuf=rng.standard_normal((n, n), dtype=np.float32))
    c = device.alloc(n * n * 4)
    gemm_s = _best_s(lambda: (gemm.enqueue(q, a, c, n), q.finish()), repeats)

    elems = 16 * 2**20  # 64 MiB each way
    src, dst = device.alloc(elems * 4), device.alloc(elems * 4)
    copy = cl.Kernel(build_program(device, kernel_source("eltwise.cl"), ["-DOP=(x)"], name="eltwise.cl"), "eltwise_flat")
    i32 = np.int32

    def run_copy(count: int = elems) -> None:
        copy(q, (-(-count // 64) * 64,), (64,), dst, i32(0), src, i32(0), src, i32(0), i32(0), i32(count))

    copy_s = _best_s(lambda: (run_copy(), q.finish()), repeats)
    # Launches as the runtime makes them (ops.Launch: arguments set once, then only enqueued): a
    # pyopencl kernel(...) call also converts every argument, ~70 us here against ~5 us enqueued.
    launches = 200
    run_copy(64)  # sets the arguments for 64 elements
    launch_s = _best_s(lambda: ([cl.enqueue_nd_range_kernel(q, copy, (64,), (64,)) for _ in range(launches)],
                                q.finish()), repeats) / launches

    return Target(
        name=device.name, kind="gpu" if d.type & cl.device_type.GPU else "cpu", compute_units=d.max_compute_units,
        clock_mhz=d.max_clock_frequency, simd_width=_simd_width(d),
        local_mem_bytes=d.local_mem_size, global_mem_bytes=d.global_mem_size,
        peak_gflops=round(2 * n**3 / gemm_s / 1e9, 1), bandwidth_gbs=round(2 * elems * 4 / copy_s / 1e9, 1),
        launch_us=round(launch_s * 1e6, 2),
        source=f"measured: our GEMM at {n}^3, a {elems * 4 // 2**20} MiB copy, {launches} queued launches; "
               f"best of {repeats}")
