"""Tests for deep3drecon.render: the torch rasterizer against a naive ray-casting reference, gradients against
finite differences, the nvdiffrast backend against the torch one (CUDA only), and the face Renderer's outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deep3drecon.face_model import FaceModel
from deep3drecon.render import Rasterization, Renderer, available_backends, interpolate, rasterize, resolve_backend
from deep3drecon.synthetic import make_synthetic_model
from torch_utils.errors import UserError

# ----------------------------------------------------------------------------------------------------------------
# Naive reference: for every pixel and every triangle, intersect the pixel's view ray with the triangle in
# homogeneous (x, y, w) clip space (Moller-Trumbore), a different formulation from the implementation's edge planes.


def _ray_hit(px: float, py: float, tri: list[list[float]]) -> tuple[float, float, float, float] | None:
    """(l0, l1, l2, ndc_depth) where the ray t * (px, py, 1), t > 0, hits the clip-space triangle, else None."""
    (x0, y0, z0, w0), (x1, y1, z1, w1), (x2, y2, z2, w2) = tri
    e1 = (x1 - x0, y1 - y0, w1 - w0)
    e2 = (x2 - x0, y2 - y0, w2 - w0)
    d = (px, py, 1.0)
    h = (d[1] * e2[2] - d[2] * e2[1], d[2] * e2[0] - d[0] * e2[2], d[0] * e2[1] - d[1] * e2[0])
    a = e1[0] * h[0] + e1[1] * h[1] + e1[2] * h[2]
    if abs(a) < 1e-12:
        return None
    s = (-x0, -y0, -w0)
    u = (s[0] * h[0] + s[1] * h[1] + s[2] * h[2]) / a
    q = (s[1] * e1[2] - s[2] * e1[1], s[2] * e1[0] - s[0] * e1[2], s[0] * e1[1] - s[1] * e1[0])
    v = (d[0] * q[0] + d[1] * q[1] + d[2] * q[2]) / a
    t = (e2[0] * q[0] + e2[1] * q[1] + e2[2] * q[2]) / a
    if u < 0 or v < 0 or u + v > 1 or t <= 0:
        return None
    lam = (1 - u - v, u, v)
    depth = (lam[0] * z0 + lam[1] * z1 + lam[2] * z2) / t  # t is the hit point's w
    if not -1 <= depth <= 1:
        return None
    return lam[0], lam[1], lam[2], depth


def naive_rasterize(clip: torch.Tensor, tris: torch.Tensor, height: int, width: int) -> Rasterization:
    """Python loop over pixels x triangles; nearest depth wins, ties to the lower id. clip [1, V, 4]."""
    verts = clip[0].tolist()
    faces = tris.tolist()
    tri_id = torch.full((1, height, width), -1, dtype=torch.int64)
    bary = torch.zeros(1, height, width, 3, dtype=torch.float64)
    depth = torch.zeros(1, height, width, dtype=torch.float64)
    for i in range(height):
        py = (2 * i + 1) / height - 1  # nvdiffrast row order: row 0 at NDC y = -1
        for j in range(width):
            px = (2 * j + 1) / width - 1
            best = None
            for f, face in enumerate(faces):
                hit = _ray_hit(px, py, [verts[k] for k in face])
                if hit is not None and (best is None or hit[3] < best[1][3]):
                    best = (f, hit)
            if best is not None:
                tri_id[0, i, j] = best[0]
                bary[0, i, j] = torch.tensor(best[1][:3], dtype=torch.float64)
                depth[0, i, j] = best[1][3]
    return Rasterization(tri_id=tri_id, bary=bary, depth=depth, backend="naive")


def _clip_from_ndc(ndc_xy: torch.Tensor, ndc_z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[V, 2], [V], [V] -> clip [1, V, 4] float64 with x/w, y/w, z/w equal to the given NDC values."""
    return torch.cat([ndc_xy * w[:, None], (ndc_z * w)[:, None], w[:, None]], dim=1)[None].double()


