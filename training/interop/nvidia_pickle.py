"""Read NVIDIA StyleGAN2 network pickles (stylegan2-ada-pytorch, and stylegan3 `--cfg=stylegan2`) without running them.

Such a `.pkl` is a plain pickle of a dict {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} whose networks
were written by NVIDIA's `torch_utils.persistence`: every network object is stored as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {type: 'class', version: 6, module_src: the full
source text of the defining module, class_name, state: the object's __dict__}. Loading it with NVIDIA's code
executes module_src. This reader never does: a restricted unpickler resolves only an allowlist of globals (tensor
and storage rebuild functions, OrderedDict, set, numpy scalars/arrays/dtypes, dnnlib's EasyDict, and the persistence
reconstructor, replaced by a function that records meta as data). Any other global is refused with one line naming
it, before anything it names is called.

Each recorded network is then mapped to this project's constructor kwargs and state dict: the module tree in
state['_modules'] / '_parameters' / '_buffers' flattens to the same key names this project uses (training/networks.py
follows StyleGAN2's layout one to one); the constructor kwargs come from state['_init_kwargs'] plus the few attributes
whose class defaults differ between the two NVIDIA code bases (conv_clamp, fp16 blocks, w_avg_beta, mbstd group).
Supported: unconditional G / G_ema (skip architecture) and D (resnet). Refused with one line: conditional networks
(c_dim > 0), StyleGAN3 t/r generators, other architectures, TensorFlow pickles.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
import pickle
import re
from typing import Any

import numpy as np
import torch

from torch_utils.errors import UserError, first_line

PERSISTENCE_VERSION = 6  # torch_utils.persistence._version in both NVIDIA code bases
SUPPORTED = "unconditional StyleGAN2 networks from stylegan2-ada-pytorch or stylegan3 --cfg=stylegan2"


class RefusedGlobal(Exception):
    """Raised inside the unpickler for a global outside the allowlist (turned into a one-line UserError)."""


# ----------------------------------------------------------------------------------------------------------------
# Safe stand-ins for the globals a network pickle needs. Each checks its arguments and builds plain data.


@dataclasses.dataclass
class PersistentRecord:
    """One NVIDIA persistent object as data: its class name, constructor args and pickled __dict__ (never run)."""

    class_name: str
    module_src_sha1: str  # identifies the embedded source (which is never executed)
    init_args: tuple
    init_kwargs: dict
    attrs: dict  # the rest of the object's __dict__ (plain values)
    parameters: dict[str, torch.Tensor | None]
    buffers: dict[str, torch.Tensor | None]
    modules: dict[str, PersistentRecord | None]
    non_persistent: frozenset = frozenset()

    def child(self, name: str) -> PersistentRecord | None:
        """The submodule record `name` (None if absent)."""
        return self.modules.get(name)

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flatten to module.state_dict() key names: parameters, persistent buffers, then children."""
        out = {}
        for name, tensor in self.parameters.items():
            if tensor is not None:
                out[prefix + name] = tensor
        for name, tensor in self.buffers.items():
            if tensor is not None and name not in self.non_persistent:
                out[prefix + name] = tensor
        for name, module in self.modules.items():
            if module is not None:
                out.update(module.state_dict(f"{prefix}{name}."))
        return out


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict with attribute access): kept as a plain dict."""

    def __setstate__(self, state: Any) -> None:  # dict subclasses may carry an (empty) __dict__ state
        if state:
            raise RefusedGlobal("dnnlib.util.EasyDict with object state")


def _plain(value: Any) -> Any:
    """EasyDict / OrderedDict / numpy scalars -> builtin dicts, lists and numbers (recursively)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Replaces NVIDIA's reconstructor: validates meta and keeps it as data; module_src is only hashed."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UserError("persistent object with an unknown layout (expected meta type 'class')")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise UserError(f"persistence format version {meta.get('version')!r}; only {PERSISTENCE_VERSION} is known")
    src, class_name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
    if not isinstance(src, str) or not isinstance(class_name, str) or not isinstance(state, dict):
        raise UserError("persistent object without module_src / class_name / state")
    state = dict(state)
    parameters = state.pop("_parameters", {}) or {}
    buffers = state.pop("_buffers", {}) or {}
    modules = state.pop("_modules", {}) or {}
    non_persistent = state.pop("_non_persistent_buffers_set", set()) or set()
    for table, kind in ((parameters, torch.Tensor), (buffers, torch.Tensor), (modules, PersistentRecord)):
        if not isinstance(table, dict) or any(v is not None and not isinstance(v, kind) for v in table.values()):
            raise UserError(f"persistent {class_name}: its parameters/buffers/modules are not tensors and modules")
    init_kwargs = state.pop("_init_kwargs", {})
    init_args = state.pop("_init_args", ())
    if not isinstance(init_kwargs, dict) or not isinstance(init_args, tuple):
        raise UserError(f"persistent {class_name}: constructor arguments are not a tuple and a dict")
    return PersistentRecord(
        class_name=class_name, module_src_sha1=hashlib.sha1(src.encode()).hexdigest(), init_args=_plain(init_args),
        init_kwargs=_plain(init_kwargs), attrs=state,
        parameters=dict(parameters), buffers=dict(buffers), modules=dict(modules),
        non_persistent=frozenset(non_persistent),
    )  # fmt: skip


