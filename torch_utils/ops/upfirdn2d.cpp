// upfirdn2d CUDA plugin: argument checks and Python binding. Part of taxfree3dmm (MIT).
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "upfirdn2d.h"

// x [N, C, H, W] contiguous, f [kh, kw] float32 correlation taps -> y [N, C, out_h, out_w].
static torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t upx, int64_t upy, int64_t downx,
                               int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 4 && x.is_contiguous(), "upfirdn2d: x must be a contiguous 4-D CUDA tensor");
    TORCH_CHECK(f.device() == x.device() && f.dim() == 2 && f.scalar_type() == torch::kFloat && f.is_contiguous(),
                "upfirdn2d: f must be a contiguous 2-D float32 tensor on x's device");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up/down must be >= 1");
    const int64_t in_h = x.size(2), in_w = x.size(3), kh = f.size(0), kw = f.size(1);
    const int64_t num_h = in_h * upy + py0 + py1 - kh + downy, num_w = in_w * upx + px0 + px1 - kw + downx;
    TORCH_CHECK(num_h >= 0 && num_w >= 0, "upfirdn2d: padding too negative or filter too big for the input");
    const int64_t out_h = num_h / downy, out_w = num_w / downx;
    TORCH_CHECK(in_h * upy + kh + std::abs(py0) < INT32_MAX && in_w * upx + kw + std::abs(px0) < INT32_MAX,
                "upfirdn2d: spatial size too large for 32-bit indexing");

    const c10::cuda::CUDAGuard device_guard(x.device());
    torch::Tensor y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    Upfirdn2dParams p;
    p.x = x.data_ptr();
    p.f = f.data_ptr<float>();
    p.y = y.data_ptr();
    p.planes = x.size(0) * x.size(1);
    p.in_h = (int)in_h; p.in_w = (int)in_w; p.out_h = (int)out_h; p.out_w = (int)out_w;
    p.kh = (int)kh; p.kw = (int)kw;
    p.upx = (int)upx; p.upy = (int)upy; p.downx = (int)downx; p.downy = (int)downy;
    p.px0 = (int)px0; p.py0 = (int)py0;
    if (y.numel() == 0)
        return y;
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    switch (x.scalar_type()) {
        case torch::kFloat: launch_upfirdn2d<float>(p, stream); break;
        case torch::kDouble: launch_upfirdn2d<double>(p, stream); break;
        case torch::kHalf: launch_upfirdn2d<c10::Half>(p, stream); break;
        case torch::kBFloat16: launch_upfirdn2d<c10::BFloat16>(p, stream); break;
        default: TORCH_CHECK(false, "upfirdn2d: unsupported dtype ", x.scalar_type());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "Upsample, pad, FIR filter, downsample (per channel)");
}
