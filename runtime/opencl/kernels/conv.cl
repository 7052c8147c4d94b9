// conv.cl: implicit-GEMM 2-D convolution over NHWC activations, fp32, with a fused epilogue.
//
// Computes, for each group g (input channels g*CG .. g*CG + CG - 1, outputs g*OG .. g*OG + OG - 1):
//   out[n, oh, ow, g*OG + o] = ACT( sum_{kh, kw, ci} x[n, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW, g*CG + ci]
//                                                    * w[g*OG + o, ci, kh, kw]
//                                   (+ bias[g*OG + o])  (+ R[n, oh, ow, g*OG + o]) )
//   (input positions outside the image contribute 0). This is the GEMM  out[M, OG] = A[M, K] @ B[K, OG]
//   per group, with M = N*OH*OW output pixels and K = KH*KW*CG, but A (the im2col matrix) is never
//   materialised: each work-item reads its pixels' input rows straight from x.
//
// Layouts (float32, element offsets into the buffers):
//   x    NHWC contiguous, [N, H, W, C], C = groups * CG; with -DX_NCHW, NCHW contiguous (the model's
//        input as the host holds it, so a stem conv reads it without a layout copy: channels are then
//        H*W apart, and a tap in the padding reads the zeros buffer's first element for every channel).
//   out  NHWC contiguous, [N, OH, OW, Cout] = row-major [M, Cout]; R the same, read when HAS_RESIDUAL.
//   Wp   the weight packed by the host (layers.py) into NR-column panels, PPG = ceil(OG / NR) per group,
//        K-major inside a panel with k = (kh*KW + kw)*CG + ci:
//          Wp[((g*PPG + p)*K + k)*NR + j] = w[g*OG + p*NR + j, ci, kh, kw], zero for p*NR + j >= OG.
//        One k-step of a panel is NV contiguous float16 vectors: aligned loads, no gathers.
//   bias [groups * PPG * NR], laid out like a panel row (zero past OG in each group); always read.
//   zeros at least CG zero floats: where an (kh, kw) tap of a pixel falls in the padding, that pixel's
//        row pointer is switched to this buffer, so the inner loop has no branch.
//
// Work decomposition: a work-item computes an MR x NR block of out: MR consecutive output pixels
//   (rows of the [M, Cout] matrix, possibly wrapping to the next image row) by the NR output channels
//   of one panel, holding MR*NV float16 accumulators over the whole K loop. Per (kh, kw) tap it
//   computes the MR input row pointers once, then streams the CG input channels (contiguous in NHWC)
//   against NV weight vectors per channel: MR broadcasts + NV loads per MR*NV FMAs.
//   Global size (groups * PPG, ceil(M / MR)), local size (1, 1); panels vary fastest, so the work-items
//   run back to back by one thread share their input pixels in cache.
//
// Build options:
//   -DMR=<pixels per work-item>  -DNV=<float16 vectors per panel row, NR = 16 * NV>
//   -DHAS_RESIDUAL  -DACT(x)=<expression in x, applied to float16 vectors and to floats>  -DX_NCHW
//
// Edges: pixels past M are clamped to M - 1 for loads and not stored; a panel that runs past OG (the
//   last of a group whose OG is not a multiple of NR) is stored column by column. Any shape works.
//
// Why this design (PoCL 3.1, LLVM 15, AVX-512). This machine is a 2-core Zen 4 EPYC (family 25,
// model 17: 512-bit FMAs at half rate), whose peak is ~236 GFLOP/s; a float16 FMA-chain kernel
// reaches 230. Batch 8, fp32, min over 7 round-robin runs of each variant (the machine was shared,
// so only differences above ~5% are taken as real):
//   - im2col + GEMM, which this replaces, spent 136 ms in im2col and 19.8 ms in the GEMM on 64->64
//     3x3 at 56x56. This kernel: 8.25 ms (224 GFLOP/s); 256->256 at 14x14 8.25 ms (224); 512->512 at
//     7x7 8.44 ms (219); the 7x7 stride-2 stem, Cin 3, 9.46 ms (200). The inner loop compiles to
//     NV aligned vector loads, MR broadcasts and MR*NV FMAs with no spills, i.e. it runs at peak.
//   - Padding by pointer select (here) against a zero-padded copy of x made by a pad kernel (then
//     one offset per tap serves all MR pixels, and with groups 1 and dilation 1 the kw*Cin of a
//     kernel row is one contiguous run): the padded kernel alone was up to 10% faster on the stem
//     and equal on 3x3 layers, but with its copy counted both were within 5% either way on all five
//     layers tried. So no copy, no extra arena value, no extra launch.
//   - Blocking, MR x NR: 4x64 and 6x64 beat 6x32, 8x32 and 4x32 by 0-6% on 3x3 layers and by 10-20%
//     on the stem (fewer broadcasts per FMA); 8x16 and 12x16 lose 0-10% on 3x3 layers and 60% on
//     the stem. The host takes NV = 4 unless a group's outputs pad a 64-wide panel badly (layers.py).
//   - Launch grid with panels fastest vs pixel blocks fastest: equal on 3x3 layers; on the stem,
//     panels fastest was as fast or up to 1.3x faster. Local sizes other than (1, 1) were not better
//     for gemm.cl, whose blocking this shares (see gemm.py).

