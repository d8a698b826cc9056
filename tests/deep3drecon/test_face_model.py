"""FaceModel vs an independent float64 NumPy/SciPy re-derivation of the release's formulas, on the synthetic model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.io
import torch
from scipy.spatial.transform import Rotation

from deep3drecon.align import TEMPLATE_5, landmarks_68_to_5
from deep3drecon.coeffs import COEFF_DIMS, COEFF_SLICES, split_coeffs
from deep3drecon.face_model import FaceModel
from deep3drecon.synthetic import WORLD_GRID, make_synthetic_model, write_synthetic_mat
from torch_utils.errors import UserError

KEY_DTYPES = {
    "meanshape": np.float32,
    "idBase": np.float32,
    "exBase": np.float64,
    "meantex": np.float32,
    "texBase": np.float32,
    "tri": np.float32,
    "point_buf": np.float32,
    "tri_mask2": np.float32,
    "keypoints": np.float32,
    "frontmask2_idx": np.float32,
    "skinmask": np.float32,
}


@pytest.fixture(scope="module")
def fields() -> dict[str, np.ndarray]:
    return make_synthetic_model(seed=0)


@pytest.fixture(scope="module")
def model(fields: dict[str, np.ndarray]) -> FaceModel:
    return FaceModel(fields)


def random_coeffs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.zeros((n, 257))
    c[:, 0:80] = rng.normal(size=(n, 80))
    c[:, 80:144] = 0.5 * rng.normal(size=(n, 64))
    c[:, 144:224] = rng.normal(size=(n, 80))
    c[:, 224:227] = rng.uniform(-0.4, 0.4, size=(n, 3))
    c[:, 227:254] = 0.2 * rng.normal(size=(n, 27))
    c[:, 254:257] = 0.2 * rng.normal(size=(n, 3))
    return c


def numpy_reference(fields: dict[str, np.ndarray], coeffs: np.ndarray, size: int = 224) -> dict[str, np.ndarray]:
    """The release's compute_for_render, re-derived in float64 without looking at the torch code."""
    n = coeffs.shape[0]
    mean = fields["meanshape"].astype(np.float64).reshape(-1, 3)
    mean = mean - mean.mean(axis=0)
    nv = mean.shape[0]
    id_c, exp_c, tex_c = coeffs[:, :80], coeffs[:, 80:144], coeffs[:, 144:224]
    angle, gamma, trans = coeffs[:, 224:227], coeffs[:, 227:254], coeffs[:, 254:257]
    shape = mean + (id_c @ fields["idBase"].astype(np.float64).T + exp_c @ fields["exBase"].T).reshape(n, nv, 3)
    rot = Rotation.from_euler("xyz", angle).as_matrix()  # extrinsic x, then y, then z: Rz Ry Rx
    posed = np.einsum("nij,nvj->nvi", rot, shape) + trans[:, None]
    cam = posed.copy()
    cam[..., 2] = 10.0 - posed[..., 2]
    focal = 1015.0 * size / 224
    u = focal * cam[..., 0] / cam[..., 2] + size / 2
    v = focal * cam[..., 1] / cam[..., 2] + size / 2
    pix = np.stack([u - 0.5, size - v - 0.5], axis=-1)
    kp = fields["keypoints"].astype(np.int64).ravel() - 1
    albedo = ((fields["meantex"].astype(np.float64) + tex_c @ fields["texBase"].astype(np.float64).T) / 255.0).reshape(
        n, nv, 3
    )
    # Vertex normals by scattering unit face normals over the triangle list (independent of point_buf).
    tri = fields["tri"].astype(np.int64) - 1
    a, b, c = shape[:, tri[:, 0]], shape[:, tri[:, 1]], shape[:, tri[:, 2]]
    fn = np.cross(b - a, c - a)
    fn /= np.linalg.norm(fn, axis=-1, keepdims=True)
    vn = np.zeros_like(shape)
    for k in range(3):
        np.add.at(vn, (slice(None), tri[:, k]), fn)
    vn /= np.linalg.norm(vn, axis=-1, keepdims=True)
    vn = np.einsum("nij,nvj->nvi", rot, vn)
    # SH irradiance with closed-form constants: sqrt(pi)/2, sqrt(pi), sqrt(15 pi / 8) (= a_k c_k of the release).
    nx, ny, nz = vn[..., 0], vn[..., 1], vn[..., 2]
    k0, k1, k2 = math.sqrt(math.pi) / 2, math.sqrt(math.pi), math.sqrt(15 * math.pi / 8)
    basis = np.stack(
        [
            np.full_like(nx, k0),
            -k1 * ny,
            k1 * nz,
            -k1 * nx,
            k2 * nx * ny,
            -k2 * ny * nz,
            k2 / (2 * math.sqrt(3)) * (3 * nz**2 - 1),
            -k2 * nx * nz,
            k2 / 2 * (nx**2 - ny**2),
        ],
        axis=-1,
    )
    g = gamma.reshape(n, 3, 9).copy()
    g[:, :, 0] += 0.8
    color = albedo * np.einsum("nvk,nck->nvc", basis, g)
    return {
        "vertices_cam": cam,
        "normals": vn,
        "albedo": albedo,
        "color": color,
        "landmarks": pix[:, kp],
        "pixels": pix,
        "rotation": rot,
    }


