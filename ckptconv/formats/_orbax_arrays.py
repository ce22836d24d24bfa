"""The arrays of an Orbax PyTree checkpoint, through tensorstore: their zarr metadata at once,
their data in read-ahead batches.

Orbax stores every array of a pytree as a zarr array (v3 ``zarr.json``, or v2 ``.zarray``)
named by its parameter name (the pytree keys joined by dots), either inside one OCDBT
key-value database (``manifest.ocdbt`` and ``d/...`` under the pytree directory, the default)
or in a directory of its own. tensorstore is the one reader of that storage; it is imported
by :func:`import_tensorstore`, only when an Orbax checkpoint is opened.

Opening costs one tensorstore call per B-tree node, not one per array: Orbax writes OCDBT
databases that keep values up to 1 KiB inline in the B-tree's leaves, and every array's zarr
metadata is such a value, so dumping the nodes (``tensorstore.ocdbt.dump``) yields them all
(a value stored out of line is read by key); the root node's read is started first
(:func:`prefetch`), so that tensorstore reads and decodes it in its own threads while the
caller parses ``_METADATA``. Reading an array still opens it as a zarr array
in tensorstore, as Orbax's own restore does; that takes a few hundred microseconds of
tensorstore's work, so arrays are opened and read a batch at a time, ahead of the entry that
asks (see :class:`Arrays`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..dtypes import by_name
from ..errors import FETCH_AGAIN, CkptconvError, CorruptFileError, UnsafeInputError, UnsupportedError, damaged

EXTRA = "ckptconv[orbax]"
MAX_JSON_BYTES = 256 * 2**20
# tensorstore's cache of the OCDBT manifest and B-tree nodes, which every array's open looks
# its keys up in: a leaf node of 10,000 arrays decodes to about 15 MB; without the cache each
# open decodes it again
_NODE_CACHE_BYTES = 64 * 2**20
# array data is never cached: each array is read once, and a cache would only hold the
# checkpoint's data in memory (a 64 MiB pool shared with the nodes doubled a conversion's RSS)
_ARRAY_CACHE = "cache_pool#arrays"
_AHEAD_BYTES = 32 * 2**20  # most bytes of array data read ahead of the entries asking for it
_AHEAD_ARRAYS = 64  # most arrays opened and read together
_MAX_TREE_HEIGHT = 64
_MISSING: Any = object()  # a key the database does not hold


def import_tensorstore(path: Path) -> Any:
    """The ``tensorstore`` module.

    Raises:
        UnsupportedError: it is not installed (the ``ckptconv[orbax]`` extra).
    """
    try:
        import tensorstore
    except ImportError as e:
        raise UnsupportedError(
            "an Orbax checkpoint: reading it needs tensorstore, which is not installed; "
            f"pip install '{EXTRA}'",
            path=path,
        ) from e
    return tensorstore


def read_json(file: Path, *, what: str) -> Any:
    """The JSON data of ``file`` (at most :data:`MAX_JSON_BYTES`).

    Raises:
        CorruptFileError: it cannot be read or is not JSON.
        UnsafeInputError: it is implausibly large.
    """
    try:
        size = file.stat().st_size
    except OSError as e:
        raise CorruptFileError(f"cannot read {what}: {e.strerror}", path=file) from e
    if size > MAX_JSON_BYTES:
        raise UnsafeInputError(f"{what} is implausibly large ({size} bytes)", path=file)
    try:
        return json.loads(file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptFileError(f"{what} is not valid JSON ({e}); {FETCH_AGAIN}", path=file) from e


def unsafe_path(text: str) -> bool:
    """An absolute path, a URL, or one that climbs out with ``..``."""
    text = unquote(text)
    if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text):
        return True
    return ".." in re.split(r"[/\\]", text)


def _locations(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "location" and isinstance(value, str):
                yield value
            else:
                yield from _locations(value)
    elif isinstance(node, list):
        for value in node:
            yield from _locations(value)


def refuse_manifest_out(manifest: Any, *, path: Path) -> None:
    """Refuse an OCDBT manifest (or B-tree node) whose nodes live in files outside the
    database directory (a location is ``<kind>:<base path>:<relative path>:<offset>:<length>``).
    """
    for location in _locations(manifest):
        _, _, rest = location.partition(":")
        file_part = rest.rsplit(":", 2)[0]
        if any(p and unsafe_path(p) for p in file_part.split(":")):
            raise UnsafeInputError(
                f"the OCDBT manifest refers to {file_part!r}, outside the checkpoint", path=path
            )


def ts_error(e: Exception, *, path: Path, key: str | None = None, what: str) -> CkptconvError:
    """The error to raise for a tensorstore failure (it reports every failure as ValueError)."""
    text = " ".join(str(e).split())[:300]
    # a key naming a path outside the database; "Invalid key order" is a damaged B-tree node
    if "Invalid key" in text.replace("Invalid key order", ""):
        return UnsafeInputError(
            f"{what}: the OCDBT database refers to a file outside the checkpoint ({text})",
            path=path,
            tensor=key,
        )
    return CorruptFileError(f"{what} ({text}): the checkpoint is damaged; {FETCH_AGAIN}", path=path, tensor=key)


def zarr_dtype_shape(meta: Any, *, zarr3: bool, path: Path, key: str) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape from an array's ``zarr.json`` (v3) or ``.zarray`` (v2).

    Raises:
        CorruptFileError: the metadata is not an object or has no valid shape.
        UnsupportedError: its data type is not a numeric one ckptconv reads.
    """
    if not isinstance(meta, dict):
        raise CorruptFileError(
            damaged("the array's zarr metadata is not an object", "it"), path=path, tensor=key
        )
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d < 2**62 for d in shape):
        raise CorruptFileError(
            damaged(f"the array's zarr metadata has a bad shape {shape!r}", "it"), path=path, tensor=key
        )
    name = meta.get("data_type") if zarr3 else meta.get("dtype")
    if not isinstance(name, str):
        raise UnsupportedError(f"zarr data type {name!r} is not one ckptconv reads", path=path, tensor=key)
    try:
        dtype = by_name(name)
    except KeyError:
        try:
            dtype = np.dtype(name)  # zarr v2 typestrings: "<f4", "|i1", ...
        except TypeError:
            raise UnsupportedError(f"zarr data type {name!r} is not one ckptconv reads", path=path, tensor=key) from None
        if dtype.kind not in "biufc":
            raise UnsupportedError(f"zarr data type {name!r} is not a numeric tensor", path=path, tensor=key)
        dtype = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
    return dtype, tuple(shape)


