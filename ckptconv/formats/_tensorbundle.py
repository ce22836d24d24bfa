"""TensorFlow's TensorBundle, read without TensorFlow: the ``.index`` table and the data files.

A checkpoint ``prefix`` is ``prefix.index`` plus ``prefix.data-0000k-of-0000n``. The index is a
LevelDB-style sorted table (the layout TensorFlow's ``tensorflow/core/lib/io/table`` writes):

* a 48-byte footer: the metaindex and index block handles (varint64 offset, varint64 size),
  zero padding to 40 bytes, and the magic ``57 fb 80 8b 24 75 47 db``;
* blocks of prefix-compressed entries (varint32 shared / non-shared key length and value
  length, the key's new bytes, the value), then a restart array and its count (uint32 each);
* after each block a 5-byte trailer: the compression type (0 none, 1 snappy) and a masked
  CRC-32C of the block contents followed by the type byte.

Entry ``""`` holds a ``BundleHeaderProto``; every other key a ``BundleEntryProto``. Keys
that start with ``\\x00`` hold the slices of partitioned variables. Data files are raw tensor
bytes at ``offset``; string tensors are varint64 lengths, a masked CRC-32C of the lengths, then
the bytes.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import numpy as np

from ..crc import crc32c
from ._protowire import WireError, read_varint

__all__ = [
    "TABLE_MAGIC",
    "FOOTER_SIZE",
    "TableError",
    "UnsupportedTableError",
    "read_table",
    "has_table_magic",
    "crc32c",
    "mask_crc",
    "unmask_crc",
    "data_file_name",
    "slice_key",
    "decode_string_tensor",
]

TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
FOOTER_SIZE = 48
_TRAILER_SIZE = 5
_MASK_DELTA = 0xA282EAD8


class TableError(ValueError):
    """The index table is damaged (bad footer, block, checksum or entry)."""


class UnsupportedTableError(TableError):
    """The table is valid but uses a feature ckptconv does not read (compressed blocks)."""


def mask_crc(crc: int) -> int:
    """TensorFlow/LevelDB's masked CRC: rotate right by 15 bits and add a constant.

    Stored CRCs are masked so that a CRC computed over bytes that themselves contain CRCs
    does not degenerate.
    """
    crc &= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """The inverse of :func:`mask_crc`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def has_table_magic(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a regular file ending in the table magic (reads 8 bytes)."""
    try:
        if not os.path.isfile(path):  # never open a FIFO or a device: that may block forever
            return False
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < FOOTER_SIZE:
                return False
            f.seek(size - len(TABLE_MAGIC))
            return f.read(len(TABLE_MAGIC)) == TABLE_MAGIC
    except OSError:
        return False


class _Handle(NamedTuple):
    offset: int
    size: int


def _read_handle(buf: bytes | memoryview, pos: int) -> tuple[_Handle, int]:
    values = []
    for _ in range(2):
        start = pos
        value, pos = read_varint(buf, pos)
        # writers encode varints minimally; a trailing 0x00 byte means a damaged handle
        if pos - start > 1 and buf[pos - 1] == 0:
            raise WireError("non-minimal varint in a block handle")
        values.append(value)
    return _Handle(values[0], values[1]), pos


def _block(data: bytes, handle: _Handle, what: str) -> memoryview:
    """The contents of one block, after checking its trailer (compression type and CRC)."""
    end = handle.offset + handle.size
    if end + _TRAILER_SIZE > len(data):
        raise TableError(f"{what} at byte {handle.offset} runs past the end of the file")
    view = memoryview(data)
    contents = view[handle.offset : end]
    block_type = data[end]
    (stored,) = struct.unpack_from("<I", data, end + 1)
    actual = crc32c(data[end : end + 1], crc32c(contents))
    if unmask_crc(stored) != actual:
        raise TableError(
            f"{what} at byte {handle.offset} fails its CRC-32C check "
            f"(stored {unmask_crc(stored):#010x}, computed {actual:#010x})"
        )
    if block_type == 1:
        raise UnsupportedTableError(
            f"{what} at byte {handle.offset} is snappy-compressed; TensorFlow writes checkpoint "
            "indexes uncompressed and ckptconv reads only those"
        )
    if block_type != 0:
        raise TableError(
            f"{what} at byte {handle.offset} has unknown compression type {block_type}"
        )
    return contents


def _block_entries(contents: memoryview, what: str) -> list[tuple[bytes, bytes]]:
    """Decode a block's prefix-compressed entries, in order."""
    if len(contents) < 4:
        raise TableError(f"{what} is too short to hold its restart count")
    (num_restarts,) = struct.unpack_from("<I", contents, len(contents) - 4)
    limit = len(contents) - 4 - 4 * num_restarts
    if limit < 0:
        raise TableError(f"{what} declares {num_restarts} restarts, more than it can hold")
    data = bytes(contents)  # one copy: indexing and slicing bytes is faster than a view
    n = len(data)
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    try:
        while pos < limit:
            # three varints, almost always one byte each (a key shares less than 128 bytes)
            shared = data[pos]
            if shared < 0x80:
                pos += 1
            else:
                shared, pos = read_varint(data, pos)
            if pos < n and data[pos] < 0x80:
                non_shared = data[pos]
                pos += 1
            else:
                non_shared, pos = read_varint(data, pos)
            if pos < n and data[pos] < 0x80:
                value_length = data[pos]
                pos += 1
            else:
                value_length, pos = read_varint(data, pos)
            if shared > len(key) or pos + non_shared + value_length > limit:
                raise TableError(f"{what} has a malformed entry at byte {pos}")
            key = key[:shared] + data[pos : pos + non_shared]
            pos += non_shared
            entries.append((key, data[pos : pos + value_length]))
            pos += value_length
    except WireError as e:
        raise TableError(f"{what} has a malformed entry: {e}") from e
    return entries


def read_table(path: str | os.PathLike[str]) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of a table file, in key order, with all block CRCs checked.

    Reads the whole index file (it holds metadata only: a few bytes per tensor).

    Raises:
        TableError: the footer, a block or an entry is damaged.
        UnsupportedTableError: a block is compressed.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < FOOTER_SIZE:
        raise TableError(f"the file is {len(data)} bytes, shorter than a table footer")
    if data[-len(TABLE_MAGIC) :] != TABLE_MAGIC:
        raise TableError("the table magic number is missing from the last 8 bytes")
    footer = memoryview(data)[len(data) - FOOTER_SIZE :]
    try:
        metaindex, pos = _read_handle(footer, 0)
        index, pos = _read_handle(footer, pos)
    except WireError as e:
        raise TableError(f"malformed table footer: {e}") from e
    # The footer carries no checksum; its padding is zeros, so at least check that.
    if pos > FOOTER_SIZE - len(TABLE_MAGIC) or any(footer[pos : FOOTER_SIZE - len(TABLE_MAGIC)]):
        raise TableError("malformed table footer: nonzero padding after the block handles")
    for handle, what in ((metaindex, "metaindex block"), (index, "index block")):
        if handle.offset + handle.size + _TRAILER_SIZE > len(data) - FOOTER_SIZE:
            raise TableError(f"{what} handle points past the end of the file")
    _block(data, metaindex, "metaindex block")  # empty in TensorFlow's tables, but checked
    entries: list[tuple[bytes, bytes]] = []
    for _, value in _block_entries(_block(data, index, "index block"), "index block"):
        try:
            handle, _ = _read_handle(value, 0)
        except WireError as e:
            raise TableError(f"malformed block handle in the index block: {e}") from e
        if handle.offset + handle.size + _TRAILER_SIZE > len(data) - FOOTER_SIZE:
            raise TableError(
                f"data block handle points past the end of the file (byte {handle.offset})"
            )
        entries.extend(_block_entries(_block(data, handle, "data block"), "data block"))
    return entries


def data_file_name(prefix: str, shard: int, num_shards: int) -> str:
    """``prefix.data-0000k-of-0000n``, TensorFlow's name for a data shard."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


# --- slice keys of partitioned variables (TensorFlow's "ordered code") -----------------------


def _num_increasing(value: int) -> bytes:
    """An unsigned number: one length byte, then the big-endian bytes without leading zeros."""
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(body)]) + body


def _string_increasing(text: bytes) -> bytes:
    """A string with 0x00 and 0xff escaped, ended by ``00 01`` (so keys sort like strings)."""
    return text.replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def _signed_increasing(value: int) -> bytes:
    """A signed number: n bytes whose first n bits are ones for >= 0 (zeros for < 0), then a
    separator bit and the two's-complement value in the remaining ``7n - 1`` bits."""
    magnitude = ~value if value < 0 else value
    n = 1
    while magnitude.bit_length() > 7 * n - 1:
        n += 1
    header = ((1 << n) - 1) << (8 * n - n)
    encoded = (value & ((1 << (8 * n)) - 1)) ^ header
    return encoded.to_bytes(n, "big")


def slice_key(name: str, extents: list[tuple[int, int]]) -> bytes:
    """The index key under which a slice of variable ``name`` is stored.

    ``extents`` holds ``(start, length)`` per dimension, ``length = -1`` for a whole one.
    """
    parts = [
        _num_increasing(0),  # every slice key starts with 0, so slices sort before all names
        _string_increasing(name.encode("utf-8")),
        _num_increasing(len(extents)),
    ]
    for start, length in extents:
        parts.append(_signed_increasing(start))
        parts.append(_signed_increasing(length))
    return b"".join(parts)


# --- data ---------------------------------------------------------------------------------


def decode_string_tensor(raw: bytes, count: int, *, check: bool = True) -> tuple[list[bytes], int]:
    """Split a string tensor's stored bytes into its elements and compute its CRC-32C.

    TensorFlow checksums a string tensor over each length as a little-endian uint32 (uint64
    above 4 GiB), not over the varints it stores, then over the stored bytes that follow (the
    masked CRC of the lengths, then the strings). Returns ``(elements, crc)`` where ``crc`` is
    that checksum, to compare with the entry's.

    Raises:
        TableError: the bytes do not hold ``count`` well-formed elements, or (with ``check``)
            the checksum of the lengths does not match.
    """
    pos = 0
    lengths = []
    crc = 0
    try:
        for _ in range(count):
            length, pos = read_varint(raw, pos)
            lengths.append(length)
            crc = crc32c(struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length), crc)
    except WireError as e:
        raise TableError(f"malformed string lengths: {e}") from e
    if pos + 4 > len(raw):
        raise TableError("string tensor is truncated before its length checksum")
    (stored,) = struct.unpack_from("<I", raw, pos)
    if check and unmask_crc(stored) != crc:
        raise TableError("the string lengths fail their CRC-32C check")
    crc = crc32c(memoryview(raw)[pos:], crc)
    pos += 4
    elements = []
    for length in lengths:
        if pos + length > len(raw):
            raise TableError("string tensor is truncated: an element runs past its stored size")
        elements.append(bytes(raw[pos : pos + length]))
        pos += length
    if pos != len(raw):
        raise TableError(f"string tensor has {len(raw) - pos} stray bytes after its elements")
    return elements, crc
