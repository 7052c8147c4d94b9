"""Physical shrinking: remove chosen channels from every parameter and constant that holds them.

Given the channel graph and a set of removed ``(space, index)`` entries, every producer loses output
rows (an attention layer loses heads), every consumer loses input columns (a Linear after
``flatten`` loses each channel's spatial block, a grouped conv the same positions in every group),
every follower (BatchNorm, LayerNorm, GroupNorm, depthwise conv) and every followed stored tensor
(layer scale, position embedding) loses its channels, and constants that count channels (view
sizes, split sizes, slice bounds) are recounted. Module attributes (``in_channels``,
``out_features``, ``num_features``, ``normalized_shape``, ``num_heads``) are updated so the result
is an ordinary module that prints, traces and exports like any other.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compiler import meta
from compiler.errors import PruningError

from .attention import mask_heads, shrink_heads
from .channels import ChannelGraph, Entry
from .rules import dims_arg, index_plan


def kept_positions(entries: list[Entry], removed: set[tuple[int, int]]) -> torch.Tensor | None:
    """Positions of ``entries`` that survive, or None when nothing is removed there."""
    if not any(e in removed for e in entries):
        return None
    return torch.tensor([p for p, e in enumerate(entries) if e not in removed], dtype=torch.long)


def _param(t: torch.Tensor | None, dim: int, keep: torch.Tensor):
    if t is None:
        return None
    return nn.Parameter(t.detach().index_select(dim, keep).clone(), requires_grad=t.requires_grad)


def _select(owner: nn.Module, attr: str, dim: int, keep: torch.Tensor) -> None:
    """``owner.attr = owner.attr[keep along dim]``, keeping it a Parameter or a buffer as it was."""
    t = getattr(owner, attr)
    if t is None:
        return
    new = t.detach().index_select(dim, keep).clone()
    setattr(owner, attr, nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new)


def _select_attr(gm: fx.GraphModule, target: str, dim: int, keep: torch.Tensor) -> None:
    parent, _, attr = target.rpartition(".")
    _select(gm.get_submodule(parent) if parent else gm, attr, dim, keep)


_SIZE_ATTR = {(nn.Conv2d, 0): "out_channels", (nn.Conv2d, 1): "in_channels",
              (nn.Linear, 0): "out_features", (nn.Linear, 1): "in_features"}


def _shrink_layer(m: nn.Module, dim: int, keep: torch.Tensor | None) -> None:
    """Keep ``keep`` along the weight's output (dim 0, with the bias) or input (dim 1) channels."""
    if keep is None:
        return
    groups = getattr(m, "groups", 1)
    if dim == 1 and groups > 1:  # the same positions in every group: select within one group
        keep = keep[keep < m.weight.shape[1]]
    if len(keep) == m.weight.shape[dim]:
        return
    _select(m, "weight", dim, keep)
    if dim == 0:
        _select(m, "bias", 0, keep)
    setattr(m, _SIZE_ATTR[(type(m), dim)], len(keep) * (groups if dim == 1 else 1))


def shrink(gm: fx.GraphModule, cg: ChannelGraph, removed: set[tuple[int, int]]) -> None:
    for space in cg.spaces:
        keep = [i for i in range(space.size) if (space.id, i) not in removed]
        if not keep:
            raise PruningError(f"pruning would remove every {space.kind[:-1]} of '{space.path}'; keep at least one")
        if space.kind == "heads":
            shrink_heads(gm, space.path, keep)
        else:
            _shrink_layer(gm.get_submodule(space.path), 0, torch.tensor(keep, dtype=torch.long))
    nodes = {n.name: n for n in gm.graph.nodes}
    for name in cg.consumers:
        n = nodes[name]
        _shrink_layer(gm.get_submodule(n.target), 1, kept_positions(cg.maps[n.args[0].name], removed))
    for name in cg.followers:
        n = nodes[name]
        keep = kept_positions(cg.maps[n.args[0].name], removed)
        if keep is not None:
            _shrink_follower(gm, n, keep)
    for name, (dim, entries) in cg.params.items():
        keep = kept_positions(entries, removed)
        if keep is not None:
            _select_attr(gm, nodes[name].target, dim, keep)
    for name, entries in cg.rewrites.items():
        if any(e in removed for e in entries):
            _recount(nodes[name], cg, entries, removed)


def _shrink_follower(gm: fx.GraphModule, n: fx.Node, keep: torch.Tensor) -> None:
    if n.op == "call_function":  # F.batch_norm / F.layer_norm / F.group_norm: the stored tensors are per channel
        for a in [*n.args[1:], *n.kwargs.values()]:
            if isinstance(a, fx.Node) and a.op == "get_attr":
                _select_attr(gm, a.target, 0, keep)
        if n.target is F.layer_norm:
            n.args = (n.args[0], (len(keep),), *n.args[2:])
        return
    m = gm.get_submodule(n.target)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if getattr(m, attr, None) is not None:
            _select(m, attr, 0, keep)
    if isinstance(m, nn.Conv2d):  # depthwise
        m.in_channels = m.out_channels = m.groups = len(keep)
    elif isinstance(m, nn.LayerNorm):
        m.normalized_shape = (len(keep),)
    elif isinstance(m, nn.GroupNorm):
        m.num_channels = len(keep)
    else:
        m.num_features = len(keep)


