"""Handlers: how each op lowers to kernels (``kernels/*.cl``). A handler returns the node's Value,
or None when it cannot take this instance of the op (the node then falls back to torch)."""
from __future__ import annotations

import math
import operator

import numpy as np
import pyopencl as cl
import torch
import torch.fx as fx

from compiler import meta
from compiler.cost.families import channel_blocks

from .lower import NHWC, Lowering, Value
from .programs import build_program, kernel_source

LOCAL = 64
UNARY = {
    "relu": "fmax(x,0.0f)", "relu6": "fmin(fmax(x,0.0f),6.0f)", "hardswish": "x*fmin(fmax(x+3.0f,0.0f),6.0f)/6.0f",
    "hardsigmoid": "fmin(fmax(x+3.0f,0.0f),6.0f)/6.0f", "silu": "x/(1.0f+exp(-x))", "sigmoid": "1.0f/(1.0f+exp(-x))",
    "tanh": "tanh(x)", "gelu": "0.5f*x*(1.0f+erf(x*0.7071067811865476f))",
    "gelu_tanh": "0.5f*x*(1.0f+tanh(0.7978845608028654f*(x+0.044715f*x*x*x)))", "mish": "x*tanh(log1p(exp(x)))",
    "elu": "(x>0.0f?x:(exp(x)-1.0f))", "copy": "x",
}
BINARY = {operator.add: "x+y", torch.add: "x+y", "add": "x+y", operator.iadd: "x+y", operator.mul: "x*y",
          torch.mul: "x*y", "mul": "x*y", operator.imul: "x*y", operator.sub: "x-y", torch.sub: "x-y", "sub": "x-y",
          operator.truediv: "x/y", torch.div: "x/y", "div": "x/y"}
def unary(act: str) -> str | None:
    """The OpenCL expression of an activation name (``compiler.ops.ACTIVATIONS``), else None."""
    base, _, arg = act.partition(":")
    if base == "leaky_relu":
        return f"(x>0.0f?x:x*{float(arg or 0.01)!r}f)"
    return UNARY.get(act) if not arg else None


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
            a_strides=None, a_offset: int = 0, out_strides=None, out_offset: int = 0, shape=None,
            kind: str = "eltwise") -> Value:
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
    dense, step = [0] * len(shape), 1
    for d in reversed(order):  # strides of a tensor contiguous in the iteration order
        dense[d], step = (step if shape[d] > 1 else 0), step * shape[d]
    nz = [(d, dense[d]) for d in order if shape[d] > 1]
    flat = all(so[d] == c and sa[d] == c for d, c in nz) and (all(sb[d] == c for d, c in nz) or not any(sb))
    if flat:
        kernel = _kernel(lw, "eltwise.cl", "eltwise_flat", [f"-DOP=({expr})"])
        args = [(out, out_offset), (a, a_offset), b if b is not None else (a, a_offset),
                int(any(sb[d] for d, _ in nz)), total]
    else:
        kernel = _kernel(lw, "eltwise.cl", "eltwise", [f"-DOP=({expr})"])
        args = [(out, out_offset), so8, (a, a_offset), sa8, b if b is not None else (a, a_offset), sb8, dims, total]
    launch = Launch(lw, kernel, (_round(total),), (LOCAL,), args)
    lw.add(n, kind, [x for x in (a, b) if x is not None], [out], launch)
    return out


def contiguous(lw: Lowering, n: fx.Node, v: Value, order) -> Value:
    """``v`` in the given physical order (a copy when it is not already)."""
    if tuple(v.order) == tuple(order) or v.numel == 1:
        return v
    return eltwise(lw, n, "x", lw.new(v.shape, order), v, kind="copy")


def _constant(x) -> str | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return f"({float(x)!r}f)"


