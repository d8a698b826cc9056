"""CUDA builds without a GPU: the toolkit is found as users have it, and the plugins compile for sm_80 and sm_90.

The toolkit tests lay out fake toolkits (a stub nvcc, headers) in tmp_path. The compile checks need a real nvcc
and skip with the reason without one; their builds are cached in torch's extension folder (keyed by sources and
architectures), so a second run only re-links nothing and imports.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest
import torch

from torch_utils import custom_ops
from torch_utils.ops import bias_act, upfirdn2d

COMPILE_CHECK_ARCHS = ("sm_80", "sm_90")  # A100 and H100/H200: compiled, not run, where no GPU is present


def _fake_toolkit(root: Path, version: int = 12040) -> Path:
    """root/bin/nvcc (a stub) + include/cuda_runtime.h + include/cuda.h defining CUDA_VERSION."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho fake nvcc\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    (root / "include" / "cuda_runtime.h").write_text("// stub\n")
    (root / "include" / "cuda.h").write_text(f"#define CUDA_VERSION {version}\n")
    return root


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No CUDA_HOME / CUDA_PATH, an empty PATH folder, and standard locations only under tmp_path."""
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    path_dir = tmp_path / "path"
    path_dir.mkdir()
    monkeypatch.setenv("PATH", str(path_dir))
    monkeypatch.setattr(custom_ops, "STANDARD_TOOLKIT_GLOBS", (str(tmp_path / "std" / "cuda"),
                                                               str(tmp_path / "std" / "cuda-*")))  # fmt: skip
    return path_dir


def test_cuda_home_wins_and_a_wrong_one_is_an_error(clean_env, monkeypatch, tmp_path):
    root = _fake_toolkit(tmp_path / "toolkit", 12080)
    _fake_toolkit(tmp_path / "std" / "cuda-13.0", 13000)  # would be found otherwise
    monkeypatch.setenv("CUDA_PATH", str(root))
    tk = custom_ops.find_cuda_toolkit()
    assert (tk.root, tk.version, tk.found_by) == (str(root), "12.8", "CUDA_PATH")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nowhere"))  # CUDA_HOME is read first and must be right
    with pytest.raises(custom_ops.ToolkitNotFound, match="CUDA_HOME=.*nowhere.*not a CUDA toolkit"):
        custom_ops.find_cuda_toolkit()


def test_wrapper_script_on_path_leads_to_the_real_toolkit(clean_env, tmp_path):
    """The nvcc on PATH is a script outside any toolkit (as on this project's machines): the root is the folder of
    the nvcc it execs, not the script's parent (torch's own guess, which lacks include/cuda_runtime.h)."""
    root = _fake_toolkit(tmp_path / "opt" / "cuda-13.0", 13000)
    wrapper = clean_env / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {root}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    tk = custom_ops.find_cuda_toolkit()
    assert tk.root == str(root) and tk.version == "13.0" and str(wrapper) in tk.found_by
    assert tk.nvcc == str(root / "bin" / "nvcc")


def test_symlinked_nvcc_on_path_resolves_to_its_toolkit(clean_env, tmp_path):
    root = _fake_toolkit(tmp_path / "cuda-12.4")
    (clean_env / "nvcc").symlink_to(root / "bin" / "nvcc")
    assert custom_ops.find_cuda_toolkit().root == str(root)


def test_standard_locations_newest_first_else_one_line_error(clean_env, tmp_path):
    with pytest.raises(custom_ops.ToolkitNotFound, match="no CUDA toolkit") as info:
        custom_ops.find_cuda_toolkit()
    assert "\n" not in str(info.value)
    assert custom_ops.toolkit_or_none() is None
    _fake_toolkit(tmp_path / "std" / "cuda-12.9", 12090)
    _fake_toolkit(tmp_path / "std" / "cuda-13.0", 13000)
    (tmp_path / "std" / "cuda-11.8").mkdir()  # no headers: not a toolkit
    tk = custom_ops.find_cuda_toolkit()
    assert tk.root == str(tmp_path / "std" / "cuda-13.0") and tk.found_by == "standard location"


def test_arch_names_and_gencode_flags():
    assert custom_ops.normalize_archs(["9.0", "sm_80", "80", "compute_90"]) == ("sm_80", "sm_90")
    assert custom_ops.normalize_archs("sm_90a;8.6, 12.0") == ("sm_86", "sm_90a", "sm_120")
    assert [custom_ops.torch_arch_name(a) for a in ("sm_80", "sm_90a", "sm_120")] == ["8.0", "9.0a", "12.0"]
    assert custom_ops.gencode_flags(["sm_90", "sm_80"]) == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]  # fmt: skip
    for bad in ("ampere", "sm_", "9"):
        with pytest.raises(ValueError):
            custom_ops.normalize_archs([bad] if bad != "9" else ["9.x"])


def test_toolkit_env_sets_torch_cuda_home_and_restores_it(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setenv("CPLUS_INCLUDE_PATH", "/already/there")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    tk = custom_ops.CudaToolkit(str(tmp_path), "13.0", "test", extra_include_dirs=("/wheel/include",))
    before = cpp_extension.CUDA_HOME
    with custom_ops.toolkit_env(tk, archs=["sm_90", "sm_80"]):
        assert cpp_extension.CUDA_HOME == str(tmp_path) == os.environ["CUDA_HOME"]
        # the wheel's headers come last: the toolkit's own cuda_runtime.h keeps priority
        assert os.environ["CPLUS_INCLUDE_PATH"] == os.pathsep.join(["/already/there", "/wheel/include"])
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    assert cpp_extension.CUDA_HOME == before and os.environ["CPLUS_INCLUDE_PATH"] == "/already/there"
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ


def test_build_cache_is_keyed_by_sources_and_archs(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    src = tmp_path / "k.cu"
    src.write_text("// v1\n")
    spec = custom_ops.PluginSpec("k_plugin", sources=(str(src),))
    tk = custom_ops.CudaToolkit(str(tmp_path), "13.0", "test")
    p90 = custom_ops.plan_build(spec, ["sm_90"], tk)
    assert p90 == custom_ops.plan_build(spec, ["9.0"], tk)  # same build, same folder
    both = custom_ops.plan_build(spec, ["sm_90", "sm_80"], tk)
    assert both.build_dir != p90.build_dir and both.module_name == "k_plugin_sm80_sm90"
    assert "-gencode=arch=compute_80,code=sm_80" in both.cuda_cflags and both.build_dir.parent == tmp_path / "ext"
    src.write_text("// v2\n")
    assert custom_ops.plan_build(spec, ["sm_90"], tk).build_dir != p90.build_dir
    assert "sm_90 with CUDA 13.0" in p90.describe()


# ---------------------------------------------------------------------------------------------------------------
# Real builds (nvcc, no GPU).


def _toolkit_or_skip() -> custom_ops.CudaToolkit:
    try:
        return custom_ops.find_cuda_toolkit()
    except custom_ops.ToolkitNotFound as err:
        pytest.skip(f"no CUDA toolkit here, the compile check needs nvcc: {err}")


@pytest.mark.slow
def test_plugins_compile_for_sm80_and_sm90(record_property):
    """Both plugins, from the installed package's own sources, compile and link for sm_80 + sm_90 and import
    (after `import torch`); a compile error fails here. Cached by source hash + archs: the second build is fast."""
    toolkit = _toolkit_or_skip()
    times = {}
    for op in (bias_act, upfirdn2d):
        spec = op.PLUGIN
        assert all(os.path.dirname(f) == os.path.dirname(op.__file__) for f in spec.sources + spec.headers)
        assert all(os.path.isfile(f) for f in spec.sources + spec.headers), "package_data must ship the sources"
        start = time.perf_counter()
        module = custom_ops.build_plugin(spec, archs=COMPILE_CHECK_ARCHS)
        first = time.perf_counter() - start
        plan = custom_ops.plan_build(spec, COMPILE_CHECK_ARCHS, toolkit)
        ninja = (plan.build_dir / "build.ninja").read_text()
        assert all(f"code={a}" in ninja for a in COMPILE_CHECK_ARCHS)  # both architectures' machine code
        assert hasattr(module, spec.name.removesuffix("_plugin")), dir(module)  # the binding is there
        start = time.perf_counter()
        custom_ops.build_plugin(spec, archs=COMPILE_CHECK_ARCHS)  # ninja finds nothing to do
        again = time.perf_counter() - start
        times[spec.name] = (first, again)
        assert again < 20, f"{spec.name}: cached build took {again:.1f} s"
    summary = ", ".join(f"{n} {a:.1f} s (cached {b:.1f} s)" for n, (a, b) in times.items())
    record_property("compile_times", summary)
    print(f"compile check {'+'.join(COMPILE_CHECK_ARCHS)} with {toolkit.describe()}: {summary}")


def _nvdiffrast_build_root() -> Path | None:
    """Without a GPU the compile check gets its own extension root: nvdiffrast names its build folder by its own
    and torch's versions only, so a build for other architectures must not land where a GPU run would load it."""
    if torch.cuda.is_available():
        return None  # build for the local GPU where runtime use will find it
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return custom_ops.extensions_root() / "taxfree3dmm-compile-check" / tag


