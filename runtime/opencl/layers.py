"""Conv2d and Linear lowering: the kernel family each layer runs (``compiler.cost.families``, shared
with the cost model), its packed weights, and the launches - dwconv.cl, the Gemm for 1x1 convs and
Linears, Winograd (wino.cl around the batched Gemm), or conv.cl's implicit GEMM - with the fused
bias / residual / activation epilogue."""
from __future__ import annotations

import numpy as np
import pyopencl as cl
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compiler import meta
from compiler.cost.families import (CONV, CONV_1X1, DWCONV, GEMM, WINOGRAD, channel_blocks, conv_family, conv_geometry,
                                     conv_panels, reads_nchw, vector_width)

from .gemm import ACTIVATIONS as GEMM_ACTIVATIONS
from .gemm import Gemm, GemmConfig
from .lower import NHWC, Lowering, Value
from .ops import Launch, _kernel, contiguous, eltwise, unary

# Convolutions lower to one of three kernels (measurements in the .cl headers):
#   depthwise (groups == Cin == Cout)   -> dwconv.cl: channel vectors x PX output pixels per work-item;
#   1x1, stride 1, no padding, ungrouped, more than 16 outputs
#                                       -> the Gemm on the NHWC input as it is ([N*H*W, Cin] rows);
#   everything else                     -> conv.cl: implicit GEMM, no im2col buffer.
# conv.cl runs 1x1 convs too, but on MobileNetV2's eleven kinds of 1x1 layer at batch 8 the Gemm (8x32
# blocks) was as fast or up to 1.3x faster (small K, where its taller blocks pay), except with 16
# outputs (32 -> 16 at 112x112: 1.43 ms on the Gemm, 0.88 ms on conv.cl), where the Gemm computes 32
# columns and conv.cl's 16-wide panels waste none.
# conv.cl's panel width and pixels per work-item: families.conv_panels.


