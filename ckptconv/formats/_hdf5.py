"""HDF5 plumbing the Keras readers share: safe traversal, attributes, lazy dataset entries.

Keras writes datasets contiguous and uncompressed, so an entry records where the bytes lie
(``dataset.id.get_offset()``, plus the member offset inside a ``.keras`` zip): reading is
one ``pread`` and writers may copy the bytes file to file. Anything else (chunked,
compressed, big-endian) falls back to an h5py read.

Hostile structure is refused: external links, soft links, external and virtual datasets,
and datasets whose declared extent lies beyond the end of the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from ..dtypes import by_name, dtype_name
from ..errors import CorruptFileError, UnsafeInputError
from ..store import ByteRange, Entry, Kind

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_DEPTH = 64


def is_hdf5(head: bytes) -> bool:
    """HDF5 signature at offset 0 (Keras never writes a user block)."""
    return head.startswith(HDF5_MAGIC)


def open_h5(source: str | os.PathLike[str] | Any, *, path: str | os.PathLike[str]) -> h5py.File:
    """Open an HDF5 file (a path or a seekable binary file object) read-only.

    The file's global heap collections (where variable-length attribute values such as
    ``layer_names`` live) are checked before any attribute is read: see
    :func:`check_global_heaps`.
    """
    try:
        f = h5py.File(source, "r")
    except (OSError, RuntimeError, ValueError) as e:
        raise CorruptFileError(describe_open_error(e), path=path) from e
    try:
        check_global_heaps(f, source, path=path)
    except BaseException:
        f.close()
        raise
    return f


_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")


def describe_open_error(error: BaseException) -> str:
    """What libhdf5's refusal to open a file means, in one line with what to do."""
    text = " ".join(str(error).split())
    truncated = _TRUNCATED.search(text)
    if truncated:
        return (
            f"the file is truncated: it has {truncated.group(1)} bytes, its HDF5 superblock "
            f"says {truncated.group(2)}; copy or download it again"
        )
    if "file signature not found" in text:
        return "not an HDF5 file (no HDF5 signature)"
    inner = re.sub(r"^Unable to (synchronously )?open file \((.*)\)$", r"\2", text)
    return f"a damaged HDF5 file that libhdf5 cannot open ({inner})"


_GCOL = b"GCOL"
_GCOL_HEADER = 16  # signature, version, 3 reserved bytes, collection size (8)
_SCAN_CHUNK = 8 << 20
_SKIP_MIN = 64 << 10  # tensor data ranges at least this large are not scanned
_MAX_OBJECTS = 1_000_000


def check_global_heaps(f: h5py.File, source: str | os.PathLike[str] | Any, *, path: str | os.PathLike[str]) -> None:
    """Refuse global heap collections the HDF5 library cannot read safely.

    libhdf5 (1.14) walks a collection's objects trusting their sizes: a record of size 0
    makes it loop forever, and a few zeroed bytes in a Keras file are enough for that. So
    every collection is checked here, before the first variable-length attribute read; an
    object claiming to run past its collection is refused too. Collections lie
    anywhere in the file; contiguous tensor data is skipped, so for Keras files only the
    metadata is scanned (a few KB to MB, whatever the file size).

    Variable-length attribute values are then checked against the collections found: libhdf5
    allocates (and zero-fills) whatever length a value claims before reading its heap object,
    so one damaged length field makes a 100 KB file cost gigabytes of memory. Every value of
    every attribute in the (version 1) object headers Keras files have must point at a checked
    collection, at an object that exists, of the length it claims.

    Raises:
        CorruptFileError: a collection's objects do not tile it, or an attribute value does
            not match its heap object.
    """
    reader = _ImageReader(source)
    try:
        size = reader.size
        skip, headers = _data_ranges(f, size)
        collections: dict[int, dict[int, int]] = {}
        for start, stop in _gaps(skip, size):
            for offset in _find_all(reader, start, stop):
                objects = _check_collection(reader, offset, size, path=path)
                if objects is not None:
                    collections[offset] = objects
        for address in headers:
            for name, values in _vlen_attributes(reader, address, size):
                _check_vlen_values(name, values, collections, path=path)
    finally:
        reader.close()


