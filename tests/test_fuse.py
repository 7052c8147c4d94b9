import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compiler
from compiler.ops import ACTIVATIONS, FusedOp

from .conftest import rel_err


def run(model, x, passes=("fuse",)):
    gm = compiler.trace(model, x)
    return compiler.PassManager(list(passes)).run(gm, (x,))


@pytest.mark.parametrize(
    "act, name",
    [(nn.ReLU(), "relu"), (nn.ReLU6(), "relu6"), (nn.Hardswish(), "hardswish"), (nn.SiLU(), "silu"),
     (nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh")],
)
def test_conv_activation_modules(act, name):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), act).eval()
    x = torch.randn(2, 3, 7, 7)
    gm, report = run(model, x)
    assert report.row("fuse").matches == 1
    (fused,) = [m for m in gm.modules() if isinstance(m, FusedOp)]
    assert fused.activation == name and not fused.residual
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    assert rel_err(model(x), gm(x)) == 0


class FunctionalActs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        x = F.relu6(self.a(x))
        x = F.hardtanh(self.b(x), 0.0, 6.0)
        return self.c(x).relu()


def test_functional_and_method_activations_on_linear():
    model = FunctionalActs().eval()
    x = torch.randn(3, 4)
    gm, report = run(model, x)
    assert report.row("fuse").matches == 3
    assert [m.activation for m in gm.modules() if isinstance(m, FusedOp)] == ["relu6", "relu6", "relu"]
    assert rel_err(model(x), gm(x)) == 0


class LinearResidual(nn.Module):
    """x + fc(x) with no activation: the transformer MLP's residual."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.fc(x)


def test_residual_without_activation():
    model = LinearResidual().eval()
    x = torch.randn(2, 5, 8)
    gm, report = run(model, x)
    assert report.row("fuse").matches == 1
    (fused,) = [m for m in gm.modules() if isinstance(m, FusedOp)]
    assert fused.residual and fused.activation is None
    assert rel_err(model(x), gm(x)) == 0


class BroadcastAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bias = nn.Parameter(torch.randn(4, 1, 1))

    def forward(self, x):
        return self.conv(x) + self.bias


def test_does_not_fuse_broadcast_add_or_lone_conv():
    model = BroadcastAdd().eval()
    x = torch.randn(1, 3, 5, 5)
    gm, report = run(model, x)
    assert report.row("fuse").matches == 0 and not report.row("fuse").modified
    assert not any(isinstance(m, FusedOp) for m in gm.modules())


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return F.relu(y), y * 2


def test_refuses_when_intermediate_has_other_users():
    model = Branching().eval()
    x = torch.randn(1, 3, 6, 6)
    gm, report = run(model, x)
    row = report.row("fuse")
    assert row.matches == 0
    assert len(row.refusals) == 1 and "fusing would drop it" in row.refusals[0].reason


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return F.relu(self.fc(F.relu(self.fc(x))))


def test_refuses_shared_module():
    model = Shared().eval()
    x = torch.randn(2, 4)
    gm, report = run(model, x)
    row = report.row("fuse")
    assert row.matches == 0 and len(row.refusals) == 2
    assert all("called 2 times" in r.reason for r in row.refusals)


def test_fused_op_definition_matches_eager():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    x, r = torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)
    for act, fn in ACTIVATIONS.items():
        assert torch.equal(FusedOp(conv, act, True)(x, r), fn(conv(x) + r))
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        FusedOp(conv, "tanhh")
