"""Pass-manager instruments: timing, statistics, numeric verification against eager, graph dumps.

An instrument watches the pass manager; it never changes the graph. Each fills its columns of the
pass's ``PassRow``.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from .errors import VerificationError
from .fileio import write_text_atomic
from .pass_base import Pass, PassContext
from .report import PassRow


def flat_tensors(outputs) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor)]


def output_error(reference, outputs) -> tuple[float, float]:
    """``(max abs error, max abs error / max |reference|)`` over all tensor outputs."""
    ref, out = flat_tensors(reference), flat_tensors(outputs)
    if len(ref) != len(out):
        raise VerificationError(f"the graph returns {len(out)} tensors, the reference {len(ref)}")
    max_abs, scale = 0.0, 0.0
    for r, o in zip(ref, out):
        if r.shape != o.shape:
            raise VerificationError(f"output shape {tuple(o.shape)} differs from the reference {tuple(r.shape)}")
        r64, o64 = r.detach().double(), o.detach().double()
        if r64.numel():
            max_abs = max(max_abs, (r64 - o64).abs().max().item())
            scale = max(scale, r64.abs().max().item())
    return max_abs, max_abs / max(scale, torch.finfo(torch.float32).tiny)


class Instrument:
    def before_run(self, gm: fx.GraphModule, ctx: PassContext, row: PassRow) -> None:
        """Called once before the first pass; ``row`` is the baseline ('trace') row."""

    def before_pass(self, p: Pass, gm: fx.GraphModule, ctx: PassContext) -> None: ...

    def after_pass(self, p: Pass, gm: fx.GraphModule, ctx: PassContext, row: PassRow) -> None: ...


class Timing(Instrument):
    def before_pass(self, p, gm, ctx):
        self._t0 = time.perf_counter()

    def after_pass(self, p, gm, ctx, row):
        row.seconds = time.perf_counter() - self._t0


class Stats(Instrument):
    """Parameter count, MACs and node count after each pass (cached analyses)."""

    def before_run(self, gm, ctx, row):
        self._fill(ctx, row)

    def after_pass(self, p, gm, ctx, row):
        self._fill(ctx, row)

    @staticmethod
    def _fill(ctx: PassContext, row: PassRow) -> None:
        a = ctx.analyses
        row.params, row.macs, row.nodes = a.params(), a.macs(), a.nodes()


class NumericVerify(Instrument):
    """Runs the graph on the example inputs after each pass and compares with the eager reference.

    Raises ``VerificationError`` when a pass exceeds its tolerance (``Pass.tolerance``).
    """

    def __init__(self, reference=None):
        self.reference = reference

    def _measure(self, gm, ctx) -> tuple[float, float]:
        with torch.no_grad():
            out = gm(*ctx.example_inputs)
        return output_error(self.reference, out)

    def before_run(self, gm, ctx, row):
        if self.reference is None:  # the traced graph is eager PyTorch, so it serves as the oracle
            with torch.no_grad():
                self.reference = gm(*ctx.example_inputs)
        row.max_abs_err, row.max_rel_err = self._last = self._measure(gm, ctx)

    def after_pass(self, p, gm, ctx, row):
        if not row.modified:  # an unchanged graph computes what it did before
            row.max_abs_err, row.max_rel_err = self._last
            return
        row.max_abs_err, row.max_rel_err = self._measure(gm, ctx)
        row.tolerance = p.tolerance
        added = row.max_rel_err - self._last[1]
        if not (added <= p.tolerance):  # also catches NaN
            raise VerificationError(
                f"pass '{p.name}' (after {ctx.passes_before}) changed the outputs by max rel error "
                f"{row.max_rel_err:.3e} (max abs {row.max_abs_err:.3e}), more than its tolerance {p.tolerance:.1e}"
            )
        self._last = (row.max_abs_err, row.max_rel_err)


class GraphDump(Instrument):
    """Writes the generated code and the node table after each pass to ``directory``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.count = 0

    def before_run(self, gm, ctx, row):
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dump("trace", gm)

    def after_pass(self, p, gm, ctx, row):
        self._dump(p.name, gm)

    def _dump(self, name: str, gm: fx.GraphModule) -> None:
        lines = [f"{n.name} = {n.op} {n.target} args={n.args} kwargs={n.kwargs}" for n in gm.graph.nodes]
        text = gm.code + "\n# nodes\n" + "\n".join("# " + ln for ln in lines) + "\n"
        safe = re.sub(r"\W", "_", name)
        write_text_atomic(self.directory / f"{self.count:02d}_{safe}.py", text)
        self.count += 1