def _load_storage_bytes(data: Any) -> Any:
    """torch.storage._load_from_bytes: a tensor storage serialised with torch.save; read with weights_only=True."""
    if not isinstance(data, (bytes, bytearray)):
        raise UserError("tensor storage record is not bytes")
    try:
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global: name it like the outer unpickler does
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise RefusedGlobal(f"{found.group(1)} (inside a tensor storage record)" if found else
                            "an unknown global inside a tensor storage record") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UserError("tensor storage record holds something other than a storage")
    return storage


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 after checking every argument is plain data (no hooks, no metadata)."""
    if not isinstance(storage, torch.TypedStorage) or not isinstance(offset, int):
        raise UserError("tensor record with a malformed storage or offset")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and all(isinstance(v, int) for v in size + stride)):
        raise UserError("tensor record with a malformed size or stride")
    if hooks or metadata:
        raise UserError("tensor record with backward hooks or metadata (a network pickle has neither)")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, state: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_parameter(_with_state): the parameter's values as a plain tensor."""
    if not isinstance(data, torch.Tensor) or hooks or state:
        raise UserError("parameter record is not a plain tensor")
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """torch._tensor._rebuild_from_type_v2 for plain tensors / parameters only."""
    if new_type not in (torch.Tensor, torch.nn.Parameter) or func not in (_rebuild_tensor_v2, _rebuild_parameter):
        raise UserError("tensor record of an unsupported tensor type")
    if state or not isinstance(args, tuple):
        raise UserError("tensor record with object state")
    return func(*args)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy.core.multiarray.scalar for numeric dtypes (the gains NVIDIA stores as numpy floats)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UserError("numpy scalar record of a non-numeric type")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """numpy.core.multiarray._reconstruct for plain ndarrays; the following BUILD fills it (numeric data only)."""
    if subtype is not np.ndarray:
        raise UserError("numpy array record of a subclass")
    return _NumericArray(shape)


class _NumericArray(np.ndarray):
    """An ndarray whose pickled state (BUILD) is accepted only for numeric dtypes."""

    def __new__(cls, shape: Any) -> _NumericArray:
        return np.ndarray.__new__(cls, (0,), np.uint8)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5 or not isinstance(state[2], np.dtype):
            raise UserError("numpy array record with a malformed state")
        if state[2].hasobject or not isinstance(state[4], bytes):
            raise UserError("numpy array record of a non-numeric type")
        super().__setstate__(state)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes (latin1 text -> bytes)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UserError("bytes record in an unexpected encoding")
    return text.encode("latin1")


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}
for _numpy_module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x / 2.x pickles
    ALLOWED_GLOBALS[(_numpy_module, "scalar")] = _numpy_scalar
    ALLOWED_GLOBALS[(_numpy_module, "_reconstruct")] = _numpy_reconstruct

HINTS = {
    "dnnlib.tflib.network": "this is a TensorFlow StyleGAN pickle; only PyTorch pickles (stylegan2-ada-pytorch, "
    "stylegan3) are read",
}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only ALLOWED_GLOBALS and has no persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("a persistent id (torch.save-style storage reference)")


