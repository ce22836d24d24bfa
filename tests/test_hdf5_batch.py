"""The numpy fast paths of the HDF5 metadata pass give what the one-by-one parse gives (issue 18).

``_hdf5_headers.object_headers`` parses the object headers of a whole level of the walk
together, and ``SymbolTables.many_links`` reads the links of a level's small old-style
groups together; each leaves to the one-by-one functions (``object_header``,
``SymbolTables.links``) whatever is not of the shapes h5py writes for nearly every object.
The oracle here is those functions, themselves checked against libhdf5 in
``test_hdf5_links.py``: on every object of real Keras 3 and tf-keras files and of files h5py
writes (many groups, other node sizes, new-style groups), the fast path must give the same
header and links -- or nothing, never something else -- and it must take the common case
(else the test would pass with a fast path that declines everything). Then the same on
thousands of damaged copies: random bytes overwritten in headers, B-tree nodes, symbol table
nodes and local heaps.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ckptconv import CorruptFileError
from ckptconv.formats import _hdf5_headers, _hdf5_links

KERAS_FILES = ["k3_zoo.weights.h5", "k3_seq.weights.h5", "k3_zoo.h5", "tk_zoo.h5", "tk_zoo_w.h5", "tk_chunked.h5"]


def _catalog(path: Path) -> tuple[dict[int, Any], bytes]:
    data = path.read_bytes()
    with h5py.File(path, "r") as f:
        headers, _, _ = _hdf5_links.walk(lambda: f, _reader(data), len(data), path=path, skip_min=1 << 16)
    return headers, data


def _reader(data: bytes) -> Any:
    return lambda offset, n: data[offset : offset + n]


def _h5py_files(tmp_path: Path) -> list[Path]:
    many = tmp_path / "many.h5"
    with h5py.File(many, "w") as f:
        for i in range(300):
            g = f.create_group(f"layer_{i:03d}")
            g.create_dataset("kernel", data=np.full((3, i % 5 + 1), i, np.float32))
            g.create_dataset("bias", data=np.arange(i % 7, dtype=np.int64))
            g.create_dataset("empty", shape=(0, 4), dtype=np.float16)
            g.create_dataset("scalar", data=np.float64(i))
            g.create_dataset("chunked", data=np.ones((4, 4), np.float32), chunks=(2, 2))
            g.create_dataset("big_endian", data=np.ones(3, ">f4"))
            g.create_dataset("unwritten", shape=(5,), dtype=np.int32)
        f["layer_000"].attrs["note"] = "an attribute"
        f.create_group("empty")
    latest = tmp_path / "latest.h5"
    with h5py.File(latest, "w", libver="latest") as f:
        for i in range(20):
            f.create_group(f"g{i}").create_dataset("v", data=np.ones(i + 1))
    return [many, latest]


def _assert_batch_agrees(data: bytes, addresses: list[int], *, image: bool) -> int:
    """Every fast-path header is the one-by-one parse's; returns how many there were."""
    read = _reader(data)
    array = np.frombuffer(data, np.uint8) if image else None
    batch = _hdf5_headers.object_headers(read, addresses, len(data), image=array)
    assert len(batch) == len(addresses)
    taken = 0
    for address, header in zip(addresses, batch):
        if header is not None:
            taken += 1
            assert header == _hdf5_headers.object_header(read, address, len(data)), address
    return taken


@pytest.mark.parametrize("image", [True, False], ids=["array", "reads"])
@pytest.mark.parametrize("filename", KERAS_FILES)
def test_headers_of_keras_files(generated, filename: str, image: bool) -> None:
    headers, data = _catalog(generated("keras") / filename)
    datasets = [a for a, h in headers.items() if h.kind == "dataset"]
    taken = _assert_batch_agrees(data, list(headers), image=image)
    assert taken >= len(datasets) // 2 > 0  # the common case is taken


@pytest.mark.parametrize("image", [True, False], ids=["array", "reads"])
@pytest.mark.parametrize("filename", ["k3_zoo.weights.h5", "tk_zoo.h5"])
def test_groups_with_attributes_are_taken(generated, filename: str, image: bool) -> None:
    """Keras 3's ``vars`` groups (a ``name`` attribute) and tf-keras' layer groups
    (``weight_names``) have their symbol table and attributes in a continuation block (h5py
    moves them there when the first attribute is added): the batch parses those too."""
    headers, data = _catalog(generated("keras") / filename)
    named = [a for a, h in headers.items() if h.kind == "group" and h.attributes and h.vlen]
    assert len(named) >= 3
    assert _assert_batch_agrees(data, named, image=image) >= len(named) // 2


@pytest.mark.parametrize("image", [True, False], ids=["array", "reads"])
def test_headers_of_files_h5py_writes(tmp_path: Path, image: bool) -> None:
    for path in _h5py_files(tmp_path):
        headers, data = _catalog(path)
        taken = _assert_batch_agrees(data, list(headers), image=image)
        assert taken > (300 * 3 if path.name == "many.h5" else -1)


