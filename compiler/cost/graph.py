"""Whole-model prediction, fusion-aware: price the kernel launches the OpenCL runtime's lowering
really made for a compiled model (its step list), not the graph's ops. Compute steps are priced by
the calibrated layer model; the others (layout copies, elementwise, pooling, softmax) move their
operands once at the target's bandwidth; every launch adds the target's launch cost; the input's
upload and the output's download are copies too."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.fx as fx

from .. import meta
from .families import FAMILIES
from .layers import Layer, module_layers
from .model import CostModel


VIEWS = {"view", "reshape", "flatten", "permute", "transpose", "size", "contiguous", "squeeze", "unsqueeze"}
VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze}


@dataclass
class Prediction:
    steps: list[tuple[str, str, float]] = field(default_factory=list)  # (node, kernel family, ms)

    @property
    def total_ms(self) -> float:
        return sum(ms for *_, ms in self.steps)

    def by_family(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, family, ms in self.steps:
            out[family] = out.get(family, 0.0) + ms
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _layers_of(gm: fx.GraphModule, n: fx.Node) -> list[Layer]:
    if n.op != "call_module" or not n.args or not isinstance(n.args[0], fx.Node):
        return []
    try:
        return module_layers(gm.get_submodule(n.target), meta.shape(n.args[0]))[0]
    except Exception:  # noqa: BLE001 - not a priced module: its steps are costed by bytes
        return []


def predict_compiled(cm, model: CostModel) -> Prediction:
    """Predicted latency of ``cm``, a model compiled with ``target="opencl"``."""
    runner = getattr(cm, "_runner", None)
    if runner is None or not hasattr(runner, "lowered"):
        raise TypeError(f"predict_compiled needs a model compiled for target 'opencl', got target {cm.target!r}")
    gm, t = cm.graph_module, model.target
    nodes = {n.name: n for n in gm.graph.nodes}
    pending: dict[tuple[str, int | None], list[Layer]] = {}
    tiles = (runner.lowered.tiling or {}).get("tiles", 1)
    pred = Prediction()
    for step in runner.lowered.steps:
        ms = None
        if step.kernel in FAMILIES:
            key = (step.node, step.tile)  # a tiled head's step computes one tile's share
            if key not in pending:
                layers = _layers_of(gm, nodes[step.node])
                pending[key] = [replace(x, n=x.n // tiles) for x in layers] if key[1] is not None else layers
            queue = pending[key]
            if queue and queue[0].family == step.kernel:
                ms = model.layer_ms(queue.pop(0))
        if ms is None:
            ms = _moving_ms(t, sum(v.numel for v in (*step.reads, *step.writes)))
        ms += t.launch_us * 1e-3
        pred.steps.append((step.node, step.kernel, ms))
    io = sum(v.numel for v in (*runner.lowered.inputs, *runner.lowered.output_values))
    pred.steps.append(("input/output", "copies", _moving_ms(t, io)))
    return pred


def predict_graph(gm: fx.GraphModule, model: CostModel) -> Prediction:
    """Predicted latency of an fx graph before lowering, offline (no device needed): conv and linear
    modules (and factorize's chains) by the layer model, every other tensor op as one launch moving
    its operands at the target's bandwidth. Not fusion-aware (``predict_compiled`` is); the budget
    pass uses it to price the parts of a model no candidate touches, before and after."""
    t = model.target
    pred = Prediction()
    for n in gm.graph.nodes:
        if n.op not in ("call_module", "call_function", "call_method") or meta.shape(n) is None:
            continue
        layers = _layers_of(gm, n)
        if layers:
            for layer in layers:
                pred.steps.append((n.name, layer.family, model.layer_ms(layer) + t.launch_us * 1e-3))
            continue
        if n.op == "call_method" and n.target in VIEWS or n.op == "call_function" and n.target in VIEW_FUNCTIONS:
            continue  # relabelled by the lowering, no kernel
        moved = sum(torch.Size(meta.shape(a)).numel() for a in (*n.all_input_nodes, n) if meta.shape(a) is not None)
        pred.steps.append((n.name, "other", _moving_ms(t, moved) + t.launch_us * 1e-3))
    return pred


def _moving_ms(t, elements: int) -> float:
    """Milliseconds to move ``elements`` float32 values once at the target's bandwidth."""
    return 4 * elements / (t.bandwidth_gbs * 1e6)
