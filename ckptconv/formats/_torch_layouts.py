"""One ``torch.save`` file, by its layout: the unpickled object and where each storage's bytes lie.

:func:`parse` reads a file's metadata in either layout :mod:`.pytorch` describes: the **zip**
archive (``<archive>/data.pkl``, one ``<archive>/data/<key>`` member per storage, the
``byteorder``, ``version`` and ``.format_version`` records) or the **legacy** pickle stream
(magic number, protocol version, sys info, the object, the storage keys, then each storage as
an int64 element count and its bytes). The object pickle goes through
:mod:`._torch_pickle`'s restricted unpickler; each storage the pickle refers to becomes a
:class:`Stored` (its offset in the file, or its compressed member) after its declared size is
checked against the bytes the file stores. A file cut short is not refused here: the storages
whose bytes it lacks are listed in :attr:`Parsed.cut`, for :mod:`.pytorch` to name the tensors
that view them. No tensor bytes are read.

Which file is which layout (detection) and what the object's tensors are named are
:mod:`.pytorch`'s; this module imports nothing of it.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import (
    FETCH_AGAIN,
    CorruptFileError,
    FormatError,
    UnsafeInputError,
    UnsupportedError,
    damaged,
    truncated,
)
from ._torch_pickle import (
    ITEMSIZE,
    RestrictedUnpickler,
    StorageRef,
    TruncatedPickle,
    check_opcodes,
    load_plain,
    read_pickle,
)
from ._zip import Member, central_directory, data_offsets, read_member, refuse_zip_bomb

__all__ = ["MAGIC_PICKLE", "ZIP_KIND", "Stored", "Parsed", "archive_prefix", "parse"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
MAGIC_PICKLE = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # LONG1 of MAGIC_NUMBER, protocol >= 2
LEGACY_PROTOCOL = 1001
MAX_PICKLE_BYTES = 256 * 2**20
_COUNT_WINDOW = 64 * 2**10  # a legacy file's storage counts: read this much at a time
ZIP_KIND = "torch.save file"  # what the zip plumbing calls the file in its messages


class Stored(NamedTuple):
    """Where a storage's bytes are: at ``offset`` in ``path`` (a stored zip member, a legacy
    storage), or inside the compressed zip ``member``; ``nbytes`` of them, ``big_endian``."""

    path: str
    offset: int | None
    member: str | None
    nbytes: int
    big_endian: bool = False


class Parsed:
    """A parsed file: ``root`` the unpickled object, ``storages`` by key, ``metadata`` (layout,
    byteorder, version), ``stored_members`` the zip's storages held in place as (data offset,
    entry) for the CRC-32 check, and ``cut``: the storages a truncated file lacks bytes of,
    as key -> how many of its first bytes the file still holds (empty for a whole file).

    (A plain class: defining a dataclass costs about a millisecond at import, which every
    ``inspect`` of a small file pays.)"""

    __slots__ = ("path", "root", "storages", "metadata", "stored_members", "cut")

    def __init__(self, path: Path, root: Any, storages: dict[str, Stored], metadata: dict[str, str] | None = None,
                 stored_members: list[tuple[int, Member]] | None = None, cut: dict[str, int] | None = None) -> None:
        self.path = path
        self.root = root
        self.storages = storages
        self.metadata = {} if metadata is None else metadata
        self.stored_members = [] if stored_members is None else stored_members
        self.cut = {} if cut is None else cut


def archive_prefix(names: list[str]) -> str | None:
    """The archive name torch put in front of every member (``archive`` in ``archive/data.pkl``)."""
    for name in names:
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "data.pkl" and parts[0] not in ("", ".", ".."):
            return parts[0]
    return None


def parse(path: Path, layout: str | None) -> Parsed:
    """Read ``path`` in ``layout`` (``zip``, ``legacy``, ``tar`` or None, as detection found it).

    Raises:
        UnsafeInputError: a refused global or pickled module, storages declared beyond their
            stored bytes, member names outside the archive.
        CorruptFileError: a damaged archive or pickle, a missing storage; a legacy file that
            ends inside its pickles (with what to do).
        UnsupportedError: TorchScript archives, the pre-0.4 tar layout, an unknown legacy
            protocol.
        FormatError: neither layout.
    """
    if layout == "zip":
        return _parse_zip(path)
    if layout == "legacy":
        return _parse_legacy(path)
    if layout == "tar":
        raise UnsupportedError(
            "a PyTorch file in the pre-0.4 tar layout, which even torch.load(weights_only=True) "
            "refuses; load it with the torch that wrote it and save it again",
            path=path,
        )
    raise FormatError("not a torch.save file (no data.pkl member, no legacy magic number)", path=path)


def _unpickle(data: io.BufferedIOBase, path: Path, *, legacy: bool, raw: bytes,
              checked: bool = False) -> tuple[Any, RestrictedUnpickler]:
    """``checked``: :func:`check_opcodes` has passed ``raw`` already."""
    unpickler = RestrictedUnpickler(data, legacy=legacy, raw=raw)
    try:
        if not checked:
            check_opcodes(raw)
        root = unpickler.load()
    except (UnsafeInputError, CorruptFileError, UnsupportedError) as e:
        raise type(e)(e.template, path=path, tensor=e.tensor) from e
    except _PICKLE_ERRORS as e:
        raise CorruptFileError(
            f"the pickle is damaged ({type(e).__name__}: {_one_line(e)}); {FETCH_AGAIN}", path=path
        ) from e
    return root, unpickler


# what a damaged pickle makes the unpickler raise
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                  AttributeError, UnicodeError, OverflowError, MemoryError, RecursionError, struct.error)


def _parse_zip(path: Path) -> Parsed:
    with builtins.open(path, "rb") as raw_file:
        members = {m.filename: m for m in central_directory(path, kind=ZIP_KIND, file=raw_file)}
        names = list(members)
        prefix = archive_prefix(names)
        if prefix is None:
            raise CorruptFileError(
                "a zip archive that starts as a torch.save file but has no <archive>/data.pkl member "
                f"(the file is damaged or was not written by torch.save); {FETCH_AGAIN}",
                path=path,
            )
        _check_inside(names, prefix, path)
        if f"{prefix}/constants.pkl" in members or any(map(str.startswith, names, repeat(f"{prefix}/code/"))):
            raise UnsupportedError(
                "a TorchScript archive (torch.jit.save), not a torch.save checkpoint; load it in "
                "torch and save its state_dict() with torch.save",
                path=path,
            )
        metadata = {"layout": "zip"}
        for record, key in (("byteorder", "byteorder"), ("version", "version"), (".format_version", "format_version")):
            member = members.get(f"{prefix}/{record}")
            if member is not None and member.file_size < 64:
                text = read_member(path, member, file=raw_file, what=ZIP_KIND)
                metadata[key] = text.decode("ascii", "replace").strip()
        byteorder = metadata.setdefault("byteorder", "little")
        if byteorder not in ("little", "big"):
            raise CorruptFileError(
                damaged(f"unknown byteorder record {byteorder!r}"), path=path
            )
        info = members[f"{prefix}/data.pkl"]
        if info.file_size > MAX_PICKLE_BYTES:
            raise UnsafeInputError(f"data.pkl is implausibly large ({info.file_size} bytes)", path=path)
        refuse_zip_bomb(info, path)
        raw = read_member(path, info, file=raw_file, what=ZIP_KIND)
        root, unpickler = _unpickle(io.BytesIO(raw), path, legacy=False, raw=raw)
        size = os.path.getsize(path)
        big_endian = byteorder == "big"
        fspath = os.fspath(path)
        storages: dict[str, Stored] = {}
        in_place: list[str] = []
        held: list[Member] = []
        data = f"{prefix}/data/"
        member_of = members.get
        itemsize = ITEMSIZE
        for key, ref in unpickler.storages.items():
            info = member_of(data + key)  # type: ignore[assignment]
            if info is None:
                raise CorruptFileError(
                    f"data.pkl refers to storage data/{key}, which the archive does not hold (the file "
                    f"is damaged); {FETCH_AGAIN}",
                    path=path,
                )
            if ref.numel * itemsize[ref.dtype] > info.file_size:
                _check_declared(ref, info.file_size, path)
            if info.compress_type == 0:  # stored: read in place
                in_place.append(key)
                held.append(info)
            else:
                refuse_zip_bomb(info, path)
                storages[key] = Stored(fspath, None, data + key, info.file_size, big_endian)
        starts = data_offsets(path, held, file=raw_file)
        stored_members: list[tuple[int, Member]] = []
        cut: dict[str, int] = {}
        new = tuple.__new__  # Stored(...) without a call of the named tuple's Python __new__
        for key, start, info in zip(in_place, starts, held):
            if start + info.file_size > size:  # the directory survived, the bytes did not
                cut[key] = max(0, size - start)
                continue
            storages[key] = new(Stored, (fspath, start, None, info.file_size, big_endian))
            stored_members.append((start, info))
    return Parsed(path, root, storages, metadata, stored_members, cut)


def _check_inside(names: list[str], prefix: str, path: Path) -> None:
    """Every member lies inside the archive ``prefix``: named ``<prefix>/...`` (or ``prefix``),
    with no backslash and no ``..`` part. Checked on all the names at once (10,000 members for
    a large state dict), then name by name only if one may fail, to name it."""
    inside = f"{prefix}/"
    if all(map(str.startswith, names, repeat(inside))):
        joined = "\n".join(names)
        if "\\" not in joined and ".." not in joined:
            return
    for name in names:
        if ((name != prefix and not name.startswith(inside)) or "\\" in name
                or (".." in name and ".." in name.split("/"))):
            raise UnsafeInputError(
                f"zip member {name!r} lies outside the archive {prefix!r}; refusing the file",
                path=path,
            )


def _check_declared(ref: StorageRef, stored: int, path: Path) -> None:
    if ref.nbytes > stored:
        raise UnsafeInputError(
            f"storage {ref.key} declares {ref.numel} {ref.dtype} values ({ref.nbytes} bytes) but "
            f"the file stores {stored} bytes for it; refusing to read beyond them",
            path=path,
        )


def _ends_in_pickle(path: Path, what: str) -> CorruptFileError:
    return CorruptFileError(
        truncated(f"it ends inside its {what}, before any tensor's bytes", or_damaged=True), path=path
    )


def _header_pickle(f: io.BufferedIOBase, what: str, path: Path) -> Any:
    """The next of a legacy file's three header pickles (magic number, protocol version,
    system info); a damaged one is named, with where it starts and what is wrong with it."""
    start = f.tell()
    try:
        return load_plain(f)
    except TruncatedPickle:
        raise _ends_in_pickle(path, "header pickles") from None
    except (UnsafeInputError, CorruptFileError) as e:
        raise type(e)(f"legacy header, {what} pickle (from byte {start}): {e.template}", path=path) from e
    except _PICKLE_ERRORS as e:
        raise CorruptFileError(
            f"the legacy header's {what} pickle (from byte {start}) is damaged ({_one_line(e)}); {FETCH_AGAIN}",
            path=path,
        ) from e


def _one_line(error: BaseException) -> str:
    """An unpickler's complaint, in one line (its type when it says nothing)."""
    return " ".join(str(error).split())[:200] or type(error).__name__


