"""Plain-PyTorch triangle rasterizer (CPU and GPU) with nvdiffrast's conventions (see ``contract.py``).

Algorithm (vectorised; the only Python loops run over triangle size classes and memory chunks):

1. Homogeneous edge functions (Olano & Greer 1997). With the triangle's vertices as columns
   ``c_k = (x_k, y_k, w_k)`` and a pixel centre ``p = (px, py, 1)`` in NDC, ``e_k(p) = (c_{k+1} x c_{k+2}) . p``
   is affine in ``(px, py)`` and proportional to the clip-space (= perspective-correct) barycentric of vertex k.
   After fixing the sign with ``det = c_0 . (c_1 x c_2)``, the pixel's view ray hits the triangle in front of
   the camera iff ``e_k >= 0`` for all k (all ``e_k <= 0`` is the hit behind the camera); this needs no
   projection and is exact for triangles that cross the camera plane. NDC depth
   ``z / w = sum_k e_k z_k / |det|`` is affine in ``(px, py)`` too.
2. Each triangle gets the range of pixel centres its screen bounding box covers (the whole image if a vertex has
   ``w <= 0``, where the projected box is unbounded). Triangles are grouped by box size rounded up to powers of
   two, and every group tests all (triangle, pixel-in-box) pairs as one tensor op. Face meshes have tiny
   triangles (BFM: ~0.5 px each at 224), so this triangle-major scheme tests only a few pairs per triangle.
3. Visibility: a z-buffer via ``scatter_reduce('amin')`` on int64 keys that pack (depth bits, triangle id), so the
   nearest surface wins and exact depth ties go to the lowest triangle id (deterministic on CPU and GPU).
4. Barycentrics of the winning triangle are recomputed per pixel with autograd on, so gradients reach the clip
   positions (x, y, w) and, through ``interpolate``, the vertex attributes. Visibility itself is discrete.
"""

from __future__ import annotations

import torch

from .contract import Rasterization, pixel_centres_ndc

# Upper bound on (triangle, pixel) pairs tested per tensor op: bounds peak memory (~100 bytes per pair).
MAX_PAIRS_PER_CHUNK = 1 << 21

# Bounding boxes are widened by this many pixels so rounding never drops a pixel centre lying on an edge; extra
# candidates are harmless because the edge functions decide coverage.
_BOX_SLACK_PX = 1e-3


def _edge_planes(verts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge-function coefficients [..., 3 (k), 3 (a, b, c)] with e_k = a px + b py + c, and det [...] (signed).

    verts: [..., 3, 4] clip-space vertices of each triangle. Row k is the cross product c_{k+1} x c_{k+2} of the
    other two vertices' (x, y, w), written out per component (cheaper than gathers + linalg.cross on CPU).
    """
    x0, x1, x2 = verts[..., 0].unbind(-1)
    y0, y1, y2 = verts[..., 1].unbind(-1)
    w0, w1, w2 = verts[..., 3].unbind(-1)
    a = torch.stack([y1 * w2 - w1 * y2, y2 * w0 - w2 * y0, y0 * w1 - w0 * y1], dim=-1)
    b = torch.stack([w1 * x2 - x1 * w2, w2 * x0 - x2 * w0, w0 * x1 - x0 * w1], dim=-1)
    c = torch.stack([x1 * y2 - y1 * x2, x2 * y0 - y2 * x0, x0 * y1 - y0 * x1], dim=-1)
    det = x0 * a[..., 0] + y0 * b[..., 0] + w0 * c[..., 0]
    return torch.stack([a, b, c], dim=-1), det


def _orderable_key(depth: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Pack float32 depth and a non-negative int32 triangle id into int64 keys whose order is (depth, id)."""
    bits = depth.to(torch.float32).contiguous().view(torch.int32)
    # IEEE floats order like sign-magnitude ints: flipping the magnitude bits of negatives makes them two's
    # complement ordered, so integer min == float min.
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits.to(torch.int64) << 32) + tri


