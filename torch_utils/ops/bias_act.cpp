// bias_act CUDA plugin: argument checks and Python binding. Part of taxfree3dmm (MIT).
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bias_act.h"

// y = kernel(x, b, xref) elementwise; see BiasActParams for the meaning of grad. x, xref, y share one dense layout.
static torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, torch::Tensor xref, int64_t grad, int64_t dim,
                              int64_t act, double alpha, double gain, double clamp) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(x.is_non_overlapping_and_dense(), "bias_act: x must have a dense memory layout");
    TORCH_CHECK(dim >= 0 && dim < std::max<int64_t>(x.dim(), 1), "bias_act: dim out of range");
    TORCH_CHECK(grad >= 0 && grad <= 2, "bias_act: grad must be 0, 1 or 2");
    TORCH_CHECK(b.numel() == 0 || (b.dim() == 1 && b.numel() == x.size(dim)), "bias_act: b must be [x.shape[dim]]");
    TORCH_CHECK(b.numel() == 0 || (b.device() == x.device() && b.scalar_type() == x.scalar_type() && b.is_contiguous()),
                "bias_act: b must be a contiguous tensor with x's device and dtype");
    if (grad > 0)
        TORCH_CHECK(xref.sizes() == x.sizes() && xref.strides() == x.strides() && xref.device() == x.device() &&
                        xref.scalar_type() == x.scalar_type(),
                    "bias_act: xref must match x in shape, layout, device and dtype");

    const c10::cuda::CUDAGuard device_guard(x.device());
    torch::Tensor y = torch::empty_like(x);  // dense x: keeps its strides (e.g. channels_last)
    BiasActParams p;
    p.x = x.data_ptr();
    p.b = b.numel() ? b.data_ptr() : nullptr;
    p.xref = grad > 0 ? xref.data_ptr() : nullptr;
    p.y = y.data_ptr();
    p.numel = x.numel();
    p.step_b = b.numel() ? x.stride(dim) : 1;
    p.size_b = b.numel() ? x.size(dim) : 1;
    p.act = (int)act;
    p.grad = (int)grad;
    p.alpha = (float)alpha;
    p.gain = (float)gain;
    p.clamp = (float)clamp;
    if (p.numel == 0)
        return y;
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    switch (x.scalar_type()) {
        case torch::kFloat: launch_bias_act<float>(p, stream); break;
        case torch::kDouble: launch_bias_act<double>(p, stream); break;
        case torch::kHalf: launch_bias_act<c10::Half>(p, stream); break;
        case torch::kBFloat16: launch_bias_act<c10::BFloat16>(p, stream); break;
        default: TORCH_CHECK(false, "bias_act: unsupported dtype ", x.scalar_type());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "Fused bias + activation + gain + clamp (and its 1st/2nd derivative kernels)");
}
