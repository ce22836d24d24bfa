"""One byte layer: every read of stored tensor bytes goes through ``ByteRange.read_into`` and
every checksum through ``check_crc32c``, so a damaged or truncated file gives one message
whichever path reads it.

These paths used to read with loops of their own and disagree: the TensorFlow reader said
"tensor data fails its CRC-32C check (recorded 0x...)" where the writer's copy said "stored
bytes fail their recorded CRC-32C (recorded ...)", and a truncated file ended "the file ends
before" on one path and "the file ends at byte N" on another.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from ckptconv.cli import main as cli_main
from tests.test_tf_checkpoint import copy_case, flip

TENSOR = "head/kernel"


@pytest.fixture(scope="module")
def tf_dir(generated) -> Path:
    return generated("tf")


def _messages(prefix: str, out_dir: Path) -> dict[str, str]:
    """The error message of every path that reads ``TENSOR``'s stored bytes."""
    found: dict[str, str] = {}

    def attempt(label: str, action) -> None:
        with pytest.raises(ckptconv.CorruptFileError) as info:
            action()
        assert info.value.tensor == TENSOR, label
        found[label] = str(info.value)

    with ckptconv.open(prefix) as store:
        entry = store[TENSOR]
        attempt("Entry.read", entry.read)
        attempt("Entry.read_into", lambda: entry.read_into(np.empty(entry.shape, entry.dtype)))
        attempt("Entry.verify_crc", entry.verify_crc)
    # the writer's file-to-file copy, and its cast streamed a block at a time
    attempt("convert (copy)", lambda: ckptconv.convert(prefix, out_dir / "copy.safetensors"))
    attempt("convert (cast)", lambda: ckptconv.convert(prefix, out_dir / "cast.safetensors", dtype="float16"))
    assert not list(out_dir.glob("*.safetensors"))
    return found


def test_a_flipped_byte_reads_as_one_message_on_every_path(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "tfkeras", tmp_path)
    with ckptconv.open(prefix) as store:
        stored = store[TENSOR].byte_range
    flip(stored.path, stored.offset + 3)
    found = _messages(prefix, tmp_path)
    assert len(set(found.values())) == 1, found
    message = next(iter(found.values()))
    assert re.search(r"stored bytes fail their recorded CRC-32C \(recorded [0-9a-f]{8}, computed [0-9a-f]{8}\)", message)
    assert message.startswith(f"{stored.path}: tensor {TENSOR!r}: ")
    assert message.endswith("pass check_crc=False to read it anyway")


def test_a_truncated_data_file_reads_as_one_message_on_every_path(tf_dir: Path, tmp_path: Path) -> None:
    prefix = copy_case(tf_dir, "tfkeras", tmp_path)
    with ckptconv.open(prefix) as store:
        # the weight stored last, so that cutting into it leaves every other tensor whole
        last = max(store.entries(), key=lambda e: e.byte_range.offset)
        stored = last.byte_range
    cut = stored.offset + stored.length // 2
    # the store checks file sizes when it opens: cut the file after each open instead
    original = tmp_path / "original.data"
    shutil.copy(stored.path, original)
    found: dict[str, str] = {}
    for label in ("Entry.read", "Entry.read_into", "Entry.verify_crc", "convert (copy)", "convert (cast)"):
        shutil.copy(original, stored.path)
        with ckptconv.open(prefix) as store:
            entry = store[last.name]
            os.truncate(stored.path, cut)
            with pytest.raises(ckptconv.CorruptFileError) as info:
                if label == "Entry.read":
                    entry.read()
                elif label == "Entry.read_into":
                    entry.read_into(np.empty(entry.shape, entry.dtype))
                elif label == "Entry.verify_crc":
                    entry.verify_crc()
                else:
                    plan = ckptconv.build_plan(store, dtype="float16" if "cast" in label else None)
                    ckptconv.write_safetensors(plan.outputs, tmp_path / "out.safetensors")
            assert info.value.tensor == last.name
            found[label] = str(info.value)
    assert len(set(found.values())) == 1, found
    assert next(iter(found.values())) == (
        f"{stored.path}: tensor {last.name!r}: the file is truncated: tensor data ends at byte "
        f"{stored.offset + stored.length}, the file at byte {cut}; copy or download it again"
    )


def test_the_cli_names_its_own_option_for_reading_damaged_data(tf_dir: Path, tmp_path: Path, capsys) -> None:
    prefix = copy_case(tf_dir, "tfkeras", tmp_path)
    with ckptconv.open(prefix) as store:
        stored = store[TENSOR].byte_range
    flip(stored.path, stored.offset + 3)
    assert cli_main(["convert", prefix, str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "pass --no-check-crc to read it anyway" in err and "check_crc=False" not in err
    assert cli_main(["convert", prefix, str(tmp_path / "out.safetensors"), "--no-check-crc"]) == 0


def test_a_partitioned_variables_slices_use_the_same_check(tf_dir: Path, tmp_path: Path) -> None:
    """Each slice of a partitioned variable carries its own CRC; a mismatch reads as the same
    message as a whole tensor's (the string tensors' check is tests/test_tf_checkpoint.py's)."""
    from ckptconv.formats import _tensorbundle as tb
    from ckptconv.formats._protowire import parse_bundle_entry

    prefix = copy_case(tf_dir, "tf1", tmp_path)
    rows = [parse_bundle_entry(v) for k, v in tb.read_table(prefix + ".index") if k.startswith(b"\x00part/w\x00")]
    flip(prefix + ".data-00000-of-00001", rows[1].offset)
    with ckptconv.open(prefix) as store, pytest.raises(ckptconv.IntegrityError) as info:
        store["part/w"].read()
    assert "stored bytes fail their recorded CRC-32C" in str(info.value)
    assert info.value.tensor == "part/w"
