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
// Build options: -DMAX (else average).

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
