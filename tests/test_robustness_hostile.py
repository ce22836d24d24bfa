"""Hostile inputs are refused (or safely ignored), never followed, executed or extracted.

Made from real files (``generators/gen_load.py``) by adding what an attacker would: HDF5
external and soft links, external and virtual datasets, declared sizes far beyond the file,
zip members with ``..`` or absolute names, zip bombs, shard indexes pointing outside their
directory, a Lambda layer whose bytecode would write a marker file if it ever ran, and deep
nesting. Each goes through ``inspect``, ``convert`` and ``load_into`` like the damaged corpus
(:mod:`tests.test_robustness_corpus`): one line naming the file, nothing written, the input
unchanged, the model untouched; hostile structure fails ``inspect`` too.
"""

from __future__ import annotations

import base64
import io
import json
import marshal
import os
import shutil
import types
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import ckptconv
from ckptconv import CorruptFileError, UnsafeInputError
from tests.helpers import run_cli
from tests.test_robustness_corpus import (  # noqa: F401 - fixtures
    Case,
    base,
    check_api,
    check_cli,
    copy_source,
    first_weight_dataset,
    hashes,
    twin,
)

Builder = Callable[[Path, Path], tuple[Case, str]]
HOSTILE: dict[str, Builder] = {}


def hostile(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        HOSTILE[name] = builder
        return builder

    return register


def weights_dataset(path: Path) -> str:
    """A var dataset of a Keras 3 .weights.h5 (the first Dense kernel)."""
    return "layers/dense/vars/0"


def replace_dataset(path: Path, dataset: str, make: Callable[[h5py.File, str, h5py.Dataset], None]) -> None:
    with h5py.File(path, "a") as f:
        old = f[dataset]
        info = (old.shape, old.dtype, old[()])
        del f[dataset]
        make(f, dataset, info)  # type: ignore[arg-type]


def legacy(base: Path, d: Path) -> tuple[Path, str]:
    path = copy_source(base, "keras-h5", d)
    return path, first_weight_dataset(path)


def v3(base: Path, d: Path) -> tuple[Path, str]:
    path = copy_source(base, "weights-h5", d)
    return path, weights_dataset(path)


for _kind, _open in (("keras-h5", legacy), ("weights-h5", v3)):

    @hostile(f"{_kind}/external-link")
    def _external_link(base: Path, d: Path, _open=_open) -> tuple[Case, str]:
        path, dataset = _open(base, d)
        other = d / "other.h5"
        with h5py.File(other, "w") as f:
            f["data"] = np.ones(3, np.float32)

        def make(f, name, info):  # type: ignore[no-untyped-def]
            f[name] = h5py.ExternalLink(str(other), "/data")

        replace_dataset(path, dataset, make)
        return Case(path, path, UnsafeInputError), "refusing .*link"

    @hostile(f"{_kind}/soft-link-out-of-the-weights-tree")
    def _soft_link(base: Path, d: Path, _open=_open) -> tuple[Case, str]:
        path, dataset = _open(base, d)

        def make(f, name, info):  # type: ignore[no-untyped-def]
            f["/elsewhere"] = info[2]
            f[name] = h5py.SoftLink("/elsewhere")

        replace_dataset(path, dataset, make)
        return Case(path, path, UnsafeInputError), "refusing .*link"

    @hostile(f"{_kind}/external-dataset")
    def _external_dataset(base: Path, d: Path, _open=_open) -> tuple[Case, str]:
        path, dataset = _open(base, d)
        raw = d / "outside.bin"

        def make(f, name, info):  # type: ignore[no-untyped-def]
            shape, dtype, value = info
            raw.write_bytes(np.ascontiguousarray(value).tobytes())
            f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(raw), 0, raw.stat().st_size)])

        replace_dataset(path, dataset, make)
        return Case(path, path, UnsafeInputError), "external files"

    @hostile(f"{_kind}/virtual-dataset")
    def _virtual(base: Path, d: Path, _open=_open) -> tuple[Case, str]:
        path, dataset = _open(base, d)
        other = d / "source.h5"

        def make(f, name, info):  # type: ignore[no-untyped-def]
            shape, dtype, value = info
            with h5py.File(other, "w") as g:
                g["data"] = value
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource(str(other), "data", shape=shape)
            f.create_virtual_dataset(name, layout)

        replace_dataset(path, dataset, make)
        return Case(path, path, UnsafeInputError), "virtual dataset"

    @hostile(f"{_kind}/declared-size-far-beyond-the-file")
    def _huge(base: Path, d: Path, _open=_open) -> tuple[Case, str]:
        path, dataset = _open(base, d)

        def make(f, name, info):  # type: ignore[no-untyped-def]
            f.create_dataset(name, shape=(2**20, 2**20), dtype=np.float32)  # 4 TiB, never stored

        replace_dataset(path, dataset, make)
        return Case(path, path, UnsafeInputError), "far beyond the file"

    @hostile(f"{_kind}/huge-chunked-dataset-never-written")
    def _huge_chunked(base: Path, d: Path, _open=_open) -> tuple[Case, str]:
        path, dataset = _open(base, d)

        def make(f, name, info):  # type: ignore[no-untyped-def]
            f.create_dataset(name, shape=(2**40,), dtype=np.float32, chunks=(2**16,))

        replace_dataset(path, dataset, make)
        return Case(path, path, CorruptFileError), "never written"


