// bias_act CUDA plugin: shared declarations between the host binding (bias_act.cpp) and the kernel (bias_act.cu).
// Part of taxfree3dmm (MIT). Written from the op's mathematical definition; see bias_act.py.
#pragma once
#include <cstdint>

struct CUstream_st;  // = cudaStream_t; keeps this header free of CUDA includes (CPU test shim)

struct BiasActParams {
    const void* x;     // grad == 0: the input; grad 1/2: the incoming gradient to scale
    const void* b;     // bias [size_b] along `dim`, or nullptr
    const void* xref;  // grad 1/2: the forward input (without bias); nullptr for grad == 0
    void* y;           // output, same layout as x
    int64_t numel;
    int64_t step_b;    // stride (in elements) of the bias dim in the dense layout shared by x, xref, y
    int64_t size_b;    // length of the bias dim (1 when there is no bias)
    int act;           // index into the activation table (bias_act.py activation_funcs[...].cuda_idx)
    int grad;          // 0: clamp(f(z) * gain); 1: x * f'(z) * gain * mask; 2: x * f''(z) * gain * mask
    float alpha;
    float gain;
    float clamp;       // < 0: no clamp; mask = [|f(z) * gain| <= clamp]
};

template <typename scalar_t>
void launch_bias_act(const BiasActParams& p, CUstream_st* stream);
