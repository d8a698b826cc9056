// upfirdn2d CUDA plugin: shared declarations between the host binding (upfirdn2d.cpp) and the kernel (upfirdn2d.cu).
// Part of taxfree3dmm (MIT). Written from the op's mathematical definition; see upfirdn2d.py.
#pragma once
#include <cstdint>

struct CUstream_st;  // = cudaStream_t; keeps this header free of CUDA includes (CPU test shim)

struct Upfirdn2dParams {
    const void* x;   // [N*C, in_h, in_w] contiguous
    const float* f;  // [kh, kw] contiguous CORRELATION taps (flip and gain already applied by the caller)
    void* y;         // [N*C, out_h, out_w] contiguous
    int64_t planes;  // N * C
    int in_h, in_w, out_h, out_w, kh, kw;
    int upx, upy, downx, downy, px0, py0;
};

template <typename scalar_t>
void launch_upfirdn2d(const Upfirdn2dParams& p, CUstream_st* stream);