@hostile("keras-h5/attribute-declares-2**40-values")
def _attribute_dims(base: Path, d: Path) -> tuple[Case, str]:
    """weight_names' dataspace (and its maximum) rewritten to 2**40 elements: refused before
    anything is allocated for them."""
    path = copy_source(base, "keras-h5", d)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"weight_names\0")
    start = at - 8  # the (version 1) attribute message: sizes of name, datatype, dataspace
    assert raw[start] == 1
    name_size, type_size = (int.from_bytes(raw[start + i : start + i + 2], "little") for i in (2, 4))
    space = at + (name_size + 7) // 8 * 8 + (type_size + 7) // 8 * 8
    assert raw[space] == 1 and raw[space + 1] == 1  # a version 1 dataspace of rank 1
    raw[space + 8 : space + 16] = (2**40).to_bytes(8, "little")
    if raw[space + 2] & 1:  # the maximum dimension follows
        raw[space + 16 : space + 24] = (2**40).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    return Case(path, path, CorruptFileError), "damaged"


@hostile("weights-h5/groups-nested-200-deep")
def _deep_groups(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "weights-h5", d)
    with h5py.File(path, "a") as f:
        f.create_group("layers/deep/" + "/".join(f"g{i}" for i in range(200)))
    return Case(path, path, UnsafeInputError), "nested too deeply"


@hostile("weights-h5/hard-link-cycle")
def _cycle(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "weights-h5", d)
    with h5py.File(path, "a") as f:
        loop = f.create_group("layers/loop")
        loop["a"] = loop  # hard links back to itself, twice: a naive walk never ends
        loop["b"] = loop
    return Case(path, path, UnsafeInputError), "nested too deeply"


@hostile("keras-h5/weight-name-200-groups-deep")
def _deep_weight_name(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "keras-h5", d)
    deep = "/".join(f"g{i}" for i in range(200))
    with h5py.File(path, "a") as f:
        group = f["model_weights/head"]
        group.create_dataset(f"{deep}/kernel", data=np.zeros(2, np.float32))
        group.attrs["weight_names"] = [f"{deep}/kernel".encode()]
    return Case(path, path, UnsafeInputError), "nested too deeply"


# --- zip archives ----------------------------------------------------------------------------


def add_members(path: Path, members: dict[str, bytes], *, compress: dict[str, int] | None = None) -> None:
    """Rewrite a .keras archive adding (or replacing) members, exactly under the given names."""
    compress = compress or {}
    with zipfile.ZipFile(path) as z:
        old = [(info.filename, z.read(info)) for info in z.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in old:
            if name not in members:
                z.writestr(zipfile.ZipInfo(name), data, compress_type=compress.get(name, zipfile.ZIP_STORED))
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name), data, compress_type=compress.get(name, zipfile.ZIP_STORED))
    path.write_bytes(buffer.getvalue())


@hostile("keras/config-json-zip-bomb")
def _config_bomb(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "keras", d)
    with zipfile.ZipFile(path) as z:
        config = z.read("config.json")
    bomb = config[:-1] + b', "padding": "' + b" " * (64 << 20) + b'"}'
    add_members(path, {"config.json": bomb}, compress={"config.json": zipfile.ZIP_DEFLATED})
    return Case(path, path, UnsafeInputError), "zip bomb"


@hostile("keras/weights-member-zip-bomb")
def _weights_bomb(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "keras", d)
    with zipfile.ZipFile(path) as z:
        weights = z.read("model.weights.h5")
    add_members(
        path,
        {"model.weights.h5": weights + bytes(64 << 20)},  # HDF5 ignores bytes past its end
        compress={"model.weights.h5": zipfile.ZIP_DEFLATED},
    )
    return Case(path, path, UnsafeInputError), "zip bomb"


