"""PyTorch ``torch.save`` files (``.pt``, ``.pth``, ``pytorch_model.bin``), read without torch.

This module is the format: it detects a file's layout, opens one file or a sharded set, and
turns the unpickled object into named entries (kinds, tied weights, each view checked and read).
Reading one file's layout is :mod:`._torch_layouts`'s; the restricted unpickler and the opcode
walk are :mod:`._torch_pickle`'s.

Layouts:

* **zip** (torch >= 1.6, the default): members ``<archive>/data.pkl`` (the pickled object),
  ``<archive>/data/<key>`` (one per storage, stored uncompressed and 64-byte aligned),
  ``byteorder``, ``version``, ``.format_version``, ``.storage_alignment``. Each tensor's bytes are
  read at their offset in the zip; a member someone re-zipped with compression is read through
  the decompressor, a window at a time. ``byteorder`` ``big`` is byte-swapped on read.
* **legacy** (``_use_new_zipfile_serialization=False``, torch < 1.6): pickles in a row — the
  magic number ``0x1950a86a20f9469cfc6c``, the protocol version 1001, a sys-info dict, the
  object, the sorted storage keys — then each storage as an int64 element count and its raw
  little-endian bytes.
* **Hugging Face sharded sets**: ``pytorch_model-00001-of-00002.bin`` ... plus
  ``pytorch_model.bin.index.json`` (``{"metadata": {"total_size": N}, "weight_map": {name:
  file}}``), opened through the index, or through a model directory holding them. A directory
  holding both safetensors and ``.bin`` weights is safetensors' (as ``transformers`` loads it);
  pass the ``.bin`` file or its index to read those.

No code from the file runs: the pickle goes through :mod:`._torch_pickle`'s restricted
unpickler (exactly the globals ``torch.load(weights_only=True)`` allows, each building a lazy
description). Every tensor's view (offset, shape, strides) is checked to lie inside its storage
and the storage inside the stored bytes before anything is read.

Names are the state-dict keys as torch writes them (``features.0.weight``); a training
checkpoint's containers are joined with ``/`` (``model/features.0.weight``,
``optimizer/state/0/exp_avg``). ``layer`` is the name without its last ``.``-part
(``model/features.0``), ``index`` follows Keras' order of known weight names (``weight``,
``bias``, ``running_mean``, ``running_var``). Optimizer state is kind ``optimizer``; learning-rate
schedulers, gradient scalers, RNG states and step/epoch counters are ``bookkeeping``; values that
are not tensors (``epoch: 3``) are listed in :attr:`Store.skipped <ckptconv.Store>`. Several names
viewing one stored tensor (tied weights) are each an entry, grouped in :attr:`Store.tied
<ckptconv.Store>`.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import by_name
from ..errors import (
    FETCH_AGAIN,
    CorruptFileError,
    FormatError,
    UnsafeInputError,
    UnsupportedError,
    truncated,
)
from ..store import ByteRange, Entry, Kind, Store, keras_order, read_byte_range
from ._torch_layouts import (
    MAGIC_PICKLE,
    ZIP_KIND,
    Parsed,
    Stored,
    archive_prefix,
    parse,
)
from ._torch_pickle import (
    ITEMSIZE,
    TORCH_DTYPES,
    StorageRef,
    TensorRef,
    Unrepresentable,
)
from ._zip import Member, central_directory, check_stored_crcs, first_member_kind
from .safetensors import (
    check_every_mapped_held,
    check_shard_holds,
    index_total_size,
    load_index,
    shard_files,
    weights_in_directory,
)

__all__ = ["FORMAT", "SHARDED_FORMAT", "sniff", "open"]

FORMAT = "pytorch"
SHARDED_FORMAT = "pytorch-sharded"
MAX_DEPTH = 100
_READ_WINDOW = 8 << 20
HF_WEIGHTS = "pytorch_model.bin"
HF_INDEX = "pytorch_model.bin.index.json"


# --- detection --------------------------------------------------------------------------------


def sniff(path: str | os.PathLike[str], head: bytes) -> bool:
    """A ``torch.save`` zip (a ``<archive>/data.pkl`` member) or legacy pickle stream, an index
    JSON naming such files, or a directory holding ``pytorch_model.bin`` or its index and no
    safetensors weights."""
    path = Path(path)
    if path.is_dir():
        return _directory_weights(path) is not None
    if not path.is_file():
        return False
    if _kind_of(path, head) is not None:
        return True
    if head.lstrip().startswith(b"{"):
        try:
            index = load_index(path)
        except (CorruptFileError, OSError, UnicodeError):
            return False
        files = [v for v in index["weight_map"].values() if isinstance(v, str)]
        if not files:
            return False
        if files[0].endswith((".bin", ".pt", ".pth")):
            return True  # a missing shard is then reported as such
        first = path.parent / files[0]
        try:
            with first.open("rb") as f:
                return _kind_of(first, f.read(4096)) is not None
        except OSError:
            return False
    return False


def _kind_of(path: Path, head: bytes) -> str | None:
    """``zip``, ``legacy``, ``tar`` (the pre-0.4 layout) or None. A zip whose first member is
    one torch.save writes first is taken as a torch.save archive without reading its central
    directory (thousands of entries for a large state dict); the reader checks it."""
    if head.startswith(b"PK\x03\x04"):
        kind = first_member_kind(head)
        if kind != "file":
            return "zip" if kind == "torch.save file" else None
        try:
            members = central_directory(path, kind="file")
        except (UnsafeInputError, UnsupportedError):
            return "zip"  # the reader says why it refuses the archive
        except (CorruptFileError, OSError):
            return None
        return "zip" if archive_prefix([m.filename for m in members]) is not None else None
    if head[:1] == b"\x80" and MAGIC_PICKLE in head[:32]:
        return "legacy"
    if head[257:262] == b"ustar" and b"storages" in head[:100] + head[512:]:
        return "tar"
    return None


def _directory_weights(path: Path) -> Path | None:
    """What ``transformers`` would load from a model directory, if it is PyTorch weights:
    ``pytorch_model.bin``, else its index, else the directory's only ``*.bin.index.json``;
    None when the directory holds safetensors weights (which ``transformers`` prefers)."""
    if weights_in_directory(path) is not None:
        return None
    for name in (HF_WEIGHTS, HF_INDEX):
        if (path / name).is_file():
            return path / name
    try:
        found = sorted(path.glob("*.bin.index.json"))
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


# --- opening ----------------------------------------------------------------------------------


def open(path: Path) -> Store:  # noqa: A001
    """Open a ``torch.save`` file, a sharded set's index, or a model directory (metadata only).

    Reads the pickle (through the restricted unpickler) and the zip directory or storage
    headers; no tensor bytes.

    Args:
        path: A ``.pt``/``.pth``/``.bin`` file, a ``pytorch_model.bin.index.json``, or a
            Hugging Face model directory holding either.

    Raises:
        UnsafeInputError: the pickle asks for a global a weights file never needs (naming it),
            holds a pickled ``nn.Module``, or declares views or storages beyond the stored bytes;
            a member or shard name leads outside the archive or directory.
        CorruptFileError: damaged or inconsistent (a missing ``data/<key>``, an index that
            disagrees with its shards); a file cut short, naming the tensors whose bytes it
            lacks and saying to copy or download it again.
        UnsupportedError: TorchScript archives, the pre-0.4 tar layout, and tensors ckptconv
            cannot hold as a dense array (quantized, sparse, complex32, ...).
    """
    given = os.fspath(path)  # what the store and its listing name: the path as the user gave it
    path = Path(path)
    target = path
    if path.is_dir():
        found = _directory_weights(path)
        if found is None:
            raise FormatError(f"the directory holds no {HF_WEIGHTS} or {HF_INDEX}", path=path)
        target = found
    with target.open("rb") as f:
        head = f.read(4096)
    layout = _kind_of(target, head)
    if layout is None and head.lstrip().startswith(b"{"):
        return _open_sharded(target, shown=given if target is path else os.path.join(given, target.name))
    parsed = parse(target, layout)
    walk = _Walk(target)
    walk.visit(parsed.root, (), "weight", 0)
    entries = walk.entries(parsed)
    keras_order(entries)
    return Store(
        entries,
        format=FORMAT,
        path=given,
        files=[target],
        metadata=parsed.metadata,
        tied=walk.tied(),
        skipped=walk.skipped,
        integrity=_integrity([(parsed.path, parsed.stored_members)], entries),
    )


def _integrity(files: list[tuple[Path, list[tuple[int, Member]]]], entries: list[Entry]) -> Callable[[], None] | None:
    """The check of every storage the zip archives (``(path, stored members)``) hold in place
    against its zip CRC-32 (the legacy layout records none; a compressed storage is checked by
    zipfile as it is read). A failing storage is reported with the tensors that view it."""
    files = [(path, members) for path, members in files if members]
    if not files:
        return None

    def check_all() -> None:
        for path, members in files:
            data_path = os.path.abspath(path)

            def tensors(start: int, size: int, data_path: str = data_path) -> list[str]:
                return [  # (only when a check fails: a path per entry made absolute is no cost)
                    e.name for e in entries
                    if e.byte_range is not None and os.path.abspath(e.byte_range.path) == data_path
                    and start <= e.byte_range.offset < start + max(size, 1)
                ]

            check_stored_crcs(path, members, what=ZIP_KIND, tensors=tensors)

    return check_all


def _open_sharded(index_file: Path, *, shown: str) -> Store:
    """The set an index names; ``shown``: the index as the user named it (the store's path)."""
    index = load_index(index_file)
    weight_map: dict[str, str] = index["weight_map"]
    entries: list[Entry] = []
    tied: list[tuple[str, ...]] = []
    skipped: list[tuple[str, str]] = []
    metadata: dict[str, str] = {}
    seen: set[str] = set()
    shards = shard_files(index_file, index)
    stored: list[tuple[Path, list[tuple[int, Member]]]] = []
    for shard in shards:
        with shard.open("rb") as f:
            parsed = parse(shard, _kind_of(shard, f.read(4096)))
        stored.append((parsed.path, parsed.stored_members))
        metadata = metadata or dict(parsed.metadata)
        walk = _Walk(shard)
        walk.visit(parsed.root, (), "weight", 0)
        check_shard_holds(index_file, weight_map, shard, walk.names())
        entries.extend(walk.entries(parsed))
        seen.update(walk.names())
        tied.extend(walk.tied())
        skipped.extend(walk.skipped)
    check_every_mapped_held(index_file, weight_map, seen)
    keras_order(entries)
    metadata.update(index_total_size(index))
    return Store(
        entries,
        format=SHARDED_FORMAT,
        path=shown,
        files=[index_file, *shards],
        metadata=metadata,
        tied=tied,
        skipped=skipped,
        integrity=_integrity(stored, entries),
    )


# --- the object tree: names, kinds, notes ------------------------------------------------------

# A key naming optimizer state holds one of these words, one naming bookkeeping one of the next
# or is one of the whole keys after them (case-insensitively).
_OPTIMIZER_WORDS = ("optim",)
_BOOKKEEPING_WORDS = ("sched", "scaler", "rng", "random_state")
_BOOKKEEPING_KEYS = ("callback", "callbacks", "loop", "loops", "amp")
_OPTIMIZER = re.compile("|".join(_OPTIMIZER_WORDS), re.I)
_BOOKKEEPING = re.compile("|".join([*_BOOKKEEPING_WORDS, *(f"^{key}$" for key in _BOOKKEEPING_KEYS)]), re.I)
_COUNTERS = {"epoch", "epochs", "step", "steps", "global_step", "iteration", "iterations", "iter",
             "num_updates", "best_epoch", "best_step"}


class _Walk:
    """Collects the tensors of an unpickled object, naming each by its container path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.default_name = path.stem or "tensor"
        self.found: list[tuple[tuple[str, ...], Kind, TensorRef]] = []
        self.skipped: list[tuple[str, str]] = []

    def visit(self, obj: Any, parts: tuple[str, ...], kind: Kind, depth: int) -> None:
        if depth > MAX_DEPTH:
            where = self._name(parts)
            raise CorruptFileError(
                f"containers nested more than {MAX_DEPTH} deep (at {where[:60]!r}...): not a "
                "checkpoint torch.save writes",
                path=self.path,
            )
        if isinstance(obj, TensorRef):
            self.found.append((parts, kind, obj))
        elif isinstance(obj, Unrepresentable):
            if obj.what.startswith("a meta tensor"):
                self.skipped.append((self._name(parts), obj.what))
            else:
                raise UnsupportedError(
                    f"{obj.what}: ckptconv reads dense tensors only (convert it to a plain "
                    "tensor in torch, e.g. dequantize() or to_dense(), before torch.save)",
                    path=self.path,
                    tensor=self._name(parts),
                )
        elif isinstance(obj, dict):
            if kind == "weight" and {"state", "param_groups"} <= set(obj):
                kind = "optimizer"  # an Optimizer.state_dict(), whatever its key
            found = self.found
            leaf = depth < MAX_DEPTH  # a tensor one level down is within the limit
            keys = [key if type(key) is str and key else _part(key) for key in obj]
            words = kind == "weight" and _may_name_kinds(keys)
            for part, value in zip(keys, obj.values()):
                if leaf and type(value) is TensorRef:  # a state dict's items: no call each
                    # (nor of _child_kind where it can only keep the kind: a dotted key, no word)
                    if kind != "weight" or (not words and "." in part):
                        found.append(((*parts, part), kind, value))
                    else:
                        found.append(((*parts, part), _child_kind(kind, part, value, words), value))
                else:
                    self.visit(value, (*parts, part), _child_kind(kind, part, value, words), depth + 1)
        elif isinstance(obj, (list, tuple)) and not any(isinstance(v, (dict, list, tuple, TensorRef, Unrepresentable)) for v in obj):
            self.skipped.append((self._name(parts), _describe(obj)))  # [0.9, 0.999]: one note
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                self.visit(value, (*parts, str(i)), kind, depth + 1)
        else:
            self.skipped.append((self._name(parts), _describe(obj)))

    def _name(self, parts: tuple[str, ...]) -> str:
        return "/".join(parts) if parts else self.default_name

    def names(self) -> list[str]:
        return [self._name(parts) for parts, _, _ in self.found]

    def tied(self) -> list[tuple[str, ...]]:
        # only tensors sharing a storage can be one tensor: the identities of those alone
        keys = [ref.storage.key for _, _, ref in self.found]
        if len(set(keys)) == len(keys):
            return []  # a storage per tensor (a state dict's common case): nothing is tied
        sharing = Counter(keys)
        groups: dict[tuple[object, ...], list[str]] = {}
        for parts, _, ref in self.found:
            if sharing[ref.storage.key] > 1:
                groups.setdefault(ref.identity(), []).append(self._name(parts))
        return [tuple(names) for names in groups.values() if len(names) > 1]

    def entries(self, parsed: Parsed) -> list[Entry]:
        """An entry per tensor found.

        Raises:
            CorruptFileError: the file is cut short (``parsed.cut``), naming the tensors whose
                bytes it lacks; see :meth:`_entry` for the rest.
        """
        if parsed.cut:
            raise self._truncated(parsed)
        dtypes: dict[str, np.dtype] = {}  # torch dtype name -> numpy dtype, looked up once each
        path = os.fspath(parsed.path)
        storages = parsed.storages
        geometry: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[int, int, bool]] = {}  # shapes repeat
        entries = []
        append = entries.append
        new_entry = Entry.of
        for parts, kind, ref in self.found:
            # the common case in few steps: a non-empty C-contiguous view, of its storage's
            # dtype, of a storage stored in place little-endian (the zip layout's); everything
            # else, and a view outside its storage, goes through _entry, which says what is wrong
            storage = ref.storage
            stored = storages[storage.key]
            dtype = dtypes.get(ref.dtype)
            if (dtype is not None and stored.offset is not None and not stored.big_endian
                    and storage.view is None and ref.dtype == storage.dtype):
                view = (ref.shape, ref.stride)
                numel, _, contiguous = geometry.get(view) or geometry.setdefault(view, _geometry(*view))
                itemsize = dtype.itemsize
                start = ref.offset * itemsize
                nbytes = numel * itemsize
                if contiguous and numel and start + nbytes <= storage.numel * itemsize:
                    name = "/".join(parts) if parts else self.default_name
                    layer = parts[0].rpartition(".")[0] if len(parts) == 1 else _layer(parts)
                    append(new_entry(name, layer, 0, name, ref.shape, dtype, kind, path,
                                     ByteRange(stored.path, stored.offset + start, nbytes), None, None, None))
                    continue
            append(self._entry(parts, kind, ref, parsed, dtypes, path))
        return entries

    def _truncated(self, parsed: Parsed) -> CorruptFileError:
        """The one line for a file that ends before its storages do: the tensors whose bytes
        lie past its end, named as the zip CRC-32 check names the tensors of a storage."""
        cut = []
        for parts, _, ref in self.found:
            held = parsed.cut.get(ref.storage.key)
            if held is None:
                continue
            itemsize = ITEMSIZE.get(ref.dtype)
            if itemsize is not None:  # (else a dtype the entries refuse: its bytes are cut anyway)
                start, span, _, _ = _check_view(ref, itemsize, parsed.path, self._name(parts))
                if start + span <= held or span == 0:
                    continue  # this tensor's bytes all precede the cut, or it has none
            cut.append(self._name(parts))
        size = os.path.getsize(parsed.path)
        if not cut:
            return CorruptFileError(truncated(f"it ends at byte {size}, inside its storages", or_damaged=True),
                                    path=parsed.path)
        if len(cut) == 1:
            what = "this tensor's bytes"
        else:
            more = f" and {len(cut) - 3} more" if len(cut) > 3 else ""
            what = f"the bytes of {len(cut)} tensors ({', '.join(map(repr, cut[:3]))}{more})"
        return CorruptFileError(truncated(f"it ends at byte {size}, before {what} end", or_damaged=True),
                                path=parsed.path, tensor=cut[0])

    def _entry(self, parts: tuple[str, ...], kind: Kind, ref: TensorRef, parsed: Parsed,
               dtypes: dict[str, np.dtype], path: str) -> Entry:
        name = "/".join(parts) if parts else self.default_name
        dtype = dtypes.get(ref.dtype)
        if dtype is None:
            canonical = TORCH_DTYPES.get(ref.dtype)
            if canonical is None:
                raise UnsupportedError(
                    f"torch dtype {ref.dtype} has no numpy or safetensors equivalent; convert the "
                    "tensor in torch (e.g. .to(torch.float16)) before torch.save",
                    path=parsed.path,
                    tensor=name,
                )
            dtype = dtypes[ref.dtype] = by_name(canonical)
        stored = parsed.storages[ref.storage.key]
        start, span, numel, contiguous = _check_view(ref, dtype.itemsize, parsed.path, name)
        layer = parts[0].rpartition(".")[0] if len(parts) == 1 else _layer(parts)
        if stored.offset is not None and contiguous and (not stored.big_endian or _swap_unit(dtype) == 1):
            byte_range = ByteRange(stored.path, stored.offset + start, numel * dtype.itemsize)
            return Entry(name, key=name, shape=ref.shape, dtype=dtype, path=path, kind=kind,
                         layer=layer, byte_range=byte_range)
        loader = partial(_read_view, stored, start, span, dtype, ref.shape, ref.stride, name)
        return Entry(name, key=name, shape=ref.shape, dtype=dtype, path=path, kind=kind,
                     layer=layer, loader=loader)


def _part(key: object) -> str:
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    text = str(key) if isinstance(key, (str, int, float, bool)) or key is None else repr(key)
    return text or "_"


_EITHER = re.compile(f"{_OPTIMIZER.pattern}|{_BOOKKEEPING.pattern}", re.I)
_KIND_WORDS = (*_OPTIMIZER_WORDS, *_BOOKKEEPING_WORDS, *_BOOKKEEPING_KEYS)


def _may_name_kinds(keys: list[str]) -> bool:
    """Whether a container's keys may name optimizer state or bookkeeping: False when they are
    ASCII and none holds a word of :data:`_KIND_WORDS` (each match of the patterns holds one),
    so that a state dict's 10,000 keys are not searched one by one."""
    text = "\n".join(keys)
    if not text.isascii():
        return True
    text = text.lower()
    return any(word in text for word in _KIND_WORDS)


def _child_kind(kind: Kind, part: str, value: Any, words: bool = True) -> Kind:
    """The kind of ``part`` in a container of ``kind``; ``words``: False when
    :func:`_may_name_kinds` found none of the patterns' words in the container's keys."""
    if kind != "weight":
        return kind
    if not words or not _EITHER.search(part):  # a state dict's keys: one search, not two
        if isinstance(value, TensorRef) and "." not in part and part.lower() in _COUNTERS:
            return "bookkeeping"
        return kind
    if _OPTIMIZER.search(part):
        return "optimizer"
    if _BOOKKEEPING.search(part):
        return "bookkeeping"
    if isinstance(value, TensorRef) and "." not in part and part.lower() in _COUNTERS:
        return "bookkeeping"
    return kind


def _layer(parts: tuple[str, ...]) -> str:
    """``("model", "features.0.weight")`` -> ``model/features.0``: the last part loses its last
    ``.``-separated piece (a state-dict key's parameter name), or goes whole."""
    if not parts:
        return ""
    head, last = parts[:-1], parts[-1]
    if "." in last:
        return "/".join((*head, last.rsplit(".", 1)[0]))
    return "/".join(head)


def _describe(value: Any) -> str:
    if isinstance(value, StorageRef):
        return f"a storage ({value.numel} {value.dtype}) without a tensor"
    if value is None:
        return "None"
    if isinstance(value, (bool, int, float, complex)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"str {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, (bytes, bytearray)):
        return f"{type(value).__name__} of {len(value)} bytes"
    if isinstance(value, (list, tuple)):
        text = repr(value)
        return f"{type(value).__name__} {text[:60]}" + ("..." if len(text) > 60 else "")
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__} of {len(value)} items"
    return type(value).__name__


# --- checking and reading a view --------------------------------------------------------------


def _check_view(ref: TensorRef, itemsize: int, path: Path, name: str) -> tuple[int, int, int, bool]:
    """Byte offset of the view's first element within its storage's stored bytes, the byte
    span from it to the end of its last element, the view's element count, and whether it is
    C-contiguous; refuses views outside the storage."""
    storage = ref.storage
    storage_itemsize = ITEMSIZE[storage.dtype]
    base = storage.view[0] * storage_itemsize if storage.view else 0
    limit = storage.numel * storage_itemsize
    numel, extent, contiguous = _geometry(ref.shape, ref.stride)
    last = ref.offset + extent
    first = ref.offset * itemsize
    if numel == 0:
        if first > limit:
            raise UnsafeInputError(
                f"storage offset {ref.offset} lies beyond its storage ({limit} bytes)",
                path=path,
                tensor=name,
            )
        return base + first, 0, 0, contiguous
    end = (last + 1) * itemsize
    if end > limit:
        raise UnsafeInputError(
            f"the view (offset {ref.offset}, shape {list(ref.shape)}, stride {list(ref.stride)}) "
            f"ends at byte {end} of its storage, which holds {limit} bytes; refusing to "
            "read outside it",
            path=path,
            tensor=name,
        )
    if numel * itemsize > limit:
        raise _inflated_view(ref, numel * itemsize, limit, path, name)
    return base + first, end - first, numel, contiguous


def _inflated_view(ref: TensorRef, needed: int, limit: int, path: Path, name: str) -> UnsafeInputError:
    """A view whose values take more bytes than its whole storage: a broadcast view
    (``tensor.expand()``, stride 0) or another overlapping one. (The storage is not named: a
    legacy file keys its storages by the memory address they had.)"""
    broadcast = [d for d, (size, stride) in enumerate(zip(ref.shape, ref.stride)) if stride == 0 and size > 1]
    if broadcast:
        dims = ", ".join(map(str, broadcast))
        what = (f"a broadcast view (tensor.expand(): stride 0 in dimension{'s' if len(broadcast) > 1 else ''} "
                f"{dims}) of shape {list(ref.shape)}")
        instead = "save tensor.contiguous(), or the tensor before expand(), instead"
    else:
        what = f"an overlapping view (shape {list(ref.shape)}, stride {list(ref.stride)}) whose values share bytes"
        instead = "save tensor.contiguous() instead"
    return UnsafeInputError(
        f"{what}: its values need {needed} bytes, its storage holds {limit}; ckptconv never makes "
        f"more bytes than a file stores: {instead}",
        path=path,
        tensor=name,
    )


def _geometry(shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, int, bool]:
    """A view's element count, the distance in elements from its first element to its last,
    and whether it is C-contiguous (then the distance is the count less one, for a non-empty
    view)."""
    numel = 1  # also the stride a C-contiguous view has at each dimension, innermost first
    extent = 0
    contiguous = True
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != numel:
            contiguous = False
        numel *= d
        extent += (d - 1) * s
    return numel, extent, contiguous


def _swap_unit(dtype: np.dtype) -> int:
    """Bytes swapped together for a big-endian file: the itemsize, half of it for complex."""
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


def _read_span(stored: Stored, start: int, length: int, name: str) -> np.ndarray:
    buffer = np.empty(length, dtype=np.uint8)
    if length == 0:
        return buffer
    if stored.offset is not None:
        return read_byte_range(ByteRange(stored.path, stored.offset + start, length), buffer.dtype, (length,), tensor=name, out=buffer)
    view = memoryview(buffer)
    import zipfile  # only for a storage someone re-zipped compressed (zipfile is slow to import)

    try:
        with zipfile.ZipFile(stored.path) as z, z.open(stored.member) as f:  # type: ignore[arg-type]
            skip = start
            while skip:  # the decompressor only goes forward: read and drop, a window at a time
                dropped = len(f.read(min(skip, _READ_WINDOW)))
                if dropped == 0:
                    break
                skip -= dropped
            done = 0
            while done < length and not skip:
                n = f.readinto(view[done : done + _READ_WINDOW])
                if not n:
                    break
                done += n
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CorruptFileError(
            f"compressed member {stored.member} cannot be read ({e}): the file is damaged; {FETCH_AGAIN}",
            path=stored.path, tensor=name,
        ) from e
    if skip or done < length:
        raise CorruptFileError(
            f"compressed member {stored.member} ends early: the file is damaged; {FETCH_AGAIN}", path=stored.path, tensor=name
        )
    return buffer


def _read_view(stored: Stored, start: int, span: int, dtype: np.dtype, shape: tuple[int, ...],
               stride: tuple[int, ...], name: str) -> np.ndarray:
    """The view's values in C order: its byte span read, byte-swapped if the file is
    big-endian, then gathered by its strides."""
    raw = _read_span(stored, start, span, name)
    unit = _swap_unit(dtype)
    if stored.big_endian and unit > 1:
        raw = raw.view(f">u{unit}").astype(f"<u{unit}").view(np.uint8)
    if span == 0:
        return np.empty(shape, dtype=dtype)
    # gathered as opaque items: as_strided cannot describe ml_dtypes (bfloat16, float8) itself
    flat = raw.view(np.dtype((np.void, dtype.itemsize)))
    strides = tuple(s * dtype.itemsize for s in stride)
    view = np.lib.stride_tricks.as_strided(flat, shape=shape, strides=strides, writeable=False)
    return np.array(view, order="C", copy=True).view(dtype)

