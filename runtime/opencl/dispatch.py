"""Which handler lowers a node: compute ops go to ``ops.py`` (conv and linear to ``layers.py``);
layout ops (views, permutes, cat, slices) are handled here, as relabelling where possible and
strided copies otherwise."""
from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compiler import meta
from compiler.graph import activation_of, is_stochastic_depth_eval
from compiler.ops import Attention, FusedOp

from .attention import lower_attention
from .lower import NHWC, Lowering, Value
from .layers import module_op
from .ops import (BINARY, _constant, contiguous, eltwise, matmul,
                  pool, rows, unary)

Handler = Callable[[Lowering, fx.Node], Value | None]
IDENTITY_MODULES = (nn.Identity, nn.Dropout)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _activation(lw: Lowering, n: fx.Node) -> str | None:
    """The eltwise expression of an activation node (any form, ``compiler.graph.activation_of``)."""
    act = activation_of(lw.gm, n)
    return unary(act) if act is not None else None


def _module(lw: Lowering, n: fx.Node) -> Value | None:
    m = lw.gm.get_submodule(n.target)
    x = lw.arg(n.args[0]) if n.args else None
    if not isinstance(x, Value):
        return None
    if isinstance(m, FusedOp):
        res = lw.arg(n.args[1]) if len(n.args) > 1 else lw.arg(n.kwargs.get("residual"))
        res = res if isinstance(res, Value) else None
        if type(m.op) is nn.Conv1d:
            return _conv1d(lw, n, m.op, x, res, m.activation)
        return module_op(lw, n, m.op, x, res, m.activation)
    if type(m) in (nn.Conv2d, nn.Linear):
        return module_op(lw, n, m, x)
    if type(m) is nn.Conv1d:
        return _conv1d(lw, n, m, x, None, None)
    if isinstance(m, nn.Upsample) and m.mode == "nearest":
        return _upsample_nearest(lw, n, x)
    if (act := _activation(lw, n)) is not None:
        return eltwise(lw, n, act, lw.new(x.shape, x.order), x)
    if isinstance(m, IDENTITY_MODULES):
        return x
    if isinstance(m, (nn.MultiheadAttention, Attention)):
        return lower_attention(lw, n, m)
    if isinstance(m, nn.MaxPool2d) and _pair(m.dilation) == (1, 1) and not m.return_indices:
        return pool(lw, n, x, "max", kernel=_pair(m.kernel_size), stride=_pair(m.stride), padding=_pair(m.padding))
    if isinstance(m, nn.AvgPool2d) and m.divisor_override is None:
        return pool(lw, n, x, "avg", kernel=_pair(m.kernel_size), stride=_pair(m.stride), padding=_pair(m.padding),
                    count_pad=m.count_include_pad)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return pool(lw, n, x, "max" if isinstance(m, nn.AdaptiveMaxPool2d) else "avg", adaptive=True)
    if isinstance(m, nn.Flatten):
        return _view(lw, n, x, meta.shape(n))
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        w = lw.upload(m.weight.detach(), f"{n.target}.weight") if m.weight is not None else None
        b = lw.upload(m.bias.detach(), f"{n.target}.bias") if m.bias is not None else None
        return rows(lw, n, x, "layer_norm", w, b, m.eps)
    if isinstance(m, nn.Softmax) and m.dim is not None and m.dim % len(x.shape) == len(x.shape) - 1:
        return rows(lw, n, x, "softmax")
    if isinstance(m, nn.BatchNorm2d) and not m.training and m.track_running_stats and len(x.shape) == 4:
        return _batch_norm(lw, n, m, x)
    return None