@hostile("keras/config-json-nested-100000-deep")
def _deep_json(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "keras", d)
    add_members(path, {"config.json": b"[" * 100_000 + b"]" * 100_000})
    return Case(path, path, CorruptFileError), "config.json is not valid JSON"


@hostile("keras/config-json-nested-500-deep")
def _deep_json_parsable(base: Path, d: Path) -> tuple[Case, str]:
    """Deep enough to trip the config walk's limit, shallow enough for the JSON parser."""
    path = copy_source(base, "keras", d)
    add_members(path, {"config.json": b'{"config": ' + b"[" * 500 + b"]" * 500 + b"}"})
    return Case(path, path, UnsafeInputError), "nested too deeply"


# --- shard indexes ---------------------------------------------------------------------------


def _point_keras_index(base: Path, d: Path, target: Callable[[Path], str]) -> Path:
    inner = d / "set"
    inner.mkdir()
    path = copy_source(base, "keras-sharded", inner)
    index = json.loads(path.read_text())
    for group, files in index["weight_map"].items():
        names = [files] if isinstance(files, str) else files
        if "k3sharded_00000.weights.h5" in names:
            index["weight_map"][group] = [target(inner)]
    path.write_text(json.dumps(index))
    return path


@hostile("keras-sharded/index-points-to-the-parent-directory")
def _keras_index_parent(base: Path, d: Path) -> tuple[Case, str]:
    def target(inner: Path) -> str:
        shutil.copyfile(inner / "k3sharded_00000.weights.h5", inner.parent / "k3sharded_00000.weights.h5")
        return "../k3sharded_00000.weights.h5"

    path = _point_keras_index(base, d, target)
    return Case(path, path, UnsafeInputError), "outside its directory"


@hostile("keras-sharded/index-names-an-absolute-path")
def _keras_index_absolute(base: Path, d: Path) -> tuple[Case, str]:
    path = _point_keras_index(base, d, lambda inner: str((inner / "k3sharded_00000.weights.h5").resolve()))
    return Case(path, path, UnsafeInputError), "outside its directory"


@hostile("keras-sharded/shard-is-a-symlink-out-of-the-directory")
def _keras_symlink(base: Path, d: Path) -> tuple[Case, str]:
    inner = d / "set"
    inner.mkdir()
    path = copy_source(base, "keras-sharded", inner)
    shard = inner / "k3sharded_00001.weights.h5"
    shutil.move(shard, d / "elsewhere.weights.h5")
    shard.symlink_to(d / "elsewhere.weights.h5")
    return Case(path, path, UnsafeInputError), "outside its directory"


@hostile("keras-sharded/index-nested-100000-deep")
def _keras_index_deep(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "keras-sharded", d)
    path.write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return Case(path, path, CorruptFileError), "JSON"


