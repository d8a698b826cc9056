"""Hostile and malformed NVIDIA pickles against the restricted reader: tiny files that would make an ordinary
unpickler allocate gigabytes, BUILD used to tamper with allowlisted objects, structures nested thousands deep or
containing themselves, malformed constructor arguments and attributes. Each is refused in one line; the peak memory
of the reads is measured in a subprocess; a refused file leaves the process exactly as a fresh one."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from tests.training.interop.nvidia_fixtures import (
    EasyDict,
    Global,
    NvidiaPickler,
    Raw,
    dump_nvidia_pickle,
    marker_source,
    nvidia_generator_kwargs,
    tiny_networks,
    write_nvidia_pickle,
)
from torch_utils.errors import UserError
from training.interop.convert_nvidia import main as convert_main
from training.interop.init_from import read_init_source
from training.interop.nvidia_pickle import read_nvidia_networks
from training.interop.restricted_pickle import read_budget

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _ops(*parts: bytes | str) -> bytes:
    return b"".join(p.encode("latin1") if isinstance(p, str) else p for p in parts)


def _unicode(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text)) + text.encode()


def _storage_blob(numel: int, data: bytes) -> bytes:
    """A torch.save legacy blob (what a pickled storage carries) declaring `numel` floats, followed by `data`."""
    buf = io.BytesIO()
    for value in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(value, buf, protocol=2)

    class Ref(pickle._Pickler):
        def persistent_id(self, obj):
            return ("storage", Global("torch", "FloatStorage"), "0", "cpu", numel, None) if obj == "S" else None

    Ref.dispatch = dict(NvidiaPickler.dispatch)
    Ref(buf, protocol=2).dump("S")
    pickle.dump(["0"], buf, protocol=2)
    return buf.getvalue() + struct.pack("<q", numel) + data


def _bombs() -> dict[str, bytes]:
    """Tiny files that an unrestricted unpickler turns into gigabytes (measured before the fix: 2.6 and 2.9 GB)."""
    tensor = pickle.dumps(torch.zeros(2), protocol=2)
    return {
        # LONG_BINPUT 2**27: the C unpickler grows its memo array to the index (2.6 GB for a 9-byte file).
        "memo": _ops("\x80\x02N", "r", struct.pack("<I", 2**27), "."),
        # numpy.ndarray((3e8,), 'O'): 2.4 GB of object pointers before any type check (34 bytes).
        "object-ndarray": _ops("cnumpy\nndarray\nJ", struct.pack("<i", 300_000_000), "\x85", _unicode("O"),
                               "\x86R."),  # fmt: skip
        # torch.Tensor(3e8): 1.2 GB uninitialised.
        "tensor-call": _ops("ctorch\nTensor\n(J", struct.pack("<i", 300_000_000), "tR."),
        # A storage record declaring 2**32 floats (16 GB) while carrying 8 bytes.
        "storage": _ops("\x80\x02ctorch.storage\n_load_from_bytes\n", b"B",
                        struct.pack("<I", len(blob := _storage_blob(2**32, b"\0" * 8))), blob, "\x85R."),
        # 4 MB of EMPTY_SET opcodes: 216 bytes each, ~0.9 GB through an ordinary unpickler.
        "empty-sets": _ops("\x80\x04(", "\x8f" * (4 << 20), "l."),
        # A tensor's state set by BUILD (requires_grad, backward hooks).
        "tensor-build": tensor[:-1] + _ops("\x88\x89}\x87b."),
        # BUILD with slot state on an allowlisted function: would set _codecs.encode's __defaults__ for the process.
        "function-build": _ops("\x80\x02c_codecs\nencode\nN}", _unicode("__defaults__"), _unicode("x"), "\x85s",
                               "\x86b."),  # fmt: skip
    }


def _one_line(path: str) -> str:
    with pytest.raises(UserError) as info:
        read_nvidia_networks(path)
    message = str(info.value)
    assert "\n" not in message and path in message, message
    return message


@pytest.mark.parametrize("name, expected", [
    ("memo", "memo index 134217728 is larger than the file"), ("object-ndarray", "numpy.ndarray directly"),
    ("tensor-call", "torch.Tensor directly"), ("storage", "declares 17179869184 bytes but holds"),
    ("empty-sets", "memory budget"), ("tensor-build", "BUILD would set the state of a Tensor"),
    ("function-build", "BUILD would set the state of a function"),
])  # fmt: skip
def test_each_bomb_is_refused_in_one_line(tmp_path, name, expected):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(_bombs()[name])
    assert expected in _one_line(str(path))


_PROBE = r"""
import hashlib, json, resource, sys, numpy as np, torch
from training.interop import nvidia_pickle, pickle_records, restricted_pickle

