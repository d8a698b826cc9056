"""The one reader that turns the bytes of an NVIDIA network pickle into objects, without running or changing anything.

A network pickle names globals that NVIDIA's loader would import and call. This reader resolves only an allowlist
(tensor and storage records, OrderedDict, set, numpy scalars/arrays/dtypes, dnnlib's EasyDict, the persistence
reconstructor), each replaced by a stand-in that checks its arguments and builds plain data; any other global, a
persistent id, an extension code or an out-of-band buffer is refused with one line naming it, before anything it
names is called. Its promises, each enforced before the allocation or change it guards:

- Bounded memory. A file of n bytes makes the reader allocate at most `read_budget(n)` = 2n + 64 MiB besides the n
  bytes it holds (so a read peaks near 3n + 64 MiB): every opcode is charged (a flat cost for the small objects it
  may create, the size of the strings and bytes it reads), tensor storages are parsed here (never by torch.load)
  and refused when they declare more bytes than they carry, tensors may not view more values than the file's
  storages hold, arrays only of numeric dtypes whose size matches their bytes, memo indices at most n (a file of
  n bytes cannot have stored more objects), and files over MAX_FILE_BYTES are refused unread.
- No tampering. BUILD (pickle's "set this object's state") runs only on the reader's own placeholders (numeric
  ndarrays, dtypes, empty EasyDict state), never on a tensor, a function or a class; APPEND/SETITEM reach only
  lists, dicts and sets the file made; dict keys and set members are plain scalars (hashing a nested structure
  could recurse without limit). A refused file leaves the process exactly as it found it.
- Plain structure. The loaded object graph is walked once (iteratively): nothing nests deeper than MAX_DEPTH,
  nothing contains itself, and every leaf is data (no global left as a value), so later code may recurse freely.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pickle
import sys
from typing import Any

import numpy as np
import torch

from torch_utils.errors import UserError, first_line
from training.interop.pickle_records import (
    NDARRAY,
    PARAMETER,
    TENSOR,
    DtypeRecord,
    EasyDict,
    NumericArray,
    Refused,
    RefusedGlobal,
    check_key,
    check_structure,
    codecs_encode,
    numpy_dtype,
    numpy_reconstruct,
    numpy_scalar,
    rebuild_parameter,
    reconstruct_persistent_obj,
    short,
)

MAX_FILE_BYTES = 4 << 30  # NVIDIA's largest StyleGAN2 pickles (1024 px, G + D + G_ema) are ~0.4 GB
BUDGET_BASE = 64 << 20
OPCODE_COST = 256  # charged per opcode: more than the largest object one opcode creates (an empty set, 216 bytes)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save's legacy format (how a pickled storage serialises itself)
STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool}  # fmt: skip


def read_budget(file_bytes: int) -> int:
    """Bytes the reader may allocate for a file of `file_bytes` bytes (on top of the file's own bytes)."""
    return 2 * file_bytes + BUDGET_BASE


class OverBudget(Refused):
    """The file would make the reader allocate more than read_budget(its size)."""


class Reader(pickle._Unpickler):
    """pickle's pure-Python unpickler with the allowlist, the memory budget and the BUILD rule (module docstring).

    The pure-Python unpickler is used because its memo is a dict (the C one allocates an array as long as the
    largest index) and because every opcode can be checked; the bulk of a network pickle is a few thousand large
    byte strings, so it costs little.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, budget: int | None = None, stream: io.BytesIO | None = None) -> None:
        super().__init__(stream or io.BytesIO(data))
        self.size, self.budget = len(data), read_budget(len(data)) if budget is None else budget
        self.charged = self.storage_bytes = self.tensor_bytes = 0
        self.globals = {
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): reconstruct_persistent_obj,
            ("dnnlib.util", "EasyDict"): self._easydict, ("collections", "OrderedDict"): self._ordered_dict,
            ("builtins", "set"): self._set, ("builtins", "frozenset"): self._frozenset,
            ("_codecs", "encode"): codecs_encode, ("torch.storage", "_load_from_bytes"): self._storage,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): self._rebuild_from_type,
            ("torch", "Tensor"): TENSOR, ("torch.nn.parameter", "Parameter"): PARAMETER,
            ("numpy", "dtype"): numpy_dtype, ("numpy", "ndarray"): NDARRAY,
        }  # fmt: skip
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x / 2.x pickles
            self.globals[(module, "scalar")] = numpy_scalar
            self.globals[(module, "_reconstruct")] = numpy_reconstruct
        self.constructible = tuple(self.globals[("builtins", n)] for n in ("set", "frozenset")) + (
            self.globals[("dnnlib.util", "EasyDict")], self.globals[("collections", "OrderedDict")])

    # ------------------------------------------------------------------ accounting
    def charge(self, nbytes: int) -> None:
        """Count nbytes against the budget; OverBudget once the total would pass it."""
        self.charged += int(nbytes)
        if self.charged > self.budget:
            raise OverBudget(f"more than {self.budget / 2**20:.0f} MiB")

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # protocol 2 writes Python 2 names (__builtin__.set)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (
                _compat_pickle.IMPORT_MAPPING.get(module, module), name))
        found = self.globals.get((module, name))
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("a persistent id (torch.save-style storage reference)")

    # ------------------------------------------------------------------ stand-ins that allocate
    def _easydict(self, *args: Any) -> EasyDict:
        return self._mapping(EasyDict, args)

    def _ordered_dict(self, *args: Any) -> collections.OrderedDict:
        return self._mapping(collections.OrderedDict, args)

    def _mapping(self, kind: type, args: tuple) -> Any:
        if len(args) > 1:
            raise Refused(f"a {kind.__name__} record has {len(args)} arguments")
        items = list(args[0].items() if isinstance(args[0], dict) else args[0]) if args else []
        if any(not isinstance(pair, (tuple, list)) or len(pair) != 2 for pair in items):
            raise Refused(f"the items of a {kind.__name__} record are not pairs")
        self.charge(100 * len(items))
        return kind((check_key(k), v) for k, v in items)

    def _set(self, items: Any = ()) -> set:
        return set(self._members(items))

    def _frozenset(self, items: Any = ()) -> frozenset:
        return frozenset(self._members(items))

    def _members(self, items: Any) -> list:
        if not isinstance(items, (list, tuple, set, frozenset)):
            raise Refused("the members of a set record are not a list")
        self.charge(100 * len(items))
        return [check_key(v) for v in items]

    def _storage(self, data: Any) -> torch.Tensor:
        """torch.storage._load_from_bytes: a storage in torch.save's legacy format -> its values as a flat tensor."""
        if not isinstance(data, bytes):
            raise Refused("a tensor storage record is not bytes")
        flat = read_legacy_storage(data)
        self.charge(flat.numel() * flat.element_size())
        self.storage_bytes += flat.numel() * flat.element_size()
        return flat

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                        hooks: Any = None, metadata: Any = None) -> torch.Tensor:  # fmt: skip
        """torch._utils._rebuild_tensor_v2 as a view of the storage, after checking every number (no hooks)."""
        if not isinstance(storage, torch.Tensor) or storage.ndim != 1 or type(offset) is not int:
            raise Refused("a tensor record has a malformed storage or offset")
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= 8
                and all(type(v) is int and v >= 0 for v in size + stride)):  # fmt: skip
            raise Refused("a tensor record has a malformed size or stride")
        if hooks or metadata:
            raise Refused("a tensor record carries backward hooks or metadata (a network pickle has neither)")
        numel = math.prod(size)
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if numel else offset
        if offset < 0 or extent > storage.numel():
            raise Refused(f"a tensor record reaches past its storage ({extent} > {storage.numel()} values)")
        self.tensor_bytes += numel * storage.element_size()
        if self.tensor_bytes > self.storage_bytes:  # views may not make more values than the storages hold
            raise Refused("its tensor records view more values than its storages hold")
        return storage.as_strided(size, stride, offset)

    def _rebuild_from_type(self, func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
        """torch._tensor._rebuild_from_type_v2 for plain tensors / parameters only."""
        if new_type not in (TENSOR, PARAMETER) or func not in (self._rebuild_tensor, rebuild_parameter):
            raise Refused("a tensor record has an unsupported tensor type")
        if state or not isinstance(args, tuple):
            raise Refused("a tensor record carries object state")
        return func(*args)

    # ------------------------------------------------------------------ opcodes with a rule of their own
    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, DtypeRecord):
            inst.build(state)
        elif type(inst) is NumericArray:
            np.ndarray.__setstate__(inst, self._array_state(state))
        elif type(inst) is EasyDict and not state:
            pass  # a dict subclass may carry an empty __dict__ state
        else:
            raise Refused(f"BUILD would set the state of a {type(inst).__name__} (a network pickle sets state only on "
                          "numpy arrays and dtypes)")

    def _array_state(self, state: Any) -> tuple:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)
                and all(type(v) is int and v >= 0 for v in state[1])):  # fmt: skip
            raise Refused("a numpy array record has a malformed state")
        version, shape, dtype, fortran, raw = state
        if not isinstance(dtype, DtypeRecord) or not isinstance(raw, bytes):
            raise Refused("a numpy array record has a non-numeric type")
        if math.prod(shape) * dtype.dtype.itemsize != len(raw):
            raise Refused(f"a numpy array record of shape {shape[:8]} holds {len(raw)} bytes of data")
        self.charge(len(raw))
        return version, shape, dtype.dtype, bool(fortran), raw

    def _memo_index(self, i: int) -> int:
        if not 0 <= i <= self.size:  # a file of n bytes cannot have stored more than n objects
            raise Refused(f"memo index {i} is larger than the file ({self.size} bytes) could have stored")
        return i

    def load_put(self) -> None:
        self.memo[self._memo_index(int(self.readline()[:-1]))] = self.stack[-1]

    def load_binput(self) -> None:
        self.memo[self._memo_index(self.read(1)[0])] = self.stack[-1]

    def load_long_binput(self) -> None:
        self.memo[self._memo_index(int.from_bytes(self.read(4), "little"))] = self.stack[-1]

    def load_frame(self) -> None:
        frame_size = int.from_bytes(self.read(8), "little")
        self.charge(min(frame_size, self.size))  # the frame is copied once into the unframer's buffer
        self._unframer.load_frame(frame_size)

    def _instantiate_checked(self, cls: Any, args: Any, kwargs: Any = None) -> None:
        if not any(cls is stand_in for stand_in in self.constructible) or kwargs:
            name = getattr(cls, "name", None) or getattr(cls, "__qualname__", type(cls).__name__)
            raise Refused(f"it creates a {name} object (NEWOBJ/OBJ/INST; a network pickle creates only dicts and sets)")
        self.append(cls(*args))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self._instantiate_checked(self.stack.pop(), args)

    def load_newobj_ex(self) -> None:
        kwargs, args = self.stack.pop(), self.stack.pop()
        self._instantiate_checked(self.stack.pop(), args, kwargs)

    def load_obj(self) -> None:
        args = self.pop_mark()
        self._instantiate_checked(args.pop(0), args)

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        self._instantiate_checked(self.find_class(module, name), self.pop_mark())

    def _container(self, kinds: tuple[type, ...], what: str) -> Any:
        target = self.stack[-1]
        if type(target) not in kinds:
            raise Refused(f"{what} would change a {type(target).__name__} (a network pickle only fills containers it "
                          "made)")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._container((list,), "APPEND").append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._container((list,), "APPENDS").extend(items)

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._container((dict, EasyDict, collections.OrderedDict), "SETITEM")[check_key(key)] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._container((dict, EasyDict, collections.OrderedDict), "SETITEMS")
        for i in range(0, len(items) - 1, 2):
            target[check_key(items[i])] = items[i + 1]

    def load_dict(self) -> None:
        items = self.pop_mark()
        self.append({check_key(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)})

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._container((set,), "ADDITEMS").update(self._members(items))

    def load_frozenset(self) -> None:
        self.append(frozenset(self._members(self.pop_mark())))


