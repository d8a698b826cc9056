"""End-to-end hardening: a run that turns NaN stops (keeping its last good snapshot), zip datasets train and give
real statistics with forked loader workers, --no-cond trains on unlabelled images, train.py refuses bad assets
before making a run directory, resumes are locked and truncate their logs, and the renderer survives NaN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import run_training_loop, write_image_dataset
from torch_utils import distributed
from training.config import TrainConfig
from training.run import snapshot
from training.run.nonfinite import NonFiniteGuard, TrainingDiverged

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(cfg="test", z_dim=8, w_dim=16, map_layers=2, channel_base=128, channel_max=16, num_fp16_res=0,
            mbstd_group=2, batch=4, ema_kimg=0.01, ema_rampup=0.05, tick_kimg=0.008, snap=1, workers=0, design="uncond",
            gamma=1.0, d_reg_interval=2, device="cpu")  # fmt: skip


def test_nan_gradients_stop_the_run_at_their_iteration_keeping_the_last_good_snapshot(tmp_path, monkeypatch):
    from training.loss import GANLoss

    data = str(tmp_path / "d.zip")
    write_image_dataset(data, num=8, resolution=8)
    original, calls = GANLoss.accumulate_gradients, []

    def poisoned(self, phase, *args):
        original(self, phase, *args)
        if phase == "Gmain":
            calls.append(1)
            if len(calls) == 4:  # iteration 3 (0-based), after 12 images
                next(self.G.parameters()).grad.view(-1)[0] = float("nan")

    monkeypatch.setattr(GANLoss, "accumulate_gradients", poisoned)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(TrainingDiverged, match=r"Gmain gradients turned NaN at iteration 3 \(kimg 0\.012\); the "
                                               r"last good snapshot is .*training-state-000000\.012\.pt"):  # fmt: skip
        run_training_loop(TrainConfig(**dict(TINY, data=data, kimg=0.032)), str(run), torch.device("cpu"))
    states = sorted(p for p in os.listdir(run) if p.startswith("training-state-"))
    assert states == ["training-state-000000.004.pt", "training-state-000000.012.pt"]  # nothing after the NaN
    assert snapshot.safe_load(str(run / states[-1]))["cur_nimg"] == 12  # loads: finite, checksum intact


def test_guard_reads_the_tick_loss_means():
    guard = NonFiniteGuard(torch.device("cpu"))
    guard.observe(torch.tensor(0), "Dmain", 5, 20)
    guard.check({"Loss/G/loss": {"mean": 0.7}}, 3, "/nonexistent")  # finite: no error
    with pytest.raises(TrainingDiverged, match="Loss/D/loss turned NaN/inf during tick 3; no snapshot"):
        guard.check({"Loss/G/loss": {"mean": 0.7}, "Loss/D/loss": {"mean": float("inf")}}, 3, "/nonexistent")


def test_average_gradients_reports_nan_instead_of_zeroing_it():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])
    num_nan = distributed.average_gradients([p])
    assert int(num_nan) == 1 and torch.isnan(p.grad[1])
    assert p.grad[0] == 1.0 and p.grad[2] == 1e5 and p.grad[3] == -1e5  # fp16 overflow clipping as before


def _unlabelled_zip(path: str, num: int, resolution: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, [num, resolution, resolution, 3], dtype=np.uint8)
    with zipfile.ZipFile(path, "w") as zf:
        for i, image in enumerate(images):
            with zf.open(f"faces/{i:04d}.png", "w") as f:
                PIL.Image.fromarray(image).save(f, format="png")
    return images


@pytest.mark.slow
def test_nocond_trains_on_an_unlabelled_zip_with_forked_workers_and_real_stats_match(tmp_path):
    from metrics.context import MetricContext
    from metrics.feature_stats import compute_real_stats
    from metrics.features import RandomFeatureExtractor
    from training.dataset import ImageLabelDataset

    data = str(tmp_path / "faces.zip")
    images = _unlabelled_zip(data, num=48, resolution=8)
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(**dict(TINY, data=data, workers=2, kimg=0.024))
    out = run_training_loop(config, str(run), torch.device("cpu"))
    assert out["cur_nimg"] == 24 and snapshot.safe_load(snapshot.latest_training_state(str(run)))["cur_nimg"] == 24

    # Real statistics through forked workers equal an independent pass over the decoded PNGs.
    extractor = RandomFeatureExtractor(feature_dim=8, seed=3)
    ctx = MetricContext(dataset=ImageLabelDataset(data, require_labels=False), batch_size=5, num_workers=2,
                        cache_dir=str(tmp_path / "cache"), feature_extractor_factory=lambda device: extractor)
    stats = compute_real_stats(ctx, extractor)
    feats = extractor(torch.as_tensor(images).permute(0, 3, 1, 2)).numpy()
    mean, cov = stats.mean_cov()
    np.testing.assert_allclose(mean, feats.mean(0), rtol=1e-5, atol=1e-7)  # float32 features, other batches
    np.testing.assert_allclose(cov, np.cov(feats, rowvar=False), rtol=1e-4, atol=1e-8)

    # A second trainer on this run (while it is locked) gets one line naming the holder.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom training.run.run_dir import RunLock\n"
                               "l = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(120)", str(run)],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO))  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        from train import main

        result = CliRunner().invoke(main, ["--resume", str(run), "--kimg", "0.032"])
        assert result.exit_code == 1 and f"in use by a trainer (pid {holder.pid} on host" in result.output
        assert "Traceback" not in result.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_resume_truncates_stats_jsonl_to_the_resumed_tick(tmp_path):
    from training.run.reporting import truncate_stats

    path = tmp_path / "stats.jsonl"
    rows = [{"Progress/tick": {"mean": t}, "Loss/G/loss": {"mean": 0.5}} for t in (0.0, 1.0, 2.0, 3.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"Progress/tick": {"me')  # cut by a kill
    truncate_stats(str(path), last_tick=1)
    kept = [json.loads(line)["Progress/tick"]["mean"] for line in path.read_text().splitlines()]
    assert kept == [0.0, 1.0]


@pytest.fixture()
def cli_data(tmp_path):
    path = str(tmp_path / "d.zip")
    write_image_dataset(path, num=4, resolution=8)
    return path


def test_bad_recon_ckpt_is_refused_before_the_run_directory_exists(tmp_path, cli_data):
    from deep3drecon.synthetic import write_synthetic_mat
    from train import main

    bfm = write_synthetic_mat(str(tmp_path / "face.mat"))
    junk = tmp_path / "epoch_20.pth"
    junk.write_bytes(b"junk")
    outdir = tmp_path / "runs"
    result = CliRunner().invoke(main, ["--cfg", "smoke", "--data", cli_data, "--bfm", bfm, "--recon-ckpt", str(junk),
                                       "--outdir", str(outdir)])  # fmt: skip
    assert result.exit_code == 1 and "FR checkpoint" in result.output and "Traceback" not in result.output
    assert not outdir.exists() or not os.listdir(outdir)


def test_dry_run_builds_no_synthetic_reconstructor(tmp_path, cli_data):
    from deep3drecon import assets
    from train import main

    outdir = tmp_path / "runs"
    result = CliRunner().invoke(main, ["--cfg", "smoke", "--data", cli_data, "--outdir", str(outdir), "-n"])
    assert result.exit_code == 0, result.output
    assert "Dry run" in result.output and not assets.synthetic_recon_file().exists()
    assert not outdir.exists() or not os.listdir(outdir)


def test_renderer_survives_nan_coefficients(tmp_path):
    from deep3drecon.face_model import FaceModel
    from deep3drecon.render import Renderer
    from deep3drecon.synthetic import write_synthetic_mat

    renderer = Renderer(FaceModel.from_mat(write_synthetic_mat(str(tmp_path / "face.mat"))), backend="torch")
    coeffs = torch.zeros(2, 257)
    coeffs[1, 254] = float("nan")  # NaN x with a finite depth: cast to an index it was INT64_MIN (IndexError)
    both = renderer(coeffs, 16)
    alone = renderer(coeffs[:1], 16)
    assert torch.equal(both.render[:1], alone.render) and torch.equal(both.mask[:1], alone.mask)
    assert alone.mask.sum() > 0 and both.mask[1].sum() == 0  # the NaN face covers no pixel


def test_dataset_tool_refuses_landmarks_outside_the_image(tmp_path):
    from dataprep.builder import Skipped, SourceItem, prepare_item

    image = tmp_path / "photo.png"
    PIL.Image.fromarray(np.full([64, 64, 3], 128, np.uint8)).save(image)
    inside = [[20.0, 25.0], [44.0, 25.0], [32.0, 36.0], [22.0, 46.0], [42.0, 46.0]]
    outside = [[x + 500.0, y] for x, y in inside]
    assert not isinstance(prepare_item(SourceItem(0, "in", str(image), landmarks=inside), 32, 32), Skipped)
    result = prepare_item(SourceItem(1, "out", str(image), landmarks=outside), 32, 32)
    assert isinstance(result, Skipped) and "5 of the 5 alignment points lie outside the 64x64 image" in result.reason


def test_resume_hides_the_interrupted_runs_later_tensorboard_ticks(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from torch_utils.training_stats import StatsCollector
    from training.run.reporting import TickReporter

    def ticks(resume_point, first_tick, nimgs, loss):
        stats = StatsCollector()
        reporter = TickReporter(str(tmp_path), stats, torch.device("cpu"), 0, resume_point=resume_point)
        for tick, nimg in enumerate(nimgs, start=first_tick):
            stats.report("Loss/G/loss", loss)
            reporter.tick(cur_tick=tick, cur_nimg=nimg, tick_start_nimg=nimg - 4, tick_start_time=0.0,
                          start_time=0.0, maintenance_time=0.0)  # fmt: skip
        reporter.close()

    ticks(None, 0, [4, 12, 20, 28], loss=1.0)  # killed after its state at tick 1 (12 images) was saved
    ticks((12, 1), 2, [20, 28], loss=2.0)  # the resumed run repeats ticks 2 and 3
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("Loss/G/loss")] == [(4, 1.0), (12, 1.0), (20, 2.0), (28, 2.0)]
    rows = [json.loads(line) for line in open(tmp_path / "stats.jsonl")]
    assert [(r["Progress/tick"]["mean"], r["Loss/G/loss"]["mean"]) for r in rows] == [
        (0, 1.0), (1, 1.0), (2, 2.0), (3, 2.0)]
