// dwconv.cl: depthwise 2-D convolution over NHWC tensors, with a fused epilogue.
//
// Computes   out[n, oh, ow, c] = ACT( sum_{kh, kw} x[n, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW, c]
//                                       * w[kh, kw, c]  + bias[c]  (+ res[n, oh, ow, c]) )
//   (input positions outside the image contribute 0).
//
// Layout: x, out and res NHWC contiguous; w packed by the host as [KH, KW, C] (channels fastest,
//   matching x); element offsets into their buffers.
//
// Work-group: 1-D, one work-item per output element with c fastest, so neighbouring work-items
//   read neighbouring channels and the same (kh, kw) tap. Global size: N*OH*OW*C rounded up.
//
// Build options: -DACT(x)=..., -DHAS_RESIDUAL.

#ifndef ACT
#define ACT(x) (x)
#endif

__kernel void dwconv(__global float *out, int out_off, __global const float *x, int x_off,
                     __global const float *w, __global const float *bias,
                     __global const float *res, int res_off,
                     int H, int W, int C, int OH, int OW, int KH, int KW,
                     int SH, int SW, int PH, int PW, int DH, int DW, int total)
{
    int i = get_global_id(0);
    if (i >= total)
        return;
    int c = i % C, r = i / C;
    int ow = r % OW; r /= OW;
    int oh = r % OH;
    int n = r / OH;
    float acc = bias[c];
    for (int kh = 0; kh < KH; ++kh) {
        int h = oh * SH - PH + kh * DH;
        if (h < 0 || h >= H)
            continue;
        for (int kw = 0; kw < KW; ++kw) {
            int ww = ow * SW - PW + kw * DW;
            if (ww >= 0 && ww < W)
                acc += x[x_off + ((n * H + h) * W + ww) * C + c] * w[(kh * KW + kw) * C + c];
        }
    }
#ifdef HAS_RESIDUAL
    acc += res[res_off + i];
#endif
    out[out_off + i] = ACT(acc);
}
