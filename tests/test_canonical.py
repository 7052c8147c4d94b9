"""The canonical graph: shape metadata folded, asserts on it removed, the batch kept symbolic."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compiler
from compiler import ExportError
from compiler.graph import is_metadata_read

from .conftest import rel_err


class ConvBNAct(nn.Module):
    """timm's BatchNormAct2d pattern: an assert on x.ndim, then the functional batch_norm."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = self.conv(x)
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        x = F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, False, 0.1, 1e-5)
        return F.relu(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = ConvBNAct(3, 8), ConvBNAct(8, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x, scale=None):
        x = self.b(self.a(x))
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W).mean(-1) * (C ** -0.5)  # B stays a node, C and H * W are constants
        if scale is not None:
            x = x * scale
        return self.head(x)


def _randomized(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture
def net():
    torch.manual_seed(0)
    return _randomized(Net())


def test_metadata_is_folded_and_the_batch_stays_symbolic(net):
    x = torch.randn(2, 3, 8, 8)
    gm = compiler.trace(net, (x,))
    canon = gm.meta["fxcompress.trace"].canonical
    # two x.ndim asserts, and fx's own assert that the bound `scale` is None
    assert canon.asserts_removed == 3 and canon.bound_arguments == ["scale=None"]
    assert canon.batch_reads == 1 and canon.batch_folded == 0
    reads = [n for n in gm.graph.nodes if is_metadata_read(n)]
    assert len(reads) == 1 and reads[0].args[0].target is F.relu  # only the batch read of `B, C, H, W = x.shape` is left
    assert not any(n.target is torch._assert for n in gm.graph.nodes)
    for batch in (1, 2, 5):  # still runs at any batch
        y = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            assert rel_err(net(y), gm(y)) <= 1e-6


def test_dynamic_batch_false_folds_the_batch_too(net):
    x = torch.randn(2, 3, 8, 8)
    gm = compiler.trace(net, (x,), dynamic_batch=False)
    canon = gm.meta["fxcompress.trace"].canonical
    assert canon.batch_folded == 1 and canon.batch_reads == 0
    assert not any(is_metadata_read(n) for n in gm.graph.nodes)
    with pytest.raises(RuntimeError):
        gm(torch.randn(3, 3, 8, 8))  # the reshape is now fixed to batch 2


def test_asserts_that_fail_are_kept():
    class Strict(nn.Module):
        def forward(self, x):
            torch._assert(x.shape[1] == 4, "wants 4 channels")  # False at the traced shape: kept, not removed
            return x + 1

    gm = compiler.trace(Strict(), (torch.randn(1, 4, 2, 2),))
    assert gm.meta["fxcompress.trace"].canonical.asserts_removed == 1
    class Wrong(Strict):
        def forward(self, x):
            torch._assert(x.shape[1] == 3, "wants 3 channels")
            return x + 1
    with pytest.raises(Exception, match="wants 3 channels"):
        compiler.trace(Wrong(), (torch.randn(1, 4, 2, 2),))


def test_functional_bn_behind_a_shape_assert_folds_and_fuses(net, tmp_path):
    x = torch.randn(2, 3, 8, 8)
    cm = compiler.compile(net, x)
    assert cm.report.row("fold_bn").matches == 2 and not cm.report.row("fold_bn").refusals
    assert cm.report.row("fuse").matches >= 2
    assert not any(n.target is F.batch_norm for n in cm.graph_module.graph.nodes)
    assert "canonical graph: " in str(cm.report) and "3 asserts removed" in str(cm.report)
    y = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert rel_err(net(y), cm(y)) <= 1e-5
    res = cm.export_onnx(tmp_path / "m.onnx", dynamic_batch=True)
    assert res.max_rel_err <= 1e-5


def test_dynamic_export_of_a_batch_folded_graph_is_refused(net, tmp_path):
    cm = compiler.compile(net, torch.randn(2, 3, 8, 8), dynamic_batch=False)
    with pytest.raises(ExportError, match="reads of the batch size were folded"):
        cm.export_onnx(tmp_path / "m.onnx", dynamic_batch=True)
    assert not (tmp_path / "m.onnx").exists()
    assert cm.export_onnx(tmp_path / "m.onnx").max_rel_err <= 1e-5


def test_metadata_reads_do_not_block_pruning(net):
    x = torch.randn(2, 3, 8, 8)
    cm = compiler.compile(net, x, pipeline=["cleanup", {"name": "prune_channels", "ratio": 0.5}], verify=False)
    row = cm.report.row("prune_channels")
    assert row.matches >= 1, [r.reason for r in row.refusals]
    assert not any("getattr" in r.reason or "size" in r.reason for r in row.refusals)
    assert cm.graph_module.get_submodule("a.conv").out_channels == 4


def test_a_pass_that_matches_nothing_says_so_in_the_summary():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    cm = compiler.compile(model, torch.randn(2, 4), pipeline=["fold_bn", "fuse"])
    assert "matched nothing: fold_bn (no candidate in this graph)" in str(cm.report)