def overlapping_mesh(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random triangles with independent vertices: overlapping, interpenetrating, partly outside the image."""
    gen = torch.Generator().manual_seed(seed)
    num_tris = 7
    ndc_xy = torch.rand(num_tris * 3, 2, generator=gen) * 2.6 - 1.3
    ndc_z = torch.rand(num_tris * 3, generator=gen) * 1.8 - 0.9
    w = torch.rand(num_tris * 3, generator=gen) * 2.5 + 0.5
    return _clip_from_ndc(ndc_xy, ndc_z, w), torch.arange(num_tris * 3).reshape(num_tris, 3)


def clipped_mesh() -> tuple[torch.Tensor, torch.Tensor]:
    """Triangles crossing the camera plane (a vertex with w < 0), the near plane (z < -w) and the far plane."""
    clip = torch.tensor(
        [
            # crosses the camera plane: third vertex behind the camera (w < 0), depth 0.5 everywhere
            [0.1, 0.6, 0.5, 1.0],
            [-0.7, -0.5, 0.5, 1.0],
            [0.9, -0.3, -0.75, -1.5],
            # in front of the camera, but its left part is nearer than the near plane (z/w < -1)
            [-0.9, 0.8, -2.0, 1.0],
            [-0.9, -0.9, -2.0, 1.0],
            [0.7, 0.1, 0.0, 1.0],
            # upper part beyond the far plane (z/w > 1), overlapping the others
            [-0.5, 0.95, 1.4, 1.0],
            [0.8, 0.9, 1.5, 1.0],
            [0.2, -0.8, -0.2, 1.0],
            # entirely behind the camera: must never show
            [-0.5, -0.5, 0.5, -1.0],
            [0.5, -0.5, 0.5, -1.0],
            [0.0, 0.5, 0.5, -1.0],
        ],
        dtype=torch.float64,
    )[None]
    return clip, torch.arange(12).reshape(4, 3)


def grid_mesh(seed: int, cells: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A jittered grid of quads (2 triangles each) sharing vertices, covering the whole image: tests for holes."""
    gen = torch.Generator().manual_seed(seed)
    lin = torch.linspace(-1.2, 1.2, cells + 1, dtype=torch.float64)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    xy = torch.stack([gx, gy], -1).reshape(-1, 2)
    interior = (xy.abs() < 1.1).all(-1, keepdim=True)
    xy = xy + interior * (torch.rand(xy.shape, generator=gen, dtype=torch.float64) - 0.5) * 0.25
    w = 1 + torch.rand(xy.shape[0], generator=gen, dtype=torch.float64)
    ndc_z = torch.rand(xy.shape[0], generator=gen, dtype=torch.float64) * 0.5
    idx = torch.arange((cells + 1) ** 2).reshape(cells + 1, cells + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tris = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    return _clip_from_ndc(xy, ndc_z, w), tris


MESHES = {
    "overlap0": lambda: overlapping_mesh(0),
    "overlap1": lambda: overlapping_mesh(1),
    "clipped": clipped_mesh,
    "grid": lambda: grid_mesh(2),
}


@pytest.mark.parametrize("name", sorted(MESHES))
@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
def test_torch_rasterizer_matches_naive(name: str, size: tuple[int, int]) -> None:
    clip, tris = MESHES[name]()
    ref = naive_rasterize(clip, tris, *size)
    out = rasterize(clip, tris, size, backend="torch")
    assert out.tri_id.shape == (1, *size) and out.bary.shape == (1, *size, 3) and out.depth.shape == (1, *size)
    assert torch.equal(out.tri_id, ref.tri_id), f"triangle ids differ at {(out.tri_id != ref.tri_id).sum()} pixels"
    torch.testing.assert_close(out.bary, ref.bary, atol=1e-9, rtol=0)
    torch.testing.assert_close(out.depth, ref.depth, atol=1e-9, rtol=0)
    assert (ref.tri_id >= 0).any() and (ref.tri_id < 0).any() or name == "grid"


def test_reference_cases_are_meaningful() -> None:
    # The edge cases must actually occur: several triangles visible, the behind-camera one never.
    ref = naive_rasterize(*clipped_mesh(), 16, 16)
    assert set(ref.tri_id.unique().tolist()) == {-1, 0, 1, 2}
    overlap = naive_rasterize(*overlapping_mesh(0), 16, 16)
    assert len(overlap.tri_id.unique()) >= 5
    grid = naive_rasterize(*grid_mesh(2), 16, 16)
    assert (grid.tri_id >= 0).all()  # shared edges leave no holes


def test_batch_and_float32_consistent() -> None:
    clips, tris = zip(*(overlapping_mesh(s) for s in range(3)))
    # Same topology for the batch: reuse the (identical) index arrays.
    batch = torch.cat(clips).float()
    out = rasterize(batch, tris[0], 24, backend="torch")
    for n in range(3):
        single = naive_rasterize(clips[n], tris[0], 24, 24)
        agree = (out.tri_id[n] == single.tri_id[0]).float().mean()
        assert agree > 0.99  # float32 vs float64 may flip pixel centres within ~1e-7 of an edge
        same = out.tri_id[n] == single.tri_id[0]
        assert (out.bary[n][same].double() - single.bary[0][same]).abs().max() < 1e-4


def test_interpolate_matches_manual_sum() -> None:
    clip, tris = overlapping_mesh(3)
    rast = rasterize(clip, tris, 16, backend="torch")
    attr = torch.randn(1, clip.shape[1], 5, dtype=torch.float64)
    out = interpolate(attr, rast, tris)
    assert out.shape == (1, 5, 16, 16)
    expected = torch.zeros(1, 5, 16, 16, dtype=torch.float64)
    for i, j in zip(*torch.nonzero(rast.tri_id[0] >= 0, as_tuple=True)):
        face = tris[rast.tri_id[0, i, j]]
        expected[0, :, i, j] = (rast.bary[0, i, j, :, None] * attr[0, face]).sum(0)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(interpolate(attr[0], rast, tris), expected)  # [V, C] broadcasts


def _interior_pixels(rast: Rasterization, margin: float) -> torch.Tensor:
    """Boolean [N, H, W]: covered pixels whose barycentrics are all > margin (far from triangle edges)."""
    return (rast.tri_id >= 0) & (rast.bary.amin(-1) > margin)


def test_gradients_finite_differences() -> None:
    clip, tris = grid_mesh(4, cells=3)
    clip.requires_grad_(True)
    attr = torch.randn(1, clip.shape[1], 2, dtype=torch.float64, requires_grad=True)
    size = 10
    keep = _interior_pixels(rasterize(clip.detach(), tris, size, backend="torch"), 0.05)
    assert keep.sum() > 20

    def render(clip_: torch.Tensor, attr_: torch.Tensor) -> torch.Tensor:
        rast = rasterize(clip_, tris, size, backend="torch")
        return interpolate(attr_, rast, tris).permute(0, 2, 3, 1)[keep]

    assert torch.autograd.gradcheck(render, (clip, attr), eps=1e-6, atol=1e-6)
    # Positions really matter: the gradient w.r.t. x, y, w is non-zero, and z (depth only) gets none.
    (grad,) = torch.autograd.grad(render(clip, attr.detach()).square().sum(), clip)
    assert grad[..., [0, 1, 3]].abs().sum() > 0 and grad[..., 2].abs().sum() == 0


def test_backend_selection() -> None:
    assert "torch" in available_backends()
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(UserError):
        resolve_backend("opengl", "cpu")
    if "nvdiffrast" not in available_backends():
        with pytest.raises(UserError, match="install"):
            resolve_backend("nvdiffrast", "cuda")


def uv_sphere(rings: int, segments: int, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed UV sphere: vertices [V, 3] (y up) and triangles [F, 3]."""
    theta = torch.linspace(0, math.pi, rings + 1)
    phi = torch.arange(segments) * (2 * math.pi / segments)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    verts = torch.stack([t.sin() * p.cos(), t.cos(), t.sin() * p.sin()], -1).reshape(-1, 3) * radius
    idx = torch.arange((rings + 1) * segments).reshape(rings + 1, segments)
    a, b = idx[:-1], idx[1:]
    a2, b2 = a.roll(-1, 1), b.roll(-1, 1)
    tris = torch.cat([torch.stack([a, b, a2], -1).reshape(-1, 3), torch.stack([a2, b, b2], -1).reshape(-1, 3)])
    return verts, tris


def perspective_clip(verts: torch.Tensor, distance: float = 10.0, focal: float = 9.0625) -> torch.Tensor:
    """The release's camera (at +z `distance`, near 5 / far 15, y negated so row 0 = top): [V, 3] -> clip [V, 4]."""
    depth = distance - verts[:, 2]
    return torch.stack([focal * verts[:, 0], -focal * verts[:, 1], 2 * depth - 15, depth], dim=-1)


@pytest.mark.skipif("nvdiffrast" not in available_backends(), reason="nvdiffrast (optional, CUDA) not installed")
def test_nvdiffrast_matches_torch() -> None:
    verts, tris = uv_sphere(120, 240)
    clip = perspective_clip(verts * 1.05)[None].repeat(2, 1, 1).cuda()
    clip[1, :, 0] += 0.3  # a second, shifted view
    colors = torch.rand(1, verts.shape[0], 3, device="cuda")
    for size in (224, 256):
        ref = rasterize(clip, tris, size, backend="torch")
        nv = rasterize(clip, tris, size, backend="nvdiffrast")
        assert nv.backend == "nvdiffrast" and nv.tri_id.shape == ref.tri_id.shape
        coverage_agree = ((nv.tri_id >= 0) == (ref.tri_id >= 0)).float().mean()
        assert coverage_agree > 0.999
        same = (nv.tri_id == ref.tri_id) & (ref.tri_id >= 0)
        assert same.float().sum() / (ref.tri_id >= 0).float().sum() > 0.99
        img_ref, img_nv = interpolate(colors, ref, tris), interpolate(colors, nv, tris)
        both = same[:, None].expand_as(img_ref)
        assert (img_ref - img_nv)[both].abs().max() < 1e-3
        torch.testing.assert_close(nv.depth[same], ref.depth[same], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Face Renderer on a small synthetic face model (33 x 33 vertex grid).


@pytest.fixture(scope="module")
def face_model() -> FaceModel:
    return FaceModel(make_synthetic_model(seed=0, grid=33))


def _coeffs(num: int, seed: int) -> torch.Tensor:
    """Random plausible coefficients [num, 257]: shape/texture/expression, mild pose, lighting and translation."""
    gen = torch.Generator().manual_seed(seed)
    coeffs = torch.randn(num, 257, generator=gen) * 0.3
    coeffs[:, 224:227] = (torch.rand(num, 3, generator=gen) - 0.5) * 0.6  # angles, radians
    coeffs[:, 227:254] *= 0.3  # gamma
    coeffs[:, 254:257] = (torch.rand(num, 3, generator=gen) - 0.5) * 0.3  # translation, dm
    return coeffs


def test_renderer_outputs(face_model: FaceModel) -> None:
    renderer = Renderer(face_model, backend="auto")
    assert renderer.backend == "torch"  # CPU
    out = renderer(_coeffs(3, 0), 48)
    for name, channels in (("render", 3), ("albedo", 3), ("normals", 3), ("mask", 1), ("depth", 1)):
        value = getattr(out, name)
        assert value.shape == (3, channels, 48, 48) and value.dtype == torch.float32, name
        assert (value * (1 - out.mask)).abs().max() == 0, f"{name} is non-zero outside the mask"
    inside = out.mask[:, 0] > 0
    assert 0.2 < inside.float().mean() < 0.95
    assert set(out.mask.unique().tolist()) == {0.0, 1.0}
    assert out.render.min() >= 0 and out.render.max() <= 1 and out.albedo.min() >= 0 and out.albedo.max() <= 1
    torch.testing.assert_close(out.normals.norm(dim=1)[inside], torch.ones(int(inside.sum())))
    assert (out.normals[:, 2][inside] > 0).float().mean() > 0.9  # camera-space normals mostly face the viewer
    depth = out.depth[:, 0][inside]
    assert depth.min() > 8 and depth.max() < 12  # release camera 10 dm away

    # Camera depth d is interpolated perspective-correctly, so it must agree with the NDC depth z/w = 2 - 15 / d.
    geom = face_model.compute(_coeffs(3, 0))
    rast = rasterize(face_model.to_clip(geom.vertices_cam), face_model.triangles, 48, backend="torch")
    torch.testing.assert_close(rast.depth[inside], 2 - 15 / depth, atol=1e-5, rtol=0)


def test_renderer_batch_equals_single(face_model: FaceModel) -> None:
    renderer = Renderer(face_model, backend="torch")
    coeffs = _coeffs(2, 1)
    batch = renderer(coeffs, 32)
    for n in range(2):
        single = renderer(coeffs[n : n + 1], 32)
        torch.testing.assert_close(single.render[0], batch.render[n])
        torch.testing.assert_close(single.mask[0], batch.mask[n])


def test_renderer_sizes_line_up(face_model: FaceModel) -> None:
    renderer = Renderer(face_model, backend="torch")
    coeffs = _coeffs(2, 2)
    small, large = renderer(coeffs, 40), renderer(coeffs, 80)
    pooled_mask = F.avg_pool2d(large.mask, 2)
    disagree = ((pooled_mask > 0.5).float() != small.mask).float().mean()
    assert disagree < 0.02  # only silhouette pixels may differ
    # Interior colours agree too (the same surface point lands in the same place at both sizes).
    interior = (F.avg_pool2d(large.mask, 2) == 1) & (small.mask == 1)
    pooled_render = F.avg_pool2d(large.render, 2)
    assert (pooled_render - small.render).abs().amax(1, keepdim=True)[interior].mean() < 0.02


@pytest.mark.parametrize("size", [64, 224])
def test_face_renders_upright(face_model: FaceModel, size: int) -> None:
    renderer = Renderer(face_model, backend="torch")
    coeffs = _coeffs(2, 3)
    out = renderer(coeffs, size)
    geom = face_model.compute(coeffs)
    landmarks = face_model.project(geom.vertices_cam[:, face_model.keypoints], size)  # [N, 68, 2] y-down pixels
    chin_y, eyes_y = landmarks[:, 8, 1], landmarks[:, 36:48, 1].mean(1)
    assert (chin_y > eyes_y + 0.1 * size).all()  # the chin is below the eyes: the face is upright
    cols, rows = landmarks.round().long().unbind(-1)
    inner = torch.arange(17, 68)  # brows, nose, eyes, mouth: well inside the face mask
    covered = out.mask[torch.arange(2)[:, None], 0, rows[:, inner], cols[:, inner]]
    assert covered.all()
    # The face is framed inside the image: nothing touches the top border.
    assert out.mask[:, 0, 0].sum() == 0


def test_renderer_gradients_reach_coefficients(face_model: FaceModel) -> None:
    renderer = Renderer(face_model, backend="torch")
    coeffs = _coeffs(1, 4).requires_grad_(True)
    out = renderer(coeffs, 32)
    (out.render.sum() + out.normals.sum() + out.albedo.sum()).backward()
    grad = coeffs.grad[0]
    for name, sl in (
        ("id", slice(0, 80)),
        ("tex", slice(144, 224)),
        ("angle", slice(224, 227)),
        ("gamma", slice(227, 254)),
        ("trans", slice(254, 257)),
    ):
        assert grad[sl].abs().sum() > 0, f"no gradient reaches {name}"


def test_auto_falls_back_when_nvdiffrast_is_installed_but_broken(monkeypatch) -> None:
    from deep3drecon.render import rasterize_nvdiffrast

    monkeypatch.setattr(rasterize_nvdiffrast, "is_available", lambda: True)
    # An old release / failed plugin build: the context cannot be created on this device.
    monkeypatch.setattr(rasterize_nvdiffrast, "probe", lambda device: "ImportError: no RasterizeCudaContext")
    assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(UserError, match="installed but does not work here"):
        resolve_backend("nvdiffrast", "cuda")
    with pytest.raises(UserError, match="needs a CUDA device"):
        resolve_backend("nvdiffrast", "cpu")
    monkeypatch.setattr(rasterize_nvdiffrast, "probe", lambda device: None)
    assert resolve_backend("auto", "cuda") == "nvdiffrast" and resolve_backend("auto", "cpu") == "torch"