class _ImageReader:
    """``read(offset, n)`` over an HDF5 image given as a path or a seekable file object."""

    def __init__(self, source: str | os.PathLike[str] | Any) -> None:
        self._fd: int | None = None
        self._obj: Any = None
        if isinstance(source, (str, os.PathLike)):
            self._fd = os.open(source, os.O_RDONLY)
            self.size = os.fstat(self._fd).st_size
        else:
            self._obj = source
            self.size = source.seek(0, os.SEEK_END)

    def read(self, offset: int, n: int) -> bytes:
        if self._fd is not None:
            return os.pread(self._fd, n, offset)
        self._obj.seek(offset)
        return self._obj.read(n)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _data_ranges(f: h5py.File, size: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Byte ranges of large contiguous datasets, and the object header address of every
    object. libhdf5's own visit follows hard links only and each object once (link cycles
    included); the low-level API keeps it quick for files with thousands of objects."""
    ranges: list[tuple[int, int]] = []
    headers: list[int] = [h5py.h5o.get_info(f.id).addr]

    def visit(name: bytes, info: Any) -> int | None:
        headers.append(info.addr)
        if len(headers) > _MAX_OBJECTS:
            return 1  # stop: the readers refuse such files themselves
        if info.type == h5py.h5o.TYPE_DATASET:
            dataset = h5py.h5d.open(f.id, name)
            if dataset.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS:
                offset = dataset.get_offset()
                length = dataset.get_storage_size()
                if offset is not None and length >= _SKIP_MIN and offset + length <= size:
                    ranges.append((offset, offset + length))
        return None

    h5py.h5o.visit(f.id, visit, info=True)
    return sorted(ranges), sorted(set(headers))


def _gaps(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    gaps = []
    position = 0
    for start, stop in ranges:
        if start > position:
            gaps.append((position, start))
        position = max(position, stop)
    if position < size:
        gaps.append((position, size))
    return gaps


def _find_all(reader: _ImageReader, start: int, stop: int) -> list[int]:
    found = []
    position = start
    while position < stop:
        block = reader.read(position, min(_SCAN_CHUNK + len(_GCOL) - 1, stop - position))
        if not block:
            break
        i = block.find(_GCOL)
        while i >= 0:
            found.append(position + i)
            i = block.find(_GCOL, i + 1)
        position += _SCAN_CHUNK
    return found


def _check_collection(
    reader: _ImageReader, offset: int, size: int, *, path: str | os.PathLike[str]
) -> dict[int, int] | None:
    """Walk one collection's objects the way libhdf5 does, refusing what would hurt it.

    Returns its objects' sizes by index, or None if this is no collection libhdf5 accepts.
    """
    header = reader.read(offset, _GCOL_HEADER)
    if len(header) < _GCOL_HEADER or header[4] != 1:
        return None  # not a collection libhdf5 would accept: it reports its own error
    length = int.from_bytes(header[8:16], "little")
    if length < _GCOL_HEADER or offset + length > size:
        return None  # libhdf5 refuses a collection beyond the end of the file itself
    body = reader.read(offset, length)
    objects: dict[int, int] = {}
    position = _GCOL_HEADER
    while position + _GCOL_HEADER <= length:
        index = int.from_bytes(body[position : position + 2], "little")
        object_size = int.from_bytes(body[position + 8 : position + 16], "little")
        if index == 0:  # free space: not padded, runs to the end of the collection
            need = object_size
            if need == 0:
                raise CorruptFileError(
                    f"the global heap at byte {offset} has a free-space record of size 0 "
                    "(the file is damaged)",
                    path=path,
                )
        else:
            need = _GCOL_HEADER + (object_size + 7) // 8 * 8
            if need > length - position:
                raise CorruptFileError(
                    f"object {index} of the global heap at byte {offset} runs past its "
                    "collection (the file is damaged)",
                    path=path,
                )
            objects[index] = object_size
        position += need
    return objects


_MAX_HEADER_BLOCKS = 4096


def _vlen_attributes(reader: _ImageReader, address: int, size: int) -> list[tuple[str, bytes]]:
    """(name, raw values) of every variable-length attribute in a version 1 object header.

    Other header versions (and attributes in dense storage) are not parsed: Keras files have
    none, and libhdf5 then reads them unchecked.
    """
    prefix = reader.read(address, 16)
    if len(prefix) < 16 or prefix[0] != 1:
        return []
    found = []
    blocks = [(address + 16, int.from_bytes(prefix[8:12], "little"))]
    seen = set()
    while blocks and len(seen) < _MAX_HEADER_BLOCKS:
        start, length = blocks.pop()
        if (start, length) in seen or start + length > size:
            continue
        seen.add((start, length))
        block = reader.read(start, length)
        position = 0
        while position + 8 <= len(block):
            kind = int.from_bytes(block[position : position + 2], "little")
            message_size = int.from_bytes(block[position + 2 : position + 4], "little")
            data = block[position + 8 : position + 8 + message_size]
            position += 8 + message_size
            if kind == 0x10 and len(data) >= 16:  # continuation: more messages elsewhere
                blocks.append((int.from_bytes(data[:8], "little"), int.from_bytes(data[8:16], "little")))
            elif kind == 0x0C:
                attribute = _vlen_attribute(data)
                if attribute is not None:
                    found.append(attribute)
    return found


def _vlen_attribute(data: bytes) -> tuple[str, bytes] | None:
    """(name, values) of an attribute message whose type is variable-length, else None."""
    version = data[0] if data else 0
    if version not in (1, 2, 3) or len(data) < 8:
        return None
    name_size, type_size, space_size = (int.from_bytes(data[i : i + 2], "little") for i in (2, 4, 6))
    pad = (lambda n: (n + 7) // 8 * 8) if version == 1 else (lambda n: n)
    position = 9 if version == 3 else 8
    name = data[position : position + name_size].split(b"\0", 1)[0].decode("utf-8", "replace")
    position += pad(name_size)
    datatype = data[position : position + type_size]
    position += pad(type_size)
    space = data[position : position + space_size]
    position += pad(space_size)
    if len(datatype) < 16 or datatype[0] & 0x0F != 9:  # class 9: variable-length
        return None
    base_size = int.from_bytes(datatype[12:16], "little")  # the base type's size
    count = _element_count(space)
    if count is None:
        return None
    return name, bytes([base_size & 0xFF]) + data[position : position + 16 * count]


def _element_count(space: bytes) -> int | None:
    if len(space) < 4:
        return None
    version, rank = space[0], space[1]
    if version == 2 and space[3] == 2:  # a null dataspace holds nothing
        return 0
    first = 8 if version == 1 else 4
    dims = [int.from_bytes(space[first + 8 * i : first + 8 * i + 8], "little") for i in range(rank)]
    if len(space) < first + 8 * rank:
        return None
    count = 1
    for d in dims:
        count *= d
    return count


def _check_vlen_values(name: str, raw: bytes, collections: dict[int, dict[int, int]], *, path: str | os.PathLike[str]) -> None:
    """Each value is (length, heap collection address, object index): it must match a checked
    collection's object, or libhdf5 allocates whatever the length says."""
    base_size = raw[0] or 1
    for at in range(1, len(raw) - 15, 16):
        length = int.from_bytes(raw[at : at + 4], "little")
        collection = int.from_bytes(raw[at + 4 : at + 12], "little")
        index = int.from_bytes(raw[at + 12 : at + 16], "little")
        if length == 0:
            continue
        stored = collections.get(collection, {}).get(index)
        if stored is None or stored != length * base_size:
            what = "no heap object" if stored is None else f"a heap object of {stored} bytes"
            raise CorruptFileError(
                f"attribute {name!r}: a value claims {length * base_size} bytes but points at "
                f"{what} (the file is damaged)",
                path=path,
            )


