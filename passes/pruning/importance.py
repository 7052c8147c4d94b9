r"""Importance of channels and heads: one score per ``(space, index)``, aggregated over a unit.

- ``l1`` / ``l2``: the norm of the producing weight row (a head: all its q, k, v rows and
  out-projection columns).
- ``bn_scale``: ``|gamma|`` of the BatchNorm that normalises the channel (Liu et al. 2017, network
  slimming); a unit no BatchNorm scales is kept.
- ``taylor``: first-order Taylor, :math:`\sum (w \cdot \partial L / \partial w)^2` over the row,
  accumulated over batches of labelled data (Molchanov et al. 2019, "Importance Estimation for
  Neural Network Pruning").
- ``random``: a seeded baseline.

A unit's score is the mean, sum or max over its coupled entries.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compiler.errors import PruningError

from .channels import ChannelGraph

IMPORTANCE = ("bn_scale", "l1", "l2", "random", "taylor")
AGGREGATE = {"mean": lambda v: sum(v) / len(v), "sum": sum, "max": max}


def head_rows(m: nn.Module, grad: bool = False) -> torch.Tensor:
    """(heads, -1): every weight of each head (q, k, v rows, out-projection columns), or their gradients."""
    def get(p: torch.Tensor) -> torch.Tensor:
        return (p.grad if p.grad is not None else torch.zeros_like(p)) if grad else p.detach()

    h, d = m.num_heads, m.head_dim
    if isinstance(m, nn.MultiheadAttention):
        qkv = get(m.in_proj_weight).reshape(3, h, d, -1).transpose(0, 1).flatten(1)
    else:
        qkv = torch.cat([get(p.weight).reshape(h, d, -1).flatten(1) for p in (m.q_proj, m.k_proj, m.v_proj)], 1)
    return torch.cat([qkv, get(m.out_proj.weight).t().reshape(h, d, -1).flatten(1)], 1)


def _rows(m: nn.Module, kind: str, grad: bool = False) -> torch.Tensor:
    if kind == "heads":
        return head_rows(m, grad)
    w = m.weight.grad if grad else m.weight.detach()
    return (w if w is not None else torch.zeros_like(m.weight)).flatten(1)


def entry_scores(gm: fx.GraphModule, cg: ChannelGraph, importance: str, *, seed: int = 0,
                 data: Iterable | None = None, loss_fn: Callable | None = None) -> dict[tuple[int, int], float]:
    """A score per prunable ``(space, index)``; entries missing from the result are not scored."""
    if importance == "random":
        gen = torch.Generator().manual_seed(seed)
        return {(s.id, i): v for s in cg.spaces for i, v in enumerate(torch.rand(s.size, generator=gen).tolist())}
    if importance == "bn_scale":
        return _bn_scales(gm, cg)
    if importance == "taylor":
        _accumulate_grads(gm, data, loss_fn)
    out = {}
    for s in cg.spaces:
        m = gm.get_submodule(s.path)
        if importance == "taylor":
            v = (_rows(m, s.kind) * _rows(m, s.kind, grad=True)).pow(2).sum(1)
        else:
            v = _rows(m, s.kind).norm(p=1 if importance == "l1" else 2, dim=1)
        out.update({(s.id, i): x for i, x in enumerate(v.tolist())})
    if importance == "taylor":
        gm.zero_grad(set_to_none=True)
    return out


def unit_score(unit, scores: dict, aggregate: str) -> float:
    vals = [scores[e] for e in unit if e in scores]
    return AGGREGATE[aggregate](vals) if vals else math.inf


def _accumulate_grads(gm: fx.GraphModule, data: Iterable | None, loss_fn: Callable | None) -> None:
    if data is None:
        raise PruningError("importance='taylor' needs data: pass data=[(inputs, targets), ...] (a few labelled "
                           "batches) to prune_channels; pipeline files cannot carry data, use a PassManager in Python")
    loss_fn = loss_fn or F.cross_entropy
    gm.zero_grad(set_to_none=True)
    flags = {p: p.requires_grad for p in gm.parameters()}
    for p in flags:
        p.requires_grad_(True)
    batches = 0
    try:
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise PruningError(f"importance='taylor' needs (inputs, targets) batches, got a {type(batch).__name__}")
            x, y = batch
            with torch.enable_grad():  # the pass manager runs passes under no_grad
                loss_fn(gm(*(x if isinstance(x, (tuple, list)) else (x,))), y).backward()
            batches += 1
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    if not batches:
        raise PruningError("importance='taylor' got an empty data iterable")


def _bn_scales(gm: fx.GraphModule, cg: ChannelGraph) -> dict[tuple[int, int], float]:
    out = {}
    nodes = {n.name: n for n in gm.graph.nodes}
    for name in cg.followers:
        n = nodes[name]
        m = gm.get_submodule(n.target) if n.op == "call_module" else None
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            for p, e in enumerate(cg.maps[n.args[0].name]):
                if e is not None:
                    out[e] = abs(m.weight[p].item())
    return out