def _context(ts: Any) -> Any:
    return ts.Context({"cache_pool": {"total_bytes_limit": _NODE_CACHE_BYTES}, _ARRAY_CACHE: {"total_bytes_limit": 0}})


def _file_spec(tree: Path) -> dict[str, str]:
    return {"driver": "file", "path": os.fspath(tree.resolve()) + "/"}


def _root_location(manifest: Any) -> str | None:
    """Where the B-tree root of the database's latest version is, or None (no version, or
    an empty database)."""
    versions = manifest.get("versions") if isinstance(manifest, dict) else None
    versions = [v for v in versions or [] if isinstance(v, dict)]
    if not versions:
        return None
    root = max(versions, key=lambda v: v.get("generation_number", 0)).get("root")
    location = root.get("location") if isinstance(root, dict) else None
    return location if isinstance(location, str) else None


class Prefetch:
    """A pytree directory's OCDBT manifest, read and checked, and the read of its B-tree's
    root node (at ``location``), under way in tensorstore's threads (``root``: its future).
    A plain class: a dataclass costs its module's import a few ``exec`` compilations."""

    __slots__ = ("context", "files", "manifest", "location", "root")

    def __init__(self, context: Any, files: Any, manifest: Any, location: str, root: Any) -> None:
        self.context = context
        self.files = files
        self.manifest = manifest
        self.location = location
        self.root = root


def prefetch(ts: Any, tree: Path) -> Prefetch | None:
    """Start reading the B-tree root of the OCDBT database in ``tree``, if it has one, so
    that tensorstore reads and decodes it (tens of milliseconds for 10,000 arrays) while the
    caller parses ``_METADATA``. Never raises: whatever is wrong (no manifest, a damaged or
    hostile one) leaves nothing started, and :class:`Arrays` finds and reports it.
    """
    if not (tree / "manifest.ocdbt").is_file():
        return None
    try:
        import tensorstore.ocdbt

        context = _context(ts)
        files = ts.KvStore.open(_file_spec(tree), context=context).result()
        manifest = tensorstore.ocdbt.dump(files).result()
        refuse_manifest_out(manifest, path=tree)
        location = _root_location(manifest)
        if location is None:
            return None
        return Prefetch(context, files, manifest, location, tensorstore.ocdbt.dump(files, location))
    except Exception:  # noqa: BLE001 - reported by Arrays, in its turn
        return None


