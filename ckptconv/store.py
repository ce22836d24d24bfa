"""The neutral core: :class:`Entry` (one lazy tensor) and :class:`Store` (a checkpoint).

A reader turns a checkpoint into a :class:`Store`: an ordered, read-only mapping from a flat
``/``-separated name to an :class:`Entry`. Opening a store reads metadata only; tensor bytes
are read by :meth:`Entry.read` (one entry at a time, never the others).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .dtypes import dtype_name
from .errors import FETCH_AGAIN, CorruptFileError, IntegrityError, NoSuchTensorError, nearest, truncated

__all__ = [
    "ByteRange",
    "Entry",
    "ReadBuffer",
    "read_buffer",
    "Kind",
    "Output",
    "Store",
    "layer_of",
    "leaf_of",
    "keras_order",
    "index_in_order",
    "read_byte_range",
    "shape_problem",
    "MAX_DIMS",
    "check_crc32c",
]

Kind = Literal["weight", "optimizer", "bookkeeping"]
KINDS: tuple[Kind, ...] = ("weight", "optimizer", "bookkeeping")


MAX_DIMS = 64
"""The most dimensions a numpy array has (``numpy.empty`` refuses more)."""


PAGE = 4096
"""Bytes per memory page, and the unit of a file's page cache."""

_PLACED_MIN = 64 << 10  # smaller reads are too short for their placement to be measurable


class ReadBuffer:
    """Memory that file bytes are read into, each read placed so the kernel copies at full speed.

    A read from the page cache is a copy (``rep movsb``) from the file's place in a page to
    the buffer's; x86 CPUs copy 2–4× slower when the destination lies 1 to 63 bytes past the
    source within a 4 KiB page (*4K aliasing*: each load seems to wait for the store just
    before it). That is exactly where ``malloc`` and numpy put a large block (16 bytes into
    a page) when the file's bytes start on a page boundary, as a TF checkpoint's first
    tensor, an Orbax chunk or a page-aligned safetensors file do. :meth:`at` gives, for a
    read starting at file offset ``offset``, a part of the buffer that starts 64-byte aligned
    (any dtype's alignment) and 0 or 65–127 bytes past ``offset``'s place in its page.
    Successive reads of ``capacity`` bytes each (a multiple of :data:`PAGE`) through the same
    part keep that placement.

    Args:
        capacity: The most bytes one read takes (>= 0).
    """

    __slots__ = ("capacity", "_raw", "_address")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        slack = PAGE + 128 if capacity >= _PLACED_MIN else 0
        self._raw = np.empty(capacity + slack, dtype=np.uint8)
        self._address: int = self._raw.__array_interface__["data"][0] if slack else -1

    def at(self, offset: int, nbytes: int | None = None) -> np.ndarray:
        """A 1-D uint8 view of ``nbytes`` bytes (default: the capacity, at most that) to read
        the file's bytes from ``offset`` into; valid until the next call."""
        n = self.capacity if nbytes is None else min(nbytes, self.capacity)
        if self._address < 0:
            return self._raw[:n]
        past = -offset % 64  # the destination 64-byte aligned, and never 1-63 bytes past
        if past:
            past += 64
        start = (offset + past - self._address) % PAGE
        return self._raw[start : start + n]


def read_buffer(nbytes: int, offset: int) -> np.ndarray:
    """A new 1-D uint8 array of ``nbytes`` bytes placed to read a file's bytes from ``offset``
    into at full speed (see :class:`ReadBuffer`)."""
    return ReadBuffer(nbytes).at(offset)


