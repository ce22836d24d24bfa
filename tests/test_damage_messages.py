"""Damage reads as damage, in one line naming the file and what is damaged, with the advice to copy it again.

A fresh-user trial flipped single bytes of ``examples/sample.keras`` (a real Keras 3 archive):
one in the central directory's name of ``model.weights.h5`` read as "saved without weights?",
one among the first four bytes as "not a checkpoint". Each must say the archive is damaged,
name the file and what is damaged, and tell the user to copy it again (exit status 1), while
an undamaged zip of another kind, or a ``.keras`` saved without weights, keeps its message.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from ckptconv.cli import main as cli_main

SAMPLE = Path(__file__).parent.parent / "examples" / "sample.keras"


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    status = cli_main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) <= 1 and "Traceback" not in err, err
    # the message after the path (a test's directory name must not match a word)
    return status, err.strip().replace(f"{args[-1]}: ", "PATH: ", 1)


def flipped(tmp_path: Path, offset: int, source: Path = SAMPLE) -> Path:
    data = bytearray(source.read_bytes())
    data[offset] ^= 0xFF
    out = tmp_path / f"flipped-{offset}{source.suffix}"
    out.write_bytes(bytes(data))
    return out


def directory_span(data: bytes) -> tuple[int, int]:
    """Where the central directory starts, and where the end record starts."""
    end = data.rfind(b"PK\x05\x06")
    size, offset = struct.unpack_from("<LL", data, end + 12)
    return offset, end


def assert_damaged(status: int, line: str, path: Path) -> None:
    assert status == 1, line
    assert line.startswith("ckptconv: error: PATH: "), line
    assert "damaged" in line and "copy or download" in line and "again" in line, line
    assert "saved without weights" not in line and "not a checkpoint" not in line, line


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_a_damaged_first_header_is_damage_not_another_format(offset: int, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = flipped(tmp_path, offset)
    status, line = cli(capsys, "inspect", path)
    assert_damaged(status, line, path)
    assert "no local header at byte 0" in line, line


def test_a_damaged_torch_save_start_is_damage(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    source = tmp_path / "model.pt"
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, source)
    path = flipped(tmp_path, 3, source)
    assert_damaged(*cli(capsys, "inspect", path), path)


def test_every_byte_of_the_weights_name_in_the_directory(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Each byte of the central directory's ``model.weights.h5`` name: the member's local
    header still names it, so the directory is damaged (the archive has its weights)."""
    data = SAMPLE.read_bytes()
    start, end = directory_span(data)
    name = data.rfind(b"model.weights.h5", start, end)
    assert name > start
    for offset in range(name, name + len("model.weights.h5")):
        path = flipped(tmp_path, offset)
        status, line = cli(capsys, "inspect", path)
        assert_damaged(status, line, path)
        assert "its local header" in line and "'model.weights.h5'" in line, line


def test_a_damaged_config_name_is_not_read_as_a_missing_config(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = SAMPLE.read_bytes()
    start, end = directory_span(data)
    path = flipped(tmp_path, data.rfind(b"config.json", start, end) + 2)
    assert_damaged(*cli(capsys, "inspect", path), path)


@pytest.mark.parametrize("byte", [2, 3])
def test_a_damaged_directory_offset_is_damage(byte: int, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The end record's directory offset, its high bytes flipped (the directory is found at
    its real place, and every member's header would lie before the file's start)."""
    data = SAMPLE.read_bytes()
    _, end = directory_span(data)
    path = flipped(tmp_path, end + 16 + byte)
    status, line = cli(capsys, "inspect", path)
    assert_damaged(status, line, path)
    assert "a damaged zip archive" in line and "out of range" not in line, line


def test_undamaged_archives_keep_their_messages(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The controls: a zip of another kind, a .keras without its weights, a zip after a stub."""
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("a.txt", "hello")
    status, line = cli(capsys, "inspect", plain)
    assert status == 1 and "neither a .keras model" in line and "damaged" not in line, line

    bare = tmp_path / "bare.keras"
    with zipfile.ZipFile(SAMPLE) as source, zipfile.ZipFile(bare, "w") as z:
        for name in ("metadata.json", "config.json"):
            z.writestr(name, source.read(name))
    status, line = cli(capsys, "inspect", bare)
    assert status == 1 and "holds no model.weights.h5 (saved without weights?)" in line, line

    stub = tmp_path / "stub.zip"
    stub.write_bytes(b"#!/bin/sh\nexit 0\n" + plain.read_bytes())
    status, line = cli(capsys, "inspect", stub)
    assert status == 1 and "not a checkpoint" in line and "damaged" not in line, line

    status, line = cli(capsys, "inspect", SAMPLE)
    assert status == 0, line


def test_every_damaged_byte_of_the_directory_is_one_line_with_advice(tmp_path: Path) -> None:
    """Each byte of the central directory and end record flipped in turn: the archive opens
    (a field no reader uses), or the error names the file in one line, and damage
    (``CorruptFileError``) says to copy the file again, as every damaged input's message does."""
    import ckptconv
    from ckptconv.errors import FETCH_AGAIN, CorruptFileError

    data = SAMPLE.read_bytes()
    start, _ = directory_span(data)
    lacking = []
    for offset in range(start, len(data)):
        path = flipped(tmp_path, offset)
        try:
            ckptconv.open(path).close()
        except CorruptFileError as e:
            assert e.path == str(path) and "\n" not in str(e)
            if FETCH_AGAIN not in str(e) and "copy or download the .keras file again" not in str(e):
                lacking.append(f"byte {offset - start} of the directory: {e.reason}")
        except ckptconv.CkptconvError as e:  # refused for another reason (an encrypted flag, a size)
            assert e.path == str(path) and "\n" not in str(e)
        path.unlink()
    assert not lacking, "\n".join(lacking)


def test_damaged_json_inside_and_beside_an_archive_says_to_copy_it_again(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from ckptconv.errors import FETCH_AGAIN

    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(SAMPLE) as source, zipfile.ZipFile(broken, "w") as z:
        for info in source.infolist():
            data = source.read(info.filename)
            z.writestr(info, data[: len(data) // 2] if info.filename == "config.json" else data)
    status, line = cli(capsys, "inspect", broken)
    assert status == 1 and "config.json is not valid JSON" in line and line.endswith(FETCH_AGAIN), line

    index = tmp_path / "model.weights.json"
    index.write_text('{"weight_map": {"a": ')
    status, line = cli(capsys, "inspect", index)
    assert status == 1 and "a JSON file that does not parse" in line and line.endswith(FETCH_AGAIN), line


def test_a_damaged_group_header_is_not_called_a_datasets(generated, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """libhdf5 failing to open a group on the way to a dataset (a legacy .h5's layer group
    whose object header has a damaged byte): the message says the HDF5 object's header is
    damaged, not "the dataset's", and names it."""
    import h5py

    path = tmp_path / "legacy.h5"
    path.write_bytes((generated("load") / "k3legacy.h5").read_bytes())
    with h5py.File(path, "r") as f:
        group = f["model_weights/bn/bn"]
        assert isinstance(group, h5py.Group)
        address = h5py.h5o.get_info(group.id).addr
    data = bytearray(path.read_bytes())
    data[address + 16] ^= 0x5A  # the type of the header's first message (version 1 header)
    path.write_bytes(bytes(data))
    status, line = cli(capsys, "inspect", path)
    assert status == 1, line
    assert "tensor '/model_weights/bn/bn': the HDF5 object's header is damaged" in line, line
    assert "dataset's" not in line and "copy or download it again" in line, line
