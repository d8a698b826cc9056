"""dataset_tool.py / dataprep.builder / dataprep.synthetic_scenes: build tiny datasets in every mode.

Source "photos" are synthetic-face renders placed into 300x260 canvases by an off-centre similarity, with the
FaceModel's landmarks mapped by the same similarity; coloured dots painted at the five alignment points let the
test measure where they land in the aligned crop and compare with an independent NumPy re-implementation of the
release's POS fit + resize/crop (reference sections 6.4-6.5) and with the template positions.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
from dataprep import builder as db
from dataprep.synthetic_scenes import build_synthetic_dataset, image_rng, sample_coeffs
from deep3drecon.face_model import FaceModel
from deep3drecon.recon_net import ReconNet, load_recon_net, save_recon_net
from deep3drecon.render import Renderer
from deep3drecon.synthetic import write_synthetic_mat
from training.dataset import ImageLabelDataset

R = 64  # stored resolution of the realigned datasets
SRC_W, SRC_H = 300, 260
TEMPLATE_5 = np.array(
    [
        [-0.3114866, 0.2903608, 0.1337795],
        [0.3097989, 0.2897204, 0.1317953],
        [0.0032535, -0.0461793, 0.5524424],
        [-0.2521693, -0.3813392, 0.2240573],
        [0.2484662, -0.3812824, 0.2223577],
    ]
)  # reference 6.3 (y up)
# Marker colours far (> 150 in RGB) from skin, lips and the grey background, and from their neighbours' colours.
MARKERS = np.array([[0, 255, 255], [0, 255, 0], [0, 0, 255], [255, 0, 255], [255, 255, 0]], dtype=np.float64)
NUM_GOOD = 5


def five_points(lm68: np.ndarray) -> np.ndarray:
    """68 -> 5 points (reference 6.2, 0-based): eye centres, nose tip, mouth corners."""
    return np.stack([lm68[[36, 39]].mean(0), lm68[[42, 45]].mean(0), lm68[30], lm68[48], lm68[54]])


def pos_fit(lm5: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    """Independent NumPy POS fit (reference 6.4) on y-down points -> (template origin, y-down pixels; px per unit)."""
    x, y_up = lm5[:, 0], height - 1 - lm5[:, 1]
    A = np.zeros((10, 8))
    A[0::2, 0:3], A[0::2, 3] = TEMPLATE_5, 1
    A[1::2, 4:7], A[1::2, 7] = TEMPLATE_5, 1
    k = np.linalg.lstsq(A, np.stack([x, y_up], 1).reshape(-1), rcond=None)[0]
    return np.array([k[3], height - 1 - k[7]]), (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2


def exact_crop_points(lm5: np.ndarray, height: int, size: int) -> np.ndarray:
    """Where source points land in the crop: template origin -> crop centre, scale 102 size / 224 px per unit."""
    t, s = pos_fit(lm5, height)
    return (lm5 - t) * (102.0 * size / 224 / s) + (size / 2 - 0.5)  # pixel-centre coordinates


def release_crop_points(lm5: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """The release's align_img verbatim (int-truncated resize + crop, reference 6.5): crop positions of lm5."""
    t, s = pos_fit(lm5, height)
    tx, ty = t[0], height - 1 - t[1]  # y-up, as the release
    s_new = 102.0 * size / 224 / s
    w, h = int(width * s_new), int(height * s_new)
    left = int(w / 2 - size / 2 + (tx - width / 2) * s_new)
    up = int(h / 2 - size / 2 + (height / 2 - ty) * s_new)
    # PIL resize maps pixel-centre coordinates by (c + 0.5) * scale - 0.5; the crop then shifts by (left, up).
    return np.stack([(lm5[:, 0] + 0.5) * w / width - 0.5 - left, (lm5[:, 1] + 0.5) * h / height - 0.5 - up], 1)


