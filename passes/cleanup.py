"""``cleanup``: remove inference no-ops (dropout, identity, torchvision's eval-mode stochastic depth), then dead code.

The compiler produces inference graphs, so every dropout is the identity here.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compiler.graph import is_stochastic_depth_eval
from compiler.pass_base import Pass, PassContext, PassResult

NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
NOOP_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, torch.dropout}


class Cleanup(Pass, name="cleanup"):
    """Remove dropout, identity and eval-mode stochastic depth, then dead code and unused submodules."""

    def __init__(self) -> None:
        pass

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        removed = 0
        for n in list(gm.graph.nodes):
            if not n.args or not isinstance(n.args[0], fx.Node):
                continue
            noop = (
                (n.op == "call_module" and isinstance(gm.get_submodule(n.target), NOOP_MODULES))
                or (n.op == "call_function" and n.target in NOOP_FUNCTIONS)
                or is_stochastic_depth_eval(n)
            )
            if noop:
                n.replace_all_uses_with(n.args[0])
                gm.graph.erase_node(n)
                removed += 1
        before = len(gm.graph.nodes)
        gm.graph.eliminate_dead_code()
        dead = before - len(gm.graph.nodes)
        gm.delete_all_unused_submodules()
        return PassResult(modified=bool(removed or dead), matches=removed + dead)

