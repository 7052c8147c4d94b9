"""``torch.compile(model, backend="fxcompress")``: each graph TorchDynamo captures goes through
``compiler.compile`` and runs on the chosen target.

    model = torch.compile(model, backend="fxcompress", options={"pipeline": "default", "target": "opencl"})

Dynamo hands a backend a graph of functional calls (``torch.conv2d``, ``torch._C._nn.linear``,
``F.batch_norm``) whose parameters and buffers are inputs. Our passes rewrite layers (a Conv2d's
factorization, a BatchNorm folded into the conv before it), so ``modulize`` first makes the
parameters and buffers attributes again, frozen at their values when the graph is compiled (as
Inductor's ``freezing`` does: this backend is for inference), and the functional layers modules.
The returned callable reads only the graph's real inputs.

Options (``options={...}``): ``pipeline`` (as ``compile``: "default", a TOML path or a list of
passes) and ``target`` ("torch", "onnx" or "opencl"; default "opencl"). Shapes are static: use
``dynamic=False`` (a graph with symbolic sizes is refused with a clear error). The last graph's
``CompileReport`` is ``compiler.dynamo.last_report``.

Registered as the ``torch_dynamo_backends`` entry point ``fxcompress`` (pyproject.toml), which Dynamo
looks up by name, so ``backend="fxcompress"`` needs no import (``import torch._dynamo`` costs a
second, so ``import compiler`` does not register it); ``register()`` does it by hand where the
package is not installed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import InputError, PipelineError, choices
from .report import CompileReport

log = logging.getLogger(__name__)

OPTIONS = ("pipeline", "target")
CONV2D = (torch.conv2d, F.conv2d)
LINEAR = (torch._C._nn.linear, F.linear)
BATCH_NORM = (F.batch_norm,)
last_report: CompileReport | None = None


def fxcompress_backend(gm: fx.GraphModule, example_inputs: list, options: dict | None = None) -> Callable:
    """The ``torch.compile`` backend: ``gm`` made modules again (``modulize``), compiled by
    ``compiler.compile`` with ``options``, and a callable taking Dynamo's arguments."""
    from .api import compile as fx_compile

    global last_report
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise PipelineError(f"torch.compile(backend='fxcompress'): unknown options {unknown}, valid options are "
                            f"{choices(OPTIONS)}")
    symbolic = [i for i, x in enumerate(example_inputs) if not isinstance(x, torch.Tensor)]
    if symbolic or any(isinstance(d, torch.SymInt) for x in example_inputs if isinstance(x, torch.Tensor) for d in x.shape):
        raise InputError("torch.compile(backend='fxcompress') compiles static shapes, but Dynamo passed symbolic sizes "
                         f"(inputs {symbolic or 'with SymInt dims'}): call torch.compile(..., dynamic=False)")
    module, keep = modulize(gm, example_inputs)
    inputs = tuple(example_inputs[i] for i in keep)
    cm = fx_compile(module, inputs, pipeline=options.get("pipeline", "default"),
                    target=options.get("target", "opencl"), dynamic_batch=False)
    last_report = cm.report
    log.info("fxcompress backend: %d graph inputs (%d frozen parameters and buffers)\n%s",
             len(inputs), len(example_inputs) - len(inputs), cm.report)

    def run(*args):
        with torch.no_grad():
            out = cm(*(args[i] for i in keep))
        return out if isinstance(out, (tuple, list)) else (out,)

    run.report = cm.report
    return run


def modulize(gm: fx.GraphModule, example_inputs: list) -> tuple[fx.GraphModule, list[int]]:
    """``gm`` with the placeholders that hold parameters or buffers (an ``nn.Parameter``, or a name
    Dynamo gives buffers) turned into frozen attributes, and ``torch.conv2d`` / ``linear`` /
    ``batch_norm`` calls on such attributes into ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm{1,2}d``
    modules. Returns it and the indices of the inputs it still takes."""
    root = nn.Module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    consts: dict[fx.Node, torch.Tensor] = {}
    keep, k = [], 0
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            x = example_inputs[k]
            if isinstance(x, nn.Parameter) or "_buffers_" in n.target:
                name = f"c{len(consts)}"
                root.register_buffer(name, x.detach().clone())
                env[n] = graph.get_attr(name)
                consts[env[n]] = x.detach()
            else:
                env[n] = graph.placeholder(n.target)
                keep.append(k)
            k += 1
            continue
        layer = _layer(n, env, consts)
        if layer is not None:
            name = f"layer{sum(1 for _ in root.children())}"
            root.add_module(name, layer)
            env[n] = graph.call_module(name, (env[n.args[0]],))
        else:
            env[n] = graph.node_copy(n, lambda a: env[a])
    return fx.GraphModule(root, graph, class_name=gm.__class__.__name__), keep


def _layer(n: fx.Node, env: dict, consts: dict) -> nn.Module | None:
    """The module for a functional conv2d / linear / batch_norm node whose weights are constants."""
    if n.op != "call_function" or n.kwargs.get("out") is not None:
        return None
    args = list(n.args) + [None] * 8

    def const(a):
        return consts.get(env.get(a)) if isinstance(a, fx.Node) else None

    if n.target in CONV2D:
        w, b = const(args[1]), const(args[2])
        if w is None or w.dim() != 4 or (args[2] is not None and b is None):
            return None
        stride, padding, dilation, groups = (n.kwargs.get(k, d) if args[i] is None else args[i]
                                             for i, k, d in ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1),
                                                             (6, "groups", 1)))
        m = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                      dilation=dilation, groups=groups, bias=b is not None)
    elif n.target in LINEAR:
        w, b = const(args[1]), const(args[2] if args[2] is not None else n.kwargs.get("bias"))
        if w is None or w.dim() != 2:
            return None
        m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    elif n.target in BATCH_NORM:
        mean, var, w, b = (const(a) for a in args[1:5])
        training = args[5] if args[5] is not None else n.kwargs.get("training", False)
        rank = len(n.args[0].meta["example_value"].shape) if "example_value" in n.args[0].meta else None
        if mean is None or var is None or training or rank not in (2, 3, 4) or (args[3] is not None) != (w is not None):
            return None
        eps = args[7] if args[7] is not None else n.kwargs.get("eps", 1e-5)
        m = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(mean.numel(), eps=eps, affine=w is not None)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        b = b if w is not None else None
    else:
        return None
    with torch.no_grad():
        if w is not None:
            m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
    return m.eval()


def register() -> bool:
    """Register the backend with ``torch._dynamo`` as "fxcompress" (idempotent); False when this
    torch has no Dynamo."""
    try:
        from torch._dynamo import list_backends, register_backend
    except ImportError:  # pragma: no cover - every torch 2.x has it
        return False
    if "fxcompress" not in list_backends(exclude_tags=()):
        register_backend(fxcompress_backend, name="fxcompress")
    return True


__all__ = ["fxcompress_backend", "modulize", "register"]