def _refuse(what: str):
    def load(self: Reader) -> None:
        raise RefusedGlobal(what)

    return load


def _charged(load, data_op: bool):
    """Wrap an opcode handler: charge OPCODE_COST first, and the size of what a data opcode pushed after it."""

    def run(self: Reader) -> None:
        self.charge(OPCODE_COST)
        load(self)
        if data_op:
            self.charge(sys.getsizeof(self.stack[-1]))

    return run


_DATA_OPS = {pickle.BINBYTES, pickle.SHORT_BINBYTES, pickle.BINBYTES8, pickle.BINUNICODE, pickle.SHORT_BINUNICODE,
             pickle.BINUNICODE8, pickle.UNICODE, pickle.STRING, pickle.BINSTRING, pickle.SHORT_BINSTRING, pickle.LONG,
             pickle.LONG1, pickle.LONG4, pickle.TUPLE, pickle.LIST, pickle.DICT}  # fmt: skip
_OWN_OPS = {pickle.BUILD: Reader.load_build, pickle.PUT: Reader.load_put, pickle.BINPUT: Reader.load_binput,
            pickle.LONG_BINPUT: Reader.load_long_binput, pickle.FRAME: Reader.load_frame,
            pickle.NEWOBJ: Reader.load_newobj, pickle.NEWOBJ_EX: Reader.load_newobj_ex, pickle.OBJ: Reader.load_obj,
            pickle.INST: Reader.load_inst, pickle.APPEND: Reader.load_append, pickle.APPENDS: Reader.load_appends,
            pickle.SETITEM: Reader.load_setitem, pickle.SETITEMS: Reader.load_setitems, pickle.DICT: Reader.load_dict,
            pickle.ADDITEMS: Reader.load_additems, pickle.FROZENSET: Reader.load_frozenset,
            pickle.EXT1: _refuse("an extension code"), pickle.EXT2: _refuse("an extension code"),
            pickle.EXT4: _refuse("an extension code"), pickle.BYTEARRAY8: _refuse("a protocol-5 bytearray"),
            pickle.NEXT_BUFFER: _refuse("an out-of-band buffer"),
            pickle.READONLY_BUFFER: _refuse("an out-of-band buffer")}  # fmt: skip
