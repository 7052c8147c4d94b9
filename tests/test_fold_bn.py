import torch
import torch.nn.functional as F
from torch import nn

import compiler
from compiler.ops import FusedOp

from .conftest import rel_err
from .models import ConvBNReLU, ConvUsedTwice, FunctionalBN, Residual, randomize_bn


def run(model, x, passes):
    gm = compiler.trace(model, x)
    return compiler.PassManager(passes).run(gm, (x,))


def test_fold_module_form_removes_every_bn():
    model = randomize_bn(nn.Sequential(ConvBNReLU(), Residual()))
    x = torch.randn(2, 3, 10, 10)
    gm, report = run(model, x, ["fold_bn"])
    row = report.row("fold_bn")
    assert row.matches == 3 and row.modified
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.bias is not None for c in convs)
    assert rel_err(model(x), gm(x)) < 1e-5


def test_fold_functional_form_as_timm_traces_it():
    model = FunctionalBN().eval()
    x = torch.randn(2, 3, 9, 9)
    gm, report = run(model, x, ["fold_bn"])
    assert report.row("fold_bn").matches == 1
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert F.batch_norm not in targets and F.silu in targets
    assert not [n for n in gm.graph.nodes if n.op == "get_attr"]  # the statistics were folded away
    assert rel_err(model(x), gm(x)) < 1e-5


def test_fold_linear_bn1d():
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 6)
    gm, report = run(model, x, ["fold_bn"])
    assert report.row("fold_bn").matches == 1
    assert [type(m) for m in gm.children()] == [nn.Linear]
    assert rel_err(model(x), gm(x)) < 1e-5


def test_refuses_when_conv_output_has_other_users():
    model = randomize_bn(ConvUsedTwice())
    x = torch.randn(1, 3, 8, 8)
    gm, report = run(model, x, ["fold_bn"])
    row = report.row("fold_bn")
    assert row.matches == 0 and not row.modified
    assert len(row.refusals) == 1
    assert "also used by" in row.refusals[0].reason and "conv" in row.refusals[0].reason
    assert any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    assert rel_err(model(x), gm(x)) == 0


def test_does_not_fire_on_bn_after_non_conv():
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)).eval()
    x = torch.randn(1, 3, 4, 4)
    gm, report = run(model, x, ["fold_bn"])
    assert report.row("fold_bn").matches == 0 and not report.row("fold_bn").refusals


def test_fold_then_fuse_resnet_block_structure():
    model = randomize_bn(Residual())
    x = torch.randn(2, 8, 6, 6)
    gm, report = run(model, x, ["fold_bn", "fuse"])
    fused = [m for m in gm.modules() if isinstance(m, FusedOp)]
    assert report.row("fuse").matches == 2
    assert sorted((f.activation, f.residual) for f in fused) == [("relu", False), ("relu", True)]
    ops = [n.op for n in gm.graph.nodes]
    assert ops == ["placeholder", "call_module", "call_module", "output"]
    assert rel_err(model(x), gm(x)) < 1e-5
