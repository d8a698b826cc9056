"""Read NVIDIA StyleGAN2 network pickles (stylegan2-ada-pytorch, and stylegan3 `--cfg=stylegan2`) without running them.

Such a `.pkl` is a plain pickle of a dict {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} whose networks
were written by NVIDIA's `torch_utils.persistence`: every network object is stored as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {type: 'class', version: 6, module_src: the full
source text of the defining module, class_name, state: the object's __dict__}. Loading it with NVIDIA's code
executes module_src. This reader never does: restricted_pickle.py resolves only an allowlist of globals (tensor
and storage rebuild functions, OrderedDict, set, numpy scalars/arrays/dtypes, dnnlib's EasyDict, and the persistence
reconstructor, replaced by a function that records meta as data) under a memory budget, and refuses anything else
with one line before it is called; a refused file changes nothing in the process.

Each recorded network is then mapped to this project's constructor kwargs and state dict: the module tree in
state['_modules'] / '_parameters' / '_buffers' flattens to the same key names this project uses (training/networks.py
follows StyleGAN2's layout one to one); the constructor kwargs come from state['_init_kwargs'] plus the few attributes
whose class defaults differ between the two NVIDIA code bases (conv_clamp, fp16 blocks, w_avg_beta, mbstd group).
Every value read is type- and range-checked (constructor arguments, attributes, names, NaN/inf in weights or in
w_avg_beta / lr_multiplier), each problem one line naming the network and the field. Supported: unconditional
G / G_ema (skip architecture) and D (resnet); a D that cannot be mapped is left out with its reason. Refused with
one line: conditional networks (c_dim > 0), StyleGAN3 t/r generators, other architectures, TensorFlow pickles.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
import torch

from torch_utils.errors import UserError
from training.interop import restricted_pickle
from training.interop.pickle_records import DtypeRecord, PersistentRecord, short

SUPPORTED = "unconditional StyleGAN2 networks from stylegan2-ada-pytorch or stylegan3 --cfg=stylegan2"
HINTS = {
    "dnnlib.tflib.network": "this is a TensorFlow StyleGAN pickle; only PyTorch pickles (stylegan2-ada-pytorch, "
    "stylegan3) are read",
}


def read_pickle(path: str) -> Any:
    """The file's objects through the restricted, memory-bounded reader (restricted_pickle.py); one line if refused."""
    return restricted_pickle.read_pickle(path, HINTS, f"; only {SUPPORTED} are read")


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
# Ranges of the numbers read from a pickle: generous for any StyleGAN2, tight enough that nothing absurd is built.
INT_RANGES = {"z_dim": (1, 1 << 16), "w_dim": (1, 1 << 16), "c_dim": (0, 1 << 20), "img_resolution": (4, 1 << 14),
              "img_channels": (1, 4), "channel_base": (1, 1 << 24), "channel_max": (1, 1 << 16),
              "num_layers": (1, 64), "group_size": (1, 1 << 12), "num_channels": (1, 64)}  # fmt: skip


# Reading values: the graph is plain data (restricted_pickle checked it: acyclic, at most 64 levels deep), so these
# may recurse; every number is type- and range-checked, every message names the network and the field.


