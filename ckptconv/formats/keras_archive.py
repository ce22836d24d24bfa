"""Keras ``.keras`` models: a zip with ``config.json``, ``metadata.json``, ``model.weights.h5``,
or the same three files in a directory (``model.save("m", zipped=False)``, Keras >= 3.14,
the default for Hugging Face Hub destinations).

The weights are read in place: Keras stores the members uncompressed, so the HDF5 image is a
plain byte range of the zip and every tensor's bytes lie at (member offset + dataset offset);
in a directory they are byte ranges of ``model.weights.h5`` itself. Nothing is extracted.
``config.json`` is parsed as JSON only — never unmarshalled or executed (a Lambda layer's
bytecode is just a string here); it names the layers, their classes and dtype policies.
"""

from __future__ import annotations

import builtins
import io
import json
import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import (
    FETCH_AGAIN,
    CkptconvError,
    CorruptFileError,
    IntegrityError,
    OutputError,
    UnsafeInputError,
    UnsupportedError,
    truncated,
)
from ..store import Store
from ._hdf5_file import open_h5
from ._keras_optimizer import name_optimizer_variables
from ._zip import (
    MAX_EXPANSION,
    Member,
    central_directory,
    check_stored_crcs,
    data_offsets,
    first_member_kind,
    read_member,
    refuse_zip_bomb,
)
from .keras_weights import (
    LayerInfo,
    _Source,
    _VarsGroup,
    build_entries,
    collect_vars,
    layer_infos,
    looks_like_v3,
    snake_case,
)

if TYPE_CHECKING:  # an archive is opened without pathlib (a directory imports it)
    from pathlib import Path

FORMAT = "keras-archive"
WEIGHTS_MEMBER = "model.weights.h5"
NPZ_MEMBER = "model.weights.npz"
CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
MAX_CONFIG_BYTES = 256 * 2**20
_PREADV = hasattr(os, "preadv")


def sniff(path: str | os.PathLike[str], head: bytes) -> bool:
    """A zip whose members include ``model.weights.h5`` or ``config.json``, or a directory
    holding ``config.json`` and the weights (``model.weights.h5``, or the ``.npz`` Keras'
    ``weights_format="npz"`` writes, which :func:`open` refuses with a clear message)."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, CONFIG_MEMBER)) and (
            os.path.isfile(os.path.join(path, WEIGHTS_MEMBER)) or os.path.isfile(os.path.join(path, NPZ_MEMBER))
        )
    if not head.startswith(b"PK\x03\x04") or not os.path.isfile(path):
        return False
    kind = first_member_kind(head)  # the first member says, without reading the central directory
    if kind != "file":
        return kind == ".keras file"
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return False
    return WEIGHTS_MEMBER in names or "config.json" in names


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes at ``offset`` of a file (pread based)."""

    def __init__(self, path: str, offset: int, length: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._path = path
        self._offset = offset
        self._length = length
        self._pos = 0

    def image_region(self) -> tuple[str, int, int]:
        """``(path, offset, length)``: where the bytes lie (readers may map them)."""
        return self._path, self._offset, self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    # libhdf5 reads the image through these two, a seek and a read per metadata object
    # (tens of thousands for a large model): kept to a few operations each

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = pos
        elif whence == io.SEEK_CUR:
            target = self._pos + pos
        elif whence == io.SEEK_END:
            target = self._length + pos
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        self._pos = target if target > 0 else 0
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._length - self._pos)
        if n <= 0:
            return 0
        if _PREADV:  # straight into libhdf5's buffer
            got = os.preadv(self._fd, [view[:n]], self._offset + self._pos)
        else:
            data = os.pread(self._fd, n, self._offset + self._pos)
            got = len(data)
            view[:got] = data
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _read_config(members: dict[str, Member], f: Any, path: str | os.PathLike[str]) -> Any:
    info = members.get(CONFIG_MEMBER)
    if info is None:
        return None
    if info.file_size > MAX_CONFIG_BYTES:
        raise UnsafeInputError("config.json is implausibly large", path=path, tensor="config.json")
    refuse_zip_bomb(info, path)
    raw = read_member(path, info, file=f, what="archive")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptFileError(f"config.json is not valid JSON ({e}); {FETCH_AGAIN}", path=path) from e


