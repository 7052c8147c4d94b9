"""Factors -> ordinary layers: the graph side of factorization.

Every chain is made of standard ``nn.Conv2d`` / ``nn.Linear`` layers (plus ``TTLinear`` for TT
linears, itself reshape + matmul), so it traces, exports to ONNX and runs on any backend. The
original layer's stride, padding, dilation and padding mode go to the spatial factor(s); its bias
goes to the last factor.
"""
from __future__ import annotations

import torch
from torch import nn

from compiler.ops import TTLinear

SEPARABLE = ("spatial_svd", "cp", "tt")  # methods that split the kernel into (kh x 1) and (1 x kw) convs


class FactorChain(nn.Sequential):
    """The layers one factorization put in place of one layer (its submodule in the graph module;
    the graph calls each factor itself). The type marks the factors, so a budget planned again on the
    result (a later stage of a progressive plan) does not factorize a factor."""


def explicit_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Per-axis symmetric padding of ``conv``; None for an asymmetric 'same' (even kernel)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)


def _conv(w: torch.Tensor, *, stride=1, padding=0, dilation=1, groups=1, bias=None, padding_mode="zeros") -> nn.Conv2d:
    out_c, in_per_group, kh, kw = w.shape
    conv = nn.Conv2d(in_per_group * groups, out_c, (kh, kw), stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=bias is not None, padding_mode=padding_mode)
    with torch.no_grad():
        conv.weight.copy_(w)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _linear(w: torch.Tensor, bias=None) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def build_chain(method: str, layer: nn.Module, factors: list[torch.Tensor]) -> list[nn.Module]:
    """The layers that replace ``layer``, in order. A grouped conv's factors are its groups' factors
    stacked along the output axis (``decompose.grouped``), so every factor is a conv with the same
    groups; CP's depthwise factors already have one group per stacked rank."""
    bias = layer.bias.detach() if layer.bias is not None else None
    if isinstance(layer, nn.Linear):
        if method == "svd":
            return [_linear(factors[0]), _linear(factors[1], bias)]
        if method == "tt":
            return [TTLinear(factors, bias)]
        raise ValueError(f"no Linear form for method '{method}'")

    sh, sw = layer.stride
    dh, dw = layer.dilation
    mode = layer.padding_mode
    g = layer.groups
    # 'same' becomes explicit numbers where symmetric: onnxruntime rejects SAME auto-padding with dilation
    padding = explicit_padding(layer) or layer.padding
    spatial = dict(stride=layer.stride, padding=padding, dilation=layer.dilation, padding_mode=mode, groups=g)
    if method == "svd":
        w1, w2 = factors
        return [_conv(w1, **spatial), _conv(w2, bias=bias, groups=g)]
    if method == "tucker2":
        first, core, last = factors
        return [_conv(first, groups=g), _conv(core, **spatial), _conv(last, bias=bias, groups=g)]
    ph, pw = padding
    vert = dict(stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), padding_mode=mode)
    horiz = dict(stride=(1, sw), padding=(0, pw), dilation=(1, dw), padding_mode=mode)
    if method == "spatial_svd":
        v, h = factors
        return [_conv(v, groups=g, **vert), _conv(h, bias=bias, groups=g, **horiz)]
    if method == "cp":
        first, v, h, last = factors
        r = first.shape[0]  # all groups' ranks
        return [_conv(first, groups=g), _conv(v, groups=r, **vert), _conv(h, groups=r, **horiz), _conv(last, bias=bias, groups=g)]
    if method == "tt":
        first, v, h, last = factors
        return [_conv(first, groups=g), _conv(v, groups=g, **vert), _conv(h, groups=g, **horiz), _conv(last, bias=bias, groups=g)]
    raise ValueError(f"no Conv2d form for method '{method}'")
