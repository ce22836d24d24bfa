"""The restricted unpickler behind the PyTorch reader: a pickle from ``torch.save`` becomes plain
containers and lazy tensor descriptions, and nothing from the file ever runs.

``torch.save`` pickles a state dict with a handful of globals: ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` (and its relatives), storage classes (``torch.FloatStorage``,
``torch.storage.UntypedStorage``), dtypes (``torch.float8_e4m3fn``) and a few builtins. Storages
are not in the pickle: each is a *persistent id*, ``("storage", storage_type, key, location,
numel)`` (the zip layout) with a sixth item, a view, in the legacy layout.

:class:`RestrictedUnpickler` resolves exactly the globals ``torch.load(weights_only=True)``
allows, each to a stand-in defined here that validates its arguments and builds a
:class:`TensorRef` (shape, strides, offset, dtype, storage reference) instead of a tensor. Any
other global is refused with :class:`~ckptconv.errors.UnsafeInputError` naming it; a pickled
``nn.Module`` is refused with a message saying to save its ``state_dict``. The stand-ins refuse
``BUILD`` state (``__setstate__``) except where torch's own pickles use it (the state dict's
``_metadata``), so a pickle cannot reach an attribute of anything.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
from collections import OrderedDict
from typing import Any, NamedTuple

from ..errors import FETCH_AGAIN, CorruptFileError, UnsafeInputError, UnsupportedError, damaged

__all__ = [
    "StorageRef",
    "TensorRef",
    "Unrepresentable",
    "RestrictedUnpickler",
    "load_plain",
    "check_opcodes",
    "TruncatedPickle",
    "read_pickle",
    "TORCH_DTYPES",
    "module_message",
]

MAX_DIMS = 64

# torch dtype name -> ckptconv dtype name (None: torch has it, numpy and safetensors do not)
TORCH_DTYPES: dict[str, str | None] = {
    "float32": "float32", "float": "float32",
    "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16",
    "bfloat16": "bfloat16",
    "int8": "int8", "int16": "int16", "short": "int16", "int32": "int32", "int": "int32",
    "int64": "int64", "long": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "bool": "bool",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
    "complex64": "complex64", "cfloat": "complex64",
    "complex128": "complex128", "cdouble": "complex128",
    "float8_e4m3fnuz": "float8_e4m3fnuz", "float8_e5m2fnuz": "float8_e5m2fnuz", "float8_e8m0fnu": None,
    "float4_e2m1fn_x2": None, "complex32": None, "chalf": None,
    "qint8": None, "quint8": None, "qint32": None, "quint4x2": None, "quint2x4": None,
    "bits8": None, "bits16": None, "bits1x8": None, "bits2x4": None, "bits4x2": None,
    **{f"uint{n}": None for n in range(1, 8)},
    **{f"int{n}": None for n in range(1, 8)},
}

# legacy storage class -> dtype name
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}

ITEMSIZE: dict[str, int] = {
    "float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int8": 1, "int16": 2, "int32": 4,
    "int64": 8, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "complex64": 8, "complex128": 16,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
}

_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_new_tuple = tuple.__new__  # a named tuple made without a call of its Python __new__
_new_object = object.__new__


# --- what the pickle turns into -----------------------------------------------------------------


class StorageRef(NamedTuple):
    """A persistent id: the storage ``key`` (``data/<key>`` in a zip), read as ``dtype``.

    ``numel`` counts elements of ``dtype``; ``view`` is the legacy layout's storage view
    ``(element offset into the root storage, element count)`` or None. (A named tuple: made
    once per storage, 10,000 times for a large state dict.)
    """

    key: str
    dtype: str
    numel: int
    view: tuple[int, int] | None = None

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


class TensorRef:
    """A tensor as ``torch._utils._rebuild_tensor_v2`` describes it: a strided view of a storage.

    Attributes:
        storage: The :class:`StorageRef`.
        offset: Storage offset, in elements of ``dtype``.
        shape, stride: The view (strides in elements).
        dtype: torch dtype name (``float32``).
    """

    __slots__ = ("storage", "offset", "shape", "stride", "dtype")

    def __init__(self, storage: StorageRef, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], dtype: str) -> None:
        self.storage = storage
        self.offset = offset
        self.shape = shape
        self.stride = stride
        self.dtype = dtype

    def __setstate__(self, state: object) -> None:
        raise UnsafeInputError("the pickle sets state on a tensor, which torch's own pickles never do")

    def identity(self) -> tuple[object, ...]:
        """Two refs with equal identities are one tensor under two names (tied weights)."""
        return (self.storage.key, self.storage.view, self.offset, self.shape, self.stride, self.dtype)


class Unrepresentable:
    """A value torch allows in a weights file that ckptconv cannot write as a dense array
    (a quantized, sparse or nested tensor, a meta tensor without data, a tensor subclass)."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __setstate__(self, state: object) -> None:
        pass  # its state is never looked at

    def __repr__(self) -> str:
        return f"<{self.what}>"


