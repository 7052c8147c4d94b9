"""``budget``: choose, per layer, keep or factorize (method and rank) so the model meets a Budget of
predicted latency, parameters and MACs with the least output error, then apply the choice.

Three steps, kept apart:
1. candidates (here): for every Conv2d and Linear that factorize could take, the keep option and a
   factorization at each rank in ``ranks`` (Tucker-2 for k x k convs, SVD for 1x1 convs and
   Linears); each is priced by the cost model (``compiler.cost``: predicted kernel time of the
   chain the OpenCL runtime would run, launches included), its parameters and MACs, and its error
   proxy: the layer's relative output-reconstruction error ||y - y_ref|| / ||y_ref|| on the example
   inputs. A candidate predicted to be no faster than keeping the layer is dropped ("never slower").
2. allocation (``compiler.cost.allocate``): greedy and Lagrangian, the better feasible answer wins.
3. execution: the decisions become a ``compiler.budget.Plan`` (JSON, replayable on the original model
   as factorize passes) and those passes run here. With ``max_output_error``, the plan's measured
   output error on the example inputs is checked, and the worst layer dropped until it holds.

The report's details hold the plan, and predicted latency, params and MACs before and after.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.fx as fx
from torch import nn
from tqdm.auto import tqdm

from compiler.analysis import count_macs, count_params
from compiler.budget import Budget, Plan
from compiler.cost import CostModel, Work, module_layers, predict_graph
from compiler.cost.allocate import Candidate, allocate
from compiler.errors import BudgetError, PipelineError
from compiler.graph import call_counts
from compiler.instruments import output_error
from compiler.pass_base import Pass, PassContext, PassResult
from compiler.report import Refusal
from compiler.target import Target

from .decompose import METHODS, parse_rank, resolve_ranks
from .factor_layers import build_chain
from .factorize import Factorize, _capture_inputs
from .fuse import Fuse

log = logging.getLogger(__name__)
RANKS = (0.75, 0.5, 0.35, 0.25)


class BudgetPass(Pass, name="budget"):
    """Per-layer keep / factorize choices that meet a latency, params or MACs budget (cost-model driven)."""

    preserves = frozenset({"shapes"})

    def __init__(self, *, budget: Budget | dict, target: Target | str = "device", profile: str | None = None,
                 ranks: tuple[float, ...] = RANKS, skip_first: bool = True, skip_last: bool = True,
                 plan_path: str | None = None, progress: bool = False, tolerance: float = float("inf")) -> None:
        self.budget = Budget.from_dict(budget)
        if not ranks or any(not (0 < float(r) < 1) for r in ranks):
            raise PipelineError(f"budget ranks must be fractions of full rank in (0, 1), got {list(ranks)}")
        self.target, self.profile, self.ranks = target, profile, tuple(float(r) for r in ranks)
        self.skip_first, self.skip_last = skip_first, skip_last
        self.plan_path, self.progress, self.tolerance = plan_path, progress, tolerance
        self.plan: Plan | None = None

    def cost_model(self) -> CostModel:
        if isinstance(self.target, Target):
            return CostModel(self.target)
        if self.target == "device":
            from compiler.cost.calibrate import device_cost_model

            return device_cost_model(self.profile)
        return CostModel(Target.preset(self.target))

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        cm = self.cost_model()
        nodes, refusals = self._layers(gm)
        inputs = _capture_inputs(gm, nodes, ctx.example_inputs)
        tables = {}
        for n in tqdm(nodes, desc="budget: candidates", disable=not self.progress, leave=False):
            tables[n.target] = self._candidates(gm, n, inputs[n.name], cm)
        before = _predicted_ms(gm, cm, ctx)
        params, macs = count_params(gm), count_macs(gm)
        fixed = {"ms": before - sum(t[0].ms for t in tables.values()),
                 "params": params - sum(t[0].params for t in tables.values()),
                 "macs": macs - sum(t[0].macs for t in tables.values())}
        b = self.budget
        limits = {"ms": b.latency_ms if b.latency_ms is not None else (b.latency_ratio * before if b.latency_ratio else None),
                  "params": b.params, "macs": b.macs}
        alloc = allocate(tables, {k: v for k, v in limits.items() if v is not None}, fixed)
        picks = {p: c for p, c in alloc.picks.items() if c.choice is not None}

        considered = {p: _method(gm.get_submodule(p)) for p in tables}
        reference = _run(gm, ctx.example_inputs)
        if b.max_output_error is not None:
            picks = self._within_error(gm, ctx, picks, reference)
        plan = _plan(picks, budget={k: v for k, v in vars(b).items() if v is not None})
        results = _apply(plan, gm, ctx)
        err = _rel_err(reference, _run(gm, ctx.example_inputs))
        if b.max_output_error is not None and err > b.max_output_error:
            raise BudgetError(f"budget: even keeping every layer the output error is {err:.3g} > max_output_error "
                              f"{b.max_output_error}")
        t_after = {"ms": _predicted_ms(gm, cm, ctx), "params": count_params(gm), "macs": count_macs(gm)}
        violated = [k for k, v in limits.items() if v is not None and t_after[k] > v * 1.0001]
        plan.predicted = {"before": {"ms": before, "params": params, "macs": macs}, "after": t_after,
                          "error_proxy": sum(c.error for c in picks.values()), "output_rel_err": err,
                          "allocator": alloc.allocator, "limits": {k: v for k, v in limits.items() if v is not None},
                          "considered": considered}
        self.plan = plan
        if self.plan_path:
            plan.save(self.plan_path)
        details = [d for r in results for d in r.details]
        for d in details:
            d["predicted_ms"] = next((c.ms for c in tables[d["layer"]] if c.choice and c.choice == plan.layers.get(d["layer"])), None)
            d["predicted_ms_before"] = tables[d["layer"]][0].ms
        details.append({"plan": plan.layers, **plan.predicted})
        warnings = [f"budget: the plan misses {k} after applying it ({t_after[k]:.4g} > {limits[k]:.4g})" for k in violated]
        return PassResult(modified=bool(picks), matches=len(picks), refusals=refusals, details=details, warnings=warnings)

    def _within_error(self, gm: fx.GraphModule, ctx: PassContext, picks: dict[str, Candidate],
                      reference) -> dict[str, Candidate]:
        """``picks`` without the layers whose error proxy is worst, one at a time, until the plan applied
        to a copy of ``gm`` keeps the measured output error within the budget's bound."""
        bound = self.budget.max_output_error
        while picks:
            trial = copy.deepcopy(gm)
            _apply(_plan(picks), trial, ctx)
            err = _rel_err(reference, _run(trial, ctx.example_inputs))
            if err <= bound:
                break
            worst = max(picks, key=lambda p: picks[p].error)
            log.info("budget: output error %.3g > %.3g, keeping '%s'", err, bound, worst)
            picks = {p: c for p, c in picks.items() if p != worst}
        return picks

    def _layers(self, gm: fx.GraphModule) -> tuple[list[fx.Node], list[Refusal]]:
        """The layers to price: those ``factorize`` with each layer's method would take (its own rules:
        first / last, shared weights, grouped or depthwise), so every plan replays as factorize passes."""
        all_layers = [n for n in gm.graph.nodes if n.op == "call_module"
                      and type(gm.get_submodule(n.target)) in (nn.Conv2d, nn.Linear)]
        calls = call_counts(gm)
        out, refusals = [], []
        for i, n in enumerate(all_layers):
            rule = Factorize(method=_method(gm.get_submodule(n.target)), skip_first=self.skip_first,
                             skip_last=self.skip_last)
            _, reason = rule._choose(gm, n, i, len(all_layers), calls, set())
            if reason:
                refusals.append(Refusal(n.name, f"kept: {reason}"))
            else:
                out.append(n)
        return out, refusals

    def _candidates(self, gm: fx.GraphModule, n: fx.Node, x: torch.Tensor, cm: CostModel) -> list[Candidate]:
        layer = gm.get_submodule(n.target)
        shape = tuple(x.shape)
        keep = _price(cm, layer, shape)
        out = [Candidate(None, keep[0], count_params(layer), keep[1])]
        linear = isinstance(layer, nn.Linear)
        method = _method(layer)
        m = METHODS[(method, "linear" if linear else "conv")]
        w = layer.weight.detach()
        with torch.no_grad():
            ref = layer(x)
        for r in self.ranks:
            ranks = resolve_ranks(parse_rank(r), m, w)
            nparams = m.params(tuple(w.shape), ranks) + (layer.bias.numel() if layer.bias is not None else 0)
            if nparams >= out[0].params:
                continue
            chain = nn.Sequential(*build_chain(method, layer, m.decompose(w, ranks)))
            ms, macs = _price(cm, chain, shape)
            if ms >= keep[0]:  # never slower: fewer MACs that the target would run slower are not offered
                continue
            with torch.no_grad():
                err = ((chain(x) - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            out.append(Candidate({"method": method, "rank": r}, ms, nparams, macs, err))
        return out


def _plan(picks: dict[str, Candidate], budget: dict | None = None) -> Plan:
    return Plan(layers={p: dict(c.choice) for p, c in picks.items()}, budget=budget or {})


def _apply(plan: Plan, gm: fx.GraphModule, ctx: PassContext) -> list[PassResult]:
    """Run the plan's factorize passes on ``gm``."""
    return [Factorize(**{k: v for k, v in spec.items() if k != "name"}).run(gm, ctx) for spec in plan.pipeline()]


def _predicted_ms(gm: fx.GraphModule, cm: CostModel, ctx: PassContext) -> float:
    """Predicted latency of ``gm`` as it will run: on a copy fused by the ``fuse`` pass, so
    activations and residual adds that become conv epilogues cost no launch of their own (priced
    one by one, they made ResNet-18's fixed part - what no candidate changes - look twice as large,
    and a 0.5 budget was missed by 20% when measured)."""
    fused = copy.deepcopy(gm)
    Fuse().run(fused, ctx)
    return predict_graph(fused, cm).total_ms


def _method(layer: nn.Module) -> str:
    """Tucker-2 for k x k convs, SVD for 1x1 convs and Linears."""
    return "svd" if isinstance(layer, nn.Linear) or layer.kernel_size == (1, 1) else "tucker2"


def _price(cm: CostModel, m: nn.Module, shape) -> tuple[float, int]:
    layers, _ = module_layers(m, shape)
    return sum(cm.launch_ms(Work("", x.family, x)) for x in layers), sum(x.macs for x in layers)


def _run(gm: fx.GraphModule, inputs):
    with torch.no_grad():
        return gm(*inputs)


def _rel_err(reference, outputs) -> float:
    """The report's relative output error (``compiler.instruments.output_error``)."""
    return output_error(reference, outputs)[1]
