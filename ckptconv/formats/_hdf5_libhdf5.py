"""libhdf5's word on what the metadata walk (:mod:`._hdf5_links`) does not read itself: the
links of a group that is not an old-style group with a version 1 header, an object's type, a
dataset's contiguous byte range. h5py is imported on first use (a walk that reads everything
itself never asks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import CorruptFileError

if TYPE_CHECKING:
    import h5py

__all__ = ["TooManyLinks", "contiguous", "group_links", "object_links"]


class TooManyLinks(Exception):
    """The file holds more objects or links than one walk catalogues."""


def group_links(f: h5py.File, group: str, *, limit: int, path: Any) -> dict[str, tuple[int, int]]:
    """One group's links as libhdf5 lists them (by name): ``(link type, object address or
    soft-link value size)``, refusing impossible names.

    Raises:
        TooManyLinks: the group has more than ``limit`` links.
        CorruptFileError: a link name is impossible.
    """
    table: dict[str, tuple[int, int]] = {}
    count = 0

    def add(name: bytes, info: Any) -> int | None:
        nonlocal count
        count += 1
        if b"/" in name:
            count = -1
            return 1
        table[name.decode("utf-8", "surrogateescape")] = (info.type, info.u)
        return 1 if count > limit else None

    import h5py

    gid = h5py.h5g.open(f.id, _b(group))  # held: the link proxy does not keep it open
    gid.links.iterate(add, info=True)
    if count > limit:
        raise TooManyLinks
    if len(table) != count or "" in table or "." in table:
        raise CorruptFileError(
            f"group {group!r} holds a link named '', '.', with a '/' or twice (the file is damaged)",
            path=path,
        )
    return table


def object_links(
    f: h5py.File, name: str, size: int, skip_min: int, ranges: list[tuple[int, int]], *, limit: int, path: Any
) -> dict[str, tuple[int, int]] | None:
    """libhdf5's word on an object whose header is not parsed here: a group's links, or a
    dataset's contiguous range."""
    import h5py

    info = h5py.h5o.get_info(f.id, _b(name))
    if info.type == h5py.h5o.TYPE_GROUP:
        return group_links(f, name, limit=limit, path=path)
    if info.type == h5py.h5o.TYPE_DATASET:
        dataset = h5py.h5d.open(f.id, _b(name))
        if dataset.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS:
            offset = dataset.get_offset()
            length = dataset.get_storage_size()
            if offset is not None and length >= skip_min and offset + length <= size:
                ranges.append((offset, offset + length))
    return None


def contiguous(f: h5py.File, name: str) -> bool:
    """libhdf5's word on a dataset the header parse left undescribed (a filter pipeline or
    external storage may still come with a contiguous layout message)."""
    import h5py

    plist = h5py.h5d.open(f.id, _b(name)).get_create_plist()
    return plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_external_count() == 0


def _b(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")
