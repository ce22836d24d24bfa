"""A minimal protobuf wire-format decoder for the few messages a TensorFlow checkpoint holds.

TensorFlow's checkpoint index stores ``BundleHeaderProto`` and ``BundleEntryProto`` values, and
object-based checkpoints a serialized ``TrackableObjectGraph``. Decoding them needs only the
wire format (varints, fixed32/64, length-delimited fields), so ckptconv reads them here instead
of depending on TensorFlow or generated protobuf classes. Unknown fields are skipped, as
protobuf itself does, so newer writers that add fields still read.

Every decoder raises :class:`WireError` (a ``ValueError``) on malformed bytes; callers turn it
into a :class:`~ckptconv.CorruptFileError` naming the file and tensor.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

__all__ = [
    "WireError",
    "read_varint",
    "BundleHeader",
    "BundleEntry",
    "SliceExtent",
    "ObjectReference",
    "SerializedTensor",
    "SlotVariable",
    "TrackableObject",
    "parse_bundle_header",
    "parse_bundle_entry",
    "general_bundle_entry",
    "parse_object_graph",
    "general_object_graph",
]

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: bytes | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode an unsigned varint at ``pos`` (before ``end``); return ``(value, next position)``."""
    if end is None:
        end = len(buf)
    if pos < end:
        byte = buf[pos]
        if byte < 0x80:  # the common case: one byte
            return byte, pos + 1
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def _signed64(value: int) -> int:
    """A varint-encoded int32/int64 field as a signed number (negatives take 10 bytes)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


# A scanned field: (number, wire type, value, end). For varint and fixed fields ``value`` is
# the number and ``end`` is unused; for length-delimited fields the payload is buf[value:end].
_Field = tuple[int, int, int, int]

# ``_new(NamedTupleClass, (field, ...))`` builds a named tuple without calling its Python-level
# ``__new__`` (a frame per call): the common-layout readers make one per tensor, node and edge.
# It checks nothing, so only code that always passes every field uses it.
_new = tuple.__new__


def _scan(buf: bytes, pos: int, end: int) -> list[_Field]:
    """Every field of the message in ``buf[pos:end]``, in order.

    Offsets into one ``bytes`` object instead of sliced copies: an object graph holds
    hundreds of thousands of small fields, and this is where opening a checkpoint spends
    its time.
    """
    fields: list[_Field] = []
    append = fields.append
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = read_varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            if pos < end and buf[pos] < 0x80:
                append((number, VARINT, buf[pos], 0))
                pos += 1
            else:
                value, pos = read_varint(buf, pos, end)
                append((number, VARINT, value, 0))
        elif wire_type == LENGTH:
            if pos < end and buf[pos] < 0x80:
                length = buf[pos]
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            if pos + length > end:
                raise WireError("length-delimited field runs past the end of the message")
            append((number, LENGTH, pos, pos + length))
            pos += length
        elif wire_type == FIXED32:
            if pos + 4 > end:
                raise WireError("truncated fixed32 field")
            append((number, FIXED32, int.from_bytes(buf[pos : pos + 4], "little"), 0))
            pos += 4
        elif wire_type == FIXED64:
            if pos + 8 > end:
                raise WireError("truncated fixed64 field")
            append((number, FIXED64, int.from_bytes(buf[pos : pos + 8], "little"), 0))
            pos += 8
        else:  # groups (3, 4) are not used by any message read here
            raise WireError(f"unsupported wire type {wire_type}")
    return fields


def _expect(wire_type: int, expected: int, what: str) -> None:
    if wire_type != expected:
        raise WireError(f"field {what} has wire type {wire_type}, expected {expected}")


def _int(field: _Field, what: str) -> int:
    _expect(field[1], VARINT, what)
    return _signed64(field[2])


def _sub(buf: bytes, field: _Field, what: str) -> list[_Field]:
    """The fields of a length-delimited sub-message."""
    _expect(field[1], LENGTH, what)
    return _scan(buf, field[2], field[3])


def _str(buf: bytes, field: _Field, what: str) -> str:
    _expect(field[1], LENGTH, what)
    try:
        return buf[field[2] : field[3]].decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"field {what} is not valid UTF-8") from e


# --- tensorflow.BundleHeaderProto / BundleEntryProto -------------------------------------


class BundleHeader(NamedTuple):
    """``BundleHeaderProto``: how many data shards, which byte order, which format version.

    (Named tuples rather than frozen dataclasses here and below: as immutable, and a module
    imported by every command that may open a checkpoint defines them in a fraction of the
    time.)"""

    num_shards: int = 0
    big_endian: bool = False
    producer: int = 0
    min_consumer: int = 0
    bad_consumers: tuple[int, ...] = ()


class SliceExtent(NamedTuple):
    """One dimension of a ``TensorSliceProto``: ``length`` is None for the whole dimension."""

    start: int
    length: int | None


class BundleEntry(NamedTuple):
    """``BundleEntryProto``: where one tensor's bytes lie, or which slices make it up.

    A named tuple rather than a dataclass: an index holds one per tensor, and a tuple is
    built several times faster."""

    dtype: int = 0
    shape: tuple[int, ...] = ()
    unknown_rank: bool = False
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    masked_crc32c: int = 0
    slices: tuple[tuple[SliceExtent, ...], ...] = ()


def parse_bundle_header(buf: bytes | memoryview) -> BundleHeader:
    """Decode a ``BundleHeaderProto`` (the index entry under the empty key)."""
    data = bytes(buf)
    num_shards = 0
    big_endian = False
    producer = min_consumer = 0
    bad: list[int] = []
    for field in _scan(data, 0, len(data)):
        number = field[0]
        if number == 1:
            num_shards = _int(field, "num_shards")
        elif number == 2:
            big_endian = _int(field, "endianness") == 1
        elif number == 3:
            for vfield in _sub(data, field, "version"):
                if vfield[0] == 1:
                    producer = _int(vfield, "version.producer")
                elif vfield[0] == 2:
                    min_consumer = _int(vfield, "version.min_consumer")
                elif vfield[0] == 3:
                    bad.extend(_repeated_ints(data, vfield, "version.bad_consumers"))
    return BundleHeader(num_shards, big_endian, producer, min_consumer, tuple(bad))


def _repeated_ints(buf: bytes, field: _Field, what: str) -> list[int]:
    """A repeated integer field element: one varint, or a packed run of them."""
    if field[1] == VARINT:
        return [_signed64(field[2])]
    _expect(field[1], LENGTH, what)
    out = []
    pos, end = field[2], field[3]
    while pos < end:
        item, pos = read_varint(buf, pos, end)
        out.append(_signed64(item))
    return out


def _parse_shape(buf: bytes, field: _Field) -> tuple[tuple[int, ...], bool]:
    dims: list[int] = []
    unknown_rank = False
    for sfield in _sub(buf, field, "shape"):
        if sfield[0] == 2:
            size = 0
            for dfield in _sub(buf, sfield, "shape.dim"):
                if dfield[0] == 1:
                    size = _int(dfield, "shape.dim.size")
            dims.append(size)
        elif sfield[0] == 3:
            unknown_rank = bool(_int(sfield, "shape.unknown_rank"))
    return tuple(dims), unknown_rank


def _parse_slice(buf: bytes, field: _Field) -> tuple[SliceExtent, ...]:
    extents = []
    for sfield in _sub(buf, field, "slices"):
        if sfield[0] == 1:
            start, length = 0, None
            for efield in _sub(buf, sfield, "slice.extent"):
                if efield[0] == 1:
                    start = _int(efield, "slice.extent.start")
                elif efield[0] == 2:
                    length = _int(efield, "slice.extent.length")
            extents.append(SliceExtent(start, length))
    return tuple(extents)


@functools.lru_cache(maxsize=4096)
def _shape_message(raw: bytes) -> tuple[tuple[int, ...], bool]:
    """A ``TensorShapeProto`` by its bytes: the tensors of a checkpoint share a few shapes,
    so each distinct one is decoded once."""
    return _parse_shape(raw, (2, LENGTH, 0, len(raw)))


# BundleEntryProto's fields: number -> (name, wire type)
_ENTRY_FIELDS = {1: ("dtype", VARINT), 2: ("shape", LENGTH), 3: ("shard_id", VARINT),
                 4: ("offset", VARINT), 5: ("size", VARINT), 6: ("crc32c", FIXED32),
                 7: ("slices", LENGTH)}


def parse_bundle_entry(buf: bytes | memoryview) -> BundleEntry:
    """Decode a ``BundleEntryProto`` (the index entry of one tensor).

    An index holds one per tensor (opening a checkpoint of 100,000 tensors spends much of its
    time here), and TensorFlow writes nearly all of them in one layout, which
    :func:`_common_entry` reads; every other message goes to :func:`general_bundle_entry`.
    Both give the same result for every input (``tests/test_tf_protowire.py``).

    Raises:
        WireError: the bytes are not a well-formed ``BundleEntryProto``.
    """
    data = bytes(buf)
    entry = _common_entry(data)
    return general_bundle_entry(data) if entry is None else entry


def _common_entry(data: bytes) -> BundleEntry | None:
    """The entry in the layout TensorFlow writes for an unsliced tensor, or None for anything
    else (then the general decoder decides, and gives every error): ``08 <dtype>``, then
    ``12 <length> <shape>`` with a one-byte length, ``18 <shard_id>``, ``20 <offset>``,
    ``28 <size>``, ``35 <crc32c, 4 bytes>``, each optional, in that order, nothing after.
    Raises only where the general decoder raises the same: a damaged shape, in
    :func:`_shape_message`, which the general decoder calls on the same bytes after the same
    dtype field."""
    end = len(data)
    if end < 2 or data[0] != 0x08 or data[1] >= 0x80:
        return None
    dtype = data[1]
    pos = 2
    shape: tuple[int, ...] = ()
    unknown_rank = False
    if pos + 1 < end and data[pos] == 0x12:
        length = data[pos + 1]
        stop = pos + 2 + length
        if length >= 0x80 or stop > end:
            return None
        shape, unknown_rank = _shape_message(data[pos + 2 : stop])
        pos = stop
    shard_id = offset = size = 0
    if pos < end and data[pos] == 0x18:
        shard_id, pos = _common_varint(data, pos + 1, end)
        if pos < 0:
            return None
    if pos < end and data[pos] == 0x20:
        offset, pos = _common_varint(data, pos + 1, end)
        if pos < 0:
            return None
    if pos < end and data[pos] == 0x28:
        size, pos = _common_varint(data, pos + 1, end)
        if pos < 0:
            return None
    crc = 0
    if pos < end and data[pos] == 0x35:
        if pos + 5 > end:
            return None
        crc = int.from_bytes(data[pos + 1 : pos + 5], "little")
        pos += 5
    if pos != end:
        return None
    return _new(BundleEntry, (dtype, shape, unknown_rank, shard_id, offset, size, crc, ()))


def _common_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """An int64 varint at ``pos``, as the general decoder reads it, and the position after it;
    position -1 where the general decoder would refuse it (truncated, over 10 bytes)."""
    if pos + 2 < end:  # up to three bytes (offsets below 2 MiB, sizes) without a loop
        low = data[pos]
        if low < 0x80:
            return low, pos + 1
        middle = data[pos + 1]
        if middle < 0x80:
            return (low & 0x7F) | middle << 7, pos + 2
        high = data[pos + 2]
        if high < 0x80:
            return (low & 0x7F) | (middle & 0x7F) << 7 | high << 14, pos + 3
    value = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            return 0, -1
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value if value < 1 << 63 else _signed64(value)), pos
        shift += 7


def general_bundle_entry(data: bytes) -> BundleEntry:
    """Decode any ``BundleEntryProto``: fields in any order, repeated, or unknown (skipped).

    One pass over the bytes with the varints decoded in line; it accepts the messages
    :func:`_scan` accepts and refuses the others. :func:`parse_bundle_entry` comes here for
    every message its common-layout reader does not take.
    """
    end = len(data)
    pos = 0
    values = [0, 0, 0, 0, 0, 0, 0]  # by field number: 1 dtype, 3 shard_id, 4 offset, 5 size, 6 crc
    shape: tuple[int, ...] = ()
    unknown_rank = False
    slices = []
    while pos < end:
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = read_varint(data, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        if (wire_type == VARINT or wire_type == LENGTH) and pos < end and data[pos] < 0x80:
            value = data[pos]  # a one-byte varint: the dtype, a shape's length, small sizes
            pos += 1
            start = pos
            if wire_type == LENGTH:
                if pos + value > end:
                    raise WireError("length-delimited field runs past the end of the message")
                pos += value
        elif wire_type == VARINT or wire_type == LENGTH:
            value = 0
            shift = 0
            while True:
                if pos >= end:
                    raise WireError("truncated varint")
                byte = data[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
                if shift >= 70:
                    raise WireError("varint longer than 10 bytes")
            start = pos
            if wire_type == LENGTH:
                if pos + value > end:
                    raise WireError("length-delimited field runs past the end of the message")
                pos += value
        elif wire_type == FIXED32:
            if pos + 4 > end:
                raise WireError("truncated fixed32 field")
            value = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        elif wire_type == FIXED64:
            if pos + 8 > end:
                raise WireError("truncated fixed64 field")
            value = 0  # no field of this message is fixed64: a known one is refused below
            pos += 8
        else:  # groups (3, 4) are not used by any message read here
            raise WireError(f"unsupported wire type {wire_type}")
        field = _ENTRY_FIELDS.get(number)
        if field is None:
            continue  # unknown fields are skipped, as protobuf does
        if wire_type != field[1]:
            _expect(wire_type, field[1], field[0])
        if number == 2:
            shape, unknown_rank = _shape_message(data[start:pos])
        elif number == 7:
            slices.append(_parse_slice(data, (7, LENGTH, start, pos)))
        else:
            values[number] = value if value < 1 << 63 or number == 6 else _signed64(value)
    return BundleEntry(
        values[1], shape, unknown_rank, values[3], values[4], values[5], values[6], tuple(slices)
    )


# --- tensorflow.TrackableObjectGraph --------------------------------------------------------
# Named tuples rather than dataclasses: a model's graph has a node per layer and per variable
# and an edge per attribute, and a tuple is built several times faster.


class ObjectReference(NamedTuple):
    """An edge of the object graph: the child's node id and its attribute name."""

    node_id: int
    local_name: str


