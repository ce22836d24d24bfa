"""The protobuf wire decoder against TensorFlow's own serialized messages, and damaged ones.

The object graph and index entries come from checkpoints TensorFlow wrote (``gen_tf.py``);
TensorFlow's parse of the same graph (the full names the generator recorded) is the oracle.
Damaged bytes must raise ``WireError`` (turned into ``CorruptFileError`` by the reader) and
nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptconv.formats import _tensorbundle as tb
from ckptconv.formats import _tf_kinds, tf_checkpoint
from ckptconv.formats._protowire import (
    BundleEntry,
    BundleHeader,
    ObjectReference,
    SerializedTensor,
    SliceExtent,
    SlotVariable,
    TrackableObject,
    WireError,
    _common_entry,
    _common_node,
    _scan,
    general_bundle_entry,
    general_object_graph,
    parse_bundle_entry,
    parse_bundle_header,
    parse_object_graph,
    read_varint,
)


@pytest.fixture(scope="module")
def tf_dir(generated) -> Path:
    return generated("tf")


def object_graph_bytes(prefix: str) -> bytes:
    index = tf_checkpoint._read_index(prefix + ".index")
    files = tf_checkpoint._check_data_files(index, prefix)
    entry = index.entries[tf_checkpoint.OBJECT_GRAPH_KEY]
    return tf_checkpoint._read_strings(files[entry.shard_id], entry, check_crc=True, tensor="graph").reshape(-1)[0]


@pytest.mark.parametrize("label", ["tfkeras", "keras3", "sm_tfkeras"])
def test_object_graph_full_names_match_tensorflows_parse(tf_dir: Path, label: str) -> None:
    info = json.loads((tf_dir / f"{label}.case.json").read_text())
    recorded = {t["key"]: t["full_name"] for t in json.loads((tf_dir / f"{label}.expected.json").read_text())["tensors"]}
    nodes = parse_object_graph(object_graph_bytes(info["prefix"]))
    ours = {a.checkpoint_key: a.full_name for n in nodes for a in n.attributes}
    assert {k: ours[k] for k in recorded} == recorded
    slots = [s for n in nodes for s in n.slot_variables]
    assert (label == "tfkeras") == bool(slots)  # the legacy optimizer's slot variables
    assert all(s.slot_name in ("m", "v") for s in slots)


@pytest.mark.parametrize(
    "value, encoded",
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (2**64 - 1, b"\xff" * 9 + b"\x01")],
)
def test_varints(value: int, encoded: bytes) -> None:
    assert read_varint(encoded, 0) == (value, len(encoded))
    with pytest.raises(WireError):
        read_varint(encoded[:-1], 0)


def _assert_well_typed(value: object, where: str) -> None:
    """Every field of a decoded message holds what its annotation says: ints as ints (never
    bytes or floats), strings as str, nested messages and tuples recursively."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _assert_well_typed(getattr(value, f.name), f"{where}.{f.name}")
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _assert_well_typed(item, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (int, bool, str), f"{where} = {value!r}"
        if type(value) is int:
            assert -(2**63) <= value < 2**64, f"{where} = {value} is not a 64-bit value"


PARSERS = [(parse_bundle_header, BundleHeader), (parse_bundle_entry, BundleEntry), (parse_object_graph, list)]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _message(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Well-formed wire fields (numbers 1-8: the ones these messages use) whose
    length-delimited payloads are text or nested messages."""
    varint_field = st.tuples(st.integers(1, 8), st.integers(0, 2**64 - 1)).map(
        lambda f: _varint(f[0] << 3) + _varint(f[1]))
    fixed32_field = st.tuples(st.integers(1, 8), st.binary(min_size=4, max_size=4)).map(
        lambda f: _varint(f[0] << 3 | 5) + f[1])
    payload = st.one_of(st.text(max_size=12).map(str.encode), children)
    length_field = st.tuples(st.integers(1, 8), payload).map(
        lambda f: _varint(f[0] << 3 | 2) + _varint(len(f[1])) + f[1])
    return st.lists(st.one_of(varint_field, fixed32_field, length_field), max_size=6).map(b"".join)


WIRE_MESSAGES = st.recursive(st.just(b""), _message, max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), WIRE_MESSAGES))
def test_random_bytes_raise_wire_errors_or_decode_to_well_typed_messages(data: bytes) -> None:
    for parse, kind in PARSERS:
        try:
            result = parse(data)
        except WireError:
            continue
        assert isinstance(result, kind), f"{parse.__name__} returned {type(result).__name__}"
        if kind is list:
            assert all(isinstance(node, TrackableObject) for node in result)
        _assert_well_typed(result, parse.__name__)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _encode_graph(nodes: list[TrackableObject]) -> bytes:
    """A TrackableObjectGraph as protobuf encodes it (fields in number order)."""
    out = b""
    for node in nodes:
        body = b"".join(_field(1, _field(1, c.node_id) + _field(2, c.local_name.encode())) for c in node.children)
        body += b"".join(
            _field(2, b"".join(_field(i, s.encode()) for i, s in enumerate((a.name, a.full_name, a.checkpoint_key), 1)))
            for a in node.attributes
        )
        body += b"".join(
            _field(3, _field(1, s.original_variable_node_id) + _field(2, s.slot_name.encode()) + _field(3, s.slot_variable_node_id))
            for s in node.slot_variables
        )
        out += _field(1, body)
    return out


_ids = st.integers(0, 2**40)
_names = st.text(max_size=20)
OBJECT_GRAPHS = st.lists(
    st.builds(
        TrackableObject,
        st.lists(st.builds(ObjectReference, _ids, _names), max_size=4).map(tuple),
        st.lists(st.builds(SerializedTensor, _names, _names, _names), max_size=3).map(tuple),
        st.lists(st.builds(SlotVariable, _ids, _names, _ids), max_size=2).map(tuple),
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(OBJECT_GRAPHS)
def test_object_graphs_decode_to_what_was_encoded(nodes: list[TrackableObject]) -> None:
    assert parse_object_graph(_encode_graph(nodes)) == nodes


def test_empty_messages_decode_to_their_defaults() -> None:
    # proto3: every field absent; also what makes the random test above reach the decode path
    assert parse_bundle_header(b"") == BundleHeader()
    assert parse_bundle_entry(b"") == BundleEntry()
    assert parse_object_graph(b"") == []
    assert parse_bundle_entry(b"\x08\x01\x18\x05\x20\x07") == BundleEntry(dtype=1, shard_id=5, offset=7)


def test_damaged_real_messages_raise_only_wire_errors(tf_dir: Path) -> None:
    """Truncate and flip bits in a real object graph and in real index entries: decoding
    either succeeds (the damage hit a value) or raises WireError; the graph walk never fails
    on whatever decodes."""
    prefix = json.loads((tf_dir / "tfkeras.case.json").read_text())["prefix"]
    graph = object_graph_bytes(prefix)
    entries = [bytes(v) for k, v in tb.read_table(prefix + ".index")[1:]]
    samples = [(parse_object_graph, graph)] + [(parse_bundle_entry, e) for e in entries[:6]]
    walked = 0
    for parse, message in samples:
        for cut in range(0, len(message), 7):
            try:
                parse(message[:cut])
            except WireError:
                pass
        for offset in range(len(message)):
            damaged = bytearray(message)
            damaged[offset] ^= 1 << (offset % 8)
            try:
                result = parse(bytes(damaged))
            except WireError:
                continue
            if parse is parse_object_graph:
                _tf_kinds.object_roles(result)
                walked += 1
    assert walked > len(graph) // 2  # most flips hit values, and those graphs were walked


def _encode_entry(entry: BundleEntry, unknown: list[bytes]) -> bytes:
    """A BundleEntryProto as protobuf encodes it (int64 fields: negatives in 10 bytes), with
    fields of unknown numbers (any wire type) put in between."""
    def shape(dims: tuple[int, ...], unknown_rank: bool) -> bytes:
        body = b"".join(_field(2, _field(1, d) if d else b"") for d in dims)
        return body + (_field(3, 1) if unknown_rank else b"")

    def extent(e: SliceExtent) -> bytes:
        return (_field(1, e.start) if e.start else b"") + (b"" if e.length is None else _field(2, e.length))

    parts = [
        _field(1, entry.dtype % 2**64) if entry.dtype else b"",
        _field(2, shape(entry.shape, entry.unknown_rank)) if entry.shape or entry.unknown_rank else b"",
        _field(3, entry.shard_id % 2**64) if entry.shard_id else b"",
        _field(4, entry.offset % 2**64) if entry.offset else b"",
        _field(5, entry.size % 2**64) if entry.size else b"",
        _varint(6 << 3 | 5) + entry.masked_crc32c.to_bytes(4, "little") if entry.masked_crc32c else b"",
        *(_field(7, b"".join(_field(1, extent(e)) for e in s)) for s in entry.slices),
    ]
    out = b""
    for i, part in enumerate(parts):
        out += (unknown[i] if i < len(unknown) else b"") + part
    return out


_int64 = st.integers(-(2**63), 2**63 - 1)
_unknown_fields = st.lists(
    st.one_of(
        st.tuples(st.integers(8, 2000), st.integers(0, 2**64 - 1)).map(lambda f: _varint(f[0] << 3) + _varint(f[1])),
        st.tuples(st.integers(8, 2000), st.binary(max_size=9)).map(
            lambda f: _varint(f[0] << 3 | 2) + _varint(len(f[1])) + f[1]),
        st.integers(8, 2000).map(lambda n: _varint(n << 3 | 5) + b"\x01\x02\x03\x04"),
        st.integers(8, 2000).map(lambda n: _varint(n << 3 | 1) + bytes(range(8))),
    ),
    max_size=8,
)
BUNDLE_ENTRIES = st.builds(
    BundleEntry,
    _int64,
    st.lists(st.integers(0, 2**40), max_size=4).map(tuple),
    st.booleans(),
    _int64,
    _int64,
    _int64,
    st.integers(0, 2**32 - 1),
    st.lists(
        st.lists(st.builds(SliceExtent, st.integers(0, 2**40), st.none() | st.integers(1, 2**40)),
                 min_size=1, max_size=3).map(tuple),
        max_size=2,
    ).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(BUNDLE_ENTRIES, _unknown_fields)
def test_bundle_entries_decode_to_what_was_encoded(entry: BundleEntry, unknown: list[bytes]) -> None:
    """The in-line decoder of index entries against an encoder: int64 fields of every sign
    and size, shapes (decoded once per distinct bytes), slices, unknown fields skipped."""
    encoded = _encode_entry(entry, unknown)
    assert parse_bundle_entry(encoded) == entry
    assert parse_bundle_entry(encoded) == entry  # the shape, now from the cache


@pytest.mark.parametrize("field", [
    b"\x0d\x01\x00\x00\x00",  # dtype as fixed32
    b"\x09" + bytes(8),  # dtype as fixed64
    b"\x10\x05",  # shape as a varint
    b"\x30\x05",  # crc32c as a varint
    b"\x3a\x01",  # slices: length runs past the end
    b"\x20\xff\xff",  # offset: truncated varint
    b"\x2d\x01\x02",  # size as a truncated fixed32
    b"\x0b",  # a group (wire type 3)
    b"\x00\x01",  # field number 0
])
def test_malformed_bundle_entries_raise_wire_errors(field: bytes) -> None:
    with pytest.raises(WireError):
        parse_bundle_entry(b"\x08\x01" + field)


@pytest.mark.parametrize(
    "body, expected",
    [
        # the common layout (read directly), then layouts that are scanned: a key longer than
        # 127 bytes (two-byte length), empty strings left out (as proto3 writes them), fields
        # out of order, an unknown field
        (_field(1, b"VARIABLE_VALUE") + _field(2, b"d/kernel") + _field(3, b"k"), ("VARIABLE_VALUE", "d/kernel", "k")),
        (_field(1, b"V") + _field(2, b"d") + _field(3, b"x" * 200), ("V", "d", "x" * 200)),
        (_field(1, b"V") + _field(3, b"key"), ("V", "", "key")),
        (_field(3, b"key") + _field(2, b"d") + _field(1, b"V"), ("V", "d", "key")),
        (_field(1, b"V") + _field(2, b"d") + _field(3, b"k") + _field(9, 5), ("V", "d", "k")),
    ],
)
def test_saved_tensor_attributes_in_every_layout(body: bytes, expected: tuple[str, str, str]) -> None:
    nodes = parse_object_graph(_field(1, _field(2, body)))
    assert nodes == [TrackableObject(attributes=(SerializedTensor(*expected),))]


@pytest.mark.parametrize("which", [1, 2, 3])
def test_saved_tensor_attributes_that_are_not_utf8_raise_wire_errors(which: int) -> None:
    strings = [b"V", b"d", b"k"]
    strings[which - 1] = b"\xff\xfe"
    body = b"".join(_field(i, s) for i, s in enumerate(strings, 1))
    for extra in (b"", _field(9, 5)):  # read directly, and scanned
        with pytest.raises(WireError, match="field attributes is not valid UTF-8"):
            parse_object_graph(_field(1, _field(2, body + extra)))


# --- the common-layout readers give exactly what the general decoders give -------------------
#
# parse_bundle_entry and parse_object_graph read the layout TensorFlow writes directly and hand
# everything else to general_bundle_entry / general_object_graph. Whatever the bytes, both ways
# must give the same value or the same WireError (type and message), and nothing else.


def _typed(value: object) -> object:
    """``value`` with the type of everything in it, so that ``==`` also tells a named tuple
    from a plain tuple of the same fields (the readers build them in different ways)."""
    if isinstance(value, (tuple, list)):
        return type(value), [_typed(item) for item in value]
    return type(value), value


def _outcome(parse, data: bytes) -> tuple[str, object]:
    try:
        return "value", _typed(parse(data))
    except WireError as e:
        return "WireError", str(e)


def _both_ways(data: bytes) -> None:
    assert _outcome(parse_bundle_entry, data) == _outcome(general_bundle_entry, data)
    assert _outcome(parse_object_graph, data) == _outcome(general_object_graph, data)


def _mutations(message: bytes, step: int = 1) -> list[bytes]:
    """The message truncated, with one bit flipped, one byte dropped and one inserted, at
    every ``step``-th position."""
    out = []
    for at in range(0, len(message), step):
        flipped = bytearray(message)
        flipped[at] ^= 1 << (at % 8)
        out += [message[:at], bytes(flipped), message[:at] + message[at + 1 :],
                message[:at] + bytes([0x80 | at % 128]) + message[at:]]
    return out


def _real_checkpoints(generated) -> list[str]:
    """Every TensorFlow checkpoint the fixture generators write (TF1, TF2, tf-keras, Keras 3,
    SavedModel variables, sharded, partitioned, every dtype, wrappers and optimizers)."""
    indexes = [*generated("tf").rglob("*.index"), *generated("structure").rglob("*.index")]
    assert len(indexes) >= 20
    return sorted(str(p)[: -len(".index")] for p in indexes)


def _graph_or_none(prefix: str) -> bytes | None:
    index = tf_checkpoint._read_index(prefix + ".index")
    return object_graph_bytes(prefix) if tf_checkpoint.OBJECT_GRAPH_KEY in index.entries else None


def test_real_checkpoints_are_read_in_the_common_layout_and_equal_the_general_decode(generated) -> None:
    """Every index entry and object graph TensorFlow wrote decodes the same both ways, and the
    common-layout readers take all of them (but the slices of partitioned variables), so the
    fast path is the one these files exercise."""
    entries = nodes = graphs = 0
    for prefix in _real_checkpoints(generated):
        for _, value in tb.read_table(prefix + ".index")[1:]:
            general = general_bundle_entry(value)
            assert _typed(parse_bundle_entry(value)) == _typed(general)
            assert (_common_entry(value) is None) == bool(general.slices), value.hex()
            entries += 1
        graph = _graph_or_none(prefix)
        if graph is None:
            continue
        assert _typed(parse_object_graph(graph)) == _typed(general_object_graph(graph))
        for field in _scan(graph, 0, len(graph)):
            assert _common_node(graph, field[2], field[3]) is not None, graph[field[2] : field[3]]
            nodes += 1
        graphs += 1
    assert entries > 300 and graphs > 10 and nodes > 500


def test_damaged_real_messages_decode_the_same_both_ways(tf_dir: Path) -> None:
    prefix = json.loads((tf_dir / "tfkeras.case.json").read_text())["prefix"]
    graph = object_graph_bytes(prefix)
    for _, value in tb.read_table(prefix + ".index")[1:]:
        for damaged in _mutations(bytes(value)):
            _both_ways(damaged)
    for damaged in _mutations(graph, step=3):
        _both_ways(damaged)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), WIRE_MESSAGES))
def test_random_bytes_decode_the_same_both_ways(data: bytes) -> None:
    _both_ways(data)


_COMMON_ENTRIES = st.builds(
    BundleEntry,
    st.integers(0, 127),  # one-byte dtype codes, as every TensorFlow dtype has
    st.lists(st.integers(0, 2**40), max_size=5).map(tuple),
    st.booleans(),
    _int64,
    _int64,
    _int64,
    st.integers(0, 2**32 - 1),
    slices=st.just(()),
)


@settings(max_examples=300, deadline=None)
@given(_COMMON_ENTRIES, st.data())
def test_common_layout_entries_and_their_damage_decode_the_same_both_ways(entry: BundleEntry, data) -> None:
    encoded = _encode_entry(entry, [])
    assert _typed(parse_bundle_entry(encoded)) == _typed(entry) == _typed(general_bundle_entry(encoded))
    if entry.dtype:  # with the dtype left out, the layout is not the common one
        assert _typed(_common_entry(encoded)) == _typed(entry)
    damaged = data.draw(st.sampled_from(_mutations(encoded)), label="damaged") if encoded else b""
    _both_ways(damaged)


@settings(max_examples=200, deadline=None)
@given(OBJECT_GRAPHS, st.data())
def test_object_graphs_and_their_damage_decode_the_same_both_ways(nodes: list[TrackableObject], data) -> None:
    encoded = _encode_graph(nodes)
    assert _typed(parse_object_graph(encoded)) == _typed(nodes) == _typed(general_object_graph(encoded))
    if encoded:
        _both_ways(data.draw(st.sampled_from(_mutations(encoded)), label="damaged"))


# has_checkpoint_values (field 5) as TensorFlow writes it after a node's other fields, and
# ways it never does (a varint, a longer payload, an unknown field, a second copy, a saved
# tensor after it)
_NODE_TAILS = [b"", b"\x2a\x00", b"\x2a\x02\x08\x01", b"\x2a\x02\x08\x00", b"\x28\x01",
               b"\x2a\x03\x08\x01\x00", b"\x32\x00", b"\x2a\x00\x2a\x00", b"\x2a\x00\x12\x00"]
_LATE_ATTRIBUTE = b"\x12\x00"


@settings(max_examples=200, deadline=None)
@given(OBJECT_GRAPHS, st.data())
def test_nodes_ending_in_has_checkpoint_values_decode_the_same_both_ways(nodes: list[TrackableObject], data) -> None:
    """The field TensorFlow writes after a layer's children (or alone, for an object with
    nothing saved), which the common reader takes without its field loop: each node of a graph
    given one of the tails, read both ways, whole and damaged."""
    tails = data.draw(st.lists(st.sampled_from(_NODE_TAILS), min_size=len(nodes), max_size=len(nodes)), label="tails")
    encoded = b"".join(_field(1, _node_body(node) + tail) for node, tail in zip(nodes, tails))
    # fields 5 and up are not read: the nodes are what was encoded, with a saved tensor more
    # where one follows the tail
    expected = [node._replace(attributes=(*node.attributes, SerializedTensor("", "", "")))
                if tail.endswith(_LATE_ATTRIBUTE) else node for node, tail in zip(nodes, tails)]
    assert _typed(parse_object_graph(encoded)) == _typed(expected) == _typed(general_object_graph(encoded))
    for node, tail in zip(nodes, tails):
        body = _node_body(node) + tail
        common = _common_node(body, 0, len(body))
        if common is not None:
            assert _outcome(general_object_graph, _field(1, body)) == ("value", _typed([common]))
    if encoded:
        _both_ways(data.draw(st.sampled_from(_mutations(encoded)), label="damaged"))


def _node_body(node: TrackableObject) -> bytes:
    """One node's fields, as :func:`_encode_graph` writes them (without the node's framing)."""
    encoded = _encode_graph([node])
    _, start = read_varint(encoded, 1)
    return encoded[start:]


@pytest.mark.parametrize("label", ["tfkeras", "keras3", "dtypes"])
def test_damaged_nodes_alone_are_read_as_the_general_decoder_reads_them_or_left_to_it(tf_dir: Path, label: str) -> None:
    """Each real node on its own, damaged (so that fields run past the end of the buffer):
    the common reader never raises, and what it reads is what the general decoder reads."""
    graph = object_graph_bytes(json.loads((tf_dir / f"{label}.case.json").read_text())["prefix"])
    read = 0
    for field in _scan(graph, 0, len(graph)):
        for body in _mutations(graph[field[2] : field[3]]):
            node = _common_node(body, 0, len(body))
            if node is not None:
                assert _outcome(general_object_graph, _field(1, body)) == ("value", _typed([node]))
                read += 1
    assert read > 50


def test_a_graph_is_framed_whole_before_any_node_left_to_the_general_decoder_is_read() -> None:
    # node 0 is damaged in a layout the common reader leaves (fields out of order, a name
    # that is not UTF-8); the graph's last field runs past its end: that is the error reported
    graph = _field(1, _field(1, _field(2, b"\xff") + _field(1, 3))) + b"\x0a\x05ab"
    expected = ("WireError", "length-delimited field runs past the end of the message")
    assert _outcome(parse_object_graph, graph) == _outcome(general_object_graph, graph) == expected