def read_pickle(path: str) -> Any:
    """Unpickle `path` through RestrictedUnpickler; every failure is a one-line UserError (nothing in it runs)."""
    if not os.path.isfile(path):
        raise UserError(f"network pickle not found: {path}")
    with open(path, "rb") as f:
        data = f.read()  # one read: the bytes are parsed from memory, the path is never reopened
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as e:
        name = str(e)
        hint = next((h for prefix, h in HINTS.items() if name.startswith(prefix)), None)
        hint = hint or f"a StyleGAN2 network pickle never needs it; only {SUPPORTED} are read"
        raise UserError(f"refusing {path}: it calls {name} ({hint}); nothing in the file was run") from None
    except UserError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    except Exception as e:  # truncated/corrupt: EOFError, UnpicklingError, ValueError, RuntimeError, ...
        raise UserError(f"cannot read NVIDIA network pickle {path} (truncated or corrupt): {first_line(e)}") from None


# ----------------------------------------------------------------------------------------------------------------
# Records -> this project's constructor kwargs and state dicts.


@dataclasses.dataclass
class ConvertedNetwork:
    """A network from the pickle in this project's terms: `Generator(**kwargs)` / `Discriminator(**kwargs)`."""

    kwargs: dict
    state: dict[str, torch.Tensor]


@dataclasses.dataclass
class NvidiaNetworks:
    """What a pickle holds, converted: G, D, G_ema (None when absent)."""

    path: str
    G: ConvertedNetwork | None
    D: ConvertedNetwork | None
    G_ema: ConvertedNetwork | None
    D_refused: str | None = None  # why the pickle's D could not be mapped (G / G_ema are still usable)

    @property
    def generator(self) -> ConvertedNetwork:
        """G_ema, or G when the pickle has no G_ema."""
        return self.G_ema if self.G_ema is not None else self.G

    def present(self) -> list[str]:
        """Names of the networks the pickle provided, in G, D, G_ema order."""
        return [k for k in ("G", "D", "G_ema") if getattr(self, k) is not None]


G_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
D_POSITIONAL = ("c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
                "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs")
FIR = [1, 3, 3, 1]
# NVIDIA options whose values this project's layers hard-wire: {name: the only accepted value}. Options that only
# change memory layout or the fused/unfused modconv choice (same numbers up to float rounding) are ignored.
G_FIXED = {"architecture": "skip", "resample_filter": FIR, "use_noise": True, "activation": "lrelu", "kernel_size": 3}
G_IGNORED = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp", "fp16_channels_last",
             "fused_modconv_default"}
MAPPING_FIXED = {"activation": "lrelu"}
MAPPING_IGNORED = {"num_layers", "lr_multiplier", "w_avg_beta", "embed_features", "layer_features"}
D_FIXED = {"architecture": "resnet", "resample_filter": FIR, "activation": "lrelu"}
D_IGNORED = {"fp16_channels_last", "freeze_layers", "mbstd_group_size", "mbstd_num_channels"}


def _init_kwargs(record: PersistentRecord, positional: tuple[str, ...], what: str) -> dict:
    if len(record.init_args) > len(positional):
        raise UserError(f"{what}: {len(record.init_args)} positional constructor arguments, expected at most "
                        f"{len(positional)}")
    return dict(zip(positional, record.init_args), **record.init_kwargs)


def _check_options(options: dict, fixed: dict, ignored: set, what: str) -> None:
    for key, value in options.items():
        if key in fixed:
            expected = fixed[key]
            if (list(value) if isinstance(value, (list, tuple)) else value) != expected and value is not None:
                raise UserError(f"{what}: {key}={value!r} is not supported (this project's StyleGAN2 uses "
                                f"{expected!r}); only {SUPPORTED} are read")
        elif key not in ignored:
            raise UserError(f"{what}: unknown NVIDIA option {key}={value!r}; only {SUPPORTED} are read")


def _attr(record: PersistentRecord | None, name: str, what: str) -> Any:
    if record is None or name not in record.attrs:
        raise UserError(f"{what}: the pickled network has no '{name}' attribute where StyleGAN2 keeps one")
    return _plain(record.attrs[name])


def _one_value(values: list, what: str, name: str) -> Any:
    if len(set(values)) != 1:
        raise UserError(f"{what}: layers disagree on {name} ({sorted(set(map(str, values)))}); not supported")
    return values[0]


def _blocks(record: PersistentRecord, what: str) -> list[PersistentRecord]:
    names = [k for k, v in record.modules.items() if v is not None]
    if "input" in names or any(re.fullmatch(r"L\d+_\d+_\d+", k) for k in names):
        raise UserError(f"{what} is a StyleGAN3 (config t or r) synthesis network; only {SUPPORTED} are read")
    if not names or any(not re.fullmatch(r"b\d+", k) for k in names):
        raise UserError(f"{what} has blocks {names}, not StyleGAN2's b4, b8, ...; only {SUPPORTED} are read")
    return [record.modules[k] for k in names]


