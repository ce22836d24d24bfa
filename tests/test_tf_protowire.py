"""The protobuf wire decoder against TensorFlow's own serialized messages, and damaged ones.

The object graph and index entries come from checkpoints TensorFlow wrote (``gen_tf.py``);
TensorFlow's parse of the same graph (the full names the generator recorded) is the oracle.
Damaged bytes must raise ``WireError`` (turned into ``CorruptFileError`` by the reader) and
nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptconv.formats import _tensorbundle as tb
from ckptconv.formats import tf_checkpoint
from ckptconv.formats._protowire import (
    WireError,
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
    return tf_checkpoint._read_strings(files[entry.shard_id], entry, check_crc=True, key="graph").reshape(-1)[0]


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


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_wire_errors(data: bytes) -> None:
    for parse in (parse_bundle_header, parse_bundle_entry, parse_object_graph):
        try:
            parse(data)
        except WireError:
            pass


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
                tf_checkpoint._object_roles(result)
                walked += 1
    assert walked > len(graph) // 2  # most flips hit values, and those graphs were walked
