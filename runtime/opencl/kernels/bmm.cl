// bmm.cl: batched matrix product with broadcasting, C[b, m, n] = sum_k A[b, m, k] * B[b, k, n].
//
// Layouts: A and B are read through element strides (batch dims b0, b1 outer to inner, then the
//   row and column strides), so transposed and broadcast operands need no copy (k^T in attention
//   is a stride swap). C is row-major [B0, B1, M, N], element offsets.
//
// Work-group: 1-D, one work-item per element of C, looping over K. Global size: B0*B1*M*N
//   rounded up to the host's local size. This is the simple kernel for activation-by-activation
//   products (attention); weight products go to gemm.cl with a packed B.

__kernel void bmm(__global float *c, int c_off, __global const float *a, int a_off, int4 sa,
                  __global const float *b, int b_off, int4 sb, int B1, int M, int N, int K, int total)
{
    // sa = (batch0 stride, batch1 stride, row stride, k stride); sb = (batch0, batch1, k, column)
    int i = get_global_id(0);
    if (i >= total)
        return;
    int n = i % N, r = i / N;
    int m = r % M; r /= M;
    int b1 = r % B1, b0 = r / B1;
    __global const float *pa = a + a_off + b0 * sa.s0 + b1 * sa.s1 + m * sa.s2;
    __global const float *pb = b + b_off + b0 * sb.s0 + b1 * sb.s1 + n * sb.s3;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k)
        acc += pa[k * sa.s3] * pb[k * sb.s2];
    c[c_off + i] = acc;
}
