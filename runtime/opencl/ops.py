"""Handlers: how each op lowers to kernels (``kernels/*.cl``). A handler returns the node's Value,
or None when it cannot take this instance of the op (the node then falls back to torch)."""
from __future__ import annotations

import math
import operator

import numpy as np
import pyopencl as cl
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compiler import meta
from compiler.ops import FusedOp

from .gemm import ACTIVATIONS as GEMM_ACTIVATIONS
from .gemm import Gemm
from .lower import NHWC, Lowering, Value
from .programs import build_program, kernel_source

LOCAL = 64
UNARY = {
    "relu": "fmax(x,0.0f)", "relu6": "fmin(fmax(x,0.0f),6.0f)", "hardswish": "x*fmin(fmax(x+3.0f,0.0f),6.0f)/6.0f",
    "hardsigmoid": "fmin(fmax(x+3.0f,0.0f),6.0f)/6.0f", "silu": "x/(1.0f+exp(-x))", "sigmoid": "1.0f/(1.0f+exp(-x))",
    "tanh": "tanh(x)", "gelu": "0.5f*x*(1.0f+erf(x*0.7071067811865476f))",
    "gelu_tanh": "0.5f*x*(1.0f+tanh(0.7978845608028654f*(x+0.044715f*x*x*x)))", "copy": "x",
}
BINARY = {operator.add: "x+y", torch.add: "x+y", "add": "x+y", operator.iadd: "x+y", operator.mul: "x*y",
          torch.mul: "x*y", "mul": "x*y", operator.imul: "x*y", operator.sub: "x-y", torch.sub: "x-y", "sub": "x-y",
          operator.truediv: "x/y", torch.div: "x/y", "div": "x/y"}
ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
               nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu"}
ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
                 F.hardsigmoid: "hardsigmoid", F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
                 torch.tanh: "tanh", F.gelu: "gelu"}
ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}