def _candidate_boxes(
    verts: torch.Tensor, det: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-triangle inclusive pixel ranges (j0, j1, i0, i1) [T] int64 and a validity mask [T] bool.

    verts: [T, 3, 4] clip positions; det [T] from ``_edge_planes``. Culls triangles that are degenerate, fully
    behind the camera, fully outside one frustum plane, or cover no pixel centre.
    """
    x, y, z, w = verts.unbind(-1)  # each [T, 3]
    # A vertex with NaN/inf (from non-finite coefficients) covers nothing: culled, and its box zeroed below, so
    # that casting NaN to an index (INT64_MIN) can never reach the pixel loop.
    culled = (det == 0) | ~torch.isfinite(det) | (w <= 0).all(-1) | ~torch.isfinite(verts).all(-1).all(-1)
    for coord in (x, y, z):  # all three vertices beyond the same frustum plane -> the whole triangle is
        culled |= (coord > w).all(-1) | (coord < -w).all(-1)

    in_front = (w > 0).all(-1)
    safe_w = torch.where(w > 0, w, torch.ones_like(w))
    ndc_x, ndc_y = x / safe_w, y / safe_w
    big = torch.full_like(det, 2.0)
    # A triangle crossing the camera plane projects to an unbounded region: give it the whole image.
    xmin = torch.where(in_front, ndc_x.amin(-1), -big).clamp(-1, 1).nan_to_num(0.0)
    xmax = torch.where(in_front, ndc_x.amax(-1), big).clamp(-1, 1).nan_to_num(0.0)
    ymin = torch.where(in_front, ndc_y.amin(-1), -big).clamp(-1, 1).nan_to_num(0.0)
    ymax = torch.where(in_front, ndc_y.amax(-1), big).clamp(-1, 1).nan_to_num(0.0)

    # Column j has its centre at NDC x = (2j + 1) / W - 1, row i at NDC y = (2i + 1) / H - 1.
    j0 = torch.ceil((xmin + 1) * (width / 2) - 0.5 - _BOX_SLACK_PX).clamp(0, width - 1).long()
    j1 = torch.floor((xmax + 1) * (width / 2) - 0.5 + _BOX_SLACK_PX).clamp(-1, width - 1).long()
    i0 = torch.ceil((ymin + 1) * (height / 2) - 0.5 - _BOX_SLACK_PX).clamp(0, height - 1).long()
    i1 = torch.floor((ymax + 1) * (height / 2) - 0.5 + _BOX_SLACK_PX).clamp(-1, height - 1).long()
    valid = ~culled & (j1 >= j0) & (i1 >= i0)
    return j0, j1, i0, i1, valid


def _next_pow2_exponent(n: torch.Tensor) -> torch.Tensor:
    """Smallest e with 2**e >= n, for int64 n >= 1."""
    return torch.ceil(torch.log2(n.double())).long().clamp_min(0)


@torch.no_grad()
def _visible_triangles(clip: torch.Tensor, tris: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Z-buffer pass: [N, H, W] int64 index of the nearest covering triangle, -1 where none."""
    num_images, num_tris = clip.shape[0], tris.shape[0]
    device = clip.device
    # Triangle instances t = n * F + f, vertices [T, 3, 4]; index_select is much faster than advanced indexing.
    verts = clip.index_select(1, tris.reshape(-1)).reshape(num_images * num_tris, 3, 4)
    planes, det = _edge_planes(verts)
    sign = torch.where(det < 0, -1.0, 1.0).to(det.dtype)
    planes = planes * sign[:, None, None]  # now every covered pixel has e_k >= 0
    # Affine NDC depth plane: z / w = sum_k e_k z_k / |det|.
    zplane = (planes * verts[:, :, 2:3]).sum(1) / det.abs().clamp_min(torch.finfo(det.dtype).tiny)[:, None]
    table = torch.cat([planes.reshape(-1, 9), zplane], dim=1)  # [T, 12]: one gather per chunk
    j0, j1, i0, i1, valid = _candidate_boxes(verts, det, height, width)
    boxes = torch.stack([j0, j1, i0, i1], dim=1)  # [T, 4]

    # Size classes (log2 of the box width and height, rounded up); sorting groups each class contiguously.
    size_class = torch.where(valid, _next_pow2_exponent(j1 - j0 + 1) * 64 + _next_pow2_exponent(i1 - i0 + 1), -1)
    size_class, order = torch.sort(size_class)
    classes, counts = torch.unique_consecutive(size_class, return_counts=True)

    empty_key = torch.iinfo(torch.int64).max
    zbuf = torch.full((num_images * height * width,), empty_key, dtype=torch.int64, device=device)
    ndc_cols, ndc_rows = pixel_centres_ndc(height, width, device, clip.dtype)
    end = 0
    for cls, count in zip(classes.tolist(), counts.tolist()):
        begin, end = end, end + count
        if cls < 0:
            continue
        box_w, box_h = 1 << (cls // 64), 1 << (cls % 64)
        chunk = max(1, MAX_PAIRS_PER_CHUNK // (box_w * box_h))
        for start in range(begin, end, chunk):
            t = order[start : min(start + chunk, end)]
            tj0, tj1, ti0, ti1 = boxes[t].unbind(1)
            cols = tj0[:, None] + torch.arange(box_w, device=device)  # [m, box_w]
            rows = ti0[:, None] + torch.arange(box_h, device=device)  # [m, box_h]
            in_box = (rows <= ti1[:, None])[:, :, None] & (cols <= tj1[:, None])[:, None, :]  # [m, box_h, box_w]
            cols, rows = cols.clamp_max(width - 1), rows.clamp_max(height - 1)
            px = ndc_cols[cols][:, None, None, :]  # [m, 1, 1, box_w]
            py = ndc_rows[rows][:, None, :, None]  # [m, 1, box_h, 1]
            coef = table[t]
            p = coef[:, :9].reshape(-1, 3, 3)[:, :, :, None, None]  # [m, 3 (k), 3 (abc), 1, 1]
            edges = p[:, :, 0] * px + p[:, :, 1] * py + p[:, :, 2]  # [m, 3, box_h, box_w]
            zp = coef[:, 9:, None, None]
            depth = zp[:, 0] * px[:, 0] + zp[:, 1] * py[:, 0] + zp[:, 2]  # [m, box_h, box_w]
            inside = in_box & (edges >= 0).all(1) & (depth >= -1) & (depth <= 1)
            hit_t, hit_r, hit_c = torch.nonzero(inside, as_tuple=True)
            tri_inst = t[hit_t]
            image = tri_inst // num_tris
            pix = (image * height + rows[hit_t, hit_r]) * width + cols[hit_t, hit_c]
            keys = _orderable_key(depth[hit_t, hit_r, hit_c], tri_inst - image * num_tris)
            zbuf.scatter_reduce_(0, pix, keys, reduce="amin", include_self=True)

    tri_id = torch.where(zbuf == empty_key, -1, zbuf & 0xFFFFFFFF)
    return tri_id.reshape(num_images, height, width)


def barycentrics_at_pixels(
    clip: torch.Tensor, tris: torch.Tensor, tri_id: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable perspective-correct barycentrics [N, H, W, 3] and NDC depth [N, H, W] (no grad) of given ids.

    clip: [N, V, 4]; tris: [F, 3] int64; tri_id: [N, H, W] int64 (-1 = background, gives zeros).
    """
    num_images, height, width = tri_id.shape
    ndc_cols, ndc_rows = pixel_centres_ndc(height, width, clip.device, clip.dtype)
    image, row, col = torch.nonzero(tri_id >= 0, as_tuple=True)
    verts = clip[image[:, None], tris[tri_id[image, row, col]]]  # [P, 3, 4], differentiable gather
    planes, _ = _edge_planes(verts)
    p = torch.stack([ndc_cols[col], ndc_rows[row], torch.ones_like(ndc_cols[col])], dim=-1)  # [P, 3]
    edges = (planes * p[:, None, :]).sum(-1)  # [P, 3]; the sign of det cancels in the normalisation below
    lam = edges / edges.sum(-1, keepdim=True)
    with torch.no_grad():
        ndc_depth = (lam * verts[..., 2]).sum(-1) / (lam * verts[..., 3]).sum(-1)
    flat = (image * height + row) * width + col
    bary = clip.new_zeros(num_images * height * width, 3).index_put((flat,), lam)
    depth = clip.new_zeros(num_images * height * width).index_put((flat,), ndc_depth.detach())
    return bary.reshape(num_images, height, width, 3), depth.reshape(num_images, height, width)


def rasterize_torch(clip: torch.Tensor, tris: torch.Tensor, height: int, width: int) -> Rasterization:
    """Rasterize clip [N, V, 4] float triangles tris [F, 3] int64 into an H x W ``Rasterization`` (plain PyTorch)."""
    tri_id = _visible_triangles(clip.detach(), tris, height, width)
    bary, depth = barycentrics_at_pixels(clip, tris, tri_id)
    return Rasterization(tri_id=tri_id, bary=bary, depth=depth, backend="torch")
