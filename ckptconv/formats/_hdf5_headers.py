"""HDF5 version 1 object headers, read once per object (the metadata pass of the Keras readers).

Keras (3 and tf-keras, through h5py's default file settings) writes every object with a
version 1 object header: a list of messages (dataspace, datatype, data layout, attributes,
...) at the object's address. Opening a dataset through libhdf5 costs tens of microseconds
and several allocations; a file of 10,000 tensors has 20,000 objects. So the readers parse
each header once here, from the bytes, and keep what they need: where a dataset's bytes lie
(the global heap check skips them), its shape and dtype, and its variable-length attributes
(checked before libhdf5 reads any).

Only what is fully understood is described: a header of another version, a message flagged
shared, a layout other than contiguous, a filter pipeline, external storage, a datatype that
is not a standard little-endian integer or IEEE float (or Keras' 2-byte opaque bfloat16), or
a ``dtype`` attribute leave a dataset undescribed (``Header.plain`` False), and the readers ask
libhdf5 (through h5py) as before. The HDF5 file format specification (version 3.0,
"Disk Format Level 2A: Data Object Headers") is the source of truth for every layout here.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from functools import partial
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Header", "Plain", "lengths_are_8", "object_header", "object_headers", "rows"]

_MAX_HEADER_BLOCKS = 4096
_FIRST_READ = 512  # a Keras dataset's header is 272 bytes, a group's 40: one read each
_MEMO_LIMIT = 4096  # distinct datatype and dataspace messages remembered (per process)
_U32 = struct.Struct("<I")
_MESSAGE = struct.Struct("<HHB")  # type, size, flags (then 3 reserved bytes)
_CONTINUATION_BLOCK = struct.Struct("<QQ")  # also a Symbol Table message: B-tree, local heap
_LAYOUT_CONTIGUOUS = struct.Struct("<QQ")  # address, size (after version and class)
_ATTRIBUTE_SIZES = struct.Struct("<BxHHH")  # version, name size, datatype size, dataspace size
_UNSEEN: object = object()
_dataspaces: dict[bytes, tuple[int, ...] | None] = {}
_datatypes: dict[bytes, np.dtype | None] = {}

# message types
_DATASPACE, _LINK_INFO, _DATATYPE, _EXTERNAL, _LAYOUT = 0x01, 0x02, 0x03, 0x07, 0x08
_LINK, _PIPELINE, _ATTRIBUTE, _CONTINUATION, _SYMBOL_TABLE = 0x06, 0x0B, 0x0C, 0x10, 0x11
_ATTRIBUTE_INFO = 0x15
_SHARED = 0x02  # message flag: the message is stored elsewhere

# IEEE floats by size: sign location, exponent location and size, mantissa location and size, bias
_IEEE = {2: (15, 10, 5, 0, 10, 15), 4: (31, 23, 8, 0, 23, 127), 8: (63, 52, 11, 0, 52, 1023)}
_UNDEFINED = (1 << 64) - 1


class Header(NamedTuple):
    """What one object header says.

    Attributes:
        kind: ``group``, ``dataset`` or ``other``.
        plain: A dataset whose shape, dtype and bytes are fully described here: contiguous,
            unfiltered, in the file itself, of a plain little-endian numeric type (a ``dtype``
            attribute, Keras' name for the type of opaque bytes, is resolved by
            :func:`ckptconv.formats._hdf5_file.check_global_heaps`: see ``declared``). Anything
            else is left to libhdf5.
        shape: The dataset's shape (None unless ``plain``).
        dtype: Its numpy dtype (None unless ``plain``); Keras' 2-byte opaque type is bfloat16.
        offset: Where its contiguous bytes start in the HDF5 image (None: not contiguous, or
            never written).
        length: How many bytes are stored there.
        vlen: ``(name, raw values, what)`` of every variable-length attribute (see
            :func:`ckptconv.formats._hdf5_file.check_global_heaps`; ``what`` is ``str``, ``strs``
            or ``""``, see :func:`_attribute`).
        attributes: The names of all its attributes (``""`` for one not read here).
        symbols: ``(B-tree address, local heap address)`` from the Symbol Table message of an
            "old-style" group (one such message, not shared, no Link or Link Info message):
            its links can be read from there (see :mod:`._hdf5_symbols`). None otherwise:
            libhdf5 lists the group's links.
        declared: A plain dataset with a variable-length string ``dtype`` attribute: ``dtype``
            is the stored type until the attribute's value is read and checked.
    """

    kind: str
    plain: bool
    shape: tuple[int, ...] | None
    dtype: np.dtype | None
    offset: int | None
    length: int
    vlen: list[tuple[str, bytes, str]]
    attributes: tuple[str, ...] = ()
    symbols: tuple[int, int] | None = None
    declared: bool = False


def lengths_are_8(superblock: bytes) -> bool:
    """Whether the superblock declares 8-byte offsets and lengths (what the parsing here
    assumes, and what every h5py-written file has)."""
    if len(superblock) < 16:
        return False
    version = superblock[8]
    if version in (0, 1):
        return superblock[13] == 8 and superblock[14] == 8
    if version in (2, 3):
        return superblock[9] == 8 and superblock[10] == 8
    return False


def _remember(memo: dict[bytes, Any], data: bytes, value: Any) -> Any:
    """``value``, parsed from the message ``data``, kept for the next identical message (a
    file's datasets share a handful of dataspaces and datatypes) while the memo is small."""
    if len(memo) < _MEMO_LIMIT:
        memo[data] = value
    return value


def object_header(read: Callable[[int, int], bytes], address: int, size: int) -> Header | None:
    """Describe the object whose version 1 object header is at ``address`` (see
    :class:`Header`); None for another header version.

    ``read(offset, n)`` reads the HDF5 image; ``size`` is its length. Continuation blocks are
    followed; blocks beyond the end of the image are skipped, as are repeated blocks and
    blocks past the 4096th.
    """
    head = read(address, _FIRST_READ)
    if len(head) < 16 or head[0] != 1:
        return None
    kind = "other"
    plain = True
    shape: tuple[int, ...] | None = None
    dtype: np.dtype | None = None
    offset: int | None = None
    length = 0
    messages: list[bytes] = []  # the attribute messages, in order
    symbols: tuple[int, int] | None = None
    old_style = 0  # Symbol Table messages seen (a group's links are read from one only)
    new_style = False  # Link Info or Link messages: libhdf5 reads the group's links
    first = (address + 16, _U32.unpack_from(head, 8)[0])
    blocks = [first]
    seen: set[tuple[int, int]] = set()
    while blocks and len(seen) < _MAX_HEADER_BLOCKS:
        block_at = blocks.pop()
        start, block_size = block_at
        if block_at in seen or start + block_size > size:
            continue
        seen.add(block_at)
        if block_at == first and 16 + block_size <= len(head):
            block, position, end = head, 16, 16 + block_size
        else:
            block = read(start, block_size)
            position, end = 0, len(block)
        while position + 8 <= end:
            message, message_size, flags = _MESSAGE.unpack_from(block, position)
            body = position + 8
            position = body + message_size
            if not message:  # NIL: padding
                continue
            data = block[body:position] if position <= end else block[body:end]
            if flags & _SHARED and message in (_DATASPACE, _DATATYPE, _LAYOUT):
                plain = False  # a shared message lives elsewhere: libhdf5 describes the dataset
            if message == _DATASPACE:
                shape = _dataspaces.get(data, _UNSEEN)  # type: ignore[assignment]
                if shape is _UNSEEN:
                    shape = _remember(_dataspaces, data, _dataspace(data))
            elif message == _DATATYPE:
                dtype = _datatypes.get(data, _UNSEEN)  # type: ignore[assignment]
                if dtype is _UNSEEN:
                    dtype = _remember(_datatypes, data, _datatype(data))
            elif message == _LAYOUT:
                kind = "dataset"
                if len(data) >= 18 and data[0] == 3 and data[1] == 1:  # version 3, contiguous
                    data_at, length = _LAYOUT_CONTIGUOUS.unpack_from(data, 2)
                    offset = None if data_at == _UNDEFINED else data_at
                else:
                    plain = False
            elif message == _ATTRIBUTE:
                messages.append(data)
            elif message == _CONTINUATION:
                if len(data) >= 16:
                    blocks.append(_CONTINUATION_BLOCK.unpack_from(data))
            elif message == _SYMBOL_TABLE:
                kind = "group"
                old_style += 1
                if len(data) >= 16 and not flags & _SHARED:
                    symbols = _CONTINUATION_BLOCK.unpack_from(data)  # B-tree, local heap
            elif message in (_LINK_INFO, _LINK):
                kind = "group"
                new_style = True
            elif message == _ATTRIBUTE_INFO:  # attributes in dense storage: not read here
                messages.append(b"")  # an attribute not read here (as an unreadable message)
                plain = False
            elif message in (_PIPELINE, _EXTERNAL):
                plain = False
    names, vlen, declared, spoiled = _attributes(messages)
    plain = plain and not spoiled
    if kind != "dataset":
        if new_style or old_style != 1:
            symbols = None
        return Header(kind, False, None, None, None, 0, vlen, names, symbols)
    plain = plain and shape is not None and dtype is not None and offset is not None
    if plain:
        count = 1
        for d in shape:  # type: ignore[union-attr]
            count *= d
        plain = count * dtype.itemsize == length  # type: ignore[union-attr]
    if not plain:
        return Header(kind, False, None, None, offset, length, vlen, names)
    return Header(kind, True, shape, dtype, offset, length, vlen, names, None, declared)


def _dataspace(data: bytes) -> tuple[int, ...] | None:
    """A simple or scalar dataspace's dimensions (8-byte lengths); None for a null one."""
    if len(data) < 4:
        return None
    version, rank = data[0], data[1]
    if version == 1:
        first = 8
    elif version == 2:
        if data[3] == 2:  # null
            return None
        first = 4
    else:
        return None
    if len(data) < first + 8 * rank:
        return None
    return tuple(int.from_bytes(data[first + 8 * i : first + 8 * i + 8], "little") for i in range(rank))


def _datatype(data: bytes) -> np.dtype | None:
    """A little-endian integer, IEEE float or 2-byte opaque (bfloat16) datatype; else None."""
    if len(data) < 8:
        return None
    cls = data[0] & 0x0F
    bits = data[1] | data[2] << 8 | data[3] << 16
    size = int.from_bytes(data[4:8], "little")
    if cls == 0:  # fixed-point
        if bits & 1 or size not in (1, 2, 4, 8) or len(data) < 12:
            return None
        if int.from_bytes(data[8:10], "little") != 0 or int.from_bytes(data[10:12], "little") != 8 * size:
            return None
        return np.dtype(f"<{'i' if bits & 0x08 else 'u'}{size}")
    if cls == 1:  # floating point
        layout = _IEEE.get(size)
        if layout is None or len(data) < 20 or bits & 0x41 or (bits >> 4) & 3 != 2:
            return None
        sign = (bits >> 8) & 0xFF
        found = (sign, data[12], data[13], data[14], data[15], int.from_bytes(data[16:20], "little"))
        if found != layout or int.from_bytes(data[8:10], "little") != 0:
            return None
        if int.from_bytes(data[10:12], "little") != 8 * size:
            return None
        return np.dtype(f"<f{size}")
    if cls == 5 and size == 2:  # opaque: Keras writes bfloat16 so
        from ..dtypes import by_name

        return by_name("bfloat16")
    return None


def _attributes(messages: list[bytes]) -> tuple[tuple[str, ...], list[tuple[str, bytes, str]], bool, bool]:
    """What an object's attribute messages say: their names (``""`` for one not read here),
    its variable-length attributes (see :func:`_attribute`), whether a ``dtype`` attribute
    is a string (``declared``) and whether one is not (the dataset is then left to h5py)."""
    names: list[str] = []
    vlen: list[tuple[str, bytes, str]] = []
    declared = spoiled = False
    for data in messages:
        attribute = _attribute(data)
        if attribute is None:
            names.append("")  # unreadable here: libhdf5 decides
            continue
        name, strings, values = attribute
        names.append(name)
        if strings is not None:
            vlen.append((name, values, strings))
        if name == "dtype":  # the tensor's dtype is named there
            if strings == "str":
                declared = True  # read and checked with the other strings
            else:
                spoiled = True  # the h5py path reads it
    return tuple(names), vlen, declared, spoiled


_attribute_heads: dict[bytes, tuple[str, int, int, bool] | None] = {}


def _attribute(data: bytes) -> tuple[str, str | None, bytes] | None:
    """``(name, what, raw values)`` of an attribute message. ``what`` is None unless the type
    is variable-length: then ``str`` (a scalar string), ``strs`` (an array of strings) or
    ``""`` (a sequence of another type), and the raw values carry the base type's size as
    their first byte. An attribute of no elements, of any type, is ``strs`` with no values
    (an empty list).

    Everything before the values (name, datatype, dataspace) is decoded once per distinct
    message head (a file's groups repeat a few: ``name``, ``weight_names`` of 2 strings)."""
    if len(data) < 8:
        return None
    version, name_size, type_size, space_size = _ATTRIBUTE_SIZES.unpack_from(data)
    if version not in (1, 2, 3):
        return None
    pad = 7 if version == 1 else 0  # version 1 pads each part to a multiple of 8 bytes
    position = (9 if version == 3 else 8) + ((name_size + pad) & ~pad) + ((type_size + pad) & ~pad) + ((space_size + pad) & ~pad)
    head = data[:position]
    parsed = _attribute_heads.get(head, _UNSEEN)
    if parsed is _UNSEEN:
        parsed = _remember(_attribute_heads, head, _attribute_head(head, version, name_size, type_size, space_size))
    if parsed is None:
        return None
    name, base_size, count, string = parsed  # type: ignore[misc]
    if count < 0:  # not variable-length
        return (name, "strs", b"\x01") if count == -2 else (name, None, b"")
    what = ""
    if string >= 0 and len(data) - position >= 16 * count:  # strings, all stored here
        what = "str" if string else "strs"
    return name, what, bytes([base_size & 0xFF]) + data[position : position + 16 * count]


def _attribute_head(
    data: bytes, version: int, name_size: int, type_size: int, space_size: int
) -> tuple[str, int, int, int] | None:
    """``(name, base type size, count, string)`` of an attribute message's head (``data``
    up to its values): ``count`` -1 for a type that is not variable-length, -2 for one of
    no elements; ``string`` 1 for a scalar string, 0 for other strings, -1 for another
    sequence. None when it is not read here."""
    position = 9 if version == 3 else 8
    pad = 7 if version == 1 else 0
    name = data[position : position + name_size].split(b"\0", 1)[0].decode("utf-8", "replace")
    position += (name_size + pad) & ~pad
    datatype = data[position : position + type_size]
    position += (type_size + pad) & ~pad
    space = data[position : position + space_size]
    if len(datatype) < 16 or datatype[0] & 0x0F != 9:  # class 9: variable-length
        if len(datatype) >= 8 and _element_count(space) == 0:
            # no values of any type: an empty list, as h5py's reading decodes it (tf-keras
            # writes a weightless layer's ``weight_names`` as an empty float64 array)
            return name, 0, -2, -1
        return name, 0, -1, -1
    base_size = int.from_bytes(datatype[12:16], "little")  # the base type's size
    count = _element_count(space)
    if count is None:
        return None
    string = -1
    if datatype[1] & 0x0F == 1:
        string = 1 if len(space) >= 2 and space[1] == 0 and count == 1 else 0
    return name, base_size, count, string


def _element_count(space: bytes) -> int | None:
    if len(space) < 4:
        return None
    version, rank = space[0], space[1]
    if version == 2 and space[3] == 2:  # a null dataspace holds nothing
        return 0
    first = 8 if version == 1 else 4
    if len(space) < first + 8 * rank:
        return None
    count = 1
    for i in range(rank):
        count *= int.from_bytes(space[first + 8 * i : first + 8 * i + 8], "little")
    return count


# object_headers: the message types a batch row may hold (any other sends the row to
# object_header) -- NIL, dataspace, datatype, fill value (old and new), data layout,
# modification time (old and new), attribute, symbol table, and one object header
# continuation (its block is then parsed as the rest of the row)
_BATCH_TYPES = frozenset(
    {0x00, _DATASPACE, _DATATYPE, 0x04, 0x05, _LAYOUT, 0x0E, 0x12, _ATTRIBUTE, _CONTINUATION, _SYMBOL_TABLE}
)
_BATCH_MESSAGES = 16  # more messages than this in one header: object_header reads it
_RECORDED = (_DATASPACE, _DATATYPE, _LAYOUT, _SYMBOL_TABLE, _CONTINUATION)  # where _batch keeps these
_COLUMN = np.full(1 << 16, len(_RECORDED), np.intp)  # message type -> its column in _batch's table
_COLUMN[list(_RECORDED)] = np.arange(len(_RECORDED))
_ALLOWED = np.zeros(1 << 16, bool)  # the message types of _BATCH_TYPES
_ALLOWED[list(_BATCH_TYPES)] = True
_BATCH_ROWS = 8192  # headers gathered per numpy pass (8192 x 512 bytes)
_MIX = 0x100000001B3  # the multiplier of the messages' 64-bit hash (the FNV prime)


class Plain(NamedTuple):
    """The plain datasets without attributes of an :func:`object_headers` batch (nearly
    every dataset of a Keras file), described together: no Python work per dataset beyond
    building its :class:`Header`.

    Attributes:
        rows: Their indices in the addresses given.
        addresses: Their object header addresses.
        headers: What :func:`object_header` gives for each.
        offsets: Where each one's contiguous bytes start (uint64).
        lengths: How many bytes each stores there (uint64).
    """

    rows: list[int]
    addresses: list[int]
    headers: list[Header]
    offsets: np.ndarray
    lengths: np.ndarray


def object_headers(
    read: Callable[[int, int], bytes], addresses: list[int], size: int, *, image: np.ndarray | None = None,
    plain: list[Plain] | None = None,
) -> list[Header | None]:
    """What :func:`object_header` gives for each of ``addresses``, for the headers of the two
    shapes h5py writes for nearly every object, parsed together with numpy: a dataset's
    (dataspace, datatype, fill value, contiguous layout, maybe a modification time) and a
    group's (its symbol table), each maybe with attributes (Keras' ``name``,
    ``weight_names``), all in a first block of at most 496 bytes. None for any other
    header: the caller asks :func:`object_header`, which reads every header there is
    (continuation blocks, attributes, shared messages, other layouts).

    ``read(offset, n)`` reads the HDF5 image; ``size`` is its length; ``image``, if given, is
    the same bytes as a uint8 array (the headers are then copied out of it in one step).
    Distinct dataspace and datatype messages are decoded once, by the functions
    :func:`object_header` uses. With ``plain`` (a list), the plain datasets without
    attributes are given there instead (see :class:`Plain`; None in the result).
    """
    found: list[Header | None] = [None] * len(addresses)
    if addresses and max(addresses) >= 2**63:  # a damaged address, far beyond the file: left out
        addresses = [min(address, size) for address in addresses]
    every = np.array(addresses, np.int64)
    inside = np.flatnonzero(every <= size - _FIRST_READ)
    for start in range(0, len(inside), _BATCH_ROWS):
        chosen = inside[start : start + _BATCH_ROWS]
        at = every[chosen]
        heads = rows(read, image, at, _FIRST_READ)
        headers, continued, bulk = _batch(heads, at, size, None)
        parts = [(chosen, headers, bulk)]
        # headers whose first block holds a continuation message (h5py moves a group's
        # messages there once it has attributes): parsed again, the block appended to the row
        which, block_at, block_size, first_size = continued
        if len(which):
            # each row: its first block, then the block (only as wide as the widest)
            first = int(first_size.max())
            blocks = rows(read, image, block_at, int(block_size.max()))
            joined = np.concatenate([heads[which, :first], blocks], axis=1)
            headers, _, bulk = _batch(joined, at[which], size, block_size)
            parts.append((chosen[which], headers, bulk))
        for where, headers, bulk in parts:
            taken, described, offsets, lengths = bulk
            if plain is None:
                headers = list(headers)
                for row, header in zip(taken.tolist(), described):
                    headers[row] = header
            elif len(taken):
                plain.append(Plain(where[taken].tolist(), every[where[taken]].tolist(), described, offsets, lengths))
            for i, header in zip(where.tolist(), headers):
                if header is not None:
                    found[i] = header
    return found


_Continued = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_Bulk = tuple[np.ndarray, list[Header], np.ndarray, np.ndarray]


def _batch(
    heads: np.ndarray, at: np.ndarray, size: int, second: np.ndarray | None
) -> tuple[list[Header | None], _Continued, _Bulk]:
    """:func:`object_headers` for the headers whose first bytes are the rows of ``heads``
    (512 of them), at addresses ``at`` (each at least 512 bytes before the end). With
    ``second``, the rows are each header's first block, which holds a continuation message,
    then (from the column just past the longest first block) the block it names, of
    ``second`` bytes. Returns the headers (None: :func:`object_header` decides, or the row
    is in the bulk); without ``second``, the rows left out because their first block holds
    one continuation: the rows, the blocks' addresses and sizes (each within the image, at
    least 512 bytes before its end, at most 512 bytes long) and how long each first block
    is; and the bulk: the rows of plain datasets without attributes, their headers, data
    offsets and lengths (see :class:`Plain`)."""
    n = len(at)
    end = 16 + (heads[:, 8:12].astype(np.int64) @ np.array([1, 1 << 8, 1 << 16, 1 << 24], np.int64))
    if second is None:
        width = heads.shape[1]
        ok = (heads[:, 0] == 1) & (end <= width) & (at + end <= size)
    else:
        width = heads.shape[1] - int(second.max())  # where the second block starts
        ok = np.ones(n, bool)
    every = np.arange(n)
    position = np.full(n, 16, np.int64)
    # where each row's last message of each kind recorded here starts, how many it has of
    # each and the last one's size: one column per kind (the last for every other kind)
    table = np.zeros((3, n, len(_RECORDED) + 1), np.int64)
    found_at, counted, sized = table
    found = {kind: found_at[:, j] for j, kind in enumerate(_RECORDED)}
    counts = {kind: counted[:, j] for j, kind in enumerate(_RECORDED)}
    sizes = {kind: sized[:, j] for j, kind in enumerate(_RECORDED)}
    attribute_at = np.zeros((n, _BATCH_MESSAGES), np.int64)  # where each attribute message is
    attribute_end = np.zeros((n, _BATCH_MESSAGES), np.int64)  # and where it ends (0: none)
    jumped = np.zeros(n, bool)
    words = _Words(heads)
    for j in range(_BATCH_MESSAGES):
        live = ok & (position + 8 <= end)
        if second is not None:  # past the first block: on to the second
            jump = ok & ~live & ~jumped
            if jump.any():
                position[jump] = width
                end[jump] = width + second[jump]
                jumped |= jump
                live = ok & (position + 8 <= end)
        if not live.any():
            break
        here = np.where(live, position, 0)
        # a message's head: type (2 bytes), size (2), flags (1), 3 reserved bytes
        head = words(here, 1)[:, 0]
        kind = (head & np.uint64(0xFFFF)).astype(np.int64)
        length = (head >> np.uint64(16) & np.uint64(0xFFFF)).astype(np.int64)
        shared = (head & np.uint64(_SHARED << 32)) != 0
        after = here + 8 + length
        ok &= ~live | (_ALLOWED[kind] & (after <= end) & ~(shared & (kind != 0)))
        hit = np.flatnonzero(live)
        column = _COLUMN[kind[hit]]
        found_at[hit, column] = here[hit] + 8
        counted[hit, column] += 1
        sized[hit, column] = length[hit]
        hit = live & (kind == _ATTRIBUTE)
        if hit.any():
            attribute_at[hit, j] = here[hit] + 8
            attribute_end[hit, j] = after[hit]
        position = np.where(live, after, position)
    ok &= position + 8 > end  # every message read within the batch's limit
    if second is None:
        # one continuation (16 bytes: the block's address and size): the caller appends the
        # block if it lies within the image and differs from the first block
        follow = ok & (counts[_CONTINUATION] == 1) & (sizes[_CONTINUATION] >= 16)
        block = words(found[_CONTINUATION], 2)
        block_at, block_size = block[:, 0], block[:, 1]
        follow &= (block_size <= width) & (block_at <= np.uint64(size - _FIRST_READ))
        follow &= (block_at != (at + 16).astype(np.uint64)) | (block_size != (end - 16).astype(np.uint64))
        which = np.flatnonzero(follow)
        continued = (which, block_at[which], block_size[which].astype(np.int64), end[which])
        ok &= counts[_CONTINUATION] == 0
    else:
        none = np.zeros(0, np.int64)
        continued = (none, none, none, none)
        ok &= (counts[_CONTINUATION] == 1) & jumped
    group = (counts[_SYMBOL_TABLE] == 1) & (counts[_LAYOUT] == 0) & (sizes[_SYMBOL_TABLE] >= 16)
    dataset = (
        (counts[_LAYOUT] == 1) & (counts[_SYMBOL_TABLE] == 0)
        & (counts[_DATASPACE] == 1) & (counts[_DATATYPE] == 1) & (sizes[_LAYOUT] >= 18)
    )
    # a dataset's layout: version 3, contiguous, then address and size (8 bytes each); a
    # group's symbol table message: B-tree and local heap addresses
    layout = words(found[_LAYOUT] + 2, 2)
    dataset &= (heads[every, found[_LAYOUT]] == 3) & (heads[every, found[_LAYOUT] + 1] == 1)
    ok &= group | dataset
    symbols = words(found[_SYMBOL_TABLE], 2)
    chosen = dataset & ok
    shapes, elements = _distinct(heads, words, found[_DATASPACE], sizes[_DATASPACE], chosen, _dataspaces, _dataspace, _elements)
    dtypes, itemsizes = _distinct(heads, words, found[_DATATYPE], sizes[_DATATYPE], chosen, _datatypes, _datatype, _itemsize)
    ok &= ~chosen | ((elements != _UNCOUNTED) & (elements != _NOT_DECODED) & (itemsizes != _NOT_DECODED))
    # a dataset is plain when its layout is written and its dataspace and datatype decode
    # to a shape and dtype whose bytes are what the layout stores (unless an attribute
    # spoils it: below)
    data_at, data_size = layout[:, 0], layout[:, 1]
    itemsize = np.maximum(itemsizes, 1).astype(np.uint64)
    plain = (
        chosen & (data_at != np.uint64(_UNDEFINED)) & (elements >= 0) & (itemsizes > 0)
        & (data_size % itemsize == 0) & (data_size // itemsize == np.maximum(elements, 0).astype(np.uint64))
    )
    # the bulk: plain datasets without attributes, their headers built without a Python
    # step per row
    bulk = plain & ~(attribute_end != 0).any(axis=1)
    taken = np.flatnonzero(bulk)
    offsets, lengths = data_at[taken], data_size[taken]
    count = len(taken)
    described = list(map(_HEADER, zip(
        repeat("dataset", count), repeat(True, count), shapes[taken].tolist(), dtypes[taken].tolist(),
        offsets.tolist(), lengths.tolist(), map(list, repeat((), count)), repeat((), count),
        repeat(None, count), repeat(False, count),
    )))
    ok &= ~bulk
    out: list[Header | None] = [None] * n
    # the rest row by row: each column made a list for those rows only
    loop = np.flatnonzero(ok)
    # every attribute message of those rows, in order, cut from one copy of the rows
    row_of, column = np.nonzero(attribute_end[loop] != 0)
    flat = heads.tobytes() if len(row_of) else b""
    row_start = loop[row_of] * heads.shape[1]
    messages = [
        flat[start:stop] for start, stop in zip(
            (row_start + attribute_at[loop[row_of], column]).tolist(),
            (row_start + attribute_end[loop[row_of], column]).tolist(),
        )
    ]
    counted_attributes = np.bincount(row_of, minlength=len(loop))
    firsts = (np.cumsum(counted_attributes) - counted_attributes).tolist()  # each row's first message
    make = _HEADER
    for i, count, first, is_group, btree, heap, offset, length, is_plain, shape, dtype in zip(
        loop.tolist(), counted_attributes.tolist(), firsts, group[loop].tolist(), symbols[loop, 0].tolist(),
        symbols[loop, 1].tolist(), data_at[loop].tolist(), data_size[loop].tolist(), plain[loop].tolist(),
        shapes[loop].tolist(), dtypes[loop].tolist(),
    ):
        if count:
            names, vlen, declared, spoiled = _attributes(messages[first : first + count])
        else:
            names, vlen, declared, spoiled = (), [], False, False
        if is_group:
            out[i] = make(("group", False, None, None, None, 0, vlen, names, (btree, heap), False))
            continue
        if offset == _UNDEFINED:
            out[i] = make(("dataset", False, None, None, None, length, vlen, names, None, False))
        elif is_plain and not spoiled:
            out[i] = make(("dataset", True, shape, dtype, offset, length, vlen, names, None, declared))
        else:
            out[i] = make(("dataset", False, None, None, offset, length, vlen, names, None, False))
    return out, continued, (taken, described, offsets, lengths)


# Header._make without its Python frame: the tuple of the fields, typed Header
_HEADER = partial(tuple.__new__, Header)


def rows(
    read: Callable[[int, int], bytes], image: np.ndarray | None, addresses: list[int] | np.ndarray, width: int
) -> np.ndarray:
    """The ``width`` bytes at each of ``addresses`` (each at most ``width`` bytes before the
    image's end) as the rows of a uint8 array: copied out of ``image`` (the image as a uint8
    array) in one step when given, else read one by one with ``read(offset, n)``."""
    if image is not None:
        return np.lib.stride_tricks.sliding_window_view(image, width)[np.asarray(addresses, np.int64)]
    joined = b"".join([read(int(a), width) for a in addresses])
    return np.frombuffer(joined, np.uint8).reshape(len(addresses), width)


class _Words:
    """Little-endian 8-byte words at any byte of a batch's rows (``heads``, n x width)."""

    def __init__(self, heads: np.ndarray) -> None:
        self.width = heads.shape[1]
        flat = np.concatenate([heads.reshape(-1), np.zeros(8, np.uint8)])  # a word may end past a row
        # one 8-byte word starting at every byte: a view of the same memory, no copy
        self.at_byte = np.ndarray((flat.size - 7,), "<u8", flat, 0, (1,))
        self.row_start = np.arange(heads.shape[0], dtype=np.int64) * self.width

    def __call__(self, at: np.ndarray, count: int, rows: np.ndarray | None = None) -> np.ndarray:
        """``count`` words from each row (or each of ``rows``), the first at column ``at[i]``
        (clamped into the row: rows whose message is not there are of no use anyway)."""
        first = self.row_start if rows is None else self.row_start[rows]
        start = first + np.minimum(at, self.width - 8 * count)
        return np.stack([self.at_byte[start + 8 * w] for w in range(count)], axis=1)


def _distinct(
    heads: np.ndarray, words: _Words, at: np.ndarray, sizes: np.ndarray, rows: np.ndarray,
    memo: dict[bytes, Any], parse: Callable[[bytes], Any], measure: Callable[[Any], int],
) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``rows``' message (``sizes[i]`` bytes at column ``at[i]``) decoded by
    ``parse``, each distinct message once (through ``memo``), by row index (an object array,
    ``_UNSEEN`` for rows not decoded), and ``measure`` of each row's value (of ``_UNSEEN``
    for rows not decoded), worked out once per distinct value. Rows are grouped by a 64-bit
    hash of the message, each group's messages then compared word for word with its first:
    a row that differs (a hash collision) is left out, for object_header."""
    decoded = np.full(len(sizes), _UNSEEN, object)
    measured = np.full(len(sizes), _NOT_DECODED, np.int64)
    for length in sorted(set(sizes[rows].tolist())):  # (np.unique would import numpy.ma)
        chosen = np.flatnonzero(rows & (sizes == length))
        if not length:
            empty = parse(b"")
            decoded[chosen] = [empty] * len(chosen)
            measured[chosen] = measure(empty)
            continue
        count = -(-length // 8)
        chosen = chosen[at[chosen] + 8 * count <= words.width]  # the rest: object_header
        cells = words(at[chosen], count, chosen)
        if length % 8:
            cells[:, -1] &= np.uint64((1 << (8 * (length % 8))) - 1)
        digest = cells[:, 0].copy()
        for column in range(1, count):
            digest = digest * np.uint64(_MIX) + cells[:, column]
        _, first, which = np.unique(digest, return_index=True, return_inverse=True)
        which = which.ravel()
        same = (cells == cells[first[which]]).all(axis=1)
        values = np.empty(len(first), object)
        sized = np.empty(len(first), np.int64)
        starts = at[chosen].tolist()
        for w, row in enumerate(first.tolist()):
            data = heads[chosen[row], starts[row] : starts[row] + length].tobytes()
            value = memo.get(data, _UNSEEN)
            values[w] = value = _remember(memo, data, parse(data)) if value is _UNSEEN else value
            sized[w] = measure(value)
        decoded[chosen[same]] = values[which[same]]
        measured[chosen[same]] = sized[which[same]]
    return decoded, measured


_NOT_DECODED, _NONE, _UNCOUNTED = -1, -2, -3  # what _elements and _itemsize give besides a count or size


def _elements(shape: Any) -> int:
    """How many elements a dataspace's ``shape`` holds: ``_NONE`` for a null dataspace,
    ``_UNCOUNTED`` past 2**62 (:func:`object_header` decides), ``_NOT_DECODED`` for a
    message not decoded (a hash collision)."""
    if shape is None:
        return _NONE
    if shape is _UNSEEN:
        return _NOT_DECODED
    count = math.prod(shape)
    return count if count < 1 << 62 else _UNCOUNTED


def _itemsize(dtype: Any) -> int:
    """A datatype's size: ``_NONE`` for one not read here, ``_NOT_DECODED`` as above."""
    return _NONE if dtype is None else _NOT_DECODED if dtype is _UNSEEN else dtype.itemsize
