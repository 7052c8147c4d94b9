"""Runs a pipeline of passes over a GraphModule, with instruments, and enforces the pass contract."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from .analysis import Analyses
from .errors import BudgetError, CalibrationError, CompilerError, PassError, VerificationError
from .instruments import GraphDump, Instrument, NumericVerify, Stats, Timing
from .pass_base import DeviceRunner, Pass, PassContext, PassResult
from .pipelines import PipelineSpec, load_pipeline
from .report import CompileReport, PassRow
from .sketch import sketch
from .trace import TRACE_INFO, as_input_tuple

log = logging.getLogger(__name__)


class PassManager:
    """Run passes in order; time them, verify them against eager and record a ``CompileReport``.

    Parameters
    ----------
    pipeline : list of Pass, a named pipeline ("default") or a TOML file path
    verify : bool
        Compare outputs with the eager reference after every modifying pass and raise
        ``VerificationError`` when a pass exceeds its tolerance.
    dump_dir : path, optional
        Write the graph after every pass there (``GraphDump``).
    instruments : extra ``Instrument`` objects.
    progress : bool
        Show a tqdm bar over the passes.
    device : DeviceRunner, optional
        What passes that time graphs on the device use (the budget pass's device check);
        ``compiler.compile`` gives the OpenCL runtime's, ``runtime.device_runner``.

    Examples
    --------
    >>> gm = compiler.trace(model, x)
    >>> gm, report = compiler.PassManager(["cleanup", "fold_bn"]).run(gm, (x,))
    """

    def __init__(
        self,
        pipeline: PipelineSpec = "default",
        *,
        verify: bool = True,
        dump_dir: str | Path | None = None,
        instruments: Sequence[Instrument] = (),
        progress: bool = False,
        device: DeviceRunner | None = None,
    ):
        self.passes: list[Pass] = load_pipeline(pipeline)
        self.device = device
        self.verify = verify
        self.dump_dir = dump_dir
        self.extra_instruments = list(instruments)
        self.progress = progress

    def run(self, gm: fx.GraphModule, example_inputs, *, reference=None) -> tuple[fx.GraphModule, CompileReport]:
        """Rewrite ``gm`` in place and return it with the report.

        ``reference`` is the eager model's output on ``example_inputs``; by default the output of
        ``gm`` before any pass.
        """
        inputs = as_input_tuple(example_inputs)
        ctx = PassContext(inputs, Analyses(gm, inputs), device=self.device)
        instruments: list[Instrument] = [Timing(), Stats()]
        if self.verify:
            instruments.append(NumericVerify(reference))
        if self.dump_dir is not None:
            instruments.append(GraphDump(self.dump_dir))
        instruments += self.extra_instruments

        info = gm.meta.get(TRACE_INFO)
        report = CompileReport(
            model=gm.__class__.__name__,
            auto_leaves=[{"path": a.path, "reason": a.reason} for a in info.auto_leaves] if info else [],
            canonical=info.canonical.to_dict() if info and info.canonical else None,
        )
        report.graphs = {"before": sketch(gm)}
        base = PassRow("trace")
        for ins in instruments:
            ins.before_run(gm, ctx, base)
        report.rows.append(base)

        for p in tqdm(self.passes, desc="passes", disable=not self.progress, leave=False):
            row = PassRow(p.name)
            try:
                for ins in instruments:
                    ins.before_pass(p, gm, ctx)
                result = self._run_one(p, gm, ctx)
                row.modified, row.matches = result.modified, result.matches
                row.refusals, row.details, row.summary = result.refusals, result.details, result.summary
                report.warnings += result.warnings
                for ins in instruments:
                    ins.after_pass(p, gm, ctx, row)
            except (VerificationError, BudgetError, CalibrationError):
                raise  # name the pass themselves, or are about the user's budget or profile, not the pass
            except Exception as e:  # noqa: BLE001 - every failure is re-raised naming the pass
                raise PassError(p.name, list(ctx.passes_before), e) from e
            for r in row.refusals:
                log.info("%s refused %s: %s", p.name, r.node, r.reason)
            report.rows.append(row)
            ctx.passes_before.append(p.name)
        report.graphs["after"] = sketch(gm)
        return gm, report

    @staticmethod
    def _run_one(p: Pass, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        ctx.analyses.shapes()  # every pass may rely on node shapes
        p.requires(gm, ctx)
        with torch.no_grad():
            result = p.run(gm, ctx)
        if not isinstance(result, PassResult):
            raise CompilerError(f"pass '{p.name}' returned {type(result).__name__}, expected PassResult")
        if result.modified:
            gm.graph.lint()
            gm.recompile()
            ctx.analyses.invalidate(p.preserves)
        p.ensures(gm, ctx)
        return result