Reader.dispatch = {op[0]: _charged(_OWN_OPS.get(op, Reader.dispatch[op[0]]), op in _DATA_OPS)
                   for op in (bytes([k]) for k in Reader.dispatch)}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Tensor storages: torch.save's legacy format, parsed here so that a storage's declared size is checked first.


class _StorageReader(Reader):
    """Reads one of the small pickles of a legacy torch.save blob: storage type names and storage references."""

    def __init__(self, data: bytes, stream: io.BytesIO) -> None:
        super().__init__(data, budget=BUDGET_BASE // 16, stream=stream)
        self.refs: list[tuple[str, torch.dtype, int]] = []

    def find_class(self, module: str, name: str) -> Any:
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise RefusedGlobal(f"{module}.{name} (inside a tensor storage record)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0 and pid[5] is None):  # fmt: skip
            raise Refused("a tensor storage record has a malformed storage reference")
        nbytes = pid[4] * torch._utils._element_size(pid[1])
        if nbytes > self.size:  # declared before its data: refused before anything is allocated for it
            raise Refused(f"a tensor storage record declares {nbytes} bytes but holds {self.size}")
        self.refs.append((pid[2], pid[1], pid[4]))
        return pid[2]


def read_legacy_storage(data: bytes) -> torch.Tensor:
    """A storage written by torch.save(..., _use_new_zipfile_serialization=False) -> its values, flat [numel].

    The blob is five pickles (magic number, protocol version, system info, the storage reference, the storage keys)
    followed by the storage's element count and raw bytes; torch.load would allocate the declared size first.
    """
    stream = io.BytesIO(data)
    readers = [_StorageReader(data, stream) for _ in range(5)]
    magic, protocol, info, key, keys = (reader.load() for reader in readers)
    if magic != LEGACY_MAGIC or protocol != 1001 or not isinstance(info, dict) or info.get("little_endian") is not True:
        raise Refused("a tensor storage record is not a little-endian torch.save blob")
    refs = [ref for reader in readers for ref in reader.refs]
    if len(refs) != 1 or key != refs[0][0] or keys != [key]:
        raise Refused("a tensor storage record holds something other than one storage")
    _, dtype, numel = refs[0]
    nbytes = numel * torch._utils._element_size(dtype)
    if int.from_bytes(stream.read(8), "little") != numel:
        raise Refused("a tensor storage record's data length differs from its declaration")
    raw = stream.read(nbytes)
    if len(raw) != nbytes or stream.read(1):
        raise Refused("a tensor storage record is truncated or has trailing bytes")
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# The whole read.


def read_pickle(path: str, hints: dict[str, str] | None = None, supported: str = "") -> Any:
    """Unpickle `path` with Reader; every failure is one UserError line naming the file (nothing in it runs).

    hints: {global name prefix: why such a file is not supported}; supported: a sentence tail naming what is.
    """
    if not os.path.isfile(path):
        raise UserError(f"network pickle not found: {path}")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise UserError(f"refusing {path}: {size / 2**30:.1f} GiB is larger than any StyleGAN2 network pickle "
                            f"(limit {MAX_FILE_BYTES >> 30} GiB); nothing was read")  # fmt: skip
        data = f.read(MAX_FILE_BYTES + 1)  # one read: the bytes are parsed from memory, the path is never reopened
    reader = Reader(data)
    try:
        obj = reader.load()
        check_structure(obj)
        return obj
    except OverBudget:
        raise UserError(f"refusing {path}: reading it would take more than the reader's memory budget for a file "
                        f"of {len(data)} bytes ({reader.budget / 2**20:.0f} MiB = 2 x its size + 64 MiB), which no "
                        "network pickle needs; nothing in the file was run") from None  # fmt: skip
    except RefusedGlobal as e:
        name = str(e)
        hint = next((h for prefix, h in (hints or {}).items() if name.startswith(prefix)), None)
        hint = hint or f"a StyleGAN2 network pickle never needs it{supported}"
        raise UserError(f"refusing {path}: it calls {name} ({hint}); nothing in the file was run") from None
    except Refused as e:
        raise UserError(f"refusing {path}: {e}; nothing in the file was run") from None
    except MemoryError:
        raise UserError(f"cannot read {path}: out of memory") from None
    except Exception as e:  # truncated/corrupt: EOFError, UnpicklingError, ValueError, KeyError, ...
        raise UserError(f"cannot read NVIDIA network pickle {path} (truncated or corrupt): {type(e).__name__}: "
                        f"{short(first_line(e), 120)}") from None  # fmt: skip
