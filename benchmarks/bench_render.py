"""Renderer throughput: the torch rasterizer on CPU (and GPU), and nvdiffrast vs torch on GPU when available.

Uses a synthetic BFM-sized mesh (189 x 189 vertex grid bent into a face-sized bump: 35,721 vertices, 70,688
triangles, ~36k / ~71k like the cropped BFM) placed with the release's camera so that it fills most of the frame.
One "render" = rasterize + interpolate 10 per-vertex channels (colour, albedo, normal, depth), like Renderer.

    python benchmarks/bench_render.py [--sizes 224,256] [--batch 1] [--iters 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from deep3drecon.render import available_backends, interpolate, rasterize  # noqa: E402


def face_sized_mesh(grid: int = 189) -> tuple[torch.Tensor, torch.Tensor]:
    """A bent grid sheet: vertices [grid^2, 3] in dm (x right, y up, z toward the camera), triangles [F, 3]."""
    lin = torch.linspace(-1, 1, grid)
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    bump = (1 - 0.5 * (u.square() + v.square())).clamp_min(0)
    verts = torch.stack([0.9 * u, -1.0 * v, 0.8 * bump], dim=-1).reshape(-1, 3)
    idx = torch.arange(grid * grid).reshape(grid, grid)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tris = torch.cat([torch.stack([a, c, b], -1).reshape(-1, 3), torch.stack([b, c, d], -1).reshape(-1, 3)])
    return verts, tris


def release_clip(verts: torch.Tensor) -> torch.Tensor:
    """Deep3DFaceRecon camera (distance 10, focal 1015 px at 224, near 5, far 15): [V, 3] -> clip [V, 4]."""
    depth = 10 - verts[:, 2]
    return torch.stack([9.0625 * verts[:, 0], 9.0625 * verts[:, 1], 2 * depth - 15, depth], dim=-1)


def time_renders(clip: torch.Tensor, tris: torch.Tensor, attr: torch.Tensor, size: int, backend: str, iters: int):
    """(renders per second, last image [N, C, H, W]) for rasterize + interpolate."""

    def once() -> torch.Tensor:
        return interpolate(attr, rasterize(clip, tris, size, backend=backend), tris)

    img = once()  # warm-up (allocations, CUDA context / kernels)
    if clip.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        img = once()
    if clip.is_cuda:
        torch.cuda.synchronize()
    return iters * clip.shape[0] / (time.perf_counter() - start), img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,256", help="comma-separated output sizes")
    parser.add_argument("--batch", type=int, default=1, help="images per rasterize call")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per setting")
    args = parser.parse_args()

    verts, tris = face_sized_mesh()
    clip = release_clip(verts)[None].repeat(args.batch, 1, 1)
    attr = torch.rand(1, verts.shape[0], 10)
    print(
        f"mesh: {verts.shape[0]} vertices, {tris.shape[0]} triangles; batch {args.batch}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; backends: {available_backends()}"
    )
    for size in map(int, args.sizes.split(",")):
        rate, img = time_renders(clip, tris, attr, size, "torch", args.iters)
        coverage = (img[:, :1] != 0).float().mean().item()
        print(
            f"cpu  torch       {size}x{size}: {rate:8.1f} renders/s ({1000 / rate:7.1f} ms/render), "
            f"coverage {coverage:.2f}"
        )
    if not torch.cuda.is_available():
        print("no CUDA device: GPU comparison skipped")
        return
    clip_gpu, tris_gpu, attr_gpu = clip.cuda(), tris.cuda(), attr.cuda()
    gpu_backends = [b for b in ("torch", "nvdiffrast") if b in available_backends()]
    for size in map(int, args.sizes.split(",")):
        images = {}
        for backend in gpu_backends:
            rate, images[backend] = time_renders(clip_gpu, tris_gpu, attr_gpu, size, backend, args.iters)
            print(f"cuda {backend:<10} {size}x{size}: {rate:8.1f} renders/s ({1000 / rate:7.2f} ms/render)")
        if len(images) == 2:
            diff = (images["torch"] - images["nvdiffrast"]).abs()
            print(
                f"cuda {size}x{size}: max |torch - nvdiffrast| = {diff.max().item():.2e}, "
                f"pixels differing by > 1e-3: {(diff.amax(1) > 1e-3).float().mean().item():.2%}"
            )


if __name__ == "__main__":
    main()