def _count(entries: list[Entry], removed) -> int:
    return sum(e not in removed for e in entries)


def _recount(n: fx.Node, cg: ChannelGraph, entries: list[Entry], removed) -> None:
    """Rewrite the constants of ``n`` that count channels: ``entries`` is its input map (its
    output map for views)."""
    t = n.target
    if t in ("view", "reshape", torch.reshape):
        sizes, dims = list(dims_arg(n)), cg.cdims[n.name]
        new = _count(entries, removed)
        if len(dims) == 2 and isinstance(sizes[dims[0]], int):
            new //= sizes[dims[0]]
        d = dims[-1]
        if isinstance(sizes[d], int) and sizes[d] != -1:
            sizes[d] = new
            n.args = (n.args[0], tuple(sizes)) if t is torch.reshape else (n.args[0], *sizes)
            n.kwargs = {k: v for k, v in n.kwargs.items() if k != "shape"}
        return
    if t in ("split", torch.split):
        pieces = [_count(p, removed) for p in cg.pieces[n.name]]
        if 0 in pieces:
            raise PruningError(f"pruning would remove every channel of piece {pieces.index(0)} of split '{n.name}'")
        rest = {k: v for k, v in n.kwargs.items() if k not in ("split_size", "split_size_or_sections")}
        n.args, n.kwargs = (n.args[0], pieces, *n.args[2:]), rest
        return
    if t in ("narrow", torch.narrow):
        dim, start, length = n.args[1:4]
        start %= len(entries)
        new_start = _count(entries[:start], removed)
        n.args = (n.args[0], dim, new_start, _count(entries[start:start + length], removed))
        return
    plan = index_plan(n, len(meta.shape(n.args[0])))  # getitem with a channel slice
    d, pos = cg.cdim(n.args[0]), 0
    for j, i in enumerate(plan):
        if i is None:
            continue
        if pos == d:
            start, stop, _ = i.indices(len(entries))
            new_start = _count(entries[:start], removed)
            plan[j] = slice(new_start, new_start + _count(entries[start:stop], removed))
        pos += 1
    n.args = (n.args[0], tuple(plan))


def masked_forward(gm: fx.GraphModule, cg: ChannelGraph, removed: set[tuple[int, int]], *inputs):
    """The oracle: run the *unpruned* graph with every removed channel zeroed wherever it appears,
    norms computing their statistics over the channels that remain, and removed heads silenced."""
    gm = copy.deepcopy(gm)
    for s in cg.spaces:
        drop = [i for i in range(s.size) if (s.id, i) in removed]
        if s.kind == "heads" and drop:
            mask_heads(gm, s.path, drop)
    masks, norms = {}, set(cg.followers)
    for n in gm.graph.nodes:
        entries = cg.maps.get(n.name) or []
        drop = [p for p, e in enumerate(entries) if e in removed]
        d = cg.cdim(n)
        if drop and d is not None:  # a (g, C/g) view holds values already zeroed upstream
            masks[n.name] = (d, torch.tensor(drop))

    class Masked(fx.Interpreter):
        def run_node(self, n):
            if n.name in norms and _is_stat_norm(self.module, n):
                out = self._norm_over_kept(n)
            else:
                out = super().run_node(n)
            if n.name in masks:
                d, idx = masks[n.name]
                out = out.index_fill(d, idx, 0.0)
            return out

        def _norm_over_kept(self, n):
            keep = kept_positions(cg.maps[n.args[0].name], removed)
            if keep is None:
                return super().run_node(n)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            if n.op == "call_module":
                m = self.module.get_submodule(n.target)
                group_norm = isinstance(m, nn.GroupNorm)
                size, w, b, eps = (m.num_groups if group_norm else None), m.weight, m.bias, m.eps
            else:
                group_norm = n.target is F.group_norm
                size, w, b, eps = [*args[1:], *(kwargs.get(k) for k in ("x", "weight", "bias", "eps")[len(args) - 1:])][:4]
                eps = 1e-5 if eps is None else eps
            x, d = args[0], cg.cdim(n.args[0])
            w, b = (t.index_select(0, keep) if t is not None else None for t in (w, b))
            xk = x.index_select(d, keep)
            y = F.group_norm(xk, size, w, b, eps) if group_norm else F.layer_norm(xk, (len(keep),), w, b, eps)
            return torch.zeros_like(x).index_copy(d, keep, y)

    with torch.no_grad():
        return Masked(gm).run(*inputs)


def _is_stat_norm(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), (nn.LayerNorm, nn.GroupNorm))
    return n.target in (F.layer_norm, F.group_norm)
