"""``fuse``: replace a conv or linear and its epilogue by one ``FusedOp`` node.

Pattern, in graph order::

    y = op(x)                 # Conv{1,2,3}d or Linear (its bias is part of the op)
    y = y + r                 # optional residual add, r of y's exact shape (no broadcasting)
    y = act(y)                # optional relu | relu6 | hardswish | silu | gelu

becomes ``y = FusedOp(op, act, residual)(x, r)``, which a backend runs as one kernel. The fused
node takes the place of the last matched node, where every input it needs is already computed.

Refused, with a reason, when an intermediate result has other users (it would disappear) or the
op's module is called more than once (shared weights).
"""
from __future__ import annotations

import torch.fx as fx

from compiler import meta
from compiler.graph import (activation_of, add_operands, call_counts, describe, is_metadata_read, is_module, set_submodule, user_names,
                            value_users)
from compiler.ops import FUSABLE_OPS, FusedOp
from compiler.pass_base import Pass, PassContext, PassResult
from compiler.report import Refusal


class Fuse(Pass, name="fuse"):
    """Fuse conv/linear with residual-add and activation epilogues into FusedOp modules."""

    def __init__(self, *, residual: bool = True, activations: bool = True) -> None:
        self.residual = residual
        self.activations = activations

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        calls = call_counts(gm)
        refusals: list[Refusal] = []
        fused = 0
        for n in list(gm.graph.nodes):
            if not is_module(gm, n, FUSABLE_OPS):
                continue
            chain, residual, act, refusal = self._match(gm, n)
            if refusal:
                refusals.append(Refusal(n.name, refusal))
            if len(chain) == 1:
                continue
            if calls[n.target] > 1:
                refusals.append(Refusal(n.name, f"module '{n.target}' is called {calls[n.target]} times (shared weights)"))
                continue
            self._rewrite(gm, chain, residual, act)
            fused += 1
        return PassResult(modified=fused > 0, matches=fused, refusals=refusals)

    def _match(self, gm: fx.GraphModule, op: fx.Node):
        chain, residual, act, refusal = [op], None, None, None
        nxt = self._single_user(op)
        if self.residual and nxt is not None and (operands := add_operands(nxt)) is not None:
            other = operands[1] if operands[0] is op else operands[0]
            if isinstance(other, fx.Node) and other is not op and meta.shape(other) == meta.shape(op):
                residual = other
                chain.append(nxt)
        last = chain[-1]
        nxt = self._single_user(last)
        if self.activations and nxt is not None and (name := activation_of(gm, nxt)) is not None:
            act = name
            chain.append(nxt)
        elif len(value_users(last)) > 1 and any(activation_of(gm, u) for u in value_users(last)):
            refusal = f"output of {describe(gm, last)} is used by {user_names(last)}; fusing would drop it"
        if residual is not None and _computed_from(residual, _early_readers(gm, chain)):
            refusal = f"the residual of {describe(gm, op)} is computed from a shape read of the fused chain"
            chain, residual, act = [op], None, None
        return chain, residual, act, refusal

    @staticmethod
    def _single_user(n: fx.Node) -> fx.Node | None:
        users = value_users(n)  # a metadata read (a symbolic batch size) sees the same shape after fusion
        return users[0] if len(users) == 1 else None

    @staticmethod
    def _rewrite(gm: fx.GraphModule, chain: list[fx.Node], residual: fx.Node | None, act: str | None) -> None:
        op, last = chain[0], chain[-1]
        set_submodule(gm, op.target, FusedOp(gm.get_submodule(op.target), act, residual is not None))
        with gm.graph.inserting_before(last):
            args = (op.args[0], residual) if residual is not None else (op.args[0],)
            new = gm.graph.call_module(op.target, args)
        new.meta = dict(last.meta)  # same output shape and dtype
        anchor = new
        for reader in _early_readers(gm, chain):  # they now read the fused node, so they must follow it
            anchor.append(reader)
            anchor = reader
        for node in chain:  # metadata reads of the intermediates: every one has the fused output's shape
            node.replace_all_uses_with(new)
        for node in reversed(chain):
            gm.graph.erase_node(node)


def _early_readers(gm: fx.GraphModule, chain: list[fx.Node]) -> list[fx.Node]:
    """Metadata reads of the chain's intermediates that come before its last node, with everything
    computed from them before it, in graph order (a symbolic batch size read off a conv output)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    end = order[chain[-1]]
    stack = [u for node in chain[:-1] for u in node.users if is_metadata_read(u) and order[u] < end]
    found: set[fx.Node] = set()
    while stack:
        x = stack.pop()
        if x not in found:
            found.add(x)
            stack += [u for u in x.users if order[u] < end and u not in chain]
    return sorted(found, key=order.__getitem__)


def _computed_from(n: fx.Node, nodes: list[fx.Node]) -> bool:
    stack, seen, targets = [n], set(), set(nodes)
    while stack:
        x = stack.pop()
        if x in targets:
            return True
        if x not in seen:
            seen.add(x)
            stack += x.all_input_nodes
    return False
