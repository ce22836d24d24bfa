"""The metadata pass reads group links from the file's symbol tables as libhdf5 lists them (issue 18).

``formats/_hdf5_links.py`` reads the links of "old-style" groups (h5py's default) from their
version 1 B-trees, symbol table nodes and local heaps, and asks libhdf5 for any other group.
The oracle is libhdf5's own link visit (``f.id.links.visit`` with link info, and
``h5o.get_info`` for the objects' types): the catalog's links of every group, in order, and the
objects it describes must be what the visit gives -- for real Keras 3 and tf-keras files, a
``.keras`` member read through a file object, and files h5py writes with nested groups,
multi-level B-trees (default and small node sizes), new-style groups (``libver="latest"``,
``track_order=True``, compact and dense link storage), soft and external links, empty groups
and a second hard link to a group. Damaged symbol tables (signatures, a cycle, a B-tree too
deep, names not NUL-terminated, nodes beyond the end of the file, truncation) are refused with
one line naming the file, under a watchdog so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import ctypes
import faulthandler
import glob
import os
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import ckptconv
from ckptconv import CorruptFileError
from ckptconv.formats import _hdf5_file, _hdf5_links

HANG_SECONDS = 60


@contextmanager
def watchdog() -> Iterator[None]:
    """A hang dumps the stacks and ends the run instead of blocking the suite."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def libhdf5_view(f: h5py.File) -> tuple[dict[str, dict[str, tuple[int, int]]], list[int]]:
    """Every group's links ``{name: (type, address or value size)}`` by group path, and the
    objects in visit order (root first), from libhdf5's own link visit; a group reached a
    second time is not listed again, as the visit does not descend into it."""
    root = h5py.h5o.get_info(f.id).addr
    order = [root]
    seen = {root}
    groups: dict[str, dict[str, tuple[int, int]]] = {"/": {}}

    def visit(name: bytes, info: Any) -> None:
        path = "/" + name.decode("utf-8", "surrogateescape")
        parent, _, key = path.rpartition("/")
        table = groups.get(parent or "/")
        if table is not None:
            table[key] = (info.type, info.u)
        if info.type == h5py.h5l.TYPE_HARD and info.u not in seen:
            seen.add(info.u)
            order.append(info.u)
            if h5py.h5o.get_info(f.id, name).type == h5py.h5o.TYPE_GROUP:
                groups[path] = {}

    f.id.links.visit(visit, info=True)
    return groups, order


def assert_catalog_is_libhdf5s(source: Any, *, path: Path) -> _hdf5_file.Catalog:
    """Open ``source`` (a path or file object) as the readers do and compare the catalog
    with libhdf5's visit of the same image."""
    with watchdog():
        f = _hdf5_file.open_h5(source, path=path)
    try:
        catalog = _hdf5_file.catalog_of(f)
        groups, order = libhdf5_view(f.h5)
        assert list(catalog.children) == list(groups)
        for group, links in groups.items():
            assert list(catalog.children[group].items()) == list(links.items()), group
        assert list(catalog.headers) == order
        for address, header in catalog.headers.items():
            if header.kind != "other":
                info_type = h5py.h5o.TYPE_GROUP if header.kind == "group" else h5py.h5o.TYPE_DATASET
                paths = [p for p, links in groups.items() for k, v in links.items() if v == (0, address)]
                name = paths[0] if paths else None
                if name is not None:  # the root has no link
                    key = next(k for k, v in groups[name].items() if v == (0, address))
                    full = f"{'' if name == '/' else name}/{key}"
                    assert h5py.h5o.get_info(f.h5.id, full.encode("utf-8", "surrogateescape")).type == info_type
        return catalog
    finally:
        f.close()


# --- real Keras files -------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    ["k3_zoo.weights.h5", "k3_seq.weights.h5", "k3_zoo.h5", "k3_chunked.h5", "tk_zoo.h5", "tk_zoo_w.h5", "tk_chunked.h5"],
)
def test_keras_files_give_libhdf5s_links(generated, filename: str) -> None:
    path = generated("keras") / filename
    catalog = assert_catalog_is_libhdf5s(path, path=path)
    assert len(catalog.children) > 1


