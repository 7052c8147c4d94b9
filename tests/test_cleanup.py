import torch
import torch.nn.functional as F
from torch import nn

import compiler

from .conftest import rel_err


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.drop = nn.Dropout(0.5)
        self.id = nn.Identity()
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        dead = x * 3  # noqa: F841 - dead code for the pass to remove
        y = self.id(self.drop(self.fc(x)))
        return F.dropout(y, 0.2, training=False) + 1


def test_removes_dropout_identity_dead_code_and_unused_modules():
    model = Noisy().eval()
    x = torch.randn(4, 6)
    gm = compiler.trace(model, x)
    assert len(gm.graph.nodes) == 8
    gm, report = compiler.PassManager(["cleanup"]).run(gm, (x,))
    row = report.row("cleanup")
    assert row.matches == 4  # nn.Dropout, nn.Identity, F.dropout, dead mul
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_function", "output"]
    assert not hasattr(gm, "unused") and not hasattr(gm, "drop")
    assert rel_err(model(x), gm(x)) == 0


def test_does_not_fire_on_clean_graph():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU()).eval()
    x = torch.randn(2, 3)
    gm, report = compiler.PassManager(["cleanup"]).run(compiler.trace(model, x), (x,))
    assert not report.row("cleanup").modified and report.row("cleanup").matches == 0


def test_removes_torchvision_stochastic_depth_in_eval():
    from compiler import zoo

    ops = zoo.import_torchvision().ops

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.sd = ops.StochasticDepth(0.5, "row")

        def forward(self, x):
            return x + self.sd(self.fc(x))

    model = Block().eval()
    x = torch.randn(3, 4)
    gm, report = compiler.PassManager(["cleanup"]).run(compiler.trace(model, x), (x,))
    assert report.row("cleanup").matches == 1
    assert not [n for n in gm.graph.nodes if getattr(n.target, "__name__", "") == "stochastic_depth"]
    assert rel_err(model(x), gm(x)) == 0