def shape_text(shape: Iterable[int]) -> str:
    """A shape as every message writes it: ``[3, 3, 8, 16]`` (``[]`` for a scalar)."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def shape_problem(shape: Iterable[int], itemsize: int) -> str | None:
    """What makes ``shape`` impossible for a numpy array of ``itemsize``-byte elements, or None.

    An array has at most :data:`MAX_DIMS` dimensions, none negative, and its size in bytes
    must be countable in 64 bits at every step of the product (as numpy counts it).
    """
    dims = list(shape)
    if len(dims) > MAX_DIMS:
        return f"{len(dims)} dimensions, more than the {MAX_DIMS} an array can have"
    size = max(itemsize, 1)
    for d in dims:
        if d < 0:
            return f"a negative dimension ({d})"
        size *= d
        if size >= 2**63:
            return "more bytes than a 64-bit size can count"
    return None


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Where a tensor's raw bytes lie: ``length`` bytes at ``offset`` in the file ``path``.

    The bytes are the tensor in C order and little-endian, exactly as a safetensors file
    stores them, so a writer may copy them file to file without decoding.

    Every read of stored tensor bytes goes through :meth:`read_into` (with ``pread``, so
    reads from several threads may share one descriptor); a file that ends early is one
    :class:`~ckptconv.CorruptFileError` naming the byte the data should reach.
    """

    path: str
    offset: int
    length: int

    def __init__(self, path: str, offset: int, length: int) -> None:
        # what the dataclass would write, with each slot set by its own descriptor instead of
        # a looked-up object.__setattr__ per field: a reader makes one range per tensor
        _set_path(self, path)
        _set_offset(self, offset)
        _set_length(self, length)

    def read_into(
        self,
        buffer: memoryview | bytearray | np.ndarray,
        *,
        start: int = 0,
        fd: int | None = None,
        tensor: str | None = None,
    ) -> None:
        """Fill ``buffer`` (writable, ``n`` bytes) with the ``n`` bytes at ``start`` within
        the range, through ``fd`` if given (an open descriptor of ``path``).

        Raises:
            CorruptFileError: the file ends before those bytes do.
        """
        view = memoryview(buffer).cast("B")
        if start < 0 or start + len(view) > self.length:
            raise ValueError(f"bytes {start}..{start + len(view)} lie outside the {self.length}-byte range")
        if not len(view):
            return
        own = fd is None
        if fd is None:
            fd = os.open(self.path, os.O_RDONLY)
        try:
            position = self.offset + start
            done = 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], position + done)
                if n <= 0:
                    raise CorruptFileError(
                        truncated(f"tensor data ends at byte {self.offset + self.length}, "
                                  f"the file at byte {position + done}"),
                        path=self.path,
                        tensor=tensor,
                    )
                done += n
        finally:
            if own:
                os.close(fd)

    def pieces(
        self, buffer: memoryview, *, fd: int | None = None, tensor: str | None = None
    ) -> Iterator[memoryview]:
        """The range's bytes in order, read through ``buffer``: each piece is a view of it,
        valid until the next one is asked for."""
        own = fd is None
        if fd is None:
            fd = os.open(self.path, os.O_RDONLY)
        try:
            done = 0
            while done < self.length:
                piece = buffer[: min(len(buffer), self.length - done)]
                self.read_into(piece, start=done, fd=fd, tensor=tensor)
                done += len(piece)
                yield piece
        finally:
            if own:
                os.close(fd)

    def crc32c(
        self,
        *,
        fd: int | None = None,
        buffer: ReadBuffer | None = None,
        tensor: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """CRC-32C of the range's bytes, read in pieces through ``buffer`` (a new one of up to
        8 MiB by default, reusable from range to range), so memory stays small whatever the
        tensor's size; ``progress`` gets each piece's size."""
        if buffer is None:
            buffer = ReadBuffer(max(1, min(self.length, 8 << 20)))
        from .crc import crc32c_function  # here: listing a file computes no checksum

        crc32c_of = crc32c_function()
        crc = 0
        for piece in self.pieces(memoryview(buffer.at(self.offset)), fd=fd, tensor=tensor):
            crc = crc32c_of(piece, crc)
            if progress is not None:
                progress(len(piece))
        return crc


_set_path = ByteRange.path.__set__  # type: ignore[attr-defined]
_set_offset = ByteRange.offset.__set__  # type: ignore[attr-defined]
_set_length = ByteRange.length.__set__  # type: ignore[attr-defined]


def check_crc32c(
    actual: int, recorded: int | None, *, path: str, tensor: str | None
) -> None:
    """The one checksum check: raise :class:`~ckptconv.IntegrityError` when ``actual`` (the
    CRC-32C of the bytes read) is not ``recorded``; nothing to check when ``recorded`` is None."""
    if recorded is not None and actual != recorded:
        raise IntegrityError(
            f"stored bytes fail their recorded CRC-32C (recorded {recorded:08x}, computed "
            f"{actual:08x}): the file is damaged; {FETCH_AGAIN}, or pass "
            "{opt:check_crc=False} to read it anyway",
            path=path,
            tensor=tensor,
        )


def read_byte_range(
    byte_range: ByteRange,
    dtype: np.dtype,
    shape: tuple[int, ...],
    *,
    tensor: str | None = None,
    out: np.ndarray | None = None,
    fd: int | None = None,
) -> np.ndarray:
    """A tensor read from its raw bytes into a fresh array (placed for a fast read, see
    :class:`ReadBuffer`) or into ``out``, a C-contiguous array of that shape and dtype,
    through ``fd`` if given (an open descriptor of ``byte_range.path``).

    Raises:
        CorruptFileError: the stored size does not fit the shape and dtype, or the file ends
            before the bytes do.
    """
    if out is not None and (out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous {list(shape)} {dtype_name(dtype)} array")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != byte_range.length:
        raise CorruptFileError(
            f"stored size {byte_range.length} bytes does not match shape {list(shape)} "
            f"of {dtype_name(dtype)} ({nbytes} bytes): the file is damaged; {FETCH_AGAIN}",
            path=byte_range.path,
            tensor=tensor,
        )
    if out is None:
        out = read_buffer(nbytes, byte_range.offset).view(dtype).reshape(shape)
    byte_range.read_into(out.reshape(-1).view(np.uint8), fd=fd, tensor=tensor)
    return out


# Shapes already checked: a checkpoint's tensors share a few shapes, so each distinct one is
# converted and checked once. Keys are shapes as tuples of ints with every dimension at least 1
# and at most MAX_DIMS of them; the value is (the key itself, its element count). A shape equal
# to a key (numpy integers, a tuple subclass) converts to that key, as ``tuple(map(int, shape))``
# would; the size in bytes is still checked per dtype.
_SHAPES: dict[tuple[int, ...], tuple[tuple[int, ...], int]] = {}
_SHAPES_KEPT = 4096
# numpy dtype classes seen (``isinstance(dtype, np.dtype)`` is slow: numpy's metaclass)
_DTYPE_CLASSES: set[type] = set()


def _checked_shape(shape: Iterable[int], itemsize: int, *, path: str, tensor: str) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, checked by :func:`shape_problem` for ``itemsize``-byte
    elements; remembered in ``_SHAPES`` when every dimension is at least 1.

    Raises:
        CorruptFileError: no numpy array has this shape.
    """
    shape = tuple(map(int, shape))
    # with every dimension at least 1 the running product only grows, so the final size
    # alone decides; anything else (a zero, a negative, too many dimensions) gets the
    # dimension-by-dimension check
    if len(shape) <= MAX_DIMS and (not shape or min(shape) > 0):
        count = math.prod(shape)
        if count * (itemsize or 1) < 2**63:
            if len(_SHAPES) < _SHAPES_KEPT:
                shape = _SHAPES.setdefault(shape, (shape, count))[0]
            return shape
    problem = shape_problem(shape, itemsize)
    if problem is not None:
        raise CorruptFileError(
            f"shape {list(shape)} has {problem}: not a tensor ckptconv can hold (the file is "
            f"damaged); {FETCH_AGAIN}",
            path=path,
            tensor=tensor,
        )
    return shape


_new_object = object.__new__


def _fill(
    entry: Entry,
    name: str,
    layer: str,
    index: int,
    key: str,
    shape: Iterable[int],
    dtype: np.dtype,
    kind: Kind,
    path: str,
    byte_range: ByteRange | None,
    crc32c: int | None,
    tree_path: str | None,
    loader: Callable[[], np.ndarray] | None,
) -> None:
    """Set every field of ``entry``: ``dtype`` made a numpy dtype, ``shape`` a checked tuple of
    ints (see :func:`_checked_shape`); the one rule both of :class:`Entry`'s constructors use."""
    if type(dtype) not in _DTYPE_CLASSES:
        if isinstance(dtype, np.dtype):
            _DTYPE_CLASSES.add(type(dtype))
        else:
            dtype = np.dtype(dtype)
    try:
        known = _SHAPES.get(shape)  # type: ignore[call-overload]
    except TypeError:  # a list, or dimensions that cannot be hashed
        known = None
    if known is not None and known[1] * (dtype.itemsize or 1) < 2**63:
        shape = known[0]
    else:
        shape = _checked_shape(shape, dtype.itemsize, path=path, tensor=name)
    entry.name = name
    entry.layer = layer
    entry.index = index
    entry.key = key
    entry.shape = shape  # type: ignore[assignment]
    entry.dtype = dtype
    entry.kind = kind
    entry.path = path
    entry.byte_range = byte_range
    entry.crc32c = crc32c
    entry.tree_path = tree_path
    entry._loader = loader


class Entry:
    """One tensor of a checkpoint, described by metadata and read on demand.

    Attributes:
        name: Canonical flat name, ``/``-separated (``block/inner_a/kernel``).
        layer: The owning layer: ``name`` without its last part.
        index: Position of the weight in the layer's ``get_weights()`` list.
        key: The format's own address (HDF5 dataset path, TF checkpoint key, ...).
        shape: numpy shape.
        dtype: numpy dtype (``ml_dtypes.bfloat16`` etc. for bf16 / float8).
        kind: ``weight``, ``optimizer`` or ``bookkeeping``.
        byte_range: Where the raw little-endian C-order bytes lie in a file, when they do
            (contiguous, uncompressed); None otherwise.
        crc32c: CRC-32C of the raw bytes when the format records one (TF checkpoints,
            safetensors written by ckptconv), else None; reading the byte range checks it.
        tree_path: The structural key Keras or TensorFlow loads this tensor by, where the
            format has one: the Keras saving-tree key (``layers/dense_1/vars/0``) of a Keras 3
            file, ``GROUP/POSITION`` (the layer group and the position in its
            ``weight_names``) of a legacy HDF5 file, the object path (``layer_with_weights-0/
            kernel``) of an object-based TF checkpoint, the pytree path
            (``trainable_variables/seq/dense/kernel``) of an Orbax checkpoint; else None. ``load_into`` matches by it
            first (see :mod:`ckptconv.keras.structure`).
    """

    __slots__ = (
        "name",
        "layer",
        "index",
        "key",
        "shape",
        "dtype",
        "kind",
        "byte_range",
        "crc32c",
        "tree_path",
        "path",
        "_loader",
    )

    def __init__(
        self,
        name: str,
        *,
        key: str,
        shape: Iterable[int],
        dtype: np.dtype,
        path: str | os.PathLike[str],
        loader: Callable[[], np.ndarray] | None = None,
        byte_range: ByteRange | None = None,
        kind: Kind = "weight",
        layer: str | None = None,
        index: int = 0,
        crc32c: int | None = None,
        tree_path: str | None = None,
    ) -> None:
        if loader is None and byte_range is None:
            raise ValueError("an Entry needs a loader or a byte_range")
        _fill(
            self, name, layer_of(name) if layer is None else layer, index, key, shape, dtype, kind,
            path if type(path) is str else os.fspath(path), byte_range, crc32c, tree_path, loader,
        )

    @classmethod
    def of(
        cls,
        name: str,
        layer: str,
        index: int,
        key: str,
        shape: Iterable[int],
        dtype: np.dtype,
        kind: Kind,
        path: str,
        byte_range: ByteRange | None,
        crc32c: int | None,
        tree_path: str | None,
        loader: Callable[[], np.ndarray] | None,
        /,
    ) -> Entry:
        """The same entry as ``Entry(name, key=key, ...)``, every field given by position: for
        readers that build thousands (a keyword call costs about three times as much).
        ``layer`` is given (not derived from ``name``) and ``path`` is a ``str``; the shape and
        dtype are checked as the constructor checks them.

        Raises:
            ValueError: neither ``loader`` nor ``byte_range`` given.
            CorruptFileError: no numpy array has this shape.
        """
        if loader is None and byte_range is None:
            raise ValueError("an Entry needs a loader or a byte_range")
        entry = _new_object(cls)
        _fill(entry, name, layer, index, key, shape, dtype, kind, path, byte_range, crc32c, tree_path, loader)
        return entry

    @property
    def nbytes(self) -> int:
        """Size of the tensor in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def dtype_name(self) -> str:
        """Canonical dtype name (``float32``, ``bfloat16``, ...)."""
        return dtype_name(self.dtype)

    def read(self) -> np.ndarray:
        """Read the tensor and return it as a new numpy array. Reads this entry's bytes only."""
        array = self._loader() if self._loader is not None else self._read_stored(None, check_crc=True)
        if array.shape != self.shape:
            raise CorruptFileError(
                f"stored data has shape {list(array.shape)}, metadata says {list(self.shape)}: the file "
                f"is damaged; {FETCH_AGAIN}",
                path=self.path,
                tensor=self.name,
            )
        return array

    def read_into(self, out: np.ndarray, *, check_crc: bool = True) -> np.ndarray:
        """Read the tensor into ``out`` (C-contiguous, this entry's shape and dtype) and
        return it. Entries stored as plain bytes are read straight into it, and checked
        against their recorded CRC-32C unless ``check_crc`` is False (already verified)."""
        if out.shape != self.shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {list(self.shape)} {dtype_name(self.dtype)} array")
        if self.byte_range is None:
            np.copyto(out, self.read(), casting="equiv")
            return out
        return self._read_stored(out, check_crc=check_crc)

    def _read_stored(self, out: np.ndarray | None, *, check_crc: bool) -> np.ndarray:
        """The stored bytes, with one ``pread`` (into ``out`` if given), checked against the
        recorded CRC-32C when there is one and ``check_crc``."""
        assert self.byte_range is not None
        array = read_byte_range(self.byte_range, self.dtype, self.shape, tensor=self.name, out=out)
        if check_crc and self.crc32c is not None:
            from .crc import crc32c

            self.compare_crc(crc32c(array.reshape(-1).view(np.uint8)))
        return array

    def verify_crc(self) -> None:
        """Check the stored bytes against the recorded CRC-32C, reading them in pieces (no
        array of the tensor's size); nothing to do without a byte range or a recorded CRC."""
        if self.byte_range is None or self.crc32c is None:
            return
        self.compare_crc(self.byte_range.crc32c(tensor=self.name))

    def compare_crc(self, actual: int) -> None:
        """Raise IntegrityError if ``actual`` (the CRC-32C of the bytes read) is not the
        recorded one; nothing to do without a recorded CRC (:func:`check_crc32c`)."""
        check_crc32c(actual, self.crc32c, path=self.path, tensor=self.name)

    def renamed(self, name: str, *, layer: str | None = None) -> Entry:
        """A copy of this entry under another name (same data, same key)."""
        clone = Entry.__new__(Entry)
        for slot in Entry.__slots__:
            setattr(clone, slot, getattr(self, slot))
        clone.name = name
        clone.layer = layer_of(name) if layer is None else layer
        return clone

    def describe(self) -> dict[str, object]:
        """The entry as the JSON object ``inspect --json`` prints (``tree_path`` is null where
        the format has none)."""
        return {
            "name": self.name,
            "layer": self.layer,
            "index": self.index,
            "key": self.key,
            "shape": list(self.shape),
            "dtype": self.dtype_name,
            "nbytes": self.nbytes,
            "kind": self.kind,
            "tree_path": self.tree_path,
        }

    def __repr__(self) -> str:
        return (
            f"Entry({self.name!r}, shape={list(self.shape)}, dtype={self.dtype_name}, "
            f"kind={self.kind!r}, index={self.index})"
        )


class Store(Mapping[str, Entry]):
    """A checkpoint as an ordered, read-only mapping from flat names to lazy entries.

    Iteration follows the checkpoint's own order (layer order, then weight index where the
    format records it). Use it as a context manager, or call :meth:`close`, to release the
    files it holds open.

    Attributes:
        format: The format's short name (``keras-h5``, ``keras-weights-h5``, ``keras-sharded``,
            ``keras-archive``, ``tf-checkpoint``, ``safetensors``, ``safetensors-sharded``,
            ``pytorch``, ``pytorch-sharded``).
        path: What the user passed.
        files: Every file the store reads from (for "output is one of the inputs" checks).
        metadata: Format-level string metadata (Keras version, ...).
        tied: Groups of entry names that are one stored tensor under several names (tied
            weights, e.g. a PyTorch ``lm_head.weight`` sharing its embedding's storage); each
            name is an entry of its own. Empty for formats that cannot tie.
        skipped: ``(name, description)`` of values the file holds that are not tensors (a
            training checkpoint's ``epoch: 3``, an optimizer's learning rate), in file order.
    """

    def __init__(
        self,
        entries: Iterable[Entry],
        *,
        format: str,
        path: str | os.PathLike[str],
        files: Iterable[str | os.PathLike[str]] = (),
        metadata: Mapping[str, str] | None = None,
        closer: Callable[[], None] | None = None,
        integrity: Callable[[], None] | None = None,
        tied: Iterable[Iterable[str]] = (),
        skipped: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.format = format
        self.path = os.fspath(path)
        self.files = tuple(os.path.abspath(os.fspath(f)) for f in files)
        self.metadata = dict(metadata or {})
        self._closer = closer
        self._integrity = integrity
        self._entries = _unique_names(list(entries))
        self.tied = [tuple(group) for group in tied]
        self.skipped = list(skipped)

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], *, path: str = "<memory>"
    ) -> Store:
        """A store over in-memory arrays (``{name: array}``), in the mapping's order.

        ``index`` follows Keras' order of known weight names within each layer.
        """
        entries = []
        for name, value in arrays.items():
            array = np.asarray(value)
            entries.append(
                Entry(
                    name,
                    key=name,
                    shape=array.shape,
                    dtype=array.dtype,
                    path=path,
                    loader=lambda a=array: np.array(a, copy=True),
                )
            )
        keras_order(entries)
        return cls(entries, format="memory", path=path, files=())

    def __getitem__(self, name: str) -> Entry:
        """The entry named ``name``.

        Raises:
            NoSuchTensorError: no such name (a ``KeyError`` too); the message names the
                file and the nearest names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self._no_such_tensor(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, default: Entry | None = None) -> Entry | None:  # type: ignore[override]
        """The entry named ``name``, or ``default``."""
        return self._entries.get(name, default)

    def _no_such_tensor(self, name: object) -> NoSuchTensorError:
        near = nearest(str(name), self._entries) if isinstance(name, str) else []
        if near:
            hint = "nearest names: " + ", ".join(repr(n) for n in near)
        elif self._entries:
            hint = f"it holds {len(self._entries)} tensors, e.g. {next(iter(self._entries))!r}"
        else:
            hint = "it holds no tensors"
        return NoSuchTensorError(f"no tensor named {name!r}; {hint}", path=self.path)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self, *, include_all: bool = False) -> list[Entry]:
        """Entries in order: the weights only, or with ``include_all`` the training state too."""
        values = self._entries.values()
        if include_all:
            return list(values)
        return [e for e in values if e.kind == "weight"]

    def layers(self, *, include_all: bool = False) -> dict[str, list[Entry]]:
        """Entries grouped by layer, in order, each list sorted by weight index."""
        groups: dict[str, list[Entry]] = {}
        for entry in self.entries(include_all=include_all):
            groups.setdefault(entry.layer, []).append(entry)
        for members in groups.values():
            members.sort(key=lambda e: e.index)
        return groups

    @property
    def nbytes(self) -> int:
        """Total size of all entries in bytes."""
        return sum(e.nbytes for e in self._entries.values())

    @property
    def has_integrity_check(self) -> bool:
        """Whether the format records a checksum over whole files (see :meth:`check_integrity`)."""
        return self._integrity is not None

    def check_integrity(self) -> None:
        """Check the checksums a format records over whole files rather than tensors: a
        ``.keras`` archive's CRC-32 of its weights member. Reads those bytes once (callers run
        it beside the work, as ``convert`` does); nothing to do for other formats.

        Raises:
            IntegrityError: the bytes do not match the recorded checksum.
        """
        if self._integrity is not None:
            self._integrity()

    def close(self) -> None:
        """Release open files. Entries read after this raise."""
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.format} {self.path!r}: {len(self)} entries>"


def _unique_names(entries: list[Entry]) -> dict[str, Entry]:
    """Names are unique in a store: entries whose names collide fall back to their key."""
    result: dict[str, Entry] = {entry.name: entry for entry in entries}
    if len(result) == len(entries):
        return result  # the common case: no collision
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.name] = counts.get(entry.name, 0) + 1
    result = {}
    for entry in entries:
        if counts[entry.name] > 1:
            entry = entry.renamed(entry.key)
        if entry.name in result:
            raise CorruptFileError(
                f"two tensors share this name and key: the file is damaged; {FETCH_AGAIN}",
                path=entry.path, tensor=entry.name,
            )
        result[entry.name] = entry
    return result


def layer_of(name: str) -> str:
    """The layer part of a flat name: everything before the last ``/`` (or ``.``)."""
    if "/" in name:
        return name.rsplit("/", 1)[0]
    if "." in name:
        return name.rsplit(".", 1)[0]
    return ""


def leaf_of(name: str) -> str:
    """The weight's own part of a flat name: everything after the last ``/`` (or ``.``)."""
    if "/" in name:
        return name.rsplit("/", 1)[1]
    if "." in name:
        return name.rsplit(".", 1)[1]
    return name


