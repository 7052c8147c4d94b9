"""How each op moves and couples channel maps (see ``channels.py`` for what a map is).

Each rule takes the graph, the node and its input's map and returns the node's map. Rules never
guess: a case they do not understand blocks the spaces flowing in, with a reason for the report.
Constants that count channels (view sizes, split sizes, slice bounds) are recorded in
``cg.rewrites`` so that shrinking can recount them; this is where offset bugs usually hide.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx

from compiler import meta

from .channels import ChannelGraph, Entry, channel_dim


def elementwise(cg: ChannelGraph, n: fx.Node) -> list[Entry]:
    """``a (op) b``: operands spanning the channel dim are coupled index by index; an operand of
    channel size 1 broadcasts. A stored tensor with full width (a layer scale, a position embedding)
    follows the other operand and is shrunk with it."""
    out = meta.shape(n)
    operands = [a for a in n.args[:2] if isinstance(a, fx.Node)]
    d = next((cg.cdim(a) for a in operands if meta.shape(a) == out and a.op != "get_attr"), channel_dim(n))
    cg.cdims[n.name] = (d,) if d is not None else ()
    if d is None:
        for a in operands:
            cg.block(cg.maps.get(a.name), f"elementwise '{n.name}' without a channel dimension")
        return []
    width, full, params = out[d], [], []
    for a in operands:
        s = meta.shape(a)
        ad = d - (len(out) - len(s)) if s is not None else -1  # broadcasting aligns trailing dims
        if s is not None and (ad < 0 or s[ad] == 1):
            continue  # does not vary along channels
        if s is not None and s[ad] == width and a.op == "get_attr":
            params.append((a, ad))
        elif s is not None and len(s) == len(out) and s[d] == width and len(cg.maps[a.name]) == width:
            full.append(cg.maps[a.name])
        else:
            for b in operands:
                cg.block(cg.maps.get(b.name), f"elementwise '{n.name}' broadcasts a per-channel operand")
            return [None] * width
    result = list(full[0]) if full else [None] * width
    for m in full[1:]:
        result = cg.couple(result, m, n.name)
    for a, ad in params:
        cg.params[a.name] = (ad, result)
    return result


def cat(cg: ChannelGraph, n: fx.Node) -> list[Entry]:
    parts = n.args[0]
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    d = cg.cdim(parts[0]) if parts else None
    nd = len(meta.shape(n))
    if d is None or dim % nd != d:
        for p in parts:
            cg.block(cg.maps.get(p.name), f"cat '{n.name}' along a non-channel dim")
        return cg.fixed(n)
    out: list[Entry] = []
    for p in parts:
        m = cg.maps.get(p.name) or []
        if len(m) != meta.shape(p)[d] or cg.cdim(p) != d:
            for q in parts:
                cg.block(cg.maps.get(q.name), f"cat '{n.name}' of a tensor whose channel layout is unknown")
            cg.cdims[n.name] = ()
            return []
        out += m
    return out


def flatten(cg: ChannelGraph, n: fx.Node, src: fx.Node, inp: list[Entry], start_dim: int, end_dim: int = -1) -> list[Entry]:
    """Flattening dims [start, end]: dims all before or all after the channel dim leave the map as it
    is (the channel dim moves left by what merged before it); starting at the channel dim repeats
    each channel's entry over the block of dims merged after it."""
    s = meta.shape(src)
    start, end, c = start_dim % len(s), end_dim % len(s), cg.cdim(src)
    if c is not None and (end < c or start > c):
        cg.cdims[n.name] = (c - (end - start) if end < c else c,)
        return list(inp)
    if c is None or start != c:
        cg.block(inp, f"flatten '{n.name}' of dims {start}..{end} merges the channel dim {c} into earlier dims")
        return cg.fixed(n)
    cg.cdims[n.name] = (c,)
    return [e for e in inp for _ in range(math.prod(s[c + 1:end + 1]))]


def dims_arg(n: fx.Node, start: int = 1) -> tuple:
    args = n.args[start:]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args) if args else tuple(n.kwargs.get("shape", n.kwargs.get("dims", ())))


