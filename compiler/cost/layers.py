"""Layer geometry for the cost model: what one conv or linear layer costs to run, in the terms the
OpenCL runtime's kernels see (``families.py`` picks the same kernel family as the
lowering does). Pure: shapes in, numbers out."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

from torch import nn

from .families import CONV, CONV_1X1, DWCONV, GEMM, GEMM_NR, WINOGRAD, channel_blocks, conv_family, conv_geometry, conv_panels, gemm_rows

from ..errors import InputError
from ..ops import FusedOp


class Blocking(NamedTuple):
    """What a layer's kernel really computes, with its blocking's padding (``families``' rules)."""
    macs: int   # multiply-adds, padded channels, pixels and rows included (Winograd: its 16 GEMMs)
    items: int  # work-items launched
    block: int  # outputs one work-item computes


def _up(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass(frozen=True)
class Layer:
    """One conv (or a linear as a 1x1 conv over ``n`` rows) run by one kernel family."""
    family: str
    n: int
    cin: int
    cout: int
    h: int
    w: int
    oh: int
    ow: int
    kh: int = 1
    kw: int = 1
    stride: int = 1
    groups: int = 1
    nchw: bool = False  # conv.cl reading the model's input as uploaded (NCHW), not the NHWC it writes

    @property
    def fit_key(self) -> str:
        """Which calibrated correction prices it: its kernel family, with conv.cl reading NCHW apart.
        Its -DX_NCHW form reads each pixel's channels a plane apart (ResNet-18's 1x1 / 2 downsample at
        batch 8: 0.71 ms so, 0.58 on NHWC). With one fit over both, and every calibration layer timed
        on NCHW (a one-layer model's input), ResNet-18's and MobileNetV2's stems were priced at 1.4x
        and 2x their time."""
        return self.family + (" nchw" if self.nchw and self.family == CONV else "")

    @property
    def macs(self) -> int:
        return self.n * self.oh * self.ow * self.cout * self.kh * self.kw * (self.cin // self.groups)

    @property
    def bytes(self) -> int:
        """float32 bytes the kernel must move at least once: input, output and weight."""
        weight = self.cout * (self.cin // self.groups) * self.kh * self.kw
        return 4 * (self.n * self.h * self.w * self.cin + self.n * self.oh * self.ow * self.cout + weight)

    @property
    def blocking(self) -> Blocking:
        m, cg, og = self.n * self.oh * self.ow, self.cin // self.groups, self.cout // self.groups
        if self.family in (GEMM, CONV_1X1):
            mr = gemm_rows(m)
            return Blocking(_up(m, mr) * _up(self.cout, GEMM_NR) * self.cin, -(-m // mr) * -(-self.cout // GEMM_NR),
                            mr * GEMM_NR)
        if self.family == WINOGRAD:  # F(2x2, 3x3): 16 GEMMs over the 2x2 output tiles
            tiles = self.n * -(-self.oh // 2) * -(-self.ow // 2)
            mr = gemm_rows(tiles)
            return Blocking(16 * _up(tiles, mr) * _up(self.cout, GEMM_NR) * self.cin,
                            16 * -(-tiles // mr) * -(-self.cout // GEMM_NR), mr * GEMM_NR)
        if self.family == DWCONV:
            vc, px = channel_blocks(self.cin, self.ow, self.kw, self.stride)
            return Blocking(self.n * self.oh * _up(self.ow, px) * _up(self.cin, vc) * self.kh * self.kw,
                            self.n * self.oh * -(-self.ow // px) * -(-self.cin // vc), vc * px)
        nv, mr = conv_panels(og)
        return Blocking(self.groups * _up(og, 16 * nv) * _up(m, mr) * self.kh * self.kw * cg,
                        self.groups * -(-og // (16 * nv)) * -(-m // mr), 16 * nv * mr)

    @property
    def geometry(self) -> str:
        """The kind of window: kernel, stride, and "stem" when it reads 1 to 4 channels per group."""
        return f"{self.kh}x{self.kw}/{self.stride}" + ("/stem" if self.cin // self.groups <= 4 else "")

    def features(self) -> list[float]:
        """Regressors of the calibrated correction (see ``model.py``): logs of the work as the kernel
        blocks it, of the bytes, the work-items and the block each computes, and of the sizes."""
        b = self.blocking
        return [1.0, math.log(b.macs), math.log(self.bytes), math.log(b.items), math.log(b.block),
                math.log(self.cin // self.groups), math.log(self.cout // self.groups), float(self.kh * self.kw),
                float(self.stride)]

    def to_dict(self) -> dict:
        return asdict(self)


def conv_layer(conv: nn.Conv2d, x_shape: tuple[int, ...], *, nchw: bool = False) -> Layer:
    """The layer ``conv`` runs on input of ``x_shape``; ``nchw``: the input is the model's (as uploaded),
    which conv.cl reads as it is (the other families get a layout copy first)."""
    if len(x_shape) != 4 or x_shape[1] != conv.in_channels:
        raise InputError(f"a Conv2d({conv.in_channels}, {conv.out_channels}) takes [N, {conv.in_channels}, H, W] "
                         f"input, got {tuple(x_shape)}")
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(conv)
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    family = conv_family(conv)
    return Layer(family, n, c, conv.out_channels, h, w, oh, ow, kh, kw, max(sh, sw), conv.groups, nchw and family == CONV)


def linear_layer(lin: nn.Linear, x_shape: tuple[int, ...]) -> Layer:
    if not x_shape or x_shape[-1] != lin.in_features:
        raise InputError(f"a Linear({lin.in_features}, {lin.out_features}) takes [..., {lin.in_features}] input, "
                         f"got {tuple(x_shape)}")
    return Layer(GEMM, math.prod(x_shape[:-1]), lin.in_features, lin.out_features, 1, 1, 1, 1)


def module_layers(m: nn.Module, x_shape: tuple[int, ...], *, nchw: bool = False) -> tuple[list[Layer], tuple[int, ...]]:
    """The layers a conv, linear, FusedOp or Sequential chain of them (what factorize emits) runs,
    and its output shape; ``nchw``: ``m`` reads the model's input (``conv_layer``), so the chain's
    first layer does. Other modules inside a chain raise InputError naming them."""
    if isinstance(m, FusedOp):
        m = m.op
    if type(m) is nn.Conv2d:
        layer = conv_layer(m, x_shape, nchw=nchw)
        return [layer], (layer.n, layer.cout, layer.oh, layer.ow)
    if type(m) is nn.Linear:
        return [linear_layer(m, x_shape)], (*x_shape[:-1], m.out_features)
    if isinstance(m, nn.Sequential):
        layers, shape = [], tuple(x_shape)
        for child in m:
            more, shape = module_layers(child, shape, nchw=nchw and not layers)
            layers += more
        return layers, shape
    raise InputError(f"the cost model prices Conv2d, Linear, FusedOp and Sequential chains of them, "
                     f"got {type(m).__name__}")