# Keras' get_weights() order for known weight names; PyTorch names take the same slots.
_KERAS_RANK = {
    "embeddings": 0,
    "kernel": 0,
    "depthwise_kernel": 0,
    "pointwise_kernel": 1,
    "recurrent_kernel": 1,
    "bias": 2,
    "gamma": 0,
    "beta": 1,
    "moving_mean": 2,
    "moving_variance": 3,
    "weight": 0,
    "running_mean": 3,
    "running_var": 4,
    "num_batches_tracked": 5,
}


def keras_order(entries: Iterable[Entry]) -> None:
    """Set ``index`` of entries whose format stores no weight order.

    Within each layer, known weight names take Keras' order (``kernel``, ``recurrent_kernel``,
    ``bias``; ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``; PyTorch ``weight``,
    ``bias``, ``running_mean``, ``running_var``); unknown names follow in stored order.
    """
    by_layer: dict[tuple[str, str], list[Entry]] = {}
    run: list[Entry] = []
    run_kind: str | None = None
    run_layer: str | None = None
    for entry in entries:
        if entry.layer == run_layer and entry.kind == run_kind:  # a layer's weights lie together
            run.append(entry)
            continue
        run_kind, run_layer = entry.kind, entry.layer
        run = by_layer.setdefault((entry.kind, entry.layer), [])
        run.append(entry)
    rank = _KERAS_RANK.get
    for (_, layer), members in by_layer.items():
        if len(members) == 1:
            members[0].index = 0
            continue
        # each weight's own part: after its layer (``model/features.0.weight`` in layer
        # ``model/features.0`` -> ``weight``), else the name's leaf
        cut = len(layer) + 1
        ranks = tuple([
            rank(
                entry.name[cut:]
                if layer and entry.name.startswith(layer) and entry.name[cut - 1 : cut] in ("/", ".")
                else leaf_of(entry.name),
                _UNKNOWN_RANK,
            )
            for entry in members
        ])
        if min(ranks) == _UNKNOWN_RANK:  # no known weight name (an optimizer's slots): stored order
            for index, entry in enumerate(members):
                entry.index = index
            continue
        # layers share a few rank sequences ((0, 2): kernel, bias): each one sorted once
        order = _ORDERS.get(ranks)
        if order is None:
            order = sorted(range(len(ranks)), key=ranks.__getitem__)  # stable: unknown names keep their order
            if len(_ORDERS) < 1024:
                _ORDERS[ranks] = order
        for index, position in enumerate(order):
            members[position].index = index