@pytest.mark.parametrize("filename", ["k3_zoo.keras", "tk_small.keras"])
def test_keras_archive_member_through_a_file_object(generated, filename: str) -> None:
    path = generated("keras") / filename
    with zipfile.ZipFile(path) as archive:
        members = [n for n in archive.namelist() if n.endswith(".h5")]
        assert members
        for member in members:
            with archive.open(member) as fileobj:
                assert_catalog_is_libhdf5s(fileobj, path=path)


# --- files h5py writes ------------------------------------------------------------------


def _fill(group: h5py.Group, count: int, *, width: int = 5) -> None:
    for i in range(count):
        sub = group.create_group(f"layer_{i:0{width}d}")
        sub.create_dataset("kernel", data=np.full((2, 2), i, np.float32))


def _write_old_style(path: Path) -> None:
    with h5py.File(path, "w") as f:
        nested = f
        for depth in range(12):
            nested = nested.create_group(f"level{depth}")
        nested.create_dataset("deep", data=np.arange(3, dtype=np.int64))
        _fill(f.create_group("many"), 2100)  # a B-tree of more than one level
        f.create_group("empty")
        f.create_group("empty/inner_empty")
        odd = f.create_group("odd names")
        for name in ("ünïcode", "with space", "a" * 300, "0", "tab\tname"):
            odd.create_dataset(name, data=np.zeros(1, np.float32))
        f["many/layer_00003"].attrs["note"] = "an attribute"
        f["soft"] = h5py.SoftLink("/many/layer_00001/kernel")
        f["dangling"] = h5py.SoftLink("/no/such/object/at/all")
        f["alias"] = f["many/layer_00002"]  # a second hard link to a group
        f["many/layer_00004/loop"] = f["many"]  # a hard link cycle


def _node_level(data: bytes, f: h5py.File, group: bytes) -> int:
    btree, _ = _symbol_table(data, h5py.h5o.get_info(f.id, group).addr)
    assert data[btree : btree + 4] == b"TREE"
    return data[btree + 5]


def test_old_style_groups_give_libhdf5s_links(tmp_path: Path) -> None:
    path = tmp_path / "old.h5"
    _write_old_style(path)
    data = path.read_bytes()
    with h5py.File(path, "r") as f:
        assert _node_level(data, f, b"many") >= 1
    catalog = assert_catalog_is_libhdf5s(path, path=path)
    assert catalog.children["/"]["soft"] == (h5py.h5l.TYPE_SOFT, len("/many/layer_00001/kernel") + 1)
    assert "/alias" in catalog.children  # by name, "alias" comes first ...
    assert "/many/layer_00002" not in catalog.children  # ... so this is a second time: libhdf5 is asked
    assert len(catalog.children["/many"]) == 2100


def _set_sym_k(fcpl: h5py.h5p.PropFCID, internal_k: int, leaf_k: int) -> None:
    """``H5Pset_sym_k`` (h5py has no binding): through the libhdf5 h5py itself loaded."""
    found = glob.glob(os.path.join(os.path.dirname(h5py.__file__), "..", "h5py.libs", "libhdf5-*.so*"))
    found = found or glob.glob(os.path.join(os.path.dirname(h5py.__file__), ".dylibs", "libhdf5.*.dylib"))
    if not found:
        pytest.skip("h5py's libhdf5 is not bundled with it here")
    hdf5 = ctypes.CDLL(found[0])
    assert hdf5.H5Pset_sym_k(ctypes.c_int64(fcpl.id), ctypes.c_uint(internal_k), ctypes.c_uint(leaf_k)) >= 0


@pytest.mark.parametrize(("internal_k", "leaf_k", "levels", "count"), [(2, 1, 4, 300), (40, 20, 0, 2000)])
def test_other_node_sizes(tmp_path: Path, internal_k: int, leaf_k: int, levels: int, count: int) -> None:
    """Symbol table nodes of 2 entries and B-tree nodes of 4 children (four levels and
    more); and larger nodes than h5py's default (up to 80 children, 40 entries each)."""
    path = tmp_path / "node_sizes.h5"
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    _set_sym_k(fcpl, internal_k, leaf_k)
    fid = h5py.h5f.create(str(path).encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl)
    with h5py.File(fid) as f:
        _fill(f.create_group("g"), count, width=4)
        f["g/soft"] = h5py.SoftLink("/g/layer_0007")
    data = path.read_bytes()
    assert struct.unpack_from("<HH", data, 16) == (leaf_k, internal_k)
    with h5py.File(path, "r") as f:
        assert _node_level(data, f, b"g") >= levels
    catalog = assert_catalog_is_libhdf5s(path, path=path)
    assert len(catalog.children["/g"]) == count + 1


