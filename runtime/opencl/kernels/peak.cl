// peak.cl: the device's fp32 FMA throughput, for the roofline (probe.py).
//
// Computes   out[i] = the sum of 8 float16 accumulators after ITERS rounds of acc_j = fma(acc_j, a, b)
//   per work-item: 8 * 16 * 2 * ITERS flops each, in 8 independent dependency chains (enough to hide
//   the FMA latency), all in registers. Storing the sum keeps the compiler from deleting the loop.
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
    float16 acc[8];
    #pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = (float16)(get_global_id(0) + j);
    for (int i = 0; i < ITERS; ++i) {
        #pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = fma(acc[j], a, b);
    }
    float16 s = acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
    out[get_global_id(0)] = s.s0 + s.s1 + s.s2 + s.s3 + s.s4 + s.s5 + s.s6 + s.s7
                          + s.s8 + s.s9 + s.sa + s.sb + s.sc + s.sd + s.se + s.sf;
}
