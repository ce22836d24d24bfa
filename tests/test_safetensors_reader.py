"""safetensors as input: files written by the safetensors library (the real writer), single and
sharded; names, layers and Keras order for PyTorch-style names; damaged and hostile files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import ckptconv
from ckptconv import CorruptFileError, IntegrityError, UnsafeInputError, UnsupportedError
from ckptconv.convert import convert
from tests.helpers import run_cli
from tests.helpers import assert_bit_exact, load_expected
from tests.test_robustness_corpus import cli

rng = np.random.default_rng(7)

# A PyTorch-origin BERT-ish layer, stored with the bias before the weight (as sorted keys are)
TORCH = {
    "encoder.layer.0.attention.self.query.bias": rng.standard_normal(8).astype(np.float32),
    "encoder.layer.0.attention.self.query.weight": rng.standard_normal((8, 8)).astype(np.float32),
    "encoder.layer.0.output.LayerNorm.bias": rng.standard_normal(8).astype(np.float16),
    "encoder.layer.0.output.LayerNorm.weight": rng.standard_normal(8).astype(np.float16),
    "embeddings.position_ids": np.arange(16, dtype=np.int64)[None, :],
    "pooler.dense.weight": rng.standard_normal((8, 8)).astype(ml_dtypes.bfloat16),
    "head.scale": rng.standard_normal(4).astype(ml_dtypes.float8_e4m3fn),
    "head.mask": np.array([True, False, True]),
    "optimizer.state.step": np.array(3, dtype=np.int64),  # optimizer-looking, still a weight
    "scalar": np.array(2.5, dtype=np.float64),
    "empty": np.zeros((0, 3), dtype=np.float32),
}


@pytest.fixture
def torch_file(tmp_path: Path) -> Path:
    path = tmp_path / "pytorch_model.safetensors"
    save_file(TORCH, str(path), metadata={"format": "pt"})
    return path


def test_single_file_bit_exact_with_layers_and_order(torch_file: Path) -> None:
    with ckptconv.open(torch_file) as store:
        assert store.format == "safetensors"
        assert store.metadata == {"format": "pt"}
        assert store.files == (str(torch_file),)
        assert set(store) == set(TORCH)
        for name, array in TORCH.items():
            entry = store[name]
            assert entry.key == name
            assert entry.kind == "weight"
            assert entry.byte_range is not None and entry.byte_range.path == str(torch_file)
            assert_bit_exact(entry.read(), array, name)
        query = store.layers()["encoder.layer.0.attention.self.query"]
        assert [e.name.rsplit(".", 1)[1] for e in query] == ["weight", "bias"]  # Keras order
        norm = store.layers()["encoder.layer.0.output.LayerNorm"]
        assert [e.index for e in norm] == [0, 1] and norm[0].name.endswith("weight")
        assert store["scalar"].layer == ""
        assert store["optimizer.state.step"].layer == "optimizer.state"


def test_detected_by_content_not_extension(tmp_path: Path, torch_file: Path) -> None:
    odd = tmp_path / "weights.bin"
    odd.write_bytes(torch_file.read_bytes())
    with ckptconv.open(odd) as store:
        assert store.format == "safetensors"
        assert_bit_exact(store["head.scale"].read(), TORCH["head.scale"])


def test_inspect_json_reads_the_header(torch_file: Path) -> None:
    proc = run_cli("inspect", torch_file, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"] == "safetensors"
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["pooler.dense.weight"]["dtype"] == "bfloat16"
    assert by_name["pooler.dense.weight"]["shape"] == [8, 8]
    assert by_name["encoder.layer.0.attention.self.query.weight"]["layer"] == (
        "encoder.layer.0.attention.self.query"
    )


def make_sharded(directory: Path, groups: list[dict[str, np.ndarray]], stem: str = "model") -> Path:
    """A Hugging Face sharded set: shards by the safetensors writer, and the index JSON."""
    n = len(groups)
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"{stem}-{i:05d}-of-{n:05d}.safetensors"
        save_file(group, str(directory / name))
        weight_map.update({k: name for k in group})
    index = directory / f"{stem}.safetensors.index.json"
    total = sum(a.nbytes for g in groups for a in g.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


GROUPS = [
    {k: TORCH[k] for k in list(TORCH)[:4]},
    {k: TORCH[k] for k in list(TORCH)[4:8]},
    {k: TORCH[k] for k in list(TORCH)[8:]},
]


def test_sharded_set_via_index_and_directory(tmp_path: Path) -> None:
    index = make_sharded(tmp_path, GROUPS)
    for path in (index, tmp_path):
        with ckptconv.open(path) as store:
            assert store.format == "safetensors-sharded"
            assert len(store.files) == 4
            assert set(store) == set(TORCH)
            for name, array in TORCH.items():
                assert_bit_exact(store[name].read(), array, name)
            # shards in file order, tensors in stored order within each
            order = list(store)
            assert order.index("encoder.layer.0.output.LayerNorm.weight") < order.index("scalar")


def test_sharded_safetensors_to_safetensors(tmp_path: Path) -> None:
    index = make_sharded(tmp_path, GROUPS)
    out = tmp_path / "out"
    out.mkdir()
    result = convert(index, out / "m.safetensors", max_shard_size=200)
    assert len(result.files) > 2
    with ckptconv.open(out / "m.safetensors.index.json") as store:
        for name, array in TORCH.items():
            assert_bit_exact(store[name].read(), array, name)
    assert ckptconv.verify_file(out / "m.safetensors.index.json").ok


def test_sharded_keras_input_to_sharded_safetensors(generated, tmp_path: Path) -> None:
    keras_dir = generated("keras")
    expected = load_expected(keras_dir, "k3_zoo_sharded")
    dst = tmp_path / "zoo.safetensors"
    result = convert(keras_dir / "sharded" / "k3_zoo.weights.json", dst,
                                      max_shard_size="1KB")
    assert Path(result.files[-1]).name == "zoo.safetensors.index.json"
    with ckptconv.open(result.files[-1]) as store:
        assert sorted(store) == sorted(e.name for e in expected)
        for want in expected:
            assert_bit_exact(store[want.name].read(), want.array, want.name)
    index = json.loads(Path(result.files[-1]).read_text())
    assert index["metadata"]["total_size"] == sum(e.array.nbytes for e in expected)
    assert set(index["weight_map"]) == {e.name for e in expected}


# --- damaged and hostile files -------------------------------------------------------------


def rewrite_header(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header = edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def two_tensor_file(tmp_path: Path) -> Path:
    path = tmp_path / "two.safetensors"
    save_file({"a": np.ones(4, np.float32), "b": np.arange(4, dtype=np.float32)}, str(path))
    return path


def test_truncated_data_names_file_and_tensor(tmp_path: Path) -> None:
    path = two_tensor_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CorruptFileError, match="truncated") as info:
        ckptconv.open(path)
    assert info.value.path == str(path)
    assert info.value.tensor == "b"


def test_header_longer_than_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 4096) + b'{"a":' + b" " * 100)
    with pytest.raises(ckptconv.CkptconvError) as info:
        ckptconv.open(path)
    assert str(path) in str(info.value)


def _cut_points(raw: bytes) -> dict[str, tuple[int, str | None]]:
    """Where to cut a file of tensors a (16 bytes) then b (16): (bytes kept, tensor named)."""
    n = struct.unpack("<Q", raw[:8])[0]
    return {
        "in-length-1": (1, None),
        "in-length-7": (7, None),
        "after-length": (8, None),
        "in-header-first-byte": (9, None),
        "in-header": (8 + n // 2, None),
        "at-data-start": (8 + n, "a"),
        "in-a": (8 + n + 5, "a"),
        "in-b": (len(raw) - 3, "b"),
    }


@pytest.mark.parametrize("where", list(_cut_points(b"\x10" + b"\0" * 7)))
def test_a_file_cut_anywhere_says_truncated_for_every_command(capsys, tmp_path: Path, where: str) -> None:
    from ckptconv.cli import main

    whole = two_tensor_file(tmp_path)
    raw = whole.read_bytes()
    keep, tensor = _cut_points(raw)[where]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[:keep])
    named = f"tensor {tensor!r}: " if tensor else ""
    out_file = tmp_path / "out.safetensors"
    for argv in (
        ["inspect", cut], ["convert", cut, out_file], ["verify", cut], ["diff", cut, whole], ["diff", whole, cut]
    ):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert code == 1 and out == "", (argv, out, err)
        assert err.count("\n") == 1 and err.startswith(f"ckptconv: error: {cut}: {named}the file is truncated: "), (argv, err)
        assert err.endswith("; copy or download it again\n"), (argv, err)
        assert not out_file.exists()
    with pytest.raises(CorruptFileError, match="truncated") as info:
        ckptconv.open(cut)
    assert info.value.path == str(cut) and info.value.tensor == tensor


def test_a_short_file_of_another_name_is_not_called_safetensors(tmp_path: Path) -> None:
    """Under 10 bytes the content cannot tell: only a .safetensors name makes it a cut one."""
    short = tmp_path / "notes.txt"
    short.write_bytes(b"\x10\0\0\0")
    with pytest.raises(ckptconv.FormatError, match="not a checkpoint"):
        ckptconv.open(short)


def test_header_above_the_limit_is_refused(tmp_path: Path) -> None:
    from ckptconv.formats.safetensors import read_header

    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 200_000_000) + b"{}")
    with pytest.raises(CorruptFileError, match="limit"):
        read_header(path)


@pytest.mark.parametrize(
    "edit,match,key",
    [
        (lambda h: {**h, "b": {**h["b"], "data_offsets": [20, 36]}}, "hole", "b"),
        (lambda h: {**h, "b": {**h["b"], "data_offsets": [12, 28]}}, "overlaps", "b"),
        (lambda h: {**h, "b": {**h["b"], "shape": [5]}}, "needs 20", "b"),
        (lambda h: {**h, "b": {**h["b"], "shape": [-4]}}, "bad shape", "b"),
        (lambda h: {**h, "__metadata__": {"n": 3}}, "strings to strings", None),
        (lambda h: {**h, "a": [1, 2]}, "not an object", "a"),
    ],
    ids=["hole", "overlap", "size", "negative-shape", "metadata", "entry"],
)
def test_bad_headers(tmp_path: Path, edit, match: str, key: str | None) -> None:
    path = two_tensor_file(tmp_path)
    rewrite_header(path, edit)
    with pytest.raises(CorruptFileError, match=match) as info:
        ckptconv.open(path)
    assert info.value.path == str(path)
    assert info.value.tensor == key


def test_unknown_dtype_is_unsupported(tmp_path: Path) -> None:
    path = two_tensor_file(tmp_path)
    rewrite_header(path, lambda h: {**h, "a": {**h["a"], "dtype": "F4"}})
    with pytest.raises(UnsupportedError, match="F4") as info:
        ckptconv.open(path)
    assert info.value.tensor == "a"


def test_shard_outside_the_directory_is_refused(tmp_path: Path) -> None:
    inner = tmp_path / "set"
    inner.mkdir()
    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "outside.safetensors"))
    index = inner / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(UnsafeInputError, match="outside"):
        ckptconv.open(index)


def test_missing_shard_is_named(tmp_path: Path) -> None:
    index = make_sharded(tmp_path, GROUPS)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="model-00002-of-00003.safetensors"):
        ckptconv.open(index)


def test_index_and_shard_disagree(tmp_path: Path) -> None:
    index = make_sharded(tmp_path, GROUPS)
    doc = json.loads(index.read_text())
    doc["weight_map"]["scalar"] = "model-00001-of-00003.safetensors"
    index.write_text(json.dumps(doc))
    with pytest.raises(CorruptFileError) as info:
        ckptconv.open(index)
    assert info.value.tensor == "scalar"


def test_recorded_checksums_are_checked_on_read(tmp_path: Path) -> None:
    src = tmp_path / "c.safetensors"
    ckptconv.write_safetensors(
        [ckptconv.Output("w", (64,), np.float32, lambda: np.arange(64, dtype=np.float32))], src
    )
    raw = bytearray(src.read_bytes())
    raw[-5] ^= 0x01
    src.write_bytes(bytes(raw))
    with ckptconv.open(src) as store:
        with pytest.raises(IntegrityError, match="CRC-32C") as info:
            store["w"].read()
        assert info.value.tensor == "w"
    with ckptconv.open(src, check_crc=False) as store:
        assert store["w"].read().tobytes() == bytes(raw[-256:])


def test_a_tensor_named_twice_is_refused(tmp_path: Path) -> None:
    path = two_tensor_file(tmp_path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + n].rstrip()
    entry_b = json.dumps(json.loads(header)["b"]).encode()
    doubled = header[:-1] + b',"b":' + entry_b + b"}"
    doubled += b" " * (-len(doubled) % 8)
    path.write_bytes(struct.pack("<Q", len(doubled)) + doubled + raw[8 + n :])
    with pytest.raises(CorruptFileError, match="twice") as info:
        ckptconv.open(path)
    assert info.value.tensor == "b"


def test_a_damaged_header_length_is_reported_as_damaged(tmp_path: Path) -> None:
    """A flipped byte in the 8-byte header length of a ``.safetensors`` file (the length now
    beyond the format's limit, the JSON header still in place) is one line saying the length
    is damaged, for inspect and verify alike, not "not a checkpoint"."""
    path = tmp_path / "model.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32)}, str(path))
    data = bytearray(path.read_bytes())
    data[6] ^= 0x10
    path.write_bytes(bytes(data))
    for command in ("inspect", "verify"):
        proc = run_cli(command, path)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and "its 8-byte length is damaged; copy or download it again" in proc.stderr, proc.stderr
    other = tmp_path / "notes.bin"  # whatever the name: the tensor table at byte 8 tells
    other.write_bytes(bytes(data))
    assert "its 8-byte length is damaged" in run_cli("inspect", other).stderr
    other.write_bytes(bytes(data[:8]) + b'{"note": "not a tensor table"}')  # any other JSON is not
    assert "not a checkpoint" in run_cli("inspect", other).stderr


@pytest.mark.parametrize("mask", [0x01, 0x08, 0x10, 0x40, 0x70, 0x80])
@pytest.mark.parametrize("name", ["model.safetensors", "weights.bin"])
def test_a_damaged_first_byte_of_the_header_length_says_so(
    mask: int, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flipped bit in the low byte of the header length (0x70 makes it 0): the JSON header
    still starts at byte 8 but ends elsewhere than the length says. Whatever the file's name,
    inspect and verify say the length is damaged, not "not valid JSON", "truncated" or "not a
    checkpoint"."""
    path = tmp_path / name
    save_file({"w": np.arange(6, dtype=np.float32), "b": np.ones(3, dtype=np.float16)}, str(path))
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[0] ^= mask
    path.write_bytes(bytes(data))
    said = int.from_bytes(data[:8], "little")
    expected = (f"ckptconv: error: {path}: the header length (the file's first 8 bytes) is damaged: it says "
                f"{said} bytes, but the JSON header at byte 8 takes {n}; copy or download it again\n")
    for command in ("inspect", "verify"):
        status, _, stderr = cli(capsys, command, path)
        assert (status, stderr) == (1, expected), command
    with pytest.raises(CorruptFileError, match="the header length .* is damaged"):
        ckptconv.open(path)


def test_a_header_that_is_not_json_says_the_file_is_damaged_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "damaged.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32)}, str(path))
    data = bytearray(path.read_bytes())
    data[9] = 0xA0  # a byte of the header that is not UTF-8 (its length is intact)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as caught:
        ckptconv.open(path)
    message = str(caught.value)
    assert "the header is not valid JSON" in message and message.endswith(
        "the file is damaged; copy or download it again"), message
