"""One walk over an HDF5 file's groups: every object's header, every group's links.

h5py writes every group the "old-style" way unless asked otherwise (``libver="earliest"``,
the default): the group's object header holds a Symbol Table message naming a version 1
B-tree of group nodes (signature ``TREE``, node type 0) whose leaves are symbol table nodes
(``SNOD``: 40-byte entries of link-name offset, object header address, cache type and a
scratch pad), and a local heap (``HEAP``) holding the NUL-terminated link names and soft-link
values. Asking libhdf5 to visit a file of 20,000 objects costs a Python callback and an
object-info lookup per link; reading these structures costs a few small reads per group
(:class:`SymbolTables`). Any other group -- new-style (Link, Link Info messages), an object
header that is not version 1, a superblock that is not version 0 or 1 with 8-byte offsets
and lengths and no base address -- has its links listed by libhdf5, group by group
(:func:`walk`).

Damage in a symbol table is refused with a one-line
:class:`~ckptconv.errors.CorruptFileError` naming the file and the group: a signature or
version that is wrong, a node beyond the end of the file, a node reached twice (a cycle), a
B-tree deeper than 64 levels or whose levels do not step down one by one, more entries than
the superblock's node sizes allow, an unknown cache type, a name or soft-link value that is
not NUL-terminated inside its heap, local heaps that add up to more than the file. So are
link names no HDF5 writer gives (empty, ``.``, with a ``/``, the same twice). Every read is
bounded by the file's size.

The HDF5 File Format Specification (version 3.0: "Disk Format Level 0A: Superblock",
"Level 1A: Version 1 B-trees", "Level 1B: Group Symbol Table Nodes", "Level 1C: Symbol Table
Entry", "Level 1D: Local Heaps", "Level 2A.2: The Symbol Table Message") is the source of
truth for every layout here.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from itertools import accumulate
from operator import add, itemgetter
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ..errors import FETCH_AGAIN, CorruptFileError
from ._hdf5_headers import Header, Plain, lengths_are_8, object_header, object_headers, rows

if TYPE_CHECKING:
    import h5py

__all__ = ["MAX_OBJECTS", "SymbolTables", "TooManyLinks", "group_node_sizes", "superblock_root", "walk"]

MAX_OBJECTS = 1_000_000  # objects one walk describes; links and B-tree nodes: twice that
HARD, SOFT, EXTERNAL = 0, 1, 64  # libhdf5's link types (H5L_TYPE_HARD, _SOFT, _EXTERNAL), as h5py reports them
GROUP, DATASET = 0, 1  # libhdf5's object types (H5O_TYPE_GROUP, H5O_TYPE_DATASET), as h5py reports them
MAX_LEVEL = 64  # a B-tree of 64 levels would index more links than any file holds

_TREE_HEAD = struct.Struct("<4sBBH")  # signature, node type, level, entries used (then 2 siblings)
_TREE_HEAD_SIZE = 24
_SNOD_HEAD = struct.Struct("<4sBxH")  # signature, version, reserved, number of symbols
_ENTRY = struct.Struct("<QQI4xI12x")  # name offset, object header address, cache type, scratch pad
_ENTRY_SIZE = 40
_HEAP = struct.Struct("<4sB3xQ8xQ")  # signature, version, data size, (free list), data address
_HEAP_READ = 512  # a group's heap header and, usually right after it, its names: one read
_CACHED_SOFT_LINK = 2
_TREE_SIGNATURE = np.frombuffer(b"TREE", np.uint8)
_SNOD_SIGNATURE = np.frombuffer(b"SNOD", np.uint8)
_HEAP_SIGNATURE = np.frombuffer(b"HEAP", np.uint8)

Links = dict[str, tuple[int, int]]  # name -> (link type, object address or soft-link value size)


class TooManyLinks(Exception):
    """The file holds more objects or links than one walk catalogues."""


def group_node_sizes(superblock: bytes) -> tuple[int, int] | None:
    """``(leaf K, internal K)`` of a version 0 or 1 superblock with 8-byte offsets and
    lengths and base address 0: a symbol table node holds up to 2 * leaf K entries, a group
    B-tree node up to 2 * internal K children. None for any other superblock."""
    if len(superblock) < 36 or superblock[8] not in (0, 1) or superblock[13:15] != b"\x08\x08":
        return None
    leaf_k, internal_k = struct.unpack_from("<HH", superblock, 16)
    base = 24 if superblock[8] == 0 else 28
    if leaf_k == 0 or internal_k == 0 or struct.unpack_from("<Q", superblock, base)[0] != 0:
        return None
    return leaf_k, internal_k


_UNDEFINED = (1 << 64) - 1


def superblock_root(superblock: bytes, size: int) -> int | None:
    """The root group's object header address, from a superblock (version 0 or 1, 8-byte
    offsets and lengths, base address 0) that libhdf5 opens the way it is read here: no driver
    information block, and an end-of-file address within the image's ``size`` bytes (libhdf5
    refuses a file shorter than its superblock says: "truncated file"). None for any other
    superblock: libhdf5 opens the file and says what it makes of it.

    Source: the HDF5 File Format Specification 3.0, "Level 0A1: Format Signature and
    Superblock Version 0 and 1" (base address, free-space address, end-of-file address,
    driver information address, then the root group's symbol table entry).
    """
    if not superblock.startswith(b"\x89HDF\r\n\x1a\n") or group_node_sizes(superblock) is None:
        return None
    at = 24 if superblock[8] == 0 else 28  # the base address (0: checked above)
    if len(superblock) < at + 32 + 16:
        return None
    end_of_file, driver = struct.unpack_from("<QQ", superblock, at + 16)
    root = struct.unpack_from("<Q", superblock, at + 32 + 8)[0]  # the entry's object header address
    if driver != _UNDEFINED or end_of_file > size or root >= size:
        return None
    return root


BATCH_MIN = 64
"""The fewest headers (or small groups) of a level the walk parses together with numpy: a
batch costs about a millisecond and a half whatever its size, one header or group alone
some 10-20 microseconds, so fewer are parsed one by one (a small file's levels all are)."""


def walk(
    libhdf5: Callable[[], h5py.File],
    read: Callable[[int, int], bytes],
    size: int,
    *,
    root: int | None = None,
    path: str | os.PathLike[str] | Any,
    skip_min: int,
    image: np.ndarray | None = None,
) -> tuple[dict[int, Header], dict[str, Links], list[tuple[int, int]]]:
    """Every object's parsed header by address, every group's links by group path, and the
    byte ranges of contiguous datasets (of any size when the header parse describes the
    dataset, of at least ``skip_min`` bytes when libhdf5 must). The hard links are followed
    level by level (each level's headers and small groups parsed together), then headers and
    groups are given in libhdf5's visit order (depth first, by name, a link before what is
    under it).

    ``read(offset, n)`` reads the HDF5 image of ``size`` bytes (``image``, if given, is the
    same bytes as a uint8 array: headers are copied out of it in bulk); ``root`` is its root
    group's object header address (see :func:`superblock_root`; None: asked of libhdf5).
    ``libhdf5()`` gives the image opened by h5py, for what is not read here; a walk that
    reads everything itself never calls it (nor imports h5py). An old-style group's links are
    read from its symbol table; any other group's are asked of libhdf5. Each object is described once: a group reached by a second hard link gets no
    links here (readers ask libhdf5 for them), as libhdf5's visit does. An object whose
    header is not version 1 is asked of libhdf5 (its type, a dataset's range). Past
    :data:`MAX_OBJECTS` objects (or twice as many links) the walk stops, the group it was
    reading and the rest of its level left out: readers ask libhdf5 for what is not here.

    Raises:
        CorruptFileError: a symbol table is damaged, or a link name is impossible.
    """
    head = read(0, 96)
    parse = lengths_are_8(head)
    node_sizes = group_node_sizes(head) if parse else None
    tables = None if node_sizes is None else SymbolTables(read, size, node_sizes, limit=2 * MAX_OBJECTS, path=path)
    headers: dict[int, Header] = {}
    groups: dict[int, Links] = {}  # every group's links, by address
    ranges: list[tuple[int, int]] = []
    other = Header("other", False, None, None, None, 0, [])

    def describe(address: int, name: str, header: Header | None) -> Links | None:
        """Record one object's parsed header; a group's links (None for another object)."""
        if header is None:
            headers[address] = other
            return _libhdf5_object(libhdf5(), name, size, skip_min, ranges, path=path)
        headers[address] = header
        kind = header.kind
        if kind == "group":
            if header.symbols is not None and tables is not None:
                return tables.links(name, *header.symbols)
            return _libhdf5_links(libhdf5(), name, path=path)
        at, length = header.offset, header.length
        if kind == "dataset" and at is not None and 0 < length <= size - at:
            # a plain dataset's bytes are raw wherever they lie; any other's only when
            # libhdf5 says so, asked for ranges worth skipping
            if header.plain or (length >= skip_min and _contiguous(libhdf5(), name)):
                ranges.append((at, at + length))
        return None

    # level by level (the objects one link below the last level's groups), so that the
    # headers of a level are parsed together: most in one numpy pass (object_headers) when
    # the level has BATCH_MIN or more, the rest one by one; objects are named by the first
    # path found to them
    if root is None:
        import h5py

        root = h5py.h5o.get_info(libhdf5().id).addr
    level = [(root, "")]
    seen = {root}
    names: dict[int, str] = {}  # every group's path (the first found to it), by address
    owned: dict[int, list[int]] = {}  # the objects first found through each group, in link order
    tree = True  # no object reached twice (nor the walk stopped)
    try:
        while level:
            addresses = [address for address, _ in level]
            together = parse and len(level) >= BATCH_MIN
            plain: list[Plain] = []  # a batch's plain datasets without attributes: recorded together
            batch = object_headers(read, addresses, size, image=image, plain=plain) if together else [None] * len(level)
            rest: Iterable[int] = range(len(level))  # the rows looked at one by one
            if plain:
                left = np.ones(len(level), bool)
                for part in plain:  # plain datasets: their bytes are raw
                    headers.update(zip(part.addresses, part.headers))
                    at, length = part.offsets, part.lengths
                    inside = (length > 0) & (at <= np.uint64(size)) & (length <= np.uint64(size) - at)
                    ranges.extend(zip(at[inside].tolist(), (at + length)[inside].tolist()))
                    left[part.rows] = False
                rest = np.flatnonzero(left).tolist()
            if parse:
                for i in rest:
                    if batch[i] is None:
                        batch[i] = object_header(read, addresses[i], size)
            known: list[Links | None] = [None] * len(level)  # the links of the level's small old-style groups
            if tables is not None:
                small = [(i, batch[i].symbols) for i in rest if batch[i] is not None and batch[i].symbols is not None]  # type: ignore[union-attr]
                if len(small) >= BATCH_MIN:
                    tried = tables.many_links([(level[i][1] or "/", *at) for i, at in small], image)  # type: ignore[misc]
                    for (i, _), links in zip(small, tried):
                        known[i] = links
            below: list[tuple[int, str]] = []
            for i in rest:
                (address, name), header, links = level[i], batch[i], known[i]
                if header is not None and header.plain:  # a plain dataset: its bytes are raw
                    headers[address] = header
                    at, length = header.offset, header.length
                    if 0 < length <= size - at:  # type: ignore[operator]
                        ranges.append((at, at + length))  # type: ignore[operator]
                    continue
                if links is None:
                    links = describe(address, name or "/", header)
                    if links is None:
                        if address == root:  # libhdf5 opens the file, so its root is a group
                            raise CorruptFileError(f"the root group's object header is damaged; {FETCH_AGAIN}", path=path)
                        continue
                else:  # a small old-style group, its links read with the level's
                    headers[address] = header
                groups[address] = links
                names[address] = name or "/"
                found: list[int] = []
                for key, (link_type, child) in links.items():
                    if link_type:  # not a hard link
                        continue
                    if child in seen:  # found already: the links form no tree
                        tree = False
                        continue
                    if len(seen) >= MAX_OBJECTS:
                        raise TooManyLinks
                    seen.add(child)
                    found.append(child)
                    below.append((child, f"{name}/{key}"))
                if found:
                    owned[address] = found
            level = below
    except TooManyLinks:
        tree = False
    if tree:
        # each object reached once, by hard links: the paths found are libhdf5's, and its
        # visit order is each group, then what each of its links leads to, depth first
        order: list[int] = []
        stack = [iter((root,))]
        is_group = groups.keys()
        while stack:
            for address in stack[-1]:
                order.append(address)
                below_it = owned.get(address)
                if below_it is not None:
                    if is_group.isdisjoint(below_it):  # nothing under them: all in a row
                        order.extend(below_it)
                        continue
                    stack.append(iter(below_it))
                    break
            else:
                stack.pop()
        # (each built by iterators over the order: no Python step per object)
        in_order = list(filter(groups.__contains__, order))
        children = dict(zip(map(names.__getitem__, in_order), map(groups.__getitem__, in_order)))
        return dict(zip(order, map(headers.__getitem__, order))), children, sorted(ranges)
    # each group's links under its path, and the headers, in libhdf5's visit order (depth
    # first, by name): a group reached by a second hard link is not listed again
    children: dict[str, Links] = {"/": groups[root]}
    placed = {root: headers.pop(root)}
    stack = [("", iter(groups[root].items()))]
    while stack:
        prefix, walking = stack[-1]
        for key, (link_type, address) in walking:
            if link_type or address in placed or address not in headers:
                continue
            placed[address] = headers.pop(address)
            links = groups.get(address)
            if links is not None:
                name = f"{prefix}/{key}"
                children[name] = links
                stack.append((name, iter(links.items())))
                break
        else:
            stack.pop()
    placed.update(headers)  # none left unless the walk stopped at the object limit
    return placed, children, sorted(ranges)


class SymbolTables:
    """Reads old-style groups' links from an HDF5 image.

    Args:
        read: ``read(offset, n)``: up to ``n`` bytes of the image at ``offset`` (fewer at its end).
        size: The image's size in bytes.
        node_sizes: ``(leaf K, internal K)`` from :func:`group_node_sizes`.
        limit: How many links and B-tree nodes all calls together may read before
            :class:`TooManyLinks` is raised.
        path: The file, for error messages.
    """

    def __init__(
        self,
        read: Callable[[int, int], bytes],
        size: int,
        node_sizes: tuple[int, int],
        *,
        limit: int,
        path: str | os.PathLike[str] | Any,
    ) -> None:
        self._read = read
        self._size = size
        self._max_symbols = 2 * node_sizes[0]
        self._max_children = 2 * node_sizes[1]
        self._left = limit
        self._path = path
        self._nodes: set[int] = set()  # every B-tree node and symbol table node read so far
        self._heaps: dict[int, bytes] = {}
        self._heap_bytes = 0

    def links(self, group: str, btree: int, heap: int) -> Links:
        """The links of the group ``group`` whose Symbol Table message names ``btree`` and
        ``heap``, in B-tree order (libhdf5's order, by name): ``(HARD, object address)`` or
        ``(SOFT, length of the target path + 1)`` by name (what libhdf5's link info gives).

        Raises:
            CorruptFileError: the B-tree, a symbol table node, the heap or a name is damaged.
            TooManyLinks: the limit given to the constructor is reached.
        """
        names = self._heaps.get(heap)
        if names is None:
            names = self._heap(group, heap)
        read, nodes = self._read, self._nodes
        # what h5py's default node sizes need; more is read only when a node claims it
        node_bytes = _TREE_HEAD_SIZE + 8 + 16 * min(self._max_children, 32)
        snod_bytes = 8 + _ENTRY_SIZE * min(self._max_symbols, 8)
        table: Links = {}
        count = 0
        stack = [(btree, -1)]
        while stack:
            address, level = stack.pop()
            if address in nodes:
                self._damaged(group, f"its B-tree node at byte {address} is reached twice (a cycle)")
            nodes.add(address)
            node = read(address, node_bytes) if address < self._size else b""
            if len(node) < _TREE_HEAD_SIZE:
                self._damaged(group, f"its B-tree node at byte {address} lies beyond the end of the file")
            signature, node_type, node_level, entries = _TREE_HEAD.unpack_from(node)
            if signature != b"TREE" or node_type != 0:
                self._damaged(group, f"no group B-tree node at byte {address}")
            if level < 0 and node_level > MAX_LEVEL:
                self._damaged(group, f"its B-tree claims {node_level} levels (at most {MAX_LEVEL})")
            if level >= 0 and node_level != level:
                self._damaged(group, f"its B-tree node at byte {address} is at level {node_level}, not {level}")
            if entries > self._max_children:
                self._damaged(group, f"its B-tree node at byte {address} claims {entries} children")
            self._left -= entries + 1
            if self._left < 0:
                raise TooManyLinks
            words = 2 * entries + 1  # keys (name offsets) and child addresses, interleaved
            if len(node) < _TREE_HEAD_SIZE + 8 * words and len(node) == node_bytes:
                node = read(address, _TREE_HEAD_SIZE + 8 * words)
            if len(node) < _TREE_HEAD_SIZE + 8 * words:
                self._damaged(group, f"its B-tree node at byte {address} runs past the end of the file")
            below = struct.unpack_from(f"<{words}Q", node, _TREE_HEAD_SIZE)[1::2]
            if node_level:
                stack.extend((child, node_level - 1) for child in reversed(below))
                continue
            for child in below:
                if child in nodes:
                    self._damaged(group, f"its symbol table node at byte {child} is reached twice (a cycle)")
                nodes.add(child)
                snod = read(child, snod_bytes) if child < self._size else b""
                if len(snod) < 8:
                    self._damaged(group, f"its symbol table node at byte {child} lies beyond the end of the file")
                signature, version, symbols = _SNOD_HEAD.unpack_from(snod)
                if signature != b"SNOD" or version != 1:
                    self._damaged(group, f"no symbol table node at byte {child}")
                end = 8 + _ENTRY_SIZE * symbols
                if symbols <= self._max_symbols and len(snod) < end and len(snod) == snod_bytes:
                    snod = read(child, end)
                if symbols > self._max_symbols or len(snod) < end:
                    self._damaged(group, f"its symbol table node at byte {child} claims {symbols} entries")
                self._left -= symbols
                if self._left < 0:
                    raise TooManyLinks
                count += symbols
                self._entries(group, child, snod[8:end], names, table)
        if len(table) != count or "" in table or "." in table:
            self._impossible(group)
        return table

    def _entries(self, group: str, node: int, entries: bytes, names: bytes, table: Links) -> None:
        """Add the links of one symbol table node's ``entries`` (40 bytes each), named in the
        local heap data ``names``, to ``table``."""
        for name_at, header, cache, value_at in _ENTRY.iter_unpack(entries):
            stop = names.find(b"\0", name_at) if name_at < len(names) else -1
            if stop < 0:
                self._damaged(group, f"a link name at heap offset {name_at} is not NUL-terminated inside the heap")
            name = names[name_at:stop]
            if b"/" in name:
                self._impossible(group)
            if cache < _CACHED_SOFT_LINK:
                table[name.decode("utf-8", "surrogateescape")] = (HARD, header)
            elif cache == _CACHED_SOFT_LINK:
                stop = names.find(b"\0", value_at) if value_at < len(names) else -1
                if stop < 0:
                    self._damaged(group, f"a soft link value at heap offset {value_at} is not NUL-terminated inside the heap")
                table[name.decode("utf-8", "surrogateescape")] = (SOFT, stop - value_at + 1)
            else:
                self._damaged(group, f"a symbol table entry at byte {node} has cache type {cache}")

    def many_links(self, groups: list[tuple[str, int, int]], image: np.ndarray | None) -> list[Links | None]:
        """:meth:`links` of each ``(group, B-tree, local heap)``, for the groups of the shape
        h5py writes for small groups, checked together with numpy: a B-tree of one leaf node
        naming no symbol table node or one of at most 12 entries, and a local heap of at
        most 512 bytes of names. None for any other group (and any group something here looks
        wrong with): the caller asks :meth:`links`, which reads every shape and says what
        is damaged.
        """
        found: list[Links | None] = [None] * len(groups)
        size = self._size
        width = _HEAP_READ
        chosen = [i for i, (_, btree, heap) in enumerate(groups) if btree <= size - width and heap <= size - width]
        if not chosen:
            return found
        read = self._read
        heap_addresses = [groups[i][2] for i in chosen]
        # each structure is read as far as the checks and the names need (rows are copied)
        trees = rows(read, image, [groups[i][1] for i in chosen], _TREE_HEAD_SIZE + 16)
        heaps = rows(read, image, heap_addresses, _HEAP.size)
        # one leaf B-tree node (type 0, level 0) with no child (an empty group) or one: key,
        # child, key
        ok = (trees[:, :4] == _TREE_SIGNATURE).all(axis=1) & (trees[:, 4] == 0) & (trees[:, 5] == 0)
        one = (trees[:, 6] == 1) & (trees[:, 7] == 0)
        ok &= one | ((trees[:, 6] == 0) & (trees[:, 7] == 0))
        child = np.ascontiguousarray(trees[:, 32:40]).view("<u8")[:, 0]
        ok &= ~one | (child <= size - width)
        snods = rows(read, image, np.where(ok & one, child, 0), 8)
        symbols = snods[:, 6].astype(np.int64) | snods[:, 7].astype(np.int64) << 8
        snod = (snods[:, :4] == _SNOD_SIGNATURE).all(axis=1) & (snods[:, 4] == 1)
        ok &= ~one | (snod & (symbols <= min(self._max_symbols, (width - 8) // _ENTRY_SIZE)))
        # a local heap (version 0) of at most 512 bytes of data: right after its 32-byte
        # header or elsewhere
        heap_at = np.array(heap_addresses, np.uint64)
        length = np.ascontiguousarray(heaps[:, 8:16]).view("<u8")[:, 0]
        start = np.ascontiguousarray(heaps[:, 24:32]).view("<u8")[:, 0]
        ok &= (heaps[:, :4] == _HEAP_SIGNATURE).all(axis=1) & (heaps[:, 4] == 0)
        after = (start == heap_at + np.uint64(_HEAP.size)) & (length <= width - _HEAP.size)
        apart = ~after & (length <= width) & (start <= size - width)
        ok &= after | apart
        span = max(int(length[ok].max()) if ok.any() else 0, 1)  # the longest heap's data
        ok &= start <= np.uint64(size - span)
        # each row's names (its local heap's data), and the entries of all rows' symbol
        # table nodes together
        text = rows(read, image, np.where(ok, start, 0), span)
        used = np.where(ok & one, symbols, 0)
        entries = rows(read, image, np.where(used > 0, child + np.uint64(8), 0), _ENTRY_SIZE * max(int(used.max()), 1))
        width = span
        entry_row = np.repeat(np.arange(len(chosen)), used)
        first_entry = np.cumsum(used) - used  # where each row's entries start
        at = entry_row * entries.shape[1] + _ENTRY_SIZE * (np.arange(len(entry_row)) - first_entry[entry_row])
        words = entries.reshape(-1)
        name_at, address, cache = _little(words, at, 8), _little(words, at + 8, 8), _little(words, at + 16, 4)
        # a name ends at the first NUL at or after its offset, inside the heap's data
        inside = (text == 0) & (np.arange(width) < length[:, None].astype(np.int64))
        nuls = np.flatnonzero(inside)
        key = entry_row * width + np.minimum(name_at, np.uint64(width)).astype(np.int64)
        nul = nuls[np.minimum(np.searchsorted(nuls, key), len(nuls) - 1)] if len(nuls) else key - 1
        fine = (name_at < length[entry_row]) & (nul >= key) & (nul < entry_row * width + width) & (cache < _CACHED_SOFT_LINK)
        # rows with any other entry (a soft link, a name not terminated, a cache type that
        # is wrong) are read entry by entry, as links() reads them
        slow = np.zeros(len(chosen), bool)
        slow[entry_row[~fine]] = True
        flat = text.tobytes()
        keys, stops = key.tolist(), nul.tolist()
        joined = b"\0".join([flat[k:e] for k, e in zip(keys, stops)]).decode("utf-8", "surrogateescape")
        names_of = joined.split("\0") if keys else []
        if "/" in joined:  # a name with a '/': links() says it is impossible
            slow[entry_row[[i for i, name in enumerate(names_of) if "/" in name]]] = True
        links_of = list(zip([HARD] * len(keys), address.tolist()))
        child_at, counts, lengths, has_child = child.tolist(), used.tolist(), length.tolist(), one.tolist()
        taken = np.flatnonzero(ok).tolist()
        if not slow.any():  # the common case, checked and recorded for all rows at once
            tables = self._all_at_once(
                groups, chosen, taken, [child_at[row] if has_child[row] else None for row in taken],
                counts, lengths, flat, width, names_of, links_of,
            )
            if tables is not None:
                if len(tables) == len(groups):  # every group taken, in order
                    return tables  # type: ignore[return-value]
                for row, table in zip(taken, tables):
                    found[chosen[row]] = table
                return found
        nodes = self._nodes
        firsts, slows = first_entry.tolist(), slow.tolist()
        for row in taken:
            i = chosen[row]
            group, btree, heap = groups[i]
            node = child_at[row] if has_child[row] else None
            if btree in nodes or node in nodes or btree == node:
                continue  # a node reached twice: links() says where
            names = self._heaps.get(heap)
            if names is None:
                if self._heap_bytes + lengths[row] > size:
                    continue
                names = flat[row * width : row * width + lengths[row]]
                self._heaps[heap] = names
                self._heap_bytes += lengths[row]
            nodes.add(btree)
            if node is None:
                self._left -= 1
                count = 0
                table: Links = {}
            else:
                nodes.add(node)
                count = counts[row]
                self._left -= 2 + count
                if slows[row]:
                    table = {}
                    self._entries(group, node, entries[row, : _ENTRY_SIZE * count].tobytes(), names, table)
                else:
                    first = firsts[row]
                    table = dict(zip(names_of[first : first + count], links_of[first : first + count]))
            if self._left < 0:
                raise TooManyLinks
            if len(table) != count or "" in table or "." in table:
                self._impossible(group)
            found[i] = table
        return found

    def _all_at_once(
        self, groups: list[tuple[str, int, int]], chosen: list[int], taken: list[int], below: list[int | None],
        counts: list[int], lengths: list[int], flat: bytes, width: int, names_of: list[str],
        links_of: list[tuple[int, int]],
    ) -> list[Links] | None:
        """The tables of the rows ``taken`` (their entries all plain hard links; ``below``:
        each one's symbol table node, None for an empty group) when
        nothing in them repeats: no node or heap read before or twice, no name impossible,
        within the limits. Then all are recorded as :meth:`many_links`' row by row loop
        records them; else nothing is recorded and None is returned (the loop decides)."""
        # (every step below an iterator or a set operation: no Python step per group)
        picked = list(map(groups.__getitem__, map(chosen.__getitem__, taken)))
        trees, heaps = list(map(_SECOND, picked)), list(map(_THIRD, picked))
        nodes_below = [node for node in below if node is not None]
        read = trees + nodes_below
        used = list(map(counts.__getitem__, taken))
        heap_lengths = list(map(lengths.__getitem__, taken))
        heap_bytes = sum(heap_lengths)
        # links() counts a B-tree node and its children, and each symbol table node's entries
        cost = len(taken) + len(nodes_below) + sum(used)
        nodes, known = self._nodes, self._heaps
        if (
            len(set(read)) != len(read) or len(set(heaps)) != len(heaps)
            or not nodes.isdisjoint(read) or not known.keys().isdisjoint(heaps)
            or self._heap_bytes + heap_bytes > self._size or self._left - cost < 0
            or "" in names_of or "." in names_of
        ):
            return None
        # each row's entries follow the last row's
        ends = list(accumulate(used))
        cuts = list(map(slice, [0, *ends[:-1]], ends))
        tables = list(map(dict, map(zip, map(names_of.__getitem__, cuts), map(links_of.__getitem__, cuts))))
        if list(map(len, tables)) != used:  # a name twice in a group
            return None
        nodes.update(read)
        starts = [row * width for row in taken]
        known.update(zip(heaps, map(flat.__getitem__, map(slice, starts, map(add, starts, heap_lengths)))))
        self._heap_bytes += heap_bytes
        self._left -= cost
        return tables

    def _heap(self, group: str, address: int) -> bytes:
        head = self._read(address, _HEAP_READ) if address < self._size else b""
        if len(head) < _HEAP.size:
            self._damaged(group, f"its local heap at byte {address} lies beyond the end of the file")
        signature, version, length, start = _HEAP.unpack_from(head)
        if signature != b"HEAP" or version != 0:
            self._damaged(group, f"no local heap at byte {address}")
        if start > self._size or length > self._size - start:
            self._damaged(group, f"its local heap's data ({length} bytes at byte {start}) lies beyond the end of the file")
        self._heap_bytes += length
        if self._heap_bytes > self._size:
            self._damaged(group, "the local heaps of the file's groups overlap")
        if start == address + _HEAP.size and _HEAP.size + length <= len(head):
            names = head[_HEAP.size : _HEAP.size + length]
        else:
            names = self._read(start, length)
        self._heaps[address] = names
        return names

    def _damaged(self, group: str, detail: str) -> NoReturn:
        raise CorruptFileError(f"the links of group {group!r} are damaged: {detail}; {FETCH_AGAIN}", path=self._path)

    def _impossible(self, group: str) -> NoReturn:
        raise CorruptFileError(
            f"group {group!r} holds a link named '', '.', with a '/' or twice, which no HDF5 "
            f"writer gives: the file is damaged; {FETCH_AGAIN}",
            path=self._path,
        )


_SECOND, _THIRD = itemgetter(1), itemgetter(2)


def _little(flat: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """The little-endian unsigned integers of ``width`` bytes at offsets ``at`` of the
    uint8 array ``flat`` (as uint64)."""
    value = np.zeros(len(at), np.uint64)
    for i in range(width):
        value |= flat[at + i].astype(np.uint64) << np.uint64(8 * i)
    return value


def _libhdf5_links(f: h5py.File, group: str, *, path: Any) -> Links:
    """One group's links as libhdf5 lists them (by name), refusing impossible names."""
    table: Links = {}
    count = 0

    def add(name: bytes, info: Any) -> int | None:
        nonlocal count
        count += 1
        if b"/" in name:
            count = -1
            return 1
        table[name.decode("utf-8", "surrogateescape")] = (info.type, info.u)
        return 1 if count > 2 * MAX_OBJECTS else None

    import h5py

    gid = h5py.h5g.open(f.id, _b(group))  # held: the link proxy does not keep it open
    gid.links.iterate(add, info=True)
    if count > 2 * MAX_OBJECTS:
        raise TooManyLinks
    if len(table) != count or "" in table or "." in table:
        raise CorruptFileError(
            f"group {group!r} holds a link named '', '.', with a '/' or twice, which no HDF5 "
            f"writer gives: the file is damaged; {FETCH_AGAIN}",
            path=path,
        )
    return table


def _libhdf5_object(
    f: h5py.File, name: str, size: int, skip_min: int, ranges: list[tuple[int, int]], *, path: Any
) -> Links | None:
    """libhdf5's word on an object whose header is not parsed here: a group's links, or a
    dataset's contiguous range."""
    import h5py

    info = h5py.h5o.get_info(f.id, _b(name))
    if info.type == h5py.h5o.TYPE_GROUP:
        return _libhdf5_links(f, name, path=path)
    if info.type == h5py.h5o.TYPE_DATASET:
        dataset = h5py.h5d.open(f.id, _b(name))
        if dataset.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS:
            offset = dataset.get_offset()
            length = dataset.get_storage_size()
            if offset is not None and length >= skip_min and offset + length <= size:
                ranges.append((offset, offset + length))
    return None


def _contiguous(f: h5py.File, name: str) -> bool:
    """libhdf5's word on a dataset the header parse left undescribed (a filter pipeline or
    external storage may still come with a contiguous layout message)."""
    import h5py

    plist = h5py.h5d.open(f.id, _b(name)).get_create_plist()
    return plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_external_count() == 0


def _b(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")
