"""The canonical graph every rewrite starts from: shape metadata folded to constants.

Model code reads tensor metadata all the time - ``x.ndim`` in timm's ``BatchNormAct2d._assert``,
``B, N, C = x.shape`` in attention, ``x.size(1)`` in a channel shuffle. Traced, each read is a node
that *uses* the tensor, so a conv whose output is also read by ``x.ndim`` has two users, and a
rewrite that needs a single user (BatchNorm folding, epilogue fusion, pruning) refuses it.

A node is *static* when its value is fixed by the traced shapes alone:

- a metadata read of a tensor: ``x.shape``, ``x.ndim``, ``x.dtype``, ``x.device``, ``x.size(i)``,
  ``x.dim()``, ``x.numel()``;
- a forward argument the example inputs do not supply, bound to its default
  (``is_causal=False`` in timm's ViT) - traced with ``concrete_args``;
- any non-tensor computation over static values only (``C // 2``, ``x.shape[-1] ** -0.5``).

Static values are replaced by constants in their users and the static nodes are removed;
``torch._assert`` (which timm's ``_assert`` is) on a static condition that holds is removed too.

Functional forms of layers that a module owns - timm's ``Linear`` calling ``F.linear(x, self.weight,
self.bias)``, ``BatchNormAct2d`` calling ``F.batch_norm`` on its own statistics, ``Conv2dSame``
padding then calling ``F.conv2d`` - become calls of plain ``nn.Linear`` / ``nn.Conv2d`` /
``nn.BatchNorm{1,2,3}d`` / ``nn.LayerNorm`` modules at the owner's path, sharing its tensors (the
owner's children, such as ``BatchNormAct2d.act``, stay under it). Every rewrite and backend then
sees one form (``modularize``).

The batch dimension stays symbolic by default: the graph is run once more at batch ``b + 1``, and
a static value that changes with it (``x.shape[0]``, ``B * N``) is kept as a node, so the rewritten
graph still runs, fine-tunes and exports at any batch. Such remaining reads are metadata-only
users (``compiler.graph.value_users`` leaves them out), so they block no rewrite.
``dynamic_batch=False`` folds them too, for fixed-shape targets.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.node import map_arg

from . import meta
from .graph import is_metadata_read, set_submodule

log = logging.getLogger(__name__)

_ASSERTS = {torch._assert, getattr(torch.fx._symbolic_trace, "_assert_is_none", None)} - {None}
_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)


@dataclass
class Canonical:
    """What canonicalisation did, for the compile report."""

    folded: int = 0  # static nodes replaced by constants
    modularized: int = 0  # functional conv / linear / norm calls turned into their owner's plain module
    asserts_removed: int = 0
    bound_arguments: list[str] = field(default_factory=list)  # forward arguments bound to their defaults
    batch_reads: int = 0  # batch-dependent metadata kept symbolic
    batch_folded: int = 0  # batch-dependent values folded (dynamic_batch=False, or the model fixes its batch)
    dynamic_batch: bool = True

    def summary(self) -> str:
        parts = [f"{self.folded} shape reads folded to constants", f"{self.asserts_removed} asserts removed"]
        if self.modularized:
            parts.append(f"{self.modularized} functional layers turned into modules")
        if self.bound_arguments:
            parts.append(f"arguments bound to their defaults: {', '.join(self.bound_arguments)}")
        if self.batch_reads:
            parts.append(f"{self.batch_reads} batch-size reads kept symbolic")
        if self.batch_folded:
            parts.append(f"{self.batch_folded} batch-size reads folded (the graph runs at the traced batch only)")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}


def _foldable(v) -> bool:
    if isinstance(v, _SCALARS):
        return not (isinstance(v, float) and not math.isfinite(v))
    if isinstance(v, (tuple, list)):  # torch.Size is a tuple
        return all(_foldable(x) for x in v)
    if isinstance(v, slice):
        return all(_foldable(x) for x in (v.start, v.stop, v.step))
    return False


def _constant(v):
    if isinstance(v, torch.Size):
        return tuple(v)
    if isinstance(v, list):
        return [_constant(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_constant(x) for x in v)
    return v


class _Record(fx.Interpreter):
    """Run the graph and keep every node's non-tensor result."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[str, object] = {}

    def run_node(self, n: fx.Node):
        r = super().run_node(n)
        if not isinstance(r, torch.Tensor) and n.op not in ("output",):
            self.values[n.name] = r
        return r


