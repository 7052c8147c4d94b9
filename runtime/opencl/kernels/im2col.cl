// im2col.cl: unfold NHWC input patches into the rows of a GEMM operand.
//
// Computes   cols[m, k] = x[n, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW, c0 + c]   (0 outside the input)
//   with m = (n*OH + oh)*OW + ow and k = (kh*KW + kw)*CG + c, for 0 <= c < CG: the input channels
//   c0 .. c0 + CG - 1 of one group. Then  cols @ W[(kh, kw, c), cout]  is the convolution, with
//   its output already NHWC ([M, Cout] row-major).
//
// Layout: x NHWC contiguous with C channels; cols row-major [M, KH*KW*CG], element offsets.
//
// Work-group: 1-D, one work-item per element of cols, c fastest (contiguous reads of x).
//   Global size: M*K rounded up to the host's local size.
//
// This materialises the patches, which costs memory traffic on large spatial sizes; a 1x1
// stride-1 conv skips it and runs the GEMM on x directly.

__kernel void im2col(__global float *cols, int cols_off, __global const float *x, int x_off,
                     int H, int W, int C, int c0, int CG, int OH, int OW, int KH, int KW,
                     int SH, int SW, int PH, int PW, int DH, int DW, int total)
{
    int i = get_global_id(0);
    if (i >= total)
        return;
    int K = KH * KW * CG;
    int k = i % K, m = i / K;
    int c = k % CG, t = k / CG;
    int kw = t % KW, kh = t / KW;
    int ow = m % OW, r = m / OW;
    int oh = r % OH, n = r / OH;
    int h = oh * SH - PH + kh * DH, w = ow * SW - PW + kw * DW;
    float v = 0.0f;
    if (h >= 0 && h < H && w >= 0 && w < W)
        v = x[x_off + ((n * H + h) * W + w) * C + c0 + c];
    cols[cols_off + i] = v;
}
