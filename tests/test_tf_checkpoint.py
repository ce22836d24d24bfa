"""TensorFlow checkpoints read without TensorFlow, against checkpoints TensorFlow wrote.

``generators/gen_tf.py`` writes each kind of checkpoint with TensorFlow and records what
``tf.train.load_checkpoint(prefix).get_tensor(key)`` returns for every key, the full names
TensorFlow's own protos parse from the object graph, and each variable's kind as the live
objects say. Every tensor is compared bit-exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from ckptconv.convert import convert as convert_checkpoint
from ckptconv.formats import _tensorbundle as tb
from ckptconv.formats import tf_checkpoint
from ckptconv.formats._protowire import SliceExtent, parse_bundle_entry
from tests.helpers import run_cli
from tests.helpers import Expected, assert_bit_exact, load_expected

CASES = ["tf1", "tf1_keras", "dtypes", "fnuz", "sharded", "tfkeras", "keras3", "keras3_model", "sm_module", "sm_tfkeras"]


@pytest.fixture(scope="module")
def tf_dir(generated) -> Path:
    return generated("tf")


def case(tf_dir: Path, label: str) -> dict:
    return json.loads((tf_dir / f"{label}.case.json").read_text())


def expected_by_key(tf_dir: Path, label: str) -> dict[str, Expected]:
    out = {}
    for want in load_expected(tf_dir, label):
        want.array = want.array.reshape(want.extra["tf_shape"])  # dump_expected stores scalars as [1]
        out[want.extra["key"]] = want
    return out


def strings_by_key(tf_dir: Path, label: str) -> dict[str, dict]:
    return json.loads((tf_dir / f"{label}.strings.json").read_text())


@pytest.mark.parametrize("label", CASES)
def test_every_tensor_matches_tensorflows_reader(tf_dir: Path, label: str) -> None:
    info = case(tf_dir, label)
    numeric = expected_by_key(tf_dir, label)
    strings = strings_by_key(tf_dir, label)
    with ckptconv.open(info["path"]) as store:
        assert store.format == "tf-checkpoint"
        assert store.metadata["checkpoint_kind"] == info["checkpoint_kind"]
        assert store.metadata["prefix"] == info["prefix"]
        entries = {e.key: e for e in store.entries(include_all=True)}
        # every key TensorFlow lists, once; the object graph itself is not an entry
        assert sorted(entries) == sorted(k for k in info["keys"] if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
        for key, want in numeric.items():
            entry = entries[key]
            assert (entry.name, entry.kind) == (want.name, want.kind), key
            assert entry.layer == entry.name.rpartition("/")[0]
            assert entry.shape == want.array.shape and entry.dtype == want.array.dtype, key
            assert_bit_exact(entry.read(), want.array, key)
        for key, want in strings.items():
            entry = entries[key]
            assert (entry.name, entry.kind) == (want["name"], want["kind"])
            assert entry.dtype == np.dtype(object) and list(entry.shape) == want["shape"]
            value = entry.read()
            assert value.shape == tuple(want["shape"])
            assert [v.hex() for v in value.reshape(-1)] == want["values"]


@pytest.mark.parametrize("label", CASES)
def test_byte_ranges_and_crcs_describe_the_stored_bytes(tf_dir: Path, label: str) -> None:
    """Writers copy ``byte_range`` file to file and compare ``crc32c``: both must be exact."""
    info = case(tf_dir, label)
    with ckptconv.open(info["path"]) as store:
        index = os.path.abspath(info["prefix"] + ".index")
        data_files = sorted(Path(info["prefix"]).parent.glob(Path(info["prefix"]).name + ".data-*"))
        assert store.files == (index, *(os.path.abspath(p) for p in data_files))
        # partitioned variables (TF1 partitioners, MaxShardSizePolicy) are stored as slices
        sliced = {k.decode() for k, v in tb.read_table(index) if k and parse_bundle_entry(v).slices}
        assert (label in ("tf1", "sharded")) == bool(sliced)
        for entry in store.entries(include_all=True):
            if entry.dtype == np.dtype(object) or entry.key in sliced:
                assert entry.byte_range is None and entry.crc32c is None, entry.name
                continue
            r = entry.byte_range
            assert r is not None and r.length == entry.nbytes
            with open(r.path, "rb") as f:
                f.seek(r.offset)
                raw = f.read(r.length)
            assert raw == entry.read().tobytes(), entry.name
            assert tb.crc32c(raw) == entry.crc32c, entry.name


def test_variant_tensors_are_listed_but_not_read(tf_dir: Path) -> None:
    info = case(tf_dir, "dtypes")
    assert info["variants"]  # the tf.data iterator's state
    with ckptconv.open(info["path"]) as store:
        for key, shape in info["variants"].items():
            entry = store[key]  # no full name: named by its key
            assert (entry.kind, entry.dtype, list(entry.shape)) == ("bookkeeping", np.dtype(object), shape)
            with pytest.raises(ckptconv.UnsupportedError, match="variant") as error:
                entry.read()
            assert error.value.tensor == key


def test_tf1_partitioned_variable_is_one_entry(tf_dir: Path) -> None:
    with ckptconv.open(case(tf_dir, "tf1")["path"]) as store:
        assert "part/w" in store and store["part/w"].shape == (300, 3)
        assert not any(key.startswith("\x00") for key in (e.key for e in store.entries(include_all=True)))
        weights = [e.name for e in store.entries()]
        assert weights == ["dense1/bias", "dense1/kernel", "part/cols", "part/w"]
        assert store["part/cols"].shape == (4, 9)  # split along columns
        assert [e.name for e in store.layers()["dense1"]] == ["dense1/kernel", "dense1/bias"]


def test_object_based_order_and_index_follow_the_model(tf_dir: Path) -> None:
    with ckptconv.open(case(tf_dir, "tfkeras")["path"]) as store:
        assert [e.name for e in store.entries()] == [
            "d1/kernel", "d1/bias", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance",
            "inner_dense/kernel", "inner_dense/bias", "head/kernel", "head/bias",
        ]
        assert [e.index for e in store.layers()["bn"]] == [0, 1, 2, 3]
        assert store["d1/bias"].index == 1


# --- the paths users pass -------------------------------------------------------------------


def test_paths_a_user_may_pass(tf_dir: Path) -> None:
    tf1 = case(tf_dir, "tf1")["prefix"]
    for path in (tf1, tf1 + ".index", tf1 + ".data-00000-of-00001", tf_dir / "tf1", tf_dir / "tf1" / "checkpoint"):
        with ckptconv.open(path) as store:
            assert store.metadata["prefix"] == tf1, path
    # the state file names the latest checkpoint, model.ckpt-2, though model.ckpt-1 is there too
    assert tf1.endswith("model.ckpt-2") and Path(tf_dir / "tf1" / "model.ckpt-1.index").exists()
    sm = tf_dir / "sm_tfkeras"
    for path in (sm, sm / "variables", sm / "variables" / "variables"):
        with ckptconv.open(path) as store:
            assert store.metadata["checkpoint_kind"] == "saved-model", path


def test_moved_directory_falls_back_to_the_state_files_basename(tf_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(tf_dir / "tf1", moved)
    (moved / "checkpoint").write_text('model_checkpoint_path: "/no/longer/here/model.ckpt-1"\n')
    with ckptconv.open(moved) as store:
        assert store.metadata["prefix"] == str(moved / "model.ckpt-1")


def test_directory_with_several_checkpoints_and_no_state_file(tf_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "two"
    shutil.copytree(tf_dir / "tf1", copy)
    (copy / "checkpoint").unlink()
    with pytest.raises(ckptconv.FormatError, match="2 checkpoints .*model.ckpt-1.*pass one prefix"):
        ckptconv.open(copy)


def test_sniff_reads_content_not_names(tf_dir: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.index"
    fake.write_bytes(b"\x00" * 100)
    assert not tf_checkpoint.sniff(fake, b"")
    assert not tf_checkpoint.sniff(tmp_path / "fake", b"")
    with pytest.raises(ckptconv.FormatError):
        ckptconv.open(fake)
    assert tf_checkpoint.sniff(Path(case(tf_dir, "dtypes")["prefix"]), b"")


# --- damage ---------------------------------------------------------------------------------


def copy_case(tf_dir: Path, label: str, tmp_path: Path) -> str:
    """Copy a case's checkpoint files into tmp_path; return the copied prefix."""
    prefix = Path(case(tf_dir, label)["prefix"])
    for f in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(f, tmp_path / f.name)
    return str(tmp_path / prefix.name)