def _conv1d(lw: Lowering, n: fx.Node, m: nn.Conv1d, x: Value, res: Value | None, act: str | None) -> Value | None:
    """A Conv1d over (N, C, L) as the Conv2d over (N, C, 1, L) with a 1 x k kernel (ECA's channel conv)."""
    if len(x.shape) != 3 or m.padding_mode != "zeros" or isinstance(m.padding, str):
        return None
    conv = nn.Conv2d(m.in_channels, m.out_channels, (1, m.kernel_size[0]), stride=(1, m.stride[0]),
                     padding=(0, m.padding[0]), dilation=(1, m.dilation[0]), groups=m.groups, bias=m.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(m.weight.detach().unsqueeze(2))
        if m.bias is not None:
            conv.bias.copy_(m.bias.detach())
    nb, c, length = x.shape
    x4 = lw.alias(contiguous(lw, n, x, (0, 1, 2)), (nb, c, 1, length), (0, 1, 2, 3))
    out_len = meta.shape(n)[2]
    res4 = None
    if res is not None:
        res4 = lw.alias(contiguous(lw, n, res, (0, 2, 1)), (nb, m.out_channels, 1, out_len), NHWC)
    y = module_op(lw, n, conv, x4, res4, act, out_hw=(1, out_len))
    return lw.alias(y, (nb, m.out_channels, out_len), (0, 2, 1)) if y is not None else None  # NHWC memory: N, L, C


def _upsample_nearest(lw: Lowering, n: fx.Node, x: Value) -> Value | None:
    """Nearest upsampling by integer factors: one strided copy, each input pixel read sh x sw times."""
    out_shape = tuple(meta.shape(n))
    if len(x.shape) != 4 or len(out_shape) != 4 or out_shape[2] % x.shape[2] or out_shape[3] % x.shape[3]:
        return None
    nb, c, h, w = x.shape
    sh, sw = out_shape[2] // h, out_shape[3] // w
    out = lw.new(out_shape, x.order)
    so, sa = out.strides(), x.strides()
    # iterate (N, C, H, sh, W, sw): the output's (h * sh + i, w * sw + j) reads input (h, w)
    return eltwise(lw, n, "x", out, x, shape=(nb, c, h, sh, w, sw),
                   out_strides=[so[0], so[1], so[2] * sh, so[2], so[3] * sw, so[3]],
                   a_strides=[sa[0], sa[1], sa[2], 0, sa[3], 0])


def _interpolate(lw: Lowering, n: fx.Node, x: Value) -> Value | None:
    a = dict(zip(("input", "size", "scale_factor", "mode", "align_corners"), n.args)) | dict(n.kwargs)
    if a.get("mode", "nearest") != "nearest" or a.get("antialias"):
        return None
    return _upsample_nearest(lw, n, x)


def _pad(lw: Lowering, n: fx.Node, x: Value) -> Value | None:
    """Constant padding: fill the output, then copy the input into its interior."""
    a = dict(zip(("input", "pad", "mode", "value"), n.args)) | dict(n.kwargs)
    pads, value = list(a["pad"]), a.get("value") or 0.0
    if a.get("mode", "constant") != "constant" or any(p < 0 for p in pads) or _constant(value) is None:
        return None
    out = lw.new(tuple(meta.shape(n)), x.order)
    eltwise(lw, n, _constant(value), out, x, a_strides=[0] * len(x.shape))
    st, offset = out.strides(), 0
    for i in range(len(pads) // 2):  # pads run from the last dim backwards: (left, right, top, bottom, ...)
        offset += pads[2 * i] * st[len(x.shape) - 1 - i]
    return eltwise(lw, n, "x", out, x, out_offset=offset, out_strides=list(st), shape=x.shape)


def _parts(lw: Lowering, n: fx.Node) -> tuple[list[Value], int, tuple[int, ...]] | None:
    """The tensors, dim and output shape of a ``cat`` or ``stack``; None unless all are tensors."""
    parts = lw.arg(n.args[0])
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    if not all(isinstance(p, Value) for p in parts):
        return None
    shape = tuple(meta.shape(n))
    return parts, dim % len(shape), shape


def _stack(lw: Lowering, n: fx.Node) -> Value | None:
    if (found := _parts(lw, n)) is None:
        return None
    parts, dim, shape = found
    out = lw.new(shape, tuple(range(len(shape))))
    st = list(out.strides())
    for i, p in enumerate(parts):
        ps = list(p.strides())
        eltwise(lw, n, "x", out, p, out_offset=i * st[dim], shape=shape[:dim] + (1,) + shape[dim + 1:],
                a_strides=ps[:dim] + [0] + ps[dim:])
    return out


def _reduce_sum(lw: Lowering, n: fx.Node, x: Value) -> Value | None:
    """A sum is the mean times the count."""
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    if dims is None:
        return None
    nd = len(x.shape)
    count = math.prod(x.shape[d % nd] for d in ((dims,) if isinstance(dims, int) else dims))
    mean = _reduce_mean(lw, n, x)
    return eltwise(lw, n, f"x*{float(count)!r}f", mean, mean) if mean is not None else None


def _batch_norm(lw: Lowering, n: fx.Node, m: nn.BatchNorm2d, x: Value) -> Value:
    """Inference BatchNorm left unfolded (it precedes its conv, as in DenseNet): ``x * s + t``."""
    scale = m.running_var.detach().add(m.eps).rsqrt()
    if m.weight is not None:
        scale = scale * m.weight.detach()
    shift = -m.running_mean.detach() * scale + (m.bias.detach() if m.bias is not None else 0)
    s = lw.upload(scale.reshape(1, -1, 1, 1), f"{n.target}: scale")
    t = lw.upload(shift.reshape(1, -1, 1, 1), f"{n.target}: shift")
    y = eltwise(lw, n, "x*y", lw.new(x.shape, x.order), x, s)
    return eltwise(lw, n, "x+y", y, y, t)


def _functional_pool(lw: Lowering, n: fx.Node, x: Value) -> Value | None:
    names = ("input", "kernel_size", "stride", "padding", "dilation" if n.target is F.max_pool2d else "ceil_mode")
    a = {k: n.args[i] for i, k in enumerate(names) if i < len(n.args)} | dict(n.kwargs)
    k = _pair(a["kernel_size"])
    stride, pad = _pair(a.get("stride") or k), _pair(a.get("padding", 0))
    if n.target is F.max_pool2d:
        if _pair(a.get("dilation", 1)) != (1, 1) or a.get("return_indices"):
            return None
        return pool(lw, n, x, "max", kernel=k, stride=stride, padding=pad)
    if a.get("divisor_override") is not None:
        return None
    return pool(lw, n, x, "avg", kernel=k, stride=stride, padding=pad, count_pad=a.get("count_include_pad", True))


def _view(lw: Lowering, n: fx.Node, x: Value, shape) -> Value:
    """A view shares storage when memory is already in logical order; otherwise it copies first."""
    x = contiguous(lw, n, x, tuple(range(len(x.shape)))) if not x.logical_contiguous else x
    return lw.alias(x, tuple(shape), tuple(range(len(shape))))


def _permute(lw: Lowering, n: fx.Node, x: Value, perm) -> Value:
    perm = [p % len(x.shape) for p in perm]
    return lw.alias(x, tuple(x.shape[p] for p in perm), tuple(perm.index(d) for d in x.order))


def _binary(lw: Lowering, n: fx.Node, expr: str) -> Value | None:
    a, b = lw.arg(n.args[0]), lw.arg(n.args[1])
    if not isinstance(a, Value):
        if not isinstance(b, Value) or _constant(a) is None or expr in ("x-y", "x/y"):
            return None
        a, b = b, a  # c + x, c * x
    out_shape = meta.shape(n)
    if isinstance(b, Value):
        full = a if a.shape == tuple(out_shape) else b if b.shape == tuple(out_shape) else None
        order = full.order if full is not None else tuple(range(len(out_shape)))
        if full is b:  # keep the full-shape operand first, the broadcast one second
            a, b = b, a
            expr = {"x-y": "y-x", "x/y": "y/x"}.get(expr, expr)
        return eltwise(lw, n, expr, lw.new(out_shape, order), a, b)
    c = _constant(b)
    return eltwise(lw, n, expr.replace("y", c), lw.new(a.shape, a.order), a) if c is not None else None


def _cat(lw: Lowering, n: fx.Node) -> Value | None:
    if (found := _parts(lw, n)) is None:
        return None
    parts, dim, shape = found
    out = lw.new(shape, parts[0].order)
    start, st = 0, out.strides()
    for p in parts:
        eltwise(lw, n, "x", out, p, out_offset=start * st[dim], shape=p.shape)
        start += p.shape[dim]
    return out


def _slice(lw: Lowering, n: fx.Node, x: Value) -> Value | None:
    """``x[idx]`` with ints and slices: a strided read, copied."""
    idx = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
    if any(i is None or i is Ellipsis for i in idx) or not all(isinstance(i, (int, slice)) for i in idx):
        return None
    st, offset, shape, strides = x.strides(), 0, [], []
    for d, size in enumerate(x.shape):
        i = idx[d] if d < len(idx) else slice(None)
        if isinstance(i, int):
            offset += (i % size) * st[d]
            continue
        a, b, step = i.indices(size)
        offset += a * st[d]
        shape.append(len(range(a, b, step)))
        strides.append(st[d] * step)
    out = lw.new(shape, tuple(range(len(shape))) if len(shape) != 4 else x.order)
    return eltwise(lw, n, "x", out, x, a_strides=strides, a_offset=offset)


def _split(lw: Lowering, n: fx.Node, x: Value) -> tuple[Value, ...] | None:
    how = n.args[1] if len(n.args) > 1 else n.kwargs.get("chunks", n.kwargs.get("split_size_or_sections", n.kwargs.get("split_size")))
    dim = (n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)) % len(x.shape)
    size = x.shape[dim]
    if n.target in ("chunk", torch.chunk):
        step = math.ceil(size / how)
        sizes = [min(step, size - s) for s in range(0, size, step)]
    else:
        sizes = list(how) if isinstance(how, (list, tuple)) else [min(how, size - s) for s in range(0, size, how)]
    outs, start, st = [], 0, x.strides()
    for s in sizes:
        shape = list(x.shape)
        shape[dim] = s
        outs.append(eltwise(lw, n, "x", lw.new(shape, x.order), x, a_strides=list(st), a_offset=start * st[dim]))
        start += s
    return tuple(outs)


def _reduce_mean(lw: Lowering, n: fx.Node, x: Value) -> Value | None:
    """A mean over dims that are adjacent in memory is a global average pool: memory is viewed as
    NHWC (outer, reduced, 1, rest) and pooled to (outer, 1, 1, rest)."""
    nd = len(x.shape)
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    dims = {d % nd for d in ((dims,) if isinstance(dims, int) else dims or ())}
    keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
    pos = sorted(x.order.index(d) for d in dims)
    if not dims or pos != list(range(pos[0], pos[0] + len(pos))):
        return None
    i, j = pos[0], pos[-1] + 1
    outer, red, rest = (math.prod(x.shape[d] for d in x.order[s]) for s in (slice(0, i), slice(i, j), slice(j, nd)))
    pooled = pool(lw, n, lw.alias(x, (outer, rest, red, 1), NHWC), "avg", adaptive=True, out_hw=(1, 1))
    if keep:
        return lw.alias(pooled, tuple(meta.shape(n)), x.order)
    kept = [d for d in range(nd) if d not in dims]
    return lw.alias(pooled, tuple(x.shape[d] for d in kept), tuple(kept.index(d) for d in x.order if d not in dims))


def _function(lw: Lowering, n: fx.Node) -> Value | None:
    t, x = n.target, lw.arg(n.args[0]) if n.args else None
    if t in BINARY:
        return _binary(lw, n, BINARY[t])
    if t is torch.cat:
        return _cat(lw, n)
    if t is torch.stack:
        return _stack(lw, n)
    if not isinstance(x, (Value, tuple)):
        return None
    if t is operator.getitem:
        return x[n.args[1]] if isinstance(x, tuple) else _slice(lw, n, x)
    if (act := _activation(lw, n)) is not None:
        return eltwise(lw, n, act, lw.new(x.shape, x.order), x)
    if is_stochastic_depth_eval(n) or t is F.dropout:
        return x
    if t in (torch.flatten, torch.reshape, torch.unsqueeze, torch.squeeze):
        return _view(lw, n, x, meta.shape(n))
    if t in (torch.permute,):
        return _permute(lw, n, x, n.args[1] if len(n.args) == 2 else n.args[1:])
    if t in (torch.transpose, torch.swapaxes):
        perm = list(range(len(x.shape)))
        a, b = (d % len(perm) for d in n.args[1:3])
        perm[a], perm[b] = perm[b], perm[a]
        return _permute(lw, n, x, perm)
    if t in (torch.chunk, torch.split):
        return _split(lw, n, x)
    if t in (F.max_pool2d, F.avg_pool2d):
        return _functional_pool(lw, n, x)
    if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        return pool(lw, n, x, "avg" if t is F.adaptive_avg_pool2d else "max", adaptive=True)
    if t is torch.mean:
        return _reduce_mean(lw, n, x)
    if t is torch.sum:
        return _reduce_sum(lw, n, x)
    if t is F.pad:
        return _pad(lw, n, x)
    if t is F.interpolate:
        return _interpolate(lw, n, x)
    if t in (F.softmax, torch.softmax):
        return _softmax(lw, n, x)
    if t is F.layer_norm:
        names = ("input", "normalized_shape", "weight", "bias", "eps")
        a = {k: n.args[i] for i, k in enumerate(names) if i < len(n.args)} | dict(n.kwargs)
        if len(a["normalized_shape"]) != 1:
            return None
        w, b = lw.arg(a.get("weight")), lw.arg(a.get("bias"))
        return rows(lw, n, x, "layer_norm", w, b, a.get("eps", 1e-5))
    if t in (torch.matmul, operator.matmul, torch.bmm):
        other = lw.arg(n.args[1])
        return matmul(lw, n, x, other) if isinstance(other, Value) else None
    return None


def _softmax(lw: Lowering, n: fx.Node, x: Value) -> Value | None:
    """Softmax over the last dim (``rows.cl``); over another dim, that dim is permuted last first
    (a relabel, then the copy ``rows`` makes) and back (a relabel)."""
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    if dim is None or n.kwargs.get("dtype") is not None:
        return None
    nd = len(x.shape)
    dim %= nd
    if dim == nd - 1:
        return rows(lw, n, x, "softmax")
    perm = [d for d in range(nd) if d != dim] + [dim]
    y = rows(lw, n, _permute(lw, n, x, perm), "softmax")
    return _permute(lw, n, y, [perm.index(d) for d in range(nd)])


def _method(lw: Lowering, n: fx.Node) -> Value | None:
    t, x = n.target, lw.arg(n.args[0])
    if t in BINARY:
        return _binary(lw, n, BINARY[t])
    if not isinstance(x, Value):
        return None
    if (act := _activation(lw, n)) is not None:
        return eltwise(lw, n, act, lw.new(x.shape, x.order), x)
    if t in ("view", "reshape", "flatten", "unsqueeze", "squeeze"):
        return _view(lw, n, x, meta.shape(n))
    if t == "expand_as":
        return eltwise(lw, n, "x", lw.new(meta.shape(n), tuple(range(len(meta.shape(n))))), x)
    if t == "expand":
        return eltwise(lw, n, "x", lw.new(meta.shape(n), tuple(range(len(meta.shape(n))))), x)
    if t == "contiguous":
        return contiguous(lw, n, x, tuple(range(len(x.shape)))) if not x.logical_contiguous else x
    if t == "permute":
        return _permute(lw, n, x, n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (list, tuple)) else n.args[1:])
    if t in ("transpose", "swapaxes"):
        perm = list(range(len(x.shape)))
        a, b = (d % len(perm) for d in n.args[1:3])
        perm[a], perm[b] = perm[b], perm[a]
        return _permute(lw, n, x, perm)
    if t in ("chunk", "split"):
        return _split(lw, n, x)
    if t == "mean":
        return _reduce_mean(lw, n, x)
    if t == "sum":
        return _reduce_sum(lw, n, x)
    if t == "softmax":
        return _softmax(lw, n, x)
    if t in ("matmul", "bmm"):
        other = lw.arg(n.args[1])
        return matmul(lw, n, x, other) if isinstance(other, Value) else None
    return None


def handler_for(gm: fx.GraphModule, n: fx.Node) -> Handler | None:
    return {"call_module": _module, "call_function": _function, "call_method": _method}.get(n.op)