def key_names(config: Any) -> dict[str, str]:
    """HDF5 group paths -> layer names, following Keras' own keying (snake_case class name,
    ``_1``, ``_2``, ... in layer order) for files that do not record names (tf-keras, Keras < 3.6).

    The config is JSON data; a layer whose ``config`` is not an object has no name here."""
    names: dict[str, str] = {}

    def visit(layers: list[Any], sequential: bool, prefix: str, depth: int) -> None:
        # one call per model (its ``layers`` list), not per layer: a layer is looked into
        # only when its config holds layers of its own
        counters: dict[str, int] = {}
        for layer in layers:
            if type(layer) is not dict:
                continue
            class_name = layer.get("class_name")
            if type(class_name) is not str or (sequential and class_name == "InputLayer"):
                continue
            snake = snake_case(class_name)
            count = counters.get(snake, 0)
            counters[snake] = count + 1
            path = f"{prefix}/layers/{snake}" if count == 0 else f"{prefix}/layers/{snake}_{count}"
            cfg = layer.get("config")
            if type(cfg) is not dict:
                continue
            name = cfg.get("name")
            if type(name) is str:
                names[path] = name
            inner = cfg.get("layers")
            if type(inner) is list and depth < 100:
                visit(inner, class_name == "Sequential", path, depth + 1)

    cfg = config.get("config") if type(config) is dict else None
    layers = cfg.get("layers") if type(cfg) is dict else None
    if type(layers) is list:
        try:
            visit(layers, config.get("class_name") == "Sequential", "", 0)
        finally:
            del visit  # it refers to itself (see keras_weights.layer_infos)
    return names


def _npz_refused(path: str | os.PathLike[str]) -> UnsupportedError:
    return UnsupportedError(
        "the weights were saved with weights_format='npz', which ckptconv does not read "
        "(Keras 3.15 cannot reload them either); save the model again with the default "
        "weights_format='h5'",
        path=path,
    )


def _parse_metadata(raw: bytes) -> dict[str, str]:
    """``metadata.json``'s scalar fields (the Keras version and save date); anything
    unreadable is ignored: the weights do not need it."""
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    if not isinstance(meta, dict):
        return {}
    return {k: str(v) for k, v in meta.items() if isinstance(v, (str, int, float))}


def open(path: str | os.PathLike[str]) -> Store:  # noqa: A001
    """Open a ``.keras`` model's weights in place (metadata only; nothing is extracted): a
    zip archive, or the directory ``model.save(..., zipped=False)`` writes."""
    if os.path.isdir(path):
        return _open_directory(path)
    with builtins.open(path, "rb") as f:
        # the central directory, read as zipfile reads it and refused where zipfile refuses it
        members = {m.filename: m for m in central_directory(path, kind=".keras file", file=f)}
        info = members.get(WEIGHTS_MEMBER)
        if info is None or CONFIG_MEMBER not in members:
            # a member Keras always writes is missing: a damaged byte in its name in the
            # central directory shows as its local header naming it otherwise
            data_offsets(path, list(members.values()), file=f)
        if info is None:
            if NPZ_MEMBER in members:
                raise _npz_refused(path)
            raise CorruptFileError(f"the archive holds no {WEIGHTS_MEMBER} (saved without weights?)", path=path)
        config = _read_config(members, f, path)
        metadata_json: dict[str, str] = {}
        meta = members.get(METADATA_MEMBER)
        if meta is not None and meta.file_size < 2**20:
            try:
                metadata_json = _parse_metadata(read_member(path, meta, file=f, what="archive"))
            except CkptconvError:
                pass  # metadata.json only adds the Keras version; the weights do not need it
        integrity = None
        if info.compress_type == 0:  # stored, as Keras writes it
            start = data_offsets(path, [info], file=f)[0]
            if start + info.file_size > os.path.getsize(path):
                raise CorruptFileError(
                    truncated(f"{WEIGHTS_MEMBER} extends beyond the end of the archive", or_damaged=True), path=path
                )
            fileobj: Any = _Window(os.fspath(path), start, info.file_size)
            source = _Source(os.fspath(path), os.fspath(path), start, info.file_size)
            integrity = partial(check_stored_crcs, os.fspath(path), [(start, info)], what="archive")
        else:
            if info.compress_size and info.file_size / info.compress_size > MAX_EXPANSION:
                raise UnsafeInputError(
                    f"{WEIGHTS_MEMBER} expands {info.file_size / info.compress_size:.0f}x: "
                    "refusing a likely zip bomb",
                    path=path,
                )
            # a re-zipped archive: decompressed once, front to back (its CRC-32 checked at the
            # end), into a temporary file HDF5 can seek in; nothing lands under a real name
            fileobj = _decompressed(info, path)
            source = _Source(os.fspath(path), None, 0, info.file_size)
    return _read_weights(path, fileobj, source, config, metadata_json, files=[path], integrity=integrity)


def _member_file(directory: Path, name: str) -> Path:
    """``directory/name``, refused when a link takes it outside the directory."""
    member = directory / name
    if member.resolve().parent != directory.resolve():
        raise UnsafeInputError(
            f"{name} is a link to a file outside the model directory ({member.resolve()})",
            path=directory,
        )
    return member


