"""Damaged inputs of every format fail the same way everywhere.

Every case is made here, from real files (``generators/gen_load.py``: Keras 3, tf-keras and
TensorFlow writers, plus safetensors), by damaging a copy: empty, random bytes, truncated at
several points, structure removed, headers rewritten, bytes flipped. Each case then goes
through ``ckptconv inspect``, ``ckptconv convert`` and ``load_into`` into the live twin model
the files were written from, and must give:

* exit status 1 and exactly one line on stderr, ``ckptconv: error: <file>: ...``, naming the
  damaged file (and the tensor where the case has one), no traceback;
* from the API, the expected :class:`~ckptconv.CkptconvError` subclass with ``.path`` set;
* no output, no temporary file, the model's weights untouched, the input's bytes unchanged.

``inspect`` reads metadata only: damage inside tensor data (a CRC mismatch) must pass it and
be caught by ``convert`` and ``load_into``; everything else fails all three.

The CLI runs in-process here (``ckptconv.cli.main``, stderr captured) to keep the corpus quick;
a sample of cases also runs through the real ``python -m ckptconv`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

import ckptconv
from ckptconv import CkptconvError, CorruptFileError, FormatError, IntegrityError, UnsafeInputError
from ckptconv import UnsupportedError
from ckptconv.cli import main as cli_main
from tests.helpers import run_cli

# --- the sources: real files written by gen_load.py --------------------------------------

# label -> (files to copy, the path a user passes)
SOURCES: dict[str, tuple[tuple[str, ...], str]] = {
    "keras-h5": (("k3legacy.h5",), "k3legacy.h5"),
    "tf-keras-h5": (("tk.h5",), "tk.h5"),
    "weights-h5": (("k3.weights.h5",), "k3.weights.h5"),
    "keras": (("k3.keras",), "k3.keras"),
    "keras-sharded": (
        ("k3sharded.weights.json", *(f"k3sharded_{i:05d}.weights.h5" for i in range(5))),
        "k3sharded.weights.json",
    ),
    "safetensors": (("k3.safetensors",), "k3.safetensors"),
    "tf": (("k3ckpt.index", "k3ckpt.data-00000-of-00001"), "k3ckpt"),
    # written by ckptconv itself (so they carry CRC-32Cs), see the `base` fixture
    "safetensors-crc": (("crc.safetensors",), "crc.safetensors"),
    "safetensors-sharded": ((), "set.safetensors.index.json"),
}


@dataclass(frozen=True)
class Case:
    """One damaged input.

    Attributes:
        path: What the user passes.
        file: The file the message must name.
        error: The CkptconvError subclass the API raises.
        data_only: The damage lies in tensor data: ``inspect`` succeeds.
        key: A tensor the message must name, if any.
    """

    path: Path
    file: Path
    error: type[CkptconvError]
    data_only: bool = False
    key: str | None = None


@pytest.fixture(scope="module")
def base(generated, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real source files in one directory, plus safetensors written by ckptconv."""
    load = generated("load")
    out = tmp_path_factory.mktemp("robust-base")
    for files, _ in SOURCES.values():
        for name in files:
            if (load / name).exists():
                shutil.copyfile(load / name, out / name)
    ckptconv.convert(load / "k3.safetensors", out / "crc.safetensors", fsync=False)
    ckptconv.convert(load / "k3.safetensors", out / "set.safetensors", fsync=False, max_shard_size=1500)
    assert len(list(out.glob("set-*.safetensors"))) >= 3
    return out


def copy_source(base: Path, label: str, into: Path) -> Path:
    """Copy a source's files into ``into``; return the path a user passes."""
    files, entry = SOURCES[label]
    if label == "safetensors-sharded":
        files = tuple(p.name for p in base.glob("set*"))
    for name in files:
        shutil.copyfile(base / name, into / name)
    return into / entry


# --- damage ----------------------------------------------------------------------------------


def truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep >= 0 else len(data) + keep])