def test_coefficient_layout() -> None:
    assert list(COEFF_DIMS) == ["id", "exp", "tex", "angle", "gamma", "trans"]
    assert [(s.start, s.stop) for s in COEFF_SLICES.values()] == [
        (0, 80),
        (80, 144),
        (144, 224),
        (224, 227),
        (227, 254),
        (254, 257),
    ]
    coeffs = torch.arange(2 * 257, dtype=torch.float32).reshape(2, 257)
    parts = split_coeffs(coeffs)
    assert torch.equal(torch.cat(list(parts.values()), dim=1), coeffs)
    assert parts["gamma"].shape == (2, 27) and parts["trans"][0, 2].item() == 256
    with pytest.raises(UserError):
        split_coeffs(torch.zeros(2, 256))


def test_compute_matches_numpy_reference(fields: dict[str, np.ndarray], model: FaceModel) -> None:
    coeffs = random_coeffs(3)
    ref = numpy_reference(fields, coeffs)
    geo = model.compute(torch.from_numpy(coeffs).float())
    np.testing.assert_allclose(geo.vertices_cam.numpy(), ref["vertices_cam"], atol=2e-5)
    np.testing.assert_allclose(geo.albedo.numpy(), ref["albedo"], atol=2e-5)
    np.testing.assert_allclose(geo.normals.numpy(), ref["normals"], atol=2e-4)
    np.testing.assert_allclose(geo.color.numpy(), ref["color"], atol=2e-4)
    np.testing.assert_allclose(geo.landmarks.numpy(), ref["landmarks"], atol=2e-3)
    np.testing.assert_allclose(
        model.compute_rotation(torch.from_numpy(coeffs[:, 224:227])).numpy(), ref["rotation"], atol=1e-12
    )
    np.testing.assert_allclose(torch.linalg.norm(geo.normals, dim=-1).numpy(), 1.0, atol=1e-5)


def test_zero_coefficients_closed_forms(model: FaceModel) -> None:
    geo = model.compute(torch.zeros(1, 257))
    # Ambient light only: irradiance 0.8 * sqrt(pi) / 2 = 0.708982 (reference section 1).
    np.testing.assert_allclose(geo.color.numpy(), 0.8 * math.sqrt(math.pi) / 2 * geo.albedo.numpy(), rtol=1e-6)
    np.testing.assert_allclose(geo.vertices_cam[0, :, 2].mean().item(), 10.0, atol=1e-5)  # recentred mean at depth 10
    lm = geo.landmarks[0].numpy()
    # Symmetric face: the eye corners 36 / 45 mirror around the image's centre column 111.5, and it is upright.
    np.testing.assert_allclose(lm[36, 0] + lm[45, 0], 223.0, atol=1e-3)
    assert lm[19, 1] < lm[37, 1] < lm[30, 1] < lm[51, 1] < lm[57, 1] < lm[8, 1]


def test_clip_and_projection_conventions(model: FaceModel) -> None:
    geo = model.compute(torch.from_numpy(random_coeffs(2, seed=1)).float())
    v = geo.vertices_cam.double()
    clip = FaceModel.to_clip(v)
    # The release's nvdiffrast matrix applied to (x, -y, z, 1).
    mat = torch.tensor([[9.0625, 0, 0, 0], [0, 9.0625, 0, 0], [0, 0, 2, -15], [0, 0, 1, 0]], dtype=torch.float64)
    hom = torch.cat([v[..., :1], -v[..., 1:2], v[..., 2:], torch.ones_like(v[..., :1])], dim=-1)
    torch.testing.assert_close(clip, hom @ mat.T)
    ndc = clip[..., :3] / clip[..., 3:]
    assert ndc[..., 2].abs().max() < 1  # inside the [5, 15] depth range
    for size in (224, 256, 97):
        # Pixel (i, j) centre <-> NDC ((2j+1)/W - 1, (2i+1)/H - 1), so pixel = (ndc + 1) * size / 2 - 0.5.
        torch.testing.assert_close(FaceModel.project(v, size), (ndc[..., :2] + 1) * size / 2 - 0.5)
    p224, p256 = FaceModel.project(v, 224), FaceModel.project(v, 256)
    torch.testing.assert_close(p256, (p224 + 0.5) * 256 / 224 - 0.5)  # same framing, edge-based scaling


