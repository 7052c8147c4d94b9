"""``prune_channels``: structured channel pruning over the fx channel dependency graph.

For every group of coupled layers (see ``passes/pruning/depgraph.py``) the pass ranks the group's
prunable units - channels, or the heads of attention layers - by importance
(``passes/pruning/importance.py``: L1/L2 weight norms, BatchNorm scale, first-order Taylor on data,
or random), aggregated over the coupled layers, and removes the lowest ``ratio`` of them, keeping
the count a multiple of ``round_to``. Channels reaching the model output (the head's classes) and
channels that meet an op without a rule are never pruned; the report names what blocked them.

Covered: conv, linear, grouped and depthwise conv, BatchNorm, LayerNorm, GroupNorm, attention heads
(``nn.MultiheadAttention``), elementwise add/mul with layer scales and position embeddings, cat,
chunk, split, narrow and slicing (their constants are recounted), flatten, views, permute/transpose,
channel shuffle, pixel shuffle and pass-through ops. Swin's and MaxViT's functional attention keep
their heads (the MLP width still prunes).
"""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable

import torch.fx as fx

from compiler.analysis import node_macs
from compiler.errors import PipelineError, PruningError, choices
from compiler.pass_base import Pass, PassContext, PassResult
from compiler.report import Refusal
from compiler.trace import propagate_shapes

from .pruning.depgraph import analyse
from .pruning.importance import AGGREGATE, IMPORTANCE, entry_scores, unit_score
from .pruning.plan import PLAN_META, PruningPlan
from .pruning.shrink import shrink


