"""Keras readers against files written by the real writers (Keras 3 and tf-keras).

For every weight: name, layer, index, shape, dtype and bytes equal what the writer's live
model held, bit-exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import ckptconv
from tests.helpers import run_cli
from tests.helpers import assert_bit_exact, load_expected

# (file, expected label, format)
CASES = [
    ("k3_zoo.weights.h5", "k3_zoo.weights.h5", "keras-weights-h5"),
    ("k3_zoo.keras", "k3_zoo.keras", "keras-archive"),
    ("k3_zoo.h5", "k3_zoo.h5", "keras-h5"),
    ("sharded/k3_zoo.weights.json", "k3_zoo_sharded", "keras-sharded"),
    ("many/k3_zoo.weights.json", "k3_zoo_many_shards", "keras-sharded"),
    ("k3_seq.weights.h5", "k3_seq.weights.h5", "keras-weights-h5"),
    ("k3_chunked.h5", "k3_chunked.h5", "keras-h5"),
    ("tk_zoo.h5", "tk_zoo.h5", "keras-h5"),
    ("tk_zoo_w.h5", "tk_zoo_w.h5", "keras-h5"),
    ("tk_small.keras", "tk_small.keras", "keras-archive"),
    ("tk_chunked.h5", "tk_chunked.h5", "keras-h5"),
]


@pytest.fixture(scope="module")
def keras_dir(generated) -> Path:
    return generated("keras")


@pytest.mark.parametrize("filename,label,fmt", CASES, ids=[c[0] for c in CASES])
def test_every_weight_matches_the_live_model(keras_dir: Path, filename: str, label: str, fmt: str) -> None:
    expected = load_expected(keras_dir, label)
    with ckptconv.open(keras_dir / filename) as store:
        assert store.format == fmt
        weights = {e.name: e for e in store.entries()}
        assert sorted(weights) == sorted(x.name for x in expected)
        for want in expected:
            entry = weights[want.name]
            assert entry.layer == want.layer, want.name
            assert entry.index == want.index, want.name
            assert entry.kind == "weight"
            assert entry.shape == want.array.shape, want.name
            assert entry.dtype == want.array.dtype, want.name
            assert_bit_exact(entry.read(), want.array, want.name)


@pytest.mark.parametrize("filename", ["k3_zoo.h5", "tk_zoo.h5", "tk_chunked.h5"])
def test_legacy_order_follows_weight_names(keras_dir: Path, filename: str) -> None:
    """Store order is the layer_names / weight_names order, never HDF5's alphabetical order."""
    expected = [x.name for x in load_expected(keras_dir, filename)]
    with ckptconv.open(keras_dir / filename) as store:
        assert [e.name for e in store.entries()] == expected


def test_archive_order_follows_the_config(keras_dir: Path) -> None:
    expected = load_expected(keras_dir, "k3_zoo.keras")
    with ckptconv.open(keras_dir / "k3_zoo.keras") as store:
        got = [e.name for e in store.entries()]
    # layers in config order; within a layer, Keras' variable order
    assert got == [x.name for x in expected]


def test_chunked_layer_names_really_are_chunked(keras_dir: Path) -> None:
    for name in ("k3_chunked.h5", "tk_chunked.h5"):
        with h5py.File(keras_dir / name, "r") as f:
            attrs = f["model_weights"].attrs
            assert "layer_names" not in attrs and "layer_names0" in attrs and "layer_names1" in attrs


@pytest.mark.parametrize("filename", ["k3_zoo.h5", "tk_zoo.h5", "k3_zoo.weights.h5", "k3_zoo.keras"])
def test_training_state_is_kept_apart(keras_dir: Path, filename: str) -> None:
    with ckptconv.open(keras_dir / filename) as store:
        kinds = {e.kind for e in store.entries(include_all=True)}
        assert kinds == {"weight", "optimizer", "bookkeeping"}
        counters = [e for e in store.entries(include_all=True) if e.kind == "bookkeeping"]
        assert all(e.shape == () and e.dtype.kind == "i" for e in counters)
        assert counters[0].read() >= 1  # one training step was taken
        assert all(e.kind == "weight" for e in store.entries())


def test_optimizer_count_matches_keras(keras_dir: Path) -> None:
    meta = json.loads((keras_dir / "k3_zoo.weights.h5.expected.json").read_text())
    with ckptconv.open(keras_dir / "k3_zoo.weights.h5") as store:
        state = [e for e in store.entries(include_all=True) if e.kind != "weight"]
    assert len(state) == meta["optimizer_vars"]


def test_bfloat16_is_real_bfloat16(keras_dir: Path) -> None:
    import ml_dtypes

    for name in ("k3_zoo.weights.h5", "k3_zoo.keras", "k3_zoo.h5"):
        with ckptconv.open(keras_dir / name) as store:
            entry = store["head_bf16/kernel"]
            assert entry.dtype == np.dtype(ml_dtypes.bfloat16)
            assert entry.byte_range is not None


def test_archive_is_read_in_place(keras_dir: Path) -> None:
    """Every tensor of a .keras archive is a byte range of the zip itself: nothing extracted."""
    path = keras_dir / "k3_zoo.keras"
    with ckptconv.open(path) as store:
        for entry in store.entries(include_all=True):
            assert entry.byte_range is not None and entry.byte_range.path == str(path.resolve())
            raw = path.read_bytes()[entry.byte_range.offset : entry.byte_range.offset + entry.byte_range.length]
            assert raw == entry.read().tobytes()


