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
from dataclasses import dataclass
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
    "parse_object_graph",
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


@dataclass(frozen=True)
class BundleHeader:
    """``BundleHeaderProto``: how many data shards, which byte order, which format version."""

    num_shards: int = 0
    big_endian: bool = False
    producer: int = 0
    min_consumer: int = 0
    bad_consumers: tuple[int, ...] = ()


@dataclass(frozen=True)
class SliceExtent:
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

    An index holds one per tensor (opening a checkpoint of 100,000 tensors spends most of its
    time here), so this is one pass over the bytes with the varints decoded in line; it
    accepts the messages :func:`_scan` accepts and refuses the others.
    """
    data = bytes(buf)
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


@dataclass(frozen=True)
class ObjectReference:
    """An edge of the object graph: the child's node id and its attribute name."""

    node_id: int
    local_name: str


@dataclass(frozen=True)
class SerializedTensor:
    """A saved tensor of a node: ``name`` (``VARIABLE_VALUE``), the variable's ``full_name``
    and the checkpoint key its value is stored under."""

    name: str
    full_name: str
    checkpoint_key: str


@dataclass(frozen=True)
class SlotVariable:
    """An optimizer slot: which variable it belongs to, its name (``m``), its own node."""

    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


@dataclass(frozen=True)
class TrackableObject:
    """One node of the object graph."""

    children: tuple[ObjectReference, ...] = ()
    attributes: tuple[SerializedTensor, ...] = ()
    slot_variables: tuple[SlotVariable, ...] = ()


def _parse_reference(buf: bytes, field: _Field) -> ObjectReference:
    """An edge: almost always ``08 <node id> 12 <length> <name>``, so that layout is read
    directly (edges are the bulk of an object graph); anything else is scanned."""
    _expect(field[1], LENGTH, "children")
    pos, end = field[2], field[3]
    if end - pos >= 4 and buf[pos] == 0x08:
        node_id, at = read_varint(buf, pos + 1, end)
        if at + 2 <= end and buf[at] == 0x12 and buf[at + 1] < 0x80 and at + 2 + buf[at + 1] == end:
            try:
                return ObjectReference(node_id, buf[at + 2 : end].decode("utf-8"))
            except UnicodeDecodeError as e:
                raise WireError("field children.local_name is not valid UTF-8") from e
    node_id, local_name = 0, ""
    for cfield in _scan(buf, pos, end):
        if cfield[0] == 1:
            node_id = _int(cfield, "children.node_id")
        elif cfield[0] == 2:
            local_name = _str(buf, cfield, "children.local_name")
    return ObjectReference(node_id, local_name)


def _parse_attribute(buf: bytes, field: _Field) -> SerializedTensor:
    """A saved tensor: almost always ``0a <n> name 12 <n> full_name 1a <n> checkpoint_key``
    with one-byte lengths, so that layout is read directly (a model has one per variable);
    anything else is scanned."""
    _expect(field[1], LENGTH, "attributes")
    pos, end = field[2], field[3]
    if end - pos >= 6 and buf[pos] == 0x0A and buf[pos + 1] < 0x80:
        a = pos + 2 + buf[pos + 1]
        if a + 2 <= end and buf[a] == 0x12 and buf[a + 1] < 0x80:
            b = a + 2 + buf[a + 1]
            if b + 2 <= end and buf[b] == 0x1A and buf[b + 1] < 0x80 and b + 2 + buf[b + 1] == end:
                try:
                    return SerializedTensor(
                        buf[pos + 2 : a].decode("utf-8"),
                        buf[a + 2 : b].decode("utf-8"),
                        buf[b + 2 : end].decode("utf-8"),
                    )
                except UnicodeDecodeError as e:
                    raise WireError("field attributes is not valid UTF-8") from e
    strings = ["", "", ""]
    for afield in _scan(buf, pos, end):
        if 1 <= afield[0] <= 3:
            strings[afield[0] - 1] = _str(buf, afield, "attributes")
    return SerializedTensor(*strings)


def _parse_node(buf: bytes, field: _Field) -> TrackableObject:
    children, attributes, slots = [], [], []
    for nfield in _sub(buf, field, "nodes"):
        number = nfield[0]
        if number == 1:
            children.append(_parse_reference(buf, nfield))
        elif number == 2:
            attributes.append(_parse_attribute(buf, nfield))
        elif number == 3:
            original, slot_name, slot_node = 0, "", 0
            for sfield in _sub(buf, nfield, "slot_variables"):
                if sfield[0] == 1:
                    original = _int(sfield, "slot_variables.original_variable_node_id")
                elif sfield[0] == 2:
                    slot_name = _str(buf, sfield, "slot_variables.slot_name")
                elif sfield[0] == 3:
                    slot_node = _int(sfield, "slot_variables.slot_variable_node_id")
            slots.append(SlotVariable(original, slot_name, slot_node))
    return TrackableObject(tuple(children), tuple(attributes), tuple(slots))


def parse_object_graph(buf: bytes | memoryview) -> list[TrackableObject]:
    """Decode a serialized ``TrackableObjectGraph`` into its nodes (node id = list index)."""
    data = bytes(buf)
    return [_parse_node(data, field) for field in _scan(data, 0, len(data)) if field[0] == 1]