def _damaged_copies(data: bytes, regions: list[int], *, width: int, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    copies = []
    for _ in range(count):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at = rng.choice(regions) + rng.randrange(width)
            if 96 <= at < len(damaged):  # past the superblock, which neither path reads
                damaged[at] = rng.choice([0, 1, 2, 3, 8, 0x10, 0x11, 0x12, 0x80, 0xFF, rng.randrange(256)])
        copies.append(bytes(damaged))
    return copies


def test_hash_collisions_are_left_to_object_header(generated, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a hash that keeps only the last word of each message, dataspaces that differ
    before it collide: rows unlike their group's first are left out, never misread."""
    headers, data = _catalog(generated("keras") / "k3_zoo.weights.h5")
    monkeypatch.setattr(_hdf5_headers, "_MIX", 0)
    _hdf5_headers._dataspaces.clear()
    _hdf5_headers._datatypes.clear()
    assert _assert_batch_agrees(data, list(headers), image=True)


def test_headers_of_damaged_files(generated) -> None:
    headers, data = _catalog(generated("keras") / "k3_zoo.weights.h5")
    addresses = list(headers)
    for damaged in _damaged_copies(data, addresses, width=300, count=400, seed=18):
        _assert_batch_agrees(damaged, addresses, image=True)


def _outcome(call: Any) -> Any:
    try:
        return call()
    except CorruptFileError as error:
        return str(error)


def _symbol_groups(data: bytes, headers: dict[int, Any]) -> list[tuple[str, int, int]]:
    return [
        (f"/g{address}", *header.symbols)
        for address, header in headers.items()
        if header.kind == "group" and header.symbols is not None
    ]


def _tables(data: bytes) -> _hdf5_links.SymbolTables:
    sizes = _hdf5_links.group_node_sizes(data[:96])
    assert sizes is not None
    return _hdf5_links.SymbolTables(_reader(data), len(data), sizes, limit=1 << 30, path="f.h5")


def _assert_links_agree(data: bytes, groups: list[tuple[str, int, int]], *, image: bool) -> int:
    """Group by group: the fast path gives nothing, or what links() gives (the table, or
    the same error); returns how many groups it took."""
    array = np.frombuffer(data, np.uint8) if image else None
    taken = 0
    for group in groups:
        fast = _outcome(lambda: _tables(data).many_links([group], array)[0])
        if fast is None:
            continue
        taken += 1
        assert fast == _outcome(lambda: _tables(data).links(*group)), group
    return taken


@pytest.mark.parametrize("image", [True, False], ids=["array", "reads"])
@pytest.mark.parametrize("filename", KERAS_FILES)
def test_links_of_keras_files(generated, filename: str, image: bool) -> None:
    headers, data = _catalog(generated("keras") / filename)
    groups = _symbol_groups(data, headers)
    assert _assert_links_agree(data, groups, image=image) >= len(groups) // 2 > 0
    # all at once, as the walk asks: the same tables
    together = _tables(data).many_links(groups, np.frombuffer(data, np.uint8) if image else None)
    for group, table in zip(groups, together):
        if table is not None:
            assert table == _tables(data).links(*group)


def test_links_of_files_h5py_writes(tmp_path: Path) -> None:
    path = _h5py_files(tmp_path)[0]
    headers, data = _catalog(path)
    groups = _symbol_groups(data, headers)
    assert _assert_links_agree(data, groups, image=True) >= 300


def test_links_of_damaged_files(generated) -> None:
    headers, data = _catalog(generated("keras") / "k3_zoo.weights.h5")
    groups = _symbol_groups(data, headers)
    regions = []
    for _, btree, heap in groups:
        regions += [btree, heap]
        child = struct.unpack_from("<Q", data, btree + 32)[0]
        if child < len(data):
            regions.append(child)
    taken = 0
    for damaged in _damaged_copies(data, regions, width=120, count=300, seed=19):
        taken += _assert_links_agree(damaged, groups, image=True)
    assert taken


def test_a_node_shared_by_two_groups_is_left_to_links(generated) -> None:
    """Two groups naming one B-tree: the second is a cycle, and links() says so."""
    headers, data = _catalog(generated("keras") / "k3_zoo.weights.h5")
    first, second = _symbol_groups(data, headers)[:2]
    tables = _tables(data)
    twice = [first, (second[0], first[1], first[2])]
    found = tables.many_links(twice, np.frombuffer(data, np.uint8))
    assert found[0] is not None and found[1] is None
    with pytest.raises(CorruptFileError, match="reached twice"):
        tables.links(*twice[1])


def test_an_error_in_the_walk_stays_that_error(generated, tmp_path: Path) -> None:
    """An error inside the walk keeps an array over the memory-mapped image alive (in its
    traceback): closing the image must not turn the error into another."""
    from ckptconv.formats import _hdf5_file

    source = generated("keras") / "k3_zoo.weights.h5"
    headers, data = _catalog(source)
    _, btree, _ = _symbol_groups(data, headers)[1]
    damaged = bytearray(data)
    damaged[btree : btree + 4] = b"XXXX"
    path = tmp_path / "damaged.weights.h5"
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptFileError, match="no group B-tree node"):
        _hdf5_file.open_h5(path, path=path)