def view(cg: ChannelGraph, n: fx.Node, inp: list[Entry]) -> list[Entry]:
    """Views that keep the channel dim, split it into (g, C/g), or merge it back; the map is
    row-major either way. Constant sizes in the view are recounted after pruning."""
    src = n.args[0]
    si, so = meta.shape(src), meta.shape(n)
    dims = cg.cdims.get(src.name, ())
    out = list(inp)
    if si == so:
        cg.cdims[n.name] = dims
    elif dims == (1,) and len(so) == len(si) + 1 and so[0] == si[0] and so[1] * so[2] == si[1] and so[3:] == si[2:]:
        # (N, C) -> (N, g, C/g): after pruning the view has C/g recounted, so the g entries of each
        # column must go together for the grid (and any shuffle) to keep its meaning
        g, k = so[1], so[2]
        for j in range(k):
            column = [inp[i * k + j] for i in range(g)]
            cg.couple([column[0]] * (g - 1), column[1:], n.name)
        cg.cdims[n.name] = (1, 2)
    elif dims == (1, 2) and len(so) == len(si) - 1 and so[0] == si[0] and so[1] == si[1] * si[2] and so[2:] == si[3:]:
        cg.cdims[n.name] = (1,)
    elif dims == (1,) and len(so) == 2 and so[0] == si[0]:  # x.view(N, -1): a flatten
        out = flatten(cg, n, src, inp, 1)
        cg.cdims[n.name] = (1,)
    elif dims == (1,) and len(so) >= 2 and so[:2] == si[:2]:  # spatial dims merged or split
        cg.cdims[n.name] = (1,)
    elif dims == (len(si) - 1,) and so[-1] == si[-1] and math.prod(so[:-1]) == math.prod(si[:-1]):  # channels last
        cg.cdims[n.name] = (len(so) - 1,)
    else:
        cg.block(inp, f"view '{n.name}' {tuple(si)} -> {tuple(so)} reshapes channels")
        cg.cdims[n.name] = ()
        return cg.fixed(n)
    cg.rewrites[n.name] = out
    return out


def permute(cg: ChannelGraph, n: fx.Node, inp: list[Entry]) -> list[Entry]:
    src = n.args[0]
    nd = len(meta.shape(src))
    if n.target in ("transpose", torch.transpose):
        a, b = (x % nd for x in dims_arg(n)[:2])
        order = list(range(nd))
        order[a], order[b] = order[b], order[a]
    else:
        order = [x % nd for x in dims_arg(n)]
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


