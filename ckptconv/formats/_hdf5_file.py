"""An HDF5 file opened for the Keras readers: one metadata pass, libhdf5 only when needed.

:func:`open_h5` reads a file's object headers and links in one walk (:mod:`._hdf5_links`,
:mod:`._hdf5_headers`) and checks its global heap collections before libhdf5 reads any
variable-length attribute (libhdf5 trusts their sizes: a zeroed record makes it loop forever,
a damaged length makes it allocate gigabytes). The result is a :class:`Catalog`; h5py is
imported, and opens the file, only for what the walk leaves to libhdf5 (:class:`HDF5File`).
:func:`peek_root` reads just the root group, for the readers' ``sniff``.

The HDF5 File Format Specification (version 3.0: "Level 0A: Format Signature and
Superblock", "Level 1E: Global Heap") is the source of truth for the layouts read here.
"""

from __future__ import annotations

import builtins
import mmap
import os
import re
import struct
from collections.abc import Callable
from itertools import compress
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..dtypes import by_name, dtype_name
from ..errors import FETCH_AGAIN, CorruptFileError, damaged, truncated
from ._hdf5_headers import Header, object_header
from ._hdf5_links import (
    HARD,
    MAX_OBJECTS,
    Links,
    SymbolTables,
    group_node_sizes,
    superblock_root,
    walk,
)

if TYPE_CHECKING:
    import h5py

__all__ = [
    "Catalog", "HDF5File", "RootView", "catalog_of", "catalog_strings", "check_global_heaps",
    "describe_h5py_error", "describe_open_error", "from_h5py", "open_h5", "peek_root", "root_view",
]


class HDF5File:
    """An HDF5 file (or image: a ``.keras`` member) open for reading: the object headers and
    links ckptconv parsed (:attr:`catalog`, see :func:`check_global_heaps`), and libhdf5
    through h5py (:attr:`h5`), opened only when something is left to it.

    A Keras file of plain datasets under old-style groups (what h5py writes by default) is
    read whole from the catalog: h5py is then neither imported nor asked to open the file.

    Attributes:
        catalog: What the metadata pass read.
    """

    def __init__(self, source: str | os.PathLike[str] | Any, *, path: str | os.PathLike[str]) -> None:
        self._source = source
        self._path = path
        self._h5: h5py.File | None = None
        self._closed = False
        self.catalog = Catalog({}, {}, {})

    @property
    def root(self) -> int | None:
        """The root group's object header address, when read from the superblock (None: the
        file was opened by libhdf5 first)."""
        return self.catalog.root

    @property
    def h5(self) -> h5py.File:
        """The file opened by h5py (read-only), on first use.

        Raises:
            CorruptFileError: libhdf5 refuses to open it (the message says why).
        """
        if self._h5 is None:
            if self._closed:
                raise ValueError("the HDF5 file is closed")
            import h5py

            try:
                self._h5 = h5py.File(self._source, "r")
            except (OSError, RuntimeError, ValueError) as e:
                raise CorruptFileError(describe_open_error(e), path=self._path) from e
        return self._h5

    def close(self) -> None:
        """Close h5py's handle if it was opened (the entries it backs can no longer read)."""
        self._closed = True
        if self._h5 is not None:
            self._h5.close()


def open_h5(source: str | os.PathLike[str] | Any, *, path: str | os.PathLike[str]) -> HDF5File:
    """Open an HDF5 file (a path, a stored zip member with ``image_region()``, or a seekable
    binary file object) read-only, its metadata parsed (:class:`HDF5File`).

    The file's global heap collections (where variable-length attribute values such as
    ``layer_names`` live) are checked before any attribute is read: see
    :func:`check_global_heaps`. libhdf5 opens the file first (and refuses it in its own words)
    unless its superblock is one ckptconv reads (see
    :func:`~._hdf5_links.superblock_root`).

    Raises:
        CorruptFileError: the file is damaged (libhdf5 refuses it, or the metadata pass does).
    """
    f = HDF5File(source, path=path)
    try:
        f.catalog = check_global_heaps(f, source, path=path)
    except BaseException:
        f.close()
        raise
    return f


