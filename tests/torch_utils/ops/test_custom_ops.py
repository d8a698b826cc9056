"""The fused CUDA plugins: one warning on a failed build, CUDA equal to the reference, kernel maths on the CPU."""

from __future__ import annotations

import pytest
import torch

from tests.torch_utils.ops.references import _CLOSED_FORMS, _compare_grads, _cuda_pair, cuda_only
from torch_utils import custom_ops
from torch_utils.ops import bias_act, upfirdn2d


def test_failed_plugin_build_warns_once_and_is_not_retried(monkeypatch, capsys):
    attempts = []

    def failing_plan(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("nvcc exploded")

    monkeypatch.setattr(custom_ops, "plan_build", failing_plan)
    monkeypatch.setattr(custom_ops, "_plugins", {})
    spec = custom_ops.PluginSpec("dummy_plugin", sources=("a.cu",))
    assert custom_ops.get_plugin(spec) is None
    assert custom_ops.get_plugin(spec) is None
    assert len(attempts) == 1 and custom_ops.plugin_status("dummy_plugin") == "failed"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dummy_plugin" in err[0] and "nvcc exploded" in err[0] and "reference" in err[0]


def test_missing_toolkit_is_one_line_naming_the_reference_path(monkeypatch, capsys, tmp_path):
    """No CUDA_HOME, no nvcc on PATH, no standard folder: one warning line, and the reference ops are used."""
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(custom_ops, "STANDARD_TOOLKIT_GLOBS", (str(tmp_path / "cuda*"),))
    monkeypatch.setattr(custom_ops, "_plugins", {})
    assert custom_ops.get_plugin(custom_ops.PluginSpec("dummy_plugin", sources=("a.cu",))) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA toolkit" in err[0] and "reference implementation" in err[0], err


@cuda_only
@pytest.mark.parametrize("act", sorted(_CLOSED_FORMS))
def test_bias_act_cuda_matches_ref(act):
    assert bias_act._plugin() is not None, "bias_act CUDA plugin failed to build"
    x, b = _cuda_pair((3, 5, 4, 6), 0), _cuda_pair((5,), 1)
    for clamp in (None, 0.7):
        fn = lambda impl, clamp=clamp: lambda x, b: bias_act.bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl=impl)
        _compare_grads(fn("cuda"), fn("ref"), (x, b))
    xcl = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)  # layout preserved, same values
    y = bias_act.bias_act(xcl, b, act=act, impl="cuda")
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, bias_act.bias_act(x, b, act=act, impl="ref"))
    y16 = bias_act.bias_act(x.half(), b.half(), act=act, impl="cuda")
    torch.testing.assert_close(y16, bias_act.bias_act(x, b, act=act, impl="ref").half(), atol=2e-2, rtol=1e-2)


@cuda_only
@pytest.mark.parametrize(
    "up,down,pad,fshape",
    [
        (1, 1, (1, 1, 1, 1), (3, 3)),
        (2, 1, (2, 1, 2, 1), (4, 4)),
        (1, 2, (1, 1, 1, 1), (4, 4)),
        ((3, 2), (2, 1), (1, -2, 3, 0), (3, 2)),
        (1, 1, (3, 4, 3, 4), (8,)),
    ],
)
def test_upfirdn2d_cuda_matches_ref(up, down, pad, fshape):
    assert upfirdn2d._plugin() is not None, "upfirdn2d CUDA plugin failed to build"
    x, f = _cuda_pair((2, 3, 9, 8), 2), _cuda_pair(fshape, 3).detach()
    fn = lambda impl: lambda x: upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, gain=1.7, impl=impl)
    _compare_grads(fn("cuda"), fn("ref"), (x,))
    y16 = upfirdn2d.upfirdn2d(x.half(), f, up=up, down=down, padding=pad, impl="cuda")
    torch.testing.assert_close(y16.double(), fn("ref")(x), atol=5e-2, rtol=1e-2)


_SHIM = r"""
#include <cmath>
#define __global__
#define __device__
#define __forceinline__ inline
struct ShimDim3 { unsigned int x; };
static const ShimDim3 blockIdx{0}, threadIdx{0}, blockDim{1}, gridDim{1};
#include "KERNEL.cu"
extern "C" void run_bias_act(const double* x, const double* b, const double* xref, double* y,
                             long long numel, long long step_b, long long size_b, int act, int grad,
                             float alpha, float gain, float clamp) {
    BiasActParams p{x, b, xref, y, numel, step_b, size_b, act, grad, alpha, gain, clamp};
    bias_act_kernel<double>(p);
}
extern "C" void run_upfirdn2d(const double* x, const float* f, double* y, long long planes,
                              int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                              int upx, int upy, int downx, int downy, int px0, int py0) {
    Upfirdn2dParams p{x, f, y, planes, in_h, in_w, out_h, out_w, kh, kw, upx, upy, downx, downy, px0, py0};
    upfirdn2d_kernel<double>(p);
}
"""


