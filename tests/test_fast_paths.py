"""The fast paths give the bytes the plain read path gives (issue 6).

``ckptconv.convert`` reads Keras tensors through their file byte ranges (one ``pread``, or a
file-to-file copy when a tensor passes through unchanged) and TF checkpoint tensors straight
from the data file. Here every output of a real conversion -- unchanged, cast to bfloat16 and
transposed -- is compared bit for bit with the same tensor read the plain way: h5py on the
dataset (for a ``.keras`` archive, h5py on the member extracted by ``zipfile``), or the values
TensorFlow's own reader gave (the generator's records), then put through numpy's transpose or
ckptconv's cast.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest

import ckptconv
from ckptconv.dtypes import by_name
from ckptconv.mapping.cast import cast_array

from .helpers import assert_bit_exact, load_expected

TRANSPOSE_SPEC = {
    "version": 1,
    "rules": [{"from": "re:(.*)/kernel", "to": "{1}/kernel", "ops": ["transpose"]}],
}

_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, parsed here (independent of ckptconv's reader)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    header.pop("__metadata__", None)
    base = 8 + size
    out = {}
    for name, item in header.items():
        begin, end = item["data_offsets"]
        dtype = by_name(_ST_DTYPES[item["dtype"]])
        out[name] = np.frombuffer(raw[base + begin : base + end], dtype=dtype).reshape(item["shape"])
    return out


def h5py_plain(h5: h5py.File, key: str) -> np.ndarray:
    """The dataset read by h5py, the way Keras' bfloat16 (2-byte opaque) data is meant."""
    array = np.asarray(h5[key][()])
    if array.dtype.kind == "V":
        array = array.view(ml_dtypes.bfloat16)
    return array


def expected(plain: np.ndarray, got: np.ndarray, *, transposed: bool) -> np.ndarray:
    """``plain`` put through what the conversion did: a transpose, a cast to the output dtype."""
    if transposed:
        plain = np.ascontiguousarray(plain.T)
    if plain.dtype != got.dtype:
        plain = cast_array(plain, got.dtype)
    return plain


CASES = [
    ("default", {}),
    ("bfloat16", {"dtype": "bfloat16"}),
    ("transpose", {"mapping": TRANSPOSE_SPEC}),
]


def _convert(src: Path, tmp_path: Path, label: str, options: dict) -> dict[str, np.ndarray]:
    dst = tmp_path / f"{label}.safetensors"
    ckptconv.convert(src, dst, **options)
    return read_safetensors(dst)


def _keys(src: Path) -> dict[str, str]:
    """Entry names -> HDF5 keys; checks the file does take the byte-range fast path."""
    with ckptconv.open(src) as store:
        entries = store.entries()
        assert any(e.byte_range is not None for e in entries), f"{src.name}: no byte ranges"
        return {e.name: e.key for e in entries}


@pytest.mark.parametrize("label, options", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("filename", ["k3_zoo.weights.h5", "tk_zoo.h5", "k3_zoo.keras"])
def test_keras_files_fast_path_equals_h5py(generated, tmp_path, filename, label, options):
    src = generated("keras") / filename
    keys = _keys(src)
    got = _convert(src, tmp_path, label, options)
    assert set(got) == set(keys)
    if filename.endswith(".keras"):
        with zipfile.ZipFile(src) as archive:
            image = io.BytesIO(archive.read("model.weights.h5"))
        h5 = h5py.File(image, "r")
    else:
        h5 = h5py.File(src, "r")
    with h5:
        casts = 0
        for name, array in got.items():
            transposed = label == "transpose" and name.endswith("/kernel")
            plain = h5py_plain(h5, keys[name])
            if plain.dtype != array.dtype:
                casts += 1
            assert_bit_exact(array, expected(plain, array, transposed=transposed), f"{filename}: {name}")
    if label == "bfloat16":
        assert casts > 0, "the bfloat16 conversion cast nothing"


@pytest.mark.parametrize("label, options", CASES, ids=[c[0] for c in CASES])
def test_tf_checkpoint_fast_path_equals_tensorflow(generated, tmp_path, label, options):
    directory = generated("tf")
    case = json.loads((directory / "tfkeras.case.json").read_text())
    src = directory / case["path"] if not Path(case["path"]).is_absolute() else Path(case["path"])
    records = {r.name: r for r in load_expected(directory, "tfkeras") if r.kind == "weight"}
    with ckptconv.open(src) as store:
        assert all(e.byte_range is not None for e in store.entries()), "TF entries lack byte ranges"
    got = _convert(src, tmp_path, label, options)
    assert got, "nothing converted"
    for name, array in got.items():
        assert name in records, f"{name} is not a weight TensorFlow reports"
        transposed = label == "transpose" and name.endswith("/kernel")
        plain = records[name].array
        assert_bit_exact(array, expected(plain, array, transposed=transposed), f"tf: {name}")
