"""TensorFlow checkpoints (TensorBundle: ``prefix.index`` + ``prefix.data-0000k-of-0000n``).

Reads every checkpoint TensorFlow writes — TF1 ``Saver``, TF2 ``tf.train.Checkpoint``, tf-keras
``save_weights('ckpt')``, Keras 3 models in a ``tf.train.Checkpoint``, SavedModel
``variables/`` — without importing TensorFlow.

* ``key`` is the checkpoint key. In object-based checkpoints the ``_CHECKPOINTABLE_OBJECT_GRAPH``
  entry (a serialized ``TrackableObjectGraph``) gives each variable's ``full_name``
  (``d1/kernel``), which becomes its ``name``; entries whose full names collide (a SavedModel's
  metric variables, all ``count``/``total``) are named by their key. TF1 keys are names already.
* ``kind``: variables reached from the root without passing through an optimizer are weights;
  optimizer variables and slots are ``optimizer``; step counters (``global_step``,
  ``save_counter``, ``iter``/``iterations``), metric variables and non-variable state are
  ``bookkeeping``. The object graph itself is not an entry.
* ``open`` reads the index (all its block CRCs checked), the object graph, and checks that every
  data file exists and holds the bytes the index points to. Tensor bytes are read by
  ``Entry.read()`` only, with one ``pread`` per tensor, and checked against the CRC-32C the
  index records unless ``check_crc=False``.
"""

from __future__ import annotations

import codecs
import glob
import math
import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..dtypes import by_name, dtype_name
from ..errors import (
    FETCH_AGAIN,
    CorruptFileError,
    FormatError,
    NoSuchFileError,
    UnsupportedError,
    damaged,
    truncated,
)
from ..store import (
    ByteRange,
    Entry,
    Kind,
    Store,
    check_crc32c,
    keras_order,
    layer_of,
    read_byte_range,
)
from . import _tensorbundle as tb
from . import regular_file
from ._protowire import (
    BundleEntry,
    TrackableObject,
    WireError,
    parse_bundle_entry,
    parse_bundle_header,
    parse_object_graph,
)
from ._tf_kinds import (
    INTEGER_CODES,
    natural_key,
    object_path,
    object_path_name,
    object_roles,
    tf1_kind,
    tf1_optimizer_scopes,
)

__all__ = ["FORMAT", "sniff", "open"]

FORMAT = "tf-checkpoint"

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_STATE_FILE = "checkpoint"
_DATA_FILE = re.compile(r"^(?P<prefix>.+)\.data-\d{5}-of-\d{5}$")
_STRING = 7

# TensorFlow DataType code -> numpy dtype (little-endian; data files are little-endian); the
# dtypes ml_dtypes provides are added on first need (_tf_dtype, by ckptconv.dtypes' names):
# importing it costs more than opening a small checkpoint, and a checkpoint of float32
# tensors never needs it
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("<u1"),
    5: np.dtype("<i2"),
    6: np.dtype("<i1"),
    8: np.dtype("<c8"),
    9: np.dtype("<i8"),
    10: np.dtype(np.bool_),
    17: np.dtype("<u2"),
    18: np.dtype("<c16"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}
_ML_DTYPES = {
    14: "bfloat16",
    24: "float8_e5m2",
    25: "float8_e4m3fn",
    26: "float8_e4m3fnuz",
    27: "float8_e4m3b11fnuz",
    28: "float8_e5m2fnuz",
}
_UNREADABLE = {
    11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16", 16: "quint16", 20: "resource",
    21: "variant", 29: "int4", 30: "uint4", 31: "int2", 32: "uint2", 33: "float4_e2m1fn",
}



# --- finding the checkpoint -----------------------------------------------------------------


class _Located(NamedTuple):
    prefix: str
    saved_model: bool


