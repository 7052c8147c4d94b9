"""OpenCL convolutions against torch: the implicit-GEMM kernel (conv.cl), depthwise (dwconv.cl) and
1x1 convs on the GEMM, over kernel sizes, strides, padding, dilation, groups, odd channel counts and
sizes, and the fused bias / residual / activation epilogue; and fixed-window pooling (pool.cl)."""
import random

import pytest
import torch
from torch import nn

import compiler
from compiler.ops import FusedOp

from .conftest import rel_err

pytest.importorskip("pyopencl")
try:
    from runtime.opencl.backend import Runner
    from runtime.opencl.device import open_device
    from runtime.opencl.lower import NHWC, Lowering, fold_constants

    open_device()
except Exception as e:  # noqa: BLE001 - no platform on this machine: the runtime tests cannot run
    pytest.skip(f"no OpenCL device: {e}", allow_module_level=True)

TOL = 1e-4


class ConvAct(nn.Module):
    """``act(conv(x))``: the default pipeline fuses it into one FusedOp."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None = None):
        super().__init__()
        self.conv, self.act = conv, act or nn.Identity()

    def forward(self, x):
        return self.act(self.conv(x))


class ConvAddAct(ConvAct):
    """``act(conv(x) + r)``, fused with its residual."""

    def forward(self, x, r):
        return self.act(self.conv(x) + r)


def _family(conv: nn.Conv2d) -> str:
    if conv.groups == conv.in_channels == conv.out_channels:
        return "dwconv"
    one = (conv.kernel_size, conv.stride, conv.padding, conv.groups) == ((1, 1), (1, 1), (0, 0), 1)
    if one and conv.out_channels > 16:
        return "conv 1x1 (gemm)"
    three = (conv.kernel_size, conv.stride, conv.dilation, conv.groups) == ((3, 3), (1, 1), (1, 1), 1)
    return "winograd" if three and min(conv.in_channels, conv.out_channels) >= 128 else "conv"


def _check(conv: nn.Conv2d, act: nn.Module | None = None, *, residual: bool = False, batch: int = 1,
           hw: tuple[int, int] = (9, 11)) -> list[str]:
    """Compile, compare with eager, and return the kernel families that ran."""
    model = (ConvAddAct if residual else ConvAct)(conv, act).eval()
    x = torch.randn(batch, conv.in_channels, *hw)
    with torch.no_grad():
        ref = model.conv(x)
        inputs = (x, torch.randn_like(ref)) if residual else (x,)
        ref = model(*inputs)
    cm = compiler.compile(model, inputs, target="opencl")
    assert cm.report.backend["fallbacks"] == []
    assert ref.abs().max() > 0.1  # not trivially near zero
    runner = cm._runner
    if batch > 1:  # the input as an NHWC activation, as every conv but a stem reads it (batch 1: NCHW)
        gm = cm.graph_module
        lowered = Lowering(gm, runner.device, fold_constants(gm, inputs), input_order=NHWC).run(inputs)
        runner = Runner(runner.device, lowered, inputs)
    err = rel_err(ref, runner(*inputs))
    assert err < TOL, f"{conv} {act} residual={residual} batch={batch}: max relative error {err:.2e}"
    families = [s.kernel for s in runner.lowered.steps]
    if batch == 1:  # NCHW inputs reach the GEMM, dwconv.cl and the residual through layout copies;
        # conv.cl reads its input as it is
        assert families.count("copy") == int(residual) + int(_family(conv) != "conv"), families
        families = [f for f in families if f != "copy"]
    return families


# (cin, cout, kernel, stride, padding, dilation, groups): every kernel size, stride, padding, dilation
# and kind of grouping at least once, with odd channel counts (3, 17, 40) and odd spatial sizes.
SHAPES = [
    (3, 17, 7, 2, 3, 1, 1),    # a stem: Cin 3, partial panel
    (17, 40, 3, 1, 1, 1, 1),
    (40, 17, 5, 1, 0, 1, 1),   # no padding, output channels past a 16-wide panel
    (16, 96, 3, 2, 1, 1, 1),   # 96 outputs: 32-wide panels
    (8, 64, 3, 1, 3, 2, 1),    # dilation 2 with padding 3: 64-wide panel
    (17, 40, 1, 2, 0, 1, 1),   # strided 1x1 (a ResNet downsample): conv.cl, not the GEMM
    (40, 40, 1, 1, 0, 1, 1),   # 1x1: the GEMM
    (40, 16, 1, 1, 0, 1, 1),   # 1x1 with 16 outputs: conv.cl
    (17, 3, 1, 1, 1, 1, 1),    # padded 1x1
    (40, 40, 3, 1, 1, 1, 2),   # groups 2
    (16, 40, 3, 2, 1, 1, 4),   # groups 4, og = 10
    (64, 64, 3, 1, 1, 1, 16),  # ResNeXt-like: 4 channels per group
    (40, 80, 5, 2, 3, 2, 4),
    (17, 17, 3, 1, 1, 1, 17),  # depthwise, odd C: a partial channel vector
    (40, 40, 3, 2, 1, 1, 40),  # depthwise, C = 5 float8 vectors
    (3, 3, 7, 1, 3, 1, 3),
    (48, 48, 5, 2, 3, 2, 48),
    (32, 32, 3, 1, 0, 1, 32),
    (17, 34, 3, 1, 1, 1, 17),  # channel multiplier 2: grouped, not depthwise
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "c{}-{}_k{}_s{}_p{}_d{}_g{}".format(*s))
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_shapes_match_torch(shape, batch):
    cin, cout, k, s, p, d, g = shape
    conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias=batch == 1)  # bias or not: both, across the batches
    assert _check(conv, batch=batch, hw=(13, 10)) == [_family(conv)]


ACTS = {None: None, "relu": nn.ReLU(), "relu6": nn.ReLU6(), "hardswish": nn.Hardswish(), "silu": nn.SiLU()}
# Each activation once, with and without a residual; every pair is a kernel build of its own, so the
# grid is not crossed in full (a cold program cache pays ~1.5 s per build).
EPILOGUES = [("relu", True), ("relu6", False), ("hardswish", True), ("silu", False), (None, True)]


@pytest.mark.parametrize("act,residual", EPILOGUES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", ["conv", "dwconv", "gemm"])
def test_fused_epilogue(kind, act, residual):
    # 40 outputs: 16-wide panels, the last one partial; 17 channels: a partial vector in dwconv.cl
    conv = {"conv": nn.Conv2d(17, 40, 3, 1, 1), "dwconv": nn.Conv2d(17, 17, 3, 1, 1, groups=17),
            "gemm": nn.Conv2d(17, 40, 1)}[kind]
    families = _check(conv, ACTS[act], residual=residual, batch=3, hw=(7, 9))
    # conv.cl and dwconv.cl fuse every activation; the GEMM only relu, relu6 and hardswish.
    assert families == [_family(conv)] + (["eltwise"] if kind == "gemm" and act == "silu" else [])


def test_fuse_pass_wraps_the_conv_the_kernels_receive():
    model = ConvAddAct(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 8, 5, 5)
    cm = compiler.compile(model, (x, x), target="opencl")
    fused = [m for m in cm.graph_module.modules() if isinstance(m, FusedOp)]
    assert len(fused) == 1 and fused[0].residual and fused[0].activation == "relu"


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding(padding):
    conv = nn.Conv2d(8, 16, 4, padding=padding, dilation=2 if padding == "same" else 1)  # "same": odd pixel after
    assert _check(conv, hw=(9, 8)) == ["conv"]


def test_random_grid():
    """A seeded sample of the full grid, batch and spatial size included."""
    rng = random.Random(0)
    for _ in range(10):
        g = rng.choice([1, 2, 4, "dw"])
        cin = rng.choice([4, 8, 40]) if g != 1 else rng.choice([3, 17, 40])
        cout, g = (cin, cin) if g == "dw" else (rng.choice([8, 24, 40]), g)
        k, s, p, d = rng.choice([1, 3, 5, 7]), rng.choice([1, 2]), rng.choice([0, 1, 3]), rng.choice([1, 2])
        lo = max(d * (k - 1) + 1 - 2 * p, 1)  # the smallest input the kernel fits in
        hw = (rng.randrange(lo, lo + 10), rng.randrange(lo, lo + 10))
        conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias=rng.random() < 0.5)
        act = rng.choice([None, nn.ReLU(), nn.Hardswish()])
        _check(conv, act, residual=rng.random() < 0.3, batch=rng.choice([1, 3]), hw=hw)


def test_reflect_padding_is_left_to_torch():
    model = ConvAct(nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect")).eval()
    x = torch.randn(1, 4, 6, 6)
    cm = compiler.compile(model, x, target="opencl")
    assert [f.split(" ")[1] for f in cm.report.backend["fallbacks"]] == ["(Conv2d)"]
    with torch.no_grad():
        assert rel_err(model(x), cm(x)) < TOL


# (pool, channels, (h, w)): pool_vec's channel vectors (16, 8, 4 and a partial last one), pixel
# blocks that do not divide the output width, padding, ceil mode and both average divisors.
POOLS = [
    (nn.MaxPool2d(3, 2, 1), 64, (20, 23)),
    (nn.MaxPool2d(2), 17, (9, 11)),
    (nn.MaxPool2d(3, 1, 1, ceil_mode=True), 40, (7, 9)),
    (nn.MaxPool2d((3, 2), (2, 1), (1, 0), ceil_mode=True), 8, (11, 10)),
    (nn.AvgPool2d(3, 2, 1), 24, (13, 15)),
    (nn.AvgPool2d(3, 2, 1, count_include_pad=False), 20, (13, 15)),
    (nn.AvgPool2d(2, ceil_mode=True), 3, (9, 11)),
    (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), 36, (10, 12)),
]


@pytest.mark.parametrize("pool, channels, hw", POOLS, ids=[f"{p}-{c}" for p, c, _ in POOLS])
def test_pool_matches_torch(pool, channels, hw):
    model = nn.Sequential(nn.Conv2d(channels, channels, 1), pool).eval()
    x = torch.randn(2, channels, *hw)
    cm = compiler.compile(model, (x,), target="opencl")
    assert cm.report.backend["fallbacks"] == []
    kind = "maxpool" if isinstance(pool, nn.MaxPool2d) else "avgpool"
    assert [s.kernel for s in cm._runner.lowered.steps].count(kind) == 1
    with torch.no_grad():
        ref = model(x)
    assert rel_err(ref, cm(x)) < TOL


@pytest.mark.parametrize("cin,cout,hw,residual", [(128, 128, (13, 10), False), (130, 144, (7, 9), True)])
def test_winograd_matches_torch(cin, cout, hw, residual):
    # odd sizes: partial 2x2 output tiles; 130/144 channels: partial channel vectors in wino.cl
    conv = nn.Conv2d(cin, cout, 3, 1, 1)
    assert _family(conv) == "winograd"
    for batch in (1, 3):
        families = _check(conv, nn.ReLU(), residual=residual, batch=batch, hw=hw)
        assert families == ["winograd in", "winograd", "winograd out"]
