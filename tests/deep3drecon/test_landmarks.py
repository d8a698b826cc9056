"""Offline 5-point landmarks on a real photograph (scikit-image's astronaut, shipped in its wheel): the detector
against hand-placed points, the aligned crop against the crop from those points, an independent MTCNN
implementation where it imports, no-face / several-face handling, and the auto-detect paths of the CLIs."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from deep3drecon import landmarks as lmk
from deep3drecon.align import align_face
from tests.deep3drecon.recon_fixtures import HAND_LANDMARKS, needs_detector, run_images_tool
from torch_utils.errors import UserError


@pytest.fixture(scope="module")
def astronaut() -> PIL.Image.Image:
    data = pytest.importorskip("skimage.data")
    return PIL.Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def detector() -> lmk.FaceDetector:
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip('face detector weights not installed (pip install -e ".[faces]")')
    return lmk.load_face_detector()


@pytest.fixture(scope="module")
def faces(astronaut, detector) -> list[lmk.FaceDetection]:
    return detector.detect(astronaut)


def test_nms_matches_torchvision() -> None:
    from torchvision.ops import nms

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=gen) * 30], dim=1)
    scores = torch.rand(200, generator=gen)
    for threshold in (0.3, 0.5, 0.7):
        assert lmk._nms(boxes, scores, threshold).tolist() == nms(boxes, scores, threshold).tolist()


def test_detects_the_astronaut_where_hand_placed(faces) -> None:
    assert len(faces) == 1 and faces[0].score > 0.9
    lm = faces[0].landmarks
    assert lm.shape == (5, 2)
    err = np.linalg.norm(lm - HAND_LANDMARKS, axis=1)
    assert err.max() < 4.0, err  # pixels, in a face whose eyes are 44 px apart
    x0, y0, x1, y1 = faces[0].box
    assert (lm[:, 0] > x0).all() and (lm[:, 0] < x1).all() and (lm[:, 1] > y0).all() and (lm[:, 1] < y1).all()


def test_aligned_crop_matches_hand_placed_crop(astronaut, faces) -> None:
    for size in (224, 64):
        auto = align_face(astronaut, faces[0].landmarks, size=size)
        hand = align_face(astronaut, HAND_LANDMARKS, size=size)
        centre_auto, centre_hand = np.array(auto.params.center), np.array(hand.params.center)
        assert np.linalg.norm(centre_auto - centre_hand) < 3.0  # source pixels
        assert abs(auto.params.scale / hand.params.scale - 1) < 0.05
        a = np.asarray(auto.image, dtype=np.float64) / 255
        b = np.asarray(hand.image, dtype=np.float64) / 255
        assert np.abs(a - b).mean() < 0.06, np.abs(a - b).mean()


def test_agrees_with_facenet_pytorch_mtcnn(astronaut, faces) -> None:
    """The same weights through facenet-pytorch's own MTCNN code (an independent implementation)."""
    try:
        from facenet_pytorch import MTCNN
    except Exception as exc:  # its package code may not import on this torch; the weights are all we need
        pytest.skip(f"facenet_pytorch does not import here: {exc}")
    _, _, points = MTCNN(keep_all=True, device="cpu").detect(astronaut, landmarks=True)
    assert points is not None and len(points) == 1
    assert np.abs(points[0] - faces[0].landmarks).max() < 2.5


def test_no_face_and_largest_face(astronaut, detector, tmp_path) -> None:
    grey = PIL.Image.new("RGB", (160, 120), (128, 128, 128))
    assert detector.detect(grey) == []
    with pytest.raises(lmk.NoFaceError, match="no face found in grey.png"):
        lmk.detect_landmarks(grey, detector, "grey.png")
    # Two copies of the face, one at half size: both found, the larger first.
    head = astronaut.crop((150, 30, 300, 190))
    canvas = PIL.Image.new("RGB", (260, 170), (200, 200, 200))
    canvas.paste(head, (0, 5))
    canvas.paste(head.resize((75, 80), PIL.Image.Resampling.BICUBIC), (170, 40))
    found = detector.detect(canvas)
    assert len(found) == 2 and found[0].area > 2 * found[1].area
    lm, count = lmk.detect_landmarks(canvas, detector)
    assert count == 2 and lm[:, 0].max() < 160  # the big face (left part of the canvas)


