"""Shared timing helpers for benchmarks: repeats interleaved or in blocks, medians.

Importing it also takes this folder off ``sys.path`` (where Python put it, running a script from
here): ``benchmarks/runtime.py`` would otherwise shadow the ``runtime`` package. Scripts import this
module first, then the project.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def median_ms(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time in ms of each callable, timed interleaved (A B C A B C ...) so drift hits all alike."""
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        samples: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def blocked_median_ms(fns: dict[str, Callable[[], object]], *, rounds: int, per_block: int, warmup: int = 2,
                      settle_s: float = 0.0) -> dict[str, float]:
    """Median ms per call, timing each callable in blocks (A A A, B B B, C C C, A A A, ...).

    Three thread pools share two cores here: OpenBLAS's, torch's OpenMP and PoCL's, and a pool's
    threads keep spinning for a while after its last call. Alternating call by call, torch fell from
    ~175 to ~60 GFLOP/s at 1024^3 (to 2 at M = 8); in blocks straight after numpy, our kernel fell from
    ~207 to ~164. So each block starts after ``settle_s`` of sleep and with untimed warm-up calls;
    the rounds spread drift from other processes over all methods.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(rounds):
            for name, fn in fns.items():
                time.sleep(settle_s)
                for _ in range(warmup):
                    fn()
                for _ in range(per_block):
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def best_block_ms(fns: dict[str, Callable[[], object]], *, rounds: int = 4, per_block: int = 5,
                  settle_s: float = 0.1, span_s: float = 0.0) -> dict[str, float]:
    """Per callable, the least over ``rounds`` of its block's median ms, blocks taken in turns:
    ``compiler.cost.wall_ms_each``, the statistic the cost model calibrates against (on this shared VM
    a model's time is bimodal in phases of seconds; the least block median is the undisturbed device).
    ``span_s``: the rounds spread over at least that long, so a slow phase cannot hold all of them."""
    from compiler.cost import wall_ms_each

    with torch.no_grad():
        return wall_ms_each(fns, rounds=rounds, per_block=per_block, gap_s=settle_s, span_s=span_s)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
