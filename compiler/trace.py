"""Tracing: torch.fx symbolic tracing, automatic leaf fallback, then shape propagation.

``trace`` deep-copies the model (passes rewrite parameters in place, and the user's model must stay
the oracle), puts the copy in eval mode, and traces it. When a submodule cannot be traced (for
example data-dependent control flow), the innermost submodule that failed becomes a leaf - it is
called as a whole, not traced through - and tracing is retried. Every such fallback is recorded in
``gm.meta["fxcompress.trace"]`` and shows up in the compile report.
"""
from __future__ import annotations

import copy
import inspect
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .canonical import Canonical, canonicalize
from .errors import InputError, TraceError
from .ops import LEAF_OPS

TRACE_INFO = "fxcompress.trace"
LeafSpec = type[nn.Module] | str

_TORCH_DIR = os.path.dirname(torch.__file__)
_OUR_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class AutoLeaf:
    """A submodule that could not be traced and was kept whole."""

    path: str
    reason: str


@dataclass
class TraceInfo:
    user_leaves: tuple[str, ...] = ()
    auto_leaves: list[AutoLeaf] = field(default_factory=list)
    canonical: Canonical | None = None


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...], leaf_paths: set[str]):
        super().__init__()
        self.leaf_types = leaf_types
        self.leaf_paths = leaf_paths

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_paths or isinstance(m, LEAF_OPS) or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            # The innermost module sees the exception first; keep its path.
            if not hasattr(e, "_fxcompress_module_path"):
                e._fxcompress_module_path = path  # type: ignore[attr-defined]
            raise


def as_input_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    """Normalise example inputs to a tuple of tensors, or raise InputError."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise InputError(
        f"example_inputs must be a Tensor or a tuple of Tensors, got {_describe(example_inputs)}"
    )


def check_module(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__module__}.{type(model).__qualname__}")
    return model


def trace(
    model: nn.Module,
    example_inputs,
    *,
    leaf_modules: Iterable[LeafSpec] = (),
    max_fallbacks: int = 32,
    dynamic_batch: bool = True,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule whose nodes carry shapes and dtypes.

    Parameters
    ----------
    model : nn.Module
        The model. It is deep-copied and the copy is put in eval mode; ``model`` itself is not touched.
    example_inputs : Tensor or tuple of Tensors
        Inputs used for shape propagation.
    leaf_modules : iterable of module types or dotted module paths
        Submodules to keep whole rather than trace through.
    max_fallbacks : int
        How many untraceable submodules may be turned into leaves before giving up.
    dynamic_batch : bool
        Keep reads of the batch size symbolic, so the graph runs at any batch (``compiler.canonical``).
        False folds them to the traced batch too. Other shape metadata is always folded.

    Raises
    ------
    InputError
        ``model`` is not a module, or the inputs do not fit it.
    TraceError
        Tracing failed even with fallbacks; names the module path and the source line.
    """
    check_module(model)
    inputs = as_input_tuple(example_inputs)
    model = copy.deepcopy(model).eval()

    leaf_types = tuple(s for s in leaf_modules if isinstance(s, type))
    leaf_paths = {s for s in leaf_modules if isinstance(s, str)}
    bad = [s for s in leaf_modules if not isinstance(s, (str, type))]
    if bad:
        raise InputError(f"leaf_modules entries must be module types or dotted paths, got {bad!r}")
    unknown = leaf_paths - {name for name, _ in model.named_modules()}
    if unknown:
        raise InputError(f"leaf_modules names paths that are not submodules of the model: {sorted(unknown)}")

    info = TraceInfo(user_leaves=tuple(sorted(leaf_paths)) + tuple(t.__qualname__ for t in leaf_types))
    concrete = _defaults_beyond(model, len(inputs))
    for _ in range(max_fallbacks + 1):
        tracer = _Tracer(leaf_types, leaf_paths)
        try:
            graph = tracer.trace(model, concrete_args=concrete or None)
            break
        except Exception as e:  # noqa: BLE001 - anything fx raises is a trace failure here
            path = getattr(e, "_fxcompress_module_path", "")
            if not path or path in leaf_paths:
                raise TraceError(
                    f"torch.fx cannot trace the model: {type(e).__name__}: {_first_line(e)}. "
                    "Pass the module in leaf_modules=, or make its control flow independent of tensor values",
                    module_path=path,
                    source_line=_user_source_line(e),
                ) from e
            leaf_paths.add(path)
            info.auto_leaves.append(AutoLeaf(path, f"{type(e).__name__}: {_first_line(e)}"))
    else:
        raise TraceError(f"gave up after {max_fallbacks} leaf fallbacks", module_path=path)

    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta[TRACE_INFO] = info
    _check_arity(gm, inputs)
    propagate_shapes(gm, inputs)
    info.canonical = canonicalize(gm, inputs, dynamic_batch=dynamic_batch, root=model)
    if info.canonical.modularized:
        propagate_shapes(gm, inputs)  # new pad nodes, new modules
    if concrete and len(info.canonical.bound_arguments) == len(concrete):  # fx renames them (scale -> scale_1)
        info.canonical.bound_arguments = [f"{k}={v!r}" for k, v in concrete.items()]
    return gm


def _defaults_beyond(model: nn.Module, n_inputs: int) -> dict[str, object]:
    """``forward`` arguments past the example inputs whose defaults are plain constants (timm's
    ``attn_mask=None, is_causal=False``): traced as those constants, so code that branches on them
    follows the path the model takes when they are left out."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in params[n_inputs:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            continue
        if p.default is None or isinstance(p.default, (bool, int, float, str)):
            out[p.name] = p.default
    return out


class _ShapeProp(ShapeProp):
    current: fx.Node | None = None

    def run_node(self, n: fx.Node):
        self.current = n
        return super().run_node(n)


def propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Annotate every node with shape and dtype; raise InputError naming the node that fails."""
    prop = _ShapeProp(gm)
    try:
        with torch.no_grad():
            prop.propagate(*inputs)
    except Exception as e:  # noqa: BLE001
        cause = e.__cause__ or e
        n = prop.current
        where = f"node '{n.name}' ({n.op} {_target_name(gm, n)})" if n is not None else "the graph"
        shapes = ", ".join(f"{tuple(t.shape)}:{str(t.dtype).removeprefix('torch.')}" for t in inputs)
        raise InputError(
            f"example inputs [{shapes}] do not fit the model: {where} failed with "
            f"{type(cause).__name__}: {_first_line(cause)}"
        ) from e


def _check_arity(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    required = [n for n in placeholders if not n.args]  # a placeholder's args hold its default
    if not len(required) <= len(inputs) <= len(placeholders):
        names = [n.target for n in placeholders]
        raise InputError(f"model.forward takes inputs {names} ({len(required)} required), got {len(inputs)} example inputs")


def _target_name(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return f"{n.target} = {type(gm.get_submodule(n.target)).__name__}"
    return getattr(n.target, "__name__", str(n.target))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _user_source_line(e: BaseException) -> str | None:
    frames = traceback.extract_tb(e.__traceback__)
    for fr in reversed(frames):
        fn = os.path.abspath(fr.filename)
        if not fn.startswith(_TORCH_DIR) and not fn.startswith(_OUR_DIR) and fr.line:
            return f"{fr.filename}:{fr.lineno}: {fr.line.strip()}"
    return None


def _describe(x) -> str:
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of [{', '.join(type(v).__name__ for v in x)}]"
    return type(x).__name__