class Launch:
    """A step's kernel launch with its arguments set once, not on every run.

    ``args`` are the kernel's arguments in order. A Value stands for two of them, its buffer and its
    element offset there (a ``(Value, extra)`` pair adds ``extra`` to the offset; ``(None, 0)`` passes
    no buffer); ints become int32, floats float32; buffers and numpy vectors pass as they are. The
    Values are resolved against the run's arena and storage offsets on the first call and again only
    when those change, so a run is one ``enqueue_nd_range_kernel`` per step.

    Why: pyopencl's ``kernel(queue, ...)`` converts every argument on every call, about 10 us per
    untyped scalar on PoCL here: 200 to 300 us for conv.cl's 27 arguments, which made the launches of
    ResNet-18 at 32x32 (23 steps, 2.3 ms of kernels) cost 9 ms. An enqueue with arguments already
    set costs 2 to 7 us (benchmarks/launch_overhead.py). Not thread-safe: a kernel's arguments are
    shared state, so each lowering builds its own kernel objects.
    """

    def __init__(self, lw: Lowering, kernel: cl.Kernel, global_size: tuple[int, ...],
                 local_size: tuple[int, ...] | None, args: list):
        self.lw, self.kernel = lw, kernel
        self.global_size, self.local_size = global_size, local_size or (1,) * len(global_size)
        self.dynamic: list[tuple[int, Value, int]] = []  # (argument index of the buffer, value, extra offset)
        self.fixed: list[tuple[int, object]] = []  # (argument index, value); also keeps what the kernel points to alive
        i = 0
        for a in args:
            if isinstance(a, Value):
                a = (a, 0)
            if isinstance(a, tuple) and len(a) == 2 and (a[0] is None or isinstance(a[0], Value)):
                if a[0] is None:  # no buffer (an absent residual): a null pointer and offset 0
                    self.fixed += [(i, None), (i + 1, np.int32(0))]
                else:
                    self.dynamic.append((i, *a))
                i += 2
                continue
            self.fixed.append((i, self._scalar(a)))
            i += 1
        for i, a in self.fixed:
            kernel.set_arg(i, a)
        self.bound = (None, None)

    def clone(self) -> Launch:
        """The same launch on a kernel object of its own, to be bound to other storage offsets."""
        twin = object.__new__(Launch)
        twin.__dict__.update(self.__dict__)
        twin.kernel = cl.Kernel(self.kernel.program, self.kernel.function_name)
        for i, a in self.fixed:
            twin.kernel.set_arg(i, a)
        twin.bound = (None, None)
        return twin

    def __call__(self, queue: cl.CommandQueue, arena, offsets) -> cl.Event:
        if self.bound[0] is not arena or self.bound[1] is not offsets:
            for i, v, extra in self.dynamic:
                buf, off = where(self.lw, v, arena, offsets)
                self.kernel.set_arg(i, buf)
                self.kernel.set_arg(i + 1, np.int32(off + extra))
            self.bound = (arena, offsets)
        return cl.enqueue_nd_range_kernel(queue, self.kernel, self.global_size, self.local_size)

    @staticmethod
    def _scalar(a):
        if isinstance(a, (bool, int, np.integer)):
            return np.int32(a)
        if isinstance(a, float):
            return np.float32(a)
        return a


def pool(lw: Lowering, n: fx.Node, x: Value, kind: str, *, kernel=(1, 1), stride=(1, 1), padding=(0, 0),
         adaptive: bool = False, count_pad: bool = True, out_hw: tuple[int, int] | None = None) -> Value | None:
    if len(x.shape) != 4:
        return None
    x = contiguous(lw, n, x, NHWC)
    nb, c, h, w = x.shape
    oh, ow = out_hw or meta.shape(n)[2:]
    out = lw.new((nb, c, oh, ow), NHWC)
    kind_opt = ["-DMAX"] if kind == "max" else []
    if adaptive:
        k = _kernel(lw, "pool.cl", "pool", kind_opt)
        total = out.numel
        launch = Launch(lw, k, (_round(total),), (LOCAL,),
                        [out, x, h, w, c, oh, ow, *kernel, *stride, *padding, 1, int(count_pad), total])
    else:  # vectorised like the depthwise conv: channel vectors x PX pixels per work-item
        vc, px = channel_blocks(c, ow, kernel[1], stride[1])
        geometry = dict(VC=vc, PX=px, KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1])
        k = _kernel(lw, "pool.cl", "pool_vec", [f"-D{k}={v}" for k, v in geometry.items()] + kind_opt)
        launch = Launch(lw, k, (-(-c // vc), -(-ow // px), nb * oh), None,
                        [out, x, h, w, c, oh, ow, *padding, nb * oh, int(count_pad)])
    lw.add(n, f"{kind}pool", [x], [out], launch)
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
    if kind == "softmax":
        args = [out, x, r, length]
    else:
        args = [out, x, w, b, r, length, float(eps)]
    lw.add(n, kind, [v for v in (x, w, b) if v is not None], [out], Launch(lw, k, (_round(r),), (LOCAL,), args))
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
    total = out.numel
    lw.add(n, "bmm", [a, b], [out], Launch(lw, kernel, (_round(total),), (LOCAL,),
                                           [out, a, sa, b, sb, batch[1], m, nn_, k, total]))
    return out
