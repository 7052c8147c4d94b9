"""``budget``: choose, per layer, keep, factorize (method and rank) or prune (ratio) so the model
meets a Budget of predicted latency, parameters and MACs with the least output error, then apply
the choice.

Three steps, kept apart:
1. candidates (here): for every Conv2d and Linear that factorize could take, the keep option and a
   factorization at each rank in ``ranks`` (Tucker-2 for k x k convs, SVD for 1x1 convs and
   Linears); and for every channel group ``prune_channels`` could prune (a layer's output channels
   with everything coupled to them), pruning it at each ratio in ``prune_ratios``. Each is priced by
   the cost model (``compiler.cost``: predicted time of the kernels the OpenCL runtime would run,
   launches included; a pruning by the whole graph before and after, as it changes several
   layers), its parameters and MACs, and its error proxy: a sensitivity, the model's relative
   output error on the example inputs with that one change made. A candidate predicted to be no
   faster than keeping the layer is dropped ("never slower").
2. allocation (``compiler.cost.allocate``): greedy and Lagrangian, the better feasible answer wins.
   Or, with ``search=``, an Optuna search (``compiler.cost.search``) over the same tables, each
   trial applied to a copy and judged by its predicted latency and measured output error; the
   allocation's plan is its first trial.
3. execution: the decisions become a ``compiler.budget.Plan`` (JSON, replayable on the original model
   as a prune_channels pass and factorize passes) and those passes run here (``budget_plans.py``:
   picks to a plan, applied, priced and timed as the pass judges them). Pruning and factorizing
   neighbouring layers do not add exactly (a rank fraction of a pruned layer is fewer channels), so
   a plan with pruning is tried on a copy first: a factorization no faster than its layer as pruned
   is held at "keep" and the rest allocated again, the limits are tightened until the applied
   plan meets them, and if no tightening does, greedy moves judged on applied copies close the
   gap. With ``max_output_error``, the plan's measured output error on the example inputs is
   checked, and the worst layer dropped until it holds. Planning for the live device, the plan is
   then timed on it against the original, and made again with a tighter predicted limit while it
   measures more than 5% over the latency goal (``_measured_corrections``). ``recover(gm, step)``, when given,
   runs after each of those passes (``compile(budget=..., finetune=FineTune(between_steps=N))`` makes
   it a fine-tune), so accuracy lost to pruning is won back before the factorizations see the weights.

With data (``calibration``), the allocation's plan is weighed against uniform and near-uniform
recipes at the same limits, and the best few are probed by a short fine-tune (``budget_uniform.py``);
with ``stages``, the budget is reached in steps with a recovery between them (``budget_stages.py``).

The report's details hold the plan, and predicted latency, params and MACs before and after; planning
for the live device (``target="device"``, the default), also the latency measured on it before and after
(``measured_ms``), with a warning when the plan measures slower than the original or over the budget.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn
from tqdm.auto import tqdm

from compiler.analysis import count_macs, count_params
from compiler.budget import PRUNE_ROUND_TO, Budget, Plan
from compiler.calibration import Calibration
from compiler.cost import CostModel
from compiler.cost.graph import reads_model_input
from compiler.cost.allocate import Allocation, Candidate, allocate
from compiler.cost.search import Search, search
from compiler.errors import BudgetError, PipelineError
from compiler.graph import call_counts
from compiler.pass_base import Pass, PassContext, PassResult
from compiler.report import Refusal
from compiler.target import Target

from .budget_plans import (PRUNE, _applied, _apply, _changes, _factorized, _kept, _layer_ms, _least_rank,
                           _measured_layer_ms, _measured_ms, _method, _over, _plan, _predicted_ms, _price, _prune,
                           _rel_err, _run, _totals)
from .budget_stages import check_stages, in_stages
from .budget_uniform import against_uniform, between_uniform, plan_key, uniform_plans
from .factor_layers import FactorChain
from .factorize import Factorize, _capture_inputs
from .prune_channels import PruneChannels
from .pruning.depgraph import analyse

log = logging.getLogger(__name__)
# The candidates. budget.py at 0.35 of the original's latency with (0.75, 0.5, 0.35, 0.25) and
# (0.25, 0.5): ResNet-18 met it at a higher output error than uniform pruning at its latency, and
# MobileNetV2 was out of reach (2.51 ms predicted against a 1.76 limit); with 0.15 and 0.75 added,
# both met it below both MAC-uniform baselines' error (README, "Measured: budgets").
RANKS = (0.75, 0.5, 0.35, 0.25, 0.15)
# 0.625 between 0.5 and 0.75 (recover_unseen.py --prune-ratios, one-call flow at 4x params / 2x latency,
# 3 epochs, paired in one run): the held-out dsnet lost 1.32 points with it against 2.09 without (the
# latency goal had left only plans pruning most groups by 0.75), and vgg5 met the goal (+0.02 points,
# 4.02x params, 2.17x OpenCL).
PRUNE_RATIOS = (0.25, 0.5, 0.625, 0.75)
# A plan measured on the device more than this fraction over its latency goal is made again to a
# tighter predicted limit (scaled by the miss, then bisected), at most MEASURED_ROUNDS times. 5%: two timings of one model in
# turns (``wall_ms_each``) agree to a few percent here; a tighter slack would compress for noise.
MEASURED_SLACK = 0.05
MEASURED_ROUNDS = 3
# Per-layer floors: no pruning leaves a channel group with fewer channels, no factorization has a
# rank below this. A VGG-style Fashion-MNIST plan that pruned two 64-channel layers to 16 channels
# and factorized one of them again at rank 6x6 started its fine-tune at 9% and ended 6 points down.
MIN_CHANNELS = 16
MIN_RANK = 8
# With data and a probe fine-tune, the plans with the least calibration error that are checked by it.
PROBES = 3
# The report's Pareto plot: the allocation at this many other latency limits, each applied to a copy and
# scored like the kept plan (ResNet-18 at 64x64 without data: about 1 s each).
FRONT_POINTS = 4


class BudgetPass(Pass, name="budget"):
    """Per-layer keep / factorize choices that meet a latency, params or MACs budget (cost-model driven)."""

    preserves = frozenset({"shapes"})

    def __init__(self, *, budget: Budget | dict, target: Target | str = "device", profile: str | None = None,
                 ranks: tuple[float, ...] = RANKS, prune_ratios: tuple[float, ...] = PRUNE_RATIOS,
                 skip_first: bool = True, skip_last: bool = True,
                 plan_path: str | None = None, progress: bool = False, tolerance: float = float("inf"),
                 search: Search | dict | None = None,
                 recover: Callable[[fx.GraphModule, str], object] | None = None,
                 measure: bool | None = None, measure_span_s: float = 10.0,
                 min_channels: int = MIN_CHANNELS, min_rank: int = MIN_RANK, stack: bool = False,
                 calibration: Calibration | None = None, stages: tuple[float, ...] = (),
                 recover_stage: Callable[[fx.GraphModule, str], object] | None = None,
                 probe: Callable[[fx.GraphModule], object] | None = None, probes: int = PROBES,
                 front_points: int = FRONT_POINTS) -> None:
        self.budget = Budget.from_dict(budget)
        if isinstance(front_points, bool) or not isinstance(front_points, int) or front_points < 0:
            raise PipelineError(f"budget front_points must be an int >= 0 (0: no Pareto front in the report), "
                                f"got {front_points!r}")
        self.front_points = front_points
        self.stages = check_stages(stages, "budget stages")
        if self.stages and self.budget.max_output_error is not None:
            raise PipelineError("budget stages and max_output_error do not mix: each stage's output error is against "
                                "the stage before it; bound the final error with fewer stages or without the bound")
        if recover_stage is not None and not callable(recover_stage):
            raise PipelineError(f"budget recover_stage must be a callable (gm, stage name), got "
                                f"{type(recover_stage).__name__}; compile(finetune=FineTune(stages=...)) makes one")
        self.recover_stage = recover_stage
        if probe is not None and not callable(probe):
            raise PipelineError(f"budget probe must be a callable (gm) that fine-tunes it briefly, got {type(probe).__name__}")
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
            raise PipelineError(f"budget probes must be an int >= 0, got {probes!r}")
        self.probe, self.probes = probe, probes
        for what, v in (("min_channels", min_channels), ("min_rank", min_rank)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PipelineError(f"budget {what} must be an int >= 1, got {v!r}")
        if calibration is not None and not isinstance(calibration, Calibration):
            raise PipelineError(f"budget calibration must be a compiler.calibration.Calibration, got "
                                f"{type(calibration).__name__}; compile(budget=..., train_data=...) makes one")
        # stack=False: a layer whose channels a pruning changes is not factorized as well (the allocation
        # holds its factorization at keep and allocates again)
        self.min_channels, self.min_rank, self.stack, self.calibration = min_channels, min_rank, bool(stack), calibration
        if recover is not None and not callable(recover):
            raise PipelineError(f"budget recover must be a callable (gm, step name), got {type(recover).__name__}; "
                                "it is for Python pipelines, e.g. compile(finetune=FineTune(between_steps=1))")
        self.recover = recover
        self.search = Search.from_dict(search) if search is not None else None
        for what, values in (("ranks", ranks), ("prune_ratios", prune_ratios)):
            if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1 for r in values):
                raise PipelineError(f"budget {what} must be fractions in (0, 1), got {list(values)}")
        if not ranks and not prune_ratios:
            raise PipelineError("the budget pass needs ranks or prune_ratios to choose from; both are empty")
        self.target, self.profile, self.ranks = target, profile, tuple(float(r) for r in ranks)
        self.prune_ratios = tuple(float(r) for r in prune_ratios)
        self.skip_first, self.skip_last = skip_first, skip_last
        self.plan_path, self.progress, self.tolerance = plan_path, progress, tolerance
        # time the model before and after on the device: by default when planning for the live device
        self.measure = target == "device" if measure is None else bool(measure)
        self._measure_asked = measure is not None and bool(measure)
        self.measure_span_s = float(measure_span_s)  # each timing's rounds spread over this long (slow phases)
        self.plan: Plan | None = None
        self._origin: tuple[fx.GraphModule, float] | None = None  # in a stage: (the original, its latency fraction)
        self._touched: dict[str, set[str]] = {}  # per pruning table, the layers whose weights it reshapes (run)
        self._uniform: dict | None = None  # the uniform plans weighed against the allocation's (run, with data)
        self._memo: dict[str, dict] = {"scored": {}, "probed": {}}  # plans judged in this run (_against_uniform)

    def cost_model(self) -> CostModel:
        if isinstance(self.target, Target):
            return CostModel(self.target)
        if self.target == "device":
            from compiler.cost.calibrate import device_cost_model

            return device_cost_model(self.profile)
        return CostModel(Target.preset(self.target))

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        return in_stages(self, gm, ctx) if self.stages else self._once(gm, ctx)

    def _once(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        cm = self.cost_model()
        measure, unmeasured = self._can_measure(ctx)
        nodes, refusals = self._layers(gm)
        inputs = _capture_inputs(gm, nodes, ctx.example_inputs)
        reference = _run(gm, ctx.example_inputs)
        before = _predicted_ms(gm, cm, ctx)
        params, macs = count_params(gm), count_macs(gm)

        cal = self.calibration
        cal_before = cal.metrics(gm) if cal is not None else None

        def sensitivity(g: fx.GraphModule) -> float:
            return cal.error(g) if cal is not None else _rel_err(reference, _run(g, ctx.example_inputs))

        self._touched: dict[str, set[str]] = {}  # per pruning table, the layers whose weights it reshapes
        self._uniform = None
        self._memo: dict[str, dict] = {"scored": {}, "probed": {}}

        tables = {}
        for n in tqdm(nodes, desc="budget: factorizations", disable=not self.progress, leave=False):
            tables[n.target] = self._candidates(gm, n, inputs[n.name], cm, sensitivity)
        tables.update(self._prune_candidates(gm, cm, ctx, sensitivity, {"ms": before, "params": params, "macs": macs}))
        fixed = {"ms": before - sum(t[0].ms for t in tables.values()),
                 "params": params - sum(t[0].params for t in tables.values()),
                 "macs": macs - sum(t[0].macs for t in tables.values())}
        b = self.budget
        limits = {"ms": b.latency_goal(before), "params": b.params, "macs": b.macs}
        limits = {k: v for k, v in limits.items() if v is not None}
        considered = {p: (_method(gm.get_submodule(p)) if not p.startswith(PRUNE) else "prune") for p in tables}
        found, corrections, measured = None, [], None
        if self.search is None:
            def planned(lims: dict[str, float]) -> tuple[dict[str, Candidate], str]:
                alloc = self._allocate(gm, ctx, cm, tables, lims, fixed)
                picks = _changes(alloc.picks)
                if b.max_output_error is not None:
                    picks = self._within_error(gm, ctx, picks, reference)
                if cal is not None:
                    return self._against_uniform(gm, ctx, cm, tables, lims, picks, alloc.allocator)
                return picks, alloc.allocator

            picks, allocator = planned(limits)
            if measure and "ms" in limits:
                picks, allocator, corrections, measured = self._measured_corrections(gm, ctx, planned, picks, allocator,
                                                                                     limits)
        else:
            try:  # the allocation's plan is the search's first trial: the search is never worse
                alloc = self._allocate(gm, ctx, cm, tables, limits, fixed)
            except BudgetError:
                alloc = None

            def evaluate(chosen: dict[str, Candidate]) -> dict[str, float]:
                trial = _applied(gm, chosen, ctx)
                return {**_totals(trial, cm, ctx), "error": sensitivity(trial)}

            bounds = {**limits, **({"error": b.max_output_error} if b.max_output_error is not None else {})}
            found = search(tables, evaluate, bounds, self.search, initial=alloc.picks if alloc else None,
                           progress=self.progress)
            picks = _changes(found.picks)
            allocator = f"search ({self.search.sampler})"
        plan = _plan(picks, budget={k: v for k, v in vars(b).items() if v is not None})
        original = copy.deepcopy(gm) if measure or (self.front_points and not found) else None
        results = _apply(plan, gm, ctx, after_step=self.recover)
        err = _rel_err(reference, _run(gm, ctx.example_inputs))
        if b.max_output_error is not None and err > b.max_output_error:
            raise BudgetError(f"budget: even keeping every layer the output error is {err:.3g} > max_output_error "
                              f"{b.max_output_error}")
        t_after = _totals(gm, cm, ctx)
        violated = _over(t_after, limits)
        plan.predicted = {"before": {"ms": before, "params": params, "macs": macs}, "after": t_after,
                          "error_proxy": sum(c.error for c in picks.values()), "output_rel_err": err,
                          "allocator": allocator, "limits": limits,
                          "considered": considered}
        cal_after = cal.metrics(gm) if cal is not None else None
        if self.search is None and self.front_points:  # the kept plan scored as sensitivity() would score it
            kept = {**t_after, "error": cal_after["kl"] if cal_after is not None else err}
            plan.predicted["front"] = [{**p, "within_limits": not _over(p, limits)} for p in self._front(
                original, ctx, cm, tables, fixed, before, sensitivity, kept)]
        if cal is not None:
            plan.predicted["sensitivity"] = f"KL divergence to the original on {cal.images} calibration images"
            plan.predicted["calibration"] = {"before": cal_before, "after": cal_after}
            if self._uniform:
                plan.predicted["uniform"] = self._uniform
        else:
            plan.predicted["sensitivity"] = "max relative output error on the example inputs (made without data)"
        if corrections:
            plan.predicted["measured_corrections"] = corrections
        warnings = [f"budget: the plan misses {k} after applying it ({t_after[k]:.4g} > {limits[k]:.4g})" for k in violated]
        warnings += unmeasured
        if measure:
            if measured is None:  # else the device check's last timing is of this plan
                measured = _measured_ms({"before": original, "after": gm}, ctx, self.measure_span_s)
            plan.predicted["measured_ms"] = measured
            goal = self._measured_goal(measured)
            if measured["after"] > measured["before"]:
                warnings.append(f"budget: measured on the device the plan is slower than the original "
                                f"({measured['after']:.3g} ms against {measured['before']:.3g})")
            elif goal is not None and measured["after"] > 1.1 * goal:
                warnings.append(f"budget: measured on the device the plan takes {measured['after']:.3g} ms, more than "
                                f"10% over the latency budget ({goal:.3g} ms; the original {measured['before']:.3g})")
        if found is not None:
            plan.predicted["search"] = {"trials": found.trials, "pareto": found.pareto, "storage": self.search.storage,
                                        "study": self.search.study}
        self.plan = plan
        if self.plan_path:
            plan.save(self.plan_path)
        details = [d for r in results for d in r.details]
        for d in details:
            if "layer" in d and d["layer"] in tables:  # a factorization: its layer's predicted time
                d["predicted_ms_before"] = tables[d["layer"]][0].ms
                d["predicted_ms_after"] = next((c.ms for c in tables[d["layer"]]
                                                if c.choice and c.choice == plan.layers.get(d["layer"])), None)
        per_layer = _measured_layer_ms({"before": original, "after": gm}, ctx) if measure and details else None
        for d in details if per_layer else ():  # each row's layers as the device ran them, node by node
            layers = [d["layer"]] if "layer" in d else list(d.get("layers", ()))
            d["measured_ms_before"], d["measured_ms_after"] = (_layer_ms(per_layer[k], layers) for k in ("before", "after"))
        summary = {"plan": plan.layers, "prune": plan.prune, **plan.predicted}
        return PassResult(modified=bool(picks), matches=len(picks), refusals=refusals, details=details,
                          summary=summary, warnings=warnings)

    def _front(self, original, ctx, cm, tables, fixed, before_ms, sensitivity, kept) -> list[dict]:
        """The report's Pareto plot: the allocation at ``front_points`` other latency limits (evenly
        from 0.3 of the original's predicted latency to all of it; the budget's other limits left
        out, so the plot shows the latency trade-off even where params bind), each applied to a copy
        of the graph as it was before the plan and scored like the kept plan (``sensitivity``), with
        the kept plan marked. What the budget would have cost at other limits, by the same measure."""
        points = [{**kept, "kept": True}]
        for i in range(self.front_points):
            f = 0.3 + 0.7 * i / max(1, self.front_points - 1)
            try:
                alloc = allocate(tables, {"ms": f * before_ms}, fixed)
            except BudgetError:
                continue
            trial = _applied(original, _changes(alloc.picks), ctx)
            points.append({**_totals(trial, cm, ctx), "error": sensitivity(trial), "kept": False})
        return sorted(points, key=lambda p: p["ms"])

    def _can_measure(self, ctx: PassContext) -> tuple[bool, list[str]]:
        """Whether the plan is timed on the device, and the warning when it would be but cannot: the
        context has no device runner (``compile()`` wires one; ``PassManager(device=...)`` by hand).
        Asked for explicitly (``measure=True``), no runner is an error."""
        if not self.measure or ctx.device is not None:
            return self.measure, []
        why = ("the pass context has no device runner: run it through compiler.compile(), or give "
               "PassManager(..., device=runtime.device_runner)")
        if self._measure_asked:
            raise PipelineError(f"budget: measure=True times the plan on the device, but {why}")
        return False, [f"budget: the plan is not timed on the device: {why}"]

    def _measured_goal(self, measured: dict[str, float]) -> float | None:
        """The latency goal in measured ms: of the budget against the model timed as ``before``, or, in
        a stage (``in_stages`` sets ``_origin``: the original graph and the fraction of its latency this
        stage must reach), against the original timed beside it, so a stage that measured slower than
        predicted is made up by the next instead of compounding (resnet8w in two stages to a 0.3 ratio
        measured 0.45 of the original when each stage was timed against the one before)."""
        if self._origin is not None and "origin" in measured:
            return self._origin[1] * measured["origin"]
        return self.budget.latency_goal(measured["before"])

    def _measured_corrections(self, gm, ctx, planned, picks, allocator, limits):
        """The plan checked on the device: applied to a copy and timed against ``gm`` in turns; while it
        measures more than ``MEASURED_SLACK`` over the latency goal (``latency_ms``, or the ratio of the
        original as measured), the plan is made again to a tighter predicted limit, at most
        ``MEASURED_ROUNDS`` times. The cost model decides, the device corrects what it got wrong:
        MobileNetV2 at batch 1, pruned by a 0.7 plan, ran 1.25x its prediction where the original ran
        1.1x, and its budget was missed by 13%.

        The first correction scales the limit by goal / measured. Measured and predicted latency are not
        proportional (a held-out VGG-style net re-planned that way measured 24 ms against a 35 ms goal:
        more compression, and error, than asked for), so once one limit missed and another held, the
        next is their geometric mean, and of the plans that held the one with the loosest limit (the
        least compression) is kept. Returns the picks, their allocator, the corrections and the timing
        of the picks returned."""
        lims, corrections = dict(limits), []
        # (limit, picks, allocator, measured, uniform comparison) of the loosest plan that held, the tightest that missed
        held = missed = None
        for round_ in range(MEASURED_ROUNDS + 1):
            graphs = {"before": gm, "after": _applied(gm, picks, ctx)}
            if self._origin is not None:  # a stage: timed against the original as well
                graphs["origin"] = self._origin[0]
            measured = _measured_ms(graphs, ctx, self.measure_span_s)
            goal = self._measured_goal(measured)
            here = (lims["ms"], picks, allocator, measured, self._uniform)  # _uniform: of this round's planning
            if measured["after"] <= (1 + MEASURED_SLACK) * goal:
                held = here if held is None or here[0] > held[0] else held
                if missed is None or measured["after"] >= (1 - MEASURED_SLACK) * goal:
                    break  # never missed, or held within the slack of the goal
            else:
                missed = here if missed is None or here[0] < missed[0] else missed
            if round_ == MEASURED_ROUNDS:
                break
            ms = math.sqrt(held[0] * missed[0]) if held and missed else lims["ms"] * goal / measured["after"]
            lims = {**lims, "ms": ms}
            log.info("budget: the plan measures %.3g ms against a goal of %.3g; planning again to %.3g ms predicted",
                     measured["after"], goal, ms)
            try:
                picks, allocator = planned(lims)
            except BudgetError as e:
                log.info("budget: no plan at %.3g ms predicted (%s)", ms, e)
                break
            corrections.append({"measured_ms": measured, "goal_ms": goal, "limit_ms": ms})
            allocator += " + measured"
        _, picks, allocator, measured, self._uniform = held or missed
        return picks, allocator, corrections, measured

    def _allocate(self, gm, ctx, cm, tables, limits, fixed):
        """``allocate``; then, when the plan prunes, the plan applied to a copy and checked. Its moves
        do not add exactly (pruning a group and factorizing a layer in it, or two groups meeting in
        one layer, both count that layer's saving), so the factorizations that pruning made no faster
        are dropped (``_slower_once_pruned``), and when the applied plan still misses, every limit is
        scaled by one factor, bisected on applied plans for the loosest that holds."""
        alloc = allocate(tables, limits, fixed)
        if not any(p.startswith(PRUNE) for p in _changes(alloc.picks)):
            return alloc

        def settled(limits: dict[str, float]) -> tuple[Allocation, dict[str, float]]:
            """The allocation at ``limits`` with the layers whose factorization its pruning makes no
            faster held at "keep", allocated again (so pruning can make up for them) until none is
            left, at most 4 rounds; and its totals once applied."""
            kept: set[str] = set()
            a = None
            for _ in range(4):
                try:
                    a = allocate({p: t[:1] if p in kept else t for p, t in tables.items()}, limits, fixed)
                except BudgetError:
                    if a is None:
                        raise
                    break  # out of reach with those layers kept: the allocation before, without them
                slower = self._slower_once_pruned(gm, ctx, cm, a.picks) | self._stacked(a.picks)
                if not slower:
                    break
                log.info("budget: %d layers' factorizations are no faster once pruned, kept: %s",
                         len(slower), sorted(slower))
                kept |= slower
            if slower:
                picks = _kept(a.picks, tables, slower)
                a = Allocation(picks, a.totals, sum(c.error for c in picks.values()), a.allocator)
            return a, _totals(_applied(gm, a.picks, ctx), cm, ctx)

        def holds(got) -> bool:
            return not _over(got, limits)

        alloc, got = settled(limits)
        if holds(got):
            return alloc
        log.info("budget: the plan gives %s once applied, over the limits %s; tightening", got, limits)
        lo, hi, best, tightest = 0.0, 1.0, None, (alloc, got)
        for _ in range(8):
            mid = (lo + hi) / 2
            try:
                trial, got = settled({k: v * mid for k, v in limits.items()})
            except BudgetError:
                lo = mid  # beyond what the candidates reach even added up
                continue
            if holds(got):
                best, lo = trial, mid
            else:
                tightest, hi = (trial, got), mid
        if best is None:
            best, got = self._repair(gm, ctx, cm, tables, limits, *tightest)
            if not holds(got):
                closest = ", ".join(f"{k} {got[k]:.4g} (limit {v:.4g})" for k, v in limits.items())
                raise BudgetError(f"budget pass: no choice of the candidates meets the budget once pruning and "
                                  f"factorizing the same layers are combined; the closest achievable found is {closest}")
        return best

    def _repair(self, gm, ctx, cm, tables, limits, alloc: Allocation, got: dict[str, float], *, steps: int = 12,
                tries: int = 4) -> tuple[Allocation, dict[str, float]]:
        """Greedy moves judged on applied plans, from the closest plan the bisection found: per table
        the cheaper candidate with the least added error per unit of (added-up) resource saved; the
        ``tries`` best of those applied to copies, and the one with the least added error per unit
        really saved taken; until the limits hold or ``steps`` moves. For the last few percent the
        bisection can leave (its allocations jump between plans as the limits scale)."""
        def cost(t: dict[str, float] | Candidate) -> float:
            return sum((t[k] if isinstance(t, dict) else t.get(k)) / v for k, v in limits.items())

        picks = dict(alloc.picks)
        for _ in range(steps):
            if not _over(got, limits):
                break
            moves = []
            for p, t in tables.items():
                now = picks[p]
                cheaper = [(max(c.error - now.error, 0.0) / (cost(now) - cost(c)), p, c) for c in t if cost(c) < cost(now)]
                if cheaper:
                    moves.append(min(cheaper, key=lambda m: m[0]))
            tried = []
            for _, p, c in sorted(moves, key=lambda m: m[0])[:tries]:
                trial = {**picks, p: c}
                slower = self._slower_once_pruned(gm, ctx, cm, trial)
                trial = _kept(trial, tables, slower)
                t_got = _totals(_applied(gm, trial, ctx), cm, ctx)
                saved = cost(got) - cost(t_got)
                if saved > 0:
                    added = sum(d.error for d in trial.values()) - sum(d.error for d in picks.values())
                    tried.append((max(added, 0.0) / saved, trial, t_got))
            if not tried:
                break
            _, picks, got = min(tried, key=lambda m: m[0])
            log.info("budget: repaired to %s once applied (limits %s)", got, limits)
        return Allocation(picks, alloc.totals, sum(c.error for c in picks.values()), alloc.allocator + " + repair"), got

    def _prune_candidates(self, gm: fx.GraphModule, cm: CostModel, ctx: PassContext, sensitivity,
                          base: dict[str, float]) -> dict[str, list[Candidate]]:
        """Per channel group ``prune_channels`` would prune: keep (all zero: these tables hold changes)
        and each ratio in ``prune_ratios``, priced on a pruned copy of the whole graph."""
        if not self.prune_ratios:
            return {}
        groups = PruneChannels(ratio=max(self.prune_ratios), round_to=PRUNE_ROUND_TO).plan(gm, analyse(gm))["groups"]
        out = {}
        for g in tqdm(groups, desc="budget: prunings", disable=not self.progress, leave=False):
            rep = g["layers"][0]
            table = [Candidate(None, 0.0, 0, 0)]
            for r in self.prune_ratios:
                trial = copy.deepcopy(gm)
                res = _prune({rep: r}).run(trial, ctx)
                if not res.modified or min(d["channels_after"] for d in res.details) < self.min_channels:
                    continue  # nothing pruned, or below the floor
                got = _totals(trial, cm, ctx)
                if got["ms"] >= base["ms"]:  # never slower
                    continue
                table.append(Candidate({"prune": r}, *(got[k] - base[k] for k in ("ms", "params", "macs")),
                                       sensitivity(trial)))
                self._touched.setdefault(PRUNE + rep, set()).update(_reshaped(gm, trial))
            if len(table) > 1:
                out[PRUNE + rep] = table
        return out

    def _within_error(self, gm: fx.GraphModule, ctx: PassContext, picks: dict[str, Candidate],
                      reference) -> dict[str, Candidate]:
        """``picks`` without the layers whose error proxy is worst, one at a time, until the plan applied
        to a copy of ``gm`` keeps the measured output error within the budget's bound."""
        bound = self.budget.max_output_error
        while picks:
            err = _rel_err(reference, _run(_applied(gm, picks, ctx), ctx.example_inputs))
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
            parent = gm.get_submodule(n.target.rpartition(".")[0])
            if isinstance(parent, FactorChain):  # factorizing a factor stacks two losses on one layer
                refusals.append(Refusal(n.name, f"kept: a factor of the factorized layer '{n.target.rpartition('.')[0]}'"))
                continue
            rule = Factorize(method=_method(gm.get_submodule(n.target)), skip_first=self.skip_first,
                             skip_last=self.skip_last)
            _, reason = rule._choose(gm, n, i, len(all_layers), calls, set())
            if reason:
                refusals.append(Refusal(n.name, f"kept: {reason}"))
            else:
                out.append(n)
        return out, refusals

    def _candidates(self, gm: fx.GraphModule, n: fx.Node, x: torch.Tensor, cm: CostModel, sensitivity) -> list[Candidate]:
        """Keep, and a factorization at each rank that is predicted faster; ``sensitivity(gm)`` scores
        one with the factorized chain swapped in for the layer."""
        layer = gm.get_submodule(n.target)
        shape, nchw = tuple(x.shape), reads_model_input(n)
        keep = _price(cm, layer, shape, nchw)
        out = [Candidate(None, keep[0], count_params(layer), keep[1])]
        for r in self.ranks:
            nparams, build = _factorized(layer, r)
            if nparams >= out[0].params or _least_rank(layer, r) < self.min_rank:
                continue
            chain = build()
            ms, macs = _price(cm, chain, shape, nchw)
            if ms >= keep[0]:  # never slower: fewer MACs that the target would run slower are not offered
                continue
            gm.set_submodule(n.target, chain)
            try:
                err = sensitivity(gm)
            finally:
                gm.set_submodule(n.target, layer)
            out.append(Candidate({"method": _method(layer), "rank": r}, ms, nparams, macs, err))
        return out

    def _against_uniform(self, gm, ctx, cm, tables, limits, picks, allocator):
        """The allocation's ``picks`` against the uniform and near-uniform plans at the same limits
        (``budget_uniform``), by the calibration error of each plan applied to a copy, and with
        ``probe`` (a short fine-tune, from compile()) by that error after probing the ``probes`` best
        of each family. Plans judged or probed once are remembered across the device check's re-plans."""
        memo = self._memo

        def judged(plan):
            if (key := plan_key(plan)) not in memo["scored"]:
                trial = _applied(gm, plan, ctx)
                memo["scored"][key] = (_totals(trial, cm, ctx), self.calibration.error(trial))
            return memo["scored"][key]

        def probed(plan):
            if (key := plan_key(plan)) not in memo["probed"]:
                trial = _applied(gm, plan, ctx)
                self.probe(trial)
                memo["probed"][key] = self.calibration.error(trial)
            return memo["probed"][key]

        plans = uniform_plans(tables, self.prune_ratios, self.ranks, self.stack)
        plans += between_uniform(tables, self.prune_ratios, judged, limits)
        kept, name, self._uniform = against_uniform(picks, allocator, plans, judged, limits,
                                                    probed if self.probe is not None else None, self.probes,
                                                    self.progress)
        return kept, name

    def _stacked(self, picks: dict[str, Candidate]) -> set[str]:
        """With ``stack=False``, the layers ``picks`` factorizes whose weights its pruning reshapes."""
        if self.stack:
            return set()
        changes = _changes(picks)
        touched = set().union(*(self._touched.get(p, set()) for p in changes if p.startswith(PRUNE)))
        return {p for p in changes if not p.startswith(PRUNE) and p in touched}

    def _slower_once_pruned(self, gm: fx.GraphModule, ctx: PassContext, cm: CostModel,
                            picks: dict[str, Candidate]) -> set[str]:
        """The layers ``picks`` factorizes whose chain, rebuilt at the same rank fraction of the layer as
        the plan's pruning leaves it, is predicted no faster than that pruned layer. A table prices a
        factorization on the unpruned layer; pruned first, the layer has fewer channels, and the chain's
        extra launches can outweigh the work it saves (MobileNetV2's SVD-factorized 1x1 convs at batch
        1, once pruned by 0.75). "Never slower" holds for the plan as applied, not only per table."""
        prunes = {p: c for p, c in _changes(picks).items() if p.startswith(PRUNE)}
        factored = {p: c for p, c in _changes(picks).items() if not p.startswith(PRUNE)}
        if not prunes or not factored:
            return set()
        pruned = _applied(gm, prunes, ctx)
        nodes = [n for n in pruned.graph.nodes if n.op == "call_module" and n.target in factored]
        inputs = _capture_inputs(pruned, nodes, ctx.example_inputs)
        slower = set()
        for n in nodes:
            layer = pruned.get_submodule(n.target)
            chain = _factorized(layer, factored[n.target].choice["rank"])[1]()
            shape, nchw = tuple(inputs[n.name].shape), reads_model_input(n)
            if _price(cm, chain, shape, nchw)[0] >= _price(cm, layer, shape, nchw)[0]:
                slower.add(n.target)
        return slower


def _reshaped(gm: fx.GraphModule, pruned: fx.GraphModule) -> set[str]:
    """The Conv2d / Linear paths whose weight shape differs in ``pruned``."""
    out = set()
    for path, m in gm.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            try:
                q = pruned.get_submodule(path)
            except AttributeError:
                continue
            if getattr(q, "weight", None) is not None and q.weight.shape != m.weight.shape:
                out.add(path)
    return out