def test_new_style_groups_are_asked_of_libhdf5(tmp_path: Path) -> None:
    """libver="latest" (compact and dense link storage, version 2 object headers), a
    creation-ordered group and external links inside an old-style file."""
    latest = tmp_path / "latest.h5"
    with h5py.File(latest, "w", libver="latest") as f:
        _fill(f.create_group("dense"), 40)
        _fill(f.create_group("compact"), 3)
        f.create_group("empty")
        f["soft"] = h5py.SoftLink("/dense")
    assert_catalog_is_libhdf5s(latest, path=latest)
    mixed = tmp_path / "mixed.h5"
    with h5py.File(mixed, "w") as f:
        ordered = f.create_group("ordered", track_order=True)
        for name in ("zeta", "alpha", "mid"):
            ordered.create_group(name).create_dataset("v", data=np.ones(2))
        _fill(ordered.create_group("old_inside_new"), 40)
        f.create_group("with_external")["ext"] = h5py.ExternalLink("elsewhere.h5", "/data")
        f["with_external"].create_group("sibling")
        _fill(f.create_group("old"), 40)
    catalog = assert_catalog_is_libhdf5s(mixed, path=mixed)
    assert list(catalog.children["/ordered"]) == ["alpha", "mid", "old_inside_new", "zeta"]  # by name
    assert catalog.children["/with_external"]["ext"][0] == h5py.h5l.TYPE_EXTERNAL