def flip(path: str | Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("where", [0, 0.5, -60, -50, -20, -1])  # blocks, trailers, footer, magic
def test_flipped_index_byte_is_corrupt_at_open(tf_dir: Path, tmp_path: Path, where: float) -> None:
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    index = prefix + ".index"
    size = Path(index).stat().st_size
    flip(index, int(size * where) if isinstance(where, float) else (where % size))
    with pytest.raises(ckptconv.CorruptFileError) as info:
        ckptconv.open(prefix)
    assert info.value.path == index
    assert not isinstance(info.value, ckptconv.FormatError)


def test_every_byte_of_the_index_is_covered(tf_dir: Path, tmp_path: Path) -> None:
    """Flip one bit in each byte in turn (a different bit each time): every flip is caught."""
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    index = Path(prefix + ".index")
    original = index.read_bytes()
    missed = []
    for offset in range(len(original)):
        damaged = bytearray(original)
        damaged[offset] ^= 1 << (offset % 8)
        index.write_bytes(damaged)
        try:
            tf_checkpoint.open(Path(prefix))
        except ckptconv.CorruptFileError:
            continue
        missed.append(offset)
    assert missed == []


def test_flipped_data_byte_fails_the_tensors_crc_on_read(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "tfkeras", tmp_path)
    with ckptconv.open(prefix) as store:
        entry = store["bn/gamma"]
        flip(entry.byte_range.path, entry.byte_range.offset + 5)
        with pytest.raises(ckptconv.IntegrityError, match="CRC-32C") as info:
            entry.read()
        assert info.value.tensor == "bn/gamma"
        assert info.value.path == entry.byte_range.path
        assert "bn/gamma" in str(info.value) and ".data-00000-of-00001" in str(info.value)
        store["d1/kernel"].read()  # other tensors still read
    with ckptconv.open(prefix, check_crc=False) as store:
        assert store["bn/gamma"].read().shape == (8,)


def test_convert_refuses_damaged_data_unless_asked(tf_dir: Path, tmp_path: Path) -> None:
    """The writer copies bytes file to file and compares the CRC the reader offers."""
    prefix = copy_case(tf_dir, "tfkeras", tmp_path)
    with ckptconv.open(prefix) as store:
        r = store["head/kernel"].byte_range
        before = store["head/kernel"].read()
    flip(r.path, r.offset)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ckptconv.IntegrityError) as info:
        convert_checkpoint(prefix, out)
    assert info.value.tensor == "head/kernel" and not out.exists()
    convert_checkpoint(prefix, out, check_crc=False)
    with ckptconv.open(out) as written:
        damaged = written["head/kernel"].read()
    assert damaged.tobytes() != before.tobytes()
    assert damaged.tobytes()[1:] == before.tobytes()[1:]


