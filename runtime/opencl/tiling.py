"""Batch tiling: run a model's large-activation prefix one batch tile at a time, depth first.

At batch 8, the first blocks of a CNN produce tensors of 10 to 40 MB (MobileNetV2's 96-channel
expansion at 112x112 is 38.5 MB), larger than this machine's 32 MB L3, so every layer there streams
its input from DRAM and its output back: the depthwise convs ran at 10 to 16 GB/s. Run the same
layers for one image, and each tensor (4.8 MB) is still in cache when the next layer reads it: the
same kernels ran 2 to 5 times faster per image (measurements below). So the lowering cuts the graph
after the prefix whose activations do not fit in cache (the *head*), lowers the head at the tile's
batch and the rest (the *tail*) at the full batch, and runs the head's steps once per tile, each
tile reading its slice of the input and writing its slice of the tail's input tensor. The head's
intermediate tensors are planned once and reused by every tile, so they stay in cache.

Only a prefix made of batch-local ops (convs, pools, activations, elementwise ops and channel
concatenation on 4-d tensors whose batch dim is the model's) is tiled, cut where a single tensor
crosses, so every tile computes exactly what the full batch would.

Measured (PoCL 3.1, 2-core Zen 4, batch 8; kernel time from profiling events, min over runs;
``benchmarks/runtime.py`` has the whole-model effect):
  depthwise 3x3, 32 channels @112:        1.62 ms at batch 8,  0.62 ms for 8 images one by one (cached)
  depthwise 3x3, 144 channels @56:        2.99 ms,             0.85 ms
  depthwise 3x3 s2, 144 channels @56:     1.15 ms,             0.32 ms
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from compiler import meta
from compiler.ops import ACT_FUNCTIONS, ACT_METHODS, ACT_MODULES, FusedOp

from .lower import NHWC, Lowered, Lowering, Value, fold_constants
from .ops import Launch

# Ops that compute each batch element from that element alone.
_LOCAL_MODULES = (nn.Conv2d, nn.BatchNorm2d, FusedOp, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                  nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout, nn.GELU, nn.LeakyReLU, nn.ELU, *ACT_MODULES)
_LOCAL_FUNCTIONS = {operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul, torch.sub,
                    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.gelu, F.leaky_relu, F.elu, *ACT_FUNCTIONS}
_LOCAL_METHODS = {"add", "mul", "sub", "div", *ACT_METHODS}

# Tile the prefix while some tensor at the full batch is larger than this: above it a layer's input
# and output no longer stay in this machine's cache (2 x 1 MB L2, 32 MB L3 shared with the host).
CACHE_BYTES = 8 << 20


@dataclass
class Split:
    head: fx.GraphModule  # placeholder -> the cut tensor, shapes at the tile's batch
    tail: fx.GraphModule  # the cut tensor -> the outputs, shapes at the full batch
    tile: int  # batch elements per tile
    tiles: int


def _batch_local(gm: fx.GraphModule, n: fx.Node, batch: int) -> bool:
    if n.op == "call_module":
        ok = isinstance(gm.get_submodule(n.target), _LOCAL_MODULES)
    elif n.op == "call_function":
        ok = n.target in _LOCAL_FUNCTIONS or (n.target is torch.cat and _cat_dim(n) in (1, -3))
    elif n.op == "call_method":
        ok = n.target in _LOCAL_METHODS
    else:
        return False
    tensors = [a for a in n.all_input_nodes] + [n]
    return ok and all(meta.shape(a) is not None and len(meta.shape(a)) == 4 and meta.shape(a)[0] == batch
                      for a in tensors)


def _cat_dim(n: fx.Node):
    return n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)


def find_cut(gm: fx.GraphModule, batch: int, cache_bytes: int = CACHE_BYTES) -> fx.Node | None:
    """The node to cut after: the first one where a single batch-local tensor crosses and it and
    every later tensor fit in ``cache_bytes`` at the full batch (a cut on a large tensor would make
    the tail read it back from memory, as MobileNetV2 cut after an expansion 1x1 would: 14 MB at
    batch 8); None when no such prefix exists or nothing needs tiling."""
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if batch < 2 or len(placeholders) != 1:
        return None
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in nodes}
    size = {n: 4 * torch.Size(meta.shape(n)).numel() if meta.shape(n) is not None else 0 for n in nodes}
    big_after = [0] * (len(nodes) + 1)  # the largest tensor from node i on
    for i in range(len(nodes) - 1, -1, -1):
        big_after[i] = max(big_after[i + 1], size[nodes[i]])
    if big_after[0] <= cache_bytes:
        return None
    live: set[fx.Node] = set()  # tensors made so far that a later node reads: what crosses a cut after i
    for i, n in enumerate(nodes):
        live = {m for m in live if last_use[m] > i} | ({n} if last_use[n] > i else set())
        if n.op == "placeholder":
            if i != 0:
                return None
            continue
        if not _batch_local(gm, n, batch):
            return None
        if live == {n} and big_after[i] <= cache_bytes:  # the cut tensor fits too
            return n
    return None


def split(gm: fx.GraphModule, cut: fx.Node, example: torch.Tensor, tile: int) -> Split:
    """The head (through ``cut``) with shapes for ``tile`` batch elements, and the tail."""
    nodes = list(gm.graph.nodes)
    at = nodes.index(cut)
    head, env = fx.Graph(), {}
    for n in nodes[:at + 1]:
        env[n] = head.node_copy(n, lambda a: env[a])
    head.output(env[cut])
    tail, env = fx.Graph(), {}
    env[cut] = tail.placeholder(cut.name)
    env[cut].meta = dict(cut.meta)
    for n in nodes[at + 1:]:
        env[n] = tail.node_copy(n, lambda a: env[a])
    head_gm, tail_gm = fx.GraphModule(gm, head), fx.GraphModule(gm, tail)
    ShapeProp(head_gm).propagate(example[:tile])
    return Split(head_gm, tail_gm, tile, example.shape[0] // tile)


class _Rebased:
    """A head step for one tile: the head's input and output storages resolved to this tile's
    slices of the full-batch input and of the tail's input."""

    def __init__(self, launch, remap: dict[int, tuple[int, int]]):
        self.launch, self.remap = launch, remap
        self._src, self._offsets = None, None

    def __call__(self, queue, arena, offsets):
        if self._src is not offsets:
            mapped = dict(offsets)
            for storage, (target, extra) in self.remap.items():
                mapped[storage] = offsets[target] + extra
            self._src, self._offsets = offsets, mapped
        return self.launch(queue, arena, self._offsets)