def marker_centroids(image: np.ndarray, expected: np.ndarray, radius: int = 5) -> np.ndarray:
    """Centroid of each marker colour in a window around its expected position -> [5, 2] (x, y) pixels."""
    img = image.astype(np.float64)
    out = np.zeros((5, 2))
    for m, (colour, (ex, ey)) in enumerate(zip(MARKERS, expected, strict=True)):
        x0, y0 = int(round(ex)) - radius, int(round(ey)) - radius
        win = img[max(y0, 0) : y0 + 2 * radius + 1, max(x0, 0) : x0 + 2 * radius + 1]
        weight = np.clip(1 - np.linalg.norm(win - colour, axis=-1) / 150, 0, None) ** 2
        assert weight.sum() > 0.5, f"marker {m} not found near {ex:.1f}, {ey:.1f}"
        yy, xx = np.mgrid[0 : win.shape[0], 0 : win.shape[1]]
        out[m] = [(weight * xx).sum() / weight.sum() + max(x0, 0), (weight * yy).sum() / weight.sum() + max(y0, 0)]
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """Synthetic face model, a random-weight resnet18 FR checkpoint and a folder of source photos."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dataset_tool")
    fm_path = root / "face.mat"
    write_synthetic_mat(fm_path, seed=0)
    net = ReconNet("resnet18")
    for head in net.final_layers:  # random heads: labels must differ between images
        torch.nn.init.normal_(head.weight, std=0.02)
        torch.nn.init.normal_(head.bias, std=0.1)
    ckpt = root / "fr.pth"
    save_recon_net(net, ckpt)

    face_model = FaceModel.from_mat(fm_path)
    rng = np.random.default_rng(1)
    coeffs = np.zeros((NUM_GOOD, 257), np.float32)
    coeffs[:, :80] = rng.normal(0, 0.1, (NUM_GOOD, 80))  # near-average faces (the template check)
    coeffs[:, 144:224] = rng.normal(0, 0.5, (NUM_GOOD, 80))
    coeffs[:, 224:227] = rng.normal(0, 0.05, (NUM_GOOD, 3))
    with torch.no_grad():
        out = Renderer(face_model)(torch.from_numpy(coeffs), 224)
        lm224 = face_model.compute(torch.from_numpy(coeffs)).landmarks.numpy().astype(np.float64)
    src = root / "photos"
    src.mkdir()
    photos = []
    for i in range(NUM_GOOD):
        # Off-centre similarity 224-crop -> 300x260 canvas: scale, rotation, shift (pixel-centre coordinates).
        scale, angle = 0.9 + 0.1 * i, np.deg2rad(-12 + 6 * i)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shift = np.array([150 + 12 * i - 20, 120 + 5 * i]) - rot @ np.array([111.5, 111.5])
        inv = np.linalg.inv(rot)  # PIL wants output -> input in edge coordinates (centre + 0.5)
        c = -inv @ shift + 0.5 - inv @ np.array([0.5, 0.5])
        face = (out.render[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        mask = (out.mask[i, 0].numpy() * 255).astype(np.uint8)
        data = (inv[0, 0], inv[0, 1], c[0], inv[1, 0], inv[1, 1], c[1])
        canvas = PIL.Image.new("RGB", (SRC_W, SRC_H), (128, 128, 128))
        warped = PIL.Image.fromarray(face).transform((SRC_W, SRC_H), PIL.Image.AFFINE, data, PIL.Image.BILINEAR)
        warped_mask = PIL.Image.fromarray(mask).transform((SRC_W, SRC_H), PIL.Image.AFFINE, data)
        canvas.paste(warped, (0, 0), warped_mask)
        lm = lm224[i] @ rot.T + shift
        arr = np.asarray(canvas).copy()
        yy, xx = np.mgrid[0:SRC_H, 0:SRC_W]
        for colour, (px, py) in zip(MARKERS, five_points(lm), strict=True):
            arr[(xx - px) ** 2 + (yy - py) ** 2 <= 5.5**2] = colour
        name = f"face{i}"
        PIL.Image.fromarray(arr).save(src / f"{name}.png")
        # Odd images get 5-point files, even ones 68-point files: both formats must align the same way.
        np.savetxt(src / f"{name}.txt", five_points(lm) if i % 2 else lm, fmt="%.4f")
        photos.append((name, lm))
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    np.savetxt(src / "bad.txt", five_points(photos[0][1]))  # valid landmarks: only the image is broken
    PIL.Image.new("RGB", (40, 40), (10, 20, 30)).save(src / "nolm.png")
    return {"root": root, "face_model": fm_path, "ckpt": ckpt, "src": src, "photos": photos}


@pytest.fixture(scope="module")
def images_zip(assets) -> tuple[Path, dict]:
    """The images-mode dataset built in-process (workers=0)."""
    dest = assets["root"] / "images.zip"
    items = db.list_image_folder(assets["src"])
    report = db.build_realigned_dataset(
        items,
        dest,
        R,
        assets["ckpt"],
        assets["face_model"],
        mode="images",
        device="cpu",
        batch_size=3,
        workers=0,
        progress=False,
    )
    return dest, report


def read_zip(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(dataset.json, {name: uint8 [H, W, C]}) of a dataset zip."""
    with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read("dataset.json"))
        images = {n: np.asarray(PIL.Image.open(z.open(n))) for n in z.namelist() if n.endswith(".png")}
    return meta, images