@pytest.fixture(scope="module")
def cpu_kernels(tmp_path_factory):
    """ctypes handles to the bias_act / upfirdn2d kernels compiled as C++ (skips if no C++ compiler)."""
    import ctypes
    import os
    import shutil
    import subprocess

    import torch.utils.cpp_extension as cpp_ext

    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    ops_dir = os.path.dirname(bias_act.__file__)
    libs = {}
    for kernel, other in (("bias_act", "upfirdn2d"), ("upfirdn2d", "bias_act")):
        src = _SHIM.replace("KERNEL", kernel)
        # keep only the wrapper for this kernel (the other one's types are not declared in this translation unit)
        start = src.index(f'extern "C" void run_{other}')
        end = src.index("}\n", start) + 2
        src = src[:start] + src[end:]
        out = tmp_path_factory.mktemp(kernel)
        (out / "shim.cpp").write_text(src)
        includes = [f"-I{ops_dir}", *[f"-I{p}" for p in cpp_ext.include_paths()]]
        cmd = [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-x", "c++", *includes, str(out / "shim.cpp")]
        res = subprocess.run([*cmd, "-o", str(out / "shim.so")], capture_output=True, text=True)
        assert res.returncode == 0, f"kernel source does not compile as C++:\n{res.stderr[-3000:]}"
        libs[kernel] = ctypes.CDLL(str(out / "shim.so"))
    return libs


def _ptr(t: torch.Tensor):
    import ctypes

    return ctypes.c_void_p(t.data_ptr()) if t.numel() else None


def _bias_act_kernel_cpu(lib, x, b, xref, grad, dim, act, alpha, gain, clamp):
    import ctypes

    y = torch.empty_like(x)
    lib.run_bias_act(
        _ptr(x), _ptr(b), _ptr(xref), _ptr(y), ctypes.c_longlong(x.numel()), ctypes.c_longlong(x.stride(dim)),
        ctypes.c_longlong(x.shape[dim]), act, grad, ctypes.c_float(alpha), ctypes.c_float(gain), ctypes.c_float(clamp),
    )  # fmt: skip
    return y


@pytest.mark.parametrize("act", sorted(_CLOSED_FORMS))
def test_bias_act_kernel_maths_on_cpu(cpu_kernels, act):
    """Kernel forward, f' and f'' terms vs autograd of the reference path (float64, alpha/gain/clamp given)."""
    lib, spec = cpu_kernels["bias_act"], bias_act.activation_funcs[act]
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # NHWC
    b = torch.randn(3, dtype=torch.float64)
    alpha, gain, clamp = 0.25, 1.5, 1.1
    xr = x.clone().requires_grad_(True)
    y_ref = bias_act.bias_act(xr, b, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="ref")
    y = _bias_act_kernel_cpu(lib, x, b, x.new_empty(0), 0, 1, spec.cuda_idx, alpha, gain, clamp)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-6, atol=1e-6)
    dy = torch.randn_like(x)
    (dx_ref,) = torch.autograd.grad(y_ref, xr, dy, create_graph=True)
    dx = _bias_act_kernel_cpu(lib, dy, b, x, 1, 1, spec.cuda_idx, alpha, gain, clamp)
    torch.testing.assert_close(dx, dx_ref.detach(), rtol=1e-6, atol=1e-6)
    if spec.has_2nd_grad:  # d(dx)/dx = dy * f''(z) * gain * mask
        g = torch.randn_like(x)
        (ddx_ref,) = torch.autograd.grad(dx_ref, xr, g)
        ddx = _bias_act_kernel_cpu(lib, g * dy, b, x, 2, 1, spec.cuda_idx, alpha, gain, clamp)
        torch.testing.assert_close(ddx, ddx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "up,down,pad,fshape",
    [((1, 1), (1, 1), (1, 1, 1, 1), (3, 3)), ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4)),
     ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4)), ((3, 2), (2, 1), (1, -2, 3, 0), (3, 2)),
     ((2, 1), (1, 3), (-1, -1, 2, -3), (2, 5))],
)  # fmt: skip
def test_upfirdn2d_kernel_maths_on_cpu(cpu_kernels, up, down, pad, fshape):
    """Kernel (forward, and backward via grad_params) vs the reference path and its autograd gradient."""
    import ctypes

    lib = cpu_kernels["upfirdn2d"]

    def run(x, f, params):  # what _Upfirdn2dCuda.forward does, with the emulated kernel
        upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain = params
        fc = (f.float() * gain).flip([0, 1]) if not flip_filter else f.float() * gain
        fc = fc.contiguous()
        n, c, h, w = x.shape
        oh, ow = (
            (h * upy + py0 + py1 - f.shape[0] + downy) // downy,
            (w * upx + px0 + px1 - f.shape[1] + downx) // downx,
        )
        y = x.new_empty(n, c, oh, ow)
        lib.run_upfirdn2d(
            _ptr(x),
            _ptr(fc),
            _ptr(y),
            ctypes.c_longlong(n * c),
            h,
            w,
            oh,
            ow,
            *f.shape,
            upx,
            upy,
            downx,
            downy,
            px0,
            py0,
        )
        return y

    x, f = torch.randn(2, 3, 7, 6, dtype=torch.float64), torch.randn(fshape, dtype=torch.float64)
    params = (*up, *down, *pad, False, 1.5)
    xr = x.clone().requires_grad_(True)
    y_ref = upfirdn2d._upfirdn2d_ref(xr, f.float().double(), params)
    y = run(x, f, params)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-6, atol=1e-6)
    dy = torch.randn_like(y)
    (dx_ref,) = torch.autograd.grad(y_ref, xr, dy)
    gp = upfirdn2d.grad_params(params, tuple(x.shape[2:]), tuple(y.shape[2:]), tuple(f.shape))
    torch.testing.assert_close(run(dy, f, gp), dx_ref, rtol=1e-6, atol=1e-6)
