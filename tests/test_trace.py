import pytest
import torch
from torch import nn

import compiler
from compiler import meta
from compiler.errors import InputError, TraceError


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: untraceable
            return x * 2
        return x - 1


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.block = nn.Sequential(nn.ReLU(), DataDependent())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.block(self.conv(x)).mean((2, 3)))


class RootDataDependent(nn.Module):
    def forward(self, x):
        if x.max() > 1:
            return x
        return -x


def test_every_node_carries_shape_and_dtype():
    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = compiler.trace(model, x)
    conv = next(n for n in gm.graph.nodes if n.target == "conv")
    assert meta.shape(conv) == (2, 4, 6, 6)
    assert meta.tensor_info(conv).dtype == torch.float32
    assert meta.has_shapes(gm)


def test_untraceable_submodule_becomes_leaf_and_is_recorded():
    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = compiler.trace(model, x)
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert called == ["conv", "block.0", "block.1", "fc"]  # the smallest failing module, not all of block
    cm = compiler.compile(model, x)
    assert [a["path"] for a in cm.report.auto_leaves] == ["block.1"]
    assert "control flow" in cm.report.auto_leaves[0]["reason"]
    assert "kept whole (untraceable): block.1" in str(cm.report)
    for sign in (1, -1):
        assert torch.allclose(cm(sign * x.abs()), model(sign * x.abs()))


def test_trace_error_names_module_and_source_line():
    with pytest.raises(TraceError) as info:
        compiler.trace(RootDataDependent(), torch.randn(3))
    err = info.value
    assert err.module_path == ""
    assert "test_trace.py" in err.source_line and "if x.max() > 1" in err.source_line
    assert "<root>" in str(err) and "leaf_modules" in str(err)


def test_user_leaf_modules_by_type_and_path():
    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    gm = compiler.trace(model, x, leaf_modules=[nn.Sequential])
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["conv", "block", "fc"]
    gm = compiler.trace(model, x, leaf_modules=["block"])
    assert "block" in [n.target for n in gm.graph.nodes]
    with pytest.raises(InputError, match="not submodules of the model: \\['nope'\\]"):
        compiler.trace(model, x, leaf_modules=["nope"])


def test_trace_does_not_touch_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compiler.compile(model, torch.randn(2, 3, 6, 6))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_inputs_that_do_not_fit_name_the_node():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(InputError, match=r"node '_2' \(call_module 2 = Linear\) failed with RuntimeError: mat1 and mat2"):
        compiler.trace(model, torch.randn(1, 3, 9, 9))
    with pytest.raises(InputError, match=r"module '0' \(Conv2d\)"):
        compiler.compile(model, torch.randn(1, 5, 8, 8))
    with pytest.raises(InputError, match="takes inputs \\['input'\\]"):
        compiler.trace(model, (torch.randn(1, 3, 8, 8), torch.randn(1)))


@pytest.mark.parametrize("bad", [None, 3, [torch.randn(1), "x"], {"x": torch.randn(1)}])
def test_example_inputs_must_be_tensors(bad):
    with pytest.raises(InputError, match="example_inputs must be a Tensor or a tuple of Tensors"):
        compiler.trace(nn.ReLU(), bad)


def test_not_a_module():
    with pytest.raises(InputError, match="model must be a torch.nn.Module, got builtins.function"):
        compiler.compile(lambda x: x, torch.randn(1))
