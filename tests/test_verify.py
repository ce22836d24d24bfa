"""``ckptconv verify`` and :func:`ckptconv.verify_file`: outputs written by ``convert`` are
re-checked against their recorded CRC-32Cs, and a byte changed on disk is caught and named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ckptconv
from ckptconv.formats.safetensors import read_header
from tests.helpers import run_cli


def flip_byte(path: Path, tensor: str, at: int = 0) -> None:
    """Change one byte of ``tensor``'s data in place, as bit rot would."""
    header = read_header(path)
    _, _, begin, _ = header.tensors[tensor]
    with path.open("r+b") as f:
        f.seek(header.data_start + begin + at)
        byte = f.read(1)
        f.seek(header.data_start + begin + at)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.fixture(scope="module")
def keras_file(generated) -> Path:
    return generated("keras") / "k3_zoo.weights.h5"


def test_convert_then_verify_then_catch_a_changed_byte(keras_file: Path, tmp_path: Path) -> None:
    dst = tmp_path / "zoo.safetensors"
    proc = run_cli("convert", keras_file, dst, "--verify")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("verify", dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok ")

    victim = next(name for name in read_header(dst).tensors if name.endswith("kernel"))
    flip_byte(dst, victim, at=3)
    proc = run_cli("verify", dst)
    assert proc.returncode == 1
    assert proc.stdout == ""  # a failure is one line on stderr, as every command's errors
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"ckptconv: error: {dst}: tensor {victim!r}: 1 of ")
    assert "do not match their recorded CRC-32C" in proc.stderr

    proc = run_cli("verify", dst, "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert [m["name"] for m in doc["files"][0]["mismatches"]] == [victim]


def test_verify_file_api(tmp_path: Path) -> None:
    dst = tmp_path / "m.safetensors"
    arrays = {"a": np.arange(1000, dtype=np.float32), "b": np.ones(10, np.float16), "c": np.zeros(0)}
    ckptconv.write_safetensors([ckptconv.Output(k, a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items()], dst)
    result = ckptconv.verify_file(dst)
    assert result.ok and result.tensors == 3
    assert result.nbytes == sum(a.nbytes for a in arrays.values())
    assert result.check() is result
    flip_byte(dst, "a", at=3999)
    flip_byte(dst, "b")
    result = ckptconv.verify_file(dst)
    assert [m.name for m in result.mismatches] == ["a", "b"]
    with pytest.raises(ckptconv.IntegrityError, match="2 of 3 tensors") as info:
        result.check()
    assert info.value.tensor is None  # two tensors fail: the message lists them, no one is "the" tensor


def test_sharded_set_by_index_any_shard_or_directory(tmp_path: Path) -> None:
    arrays = {f"layer{i}.weight": np.full(100, i, np.float32) for i in range(4)}
    ckptconv.write_safetensors(
        [ckptconv.Output(k, a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items()],
        tmp_path / "model.safetensors",
        max_shard_size=800,
    )
    index = tmp_path / "model.safetensors.index.json"
    shard2 = tmp_path / "model-00002-of-00002.safetensors"
    for given in (index, shard2, tmp_path):
        result = ckptconv.verify_file(given)
        assert result.ok and result.tensors == 4, given
        assert result.path == str(index)
    flip_byte(shard2, "layer3.weight", at=17)
    proc = run_cli("verify", tmp_path / "model-00001-of-00002.safetensors")
    assert proc.returncode == 1
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert "layer3.weight" in proc.stderr and "model-00002-of-00002.safetensors" in proc.stderr
    assert "layer0.weight" not in proc.stderr


def test_a_set_given_by_a_relative_path_is_reported_by_that_path(capsys, tmp_path: Path, monkeypatch) -> None:
    """Shards are named as the user gave the set (relative to what they typed), as a single
    file is: in the ok line, --json's files and mismatches, and the error line."""
    from ckptconv.cli import main

    arrays = {f"layer{i}.weight": np.full(100, i, np.float32) for i in range(4)}
    (tmp_path / "sub").mkdir()
    ckptconv.write_safetensors(
        [ckptconv.Output(k, a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items()],
        tmp_path / "sub" / "model.safetensors",
        max_shard_size=800,
    )
    monkeypatch.chdir(tmp_path)
    shards = ["sub/model-00001-of-00002.safetensors", "sub/model-00002-of-00002.safetensors"]
    for given in ("sub/model.safetensors.index.json", shards[0], "sub", "sub/model.safetensors"):
        assert main(["verify", "--json", given]) == 0
        report = json.loads(capsys.readouterr().out)["files"][0]
        assert report["path"] == "sub/model.safetensors.index.json" and report["files"] == shards, given
    flip_byte(tmp_path / shards[1], "layer3.weight", at=17)
    assert main(["verify", "--json", "sub/model.safetensors.index.json"]) == 1
    out, err = capsys.readouterr()
    assert [m["path"] for m in json.loads(out)["files"][0]["mismatches"]] == [shards[1]]
    assert err.startswith(f"ckptconv: error: {shards[1]}: tensor 'layer3.weight': "), err


def test_a_keras_sharded_set_is_not_taken_for_a_safetensors_set(capsys, generated) -> None:
    from ckptconv.cli import main

    index = generated("keras") / "sharded" / "k3_zoo.weights.json"
    assert main(["verify", str(index)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"ckptconv: error: {index}: not a safetensors file (a keras-sharded checkpoint): verify "
        "re-checks the safetensors files ckptconv writes against the checksums recorded in them\n"
    )


def test_file_without_checksums_is_a_clear_failure(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"a": np.ones(3, np.float32)}, str(plain))
    unchecked = tmp_path / "unchecked.safetensors"
    ckptconv.write_safetensors([ckptconv.Output("a", (3,), np.float32, lambda: np.ones(3, np.float32))],
                               unchecked, checksum=False)
    good = tmp_path / "good.safetensors"
    ckptconv.write_safetensors([ckptconv.Output("a", (3,), np.float32, lambda: np.ones(3, np.float32))], good)
    proc = run_cli("verify", plain, good, unchecked)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"ok {good} (1 tensors, 12 B)"]  # success stays on stdout
    errors = proc.stderr.splitlines()  # each failed file: one error line naming it, on stderr
    assert len(errors) == 2, proc.stderr
    assert errors[0].startswith(f"ckptconv: error: {plain}: ") and "no ckptconv checksums" in errors[0]
    assert errors[1].startswith(f"ckptconv: error: {unchecked}: ")
    with pytest.raises(ckptconv.UnsupportedError, match="no ckptconv checksums"):
        ckptconv.verify_file(plain)


def test_truncated_file_fails_verification(tmp_path: Path) -> None:
    dst = tmp_path / "t.safetensors"
    ckptconv.write_safetensors([ckptconv.Output("a", (100,), np.float32, lambda: np.ones(100, np.float32))], dst)
    dst.write_bytes(dst.read_bytes()[:-8])
    proc = run_cli("verify", dst)
    assert proc.returncode == 1
    assert proc.stdout == "" and proc.stderr.startswith(f"ckptconv: error: {dst}: ")
    assert "truncated" in proc.stderr


def test_a_tensorflow_checkpoint_prefix_or_directory_is_not_taken_for_a_missing_file(capsys, generated) -> None:
    """verify reads safetensors only; a TF checkpoint given by its prefix (no file of that
    name exists) or its directory is said to be what it is, as any other format's file is."""
    from ckptconv.cli import main

    prefix = Path(json.loads((generated("tf") / "tf1.case.json").read_text())["prefix"])
    assert not prefix.exists() and prefix.with_name(prefix.name + ".index").is_file()
    tail = ": not a safetensors file (a tf-checkpoint checkpoint): verify re-checks the safetensors files"
    for given in (prefix, prefix.parent):
        assert main(["verify", str(given)]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"ckptconv: error: {given}{tail}"), err
    missing = prefix.with_name("no-such-checkpoint")
    assert main(["verify", str(missing)]) == 1
    assert capsys.readouterr().err == f"ckptconv: error: {missing}: no such file or directory\n"


def test_a_damaged_name_in_the_checksum_table_is_refused_by_every_command(tmp_path: Path, capsys) -> None:
    """A flipped byte in a tensor's name inside the recorded checksum table would leave that
    tensor unprotected: every command refuses the file as damaged. A table that also names
    tensors the file no longer holds (another tool dropped them) but lists every tensor kept is
    read as it is."""
    from ckptconv.cli import main

    path = tmp_path / "model.safetensors"
    ckptconv.write_safetensors(
        [ckptconv.Output(k, (3,), np.float32, lambda: np.ones(3, np.float32)) for k in ("a.weight", "b.weight")], path
    )
    raw = path.read_bytes()
    listed = b'\\"a.weight\\":'
    assert raw.count(listed) == 1
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(raw.replace(listed, b'\\"a.weighu\\":'))
    expected = (
        f"ckptconv: error: {damaged}: __metadata__['ckptconv.crc32c'] names a tensor the file lacks "
        "('a.weighu') and none for 'a.weight': the header is damaged; copy or download it again\n"
    )
    out = tmp_path / "out.safetensors"
    for argv in (["verify", damaged], ["inspect", damaged], ["diff", damaged, path], ["convert", damaged, out]):
        assert main([str(a) for a in argv]) == 1, argv
        assert capsys.readouterr().err == expected, argv
    assert not out.exists()

    header_len = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + header_len].replace(b'\\"b.weight\\"', b'\\"c.weight\\":\\"00000000\\",\\"b.weight\\"')
    header += b" " * (-len(header) % 8)
    kept = tmp_path / "kept.safetensors"
    kept.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + header_len :])
    with ckptconv.open(kept) as store:
        assert sorted(store) == ["a.weight", "b.weight"]
        assert all(store[k].crc32c is not None for k in store)
    assert main(["verify", str(kept)]) == 0


