r"""``fold_bn``: fold an inference BatchNorm into the Conv or Linear that feeds it.

With ``s = gamma / sqrt(var + eps)`` per output channel::

    W' = W * s            (scaled along the output-channel axis)
    b' = (b - mean) * s + beta

Both the module form (``nn.BatchNorm{1,2,3}d`` after ``nn.Conv{1,2,3}d`` / ``nn.Linear``) and the
functional form ``F.batch_norm(x, running_mean, running_var, weight, bias, False, ...)`` that timm
traces to are matched. The fold is computed in float64, then cast back.

Refused, with the reason in the report, when the conv's output has other users (they would see
normalised values), when the conv module is called more than once (shared weights), when the
BatchNorm uses batch statistics, or when a Linear's output is not ``(N, C)``.
"""
from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compiler import meta
from compiler.graph import call_counts, describe, fetch_attr, is_module, value_users
from compiler.ops import fold_into
from compiler.pass_base import Pass, PassContext, PassResult
from compiler.report import Refusal

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


class FoldBN(Pass, name="fold_bn"):
    """Fold BatchNorm (module or functional form) into the preceding Conv or Linear."""

    def __init__(self) -> None:
        pass

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        calls = call_counts(gm)
        refusals: list[Refusal] = []
        folded = 0
        for n in list(gm.graph.nodes):
            stats = self._match(gm, n)
            if stats is None:
                continue
            src = n.args[0]
            reason = self._refusal(gm, n, src, calls)
            if isinstance(stats, str):
                reason = reason or stats
            if reason:
                refusals.append(Refusal(n.name, reason))
                continue
            fold_into(gm.get_submodule(src.target), *stats)
            n.replace_all_uses_with(src)
            gm.graph.erase_node(n)
            folded += 1
        if folded:
            gm.graph.eliminate_dead_code()  # the functional form leaves get_attr nodes behind
            gm.delete_all_unused_submodules()
        return PassResult(modified=folded > 0, matches=folded, refusals=refusals)

    @staticmethod
    def _match(gm: fx.GraphModule, n: fx.Node):
        """BN statistics ``(mean, var, gamma, beta, eps)`` if ``n`` is an inference BN after a conv/linear.

        Returns a string (the refusal reason) for a BN that matches but cannot be folded, None for no match.
        """
        if not n.args or not is_module(gm, n.args[0], CONVS + (nn.Linear,)):
            return None
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), NORMS):
            bn = gm.get_submodule(n.target)
            if bn.running_mean is None:
                return f"{describe(gm, n)} uses batch statistics (track_running_stats=False)"
            return bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps
        if n.op == "call_function" and n.target is F.batch_norm:
            a = dict(zip(_BN_ARGS, n.args)) | dict(n.kwargs)
            if a.get("training", False):
                return f"{describe(gm, n)} is F.batch_norm with training=True (batch statistics)"
            tensors = []
            for key in ("running_mean", "running_var", "weight", "bias"):
                v = a.get(key)
                if v is None:
                    tensors.append(None)
                elif isinstance(v, fx.Node) and v.op == "get_attr":
                    tensors.append(fetch_attr(gm, v.target))
                else:
                    return f"{describe(gm, n)}: argument '{key}' is computed in the graph, not a stored tensor"
            if tensors[0] is None or tensors[1] is None:
                return f"{describe(gm, n)} has no running statistics"
            return (*tensors, float(a.get("eps", 1e-5)))
        return None

    @staticmethod
    def _refusal(gm: fx.GraphModule, bn: fx.Node, src: fx.Node, calls) -> str | None:
        if len(value_users(src)) > 1:  # metadata reads see the same shape after the fold
            others = [u.name for u in value_users(src) if u is not bn]
            return f"output of {describe(gm, src)} is also used by {others}, which would see normalised values"
        if calls[src.target] > 1:
            return f"module '{src.target}' is called {calls[src.target]} times (shared weights)"
        op = gm.get_submodule(src.target)
        if isinstance(op, nn.Linear) and len(meta.shape(src) or ()) != 2:
            return f"BatchNorm after {describe(gm, src)} normalises dim 1 of a {meta.shape(src)} tensor, not its features"
        return None
