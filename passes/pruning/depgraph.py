r"""Channel dependency analysis over an fx graph with shapes, as a networkx graph.

Every conv/linear output creates a *space* of channels, every attention layer a space of heads
(``attention.py``). Each tensor carries a *channel map* (``channels.py``) that ops move
(``rules.py``): pass-through ops copy it, ``cat`` concatenates it (offsets come for free),
``flatten`` repeats each entry over the flattened spatial block, depthwise convs and norms follow
their input, slices and splits take part of it.

Ops that combine tensors elementwise (residual ``add``, SE-style ``x * gate``) *couple* channels:
an edge joins the two ``(space, index)`` nodes, and so do chunks, grouped convs and GroupNorm (the
same position in every group), channel-shuffle views and pixel shuffle. The connected components
are the units of pruning. Spaces that reach the model output, or meet an op without a rule, are
*blocked*: no guess is made through unknown ops, and the report says which op blocked what.

Index-level nodes make offsets exact by construction: a ``cat`` followed by an ``add`` couples
channel 70 of the concat with channel 70 of the other operand, whichever space that is.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compiler import meta
from compiler.graph import activation_of, is_metadata_read, is_stochastic_depth_eval, value_users

from . import rules
from .attention import ATTENTION, attention
from .channels import ChannelGraph, Entry, Space, channel_dim

__all__ = ["ChannelGraph", "Entry", "Space", "analyse", "channel_dim"]

# channel-preserving ops besides the activations (compiler.graph.activation_of, matched first)
PASS_MODULES = (nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PASS_FUNCTIONS = {F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.hardtanh}
PASS_METHODS = {"contiguous", "clone"}
ELEMENTWISE_METHODS = {"add", "add_", "mul", "mul_", "sub"}
REDUCTIONS = {"mean", "sum", "amax"}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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
    _check_params(gm, cg)
    return cg


def _check_params(gm: fx.GraphModule, cg: ChannelGraph) -> None:
    """A stored tensor shrinks with its channels only if every use of it is one we followed, and
    all of them agree."""
    by_target: dict[str, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            by_target.setdefault(n.target, []).append(n)
    for uses in by_target.values():
        followed = [u for u in uses if u.name in cg.params]
        if not followed:
            continue
        first = cg.params[followed[0].name]
        if len(followed) < len(uses) or any(len(value_users(u)) != 1 for u in uses):
            for u in followed:
                cg.block(cg.params.pop(u.name)[1], f"'{u.target}' is also used where its channels are not followed")
            continue
        for u in followed[1:]:
            dim, entries = cg.params[u.name]
            if dim != first[0] or len(entries) != len(first[1]):
                cg.block(entries + first[1], f"'{u.target}' is used with two channel layouts")
            else:
                cg.couple(first[1], entries, u.target)


def _transfer(gm: fx.GraphModule, n: fx.Node, cg: ChannelGraph) -> list[Entry]:
    if n.op in ("placeholder", "get_attr"):
        return cg.fixed(n) if meta.shape(n) is not None else []
    if n.op == "output":
        for a in n.all_input_nodes:
            cg.block(cg.maps.get(a.name), "reaches the model output")
        return []
    if is_metadata_read(n):  # a shape read (a batch size kept symbolic) carries no channels
        return []
    src = n.args[0] if n.args else None
    inp = cg.maps.get(src.name) if isinstance(src, fx.Node) else None
    if inp is not None and activation_of(gm, n) is not None:
        return list(inp)
    if n.op == "call_module":
        out = _module(gm, n, gm.get_submodule(n.target), src, inp, cg)
    elif n.op == "call_function":
        out = _function(n, src, inp, cg)
    else:
        out = _method(n, src, inp, cg)
    if out is not None:
        return out
    # No rule: block every space flowing in; the output's layout is unknown (an empty map).
    for a in n.all_input_nodes:
        cg.block(cg.maps.get(a.name), f"no pruning rule for node '{n.name}' ({getattr(n.target, '__name__', n.target)})")
    cg.cdims[n.name] = ()
    return []


def _module(gm, n: fx.Node, m: nn.Module, src, inp, cg: ChannelGraph) -> list[Entry] | None:
    if type(m) is nn.Conv2d and m.groups > 1:
        if m.groups == m.in_channels == m.out_channels:  # depthwise: output channel c is input channel c
            cg.followers.append(n.name)
            return list(inp)
        cg.couple_pieces(inp, m.groups, n.name)  # every group keeps the same input positions...
        cg.consumers.append(n.name)
        out = cg.new_space(n, m.out_channels, n.target)
        cg.couple_pieces(out, m.groups, n.name)  # ...and the same output positions: groups stay equal
        return out
    if type(m) is nn.Conv2d or type(m) is nn.Linear:
        if isinstance(m, nn.Linear) and cg.cdim(src) != len(meta.shape(src)) - 1:
            cg.block(inp, f"Linear '{n.target}' over a non-channel dim")
        cg.consumers.append(n.name)
        cg.cdims[n.name] = (1,) if isinstance(m, nn.Conv2d) else (len(meta.shape(n)) - 1,)
        return cg.new_space(n, m.out_channels if isinstance(m, nn.Conv2d) else m.out_features, n.target)
    if isinstance(m, NORMS):
        cg.followers.append(n.name)
        return list(inp)
    if isinstance(m, nn.LayerNorm):
        return rules.norm(cg, n, src, inp, "layer_norm", m.normalized_shape)
    if isinstance(m, nn.GroupNorm):
        return rules.norm(cg, n, src, inp, "group_norm", m.num_groups)
    if isinstance(m, ATTENTION):
        return attention(cg, gm, n, m)
    if isinstance(m, PASS_MODULES):
        return list(inp)
    if isinstance(m, nn.Flatten):
        return rules.flatten(cg, n, src, inp, m.start_dim, m.end_dim)
    if isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)) and cg.cdim(src) == 1:
        shuffle = isinstance(m, nn.PixelShuffle)
        return rules.pixel_shuffle(cg, n, inp, m.upscale_factor if shuffle else m.downscale_factor, not shuffle)
    return None


def _function(n: fx.Node, src, inp, cg: ChannelGraph) -> list[Entry] | None:
    t = n.target
    if t in PASS_FUNCTIONS or is_stochastic_depth_eval(n):
        return list(inp)
    if t in rules.ELEMENTWISE:
        return rules.elementwise(cg, n)
    if t is torch.cat:
        return rules.cat(cg, n)
    if t is torch.flatten:
        return rules.flatten(cg, n, src, inp, *_flatten_dims(n))
    if t is F.batch_norm:
        cg.followers.append(n.name)
        return list(inp)
    if t is F.layer_norm:
        return rules.norm(cg, n, src, inp, "layer_norm", n.args[1] if len(n.args) > 1 else n.kwargs["normalized_shape"])
    if t is F.group_norm:
        return rules.norm(cg, n, src, inp, "group_norm", n.args[1] if len(n.args) > 1 else n.kwargs["num_groups"])
    if t in (torch.mean, torch.sum, torch.amax):
        return rules.reduce(cg, n, src, inp)
    if t is torch.reshape:
        return rules.view(cg, n, inp)
    if t in (torch.transpose, torch.permute):
        return rules.permute(cg, n, inp)
    if t in (torch.chunk, torch.split):
        return rules.split(cg, n, inp)
    if t is torch.narrow:
        return rules.narrow(cg, n, src, inp)
    if t in (F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle, torch.pixel_unshuffle) and cg.cdim(src) == 1:
        return rules.pixel_shuffle(cg, n, inp, n.args[1], t in (F.pixel_unshuffle, torch.pixel_unshuffle))
    if t is operator.getitem and isinstance(src, fx.Node):
        if src.name in cg.pieces:
            cg.cdims[n.name] = cg.cdims[src.name]
            return list(cg.pieces[src.name][n.args[1]])
        if meta.shape(src) is not None:
            return rules.getitem(cg, n, src, inp)
    return None


def _flatten_dims(n: fx.Node) -> tuple[int, int]:
    a = dict(zip(("input", "start_dim", "end_dim"), n.args)) | dict(n.kwargs)
    return a.get("start_dim", 0), a.get("end_dim", -1)


def _method(n: fx.Node, src, inp, cg: ChannelGraph) -> list[Entry] | None:
    t = n.target
    if t in PASS_METHODS:
        return list(inp)
    if t in ELEMENTWISE_METHODS:
        return rules.elementwise(cg, n)
    if t in REDUCTIONS:
        return rules.reduce(cg, n, src, inp)
    if t == "flatten":
        return rules.flatten(cg, n, src, inp, *_flatten_dims(n))
    if t == "size":
        return []
    if t in ("view", "reshape"):
        return rules.view(cg, n, inp)
    if t == "reshape_as" and isinstance(n.args[1], fx.Node):
        # x.flatten(0, 1) -> BatchNorm1d -> .reshape_as(x) (LeViT): back to the shape of a tensor that
        # carries these very channels, so its size follows the pruning with nothing to recount
        out = rules.view(cg, n, inp)
        cg.rewrites.pop(n.name, None)
        if out != cg.maps.get(n.args[1].name):
            cg.block(inp, f"reshape_as '{n.name}' takes the shape of a tensor with other channels")
            return cg.fixed(n)
        return out
    if t in ("transpose", "permute"):
        return rules.permute(cg, n, inp)
    if t in ("chunk", "split"):
        return rules.split(cg, n, inp)
    if t == "narrow":
        return rules.narrow(cg, n, src, inp)
    return None