def test_mat_round_trip(tmp_path, fields: dict[str, np.ndarray], model: FaceModel) -> None:  # noqa: ANN001
    path = write_synthetic_mat(tmp_path / "BFM_model_front.mat", seed=0)
    loaded = scipy.io.loadmat(path)
    for key, dtype in KEY_DTYPES.items():
        assert loaded[key].dtype == dtype and loaded[key].shape == fields[key].shape, key
        np.testing.assert_array_equal(loaded[key], fields[key])
    from_file = FaceModel.from_mat(path)
    for name, buf in model.named_buffers():
        torch.testing.assert_close(getattr(from_file, name), buf, rtol=0, atol=0)
    # Index fields were shifted to 0-based; the front triangles were mapped through frontmask2_idx.
    assert from_file.triangles.min() == 0 and from_file.point_buf.max() == from_file.num_triangles
    front = fields["frontmask2_idx"].astype(np.int64).ravel() - 1
    np.testing.assert_array_equal(from_file.front_triangles.numpy(), front[fields["tri_mask2"].astype(np.int64) - 1])
    real = {tuple(sorted(t)) for t in from_file.triangles.tolist()}
    assert all(tuple(sorted(t)) in real for t in from_file.front_triangles.tolist())


def test_from_mat_errors(tmp_path, fields: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match="not found"):
        FaceModel.from_mat(tmp_path / "missing.mat")
    partial = {k: v for k, v in fields.items() if k != "idBase"}
    scipy.io.savemat(tmp_path / "partial.mat", partial)
    with pytest.raises(UserError, match="idBase"):
        FaceModel.from_mat(tmp_path / "partial.mat")


def test_synthetic_layout_and_determinism(fields: dict[str, np.ndarray]) -> None:
    nv, nf = fields["meanshape"].size // 3, fields["tri"].shape[0]
    assert 2000 <= nv <= 8000 and fields["point_buf"].shape == (nv, 8) and fields["keypoints"].shape == (1, 68)
    again, other = make_synthetic_model(seed=0), make_synthetic_model(seed=1)
    for key in fields:
        np.testing.assert_array_equal(again[key], fields[key])
    assert not np.array_equal(other["idBase"], fields["idBase"])
    np.testing.assert_array_equal(other["meanshape"], fields["meanshape"])
    # point_buf (1-based, padded with F + 1) lists exactly the triangles around each vertex.
    tri = fields["tri"].astype(np.int64) - 1
    buf = fields["point_buf"].astype(np.int64) - 1
    adjacent: list[set[int]] = [set() for _ in range(nv)]
    for f, t in enumerate(tri):
        for vid in t:
            adjacent[vid].add(f)
    assert all(set(row[row < nf].tolist()) == adj for row, adj in zip(buf, adjacent))
    assert len(set(fields["keypoints"].ravel().tolist())) == 68


def test_synthetic_landmarks_sit_on_the_face(model: FaceModel) -> None:
    lm3d = model.mean_shape[model.keypoints].numpy()
    # The 5-point reduction of the mean face matches the release's alignment template (x, y, dm) closely.
    np.testing.assert_allclose(landmarks_68_to_5(lm3d)[:, :2], TEMPLATE_5[:, :2], atol=0.03)
    jaw = lm3d[:17]
    # Down the image-left side to the chin (point 8, x = 0), then up the right side.
    assert np.all(np.diff(jaw[:9, 1]) < 0) and np.all(np.diff(jaw[8:, 1]) > 0)
    assert np.all(jaw[:8, 0] < 0) and abs(jaw[8, 0]) < 1e-6 and np.all(jaw[9:, 0] > 0)
    assert lm3d[30, 2] == lm3d[:, 2].max()  # the nose tip is the most forward landmark
    assert np.all(lm3d[17:27, 1] > lm3d[36:48, 1].max())  # brows above the eyes


