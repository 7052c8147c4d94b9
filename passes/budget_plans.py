"""Budget plans on graphs, for the ``budget`` pass (``passes/budget.py``): picks from its candidate
tables turned into a ``Plan`` and applied to a graph or a copy of it, and the result priced the way
the pass judges it (predicted latency of the fused graph, params, MACs), timed on the OpenCL device,
or compared with the original's outputs; and how one layer is factorized and priced as a candidate.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from compiler.analysis import count_macs, count_params
from compiler.budget import PRUNE_ROUND_TO, Plan
from compiler.cost import CostModel, Work, module_layers, predict_graph
from compiler.cost.allocate import Candidate
from compiler.instruments import output_error
from compiler.pass_base import PassContext, PassResult
from compiler.pipelines import build_pass

from .decompose import for_layer, parse_rank, resolve_ranks
from .factor_layers import build_chain
from .fuse import Fuse
from .prune_channels import PruneChannels

PRUNE = "prune:"  # table keys of channel groups, apart from the layer paths


def _over(got: dict[str, float], limits: dict[str, float]) -> list[str]:
    """The resources of ``got`` over their limit (beyond float noise: 1e-4 relative)."""
    return [k for k, v in limits.items() if got[k] > v * (1 + 1e-4)]


def _kept(picks: dict[str, Candidate], tables: dict[str, list[Candidate]], names: set[str]) -> dict[str, Candidate]:
    """``picks`` with the tables ``names`` back at "keep" (their first candidate)."""
    return {p: tables[p][0] if p in names else c for p, c in picks.items()}


def _prune(groups: dict[str, float]) -> PruneChannels:
    """The pass that prunes the groups of these layers (only) at these ratios."""
    return PruneChannels(ratio=0.0, overrides=groups, round_to=PRUNE_ROUND_TO)


def _changes(picks: dict[str, Candidate]) -> dict[str, Candidate]:
    """The picks that change something (not "keep")."""
    return {p: c for p, c in picks.items() if c.choice is not None}


def _plan(picks: dict[str, Candidate], budget: dict | None = None) -> Plan:
    picks = _changes(picks)
    return Plan(layers={p: dict(c.choice) for p, c in picks.items() if not p.startswith(PRUNE)},
                prune={p[len(PRUNE):]: c.choice["prune"] for p, c in picks.items() if p.startswith(PRUNE)},
                budget=budget or {})


def _apply(plan: Plan, gm: fx.GraphModule, ctx: PassContext,
           after_step: Callable[[fx.GraphModule, str], object] | None = None) -> list[PassResult]:
    """Run the plan's passes on ``gm``: the pruning, then the factorizations; ``after_step(gm, step)``
    after each, the step named by its pass ("prune_channels", "factorize tucker2")."""
    results = []
    for spec in plan.pipeline():
        results.append(build_pass(spec, where="budget plan").run(gm, ctx))
        if after_step is not None:
            after_step(gm, " ".join(str(spec[k]) for k in ("name", "method") if k in spec))
    return results


def _applied(gm: fx.GraphModule, picks: dict[str, Candidate], ctx: PassContext) -> fx.GraphModule:
    """A copy of ``gm`` with the plan of ``picks`` applied."""
    trial = copy.deepcopy(gm)
    _apply(_plan(picks), trial, ctx)
    return trial


def _totals(gm: fx.GraphModule, cm: CostModel, ctx: PassContext) -> dict[str, float]:
    """Predicted latency, params and MACs of ``gm``, the resources a Budget bounds."""
    return {"ms": _predicted_ms(gm, cm, ctx), "params": count_params(gm), "macs": count_macs(gm)}


def _predicted_ms(gm: fx.GraphModule, cm: CostModel, ctx: PassContext) -> float:
    """Predicted latency of ``gm`` as it will run: on a copy fused by the ``fuse`` pass, so
    activations and residual adds that become conv epilogues cost no launch of their own (priced
    one by one, they made ResNet-18's fixed part - what no candidate changes - look twice as large,
    and a 0.5 budget was missed by 20% when measured)."""
    return predict_graph(_fused(gm, ctx), cm).total_ms


def _fused(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """A copy of ``gm`` through the ``fuse`` pass, as the OpenCL runtime will run it."""
    fused = copy.deepcopy(gm)
    Fuse().run(fused, ctx)
    return fused


def _measured_ms(graphs: dict[str, fx.GraphModule], ctx: PassContext, span_s: float = 0.0) -> dict[str, float]:
    """Wall ms per call of each graph as the device runs it (``ctx.device``), fused as ``_predicted_ms``
    prices it, timed in turns (``compiler.cost.wall_ms_each``, the statistic the calibration fits), 8
    rounds spread over ``span_s``. Over 1 s, one such timing read a MobileNetV2 plan 4.06 ms that
    budget.py, over 20 s, read 4.18 for a more compressed one: this host's slow phases last seconds."""
    from compiler.cost import wall_ms_each

    runs = {name: ctx.device(_fused(g, ctx), ctx.example_inputs) for name, g in graphs.items()}
    with torch.no_grad():
        return wall_ms_each(runs, rounds=8, per_block=5, span_s=span_s)