def catalog_of(f: HDF5File | Any) -> Catalog:
    """The object headers :func:`open_h5` parsed for ``f`` (empty for a file opened
    otherwise: readers then ask libhdf5 for everything)."""
    return f.catalog if isinstance(f, HDF5File) else Catalog({}, {}, {})


class RootView(NamedTuple):
    """What a Keras reader asks of an HDF5 file's root to tell which kind of file it is.

    Attributes:
        attributes: The names of the root group's attributes.
        links: The root group's links, ``(link type, address)`` by name.
        children: The attribute names of the hard-linked children asked for, by link name
            (a child missing here is not a hard link to a group, or not asked).
    """

    attributes: tuple[str, ...]
    links: Links
    children: dict[str, tuple[str, ...]]


def root_view(f: HDF5File, *, children: tuple[str, ...] = ()) -> RootView | None:
    """The root's attributes and links from ``f``'s catalog, with the attribute names of the
    ``children`` asked for (see :func:`_children`); None when the catalog cannot tell
    (libhdf5 opened the file first, or left an attribute unread): ask h5py."""
    header = None if f.root is None else f.catalog.headers.get(f.root)
    links = f.catalog.children.get("/")
    if header is None or header.kind != "group" or "" in header.attributes or links is None:
        return None
    found = _children(links, children, f.catalog.headers.get)
    return None if found is None else RootView(header.attributes, links, found)


def _children(
    links: Links, names: tuple[str, ...], header_at: Callable[[int], Header | None]
) -> dict[str, tuple[str, ...]] | None:
    """The attribute names of the hard-linked groups among ``names`` (a dataset or a missing
    link is left out); None when one's header is not read whole (``header_at`` gives None, an
    object of another kind, or an attribute unread)."""
    found: dict[str, tuple[str, ...]] = {}
    for name in names:
        link = links.get(name)
        if link is None or link[0] != HARD:
            continue
        child = header_at(link[1])
        if child is None or child.kind == "other" or "" in child.attributes:
            return None
        if child.kind == "group":
            found[name] = child.attributes
    return found


def peek_root(path: str | os.PathLike[str], *, children: tuple[str, ...] = ()) -> RootView | None:
    """The root of the HDF5 file at ``path`` as :func:`root_view` gives it, with the
    attribute names of the ``children`` (hard links to groups) asked for, read from a few
    object headers, the root's symbol table and nothing else (for the readers' ``sniff``:
    no h5py import, no whole-file pass). None when anything is not what h5py writes by
    default or looks damaged: ask h5py, which says what is wrong."""
    reader = _ImageReader(path)
    try:
        size = reader.size
        head = reader.read(0, 96)
        root = superblock_root(head, size)
        node_sizes = group_node_sizes(head)
        if root is None or node_sizes is None:
            return None
        header = object_header(reader.read, root, size)
        if header is None or header.kind != "group" or header.symbols is None or "" in header.attributes:
            return None
        links = SymbolTables(reader.read, size, node_sizes, limit=2 * MAX_OBJECTS, path=path).links("/", *header.symbols)
        found = _children(links, children, lambda address: object_header(reader.read, address, size))
        return None if found is None else RootView(header.attributes, links, found)
    except Exception:  # noqa: BLE001 - damage of any kind: h5py's reading reports it
        return None
    finally:
        reader.close()


_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")


def describe_open_error(error: BaseException) -> str:
    """What libhdf5's refusal to open a file means, in one line with what to do."""
    text = " ".join(str(error).split())
    cut = _TRUNCATED.search(text)
    if cut:
        return truncated(f"it has {cut.group(1)} bytes, its HDF5 superblock says {cut.group(2)}")
    if "file signature not found" in text:
        # the readers open only files (and members) that claim to be HDF5: one whose
        # signature is gone was damaged
        return f"not an HDF5 file (no HDF5 signature): the file is damaged; {FETCH_AGAIN}"
    inner = re.sub(r"^Unable to (synchronously )?open file \((.*)\)$", r"\2", text)
    return f"a damaged HDF5 file that libhdf5 cannot open ({inner}); {FETCH_AGAIN}"