def test_images_layout_and_skip_report(assets, images_zip):
    dest, report = images_zip
    meta, images = read_zip(dest)
    # Sorted sources: bad.png, face0..face4.png, nolm.png -> indices 0..6; the bad ones leave gaps.
    assert report["num_images"] == NUM_GOOD and report["num_skipped"] == 2
    assert {s["name"] for s in report["skipped"]} == {"bad.png", "nolm.png"}
    reasons = {s["name"]: s["reason"] for s in report["skipped"]}
    assert "cannot read" in reasons["bad.png"] and "no landmarks" in reasons["nolm.png"]
    assert sorted(images) == [f"00000/img{i:08d}.png" for i in range(1, 6)]
    for img in images.values():
        assert img.shape == (R, R, 3) and img.dtype == np.uint8
    assert [name for name, _ in meta["labels"]] == sorted(images)
    assert all(len(label) == 257 for _, label in meta["labels"])
    m = meta["meta"]
    assert m["mode"] == "images" and m["num_skipped"] == 2 and m["resolution"] == R
    assert m["recon_checkpoint"]["sha256"] == db.sha256_file(assets["ckpt"])
    assert m["bfm"]["sha256"] == db.sha256_file(assets["face_model"])
    assert m["framing"]["rescale_factor"] == pytest.approx(102 * R / 224)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp files left behind
    ds = ImageLabelDataset(str(dest), resolution=R)  # the training loader accepts it
    assert len(ds) == NUM_GOOD and ds.label_dim == 257


def test_alignment_matches_release_and_template(assets, images_zip):
    _, images = read_zip(images_zip[0])
    template = np.stack([R / 2 + TEMPLATE_5[:, 0] * 102 * R / 224, R / 2 - TEMPLATE_5[:, 1] * 102 * R / 224], 1)
    for i, (_, lm) in enumerate(assets["photos"]):
        expected = exact_crop_points(five_points(lm), SRC_H, R)
        found = marker_centroids(images[f"00000/img{i + 1:08d}.png"], expected)
        np.testing.assert_allclose(found, expected, atol=0.5)  # the exact Deep3DFaceRecon similarity at R
        # The release's int-truncated resize/crop is the same similarity up to < 1.5 px of rounding at this R.
        np.testing.assert_allclose(found, release_crop_points(five_points(lm), SRC_W, SRC_H, R), atol=1.5)
        np.testing.assert_allclose(found, template, atol=0.06 * R)  # the points sit on the template


def test_labels_are_fr_of_224_crop(assets, images_zip):
    from deep3drecon.align import align_face

    meta, _ = read_zip(images_zip[0])
    net = load_recon_net(assets["ckpt"])
    labels = dict(meta["labels"])
    for i, (name, lm) in enumerate(assets["photos"]):
        photo = PIL.Image.open(assets["src"] / f"{name}.png").convert("RGB")
        crop = np.asarray(align_face(photo, lm, size=224).image, dtype=np.float32)
        with torch.no_grad():  # one image at a time: batching must not change the labels
            ref = net(torch.from_numpy(crop).permute(2, 0, 1)[None] / 255)[0].numpy()
        got = np.array(labels[f"00000/img{i + 1:08d}.png"], np.float32)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert np.std([v for _, v in meta["labels"]], axis=0).max() > 0  # labels vary between images


