"""torch.compile(backend="fxcompress"): Dynamo's graphs through compile(), layers made modules again."""
import pytest
import torch
from torch import nn

import compiler
from compiler import dynamo
from compiler.zoo import randomize

from .conftest import rel_err


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("target", ["torch", "opencl"])
def test_torch_compile_backend_folds_and_runs_on_the_target(target):
    model, x = randomize(Net()), torch.randn(2, 3, 16, 16)
    fast = torch.compile(model, backend="fxcompress", dynamic=False, options={"target": target})
    with torch.no_grad():
        assert rel_err(model(x), fast(x)) < 1e-4
    report = dynamo.last_report
    assert report.target == target
    assert report.row("fold_bn").matches == 2  # the functional batch_norms became modules, then folded
    if target == "opencl":
        assert report.backend["fallbacks"] == []


def test_modulize_freezes_parameters_and_keeps_the_real_inputs():
    model, x = randomize(Net()), torch.randn(2, 3, 16, 16)
    seen = {}

    def capture(gm, inputs):
        seen["graph"], seen["inputs"] = gm, inputs
        return gm.forward

    with torch.no_grad():
        torch.compile(model, backend=capture, dynamic=False)(x)
    gm, keep = dynamo.modulize(seen["graph"], seen["inputs"])
    kinds = [type(m) for m in gm.children()]
    assert kinds.count(nn.Conv2d) == 2 and kinds.count(nn.BatchNorm2d) == 2 and kinds.count(nn.Linear) == 1
    assert len(keep) == 1 and seen["inputs"][keep[0]] is not None
    with torch.no_grad():
        assert rel_err(model(x), gm(x)[0]) < 1e-5


def test_bad_options_name_the_valid_ones():
    fast = torch.compile(randomize(Net()), backend="fxcompress", dynamic=False, options={"pipline": "default"})
    with pytest.raises(Exception, match=r"unknown options \['pipline'\], valid options are .*pipeline.*target"):
        with torch.no_grad():
            fast(torch.randn(1, 3, 8, 8))
