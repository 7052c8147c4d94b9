"""Graph analyses - shapes, parameter count, MACs - computed once and cached until a pass invalidates them.

MAC conventions (multiply-accumulates, batch included):
  conv:   out.numel() * (C_in / groups) * prod(kernel)
  linear: out.numel() * in_features
  matmul: out.numel() * K (the contracted dimension)
  multi-head attention: the three input projections, QK^T, AV and the output projection.
Other ops count 0: they are bandwidth, not MACs, and the cost model accounts for them separately.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import meta
from .ops import Attention, FusedOp, TTLinear
from .trace import propagate_shapes

ModuleMacs = Callable[[nn.Module, fx.Node], int]


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def _conv_macs(m: nn.Module, n: fx.Node) -> int:
    return _numel(meta.shape(n)) * (m.in_channels // m.groups) * math.prod(m.kernel_size)


def _linear_macs(m: nn.Linear, n: fx.Node) -> int:
    return _numel(meta.shape(n)) * m.in_features


def _attention_macs(m: nn.MultiheadAttention | Attention, n: fx.Node) -> int:
    q, k = n.args[0], n.args[1]
    qs, ks = meta.shape(q), meta.shape(k)
    if qs is None or ks is None or len(qs) != 3:
        return 0
    inner, e = m.num_heads * m.head_dim, m.embed_dim
    batch = qs[0] if m.batch_first else qs[1]
    tq, tk = _numel(qs) // e, _numel(ks) // e
    return (2 * tq + 2 * tk) * e * inner + 2 * tq * (tk // batch) * inner


def _tt_linear_macs(m: TTLinear, n: fx.Node) -> int:
    return m.macs(_numel(meta.shape(n)) // m.out_features)


MODULE_MACS: dict[type, ModuleMacs] = {
    TTLinear: _tt_linear_macs,
    nn.Conv1d: _conv_macs,
    nn.Conv2d: _conv_macs,
    nn.Conv3d: _conv_macs,
    nn.Linear: _linear_macs,
    nn.MultiheadAttention: _attention_macs,
    Attention: _attention_macs,
}


def _matmul_macs(n: fx.Node) -> int:
    a = n.args[0]
    sa = meta.shape(a) if isinstance(a, fx.Node) else None
    return _numel(meta.shape(n)) * sa[-1] if sa else 0


def _functional_linear_macs(n: fx.Node) -> int:
    w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
    sw = meta.shape(w) if isinstance(w, fx.Node) else None
    return _numel(meta.shape(n)) * sw[-1] if sw else 0


def _functional_conv_macs(n: fx.Node) -> int:
    w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
    sw = meta.shape(w) if isinstance(w, fx.Node) else None
    return _numel(meta.shape(n)) * math.prod(sw[1:]) if sw else 0


FUNCTION_MACS: dict[object, Callable[[fx.Node], int]] = {
    torch.matmul: _matmul_macs,
    torch.bmm: _matmul_macs,
    torch.Tensor.matmul: _matmul_macs,
    F.linear: _functional_linear_macs,
    F.conv1d: _functional_conv_macs,
    F.conv2d: _functional_conv_macs,
    F.conv3d: _functional_conv_macs,
}
METHOD_MACS = {"matmul": _matmul_macs, "bmm": _matmul_macs}


def node_macs(gm: fx.GraphModule, n: fx.Node) -> int:
    """MACs of one node; needs shapes (see ``propagate_shapes``)."""
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        if isinstance(m, FusedOp):
            m = m.op
        rule = MODULE_MACS.get(type(m))
        return rule(m, n) if rule else 0
    if n.op == "call_function":
        if n.target is operator.matmul:
            return _matmul_macs(n)
        rule = FUNCTION_MACS.get(n.target)
        return rule(n) if rule else 0
    if n.op == "call_method":
        rule = METHOD_MACS.get(n.target)
        return rule(n) if rule else 0
    return 0


def count_params(gm: nn.Module) -> int:
    return sum(p.numel() for p in gm.parameters())


def count_macs(gm: fx.GraphModule) -> int:
    """MACs of the whole graph; needs shapes."""
    return sum(node_macs(gm, n) for n in gm.graph.nodes)


class Analyses:
    """Lazily computed, cached analyses of one GraphModule.

    ``invalidate()`` drops everything a pass did not declare preserved, as LLVM's new pass manager
    does with "preserved analyses". Shapes are recomputed from the example inputs on demand.
    """

    def __init__(self, gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]):
        self.gm = gm
        self.example_inputs = example_inputs
        self._cache: dict[str, object] = {}
        self.computed: dict[str, int] = {}  # how often each analysis ran, for tests and tuning

    def _get(self, key: str, compute: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = compute()
            self.computed[key] = self.computed.get(key, 0) + 1
        return self._cache[key]

    def shapes(self) -> None:
        """Make sure every node carries its shape and dtype."""
        self._get("shapes", lambda: propagate_shapes(self.gm, self.example_inputs))

    def params(self) -> int:
        return self._get("params", lambda: count_params(self.gm))

    def macs(self) -> int:
        def compute():
            self.shapes()
            return count_macs(self.gm)

        return self._get("macs", compute)

    def nodes(self) -> int:
        return self._get("nodes", lambda: sum(1 for n in self.gm.graph.nodes if n.op not in ("placeholder", "output")))

    def invalidate(self, preserved: frozenset[str] = frozenset()) -> None:
        self._cache = {k: v for k, v in self._cache.items() if k in preserved}
