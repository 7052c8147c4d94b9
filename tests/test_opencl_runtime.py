"""The OpenCL target end to end: lowering, the arena plan, parity with eager, fallbacks, errors."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compiler
from compiler import zoo
from compiler.errors import InputError
from runtime.opencl.lower import UnsupportedOpError
from runtime.opencl.memory import Interval, plan_arena

from .conftest import rel_err
from .models import ConvBNReLU, Residual

pytest.importorskip("pyopencl")
try:
    from runtime.opencl.device import open_device

    open_device()
except Exception as e:  # noqa: BLE001 - no platform on this machine: the runtime tests cannot run
    pytest.skip(f"no OpenCL device: {e}", allow_module_level=True)


def test_arena_plan_never_overlaps_live_values_and_reuses_dead_ones():
    rng = random.Random(0)
    ivs = []
    for i in range(200):
        a = rng.randrange(50)
        ivs.append(Interval(i, rng.randrange(1, 5000), a, a + rng.randrange(1, 10)))
    offsets, size = plan_arena(ivs)
    for x in ivs:
        for y in ivs:
            if x.value < y.value and x.first <= y.last and y.first <= x.last:
                xa, ya = offsets[x.value], offsets[y.value]
                assert xa + x.size <= ya or ya + y.size <= xa, (x, y)
        assert offsets[x.value] % 16 == 0
    assert size < sum(iv.size for iv in ivs) / 3  # lifetimes are short: memory is reused


class Ops(nn.Module):
    """Grouped and depthwise conv, pools, broadcast mul, cat, chunk, permute, slice, scalar ops."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBNReLU(3, 16)
        self.block = Residual(16)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.gate = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16 * 2, 10)

    def forward(self, x):
        x = self.block(self.stem(x))
        y = F.hardswish(self.g(x))
        a, b = y.chunk(2, dim=1)
        y = torch.cat([b, a], 1) * 0.5 + 1.0
        y = self.dw(y)
        y = y * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(y, 1)))
        y = F.avg_pool2d(F.max_pool2d(y, 3, 2, 1), 2)
        z = y.permute(0, 2, 3, 1)[:, :, :, :8]
        return self.fc(torch.flatten(torch.cat([y.mean((2, 3)), z.mean((1, 2)).repeat(1, 2)], 1), 1)[:, :32])


def test_small_net_matches_eager_and_reports_what_fell_back():
    model = Ops().eval()
    x = torch.randn(2, 3, 16, 16)
    cm = compiler.compile(model, x, target="opencl")
    assert rel_err(model(x), cm(x)) < 1e-4
    info = cm.report.backend
    assert [f.split(" ")[1] for f in info["fallbacks"]] == ["(repeat)"]  # no kernel for repeat: it ran on torch
    assert info["peak_device_bytes"] > 0 and info["steps"] > 10
    r = cm._runner  # per-step profiling (the calibration's and profile_steps.py's timer) leaves the run intact
    per_step = r.step_ms(x)
    assert len(per_step) == len(r.lowered.steps) == info["steps"] and min(per_step) >= 0 < sum(per_step)
    assert set(r.profile(x)) == {s.kernel for s in r.lowered.steps}
    assert rel_err(model(x), cm(x)) < 1e-4
    with pytest.raises(UnsupportedOpError, match=r"1 nodes have no OpenCL kernel \(strict=True\): repeat"):
        from runtime.opencl.backend import OpenCLBackend

        OpenCLBackend(strict=True).prepare(cm.graph_module, (x,), cm.report)


def test_wrong_input_shape_or_dtype_is_a_typed_error():
    model = ConvBNReLU(3, 8).eval()
    cm = compiler.compile(model, torch.randn(1, 3, 8, 8), target="opencl")
    with pytest.raises(InputError, match=r"compiled for inputs of shape \[\(1, 3, 8, 8\)\], got \[\(2, 3, 8, 8\)\]"):
        cm(torch.randn(2, 3, 8, 8))
    with pytest.raises(InputError, match="takes float32 inputs"):
        cm(torch.randn(1, 3, 8, 8, dtype=torch.float64))


# ops outside the kernel list run on torch: Swin's shifted-window attention (roll, pad), MaxViT's
# einsum and tensor-indexed bias tables. ViT's nn.MultiheadAttention is lowered.
FALLS_BACK = {"swin_t", "swin_v2_t", "maxvit_t"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_parity_on_opencl(name):
    model, x = zoo.build(name)
    cm = compiler.compile(model, x, target="opencl")
    with torch.no_grad():
        assert rel_err(model(x), cm(x)) < 1e-3
    fallbacks = cm.report.backend["fallbacks"]
    assert (fallbacks != []) if name in FALLS_BACK else (fallbacks == []), fallbacks


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_is_lowered_and_pruned_attention_too(batch_first):
    from passes.prune_channels import PruneChannels

    from .test_prune_rules import Encoder

    model = Encoder(batch_first=batch_first).eval()
    x = torch.randn(2, 5, 6) if batch_first else torch.randn(5, 2, 6)
    cm = compiler.compile(model, x, target="opencl")
    assert cm.report.backend["fallbacks"] == []
    assert rel_err(model(x), cm(x)) < 1e-4
    pruned = compiler.compile(model, x, pipeline=[PruneChannels(ratio=0.5)], target="opencl")  # -> ops.Attention
    assert pruned.report.backend["fallbacks"] == []
    assert rel_err(pruned.graph_module(x), pruned(x)) < 1e-4


class TimmOps(nn.Module):
    """The ops timm CNNs brought to the OpenCL target: ECA's Conv1d over channels, SK's stack / sum /
    softmax over the branch dim, HRNet's nearest upsampling, HGNet's asymmetric pad, CSPNet's
    LeakyReLU, Mish, an unfolded BatchNorm (scale-shift)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.eca = nn.Conv1d(1, 1, 5, padding=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        feats = torch.stack([self.a(x), self.b(x)], dim=1)  # (N, 2, C, H, W)
        gate = torch.softmax(feats.sum(dim=1).mean((2, 3), keepdim=True).unsqueeze(1).expand_as(feats), dim=1)
        y = (feats * gate).sum(1)
        e = self.eca(y.mean((2, 3)).unsqueeze(1)).transpose(-1, -2).unsqueeze(-1)  # (N, C, 1, 1)
        y = self.act(y * torch.sigmoid(e).expand_as(y))
        y = F.mish(self.bn(self.up(F.pad(y, (0, 1, 0, 1)))[:, :, ::2, ::2] + 1.0))
        return F.interpolate(y, size=(18, 18), mode="nearest")


def test_timm_ops_run_on_opencl_with_no_fallback():
    torch.manual_seed(0)
    model = TimmOps().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 8, 8)
    cm = compiler.compile(model, x, pipeline=["cleanup"], target="opencl")
    assert cm.report.backend["fallbacks"] == []
    with torch.no_grad():
        assert rel_err(model(x), cm(x)) <= 1e-5
