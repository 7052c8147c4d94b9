"""Shared timing helpers for benchmarks: interleaved repeats, medians.

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


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
