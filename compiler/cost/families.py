"""Which kernel family runs a layer: the lowering's decisions as pure functions, shared by the
OpenCL lowering (``runtime/opencl/layers.py``) and the cost model, so the cost model prices the kernels
the runtime really launches. Here, not in the runtime, because imports go from runtime/ to compiler/;
and no OpenCL here: planning for a device that is not present works too."""
from __future__ import annotations

from torch import nn

CONV = "conv"            # conv.cl, implicit GEMM
CONV_1X1 = "conv 1x1 (gemm)"  # gemm.cl on the NHWC rows
DWCONV = "dwconv"        # dwconv.cl
GEMM = "gemm"            # gemm.cl, Linear
WINOGRAD = "winograd"    # wino.cl's transforms around gemm.cl batched over the 16 positions
FAMILIES = (CONV, CONV_1X1, DWCONV, GEMM, WINOGRAD)
# Winograd pays from 128 channels on. ResNet-18 at 224, batch 8 (ms, kernel time; transforms + GEMMs
# against conv.cl): 64 ch @56 9.1 vs 8.4, 128 @28 6.7 vs 8.5, 256 @14 5.2 vs 8.5, 512 @7 6.1 vs 8.7.
# At 64 channels the 16 GEMMs (K = 64) stream their 26 MB operands and run at 137 GFLOP/s.
WINOGRAD_MIN_CHANNELS = 128


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Padding before, with the "valid" / "same" strings resolved (torch puts an odd pixel after)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    return tuple(conv.padding)


def conv_geometry(conv: nn.Conv2d) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding before, dilation) as (rows, cols) pairs; padding strings resolved.
    Padding after is implied by the output size, so "same" with an even kernel works too."""
    return tuple(conv.kernel_size), tuple(conv.stride), conv_padding(conv), tuple(conv.dilation)


def conv_family(conv: nn.Conv2d) -> str:
    """depthwise -> dwconv.cl; 1x1, stride 1, no padding, ungrouped, more than 16 outputs -> the
    GEMM (measured in runtime/opencl/layers.py: as fast or faster there, except at 16 outputs); 3x3, stride 1,
    undilated, ungrouped, at least WINOGRAD_MIN_CHANNELS in and out -> Winograd; else conv.cl."""
    cin, cout, g = conv.in_channels, conv.out_channels, conv.groups
    if g == cin == cout:
        return DWCONV
    (k, s, p, d) = conv_geometry(conv)
    one = (k, s, p, g) == ((1, 1), (1, 1), (0, 0), 1)
    if one and cout > 16:
        return CONV_1X1
    if (k, s, d, g) == ((3, 3), (1, 1), (1, 1), 1) and min(cin, cout) >= WINOGRAD_MIN_CHANNELS:
        return WINOGRAD
    return CONV