def _open_directory(path: str | os.PathLike[str]) -> Store:
    """The directory form: the same three files, ``model.weights.h5`` read in place."""
    from pathlib import Path

    path = Path(path)
    weights = _member_file(path, WEIGHTS_MEMBER)
    if not weights.is_file():
        if (path / NPZ_MEMBER).is_file():
            raise _npz_refused(path)
        raise CorruptFileError(f"the model directory holds no {WEIGHTS_MEMBER}", path=path)
    with weights.open("rb") as f:
        if f.read(4) == b"PK\x03\x04":
            # Keras 3.15 writes weights_format="npz" directories' npz archive under the
            # .h5 name
            raise _npz_refused(path)
    config_path = _member_file(path, CONFIG_MEMBER)
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise UnsafeInputError(f"{CONFIG_MEMBER} is implausibly large", path=config_path)
    try:
        config = json.loads(config_path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptFileError(f"{CONFIG_MEMBER} is not valid JSON ({e}); {FETCH_AGAIN}", path=config_path) from e
    files = [weights, config_path]
    metadata_json: dict[str, str] = {}
    metadata_path = _member_file(path, METADATA_MEMBER)
    if metadata_path.is_file() and metadata_path.stat().st_size < 2**20:
        metadata_json = _parse_metadata(metadata_path.read_bytes())
        files.append(metadata_path)
    size = os.path.getsize(weights)
    source = _Source(os.fspath(weights), os.fspath(weights), 0, size)
    return _read_weights(path, os.fspath(weights), source, config, metadata_json, files=files)


def _read_weights(
    path: str | os.PathLike[str],
    fileobj: Any,
    source: _Source,
    config: Any,
    metadata_json: dict[str, str],
    *,
    files: list[str | os.PathLike[str]],
    integrity: Callable[[], None] | None = None,
) -> Store:
    """The store of a ``model.weights.h5`` image (a file, or a window of the zip), its layers
    named and ordered by ``config.json``; ``integrity`` checks the stored member's zip CRC-32."""
    f = open_h5(fileobj, path=source.path)
    try:
        if not looks_like_v3(f):
            raise CorruptFileError(f"{WEIGHTS_MEMBER} is not a Keras 3 weights file", path=path)
        try:
            infos: dict[str, LayerInfo] = layer_infos(config) if config is not None else {}
        except UnsafeInputError as e:  # raised without the file: name it
            raise UnsafeInputError(e.reason, path=path, tensor=CONFIG_MEMBER) from e
        groups: dict[str, _VarsGroup] = {}
        order: list[str] = []
        root = collect_vars(f, source, groups, order, key_names=key_names(config) if config else None)
        entries = build_entries(groups, order, infos=infos, root_name=root)
        if config is not None:
            entries = name_optimizer_variables(entries, config)
    except BaseException:
        f.close()
        if not isinstance(fileobj, str):
            fileobj.close()
        raise

    def close() -> None:
        f.close()
        if not isinstance(fileobj, str):
            fileobj.close()

    metadata = {k: v for k, v in metadata_json.items() if k in ("keras_version", "date_saved")}
    if root:
        metadata["model"] = root
    return Store(
        entries, format=FORMAT, path=path, files=files, metadata=metadata, closer=close,
        integrity=integrity,
    )


_SPOOL_IN_MEMORY = 64 * 2**20  # a decompressed member up to this size stays in memory
_CRC_CHUNK = 8 * 2**20


def _decompressed(info: Member, path: str | os.PathLike[str]) -> Any:
    """A compressed member, decompressed once and sequentially into a seekable temporary file
    (in memory up to 64 MiB, then in the system's temporary directory, already unlinked).
    Reading it through zipfile directly restarts the decompression at every backward seek,
    which made a deflated archive tens of times slower than a stored one."""
    import shutil  # here: an archive of stored members (Keras' own) needs none of these
    import tempfile
    import zipfile
    import zlib

    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
    try:
        with zipfile.ZipFile(path) as z, z.open(info.filename) as member:
            shutil.copyfileobj(member, spool, _CRC_CHUNK)  # zipfile checks the CRC-32 at the end
        spool.seek(0)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        spool.close()
        error = IntegrityError if "CRC" in str(e) else CorruptFileError
        raise error(f"{info.filename} cannot be decompressed ({e}): the archive is damaged; {FETCH_AGAIN}",
                    path=path) from e
    except OSError as e:
        spool.close()
        raise OutputError(
            f"cannot decompress {info.filename} into a temporary file: {e.strerror or e} (set "
            f"TMPDIR to a directory with {info.file_size} bytes free)",
            path=tempfile.gettempdir(),
        ) from e
    return spool