class _Marker:
    """A global that is only ever compared or passed along (a dtype, a device, a layout)."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name

    def __call__(self, *args: object) -> Any:
        if self.kind == "device":  # torch.device("cuda", 0): where it was, not where it will be
            return "device"
        if self.kind == "layout":  # _get_layout("torch.sparse_coo"), only inside sparse tensors
            return self
        raise UnsafeInputError(f"the pickle calls {self.name}, which torch.save never does")

    def __setstate__(self, state: object) -> None:
        raise UnsafeInputError(f"the pickle sets state on {self.name}, which torch.save never writes")

    def __repr__(self) -> str:
        return self.name


class StateDict(OrderedDict):  # type: ignore[type-arg]
    """``collections.OrderedDict`` as a state dict pickles it: items, then ``{"_metadata": ...}``
    (per-module versions) as BUILD state, which is kept aside, never set as an attribute."""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise UnsafeInputError("the pickle sets a non-dict state on an OrderedDict")
        self.torch_metadata = state.get("_metadata")


# --- the allowed globals ----------------------------------------------------------------------


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CorruptFileError(damaged(f"{what} is {type(value).__name__} {value!r}, not an integer", "the pickle"))
    return value


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS:
        raise CorruptFileError(damaged(f"{what} is {type(value).__name__}, not a sequence of at most {MAX_DIMS} integers", "the pickle"))
    if all(type(v) is int and v >= 0 for v in value):  # what torch writes: no further checks
        return tuple(value)
    out = tuple(_int(v, what) for v in value)
    if any(v < 0 for v in out):
        raise CorruptFileError(damaged(f"{what} {list(out)} has a negative entry", "the pickle"))
    return out


def _tensor(storage: object, offset: object, size: object, stride: object, dtype: str | None = None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise CorruptFileError(damaged("a tensor's storage is not a storage reference of the file", "the pickle"))
    offset = _int(offset, "storage offset")
    if offset < 0:
        raise CorruptFileError(damaged(f"negative storage offset {offset}", "the pickle"))
    shape = _ints(size, "size")
    strides = _ints(stride, "stride")
    if len(shape) != len(strides):
        raise CorruptFileError(damaged(f"size {list(shape)} and stride {list(strides)} differ in length", "the pickle"))
    return TensorRef(storage, offset, shape, strides, dtype or storage.dtype)


def _check_metadata(metadata: object) -> None:
    """conj/neg bits would change the values torch gives back: refuse rather than misread."""
    if isinstance(metadata, dict) and any(metadata.get(bit) for bit in ("conj", "neg")):
        raise UnsupportedError(
            "a tensor saved with a lazy conjugate or negative bit; call resolve_conj() / "
            "resolve_neg() before torch.save"
        )


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object) -> TensorRef:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage: object, offset: object, size: object, stride: object,
                       requires_grad: object = False, backward_hooks: object = None,
                       metadata: object = None) -> TensorRef:
    if (metadata is None and type(storage) is StorageRef and type(offset) is int and offset >= 0
            and type(size) is tuple and type(stride) is tuple and len(size) == len(stride) <= MAX_DIMS):
        # what torch writes for every tensor (tuples of non-negative ints): accepted here in
        # one call; anything else goes through the checks below, which say what is wrong
        for value in size:
            if type(value) is not int or value < 0:
                break
        else:
            for value in stride:
                if type(value) is not int or value < 0:
                    break
            else:
                # TensorRef's __init__, in this frame: one call fewer per tensor
                ref = _new_object(TensorRef)
                ref.storage = storage
                ref.offset = offset
                ref.shape = size
                ref.stride = stride
                ref.dtype = storage.dtype
                return ref
    _check_metadata(metadata)
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage: object, offset: object, size: object, stride: object,
                       requires_grad: object, backward_hooks: object, dtype: object,
                       metadata: object = None) -> TensorRef:
    _check_metadata(metadata)
    if not isinstance(dtype, _Marker) or dtype.kind != "dtype":
        raise CorruptFileError(damaged("_rebuild_tensor_v3 without a torch dtype", "the pickle"))
    return _tensor(storage, offset, size, stride, dtype.name)


def _rebuild_parameter(data: object, requires_grad: object = True, backward_hooks: object = None,
                       state: object = None) -> object:
    if not isinstance(data, (TensorRef, Unrepresentable)):
        raise CorruptFileError(damaged("a Parameter whose data is not a tensor", "the pickle"))
    return data


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    if func not in _TENSOR_BUILDERS or not isinstance(args, tuple):
        raise UnsafeInputError(f"torch._tensor._rebuild_from_type_v2 with {func!r}, which torch.save never writes")
    if not isinstance(new_type, _Marker) or new_type.kind != "type":
        raise UnsafeInputError("torch._tensor._rebuild_from_type_v2 with a type that is not a tensor class")
    result = func(*args)
    if new_type.name not in ("torch.Tensor", "torch.nn.parameter.Parameter", "torch._tensor.Tensor"):
        return Unrepresentable(f"a tensor of class {new_type.name}")
    return result


def _unrepresentable(what: str) -> Any:
    def build(*args: object) -> Unrepresentable:
        return Unrepresentable(what)

    return build


def _size(value: object = ()) -> tuple[int, ...]:
    return _ints(value, "torch.Size")


def _encode(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode``: how protocol-2 pickles write bytes (``encode(str, "latin1")``)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeInputError("_codecs.encode is allowed only as bytes are pickled: (str, 'latin1')")
    return text.encode("latin1")


def _plain(kind: type) -> Any:
    def build(*args: object) -> object:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset, bytes, str, dict, int, float))):
            raise UnsafeInputError(f"builtins.{kind.__name__} called with arguments torch.save never writes")
        return kind(*args)

    return build


_TENSOR_BUILDERS = {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3}

# (module, name) -> stand-in. Mirrors torch.load(weights_only=True)'s allowlist.
_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): StateDict,
    ("collections", "Counter"): _plain(dict),
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_qtensor"): _unrepresentable("a quantized tensor"),
    ("torch._utils", "_rebuild_sparse_tensor"): _unrepresentable("a sparse tensor"),
    ("torch._utils", "_rebuild_nested_tensor"): _unrepresentable("a nested tensor"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): _unrepresentable("a meta tensor (no data)"),
    ("torch._utils", "_rebuild_wrapper_subclass"): _unrepresentable("a tensor subclass"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): _unrepresentable("a device tensor saved through numpy"),
    ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"): _unrepresentable("a device tensor"),
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _size,
    ("torch", "device"): _Marker("device", "torch.device"),
    ("torch.serialization", "_get_layout"): _Marker("layout", "torch.serialization._get_layout"),
    ("torch", "Tensor"): _Marker("type", "torch.Tensor"),
    ("torch._tensor", "Tensor"): _Marker("type", "torch._tensor.Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("type", "torch.nn.parameter.Parameter"),
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): _plain(set),
    ("builtins", "frozenset"): _plain(frozenset),
    ("builtins", "bytearray"): _plain(bytearray),
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): _plain(set),
    ("__builtin__", "bytearray"): _plain(bytearray),
    ("__builtin__", "complex"): complex,
}
for _name in TORCH_DTYPES:
    _ALLOWED[("torch", _name)] = _Marker("dtype", _name)
for _scheme in ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
                "per_channel_symmetric", "per_channel_affine_float_qparams"):
    _ALLOWED[("torch", _scheme)] = _Marker("qscheme", _scheme)
for _storage in STORAGE_DTYPES:
    for _module in ("torch", "torch.cuda", "torch.storage"):
        _ALLOWED[(_module, _storage)] = _Marker("storage", _storage)
for _tensor_class in ("FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "LongTensor",
                      "IntTensor", "ShortTensor", "CharTensor", "ByteTensor", "BoolTensor"):
    _ALLOWED[("torch", _tensor_class)] = _Marker("type", f"torch.{_tensor_class}")


def module_message(name: str) -> str:
    return (
        f"the file holds a pickled model object ({name}), i.e. code, not weights: ckptconv never "
        "runs code from a file. Save the weights instead: torch.save(model.state_dict(), PATH)"
    )


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` pickle into containers and :class:`TensorRef` objects.

    Args:
        file: The pickle stream.
        legacy: The pre-1.6 layout (storage persistent ids carry a sixth item, the view).

    Raises (from :meth:`load`):
        UnsafeInputError: a global outside torch's weights-only allowlist (naming it), or a
            pickled ``nn.Module``.
        CorruptFileError: a malformed persistent id or tensor description.
    """

    def __init__(self, file: io.BufferedIOBase, *, legacy: bool = False, raw: bytes | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self.legacy = legacy
        self.raw = raw  # the whole pickle, when at hand: to tell a pickled module from other code
        self.storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is not None:
            return found
        full = f"{module}.{name}"
        if module.startswith("torch.nn.modules") or self._holds_modules():
            raise UnsafeInputError(module_message(full))
        raise UnsafeInputError(
            f"the pickle asks for {full}, which a weights file never needs: refusing to load it "
            "(ckptconv allows only what torch.load(weights_only=True) allows and runs nothing)"
        )

    def _holds_modules(self) -> bool:
        return self.raw is not None and b"torch.nn.modules" in self.raw

    def persistent_load(self, pid: Any) -> Any:
        # the common case in few steps: a zip archive's pid of a storage first met, as torch
        # writes it (a decimal key, a plain count); everything else goes through _storage,
        # which says what is wrong
        if type(pid) is tuple and len(pid) == 5 and not self.legacy:
            kind, storage_type, key, _location, numel = pid
            if (kind == "storage" and type(storage_type) is _Marker and type(key) is str and type(numel) is int
                    and numel >= 0 and storage_type.kind == "storage" and key not in self.storages
                    and key.isdigit() and key.isascii() and len(key) <= 200):
                root = self.storages[key] = _new_tuple(StorageRef, (key, STORAGE_DTYPES[storage_type.name], numel, None))
                return root
        return self._storage(pid)

    def _storage(self, pid: Any) -> Any:
        """:meth:`persistent_load` without its shortcut: every check, saying what is wrong."""
        if not isinstance(pid, tuple) or not pid:
            raise CorruptFileError(damaged(f"malformed persistent id {pid!r:.80}", "the pickle"))
        kind = pid[0]
        if type(kind) is bytes:
            kind = kind.decode("ascii", "replace")
        if kind == "module":  # the legacy layout's pickled nn.Module classes
            klass = pid[1] if len(pid) > 1 else None
            raise UnsafeInputError(module_message(getattr(klass, "name", "an nn.Module")))
        if kind != "storage" or len(pid) != (6 if self.legacy else 5):
            raise CorruptFileError(damaged(f"unknown persistent id {pid!r:.80}", "the pickle"))
        storage_type, key, _location, numel = pid[1:5]
        if type(storage_type) is not _Marker or storage_type.kind != "storage":
            raise CorruptFileError(damaged(f"persistent id with storage type {storage_type!r:.60}", "the pickle"))
        if type(key) is bytes:
            key = key.decode("ascii", "replace")
        root = self.storages.get(key) if isinstance(key, str) else None
        if root is None and not (type(key) is str and key.isdigit() and key.isascii() and len(key) <= 200) and (
                not isinstance(key, str) or not _KEY.fullmatch(key) or key in (".", "..")):  # torch's: decimal
            raise UnsafeInputError(f"storage key {key!r:.80} is not a plain name; refusing to follow it")
        if type(numel) is not int or numel < 0:  # torch's own: a plain count (else say what it is)
            numel = _int(numel, "storage size")
            if numel < 0:
                raise CorruptFileError(damaged(f"storage {key} has negative size {numel}", "the pickle"))
        dtype = STORAGE_DTYPES[storage_type.name]
        if root is None:
            root = self.storages[key] = StorageRef(key, dtype, numel)
        elif root.dtype != dtype or root.numel != numel:
            raise CorruptFileError(
                f"storage {key} is declared twice, as {root.numel} {root.dtype} and as {numel} {dtype} "
                f"(the pickle is damaged); {FETCH_AGAIN}"
            )
        if self.legacy and pid[5] is not None:
            return self._legacy_view(root, pid[5])
        return root

    def _legacy_view(self, root: StorageRef, view: object) -> StorageRef:
        if not isinstance(view, tuple) or len(view) != 3:
            raise CorruptFileError(damaged(f"malformed storage view {view!r:.80}", "the pickle"))
        offset, size = _int(view[1], "storage view offset"), _int(view[2], "storage view size")
        if offset < 0 or size < 0 or offset + size > root.numel:
            raise UnsafeInputError(
                f"a storage view [{offset}, {offset + size}) lies outside storage {root.key} "
                f"of {root.numel} elements"
            )
        return StorageRef(root.key, root.dtype, size, (offset, size))


# Opcodes torch.save never writes, whatever its pickle protocol: instantiation by class name
# (INST, OBJ), the extension registry (EXT*), out-of-band buffers (protocol 5).
_FORBIDDEN_OPCODES = {"INST", "OBJ", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"}
_MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}

# How each opcode's argument is laid out, from the standard library's own table of the pickle
# protocols (pickletools.opcodes): (name, layout, size, role) by opcode byte. Layouts: a fixed
# number of bytes; lines up to a newline; a length of 1, 4 (signed or not) or 8 bytes, then
# that many bytes.
_FIXED, _LINES, _LEN1, _LEN4, _LEN4U, _LEN8U = range(6)
_PLAIN, _FORBIDDEN, _MEMO, _STOP, _TEXT = range(5)
_TEXT_ARGUMENTS = {"unicodestring1", "unicodestring4", "unicodestring8"}
_LENGTH_LAYOUTS = {
    pickletools.TAKEN_FROM_ARGUMENT1: _LEN1,
    pickletools.TAKEN_FROM_ARGUMENT4: _LEN4,
    pickletools.TAKEN_FROM_ARGUMENT4U: _LEN4U,
    pickletools.TAKEN_FROM_ARGUMENT8U: _LEN8U,
}


def _opcode_table() -> list[tuple[str, int, int, int] | None]:
    table: list[tuple[str, int, int, int] | None] = [None] * 256
    for op in pickletools.opcodes:
        arg = op.arg
        if arg is None:
            layout, size = _FIXED, 0
        elif arg.n >= 0:
            layout, size = _FIXED, arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            layout, size = _LINES, 2 if arg.name == "stringnl_noescape_pair" else 1
        else:
            layout, size = _LENGTH_LAYOUTS[arg.n], 0
        role = (_FORBIDDEN if op.name in _FORBIDDEN_OPCODES else _MEMO if op.name in _MEMO_OPCODES
                else _STOP if op.name == "STOP" else _TEXT if arg is not None and arg.name in _TEXT_ARGUMENTS
                else _PLAIN)
        table[op.code.encode("latin-1")[0]] = (op.name, layout, size, role)
    return table


_OPCODES = _opcode_table()
# opcode byte -> the walk's fast path (most of a state dict's opcodes): its length with its
# argument for a plain opcode of fixed length (MARK, TUPLE, BININT1, REDUCE, ...), _MEMO1 or
# _MEMO4 for the memo opcodes with a 1- or 4-byte index (BINPUT, BINGET, LONG_BINPUT,
# LONG_BINGET), 0 for the rest.
_MEMO1, _MEMO4 = -1, -4


def _fast_path(spec: tuple[str, int, int, int] | None) -> int:
    if spec is None or spec[1] != _FIXED:
        return 0
    if spec[3] == _PLAIN:
        return 1 + spec[2]
    if spec[3] == _MEMO:
        return _MEMO1 if spec[2] == 1 else _MEMO4
    return 0


_GENERAL = [_fast_path(spec) for spec in _OPCODES]
# Shortcuts, each giving exactly what the general code gives (tests compare the two walks):
# BINUNICODE (a state dict's keys) taken whole when it is whole and UTF-8, LONG_BINPUT and
# LONG_BINGET when whole, and, once more
# opcodes than 255 have been read (a 1-byte memo index can then no longer run ahead of them),
# BINPUT and BINGET as plain opcodes of 2 bytes.
_TEXT4, _LONG_MEMO = -5, -6
_FAST = [_TEXT4 if byte == ord("X") else _LONG_MEMO if step == _MEMO4 else step for byte, step in enumerate(_GENERAL)]
_FAST_LATE = [2 if step == _MEMO1 else step for step in _FAST]
_U32 = struct.Struct("<I").unpack_from


def check_opcodes(data: bytes) -> int:
    """Walk the pickle's opcodes up to its STOP without running any, before it is unpickled:
    refuses opcodes torch never writes, memo indices no pickler assigns (a huge one would make
    the unpickler allocate a memo that large), and damage (a length beyond the data) before the
    unpickler would allocate what it claims. Returns the pickle's length in bytes.

    The walk reads only the opcodes and their argument lengths (``pickletools.genops`` decodes
    every argument: ten times slower on a state dict of 10,000 tensors); arguments are decoded
    by the unpickler, which reports bad ones as damage.

    Raises:
        UnsafeInputError: an opcode torch.save never writes, or an implausible memo index.
        CorruptFileError: the pickle is malformed; :class:`TruncatedPickle` (a subclass) when
            ``data`` ends before the pickle does.
    """
    return _walk(data, _FAST, _FAST_LATE)


def _walk(data: bytes, fast: list[int], late: list[int]) -> int:
    """:func:`check_opcodes` with its opcode tables: ``fast`` at first, ``late`` from the 256th
    opcode on (``_GENERAL`` for both: no shortcut)."""
    table = _OPCODES
    end = len(data)
    pos = 0
    count = 0
    while pos < end:
        step = fast[data[pos]]
        if step > 0:
            pos += step
            count += 1
            continue
        # the common cases whole, in few steps; what is short, truncated or damaged goes on to
        # the general code below, which says what is wrong
        if step == _LONG_MEMO:
            if pos + 5 <= end:
                count += 1
                (index,) = _U32(data, pos + 1)
                if index > count:
                    raise _memo_slot_ahead(index, count)
                pos += 5
                continue
            step = _MEMO4
        if step == _TEXT4:
            stop = pos + 5 + _U32(data, pos + 1)[0] if pos + 5 <= end else end + 1
            if stop <= end:
                try:
                    data[pos + 5 : stop].decode("utf-8")
                except UnicodeDecodeError:
                    pass
                else:
                    count += 1
                    pos = stop
                    continue
            step = 0
        if step == _MEMO1 and count > 254:
            fast = late  # from this opcode on (the 256th)
        if step:  # a memo opcode: its index may not run ahead of the opcodes so far
            count += 1
            stop = pos + 1 - step
            if stop > end:
                pos = stop  # truncated: reported after the loop
                break
            index = data[pos + 1] if step == _MEMO1 else int.from_bytes(data[pos + 1 : stop], "little")
            if index > count:
                raise _memo_slot_ahead(index, count)
            pos = stop
            continue
        spec = table[data[pos]]
        if spec is None:
            raise CorruptFileError(f"the pickle is damaged (unknown opcode {data[pos:pos + 1]!r} at byte {pos}); {FETCH_AGAIN}")
        name, layout, size, role = spec
        count += 1
        at = pos + 1
        if layout == _FIXED:
            stop = at + size
        elif layout == _LINES:
            stop = at
            for _ in range(size):
                newline = data.find(b"\n", stop)
                if newline < 0:
                    raise TruncatedPickle(f"the pickle is damaged ({name} at byte {pos} has no newline); {FETCH_AGAIN}")
                stop = newline + 1
        else:
            width = 1 if layout == _LEN1 else 8 if layout == _LEN8U else 4
            length = int.from_bytes(data[at : at + width], "little", signed=layout == _LEN4)
            if length < 0:
                raise CorruptFileError(f"the pickle is damaged ({name} at byte {pos} has a negative length); {FETCH_AGAIN}")
            stop = at + width + length
        if stop > end:
            raise TruncatedPickle(f"the pickle is damaged ({name} at byte {pos} runs past its end: truncated); {FETCH_AGAIN}")
        if role != _PLAIN:
            if role == _TEXT:  # keys and global names: damaged when not UTF-8
                try:
                    data[stop - length : stop].decode("utf-8")
                except UnicodeDecodeError:
                    raise CorruptFileError(f"the pickle is damaged ({name} at byte {pos} is not UTF-8); {FETCH_AGAIN}") from None
            elif role == _STOP:
                return pos + 1
            elif role == _FORBIDDEN:
                raise UnsafeInputError(f"the pickle uses opcode {name}, which torch.save never writes")
            else:  # PUT and GET: a decimal line
                index = _memo_index(data[at:stop], name, pos)
                if index > count:
                    raise _memo_slot_ahead(index, count)
        pos = stop
    if pos > end:
        raise TruncatedPickle(f"the pickle is damaged (its last opcode runs past its end: truncated); {FETCH_AGAIN}")
    raise TruncatedPickle(damaged("the pickle has no end (STOP)", "the pickle"))


class TruncatedPickle(CorruptFileError):
    """:func:`check_opcodes` ran out of data before the pickle's STOP (an argument, a line or
    the STOP itself lies past the end): in a file read to its end, the file was cut short.
    From :func:`read_pickle`, ``data`` holds the bytes it read."""

    data: bytes = b""


def _memo_slot_ahead(index: int, count: int) -> UnsafeInputError:
    """Picklers number memo slots in order: a slot beyond the opcodes read so far would make
    the unpickler grow its memo to that many entries."""
    return UnsafeInputError(
        f"the pickle uses memo slot {index} after {count} opcodes; picklers number their slots in order"
    )


def _memo_index(arg: bytes, name: str, pos: int) -> int:
    try:
        return int(arg)
    except ValueError:
        raise CorruptFileError(f"the pickle is damaged ({name} at byte {pos} has no decimal index); {FETCH_AGAIN}") from None


MAX_PLAIN_BYTES = 64 * 2**20


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise UnsafeInputError(f"the pickle asks for {module}.{name} where torch writes plain data")

    def persistent_load(self, pid: Any) -> Any:
        raise CorruptFileError(damaged("a persistent id where torch writes plain data", "the pickle"))


def read_pickle(file: io.BufferedIOBase, limit: int, *, first: int) -> tuple[bytes, int]:
    """The bytes from ``file``'s position on, at most ``limit`` of them, and the length of the
    pickle they start with (:func:`check_opcodes`). A legacy file's pickles precede its
    storages: ``first`` bytes are read, then 16 times more while the walk of those fails (as
    it may only because they end early), up to ``limit``: the answer is the walk's of all
    ``limit`` bytes (or all the file holds), as if they had been read at once. ``file`` is
    left after the bytes read.

    Raises:
        TruncatedPickle: the pickle runs past ``limit`` bytes or the file's end (its
            ``data``: the bytes read); see :func:`check_opcodes` for the rest.
    """
    start = file.tell()
    size = min(first, limit)
    while True:
        data = file.read(size)
        if len(data) < size or size == limit:  # all there is to read: the walk's answer is final
            try:
                return data, check_opcodes(data)
            except TruncatedPickle as e:
                e.data = data
                raise
        try:
            return data, check_opcodes(data)
        except (CorruptFileError, UnsafeInputError):
            pass  # perhaps only because the bytes read end early (a length cut in two): read more
        size = min(size * 16, limit)
        file.seek(start)


def load_plain(file: io.BufferedIOBase) -> Any:
    """The next pickle of ``file``, of plain data (numbers, strings, lists, dicts): checked by
    :func:`check_opcodes`, no global resolved; ``file`` is left just after it."""
    start = file.tell()
    head, length = read_pickle(file, MAX_PLAIN_BYTES, first=64 * 2**10)
    file.seek(start + length)
    return _PlainUnpickler(io.BytesIO(head[:length]), encoding="utf-8").load()