@pytest.mark.slow
def test_nvdiffrast_cuda_plugin_compiles(monkeypatch, record_property):
    """nvdiffrast's CUDA rasterizer plugin (RasterizeCudaContext's, not OpenGL) builds with the project's toolkit
    discovery and imports: sm_90 without a GPU (~4 min on 2 cores the first time), the local GPU with one."""
    pytest.importorskip("nvdiffrast.torch", reason='nvdiffrast not installed (pip install -e ".[nvdiffrast]")')
    toolkit = _toolkit_or_skip()
    from deep3drecon.render import rasterize_nvdiffrast

    root = _nvdiffrast_build_root()
    if root is not None:
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    archs = None if torch.cuda.is_available() else ("sm_90",)
    monkeypatch.setattr(rasterize_nvdiffrast, "_plugins", {})
    start = time.perf_counter()
    plugin = rasterize_nvdiffrast.load_plugin(archs)
    seconds = time.perf_counter() - start
    assert hasattr(plugin, "rasterize_fwd_cuda"), sorted(n for n in dir(plugin) if not n.startswith("_"))[:20]
    record_property("nvdiffrast_build_s", round(seconds, 1))
    print(
        f"nvdiffrast CUDA plugin ({', '.join(archs) if archs else 'local GPU'}) with {toolkit.describe()}: "
        f"{seconds:.1f} s"
    )