def _plain(value: Any) -> Any:
    """EasyDict / OrderedDict / numpy scalars and dtype records -> builtin dicts, lists, numbers (recursively)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value.dtype if isinstance(value, DtypeRecord) else value


def _int(value: Any, what: str, name: str) -> int:
    lo, hi = INT_RANGES[name]
    if type(value) is not int or not lo <= value <= hi:
        raise UserError(f"{what}: {name} = {short(value)} is not a whole number in [{lo}, {hi}]; only {SUPPORTED} "
                        "are read")  # fmt: skip
    return value


def _float(value: Any, what: str, name: str, lo: float, hi: float) -> float:
    if type(value) not in (int, float) or not (math.isfinite(value) and lo <= value <= hi):
        raise UserError(f"{what}: {name} = {short(value)} is not a finite number in [{lo:g}, {hi:g}]; the source "
                        "network is damaged")  # fmt: skip
    return float(value)


def _flag(value: Any, what: str, name: str) -> bool:
    if type(value) is not bool and value not in (0, 1):
        raise UserError(f"{what}: {name} = {short(value)} is not true or false")
    return bool(value)


def _clamp(value: Any, what: str) -> float | None:
    return None if value is None else _float(value, what, "conv_clamp", 1e-3, 1e9)


def _options(value: Any, what: str, name: str) -> dict:
    value = {} if value is None else value
    if not isinstance(value, dict) or any(not isinstance(k, str) for k in value):
        raise UserError(f"{what}: {name} must be a dict with string keys, not {short(value)}")
    return dict(value)


def _init_kwargs(record: PersistentRecord, positional: tuple[str, ...], what: str) -> dict:
    args, kwargs = record.init_args, _options(record.init_kwargs, what, "the constructor arguments")
    if not isinstance(args, (tuple, list)):
        raise UserError(f"{what}: its positional constructor arguments are {short(args)}, not a tuple")
    if len(args) > len(positional):
        raise UserError(f"{what}: {len(args)} positional constructor arguments, expected at most {len(positional)}")
    both = sorted(set(positional[: len(args)]) & set(kwargs))
    if both:
        raise UserError(f"{what}: constructor argument {both[0]} is given both by position and by name")
    return _plain(dict(zip(positional, args), **kwargs))


def _check_options(options: dict, fixed: dict, ignored: set, what: str) -> None:
    for key, value in options.items():
        if key in fixed:
            expected = fixed[key]
            if value is not None and not _same(value, expected):
                raise UserError(f"{what}: {key}={short(value)} is not supported (this project's StyleGAN2 uses "
                                f"{expected!r}); only {SUPPORTED} are read")  # fmt: skip
        elif key not in ignored:
            raise UserError(f"{what}: unknown NVIDIA option {key}={short(value)}; only {SUPPORTED} are read")


def _same(value: Any, expected: Any) -> bool:
    """value == expected for plain values, without ever comparing foreign types (an ndarray has no truth value)."""
    if isinstance(expected, list):
        return isinstance(value, (list, tuple)) and len(value) == len(expected) and all(map(_same, value, expected))
    return type(value) is type(expected) and value == expected


def _attr(record: PersistentRecord | None, name: str, what: str) -> Any:
    if record is None or name not in record.attrs:
        raise UserError(f"{what}: the pickled network has no '{name}' attribute where StyleGAN2 keeps one")
    return _plain(record.attrs[name])


def _modules(record: PersistentRecord, what: str) -> dict[str, PersistentRecord]:
    """The record's submodules by name (None entries dropped); names must be names, values networks."""
    out = {}
    for name, module in record.modules.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UserError(f"{what}: submodule name {short(name)} is not a name")
        if module is not None and not isinstance(module, PersistentRecord):
            raise UserError(f"{what}.{name} is {short(module)}, not a persistent network module")
        if module is not None:
            out[name] = module
    return out


def _child(record: PersistentRecord | None, name: str, what: str) -> PersistentRecord | None:
    return None if record is None else _modules(record, what).get(name)


