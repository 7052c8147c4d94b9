"""Pruning plans as data: which output channels of which layer survive.

A plan is JSON, never pickled modules, so a pruned model is rebuilt from the original model class
plus its plan (Torch-Pruning users ask for this in their #139)::

    plan = pruning_plan(cm.graph_module); plan.save("plan.json")
    torch.save(cm.graph_module.state_dict(), "pruned.pt")
    ...
    gm = apply_plan(MyModel(), x, PruningPlan.load("plan.json"))
    gm.load_state_dict(torch.load("pruned.pt", weights_only=True))
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from compiler.errors import PipelineError, PruningError
from compiler.fileio import write_text_atomic
from compiler.trace import as_input_tuple, propagate_shapes, trace

from .depgraph import ChannelGraph, analyse
from .shrink import shrink

PLAN_META = "fxcompress.pruning_plan"
FORMAT = "fxcompress.pruning_plan/1"


@dataclass(frozen=True)
class PruningPlan:
    keep: dict[str, list[int]]  # producer module path -> kept output-channel indices (of the unpruned layer)

    @classmethod
    def from_removed(cls, gm: fx.GraphModule, cg: ChannelGraph, removed: set[tuple[int, int]]) -> "PruningPlan":
        keep = {}
        for s in cg.spaces:
            kept = [i for i in range(s.size) if (s.id, i) not in removed]
            if len(kept) < s.size:
                keep[s.path] = kept
        return cls(keep)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "keep": self.keep}, indent=1)

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PruningPlan":
        try:
            data = json.loads(open(path).read())
        except (OSError, json.JSONDecodeError) as e:
            raise PipelineError(f"cannot read pruning plan '{path}': {e}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("keep"), dict):
            raise PipelineError(f"'{path}' is not a pruning plan (expected format '{FORMAT}')")
        return cls({str(k): [int(i) for i in v] for k, v in data["keep"].items()})


def pruning_plan(gm: fx.GraphModule) -> PruningPlan:
    """The plan ``prune_channels`` recorded on a graph it pruned."""
    if PLAN_META not in gm.meta:
        raise PipelineError("this graph carries no pruning plan: run the 'prune_channels' pass on it first")
    return gm.meta[PLAN_META]


def apply_plan(model: nn.Module, example_inputs, plan: PruningPlan) -> fx.GraphModule:
    """Trace ``model`` and shrink it as ``plan`` says; weights are the model's own (load a state_dict after)."""
    inputs = as_input_tuple(example_inputs)
    gm = trace(model, inputs)
    cg = analyse(gm)
    by_path = {s.path: s for s in cg.spaces}
    unknown = set(plan.keep) - set(by_path)
    if unknown:
        raise PipelineError(f"pruning plan names layers this model does not have: {sorted(unknown)}")
    removed = set()
    for path, kept in plan.keep.items():
        s = by_path[path]
        if not kept:
            raise PruningError(f"pruning plan removes every {s.kind[:-1]} of '{path}'; a layer keeps at least one")
        if any(not 0 <= i < s.size for i in kept):
            raise PipelineError(f"pruning plan keeps invalid channels {kept[:5]}... of '{path}' (size {s.size})")
        removed |= {(s.id, i) for i in set(range(s.size)) - set(kept)}
    shrink(gm, cg, removed)
    gm.recompile()
    gm.meta[PLAN_META] = plan
    propagate_shapes(gm, inputs)
    return gm
