"""Builds NVIDIA-format network pickles from scratch, the way torch_utils.persistence writes them.

Each network object becomes a call to `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
meta = {type: 'class', version: 6, module_src, class_name, state: the module's __dict__ + _init_args/_init_kwargs};
constructor kwargs are `dnnlib.util.EasyDict`s, gains numpy float64 scalars, tensors pickled by torch itself (storage
bytes + _rebuild_tensor_v2 / _rebuild_parameter). The globals are written by name only: neither NVIDIA's code nor any
stand-in for it exists here. `module_src` writes a marker file if anyone ever executes it.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import torch

from training.discriminator import Discriminator
from training.networks import Generator


class Global:
    """A reference to `module.name`, written into the pickle as a GLOBAL opcode; calling it here is a bug."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.module}.{self.name} must never be called while writing a test pickle")


RECONSTRUCT = Global("torch_utils.persistence", "_reconstruct_persistent_obj")


class EasyDict(dict):
    """Pickled as dnnlib.util.EasyDict (NEWOBJ + SETITEMS), like the kwargs dicts of NVIDIA's train.py."""


class Raw:
    """Opcodes written verbatim where a value goes; they must leave exactly one object on the unpickler's stack
    (hostile structures a pickler cannot write: nesting thousands deep, a list that contains itself)."""

    def __init__(self, ops: bytes) -> None:
        self.ops = ops


def marker_source(marker: str) -> str:
    """Module source that, if executed, writes `marker` (the proof that nothing ran is its absence)."""
    return (f"import pathlib\npathlib.Path({marker!r}).write_text('module_src was executed')\n"
            "class Generator:\n    pass\n")


class NvidiaPickler(pickle._Pickler):
    """Pure-Python pickler that writes torch modules in the persistence layout and Globals by name."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, module_src: str, init_kwargs: dict, protocol: int = 3) -> None:
        super().__init__(file, protocol=protocol)
        self.module_src, self.init_kwargs = module_src, init_kwargs  # {id(module): NVIDIA constructor kwargs}

    def save_global_ref(self, obj: Global) -> None:
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = save_global_ref

    def save_easydict(self, obj: EasyDict) -> None:
        self.save(Global("dnnlib.util", "EasyDict"))
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self._batch_setitems(iter(obj.items()))

    dispatch[EasyDict] = save_easydict

    def save_raw(self, obj: Raw) -> None:
        self.write(obj.ops)

    dispatch[Raw] = save_raw

    def reducer_override(self, obj):
        if isinstance(obj, torch.nn.Module):
            state = dict(obj.__dict__)
            for key in ("weight_gain", "act_gain"):  # NVIDIA computes these with numpy: float64 scalars
                if isinstance(state.get(key), float):
                    state[key] = np.float64(state[key])
            state["_init_args"] = ()
            state["_init_kwargs"] = self.init_kwargs.get(id(obj), EasyDict())
            meta = dict(type="class", version=6, module_src=self.module_src, class_name=type(obj).__name__,
                        state=state)
            return RECONSTRUCT, (meta,)
        return NotImplemented


def dump_nvidia_pickle(data: dict, module_src: str, init_kwargs: dict | None = None, protocol: int = 3) -> bytes:
    """Pickle `data` (networks as torch modules) in the NVIDIA persistence layout."""
    buf = io.BytesIO()
    NvidiaPickler(buf, module_src, init_kwargs or {}, protocol=protocol).dump(data)
    return buf.getvalue()


def nvidia_generator_kwargs(G_kwargs: dict, style: str = "ada") -> EasyDict:
    """The constructor kwargs NVIDIA's train.py records for a generator of this project's G_kwargs layout."""
    mapping = EasyDict(num_layers=G_kwargs["mapping_kwargs"]["num_layers"])
    synthesis = EasyDict(G_kwargs["synthesis_kwargs"])
    kwargs = EasyDict(z_dim=G_kwargs["z_dim"], c_dim=0, w_dim=G_kwargs["w_dim"],
                      img_resolution=G_kwargs["img_resolution"], img_channels=G_kwargs["img_channels"])
    if style == "ada":  # stylegan2-ada-pytorch: synthesis options in one dict
        kwargs.update(mapping_kwargs=mapping, synthesis_kwargs=synthesis)
    else:  # stylegan3 --cfg=stylegan2: synthesis options as extra Generator kwargs
        kwargs.update(mapping_kwargs=mapping, fused_modconv_default="inference_only", **synthesis)
    return kwargs


def nvidia_discriminator_kwargs(D_kwargs: dict) -> EasyDict:
    """NVIDIA Discriminator kwargs for this project's D_kwargs layout (options in block/epilogue dicts)."""
    top = {k: D_kwargs[k] for k in ("img_resolution", "img_channels", "channel_base", "channel_max", "num_fp16_res",
                                    "conv_clamp")}
    return EasyDict(c_dim=0, **top, block_kwargs=EasyDict(freeze_layers=0), mapping_kwargs=EasyDict(),
                    epilogue_kwargs=EasyDict(mbstd_group_size=D_kwargs["mbstd_group_size"]))


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Trained-looking weights: non-zero biases, noise strengths and w_avg (so every tensor matters)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith(("bias", "noise_strength", "w_avg")):
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=gen))
    return module


def tiny_networks(resolution: int = 16, z_dim: int = 8, w_dim: int = 16, map_layers: int = 2, seed: int = 0):
    """(G, D, G_ema, G_kwargs, D_kwargs): tiny unconditional networks in this project's classes."""
    torch.manual_seed(seed)
    G_kwargs = dict(z_dim=z_dim, w_dim=w_dim, img_resolution=resolution, img_channels=3,
                    mapping_kwargs=dict(num_layers=map_layers),
                    synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=256))
    D_kwargs = dict(img_resolution=resolution, img_channels=3, channel_base=128, channel_max=16, num_fp16_res=0,
                    conv_clamp=256, mbstd_group_size=2)
    G, G_ema = randomize(Generator(**G_kwargs), seed + 1), randomize(Generator(**G_kwargs), seed + 2)
    D = randomize(Discriminator(**D_kwargs), seed + 3)
    return G, D, G_ema, G_kwargs, D_kwargs


def write_nvidia_pickle(path: str, marker: str, nets: dict, G_kwargs: dict, D_kwargs: dict, style: str = "ada",
                        protocol: int = 3, extra: dict | None = None) -> None:
    """Write {G, D, G_ema (those in nets), augment_pipe, training_set_kwargs} like an NVIDIA snapshot .pkl."""
    kwargs = {id(net): nvidia_generator_kwargs(G_kwargs, style) for key, net in nets.items() if key != "D"}
    if "D" in nets:
        kwargs[id(nets["D"])] = nvidia_discriminator_kwargs(D_kwargs)
    data = dict(nets, augment_pipe=None,
                training_set_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset", path="/data/ffhq.zip",
                                             use_labels=False, max_size=70000, xflip=False, resolution=16))
    data.update(extra or {})
    with open(path, "wb") as f:
        f.write(dump_nvidia_pickle(data, marker_source(marker), kwargs, protocol=protocol))