def _state_dict(record: PersistentRecord, what: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten to module.state_dict() key names: parameters, persistent buffers, then children (all checked)."""
    skip = record.non_persistent
    if not isinstance(skip, (set, frozenset, list, tuple)) or any(not isinstance(n, str) for n in skip):
        raise UserError(f"{what}: {prefix or 'its'} non-persistent buffer names are {short(skip)}, not names")
    out = {}
    for table, kind in ((record.parameters, "parameter"), (record.buffers, "buffer")):
        for name, tensor in table.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise UserError(f"{what}: {kind} name {short(name)} in {prefix.rstrip('.') or 'the top module'} is "
                                "not a name")  # fmt: skip
            if tensor is not None and not isinstance(tensor, torch.Tensor):
                raise UserError(f"{what}: {kind} {prefix}{name} is {short(tensor)}, not a tensor")
            if tensor is not None and not (kind == "buffer" and name in skip):
                out[prefix + name] = tensor
    for name, module in _modules(record, f"{what}.{prefix}".rstrip(".")).items():
        out.update(_state_dict(module, what, f"{prefix}{name}."))
    return out


def _one_value(values: list, what: str, name: str) -> Any:
    if len(set(values)) != 1:
        raise UserError(f"{what}: layers disagree on {name} ({sorted(set(map(str, values)))}); not supported")
    return values[0]


def _blocks(record: PersistentRecord, what: str) -> dict[str, PersistentRecord]:
    modules = _modules(record, what)
    if "input" in modules or any(re.fullmatch(r"L\d+_\d+_\d+", k) for k in modules):
        raise UserError(f"{what} is a StyleGAN3 (config t or r) synthesis network; only {SUPPORTED} are read")
    if not modules or any(not re.fullmatch(r"b\d+", k) for k in modules):
        raise UserError(f"{what} has blocks {list(modules)[:8]}, not StyleGAN2's b4, b8, ...; only {SUPPORTED} are "
                        "read")  # fmt: skip
    return modules


def _check_conditioning(kwargs: dict, what: str) -> None:
    c_dim = _int(kwargs.get("c_dim", 0), what, "c_dim")
    if c_dim:
        raise UserError(f"{what} is class-conditional (c_dim={c_dim}); this project's networks take no class label, "
                        f"so only unconditional NVIDIA networks are read")


def generator_from_record(record: PersistentRecord, what: str = "G") -> ConvertedNetwork:
    """Map an NVIDIA Generator record to this project's Generator kwargs + state dict (layout checked)."""
    if record.class_name != "Generator":
        raise UserError(f"{what} is a persistent {short(record.class_name)}, not a StyleGAN2 'Generator'")
    kwargs = _init_kwargs(record, G_POSITIONAL, what)
    _check_conditioning(kwargs, what)
    synthesis, mapping = _child(record, "synthesis", what), _child(record, "mapping", what)
    if synthesis is None or mapping is None:
        raise UserError(f"{what} has no synthesis / mapping network")
    blocks = _blocks(synthesis, f"{what}.synthesis")
    # ADA passes synthesis_kwargs as one dict; stylegan3 passes them as extra Generator kwargs.
    synthesis_options = _options(kwargs.pop("synthesis_kwargs", None), what, "synthesis_kwargs")
    mapping_options = _options(kwargs.pop("mapping_kwargs", None), what, "mapping_kwargs")
    core = {k: kwargs.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels") if k in kwargs}
    synthesis_options.update(kwargs)
    missing = sorted({"z_dim", "w_dim", "img_resolution", "img_channels"} - set(core))
    if missing:
        raise UserError(f"{what}: constructor arguments lack {', '.join(missing)}")
    core = {k: _int(v, what, k) for k, v in core.items()}
    _check_options(synthesis_options, G_FIXED, G_IGNORED, what)
    _check_options(mapping_options, MAPPING_FIXED, MAPPING_IGNORED, f"{what}.mapping")
    if mapping_options.get("layer_features") is not None and not _same(mapping_options["layer_features"],
                                                                       core["w_dim"]):
        raise UserError(f"{what}.mapping: layer_features={short(mapping_options['layer_features'])} differs from "
                        "w_dim")  # fmt: skip
    # Values whose class defaults differ between the two NVIDIA code bases come from the pickled attributes.
    layers = [(f"{what}.synthesis.{b}.{name}", layer) for b, blk in blocks.items()
              for name, layer in _modules(blk, what).items() if name in ("conv0", "conv1", "torgb")]  # fmt: skip
    conv_clamp = _one_value([_clamp(_attr(layer, "conv_clamp", name), name) for name, layer in layers], what,
                            "conv_clamp")  # fmt: skip
    fp16 = [_flag(_attr(blk, "use_fp16", f"{what}.synthesis.{b}"), f"{what}.synthesis.{b}", "use_fp16")
            for b, blk in blocks.items()]  # fmt: skip
    fc0 = _child(mapping, "fc0", f"{what}.mapping")
    out = dict(
        **{k: core[k] for k in ("z_dim", "w_dim", "img_resolution", "img_channels")},
        mapping_kwargs=dict(
            num_layers=_int(_attr(mapping, "num_layers", what), f"{what}.mapping", "num_layers"),
            lr_multiplier=_float(_attr(fc0, "bias_gain", what), f"{what}.mapping.fc0", "bias_gain (lr_multiplier)",
                                 1e-6, 1e3),
            w_avg_beta=_float(_attr(mapping, "w_avg_beta", what), f"{what}.mapping", "w_avg_beta", 0.0, 1.0)),
        synthesis_kwargs=dict(
            channel_base=_int(synthesis_options.get("channel_base", 32768), what, "channel_base"),
            channel_max=_int(synthesis_options.get("channel_max", 512), what, "channel_max"),
            num_fp16_res=sum(fp16), conv_clamp=conv_clamp),
        encoder_kwargs=None,
    )  # fmt: skip
    state = _state_dict(record, what)
    _check_layout("Generator", out, state, what, fp16=fp16)
    return ConvertedNetwork(out, state)


def discriminator_from_record(record: PersistentRecord, what: str = "D") -> ConvertedNetwork:
    """Map an NVIDIA Discriminator record to this project's Discriminator kwargs + state dict (layout checked)."""
    if record.class_name != "Discriminator":
        raise UserError(f"{what} is a persistent {short(record.class_name)}, not a StyleGAN2 'Discriminator'")
    kwargs = _init_kwargs(record, D_POSITIONAL, what)
    _check_conditioning(kwargs, what)
    options = {k: v for k, v in kwargs.items() if k not in ("c_dim", "img_resolution", "img_channels", "channel_base",
                                                            "channel_max", "num_fp16_res", "conv_clamp", "cmap_dim",
                                                            "block_kwargs", "mapping_kwargs", "epilogue_kwargs")}
    options.update(_options(kwargs.get("block_kwargs"), what, "block_kwargs"))
    options.update(_options(kwargs.get("epilogue_kwargs"), what, "epilogue_kwargs"))
    _check_options(options, D_FIXED, D_IGNORED, what)
    modules = _modules(record, what)
    epilogue = modules.get("b4")
    blocks = [(name, blk) for name, blk in modules.items() if name != "b4"]
    mbstd = _child(epilogue, "mbstd", f"{what}.b4")
    if mbstd is None or _attr(mbstd, "group_size", what) is None:
        raise UserError(f"{what}: minibatch-stddev disabled or over the whole batch (TensorFlow-converted Ds); "
                        "not supported")
    layers = [(f"{what}.{b}.{name}", layer) for b, blk in blocks for name, layer in _modules(blk, what).items()
              if name in ("fromrgb", "conv0", "conv1")] + [(f"{what}.b4.conv", _child(epilogue, "conv", what))]
    conv_clamp = _one_value([_clamp(_attr(layer, "conv_clamp", name), name) for name, layer in layers], what,
                            "conv_clamp")  # fmt: skip
    fp16 = [_flag(_attr(blk, "use_fp16", f"{what}.{name}"), f"{what}.{name}", "use_fp16") for name, blk in blocks]
    out = dict(
        img_resolution=_int(kwargs.get("img_resolution"), what, "img_resolution"),
        img_channels=_int(kwargs.get("img_channels", 3), what, "img_channels"),
        channel_base=_int(kwargs.get("channel_base", 32768), what, "channel_base"),
        channel_max=_int(kwargs.get("channel_max", 512), what, "channel_max"),
        num_fp16_res=sum(fp16), conv_clamp=conv_clamp,
        mbstd_group_size=_int(_attr(mbstd, "group_size", what), f"{what}.b4.mbstd", "group_size"),
        mbstd_num_channels=_int(_attr(mbstd, "num_channels", what), f"{what}.b4.mbstd", "num_channels"),
    )  # fmt: skip
    state = _state_dict(record, what)
    _check_layout("Discriminator", out, state, what, fp16=fp16)
    return ConvertedNetwork(out, state)


def _check_layout(kind: str, kwargs: dict, state: dict[str, torch.Tensor], what: str, fp16: list[bool]) -> None:
    """Build the project network on the meta device; require identical key names, shapes, fp16 blocks, and finite
    float32 values."""
    from training.discriminator import Discriminator
    from training.networks import Generator

    try:
        with torch.device("meta"):
            net = {"Generator": Generator, "Discriminator": Discriminator}[kind](**kwargs)
    except Exception as e:  # the kwargs passed their range checks but do not form a network (e.g. resolution 12)
        raise UserError(f"{what}: its constructor arguments do not build this project's {kind} ({type(e).__name__}: "
                        f"{short(str(e), 80)}); only {SUPPORTED} are read") from None  # fmt: skip
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
        if not bool(torch.isfinite(v).all()):
            raise UserError(f"{what}: tensor {k} holds NaN or inf: the source network is broken (it diverged or was "
                            "damaged); use another snapshot")  # fmt: skip


def read_nvidia_networks(path: str) -> NvidiaNetworks:
    """Read and convert every network in an NVIDIA pickle: a dict with G / D / G_ema, or a bare Generator.

    A D that cannot be mapped (unsupported, malformed or non-finite) is left out with its reason in D_refused.
    """
    data = read_pickle(path)
    if isinstance(data, PersistentRecord):
        data = {"G_ema": data}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict of networks (G, D, G_ema), found {type(data).__name__}")
    records = {k: data.get(k) for k in ("G", "D", "G_ema")}
    for key in ("G", "G_ema"):
        if records[key] is not None and not isinstance(records[key], PersistentRecord):
            raise UserError(f"{path}: '{key}' is a {type(records[key]).__name__}, not a persistent network")
    if records["G"] is None and records["G_ema"] is None:
        raise UserError(f"{path} has neither G_ema nor G (keys: {short(sorted(map(str, data)), 80)}); not a network "
                        "pickle")  # fmt: skip
    try:
        generators = {k: None if records[k] is None else generator_from_record(records[k], k) for k in ("G", "G_ema")}
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    D, D_refused = None, None
    if records["D"] is not None:
        try:  # D matters only for --init-from; one it cannot map (e.g. mbstd over the whole batch) is left out
            if not isinstance(records["D"], PersistentRecord):
                raise UserError(f"'D' is a {type(records['D']).__name__}, not a persistent network")
            D = discriminator_from_record(records["D"], "D")
        except UserError as e:
            D_refused = str(e)
    return NvidiaNetworks(path=path, D=D, D_refused=D_refused, **generators)


def read_nvidia_generator(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(Generator kwargs, state dict) of the pickle's G_ema (or G if it has none)."""
    net = read_nvidia_networks(path).generator
    return net.kwargs, net.state
