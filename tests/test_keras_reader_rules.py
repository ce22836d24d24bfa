"""The small rules the Keras readers apply once per layer or per tensor, each against the
general form it stands for: the creation-order sort key, the missing-variable check, the
float-layer answer of the quantized naming, the zip member window libhdf5 reads through,
and the legacy reader's HDF5 path joining."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptconv
from ckptconv.errors import CorruptFileError
from ckptconv.formats import _keras_quantized as q
from ckptconv.formats import keras_archive, keras_legacy, keras_weights


def regex_natural_key(name: str) -> tuple:
    """The creation-order key as first written, with a regex (names without newlines)."""
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    assert m is not None
    return (keras_weights._CREATION_ORDER.get(name, -1), m.group(1), int(m.group(2) or 0), name)


NAME_PARTS = st.lists(st.sampled_from(["dense", "_", "1", "0", "10", "²", "٣", "x", "key_dense"]), max_size=6)


@settings(max_examples=400, deadline=None)
@given(NAME_PARTS)
def test_natural_key_is_the_regex_rule(parts: list[str]) -> None:
    name = "".join(parts)
    assert keras_weights._natural_key(name) == regex_natural_key(name)


def test_natural_key_sorts_in_creation_order() -> None:
    names = ["dense_10", "dense_2", "dense", "dense_1", "value_dense", "query_dense", "dense_1_2"]
    assert sorted(names, key=keras_weights._natural_key) == [
        "dense", "dense_1", "dense_2", "dense_10", "dense_1_2", "query_dense", "value_dense",
    ]


@pytest.fixture(scope="module")
def keras_dir(generated) -> Path:
    return generated("keras")


@pytest.mark.parametrize("drop,missing", [("0", "[0]"), ("1", "[1]")])
def test_a_missing_variable_is_named(keras_dir: Path, tmp_path: Path, drop: str, missing: str) -> None:
    """A vars group whose indices have a gap (or lack their first) is refused, naming it."""
    path = tmp_path / "gap.weights.h5"
    shutil.copy(keras_dir / "k3_zoo.weights.h5", path)
    with h5py.File(path, "a") as f:
        group = f["layers/batch_normalization/vars"]  # four variables: 0..3
        del group[drop]
    with pytest.raises(CorruptFileError, match=re.escape(
        f"variables {missing} of /layers/batch_normalization/vars are missing"
    )):
        ckptconv.open(path)


F32, BF16, I8 = np.dtype("float32"), np.dtype("float16"), np.dtype("int8")
STORED = [
    [(F32, (4, 3)), (F32, (3,))],
    [(F32, (4, 3))],
    [(BF16, (4, 3)), (BF16, (3,))],
    [(F32, (20, 8)), (F32, (8, 20))],
    [(I8, (4, 3)), (F32, (3,)), (F32, (3,))],
    [(F32, (4, 3)), (F32, (3,)), (F32, ()), (F32, (16,)), (F32, ()), (F32, (16,)), (F32, ()), (F32, (16,))],
]
POLICIES = [
    {"class_name": "DTypePolicy", "config": {"name": "float32"}},
    {"class_name": "DTypePolicy", "config": {"name": "mixed_bfloat16"}},
    "float32",
    None,
    {"class_name": "QuantizedFloat8DTypePolicy", "config": {"name": "float8_from_float32", "mode": "float8"}},
    {"class_name": "QuantizedDTypePolicy", "config": {"name": "int8_from_float32", "mode": "int8"}},
]


@pytest.mark.parametrize("cls", ["dense", "einsum_dense", "embedding", "reversible_embedding"])
def test_names_of_float_layers_are_the_full_reading(cls: str) -> None:
    """Whatever shortcut a float config takes, the answer is what the full reading of every
    mode the config allows gives (layers of one class and shape, float or quantized, apart)."""
    table = q.QUANTIZED_VARIABLES[cls]
    for stored in STORED:
        for policy in POLICIES:
            for use_bias in (True, False):
                config = {"dtype": policy, "use_bias": use_bias, "tie_weights": False}
                mode = q.quantization_mode(config)
                known = q._options_in_config(cls, mode, config)
                full = q._names(cls, table, stored, mode, known)
                q._NAMES.clear()
                got = q.quantized_names(cls, stored, config)
                assert got == (None if full is None else list(full)), (cls, stored, policy, use_bias)


def test_window_reads_like_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zip member view libhdf5 reads: every seek form and short reads at its end, with
    and without os.preadv."""
    data = bytes(range(256)) * 40
    path = tmp_path / "blob"
    path.write_bytes(data)
    start, length = 1000, 5000
    member = data[start : start + length]
    for preadv in (True, False):
        monkeypatch.setattr(keras_archive, "_PREADV", preadv and hasattr(__import__("os"), "preadv"))
        window = keras_archive._Window(str(path), start, length)
        try:
            reference = io.BytesIO(member)
            for pos, whence, size in [(0, 0, 64), (10, 1, 100), (-50, 2, 64), (-5, 1, 3), (4990, 0, 64),
                                      (0, 2, 8), (7, 1, 8), (-100, 0, 8), (123, 0, 0)]:
                assert window.seek(pos, whence) == reference.seek(max(0, {0: 0, 1: reference.tell(),
                                                                           2: length}[whence] + pos))
                buffer, expected = bytearray(size), bytearray(size)
                assert window.readinto(buffer) == reference.readinto(expected)
                assert buffer == expected and window.tell() == reference.tell()
        finally:
            window.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["", "/", "a", "b:0", "//", "model_weights"]), max_size=4),
       st.lists(st.sampled_from(["", "/", "kernel:0", "dense", "//"]), max_size=4))
def test_legacy_join_is_the_general_rule(group: list[str], name: list[str]) -> None:
    g, n = "".join(group), "".join(name)
    assert keras_legacy._join(g, n) == "/" + "/".join(p for p in f"{g}/{n}".split("/") if p)