def _read_state_file(path: Path) -> str | None:
    """``model_checkpoint_path`` of a ``checkpoint`` state file (a text-format proto)."""
    try:
        with path.open("rb") as f:
            text = f.read(1 << 20)  # a few lines; never read a huge stray file whole
    except OSError:
        return None
    match = re.search(rb'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
    if match is None:
        return None
    try:
        return codecs.escape_decode(match.group(1))[0].decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def _prefix_from_state(directory: Path, state: Path) -> str | None:
    """The latest checkpoint a state file names, resolved like TensorFlow does: relative to
    its directory, and an absolute path that no longer exists (the directory was moved)
    falls back to its basename in the directory."""
    named = _read_state_file(state)
    if named is None:
        return None
    candidate = Path(named) if os.path.isabs(named) else directory / named
    if not tb.has_table_magic(f"{candidate}.index"):
        moved = directory / Path(named).name
        if tb.has_table_magic(f"{moved}.index"):
            candidate = moved
    return os.fspath(candidate)


def _is_saved_model_prefix(prefix: str) -> bool:
    variables = Path(prefix).parent
    return variables.name == "variables" and any(
        (variables.parent / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")
    )


def _locate(path: Path) -> _Located | list[str] | None:
    """Where the checkpoint at ``path`` is: a prefix, a list of candidate prefixes when a
    directory holds several and no state file, or None when ``path`` holds none."""
    if path.is_dir():
        state = path / _STATE_FILE
        if state.is_file():
            prefix = _prefix_from_state(path, state)
            if prefix is not None:
                return _Located(prefix, _is_saved_model_prefix(prefix))
        saved = path / "variables" / "variables"
        if tb.has_table_magic(f"{saved}.index"):
            return _Located(os.fspath(saved), True)
        found = sorted(
            os.fspath(p)[: -len(".index")] for p in path.glob("*.index") if tb.has_table_magic(p)
        )
        if len(found) == 1:
            return _Located(found[0], _is_saved_model_prefix(found[0]))
        return found or None
    if path.is_file():
        if path.name.endswith(".index") and _is_index(os.fspath(path)[: -len(".index")]):
            prefix = os.fspath(path)[: -len(".index")]
            return _Located(prefix, _is_saved_model_prefix(prefix))
        match = _DATA_FILE.match(os.fspath(path))
        if match and _is_index(match["prefix"]):
            return _Located(match["prefix"], _is_saved_model_prefix(match["prefix"]))
        if path.name == _STATE_FILE:
            prefix = _prefix_from_state(path.parent, path)
            if prefix is not None:
                return _Located(prefix, _is_saved_model_prefix(prefix))
        return None
    if _is_index(os.fspath(path)):
        return _Located(os.fspath(path), _is_saved_model_prefix(os.fspath(path)))
    return None


def _is_index(prefix: str) -> bool:
    """``prefix.index`` ends in the table magic, or ``prefix`` has data files (then a damaged
    or missing index is reported as such by ``open`` rather than as an unknown format)."""
    index = f"{prefix}.index"
    if tb.has_table_magic(index):
        return True
    if os.path.exists(index) and not os.path.isfile(index) and not os.path.isdir(index):
        return True  # a FIFO or a device in the index's place: open() says so
    data = f"{glob.escape(prefix)}.data-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]"
    return not os.path.isdir(index) and bool(glob.glob(data))


def sniff(path: str | os.PathLike[str], head: bytes) -> bool:
    """A TensorFlow checkpoint: a prefix whose ``.index`` ends in the table magic, that
    ``.index`` file or one of its data files, a directory with a ``checkpoint`` state file or
    such an index, or a SavedModel directory. Reads at most a few bytes per candidate file."""
    del head  # the table magic is at the end of the file, not in its head
    path = Path(path)
    if path.is_file() and path.name == _STATE_FILE:
        return _read_state_file(path) is not None
    if path.is_dir() and (path / _STATE_FILE).is_file():
        return _read_state_file(path / _STATE_FILE) is not None
    return _locate(path) is not None


# --- the index ------------------------------------------------------------------------------


class _Index(NamedTuple):
    index_path: str
    num_shards: int
    producer: int
    entries: dict[str, BundleEntry]  # tensors, by key (slice keys left out)
    slices: dict[bytes, BundleEntry]  # partitioned variables' slices, by binary key


def _decode_key(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def _slice_label(raw_key: bytes) -> str:
    """A readable name for a slice key: its variable's name (the key is binary)."""
    escaped = raw_key[1:].split(b"\x00\x01", 1)[0]
    name = escaped.replace(b"\x00\xff", b"\x00").replace(b"\xff\x00", b"\xff")
    return _decode_key(name) + " (a slice)"


def _read_index(index_path: str) -> _Index:
    try:
        table = tb.read_table(index_path)
    except tb.UnsupportedTableError as e:
        raise UnsupportedError(str(e), path=index_path) from e
    except tb.TableError as e:
        raise CorruptFileError(f"damaged checkpoint index: {e}; {FETCH_AGAIN}", path=index_path) from e
    if not table or table[0][0] != b"":
        raise FormatError(
            "a sorted table without a BundleHeaderProto under the empty key: not a TensorFlow "
            "checkpoint index",
            path=index_path,
        )
    try:
        header = parse_bundle_header(table[0][1])
    except WireError as e:
        raise CorruptFileError(f"damaged checkpoint header: {e}; {FETCH_AGAIN}", path=index_path) from e
    if header.big_endian:
        raise UnsupportedError(
            "big-endian TensorFlow checkpoint: ckptconv reads little-endian bundles only; "
            "restore and re-save it with TensorFlow on a little-endian machine",
            path=index_path,
        )
    if header.min_consumer > 1 or 1 in header.bad_consumers:
        raise UnsupportedError(
            f"checkpoint bundle format version {header.producer} needs a reader of version "
            f">= {header.min_consumer}; ckptconv reads version 1",
            path=index_path,
        )
    if header.num_shards < 0 or (header.num_shards == 0 and len(table) > 1):
        raise CorruptFileError(
            f"the header declares {header.num_shards} data shards: the index is damaged; {FETCH_AGAIN}", path=index_path
        )
    entries: dict[str, BundleEntry] = {}
    slices: dict[bytes, BundleEntry] = {}
    for raw_key, value in table[1:]:
        try:
            key = raw_key.decode("utf-8")  # nearly every key; _decode_key for the others
        except UnicodeDecodeError:
            key = _decode_key(raw_key)
        try:
            entry = parse_bundle_entry(value)
        except WireError as e:
            raise CorruptFileError(f"damaged index entry: {e}; {FETCH_AGAIN}", path=index_path, tensor=key) from e
        if raw_key.startswith(b"\x00"):
            slices[raw_key] = entry
        else:
            entries[key] = entry
    return _Index(index_path, header.num_shards, header.producer, entries, slices)


def _check_data_files(index: _Index, prefix: str) -> list[str]:
    """The data files, each checked to exist and hold every byte range the index names."""
    files: list[str] = []
    sizes = []
    for shard in range(index.num_shards):  # stops at the first missing one, however many declared
        name = tb.data_file_name(prefix, shard, index.num_shards)
        files.append(name)
        try:
            sizes.append(regular_file(name).st_size)
        except (FormatError, NoSuchFileError):
            if os.path.exists(name):
                raise
            raise CorruptFileError(
                f"data shard {os.path.basename(name)} of this checkpoint is missing; copy every "
                f"{os.path.basename(prefix)}.data-* file along with the .index",
                path=name,
            ) from None
    slices = ((_slice_label(k), e) for k, e in index.slices.items())
    num_shards = index.num_shards
    for key, (_, _, _, shard_id, offset, size, _, parts) in [*index.entries.items(), *slices]:
        if parts:
            continue
        if not 0 <= shard_id < num_shards:
            raise CorruptFileError(
                f"index names data shard {shard_id} of {num_shards}: the index is damaged; {FETCH_AGAIN}",
                path=index.index_path, tensor=key,
            )
        if offset < 0 or size < 0:
            raise CorruptFileError(
                f"the index places tensor data at bytes {offset}..{offset + size}: the index is damaged; "
                f"{FETCH_AGAIN}",
                path=index.index_path, tensor=key,
            )
        if offset + size > sizes[shard_id]:
            raise _cut_data_file(index, shard_id, files[shard_id], sizes[shard_id])
    return files


# --- reading tensor data -------------------------------------------------------------------


def _stored(path: str, entry: BundleEntry) -> ByteRange:
    return ByteRange(path, entry.offset, entry.size)


def _read_numeric(
    path: str,
    entry: BundleEntry,
    dtype: np.dtype,
    *,
    check_crc: bool,
    tensor: str,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One slice's bytes read into a fresh array (or into ``out``, a C-contiguous array of
    its shape), then checked against the slice's own CRC-32C."""
    array = read_byte_range(_stored(path, entry), dtype, entry.shape, tensor=tensor, out=out)
    if check_crc:
        actual = tb.crc32c(array.reshape(-1).view(np.uint8))
        check_crc32c(actual, tb.unmask_crc(entry.masked_crc32c), path=path, tensor=tensor)
    return array


def _read_strings(path: str, entry: BundleEntry, *, check_crc: bool, tensor: str) -> np.ndarray:
    raw = bytearray(entry.size)
    _stored(path, entry).read_into(raw, tensor=tensor)
    count = math.prod(entry.shape)
    try:
        elements, actual = tb.decode_string_tensor(bytes(raw), count, check=check_crc)
    except tb.TableError as e:
        raise CorruptFileError(f"damaged string tensor: {e}; {FETCH_AGAIN}", path=path, tensor=tensor) from e
    if check_crc:
        check_crc32c(actual, tb.unmask_crc(entry.masked_crc32c), path=path, tensor=tensor)
    out = np.empty(count, dtype=object)
    for i, element in enumerate(elements):
        out[i] = element
    return out.reshape(entry.shape)


def _read_partitioned(
    parts: list[tuple[tuple[slice, ...], str, BundleEntry]],
    shape: tuple[int, ...],
    dtype: np.dtype,
    *,
    check_crc: bool,
    tensor: str,
) -> np.ndarray:
    """Assemble a partitioned variable from its slices, each read and checked on its own;
    a slice that is a contiguous block of the result (whole rows) is read in place."""
    out = np.empty(shape, dtype=dtype)
    for where, path, part in parts:
        target = out[where]
        if part.dtype != _STRING and target.flags.c_contiguous:
            _read_numeric(path, part, dtype, check_crc=check_crc, tensor=tensor, out=target)
        else:
            target[...] = _tensor_reader(path, part, dtype, check_crc=check_crc, tensor=tensor)
    return out


def _unreadable(code: int, path: str, key: str) -> np.ndarray:
    raise UnsupportedError(
        f"TensorFlow dtype {_UNREADABLE.get(code, code)} has no numpy equivalent ckptconv reads",
        path=path, tensor=key,
    )


# --- building the store ---------------------------------------------------------------------


class _Planned(NamedTuple):
    key: str
    name: str
    kind: Kind
    entry: BundleEntry


_new = tuple.__new__  # _new(_Planned, (key, name, kind, entry)): no Python-level __new__ per tensor


def _load_object_graph(index: _Index, files: list[str]) -> list[TrackableObject] | None:
    entry = index.entries.get(OBJECT_GRAPH_KEY)
    if entry is None:
        return None
    path = files[entry.shard_id]
    if entry.dtype != _STRING or entry.shape not in ((), (1,)):
        raise CorruptFileError(
            f"the object graph entry is not a string scalar: the index is damaged; {FETCH_AGAIN}",
            path=path, tensor=OBJECT_GRAPH_KEY,
        )
    value = _read_strings(path, entry, check_crc=True, tensor=OBJECT_GRAPH_KEY).reshape(-1)[0]
    try:
        return parse_object_graph(value)
    except WireError as e:
        raise CorruptFileError(f"damaged object graph: {e}; {FETCH_AGAIN}", path=path, tensor=OBJECT_GRAPH_KEY) from e


def _cut_data_file(index: _Index, shard: int, path: str, size: int) -> CorruptFileError:
    """A data file that ends before bytes the index places in it: said of the file, with the
    tensors cut (the first one, by checkpoint key, as the error's tensor). The object graph, an
    entry TensorFlow writes last, is not named as a tensor: it names the variables."""
    cut: list[tuple[int, str]] = []
    graph = False
    for key, e in [*index.entries.items(), *((_slice_label(k), e) for k, e in index.slices.items())]:
        if e.shard_id == shard and not e.slices and e.offset + e.size > size:
            if key == OBJECT_GRAPH_KEY:
                graph = True
            else:
                cut.append((e.offset, key))
    cut.sort()
    last = max((e.offset + e.size for e in index.entries.values() if e.shard_id == shard and not e.slices), default=0)
    parts = (["this tensor"] if cut else []) + ([f"{len(cut) - 1} after it"] if len(cut) > 1 else [])
    if graph:
        parts.append("the object graph that names the variables")
    said = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    verb = "is" if len(parts) == 1 else "are"
    return CorruptFileError(
        truncated(f"it has {size} bytes, but the index places data up to byte {last}: {said} {verb} cut"),
        path=path,
        tensor=cut[0][1] if cut else None,
    )


def _plan(index: _Index, nodes: list[TrackableObject] | None) -> list[_Planned]:
    """Every tensor's name and kind, in model order (object graph) or key order (TF1)."""
    entries = index.entries
    if nodes is None:
        scopes = tf1_optimizer_scopes(entries)
        return [
            _Planned(key, key, tf1_kind(key, entries[key], entries, scopes), entries[key])
            for key in sorted((k for k in entries if k != OBJECT_GRAPH_KEY), key=natural_key)
        ]
    roles = object_roles(nodes)
    planned = []
    for key, (full_name, kind, _, counter) in roles.items():  # graph order: the roles are made in it
        entry = entries.get(key)
        if entry is None or key == OBJECT_GRAPH_KEY:
            continue
        if counter and entry.dtype in INTEGER_CODES:
            kind = "bookkeeping"
        planned.append(_new(_Planned, (key, full_name or key, kind, entry)))
    # saved by a registered saver or outside the graph: no full name; after the graph's, in
    # natural order
    for key in sorted((k for k in entries if k not in roles and k != OBJECT_GRAPH_KEY), key=natural_key):
        entry = entries[key]
        planned.append(_Planned(key, key, "bookkeeping" if entry.dtype == _STRING else "weight", entry))
    # weights whose full names collide (Keras 3 records a subclassed model's sublayer variables
    # as ``net/kernel``, several times) are named from their object path instead; those that
    # still collide (or equal another tensor's key) fall back to the key
    if len({p[1] for p in planned}) == len(planned):
        return planned  # the usual case: no name shared
    planned = _unique_or(planned, lambda p: (p.kind == "weight" and object_path_name(p.key)) or p.key)
    return _unique_or(planned, lambda p: p.key)


def _unique_or(planned: list[_Planned], rename: Callable[[_Planned], str]) -> list[_Planned]:
    """``planned`` with every name shared by several tensors replaced by ``rename(p)``."""
    if len({p.name for p in planned}) == len(planned):
        return planned  # the usual case: nothing shared
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.name] = counts.get(p.name, 0) + 1
    return [p if counts[p.name] == 1 else _Planned(p.key, rename(p), p.kind, p.entry) for p in planned]


def _partitioned_loader(
    index: _Index, key: str, name: str, entry: BundleEntry, dtype: np.dtype, files: list[str],
    *, check_crc: bool,
) -> Callable[[], np.ndarray]:
    """A loader that reassembles a partitioned variable; every slice is checked at open to
    exist in the index and to fit inside the whole shape."""
    parts = []
    for extents in entry.slices:
        if len(extents) != len(entry.shape):
            raise CorruptFileError(
                f"a slice has {len(extents)} dimensions, the variable {len(entry.shape)}: the index is "
                f"damaged; {FETCH_AGAIN}",
                path=index.index_path, tensor=name,
            )
        where = []
        for extent, dim in zip(extents, entry.shape):
            length = dim - extent.start if extent.length is None else extent.length
            if extent.start < 0 or length < 0 or extent.start + length > dim:
                raise CorruptFileError(
                    f"slice {extent.start}:{extent.start + length} lies outside dimension {dim}: the "
                    f"index is damaged; {FETCH_AGAIN}",
                    path=index.index_path, tensor=name,
                )
            where.append(slice(extent.start, extent.start + length))
        lengths = [-1 if e.length is None else e.length for e in extents]  # -1: whole dimension
        slice_key = tb.slice_key(key, [(e.start, n) for e, n in zip(extents, lengths)])
        part = index.slices.get(slice_key)
        shape = tuple(s.stop - s.start for s in where)
        if part is None:
            raise CorruptFileError(
                damaged(f"slice [{', '.join(f'{s.start}:{s.stop}' for s in where)}] of this partitioned "
                        "variable is missing from the index", "it"),
                path=index.index_path, tensor=name,
            )
        if part.shape != shape or part.dtype != entry.dtype:
            raise CorruptFileError(
                f"a slice is stored with shape {list(part.shape)}, its extent says {list(shape)}: the "
                f"index is damaged; {FETCH_AGAIN}",
                path=index.index_path, tensor=name,
            )
        _check_size(part, dtype, files[part.shard_id], name)
        parts.append((tuple(where), files[part.shard_id], part))
    _check_tiling([where for where, _, _ in parts], entry.shape, path=index.index_path, key=name)
    return partial(_read_partitioned, parts, entry.shape, dtype, check_crc=check_crc, tensor=name)


def _check_tiling(boxes: list[tuple[slice, ...]], shape: tuple[int, ...], *, path: str, key: str) -> None:
    """TensorFlow's slices tile the variable exactly: no two overlap (a later one would
    silently win) and together they cover it (a gap would be uninitialised memory).

    Disjoint boxes inside the shape tile it exactly when their volumes add up to its size;
    overlaps are found by a sweep along the first axis, so this is fast for TensorFlow's usual
    partitioning (along the first axis) however many slices there are.
    """

    def text(box: tuple[slice, ...]) -> str:
        return "[" + ", ".join(f"{s.start}:{s.stop}" for s in box) + "]"

    ordered = sorted((b for b in boxes if all(s.stop > s.start for s in b)), key=lambda b: b[0].start if b else 0)
    for i, box in enumerate(ordered):
        for other in ordered[i + 1 :]:
            if box and other[0].start >= box[0].stop:
                break  # sorted by start along axis 0: no later box reaches back into this one
            if all(a.start < b.stop and b.start < a.stop for a, b in zip(box, other)):
                raise CorruptFileError(
                    f"the slices {text(box)} and {text(other)} of this partitioned variable "
                    f"overlap: the checkpoint is damaged; {FETCH_AGAIN}",
                    path=path, tensor=key,
                )
    covered = sum(math.prod(s.stop - s.start for s in box) for box in boxes)
    if covered != math.prod(shape):
        raise CorruptFileError(
            f"the slices cover {covered} of the variable's {math.prod(shape)} elements, leaving "
            f"a gap: the checkpoint is damaged or a slice is missing; {FETCH_AGAIN}",
            path=path, tensor=key,
        )


def _tensor_reader(
    path: str, entry: BundleEntry, dtype: np.dtype, *, check_crc: bool, tensor: str
) -> np.ndarray:
    if entry.dtype == _STRING:
        return _read_strings(path, entry, check_crc=check_crc, tensor=tensor)
    return _read_numeric(path, entry, dtype, check_crc=check_crc, tensor=tensor)


def _check_size(entry: BundleEntry, dtype: np.dtype, path: str, name: str) -> None:
    if entry.dtype == _STRING:
        # every element takes at least its one-byte length
        if math.prod(entry.shape) > entry.size:
            raise CorruptFileError(
                f"index records {entry.size} bytes for {math.prod(entry.shape)} strings: the index is "
                f"damaged; {FETCH_AGAIN}",
                path=path, tensor=name,
            )
        return
    expected = math.prod(entry.shape) * dtype.itemsize  # Python ints: no overflow
    if entry.size != expected:
        raise CorruptFileError(
            f"index records {entry.size} bytes for shape {list(entry.shape)} of "
            f"{dtype_name(dtype)}, which needs {expected}: the index is damaged; {FETCH_AGAIN}",
            path=path, tensor=name,
        )


def _tf_dtype(code: int) -> np.dtype | None:
    """The numpy dtype of a numeric TensorFlow dtype code, None for other codes."""
    if code in _ML_DTYPES and code not in _DTYPES:
        for known, name in _ML_DTYPES.items():
            _DTYPES[known] = by_name(name)
    return _DTYPES.get(code)


def _numpy_dtype(planned: _Planned, index: _Index) -> np.dtype | None:
    """The entry's numpy dtype: ``object`` for strings, None for dtypes numpy cannot hold."""
    code = planned.entry.dtype
    if code == _STRING:
        return np.dtype(object)
    dtype = _tf_dtype(code)
    if dtype is not None:
        return dtype
    if code in _UNREADABLE:
        return None
    raise CorruptFileError(
        f"unknown TensorFlow dtype code {code}: the index is damaged; {FETCH_AGAIN}",
        path=index.index_path, tensor=planned.name,
    )


def _make_entries(
    planned: list[_Planned], index: _Index, files: list[str], *, check_crc: bool, object_based: bool
) -> list[Entry]:
    """The store entries of the planned tensors, in order; ``object_based``: their keys hold
    object paths (the tree paths ``load_into`` matches by).

    Plain little-endian tensors (nearly all) are made here, in one loop: Entry reads their
    bytes and checks the CRC (as it does for every format), writers may copy them file to file
    and compare it; ``check_crc=False`` means "read it anyway", so then no CRC is offered to
    compare either. :func:`_make_entry` makes the others and refuses what is damaged.
    """
    made: list[Entry] = []
    append = made.append
    dtypes = _DTYPES
    prod = math.prod
    new_entry = Entry.of
    for planned_tensor in planned:
        key, name, kind, entry = planned_tensor
        code, shape, unknown_rank, shard_id, offset, size, masked_crc32c, slices = entry
        dtype = dtypes.get(code)
        if (
            dtype is None or slices or unknown_rank or (shape and min(shape) < 0)
            or size != prod(shape) * dtype.itemsize
        ):
            append(_make_entry(planned_tensor, index, files, check_crc=check_crc, object_based=object_based))
            continue
        path = files[shard_id]
        append(new_entry(
            name, layer_of(name), 0, key, shape, dtype, kind, path, ByteRange(path, offset, size),
            tb.unmask_crc(masked_crc32c) if check_crc else None, object_path(key) if object_based else None, None,
        ))
    return made


def _make_entry(
    planned: _Planned, index: _Index, files: list[str], *, check_crc: bool, object_based: bool
) -> Entry:
    """The store entry of one planned tensor that :func:`_make_entries` does not make: a
    partitioned variable, a string tensor, a dtype numpy cannot hold, or a damaged entry
    (refused here)."""
    key, name, kind, entry = planned
    tree_path = object_path(key) if object_based else None
    if entry.unknown_rank or (entry.shape and min(entry.shape) < 0):
        raise CorruptFileError(
            f"index records an incomplete shape {list(entry.shape)}: the index is damaged; {FETCH_AGAIN}",
            path=index.index_path, tensor=name,
        )
    shape = entry.shape
    dtype = _tf_dtype(entry.dtype)
    if dtype is not None and not entry.slices:  # a size that does not fit the shape: refused
        path = files[entry.shard_id]
        _check_size(entry, dtype, path, name)
        return Entry(name, key=key, shape=shape, dtype=dtype, path=path,
                     byte_range=ByteRange(path, entry.offset, entry.size), kind=kind,
                     crc32c=tb.unmask_crc(entry.masked_crc32c) if check_crc else None, tree_path=tree_path)
    dtype = _numpy_dtype(planned, index)
    if dtype is None:  # listed, so nothing is silently lost; read() says why it cannot
        loader = partial(_unreadable, entry.dtype, index.index_path, name)
        return Entry(name, key=key, shape=shape, dtype=np.dtype(object), path=index.index_path,
                     loader=loader, kind="bookkeeping", tree_path=tree_path)
    if entry.slices:
        loader = _partitioned_loader(index, key, name, entry, dtype, files, check_crc=check_crc)
        return Entry(name, key=key, shape=shape, dtype=dtype, path=index.index_path,
                     loader=loader, kind=kind, tree_path=tree_path)
    path = files[entry.shard_id]  # a string tensor
    _check_size(entry, dtype, path, name)
    loader = partial(_read_strings, path, entry, check_crc=check_crc, tensor=name)
    return Entry(name, key=key, shape=shape, dtype=dtype, path=path, loader=loader, kind=kind,
                 tree_path=tree_path)


def open(path: str | os.PathLike[str], *, check_crc: bool = True) -> Store:  # noqa: A001
    """Open a TensorFlow checkpoint as a lazy :class:`~ckptconv.Store`.

    Reads the ``.index`` file (checking every block's CRC-32C) and the object graph entry, and
    checks that every data shard exists; no tensor data is read. ``Entry.read()`` reads one
    tensor with ``pread`` and checks its CRC-32C.

    Args:
        path: A checkpoint prefix, its ``.index`` or a ``.data-*`` file, a directory with a
            ``checkpoint`` state file (its latest checkpoint is read), or a SavedModel directory.
        check_crc: Verify each tensor's CRC-32C when it is read, and give writers the CRC to
            compare against what they copy (``Entry.crc32c``); False reads damaged data
            anyway. The index's own block CRCs are always checked.

    Raises:
        FormatError: no TensorFlow checkpoint at ``path`` (or several, with no state file).
        CorruptFileError: the index is damaged or a data shard is missing or truncated.
        UnsupportedError: a big-endian bundle, or compressed index blocks.
    """
    located = _locate(Path(path))
    if located is None:
        raise FormatError(
            "no TensorFlow checkpoint here (expected PREFIX.index next to its data files)",
            path=path,
        )
    if isinstance(located, list):
        names = ", ".join(os.path.basename(p) for p in located[:5])
        raise FormatError(
            f"the directory holds {len(located)} checkpoints ({names}) and no `checkpoint` state "
            "file: pass one prefix",
            path=path,
        )
    index_path = f"{located.prefix}.index"
    if os.path.exists(index_path):
        regular_file(index_path)  # a FIFO or a device would block the read
    if not os.path.isfile(index_path):
        raise CorruptFileError(
            f"the checkpoint's index is missing: {os.path.basename(index_path)} lists its "
            "tensors; copy it along with the .data-* files",
            path=index_path,
        )
    index = _read_index(index_path)
    files = _check_data_files(index, located.prefix)
    nodes = _load_object_graph(index, files)
    object_based = nodes is not None
    entries = _make_entries(_plan(index, nodes), index, files, check_crc=check_crc, object_based=object_based)
    keras_order(entries)
    if located.saved_model:
        checkpoint_kind = "saved-model"
    elif nodes is not None:
        checkpoint_kind = "object-based"
    else:
        checkpoint_kind = "tf1"
    metadata = {
        "checkpoint_kind": checkpoint_kind,
        "prefix": located.prefix,
        "num_shards": str(index.num_shards),
        "bundle_version": str(index.producer),
    }
    return Store(entries, format=FORMAT, path=path, files=[index_path, *files], metadata=metadata)
