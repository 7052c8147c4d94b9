r"""``factorize``: replace Conv2d and Linear layers by chains of smaller layers.

Methods (the numerics and their references are in ``passes/decompose/``):

==============  =========================================================  ==========================
method          a k x k Conv2d becomes                                      a Linear becomes
==============  =========================================================  ==========================
``svd``         k x k conv C->r, 1x1 conv r->O                              Linear I->r, Linear r->O
``spatial_svd`` (k x 1) conv C->r, (1 x k) conv r->O                        -
``tucker2``     1x1 C->r_in, k x k r_in->r_out, 1x1 r_out->O                 -
``cp``          1x1 C->R, depthwise k x 1, depthwise 1 x k, 1x1 R->O         -
``tt``          1x1 C->r1, (k x 1) r1->r2, (1 x k) r2->r3, 1x1 r3->O          TT-matrix cores (TTLinear)
==============  =========================================================  ==========================

``rank`` is a rank spec (see ``passes/decompose/ranks.py``): an int, a fraction of full rank,
``"params:p"``, ``"energy:e"`` or ``"vbmf"``. ``overrides`` maps module-path globs to a rank spec or
``"skip"``; the first matching glob wins. Layers are skipped (with the reason in the report) when
they are the first or last conv/linear, smaller than ``min_params``, depthwise, a 1x1 conv
for a method that needs a spatial kernel, or when the factorization would not reduce parameters.

A grouped conv is factorized per group into grouped layers (``decompose.grouped``).

Run it before ``fuse``: it rewrites plain ``nn.Conv2d`` / ``nn.Linear`` nodes.
"""
from __future__ import annotations

import fnmatch
import math

import torch
import torch.fx as fx
from torch import nn
from tqdm.auto import tqdm

from compiler.analysis import node_macs
from compiler.errors import FactorizationError, PipelineError, RankError, choices
from compiler.graph import call_counts, set_submodule
from compiler.pass_base import Pass, PassContext, PassResult
from compiler.report import Refusal
from compiler.trace import propagate_shapes

from .decompose import METHODS, for_layer, parse_rank, resolve_ranks
from .decompose.methods import METHOD_NAMES
from .factor_layers import SEPARABLE, FactorChain, build_chain, explicit_padding

SKIP = "skip"


