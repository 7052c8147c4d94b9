// pool.cl: 2-D max / average pooling, fixed or adaptive windows, over NHWC tensors.
//
// Computes   out[n, oh, ow, c] = max or mean of x[n, h, w, c] over the window of (oh, ow):
//   fixed:    h in [oh*SH - PH, oh*SH - PH + KH), clipped to [0, H) (same for w); the mean divides
//             by the window clipped to the padded input when COUNT_PAD is 1 (PyTorch's
//             count_include_pad=True), by the valid count otherwise.
//   adaptive: h in [floor(oh*H/OH), ceil((oh+1)*H/OH)), as torch's adaptive pooling.
//
// Layout: x and out are NHWC, contiguous, addressed by element offsets into their buffers.
//
// Work-group: 1-D, one work-item per output element with c fastest, so neighbouring work-items
//   read neighbouring channels. Global size: N*OH*OW*C rounded up to the host's local size.
//
// Build options: -DMAX (else average). Built without -DVC: the scalar `pool`; with it: `pool_vec`.

#ifndef VC
__kernel void pool(__global float *out, int out_off, __global const float *x, int x_off,
                   int H, int W, int C, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
                   int adaptive, int count_pad, int n_out)
{
    int i = get_global_id(0);
    if (i >= n_out)
        return;
    int c = i % C, r = i / C;
    int ow = r % OW; r /= OW;
    int oh = r % OH;
    int n = r / OH;
    int h0, h1, w0, w1, size;
    if (adaptive) {
        h0 = (oh * H) / OH; h1 = ((oh + 1) * H + OH - 1) / OH;
        w0 = (ow * W) / OW; w1 = ((ow + 1) * W + OW - 1) / OW;
        size = (h1 - h0) * (w1 - w0);
    } else {
        h0 = oh * SH - PH; w0 = ow * SW - PW;
        h1 = min(h0 + KH, H + PH); w1 = min(w0 + KW, W + PW);
        size = (h1 - h0) * (w1 - w0);
        h0 = max(h0, 0); w0 = max(w0, 0); h1 = min(h1, H); w1 = min(w1, W);
        if (!count_pad)
            size = (h1 - h0) * (w1 - w0);
    }
    __global const float *base = x + x_off + (n * H * W) * C + c;
#ifdef MAX
    float acc = -INFINITY;
    for (int h = h0; h < h1; ++h)
        for (int w = w0; w < w1; ++w)
            acc = fmax(acc, base[(h * W + w) * C]);
#else
    float acc = 0.0f;
    for (int h = h0; h < h1; ++h)
        for (int w = w0; w < w1; ++w)
            acc += base[(h * W + w) * C];
    acc /= (float)size;
#endif
    out[out_off + i] = acc;
}
#endif

// pool_vec: fixed windows (not adaptive), vectorised like dwconv.cl. A work-item computes VC
//   channels (one float16/8/4 vector) of PX consecutive output pixels of one output row; per window
//   row it loads the (PX-1)*SW + KW input columns its PX windows span once and reuses them across the
//   KW taps of all PX pixels. Global size (Cp / VC, ceil(OW / PX), N*OH), local (1, 1, 1), channel
//   blocks fastest. Positions outside the image are skipped (max) or add 0 (average); the average
//   divides as `pool` does. Build options: -DVC -DPX -DKH -DKW -DSH -DSW, and -DMAX or not.
//   Adaptive windows (global average pooling) keep the scalar kernel: they are small.
//
// Why: `pool` above, one scalar work-item per output with runtime window loops, is not vectorised by
//   PoCL: ResNet-18's 3x3/2 max pool at batch 8 (64 channels, 112x112) took 21 ms there; this kernel
//   is memory-bound (see benchmarks/runtime.py's per-kernel breakdown).
#ifdef VC
#include "vec.h"
#define PNCOL ((PX - 1) * SW + KW)
#ifdef MAX
#define PINIT (VEC)(-INFINITY)
#define PACC(a, v) fmax(a, v)
#else
#define PINIT (VEC)(0.0f)
#define PACC(a, v) ((a) + (v))
#endif

__kernel void pool_vec(__global float* restrict out, const int out_off, __global const float* restrict x,
                       const int x_off, const int H, const int W, const int C, const int OH, const int OW,
                       const int PH, const int PW, const int rows, const int count_pad)
{
    const int c0 = get_global_id(0) * VC;
    const int ow0 = get_global_id(1) * PX;
    const int row = get_global_id(2);  // n * OH + oh
    if (c0 >= C || ow0 >= OW || row >= rows) return;
    const int nc = min(VC, C - c0);
    const int oh = row % OH, n = row / OH;
    VEC acc[PX];
    #pragma unroll
    for (int p = 0; p < PX; ++p) acc[p] = PINIT;
    const int iw0 = ow0 * SW - PW;
    const int h0 = oh * SH - PH;
    #pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
        const int ih = h0 + kh;
        if ((uint)ih < (uint)H) {
            const __global float* xr = x + x_off + ((size_t)(n * H + ih) * W) * C + c0;
            VEC col[PNCOL];
            #pragma unroll
            for (int j = 0; j < PNCOL; ++j) {
                const int iw = iw0 + j;
                col[j] = (uint)iw < (uint)W ? load_lanes(xr + (size_t)iw * C, nc) : PINIT;
            }
            #pragma unroll
            for (int kw = 0; kw < KW; ++kw) {
                #pragma unroll
                for (int p = 0; p < PX; ++p) acc[p] = PACC(acc[p], col[p * SW + kw]);
            }
        }
    }
    __global float* o = out + out_off + ((size_t)row * OW + ow0) * C + c0;
    #pragma unroll
    for (int p = 0; p < PX; ++p) {
        if (ow0 + p < OW) {
            VEC y = acc[p];
#ifndef MAX
            const int w0 = iw0 + p * SW;
            int hh1 = min(h0 + KH, H + PH), ww1 = min(w0 + KW, W + PW);
            int size = (hh1 - h0) * (ww1 - w0);
            if (!count_pad)
                size = (min(hh1, H) - max(h0, 0)) * (min(ww1, W) - max(w0, 0));
            y /= (float)size;
#endif
            store_lanes(y, o + p * C, nc);
        }
    }
}
#endif
