// dwconv.cl: depthwise 2-D convolution over NHWC tensors, with a fused epilogue.
//
// Computes   out[n, oh, ow, c] = ACT( sum_{kh, kw} x[n, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW, c]
//                                       * w[kh, kw, c]  + bias[c]  (+ res[n, oh, ow, c]) )
//   (input positions outside the image contribute 0).
//
// Layout: x, out and res NHWC contiguous (element offsets into their buffers); w packed by the host
//   as [KH, KW, Cp] and bias as [Cp], Cp = C rounded up to VC, zero past C.
//
// Work decomposition: a work-item computes VC channels (one float16/float8/float4 vector) of PX
//   consecutive output pixels of one output row. For each kernel row kh it loads the input columns
//   its PX windows span once ((PX-1)*SW + (KW-1)*DW + 1 vectors, zero outside the image) and reuses
//   them across the KW taps of all PX pixels. Global size (Cp / VC, ceil(OW / PX), N*OH), local
//   (1, 1, 1); channel blocks vary fastest, so consecutive work-items read consecutive memory.
//   When VC does not divide C, the last channel block loads and stores only its C % VC lanes.
//
// Build options (all compile-time, so the window loops unroll and `col` stays in registers):
//   -DVC=<16|8|4> -DPX=<pixels per work-item> -DKH -DKW -DSH -DSW -DDH -DDW
//   -DHAS_RESIDUAL  -DACT(x)=<expression in x, applied to VEC vectors>
//
// Why (PoCL 3.1, 2-core Zen 4; batch 8, ms, min over round-robin runs on a shared machine):
//   - The previous kernel (one work-item per output element, scalar loops over runtime KH, KW) was
//     not vectorised by PoCL: 32@112 3x3 took 25.2 ms, 96@112 s2 34.8, 144@56 47.3, 576@14 12.6,
//     960@7 4.96. This one: 1.25, 6.1, 2.9, 0.91, 0.32 (VC 16, PX 8): 10 to 20x, and memory-bound.
//   - float8 vectors were 1.2 to 1.5x slower than float16; PX 8 was as fast or up to 1.4x faster than
//     PX 2 or 4 (more reuse of each loaded column). Local sizes (Cp/VC, 1..2, 1) or (1, 4, 1) or
//     (1, 1, 4) changed times by less than the run-to-run noise.

#ifndef ACT
#define ACT(x) (x)
#endif
#include "vec.h"
#define NCOL ((PX - 1) * SW + (KW - 1) * DW + 1)  // input columns that one kernel row of the PX windows spans

__kernel void dwconv(__global float* restrict out, const int out_off,
                     __global const float* restrict x, const int x_off,
                     __global const float* restrict res, const int res_off,
                     __global const float* restrict w, __global const float* restrict bias,
                     const int H, const int W, const int C, const int OH, const int OW,
                     const int PH, const int PW, const int rows)
{
    const int c0 = get_global_id(0) * VC;
    const int ow0 = get_global_id(1) * PX;
    const int row = get_global_id(2);  // n * OH + oh
    if (c0 >= C || ow0 >= OW || row >= rows) return;
    const int nc = min(VC, C - c0);
    const int oh = row % OH, n = row / OH;
    const int Cp = ((C + VC - 1) / VC) * VC;

    VEC acc[PX];
    const VEC b = VLOAD(0, bias + c0);
    #pragma unroll
    for (int p = 0; p < PX; ++p) acc[p] = b;

    const int iw0 = ow0 * SW - PW;
    #pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
        const int ih = oh * SH - PH + kh * DH;
        if ((uint)ih < (uint)H) {
            const __global float* xr = x + x_off + ((size_t)(n * H + ih) * W) * C + c0;
            VEC col[NCOL];
            #pragma unroll
            for (int j = 0; j < NCOL; ++j) {
                const int iw = iw0 + j;
                col[j] = (uint)iw < (uint)W ? load_lanes(xr + (size_t)iw * C, nc) : (VEC)(0.0f);
            }
            #pragma unroll
            for (int kw = 0; kw < KW; ++kw) {
                const VEC wv = VLOAD(0, w + (kh * KW + kw) * Cp + c0);
                #pragma unroll
                for (int p = 0; p < PX; ++p) acc[p] = fma(col[p * SW + kw * DW], wv, acc[p]);
            }
        }
    }

    __global float* o = out + out_off + ((size_t)row * OW + ow0) * C + c0;
#ifdef HAS_RESIDUAL
    const __global float* r = res + res_off + ((size_t)row * OW + ow0) * C + c0;
#endif
    #pragma unroll
    for (int p = 0; p < PX; ++p) {
        if (ow0 + p < OW) {
            VEC y = acc[p];
#ifdef HAS_RESIDUAL
            y += load_lanes(r + p * C, nc);
#endif
            store_lanes(ACT(y), o + p * C, nc);
        }
    }
}