def test_bases_change_the_face(model: FaceModel) -> None:
    base = model.compute(torch.zeros(1, 257))
    eye = torch.eye(80)
    coeffs = torch.zeros(80, 257)
    coeffs[:, COEFF_SLICES["id"]] = eye
    moved = (model.compute(coeffs).vertices_cam - base.vertices_cam).norm(dim=-1).max(dim=1).values
    assert moved.min() > 1e-3  # every identity column moves some vertex by > 0.1 mm
    coeffs = torch.zeros(64, 257)
    coeffs[:, COEFF_SLICES["exp"]] = torch.eye(64)
    assert (model.compute(coeffs).vertices_cam - base.vertices_cam).norm(dim=-1).max(dim=1).values.min() > 1e-3
    coeffs = torch.zeros(80, 257)
    coeffs[:, COEFF_SLICES["tex"]] = eye
    assert (model.compute(coeffs).albedo - base.albedo).abs().max(dim=2).values.max(
        dim=1
    ).values.min() > 2e-3  # > 0.5/255

    def with_coeff(name: str, index: int, value: float) -> torch.Tensor:
        c = torch.zeros(1, 257)
        c[0, COEFF_SLICES[name].start + index] = value
        return model.compute(c).landmarks[0]

    lm0 = base.landmarks[0]
    gap = lambda lm: (lm[66, 1] - lm[62, 1]).item()  # inner lips, y-down pixels
    assert gap(with_coeff("exp", 0, 2.0)) > gap(lm0) + 10  # mouth opens
    smile = with_coeff("exp", 1, 2.0)
    assert smile[48, 1] < lm0[48, 1] - 3 and smile[54, 1] < lm0[54, 1] - 3  # corners rise
    lid = lambda lm: (lm[41, 1] - lm[37, 1]).item()
    assert lid(with_coeff("exp", 2, 1.6)) < 0.5 * lid(lm0)  # eyes close (lid gap more than halves)
    raised = with_coeff("exp", 3, 2.0)
    assert torch.all(raised[17:27, 1] < lm0[17:27, 1] - 3)  # brows rise by > 3 px at 224 ...
    assert (raised[36:48] - lm0[36:48]).abs().max() < 0.5  # ... and the eyes stay where they are
    tone = model.compute(torch.zeros(1, 257).index_fill_(1, torch.tensor([144]), 2.0)).albedo.mean()
    assert tone < base.albedo.mean() - 0.1  # tex[0] darkens the skin


# (group, column, range the built-in world samples): these shape changes must keep the mesh unfolded. Not listed:
# smile (exp 1) and eye spacing (id 4), which still fold beyond |c| ~ 1 and 1.5 (docs/benchmarks.md).
_UNFOLDED = [("id", 0, (-2, 2)), ("id", 1, (-2, 2)), ("id", 2, (-2, 2)), ("id", 3, (-2, 2)), ("exp", 0, (0, 2)),
             ("exp", 2, (-2, 1.6)), ("exp", 3, (0, 2))]


@pytest.mark.parametrize(("group", "column", "span"), _UNFOLDED)
def test_world_shape_changes_do_not_fold_the_mesh(group: str, column: int, span: tuple[float, float]) -> None:
    """A folded mesh (a triangle turned over in the image plane) makes an image ambiguous: two coefficient values
    can look alike, which a reconstructor cannot tell apart. Checked on the world's grid over its sampled range."""
    fields = make_synthetic_model(seed=0, grid=WORLD_GRID)
    shape = fields["meanshape"].reshape(-1, 3).astype(np.float64)
    basis = fields["idBase" if group == "id" else "exBase"].reshape(-1, 3, 80 if group == "id" else 64)
    tri = fields["tri"].astype(np.int64) - 1

    def signed_areas(v: np.ndarray) -> np.ndarray:  # twice the xy-plane area of each triangle, + = counter-clockwise
        a, b, c = v[tri[:, 0], :2], v[tri[:, 1], :2], v[tri[:, 2], :2]
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])

    rest = signed_areas(shape)
    assert np.all(rest > 0)
    for value in np.linspace(*span, 9):
        moved = signed_areas(shape + value * basis[:, :, column])
        assert np.all(moved > 0), f"{group}[{column}] = {value:.2f} folds {int((moved <= 0).sum())} triangles"


def test_gradients_match_finite_differences(fields: dict[str, np.ndarray]) -> None:
    model = FaceModel(fields).double()
    coeffs = torch.from_numpy(random_coeffs(1, seed=2)).requires_grad_(True)
    weights = {
        k: torch.randn(s, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        for i, (k, s) in enumerate([("color", (1, 4225, 3)), ("landmarks", (1, 68, 2))])
    }

    def loss(c: torch.Tensor) -> torch.Tensor:
        geo = model.compute(c)
        return (geo.color * weights["color"]).sum() + 1e-3 * (geo.landmarks * weights["landmarks"]).sum()

    (grad,) = torch.autograd.grad(loss(coeffs), coeffs)
    assert torch.isfinite(grad).all() and all(grad[0, s].abs().max() > 0 for s in COEFF_SLICES.values())
    direction = torch.randn(1, 257, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        fd = (loss(coeffs + h * direction) - loss(coeffs - h * direction)) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), fd, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(model: FaceModel) -> None:
    coeffs = torch.from_numpy(random_coeffs(2)).float()
    cpu = model.compute(coeffs)
    gpu = FaceModel(make_synthetic_model(seed=0)).cuda().compute(coeffs.cuda())
    for name in ("vertices_cam", "normals", "albedo", "color", "landmarks"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), atol=1e-3, rtol=1e-4)
