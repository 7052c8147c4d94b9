"""Physical shrinking: remove chosen channels from every parameter that holds them.

Given the channel graph and a set of removed ``(space, index)`` entries, every producer loses output
rows, every consumer loses input columns (a Linear after ``flatten`` loses each channel's spatial
block), and every follower (BatchNorm, depthwise conv) loses its channels. Module attributes
(``in_channels``, ``out_features``, ``num_features``, ``groups``) are updated so the result is an
ordinary module that prints, traces and exports like any other.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from compiler.graph import fetch_attr

from .depgraph import ChannelGraph, Entry


def kept_positions(entries: list[Entry], removed: set[tuple[int, int]]) -> torch.Tensor | None:
    """Positions of ``entries`` that survive, or None when nothing is removed there."""
    if not any(e in removed for e in entries):
        return None
    return torch.tensor([p for p, e in enumerate(entries) if e not in removed], dtype=torch.long)


def _param(t: torch.Tensor | None, dim: int, keep: torch.Tensor):
    if t is None:
        return None
    return nn.Parameter(t.detach().index_select(dim, keep).clone(), requires_grad=t.requires_grad)


_SIZE_ATTR = {(nn.Conv2d, 0): "out_channels", (nn.Conv2d, 1): "in_channels",
              (nn.Linear, 0): "out_features", (nn.Linear, 1): "in_features"}


def _shrink_layer(m: nn.Module, dim: int, keep: torch.Tensor | None) -> None:
    """Keep ``keep`` along the weight's output (dim 0, with the bias) or input (dim 1) channels."""
    if keep is None or len(keep) == m.weight.shape[dim]:
        return
    m.weight = _param(m.weight, dim, keep)
    if dim == 0:
        m.bias = _param(m.bias, 0, keep)
    setattr(m, _SIZE_ATTR[(type(m), dim)], len(keep))


def shrink(gm: fx.GraphModule, cg: ChannelGraph, removed: set[tuple[int, int]]) -> None:
    nodes = {n.name: n for n in gm.graph.nodes}
    for space in cg.spaces:
        keep = torch.tensor([i for i in range(space.size) if (space.id, i) not in removed], dtype=torch.long)
        _shrink_layer(gm.get_submodule(nodes[space.node].target), 0, keep)
    for name in cg.consumers:
        n = nodes[name]
        _shrink_layer(gm.get_submodule(n.target), 1, kept_positions(cg.maps[n.args[0].name], removed))
    for name in cg.followers:
        n = nodes[name]
        keep = kept_positions(cg.maps[n.args[0].name], removed)
        if keep is None:
            continue
        if n.op == "call_function":  # F.batch_norm on stored tensors
            for a in n.args[1:5]:
                if isinstance(a, fx.Node) and a.op == "get_attr":
                    t = fetch_attr(gm, a.target)
                    parent, _, attr = a.target.rpartition(".")
                    owner = gm.get_submodule(parent) if parent else gm
                    new = t.detach().index_select(0, keep).clone()
                    setattr(owner, attr, nn.Parameter(new) if isinstance(t, nn.Parameter) else new)
            continue
        m = gm.get_submodule(n.target)
        if isinstance(m, nn.Conv2d):  # depthwise
            m.weight, m.bias = _param(m.weight, 0, keep), _param(m.bias, 0, keep)
            m.in_channels = m.out_channels = m.groups = len(keep)
        else:  # BatchNorm
            m.weight, m.bias = _param(m.weight, 0, keep), _param(m.bias, 0, keep)
            m.running_mean = m.running_mean.index_select(0, keep).clone()
            m.running_var = m.running_var.index_select(0, keep).clone()
            m.num_features = len(keep)


def masked_forward(gm: fx.GraphModule, cg: ChannelGraph, removed: set[tuple[int, int]], *inputs):
    """The oracle: run the *unpruned* graph with every removed channel zeroed wherever it appears."""
    masks = {}
    for n in gm.graph.nodes:
        entries = cg.maps.get(n.name) or []
        drop = [p for p, e in enumerate(entries) if e in removed]
        d = cg.cdim(n)
        if drop and d is not None:  # a (g, C/g) view holds values already zeroed upstream
            masks[n.name] = (d, torch.tensor(drop))

    class Masked(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in masks:
                d, idx = masks[n.name]
                out = out.index_fill(d, idx, 0.0)
            return out

    with torch.no_grad():
        return Masked(gm).run(*inputs)