def split(cg: ChannelGraph, n: fx.Node, inp: list[Entry]) -> list[Entry]:
    """``chunk`` recomputes equal pieces from the pruned width, so every piece loses the same
    positions; ``split`` has its sizes recounted after pruning, so pieces prune independently."""
    src = n.args[0]
    d = cg.cdim(src)
    how = n.args[1] if len(n.args) > 1 else n.kwargs.get("chunks", n.kwargs.get("split_size_or_sections", n.kwargs.get("split_size")))
    dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)
    nd = len(meta.shape(src))
    if d is None or dim % nd != d:
        cg.block(inp, f"'{n.name}' splits a non-channel dim")
        return []
    width = len(inp)
    is_chunk = n.target in ("chunk", torch.chunk)
    if is_chunk:
        if width % how:
            cg.block(inp, f"chunk '{n.name}' of {width} channels into {how} unequal pieces")
        sizes = [math.ceil(width / how)] * (width // math.ceil(width / how))
        sizes += [width - sum(sizes)] if sum(sizes) < width else []
        if not width % how:
            cg.couple_pieces(inp, how, n.name)
    else:
        sizes = list(how) if isinstance(how, (list, tuple)) else [how] * (width // how) + ([width % how] if width % how else [])
        cg.rewrites[n.name] = inp
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    cg.pieces[n.name] = [inp[a:a + s] for a, s in zip(starts, sizes)]
    for piece in cg.pieces[n.name]:
        cg.keep_one_of(piece)
    cg.cdims[n.name] = (d,)
    return []


def index_plan(n: fx.Node, nd: int) -> list | None:
    """For ``x[idx]``: per input dim, what happens (``slice`` object, int, or None for a new axis
    placed before it), or None for an index this rule does not handle (tensors, bools)."""
    idx = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
    if not all(isinstance(i, (slice, int, type(None), type(Ellipsis))) for i in idx) or isinstance(idx, bool):
        return None
    consumed = sum(1 for i in idx if i is not None and i is not Ellipsis)
    full = []
    for i in idx:
        full += [slice(None)] * (nd - consumed) if i is Ellipsis else [i]
    if Ellipsis not in idx:
        full += [slice(None)] * (nd - consumed)
    return full


def getitem(cg: ChannelGraph, n: fx.Node, src: fx.Node, inp: list[Entry]) -> list[Entry]:
    """Basic indexing: slices keep a dim, ints drop one, None adds one; a slice of the channel dim
    takes part of the map and has its bounds recounted after pruning."""
    d = cg.cdim(src)
    nd = len(meta.shape(src) or ())
    plan = index_plan(n, nd)
    if d is None or plan is None:
        cg.block(inp, f"indexing '{n.name}' this rule does not handle")
        cg.cdims[n.name] = ()
        return []
    out_dim, in_dim, new_d, out = 0, 0, None, list(inp)
    for i in plan:
        if i is None:
            out_dim += 1
            continue
        if in_dim == d:
            if isinstance(i, int):
                cg.block(inp, f"'{n.name}' selects a single channel")
                cg.cdims[n.name] = ()
                return []
            if i != slice(None):
                if i.step not in (None, 1):
                    cg.block(inp, f"'{n.name}' slices channels with a step")
                    cg.cdims[n.name] = ()
                    return []
                out = inp[i]
                cg.rewrites[n.name] = inp
                cg.keep_one_of(out)
            new_d = out_dim
        in_dim += 1
        out_dim += 0 if isinstance(i, int) else 1
    cg.cdims[n.name] = (new_d,)
    return out


def narrow(cg: ChannelGraph, n: fx.Node, src: fx.Node, inp: list[Entry]) -> list[Entry]:
    d, nd = cg.cdim(src), len(meta.shape(src))
    dim, start, length = (list(n.args[1:4]) + [None] * 3)[:3]
    if d is None or not all(isinstance(v, int) for v in (dim, start, length)):
        cg.block(inp, f"narrow '{n.name}' with computed bounds")
        return cg.fixed(n)
    cg.cdims[n.name] = (d,)
    if dim % nd != d:
        return list(inp)
    cg.rewrites[n.name] = inp
    out = inp[start % len(inp):start % len(inp) + length]
    cg.keep_one_of(out)
    return out


def pixel_shuffle(cg: ChannelGraph, n: fx.Node, inp: list[Entry], r: int, inverse: bool) -> list[Entry]:
    """Shuffle: output channel c gathers input channels ``c*r^2 ... c*r^2 + r^2 - 1``, which are
    therefore pruned together. Unshuffle: each input channel spreads over ``r^2`` outputs."""
    if inverse:
        return [e for e in inp for _ in range(r * r)]
    out = []
    for c in range(len(inp) // (r * r)):
        block = inp[c * r * r:(c + 1) * r * r]
        cg.couple([block[0]] * (len(block) - 1), block[1:], n.name)
        out.append(block[0] if all(e is not None for e in block) else None)
    return out


def norm(cg: ChannelGraph, n: fx.Node, src: fx.Node, inp: list[Entry], kind: str, arg) -> list[Entry]:
    """LayerNorm over the channel dim, or GroupNorm (every group loses the same positions, so the
    groups stay equal). Both normalise over the channels they keep."""
    shape = meta.shape(src)
    if kind == "layer_norm":
        ok = tuple(arg) == (len(inp),) and cg.cdim(src) == len(shape) - 1
    else:
        ok = cg.cdim(src) == 1 and len(inp) % arg == 0
        if ok:
            cg.couple_pieces(inp, arg, n.name)
    if not ok:
        cg.block(inp, f"{kind} '{n.name}' normalises over more than the channel dim")
        return list(inp)
    cg.followers.append(n.name)
    return list(inp)


def reduce(cg: ChannelGraph, n: fx.Node, src: fx.Node, inp: list[Entry]) -> list[Entry] | None:
    """``mean``/``sum``/``amax`` over dims other than the channel dim keep the map; None (no rule)
    when the channel dim itself is reduced."""
    d, nd = cg.cdim(src), len(meta.shape(src) or ())
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    dims = {dims % nd} if isinstance(dims, int) else {x % nd for x in dims or ()}
    if d is None or not dims or d in dims:
        return None
    keepdim = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
    cg.cdims[n.name] = (d if keepdim else d - sum(x < d for x in dims),)
    return list(inp)


ELEMENTWISE = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul, operator.sub, torch.sub}