def test_debug_shows_the_traceback_of_a_mismatch_and_the_clis_option_names(tmp_path: Path) -> None:
    """``--debug`` shows the traceback of every failure, a verify mismatch too (stopping at
    that file); the traceback's last line names options as the command line does."""
    good = tmp_path / "m.safetensors"
    with ckptconv.Store.from_arrays({"w": np.arange(64, dtype=np.float32)}) as store:
        ckptconv.write_safetensors([ckptconv.Output.of(store["w"])], good)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes())
    flip_byte(bad, "w", at=5)

    proc = run_cli("verify", bad, good, "--debug")
    assert proc.returncode == 1 and proc.stdout == ""  # stopped at the first failing file
    assert proc.stderr.startswith("Traceback (most recent call last):"), proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith(f"ckptconv.errors.IntegrityError: {bad}: tensor 'w': 1 of 1 tensors do not match"), last

    proc = run_cli("convert", bad, tmp_path / "out.safetensors", "--debug")
    assert proc.returncode == 1 and "Traceback (most recent call last):" in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith(f"ckptconv.errors.IntegrityError: {bad}: tensor 'w': stored bytes fail"), last
    assert last.endswith("or pass --no-check-crc to read it anyway") and "check_crc=False" not in proc.stderr
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ckptconv.IntegrityError, match="pass check_crc=False to read it anyway"):  # the API's words
        with ckptconv.open(bad) as store:
            store["w"].read()


