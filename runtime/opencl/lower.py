"""Lowering: an fx graph to a static list of steps over one device arena.

Every tensor node becomes a ``Value``: a logical (torch) shape, a physical dim order and a place
in a *storage*. Four-dimensional activations are kept NHWC (``order = (0, 2, 3, 1)``), which is
what the conv, GEMM and pooling kernels read; a permute or transpose only relabels dims (no copy),
and a view of a tensor whose memory is already in logical order shares its storage. Values whose
layout a kernel cannot take are copied by the strided ``eltwise`` kernel.

Each node is lowered by a handler from ``ops.py`` into steps that enqueue kernels with launch
shapes fixed now. A node without a handler runs on torch (a *fallback* step: download its inputs,
run the node, upload the result), with a logged warning; ``strict=True`` raises
``UnsupportedOpError`` listing every such node instead. Non-tensor nodes (``x.size(0)``, shape
arithmetic) are constants here, since shapes are fixed at compile time.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyopencl as cl
import torch
import torch.fx as fx

from compiler import meta
from compiler.cost.families import NCHW_ORDER

from .device import Device
from .errors import UnsupportedError

log = logging.getLogger(__name__)

NCHW, NHWC = NCHW_ORDER, (0, 2, 3, 1)


class UnsupportedOpError(UnsupportedError):
    """``strict=True`` and some nodes have no OpenCL kernel; lists them all."""


@dataclass
class Value:
    id: int
    shape: tuple[int, ...]  # logical, as torch sees it
    order: tuple[int, ...]  # physical dim order: memory runs over shape[order[0]], ..., shape[order[-1]]
    storage: int  # storage id (several values may share one: views, relabelled permutes)
    offset: int = 0  # elements into the storage

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def strides(self) -> tuple[int, ...]:
        """Element stride of each *logical* dim."""
        out, step = [0] * len(self.shape), 1
        for d in reversed(self.order):
            out[d] = step
            step *= self.shape[d]
        return tuple(out)

    @property
    def logical_contiguous(self) -> bool:
        """True when memory is in logical row-major order (ignoring size-1 dims)."""
        dims = [d for d in self.order if self.shape[d] != 1]
        return dims == sorted(dims)


Enqueue = Callable[[cl.CommandQueue, cl.Buffer, dict[int, int]], object]


@dataclass
class Step:
    node: str
    kernel: str  # kernel family, for the per-kernel time breakdown
    reads: list[Value]
    writes: list[Value]
    enqueue: Enqueue  # (queue, arena, storage offsets) -> event or None
    fallback: bool = False
    phase: int | None = None  # position for the memory plan when steps repeat (batch tiles); None: its index
    tile: int | None = None  # the batch tile a step of a tiled head computes (Lowered.tiling); None: the whole batch


@dataclass
class Lowered:
    steps: list[Step] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)
    outputs: object = None  # the graph's output structure, with Values at the leaves
    storage_sizes: dict[int, int] = field(default_factory=dict)  # storage id -> elements
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (node, op)
    buffers: dict[int, cl.Buffer] = field(default_factory=dict)  # storage id -> own buffer (weights, constants)
    tiling: dict | None = None  # the batch tiling of the graph's prefix (tiling.py), if any

    @property
    def output_values(self) -> list[Value]:
        return [v for v in leaves(self.outputs) if isinstance(v, Value)]


class Lowering:
    """Walks the graph once; ``ops.py`` handlers call ``new``, ``alias``, ``add`` and ``copy``."""

    def __init__(self, gm: fx.GraphModule, device: Device, constants: dict[str, object], *, strict: bool = False,
                 input_order: tuple[int, ...] = NCHW):
        """``input_order``: the physical order of four-dimensional inputs. NCHW, as torch holds them, makes
        the upload a plain copy: the first conv reads NCHW (conv.cl's X_NCHW), other first ops copy
        to NHWC on the device (the host permute took 1 to 11 ms at 8x3x224x224 while PoCL's threads
        spun)."""
        self.gm, self.device, self.constants, self.strict = gm, device, constants, strict
        self.input_order = input_order
        self.values: dict[str, Value] = {}
        self.out = Lowered()
        self._ids = 0

    # -- values --------------------------------------------------------------------------------
    def new(self, shape, order=None) -> Value:
        shape = tuple(int(s) for s in shape)
        order = tuple(order) if order is not None else (NHWC if len(shape) == 4 else tuple(range(len(shape))))
        self._ids += 1
        v = Value(self._ids, shape, order, storage=self._ids)
        self.out.storage_sizes[v.storage] = v.numel
        return v

    def alias(self, src: Value, shape, order, offset: int = 0) -> Value:
        self._ids += 1
        return Value(self._ids, tuple(shape), tuple(order), storage=src.storage, offset=src.offset + offset)

    def add(self, node: fx.Node, kernel: str, reads: list[Value], writes: list[Value], enqueue: Enqueue) -> None:
        self.out.steps.append(Step(node.name, kernel, reads, writes, enqueue))

    def arg(self, a):
        """A node argument: a Value for tensors, a Python constant otherwise."""
        if isinstance(a, fx.Node):
            if a.name in self.values:
                return self.values[a.name]
            if a.name in self.constants:
                return self.constants[a.name]
            raise UnsupportedOpError(f"node '{a.name}' ({_op_name(self.gm, a)}) has no OpenCL kernel and does not "
                                     "return a single tensor, so it cannot fall back to torch")
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(x) for x in a)
        return a

    # -- the walk -------------------------------------------------------------------------------
    def run(self, example_inputs: tuple[torch.Tensor, ...]) -> Lowered:
        from .dispatch import handler_for

        unsupported = []
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                v = self.new(meta.shape(n), self.input_order if len(meta.shape(n)) == 4 else None)
                self.values[n.name] = v
                self.out.inputs.append(v)
            elif n.op == "output":
                self.out.outputs = self.arg(n.args[0])
            elif n.op == "get_attr" or n.name in self.constants:
                if meta.shape(n) is not None and n.op == "get_attr":
                    t = self._fetch(n)
                    if t.is_floating_point():
                        self.values[n.name] = self.upload(t, n)
                    else:  # index tables stay on the host, for the torch steps that use them
                        self.constants[n.name] = t
            else:
                h = handler_for(self.gm, n)
                result = h(self, n) if h is not None else None
                if result is None:
                    unsupported.append(n)
                    if not self.strict:
                        result = self.fallback(n)
                    elif meta.shape(n) is not None:  # keep walking, to list every unsupported node
                        result = self.new(meta.shape(n))
                if result is not None:
                    self.values[n.name] = result
        if unsupported and self.strict:
            listing = "; ".join(f"{n.name} ({_op_name(self.gm, n)})" for n in unsupported)
            raise UnsupportedOpError(f"{len(unsupported)} nodes have no OpenCL kernel (strict=True): {listing}")
        return self.out

    def _fetch(self, n: fx.Node) -> torch.Tensor:
        obj = self.gm
        for part in n.target.split("."):
            obj = getattr(obj, part)
        return obj.detach()

    def upload(self, t: torch.Tensor, n: fx.Node | str) -> Value:
        """A constant tensor, stored once in its own buffer (not the arena)."""
        v = self.new(t.shape, tuple(range(t.dim())))
        data = t.detach().to(torch.float32).contiguous().numpy()
        what = f"uploading '{n.target if isinstance(n, fx.Node) else n}'"
        buf = self.device.alloc(hostbuf=data, what=what, flags=cl.mem_flags.READ_ONLY)
        self.out.storage_sizes.pop(v.storage)
        self.out.buffers[v.storage] = buf
        return v

    # -- torch fallback -------------------------------------------------------------------------
    def fallback(self, n: fx.Node) -> Value | tuple | None:
        structure = self.constants.get(STRUCTURE + n.name)
        if meta.shape(n) is None and structure is None:
            return None
        op = _op_name(self.gm, n)
        log.warning("OpenCL: no kernel for node '%s' (%s); it runs on torch", n.name, op)
        self.out.fallbacks.append((n.name, op))
        if structure is None:
            out = self.new(meta.shape(n), tuple(range(len(meta.shape(n)))))
        else:
            out = tuple(self.new(s, tuple(range(len(s)))) if isinstance(s, TensorShape) else s for s in structure)
        reads = [v for v in leaves(self.arg(list(n.args)) + [self.arg(list(n.kwargs.values()))]) if isinstance(v, Value)]
        gm, lowering = self.gm, self

        def enqueue(queue, arena, offsets):
            env = {id(v): download(queue, arena, offsets, v, lowering.out.buffers) for v in reads}

            def value(a):
                if isinstance(a, fx.Node):
                    got = lowering.values.get(a.name)
                    return env[id(got)] if got is not None else lowering.constants[a.name]
                if isinstance(a, (list, tuple)):
                    return type(a)(value(x) for x in a)
                return a

            args, kwargs = value(tuple(n.args)), {k: value(v) for k, v in n.kwargs.items()}
            with torch.no_grad():
                if n.op == "call_module":
                    y = gm.get_submodule(n.target)(*args, **kwargs)
                elif n.op == "call_method":
                    y = getattr(args[0], n.target)(*args[1:], **kwargs)
                else:
                    y = n.target(*args, **kwargs)
            for v, t in zip(leaves(out), leaves(y)):
                if isinstance(v, Value):
                    upload(queue, arena, offsets, v, t)

        writes = [v for v in leaves(out) if isinstance(v, Value)]
        self.out.steps.append(Step(n.name, "torch fallback", reads, writes, enqueue, fallback=True))
        return out


def leaves(x) -> list:
    """The non-list, non-tuple items of a nested structure, in order."""
    if isinstance(x, (list, tuple)):
        return [y for e in x for y in leaves(e)]
    return [x]


def _op_name(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(n.target)).__name__
    return getattr(n.target, "__name__", str(n.target))


def _physical(v: Value) -> tuple[int, ...]:
    return tuple(v.shape[d] for d in v.order)


def download(queue, arena, offsets, v: Value, constants: dict[int, cl.Buffer] | None = None) -> torch.Tensor:
    """Read ``v`` into a torch tensor in logical layout (finishes the queue)."""
    host = np.empty(_physical(v), np.float32)
    src = constants[v.storage] if constants and v.storage in constants else arena
    base = 0 if src is not arena else offsets[v.storage]
    cl.enqueue_copy(queue, host, src, src_offset=4 * (base + v.offset), is_blocking=True)
    inverse = [v.order.index(d) for d in range(len(v.shape))]
    return torch.from_numpy(host).permute(inverse)


def upload(queue, arena, offsets, v: Value, t: torch.Tensor) -> None:
    host = t.detach().to(torch.float32).permute(v.order).contiguous().numpy()
    cl.enqueue_copy(queue, arena, host, dst_offset=4 * (offsets[v.storage] + v.offset), is_blocking=True)


STRUCTURE = "structure:"  # key prefix: the output structure of a node returning a tuple of tensors


class TensorShape(tuple):
    """The shape of a tensor inside a tuple output (for torch fallback of such nodes)."""


def fold_constants(gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, object]:
    """Values of the non-tensor nodes (sizes, shape arithmetic, getitem of sizes), fixed for these
    input shapes."""
    out: dict[str, object] = {}

    class Record(fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if n.op in ("placeholder", "output") or isinstance(r, torch.Tensor):
                return r
            if isinstance(r, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in r):
                out[STRUCTURE + n.name] = tuple(TensorShape(x.shape) if isinstance(x, torch.Tensor) else x for x in r)
            else:
                out[n.name] = r
            return r

    with torch.no_grad():
        Record(gm).run(*example_inputs)
    return out