def decode(value: Any) -> Any:
    """Attribute values may be bytes or str, scalars or arrays: give str / list[str]."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SOU":
            return [decode(v) for v in value.tolist()]
        if value.size == 0:
            return []
        return value.tolist()
    if isinstance(value, np.bytes_):
        return bytes(value).decode("utf-8")
    return value


def chunked_attribute(group: h5py.Group, name: str, *, path: str) -> list[str] | None:
    """Read a list attribute Keras may split into ``name0``, ``name1``, ... above 64 KB.

    Returns None when the attribute is absent.
    """
    if name in group.attrs:
        value = decode(group.attrs[name])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in value]
    if f"{name}0" not in group.attrs:
        return None
    values: list[str] = []
    chunk = 0
    while f"{name}{chunk}" in group.attrs:
        part = decode(group.attrs[f"{name}{chunk}"])
        values.extend(str(v) for v in ([part] if isinstance(part, str) else part))
        chunk += 1
    return values


def safe_get(group: h5py.Group, name: str, *, path: str, kind: type | None = None) -> Any:
    """``group[name]`` following hard links only, each component checked.

    Raises:
        UnsafeInputError: a component is an external or soft link.
        CorruptFileError: a component is missing or not of the expected kind.
    """
    node: Any = group
    parts = [p for p in name.split("/") if p]
    for depth, part in enumerate(parts):
        if not isinstance(node, h5py.Group):
            raise CorruptFileError(f"{node.name!r} is not a group", path=path, tensor=name)
        link = node.get(part, getlink=True)
        if link is None:
            raise CorruptFileError(
                f"the file names {name!r} but holds no such object (the file is damaged or "
                "was not completely written)",
                path=path,
                tensor=name,
            )
        if isinstance(link, h5py.ExternalLink):
            raise UnsafeInputError(
                f"refusing the external link {node.name}/{part} -> "
                f"{link.filename}:{link.path}: weights must live in the file itself",
                path=path,
                tensor=name,
            )
        if isinstance(link, h5py.SoftLink):
            raise UnsafeInputError(
                f"refusing the soft link {node.name}/{part} -> {link.path}",
                path=path,
                tensor=name,
            )
        if depth > MAX_DEPTH:
            raise UnsafeInputError("groups nested too deeply", path=path, tensor=name)
        node = node[part]
    if kind is not None and not isinstance(node, kind):
        what = "dataset" if kind is h5py.Dataset else "group"
        raise CorruptFileError(f"{name!r} is not a {what}", path=path, tensor=name)
    return node


def dataset_dtype(dataset: h5py.Dataset, *, path: str, key: str) -> np.dtype:
    """The tensor dtype of a Keras dataset: opaque 2-byte data is bfloat16 (Keras' encoding),
    other opaque data names its dtype in a ``dtype`` attribute. A ``dtype`` attribute must
    agree with what is stored: it may name the type of opaque bytes of its width (bfloat16,
    float8), or repeat a numeric type, never reinterpret one (float32 bytes read as float16)."""
    dtype = dataset.dtype
    declared = dataset.attrs.get("dtype")
    if declared is not None:
        name = decode(declared)
        try:
            wanted = by_name(str(name))
        except (KeyError, AttributeError):
            raise CorruptFileError(f"unknown dtype attribute {name!r}", path=path, tensor=key) from None
        opaque = dtype.kind == "V" and dtype.fields is None
        if (opaque and dtype.itemsize == wanted.itemsize) or (
            not opaque and dtype.kind in "biufc" and dtype_name(dtype) == dtype_name(wanted)
        ):
            return wanted
        stored = f"{dtype.itemsize}-byte opaque data" if opaque else str(dtype_name(dtype) if dtype.kind in "biufc" else dtype)
        raise CorruptFileError(
            f"the dataset's dtype attribute says {name} but it stores {stored}: refusing to "
            "reinterpret the bytes (the file is damaged or was not written by Keras)",
            path=path,
            tensor=key,
        )
    if dtype.kind == "V" and dtype.fields is None:
        if dtype.itemsize == 2:
            return by_name("bfloat16")
        raise CorruptFileError(
            f"opaque {dtype.itemsize}-byte data without a dtype attribute", path=path, tensor=key
        )
    if dtype.kind not in "biufc":
        raise CorruptFileError(f"dataset of type {dtype} is not a numeric tensor", path=path, tensor=key)
    return dtype


# A compressed dataset may expand this much over its stored bytes (gzip's own limit is about
# 1032:1, reached only by constant data) once it declares more than the floor.
MAX_EXPANSION = 1000
BOMB_FLOOR = 64 * 2**20


def dataset_entry(
    dataset: h5py.Dataset,
    *,
    name: str,
    key: str,
    path: str,
    data_path: str | None,
    base_offset: int = 0,
    file_size: int,
    kind: Kind = "weight",
    index: int = 0,
    layer: str | None = None,
) -> Entry:
    """An Entry for one HDF5 dataset, with a byte range when its bytes lie raw in the file.

    Args:
        data_path: The file the byte range points into (the .keras zip for an archive), or
            None when the bytes are not stored raw in any file (a compressed zip member).
        base_offset: Where the HDF5 file starts inside ``data_path`` (a stored zip member).
        file_size: Size of the HDF5 image: extents beyond it are refused before any read.
    """
    if dataset.is_virtual:
        raise UnsafeInputError("refusing a virtual dataset", path=path, tensor=key)
    if dataset.external:
        raise UnsafeInputError("refusing a dataset stored in external files", path=path, tensor=key)
    dtype = dataset_dtype(dataset, path=path, key=key)
    shape = dataset.shape
    if shape is None:  # null dataspace
        raise CorruptFileError("dataset has no shape", path=path, tensor=key)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    byte_range = None
    offset = dataset.id.get_offset()
    plain = (
        dataset.chunks is None
        and not dataset.compression
        and dataset.dtype.byteorder in "<|="
        and (dataset.dtype.byteorder != "=" or np.little_endian)
    )
    if offset is not None and plain and data_path is not None:
        if offset + nbytes > file_size:
            raise CorruptFileError(
                f"tensor data ({nbytes} bytes at offset {offset}) lies beyond the end of the "
                f"file ({file_size} bytes): the file is truncated",
                path=path,
                tensor=key,
            )
        byte_range = ByteRange(os.path.abspath(data_path), base_offset + offset, nbytes)
        loader = None
    else:
        if dataset.chunks is not None and dataset.id.get_storage_size() == 0 and nbytes > 0:
            # never written: h5py would hand back fill values; that is a damaged file
            raise CorruptFileError("tensor data was never written", path=path, tensor=key)
        if nbytes > 8 * max(file_size, 1) and not dataset.compression:
            raise UnsafeInputError(
                f"declared size {nbytes} bytes is far beyond the file's {file_size} bytes",
                path=path,
                tensor=key,
            )
        stored = dataset.id.get_storage_size()
        if nbytes > BOMB_FLOOR and nbytes > MAX_EXPANSION * max(stored, 1):
            raise UnsafeInputError(
                f"declared size {nbytes} bytes is far beyond the {stored} bytes stored for it "
                f"(more than {MAX_EXPANSION}x): refusing a likely decompression bomb",
                path=path,
                tensor=key,
            )
        loader = _h5py_loader(dataset, dtype, path=path, key=key)
    return Entry(
        name,
        key=key,
        shape=shape,
        dtype=dtype,
        path=path,
        loader=loader,
        byte_range=byte_range,
        kind=kind,
        layer=layer,
        index=index,
    )


def _h5py_loader(dataset: h5py.Dataset, dtype: np.dtype, *, path: str, key: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            raw = dataset[()]
        except (OSError, RuntimeError, ValueError) as e:
            raise CorruptFileError(f"cannot read tensor data ({e})", path=path, tensor=key) from e
        array = np.asarray(raw)
        if array.dtype != dtype:
            if array.dtype.kind == "V":
                array = array.view(dtype)
            else:
                array = array.astype(dtype.newbyteorder("<") if dtype.kind in "biufc" else dtype)
        return np.ascontiguousarray(array)

    return load


_SUFFIX = re.compile(r":\d+$")


def strip_suffix(weight_name: str) -> str:
    """``dense/kernel:0`` -> ``dense/kernel`` (tf-keras records the TF output index)."""
    return _SUFFIX.sub("", weight_name)


_BOOKKEEPING_LEAVES = {"iter", "iteration", "iterations", "global_step", "step", "count", "total"}


def optimizer_kind(name: str) -> Kind:
    """Optimizer state is ``optimizer``, except step counters, which are ``bookkeeping``."""
    leaf = name.rsplit("/", 1)[-1]
    return "bookkeeping" if leaf in _BOOKKEEPING_LEAVES else "optimizer"