def random_bytes(path: Path, size: int = 4096) -> None:
    path.write_bytes(random.Random(size).randbytes(size))


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def st_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def st_write(path: Path, header: dict | bytes, data: bytes) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def st_edit(path: Path, edit: Callable[[dict], None]) -> str:
    """Rewrite a safetensors header; returns the first tensor's name (in data order)."""
    header, data = st_parts(path)
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    edit(header)
    st_write(path, header, data)
    return first


def ordered(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def rezip(path: Path, *, drop: str | None = None, replace: dict[str, bytes] | None = None) -> None:
    """Rewrite a .keras archive: members stored, like Keras writes them."""
    replace = replace or {}
    with zipfile.ZipFile(path) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            if name != drop:
                z.writestr(name, replace.get(name, data))
    path.write_bytes(buffer.getvalue())


def first_weight_dataset(path: Path) -> str:
    """The HDF5 path of the first dataset a legacy file's weight_names lists."""
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for layer in root.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            names = root[layer].attrs.get("weight_names", [])
            if len(names):
                name = names[0].decode() if isinstance(names[0], bytes) else names[0]
                return f"{root.name.rstrip('/')}/{layer}/{name}"
    raise AssertionError("no weights")


def tf_data_offset_of_first_tensor(prefix: Path) -> int:
    """Where a real tensor's bytes start in the data file: the first entry with bytes."""
    with ckptconv.open(prefix) as store:
        for entry in store.entries():
            if entry.byte_range is not None and entry.byte_range.length >= 4:
                return entry.byte_range.offset + entry.byte_range.length // 2
    raise AssertionError("no tensor with a byte range")


# --- the corpus ------------------------------------------------------------------------------

Builder = Callable[[Path, Path], Case]
CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        assert name not in CASES
        CASES[name] = builder
        return builder

    return register


MAIN_FILE = {
    "keras-h5": "k3legacy.h5",
    "tf-keras-h5": "tk.h5",
    "weights-h5": "k3.weights.h5",
    "keras": "k3.keras",
    "keras-sharded": "k3sharded.weights.json",
    "safetensors": "k3.safetensors",
    "tf": "k3ckpt.index",
    "safetensors-crc": "crc.safetensors",
    "safetensors-sharded": "set.safetensors.index.json",
}
# What a file that is no longer recognisable raises: the content decides the format, so an
# empty or random file is a FormatError whatever its name; a known format's damaged metadata
# is a CorruptFileError.
GENERIC = ["keras-h5", "tf-keras-h5", "weights-h5", "keras", "safetensors", "tf", "keras-sharded"]


def _generic(label: str) -> None:
    main = MAIN_FILE[label]

    @case(f"{label}/empty")
    def empty(base: Path, d: Path) -> Case:
        path = copy_source(base, label, d)
        (d / main).write_bytes(b"")
        # an empty .index has no TensorBundle footer: the TF reader says so
        error = CorruptFileError if label == "tf" else FormatError
        return Case(path, d / main, error)

    @case(f"{label}/random-bytes")
    def random_(base: Path, d: Path) -> Case:
        path = copy_source(base, label, d)
        random_bytes(d / main)
        return Case(path, d / main, CorruptFileError if label == "tf" else FormatError)

    for where in ("16", "quarter", "half", "minus-1"):

        @case(f"{label}/truncated-{where}")
        def truncated(base: Path, d: Path, where: str = where) -> Case:
            path = copy_source(base, label, d)
            size = (d / main).stat().st_size
            keep = {"16": 16, "quarter": size // 4, "half": size // 2, "minus-1": -1}[where]
            truncate(d / main, keep)
            return Case(path, d / main, CorruptFileError)  # every format says "truncated" or "damaged"


for _label in GENERIC:
    _generic(_label)


@case("keras-h5/weight-names-point-at-a-missing-dataset")
def _missing_dataset(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras-h5", d)
    dataset = first_weight_dataset(path)
    with h5py.File(path, "a") as f:
        del f[dataset]
    return Case(path, path, CorruptFileError)


@case("tf-keras-h5/weight-names-point-at-a-missing-dataset")
def _missing_dataset_tk(base: Path, d: Path) -> Case:
    path = copy_source(base, "tf-keras-h5", d)
    dataset = first_weight_dataset(path)
    with h5py.File(path, "a") as f:
        del f[dataset]
    return Case(path, path, CorruptFileError)


@case("keras-h5/layer-names-name-a-missing-group")
def _missing_group(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras-h5", d)
    with h5py.File(path, "a") as f:
        del f["model_weights/head"]
    return Case(path, path, CorruptFileError)


@case("keras-h5/weight-name-is-a-group")
def _weight_is_group(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras-h5", d)
    dataset = first_weight_dataset(path)
    with h5py.File(path, "a") as f:
        del f[dataset]
        f.create_group(dataset)
    return Case(path, path, CorruptFileError)


def damage_global_heap(path: Path, record: bytes) -> None:
    """Overwrite the first object record of the file's first global heap collection (where
    libhdf5 keeps variable-length attribute values such as ``layer_names``)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"GCOL")
    assert at > 0 and raw[at + 4] == 1, "no global heap collection"
    raw[at + 16 : at + 32] = record
    path.write_bytes(bytes(raw))


# Found by the fuzzer: libhdf5 1.14 loops forever on a zero-size heap record (a zeroed run in
# a Keras file is enough). An object claiming more bytes than its collection holds is refused
# by the same check (libhdf5 itself reports that one when it reads the attribute).
@case("keras-h5/global-heap-record-zeroed")
def _gcol_zero(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras-h5", d)
    damage_global_heap(path, bytes(16))
    return Case(path, path, CorruptFileError)


@case("weights-h5/global-heap-record-zeroed")
def _gcol_zero_v3(base: Path, d: Path) -> Case:
    path = copy_source(base, "weights-h5", d)
    damage_global_heap(path, bytes(16))
    return Case(path, path, CorruptFileError)


@case("tf-keras-h5/global-heap-object-past-its-collection")
def _gcol_overrun(base: Path, d: Path) -> Case:
    path = copy_source(base, "tf-keras-h5", d)
    record = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + bytes(4) + (2**40).to_bytes(8, "little")
    damage_global_heap(path, record)
    return Case(path, path, CorruptFileError)


@case("tf-keras-h5/attribute-value-claims-2-gib")
def _vlen_length(base: Path, d: Path) -> Case:
    """Found by atheris: a variable-length attribute value (length, heap address, index) whose
    length is damaged makes libhdf5 allocate and zero that many bytes before failing."""
    path = copy_source(base, "tf-keras-h5", d)
    raw = bytearray(path.read_bytes())
    heap = raw.find(b"GCOL")
    end = heap + int.from_bytes(raw[heap + 8 : heap + 16], "little")
    objects, at = {}, heap + 16  # the collection's objects: index -> size
    while at + 16 <= end:
        index, size = int.from_bytes(raw[at : at + 2], "little"), int.from_bytes(raw[at + 8 : at + 16], "little")
        if index == 0:
            break
        objects[index] = size
        at += 16 + (size + 7) // 8 * 8
    # a value as an attribute stores it: (length, heap address, object index)
    values = (size.to_bytes(4, "little") + heap.to_bytes(8, "little") + index.to_bytes(4, "little")
              for index, size in objects.items())
    at = min(p for p in (raw.find(v, end) for v in values) if p > 0)
    raw[at : at + 4] = (2**31 - 1).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    return Case(path, path, CorruptFileError)


@case("weights-h5/variable-key-not-an-index")
def _bad_var_key(base: Path, d: Path) -> Case:
    path = copy_source(base, "weights-h5", d)
    with h5py.File(path, "a") as f:
        f.move("layers/dense/vars/0", "layers/dense/vars/kernel")
    return Case(path, path, CorruptFileError)


@case("weights-h5/vars-is-a-dataset")
def _vars_dataset(base: Path, d: Path) -> Case:
    path = copy_source(base, "weights-h5", d)
    with h5py.File(path, "a") as f:
        del f["layers/dense/vars"]
        f["layers/dense/vars"] = np.zeros(3, np.float32)
    return Case(path, path, CorruptFileError)


@case("keras/without-weights")
def _no_weights(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras", d)
    rezip(path, drop="model.weights.h5")
    return Case(path, path, CorruptFileError)


@case("keras/config-not-json")
def _config_not_json(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras", d)
    rezip(path, replace={"config.json": b'{"class_name": "Functional", "config": {'})
    return Case(path, path, CorruptFileError)


@case("keras/weights-member-truncated")
def _member_truncated(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras", d)
    with zipfile.ZipFile(path) as z:
        weights = z.read("model.weights.h5")
    rezip(path, replace={"model.weights.h5": weights[: len(weights) // 2]})
    return Case(path, path, CorruptFileError)


@case("keras/weights-member-not-hdf5")
def _member_garbage(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras", d)
    rezip(path, replace={"model.weights.h5": random.Random(1).randbytes(5000)})
    return Case(path, path, CorruptFileError)


@case("keras/central-directory-damaged")
def _central_directory(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras", d)
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"PK\x01\x02")  # the last central directory record
    raw[at : at + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    return Case(path, path, CorruptFileError)


@case("keras/zip-version-needed-damaged")
def _zip_version(base: Path, d: Path) -> Case:
    """Found by atheris: zipfile raises NotImplementedError for a version it does not know."""
    path = copy_source(base, "keras", d)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")  # the first central directory record
    raw[at + 6 : at + 8] = (236).to_bytes(2, "little")  # "version needed to extract": 23.6
    path.write_bytes(bytes(raw))
    return Case(path, path, CorruptFileError)


@case("keras-sharded/index-names-a-missing-shard")
def _missing_shard(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras-sharded", d)
    (d / "k3sharded_00002.weights.h5").unlink()
    return Case(path, path, CorruptFileError, key=None)


@case("keras-sharded/shard-replaced-by-random-bytes")
def _shard_garbage(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras-sharded", d)
    random_bytes(d / "k3sharded_00001.weights.h5")
    return Case(path, d / "k3sharded_00001.weights.h5", CorruptFileError)


@case("keras-sharded/shard-truncated")
def _shard_truncated(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras-sharded", d)
    truncate(d / "k3sharded_00003.weights.h5", -100)
    return Case(path, d / "k3sharded_00003.weights.h5", CorruptFileError)


@case("keras-sharded/index-weight-map-not-an-object")
def _index_no_map(base: Path, d: Path) -> Case:
    path = copy_source(base, "keras-sharded", d)
    path.write_text(json.dumps({"metadata": {}, "weight_map": ["k3sharded_00000.weights.h5"]}))
    return Case(path, path, FormatError)


# safetensors: every header check
@case("safetensors/header-length-beyond-the-file")
def _st_header_length(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    raw = bytearray(path.read_bytes())
    raw[:8] = (len(raw) + 100).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    return Case(path, path, CorruptFileError)


@case("safetensors/header-length-above-the-format-limit")
def _st_header_huge(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    raw = bytearray(path.read_bytes())
    raw[:8] = (2**62).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    return Case(path, path, CorruptFileError)  # a .safetensors file whose length is damaged


@case("safetensors/header-not-json")
def _st_not_json(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    header, data = st_parts(path)
    st_write(path, b"{" + json.dumps(header).encode()[1:-1] + b",,}", data)
    return Case(path, path, CorruptFileError)


@case("safetensors/header-not-an-object")
def _st_not_object(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    _, data = st_parts(path)
    st_write(path, b'{"x": [1, 2]}', data)
    return Case(path, path, CorruptFileError, key="x")


@case("safetensors/overlapping-offsets")
def _st_overlap(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    names: list[str] = []

    def edit(header: dict) -> None:
        names.extend(ordered(header))
        a, b = header[names[0]], header[names[1]]
        # the second tensor starts 4 bytes early (its end moves too: sizes still agree)
        b["data_offsets"] = [b["data_offsets"][0] - 4, b["data_offsets"][1] - 4]
        assert a["data_offsets"][1] > b["data_offsets"][0]

    st_edit(path, edit)
    return Case(path, path, CorruptFileError, key=names[1])


@case("safetensors/offsets-beyond-the-file")
def _st_beyond(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    names: list[str] = []

    def edit(header: dict) -> None:
        names.extend(ordered(header))
        last = header[names[-1]]
        size = last["data_offsets"][1] - last["data_offsets"][0]
        last["data_offsets"] = [last["data_offsets"][0], last["data_offsets"][1] + 4096]
        last["shape"] = [(size + 4096) // 4]
        last["dtype"] = "F32"

    st_edit(path, edit)
    return Case(path, path, CorruptFileError, key=names[-1])


@case("safetensors/hole-between-tensors")
def _st_hole(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    names: list[str] = []

    def edit(header: dict) -> None:
        names.extend(ordered(header))
        del header[names[1]]

    st_edit(path, edit)
    return Case(path, path, CorruptFileError, key=names[2])


@case("safetensors/unknown-dtype")
def _st_dtype(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    names: list[str] = []

    def edit(header: dict) -> None:
        names.extend(ordered(header))
        header[names[0]]["dtype"] = "F4_E9M9"

    st_edit(path, edit)
    return Case(path, path, UnsupportedError, key=names[0])


@case("safetensors/shape-disagrees-with-offsets")
def _st_shape(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    names: list[str] = []

    def edit(header: dict) -> None:
        names.extend(ordered(header))
        header[names[0]]["shape"] = [3, 1000]

    st_edit(path, edit)
    return Case(path, path, CorruptFileError, key=names[0])


@case("safetensors/negative-dimension")
def _st_negative(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)
    names: list[str] = []

    def edit(header: dict) -> None:
        names.extend(ordered(header))
        header[names[0]]["shape"] = [-1]

    st_edit(path, edit)
    return Case(path, path, CorruptFileError, key=names[0])


@case("safetensors/metadata-not-strings")
def _st_metadata(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors", d)

    def edit(header: dict) -> None:
        header["__metadata__"] = {"format": {"nested": 1}}

    st_edit(path, edit)
    return Case(path, path, CorruptFileError)


@case("safetensors/wrong-extension-random-bytes")
def _st_wrong_ext(base: Path, d: Path) -> Case:
    path = d / "model.safetensors"
    path.write_bytes(b"\x00" * 7 + b"not a header at all" * 40)
    return Case(path, path, FormatError)


# data-only damage: inspect passes, convert and load_into catch it
@case("safetensors-crc/flipped-byte-in-tensor-data")
def _st_crc(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors-crc", d)
    header, _ = st_parts(path)
    name = ordered(header)[0]
    n = int.from_bytes(path.read_bytes()[:8], "little")
    flip(path, 8 + n + header[name]["data_offsets"][0] + 1)
    return Case(path, path, IntegrityError, data_only=True, key=name)


@case("safetensors-crc/checksum-table-damaged")
def _st_crc_table(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors-crc", d)

    def edit(header: dict) -> None:
        header["__metadata__"]["ckptconv.crc32c"] = "{not json"

    st_edit(path, edit)
    return Case(path, path, CorruptFileError)


@case("safetensors-sharded/index-names-a-missing-shard")
def _sts_missing(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors-sharded", d)
    sorted(d.glob("set-*.safetensors"))[1].unlink()
    return Case(path, path, CorruptFileError)


@case("safetensors-sharded/index-not-json")
def _sts_not_json(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors-sharded", d)
    path.write_text(path.read_text()[:-20])
    return Case(path, path, CorruptFileError)


@case("safetensors-sharded/index-maps-a-tensor-to-the-wrong-shard")
def _sts_wrong(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors-sharded", d)
    index = json.loads(path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][name] = shards[1]
    path.write_text(json.dumps(index))
    return Case(path, d / shards[0], CorruptFileError, key=name)  # the shard that holds it


@case("safetensors-sharded/shard-truncated")
def _sts_truncated(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors-sharded", d)
    shard = sorted(d.glob("set-*.safetensors"))[-1]
    truncate(shard, -3)
    return Case(path, shard, CorruptFileError)


@case("safetensors-sharded/flipped-byte-in-a-shard")
def _sts_flip(base: Path, d: Path) -> Case:
    path = copy_source(base, "safetensors-sharded", d)
    shard = sorted(d.glob("set-*.safetensors"))[0]
    flip(shard, shard.stat().st_size - 2)
    return Case(path, shard, IntegrityError, data_only=True)


# TensorFlow checkpoints
@case("tf/flipped-byte-in-the-index")
def _tf_index(base: Path, d: Path) -> Case:
    path = copy_source(base, "tf", d)
    flip(d / "k3ckpt.index", 20)
    return Case(path, d / "k3ckpt.index", CorruptFileError)


@case("tf/flipped-byte-in-the-index-footer")
def _tf_footer(base: Path, d: Path) -> Case:
    path = copy_source(base, "tf", d)
    flip(d / "k3ckpt.index", (d / "k3ckpt.index").stat().st_size - 3)
    return Case(path, d / "k3ckpt.index", CorruptFileError)


@case("tf/flipped-byte-in-tensor-data")
def _tf_data(base: Path, d: Path) -> Case:
    path = copy_source(base, "tf", d)
    flip(d / "k3ckpt.data-00000-of-00001", tf_data_offset_of_first_tensor(path))
    return Case(path, d / "k3ckpt.data-00000-of-00001", IntegrityError, data_only=True)


@case("tf/missing-data-file")
def _tf_missing(base: Path, d: Path) -> Case:
    path = copy_source(base, "tf", d)
    (d / "k3ckpt.data-00000-of-00001").unlink()
    return Case(path, d / "k3ckpt.data-00000-of-00001", CorruptFileError)


@case("tf/data-file-truncated")
def _tf_data_truncated(base: Path, d: Path) -> Case:
    path = copy_source(base, "tf", d)
    truncate(d / "k3ckpt.data-00000-of-00001", -8)
    return Case(path, d / "k3ckpt.data-00000-of-00001", CorruptFileError)


@case("tf/missing-index")
def _tf_no_index(base: Path, d: Path) -> Case:
    path = copy_source(base, "tf", d)
    (d / "k3ckpt.index").unlink()
    return Case(path, d / "k3ckpt", CorruptFileError)


# --- running a case --------------------------------------------------------------------------


def hashes(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    status = cli_main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_error_line(stderr: str, case: Case) -> str:
    """Exactly one line, the CLI's error prefix, the file (and tensor) named, no traceback."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("ckptconv: error: "), line
    assert "Traceback" not in stderr and "internal error" not in line
    assert str(case.file) in line, f"{case.file} not named in: {line}"
    if case.key is not None:
        assert case.key in line, f"tensor {case.key!r} not named in: {line}"
    return line


def make(name: str, base: Path, tmp_path: Path) -> tuple[Case, Path, Path]:
    inputs = tmp_path / "in"
    out = tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    return CASES[name](base, inputs), inputs, out


def check_cli(case: Case, capsys: pytest.CaptureFixture[str], inputs: Path, out: Path) -> None:
    before = hashes(inputs)
    status, stdout, stderr = cli(capsys, "inspect", case.path)
    if case.data_only:
        assert status == 0, stderr
    else:
        assert status == 1, (stdout, stderr)
        assert_error_line(stderr, case)
    status, stdout, stderr = cli(capsys, "convert", case.path, out / "model.safetensors")
    assert status == 1, (stdout, stderr)
    assert_error_line(stderr, case)
    assert os.listdir(out) == []
    assert hashes(inputs) == before


def check_api(case: Case, model, inputs: Path) -> None:  # type: ignore[no-untyped-def]
    before = hashes(inputs)
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(CkptconvError) as info:
        ckptconv.load_into(model, case.path)
    error = info.value
    assert isinstance(error, case.error), repr(error)
    assert "\n" not in str(error)
    assert error.path is not None and str(case.file) in str(error)
    after = model.get_weights()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(weights, after)), "the model changed"
    assert hashes(inputs) == before


@pytest.fixture(scope="module")
def twin():  # type: ignore[no-untyped-def]
    """The live model the sources were written from (gen_load's architecture)."""
    keras = pytest.importorskip("keras")
    from tests.generators.gen_load import build_keras3

    keras.backend.clear_session()
    return build_keras3(keras)


def test_every_source_is_sound(base: Path, twin, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The control: undamaged copies inspect, convert and load; the corpus damages these."""
    for label in SOURCES:
        d = tmp_path / label
        d.mkdir()
        path = copy_source(base, label, d)
        assert cli(capsys, "inspect", path)[0] == 0
        status, _, stderr = cli(capsys, "convert", path, tmp_path / f"{label}.safetensors")
        assert status == 0, stderr
        report = ckptconv.load_into(twin, path)
        assert report.applied and not report.problems


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_input(name: str, base: Path, twin, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    case, inputs, out = make(name, base, tmp_path)
    check_cli(case, capsys, inputs, out)
    check_api(case, twin, inputs)


SUBPROCESS_SAMPLE = [
    "keras-h5/truncated-half",
    "keras/without-weights",
    "safetensors/overlapping-offsets",
    "safetensors-crc/flipped-byte-in-tensor-data",
    "tf/flipped-byte-in-tensor-data",
    "keras-sharded/index-names-a-missing-shard",
]


@pytest.mark.parametrize("name", SUBPROCESS_SAMPLE)
def test_damaged_input_through_the_real_cli(name: str, base: Path, tmp_path: Path) -> None:
    """The same contract from a real process: status, one stderr line, no traceback."""
    case, inputs, out = make(name, base, tmp_path)
    before = hashes(inputs)
    proc = run_cli("convert", case.path, out / "model.safetensors")
    assert proc.returncode == 1, proc.stderr
    assert_error_line(proc.stderr, case)
    assert proc.stdout == ""
    assert os.listdir(out) == []
    proc = run_cli("--debug", "convert", case.path, out / "model.safetensors")
    assert proc.returncode == 1 and "Traceback" in proc.stderr  # --debug shows it
    assert os.listdir(out) == []
    assert hashes(inputs) == before


BATCH_SAMPLE = [
    "keras-h5/truncated-half",
    "keras/without-weights",
    "weights-h5/global-heap-record-zeroed",
    "safetensors/overlapping-offsets",
    "safetensors-crc/flipped-byte-in-tensor-data",
    "tf/flipped-byte-in-tensor-data",
    "keras-sharded/index-names-a-missing-shard",
]


def test_batch_reports_each_damaged_file_and_goes_on(base: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A batch over good and damaged inputs converts the good ones, reports each damaged one
    on its own line naming it, leaves no output or temporary file for them, exits 1."""
    inputs: list[Path] = []
    damaged: dict[str, Case] = {}
    for i, name in enumerate(BATCH_SAMPLE):
        d = tmp_path / f"bad{i}"
        d.mkdir()
        damaged[name] = CASES[name](base, d)
        inputs.append(damaged[name].path)
    for label in ("keras", "safetensors", "tf"):
        d = tmp_path / f"good-{label}"
        d.mkdir()
        inputs.append(copy_source(base, label, d))
    out = tmp_path / "out"
    status = cli_main(["batch", *map(str, inputs), "-o", str(out), "--name-pattern", "{parent}.safetensors"])
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert status == 1
    for name, case in damaged.items():
        failed = [line for line in captured.err.splitlines() if line.startswith(f"ckptconv: error: {case.path}: ")]
        assert len(failed) == 1, (name, lines)
        assert str(case.file.name) in failed[0] and "Traceback" not in failed[0]
    assert sorted(os.listdir(out)) == ["good-keras.safetensors", "good-safetensors.safetensors", "good-tf.safetensors"]
    assert any(line.startswith(f"{len(inputs)} files: 3 converted, {len(damaged)} failed") for line in lines), lines
