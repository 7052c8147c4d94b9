// wino.cl: the input and output transforms of a Winograd F(2x2, 3x3) convolution over NHWC, fp32.
//
// A 3x3, stride-1 convolution computes each 2x2 block of outputs (a *tile*) from a 4x4 input patch:
//   Y = A^T [ (G g G^T) .* (B^T d B) ] A
// so per tile and channel pair the 36 multiply-adds of the direct form become 16, done as 16
// independent GEMMs (one per position xi of the 4x4 transformed patch) between the transformed
// inputs V[xi] [T, C] and the transformed weights U[xi] [C, K] (packed on the host, layers.py):
//   M[xi] = V[xi] @ U[xi]   (gemm.cl, batched over xi)
// T = N * TH * TW tiles, TH = ceil(OH / 2), TW = ceil(OW / 2). The transforms here are cheap and
// memory-bound; the GEMMs carry the arithmetic.
//
//   B^T = | 1  0 -1  0 |     A^T = | 1  1  1  0 |
//         | 0  1  1  0 |           | 0  1 -1 -1 |
//         | 0 -1  1  0 |
//         | 0  1  0 -1 |
//
// Layouts (float32, element offsets): x, out and res NHWC contiguous; V [16, T, C] and M [16, T, K]
// row-major (xi = 4 * row + column of the 4x4 patch; tile t = (n * TH + ty) * TW + tx). Bias [Kp],
// K rounded up to VC, zero padded.
//
// Work decomposition: a work-item transforms one tile for VC channels (one vector, vec.h). Global
// size (ceil(C / VC), TW, N * TH), local (1, 1, 1), like dwconv.cl. Build options: -DVC=<16|8|4>,
// and for wino_out -DHAS_RESIDUAL and -DACT(x)=<expression in x on VEC vectors>.

#ifndef ACT
#define ACT(x) (x)
#endif
#include "vec.h"

__kernel void wino_in(__global float* restrict V, const int v_off,
                      __global const float* restrict x, const int x_off,
                      const int H, const int W, const int C, const int TH, const int TW,
                      const int PH, const int PW, const int rows)
{
    const int c0 = get_global_id(0) * VC, tx = get_global_id(1), row = get_global_id(2);  // row = n * TH + ty
    if (c0 >= C || tx >= TW || row >= rows) return;
    const int nc = min(VC, C - c0);
    const int ty = row % TH, n = row / TH;
    const int ih0 = 2 * ty - PH, iw0 = 2 * tx - PW;
    const __global float* xb = x + x_off + (size_t)n * H * W * C + c0;

    VEC d[4][4];
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int ih = ih0 + i, iw = iw0 + j;
            d[i][j] = ((uint)ih < (uint)H && (uint)iw < (uint)W) ? load_lanes(xb + ((size_t)ih * W + iw) * C, nc)
                                                                 : (VEC)(0.0f);
        }
    }
    VEC t[4][4];  // B^T d
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
        t[0][j] = d[0][j] - d[2][j];
        t[1][j] = d[1][j] + d[2][j];
        t[2][j] = d[2][j] - d[1][j];
        t[3][j] = d[1][j] - d[3][j];
    }
    const size_t T = (size_t)rows * TW, tile = (size_t)row * TW + tx;
    __global float* v = V + v_off + tile * C + c0;
    #pragma unroll
    for (int i = 0; i < 4; ++i) {  // (B^T d) B, row i
        store_lanes(t[i][0] - t[i][2], v + (4 * i + 0) * T * C, nc);
        store_lanes(t[i][1] + t[i][2], v + (4 * i + 1) * T * C, nc);
        store_lanes(t[i][2] - t[i][1], v + (4 * i + 2) * T * C, nc);
        store_lanes(t[i][1] - t[i][3], v + (4 * i + 3) * T * C, nc);
    }
}

__kernel void wino_out(__global float* restrict out, const int out_off,
                       __global const float* restrict M, const int m_off,
                       __global const float* restrict res, const int res_off,
                       __global const float* restrict bias,
                       const int K, const int OH, const int OW, const int TH, const int TW, const int rows)
{
    const int k0 = get_global_id(0) * VC, tx = get_global_id(1), row = get_global_id(2);
    if (k0 >= K || tx >= TW || row >= rows) return;
    const int nk = min(VC, K - k0);
    const int ty = row % TH, n = row / TH;
    const size_t T = (size_t)rows * TW, tile = (size_t)row * TW + tx;
    const __global float* mb = M + m_off + tile * K + k0;

    VEC s[2][4];  // A^T m
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
        const VEC m0 = load_lanes(mb + (0 + j) * T * K, nk), m1 = load_lanes(mb + (4 + j) * T * K, nk);
        const VEC m2 = load_lanes(mb + (8 + j) * T * K, nk), m3 = load_lanes(mb + (12 + j) * T * K, nk);
        s[0][j] = m0 + m1 + m2;
        s[1][j] = m1 - m2 - m3;
    }
    const VEC b = VLOAD(0, bias + k0);
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int oh = 2 * ty + i;
        #pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int ow = 2 * tx + j;
            if (oh < OH && ow < OW) {
                VEC y = (j == 0 ? s[i][0] + s[i][1] + s[i][2] : s[i][1] - s[i][2] - s[i][3]) + b;
                const size_t at = (((size_t)n * OH + oh) * OW + ow) * K + k0;
#ifdef HAS_RESIDUAL
                y += load_lanes(res + res_off + at, nk);
#endif
                store_lanes(ACT(y), out + out_off + at, nk);
            }
        }
    }
}
