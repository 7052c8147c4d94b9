"""Small graph-surgery helpers shared by passes."""
from __future__ import annotations

import operator
from collections import Counter

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


def module_of(gm: fx.GraphModule, n: fx.Node) -> nn.Module | None:
    """The submodule a ``call_module`` node calls, else None."""
    return gm.get_submodule(n.target) if n.op == "call_module" else None


def is_module(gm: fx.GraphModule, n, types) -> bool:
    return isinstance(n, fx.Node) and n.op == "call_module" and isinstance(gm.get_submodule(n.target), types)


def call_counts(gm: fx.GraphModule) -> Counter:
    """How many nodes call each submodule: a module called twice shares its weights."""
    return Counter(n.target for n in gm.graph.nodes if n.op == "call_module")


def set_submodule(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def fetch_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def user_names(n: fx.Node) -> list[str]:
    return [u.name for u in n.users]


def describe(gm: fx.GraphModule, n: fx.Node) -> str:
    """``node 'name' (module path = Type)`` for refusals and errors."""
    if n.op == "call_module":
        return f"node '{n.name}' ({n.target} = {type(gm.get_submodule(n.target)).__name__})"
    return f"node '{n.name}' ({getattr(n.target, '__name__', n.target)})"


ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
ADD_METHODS = ("add", "add_")


def add_operands(n: fx.Node) -> tuple[object, object] | None:
    """The two operands of a plain ``a + b`` node (no ``alpha``), else None."""
    if n.kwargs.get("alpha", 1) != 1 or n.kwargs.get("out") is not None:
        return None
    if n.op == "call_function" and n.target in ADD_FUNCTIONS and len(n.args) == 2:
        return n.args[0], n.args[1]
    if n.op == "call_method" and n.target in ADD_METHODS and len(n.args) == 2:
        return n.args[0], n.args[1]
    return None


def is_stochastic_depth_eval(n: fx.Node) -> bool:
    """torchvision's ``stochastic_depth(x, p, mode, training=False)``: the identity at inference.

    Matched by name so fxcompress does not import torchvision.
    """
    t = n.target
    if n.op != "call_function" or getattr(t, "__name__", "") != "stochastic_depth":
        return False
    if not getattr(t, "__module__", "").startswith("torchvision."):
        return False
    training = n.args[3] if len(n.args) > 3 else n.kwargs.get("training", True)
    return training is False


# Reads of a tensor's metadata, not its values (see compiler/canonical.py).
META_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout", "is_sparse", "is_quantized"})
META_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "get_device", "is_contiguous",
                          "is_floating_point", "is_complex", "element_size"})


def is_metadata_read(n: fx.Node) -> bool:
    """``x.shape``, ``x.ndim``, ``x.size(i)``, ``x.dim()`` and the like: a use of ``x`` that reads no value."""
    if not n.args or not isinstance(n.args[0], fx.Node):
        return False
    if n.op == "call_function" and n.target is getattr and len(n.args) == 2:
        return n.args[1] in META_ATTRS
    return n.op == "call_method" and n.target in META_METHODS


def value_users(n: fx.Node) -> list[fx.Node]:
    """The users of ``n`` that read its values: metadata reads (a batch size kept symbolic) are left out."""
    return [u for u in n.users if not is_metadata_read(u)]


def activation_of(gm: fx.GraphModule, n: fx.Node) -> str | None:
    """The ``compiler.ops.ACTIVATIONS`` name of an elementwise activation node (module, function or
    method form alike), else None."""
    from .ops import ACT_FUNCTIONS, ACT_METHODS, ACT_MODULES, leaky_relu_name

    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        if isinstance(m, nn.GELU):
            return "gelu" if m.approximate == "none" else "gelu_tanh"
        if type(m) is nn.LeakyReLU:
            return leaky_relu_name(m.negative_slope)
        if type(m) is nn.ELU:
            return "elu" if m.alpha == 1.0 else None
        if type(m) is nn.Hardtanh:
            return "relu6" if (m.min_val, m.max_val) == (0.0, 6.0) else None
        return ACT_MODULES.get(type(m))
    if n.op == "call_function":
        t = n.target
        if t is F.gelu:
            return "gelu" if n.kwargs.get("approximate", "none") == "none" else "gelu_tanh"
        if t is F.hardtanh:
            bounds = dict(zip(("min_val", "max_val"), n.args[1:3])) | n.kwargs
            return "relu6" if (bounds.get("min_val", -1.0), bounds.get("max_val", 1.0)) == (0.0, 6.0) else None
        if t is F.leaky_relu:
            slope = (n.args[1] if len(n.args) > 1 else n.kwargs.get("negative_slope", 0.01))
            return leaky_relu_name(slope) if isinstance(slope, (int, float)) else None
        if t is F.elu:
            alpha = n.args[1] if len(n.args) > 1 else n.kwargs.get("alpha", 1.0)
            return "elu" if alpha == 1.0 else None
        if len(n.args) != 1 or any(k != "inplace" for k in n.kwargs):
            return None
        return ACT_FUNCTIONS.get(t)
    if n.op == "call_method" and len(n.args) == 1 and not n.kwargs:
        return ACT_METHODS.get(n.target)
    return None