class PruneChannels(Pass, name="prune_channels"):
    """Remove the least important channels of every coupled layer group (physically shrinks layers)."""

    preserves = frozenset({"shapes"})  # run() re-propagates shapes after rewriting, for its MAC columns

    def __init__(
        self,
        *,
        ratio: float = 0.3,
        importance: str = "l1",
        aggregate: str = "mean",  # how a unit's coupled entries combine: mean, sum or max
        round_to: int = 1,  # keep channel counts multiples of this (8 or 16 suit SIMD kernels)
        max_ratio: float = 0.9,  # no single layer loses more than this fraction of its channels
        protect: list[str] | None = None,  # module-path globs whose output channels are kept
        overrides: dict[str, float] | None = None,  # module-path glob -> ratio for the groups it is in
        global_ranking: bool = False,  # rank units across groups (scores normalised per group) instead of per group
        seed: int = 0,
        data: Iterable | None = None,  # (inputs, targets) batches, for importance="taylor"
        loss_fn: Callable | None = None,  # loss(output, targets) for taylor; cross-entropy by default
        tolerance: float = math.inf,
    ) -> None:
        for what, r in [("ratio", ratio), *((f"overrides['{g}']", v) for g, v in (overrides or {}).items())]:
            if isinstance(r, bool) or not (isinstance(r, (int, float)) and 0 <= r < 1):
                raise PipelineError(f"prune_channels {what} must be in [0, 1), got {r!r}")
        if not (isinstance(max_ratio, (int, float)) and 0 < max_ratio <= 1):
            raise PipelineError(f"prune_channels max_ratio must be in (0, 1], got {max_ratio!r}")
        if importance not in IMPORTANCE:
            raise PipelineError(f"unknown importance '{importance}', valid choices are {choices(IMPORTANCE)}")
        if aggregate not in AGGREGATE:
            raise PipelineError(f"unknown aggregate '{aggregate}', valid choices are {choices(AGGREGATE)}")
        if importance == "taylor" and data is None:
            raise PruningError("importance='taylor' needs data: pass data=[(inputs, targets), ...] (a few labelled "
                               "batches) to PruneChannels; pipeline files cannot carry data, build the pass in Python")
        if not (isinstance(round_to, int) and round_to >= 1):
            raise PipelineError(f"round_to must be an int >= 1, got {round_to!r}")
        self.ratio, self.importance, self.round_to, self.seed = ratio, importance, round_to, seed
        self.max_ratio, self.protect, self.overrides = max_ratio, list(protect or []), dict(overrides or {})
        self.global_ranking, self.aggregate, self.data, self.loss_fn = global_ranking, aggregate, data, loss_fn
        self.tolerance = tolerance

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        cg = analyse(gm)
        for sp in cg.spaces:
            if any(fnmatch.fnmatchcase(sp.path, g) for g in self.protect):
                cg.blocked.setdefault(sp.id, "protected (protect=)")
        plan = self.plan(gm, cg)
        refusals = [Refusal(cg.spaces[s].node, reason) for s, reason in sorted(cg.blocked.items())]
        removed = {e for unit in plan["removed_units"] for e in unit}
        if removed:
            gm.meta[PLAN_META] = PruningPlan.from_removed(gm, cg, removed)
            by_path = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
            before = {g["layers"][0]: _cost(gm, by_path, g["layers"]) for g in plan["groups"]}
            shrink(gm, cg, removed)
            gm.recompile()
            propagate_shapes(gm, ctx.example_inputs)
            for g in plan["groups"]:  # params and MACs of the group's producing layers
                (g["params_before"], g["macs_before"]), (g["params_after"], g["macs_after"]) = (
                    before[g["layers"][0]], _cost(gm, by_path, g["layers"]))
        return PassResult(modified=bool(removed), matches=len(plan["groups"]), refusals=refusals, details=plan["groups"])

    def plan(self, gm: fx.GraphModule, cg) -> dict:
        """Which channel units to remove: a plain, serialisable decision."""
        units = cg.components()
        entries = entry_scores(gm, cg, self.importance, seed=self.seed, data=self.data, loss_fn=self.loss_fn)
        scores = {u: unit_score(u, entries, self.aggregate) for u in units}
        by_group: dict[frozenset, list] = {frozenset(g): [] for g in cg.space_groups()}
        group_of = {s: g for g in by_group for s in g}
        for u in units:  # in one pass (per group, a scan of all units took 5 s of a MobileNetV2 budget plan)
            if (g := group_of.get(next(iter(u))[0])) is not None:
                by_group[g].append(u)
        quota = self._global_quota(by_group, scores) if self.global_ranking else {}
        removed_units, groups = [], []
        alive = [set(p) for p in cg.nonempty]  # what is left of each slice / split piece
        for group, members in by_group.items():
            paths = [cg.spaces[s].path for s in group]
            ratio = next((r for g, r in self.overrides.items() if any(fnmatch.fnmatchcase(p, g) for p in paths)), self.ratio)
            if group in quota and not any(fnmatch.fnmatchcase(p, g) for g in self.overrides for p in paths):
                ratio = quota[group] / max(len(members), 1)
            if not members or ratio == 0:
                continue
            n = len(members)
            keep = max(1, n - math.floor(ratio * n + 1e-9))
            keep = min(n, math.ceil(keep / self.round_to) * self.round_to)
            left = {s: cg.spaces[s].size for s in group}
            floor = {s: max(1, math.ceil(cg.spaces[s].size * (1 - self.max_ratio))) for s in group}
            drop = []
            for unit in sorted(members, key=scores.__getitem__):
                if len(drop) == n - keep:
                    break
                hit = {s for s, _ in unit}
                pieces = [p for p in alive if p & unit]
                if any(left[s] <= floor[s] for s in hit) or any(p <= unit for p in pieces):
                    continue  # never empty a layer or a slice, nor cut a layer past max_ratio: try the next unit
                for s in hit:
                    left[s] -= 1
                for p in pieces:
                    alive[alive.index(p)] = p - unit
                drop.append(unit)
            if not drop:
                continue
            removed_units += drop
            unit = "heads" if any(cg.spaces[s].kind == "heads" for s in group) else "channels"
            groups.append({"layers": sorted(paths), "unit": unit, "channels_before": n, "channels_after": n - len(drop),
                           "ratio": ratio, "importance": self.importance})
        return {"removed_units": removed_units, "groups": groups}

    def _global_quota(self, by_group: dict, scores: dict) -> dict:
        """How many units each group loses when the lowest ``ratio`` of all units go, scores being
        divided by their group's mean so layers of different scale compare."""
        ranked = []
        for group, members in by_group.items():
            finite = [scores[u] for u in members if math.isfinite(scores[u])]
            mean = (sum(finite) / len(finite)) if finite else 1.0
            ranked += [(scores[u] / mean if mean > 0 else scores[u], group) for u in members]
        ranked.sort(key=lambda t: t[0])
        quota: dict = {g: 0 for g in by_group}
        for _, group in ranked[: math.floor(self.ratio * len(ranked))]:
            quota[group] += 1
        return quota


def _cost(gm: fx.GraphModule, by_path: dict, layers: list[str]) -> tuple[int, int]:
    params = sum(p.numel() for path in layers for p in gm.get_submodule(path).parameters())
    return params, sum(node_macs(gm, by_path[path]) for path in layers)