def _check_conditioning(kwargs: dict, what: str) -> None:
    c_dim = kwargs.get("c_dim", 0)
    if c_dim:
        raise UserError(f"{what} is class-conditional (c_dim={c_dim}); this project's networks take no class label, "
                        f"so only unconditional NVIDIA networks are read")


def generator_from_record(record: PersistentRecord, what: str = "G") -> ConvertedNetwork:
    """Map an NVIDIA Generator record to this project's Generator kwargs + state dict (layout checked)."""
    if record.class_name != "Generator":
        raise UserError(f"{what} is a persistent '{record.class_name}', not a StyleGAN2 'Generator'")
    kwargs = _init_kwargs(record, G_POSITIONAL, what)
    _check_conditioning(kwargs, what)
    synthesis, mapping = record.child("synthesis"), record.child("mapping")
    if synthesis is None or mapping is None:
        raise UserError(f"{what} has no synthesis / mapping network")
    blocks = _blocks(synthesis, f"{what}.synthesis")
    # ADA passes synthesis_kwargs as one dict; stylegan3 passes them as extra Generator kwargs.
    synthesis_options = dict(kwargs.pop("synthesis_kwargs", {}) or {})
    mapping_options = dict(kwargs.pop("mapping_kwargs", {}) or {})
    core = {k: kwargs.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels") if k in kwargs}
    synthesis_options.update(kwargs)
    missing = sorted({"z_dim", "w_dim", "img_resolution", "img_channels"} - set(core))
    if missing:
        raise UserError(f"{what}: constructor arguments lack {', '.join(missing)}")
    _check_options(synthesis_options, G_FIXED, G_IGNORED, what)
    _check_options(mapping_options, MAPPING_FIXED, MAPPING_IGNORED, f"{what}.mapping")
    if mapping_options.get("layer_features") not in (None, core["w_dim"]):
        raise UserError(f"{what}.mapping: layer_features={mapping_options['layer_features']} differs from w_dim")
    # Values whose class defaults differ between the two NVIDIA code bases come from the pickled attributes.
    layers = [blk.child(n) for blk in blocks for n in ("conv0", "conv1", "torgb") if blk.child(n) is not None]
    conv_clamp = _one_value([_attr(layer, "conv_clamp", what) for layer in layers], what, "conv_clamp")
    num_fp16_res = sum(bool(_attr(blk, "use_fp16", what)) for blk in blocks)
    fc0 = mapping.child("fc0")
    out = dict(
        z_dim=int(core["z_dim"]), w_dim=int(core["w_dim"]), img_resolution=int(core["img_resolution"]),
        img_channels=int(core["img_channels"]),
        mapping_kwargs=dict(num_layers=int(_attr(mapping, "num_layers", what)),
                            lr_multiplier=float(_attr(fc0, "bias_gain", what)),
                            w_avg_beta=float(_attr(mapping, "w_avg_beta", what))),
        synthesis_kwargs=dict(channel_base=int(synthesis_options.get("channel_base", 32768)),
                              channel_max=int(synthesis_options.get("channel_max", 512)),
                              num_fp16_res=num_fp16_res, conv_clamp=conv_clamp),
        encoder_kwargs=None,
    )  # fmt: skip
    state = record.state_dict()
    _check_layout("Generator", out, state, what, fp16=[bool(_attr(blk, "use_fp16", what)) for blk in blocks])
    return ConvertedNetwork(out, state)


def discriminator_from_record(record: PersistentRecord, what: str = "D") -> ConvertedNetwork:
    """Map an NVIDIA Discriminator record to this project's Discriminator kwargs + state dict (layout checked)."""
    if record.class_name != "Discriminator":
        raise UserError(f"{what} is a persistent '{record.class_name}', not a StyleGAN2 'Discriminator'")
    kwargs = _init_kwargs(record, D_POSITIONAL, what)
    _check_conditioning(kwargs, what)
    options = {k: v for k, v in kwargs.items() if k not in ("c_dim", "img_resolution", "img_channels", "channel_base",
                                                            "channel_max", "num_fp16_res", "conv_clamp", "cmap_dim",
                                                            "block_kwargs", "mapping_kwargs", "epilogue_kwargs")}
    options.update(kwargs.get("block_kwargs") or {})
    options.update(kwargs.get("epilogue_kwargs") or {})
    _check_options(options, D_FIXED, D_IGNORED, what)
    epilogue = record.child("b4")
    blocks = [blk for name, blk in record.modules.items() if name != "b4" and blk is not None]
    mbstd = epilogue.child("mbstd") if epilogue is not None else None
    if mbstd is None or _attr(mbstd, "group_size", what) is None:
        raise UserError(f"{what}: minibatch-stddev disabled or over the whole batch (TensorFlow-converted Ds); "
                        "not supported")
    layers = [blk.child(n) for blk in blocks for n in ("fromrgb", "conv0", "conv1") if blk.child(n) is not None]
    conv_clamp = _one_value([_attr(layer, "conv_clamp", what) for layer in layers + [epilogue.child("conv")]], what,
                            "conv_clamp")
    num_fp16_res = sum(bool(_attr(blk, "use_fp16", what)) for blk in blocks)
    out = dict(
        img_resolution=int(kwargs.get("img_resolution", 0)), img_channels=int(kwargs.get("img_channels", 3)),
        channel_base=int(kwargs.get("channel_base", 32768)), channel_max=int(kwargs.get("channel_max", 512)),
        num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, mbstd_group_size=int(_attr(mbstd, "group_size", what)),
        mbstd_num_channels=int(_attr(mbstd, "num_channels", what)),
    )  # fmt: skip
    state = record.state_dict()
    _check_layout("Discriminator", out, state, what, fp16=[bool(_attr(blk, "use_fp16", what)) for blk in blocks])
    return ConvertedNetwork(out, state)


def _check_layout(kind: str, kwargs: dict, state: dict[str, torch.Tensor], what: str, fp16: list[bool]) -> None:
    """Build the project network on the meta device and require identical key names, shapes and fp16 blocks."""
    from training.discriminator import Discriminator
    from training.networks import Generator

    with torch.device("meta"):
        net = {"Generator": Generator, "Discriminator": Discriminator}[kind](**kwargs)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"shape of {wrong[0]} {found[wrong[0]]} != {expected[wrong[0]]}" if wrong else ""]
        raise UserError(f"{what} does not match this project's StyleGAN2 layout ({'; '.join(p for p in parts if p)});"
                        f" only {SUPPORTED} are read")
    blocks = [m for name, m in net.named_children() if re.fullmatch(r"b\d+", name) and name != "b4"]
    blocks = blocks if kind == "Discriminator" else list(net.synthesis.children())
    if [b.use_fp16 for b in blocks] != fp16:
        raise UserError(f"{what}: fp16 blocks {fp16} are not the top resolutions; not supported")
    for k, v in state.items():
        if v.dtype != torch.float32:
            raise UserError(f"{what}: tensor {k} is {v.dtype}, expected float32")


