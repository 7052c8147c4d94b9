"""The memory plan: every device tensor gets an offset in one arena buffer, reused by liveness.

A value is live from the step that writes it to the last step that reads it. Values are placed
largest first at the lowest offset that does not overlap any value whose lifetime intersects
(greedy by size, as TFLite's arena planner and onnxruntime's memory patterns do); the arena's size
is the peak device memory the report shows. Offsets are in float32 elements, aligned so every
tensor starts on a 64-byte boundary (a float16 vector).
"""
from __future__ import annotations

from dataclasses import dataclass

ALIGN = 16  # elements: 64 bytes


@dataclass(frozen=True)
class Interval:
    value: int  # value id
    size: int  # elements
    first: int  # step that writes it (-1 for inputs)
    last: int  # last step that reads it (len(steps) for outputs)


def _round(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_arena(intervals: list[Interval]) -> tuple[dict[int, int], int]:
    """Offsets per value id and the arena size (elements). Values with overlapping lifetimes never
    overlap in memory."""
    placed: list[tuple[int, int, Interval]] = []  # (offset, end, interval)
    offsets: dict[int, int] = {}
    for iv in sorted(intervals, key=lambda v: (-v.size, v.first, v.value)):
        clashes = sorted((o, e) for o, e, other in placed if other.first <= iv.last and iv.first <= other.last)
        offset = 0
        for o, e in clashes:
            if offset + _round(iv.size) <= o:
                break
            offset = max(offset, e)
        placed.append((offset, offset + _round(iv.size), iv))
        offsets[iv.value] = offset
    return offsets, max((e for _, e, _ in placed), default=0)