def fingerprint():
    out = {}
    for module in (nvidia_pickle, pickle_records, restricted_pickle, restricted_pickle.Reader):
        for name, obj in sorted(vars(module).items()):
            if callable(obj) and hasattr(obj, "__code__"):
                out[f"{module.__name__}.{name}"] = [repr(obj.__defaults__), repr(obj.__kwdefaults__),
                                                    sorted(vars(obj))]
            elif isinstance(obj, type):
                out[f"{module.__name__}.{name}"] = sorted(vars(obj))
    out["dtype"] = [np.dtype("f8").str, np.dtype("f4").str, str(torch.get_default_dtype())]
    return out

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

warmup, hostile, good = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
try:  # imports done; warm the reader up on a harmless file it refuses (a pickle of None)
    nvidia_pickle.read_nvidia_networks(warmup)
except Exception:
    pass
base, peaks, messages = peak_mb(), {}, {}
for path in hostile:
    try:
        nvidia_pickle.read_nvidia_networks(path)
        messages[path] = "LOADED"
    except Exception as e:
        messages[path] = f"{type(e).__name__}: {e}"
    peaks[path] = peak_mb() - base
nets = nvidia_pickle.read_nvidia_networks(good)
digest = hashlib.sha256(json.dumps(nets.generator.kwargs, sort_keys=True).encode())
for key, tensor in sorted(nets.generator.state.items()):
    digest.update(key.encode() + tensor.numpy().tobytes())
