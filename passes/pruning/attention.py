"""Head-wise pruning of attention layers (``nn.MultiheadAttention`` and our ``Attention``).

An attention layer's heads form a space of their own: unit ``h`` is head ``h``'s rows of the q, k
and v projections and its columns of the output projection. Removing a head leaves the embedding
width alone, so the layer's input and output keep their maps (fixed here: the residual stream is
not pruned through attention). A pruned ``nn.MultiheadAttention`` becomes an ``Attention``, which
allows ``num_heads * head_dim != embed_dim``.

The masking oracle zeroes a removed head's value rows: its output ``softmax(q k^T) v_h`` is then
exactly zero, as if the head were gone.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from compiler import meta
from compiler.graph import set_submodule
from compiler.ops import Attention

from .channels import ChannelGraph, Entry

ATTENTION = (nn.MultiheadAttention, Attention)


def _operands(n: fx.Node) -> list:
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    return [n.args[i] if i < len(n.args) else n.kwargs.get(k) for i, k in enumerate(names)]


def refusal(m: nn.Module, n: fx.Node) -> str | None:
    """Why this attention call's heads cannot be pruned, or None."""
    q, k, v, kpm, _, mask = _operands(n)
    if kpm is not None or mask is not None or n.kwargs.get("is_causal"):
        return f"attention '{n.target}' is called with a mask"
    if isinstance(m, nn.MultiheadAttention) and (not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn):
        return f"attention '{n.target}' has separate k/v widths or bias_k/add_zero_attn"
    if m.num_heads < 2:
        return f"attention '{n.target}' has a single head"
    return None


def attention(cg: ChannelGraph, gm: fx.GraphModule, n: fx.Node, m: nn.Module) -> list[Entry]:
    """Give the layer a head space; its inputs are consumed at full width and its output is fixed."""
    for a in n.all_input_nodes:
        cg.block(cg.maps.get(a.name), f"attention '{n.target}' keeps its embedding width")
    heads = cg.new_space(n, m.num_heads, n.target, kind="heads")
    reason = refusal(m, n)
    if reason:
        cg.block(heads, reason)
    q = _operands(n)[0]
    nd = len(meta.shape(q))
    cg.pieces[n.name] = [[None] * m.embed_dim, []]  # (output, weights)
    cg.cdims[n.name] = (nd - 1,)
    return []


def _value_rows(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The value projection's weight and bias, and the offset of head 0's rows in them."""
    if isinstance(m, Attention):
        return m.v_proj.weight, m.v_proj.bias, 0
    return m.in_proj_weight, m.in_proj_bias, 2 * m.embed_dim


def shrink_heads(gm: fx.GraphModule, path: str, keep: list[int]) -> None:
    m = gm.get_submodule(path)
    if len(keep) == m.num_heads:
        return
    full = Attention.from_mha(m) if isinstance(m, nn.MultiheadAttention) else m
    set_submodule(gm, path, full.select_heads(keep))


def mask_heads(gm: fx.GraphModule, path: str, drop: list[int]) -> None:
    """Oracle: zero the value rows of ``drop`` in place (on a copy the caller owns)."""
    m = gm.get_submodule(path)
    w, b, off = _value_rows(m)
    d = m.head_dim
    with torch.no_grad():
        for h in drop:
            w[off + h * d: off + (h + 1) * d] = 0
            if b is not None:
                b[off + h * d: off + (h + 1) * d] = 0
