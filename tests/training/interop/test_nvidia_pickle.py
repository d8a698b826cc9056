"""NVIDIA StyleGAN2 network pickles: read as data (never executed), same outputs as the state-dict path, hostile
and malformed files refused with one line while a marker file proves that nothing in them ran."""

from __future__ import annotations

import builtins
import collections
import json
import os
import pickle
import subprocess

import pytest
import torch
from click.testing import CliRunner

from tests.training.interop.nvidia_fixtures import (
    RECONSTRUCT,
    EasyDict,
    Global,
    dump_nvidia_pickle,
    marker_source,
    tiny_networks,
    write_nvidia_pickle,
)
from torch_utils.errors import UserError
from training.discriminator import Discriminator
from training.interop.convert_nvidia import main as convert_main
from training.interop.nvidia_pickle import read_nvidia_networks
from training.networks import Generator
from training.run import snapshot


@pytest.fixture()
def marker(tmp_path):
    path = tmp_path / "MARKER-code-ran"
    yield str(path)
    assert not path.exists(), "code embedded in a pickle was executed"


@pytest.fixture(scope="module")
def nets():
    return tiny_networks(resolution=16)


def by_state_dict(cls, kwargs: dict, module: torch.nn.Module) -> torch.nn.Module:
    """The reference path: this project's constructor + load_state_dict of the same weights."""
    net = cls(**kwargs)
    net.load_state_dict(module.state_dict())
    return net.eval().requires_grad_(False)


@pytest.mark.parametrize("style, protocol", [("ada", 3), ("ada", 4), ("sg3", 4)])
def test_pickle_loads_as_data_with_bitwise_equal_outputs(tmp_path, marker, nets, style, protocol):
    G, D, G_ema, G_kwargs, D_kwargs = nets
    path = str(tmp_path / "network-snapshot-000100.pkl")
    G_ema.mapping.w_avg_beta = 0.998 if style == "sg3" else 0.995  # the two code bases' defaults
    write_nvidia_pickle(path, marker, dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs, style=style,
                        protocol=protocol)
    with open(path, "rb") as f:
        assert b"torch_utils.persistence" in f.read()  # really the persistence layout

    loaded = read_nvidia_networks(path)
    assert loaded.present() == ["G", "D", "G_ema"]
    expected_G = dict(G_kwargs, encoder_kwargs=None,
                      mapping_kwargs=dict(num_layers=2, lr_multiplier=0.01, w_avg_beta=G_ema.mapping.w_avg_beta))
    assert loaded.G_ema.kwargs == expected_G and loaded.D.kwargs == dict(D_kwargs, mbstd_num_channels=1)
    G_pkl = snapshot.load_network(path)  # G_ema through load_network
    G_ref = by_state_dict(Generator, G_kwargs, G_ema)
    z = torch.randn(4, G_kwargs["z_dim"], generator=torch.Generator().manual_seed(0))
    for noise_mode in ("const", "none"):
        assert torch.equal(G_pkl(z, noise_mode=noise_mode), G_ref(z, noise_mode=noise_mode))
    assert torch.equal(G_pkl(z, truncation_psi=0.5, noise_mode="const"), G_ref(z, truncation_psi=0.5,
                                                                              noise_mode="const"))
    assert not torch.equal(G_pkl(z, noise_mode="const"), by_state_dict(Generator, G_kwargs, G)(z, noise_mode="const"))
    D_pkl = by_state_dict(Discriminator, loaded.D.kwargs, _module(Discriminator, loaded.D))
    img = torch.randn(4, 3, 16, 16)
    assert torch.equal(D_pkl(img), by_state_dict(Discriminator, D_kwargs, D)(img))
    # The embedded source really would have run code: executing it (here, on purpose) writes the marker.
    exec(marker_source(marker), {})
    assert os.path.exists(marker)
    os.remove(marker)


def _module(cls, converted) -> torch.nn.Module:
    net = cls(**converted.kwargs)
    net.load_state_dict(converted.state)
    return net


def test_generator_only_pickle_and_g_fallback(tmp_path, marker, nets):
    G, D, G_ema, G_kwargs, D_kwargs = nets
    path = str(tmp_path / "g-only.pkl")
    write_nvidia_pickle(path, marker, dict(G=G), G_kwargs, D_kwargs)  # no G_ema: load_network takes G
    z = torch.randn(2, G_kwargs["z_dim"])
    assert torch.equal(snapshot.load_network(path)(z, noise_mode="const"),
                       by_state_dict(Generator, G_kwargs, G)(z, noise_mode="const"))


def _one_line_refusal(path: str) -> str:
    with pytest.raises(UserError) as info:
        snapshot.load_network(path)
    message = str(info.value)
    assert "\n" not in message and path in message
    return message