print(json.dumps(dict(peaks=peaks, messages=messages, digest=digest.hexdigest(), state=fingerprint())))
"""


def _probe(hostile: list[str], good: str) -> dict:
    """Run _PROBE in a fresh process: peak memory (MB over the state after imports) of each hostile read, its
    message, then a digest of the good file's conversion and a fingerprint of the reader modules' state."""
    warmup = os.path.join(os.path.dirname(good), "none.pkl")
    with open(warmup, "wb") as f:
        f.write(pickle.dumps(None))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", _PROBE, warmup, *hostile, good], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bombs_stay_within_the_budget_and_leave_the_process_as_a_fresh_one(tmp_path):
    marker = str(tmp_path / "MARKER")
    G, D, G_ema, G_kwargs, D_kwargs = tiny_networks(resolution=16)
    good = str(tmp_path / "good.pkl")
    write_nvidia_pickle(good, marker, dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs)
    hostile = []
    for name, data in _bombs().items():
        hostile.append(str(tmp_path / f"{name}.pkl"))
        with open(hostile[-1], "wb") as f:
            f.write(data)
    after_hostile, fresh = _probe(hostile, good), _probe([], good)
    for path in hostile:
        assert after_hostile["messages"][path].startswith("UserError: refusing"), after_hostile["messages"][path]
        # Measured peak over the process's state after imports; every bomb asks for >= 0.9 GB unrestricted.
        bound = read_budget(os.path.getsize(path)) / 2**20 + 16
        assert after_hostile["peaks"][path] < bound, (path, after_hostile["peaks"][path], bound)
    assert after_hostile["peaks"][hostile[0]] < 16  # the 9-byte memo bomb: nothing to speak of
    assert after_hostile["digest"] == fresh["digest"]
    assert after_hostile["state"] == fresh["state"]
    assert not os.path.exists(marker)


# ------------------------------------------------------------------------------------------------------------------
# Malformed but allowlisted: every problem one line naming the network and the field.


def _deep(levels: int) -> Raw:
    return Raw(b"]" * levels + b"a" * (levels - 1))


def _cyclic(index: int) -> Raw:
    return Raw(b"]r" + struct.pack("<I", index) + b"j" + struct.pack("<I", index) + b"a")


def _write_variant(tmp_path, name: str, change, kwargs_change=None) -> str:
    G, D, G_ema, G_kwargs, D_kwargs = tiny_networks(resolution=16)
    change(G_ema)
    kwargs = nvidia_generator_kwargs(G_kwargs)
    if kwargs_change is not None:
        kwargs_change(kwargs)
    path = str(tmp_path / f"{name}.pkl")
    data = dump_nvidia_pickle({"G_ema": G_ema}, marker_source(str(tmp_path / "MARKER")), {id(G_ema): kwargs})
    with open(path, "wb") as f:
        f.write(data)
    return path


def _set(module_path: str, name: str, value):
    def change(G):
        setattr(G.get_submodule(module_path) if module_path else G, name, value)

    return change


def _int_parameter_name(G):
    G.synthesis.b4.torgb._parameters[0] = G.synthesis.b4.torgb._parameters.pop("bias")


@pytest.mark.parametrize("name, change, kwargs_change, expected", [
    ("kwarg-key", None, lambda k: k.update({5: 1}), "the constructor arguments must be a dict with string keys"),
    ("kwarg-type", None, lambda k: k.update(z_dim="eight"), "G_ema: z_dim = 'eight' is not a whole number"),
    ("kwarg-huge", None, lambda k: k.update(img_resolution=10**5000),
     "G_ema: img_resolution = a value of type int is not"),
    ("mapping-kwargs", None, lambda k: k.update(mapping_kwargs=[1, 2]),
     "G_ema: mapping_kwargs must be a dict with string keys, not [1, 2]"),
    ("filter-array", None, lambda k: k["synthesis_kwargs"].update(resample_filter=torch.ones(4).numpy()),
     "resample_filter=a value of type NumericArray is not supported"),
    ("beta-text", _set("mapping", "w_avg_beta", "x"), None, "G_ema.mapping: w_avg_beta = 'x' is not a finite"),
    ("beta-nan", _set("mapping", "w_avg_beta", float("nan")), None, "w_avg_beta = nan is not a finite number"),
    ("gain-inf", _set("mapping.fc0", "bias_gain", float("inf")), None, "bias_gain (lr_multiplier) = inf"),
    ("clamp-list", _set("synthesis.b8.conv0", "conv_clamp", [1]), None,
     "G_ema.synthesis.b8.conv0: conv_clamp = [1] is not a finite"),
    ("fp16-text", _set("synthesis.b8", "use_fp16", "yes"), None, "use_fp16 = 'yes' is not true or false"),
    ("param-name", _int_parameter_name, None, "G_ema: parameter name 0 in synthesis.b4.torgb is not a name"),
    ("deep", _set("mapping", "deep", _deep(5000)), None, "the pickle's G_ema.mapping.attrs['deep']"),
    ("cyclic", _set("synthesis", "loop", _cyclic(60000)), None, "contains itself"),
    ("nan-weight", lambda G: G.synthesis.b8.conv1.weight.data.fill_(float("nan")), None,
     "G_ema: tensor synthesis.b8.conv1.weight holds NaN or inf: the source network is broken"),
])  # fmt: skip
def test_malformed_networks_are_one_line_naming_the_field(tmp_path, name, change, kwargs_change, expected):
    path = _write_variant(tmp_path, name, change or (lambda G: None), kwargs_change)
    if name == "cyclic":
        assert 60000 < os.path.getsize(path)  # the raw memo index is one the file could have stored
    message = _one_line(path)
    assert expected in message, message
    assert "Traceback" not in message


def test_a_broken_or_non_finite_d_is_left_out_and_conversion_goes_on(tmp_path):
    marker = str(tmp_path / "MARKER")
    G, D, G_ema, G_kwargs, D_kwargs = tiny_networks(resolution=16, seed=5)
    D.b4.mbstd.group_size = "two"
    broken = str(tmp_path / "broken-d.pkl")
    write_nvidia_pickle(broken, marker, dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs)
    nets = read_nvidia_networks(broken)
    assert nets.D is None and "group_size = 'two'" in nets.D_refused
    D.b4.mbstd.group_size = 2
    D.b8.conv0.weight.data[0, 0, 0, 0] = float("inf")
    nan_d = str(tmp_path / "nan-d.pkl")
    write_nvidia_pickle(nan_d, marker, dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs)
    result = CliRunner().invoke(convert_main, [nan_d, str(tmp_path / "out.pt")])
    assert result.exit_code == 0, result.output
    assert "D left out: D: tensor b8.conv0.weight holds NaN or inf" in result.output
    assert "D" not in torch.load(tmp_path / "out.pt", weights_only=True)
    # A pickle whose 'D' is not a network at all: left out as well.
    other = str(tmp_path / "list-d.pkl")
    write_nvidia_pickle(other, marker, dict(G=G, G_ema=G_ema), G_kwargs, D_kwargs, extra={"D": [1, 2]})
    assert "'D' is a list" in read_nvidia_networks(other).D_refused


def test_init_from_a_non_finite_network_blames_the_source(tmp_path):
    G, D, G_ema, G_kwargs, D_kwargs = tiny_networks(resolution=16, seed=6)
    G_ema.mapping.fc0.weight.data[0, 0] = float("nan")
    path = str(tmp_path / "diverged.pkl")
    write_nvidia_pickle(path, str(tmp_path / "MARKER"), dict(G_ema=G_ema), G_kwargs, D_kwargs)
    with pytest.raises(UserError) as info:
        read_init_source(path)
    message = str(info.value)
    assert "holds NaN or inf: the source network is broken" in message and "learning rate" not in message


def test_an_ordinary_easydict_kwargs_dict_still_reads(tmp_path):
    # The reader's rules must not refuse what NVIDIA's own pickles contain: EasyDict via NEWOBJ, OrderedDicts of
    # parameters, sets of buffer names, numpy float64 gains, protocol 2 to 4.
    G, D, G_ema, G_kwargs, D_kwargs = tiny_networks(resolution=16, seed=7)
    for protocol in (2, 4):
        path = str(tmp_path / f"p{protocol}.pkl")
        write_nvidia_pickle(path, str(tmp_path / "MARKER"), dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs,
                            protocol=protocol, extra={"training_set_kwargs": EasyDict(path="/x", xflip=False)})
        assert read_nvidia_networks(path).present() == ["G", "D", "G_ema"]
    with open(path, "rb") as f:
        assert b"EasyDict" in f.read()