class Arrays:
    """The arrays of one pytree directory: metadata for all at once, data read ahead.

    Data is read in the order :meth:`read_in_order` was given (the store's order, which is
    the order a conversion writes in): when an array is asked for, it and the arrays after
    it are opened and read together, up to :data:`_AHEAD_ARRAYS` arrays and
    :data:`_AHEAD_BYTES` bytes held ahead, and the next batch is started when the last of
    one is handed out. An array asked for out of that order drops what was read ahead and
    starts again at one array a batch, doubling while the reads stay in order. An array
    larger than the byte bound is read on its own, when asked for. Errors of an array read
    ahead are raised when it is asked for, naming it.
    """

    def __init__(self, ts: Any, tree: Path, *, ocdbt: bool, zarr3: bool, started: Prefetch | None = None) -> None:
        """``started``: what :func:`prefetch` started for ``tree`` (used when ``ocdbt``)."""
        self.ts = ts
        self.tree = tree
        self.ocdbt = ocdbt
        self.zarr3 = zarr3
        self.started = started if ocdbt else None
        self.context = self.started.context if self.started is not None else _context(ts)
        self.meta_name = "zarr.json" if zarr3 else ".zarray"
        self.array_spec = {"driver": "zarr3" if zarr3 else "zarr", "cache_pool": _ARRAY_CACHE}
        base = _file_spec(tree)
        self.kvstore: Any = None
        self.files: Any = None  # the pytree directory as a file kvstore (the B-tree's nodes)
        self.manifest: Any = None
        try:
            self.files = self.started.files if self.started is not None else ts.KvStore.open(base, context=self.context).result()
            if not ocdbt:
                self.kvstore = self.files
        except Exception as e:  # noqa: BLE001 - tensorstore reports every failure as ValueError
            raise ts_error(e, path=tree, what="the checkpoint directory cannot be opened") from e
        if ocdbt:
            import tensorstore.ocdbt

            if self.started is not None:
                self.manifest = self.started.manifest  # read and checked
            else:
                try:
                    self.manifest = tensorstore.ocdbt.dump(self.files).result()
                except Exception as e:  # noqa: BLE001
                    raise ts_error(e, path=tree, what="the OCDBT manifest cannot be read") from e
                refuse_manifest_out(self.manifest, path=tree)
            try:
                self.kvstore = ts.KvStore.open({"driver": "ocdbt", "base": base}, context=self.context).result()
            except Exception as e:  # noqa: BLE001
                raise ts_error(e, path=tree, what="the OCDBT database cannot be opened") from e
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._position: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._opening: dict[str, Any] = {}  # param -> future of the opened array
        self._reading: dict[str, Any] = {}  # param -> future of its data, or the error opening it
        self._next = 0  # position of the array a reader in order asks for next
        self._batch = 1

    # --- metadata ----------------------------------------------------------------------------

    def metadata(self, params: list[str], names: list[str]) -> list[Any]:
        """Every array's zarr metadata (JSON data), in the order of ``params``; arrays of one
        shape and dtype share one object.

        Raises:
            CorruptFileError: an array's metadata is missing, unreadable or not JSON.
            UnsafeInputError: the database refers to files outside the checkpoint.
        """
        if not self.ocdbt:
            return [read_json(self.tree / p / self.meta_name, what=f"{p}/{self.meta_name}") for p in params]
        stored = self._stored_metadata()
        suffix = "/" + self.meta_name
        keys = [(param + suffix).encode() for param in params]
        raws = list(map(stored.get, keys, [_MISSING] * len(keys)))
        out = []
        parsed: dict[bytes, Any] = {}  # arrays of one shape and dtype have the same metadata
        late: dict[bytes, Any] = {}  # values stored out of line: read by key, all together
        for key, raw, name in zip(keys, raws, names):
            if raw is None and key not in late:
                late[key] = self.kvstore.read(key)
        for key, raw, name in zip(keys, raws, names):
            if raw is _MISSING:
                raise CorruptFileError(
                    f"_METADATA lists this array but the OCDBT database has no "
                    f"{key.decode()!r}: the checkpoint is incomplete or damaged; {FETCH_AGAIN}",
                    path=self.tree,
                    tensor=name,
                )
            value = parsed.get(raw)  # type: ignore[arg-type]
            if value is not None:
                out.append(value)
                continue
            try:
                if raw is None:
                    raw = late[key].result().value
                value = parsed[raw] = json.loads(raw)
                out.append(value)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise CorruptFileError(
                    f"its zarr metadata is not valid JSON ({e}); {FETCH_AGAIN}", path=self.tree, tensor=name
                ) from e
            except Exception as e:  # noqa: BLE001
                raise ts_error(e, path=self.tree, key=name, what="its zarr metadata cannot be read") from e
        return out

    def _stored_metadata(self) -> dict[bytes, bytes | None]:
        """Every zarr metadata key of the database's latest version, with its value where the
        B-tree leaf holds it inline, None where it is stored out of line.

        The B-tree is walked a level at a time with ``tensorstore.ocdbt.dump``: a node's keys
        are relative to the common prefix of the subtree it heads, which its parent records.
        """
        import tensorstore.ocdbt

        location = _root_location(self.manifest)
        if location is None:
            return {}  # no version, or an empty database
        suffix = b"/" + self.meta_name.encode()
        found: dict[bytes, bytes | None] = {}
        level = [(b"", location)]
        started = self.started
        self.started = None
        for _ in range(_MAX_TREE_HEIGHT + 1):
            if not level:
                return found
            pending = [
                (prefix, started.root if started is not None and where == started.location else tensorstore.ocdbt.dump(self.files, where))
                for prefix, where in level
            ]
            started = None
            level = []
            for prefix, future in pending:
                try:
                    node = future.result()
                except Exception as e:  # noqa: BLE001
                    raise ts_error(e, path=self.tree, what="the OCDBT B-tree cannot be read") from e
                entries = node.get("entries", []) if isinstance(node, dict) else []
                if node.get("height", 0) > 0:
                    refuse_manifest_out(entries, path=self.tree)
                    level.extend((prefix + e["subtree_common_prefix"], e["location"]) for e in entries)
                elif prefix:  # a leaf: arrays' metadata keys (kept) and their chunks' keys
                    found.update(
                        {key: e.get("inline_value") for e in entries if (key := prefix + e["key"]).endswith(suffix)}
                    )
                else:  # a leaf that is the root: its keys are whole
                    found.update({key: e.get("inline_value") for e in entries if (key := e["key"]).endswith(suffix)})
                if type(entries) is list:
                    # tensorstore (0.1.86) never releases one reference to the list ocdbt.dump
                    # returns, nor to the bytes in it: emptied, the list at least frees the
                    # entries' dicts (a quarter of the ~14 MB a leaf of 10,000 arrays leaks)
                    entries.clear()
        raise CorruptFileError(
            damaged(f"the OCDBT B-tree is more than {_MAX_TREE_HEIGHT} levels deep", "it"), path=self.tree
        )

    # --- data --------------------------------------------------------------------------------

    def read_in_order(self, params: list[str], sizes: Mapping[str, int]) -> None:
        """The order arrays will be asked for (``params``), and their sizes in bytes by param."""
        self._order = list(params)
        self._position = {p: i for i, p in enumerate(params)}
        self._sizes = sizes

    def load(self, param: str, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The array ``param`` (``name``: what errors call it), of ``dtype`` and ``shape`` as
        its metadata says: an entry's loader, bound to its arguments.

        Raises:
            CorruptFileError: its data cannot be read, or has another shape.
            UnsafeInputError: its data lies outside the checkpoint.
        """
        try:
            data = np.asarray(self._take(param).result())
        except CkptconvError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ts_error(e, path=self.tree, key=name, what="the array cannot be read") from e
        if data.shape != shape:
            raise CorruptFileError(
                f"stored array has shape {list(data.shape)}, its metadata says {list(shape)} (the "
                f"checkpoint is damaged); {FETCH_AGAIN}",
                path=self.tree,
                tensor=name,
            )
        data = np.asarray(data, dtype=dtype)
        return data if data.flags.c_contiguous else data.copy(order="C")

    def _open(self, param: str) -> Any:
        return self.ts.open(
            self.array_spec, kvstore=self.kvstore / f"{param}/", context=self.context, open=True, read=True
        )

    def _take(self, param: str) -> Any:
        """The future of ``param``'s data (or the error opening it), read ahead or now; in
        order, the next batch starts when the last of this one is handed out."""
        with self._lock:
            position = self._position.get(param)
            in_order = position is not None and position == self._next
            if param not in self._reading and param not in self._opening:
                self._opening.clear()  # what was read ahead is not what is asked for: drop it
                self._reading.clear()
                self._batch = min(self._batch * 2, _AHEAD_ARRAYS) if in_order else 1
                self._start(position, first=param)
            if param in self._opening:
                self._start_reads()
            future = self._reading.pop(param)
            self._next = position + 1 if position is not None else -1
            if in_order and not self._reading and not self._opening:
                self._batch = min(self._batch * 2, _AHEAD_ARRAYS)
                self._start(position + 1)
        if isinstance(future, Exception):
            raise future
        return future

    def _start(self, position: int | None, *, first: str | None = None) -> None:
        """Open the arrays from ``position`` on (the current batch size, within the byte
        bound); ``first`` (asked for now) is opened whatever its size."""
        batch = [first] if first is not None else []
        held = 0
        if position is not None and self._batch > len(batch):
            for param in self._order[position + len(batch) : position + self._batch]:
                held += self._sizes.get(param, 0)
                if held > _AHEAD_BYTES:
                    break
                batch.append(param)
        for param in batch:
            self._opening[param] = self._open(param)

    def _start_reads(self) -> None:
        """Read every array opened (their reads run together in tensorstore's threads)."""
        for param, future in self._opening.items():
            try:
                self._reading[param] = future.result().read()
            except Exception as e:  # noqa: BLE001 - raised when the array is asked for
                self._reading[param] = e
        self._opening.clear()