def from_h5py(error: BaseException) -> bool:
    """Whether ``error`` was raised inside h5py (libhdf5's complaint, or h5py's own about a
    name it cannot encode), as opposed to ckptconv's code."""
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and f"h5py{os.sep}" in last


def describe_h5py_error(error: BaseException, what: str = "a damaged HDF5 file") -> str:
    """What an error h5py raised while ckptconv read an open file's objects (a group's
    header, an attribute: :func:`from_h5py`) means, in one line with what to do: the file is
    damaged (``what``: how to call it), with libhdf5's own reason in brackets (``bad object
    header version number``)."""
    if isinstance(error, UnicodeError):
        return f"{what}: a link or attribute name in it is not UTF-8 text; {FETCH_AGAIN}"
    text = " ".join(str(error).split()).strip("'\"")  # a KeyError's text is quoted
    found = re.search(r"\(([^()]*)\)$", text)
    reason = (found.group(1) if found else text)[:200]
    if "addr overflow" in reason or "eof" in reason or "truncated" in reason:
        return truncated(f"libhdf5 reads an object beyond its end ({reason})", or_damaged=True)
    return f"{what}: libhdf5 cannot read an object's header or attributes ({reason}); {FETCH_AGAIN}"


_VLEN = attrgetter("vlen")
_GCOL = b"GCOL"
_GCOL_HEADER = 16  # signature, version, 3 reserved bytes, collection size (8)
_SCAN_CHUNK = 8 << 20
_SKIP_MIN = 64 << 10  # a dataset libhdf5 must describe is asked about (and skipped) from this size


