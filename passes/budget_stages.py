"""Budgets reached in stages, for the ``budget`` pass (``passes/budget.py``): a large reduction made
as a few smaller ones, each planned on the model as the stage before left it and followed by a short
recovery (``compile(finetune=FineTune(stages=...))``), so what fine-tuning wins back after the first
cut is there before the next one is planned.
"""
from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import torch.fx as fx

from compiler.budget import Budget
from compiler.errors import PipelineError
from compiler.pass_base import PassContext, PassResult

from .budget_plans import _totals

if TYPE_CHECKING:
    from .budget import BudgetPass

log = logging.getLogger(__name__)


def in_stages(planner: BudgetPass, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """The budget reached in ``stages``: at fraction ``s`` of the way (on a log scale: a 10x params
    budget passes 2x at 0.3 and 4x at 0.6) a plan is made and applied to the model as the stage
    before left it, then ``recover_stage(gm, name)`` runs (a short fine-tune, from compile()),
    and the last stage meets the budget itself. A later stage may prune what an earlier one
    pruned or factorized (a factor chain's inner channels: its rank), never factorize a factor."""
    cm = planner.cost_model()
    origin = _totals(gm, cm, ctx)
    # the device check of every stage times its plan against the original too (BudgetPass._measured_goal)
    ratio = planner.budget.latency_ratio
    original = copy.deepcopy(gm) if planner.measure and ratio is not None else None
    fractions = (*planner.stages, 1.0)
    stages, details, refusals, warnings, plans = [], [], {}, [], []
    for k, s in enumerate(fractions, 1):
        name = f"stage {k} of {len(fractions)}"
        one = copy.copy(planner)
        one.stages, one.plan_path = (), None
        one.budget = stage_budget(planner.budget, s, origin, _totals(gm, cm, ctx))
        if original is not None:
            one._origin = (original, ratio ** s)  # log scale, as stage_budget
        log.info("budget: %s at %.2f of the way: %s", name, s, one.budget)
        res = one._once(gm, ctx)
        plans.append(one.plan)
        details += [{"stage": k, **d} for d in res.details]
        refusals.update({(r.node, r.reason): r for r in res.refusals})
        warnings += [f"{name}: {w}" for w in res.warnings]
        stages.append({"stage": k, "fraction": s, "budget": {q: v for q, v in vars(one.budget).items() if v is not None},
                       "plan": one.plan.layers, "prune": one.plan.prune, "after": one.plan.predicted["after"]})
        if s < 1.0 and planner.recover_stage is not None:
            planner.recover_stage(gm, name)
    final = plans[-1]
    final.stages = [{"layers": p.layers, "prune": p.prune} for p in plans[:-1]]
    final.budget = {k: v for k, v in vars(planner.budget).items() if v is not None}
    final.predicted["before"] = origin
    planner.plan = final
    if planner.plan_path:
        final.save(planner.plan_path)
    summary = {**res.summary, "before": origin, "stages": stages}
    return PassResult(modified=any(p.layers or p.prune for p in plans), matches=sum(len(p.layers) + len(p.prune) for p in plans),
                      refusals=list(refusals.values()), details=details, summary=summary, warnings=warnings)



def check_stages(stages, what: str) -> tuple[float, ...]:
    """``stages`` as a tuple of increasing fractions in (0, 1), or a PipelineError naming ``what``."""
    if isinstance(stages, (int, float)) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in stages):
        raise PipelineError(f"{what} must be a sequence of fractions in (0, 1), got {stages!r}")
    out = tuple(float(s) for s in stages)
    if any(not 0 < s < 1 for s in out) or any(a >= b for a, b in zip(out, out[1:])):
        raise PipelineError(f"{what} must be increasing fractions in (0, 1) (the last stage, 1, meets the budget "
                            f"itself), got {list(out)}")
    return out


def stage_budget(b: Budget, s: float, origin: dict[str, float], now: dict[str, float]) -> Budget:
    """The budget at fraction ``s`` of the way from the original's totals ``origin`` to ``b``, on a
    log scale, for a model whose totals are now ``now``: params and MACs absolute, latency as a ratio
    of the model as it is now (so the device check of each stage times that model), at most 1."""
    def part(limit: float, base: float) -> float:
        return base * (min(limit, base) / base) ** s

    goal = b.latency_goal(origin["ms"])
    return Budget(latency_ratio=min(1.0, part(goal, origin["ms"]) / now["ms"]) if goal is not None else None,
                  params=max(1, int(part(b.params, origin["params"]))) if b.params is not None else None,
                  macs=max(1, int(part(b.macs, origin["macs"]))) if b.macs is not None else None)