@hostile("safetensors-sharded/index-points-to-the-parent-directory")
def _st_index_parent(base: Path, d: Path) -> tuple[Case, str]:
    inner = d / "set"
    inner.mkdir()
    path = copy_source(base, "safetensors-sharded", inner)
    index = json.loads(path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    shutil.copyfile(inner / first, d / first)
    index["weight_map"] = {k: (f"../{v}" if v == first else v) for k, v in index["weight_map"].items()}
    path.write_text(json.dumps(index))
    return Case(path, path, UnsafeInputError), "outside its directory"


@hostile("safetensors/header-nested-100000-deep")
def _st_deep(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "safetensors", d)
    text = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    return Case(path, path, CorruptFileError), "header is not valid JSON"


@hostile("safetensors/declared-shape-of-4-tib")
def _st_huge(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "safetensors", d)
    text = json.dumps({"x": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(64))
    return Case(path, path, CorruptFileError), "truncated"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input(name: str, base: Path, twin, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    inputs = tmp_path / "in"
    out = tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    case, why = HOSTILE[name](base, inputs)
    check_cli(case, capsys, inputs, out)
    check_api(case, twin, inputs)
    with pytest.raises(case.error, match=why):
        ckptconv.open(case.path)


# --- what must be ignored: nothing extracted, nothing executed ------------------------------


def test_zip_members_with_traversal_names_are_never_extracted(base: Path, twin, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A .keras with ``../`` and absolute member names still converts; nothing appears
    anywhere but the output file."""
    inputs = tmp_path / "deep" / "er" / "in"
    out = tmp_path / "deep" / "er" / "out"
    inputs.mkdir(parents=True)
    out.mkdir()
    path = copy_source(base, "keras", inputs)
    absolute = tmp_path / "absolute-escape.txt"
    add_members(
        path,
        {
            "../../escape.txt": b"escaped",
            "../../../escape.txt": b"escaped",
            str(absolute): b"escaped",
            "model.weights.h5/../../escape.txt": b"escaped",
        },
    )
    with zipfile.ZipFile(path) as z:
        assert str(absolute) in z.namelist()  # the name really is absolute in the archive
    before = hashes(inputs)
    tree_before = sorted(str(p) for p in tmp_path.rglob("*"))
    cwd = os.getcwd()
    os.chdir(inputs)  # a relative extraction would land next to or above the input
    try:
        from ckptconv.cli import main

        assert main(["inspect", str(path)]) == 0
        assert main(["convert", str(path), str(out / "model.safetensors")]) == 0
        report = ckptconv.load_into(twin, path)
        assert report.applied
    finally:
        os.chdir(cwd)
    capsys.readouterr()
    tree_after = sorted(str(p) for p in tmp_path.rglob("*"))
    assert sorted(set(tree_after) - set(tree_before)) == [str(out / "model.safetensors")]
    assert not absolute.exists()
    assert hashes(inputs) == before


def lambda_bytecode(marker: Path) -> str:
    """Keras' Lambda encoding (base64 of marshalled code) of a function that writes ``marker``."""
    code = compile(
        f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('executed'), x)[1]",
        "<hostile>",
        "eval",
    )
    function_code = next(c for c in code.co_consts if hasattr(c, "co_code"))
    return base64.b64encode(marshal.dumps(function_code)).decode()


def test_lambda_bytecode_in_config_is_never_executed(base: Path, twin, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """config.json is read as JSON data only: a Lambda layer's bytecode never runs, whether
    the file is inspected, converted, loaded from, or named as a plan target (where Keras
    builds the model with its safe mode on and refuses it)."""
    inputs = tmp_path / "in"
    out = tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    path = copy_source(base, "keras", inputs)
    marker = tmp_path / "EXECUTED"
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    config["config"]["layers"].append(
        {
            "module": "keras.layers",
            "class_name": "Lambda",
            "config": {
                "name": "hostile_lambda",
                "trainable": True,
                "dtype": "float32",
                "function": {
                    "class_name": "__lambda__",
                    "config": {"code": lambda_bytecode(marker), "defaults": None, "closure": None},
                },
                "arguments": {},
            },
            "registered_name": None,
            "name": "hostile_lambda",
            "inbound_nodes": [
                {"args": [{"class_name": "__keras_tensor__", "config": {"shape": [None, 3], "dtype": "float32",
                 "keras_history": ["head", 0, 0]}}], "kwargs": {}}
            ],
        }
    )
    config["config"]["output_layers"] = [["hostile_lambda", 0, 0]]
    add_members(path, {"config.json": json.dumps(config).encode()})

    # the bytecode is real: running it is what writes the marker
    probe = marshal.loads(base64.b64decode(lambda_bytecode(tmp_path / "PROBE")))
    types.FunctionType(probe, {})(0)
    assert (tmp_path / "PROBE").exists()

    before = hashes(inputs)
    from ckptconv.cli import main

    assert main(["inspect", str(path)]) == 0
    assert main(["convert", str(path), str(out / "model.safetensors")]) == 0
    assert ckptconv.load_into(twin, path).applied
    capsys.readouterr()
    proc = run_cli("plan", path, "--target", path)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ckptconv")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "unsafe" in lines[0].lower() or "lambda" in lines[0].lower(), lines[0]
    assert not marker.exists()
    assert hashes(inputs) == before


def test_a_compressed_but_honest_archive_still_converts(base: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The bomb check is a ratio, not a ban: a re-zipped (deflated) .keras converts to the same
    tensors, read through the decompressor."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = copy_source(base, "keras", inputs)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    add_members(path, members, compress={name: zipfile.ZIP_DEFLATED for name in members})
    with zipfile.ZipFile(path) as z:
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in z.infolist())
    with ckptconv.open(path) as rezipped, ckptconv.open(base / "k3.keras") as original:
        assert list(rezipped) == list(original)
        for name in original:
            assert rezipped[name].read().tobytes() == original[name].read().tobytes()
    assert zlib.crc32(path.read_bytes()) != zlib.crc32((base / "k3.keras").read_bytes())
