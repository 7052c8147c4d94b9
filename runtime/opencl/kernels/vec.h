// vec.h: VC-wide float vectors (VC = 16, 8 or 4 channels) and loads/stores of a partial last
// channel block, shared by the kernels that compute one vector of channels at a time over NHWC
// (dwconv.cl, pool.cl). Their include line is expanded by programs.kernel_source.

#if VC == 16
#define VEC float16
#define VLOAD vload16
#define VSTORE vstore16
#elif VC == 8
#define VEC float8
#define VLOAD vload8
#define VSTORE vstore8
#elif VC == 4
#define VEC float4
#define VLOAD vload4
#define VSTORE vstore4
#else
#error "VC must be 4, 8 or 16"
#endif

// The nc valid lanes at p (nc < VC only in the last channel block), zero in the others.
inline VEC load_lanes(const __global float* p, const int nc)
{
    if (nc >= VC) return VLOAD(0, p);
    float t[VC];
    for (int j = 0; j < VC; ++j) t[j] = j < nc ? p[j] : 0.0f;
    return VLOAD(0, t);
}

// Store the first nc lanes of y at p.
inline void store_lanes(const VEC y, __global float* p, const int nc)
{
    if (nc >= VC) {
        VSTORE(y, 0, p);
        return;
    }
    float t[VC];
    VSTORE(y, 0, t);
    for (int j = 0; j < nc; ++j) p[j] = t[j];
}
