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

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "WireError",
    "read_varint",
    "iter_fields",
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


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode an unsigned varint at ``pos``; return ``(value, position after it)``."""
    result = 0
    shift = 0
    end = len(buf)
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


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield ``(field number, wire type, value)`` for each field of a message, in order.

    The value is an ``int`` for varint and fixed fields and a ``memoryview`` for
    length-delimited ones (sub-messages, strings, packed repeated scalars).
    """
    view = memoryview(buf)
    pos = 0
    end = len(view)
    while pos < end:
        tag, pos = read_varint(view, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(view, pos)
            yield number, wire_type, value
        elif wire_type == FIXED64:
            if pos + 8 > end:
                raise WireError("truncated fixed64 field")
            yield number, wire_type, struct.unpack_from("<Q", view, pos)[0]
            pos += 8
        elif wire_type == FIXED32:
            if pos + 4 > end:
                raise WireError("truncated fixed32 field")
            yield number, wire_type, struct.unpack_from("<I", view, pos)[0]
            pos += 4
        elif wire_type == LENGTH:
            length, pos = read_varint(view, pos)
            if pos + length > end:
                raise WireError("length-delimited field runs past the end of the message")
            yield number, wire_type, view[pos : pos + length]
            pos += length
        else:  # groups (3, 4) are not used by any message read here
            raise WireError(f"unsupported wire type {wire_type}")


def _expect(wire_type: int, expected: int, what: str) -> None:
    if wire_type != expected:
        raise WireError(f"field {what} has wire type {wire_type}, expected {expected}")


def _int(value: int | memoryview, wire_type: int, what: str) -> int:
    _expect(wire_type, VARINT, what)
    assert isinstance(value, int)
    return _signed64(value)


def _bytes(value: int | memoryview, wire_type: int, what: str) -> memoryview:
    _expect(wire_type, LENGTH, what)
    assert isinstance(value, memoryview)
    return value


def _str(value: int | memoryview, wire_type: int, what: str) -> str:
    try:
        return bytes(_bytes(value, wire_type, what)).decode("utf-8")
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


@dataclass(frozen=True)
class BundleEntry:
    """``BundleEntryProto``: where one tensor's bytes lie, or which slices make it up."""

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
    num_shards = 0
    big_endian = False
    producer = min_consumer = 0
    bad: list[int] = []
    for number, wire_type, value in iter_fields(buf):
        if number == 1:
            num_shards = _int(value, wire_type, "num_shards")
        elif number == 2:
            big_endian = _int(value, wire_type, "endianness") == 1
        elif number == 3:
            for vnum, vtype, vvalue in iter_fields(_bytes(value, wire_type, "version")):
                if vnum == 1:
                    producer = _int(vvalue, vtype, "version.producer")
                elif vnum == 2:
                    min_consumer = _int(vvalue, vtype, "version.min_consumer")
                elif vnum == 3:
                    bad.extend(_repeated_ints(vvalue, vtype, "version.bad_consumers"))
    return BundleHeader(num_shards, big_endian, producer, min_consumer, tuple(bad))


def _repeated_ints(value: int | memoryview, wire_type: int, what: str) -> list[int]:
    """A repeated integer field element: one varint, or a packed run of them."""
    if wire_type == VARINT:
        assert isinstance(value, int)
        return [_signed64(value)]
    packed = _bytes(value, wire_type, what)
    out = []
    pos = 0
    while pos < len(packed):
        item, pos = read_varint(packed, pos)
        out.append(_signed64(item))
    return out


def _parse_shape(buf: memoryview) -> tuple[tuple[int, ...], bool]:
    dims: list[int] = []
    unknown_rank = False
    for number, wire_type, value in iter_fields(buf):
        if number == 2:
            size = 0
            for dnum, dtype, dvalue in iter_fields(_bytes(value, wire_type, "shape.dim")):
                if dnum == 1:
                    size = _int(dvalue, dtype, "shape.dim.size")
            dims.append(size)
        elif number == 3:
            unknown_rank = bool(_int(value, wire_type, "shape.unknown_rank"))
    return tuple(dims), unknown_rank


def _parse_slice(buf: memoryview) -> tuple[SliceExtent, ...]:
    extents = []
    for number, wire_type, value in iter_fields(buf):
        if number == 1:
            start, length = 0, None
            for enum, etype, evalue in iter_fields(_bytes(value, wire_type, "slice.extent")):
                if enum == 1:
                    start = _int(evalue, etype, "slice.extent.start")
                elif enum == 2:
                    length = _int(evalue, etype, "slice.extent.length")
            extents.append(SliceExtent(start, length))
    return tuple(extents)


def parse_bundle_entry(buf: bytes | memoryview) -> BundleEntry:
    """Decode a ``BundleEntryProto`` (the index entry of one tensor)."""
    dtype = shard_id = offset = size = crc = 0
    shape: tuple[int, ...] = ()
    unknown_rank = False
    slices = []
    for number, wire_type, value in iter_fields(buf):
        if number == 1:
            dtype = _int(value, wire_type, "dtype")
        elif number == 2:
            shape, unknown_rank = _parse_shape(_bytes(value, wire_type, "shape"))
        elif number == 3:
            shard_id = _int(value, wire_type, "shard_id")
        elif number == 4:
            offset = _int(value, wire_type, "offset")
        elif number == 5:
            size = _int(value, wire_type, "size")
        elif number == 6:
            _expect(wire_type, FIXED32, "crc32c")
            assert isinstance(value, int)
            crc = value
        elif number == 7:
            slices.append(_parse_slice(_bytes(value, wire_type, "slices")))
    return BundleEntry(dtype, shape, unknown_rank, shard_id, offset, size, crc, tuple(slices))


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
    slot_variables: tuple[SlotVariable, ...] = field(default=())


def _parse_reference(buf: memoryview) -> ObjectReference:
    node_id, local_name = 0, ""
    for number, wire_type, value in iter_fields(buf):
        if number == 1:
            node_id = _int(value, wire_type, "children.node_id")
        elif number == 2:
            local_name = _str(value, wire_type, "children.local_name")
    return ObjectReference(node_id, local_name)


def _parse_attribute(buf: memoryview) -> SerializedTensor:
    strings = {1: "", 2: "", 3: ""}
    for number, wire_type, value in iter_fields(buf):
        if number in strings:
            strings[number] = _str(value, wire_type, "attributes")
    return SerializedTensor(strings[1], strings[2], strings[3])


def _parse_slot(buf: memoryview) -> SlotVariable:
    original, slot_name, slot_node = 0, "", 0
    for number, wire_type, value in iter_fields(buf):
        if number == 1:
            original = _int(value, wire_type, "slot_variables.original_variable_node_id")
        elif number == 2:
            slot_name = _str(value, wire_type, "slot_variables.slot_name")
        elif number == 3:
            slot_node = _int(value, wire_type, "slot_variables.slot_variable_node_id")
    return SlotVariable(original, slot_name, slot_node)


def parse_object_graph(buf: bytes | memoryview) -> list[TrackableObject]:
    """Decode a serialized ``TrackableObjectGraph`` into its nodes (node id = list index)."""
    nodes = []
    for number, wire_type, value in iter_fields(buf):
        if number != 1:
            continue
        children, attributes, slots = [], [], []
        for nnum, ntype, nvalue in iter_fields(_bytes(value, wire_type, "nodes")):
            if nnum == 1:
                children.append(_parse_reference(_bytes(nvalue, ntype, "children")))
            elif nnum == 2:
                attributes.append(_parse_attribute(_bytes(nvalue, ntype, "attributes")))
            elif nnum == 3:
                slots.append(_parse_slot(_bytes(nvalue, ntype, "slot_variables")))
        nodes.append(TrackableObject(tuple(children), tuple(attributes), tuple(slots)))
    return nodes