def test_nvdiffrast_loader_survives_the_torch_2_14_import_quirk(monkeypatch, tmp_path):
    """nvdiffrast's loader builds the plugin, then import_module(name) fails because torch >= 2.14 leaves the build
    folder off sys.path: load_plugin puts it there and asks again (a stand-in nvdiffrast, no compiler)."""
    import types

    from deep3drecon.render import rasterize_nvdiffrast

    name = "nvdiffrast_plugin_0_0_0_torchX"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    build_dir = rasterize_nvdiffrast._plugin_build_dir(name)
    (Path(build_dir) / f"{name}.so").write_bytes(b"")  # what torch's build leaves behind
    calls, seen_env = [], []

    def fake_get_plugin(gl=False):
        calls.append(gl)
        seen_env.append((os.environ.get("TORCH_CUDA_ARCH_LIST"), os.environ.get("CUDA_HOME")))
        if build_dir not in sys.path:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return types.SimpleNamespace(__file__=f"{build_dir}/{name}.so")

    ops = types.ModuleType("nvdiffrast.torch.ops")
    ops._get_plugin = fake_get_plugin
    package, torch_pkg = types.ModuleType("nvdiffrast"), types.ModuleType("nvdiffrast.torch")
    package.torch, torch_pkg.ops = torch_pkg, ops
    monkeypatch.setitem(sys.modules, "nvdiffrast", package)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", torch_pkg)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch.ops", ops)
    toolkit = custom_ops.CudaToolkit(str(tmp_path), "13.0", "test")
    monkeypatch.setattr(custom_ops, "find_cuda_toolkit", lambda: toolkit)
    monkeypatch.setattr(rasterize_nvdiffrast, "_plugins", {})
    monkeypatch.setattr(sys, "path", list(sys.path))
    plugin = rasterize_nvdiffrast.load_plugin(["sm_90"])
    assert plugin.__file__.startswith(build_dir) and calls == [False, False] and build_dir in sys.path
    assert seen_env == [("9.0", str(tmp_path))] * 2  # the archs and the toolkit reached nvdiffrast's own build
    assert rasterize_nvdiffrast.load_plugin("sm_90") is plugin and len(calls) == 2  # once per process
