"""``nn.MultiheadAttention`` and our pruned ``Attention``, lowered to GEMMs, copies and rows kernels.

Self-attention without masks and without returned weights (what ViT calls), per head h::

    q, k, v = x W_q^T + b_q, x W_k^T + b_k, x W_v^T + b_v         # one GEMM for the three (MHA)
    y = concat_h(softmax((q_h / sqrt(D)) k_h^T) v_h) W_o^T + b_o

The head split is a strided copy (the 1/sqrt(D) scale folded into q's), ``k^T`` is a relabelling
that the batched matmul reads through strides, and softmax runs over rows. Other calls (masks,
cross-attention, returned weights) fall back to torch.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from compiler.ops import Attention

from .lower import Lowering, Value
from .layers import linear
from .ops import eltwise, matmul, rows


def _projections(m: nn.Module) -> list[nn.Linear]:
    if isinstance(m, Attention):
        return [m.q_proj, m.k_proj, m.v_proj]
    e = m.embed_dim
    out = []
    for i in range(3):
        lin = nn.Linear(e, e, bias=m.in_proj_bias is not None)
        with torch.no_grad():
            lin.weight.copy_(m.in_proj_weight[i * e:(i + 1) * e])
            if m.in_proj_bias is not None:
                lin.bias.copy_(m.in_proj_bias[i * e:(i + 1) * e])
        out.append(lin)
    return out


def lower_attention(lw: Lowering, n: fx.Node, m: nn.Module) -> tuple | None:
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    a = {k: n.args[i] for i, k in enumerate(names) if i < len(n.args)} | dict(n.kwargs)
    if not (a["query"] is a["key"] is a["value"]) or a.get("key_padding_mask") is not None \
            or a.get("attn_mask") is not None or a.get("need_weights", True) or a.get("is_causal"):
        return None
    if isinstance(m, nn.MultiheadAttention) and (not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn):
        return None
    x = lw.arg(a["query"])
    if not isinstance(x, Value) or len(x.shape) != 3:
        return None
    if not m.batch_first:  # (L, N, E) -> (N, L, E): a relabelling
        x = lw.alias(x, (x.shape[1], x.shape[0], x.shape[2]), tuple((1, 0, 2).index(d) for d in x.order))
    nb, length, _ = x.shape
    h, d = m.num_heads, m.head_dim
    heads = []
    for i, lin in enumerate(_projections(m)):
        p = linear(lw, n, lin, x, None, None)  # (N, L, H*D), contiguous
        split = lw.new((nb, h, length, d), (0, 1, 2, 3))
        # (N, L, H, D) read as (N, H, L, D): strides of the contiguous projection, dims 1 and 2 swapped
        strides = [length * h * d, d, h * d, 1]
        heads.append(eltwise(lw, n, f"x*({d ** -0.5!r}f)" if i == 0 else "x", split, p, a_strides=strides))
    q, k, v = heads
    kt = lw.alias(k, (nb, h, d, length), (0, 1, 3, 2))
    scores = matmul(lw, n, q, kt, (nb, h, length, length))
    ctx = matmul(lw, n, rows(lw, n, scores, "softmax"), v, (nb, h, length, d))
    merged = eltwise(lw, n, "x", lw.new((nb, length, h, d), (0, 1, 2, 3)), ctx,
                     a_strides=[h * length * d, d, length * d, 1])
    merged = lw.alias(merged, (nb, length, h * d), (0, 1, 2))
    y = linear(lw, n, m.out_proj, merged, None, None)
    if not m.batch_first:
        y = lw.alias(y, (length, nb, y.shape[2]), tuple((1, 0, 2).index(dd) for dd in y.order))
    return (y, None)
