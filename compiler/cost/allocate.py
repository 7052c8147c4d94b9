"""Allocation: pick one candidate per layer so the model meets a budget with the least error.

Each layer has a table of candidates (keep first, then its factorizations), each with predicted
kernel time, parameters, MACs and an error proxy (the layer's relative output-reconstruction error
on calibration inputs; errors add, a first-order model of how they compound). Resources add over
layers, plus a fixed part for everything no candidate touches. Two allocators run and the better
feasible answer wins, so the result is never worse than the greedy baseline:

- greedy (AIMET-style): from "keep everywhere", repeatedly take the move with the least added error
  per unit of resource saved, until every limit holds;
- Lagrangian: each layer independently minimises error + lambda * resource; bisect lambda for the
  smallest one whose picks meet the limits. Exact on the convex hull of each table, where greedy can
  get stuck behind a large first step.

Both answers are then refined: moves the limits no longer need are undone, one layer at a time.

Resources with several limits (latency, params, MACs) are scalarised as the sum of each resource
over its limit. Pure: no torch, no device; the budget pass builds the tables.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BudgetError

RESOURCES = ("ms", "params", "macs")


@dataclass(frozen=True)
class Candidate:
    choice: dict | None  # None keeps the layer; else {"method": ..., "rank": ...}
    ms: float
    params: int
    macs: int
    error: float = 0.0

    def get(self, resource: str) -> float:
        return float(getattr(self, resource))


@dataclass
class Allocation:
    picks: dict[str, Candidate]
    totals: dict[str, float]
    error: float
    allocator: str


def _totals(picks: dict[str, Candidate], fixed: dict[str, float]) -> dict[str, float]:
    return {r: fixed.get(r, 0.0) + sum(c.get(r) for c in picks.values()) for r in RESOURCES}


def allocate(tables: dict[str, list[Candidate]], limits: dict[str, float], fixed: dict[str, float] | None = None
             ) -> Allocation:
    """The best feasible allocation; BudgetError (with the closest achievable totals) when none is."""
    fixed = fixed or {}
    limits = {r: float(v) for r, v in limits.items() if v is not None}
    bad = sorted(set(limits) - set(RESOURCES))
    if bad or not limits:
        raise BudgetError(f"allocation limits must be some of {list(RESOURCES)}, got {sorted(limits)}")

    def cost(c: Candidate) -> float:
        return sum(c.get(r) / limits[r] for r in limits)

    def feasible(picks) -> bool:
        t = _totals(picks, fixed)
        return all(t[r] <= limits[r] * (1 + 1e-9) for r in limits)

    def done(picks, allocator: str) -> Allocation:
        return Allocation(dict(picks), _totals(picks, fixed), sum(c.error for c in picks.values()), allocator)

    cheapest = {p: min(t, key=lambda c: (cost(c), c.error)) for p, t in tables.items()}
    if not feasible(cheapest):
        got = _totals(cheapest, fixed)
        closest = ", ".join(f"{r} {got[r]:.4g} (limit {limits[r]:.4g})" for r in limits)
        raise BudgetError(f"budget pass: no choice of the candidates meets the budget; the closest achievable, every "
                          f"layer at its cheapest candidate, is {closest}")
    found = [a for a in (_greedy(tables, cost, feasible), _lagrangian(tables, cost, feasible)) if a is not None]
    found = [(name, _refine(tables, picks, feasible)) for name, picks in found]
    best = min(found, key=lambda a: (sum(c.error for c in a[1].values()), a[0] != "greedy"))
    return done(best[1], best[0])


def _refine(tables, picks, feasible):
    """Undo compression the limits no longer need: repeatedly move one layer to a lower-error
    candidate while every limit still holds (greedy steps can overshoot: an early cheap move becomes
    unnecessary once a later, larger one is taken). Never increases the error."""
    picks = dict(picks)
    while True:
        best = None
        for p, t in tables.items():
            for c in t:
                gain = picks[p].error - c.error
                if gain > 0 and (best is None or gain > best[0]) and feasible({**picks, p: c}):
                    best = (gain, p, c)
        if best is None:
            return picks
        picks[best[1]] = best[2]


def _greedy(tables, cost, feasible):
    picks = {p: t[0] for p, t in tables.items()}
    while not feasible(picks):
        best = None
        for p, t in tables.items():
            now = picks[p]
            for c in t:
                saved = cost(now) - cost(c)
                if saved > 0:
                    score = (c.error - now.error) / saved
                    if best is None or score < best[0]:
                        best = (score, p, c)
        if best is None:
            return None
        picks[best[1]] = best[2]
    return "greedy", picks


def _lagrangian(tables, cost, feasible):
    def picks_at(lam: float):
        return {p: min(t, key=lambda c: (c.error + lam * cost(c), cost(c))) for p, t in tables.items()}

    lo, hi = 0.0, 1.0
    while not feasible(picks_at(hi)):
        hi *= 4
        if hi > 1e12:
            return None
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if feasible(picks_at(mid)) else (mid, hi)
    return "lagrangian", picks_at(hi)
