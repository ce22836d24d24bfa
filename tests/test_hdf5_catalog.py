"""The one-pass HDF5 metadata catalog gives what libhdf5 gives (issue 18).

The Keras readers build entries from object headers parsed in one pass over the file
(``formats/_hdf5_headers.py``), from the links the same walk recorded (``formats/_hdf5_links.py``:
symbol tables read from the file, libhdf5 for other groups), and from the
variable-length names decoded out of the checked global heap; whatever that pass leaves
undescribed goes through h5py. Here every Keras fixture written by the real writers is read
both ways -- with the catalog, and with it switched off so that every group, name and dataset
is asked of h5py -- and the entries (names, keys, shapes, dtypes, kinds, byte ranges, values)
must be the same. The header parser is also checked dataset by dataset against h5py on files
h5py writes with every layout and type it must (or must not) describe, and a Keras file
rewritten with version 2 object headers (which the parser does not read) still opens whole.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import ckptconv
from ckptconv.formats import _hdf5_file
from ckptconv.formats._hdf5_headers import lengths_are_8, object_header

from .helpers import assert_bit_exact, load_expected

KERAS_FILES = [
    "k3_zoo.weights.h5",
    "k3_zoo.keras",
    "k3_zoo.h5",
    "sharded/k3_zoo.weights.json",
    "many/k3_zoo.weights.json",
    "k3_seq.weights.h5",
    "k3_chunked.h5",
    "tk_zoo.h5",
    "tk_zoo_w.h5",
    "tk_small.keras",
    "tk_chunked.h5",
]


# Stands in for every open file's catalog: it holds nothing, so every reader asks h5py.
_FORGETFUL = property(lambda self: _hdf5_file.Catalog({}, {}, {}), lambda self, value: None)


def _described(path: Path) -> list[tuple]:
    with ckptconv.open(path) as store:
        rows = []
        for entry in store.entries(include_all=True):
            byte_range = entry.byte_range
            rows.append((
                entry.name, entry.key, entry.kind, entry.layer, entry.index, entry.tree_path,
                entry.shape, entry.dtype.str, entry.dtype.name,
                None if byte_range is None else (byte_range.path, byte_range.offset, byte_range.length),
                entry.read().tobytes(),
            ))
        return rows


def _both_ways(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple], list[tuple]]:
    fast = _described(path)
    with monkeypatch.context() as m:
        m.setattr(_hdf5_file.HDF5File, "catalog", _FORGETFUL, raising=False)
        slow = _described(path)
    return fast, slow


@pytest.mark.parametrize("filename", KERAS_FILES)
def test_catalog_entries_equal_h5py_entries(generated, filename: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _both_ways(generated("keras") / filename, monkeypatch)
    assert len(fast) == len(slow) > 0
    for got, want in zip(fast, slow):
        assert got == want, want[0]
    # the fast path really ran: every tensor of these files lies raw in the file
    assert all(row[9] is not None for row in fast)


def test_optimizer_state_through_the_catalog(generated, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counters (scalar integers) and slot variables of real optimizers in .keras archives."""
    directory = generated("optimizers")
    archives = sorted(directory.glob("*.keras"))
    assert archives
    for path in archives:
        fast, slow = _both_ways(path, monkeypatch)
        assert fast == slow, path.name
        assert any(row[2] == "bookkeeping" for row in fast), path.name


def test_catalog_entries_match_the_live_models(generated) -> None:
    """And both ways equal what the writer's live model held (the oracle)."""
    directory = generated("keras")
    for filename, label in (("k3_zoo.weights.h5", "k3_zoo.weights.h5"), ("tk_zoo.h5", "tk_zoo.h5")):
        expected = {x.name: x for x in load_expected(directory, label)}
        with ckptconv.open(directory / filename) as store:
            for entry in store.entries():
                if entry.name in expected:
                    assert_bit_exact(entry.read(), expected[entry.name].array, entry.name)


# --- the header parser, dataset by dataset --------------------------------------------------


