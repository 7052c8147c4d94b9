"""Whole-model prediction, fusion-aware: price the kernel launches the OpenCL runtime's lowering
really made for a compiled model (its step list), not the graph's ops. Each launch becomes a
``Work``: a layer for the calibrated layer model, or the elements a copy, elementwise, pooling or
softmax kernel moves; the input's upload and the output's download are one more. ``CostModel.predict``
turns a list of them into milliseconds (kernel times composed with the per-launch and per-call
costs it calibrated on whole networks)."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.fx as fx

from .. import meta
from .families import FAMILIES, reads_nchw
from .layers import Layer, module_layers
from .model import CostModel, Prediction, Work

VIEWS = {"view", "reshape", "flatten", "permute", "transpose", "size", "contiguous", "squeeze", "unsqueeze"}
VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze}

__all__ = ["Prediction", "Work", "compiled_work", "graph_work", "predict_compiled", "predict_graph", "reads_model_input"]


def reads_model_input(n: fx.Node) -> bool:
    """Whether ``n``'s first argument is the graph's input: before lowering, what tells that a conv
    there will read it as uploaded (``families.reads_nchw``)."""
    return bool(n.args) and isinstance(n.args[0], fx.Node) and n.args[0].op == "placeholder"


def _layers_of(gm: fx.GraphModule, n: fx.Node) -> list[Layer]:
    """The layers of a conv / linear node; a conv on the graph's input reads it as uploaded (NCHW)."""
    if n.op != "call_module" or not n.args or not isinstance(n.args[0], fx.Node):
        return []
    try:
        return module_layers(gm.get_submodule(n.target), meta.shape(n.args[0]), nchw=reads_model_input(n))[0]
    except Exception:  # noqa: BLE001 - not a priced module: its steps are costed by bytes
        return []


def compiled_work(cm) -> list[Work]:
    """The launches of ``cm``, a model compiled with ``target="opencl"``, as the cost model prices
    them, plus the input upload and output download."""
    runner = getattr(cm, "_runner", None)
    if runner is None or not hasattr(runner, "lowered"):
        raise TypeError(f"predict_compiled needs a model compiled for target 'opencl', got target {cm.target!r}")
    gm = cm.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    pending: dict[tuple[str, int | None], list[Layer]] = {}
    tiles = (runner.lowered.tiling or {}).get("tiles", 1)
    out = []
    for step in runner.lowered.steps:
        layer = None
        if step.kernel in FAMILIES:
            key = (step.node, step.tile)  # a tiled head's step computes one tile's share
            if key not in pending:
                layers = _layers_of(gm, nodes[step.node])
                pending[key] = [replace(x, n=x.n // tiles) for x in layers] if key[1] is not None else layers
            queue = pending[key]
            if queue and queue[0].family == step.kernel:
                layer = queue.pop(0)
                x = step.reads[0]  # the layout the lowering really gave the layer's input
                layer = replace(layer, nchw=reads_nchw(layer.family, x.order, x.offset))
        out.append(Work(step.node, step.kernel, layer, 0 if layer else sum(v.numel for v in (*step.reads, *step.writes))))
    io = sum(v.numel for v in (*runner.lowered.inputs, *runner.lowered.output_values))
    out.append(Work("input/output", "copies", None, io))
    return out


def predict_compiled(cm, model: CostModel) -> Prediction:
    """Predicted latency of ``cm``, a model compiled with ``target="opencl"``, and its peak device
    memory: the runtime's activation arena (its memory plan) plus the weights."""
    pred = model.predict(compiled_work(cm))
    pred.peak_bytes = cm._runner.arena_bytes + _weight_bytes(cm.graph_module)
    return pred


def _weight_bytes(gm: fx.GraphModule) -> int:
    return 4 * sum(t.numel() for t in (*gm.parameters(), *gm.buffers()))


def graph_work(gm: fx.GraphModule) -> list[Work]:
    """The work of an fx graph before lowering: conv and linear modules (and factorize's chains) as
    layers, every other tensor op as one launch moving its operands, views as nothing."""
    out = []
    for n in gm.graph.nodes:
        if n.op not in ("call_module", "call_function", "call_method") or meta.shape(n) is None:
            continue
        layers = _layers_of(gm, n)
        if layers:
            out += [Work(n.name, layer.family, layer) for layer in layers]
            continue
        if n.op == "call_method" and n.target in VIEWS or n.op == "call_function" and n.target in VIEW_FUNCTIONS:
            continue  # relabelled by the lowering, no kernel
        moved = sum(torch.Size(meta.shape(a)).numel() for a in (*n.all_input_nodes, n) if meta.shape(a) is not None)
        out.append(Work(n.name, "other", None, moved))
    return out


def predict_graph(gm: fx.GraphModule, model: CostModel) -> Prediction:
    """Predicted latency of an fx graph before lowering, offline (no device needed), and its peak
    memory: the most float32 activation bytes alive at once in graph order (what an arena plan
    approaches from above), plus the weights. Not fusion-aware (``predict_compiled`` is): the budget
    pass runs the ``fuse`` pass on a copy first."""
    pred = model.predict(graph_work(gm))
    pred.peak_bytes = live_peak_bytes(gm) + _weight_bytes(gm)
    return pred


def live_peak_bytes(gm: fx.GraphModule) -> int:
    """The most float32 bytes of node outputs alive at once, running ``gm``'s nodes in order: an
    output lives from its node to its last user (graph outputs to the end)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    last = {n: max((order[u] for u in n.users), default=len(order)) for n in gm.graph.nodes}
    size = {n: 4 * torch.Size(meta.shape(n)).numel() if n.op != "get_attr" and meta.shape(n) is not None else 0
            for n in gm.graph.nodes}
    for n in gm.graph.nodes:
        if n.op == "output":
            for a in n.all_input_nodes:
                last[a] = len(order)
    live, peak, ends = 0, 0, {}
    for n, i in order.items():
        live += size[n]
        peak = max(peak, live)
        ends.setdefault(last[n], []).append(n)
        live -= sum(size[m] for m in ends.pop(i, []))
    return peak
