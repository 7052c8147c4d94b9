// eltwise.cl: elementwise maps with broadcasting, and strided copies.
//
// Computes   out[io(i)] = OP(a[ia(i)], b[ib(i)])   for 0 <= i < n, where i enumerates an iteration
//   space of shape shape.s0 .. shape.s5 (unused leading dims are 1) row-major, and each operand is
//   addressed through per-dim element strides: ia(i) = a_off + sum_d coord_d(i) * sa.d (a stride of
//   0 broadcasts that dim), the same for b and for out (so a copy can write into part of a
//   larger tensor, as a cat does).
//   The same kernel therefore does binary ops with broadcasting (residual add, SE gate x * g),
//   unary activations (b unused), and copies through any strides: permute/transpose, layout
//   changes between NCHW and NHWC, slices, and the pieces of a cat.
//
// Layouts: any; everything is in the strides. All tensors live in float32 buffers (often one
//   arena), addressed by element offsets.
//
// Work-group: 1-D, one work-item per element of the iteration space, no loops, so PoCL's work-group vectorizer
//   vectorizes across work-items. Global size: n rounded up to the host's local size (64).
//
// Build options: -DOP=<expression in x and y>, e.g. -DOP="x+y", -DOP="fmax(x,0.0f)".

#ifndef OP
#define OP (x)
#endif

__kernel void eltwise(__global float *out, int out_off, int8 so,
                      __global const float *a, int a_off, int8 sa,
                      __global const float *b, int b_off, int8 sb,
                      int8 shape, int n)
{
    int i = get_global_id(0);
    if (i >= n)
        return;
    int r = i, io = out_off, ia = a_off, ib = b_off, c;
    c = r % shape.s5; r /= shape.s5; io += c * so.s5; ia += c * sa.s5; ib += c * sb.s5;
    c = r % shape.s4; r /= shape.s4; io += c * so.s4; ia += c * sa.s4; ib += c * sb.s4;
    c = r % shape.s3; r /= shape.s3; io += c * so.s3; ia += c * sa.s3; ib += c * sb.s3;
    c = r % shape.s2; r /= shape.s2; io += c * so.s2; ia += c * sa.s2; ib += c * sb.s2;
    c = r % shape.s1; r /= shape.s1; io += c * so.s1; ia += c * sa.s1; ib += c * sb.s1;
    io += r * so.s0; ia += r * sa.s0; ib += r * sb.s0;
    float x = a[ia];
    float y = b[ib];
    out[io] = OP;
}

// eltwise_flat: the same map when out, a (and b, unless broadcast as a scalar: sb = 0) are all
// contiguous in the iteration order, which is most residual adds, activations and copies. No
// index arithmetic, so PoCL vectorises it across work-items and it runs at memory bandwidth.
__kernel void eltwise_flat(__global float *out, int out_off, __global const float *a, int a_off,
                           __global const float *b, int b_off, int sb, int n)
{
    int i = get_global_id(0);
    if (i >= n)
        return;
    float x = a[a_off + i];
    float y = b[b_off + i * sb];
    out[out_off + i] = OP;
}