def _record(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> dict[str, object] | None:
    rec = _Record(gm)
    try:
        with torch.no_grad():
            rec.run(*inputs)
    except Exception as e:  # noqa: BLE001 - a model that fixes its batch size fails here; that is an answer
        log.info("canonicalise: the graph does not run at batch %s (%s: %s)",
                 inputs[0].shape[0] if inputs and inputs[0].dim() else "?", type(e).__name__, e)
        return None
    return rec.values


def _static_nodes(gm: fx.GraphModule, n_inputs: int) -> list[fx.Node]:
    static: set[str] = set()
    out = []
    placeholders = 0
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            placeholders += 1
            if placeholders > n_inputs and n.args:  # bound to its default
                static.add(n.name)
                out.append(n)
            continue
        if n.op not in ("call_function", "call_method") or n.target in _ASSERTS:
            continue
        inputs = n.all_input_nodes
        if is_metadata_read(n) or (inputs and all(a.name in static for a in inputs)):
            static.add(n.name)
            out.append(n)
    return out


def canonicalize(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], *, dynamic_batch: bool = True,
                 root: nn.Module | None = None) -> Canonical:
    """Fold static metadata of ``gm`` (which carries shapes) and modularize it, in place; see the
    module docstring. ``root`` is the traced model: the owners' types and settings are read there (a
    GraphModule keeps a traced-through module only as a plain container of its tensors)."""
    result = Canonical(dynamic_batch=dynamic_batch)
    _fold_static(gm, inputs, result)
    result.modularized = modularize(gm, root if root is not None else gm)
    gm.graph.lint()
    gm.recompile()
    return result


def _fold_static(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], result: Canonical) -> None:
    static = _static_nodes(gm, len(inputs))
    if not static:
        return
    values = _record(gm, inputs)
    if values is None:
        return
    batch_dependent: set[str] = set()
    if inputs and all(t.dim() > 0 for t in inputs):
        other = _record(gm, tuple(torch.cat([t, t[:1]]) for t in inputs))
        if other is None:  # the model fixes its batch size: nothing can stay symbolic
            result.dynamic_batch = False
        else:
            batch_dependent = {n.name for n in static if n.name in values and other.get(n.name) != values[n.name]}
    keep_symbolic = batch_dependent if result.dynamic_batch else set()
    fold = [n for n in static if n.name in values and _foldable(values[n.name]) and n.name not in keep_symbolic]
    folded = {n.name for n in fold}
    for n in fold:
        value = _constant(values[n.name])
        for u in list(n.users):
            if u.name not in folded:
                u.args = map_arg(u.args, lambda a, n=n, v=value: v if a is n else a)
                u.kwargs = map_arg(u.kwargs, lambda a, n=n, v=value: v if a is n else a)
    for n in reversed(list(gm.graph.nodes)):
        if _holds(n):
            gm.graph.erase_node(n)
            result.asserts_removed += 1
        elif n.name in folded and not n.users:
            if n.op == "placeholder":
                result.bound_arguments.insert(0, f"{n.target}={values[n.name]!r}")
            else:
                result.folded += 1
                result.batch_folded += n.name in batch_dependent and is_metadata_read(n)
            gm.graph.erase_node(n)
    alive = {n.name for n in gm.graph.nodes}
    result.batch_reads = sum(1 for n in static if n.name in keep_symbolic and n.name in alive and is_metadata_read(n))


def _holds(n: fx.Node) -> bool:
    """An assert on a constant that holds: ``torch._assert(True, msg)``, ``_assert_is_none(None, msg)``."""
    if n.op != "call_function" or n.target not in _ASSERTS or n.all_input_nodes or not n.args:
        return False
    return n.args[0] is True if n.target is torch._assert else n.args[0] is None


_BN = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LN = ("input", "normalized_shape", "weight", "bias", "eps")
_FORMS = {F.linear: ("input", "weight", "bias"), F.conv1d: _CONV, F.conv2d: _CONV, F.conv3d: _CONV,
          F.batch_norm: _BN, F.layer_norm: _LN}


def modularize(gm: fx.GraphModule, root: nn.Module) -> int:
    """Turn owned functional layers into plain modules (see the module docstring); returns how many.
    ``root`` holds the owners as the model defines them."""
    done = 0
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and _is_conv2d_same(gm.get_submodule(n.target)):
            done += _static_same_padding(gm, n)
            continue
        if n.op != "call_function" or n.target not in _FORMS:
            continue
        a = dict(zip(_FORMS[n.target], n.args)) | dict(n.kwargs)
        owned = _owner(gm, a, "running_mean" if n.target is F.batch_norm else "weight")
        if owned is None:
            continue
        path, owner, attrs = owned
        try:
            defined = root.get_submodule(path)
        except AttributeError:
            continue
        plain = _plain(n.target, defined, a, meta.shape(n))
        if plain is None:
            continue
        for name, child in owner.named_children():  # BatchNormAct2d's act and drop stay where they were
            plain.add_module(name, child)
        plain.train(defined.training)  # (a GraphModule container is always in training mode)
        set_submodule(gm, path, plain)
        with gm.graph.inserting_before(n):
            new = gm.graph.call_module(path, (a["input"],))
        new.meta = dict(n.meta)
        n.replace_all_uses_with(new)
        gm.graph.erase_node(n)
        for g in attrs:
            if not g.users:
                gm.graph.erase_node(g)
        done += 1
    return done