def test_flipped_byte_in_a_slice_names_the_partitioned_variable(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    with ckptconv.open(prefix) as store:
        before = store["part/w"].read()
        rows = [parse_bundle_entry(v) for k, v in tb.read_table(prefix + ".index") if k.startswith(b"\x00part/w\x00")]
        flip(prefix + ".data-00000-of-00001", rows[1].offset)
        with pytest.raises(ckptconv.IntegrityError) as info:
            store["part/w"].read()
        assert info.value.tensor == "part/w"
    assert before.shape == (300, 3)


def test_flipped_byte_in_a_string_tensor(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "dtypes", tmp_path)
    with ckptconv.open(prefix) as store:
        entry = store["v_string"]
        table = dict(tb.read_table(prefix + ".index"))
        stored = parse_bundle_entry(table[entry.key.encode()])
        flip(prefix + ".data-00000-of-00001", stored.offset + stored.size - 1)  # in the last string
        with pytest.raises(ckptconv.IntegrityError) as info:
            entry.read()
        assert info.value.tensor == "v_string"


def test_missing_data_shard_is_named_at_open(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "sharded", tmp_path)
    missing = Path(prefix + ".data-00002-of-00005")
    missing.unlink()
    with pytest.raises(ckptconv.CorruptFileError, match="data-00002-of-00005.*missing") as info:
        ckptconv.open(prefix)
    assert info.value.path == str(missing)
    result = run_cli("inspect", prefix)
    assert result.returncode == 1
    assert "data-00002-of-00005" in result.stderr and "Traceback" not in result.stderr


def test_missing_index_is_named(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "sharded", tmp_path)
    Path(prefix + ".index").unlink()
    for path in (prefix, prefix + ".data-00001-of-00005"):
        with pytest.raises(ckptconv.CorruptFileError, match="index is missing") as info:
            ckptconv.open(path)
        assert info.value.path == prefix + ".index"


def test_state_file_naming_a_missing_checkpoint(tf_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "stale"
    shutil.copytree(tf_dir / "tf1", copy)
    (copy / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-9"\n')
    with pytest.raises(ckptconv.CorruptFileError, match="model.ckpt-9.index lists its tensors"):
        ckptconv.open(copy)


def test_truncated_data_file_is_corrupt_at_open(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "sm_module", tmp_path)
    data = Path(prefix + ".data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(ckptconv.CorruptFileError, match=r"the file is truncated: it has \d+ bytes, but the index places data up to byte \d+: .* cut") as raised:
        ckptconv.open(prefix)
    assert raised.value.path == str(data)


# A test-only table writer: rebuilds a real index with one entry changed, to reach the
# refusals TensorFlow itself never writes on this machine (big-endian bundles, snappy blocks).


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _block(entries: list[tuple[bytes, bytes]], block_type: int = 0) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    body += struct.pack("<II", 0, 1)  # one restart at offset 0
    crc = tb.crc32c(bytes([block_type]), tb.crc32c(body))
    return body + bytes([block_type]) + struct.pack("<I", tb.mask_crc(crc))


def write_table(path: str, entries: list[tuple[bytes, bytes]], *, block_type: int = 0) -> None:
    data = _block(entries, block_type)
    meta = _block([])
    index = _block([(entries[-1][0], _varint(0) + _varint(len(data) - 5))])
    meta_handle = _varint(len(data)) + _varint(len(meta) - 5)
    index_handle = _varint(len(data) + len(meta)) + _varint(len(index) - 5)
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + tb.TABLE_MAGIC
    Path(path).write_bytes(data + meta + index + footer)


def rewritten(prefix: str, header: bytes | None = None, *, block_type: int = 0) -> None:
    entries = [(k, bytes(v)) for k, v in tb.read_table(prefix + ".index")]
    if header is not None:
        entries[0] = (b"", header)
    write_table(prefix + ".index", entries, block_type=block_type)


def test_rewritten_table_reads_back(tf_dir: Path, tmp_path: Path) -> None:
    """The test-only writer is faithful: an unchanged rewrite still reads bit-exactly."""
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    rewritten(prefix)
    expected = expected_by_key(tf_dir, "tf1")
    with ckptconv.open(prefix) as store:
        for entry in store.entries(include_all=True):
            assert_bit_exact(entry.read(), expected[entry.key].array, entry.key)


def test_missing_slice_names_the_partitioned_variable(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    entries = [(k, bytes(v)) for k, v in tb.read_table(prefix + ".index")]
    gone = tb.slice_key("part/w", [(100, 100), (0, 3)])
    assert gone in dict(entries)
    write_table(prefix + ".index", [(k, v) for k, v in entries if k != gone])
    with pytest.raises(ckptconv.CorruptFileError, match=r"slice \[100:200, 0:3\].*missing") as info:
        ckptconv.open(prefix)
    assert info.value.tensor == "part/w"


def test_size_that_disagrees_with_the_shape_is_corrupt(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    entries = [(k, bytes(v)) for k, v in tb.read_table(prefix + ".index")]
    i = [k for k, _ in entries].index(b"dense1/bias")
    assert entries[i][1].count(b"\x28\x14") == 1  # size (field 5) = 20 bytes: five float32
    entries[i] = (b"dense1/bias", entries[i][1].replace(b"\x28\x14", b"\x28\x10"))
    write_table(prefix + ".index", entries)
    with pytest.raises(ckptconv.CorruptFileError, match="16 bytes for shape \\[5\\] of float32") as info:
        ckptconv.open(prefix)
    assert info.value.tensor == "dense1/bias"


def test_absurd_shard_count_stops_at_the_first_missing_shard(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    header = b"\x08" + _varint(10**9)  # num_shards = 10^9, little-endian, version 0
    rewritten(prefix, header)
    with pytest.raises(ckptconv.CorruptFileError, match="data-00000-of-1000000000 .*missing"):
        ckptconv.open(prefix)


def test_slices_that_leave_a_gap_are_corrupt(tf_dir: Path, tmp_path: Path) -> None:
    """Drop one slice from the whole variable's list too: the rest no longer tile it."""
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    entries = [(k, bytes(v)) for k, v in tb.read_table(prefix + ".index")]
    i = [k for k, _ in entries].index(b"part/w")
    value = entries[i][1]
    assert parse_bundle_entry(value).slices[2][0] == SliceExtent(200, 100)
    # the third slice proto: extent {start: 200, length: 100} then extent {length: 3}
    third = b"\x3a\x0b\x0a\x05\x08\xc8\x01\x10\x64\x0a\x02\x10\x03"
    assert value.count(third) == 1, value.hex()
    entries[i] = (b"part/w", value.replace(third, b""))
    write_table(prefix + ".index", entries)
    with pytest.raises(ckptconv.CorruptFileError, match="cover 600 of the variable's 900") as info:
        ckptconv.open(prefix)
    assert info.value.tensor == "part/w"


def test_slices_that_overlap_and_leave_a_gap_are_corrupt(tf_dir: Path, tmp_path: Path) -> None:
    """The third slice moved onto the second: the volumes still add up to the whole variable
    (so a count of elements passes), but rows 100-199 are written twice and rows 200-299 never,
    which would hand out uninitialised memory as weights."""
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    entries = [(k, bytes(v)) for k, v in tb.read_table(prefix + ".index")]
    i = [k for k, _ in entries].index(b"part/w")
    value = entries[i][1]
    third = b"\x3a\x0b\x0a\x05\x08\xc8\x01\x10\x64\x0a\x02\x10\x03"  # extent {start: 200, length: 100}
    moved = b"\x3a\x0a\x0a\x04\x08\x64\x10\x64\x0a\x02\x10\x03"  # extent {start: 100, length: 100}
    assert value.count(third) == 1, value.hex()
    entries[i] = (b"part/w", value.replace(third, moved))
    assert [e.start for e, _ in parse_bundle_entry(entries[i][1]).slices] == [0, 100, 100]
    write_table(prefix + ".index", entries)
    before = {p.name: p.read_bytes() for p in Path(prefix).parent.iterdir() if p.is_file()}
    with pytest.raises(ckptconv.CorruptFileError, match=r"the slices \[100:200, 0:3\] and \[100:200, 0:3\] of this "
                       "partitioned variable overlap") as info:
        ckptconv.open(prefix)
    assert info.value.tensor == "part/w" and info.value.path == prefix + ".index"
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("convert", prefix, out / "x.safetensors")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "overlap" in proc.stderr and os.listdir(out) == []
    assert {p.name: p.read_bytes() for p in Path(prefix).parent.iterdir() if p.is_file()} == before


def test_big_endian_bundle_is_refused(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    header = bytes(tb.read_table(prefix + ".index")[0][1]) + b"\x10\x01"  # endianness = BIG
    rewritten(prefix, header)
    with pytest.raises(ckptconv.UnsupportedError, match="big-endian"):
        ckptconv.open(prefix)


def test_compressed_index_block_is_refused(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    rewritten(prefix, block_type=1)
    with pytest.raises(ckptconv.UnsupportedError, match="snappy"):
        ckptconv.open(prefix)


# --- pieces ---------------------------------------------------------------------------------


def test_crc_mask_round_trips() -> None:
    for crc in (0, 1, 0xFFFFFFFF, 0x12345678, tb.crc32c(b"123456789")):
        assert tb.unmask_crc(tb.mask_crc(crc)) == crc
    assert tb.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_open_in_a_fresh_process_imports_no_ml_dtypes_and_still_refuses_damage(tf_dir: Path, tmp_path: Path) -> None:
    """A checkpoint without bfloat16 or float8 tensors opens without importing ml_dtypes (nor
    the crc32c package's metadata lookup); a flipped byte in an index block or in the object
    graph is still refused at open, naming the file."""
    good = case(tf_dir, "keras3")["prefix"]
    (tmp_path / "index").mkdir()
    (tmp_path / "graph").mkdir()
    index = copy_case(tf_dir, "keras3", tmp_path / "index")
    flip(index + ".index", 20)  # inside the first data block
    graph = copy_case(tf_dir, "keras3", tmp_path / "graph")
    table = dict(tb.read_table(graph + ".index"))
    stored = parse_bundle_entry(table[b"_CHECKPOINTABLE_OBJECT_GRAPH"])
    flip(graph + ".data-00000-of-00001", stored.offset + stored.size - 1)
    script = (
        "import sys, ckptconv\n"
        "with ckptconv.open(sys.argv[1]) as store:\n"
        "    count = len(store.entries(include_all=True))\n"
        "print(count, 'importlib.metadata' in sys.modules, 'ml_dtypes' in sys.modules)\n"
        "for damaged in sys.argv[2:]:\n"
        "    try:\n"
        "        ckptconv.open(damaged)\n"
        "    except ckptconv.CkptconvError as e:\n"
        "        print(type(e).__name__, e.path, e.tensor)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, good, index, graph], capture_output=True, text=True, check=True)
    with ckptconv.open(good) as store:
        count = len(store.entries(include_all=True))
    assert proc.stdout.splitlines() == [
        f"{count} False False",
        f"CorruptFileError {index}.index None",
        f"IntegrityError {graph}.data-00000-of-00001 _CHECKPOINTABLE_OBJECT_GRAPH",
    ]


def test_slice_keys_match_the_keys_tensorflow_wrote(tf_dir: Path) -> None:
    prefix = case(tf_dir, "tf1")["prefix"]
    table = dict(tb.read_table(prefix + ".index"))
    written = sorted(k for k in table if k.startswith(b"\x00"))
    ours = sorted(
        [tb.slice_key(name, [(start, 100), (0, 3)])
         for name in ("part/w", "part/w/Adam", "part/w/Adam_1")
         for start in (0, 100, 200)]
        + [tb.slice_key(name, [(0, 4), (start, 3)])
           for name in ("part/cols", "part/cols/Adam", "part/cols/Adam_1")
           for start in (0, 3, 6)]
    )
    assert ours == written


def test_negative_dimension_is_corrupt(tf_dir: Path, tmp_path: Path) -> None:
    """int64 fields use 10-byte varints for negatives; a -1 dimension is an incomplete shape."""
    prefix = copy_case(tf_dir, "tf1", tmp_path)
    entries = [(k, bytes(v)) for k, v in tb.read_table(prefix + ".index")]
    i = [k for k, _ in entries].index(b"dense1/bias")
    dim = b"\x12\x04\x12\x02\x08\x05"  # shape { dim { size: 5 } }
    assert entries[i][1].count(dim) == 1
    negative = b"\x08" + b"\xff" * 9 + b"\x01"  # size: -1
    shape = b"\x12" + bytes([len(negative) + 2]) + b"\x12" + bytes([len(negative)]) + negative
    entries[i] = (b"dense1/bias", entries[i][1].replace(dim, shape))
    assert parse_bundle_entry(entries[i][1]).shape == (-1,)
    write_table(prefix + ".index", entries)
    with pytest.raises(ckptconv.CorruptFileError, match="incomplete shape") as info:
        ckptconv.open(prefix)
    assert info.value.tensor == "dense1/bias"


def test_batch_salvages_damaged_data_only_when_asked(tf_dir: Path, tmp_path: Path) -> None:
    from tests.helpers import run_cli

    prefix = copy_case(tf_dir, "tfkeras", tmp_path)
    with ckptconv.open(prefix) as store:
        r = store["head/kernel"].byte_range
    flip(r.path, r.offset)
    out = tmp_path / "out"
    refused = run_cli("batch", prefix + ".index", "-o", out, "--quiet")
    assert refused.returncode == 1 and "head/kernel" in refused.stdout + refused.stderr
    assert not list(out.glob("*.safetensors")) if out.exists() else True
    salvaged = run_cli("batch", prefix + ".index", "-o", out, "--no-check-crc", "--quiet")
    assert salvaged.returncode == 0, salvaged.stdout + salvaged.stderr
    assert len(list(out.glob("*.safetensors"))) == 1


@pytest.mark.parametrize(("keep", "says", "first_cut"), [
    (-1, "the object graph that names the variables is cut", False),  # TensorFlow writes it last
    (0.25, "this tensor, {n} after it and the object graph that names the variables are cut", True),
])
def test_a_truncated_data_file_is_named_as_truncated_not_by_its_object_graph(
    generated, keep: float, says: str, first_cut: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data file cut short: the message says the data file is truncated and what is cut,
    naming the first tensor cut (by its checkpoint key) when there is one, never the internal
    ``_CHECKPOINTABLE_OBJECT_GRAPH`` entry as a tensor."""
    from ckptconv.cli import main as cli_main

    base = generated("load")
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(base / f"k3ckpt{suffix}", tmp_path / f"k3ckpt{suffix}")
    data = tmp_path / "k3ckpt.data-00000-of-00001"
    raw = data.read_bytes()
    size = len(raw) - 1 if keep == -1 else int(len(raw) * keep)
    data.write_bytes(raw[:size])
    with pytest.raises(ckptconv.CorruptFileError) as raised:
        ckptconv.open(tmp_path / "k3ckpt")
    error = raised.value
    assert error.path == str(data) and "_CHECKPOINTABLE_OBJECT_GRAPH" not in str(error)
    assert error.reason.startswith(f"the file is truncated: it has {size} bytes, but the index places data up to byte {len(raw)}: ")
    cut = int(error.reason.split("this tensor, ")[1].split(" ")[0]) if first_cut else 0
    assert error.reason.endswith(says.format(n=cut) + "; copy or download it again"), error.reason
    assert (error.tensor is not None) == first_cut
    if first_cut:
        assert error.tensor.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
    assert cli_main(["inspect", str(tmp_path / "k3ckpt")]) == 1
    assert capsys.readouterr().err == f"ckptconv: error: {error}\n"