def _write_datasets(path: Path) -> dict[str, bool]:
    """Datasets of every kind a Keras file may hold; name -> whether the parse must describe
    it (plain) or leave it to libhdf5."""
    plain: dict[str, bool] = {}
    with h5py.File(path, "w") as f:
        for dtype in ("<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"):
            f.create_dataset(f"t/{dtype[1:]}", data=np.arange(6, dtype=dtype).reshape(2, 3))
            plain[f"t/{dtype[1:]}"] = True
        f.create_dataset("scalar", data=np.int64(7))
        f.create_dataset("empty", data=np.zeros((0, 4), np.float32))
        f.create_dataset("rank5", data=np.ones((1, 2, 1, 2, 3), np.float32))
        plain.update({"scalar": True, "empty": False, "rank5": True})  # empty: no bytes stored
        f.create_dataset("big_endian", data=np.arange(4, dtype=">f4"))
        f.create_dataset("chunked", data=np.arange(64, dtype=np.float32), chunks=(16,))
        f.create_dataset("gzip", data=np.arange(64, dtype=np.float32), compression="gzip")
        f.create_dataset("compact", data=np.arange(4, dtype=np.float32),
                         dcpl=_compact_plist())
        f.create_dataset("bool", data=np.array([True, False]))
        f.create_dataset("complex", data=np.array([1 + 2j], np.complex64))
        named = f.create_dataset("with_dtype_attr", data=np.arange(4, dtype=np.float32))
        named.attrs["dtype"] = "float32"
        f.create_dataset("never_written", shape=(4,), dtype=np.float32)
        plain["with_dtype_attr"] = True  # plain once its dtype attribute is read: see below
        plain.update(dict.fromkeys(
            ["big_endian", "chunked", "gzip", "compact", "bool", "complex", "never_written"], False))
    return plain


def _compact_plist() -> h5py.h5p.PropDCID:
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.COMPACT)
    return plist


def test_headers_describe_what_h5py_reads(tmp_path: Path) -> None:
    path = tmp_path / "kinds.h5"
    expected = _write_datasets(path)
    data = path.read_bytes()
    assert lengths_are_8(data[:16])

    def read(offset: int, n: int) -> bytes:
        return data[offset : offset + n]

    with h5py.File(path, "r") as f:
        for name, plain in expected.items():
            dataset = f[name]
            header = object_header(read, h5py.h5o.get_info(f.id, name.encode()).addr, len(data))
            assert header is not None, name
            assert header.kind == "dataset", name
            assert header.plain == plain, name
            assert header.declared == (name == "with_dtype_attr"), name
            if plain:
                assert header.shape == dataset.shape, name
                assert header.dtype == dataset.dtype, name
                assert header.offset == dataset.id.get_offset(), name
                assert header.length == dataset.id.get_storage_size(), name
                raw = data[header.offset : header.offset + header.length]
                values = np.frombuffer(raw, header.dtype).reshape(header.shape)
                assert_bit_exact(values, dataset[()], name)
        group = object_header(read, h5py.h5o.get_info(f.id, b"t").addr, len(data))
        assert group.kind == "group" and not group.plain


