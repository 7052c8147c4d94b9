// gemm.cl: C = act(A @ B + bias + residual), fp32, with B pre-packed.
//
// Computes   C[m, n] = act( sum_k A[m, k] * B[k, n]  (+ bias[n])  (+ R[m, n]) )
//   for 0 <= m < M, 0 <= n < N. This fused epilogue is what Linear and conv-as-GEMM lower to.
//
// Layouts (all float32, element offsets and row strides so that A, R and C can be views):
//   A   row-major [M, K]: A[m, k] = A[a_off + m * lda + k]
//   Bp  B packed by gemm.pack_b into NR-column panels, K-major inside a panel:
//       Bp[(p * K + k) * NR + j] = B[k, p * NR + j], zero for columns >= N.
//       One k-step of a panel is NV contiguous float16 vectors: aligned vector loads, no gathers.
//   bias [Np] (N rounded up to NR, zero padded), only read when HAS_BIAS is defined.
//   R   row-major: R[m, n] = R[r_off + m * ldr + n], only read when HAS_RESIDUAL is defined.
//   C   row-major: C[m, n] = C[c_off + m * ldc + n].
//
// Work decomposition: one work-item computes an MR x NR block of C (rows MR*gid(1) ..,
// panel gid(0)), keeping MR * NV float16 accumulators in registers over the whole K loop.
// Global size (ceil(N / NR), ceil(M / MR)) rounded up to the local size; the work-group
// shape is chosen by the host (gemm.py) once per Gemm.
//
// Build options:
//   -DMR=<rows per work-item>  -DNV=<float16 vectors per row, NR = 16 * NV>
//   -DHAS_BIAS  -DHAS_RESIDUAL  -DACTIVATION=<0 none | 1 relu | 2 relu6 | 3 hardswish>
//   -DBATCHED: a batch of GEMMs with one shape (Winograd's 16, wino.cl), the third global dim; the
//   trailing arguments are the element strides between consecutive A, Bp and C.
//
// Edges: columns past N are zeros in Bp and are not stored; rows past M are clamped to row
// M - 1 for loads (so the inner loop has no branch) and are not stored. Any M, N, K >= 1.
//
// Why this design (PoCL 3.1, LLVM 15, AVX-512; the measured variants are in gemm.py's notes):
//   - PoCL does not vectorize a scalar work-item loop across work-items when it has an inner
//     loop, so the kernel vectorizes itself: a float16 is one zmm register.
//   - Per k: NV aligned vector loads of the B panel, MR scalar loads of A that LLVM folds into
//     vbroadcastss, MR * NV FMAs. MR = 8, NV = 2 (an 8x32 block) keeps 16 accumulators + 2 B
//     vectors in the 32 zmm registers with no spills, enough independent FMAs to hide their
//     latency, and 10 loads per 16 FMAs. It ran at ~196-217 GFLOP/s at 1024^3, 85-94% of this
//     2-core Zen 4's 230 FMA peak, and was at or within 5% of the best blocking on every shape
//     tried. 6x32 and 12x16 lost up to half their speed at 1024^3 (but not at K = 2304).
//   - Pre-packing B turns B[k, n0 .. n0+31], one strided row segment per k, into one contiguous
//     stream per work-item, so the loads are aligned and the prefetcher follows them.
//   - Local size 1x1: within noise of 1x8, 2x1 and 1x34, and it puts no constraint on the
//     global size. PoCL runs the work-items of a group in a loop on one thread, so a larger
//     group only changes which blocks share a thread's caches.
//   - No local memory and no barriers: each work-item streams its own A rows and B panel,
//     which L1/L2 serve (a 32-column panel is 128 KiB at K = 1024).

#ifndef MR
#define MR 8
#endif
#ifndef NV
#define NV 2
#endif
#define NR (16 * NV)

#ifndef ACTIVATION
#define ACTIVATION 0
#endif
#if ACTIVATION == 0
#define ACT(x) (x)
#elif ACTIVATION == 1
#define ACT(x) fmax((x), 0.0f)
#elif ACTIVATION == 2
#define ACT(x) fmin(fmax((x), 0.0f), 6.0f)
#elif ACTIVATION == 3
#define ACT(x) ((x) * fmin(fmax((x) + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f))
#else
#error "ACTIVATION must be 0 (none), 1 (relu), 2 (relu6) or 3 (hardswish)"
#endif

__kernel void gemm(__global const float* restrict A, const int a_off, const int lda,
                   __global const float* restrict Bp,
                   __global const float* restrict bias,
                   __global const float* restrict R, const int r_off, const int ldr,
                   __global float* restrict C, const int c_off, const int ldc,
                   const int M, const int N, const int K
#ifdef BATCHED
                   , const int a_bs, const int b_bs, const int c_bs
#endif
                   )
{
#ifdef BATCHED  // GEMM number get_global_id(2): A, Bp and C advance by their batch strides
    const size_t bi = get_global_id(2);
    A += bi * a_bs;
    Bp += bi * b_bs;
    C += bi * c_bs;
#endif
    const int panel = get_global_id(0);
    const int row0 = get_global_id(1) * MR;
    if (row0 >= M) return;

    const __global float* a[MR];
    #pragma unroll
    for (int r = 0; r < MR; ++r) a[r] = A + a_off + (size_t)min(row0 + r, M - 1) * lda;
    const __global float16* b = (const __global float16*)(Bp + (size_t)panel * NR * K);

    float16 acc[MR][NV];
    #pragma unroll
    for (int r = 0; r < MR; ++r) {
        #pragma unroll
        for (int v = 0; v < NV; ++v) acc[r][v] = (float16)(0.0f);
    }
    for (int k = 0; k < K; ++k) {
        float16 bk[NV];
        #pragma unroll
        for (int v = 0; v < NV; ++v) bk[v] = b[k * NV + v];
        #pragma unroll
        for (int r = 0; r < MR; ++r) {
            const float16 ak = (float16)(a[r][k]);
            #pragma unroll
            for (int v = 0; v < NV; ++v) acc[r][v] = fma(ak, bk[v], acc[r][v]);
        }
    }

    const int col0 = panel * NR;
#ifdef HAS_BIAS
    #pragma unroll
    for (int v = 0; v < NV; ++v) {
        const float16 bv = vload16(0, bias + col0 + 16 * v);
        #pragma unroll
        for (int r = 0; r < MR; ++r) acc[r][v] += bv;
    }
#endif
    const bool full = col0 + NR <= N;
    #pragma unroll
    for (int r = 0; r < MR; ++r) {
        if (row0 + r >= M) break;
        __global float* c = C + c_off + (size_t)(row0 + r) * ldc + col0;
#ifdef HAS_RESIDUAL
        const __global float* res = R + r_off + (size_t)(row0 + r) * ldr + col0;
#endif
        if (full) {
            #pragma unroll
            for (int v = 0; v < NV; ++v) {
                float16 x = acc[r][v];
#ifdef HAS_RESIDUAL
                x += vload16(v, res);
#endif
                vstore16(ACT(x), v, c);
            }
        } else {  // the last panel of an N that NR does not divide
            float tmp[NR];
            #pragma unroll
            for (int v = 0; v < NV; ++v) vstore16(acc[r][v], v, tmp);
            for (int j = 0; j < N - col0; ++j) {
                float x = tmp[j];
#ifdef HAS_RESIDUAL
                x += res[j];
#endif
                c[j] = ACT(x);
            }
        }
    }
}