#ifndef MR
#define MR 4
#endif
#ifndef NV
#define NV 4
#endif
#define NR (16 * NV)
#ifndef ACT
#define ACT(x) (x)
#endif
#ifdef X_NCHW
#define PIXEL_STRIDE 1
#define CHANNEL_STRIDE(ok) ((ok) ? H * W : 0)
#else
#define PIXEL_STRIDE C
#define CHANNEL_STRIDE(ok) 1
#endif

__kernel void conv(__global float* restrict out, const int out_off,
                   __global const float* restrict x, const int x_off,
                   __global const float* restrict R, const int r_off,
                   __global const float* restrict Wp,
                   __global const float* restrict bias,
                   __global const float* restrict zeros,
                   const int H, const int W, const int C, const int OH, const int OW, const int Cout,
                   const int CG, const int OG, const int PPG,
                   const int KH, const int KW, const int SH, const int SW, const int PH, const int PW,
                   const int DH, const int DW, const int M)
{
    const int panel = get_global_id(0);
    const int row0 = get_global_id(1) * MR;
    if (row0 >= M) return;
    const int grp = panel / PPG, p = panel - grp * PPG;

    // The input window's corner and the image base of each pixel.
    int ih0[MR], iw0[MR];
    const __global float* xb[MR];
    #pragma unroll
    for (int r = 0; r < MR; ++r) {
        const int m = min(row0 + r, M - 1);
        const int ow = m % OW, t = m / OW;
        const int oh = t % OH, n = t / OH;
        ih0[r] = oh * SH - PH;
        iw0[r] = ow * SW - PW;
        xb[r] = x + x_off + (size_t)n * H * W * C + (size_t)grp * CG * CHANNEL_STRIDE(1);
    }
    const __global float16* w = (const __global float16*)(Wp + (size_t)panel * NR * KH * KW * CG);

    float16 acc[MR][NV];
    #pragma unroll
    for (int r = 0; r < MR; ++r) {
        #pragma unroll
        for (int v = 0; v < NV; ++v) acc[r][v] = (float16)(0.0f);
    }
    for (int kh = 0; kh < KH; ++kh) {
        for (int kw = 0; kw < KW; ++kw) {
            const __global float* a[MR];
#ifdef X_NCHW
            int cs[MR];
#endif
            #pragma unroll
            for (int r = 0; r < MR; ++r) {
                const int ih = ih0[r] + kh * DH, iw = iw0[r] + kw * DW;
                const bool ok = (uint)ih < (uint)H && (uint)iw < (uint)W;
                a[r] = ok ? xb[r] + (ih * W + iw) * PIXEL_STRIDE : zeros;
#ifdef X_NCHW
                cs[r] = CHANNEL_STRIDE(ok);
#endif
            }
            for (int k = 0; k < CG; ++k) {
                float16 bk[NV];
                #pragma unroll
                for (int v = 0; v < NV; ++v) bk[v] = w[v];
                w += NV;
                #pragma unroll
                for (int r = 0; r < MR; ++r) {
#ifdef X_NCHW
                    const float16 ak = (float16)(a[r][k * cs[r]]);
#else
                    const float16 ak = (float16)(a[r][k]);
#endif
                    #pragma unroll
                    for (int v = 0; v < NV; ++v) acc[r][v] = fma(ak, bk[v], acc[r][v]);
                }
            }
        }
    }

    #pragma unroll
    for (int v = 0; v < NV; ++v) {
        const float16 bv = vload16(0, bias + panel * NR + 16 * v);
        #pragma unroll
        for (int r = 0; r < MR; ++r) acc[r][v] += bv;
    }
    const int col0 = grp * OG + p * NR;  // this panel's first output channel
    const int ncols = min(NR, OG - p * NR);
    #pragma unroll
    for (int r = 0; r < MR; ++r) {
        if (row0 + r < M) {
            __global float* c = out + out_off + (size_t)(row0 + r) * Cout + col0;
#ifdef HAS_RESIDUAL
            const __global float* res = R + r_off + (size_t)(row0 + r) * Cout + col0;
#endif
            if (ncols == NR) {
                #pragma unroll
                for (int v = 0; v < NV; ++v) {
                    float16 y = acc[r][v];
#ifdef HAS_RESIDUAL
                    y += vload16(v, res);
#endif
                    vstore16(ACT(y), v, c);
                }
            } else {
                float tmp[NR];
                #pragma unroll
                for (int v = 0; v < NV; ++v) vstore16(acc[r][v], v, tmp);
                for (int j = 0; j < ncols; ++j) {
                    float y = tmp[j];
#ifdef HAS_RESIDUAL
                    y += res[j];
#endif
                    c[j] = ACT(y);
                }
            }
        }
    }
}