def _round(n: int) -> int:
    return -(-n // LOCAL) * LOCAL


def where(lw: Lowering, v: Value, arena, offsets) -> tuple[cl.Buffer, int]:
    """The buffer holding ``v`` and its element offset there."""
    if v.storage in lw.out.buffers:
        return lw.out.buffers[v.storage], v.offset
    return arena, offsets[v.storage] + v.offset


def _kernel(lw: Lowering, file: str, name: str, options: list[str]) -> cl.Kernel:
    return cl.Kernel(build_program(lw.device, kernel_source(file), options, name=file), name)


def _int8(vals) -> np.ndarray:
    v = np.zeros(8, np.int32)
    v[:len(vals)] = vals
    return v


def _pad6(xs, fill) -> list[int]:
    return [fill] * (6 - len(xs)) + list(xs)


def _broadcast_strides(v: Value, shape: tuple[int, ...]) -> list[int]:
    st = list(v.strides())
    lead = len(shape) - len(v.shape)
    return [0 if i < lead or v.shape[i - lead] == 1 else st[i - lead] for i in range(len(shape))]


def eltwise(lw: Lowering, n: fx.Node, expr: str, out: Value, a: Value, b: Value | None = None, *,
            a_strides=None, a_offset: int = 0, out_strides=None, out_offset: int = 0, shape=None) -> Value:
    """Enqueue ``out = expr(a, b)`` over ``shape`` (default: out's), iterating in out's memory order."""
    shape = tuple(shape or out.shape)
    if len(shape) > 6:
        raise ValueError("eltwise handles up to 6 dims")
    order = [d for d in out.order] if len(out.shape) == len(shape) else list(range(len(shape)))
    so = out_strides or list(out.strides())
    sa = a_strides or _broadcast_strides(a, shape)
    sb = _broadcast_strides(b, shape) if b is not None else [0] * len(shape)
    dims = _int8(_pad6([shape[d] for d in order], 1))
    so8, sa8, sb8 = (_int8(_pad6([s[d] for d in order], 0)) for s in (so, sa, sb))
    total = math.prod(shape)
    kernel = _kernel(lw, "eltwise.cl", "eltwise", [f"-DOP=({expr})"])
    i32 = np.int32

    def enqueue(queue, arena, offsets):
        ob, oo = where(lw, out, arena, offsets)
        ab, ao = where(lw, a, arena, offsets)
        bb, bo = where(lw, b, arena, offsets) if b is not None else (ab, ao)
        return kernel(queue, (_round(total),), (LOCAL,), ob, i32(oo + out_offset), so8, ab, i32(ao + a_offset), sa8,
                      bb, i32(bo), sb8, dims, i32(total))

    lw.add(n, "eltwise", [x for x in (a, b) if x is not None], [out], enqueue)
    return out


def contiguous(lw: Lowering, n: fx.Node, v: Value, order) -> Value:
    """``v`` in the given physical order (a copy when it is not already)."""
    if tuple(v.order) == tuple(order) or v.numel == 1:
        return v
    return eltwise(lw, n, "x", lw.new(v.shape, order), v)


def _constant(x) -> str | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return f"({float(x)!r}f)"


# -- conv and linear ----------------------------------------------------------------------------
def _conv(lw: Lowering, n: fx.Node, conv: nn.Conv2d, x: Value, act: str | None, res: Value | None) -> Value | None:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or len(x.shape) != 4:
        return None
    x = contiguous(lw, n, x, NHWC)
    nb, _, h, w = x.shape
    oh, ow = meta.shape(n)[2:]
    cout, g = conv.out_channels, conv.groups
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    out = lw.new((nb, cout, oh, ow), NHWC)
    res = contiguous(lw, n, res, NHWC) if res is not None else None
    wt = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(cout)
    fused = act if act in GEMM_ACTIVATIONS else None
    i32 = np.int32
    if act is not None and act not in UNARY:
        return None
    if g == conv.in_channels == cout:  # depthwise
        opts = (["-DHAS_RESIDUAL"] if res is not None else []) + ([f"-DACT(x)=({UNARY[act]})"] if act else [])
        kernel = _kernel(lw, "dwconv.cl", "dwconv", opts)
        wbuf = lw.device.alloc(hostbuf=wt.reshape(cout, kh * kw).t().contiguous().numpy(), flags=cl.mem_flags.READ_ONLY)
        bbuf = lw.device.alloc(hostbuf=bias.numpy(), flags=cl.mem_flags.READ_ONLY)
        total = out.numel

        def enqueue(queue, arena, offsets):
            ob, oo = where(lw, out, arena, offsets)
            xb, xo = where(lw, x, arena, offsets)
            rb, ro = where(lw, res, arena, offsets) if res is not None else (xb, 0)
            return kernel(queue, (_round(total),), (LOCAL,), ob, i32(oo), xb, i32(xo), wbuf, bbuf, rb, i32(ro),
                          *(i32(v) for v in (h, w, cout, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, total)))

        lw.add(n, "dwconv", [x] + ([res] if res is not None else []), [out], enqueue)
        return out
    cg, og = conv.in_channels // g, cout // g
    m = nb * oh * ow
    direct = (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and g == 1
    gemms = [Gemm(lw.device, wt[i * og:(i + 1) * og].permute(2, 3, 1, 0).reshape(kh * kw * cg, og), bias[i * og:(i + 1) * og],
                  residual=res is not None, activation=fused or "none") for i in range(g)]
    cols = None if direct else lw.new((m, kh * kw * cg), (0, 1))
    im2col = None if direct else _kernel(lw, "im2col.cl", "im2col", [])

    def enqueue(queue, arena, offsets):
        ob, oo = where(lw, out, arena, offsets)
        xb, xo = where(lw, x, arena, offsets)
        rb, ro = where(lw, res, arena, offsets) if res is not None else (None, 0)
        events = []
        for i, gemm in enumerate(gemms):
            if direct:
                ab, ao = xb, xo
            else:
                ab, ao = where(lw, cols, arena, offsets)
                total = cols.numel
                events.append(im2col(queue, (_round(total),), (LOCAL,), ab, i32(ao), xb, i32(xo), *(i32(v) for v in (
                    h, w, conv.in_channels, i * cg, cg, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, total))))
            events.append(gemm.enqueue(queue, ab, ob, m, a_offset=ao, c_offset=oo + i * og, ldc=cout,
                                       residual_buf=rb, r_offset=ro + i * og, ldr=cout))
        return events

    reads = [x] + ([res] if res is not None else [])
    lw.add(n, "conv" if direct or kh * kw == 1 else "im2col+gemm", reads, [out] + ([cols] if cols else []), enqueue)
    if act is not None and fused is None:
        return eltwise(lw, n, UNARY[act], out, out)
    return out


def _linear(lw: Lowering, n: fx.Node, lin: nn.Linear, x: Value, act: str | None, res: Value | None) -> Value | None:
    x = contiguous(lw, n, x, tuple(range(len(x.shape))))
    rows = x.numel // lin.in_features
    shape = (*x.shape[:-1], lin.out_features)
    out = lw.new(shape, tuple(range(len(shape))))
    res = contiguous(lw, n, res, out.order) if res is not None else None
    fused = act if act in GEMM_ACTIVATIONS else None
    gemm = Gemm(lw.device, lin.weight.detach().float().t(), lin.bias.detach().float() if lin.bias is not None else None,
                residual=res is not None, activation=fused or "none")

    def enqueue(queue, arena, offsets):
        ob, oo = where(lw, out, arena, offsets)
        xb, xo = where(lw, x, arena, offsets)
        rb, ro = where(lw, res, arena, offsets) if res is not None else (None, 0)
        return gemm.enqueue(queue, xb, ob, rows, a_offset=xo, c_offset=oo, residual_buf=rb, r_offset=ro)

    lw.add(n, "gemm", [x] + ([res] if res is not None else []), [out], enqueue)
    if act is not None and fused is None:
        return eltwise(lw, n, UNARY[act], out, out)
    return out


def module_op(lw: Lowering, n: fx.Node, m: nn.Module, x: Value, res: Value | None = None, act: str | None = None):
    if type(m) is nn.Conv2d:
        return _conv(lw, n, m, x, act, res)
    if type(m) is nn.Linear:
        return _linear(lw, n, m, x, act, res)
    return None


def pool(lw: Lowering, n: fx.Node, x: Value, kind: str, *, kernel=(1, 1), stride=(1, 1), padding=(0, 0),
         adaptive: bool = False, count_pad: bool = True, out_hw: tuple[int, int] | None = None) -> Value | None:
    if len(x.shape) != 4:
        return None
    x = contiguous(lw, n, x, NHWC)
    nb, c, h, w = x.shape
    oh, ow = out_hw or meta.shape(n)[2:]
    out = lw.new((nb, c, oh, ow), NHWC)
    k = _kernel(lw, "pool.cl", "pool", ["-DMAX"] if kind == "max" else [])
    i32, total = np.int32, out.numel
    args = (h, w, c, oh, ow, *kernel, *stride, *padding, int(adaptive), int(count_pad), total)

    def enqueue(queue, arena, offsets):
        ob, oo = where(lw, out, arena, offsets)
        xb, xo = where(lw, x, arena, offsets)
        return k(queue, (_round(total),), (LOCAL,), ob, i32(oo), xb, i32(xo), *(i32(v) for v in args))

    lw.add(n, f"{kind}pool", [x], [out], enqueue)
    return out


def rows(lw: Lowering, n: fx.Node, x: Value, kind: str, w: Value | None = None, b: Value | None = None,
         eps: float = 1e-5) -> Value:
    """Softmax or layer norm over the last dim (``rows.cl``)."""
    x = contiguous(lw, n, x, tuple(range(len(x.shape))))
    length = x.shape[-1]
    r = x.numel // length
    out = lw.new(x.shape, tuple(range(len(x.shape))))
    if kind == "layer_norm":
        w = w or lw.upload(torch.ones(length), f"{n.name}: weight")
        b = b or lw.upload(torch.zeros(length), f"{n.name}: bias")
    k = _kernel(lw, "rows.cl", kind, [])
    i32 = np.int32

    def enqueue(queue, arena, offsets):
        ob, oo = where(lw, out, arena, offsets)
        xb, xo = where(lw, x, arena, offsets)
        if kind == "softmax":
            return k(queue, (_round(r),), (LOCAL,), ob, i32(oo), xb, i32(xo), i32(r), i32(length))
        wb, wo = where(lw, w, arena, offsets)
        bb, bo = where(lw, b, arena, offsets)
        assert wo == bo == 0, "layer norm weights live in their own buffers"
        return k(queue, (_round(r),), (LOCAL,), ob, i32(oo), xb, i32(xo), wb, bb, i32(r), i32(length), np.float32(eps))

    lw.add(n, kind, [v for v in (x, w, b) if v is not None], [out], enqueue)
    return out


def matmul(lw: Lowering, n: fx.Node, a: Value, b: Value, out_shape=None) -> Value | None:
    """``a @ b`` with up to two broadcast batch dims (``bmm.cl``), reading both through strides."""
    out_shape = tuple(out_shape or meta.shape(n))
    if len(a.shape) < 2 or len(b.shape) < 2 or len(out_shape) > 4:
        return None
    batch = (1,) * (4 - len(out_shape)) + out_shape[:-2]
    m, k, nn_ = a.shape[-2], a.shape[-1], b.shape[-1]

    def strides(v: Value) -> np.ndarray:
        st, lead = v.strides(), 4 - len(v.shape)
        full = [0] * lead + list(st)
        shape = [1] * lead + list(v.shape)
        return np.array([0 if shape[i] == 1 else full[i] for i in range(2)] + full[2:], np.int32)

    sa, sb = strides(a), strides(b)
    out = lw.new(out_shape, tuple(range(len(out_shape))))
    kernel = _kernel(lw, "bmm.cl", "bmm", [])
    total, i32 = out.numel, np.int32

    def enqueue(queue, arena, offsets):
        ob, oo = where(lw, out, arena, offsets)
        ab, ao = where(lw, a, arena, offsets)
        bb, bo = where(lw, b, arena, offsets)
        return kernel(queue, (_round(total),), (LOCAL,), ob, i32(oo), ab, i32(ao), sa, bb, i32(bo), sb,
                      i32(batch[1]), i32(m), i32(nn_), i32(k), i32(total))

    lw.add(n, "bmm", [a, b], [out], enqueue)
    return out