def test_a_file_past_the_object_limit_is_left_to_libhdf5(generated, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the limit the walk stops without recording the group it was reading: the
    readers ask libhdf5 for the rest and give the same entries."""
    path = generated("keras") / "k3_zoo.weights.h5"
    with ckptconv.open(path) as store:
        want = [(e.name, e.shape, e.read().tobytes()) for e in store.entries(include_all=True)]
    monkeypatch.setattr(_hdf5_links, "MAX_OBJECTS", 6)
    f = _hdf5_file.open_h5(path, path=path)
    try:
        catalog = _hdf5_file.catalog_of(f)
        assert 0 < len(catalog.headers) <= 6
        groups, _ = libhdf5_view(f.h5)
        for group, links in catalog.children.items():
            assert links == groups[group], group  # whatever is recorded is whole
    finally:
        f.close()
    with ckptconv.open(path) as store:
        got = [(e.name, e.shape, e.read().tobytes()) for e in store.entries(include_all=True)]
    assert got == want


# --- damaged symbol tables --------------------------------------------------------------


def _messages(data: bytes, address: int) -> Iterator[tuple[int, int]]:
    """``(type, data offset)`` of a version 1 object header's messages (continuations followed)."""
    assert data[address] == 1
    blocks = [(address + 16, struct.unpack_from("<I", data, address + 8)[0])]
    while blocks:
        start, length = blocks.pop()
        position = start
        while position + 8 <= start + length:
            kind, size = struct.unpack_from("<HH", data, position)
            if kind == 0x10:
                blocks.append(struct.unpack_from("<QQ", data, position + 8))
            yield kind, position + 8
            position += 8 + size


def _symbol_table(data: bytes, address: int) -> tuple[int, int]:
    """(B-tree address, local heap address) of an old-style group's header."""
    for kind, at in _messages(data, address):
        if kind == 0x11:
            return struct.unpack_from("<QQ", data, at)
    raise AssertionError("no symbol table message")


def _structures(path: Path, group: bytes) -> dict[str, int]:
    """Where a group's B-tree root, its first child, first symbol table node and local heap lie."""
    data = path.read_bytes()
    with h5py.File(path, "r") as f:
        btree, heap = _symbol_table(data, h5py.h5o.get_info(f.id, group).addr)
    node = btree
    while data[node + 5]:  # down the leftmost children to level 0
        node = struct.unpack_from("<Q", data, node + 24 + 8)[0]
    snod = struct.unpack_from("<Q", data, node + 24 + 8)[0]
    assert data[snod : snod + 4] == b"SNOD" and data[heap : heap + 4] == b"HEAP"
    names = struct.unpack_from("<Q", data, heap + 24)[0]
    return {"btree": btree, "leaf": node, "snod": snod, "heap": heap, "names": names,
            "names_size": struct.unpack_from("<Q", data, heap + 8)[0]}


def _patch(path: Path, edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(path.read_bytes())
    for at, raw in edits:
        data[at : at + len(raw)] = raw
    path.write_bytes(bytes(data))


def _damage(kind: str, path: Path) -> str:
    """Damage ``/many`` of an h5py-written file one way; returns what the error must say."""
    s = _structures(path, b"many")
    btree, snod = s["btree"], s["snod"]
    second_child = btree + 24 + 8 + 16  # the root's second child pointer
    edits = {
        "tree-signature": ([(btree, b"TRE\x00")], "no group B-tree node"),
        "snod-signature": ([(snod, b"SNOX")], "no symbol table node"),
        "heap-signature": ([(s["heap"], b"HEAQ")], "no local heap"),
        "child-loops-to-its-parent": ([(second_child, struct.pack("<Q", btree))], "reached twice (a cycle)"),
        "child-at-the-wrong-level": ([(s["leaf"] + 5, bytes([1]))], "at level 1, not 0"),
        "two-children-share-a-node": ([(second_child, struct.pack("<Q", s["leaf"]))], "reached twice"),
        "b-tree-200-levels": ([(btree + 5, bytes([200]))], "claims 200 levels"),
        "snod-beyond-the-file": ([(s["leaf"] + 24 + 8, struct.pack("<Q", 1 << 40))], "beyond the end"),
        "names-not-nul-terminated": ([(s["names"] + 8, b"A" * (s["names_size"] - 8))], "not NUL-terminated"),
        "name-offset-beyond-the-heap": ([(snod + 8, struct.pack("<Q", 1 << 62))], "not NUL-terminated"),
        "too-many-entries": ([(snod + 6, struct.pack("<H", 60000))], "claims 60000 entries"),
        "unknown-cache-type": ([(snod + 8 + 16, struct.pack("<I", 7))], "cache type 7"),
    }
    raw, says = edits[kind]
    _patch(path, raw)
    return says


DAMAGE = ["tree-signature", "snod-signature", "heap-signature", "child-loops-to-its-parent", "child-at-the-wrong-level",
          "two-children-share-a-node", "b-tree-200-levels", "snod-beyond-the-file",
          "names-not-nul-terminated", "name-offset-beyond-the-heap", "too-many-entries",
          "unknown-cache-type"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_symbol_table_is_refused_in_one_line(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "damaged.h5"  # a name the expected messages cannot match
    with h5py.File(path, "w") as f:
        _fill(f.create_group("many"), 2100)
    says = _damage(kind, path)
    with watchdog(), pytest.raises(CorruptFileError) as caught:
        _hdf5_file.open_h5(path, path=path).close()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    assert "'/many'" in message and says in message, message
    assert message.endswith("; copy or download it again"), message  # what to do, as every damage says


def test_a_damaged_keras_file_is_refused_by_the_cli(generated, tmp_path: Path) -> None:
    """The real command, in a subprocess with a timeout: exit status 1, one line naming the
    file, nothing on stdout; a truncated file too."""
    source = generated("keras") / "k3_zoo.weights.h5"
    cases = []
    damaged = tmp_path / "snod.weights.h5"
    damaged.write_bytes(source.read_bytes())
    s = _structures(damaged, b"layers")
    _patch(damaged, [(s["snod"], b"SNOX")])
    cases.append((damaged, "no symbol table node"))
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(source.read_bytes()[: s["snod"] + 20])
    cases.append((truncated, "truncated"))
    for path, says in cases:
        run = subprocess.run([sys.executable, "-m", "ckptconv", "inspect", str(path)],
                             check=False, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, run.stderr
        assert run.stdout == ""
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and says in lines[0], run.stderr