class SerializedTensor(NamedTuple):
    """A saved tensor of a node: ``name`` (``VARIABLE_VALUE``), the variable's ``full_name``
    and the checkpoint key its value is stored under."""

    name: str
    full_name: str
    checkpoint_key: str


class SlotVariable(NamedTuple):
    """An optimizer slot: which variable it belongs to, its name (``m``), its own node."""

    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


class TrackableObject(NamedTuple):
    """One node of the object graph."""

    children: tuple[ObjectReference, ...] = ()
    attributes: tuple[SerializedTensor, ...] = ()
    slot_variables: tuple[SlotVariable, ...] = ()


def parse_object_graph(buf: bytes | memoryview) -> list[TrackableObject]:
    """Decode a serialized ``TrackableObjectGraph`` into its nodes (node id = list index).

    A model's graph has a node per layer and per variable, and TensorFlow writes nearly all of
    them in one layout, which :func:`_common_node` reads; the graph's framing (its top-level
    fields) is checked whole first, as :func:`general_object_graph` does, and every node the
    common reader does not take is decoded by the general one, in order, so both give the same
    result and the same error for every input (``tests/test_tf_protowire.py``).

    Raises:
        WireError: the bytes are not a well-formed ``TrackableObjectGraph``.
    """
    data = bytes(buf)
    end = len(data)
    pos = 0
    nodes: list[TrackableObject | None] = []
    left: list[tuple[int, int, int]] = []  # (node id, start, end) of nodes the common reader left
    while pos < end:
        if data[pos] != 0x0A:  # anything but a node field: the general decoder decides
            return general_object_graph(data)
        pos += 1
        length = data[pos] if pos < end else 0x80
        if length < 0x80:  # a variable's node: under 128 bytes
            pos += 1
        else:
            length = 0
            shift = 0
            while True:
                if pos >= end or shift > 63:
                    return general_object_graph(data)
                byte = data[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
        stop = pos + length
        if stop > end:
            return general_object_graph(data)
        node = _common_node(data, pos, stop)
        if node is None:
            left.append((len(nodes), pos, stop))
        nodes.append(node)
        pos = stop
    for i, start, stop in left:
        nodes[i] = _parse_node(data, (1, LENGTH, start, stop))
    return nodes  # type: ignore[return-value]  # every None was replaced


def _common_node(buf: bytes, pos: int, end: int) -> TrackableObject | None:
    """The node in ``buf[pos:end]`` when every field is in the layout TensorFlow writes, else
    None (then the general decoder decides, and gives every error); never raises.

    The layout: each field a one-byte tag and a length of at most two bytes; children
    ``08 <node id> 12 <length> <local_name>`` (the id left out when 0: the root); attributes
    ``0a <length> <name> 12 <length> <full_name> 1a <length> <checkpoint_key>`` (each left
    out when empty, as proto3 writes them); slot variables ``08 <node id> 12 <length>
    <slot_name> 18 <node id>``; the fields not read here (``saveable_objects``,
    ``has_checkpoint_values``, ``registered_saver`` and unknown ones) length-delimited.
    Node ids below 2**63 (varints of at most 9 bytes); lengths inside a field one byte (two
    for a checkpoint key).
    """
    if end - pos > 20 and buf[pos] == 0x12 and buf.startswith(_VARIABLE_HEAD, pos + 2, end):
        # a variable (most nodes): its one saved tensor, VARIABLE_VALUE with a full_name and a
        # key, each length one byte, then at most has_checkpoint_values
        stop = pos + 2 + buf[pos + 1]
        cut = pos + 20 + buf[pos + 19]  # the full_name's length at pos + 19
        if (
            buf[pos + 1] < 0x80 and buf[pos + 19] < 0x80 and cut + 1 < stop <= end
            and buf[cut] == 0x1A and buf[cut + 1] < 0x80 and cut + 2 + buf[cut + 1] == stop
            and (stop == end or buf[stop:end] in _VARIABLE_TAILS)
        ):
            try:
                full_name = buf[pos + 20 : cut].decode("utf-8")
                key = buf[cut + 2 : stop].decode("utf-8")
            except UnicodeDecodeError:
                return None
            return _new(TrackableObject, ((), (_new(SerializedTensor, ("VARIABLE_VALUE", full_name, key)),), ()))
    children: list[ObjectReference] = []
    attributes: list[SerializedTensor] = []
    slots: list[SlotVariable] = []
    try:
        # the children come first: ``0a <length> 08 <id, one or two bytes> 12 <length> <name>``
        # read here in a run, the rest (and any other child) by the loop below
        while pos < end and buf[pos] == 0x0A and buf[pos + 2] == 0x08:
            stop = pos + 2 + buf[pos + 1]
            node_id = buf[pos + 3]
            if node_id < 0x80:
                at = pos + 4
            elif buf[pos + 4] < 0x80:
                node_id, at = (node_id & 0x7F) | buf[pos + 4] << 7, pos + 5
            else:
                break
            if buf[pos + 1] >= 0x80 or buf[at] != 0x12 or buf[at + 1] >= 0x80 or at + 2 + buf[at + 1] != stop or stop > end:
                break
            children.append(_new(ObjectReference, (node_id, buf[at + 2 : stop].decode("utf-8"))))
            pos = stop
        if pos == end or buf[pos:end] in _VARIABLE_TAILS:
            # a layer (its children, then has_checkpoint_values) or an object with nothing
            # saved: done without the field loop below
            return _new(TrackableObject, (tuple(children), (), ())) if children else _EMPTY_NODE
        while pos < end:
            tag = buf[pos]
            length = buf[pos + 1]
            if length < 0x80:
                pos += 2
            else:
                high = buf[pos + 2]
                if high >= 0x80:
                    return None
                length = (length & 0x7F) | high << 7
                pos += 3
            stop = pos + length
            if stop > end:
                return None
            if tag == 0x0A:  # a child (node 0, the root, has its id left out)
                if buf[pos] != 0x08:
                    node_id, at = 0, pos
                elif buf[pos + 1] < 0x80:
                    node_id, at = buf[pos + 1], pos + 2
                elif buf[pos + 2] < 0x80:
                    node_id, at = (buf[pos + 1] & 0x7F) | buf[pos + 2] << 7, pos + 3
                else:
                    node_id, at = _node_id(buf, pos + 1)
                name_length = buf[at + 1]
                if buf[at] != 0x12 or name_length >= 0x80 or at + 2 + name_length != stop:
                    return None
                children.append(_new(ObjectReference, (node_id, buf[at + 2 : stop].decode("utf-8"))))
            elif tag == 0x12:  # a saved tensor: name, full_name, checkpoint_key, each optional
                name = full_name = key = ""
                at = pos
                if at < stop and buf[at] == 0x0A:
                    cut = at + 2 + buf[at + 1]
                    if buf[at + 1] >= 0x80 or cut > stop:
                        return None
                    name = buf[at + 2 : cut].decode("utf-8")
                    at = cut
                if at < stop and buf[at] == 0x12:
                    cut = at + 2 + buf[at + 1]
                    if buf[at + 1] >= 0x80 or cut > stop:
                        return None
                    full_name = buf[at + 2 : cut].decode("utf-8")
                    at = cut
                if at < stop and buf[at] == 0x1A:
                    key_length = buf[at + 1]
                    at += 2
                    if key_length >= 0x80:  # a key of 128 bytes or more
                        if buf[at] >= 0x80:
                            return None
                        key_length = (key_length & 0x7F) | buf[at] << 7
                        at += 1
                    key = buf[at : at + key_length].decode("utf-8")
                    at += key_length
                if at != stop:
                    return None
                attributes.append(_new(SerializedTensor, (name, full_name, key)))
            elif tag == 0x1A:  # a slot variable: rare enough for the scan
                fields = _scan(buf, pos, stop)
                if [f[:2] for f in fields] != [(1, VARINT), (2, LENGTH), (3, VARINT)]:
                    return None
                (_, _, original, _), (_, _, s, e), (_, _, slot_node, _) = fields
                if original >= 1 << 63 or slot_node >= 1 << 63:
                    return None
                slots.append(SlotVariable(original, buf[s:e].decode("utf-8"), slot_node))
            elif tag & 7 != LENGTH or tag < 0x0A or tag >= 0x80:
                return None  # fields not read here must be length-delimited, with a field number
            pos = stop
    except (IndexError, UnicodeDecodeError, WireError):
        return None  # ran past the end (the general decoder says where), or not UTF-8
    if not (children or attributes or slots):
        return _EMPTY_NODE
    return _new(TrackableObject, (tuple(children), tuple(attributes), tuple(slots)))


_EMPTY_NODE = TrackableObject()
# a saved tensor's name field (``VARIABLE_VALUE``), then the tag of its full_name
_VARIABLE_HEAD = b"\x0a\x0eVARIABLE_VALUE\x12"
# what TensorFlow writes after a node's other fields: has_checkpoint_values, true or false
_VARIABLE_TAILS = frozenset({b"\x2a\x02\x08\x01", b"\x2a\x00"})


def _node_id(buf: bytes, pos: int) -> tuple[int, int]:
    """A node id varint of three to nine bytes at ``pos`` and the position after it (past
    the end of ``buf`` for a longer one, which :func:`_common_node` then leaves)."""
    node_id = 0
    shift = 0
    while shift < 63:
        byte = buf[pos]
        pos += 1
        node_id |= (byte & 0x7F) << shift
        if byte < 0x80:
            return node_id, pos
        shift += 7
    return 0, len(buf)


def general_object_graph(data: bytes) -> list[TrackableObject]:
    """Decode any ``TrackableObjectGraph`` by scanning every message field by field:
    fields in any order, repeated, or unknown (skipped). :func:`parse_object_graph` comes
    here for every node its common-layout reader does not take."""
    return [_parse_node(data, field) for field in _scan(data, 0, len(data)) if field[0] == 1]


def _parse_reference(buf: bytes, field: _Field) -> ObjectReference:
    node_id, local_name = 0, ""
    for cfield in _sub(buf, field, "children"):
        if cfield[0] == 1:
            node_id = _int(cfield, "children.node_id")
        elif cfield[0] == 2:
            local_name = _str(buf, cfield, "children.local_name")
    return ObjectReference(node_id, local_name)


def _parse_attribute(buf: bytes, field: _Field) -> SerializedTensor:
    strings = ["", "", ""]
    for afield in _sub(buf, field, "attributes"):
        if 1 <= afield[0] <= 3:
            strings[afield[0] - 1] = _str(buf, afield, "attributes")
    return SerializedTensor(*strings)


def _parse_slot(buf: bytes, field: _Field) -> SlotVariable:
    original, slot_name, slot_node = 0, "", 0
    for sfield in _sub(buf, field, "slot_variables"):
        if sfield[0] == 1:
            original = _int(sfield, "slot_variables.original_variable_node_id")
        elif sfield[0] == 2:
            slot_name = _str(buf, sfield, "slot_variables.slot_name")
        elif sfield[0] == 3:
            slot_node = _int(sfield, "slot_variables.slot_variable_node_id")
    return SlotVariable(original, slot_name, slot_node)


def _parse_node(buf: bytes, field: _Field) -> TrackableObject:
    children, attributes, slots = [], [], []
    for nfield in _sub(buf, field, "nodes"):
        number = nfield[0]
        if number == 1:
            children.append(_parse_reference(buf, nfield))
        elif number == 2:
            attributes.append(_parse_attribute(buf, nfield))
        elif number == 3:
            slots.append(_parse_slot(buf, nfield))
    return TrackableObject(tuple(children), tuple(attributes), tuple(slots))