class _Payload:
    """An object whose unpickling would run `call(*args)`."""

    def __init__(self, call, args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(marker: str) -> dict:
    return {
        "system": _Payload(os.system, (f"touch {marker}",)),
        "builtins.eval": _Payload(builtins.eval, (f"open({marker!r}, 'w')",)),
        "subprocess.Popen": _Payload(subprocess.Popen, (["touch", marker],)),
    }


@pytest.mark.parametrize("name", ["system", "builtins.eval", "subprocess.Popen"])
def test_reduce_payloads_are_refused_naming_the_global(tmp_path, marker, nets, name):
    payload = _payloads(marker)[name]
    plain = str(tmp_path / "plain.pkl")
    with open(plain, "wb") as f:
        pickle.dump({"G_ema": payload}, f)
    assert name in _one_line_refusal(plain) and "nothing in the file was run" in _one_line_refusal(plain)
    # Hidden deep inside a network: an attribute of the synthesis block, behind the persistence reconstructor.
    G, D, G_ema, G_kwargs, D_kwargs = nets
    hidden = str(tmp_path / "hidden.pkl")
    G_ema.synthesis.b8.payload = payload
    try:
        write_nvidia_pickle(hidden, marker, dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs)
    finally:
        del G_ema.synthesis.b8.payload
    assert name in _one_line_refusal(hidden)


def test_the_payloads_would_run_when_unpickled(tmp_path):
    # Makes the marker checks meaningful without unpickling anything here: the pickled bytes call the payload's
    # global, and that call (what an unrestricted unpickler would do on load) writes the marker.
    marker = tmp_path / "ran"
    payload = _payloads(str(marker))["builtins.eval"]
    assert b"builtins" in pickle.dumps(payload) and b"eval" in pickle.dumps(payload)
    call, args = payload.__reduce__()
    call(*args)
    assert marker.exists()


def _write(path, data: dict, marker: str) -> str:
    with open(path, "wb") as f:
        f.write(dump_nvidia_pickle(data, marker_source(marker)))
    return str(path)


def test_unknown_globals_are_refused(tmp_path, marker):
    path = tmp_path / "unknown.pkl"
    for obj, name in ((torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),  # a plain torch.save-style module
                      (collections.Counter(a=1), "collections.Counter")):
        path.write_bytes(pickle.dumps({"G_ema": obj}))
        assert name in _one_line_refusal(str(path))
    tf = _write(path, {"G_ema": Global("dnnlib.tflib.network", "Network")}, marker)  # a TensorFlow StyleGAN pickle
    message = _one_line_refusal(tf)
    assert "dnnlib.tflib.network.Network" in message and "TensorFlow" in message


def test_hostile_storage_bytes_are_refused(tmp_path, marker):
    # torch.storage._load_from_bytes carrying a payload instead of a storage: read with weights_only, refused.
    inner = pickle.dumps(_payloads(marker)["system"], protocol=2)
    data = {"G_ema": _Reduce(Global("torch.storage", "_load_from_bytes"), (inner,))}
    message = _one_line_refusal(_write(tmp_path / "storage.pkl", data, marker))
    assert "posix.system (inside a tensor storage record)" in message or "os.system" in message


class _Reduce:
    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_malformed_pickles_are_one_line_errors(tmp_path, marker, nets):
    G, D, G_ema, G_kwargs, D_kwargs = nets
    good = str(tmp_path / "good.pkl")
    write_nvidia_pickle(good, marker, dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs)
    raw = open(good, "rb").read()
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(raw[: len(raw) // 2])
    assert "truncated or corrupt" in _one_line_refusal(str(truncated))
    no_g = str(tmp_path / "d-only.pkl")
    write_nvidia_pickle(no_g, marker, dict(D=D), G_kwargs, D_kwargs)
    assert "neither G_ema nor G" in _one_line_refusal(no_g)
    not_dict = _write(tmp_path / "list.pkl", [1, 2], marker)
    assert "expected a dict of networks" in _one_line_refusal(not_dict)
    meta = dict(type="class", version=5, module_src=marker_source(marker), class_name="Generator", state={})
    old = _write(tmp_path / "v5.pkl", {"G_ema": _Reduce(RECONSTRUCT, (meta,))}, marker)
    assert "version 5" in _one_line_refusal(old)
    assert "not found" in _one_line_refusal(str(tmp_path / "missing.pkl"))


def _variant(tmp_path, marker, nets, name: str, **changes) -> str:
    """A pickle whose G_ema constructor kwargs differ from a supported StyleGAN2 by `changes`."""
    G, D, G_ema, G_kwargs, D_kwargs = nets
    path = str(tmp_path / f"{name}.pkl")
    from tests.training.interop import nvidia_fixtures

    kwargs = nvidia_fixtures.nvidia_generator_kwargs(G_kwargs)
    for key, value in changes.items():
        target = kwargs["synthesis_kwargs"] if key in ("architecture", "resample_filter") else kwargs
        target[key] = value
    with open(path, "wb") as f:
        f.write(dump_nvidia_pickle({"G_ema": G_ema}, marker_source(marker), {id(G_ema): kwargs}))
    return path


def test_unsupported_networks_are_refused_with_the_reason(tmp_path, marker, nets):
    assert "class-conditional (c_dim=10)" in _one_line_refusal(_variant(tmp_path, marker, nets, "cond", c_dim=10))
    assert "architecture='resnet'" in _one_line_refusal(_variant(tmp_path, marker, nets, "res", architecture="resnet"))
    assert "resample_filter" in _one_line_refusal(_variant(tmp_path, marker, nets, "f", resample_filter=[1, 2, 1]))
    assert "unknown NVIDIA option magnitude_ema_beta" in _one_line_refusal(
        _variant(tmp_path, marker, nets, "opt", magnitude_ema_beta=0.999))
    # A StyleGAN3 t/r generator: its synthesis network is an input layer plus L<i>_<size>_<channels> layers.
    G, D, G_ema, G_kwargs, D_kwargs = nets
    sg3 = Generator(**G_kwargs)
    sg3.synthesis = SynthesisNetwork()
    path = str(tmp_path / "sg3r.pkl")
    write_nvidia_pickle(path, marker, dict(G_ema=sg3), G_kwargs, D_kwargs)
    assert "StyleGAN3 (config t or r)" in _one_line_refusal(path)
    # A different layout behind supported-looking kwargs: the key/shape check names the difference.
    wrong = str(tmp_path / "wrong.pkl")
    other = Generator(**dict(G_kwargs, w_dim=8))
    write_nvidia_pickle(wrong, marker, dict(G_ema=other), G_kwargs, D_kwargs)
    assert "does not match this project's StyleGAN2 layout" in _one_line_refusal(wrong)


class SynthesisInput(torch.nn.Module):
    pass


class SynthesisNetwork(torch.nn.Module):
    """Shaped like StyleGAN3's synthesis network (children only; never run)."""

    def __init__(self) -> None:
        super().__init__()
        self.input = SynthesisInput()
        self.L0_36_512 = torch.nn.Linear(1, 1)


def test_converter_writes_a_safe_network_snapshot(tmp_path, marker, nets):
    G, D, G_ema, G_kwargs, D_kwargs = nets
    pkl, out = str(tmp_path / "ffhq.pkl"), str(tmp_path / "ffhq.pt")
    write_nvidia_pickle(pkl, marker, dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs, extra={
        "training_set_kwargs": EasyDict(path="/data/ffhq.zip")})
    result = CliRunner().invoke(convert_main, [pkl, out])
    assert result.exit_code == 0, result.output
    assert "G_ema" in result.output and "16x16" in result.output
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == snapshot.NETWORK_FORMAT and set(raw) >= {"G", "D", "D_kwargs", "G_ema", "G_kwargs"}
    z = torch.randn(3, G_kwargs["z_dim"])
    assert torch.equal(snapshot.load_network(out)(z, noise_mode="const"), snapshot.load_network(pkl)(z,
                       noise_mode="const"))  # fmt: skip
    bad = CliRunner().invoke(convert_main, [str(tmp_path / "missing.pkl"), str(tmp_path / "new.pt")])
    assert bad.exit_code != 0 and "not found" in bad.output and "Traceback" not in bad.output


def test_generate_and_calc_metrics_take_a_pkl(tmp_path, marker, nets):
    import calc_metrics
    import generate
    from tests.conftest import write_image_dataset

    G, D, G_ema, G_kwargs, D_kwargs = nets
    pkl, pt = str(tmp_path / "ffhq.pkl"), str(tmp_path / "ffhq.pt")
    write_nvidia_pickle(pkl, marker, dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs)
    assert CliRunner().invoke(convert_main, [pkl, pt]).exit_code == 0
    grids = []
    for network in (pkl, pt):
        out = tmp_path / ("out-" + os.path.basename(network))
        result = CliRunner().invoke(generate.cli, ["images", "--network", network, "--outdir", str(out), "--seeds",
                                                   "0-3", "--device", "cpu", "--quiet"])
        assert result.exit_code == 0, result.output
        (png,) = out.glob("grid-*.png")
        grids.append(png.read_bytes())
    assert grids[0] == grids[1]
    data = str(tmp_path / "reals.zip")
    write_image_dataset(data, num=16, resolution=16)
    results = []
    for network in (pkl, pt):
        result = CliRunner().invoke(calc_metrics.main, ["--network", network, "--metrics", "kid1k", "--data", data,
                                                        "--random-features", "--workers", "0", "--cache-dir",
                                                        str(tmp_path / f"cache{len(results)}"), "--quiet"])  # fmt: skip
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.output.strip().splitlines()[-1])["results"])
    assert results[0] == results[1] and set(results[0]) == {"kid"}


def test_a_d_it_cannot_map_is_left_out_not_fatal(tmp_path, marker):
    # TensorFlow-converted discriminators compute minibatch-stddev over the whole batch (group_size None).
    G, D, G_ema, G_kwargs, D_kwargs = tiny_networks(resolution=16, seed=3)
    D.b4.mbstd.group_size = None
    pkl = str(tmp_path / "tf-converted.pkl")
    write_nvidia_pickle(pkl, marker, dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs)
    nets = read_nvidia_networks(pkl)
    assert nets.D is None and "over the whole batch" in nets.D_refused and nets.present() == ["G", "G_ema"]
    result = CliRunner().invoke(convert_main, [pkl, str(tmp_path / "out.pt")])
    assert result.exit_code == 0 and "D left out" in result.output
    assert "D" not in torch.load(tmp_path / "out.pt", weights_only=True)