def test_worker_pool_gives_identical_dataset(assets, images_zip):
    dest = assets["root"] / "images_pool.zip"
    result = CliRunner().invoke(
        dataset_tool.cli,
        [
            "images",
            "--source",
            str(assets["src"]),
            "--dest",
            str(dest),
            "--resolution",
            str(R),
            "--recon-ckpt",
            str(assets["ckpt"]),
            "--bfm",
            str(assets["face_model"]),
            "--workers",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Skipped 2 image(s)" in result.output and "bad.png" in result.output and "images/s" in result.output
    meta_a, images_a = read_zip(images_zip[0])
    meta_b, images_b = read_zip(dest)
    assert [n for n, _ in meta_a["labels"]] == [n for n, _ in meta_b["labels"]]
    np.testing.assert_allclose([v for _, v in meta_a["labels"]], [v for _, v in meta_b["labels"]], atol=1e-5)
    assert all(np.array_equal(images_a[n], images_b[n]) for n in images_a)


def test_ffhq_mode(assets, images_zip):
    root = assets["root"] / "ffhq"
    records = {}
    for i, (name, _) in enumerate(assets["photos"][:3]):
        lm = np.loadtxt(assets["src"] / f"{name}.txt")  # exactly what images mode read (5 or 68 points)
        rel = f"images1024x1024/00000/{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((assets["src"] / f"{name}.png").read_bytes())
        records[str(i)] = {
            "image": {"file_path": rel, "face_landmarks": lm.tolist()},
            "in_the_wild": {"file_path": f"in-the-wild-images/00000/{i:05d}.png", "face_landmarks": (lm * 3).tolist()},
        }
    records["3"] = {"image": {"file_path": "images1024x1024/00000/00003.png", "face_landmarks": lm.tolist()}}
    (root / "ffhq-dataset-v2.json").write_text(json.dumps(records))
    dest = assets["root"] / "ffhq.zip"
    result = CliRunner().invoke(
        dataset_tool.cli,
        [
            "ffhq",
            "--source",
            str(root),
            "--landmarks",
            str(root / "ffhq-dataset-v2.json"),
            "--dest",
            str(dest),
            "--resolution",
            str(R),
            "--recon-ckpt",
            str(assets["ckpt"]),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "'image' records" in result.output and "00003.png" in result.output
    meta, images = read_zip(dest)
    assert sorted(images) == [f"00000/img{i:08d}.png" for i in range(3)]  # FFHQ id = output index
    assert meta["meta"]["landmark_set"] == "image" and meta["meta"]["num_skipped"] == 1
    # Same photos and landmarks as images-mode entries 1..3, so identical crops and labels.
    ref_meta, ref_images = read_zip(images_zip[0])
    ref_labels = dict(ref_meta["labels"])
    for i in range(3):
        assert np.array_equal(images[f"00000/img{i:08d}.png"], ref_images[f"00000/img{i + 1:08d}.png"])
        np.testing.assert_allclose(
            dict(meta["labels"])[f"00000/img{i:08d}.png"], ref_labels[f"00000/img{i + 1:08d}.png"], rtol=1e-5, atol=1e-5
        )


def test_failure_leaves_no_output(assets, monkeypatch):
    dest = assets["root"] / "broken.zip"
    calls = []

    def failing_png(image):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return b"png"

    monkeypatch.setattr(db, "encode_png", failing_png)
    with pytest.raises(RuntimeError, match="disk full"):
        db.build_realigned_dataset(
            db.list_image_folder(assets["src"]), dest, R, assets["ckpt"], workers=0, device="cpu", progress=False
        )
    assert not dest.exists() and not list(assets["root"].glob(".broken.zip*"))


def test_synthetic_dataset(assets):
    dest = assets["root"] / "synthetic.zip"
    report = build_synthetic_dataset(
        dest, 6, R, seed=3, progress=False, face_model_path=assets["face_model"], batch_size=4, workers=0
    )
    assert report["num_images"] == 6 and report["num_skipped"] == 0
    meta, images = read_zip(dest)
    labels = np.array([v for _, v in meta["labels"]], np.float32)
    assert sorted(images) == [f"00000/img{i:08d}.png" for i in range(6)]
    for i in range(6):  # labels are the ground-truth p of image i, bit for bit
        np.testing.assert_array_equal(labels[i], sample_coeffs(image_rng(3, i, 0)))
    face_model = FaceModel.from_mat(assets["face_model"])
    with torch.no_grad():
        out = Renderer(face_model)(torch.from_numpy(labels), R)
    for i in range(6):
        img = images[f"00000/img{i:08d}.png"].astype(np.int32)
        render = (out.render[i].permute(1, 2, 0).numpy() * 255).round().astype(np.int32)
        mask = out.mask[i, 0].numpy() > 0.5
        # The face is the render of its label wherever it is not under a hat (hats only cover the forehead).
        agree = (np.abs(img - render).max(-1) <= 1) & mask
        assert mask.sum() > 50 and agree.sum() >= 0.7 * mask.sum()
        assert img[~mask].std() > 1  # the scene around the face is not empty
    # Image i depends only on (seed, i): a shorter run reproduces the first images exactly.
    short = assets["root"] / "synthetic_short.zip"
    build_synthetic_dataset(
        short, 2, R, seed=3, progress=False, face_model_path=assets["face_model"], batch_size=1, workers=2
    )
    _, images_short = read_zip(short)
    assert all(np.array_equal(images_short[n], images[n]) for n in images_short)


def test_info_statistics(assets):
    dest = assets["root"] / "synthetic.zip"
    if not dest.exists():
        build_synthetic_dataset(dest, 6, R, seed=3, progress=False, face_model_path=assets["face_model"], workers=0)
    result = CliRunner().invoke(dataset_tool.cli, ["info", str(dest), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    meta, _ = read_zip(dest)
    labels = np.array([v for _, v in meta["labels"]], np.float64)
    assert info["num_images"] == 6 and info["resolution"] == R and info["label_dim"] == 257
    for name, (a, b) in {"id": (0, 80), "angle": (224, 227), "trans": (254, 257)}.items():
        stats = info["label_stats"][name]
        assert stats["mean"] == pytest.approx(labels[:, a:b].mean())
        assert stats["max"] == pytest.approx(labels[:, a:b].max())
        assert stats["std"] == pytest.approx(labels[:, a:b].std())
    table = CliRunner().invoke(dataset_tool.cli, ["info", str(dest)])
    assert "6 images" in table.output and "gamma" in table.output