def _measured_layer_ms(graphs: dict[str, fx.GraphModule], ctx: PassContext) -> dict[str, dict[str, float]] | None:
    """Per graph, device ms per module path of its fused copy (``DeviceRun.node_ms``: each node
    synchronised on its own); None when the context's device runner cannot time nodes."""
    out = {}
    for name, g in graphs.items():
        fused = _fused(g, ctx)
        run = ctx.device(fused, ctx.example_inputs)
        if not callable(getattr(run, "node_ms", None)):
            return None
        paths = {n.name: str(n.target) for n in fused.graph.nodes if n.op == "call_module"}
        with torch.no_grad():
            out[name] = {paths[k]: v for k, v in run.node_ms().items() if k in paths}
    return out


def _layer_ms(per_path: dict[str, float], layers: list[str]) -> float:
    """The device ms of ``layers`` and everything under them (a factorized layer's chain)."""
    return sum(v for p, v in per_path.items() if any(p == q or p.startswith(q + ".") for q in layers))


def _method(layer: nn.Module) -> str:
    """Tucker-2 for k x k convs, SVD for 1x1 convs and Linears."""
    return "svd" if isinstance(layer, nn.Linear) or layer.kernel_size == (1, 1) else "tucker2"


def _factorized(layer: nn.Module, rank: float) -> tuple[int, Callable[[], nn.Sequential]]:
    """The parameters of ``layer`` factorized by its method (``_method``) at rank fraction ``rank``,
    and what builds that chain (the decomposition, only when wanted)."""
    method = _method(layer)
    m = for_layer(method, "linear" if isinstance(layer, nn.Linear) else "conv", getattr(layer, "groups", 1))
    w = layer.weight.detach()
    ranks = resolve_ranks(parse_rank(rank), m, w)
    nparams = m.params(tuple(w.shape), ranks) + (layer.bias.numel() if layer.bias is not None else 0)
    return nparams, lambda: nn.Sequential(*build_chain(method, layer, m.decompose(w, ranks)))


def _least_rank(layer: nn.Module, rank: float) -> int:
    """The smallest rank of ``layer``'s factorization at rank fraction ``rank`` (Tucker-2: of its two)."""
    method = _method(layer)
    m = for_layer(method, "linear" if isinstance(layer, nn.Linear) else "conv", getattr(layer, "groups", 1))
    r = resolve_ranks(parse_rank(rank), m, layer.weight.detach())
    return min(r) if isinstance(r, (tuple, list)) else int(r)


def _price(cm: CostModel, m: nn.Module, shape, nchw: bool = False) -> tuple[float, int]:
    layers, _ = module_layers(m, shape, nchw=nchw)
    return sum(cm.launch_ms(Work("", x.family, x)) for x in layers), sum(x.macs for x in layers)


def _run(gm: fx.GraphModule, inputs):
    with torch.no_grad():
        return gm(*inputs)


def _rel_err(reference, outputs) -> float:
    """The report's relative output error (``compiler.instruments.output_error``)."""
    return output_error(reference, outputs)[1]