def lower_tiled(gm: fx.GraphModule, device, example_inputs: tuple[torch.Tensor, ...], *, strict: bool = False,
                tile: int = 1, cache_bytes: int = CACHE_BYTES) -> Lowered | None:
    """The graph lowered with its large-activation prefix tiled over the batch, or None when it has
    no such prefix (or the head needs a torch fallback)."""
    if len(example_inputs) != 1 or not isinstance(example_inputs[0], torch.Tensor):
        return None
    x = example_inputs[0]
    batch = x.shape[0] if x.dim() == 4 else 0
    cut = find_cut(gm, batch, cache_bytes) if batch % tile == 0 and batch > tile else None
    if cut is None:
        return None
    parts = split(gm, cut, x, tile)
    with torch.no_grad():
        middle = parts.head(x)
    head_lw = Lowering(parts.head, device, fold_constants(parts.head, (x[:tile],)), strict=strict)
    head = head_lw.run((x[:tile],))
    if head.fallbacks or not all(isinstance(s.enqueue, Launch) for s in head.steps):
        return None
    (h_in,), h_out = head.inputs, head.outputs
    if not isinstance(h_out, Value) or h_out.offset or h_out.storage == h_in.storage or tuple(h_out.order) != NHWC:
        return None
    full_in = head_lw.new(x.shape, h_in.order)  # the model's input, which the tiles read slice by slice
    tail_lw = Lowering(parts.tail, device, fold_constants(parts.tail, (middle,)), strict=strict, input_order=NHWC)
    tail_lw._ids = head_lw._ids  # one id space for both
    tail = tail_lw.run((middle,))
    (t_in,) = tail.inputs

    out = Lowered(inputs=[full_in], outputs=tail.outputs, fallbacks=tail.fallbacks,
                  buffers={**head.buffers, **tail.buffers},
                  tiling={"cut_after": cut.name, "tiles": parts.tiles, "tile": tile, "head_steps": len(head.steps)})
    out.storage_sizes = {**head.storage_sizes, **tail.storage_sizes, full_in.storage: full_in.numel}
    for s in (h_in.storage, h_out.storage):  # they live inside full_in and t_in
        out.storage_sizes.pop(s, None)
    redirect = {h_in.storage: full_in.storage, h_out.storage: t_in.storage}

    def planned(vs):  # what the memory plan sees: the head's ends as the full tensors they sit in
        return [replace(v, storage=redirect.get(v.storage, v.storage)) for v in vs]

    # Every tile reruns the head over the same intermediate storages, so the whole input must outlive
    # the head's last step and the tail's input must be live from its first step: the plan sees the
    # first step write t_in and the last read full_in.
    ends = {0: ([], [t_in]), len(head.steps) - 1: ([full_in], [])}
    per_in, per_out = h_in.numel, h_out.numel
    for t in range(parts.tiles):
        remap = {h_in.storage: (full_in.storage, t * per_in), h_out.storage: (t_in.storage, t * per_out)}
        for phase, s in enumerate(head.steps):
            launch = s.enqueue if t == 0 else s.enqueue.clone()
            more_reads, more_writes = ends.get(phase, ([], []))
            out.steps.append(replace(s, reads=planned(s.reads) + more_reads, writes=planned(s.writes) + more_writes,
                                     enqueue=_Rebased(launch, remap), phase=phase, tile=t))
    for i, s in enumerate(tail.steps):
        out.steps.append(replace(s, phase=len(head.steps) + i))
    return out
