r"""Channel dependency analysis over an fx graph with shapes, as a networkx graph.

Every conv/linear output creates a *space* of channels. Each tensor in the graph carries a *channel
map*: for each position along its channel dimension, the ``(space, index)`` it holds, or None for a
channel that is not prunable (a model input, say). Ops move maps: pass-through ops copy them,
``cat`` concatenates them (offsets come for free), ``flatten`` repeats each entry over the flattened
spatial block, depthwise convs and BatchNorm follow their input.

Ops that combine tensors elementwise (residual ``add``, SE-style ``x * gate``) *couple* channels:
an edge joins the two ``(space, index)`` nodes. The connected components of that graph are the
units of pruning: removing one removes every coupled channel at once. Spaces that reach the model
output, a grouped conv, or an op without a rule are *blocked*: no guess is made through unknown
ops, and the report says which op blocked what.

Index-level nodes make offsets exact by construction: a ``cat`` followed by an ``add`` couples
channel 70 of the concat with channel 70 of the other operand, whichever space that is.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compiler import meta
from compiler.graph import is_stochastic_depth_eval

Entry = tuple[int, int] | None  # (space id, channel index) or a fixed channel

PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Identity,
                nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, torch.sigmoid, F.sigmoid,
                  torch.tanh, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                  F.hardtanh}
PASS_METHODS = {"relu", "relu_", "sigmoid", "contiguous", "clone"}
ELEMENTWISE = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul, operator.sub, torch.sub}
ELEMENTWISE_METHODS = {"add", "add_", "mul", "mul_", "sub"}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Space:
    id: int
    node: str  # the conv/linear node that produces it
    size: int


@dataclass
class ChannelGraph:
    """Result of the analysis: channel maps, spaces, the coupling graph and what is blocked."""

    maps: dict[str, list[Entry]] = field(default_factory=dict)  # node name -> channel map
    spaces: list[Space] = field(default_factory=list)
    graph: nx.Graph = field(default_factory=nx.Graph)
    blocked: dict[int, str] = field(default_factory=dict)  # space id -> reason
    consumers: list[str] = field(default_factory=list)  # conv/linear nodes whose inputs shrink
    followers: list[str] = field(default_factory=list)  # BN / depthwise nodes whose channels shrink
    # dims of a node's tensor that carry its channel map (row-major): (1,) for NCHW, (3,) after a
    # channels-last permute, (1, 2) inside a channel shuffle's (N, g, C/g, H, W) view
    cdims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    pieces: dict[str, list[list[Entry]]] = field(default_factory=dict)  # chunk/split node -> maps per piece

    def cdim(self, node) -> int | None:
        """The single channel dim of ``node``, or None (no channel dim, or several)."""
        dims = self.cdims.get(node.name) if isinstance(node, fx.Node) else None
        if dims is None:
            return channel_dim(node) if isinstance(node, fx.Node) else None
        return dims[0] if len(dims) == 1 else None

    def components(self) -> list[frozenset[tuple[int, int]]]:
        """Prunable units: coupled channel sets that touch no blocked space."""
        out = []
        for comp in nx.connected_components(self.graph):
            if not any(s in self.blocked for s, _ in comp):
                out.append(frozenset(comp))
        return out

    def space_groups(self) -> list[set[int]]:
        """Spaces coupled by any channel: pruned at one ratio."""
        g = nx.Graph()
        g.add_nodes_from(s.id for s in self.spaces)
        for a, b in self.graph.edges:
            g.add_edge(a[0], b[0])
        return [set(c) for c in nx.connected_components(g)]


def channel_dim(node: fx.Node) -> int | None:
    s = meta.shape(node)
    if s is None or len(s) < 2:
        return None
    return 1 if len(s) in (3, 4, 5) and not _is_token_layout(node) else len(s) - 1


def _is_token_layout(node: fx.Node) -> bool:
    return node.meta.get("fxcompress.channels_last", False)


def analyse(gm: fx.GraphModule) -> ChannelGraph:
    """Build the channel graph of ``gm`` (which must carry shapes)."""
    cg = ChannelGraph()
    for n in gm.graph.nodes:
        cg.maps[n.name] = _transfer(gm, n, cg)
        if n.name not in cg.cdims:
            src = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
            if src is not None and cg.maps[n.name] and cg.maps[n.name] == cg.maps.get(src.name):
                cg.cdims[n.name] = cg.cdims[src.name]  # pass-through ops keep the layout
            else:
                d = channel_dim(n)
                cg.cdims[n.name] = (d,) if d is not None else ()
    return cg


def _new_space(cg: ChannelGraph, node: fx.Node, size: int) -> list[Entry]:
    s = Space(len(cg.spaces), node.name, size)
    cg.spaces.append(s)
    entries = [(s.id, i) for i in range(size)]
    cg.graph.add_nodes_from(entries)
    return entries


def _block(cg: ChannelGraph, entries, reason: str) -> None:
    for e in entries or ():
        if e is not None:
            cg.blocked.setdefault(e[0], reason)


def _fixed(node: fx.Node) -> list[Entry]:
    d = channel_dim(node)
    return [None] * meta.shape(node)[d] if d is not None else []


def _map_of(cg: ChannelGraph, a) -> list[Entry] | None:
    return cg.maps.get(a.name) if isinstance(a, fx.Node) else None


def _transfer(gm: fx.GraphModule, n: fx.Node, cg: ChannelGraph) -> list[Entry]:
    if n.op in ("placeholder", "get_attr"):
        return _fixed(n) if meta.shape(n) is not None else []
    if n.op == "output":
        for a in n.all_input_nodes:
            _block(cg, cg.maps.get(a.name), "reaches the model output")
        return []
    src = n.args[0] if n.args else None
    inp = _map_of(cg, src)
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        if type(m) is nn.Conv2d or type(m) is nn.Linear:
            if isinstance(m, nn.Conv2d) and m.groups > 1:
                if m.groups == m.in_channels == m.out_channels:
                    cg.followers.append(n.name)
                    return list(inp)
                _block(cg, inp, f"grouped conv '{n.target}' (groups={m.groups})")
                out = _new_space(cg, n, m.out_channels)
                _block(cg, out, f"grouped conv '{n.target}' (groups={m.groups})")
                return out
            if isinstance(m, nn.Linear) and cg.cdim(src) != len(meta.shape(src)) - 1:
                _block(cg, inp, f"Linear '{n.target}' over a non-channel dim")
            cg.consumers.append(n.name)
            cg.cdims[n.name] = (1,) if isinstance(m, nn.Conv2d) else (len(meta.shape(n)) - 1,)
            return _new_space(cg, n, m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        if isinstance(m, NORMS):
            cg.followers.append(n.name)
            return list(inp)
        if isinstance(m, PASS_MODULES):
            return list(inp)
        if isinstance(m, nn.Flatten):
            return _flatten(cg, n, src, inp, m.start_dim)
    elif n.op == "call_function":
        if n.target in PASS_FUNCTIONS or is_stochastic_depth_eval(n):
            return list(inp)
        if n.target in ELEMENTWISE:
            return _elementwise(cg, n)
        if n.target is torch.cat:
            return _cat(cg, n)
        if n.target is torch.flatten:
            return _flatten(cg, n, src, inp, n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0))
        if n.target is F.batch_norm:
            cg.followers.append(n.name)
            return list(inp)
        if n.target in (torch.reshape,):
            return _view(cg, n, inp)
        if n.target in (torch.transpose, torch.permute):
            return _permute(cg, n, inp)
        if n.target in (torch.chunk, torch.split):
            return _split(cg, n, inp)
        if n.target is operator.getitem and isinstance(src, fx.Node) and src.name in cg.pieces:
            cg.cdims[n.name] = cg.cdims[src.name]
            return list(cg.pieces[src.name][n.args[1]])
    elif n.op == "call_method":
        if n.target in PASS_METHODS:
            return list(inp)
        if n.target in ELEMENTWISE_METHODS:
            return _elementwise(cg, n)
        if n.target == "mean" and _reduces_spatial_only(n):
            return list(inp)
        if n.target == "flatten":
            return _flatten(cg, n, src, inp, n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0))
        if n.target == "size":
            return []
        if n.target in ("view", "reshape"):
            return _view(cg, n, inp)
        if n.target in ("transpose", "permute"):
            return _permute(cg, n, inp)
        if n.target in ("chunk", "split"):
            return _split(cg, n, inp)
    # No rule: block every space flowing in; the output's layout is unknown (an empty map).
    for a in n.all_input_nodes:
        _block(cg, cg.maps.get(a.name), f"no pruning rule for node '{n.name}' ({getattr(n.target, '__name__', n.target)})")
    cg.cdims[n.name] = ()
    return []


def _reduces_spatial_only(n: fx.Node) -> bool:
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    nd = len(meta.shape(n.args[0]) or ())
    return bool(dims) and all(d % nd >= 2 for d in dims)


def _elementwise(cg: ChannelGraph, n: fx.Node) -> list[Entry]:
    """``a (op) b``: operands spanning the channel dim are coupled index by index; an operand of
    channel size 1 broadcasts (SE gates after pooling have full width and are coupled)."""
    out = meta.shape(n)
    operands = [a for a in n.args[:2] if isinstance(a, fx.Node)]
    d = next((cg.cdim(a) for a in operands if meta.shape(a) == out), channel_dim(n))
    cg.cdims[n.name] = (d,) if d is not None else ()
    if d is None:
        for a in operands:
            _block(cg, cg.maps.get(a.name), f"elementwise '{n.name}' without a channel dimension")
        return []
    width, full = out[d], []
    for a in operands:
        s = meta.shape(a)
        if s is not None and len(s) == len(out) and s[d] == width and len(cg.maps[a.name]) == width:
            full.append(cg.maps[a.name])
        elif s is not None and (len(out) - len(s) > d or (len(s) == len(out) and s[d] == 1)):
            continue  # does not vary along channels
        else:
            for b in operands:
                _block(cg, cg.maps.get(b.name), f"elementwise '{n.name}' broadcasts a per-channel operand")
            return [None] * width
    if not full:
        return [None] * width
    result = list(full[0])
    for m in full[1:]:
        for i, (x, y) in enumerate(zip(result, m)):
            if x is not None and y is not None:
                cg.graph.add_edge(x, y)
            elif x is not None or y is not None:
                _block(cg, [x, y], f"'{n.name}' combines prunable and fixed channels")
                result[i] = x or y
    return result


def _cat(cg: ChannelGraph, n: fx.Node) -> list[Entry]:
    parts = n.args[0]
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    d = cg.cdim(parts[0]) if parts else None
    nd = len(meta.shape(n))
    if d is None or dim % nd != d:
        for p in parts:
            _block(cg, cg.maps.get(p.name), f"cat '{n.name}' along a non-channel dim")
        return _fixed(n)
    out: list[Entry] = []
    for p in parts:
        m = cg.maps.get(p.name) or []
        if len(m) != meta.shape(p)[d] or cg.cdim(p) != d:
            for q in parts:
                _block(cg, cg.maps.get(q.name), f"cat '{n.name}' of a tensor whose channel layout is unknown")
            cg.cdims[n.name] = ()
            return []
        out += m
    return out


def _flatten(cg: ChannelGraph, n: fx.Node, src: fx.Node, inp: list[Entry], start_dim: int) -> list[Entry]:
    s = meta.shape(src)
    if start_dim % len(s) != 1 or cg.cdim(src) != 1:
        _block(cg, inp, f"flatten '{n.name}' from dim {start_dim}")
        return _fixed(n)
    block = 1
    for x in s[2:]:
        block *= x
    return [e for e in inp for _ in range(block)]


def _dims_arg(n: fx.Node, start: int = 1) -> tuple:
    args = n.args[start:]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args) if args else tuple(n.kwargs.get("shape", n.kwargs.get("dims", ())))


def _view(cg: ChannelGraph, n: fx.Node, inp: list[Entry]) -> list[Entry]:
    """Views that split the channel dim into (g, C/g) or merge it back: the map is row-major either way."""
    src = n.args[0]
    si, so = meta.shape(src), meta.shape(n)
    dims = cg.cdims.get(src.name, ())
    if dims == (1,) and len(so) == len(si) + 1 and so[0] == si[0] and so[1] * so[2] == si[1] and so[3:] == si[2:]:
        # (N, C) -> (N, g, C/g): after pruning the view recomputes the grid from the new C, so the
        # g entries of each column must go together for the grid (and any shuffle) to keep its meaning
        g, k = so[1], so[2]
        for j in range(k):
            column = [inp[i * k + j] for i in range(g)]
            if all(e is not None for e in column):
                for e in column[1:]:
                    cg.graph.add_edge(column[0], e)
            elif any(e is not None for e in column):
                _block(cg, column, f"view '{n.name}' groups prunable with fixed channels")
        cg.cdims[n.name] = (1, 2)
        return list(inp)
    if dims == (1, 2) and len(so) == len(si) - 1 and so[0] == si[0] and so[1] == si[1] * si[2] and so[2:] == si[3:]:
        cg.cdims[n.name] = (1,)
        return list(inp)
    if dims == (1,) and len(so) == 2 and so[0] == si[0]:  # x.view(N, -1): a flatten
        return _flatten(cg, n, src, inp, 1)
    if si == so:
        cg.cdims[n.name] = dims
        return list(inp)
    _block(cg, inp, f"view '{n.name}' {tuple(si)} -> {tuple(so)} reshapes channels")
    cg.cdims[n.name] = ()
    return _fixed(n)


def _permute(cg: ChannelGraph, n: fx.Node, inp: list[Entry]) -> list[Entry]:
    src = n.args[0]
    nd = len(meta.shape(src))
    if n.target in ("transpose", torch.transpose):
        a, b = (x % nd for x in _dims_arg(n)[:2])
        order = list(range(nd))
        order[a], order[b] = order[b], order[a]
    else:
        order = [x % nd for x in _dims_arg(n)]
    dims = cg.cdims.get(src.name, ())
    new_dims = tuple(order.index(d) for d in dims)
    if len(dims) <= 1 or list(new_dims) == sorted(new_dims):
        cg.cdims[n.name] = tuple(sorted(new_dims)) if len(dims) > 1 else new_dims
        return list(inp)
    # the channel dims themselves are reordered (channel shuffle): permute the row-major map
    shape = [meta.shape(src)[d] for d in dims]
    idx = torch.arange(len(inp)).reshape(shape)
    order_new = sorted(new_dims)
    moved = idx.permute([new_dims.index(x) for x in order_new])  # old channel axis at each new position
    cg.cdims[n.name] = tuple(order_new)
    return [inp[i] for i in moved.flatten().tolist()]


def _split(cg: ChannelGraph, n: fx.Node, inp: list[Entry]) -> list[Entry]:
    src = n.args[0]
    d = cg.cdim(src)
    how = n.args[1] if len(n.args) > 1 else n.kwargs.get("chunks", n.kwargs.get("split_size_or_sections", n.kwargs.get("split_size")))
    dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)
    nd = len(meta.shape(src))
    if d is None or dim % nd != d:
        _block(cg, inp, f"'{n.name}' splits a non-channel dim")
        return []
    width = len(inp)
    if n.target not in ("chunk", torch.chunk) or width % how:
        # split sizes are constants in the graph and would not follow a pruned width
        _block(cg, inp, f"'{n.name}' splits channels into fixed sizes")
        sizes = [how] * (width // how) if isinstance(how, int) else list(how)
    else:
        sizes = [width // how] * how
    pieces, start = [], 0
    for size in sizes:
        pieces.append(inp[start:start + size])
        start += size
    if n.target in ("chunk", torch.chunk) and not width % how:
        # chunk recomputes equal pieces from the pruned width: prune every piece at the same positions
        for piece in pieces[1:]:
            for a, b in zip(pieces[0], piece):
                if a is not None and b is not None:
                    cg.graph.add_edge(a, b)
                elif a is not None or b is not None:
                    _block(cg, [a, b], f"chunk '{n.name}' pairs prunable with fixed channels")
    cg.pieces[n.name] = pieces
    cg.cdims[n.name] = (d,)
    return []