class Factorize(Pass, name="factorize"):
    """Low-rank factorization of Conv2d/Linear layers: svd, spatial_svd, tucker2, cp or tt."""

    preserves = frozenset({"shapes"})  # run() re-propagates shapes after rewriting, for its MAC columns

    def __init__(
        self,
        *,
        method: str = "tucker2",
        rank: int | float | str = 0.25,
        overrides: dict | None = None,
        skip_first: bool = True,  # the first layer sees raw pixels: little to gain, much to lose
        skip_last: bool = True,  # the classifier head
        min_params: int = 0,
        skip_depthwise: bool = True,
        tolerance: float = math.inf,  # max added relative output error before VerificationError
        progress: bool = False,
    ) -> None:
        if method not in METHOD_NAMES:
            raise PipelineError(f"unknown factorization method '{method}', valid methods are {choices(METHOD_NAMES)}")
        self.method = method
        self.rank = _parse(rank, "rank")
        self.overrides = {g: (SKIP if v == SKIP else _parse(v, f"overrides['{g}']")) for g, v in (overrides or {}).items()}
        self.skip_first, self.skip_last = skip_first, skip_last
        self.min_params, self.skip_depthwise = min_params, skip_depthwise
        self.tolerance = tolerance
        self.progress = progress

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = [n for n in gm.graph.nodes if n.op == "call_module" and type(gm.get_submodule(n.target)) in (nn.Conv2d, nn.Linear)]
        calls = call_counts(gm)
        refusals: list[Refusal] = []
        plan = []
        used_globs: set[str] = set()
        for i, n in enumerate(layers):
            spec, reason = self._choose(gm, n, i, len(layers), calls, used_globs)
            if reason:
                refusals.append(Refusal(n.name, reason))
            else:
                plan.append((n, spec))
        warnings = [f"factorize: override glob '{g}' matches no layer" for g in self.overrides if g not in used_globs]

        inputs = _capture_inputs(gm, [n for n, _ in plan], ctx.example_inputs)
        details, rewritten = [], []
        for n, spec in tqdm(plan, desc=f"factorize ({self.method})", disable=not self.progress, leave=False):
            layer = gm.get_submodule(n.target)
            w = layer.weight.detach()
            if not torch.isfinite(w).all():
                raise FactorizationError(f"layer '{n.target}' has NaN or inf weights; cannot factorize it")
            kind = "linear" if isinstance(layer, nn.Linear) else "conv"
            m = for_layer(self.method, kind, getattr(layer, "groups", 1))
            try:
                ranks = resolve_ranks(spec, m, w)
            except ValueError as e:
                raise RankError(f"layer '{n.target}' ({_describe(layer)}), rank {spec}: {e}") from e
            before = sum(p.numel() for p in layer.parameters())
            after = m.params(tuple(w.shape), ranks) + (layer.bias.numel() if layer.bias is not None else 0)
            if after >= before:
                refusals.append(Refusal(n.name, f"{self.method} at rank {list(ranks)} keeps {after:,} params, not fewer than {before:,}"))
                continue
            try:
                factors = m.decompose(w, ranks)
            except ValueError as e:
                raise FactorizationError(f"layer '{n.target}' ({_describe(layer)}): {e}") from e
            chain = build_chain(self.method, layer, factors)
            weight_err = ((m.reconstruct(factors) - w).norm() / w.norm().clamp_min(1e-30)).item()
            out_err = _output_error(layer, chain, inputs.get(n.name))
            macs_before = node_macs(gm, n)
            new_nodes = _replace(gm, n, chain)
            rewritten.append(new_nodes)
            details.append({
                "layer": n.target, "method": self.method, "rank": list(ranks), "params_before": before, "params_after": after,
                "macs_before": macs_before, "macs_after": None, "weight_rel_err": weight_err, "output_rel_err": out_err,
            })
        if rewritten:
            gm.recompile()
            propagate_shapes(gm, ctx.example_inputs)
            for d, nodes in zip(details, rewritten):
                d["macs_after"] = sum(node_macs(gm, x) for x in nodes)
        return PassResult(modified=bool(rewritten), matches=len(rewritten), refusals=refusals, details=details, warnings=warnings)

    def _choose(self, gm, n: fx.Node, index: int, count: int, calls, used_globs: set[str]):
        """``(rank spec, None)`` for a layer to factorize, or ``(None, reason)``."""
        layer = gm.get_submodule(n.target)
        spec = self.rank
        for glob, value in self.overrides.items():
            if fnmatch.fnmatchcase(n.target, glob):
                used_globs.add(glob)
                if value == SKIP:
                    return None, f"skipped by override '{glob}'"
                spec = value
                break
        if self.skip_first and index == 0:
            return None, "skipped: first layer (skip_first=True)"
        if self.skip_last and index == count - 1:
            return None, "skipped: last layer (skip_last=True)"
        if calls[n.target] > 1:
            return None, f"module '{n.target}' is called {calls[n.target]} times (shared weights)"
        nparams = sum(p.numel() for p in layer.parameters())
        if nparams < self.min_params:
            return None, f"skipped: {nparams:,} params < min_params={self.min_params:,}"
        kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        if (self.method, kind) not in METHODS:
            valid = [name for name, k in METHODS if k == kind]
            return None, f"method '{self.method}' has no {type(layer).__name__} form; for {type(layer).__name__} use {valid}"
        if kind == "conv":
            if layer.groups > 1 and layer.groups == layer.in_channels:
                return None, "skipped: depthwise conv (nothing to factorize across channels)"
            if self.method != "svd" and layer.kernel_size == (1, 1):
                return None, f"1x1 conv: {self.method} needs a spatial kernel; use method 'svd' for 1x1 convs"
            if self.method in SEPARABLE:
                if explicit_padding(layer) is None:
                    return None, f"padding='same' with an even kernel {layer.kernel_size} is asymmetric; {self.method} cannot split it"
                if layer.padding_mode != "zeros":
                    return None, f"padding_mode='{layer.padding_mode}' is not split across separable factors"
        return spec, None


def _parse(value, what: str):
    try:
        return parse_rank(value)
    except ValueError as e:
        raise RankError(f"factorize {what}: {e}") from e


def _describe(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear {layer.in_features}->{layer.out_features}"
    return f"Conv2d {layer.in_channels}->{layer.out_channels} k={layer.kernel_size}"


def _capture_inputs(gm: fx.GraphModule, nodes: list[fx.Node], inputs) -> dict[str, torch.Tensor]:
    """The input each layer sees on the example inputs (one forward pass)."""
    wanted = {n.name for n in nodes}
    seen: dict[str, torch.Tensor] = {}

    class Capture(fx.Interpreter):
        def run_node(self, n):
            if n.name in wanted:
                seen[n.name] = self.env[n.args[0]]
            return super().run_node(n)

    if wanted:
        with torch.no_grad():
            Capture(gm).run(*inputs)
    return seen


def _output_error(layer: nn.Module, chain: list[nn.Module], x: torch.Tensor | None) -> float | None:
    if x is None:
        return None
    with torch.no_grad():
        ref = layer(x)
        y = x
        for m in chain:
            y = m(y)
    return ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _replace(gm: fx.GraphModule, n: fx.Node, chain: list[nn.Module]) -> list[fx.Node]:
    set_submodule(gm, n.target, FactorChain(*chain))
    x = n.args[0]
    new = []
    with gm.graph.inserting_before(n):
        for i in range(len(chain)):
            x = gm.graph.call_module(f"{n.target}.{i}", (x,))
            new.append(x)
    n.replace_all_uses_with(x)
    gm.graph.erase_node(n)
    return new
