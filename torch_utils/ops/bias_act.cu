// bias_act CUDA kernel: one thread per element (grid-stride), math in float (double for double tensors).
// Part of taxfree3dmm (MIT). Written from the op's mathematical definition; see bias_act.py.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "bias_act.h"

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

// f(z), f'(z), f''(z) for every activation; `alpha` as in bias_act.py.
template <typename acc_t>
__device__ __forceinline__ void activation(int act, acc_t z, acc_t alpha, acc_t& f, acc_t& d1, acc_t& d2) {
    const acc_t one = 1, zero = 0;
    switch (act) {
        case 1:  // relu
            f = z > zero ? z : zero; d1 = z > zero ? one : zero; d2 = zero; break;
        case 2:  // lrelu
            f = z > zero ? z : alpha * z; d1 = z > zero ? one : alpha; d2 = zero; break;
        case 3: {  // tanh
            acc_t t = tanh(z);
            f = t; d1 = one - t * t; d2 = -2 * t * d1; break;
        }
        case 4: {  // sigmoid
            acc_t s = one / (one + exp(-z));
            f = s; d1 = s * (one - s); d2 = d1 * (one - 2 * s); break;
        }
        case 5: {  // elu
            acc_t e = exp(z);
            f = z > zero ? z : alpha * (e - one); d1 = z > zero ? one : alpha * e; d2 = z > zero ? zero : alpha * e; break;
        }
        case 6: {  // selu: fixed scale and alpha
            const acc_t scale = (acc_t)1.0507009873554805, sa = (acc_t)(1.0507009873554805 * 1.6732632423543772);
            acc_t e = exp(z);
            f = z > zero ? scale * z : sa * (e - one); d1 = z > zero ? scale : sa * e; d2 = z > zero ? zero : sa * e;
            break;
        }
        case 7: {  // softplus (PyTorch's threshold 20: linear above it)
            acc_t s = one / (one + exp(-z));
            f = z > (acc_t)20 ? z : log1p(exp(z)); d1 = s; d2 = s * (one - s); break;
        }
        case 8: {  // swish
            acc_t s = one / (one + exp(-z));
            f = z * s; d1 = s + z * s * (one - s); d2 = s * (one - s) * (2 + z * (one - 2 * s)); break;
        }
        default:  // linear
            f = z; d1 = one; d2 = zero; break;
    }
}

template <typename scalar_t>
__global__ void bias_act_kernel(BiasActParams p) {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    const scalar_t* b = static_cast<const scalar_t*>(p.b);
    const scalar_t* xref = static_cast<const scalar_t*>(p.xref);
    scalar_t* y = static_cast<scalar_t*>(p.y);
    const acc_t alpha = p.alpha, gain = p.gain, clamp = p.clamp;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.numel; i += (int64_t)gridDim.x * blockDim.x) {
        acc_t v = static_cast<acc_t>(x[i]);
        acc_t z = p.grad == 0 ? v : static_cast<acc_t>(xref[i]);
        if (b != nullptr)
            z += static_cast<acc_t>(b[(i / p.step_b) % p.size_b]);
        acc_t f, d1, d2;
        activation<acc_t>(p.act, z, alpha, f, d1, d2);
        acc_t u = f * gain;
        acc_t out;
        if (p.grad == 0) {
            out = clamp >= 0 ? (u > clamp ? clamp : (u < -clamp ? -clamp : u)) : u;
        } else {
            bool pass = clamp < 0 || (u <= clamp && u >= -clamp);  // d clamp / du (inclusive, like torch.clamp)
            out = pass ? v * (p.grad == 1 ? d1 : d2) * gain : (acc_t)0;
        }
        y[i] = static_cast<scalar_t>(out);
    }
}

#ifdef __CUDACC__  // the launch code; tests compile the kernel above as plain C++ without it
template <typename scalar_t>
void launch_bias_act(const BiasActParams& p, CUstream_st* stream) {
    const int threads = 256;
    int64_t blocks = (p.numel + threads - 1) / threads;
    if (blocks > 65536) blocks = 65536;  // grid-stride loop covers the rest
    if (blocks > 0)
        bias_act_kernel<scalar_t><<<(unsigned int)blocks, threads, 0, stream>>>(p);
}

template void launch_bias_act<float>(const BiasActParams&, CUstream_st*);
template void launch_bias_act<double>(const BiasActParams&, CUstream_st*);
template void launch_bias_act<c10::Half>(const BiasActParams&, CUstream_st*);
template void launch_bias_act<c10::BFloat16>(const BiasActParams&, CUstream_st*);
#endif
