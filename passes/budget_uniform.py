"""The budget pass's plan weighed against uniform recipes at the same limits, for ``passes/budget.py``.

An allocation that loses to "prune every group by half" has mis-read its per-layer scores, and with
data the calibration error of each plan applied to a copy says so. Three families of plans are
weighed: the allocation's own, the uniform ones (every channel group at one ratio, every layer at one
rank fraction, and with ``stack`` each pair of those) and the near-uniform ones between two
neighbouring ratios (``between_uniform``). With a probe (a short fine-tune), the best of each family
is fine-tuned briefly on a copy and scored again (``probe_order``).

Pure of the pass's state: a plan is judged by the ``judged(plan) -> (totals, error)`` callable the
pass gives (which applies it to a copy, prices it, and memoises), a probe by ``probed(plan) -> error``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from compiler.cost.allocate import Candidate

from .budget_plans import _changes, _over

log = logging.getLogger(__name__)

Plan = dict[str, Candidate]
Judged = Callable[[Plan], tuple[dict[str, float], float]]


def uniform(tables: dict[str, list[Candidate]], choice: Callable[[str, dict], bool]) -> Plan:
    """Per table, its first candidate whose choice ``choice(path, choice)`` accepts (tables with none: left out)."""
    out = {}
    for p, t in tables.items():
        hit = [c for c in t if c.choice is not None and choice(p, c.choice)]
        if hit:
            out[p] = hit[0]
    return out


def uniform_plans(tables: dict[str, list[Candidate]], prune_ratios: Sequence[float], ranks: Sequence[float],
                  stack: bool) -> list[tuple[str, Plan]]:
    """Every channel group pruned at one ratio, every layer factorized at one rank fraction, and with
    ``stack`` each pair of those (a pair prunes and factorizes the same layers: with vgg5 on
    Fashion-MNIST a pair "prune 0.75 + rank 0.25" left Tucker-2 ranks of 4 on 16 channels, 18
    points down after recovery, so pairs come only when stacking is asked for)."""
    plans = [(f"uniform prune {r:g}", uniform(tables, lambda p, c, r=r: c.get("prune") == r)) for r in prune_ratios]
    plans += [(f"uniform rank {q:g}", uniform(tables, lambda p, c, q=q: c.get("rank") == q)) for q in ranks]
    if stack:
        plans += [(f"uniform prune {r:g} + rank {q:g}",
                   uniform(tables, lambda p, c, r=r, q=q: c.get("prune") == r or c.get("rank") == q))
                  for r in prune_ratios for q in ranks]
    return plans


def between_uniform(tables: dict[str, list[Candidate]], prune_ratios: Sequence[float], judged: Judged,
                    limits: dict[str, float]) -> list[tuple[str, Plan]]:
    """Near-uniform plans where no uniform ratio fits the limits snugly: between two neighbouring
    ratios, the lower one over the limits and the higher one within, every group at the lower
    ratio and the fewest groups at the higher one that bring the plan within, the groups with the
    largest saving first (found by bisection on their number, each step a plan ``judged``).
    vgg5 on Fashion-MNIST at a 4x params budget: uniform 0.5 was 1% over, 0.75 far under, and the
    greedy allocation pruned two 64-channel layers to 16 channels (90.9% after recovery against
    92.7%), where half of every layer recovers to within 0.3 points."""
    ratios = sorted(prune_ratios)
    out = []
    for lo, hi in zip(ratios, ratios[1:]):
        base = uniform(tables, lambda p, c, r=lo: c.get("prune") == r)
        alt = uniform(tables, lambda p, c, r=hi: c.get("prune") == r)
        groups = [p for p in base if p in alt]
        if not groups:
            continue
        over = _over(judged(base)[0], limits)
        if not over or _over(judged({**base, **{p: alt[p] for p in groups}})[0], limits):
            continue  # the lower ratio fits already, or the higher one does not
        groups.sort(key=lambda p: -sum((base[p].get(r) - alt[p].get(r)) / limits[r] for r in over))
        a, b = 0, len(groups)  # plans with the first a groups at hi are over the limits, with the first b within
        while b - a > 1:
            k = (a + b) // 2
            if _over(judged({**base, **{p: alt[p] for p in groups[:k]}})[0], limits):
                a = k
            else:
                b = k
        out.append((f"uniform prune {lo:g}, {hi:g} on {b} of {len(groups)} groups",
                    {**base, **{p: alt[p] for p in groups[:b]}}))
    return out


def against_uniform(picks: Plan, allocator: str, plans: list[tuple[str, Plan]], judged: Judged,
                    limits: dict[str, float], probed: Callable[[Plan], float] | None = None, probes: int = 0,
                    progress: bool = False) -> tuple[Plan, str, dict]:
    """The allocation's ``picks`` against ``plans`` within ``limits``, by calibration error: the least
    wins. With ``probed`` (a short fine-tune of a copy, then its error; HTD, Hardware-aware Tucker
    Decomposition, checks its candidates so), the ``probes`` first of ``probe_order`` are probed and
    the least probed error wins: what fine-tuning wins back does not count against a plan. Returns
    the plan kept, its name, and the record for the report (``{"allocation", "tried", "probed",
    "kept", "points"}``; ``points``: every plan's predicted totals and calibration error)."""
    own_totals, own = judged(picks)
    scored = [(own, allocator, picks)]
    points = {allocator: {"name": allocator, **own_totals, "error": own}}  # for the report's Pareto plot
    for name, plan in plans:
        if not plan:
            continue
        totals, err = judged(plan)
        points[name] = {"name": name, **totals, "error": err}
        if not _over(totals, limits):
            scored.append((err, name, plan))
    scored.sort(key=lambda t: t[0])
    log.info("budget: the allocation's plan (%s) scores %.4g; uniform plans within the limits: %s", allocator,
             own, [(n, e) for e, n, _ in scored if n != allocator])
    record = {"allocation": allocator, "tried": {n: e for e, n, _ in scored if n != allocator}}
    best = scored[0]
    if probed is not None and probes > 1 and len(scored) > 1:
        checked = [(probed(plan), name, plan)
                   for _, name, plan in tqdm(probe_order(scored, allocator)[:probes], desc="budget: probe fine-tunes",
                                             disable=not progress, leave=False)]
        log.info("budget: after a probe fine-tune: %s", [(n, e) for e, n, _ in checked])
        record["probed"] = {n: e for e, n, _ in checked}
        best = min(checked, key=lambda t: t[0])
    record["kept"] = best[1]
    record["points"] = [{**p, "within_limits": not _over(p, limits), "kept": n == best[1]} for n, p in points.items()]
    return best[2], best[1], record


def probe_order(scored: list[tuple], allocator: str) -> list[tuple]:
    """``scored`` (by calibration error, least first) reordered so the best of each family comes first:
    the allocation, the uniform plans, the near-uniform ones (``between_uniform``), then the rest. Before
    recovery the error of every plan at a large cut can be near its maximum (vgg5 at 4x: agreement with
    the original 10 to 12% for all), and the order among them says little: each family gets a probe."""
    def family(name: str) -> str:
        return "allocation" if name == allocator else "between" if " on " in name else "uniform"

    firsts, seen = [], set()
    for t in scored:
        if family(t[1]) not in seen:
            seen.add(family(t[1]))
            firsts.append(t)
    return firsts + [t for t in scored if t not in firsts]


def plan_key(plan: Plan) -> tuple:
    """A plan's changes, hashable: the same plan found twice is judged once."""
    return tuple(sorted((p, repr(sorted(c.choice.items()))) for p, c in _changes(plan).items()))
