// peak.cl: the device's fp32 FMA throughput, for the roofline (probe.py).
//
// Computes   out[i] = the sum of 16 float16 accumulators after ITERS rounds of acc_j = fma(acc_j, a, b)
//   per work-item: 16 * 16 * 2 * ITERS flops each, in 16 independent dependency chains (enough to hide
//   the FMA latency: 8 chains reached only 110 to 140 GFLOP/s here, 16 reach 225 to 230), all in registers. Storing the sum keeps the compiler from deleting the loop.
//
// Layout: out is [global size] floats. Work-group: 1-D, any size; the host launches enough
//   work-items for every compute unit to run several.
//
// Build options: -DITERS=<rounds>.

#ifndef ITERS
#define ITERS 4096
#endif

__kernel void fma_peak(__global float* out, const float a, const float b)
{
    float16 acc[16];
    #pragma unroll
    for (int j = 0; j < 16; ++j) acc[j] = (float16)(get_global_id(0) + j);
    for (int i = 0; i < ITERS; ++i) {
        #pragma unroll
        for (int j = 0; j < 16; ++j) acc[j] = fma(acc[j], a, b);
    }
    float16 s = acc[0];
    for (int j = 1; j < 16; ++j) s += acc[j];
    out[get_global_id(0)] = s.s0 + s.s1 + s.s2 + s.s3 + s.s4 + s.s5 + s.s6 + s.s7
                          + s.s8 + s.s9 + s.sa + s.sb + s.sc + s.sd + s.se + s.sf;
}