def check_global_heaps(
    f: HDF5File, source: str | os.PathLike[str] | Any, *, path: str | os.PathLike[str]
) -> Catalog:
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

    Every object header is read once, in one pass over the file's links: the parsed headers
    are returned by address (see :mod:`._hdf5_headers`), with the layer names of Keras 3's
    ``vars`` groups, for the readers to build entries from without opening each dataset
    through libhdf5; and the root group's address when the superblock gave it (else libhdf5
    opened the file first, ``f.h5``, and said whether it is an HDF5 file it can read).

    Raises:
        CorruptFileError: a collection's objects do not tile it, or an attribute value does
            not match its heap object.
    """
    reader = _ImageReader(source)
    try:
        size = reader.size
        root = superblock_root(reader.read(0, 96), size)
        if root is None:
            f.h5  # noqa: B018 - libhdf5 opens it first: the file is one it reads, or its error
        image = None if reader.mapped is None else np.frombuffer(reader.mapped, np.uint8)[reader.base : reader.base + size]
        try:
            headers, children, skip = walk(
                lambda: f.h5, reader.read, size, root=root, path=path, skip_min=_SKIP_MIN, image=image
            )
        finally:
            del image  # the mapping closes only once no array holds it
        collections: dict[int, dict[int, tuple[int, int]]] = {}
        for offset in _find_all(reader, _gaps(skip, size)):
            objects = _check_collection(reader, offset, size, path=path)
            if objects is not None:
                collections[offset] = objects
        texts: dict[int, dict[str, str | list[str]]] = {}
        declared: list[int] = []  # plain datasets whose dtype attribute is to be applied
        # (the headers with variable-length attributes picked out without a Python step per object)
        for address, header in compress(headers.items(), map(_VLEN, headers.values())):
            vlen = header.vlen
            if vlen:
                for name, values, what in vlen:
                    text = _check_vlen_values(name, values, collections, reader if what else None, path=path)
                    if text is not None:  # strings: layer names, weight names
                        texts.setdefault(address, {})[name] = text[0] if what == "str" else text
                if header.declared:
                    declared.append(address)
    finally:
        reader.close()
    for address in declared:
        headers[address] = _declared_dtype(headers[address], texts.get(address, {}).get("dtype"))
    return Catalog(headers, texts, children, root)


def _declared_dtype(header: Header, name: Any) -> Header:
    """A plain dataset's header with its ``dtype`` attribute applied, as
    :func:`dataset_dtype` applies it (the name of the type of opaque bytes of its width, or
    the stored numeric type repeated); anything else is left to that function (through h5py),
    which refuses it in its own words."""
    stored = header.dtype
    try:
        wanted = by_name(name) if isinstance(name, str) else None
    except (KeyError, AttributeError, TypeError):
        wanted = None
    opaque = stored is not None and stored.kind == "V"  # Keras' 2-byte opaque type: see _datatype
    numeric = stored is not None and stored.kind in "biuf" and not opaque
    if wanted is not None and (
        (opaque and stored.itemsize == wanted.itemsize)  # type: ignore[union-attr]
        or (numeric and dtype_name(stored) == dtype_name(wanted))  # type: ignore[arg-type]
    ):
        return header._replace(dtype=wanted, declared=False)
    return header._replace(plain=False, shape=None, dtype=None, declared=False)


class Catalog(NamedTuple):
    """What :func:`check_global_heaps` read: every object header by address, the
    variable-length string attributes (layer and weight names) decoded, by address (a scalar
    as a str, an array as a list), every group's links (``(link type, address)`` by name) by
    group path, and the root group's address (None when libhdf5 opened the file first). A
    group missing from ``children`` (reached by a second hard link, or a file not opened by
    :func:`open_h5`) is asked of libhdf5."""

    headers: dict[int, Header]
    texts: dict[int, dict[str, str | list[str]]]
    children: dict[str, dict[str, tuple[int, int]]]
    root: int | None = None


def catalog_strings(catalog: Catalog, address: int, name: str) -> list[str] | None | bool:
    """A list attribute Keras may split into ``name0``, ``name1``, ... (as
    :func:`chunked_attribute` reads it) from the catalog: the strings, None when the object
    has no such attribute, or False when the catalog cannot tell (ask h5py)."""
    header = catalog.headers.get(address)
    if header is None or header.kind == "other" or "" in header.attributes:
        return False
    texts = catalog.texts.get(address, {})
    if name in header.attributes:
        value = texts.get(name)
        if value is None:
            return False
        return [value] if isinstance(value, str) else list(value)
    if f"{name}0" not in header.attributes:
        return None
    values: list[str] = []
    chunk = 0
    while f"{name}{chunk}" in header.attributes:
        part = texts.get(f"{name}{chunk}")
        if part is None:
            return False
        values.extend([part] if isinstance(part, str) else part)
        chunk += 1
    return values


class _ImageReader:
    """``read(offset, n)`` over an HDF5 image given as a path or a stored zip member (an
    object with ``image_region()``), memory-mapped: the metadata pass reads tens of thousands
    of small headers, each one slice of the map; or over a seekable file object. Offsets are
    image offsets (non-negative); a read stops at the image's end."""

    def __init__(self, source: str | os.PathLike[str] | Any) -> None:
        self._map: mmap.mmap | None = None
        self._obj: Any = None
        lead = 0  # where the image starts in the map
        region = getattr(source, "image_region", None)  # a stored zip member: map its bytes
        if isinstance(source, (str, os.PathLike)) or region is not None:
            path, base, length = (source, 0, None) if region is None else region()
            with builtins.open(path, "rb") as f:
                end = os.fstat(f.fileno()).st_size
                self.size = max(0, end - base if length is None else min(length, end - base))
                if self.size:
                    # the map starts at the page holding the image's first byte (a member's
                    # data rarely starts on a page boundary) and ends with the image
                    lead = base % mmap.ALLOCATIONGRANULARITY
                    self._map = mmap.mmap(
                        f.fileno(), lead + self.size, access=mmap.ACCESS_READ, offset=base - lead
                    )
        else:
            self._obj = source
            self.size = source.seek(0, os.SEEK_END)
        image = self._map
        # the image in place when memory-mapped (search it, do not slice it): the mapping
        # and where the image starts in it
        self.mapped, self.base = image, lead
        if image is not None:  # one slice a read (bounded by the map, which ends with the image)
            if lead:
                self.read = lambda offset, n: image[lead + offset : lead + offset + n]  # type: ignore[method-assign]
            else:
                self.read = lambda offset, n: image[offset : offset + n]  # type: ignore[method-assign]

    def read(self, offset: int, n: int) -> bytes:
        if self._obj is None:  # nothing mapped: an empty image
            return b""
        self._obj.seek(offset)
        return self._obj.read(n)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # an array over it lives on (in an error's traceback): it
                pass  # closes when that is collected
            self._map = self.mapped = None


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