def _pack_conv_weight(wt: torch.Tensor, bias: torch.Tensor, groups: int, nr: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The weight [Cout, CG, KH, KW] as conv.cl's panels [groups * PPG, KH*KW*CG, nr] (k = (kh, kw, ci)),
    the bias as [groups * PPG * nr], zero past each group's OG outputs; and PPG, the panels per group."""
    cout, cg, kh, kw = wt.shape
    og, k = cout // groups, kh * kw * cg
    ppg = -(-og // nr)
    b = wt.reshape(groups, og, cg, kh, kw).permute(0, 3, 4, 2, 1).reshape(groups, k, og)
    b = F.pad(b, (0, ppg * nr - og)).reshape(groups, k, ppg, nr).transpose(1, 2)
    bias = F.pad(bias.reshape(groups, og), (0, ppg * nr - og))
    return b.contiguous().numpy(), bias.contiguous().numpy(), ppg


def _conv(lw: Lowering, n: fx.Node, conv: nn.Conv2d, x: Value, act: str | None, res: Value | None,
          out_hw: tuple[int, int] | None = None) -> Value | None:
    if conv.padding_mode != "zeros" or len(x.shape) != 4 or (act is not None and unary(act) is None):
        return None
    family = conv_family(conv)
    x_nchw = reads_nchw(family, x.order, x.offset)  # a stem conv: no layout copy before it
    if not x_nchw:
        x = contiguous(lw, n, x, NHWC)
    res = contiguous(lw, n, res, NHWC) if res is not None else None
    nb, cin, h, w = x.shape
    oh, ow = out_hw or meta.shape(n)[2:]
    cout, g = conv.out_channels, conv.groups
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(conv)
    out = lw.new((nb, cout, oh, ow), NHWC)
    wt = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(cout)
    reads = [x] + ([res] if res is not None else [])
    epilogue = (["-DHAS_RESIDUAL"] if res is not None else []) + ([f"-DACT(x)=({unary(act)})"] if act else [])

    def alloc(a: np.ndarray, what: str) -> cl.Buffer:
        return lw.device.alloc(hostbuf=a, what=f"uploading {what} of '{n.name}'", flags=cl.mem_flags.READ_ONLY)

    if family == DWCONV:
        vc, px = channel_blocks(cin, ow, kw, sw, dw)
        cp = -(-cin // vc) * vc
        geometry = dict(VC=vc, PX=px, KH=kh, KW=kw, SH=sh, SW=sw, DH=dh, DW=dw)
        kernel = _kernel(lw, "dwconv.cl", "dwconv", [f"-D{k}={v}" for k, v in geometry.items()] + epilogue)
        wbuf = alloc(F.pad(wt.reshape(cout, kh * kw).t(), (0, cp - cout)).contiguous().numpy(), "the weight")
        bbuf = alloc(F.pad(bias, (0, cp - cout)).numpy(), "the bias")
        launch = Launch(lw, kernel, (cp // vc, -(-ow // px), nb * oh), None,
                        [out, x, (res, 0), wbuf, bbuf, h, w, cin, oh, ow, ph, pw, nb * oh])
        lw.add(n, DWCONV, reads, [out], launch)
        return out

    m = nb * oh * ow
    if family == CONV_1X1:  # the Gemm straight on x's rows
        fused = act if act in GEMM_ACTIVATIONS else None
        gemm = Gemm(lw.device, wt[:, :, 0, 0].t(), bias, residual=res is not None, activation=fused or "none",
                    config=GemmConfig.for_rows(m))
        lw.add(n, CONV_1X1, reads, [out], Launch(lw, gemm.kernel, gemm.global_size(m), gemm.local_size,
                                                          gemm.args(x, out, m, residual=(res, 0))))
        return eltwise(lw, n, unary(act), out, out) if act is not None and fused is None else out

    if family == WINOGRAD:
        return _winograd(lw, n, x, out, wt, bias, res, act, (ph, pw), alloc)

    cg, og = cin // g, cout // g
    nv, mr = conv_panels(og)
    packed, bias_p, ppg = _pack_conv_weight(wt, bias, g, 16 * nv)
    layout = ["-DX_NCHW"] if x_nchw else []
    kernel = _kernel(lw, "conv.cl", "conv", [f"-DMR={mr}", f"-DNV={nv}"] + epilogue + layout)
    wbuf, bbuf = alloc(packed, "the packed weight"), alloc(bias_p, "the bias")
    zbuf = alloc(np.zeros(cg, np.float32), "zeros")  # what taps in the padding read
    launch = Launch(lw, kernel, (g * ppg, -(-m // mr)), None,
                    [out, x, (res, 0), wbuf, bbuf, zbuf, h, w, cin, oh, ow, cout, cg, og, ppg,
                     kh, kw, sh, sw, ph, pw, dh, dw, m])
    lw.add(n, CONV, reads, [out], launch)
    return out


# Winograd F(2x2, 3x3): G maps a 3x3 kernel to its 4x4 transform, U = G g G^T (wino.cl has B and A).
_WINO_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _winograd(lw: Lowering, n: fx.Node, x: Value, out: Value, wt: torch.Tensor, bias: torch.Tensor,
              res: Value | None, act: str | None, padding: tuple[int, int], alloc) -> Value:
    """A 3x3 stride-1 conv as wino.cl's input transform, 16 GEMMs in one launch, and the output
    transform with the epilogue (see wino.cl)."""
    nb, cin, h, w = x.shape
    cout, (oh, ow) = out.shape[1], out.shape[2:]
    th, tw = -(-oh // 2), -(-ow // 2)
    tiles = nb * th * tw
    u = torch.einsum("ai,kcij,bj->abck", _WINO_G, wt.double(), _WINO_G).reshape(16, cin, cout).float()
    gemm = Gemm(lw.device, u, config=GemmConfig.for_rows(tiles))
    v_in, m_out = lw.new((16, tiles, cin), (0, 1, 2)), lw.new((16, tiles, cout), (0, 1, 2))
    vc_in, vc_out = vector_width(cin), vector_width(cout)
    k_in = _kernel(lw, "wino.cl", "wino_in", [f"-DVC={vc_in}"])
    lw.add(n, "winograd in", [x], [v_in], Launch(lw, k_in, (-(-cin // vc_in), tw, nb * th), None,
                                                [v_in, x, h, w, cin, th, tw, *padding, nb * th]))
    lw.add(n, WINOGRAD, [v_in], [m_out], Launch(lw, gemm.kernel, gemm.global_size(tiles), gemm.local_dims,
                                               gemm.args(v_in, m_out, tiles, batch_strides=(tiles * cin, tiles * cout))))
    epilogue = (["-DHAS_RESIDUAL"] if res is not None else []) + ([f"-DACT(x)=({unary(act)})"] if act else [])
    k_out = _kernel(lw, "wino.cl", "wino_out", [f"-DVC={vc_out}"] + epilogue)
    bbuf = alloc(F.pad(bias, (0, -(-cout // vc_out) * vc_out - cout)).numpy(), "the bias")
    lw.add(n, "winograd out", [m_out] + ([res] if res is not None else []), [out],
           Launch(lw, k_out, (-(-cout // vc_out), tw, nb * th), None,
                  [out, m_out, (res, 0), bbuf, cout, oh, ow, th, tw, nb * th]))
    return out


def linear(lw: Lowering, n: fx.Node, lin: nn.Linear, x: Value, act: str | None, res: Value | None) -> Value | None:
    x = contiguous(lw, n, x, tuple(range(len(x.shape))))
    rows = x.numel // lin.in_features
    shape = (*x.shape[:-1], lin.out_features)
    out = lw.new(shape, tuple(range(len(shape))))
    res = contiguous(lw, n, res, out.order) if res is not None else None
    fused = act if act in GEMM_ACTIVATIONS else None
    gemm = Gemm(lw.device, lin.weight.detach().float().t(), lin.bias.detach().float() if lin.bias is not None else None,
                residual=res is not None, activation=fused or "none")

    lw.add(n, GEMM, [x] + ([res] if res is not None else []), [out],
           Launch(lw, gemm.kernel, gemm.global_size(rows), gemm.local_size, gemm.args(x, out, rows, residual=(res, 0))))
    if act is not None and fused is None:
        return eltwise(lw, n, unary(act), out, out)
    return out


def module_op(lw: Lowering, n: fx.Node, m: nn.Module, x: Value, res: Value | None = None, act: str | None = None,
              out_hw: tuple[int, int] | None = None):
    """``out_hw``: the conv's output size when node ``n`` is not the 4-D conv itself (a Conv1d run as one)."""
    if type(m) is nn.Conv2d:
        return _conv(lw, n, m, x, act, res, out_hw)
    if type(m) is nn.Linear:
        return linear(lw, n, m, x, act, res)
    return None