def test_missing_extra_is_one_line(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "facenet_pytorch" else real(
        name, *a))  # fmt: skip
    with pytest.raises(UserError, match=r'pip install -e "\.\[faces\]" or pass landmark files'):
        lmk.load_face_detector()


@needs_detector
def test_find_or_detect_writes_and_reuses_file(astronaut, tmp_path) -> None:
    photo = tmp_path / "astro.png"
    astronaut.save(photo)
    lm, note = lmk.find_or_detect_landmarks(photo, astronaut, lmk.load_face_detector, tmp_path / "out")
    written = tmp_path / "out" / "astro_landmarks.txt"
    assert "detected" in note and written.is_file()
    np.testing.assert_allclose(np.loadtxt(written), lm, atol=0.01)

    def no_detector():
        raise AssertionError("a landmark file exists: the detector must not run")

    os.replace(written, tmp_path / "astro_landmarks.txt")
    again, note = lmk.find_or_detect_landmarks(photo, astronaut, no_detector)
    assert "landmarks from" in note
    np.testing.assert_allclose(again, lm, atol=0.01)


@needs_detector
def test_reconstruct_cli_detects_landmarks(astronaut, tmp_path) -> None:
    from deep3drecon.recon_net import ReconNet, save_recon_net
    from deep3drecon.reconstruct import main
    from deep3drecon.synthetic import write_synthetic_mat

    bfm = write_synthetic_mat(str(tmp_path / "face.mat"), seed=0, grid=17)
    ckpt = str(tmp_path / "recon.pth")
    save_recon_net(ReconNet("resnet18", input_size=32), ckpt)
    astronaut.save(tmp_path / "astro.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--image", str(tmp_path / "astro.png"), "--bfm", bfm, "--checkpoint", ckpt,
                                       "--outdir", str(out), "--backend", "torch", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "astro_landmarks.txt").is_file() and (out / "astro_coeffs.npy").is_file()
    assert np.abs(np.loadtxt(out / "astro_landmarks.txt") - HAND_LANDMARKS).max() < 4.0


@needs_detector
def test_dataset_tool_images_detects_and_skips(astronaut, tmp_path) -> None:
    import json
    import zipfile

    src = tmp_path / "photos"
    src.mkdir()
    astronaut.save(src / "astro.png")
    PIL.Image.new("RGB", (64, 64), (90, 90, 90)).save(src / "wall.png")
    result, dest = run_images_tool(tmp_path, src)
    assert result.exit_code == 0, result.output
    assert "wall.png: no landmarks file and no face found" in result.output and "Wrote 1 images" in result.output
    assert np.abs(np.loadtxt(src / "astro_landmarks.txt") - HAND_LANDMARKS).max() < 4.0
    with zipfile.ZipFile(dest) as zf:
        meta = json.loads(zf.read("dataset.json"))
    assert len(meta["labels"]) == 1 and meta["meta"]["skipped"][0]["name"] == "wall.png"


def test_folder_without_the_extra_skips_only_unlabelled_photos(monkeypatch, tmp_path) -> None:
    from dataprep.builder import list_image_folder
    from dataprep.photo_landmarks import detect_missing_landmarks

    for name in ("a", "b"):
        PIL.Image.new("RGB", (32, 32)).save(tmp_path / f"{name}.png")
    np.savetxt(tmp_path / "a.txt", HAND_LANDMARKS)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "facenet_pytorch" else real(
        name, *a))  # fmt: skip
    items, messages = list_image_folder(tmp_path), []
    assert detect_missing_landmarks(items, device="cpu", progress=False, log=messages.append) == 1
    assert items[0].skip_reason is None and items[1].skip_reason.startswith("no landmarks")
    assert len(messages) == 1 and '".[faces]"' in messages[0]
