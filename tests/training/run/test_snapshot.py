"""Snapshots: checksummed, checked for NaN/inf, keys, shapes, constructor arguments and counters on load (one line
each); unique ordered names that still sort old ones; atomic writes that survive a full disk; mode 0666 & ~umask."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from torch_utils.errors import UserError
from training.discriminator import Discriminator
from training.networks import Generator
from training.run import snapshot

G_KWARGS = dict(z_dim=4, w_dim=8, img_resolution=8, mapping_kwargs=dict(num_layers=1),
                synthesis_kwargs=dict(channel_base=64, channel_max=8, num_fp16_res=0))


@pytest.fixture()
def network_file(tmp_path):
    torch.manual_seed(0)
    G = Generator(**G_KWARGS)
    path = str(tmp_path / f"network-snapshot-{snapshot.snapshot_tag(1234)}.pt")
    snapshot.save_network_snapshot(path, G, G_KWARGS, {"cfg": "test"}, cur_nimg=1234)
    return path, G


def _state_file(tmp_path, **changes) -> str:
    torch.manual_seed(0)
    G, D = Generator(**G_KWARGS), Discriminator(img_resolution=8, channel_base=64, channel_max=8, num_fp16_res=0,
                                                mbstd_group_size=1)  # fmt: skip
    opt_G, opt_D = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    for module, opt in ((G, opt_G), (D, opt_D)):  # one step, so that the optimizers hold moments
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    path = str(tmp_path / "training-state-000001.000.pt")
    snapshot.save_training_state(path, G=G, D=D, G_ema=G, opt_G=opt_G, opt_D=opt_D, G_kwargs=G_KWARGS, D_kwargs={},
                                 config={}, cur_nimg=1000, cur_tick=1, batch_idx=3, rng_states={})  # fmt: skip
    if changes:
        data = torch.load(path, weights_only=True)
        data.update(changes)
        data.pop("sha256")
        snapshot.atomic_save(data, path)  # re-checksummed: only the change itself is wrong
    return path


def test_round_trip_loads_the_same_weights(network_file):
    path, G = network_file
    loaded = snapshot.load_network(path)
    for (name, a), b in zip(G.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_flipped_byte_is_reported(network_file):
    path, _ = network_file
    raw = bytearray(open(path, "rb").read())
    # Flip one bit inside the largest tensor record (the data, not the zip directory) so torch still reads it.
    data = torch.load(path, weights_only=True)
    big = max(data["G_ema"].values(), key=lambda t: t.numel())
    needle = big.reshape(-1)[:4].numpy().tobytes()
    offset = raw.find(needle)
    assert offset > 0
    raw[offset] ^= 0x01
    open(path, "wb").write(bytes(raw))
    with pytest.raises(UserError, match="fails its SHA-256 check"):
        snapshot.load_network(path)


def test_files_without_a_checksum_still_load(network_file, tmp_path):
    path, _ = network_file
    data = torch.load(path, weights_only=True)
    data.pop("sha256")
    old = str(tmp_path / "network-snapshot-000001.pt")
    torch.save(data, old)
    assert snapshot.load_network(old) is not None


def test_empty_file_is_one_line(tmp_path):
    path = tmp_path / "network-snapshot-000000.pt"
    path.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        snapshot.safe_load(str(path))


def test_non_finite_weights_are_refused_on_load_and_on_save(tmp_path, network_file):
    path, G = network_file
    data = torch.load(path, weights_only=True)
    key = next(iter(data["G_ema"]))
    data["G_ema"][key][...] = float("nan")
    data.pop("sha256")
    snapshot.atomic_save(data, path)
    with pytest.raises(UserError, match=f"G_ema.*{key}.*NaN/inf"):
        snapshot.load_network(path)
    with torch.no_grad():
        next(G.parameters()).fill_(float("inf"))
    target = str(tmp_path / "network-snapshot-000002.000.pt")
    with pytest.raises(UserError, match="refusing to write"):
        snapshot.save_network_snapshot(target, G, G_KWARGS, {}, 2000)
    assert not os.path.exists(target)


@pytest.mark.parametrize("changes, words", [
    ({"G_kwargs": dict(G_KWARGS, bogus=1)}, "G_kwargs do not build a Generator: .*bogus"),
    ({"G_kwargs": dict(G_KWARGS, w_dim=16)}, "G_ema weights do not fit.*shape mismatch"),
    ({"G_kwargs": dict(G_KWARGS, mapping_kwargs=dict(num_layers=2))}, "G_ema weights do not fit.*missing"),
    ({"cur_nimg": -5}, "cur_nimg = -5 is negative"),
    ({"cur_nimg": "12"}, "'cur_nimg' is a str, expected int"),
])  # fmt: skip
def test_wrong_contents_are_one_line(network_file, changes, words):
    path, _ = network_file
    data = torch.load(path, weights_only=True)
    data.update(changes)
    data.pop("sha256")
    snapshot.atomic_save(data, path)
    with pytest.raises(UserError, match=words) as info:
        snapshot.load_network(path)
    assert "\n" not in str(info.value)


def test_training_state_checks(tmp_path):
    path = _state_file(tmp_path)
    assert snapshot.safe_load(path)["batch_idx"] == 3
    data = torch.load(path, weights_only=True)
    del data["opt_G"]
    data.pop("sha256")
    snapshot.atomic_save(data, path)
    with pytest.raises(UserError, match="no 'opt_G' entry"):
        snapshot.safe_load(path)
    with pytest.raises(UserError, match="counter cur_tick = -1"):
        snapshot.safe_load(_state_file(tmp_path, cur_tick=-1))


def test_state_shapes_and_optimizer_mismatch_are_one_line(tmp_path):
    data = snapshot.safe_load(_state_file(tmp_path))
    torch.manual_seed(1)
    other = Generator(**dict(G_KWARGS, w_dim=6))
    mismatch = r"G weights do not fit.*shape mismatch \(file != network\): synthesis\.\S+ \(8, 8\) != \(8, 6\)"
    with pytest.raises(UserError, match=mismatch):
        snapshot.load_state_into(other, data["G"], "G", "x.pt")
    with pytest.raises(UserError, match="G optimizer state does not fit"):
        snapshot.load_optimizer_into(torch.optim.Adam(other.parameters()), data["opt_G"], "G", "x.pt")


def test_full_disk_and_read_only_folder_are_one_line_and_keep_the_old_file(tmp_path, network_file, monkeypatch):
    path, G = network_file
    before = open(path, "rb").read()

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapshot.torch, "save", full_disk)
    with pytest.raises(UserError, match="cannot write .*No space left on device; the earlier snapshots") as info:
        snapshot.save_network_snapshot(path, G, G_KWARGS, {}, 1234)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert open(path, "rb").read() == before
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(snapshot.TEMP_PREFIX)]
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(snapshot.tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match="cannot write .*Read-only file system"):
        snapshot.save_network_snapshot(path, G, G_KWARGS, {}, 1234)


def test_real_disk_full_through_dev_full(monkeypatch, network_file):
    # The real failure: torch.save into a file the kernel refuses to grow (ENOSPC) must come back as OSError.
    path, G = network_file
    real_fdopen = os.fdopen
    monkeypatch.setattr(snapshot.os, "fdopen", lambda fd, *a, **k: real_fdopen(os.open("/dev/full", os.O_WRONLY),
                                                                            *a, **k))  # fmt: skip
    with pytest.raises(UserError, match="No space left on device"):
        snapshot.save_network_snapshot(path + ".x.pt", G, G_KWARGS, {}, 1)


def test_snapshots_follow_the_umask(network_file):
    path, _ = network_file
    mask = os.umask(0o022)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def test_names_are_unique_ordered_and_old_names_sort(tmp_path):
    tags = [snapshot.snapshot_tag(n) for n in (4, 12, 16, 999, 1000, 12288, 25_000_000)]
    assert tags[:3] == ["000000.004", "000000.012", "000000.016"] and tags[-2:] == ["000012.288", "025000.000"]
    assert len(set(tags)) == len(tags) and sorted(tags) == tags
    assert snapshot.snapshot_nimg("network-snapshot-000012.288.pt") == 12288
    assert snapshot.snapshot_nimg("training-state-000012.pt") == 12000  # the old kimg-only names
    for name in ("training-state-000010.pt", "training-state-000011.500.pt", "training-state-000011.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert os.path.basename(snapshot.latest_training_state(str(tmp_path))) == "training-state-000011.500.pt"


def test_resume_latest_says_when_it_falls_back(tmp_path):
    (tmp_path / "00000-old").mkdir()
    (tmp_path / "00000-old" / "training-state-000001.000.pt").write_bytes(b"x")
    (tmp_path / "00001-new").mkdir()
    messages: list[str] = []
    state = snapshot.resolve_resume("latest", str(tmp_path), log=messages.append)
    assert state.endswith(os.path.join("00000-old", "training-state-000001.000.pt"))
    assert len(messages) == 1 and "00001-new has no training state yet" in messages[0] and "00000-old" in messages[0]
    (tmp_path / "00001-new" / "training-state-000000.004.pt").write_bytes(b"x")
    messages.clear()
    assert "00001-new" in snapshot.resolve_resume("latest", str(tmp_path), log=messages.append) and not messages


def test_snapshots_of_the_older_layout_load_and_give_the_same_images(tmp_path):
    """Before the conditioning seam, E lived at G.encoder (keys `encoder.*`), G_kwargs had no cond_kind and the
    config said `cond: true`. Such a snapshot and training state load as the same G, optimizer state included."""
    from training.condition import Condition
    from training.config import TrainConfig

    kwargs = dict(G_KWARGS, encoder_kwargs=dict(channel_base=32, channel_max=4, feat_channels=2))
    torch.manual_seed(0)
    G = Generator(**kwargs).eval()
    old_state = {(k.removeprefix("synthesis.") if k.startswith("synthesis.encoder.") else k): v
                 for k, v in G.state_dict().items()}  # synthesis.encoder.* -> encoder.*, as written before
    assert any(k.startswith("encoder.") for k in old_state) and not any(".encoder." in k for k in old_state)
    path = str(tmp_path / "network-snapshot-000000.000.pt")
    snapshot.atomic_save({"format": snapshot.NETWORK_FORMAT, "G_kwargs": kwargs, "G_ema": old_state,
                          "config": {"cfg": "test", "cond": True}, "cur_nimg": 0}, path)  # fmt: skip
    loaded = snapshot.load_network(path)
    assert loaded.cond_kind == "inject" and loaded.needs == ("rep",)
    assert TrainConfig.from_dict(loaded.snapshot_config).design == "method"
    assert TrainConfig.from_dict({"cond": False}).design == "uncond"
    z, rep = torch.randn(2, 4), torch.rand(2, 9, 8, 8) * 2 - 1
    cond = Condition(torch.zeros(2, 257), rep)
    with torch.no_grad():
        assert torch.equal(loaded(z, cond, noise_mode="const"), G(z, cond, noise_mode="const"))
    # The parameter order did not change (E first, then the synthesis blocks, then mapping, as when E sat at
    # G.encoder), so an older optimizer state, indexed by parameter position, still lines up with the parameters.
    names = [k for k, _ in G.named_parameters()]
    encoder = [k for k in names if k.startswith("synthesis.encoder.")]
    assert encoder and names[: len(encoder)] == encoder and names[-1].startswith("mapping.")
