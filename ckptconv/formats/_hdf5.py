"""HDF5 plumbing the Keras readers share: safe traversal, attributes, lazy dataset entries
(the file itself, its metadata pass and its catalog: :mod:`._hdf5_file`).

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
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dtypes import by_name, dtype_name
from ..errors import FETCH_AGAIN, CorruptFileError, UnsafeInputError, damaged, truncated
from ..store import ByteRange, Entry, Kind, layer_of
from ._hdf5_file import Catalog, HDF5File
from ._hdf5_headers import Header
from ._hdf5_links import HARD, Links

if TYPE_CHECKING:
    import h5py

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_DEPTH = 64


def is_hdf5(head: bytes) -> bool:
    """HDF5 signature at offset 0 (Keras never writes a user block)."""
    return head.startswith(HDF5_MAGIC)


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
    import h5py

    node: Any = group
    parts = [p for p in name.split("/") if p]
    for depth, part in enumerate(parts):
        if not isinstance(node, h5py.Group):
            raise CorruptFileError(damaged(f"{node.name!r} is not a group"), path=path, tensor=name)
        link = node.get(part, getlink=True)
        if link is None:
            raise CorruptFileError(
                f"the file names {name!r} but holds no such object (the file is damaged or "
                f"was not completely written); {FETCH_AGAIN}",
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
        try:
            node = node[part]
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:  # libhdf5 cannot open it
            raise unreadable_dataset(e, path=path, key=f"{node.name.rstrip('/')}/{part}") from e
    if kind is not None and not isinstance(node, kind):
        what = "dataset" if kind is h5py.Dataset else "group"
        raise CorruptFileError(damaged(f"{name!r} is not a {what}"), path=path, tensor=name)
    return node


# what libhdf5's complaint about a dataset names -> the part of its object header at fault
_DAMAGED_PART = (
    (("datatype", "mantissa", "exponent", "sign ", "floating", "precision", "normaliz", "conver"),
     "datatype message"),
    (("dataspace", "dimension", "rank"), "dataspace message"),
    (("layout", "chunk"), "data layout message"),
    (("filter", "pipeline", "inflate", "deflate", "decompress"), "compressed data"),
)


def unreadable_dataset(error: BaseException, *, path: str, key: str, reading: bool = False) -> CorruptFileError:
    """The error for a dataset libhdf5 (or h5py) cannot open, describe or read (``reading``),
    in ckptconv's words: which part of the dataset is damaged, as far as the complaint
    (``error``, which the caller chains as the cause: ``--debug`` shows it) tells."""
    text = str(error).lower()
    if "truncated" in text or "addr overflow" in text or "eof" in text:
        return CorruptFileError(
            truncated("the dataset's metadata or data lies beyond the end of the file", or_damaged=True),
            path=path,
            tensor=key,
        )
    part = next((part for words, part in _DAMAGED_PART if any(w in text for w in words)), "object header")
    if part == "datatype message" and not reading and "nsufficient precision" in text:
        detail = "it describes floating-point numbers of a layout no numpy type has"
    else:
        detail = f"HDF5 cannot {'read' if reading else 'open'} the dataset"
    if part == "object header":  # a group's as well as a dataset's (safe_get opens both)
        return CorruptFileError(f"the HDF5 object's header is damaged (HDF5 cannot {'read' if reading else 'open'} "
                                f"this group or dataset); {FETCH_AGAIN}", path=path, tensor=key)
    return CorruptFileError(f"the dataset's {part} is damaged ({detail}); {FETCH_AGAIN}", path=path, tensor=key)


def dataset_dtype(dataset: h5py.Dataset, *, path: str, key: str) -> np.dtype:
    """The tensor dtype of a Keras dataset: opaque 2-byte data is bfloat16 (Keras' encoding),
    other opaque data names its dtype in a ``dtype`` attribute. A ``dtype`` attribute must
    agree with what is stored: it may name the type of opaque bytes of its width (bfloat16,
    float8), or repeat a numeric type, never reinterpret one (float32 bytes read as float16).

    Raises:
        CorruptFileError: the datatype is damaged (h5py has no numpy type for it, or one wider
            than what is stored: a damaged exponent bias makes 4-byte floats read as float64),
            or is not a numeric tensor's; a ``dtype`` attribute that disagrees.
    """
    try:
        dtype = dataset.dtype
        numeric = dtype.kind in "biufc"
        stored_size = dataset.id.get_type().get_size() if numeric else dtype.itemsize
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise unreadable_dataset(e, path=path, key=key) from e
    if stored_size != dtype.itemsize:
        raise CorruptFileError(
            f"the dataset's datatype message is damaged (it describes {stored_size}-byte numbers of a "
            f"layout no framework writes, which would read as {dtype_name(dtype)}); {FETCH_AGAIN}",
            path=path,
            tensor=key,
        )
    declared = dataset.attrs.get("dtype")
    if declared is not None:
        name = decode(declared)
        try:
            wanted = by_name(str(name))
        except (KeyError, AttributeError):
            raise CorruptFileError(
                damaged(f"unknown dtype attribute {name!r}"), path=path, tensor=key
            ) from None
        opaque = dtype.kind == "V" and dtype.fields is None
        if (opaque and dtype.itemsize == wanted.itemsize) or (
            not opaque and dtype.kind in "biufc" and dtype_name(dtype) == dtype_name(wanted)
        ):
            return wanted
        stored = f"{dtype.itemsize}-byte opaque data" if opaque else str(dtype_name(dtype) if dtype.kind in "biufc" else dtype)
        raise CorruptFileError(
            f"the dataset's dtype attribute says {name} but it stores {stored}: refusing to "
            f"reinterpret the bytes (the file is damaged or was not written by Keras); {FETCH_AGAIN}",
            path=path,
            tensor=key,
        )
    if dtype.kind == "V" and dtype.fields is None:
        if dtype.itemsize == 2:
            return by_name("bfloat16")
        raise CorruptFileError(
            damaged(f"opaque {dtype.itemsize}-byte data without a dtype attribute"),
            path=path, tensor=key,
        )
    if dtype.kind not in "biufc":
        raise CorruptFileError(
            damaged(f"dataset of type {dtype} is not a numeric tensor"), path=path, tensor=key
        )
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
    try:
        virtual, external, shape = dataset.is_virtual, dataset.external, dataset.shape
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise unreadable_dataset(e, path=path, key=key) from e
    if virtual:
        raise UnsafeInputError("refusing a virtual dataset", path=path, tensor=key)
    if external:
        raise UnsafeInputError("refusing a dataset stored in external files", path=path, tensor=key)
    dtype = dataset_dtype(dataset, path=path, key=key)
    if shape is None:  # null dataspace
        raise CorruptFileError(damaged("dataset has no shape"), path=path, tensor=key)
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
        byte_range = _byte_range(offset, nbytes, data_path, base_offset, file_size, path=path, key=key)
        loader = None
    else:
        if dataset.chunks is not None and dataset.id.get_storage_size() == 0 and nbytes > 0:
            # never written: h5py would hand back fill values; that is a damaged file
            raise CorruptFileError(
                f"tensor data was never written (the file is damaged or incomplete); {FETCH_AGAIN}", path=path, tensor=key
            )
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


def header_entry(
    header: Header,
    name: str,
    key: str,
    path: str,
    data_path: str | None,
    base_offset: int,
    file_size: int,
    kind: Kind,
    index: int,
    layer: str | None,
    tree_path: str | None,
    /,
) -> Entry | None:
    """The Entry :func:`dataset_entry` gives (with ``tree_path``), built from the dataset's
    parsed object header (no libhdf5 call); None when the header leaves anything to libhdf5
    (see :class:`~._hdf5_headers.Header`) or the bytes are not raw in any file. Arguments
    by position, as :meth:`~ckptconv.store.Entry.of` takes them: readers build thousands."""
    if not header.plain or data_path is None:
        return None
    byte_range = _byte_range(  # a damaged range names the tensor as the store will
        header.offset, header.length, data_path, base_offset, file_size, path=path, key=name  # type: ignore[arg-type]
    )
    return Entry.of(
        name, layer_of(name) if layer is None else layer, index, key, header.shape, header.dtype, kind, path,
        byte_range, None, tree_path, None,
    )


def _byte_range(
    offset: int, nbytes: int, data_path: str, base_offset: int, file_size: int, *, path: str, key: str
) -> ByteRange:
    if offset + nbytes > file_size:
        raise CorruptFileError(
            f"tensor data ({nbytes} bytes at offset {offset}) lies beyond the end of the "
            f"HDF5 image ({file_size} bytes): the file is truncated or damaged; {FETCH_AGAIN}",
            path=path,
            tensor=key,
        )
    # the readers hand over absolute paths (made so once per file): abspath only for others
    absolute = data_path if data_path[:1] == os.sep else os.path.abspath(data_path)
    return ByteRange(absolute, base_offset + offset, nbytes)


def resolve(catalog: Catalog, path: str) -> int | None:
    """The address of the object at ``path`` through the catalog's hard links, or None when
    the catalog cannot tell (a link that is not hard, a missing link, a group it holds no
    links of, nesting beyond MAX_DEPTH): :func:`safe_get` then gives the reason."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return catalog.root
    if len(parts) > MAX_DEPTH:
        return None
    group = ""
    address = None
    for part in parts:
        table = catalog.children.get(group or "/")
        link = None if table is None else table.get(part)
        if link is None or link[0] != HARD:
            return None
        address = link[1]
        group = f"{group}/{part}"
    return address


def links_of(f: HDF5File, group: str) -> Links:
    """A group's links by name, ``(link type, address)``: from ``f``'s catalog, else from
    libhdf5."""
    links = f.catalog.children.get(group)
    if links is not None:
        return links
    import h5py

    return link_table(h5py.h5g.open(f.h5.id, group.encode("utf-8", "surrogateescape")))


def link_table(gid: Any) -> dict[str, tuple[int, int]]:
    """A group's links by name: ``(link type, object address)`` (the address is meaningful
    for hard links only), from one libhdf5 iteration."""
    links: dict[str, tuple[int, int]] = {}

    def add(name: bytes, info: Any) -> None:
        links[name.decode("utf-8", "surrogateescape")] = (info.type, info.u)

    gid.links.iterate(add, info=True)
    return links


def link_target(gid: Any, name: str) -> str:
    """Where a soft link points, or which file an external link names."""
    value = gid.links.get_val(name.encode("utf-8", "surrogateescape"))
    if isinstance(value, tuple):
        value = value[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _h5py_loader(dataset: h5py.Dataset, dtype: np.dtype, *, path: str, key: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            raw = dataset[()]
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
            raise unreadable_dataset(e, path=path, key=key, reading=True) from e
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
