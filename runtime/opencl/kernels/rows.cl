// rows.cl: softmax and layer norm over the last dim of a row-major [R, L] tensor.
//
// softmax:    out[r, i] = exp(x[r, i] - max_j x[r, j]) / sum_j exp(x[r, j] - max_j x[r, j])
// layer_norm: out[r, i] = (x[r, i] - mean_r) / sqrt(var_r + eps) * w[i] + b[i]   (biased variance)
//
// Layout: x and out row-major [R, L] (the normalised dim contiguous), element offsets; w, b [L].
//
// Work-group: 1-D, one work-item per row, looping over the row in three passes (max or mean,
//   then sum of exponentials or of squares, then the write). Global size: R rounded up to the
//   host's local size. Rows are independent, so there are no barriers.

__kernel void softmax(__global float *out, int out_off, __global const float *x, int x_off, int R, int L)
{
    int r = get_global_id(0);
    if (r >= R)
        return;
    __global const float *row = x + x_off + r * L;
    __global float *dst = out + out_off + r * L;
    float m = -INFINITY;
    for (int i = 0; i < L; ++i)
        m = fmax(m, row[i]);
    float s = 0.0f;
    for (int i = 0; i < L; ++i)
        s += exp(row[i] - m);
    float inv = 1.0f / s;
    for (int i = 0; i < L; ++i)
        dst[i] = exp(row[i] - m) * inv;
}

__kernel void layer_norm(__global float *out, int out_off, __global const float *x, int x_off,
                         __global const float *w, int w_off, __global const float *b, int b_off,
                         int R, int L, float eps)
{
    int r = get_global_id(0);
    if (r >= R)
        return;
    __global const float *row = x + x_off + r * L;
    __global float *dst = out + out_off + r * L;
    float mean = 0.0f;
    for (int i = 0; i < L; ++i)
        mean += row[i];
    mean /= (float)L;
    float var = 0.0f;
    for (int i = 0; i < L; ++i) {
        float d = row[i] - mean;
        var += d * d;
    }
    float inv = rsqrt(var / (float)L + eps);
    for (int i = 0; i < L; ++i)
        dst[i] = (row[i] - mean) * inv * w[w_off + i] + b[b_off + i];
}