def _parse_legacy(path: Path) -> Parsed:
    size = os.path.getsize(path)
    with builtins.open(path, "rb") as f:
        magic = _header_pickle(f, "magic-number", path)
        protocol = _header_pickle(f, "protocol-version", path)
        sys_info = _header_pickle(f, "system-info", path)
        if magic != MAGIC_NUMBER:
            raise FormatError("not a torch.save file: wrong magic number", path=path)
        if protocol != LEGACY_PROTOCOL:
            raise UnsupportedError(f"legacy protocol version {protocol!r}; torch writes {LEGACY_PROTOCOL}", path=path)
        start = f.tell()
        try:
            raw, length = read_pickle(f, min(size - start, MAX_PICKLE_BYTES), first=16 * 2**20)
        except TruncatedPickle as e:
            raw = e.data
            if start + len(raw) < size:  # not the file's end: a pickle over MAX_PICKLE_BYTES
                raise TruncatedPickle(e.template, path=path) from e
            raise _ends_in_pickle(path, "pickle") from None
        except (UnsafeInputError, CorruptFileError) as e:
            raise type(e)(e.template, path=path, tensor=e.tensor) from e
        f.seek(start + length)
        root, unpickler = _unpickle(io.BytesIO(raw[:length]), path, legacy=True, raw=raw[:length], checked=True)
        try:
            keys = load_plain(f)
        except TruncatedPickle:  # the object is whole, the file ends in the key list before it
            keys = None
        except (UnsafeInputError, CorruptFileError) as e:
            raise type(e)(e.template, path=path, tensor=e.tensor) from e
        except _PICKLE_ERRORS as e:
            raise CorruptFileError(
                f"the storage key list pickle (from byte {start + length}) is damaged ({_one_line(e)}); "
                f"{FETCH_AGAIN}",
                path=path,
            ) from e
        if keys is None:  # every storage is cut (the key list's order does not matter then)
            keys = list(unpickler.storages)
            f.seek(size)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CorruptFileError(
                damaged("the storage key list is not a list of names"), path=path
            )
        missing = sorted(set(unpickler.storages) - set(keys))
        if missing:
            raise CorruptFileError(
                f"the pickle refers to storage {missing[0]}, which the file does not hold (the file is "
                f"damaged); {FETCH_AGAIN}",
                path=path,
            )
        storages: dict[str, Stored] = {}
        cut: dict[str, int] = {}
        offset = f.tell()
        fspath = os.fspath(path)
        fd = f.fileno()
        window, window_start = b"", 0  # the storages' 8-byte counts are read a window at a time
        for i, key in enumerate(keys):
            ref = unpickler.storages.get(key)
            if ref is None:
                raise CorruptFileError(
                    damaged(f"the file holds storage {key}, which no tensor refers to"),
                    path=path,
                )
            at = offset - window_start
            if at + 8 > len(window):
                window, window_start, at = os.pread(fd, _COUNT_WINDOW, offset), offset, 0
            count = window[at : at + 8]
            if len(count) < 8:  # the file ends before this storage: it and those after it are cut
                cut = dict.fromkeys(keys[i:], 0)
                break
            numel = int.from_bytes(count, "little", signed=True)
            if numel < 0:
                raise CorruptFileError(
                    f"storage {key} records a negative element count ({numel}): the file is damaged; {FETCH_AGAIN}",
                    path=path,
                )
            nbytes = numel * ITEMSIZE[ref.dtype]
            _check_declared(ref, nbytes, path)
            if offset + 8 + nbytes > size:
                cut = dict.fromkeys(keys[i:], 0)
                cut[key] = size - offset - 8
                break
            storages[key] = Stored(fspath, offset + 8, None, nbytes)
            offset += 8 + nbytes
    if not isinstance(sys_info, dict):
        raise CorruptFileError(
            damaged("the legacy system-info pickle is not a dict"), path=path
        )
    # torch writes legacy storages little-endian on every machine (the sys info notwithstanding)
    return Parsed(path, root, storages, {"layout": "legacy", "byteorder": "little"}, cut=cut)