def _owner(gm: fx.GraphModule, a: dict, key: str):
    """``(path, module, get_attr nodes)`` when every tensor argument is a stored tensor of one module,
    read nowhere else."""
    nodes = [v for k, v in a.items() if k != "input" and isinstance(v, fx.Node)]
    if not nodes or any(v.op != "get_attr" or len(v.users) != 1 for v in nodes):
        return None
    owners = {v.target.rpartition(".")[0] for v in nodes}
    first = a.get(key)
    if len(owners) != 1 or not isinstance(first, fx.Node):
        return None
    path = owners.pop()
    if not path or any(u.op == "call_module" and u.target == path for u in gm.graph.nodes):
        return None
    for k in ("weight", "bias", "running_mean", "running_var"):
        v = a.get(k)
        if isinstance(v, fx.Node) and v.target != f"{path}.{k}":
            return None  # the module's tensors under other names: not its own layer
    return path, gm.get_submodule(path), nodes


def _plain(fn, owner: nn.Module, a: dict, shape) -> nn.Module | None:
    """The plain module computing ``fn(**a)`` with ``owner``'s tensors, or None."""
    w = owner.weight if a.get("weight") is not None else None
    b = owner.bias if a.get("bias") is not None else None
    if fn is F.linear and isinstance(owner, nn.Linear):
        m = nn.Linear(owner.in_features, owner.out_features, bias=b is not None, device="meta")
    elif fn in (F.conv1d, F.conv2d, F.conv3d) and isinstance(owner, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        cls = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}[fn]
        if not isinstance(owner, cls):
            return None
        m = cls(owner.in_channels, owner.out_channels, owner.kernel_size, stride=a.get("stride", 1),
                padding=a.get("padding", 0), dilation=a.get("dilation", 1), groups=a.get("groups", 1),
                bias=b is not None, device="meta")
    elif fn is F.batch_norm and isinstance(owner, nn.modules.batchnorm._BatchNorm) and shape is not None:
        if a.get("training", False) or owner.running_mean is None or len(shape) not in (2, 3, 4, 5):
            return None
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(shape)]
        m = cls(owner.num_features, eps=a.get("eps", 1e-5), momentum=a.get("momentum", 0.1),
                affine=a.get("weight") is not None, device="meta")
        m.running_mean, m.running_var = owner.running_mean, owner.running_var
        m.num_batches_tracked = getattr(owner, "num_batches_tracked", None)
    elif fn is F.layer_norm and isinstance(owner, nn.LayerNorm):
        m = nn.LayerNorm(a["normalized_shape"], eps=a.get("eps", 1e-5), elementwise_affine=a.get("weight") is not None,
                         bias=a.get("bias") is not None, device="meta")
    else:
        return None
    if getattr(m, "weight", None) is not None:
        m.weight = w
    if getattr(m, "bias", None) is not None:
        m.bias = b
    return m


def _is_conv2d_same(m: nn.Module) -> bool:
    """timm's ``Conv2dSame``: TF 'SAME' padding computed from the input size on every call."""
    t = type(m)
    return t.__name__ == "Conv2dSame" and t.__module__.startswith("timm.") and isinstance(m, nn.Conv2d)


def _static_same_padding(gm: fx.GraphModule, n: fx.Node) -> int:
    """A ``Conv2dSame`` at a traced input size: a plain ``nn.Conv2d`` with that padding, after an
    ``F.pad`` node when the padding is asymmetric (stride 2 on an even size pads right/bottom only)."""
    m, shape = gm.get_submodule(n.target), meta.shape(n.args[0])
    if shape is None or len(shape) != 4:
        return 0
    pads = [max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
            for i, k, s, d in zip(shape[2:], m.kernel_size, m.stride, m.dilation)]
    symmetric = all(p % 2 == 0 for p in pads)
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                     padding=tuple(p // 2 for p in pads) if symmetric else 0, dilation=m.dilation, groups=m.groups,
                     bias=m.bias is not None, device="meta")
    conv.weight, conv.bias = m.weight, m.bias
    set_submodule(gm, n.target, conv.train(m.training))
    if not symmetric:
        (ph, pw) = pads
        with gm.graph.inserting_before(n):
            padded = gm.graph.call_function(F.pad, (n.args[0], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
        n.args = (padded, *n.args[1:])
    return 1
