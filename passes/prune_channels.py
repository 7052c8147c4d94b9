"""``prune_channels``: structured channel pruning over the fx channel dependency graph.

For every group of coupled layers (see ``passes/pruning/depgraph.py``) the pass ranks the group's
prunable channel units by importance - the L1 or L2 norm of the producing weight rows, averaged
over the coupled layers - and removes the lowest ``ratio`` of them, keeping the count a multiple
of ``round_to``. Channels reaching the model output (the head's classes) and channels that meet an
op without a rule are never pruned; the report names what blocked them.

Status: conv, linear, BatchNorm, depthwise conv, elementwise add/mul (residuals, SE gates), cat,
flatten and pass-through ops are covered. Attention heads, LayerNorm/GroupNorm, split/chunk/slice,
permute/view (channels-last blocks) and channel shuffle still block pruning through them.
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from compiler.errors import PipelineError, choices
from compiler.pass_base import Pass, PassContext, PassResult
from compiler.report import Refusal

from .pruning.depgraph import analyse
from .pruning.plan import PLAN_META, PruningPlan
from .pruning.shrink import shrink

IMPORTANCE = ("l1", "l2", "random")


class PruneChannels(Pass, name="prune_channels"):
    """Remove the least important channels of every coupled layer group (physically shrinks layers)."""

    def __init__(self, *, ratio: float = 0.3, importance: str = "l1", round_to: int = 1, seed: int = 0,
                 tolerance: float = math.inf) -> None:
        if not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
            raise PipelineError(f"prune_channels ratio must be in [0, 1), got {ratio!r}")
        if importance not in IMPORTANCE:
            raise PipelineError(f"unknown importance '{importance}', valid choices are {choices(IMPORTANCE)}")
        if not (isinstance(round_to, int) and round_to >= 1):
            raise PipelineError(f"round_to must be an int >= 1, got {round_to!r}")
        self.ratio, self.importance, self.round_to, self.seed = ratio, importance, round_to, seed
        self.tolerance = tolerance

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        cg = analyse(gm)
        plan = self.plan(gm, cg)
        refusals = [Refusal(cg.spaces[s].node, reason) for s, reason in sorted(cg.blocked.items())]
        removed = {e for unit in plan["removed_units"] for e in unit}
        if removed:
            gm.meta[PLAN_META] = PruningPlan.from_removed(gm, cg, removed)
            shrink(gm, cg, removed)
        return PassResult(modified=bool(removed), matches=len(plan["groups"]), refusals=refusals, details=plan["groups"])

    def plan(self, gm: fx.GraphModule, cg) -> dict:
        """Which channel units to remove: a plain, serialisable decision."""
        nodes = {n.name: n for n in gm.graph.nodes}
        units = cg.components()
        gen = torch.Generator().manual_seed(self.seed)

        def score(unit) -> float:
            if self.importance == "random":
                return torch.rand((), generator=gen).item()
            p = 1 if self.importance == "l1" else 2
            vals = [gm.get_submodule(nodes[cg.spaces[s].node].target).weight[i].detach().norm(p=p).item() for s, i in unit]
            return sum(vals) / len(vals)

        by_group: dict[frozenset, list] = {}
        for group in cg.space_groups():
            key = frozenset(group)
            by_group[key] = [u for u in units if next(iter(u))[0] in group]
        removed_units, groups = [], []
        for group, members in by_group.items():
            if not members or self.ratio == 0:
                continue
            n = len(members)
            keep = max(1, n - math.floor(self.ratio * n))
            keep = min(n, math.ceil(keep / self.round_to) * self.round_to)
            left = {s: cg.spaces[s].size for s in group}
            drop = []
            for unit in sorted(members, key=score):
                if len(drop) == n - keep:
                    break
                hit = {s for s, _ in unit}
                if any(left[s] <= 1 for s in hit):
                    continue  # never empty a layer: skip to the next least important unit
                for s in hit:
                    left[s] -= 1
                drop.append(unit)
            if not drop:
                continue
            keep = n - len(drop)
            removed_units += drop
            layers = sorted(cg.spaces[s].node for s in group)
            groups.append({"layers": layers, "channels_before": n, "channels_after": keep, "importance": self.importance})
        return {"removed_units": removed_units, "groups": groups}