def test_a_dtype_attribute_is_applied_as_h5py_reading_applies_it(tmp_path: Path) -> None:
    """Keras names the type of opaque bytes in a ``dtype`` attribute (bfloat16 as 2-byte
    opaque data). The metadata pass reads the attribute and applies it as
    :func:`~ckptconv.formats._hdf5.dataset_dtype` does; a name it cannot apply (unknown, or
    one that would reinterpret stored numbers) leaves the dataset to h5py, which refuses it."""
    import ml_dtypes

    path = tmp_path / "declared.h5"
    with h5py.File(path, "w") as f:
        bf16 = f.create_dataset("bf16", data=np.arange(6, dtype=ml_dtypes.bfloat16).view(np.dtype("V2")))
        bf16.attrs["dtype"] = "bfloat16"
        same = f.create_dataset("same", data=np.arange(4, dtype=np.float32))
        same.attrs["dtype"] = "float32"
        for name, declared in (("unknown", "float33"), ("reinterpreted", "float16"), ("not_text", 3)):
            f.create_dataset(name, data=np.arange(4, dtype=np.float32)).attrs["dtype"] = declared
    handle = _hdf5_file.open_h5(path, path=path)
    try:
        by_name = {}
        for links in handle.catalog.children.values():
            for key, (_, address) in links.items():
                by_name[key] = handle.catalog.headers[address]
    finally:
        handle.close()
    assert by_name["bf16"].plain and by_name["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert by_name["bf16"].shape == (6,)
    assert by_name["same"].plain and by_name["same"].dtype == np.dtype("<f4")
    for name in ("unknown", "reinterpreted", "not_text"):
        assert not by_name[name].plain and by_name[name].dtype is None, name
    assert not any(h.declared for h in by_name.values())


def test_version_2_object_headers_fall_back_to_libhdf5(generated, tmp_path: Path) -> None:
    """A Keras file copied with libver="latest" (version 2 headers, which the parse does not
    read) opens with the same entries and values, every one asked of h5py."""
    source = generated("keras") / "k3_zoo.weights.h5"
    copy = tmp_path / "v2.weights.h5"
    with h5py.File(source, "r") as src, h5py.File(copy, "w", libver="latest") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for key in src:
            src.copy(src[key], dst, name=key)
    assert b"OHDR" in copy.read_bytes()  # version 2 object headers
    want = [row[:3] + row[4:9] + row[10:] for row in _described(source)]
    got = [row[:3] + row[4:9] + row[10:] for row in _described(copy)]
    assert got == want


def test_a_group_reached_by_two_hard_links_is_walked_under_both(generated, tmp_path: Path) -> None:
    """libhdf5's visit lists a group's links under one path only; the reader asks libhdf5
    for the other path's links (the old walk saw both)."""
    source = generated("keras") / "k3_seq.weights.h5"
    copy = tmp_path / "alias.weights.h5"
    copy.write_bytes(source.read_bytes())
    with h5py.File(copy, "a") as f:
        layers = sorted(f["layers"])
        first = layers[0]
        f["layers"][f"{first}_alias"] = f["layers"][first]  # a second hard link
    with ckptconv.open(copy) as store, ckptconv.open(source) as original:
        names = [e.name for e in store.entries()]
        assert set(e.name for e in original.entries()) <= set(names)
        assert len(names) > len(list(original.entries()))


class _Member:
    """A stored zip member as the image reader takes one: ``(path, offset, length)``."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self.region = (path, offset, length)

    def image_region(self) -> tuple[Path, int, int]:
        return self.region


@pytest.mark.parametrize("lead", [0, 5, 4096])
def test_the_heap_scan_finds_each_signature_wholly_inside_a_gap(tmp_path: Path, lead: int) -> None:
    """The global heap scan gives the offsets of the ``GCOL`` signatures lying wholly inside
    the gaps between tensor data, in order, as a plain search of each gap does: none that
    straddles a gap's edge, and none in a gap shorter than the signature (a search there must
    not count from the end of the memory map), for a file and for a member at an offset."""
    import random

    rnd = random.Random(18)
    for trial in range(200):
        data = bytearray(rnd.choice(b"GCOLx") for _ in range(rnd.randint(1, 200)))
        for _ in range(rnd.randint(0, 6)):
            at = rnd.randint(0, len(data))
            data[at : at + 4] = b"GCOL"
        data = bytes(data)
        path = tmp_path / f"image{trial}"
        path.write_bytes(b"GCOL" * (lead // 4) + b"G" * (lead % 4) + data + b"COLGCOL")
        reader = _hdf5_file._ImageReader(_Member(path, lead, len(data)) if lead else path)
        try:
            size = reader.size
            cuts = sorted(rnd.sample(range(size + 1), min(size + 1, 2 * rnd.randint(0, 5))))
            gaps = _hdf5_file._gaps(list(zip(cuts[::2], cuts[1::2])), size)
            image = path.read_bytes()[lead : lead + size]
            want = []
            for start, stop in gaps:
                i = image.find(b"GCOL", start, stop)
                while i >= 0:
                    want.append(i)
                    i = image.find(b"GCOL", i + 1, stop)
            assert _hdf5_file._find_all(reader, gaps) == want, (image, gaps)
        finally:
            reader.close()