def read_nvidia_networks(path: str) -> NvidiaNetworks:
    """Read and convert every network in an NVIDIA pickle: a dict with G / D / G_ema, or a bare Generator."""
    data = read_pickle(path)
    if isinstance(data, PersistentRecord):
        data = {"G_ema": data}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict of networks (G, D, G_ema), found {type(data).__name__}")
    records = {k: data.get(k) for k in ("G", "D", "G_ema")}
    for key, value in records.items():
        if value is not None and not isinstance(value, PersistentRecord):
            raise UserError(f"{path}: '{key}' is a {type(value).__name__}, not a persistent network")
    if records["G"] is None and records["G_ema"] is None:
        raise UserError(f"{path} has neither G_ema nor G (keys: {sorted(map(str, data))}); not a network pickle")
    try:
        generators = {k: None if records[k] is None else generator_from_record(records[k], k) for k in ("G", "G_ema")}
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    D, D_refused = None, None
    if records["D"] is not None:
        try:  # D matters only for --init-from; one it cannot map (e.g. mbstd over the whole batch) is left out
            D = discriminator_from_record(records["D"], "D")
        except UserError as e:
            D_refused = str(e)
    return NvidiaNetworks(path=path, D=D, D_refused=D_refused, **generators)


def read_nvidia_generator(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(Generator kwargs, state dict) of the pickle's G_ema (or G if it has none)."""
    net = read_nvidia_networks(path).generator
    return net.kwargs, net.state