def _find_all(reader: _ImageReader, gaps: list[tuple[int, int]]) -> list[int]:
    """Offsets of every ``GCOL`` signature lying wholly within one of the byte ranges
    ``gaps`` (``(start, stop)`` pairs, in order), in order. A file of many small tensors has
    as many gaps between their bytes: they are searched in one loop here."""
    image = reader.mapped
    found: list[int] = []
    if image is not None:  # searched in place: no copy, and only the pages searched are read
        # for its first byte (a one-byte search is memchr's, several times as fast as a
        # search for the four; metadata holds few "G"), each hit then compared whole
        base = reader.base
        find = image.find
        first, rest = _GCOL[:1], _GCOL[1:]
        for start, stop in gaps:
            end = base + stop - len(_GCOL) + 1  # past where a signature wholly inside may start
            i = find(first, base + start, end) if end > base + start else -1  # (a negative end counts from the map's end)
            while i >= 0:
                if image[i + 1 : i + len(_GCOL)] == rest:
                    found.append(i - base)
                i = find(first, i + 1, end)
        return found
    for start, stop in gaps:
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
) -> dict[int, tuple[int, int]] | None:
    """Walk one collection's objects the way libhdf5 does, refusing what would hurt it.

    Returns its objects' (size, position in the collection) by index, or None if this is no collection libhdf5 accepts.
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
                    f"(the file is damaged); {FETCH_AGAIN}",
                    path=path,
                )
        else:
            need = _GCOL_HEADER + (object_size + 7) // 8 * 8
            if need > length - position:
                raise CorruptFileError(
                    damaged(f"object {index} of the global heap at byte {offset} runs past its "
                            "collection"),
                    path=path,
                )
            objects[index] = (object_size, position + _GCOL_HEADER)
        position += need
    return objects


def _check_vlen_values(
    name: str, raw: bytes, collections: dict[int, dict[int, tuple[int, int]]], reader: _ImageReader | None,
    *, path: str | os.PathLike[str],
) -> list[str] | None:
    """Each value is (length, heap collection address, object index): it must match a checked
    collection's object, or libhdf5 allocates whatever the length says. With ``reader``, the
    strings the values point at (None when one is not UTF-8)."""
    base_size = raw[0] or 1
    texts: list[str] | None = None if reader is None else []
    for length, collection, index in _vlen_values(raw):
        if length == 0:
            if texts is not None:
                texts.append("")
            continue
        stored = collections.get(collection, {}).get(index)
        if stored is None or stored[0] != length * base_size:
            what = "no heap object" if stored is None else f"a heap object of {stored[0]} bytes"
            raise CorruptFileError(
                damaged(f"attribute {name!r}: a value claims {length * base_size} bytes but points at "
                        f"{what}"),
                path=path,
            )
        if texts is not None:
            try:
                texts.append(reader.read(collection + stored[1], stored[0]).decode("utf-8"))  # type: ignore[union-attr]
            except UnicodeDecodeError:
                texts = None
    return texts


_VLEN_VALUE = struct.Struct("<IQI")  # length, global heap collection address, object index


def _vlen_values(raw: bytes) -> Any:
    """``(length, collection, index)`` of each whole value after the base-size byte."""
    return _VLEN_VALUE.iter_unpack(raw[1 : 1 + (len(raw) - 1) // 16 * 16])
