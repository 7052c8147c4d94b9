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



NCHW_ORDER = (0, 1, 2, 3)  # a value's physical dim order as the model's input is uploaded


def reads_nchw(family: str, order: tuple[int, ...], offset: int) -> bool:
    """conv.cl reads its input as uploaded (NCHW, at the start of its storage: the model's input) with
    -DX_NCHW, no layout copy before it; every other family, and conv.cl on anything else, reads NHWC."""
    return family == CONV and tuple(order) == NCHW_ORDER and offset == 0

# Blockings: how many channels, pixels and rows one work-item of each kernel computes. Layer.blocking
# prices the padding they imply; the lowering launches with them.

# Input columns (vectors) a work-item of dwconv.cl / pool_vec may hold: with the PX accumulators and
# the weight they must fit AVX-512's 32 registers. 3x3 stride-2 depthwise, 96 channels @112, batch 1
# (cached), kernel ms x 8: PX 8 (17 columns) 4.1, PX 7 (15) 0.77, PX 4 (9) 0.65: 17 columns spill.
MAX_COLUMNS = 16


def vector_width(c: int) -> int:
    """The float vector width (16, 8 or 4, vec.h) for ``c`` channels: the least padding past C, then
    the widest."""
    return min((16, 8, 4), key=lambda v: (-(-c // v) * v, -v))


def channel_blocks(c: int, ow: int, kw: int = 1, sw: int = 1, dw: int = 1) -> tuple[int, int]:
    """(VC, PX) for the kernels that compute VC channels x PX output pixels per work-item (dwconv.cl,
    pool.cl's pool_vec): ``vector_width(c)``; the pixel block that pads OW least, then the largest,
    among those whose input columns ((PX-1)*SW + (KW-1)*DW + 1) fit in registers."""
    vc = vector_width(c)
    fits = [p for p in range(8, 0, -1) if (p - 1) * sw + (kw - 1) * dw + 1 <= MAX_COLUMNS] or [1]
    px = min(fits, key=lambda p: -(-ow // p) * p)
    return vc, px


CONV_MR = {4: 4, 2: 6, 1: 8}  # pixels per work-item for each panel width NV (x16 channels) in conv.cl
# Relative time per output column of conv.cl's blockings, from its 3x3 and stem measurements: used to
# trade wider panels against the zero columns they pad a group's outputs with (64 -> NV 4, 96 -> NV 2).
CONV_COST = {4: 1.0, 2: 1.05, 1: 1.15}


def conv_panels(og: int) -> tuple[int, int]:
    """(NV, MR) of conv.cl for ``og`` outputs per group: panels of 16 * NV output channels, MR pixels
    per work-item."""
    nv = min((4, 2, 1), key=lambda v: (-(-og // (16 * v)) * 16 * v * CONV_COST[v], -v))
    return nv, CONV_MR[nv]


GEMM_NR = 32  # columns per work-item of gemm.cl (GemmConfig's default nv = 2 float16 vectors)


def gemm_rows(m: int, default: int = 8) -> int:
    """Rows per work-item of gemm.cl for a GEMM of ``m`` rows: fewer when m is small, since rows past
    M are computed and thrown away (M = 1 runs 2.7x faster with 1 row than with 8)."""
    return next((mr for mr in (1, 2, 4, 6) if m <= mr), default)
