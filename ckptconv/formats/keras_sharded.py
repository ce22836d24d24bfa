"""Sharded Keras 3 weights: ``x.weights.json`` plus ``x_0000k.weights.h5`` shards.

The JSON maps each ``vars`` group path to the shard(s) holding it (a list, or a bare string
in some writers). Shards are ordinary ``.weights.h5`` files; the variables of one group may be
spread over several of them, so the groups of all shards are merged before naming.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import FETCH_AGAIN, CorruptFileError, FormatError, UnsafeInputError
from ..store import Store
from . import _low_level_errors, load_index
from ._hdf5_file import describe_h5py_error, from_h5py, open_h5
from .keras_weights import (
    _natural_key,
    _Source,
    _VarsGroup,
    build_entries,
    collect_vars,
    looks_like_v3,
    recorded_names,
)

FORMAT = "keras-sharded"


def index_in_directory(path: Path) -> Path | None:
    """The one ``*.weights.json`` of a directory (where ``save_weights(..., max_shard_size=)``
    put a set), or None when it holds none or several."""
    try:
        found = [p for p in path.glob("*.weights.json") if p.is_file()]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def sniff(path: str | os.PathLike[str], head: bytes) -> bool:
    """A JSON index whose ``weight_map`` points at ``.weights.h5`` shards, or a directory holding
    exactly one such index."""
    path = Path(path)
    if path.is_dir():
        index = index_in_directory(path)
        if index is None:
            return False
        with index.open("rb") as f:
            return sniff(index, f.read(4096))
    if not head.lstrip().startswith(b"{") or not path.is_file():
        return False
    try:
        index = load_index(path)
    except _NOT_AN_INDEX:
        return False
    values = index.get("weight_map", {}).values() if isinstance(index.get("weight_map"), dict) else []
    return any(str(f).endswith(".h5") for v in values for f in ([v] if isinstance(v, str) else v))


_NOT_AN_INDEX = (CorruptFileError, OSError, UnicodeError)


def shard_paths(path: Path, index: dict) -> list[Path]:
    """The shard files the index names, in first-mention order, each checked to exist and to
    lie in the index's own directory."""
    base = path.parent.resolve()
    seen: dict[str, Path] = {}
    for group, files in index["weight_map"].items():
        for name in [files] if isinstance(files, str) else files:
            if not isinstance(name, str):
                raise CorruptFileError(
                    f"bad shard entry {name!r} for {group!r}: the index is damaged; {FETCH_AGAIN}", path=path
                )
            if name in seen:
                continue
            candidate = (base / name).resolve()
            if os.path.isabs(name) or candidate.parent != base:
                raise UnsafeInputError(
                    f"the index names a shard outside its directory: {name!r}", path=path
                )
            if not candidate.is_file():
                what = "is not a regular file" if candidate.exists() else "is missing"
                raise CorruptFileError(
                    f"shard {name!r} named by the index {what}: copy every shard along with the index",
                    path=path,
                )
            seen[name] = candidate
    if not seen:
        raise CorruptFileError(f"the shard index names no shards: it is damaged or incomplete; {FETCH_AGAIN}", path=path)
    return list(seen.values())


@contextmanager
def _named(shard: Path) -> Iterator[None]:
    """libhdf5's refusal of a damaged shard's object, said of that shard (not the index)."""
    try:
        yield
    except _low_level_errors() as e:  # (what formats.open turns into one line for the index)
        if isinstance(e, CorruptFileError) or not from_h5py(e):
            raise
        raise CorruptFileError(describe_h5py_error(e), path=shard) from e


def open(path: str | os.PathLike[str]) -> Store:  # noqa: A001
    """Open a sharded Keras 3 weights set through its ``.weights.json`` (metadata only), or
    through the directory holding it."""
    path = Path(path)
    if path.is_dir():
        found = index_in_directory(path)
        if found is None:
            raise FormatError("the directory holds no single .weights.json index", path=path)
        path = found
    index = load_index(path)
    shards = shard_paths(path, index)
    files = []
    groups: dict[str, _VarsGroup] = {}
    order: list[str] = []
    root = None
    try:
        names: dict[str, str] = {}
        for shard in shards:
            with _named(shard):
                f = open_h5(shard, path=shard)
                files.append(f)
                if not looks_like_v3(f, shard=True):
                    raise FormatError("shard is not a Keras 3 weights file", path=shard)
                names.update(recorded_names(f, path=os.fspath(shard)))
        for shard, f in zip(shards, files):
            source = _Source(os.fspath(shard), os.fspath(shard), 0, os.path.getsize(shard))
            with _named(shard):
                root = collect_vars(f, source, groups, order, key_names=names) or root
        # list layers as a single .weights.h5 of the same model would, not in shard order
        order.sort(key=lambda p: tuple(map(_natural_key, p.split("/"))))
        entries = build_entries(groups, order, root_name=root)
    except BaseException:
        for f in files:
            f.close()
        raise

    def close() -> None:
        for f in files:
            f.close()

    metadata = {"model": root} if root else {}
    return Store(
        entries, format=FORMAT, path=path, files=[path, *shards], metadata=metadata, closer=close
    )
