"""The canonical graph every rewrite starts from: shape metadata folded to constants.

Model code reads tensor metadata all the time - ``x.ndim`` in timm's ``BatchNormAct2d._assert``,
``B, N, C = x.shape`` in attention, ``x.size(1)`` in a channel shuffle. Traced, each read is a node
that *uses* the tensor, so a conv whose output is also read by ``x.ndim`` has two users, and a
rewrite that needs a single user (BatchNorm folding, epilogue fusion, pruning) refuses it.

A node is *static* when its value is fixed by the traced shapes alone:

- a metadata read of a tensor: ``x.shape``, ``x.ndim``, ``x.dtype``, ``x.device``, ``x.size(i)``,
  ``x.dim()``, ``x.numel()``;
- a forward argument the example inputs do not supply, bound to its default
  (``is_causal=False`` in timm's ViT) - traced with ``concrete_args``;
- any non-tensor computation over static values only (``C // 2``, ``x.shape[-1] ** -0.5``).

Static values are replaced by constants in their users and the static nodes are removed;
``torch._assert`` (which timm's ``_assert`` is) on a static condition that holds is removed too.

The batch dimension stays symbolic by default: the graph is run once more at batch ``b + 1``, and
a static value that changes with it (``x.shape[0]``, ``B * N``) is kept as a node, so the rewritten
graph still runs, fine-tunes and exports at any batch. Such remaining reads are metadata-only
users (``compiler.graph.value_users`` leaves them out), so they block no rewrite.
``dynamic_batch=False`` folds them too, for fixed-shape targets.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.fx as fx
from torch.fx.node import map_arg

from .graph import is_metadata_read

log = logging.getLogger(__name__)

_ASSERTS = {torch._assert, getattr(torch.fx._symbolic_trace, "_assert_is_none", None)} - {None}
_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)


@dataclass
class Canonical:
    """What canonicalisation did, for the compile report."""

    folded: int = 0  # static nodes replaced by constants
    asserts_removed: int = 0
    bound_arguments: list[str] = field(default_factory=list)  # forward arguments bound to their defaults
    batch_reads: int = 0  # batch-dependent metadata kept symbolic
    batch_folded: int = 0  # batch-dependent values folded (dynamic_batch=False, or the model fixes its batch)
    dynamic_batch: bool = True

    def summary(self) -> str:
        parts = [f"{self.folded} shape reads folded to constants", f"{self.asserts_removed} asserts removed"]
        if self.bound_arguments:
            parts.append(f"arguments bound to their defaults: {', '.join(self.bound_arguments)}")
        if self.batch_reads:
            parts.append(f"{self.batch_reads} batch-size reads kept symbolic")
        if self.batch_folded:
            parts.append(f"{self.batch_folded} batch-size reads folded (the graph runs at the traced batch only)")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}


def _foldable(v) -> bool:
    if isinstance(v, _SCALARS):
        return not (isinstance(v, float) and not math.isfinite(v))
    if isinstance(v, (tuple, list)):  # torch.Size is a tuple
        return all(_foldable(x) for x in v)
    if isinstance(v, slice):
        return all(_foldable(x) for x in (v.start, v.stop, v.step))
    return False


def _constant(v):
    if isinstance(v, torch.Size):
        return tuple(v)
    if isinstance(v, list):
        return [_constant(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_constant(x) for x in v)
    return v


class _Record(fx.Interpreter):
    """Run the graph and keep every node's non-tensor result."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[str, object] = {}

    def run_node(self, n: fx.Node):
        r = super().run_node(n)
        if not isinstance(r, torch.Tensor) and n.op not in ("output",):
            self.values[n.name] = r
        return r


def _record(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> dict[str, object] | None:
    rec = _Record(gm)
    try:
        with torch.no_grad():
            rec.run(*inputs)
    except Exception as e:  # noqa: BLE001 - a model that fixes its batch size fails here; that is an answer
        log.info("canonicalise: the graph does not run at batch %s (%s: %s)",
                 inputs[0].shape[0] if inputs and inputs[0].dim() else "?", type(e).__name__, e)
        return None
    return rec.values


def _static_nodes(gm: fx.GraphModule, n_inputs: int) -> list[fx.Node]:
    static: set[str] = set()
    out = []
    placeholders = 0
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            placeholders += 1
            if placeholders > n_inputs and n.args:  # bound to its default
                static.add(n.name)
                out.append(n)
            continue
        if n.op not in ("call_function", "call_method") or n.target in _ASSERTS:
            continue
        inputs = n.all_input_nodes
        if is_metadata_read(n) or (inputs and all(a.name in static for a in inputs)):
            static.add(n.name)
            out.append(n)
    return out


def canonicalize(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], *, dynamic_batch: bool = True) -> Canonical:
    """Fold static metadata of ``gm`` (which carries shapes) in place; see the module docstring."""
    result = Canonical(dynamic_batch=dynamic_batch)
    static = _static_nodes(gm, len(inputs))
    if not static:
        return result
    values = _record(gm, inputs)
    if values is None:
        return result
    batch_dependent: set[str] = set()
    if inputs and all(t.dim() > 0 for t in inputs):
        other = _record(gm, tuple(torch.cat([t, t[:1]]) for t in inputs))
        if other is None:  # the model fixes its batch size: nothing can stay symbolic
            result.dynamic_batch = False
        else:
            batch_dependent = {n.name for n in static if n.name in values and other.get(n.name) != values[n.name]}
    keep_symbolic = batch_dependent if result.dynamic_batch else set()
    fold = [n for n in static if n.name in values and _foldable(values[n.name]) and n.name not in keep_symbolic]
    folded = {n.name for n in fold}
    for n in fold:
        value = _constant(values[n.name])
        for u in list(n.users):
            if u.name not in folded:
                u.args = map_arg(u.args, lambda a, n=n, v=value: v if a is n else a)
                u.kwargs = map_arg(u.kwargs, lambda a, n=n, v=value: v if a is n else a)
    for n in reversed(list(gm.graph.nodes)):
        if _holds(n):
            gm.graph.erase_node(n)
            result.asserts_removed += 1
        elif n.name in folded and not n.users:
            if n.op == "placeholder":
                result.bound_arguments.insert(0, f"{n.target}={values[n.name]!r}")
            else:
                result.folded += 1
                result.batch_folded += n.name in batch_dependent and is_metadata_read(n)
            gm.graph.erase_node(n)
    alive = {n.name for n in gm.graph.nodes}
    result.batch_reads = sum(1 for n in static if n.name in keep_symbolic and n.name in alive and is_metadata_read(n))
    gm.graph.lint()
    gm.recompile()
    return result


def _holds(n: fx.Node) -> bool:
    """An assert on a constant that holds: ``torch._assert(True, msg)``, ``_assert_is_none(None, msg)``."""
    if n.op != "call_function" or n.target not in _ASSERTS or n.all_input_nodes or not n.args:
        return False
    return n.args[0] is True if n.target is torch._assert else n.args[0] is None
