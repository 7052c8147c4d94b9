"""Iterative pruning on Zhu & Gupta's cubic schedule, with a callback between steps (for fine-tuning).

The cumulative ratio after step t of T is ``r_t = r (1 - (1 - t/T)^3)``: large steps first, gentle
ones at the end, when the network has less slack. Each step prunes what is left by
``1 - (1 - r_t) / (1 - r_{t-1})``. The per-step plans are composed into one plan against the
original model, so the result can be rebuilt with ``apply_plan``.

References
----------
Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression", 2017.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.fx as fx
from torch import nn

from compiler.errors import PipelineError
from compiler.pass_manager import PassManager
from compiler.trace import as_input_tuple, trace

from .plan import PLAN_META, PruningPlan


def cubic_schedule(ratio: float, steps: int) -> list[float]:
    """Cumulative ratios after each of ``steps`` steps, ending at ``ratio``."""
    if steps < 1:
        raise PipelineError(f"steps must be >= 1, got {steps}")
    return [ratio * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]


def prune_iteratively(
    model: nn.Module,
    example_inputs,
    *,
    ratio: float,
    steps: int = 3,
    callback: Callable[[fx.GraphModule, int], None] | None = None,
    **prune_args,
) -> fx.GraphModule:
    """Prune ``model`` to ``ratio`` in ``steps`` steps; ``callback(gm, step)`` runs after each step."""
    from passes.prune_channels import PruneChannels

    inputs = as_input_tuple(example_inputs)
    current: nn.Module = model
    keep: dict[str, list[int]] = {}
    done = 0.0
    for step, target in enumerate(cubic_schedule(ratio, steps)):
        step_ratio = 1 - (1 - target) / (1 - done)
        gm, _ = PassManager([PruneChannels(ratio=step_ratio, **prune_args)], verify=False).run(trace(current, inputs), inputs)
        step_plan = gm.meta.get(PLAN_META, PruningPlan({}))
        for path, kept in step_plan.keep.items():
            keep[path] = [keep[path][i] for i in kept] if path in keep else list(kept)
        if callback is not None:
            callback(gm, step)
        current, done = gm, target
    gm.meta[PLAN_META] = PruningPlan(keep)
    return gm