def test_a_set_given_by_all_its_files_is_checked_once(capsys, tmp_path: Path, monkeypatch) -> None:
    """``verify out/*`` names a set's index and every shard: one ok line for the set (it
    printed one per file, each re-reading the whole set); a file of no set is still checked."""
    from ckptconv.cli import main

    arrays = {f"layer{i}.weight": np.full(100, i, np.float32) for i in range(4)}
    ckptconv.write_safetensors(
        [ckptconv.Output(k, a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items()],
        tmp_path / "model.safetensors",
        max_shard_size=800,
    )
    ckptconv.write_safetensors([ckptconv.Output("x", (2,), np.dtype("float32"), lambda: np.ones(2, np.float32))],
                               tmp_path / "single.safetensors")
    monkeypatch.chdir(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 4
    assert main(["verify", *files]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ok model.safetensors.index.json (4 tensors, 1.6 KiB)", "ok single.safetensors (1 tensors, 8 B)"]
    assert main(["verify", "--json", *files]) == 0
    assert [f["path"] for f in json.loads(capsys.readouterr().out)["files"]] == [
        "model.safetensors.index.json", "single.safetensors"]


def test_the_name_of_a_sharded_set_points_at_its_index(tmp_path: Path) -> None:
    """``convert --max-shard-size`` to ``sh.safetensors`` writes ``sh.safetensors.index.json``;
    opening the name given says where the set is (it said "not a checkpoint")."""
    ckptconv.write_safetensors([ckptconv.Output(f"t{i}", (100,), np.dtype("float32"), lambda: np.zeros(100, np.float32))
                                for i in range(2)], tmp_path / "sh.safetensors", max_shard_size=400)
    proc = run_cli("inspect", tmp_path / "sh.safetensors")
    assert proc.returncode == 1 and proc.stderr == (
        f"ckptconv: error: {tmp_path / 'sh.safetensors'}: no such file; the sharded set written under "
        "this name is read through its index: sh.safetensors.index.json\n")
    with pytest.raises(FileNotFoundError):
        ckptconv.open(tmp_path / "sh.safetensors")
