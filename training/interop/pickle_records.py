"""What an NVIDIA network pickle may turn into: plain records, checked stand-ins for its allowlisted globals, and the
one walk that proves a loaded graph is plain data (restricted_pickle.py is the reader that uses them).

Every stand-in checks its arguments and raises Refused (a clause saying what the file holds) before building
anything; none touches state outside the object it returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import torch

PERSISTENCE_VERSION = 6  # torch_utils.persistence._version in both NVIDIA code bases
MAX_DEPTH = 64  # a network pickle nests ~20 levels (dict > network > modules > block > layer > tensors)
_KEY_TYPES = (str, int, float, bool, type(None), bytes)


class Refused(Exception):
    """What the file asked for and why it is refused, as a clause (becomes one UserError line)."""


class RefusedGlobal(Refused):
    """A global, persistent id or extension code outside the allowlist (the message names it)."""


@dataclasses.dataclass
class PersistentRecord:
    """One NVIDIA persistent object as data: its class name, constructor args and pickled __dict__ (never run)."""

    class_name: str
    module_src_sha1: str  # identifies the embedded source (which is never executed)
    init_args: Any
    init_kwargs: Any
    attrs: dict  # the rest of the object's __dict__ (plain values)
    parameters: dict
    buffers: dict
    modules: dict
    non_persistent: Any = frozenset()


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict with attribute access): kept as a plain dict."""


class TypeName:
    """A class a pickle may name only as an argument (torch.Tensor, numpy.ndarray): calling it is refused."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise Refused(f"it calls {self.name} directly (a network pickle only names it as a type)")


TENSOR, PARAMETER, NDARRAY = TypeName("torch.Tensor"), TypeName("torch.nn.Parameter"), TypeName("numpy.ndarray")


class DtypeRecord:
    """Placeholder of a numpy dtype record (numeric kinds only); BUILD may set its byte order."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def build(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 8 and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)):  # fmt: skip
            raise Refused("a numpy dtype record has a structured or malformed state")
        self.dtype = self.dtype.newbyteorder(state[1]) if state[1] in "<>" else self.dtype


class NumericArray(np.ndarray):
    """An ndarray made by the reader; BUILD fills it only with numeric data whose size matches its bytes."""


def numeric_dtype(code: Any) -> np.dtype:
    if not isinstance(code, str) or len(code) > 16:
        raise Refused("a numpy dtype record is not a short type code")
    try:
        dtype = np.dtype(code)
    except TypeError:
        raise Refused(f"a numpy dtype record has the unknown type {short(code)}") from None
    if dtype.kind not in "biufc" or dtype.subdtype is not None or dtype.names is not None:
        raise Refused(f"a numpy dtype record has the non-numeric type {code!r}")
    return dtype


def check_key(key: Any) -> Any:
    if type(key) not in _KEY_TYPES:
        raise Refused(f"a dict key or set member is a {type(key).__name__} (a network pickle uses names)")
    return key


def reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Replaces NVIDIA's reconstructor: validates meta and keeps it as data; module_src is only hashed."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise Refused("a persistent object has an unknown layout (expected meta type 'class')")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise Refused(f"it uses persistence format version {short(meta.get('version'))}; only "
                      f"{PERSISTENCE_VERSION} is known")
    src, class_name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
    if not isinstance(src, str) or not isinstance(class_name, str) or not isinstance(state, dict):
        raise Refused("a persistent object lacks module_src / class_name / state")
    state = dict(state)
    tables = [state.pop(k, None) or {} for k in ("_parameters", "_buffers", "_modules")]
    for table, name in zip(tables, ("parameters", "buffers", "modules")):
        if not isinstance(table, dict):
            raise Refused(f"the {name} of a persistent {class_name[:40]} are not a dict")
    return PersistentRecord(
        class_name=class_name, module_src_sha1=hashlib.sha1(src.encode("utf-8", "replace")).hexdigest(),
        init_args=state.pop("_init_args", ()), init_kwargs=state.pop("_init_kwargs", {}), attrs=state,
        parameters=dict(tables[0]), buffers=dict(tables[1]), modules=dict(tables[2]),
        non_persistent=state.pop("_non_persistent_buffers_set", frozenset()) or frozenset(),
    )  # fmt: skip


def codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes (latin1 text -> bytes)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused("a bytes record uses an unexpected encoding")
    return text.encode("latin1")


def numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy.core.multiarray.scalar for numeric dtypes (the gains NVIDIA stores as numpy floats)."""
    if not isinstance(dtype, DtypeRecord) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise Refused("a numpy scalar record has a non-numeric type or the wrong size")
    return np.frombuffer(data, dtype=dtype.dtype, count=1)[0]


def numpy_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> NumericArray:
    """numpy.core.multiarray._reconstruct for plain ndarrays: an empty array that BUILD fills (checked there)."""
    if subtype is not NDARRAY:
        raise Refused("a numpy array record names a subclass")
    return np.ndarray.__new__(NumericArray, (0,), np.uint8)


def numpy_dtype(code: Any, align: Any = False, copy: Any = True) -> DtypeRecord:
    return DtypeRecord(numeric_dtype(code))


def rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, state: Any = None) -> torch.Tensor:
    """torch._utils.rebuild_parameter(_with_state): the parameter's values as a plain tensor."""
    if not isinstance(data, torch.Tensor) or hooks or state:
        raise Refused("a parameter record is not a plain tensor")
    return data


def check_structure(root: Any) -> None:
    """Walk the loaded graph once, without recursion: no cycle, nesting <= MAX_DEPTH, only data leaves.

    Shared objects (memo references) are walked once: a finished object keeps its height, so a revisit costs one
    lookup. Refused names the path from the root (e.g. "the pickle's G_ema.synthesis.attrs['x'][0]").
    """
    leaves = (str, bytes, int, float, bool, complex, type(None), np.generic, np.ndarray, torch.Tensor, DtypeRecord)
    height: dict[int, int] = {}  # id -> levels below (0 for a leaf) of every finished container
    on_path: set[int] = set()
    stack: list[tuple[Any, int, Any, list | None]] = [(root, 0, None, None)]
    while stack:
        obj, depth, path, children = stack.pop()
        if children is not None:  # leaving: every child is finished
            on_path.discard(id(obj))
            height[id(obj)] = 1 + max((height.get(id(c), 0) for _, c in children), default=0)
            continue
        if isinstance(obj, leaves):
            continue
        if id(obj) in on_path:
            raise Refused(f"{_path_name(path)} contains itself (a cyclic structure)")
        if depth + height.get(id(obj), 0) > MAX_DEPTH:
            raise Refused(f"{_path_name(path)} nests deeper than {MAX_DEPTH} levels")
        if id(obj) in height:
            continue
        children = _children(obj, path)
        on_path.add(id(obj))
        stack.append((obj, depth, path, children))
        stack.extend((child, depth + 1, (path, label), None) for label, child in reversed(children))


def _children(obj: Any, path: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, PersistentRecord):
        fields = ("init_args", "init_kwargs", "attrs", "parameters", "buffers", "non_persistent")
        return [(f".{name}", getattr(obj, name)) for name in fields] + [
            (f".{k}" if isinstance(k, str) else f".modules[{short(k)}]", v) for k, v in obj.modules.items()]
    if isinstance(obj, dict):  # the top dict's names read as network names: "G_ema.synthesis..."
        return [(f".{k}" if path is None and isinstance(k, str) else f"[{short(k)}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    name = getattr(obj, "name", None) or getattr(obj, "__qualname__", None) or f"a {type(obj).__name__}"
    raise Refused(f"{_path_name(path)} is {short(name)}, not data")


def _path_name(path: Any) -> str:
    parts = []
    while path is not None:
        path, label = path
        parts.append(label)
    name = "".join(reversed(parts)).lstrip(".")
    return f"the pickle's {name[:120]}" if name else "the pickle's top object"


def short(value: Any, limit: int = 40) -> str:
    """repr(value) cut to `limit` characters, safe for any object: huge ints, deep or long containers."""
    text = None
    if isinstance(value, (str, bytes, int, float, bool, type(None))) or (
            isinstance(value, (list, tuple, dict)) and len(value) <= 16):  # fmt: skip
        try:
            text = repr(value)
        except (ValueError, RecursionError):  # an int too long to print, a container nested too deep
            text = None
    text = text if text is not None else f"a value of type {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