@pytest.mark.parametrize("filename", ["k3_zoo.keras", "tk_zoo.h5", "sharded/k3_zoo.weights.json"])
def test_inspect_json(keras_dir: Path, filename: str) -> None:
    proc = run_cli("inspect", keras_dir / filename, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"format", "path", "tensors"}
    with ckptconv.open(keras_dir / filename) as store:
        assert [t["name"] for t in doc["tensors"]] == [e.name for e in store.entries()]
    t = doc["tensors"][0]
    assert set(t) == {"name", "layer", "index", "key", "shape", "dtype", "nbytes", "kind", "tree_path"}
    proc_all = run_cli("inspect", keras_dir / filename, "--json", "--all")
    assert len(json.loads(proc_all.stdout)["tensors"]) >= len(doc["tensors"])


def test_inspect_table(keras_dir: Path) -> None:
    proc = run_cli("inspect", keras_dir / "k3_zoo.keras")
    assert proc.returncode == 0, proc.stderr
    assert "mha/query/kernel" in proc.stdout and "bfloat16" in proc.stdout
    assert "tensors" in proc.stdout.splitlines()[-2] or "tensors" in proc.stdout.splitlines()[-1]


@pytest.mark.parametrize("filename,label", [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_convert_round_trip(keras_dir: Path, tmp_path: Path, filename: str, label: str) -> None:
    from safetensors import safe_open

    out = tmp_path / "out.safetensors"
    proc = run_cli("convert", keras_dir / filename, out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    expected = load_expected(keras_dir, label)
    with safe_open(out, framework="np") as f:
        meta = f.metadata()
        assert meta["ckptconv.source_format"] == ckptconv.open(keras_dir / filename).format
        assert meta["ckptconv.version"] == ckptconv.__version__
        assert sorted(f.keys()) == sorted(x.name for x in expected)
        for want in expected:
            if want.array.dtype.name == "bfloat16":
                continue  # numpy has no bf16: checked through ckptconv below
            assert_bit_exact(f.get_tensor(want.name), want.array, want.name)
    with ckptconv.open(out) as back:
        for want in expected:
            assert_bit_exact(back[want.name].read(), want.array, want.name)


def test_convert_all_writes_the_training_state(keras_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "all.safetensors"
    proc = run_cli("convert", keras_dir / "tk_zoo.h5", out, "--all", "--quiet")
    assert proc.returncode == 0, proc.stderr
    with ckptconv.open(keras_dir / "tk_zoo.h5") as src, ckptconv.open(out) as back:
        assert list(back) == [e.name for e in src.entries(include_all=True)]


def test_existing_output_is_kept_without_force(keras_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"precious")
    proc = run_cli("convert", keras_dir / "k3_zoo.keras", out)
    assert proc.returncode == 1
    assert out.read_bytes() == b"precious"
    assert str(out) in proc.stderr and "Traceback" not in proc.stderr
    assert run_cli("convert", keras_dir / "k3_zoo.keras", out, "--force", "--quiet").returncode == 0
    assert out.read_bytes() != b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]


def test_detection_ignores_the_extension(keras_dir: Path, tmp_path: Path) -> None:
    for src, fmt in (("k3_zoo.keras", "keras-archive"), ("tk_zoo.h5", "keras-h5"), ("k3_zoo.weights.h5", "keras-weights-h5")):
        renamed = tmp_path / (src.replace(".", "_") + ".bin")
        renamed.write_bytes((keras_dir / src).read_bytes())
        with ckptconv.open(renamed) as store:
            assert store.format == fmt


def test_unknown_file_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(ckptconv.FormatError, match="not a checkpoint"):
        ckptconv.open(junk)
    proc = run_cli("inspect", junk)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and str(junk) in proc.stderr


def test_import_is_light() -> None:
    code = (
        "import sys, ckptconv, ckptconv.cli, ckptconv.convert\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'torch', 'jax',"
        " 'tensorstore', 'orbax', 'dask')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sharded_set_lists_like_the_single_file(keras_dir: Path) -> None:
    with ckptconv.open(keras_dir / "k3_zoo.weights.h5") as single:
        names = [e.name for e in single.entries(include_all=True)]
    for index in ("sharded/k3_zoo.weights.json", "many/k3_zoo.weights.json"):
        with ckptconv.open(keras_dir / index) as sharded:
            assert [e.name for e in sharded.entries(include_all=True)] == names
            assert len(sharded.files) > 2


def test_a_directory_holding_one_sharded_set_opens_as_its_index(keras_dir: Path, tmp_path: Path) -> None:
    """``save_weights(DIR/model.weights.json, max_shard_size=)`` puts a set in a directory: the
    directory opens as the set; a directory of two sets is refused in one line."""
    import shutil

    with ckptconv.open(keras_dir / "sharded" / "k3_zoo.weights.json") as by_index, \
            ckptconv.open(keras_dir / "sharded") as by_directory:
        assert by_directory.format == "keras-sharded"
        assert [e.name for e in by_directory.entries(include_all=True)] == \
            [e.name for e in by_index.entries(include_all=True)]
    two = tmp_path / "two"
    shutil.copytree(keras_dir / "sharded", two)
    shutil.copyfile(two / "k3_zoo.weights.json", two / "other.weights.json")
    with pytest.raises(ckptconv.FormatError):
        ckptconv.open(two)