_UNKNOWN_RANK = 100  # after every known weight name

# rank sequence -> positions in Keras' order (see keras_order)
_ORDERS: dict[tuple[int, ...], list[int]] = {}


class Output:
    """One tensor a writer writes: name, shape and dtype known from metadata, data on demand.

    Attributes:
        name: The output name.
        shape, dtype: What ``compute()`` returns, known before any data is read.
        compute: Produces the array (reads source data), C-contiguous.
        source: Set when the output is exactly this entry's stored bytes (same shape, dtype,
            layout): a writer may then copy the bytes file to file without decoding them.
        compute_view: Optional; like ``compute`` but may return a non-contiguous view (the
            transpose of the source), for writers that lay the bytes out in C order
            themselves and so skip a whole-tensor copy.
        compute_blocks: Optional; ``compute_blocks(max_bytes)`` yields the output's elements
            in C order as consecutive 1-D arrays of at most about ``max_bytes`` each (an
            array may be reused once the next is asked for), for writers that stream: a cast
            then needs memory for a block, not for the tensor.
    """

    __slots__ = ("name", "shape", "dtype", "compute", "source", "compute_view", "compute_blocks")

    def __init__(
        self,
        name: str,
        shape: Iterable[int],
        dtype: np.dtype,
        compute: Callable[[], np.ndarray],
        *,
        source: Entry | None = None,
        compute_view: Callable[[], np.ndarray] | None = None,
        compute_blocks: Callable[[int], Iterator[np.ndarray]] | None = None,
    ) -> None:
        self.name = name
        self.shape = tuple(map(int, shape))
        self.dtype = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
        self.compute = compute
        self.source = source
        self.compute_view = compute_view
        self.compute_blocks = compute_blocks

    @classmethod
    def of(cls, entry: Entry, name: str | None = None) -> Output:
        """The entry's tensor unchanged, under ``name`` (default: the entry's name)."""
        return cls(name or entry.name, entry.shape, entry.dtype, entry.read, source=entry)

    @property
    def nbytes(self) -> int:
        """Size of the output tensor in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"Output({self.name!r}, shape={list(self.shape)}, dtype={dtype_name(self.dtype)})"


def index_in_order(entries: Iterable[Entry]) -> None:
    """Set ``index`` to each entry's position among its layer's entries, in the given order
    (for formats that store the weight order, such as Keras' ``weight_names``)."""
    counters: dict[tuple[str, str], int] = {}
    for entry in entries:
        slot = (entry.kind, entry.layer)
        entry.index = counters.get(slot, 0)
        counters[slot] = entry.index + 1
