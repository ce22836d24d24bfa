"""Zip archives, the container of ``.keras`` models and ``torch.save`` files: what an archive
is from its first member, its central directory, where a stored member's bytes start, and the
refusals every zip reader shares (a damaged archive, a likely zip bomb, two members of one
name, encrypted members).

Source of truth: the zip format (PKWARE APPNOTE.TXT, section 4.3: local file header, central
directory, end of central directory record and its zip64 forms, the zip64 extra field).
:func:`central_directory` reads the directory in one read, with only the fields a reader
needs (a ``torch.save`` file of 10,000 tensors has 10,000 entries: ``zipfile`` builds a
``ZipInfo`` of some twenty fields for each); it finds the records where ``zipfile`` finds them
and accepts nothing ``zipfile`` refuses. Compressed members are still decompressed by
``zipfile``.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from ..errors import (
    FETCH_AGAIN,
    CorruptFileError,
    IntegrityError,
    UnsafeInputError,
    UnsupportedError,
    truncated,
)

if TYPE_CHECKING:
    import zipfile
    from pathlib import Path

__all__ = ["MAX_EXPANSION", "Member", "central_directory", "data_offsets", "read_member", "first_member_kind",
           "member_kind", "member_data_offset", "check_stored_crcs", "refuse_zip_bomb", "damaged_zip",
           "damaged_start"]

MAX_EXPANSION = 200  # a compressed member expanding more than this is treated as a zip bomb
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature ... name length, extra length
_LOCAL_FIELDS = struct.Struct("<4s2xH18xHH")  # of those: signature, flags, name and extra lengths
# a central directory entry's fields, those ckptconv does not use skipped: signature, version
# needed to extract, flags, method, CRC-32, sizes, name, extra and comment lengths, header offset
_CENTRAL = struct.Struct("<4s2xBxHH4x3L3H8xL")
_END = struct.Struct("<4s4H2LH")  # end of central directory: disks, counts, size, offset, comment length
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_MAX_COMMENT = 1 << 16
_MAX_EXTRACT_VERSION = 63  # zip 6.3, the newest zipfile reads
_UTF8_NAME = 0x800  # general purpose flag bit 11
_ENCRYPTED = 0x1
_ZIP64_EXTRA = 0x0001
_HEADER_GAP = 16384  # local headers closer than this share one read
_HEADER_WINDOW = 1 << 20
_CRC_CHUNK = 8 * 2**20


class Member(NamedTuple):
    """One central directory entry, with the fields the readers use, named as ``zipfile.ZipInfo``
    names them (so the rules below take either)."""

    filename: str
    header_offset: int  # where its local header starts in the file
    compress_type: int  # 0: stored
    compress_size: int
    file_size: int
    CRC: int
    flag_bits: int


class _Damaged(Exception):
    """A central directory that does not parse; :func:`central_directory` names the file."""


def first_member_kind(head: bytes) -> str:
    """What a zip archive is, from its first member's name (in the first local file header,
    which even a truncated archive keeps, and which detection reads instead of a central
    directory of thousands of entries): ``"torch.save file"`` (torch writes
    ``<archive>/data.pkl`` or ``<archive>/byteorder`` first), ``".keras file"`` (Keras writes
    ``metadata.json``, ``config.json`` or ``model.weights.h5`` first), else ``"file"``."""
    if len(head) < 30:
        return "file"
    size = int.from_bytes(head[26:28], "little")
    return member_kind(head[30 : 30 + size].decode("utf-8", "replace"))


def member_kind(first: str) -> str:
    """What a zip archive is from its first member's name (see :func:`first_member_kind`)."""
    if first.endswith(("/data.pkl", "/byteorder", "/version", "/.format_version")):
        return "torch.save file"
    if first in ("metadata.json", "config.json", "model.weights.h5", "assets/"):
        return ".keras file"
    return "file"


def damaged_zip(path: str | os.PathLike[str], error: BaseException, kind: str) -> CorruptFileError:
    """The one-line error for a zip archive that does not open (``kind``: what it is, see
    :func:`first_member_kind`): "truncated" when the archive has no end-of-central-directory
    record, which a zip always ends with and a cut-short copy or download lacks."""
    if not _has_end_record(path):
        return CorruptFileError(
            "a truncated (or damaged) zip archive: it has no end-of-central-directory record, as "
            f"when a download or copy was cut short; copy or download the {kind} again",
            path=path,
        )
    detail = " ".join(str(error).split())[:300]
    return CorruptFileError(f"a damaged zip archive ({detail}); copy or download the {kind} again", path=path)


def damaged_start(path: str | os.PathLike[str]) -> CorruptFileError | None:
    """The error for a file that does not begin with a zip local header yet ends as a zip
    archive (an end-of-central-directory record whose central directory parses) whose first
    member's local header is damaged, as a damaged byte among its first four makes it; None
    when the file is no such archive (or its first header is whole: data before the archive)."""
    try:
        with open(path, "rb") as f:
            members = _read_directory(f.fileno())
            if members:
                data_offsets(path, [min(members, key=lambda m: m.header_offset)], file=f)
    except CorruptFileError as e:
        return e
    except (_Damaged, OSError, UnicodeDecodeError, struct.error):
        pass
    return None


def _has_end_record(path: str | os.PathLike[str]) -> bool:
    """Whether the file ends with a whole end-of-central-directory record: its signature in the
    last 65,557 bytes (22 bytes plus the longest comment, APPNOTE 4.3.16), followed by all
    22 bytes and the comment its length field counts; True when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (22 + 0xFFFF)))
            tail = f.read()
    except OSError:
        return True
    at = _end_record_at(tail)
    return at >= 0 and len(tail) - at >= _END.size + int.from_bytes(tail[at + 20 : at + 22], "little")


def _end_record_at(tail: bytes) -> int:
    """Where the last end-of-central-directory signature in ``tail`` (the file's last bytes)
    starts, with the record's 22 bytes after it; -1 if there is none."""
    at = tail.rfind(b"PK\x05\x06")
    return at if at >= 0 and at + _END.size <= len(tail) else -1


def central_directory(path: str | os.PathLike[str], *, kind: str, file: BinaryIO | None = None) -> list[Member]:
    """The archive's members in central directory order, from one read of the directory.

    The end record is looked for as ``zipfile`` does (the last 22 bytes, else the last
    signature within the final 64 KiB of comment), with its zip64 locator and record, and data
    prepended to the archive (a self-extracting stub) is allowed for in the same way.
    ``kind``: what the file is, for the message (see :func:`first_member_kind`); ``file``: the
    archive already open (binary).

    Raises:
        CorruptFileError: the directory is missing, truncated or damaged (one line naming the
            file, as :func:`damaged_zip`).
        UnsafeInputError: two members of one name (which one a reader takes is up to the
            reader), or a name holding a NUL byte.
        UnsupportedError: an encrypted member.
    """
    if file is None:
        with open(path, "rb") as f:
            return central_directory(path, kind=kind, file=f)
    try:
        members = _read_directory(file.fileno())
    except _Damaged as e:
        raise damaged_zip(path, e, kind) from None
    except (UnicodeDecodeError, struct.error) as e:
        raise damaged_zip(path, e, kind) from e
    names = [m.filename for m in members]
    if len(set(names)) == len(names) and not any(m.flag_bits & _ENCRYPTED for m in members) and "\x00" not in "".join(names):
        return members  # (the checks below, on all the members at once: the common case)
    seen: set[str] = set()
    for m in members:
        if m.filename in seen:
            raise UnsafeInputError(
                f"zip member {m.filename!r} appears twice in the archive (readers differ on which they "
                "take); refusing the file",
                path=path,
            )
        seen.add(m.filename)
        if m.flag_bits & _ENCRYPTED:
            raise UnsupportedError(
                f"zip member {m.filename!r} is encrypted; neither torch nor Keras writes encrypted archives",
                path=path,
            )
        if "\x00" in m.filename:
            raise UnsafeInputError(f"zip member name {m.filename!r} holds a NUL byte; refusing the file", path=path)
    return members


def _read_directory(fd: int) -> list[Member]:
    size = os.fstat(fd).st_size
    if size < _END.size:
        raise _Damaged("File is not a zip file")
    tail_start = max(size - _MAX_COMMENT - _END.size, 0)
    tail = os.pread(fd, size - tail_start, tail_start)
    if tail[-_END.size : -_END.size + 4] == b"PK\x05\x06" and tail[-2:] == b"\x00\x00":
        at = len(tail) - _END.size  # no archive comment: the record ends the file
    else:
        at = _end_record_at(tail)
        if at < 0:
            raise _Damaged("File is not a zip file")
    _, _, _, _, _, cd_size, cd_offset, _ = _END.unpack_from(tail, at)
    location = tail_start + at
    zip64 = False
    locator = b""
    if location >= _END64_LOCATOR.size:
        locator = os.pread(fd, _END64_LOCATOR.size, location - _END64_LOCATOR.size)
    if len(locator) == _END64_LOCATOR.size and locator[:4] == b"PK\x06\x07":
        _, disk, _, disks = _END64_LOCATOR.unpack(locator)
        if disk != 0 or disks > 1:
            raise _Damaged("zipfiles that span multiple disks are not supported")
        record_at = location - _END64_LOCATOR.size - _END64.size
        record = os.pread(fd, _END64.size, record_at) if record_at >= 0 else b""
        if len(record) == _END64.size and record[:4] == b"PK\x06\x06":
            cd_size, cd_offset = _END64.unpack(record)[8:10]
            zip64 = True
    # data before the archive (nonzero only when something was prepended to it) moves every offset
    shift = location - cd_size - cd_offset - (_END64.size + _END64_LOCATOR.size if zip64 else 0)
    start = cd_offset + shift
    if start < 0:
        raise _Damaged("Bad offset for central directory")
    if start + cd_size > size:
        raise _Damaged("Truncated central directory")
    data = os.pread(fd, cd_size, start)
    if len(data) != cd_size:
        raise _Damaged("Truncated central directory")
    members = _parse_entries(data, shift)
    if shift < 0 and any(m.header_offset < 0 for m in members):
        # the recorded directory offset is past where the directory lies (a damaged byte in
        # it) and moves members' headers before the file's start
        raise _Damaged("Bad offset for central directory")
    return members


def _parse_entries(data: bytes, shift: int) -> list[Member]:
    members = []
    append = members.append
    unpack = _CENTRAL.unpack_from
    fixed = _CENTRAL.size
    new = tuple.__new__  # Member(...) without a call of the named tuple's Python __new__
    end = len(data)
    pos = 0
    while pos < end:
        if pos + fixed > end:
            raise _Damaged("Truncated central directory")
        (signature, version, flags, method, crc, compressed, size, name_length, extra_length, comment_length,
         offset) = unpack(data, pos)
        if signature != b"PK\x01\x02":
            raise _Damaged("Bad magic number for central directory")
        if version > _MAX_EXTRACT_VERSION:
            raise _Damaged(f"zip file version {version / 10:.1f}")
        name_end = pos + fixed + name_length
        next_pos = name_end + extra_length + comment_length
        if next_pos > end:
            raise _Damaged("Truncated central directory")
        name = data[pos + fixed : name_end].decode("utf-8" if flags & _UTF8_NAME else "cp437")
        if extra_length:
            size, compressed, offset = _zip64_sizes(data[name_end : name_end + extra_length], size, compressed, offset)
        append(new(Member, (name, offset + shift, method, compressed, size, crc, flags)))
        pos = next_pos
    return members


def _zip64_sizes(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """The extra field's blocks (id, length, data); a zip64 block (id 1) holds, in this order,
    each of the uncompressed size, compressed size and header offset that the fixed fields
    mark 0xFFFFFFFF, as 8-byte integers."""
    while len(extra) >= 4:
        kind, length = struct.unpack_from("<HH", extra)
        if length + 4 > len(extra):
            raise _Damaged(f"Corrupt extra field {kind:04x} (size={length})")
        if kind == _ZIP64_EXTRA:
            block = extra[4 : length + 4]
            if size in (0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF):
                size, block = _take8(block, "File size")
            if compressed == 0xFFFF_FFFF:
                compressed, block = _take8(block, "Compress size")
            if offset == 0xFFFF_FFFF:
                offset, block = _take8(block, "Header offset")
        extra = extra[length + 4 :]
    return size, compressed, offset


def _take8(block: bytes, field: str) -> tuple[int, bytes]:
    if len(block) < 8:
        raise _Damaged(f"Corrupt zip64 extra field. {field} not found.")
    return int.from_bytes(block[:8], "little"), block[8:]


def data_offsets(path: str | os.PathLike[str], members: Sequence[Member | zipfile.ZipInfo], *,
                 file: BinaryIO) -> list[int]:
    """Absolute offsets of the members' data: after each local header, name and extra field
    (the local extra field may differ from the central directory's, so every header is read).
    ``file``: the archive, open (binary).

    The headers are read through a read-only map of the file: a state dict's storages are a
    few KiB apart, so reading their headers by windows copied every byte of the file, while
    the map touches only the pages that hold headers (a file system that cannot map files
    gets the windows).

    Raises:
        CorruptFileError: a local header is missing, has no local-header signature, or names
            another member than the central directory (naming the member).
    """
    fd = file.fileno()
    try:
        view = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # an empty file, or one that cannot be mapped
        return _data_offsets_by_windows(path, members, fd)
    with view:
        return [_offset_in(path, fd, view, m.header_offset, m.header_offset, m) for m in members]


def _data_offsets_by_windows(path: str | os.PathLike[str], members: Sequence[Member | zipfile.ZipInfo],
                             fd: int) -> list[int]:
    """:func:`data_offsets` with ``pread``: headers less than 16 KiB apart share one read."""
    offsets = [m.header_offset for m in members]
    order = sorted(range(len(members)), key=offsets.__getitem__)
    out = [0] * len(members)
    i = 0
    while i < len(order):
        start = previous = offsets[order[i]]
        j = i + 1
        while j < len(order):
            at = offsets[order[j]]
            if at - previous > _HEADER_GAP or at - start > _HEADER_WINDOW:
                break
            previous = at
            j += 1
        window = os.pread(fd, previous - start + _LOCAL_HEADER.size + 256, start)
        for k in order[i:j]:
            out[k] = _offset_in(path, fd, window, offsets[k] - start, offsets[k], members[k])
        i = j
    return out


def _offset_in(path: str | os.PathLike[str], fd: int, window: bytes | mmap.mmap, at: int, header: int,
               info: Member | zipfile.ZipInfo) -> int:
    """The data offset of the member whose local header starts ``at`` in ``window`` (at
    ``header`` in the file). The common case in few steps: a whole header in the window,
    naming the member as the central directory does; anything else goes through
    :func:`_data_offset`, which says what is wrong."""
    try:
        signature, flags, name_length, extra_length = _LOCAL_FIELDS.unpack_from(window, at)
        fixed = _LOCAL_HEADER.size
        if signature == b"PK\x03\x04" and window[at + fixed : at + fixed + name_length].decode(
                "utf-8" if flags & _UTF8_NAME else "cp437") == info.filename:
            return header + fixed + name_length + extra_length
    except (struct.error, UnicodeDecodeError):
        pass
    return _data_offset(path, fd, window, at, header, info)


def _data_offset(path: str | os.PathLike[str], fd: int, window: bytes | mmap.mmap, at: int, header: int,
                 info: Member | zipfile.ZipInfo) -> int:
    """:func:`data_offsets` for one member whose local header starts ``at`` in ``window`` (at
    ``header`` in the file), refusing it as damaged if it is."""
    # a member is named as such, not as a tensor: it may be a record (``version``, ``data.pkl``)
    member = f"zip member {info.filename!r}"
    if at + _LOCAL_HEADER.size > len(window):
        raise CorruptFileError(
            truncated(f"the local header of {member} (at byte {header}) lies past its end"), path=path
        )
    signature, _, flags, _, _, _, _, _, _, name_length, extra_length = _LOCAL_HEADER.unpack_from(window, at)
    if signature != b"PK\x03\x04":
        raise CorruptFileError(
            f"{member}: no local header at byte {header}, where the central directory puts it: "
            f"the zip is damaged; {FETCH_AGAIN}",
            path=path,
        )
    at += _LOCAL_HEADER.size
    raw = window[at : at + name_length]
    if len(raw) < name_length:  # a long name past the window
        raw = os.pread(fd, name_length, header + _LOCAL_HEADER.size)
    try:
        name = raw.decode("utf-8" if flags & _UTF8_NAME else "cp437")
    except UnicodeDecodeError:
        name = None
    if name != info.filename:
        expected = len(info.filename.encode("utf-8" if flags & _UTF8_NAME else "cp437", "replace"))
        if name_length != expected:
            differs = f"records a name of {name_length} bytes where the central directory's has {expected}"
        else:
            differs = f"names {raw.decode('utf-8', 'replace')[:80]!r}"
        raise CorruptFileError(
            f"{member}: its local header (at byte {header}) {differs}: the zip is damaged; {FETCH_AGAIN}",
            path=path,
        )
    return header + _LOCAL_HEADER.size + name_length + extra_length


def member_data_offset(path: Path, info: Member | zipfile.ZipInfo, *, file: BinaryIO | None = None) -> int:
    """Absolute offset of a stored member's data (see :func:`data_offsets`). ``file``: the
    archive already open (binary).

    Raises:
        CorruptFileError: the local header is missing, has no local-header signature, or names
            another member.
    """
    if file is None:
        with path.open("rb") as f:
            return data_offsets(path, [info], file=f)[0]
    return data_offsets(path, [info], file=file)[0]


def read_member(path: str | os.PathLike[str], info: Member, *, file: BinaryIO, what: str) -> bytes:
    """A member's bytes: a stored one read in place and checked against its CRC-32 (as
    ``zipfile`` checks it), a compressed one through ``zipfile``. ``what``: the file's kind
    for the message.

    Raises:
        CorruptFileError: the member cannot be read (damaged, compressed by a method zipfile
            does not know, beyond the end of the file), naming it.
        IntegrityError: its bytes do not match their CRC-32.
    """
    if info.compress_type == 0:
        start = data_offsets(path, [info], file=file)[0]
        data = os.pread(file.fileno(), info.file_size, start)
        if len(data) < info.file_size:
            raise CorruptFileError(
                truncated(f"zip member {info.filename!r} extends beyond the end of the {what}"), path=path
            )
        crc = zlib.crc32(data)
        if crc != info.CRC:
            raise _crc_error(path, info, crc, what)
        return data
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.read(info.filename)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, ValueError) as e:
        raise CorruptFileError(
            f"zip member {info.filename!r} cannot be read from the {what} ({e}); {FETCH_AGAIN}", path=path
        ) from e


def _crc_error(
    path: str | os.PathLike[str], info: Member | zipfile.ZipInfo, crc: int, what: str,
    tensors: Sequence[str] = (), *, skippable: bool = False,
) -> IntegrityError:
    """``skippable``: the check is one ``check_crc=False`` skips (the tensors' bytes, checked
    beside a conversion or comparison), so the message says how to read the file anyway, as
    the per-tensor CRC-32C's does; a member read at open (a pickle) is checked always."""
    held = ""
    if len(tensors) > 1:
        more = f" and {len(tensors) - 3} more" if len(tensors) > 3 else ""
        held = f" (it holds {', '.join(map(repr, tensors[:3]))}{more})"
    anyway = ", or pass {opt:check_crc=False} to read it anyway" if skippable else ""
    return IntegrityError(
        f"{info.filename}{held} fails its zip CRC-32 (recorded {info.CRC:08x}, computed {crc:08x}): "
        f"the {what} is damaged; {FETCH_AGAIN}{anyway}",
        path=path,
        tensor=tensors[0] if tensors else None,
    )


def refuse_zip_bomb(info: Member | zipfile.ZipInfo, path: Path) -> None:
    """A compressed member that would expand far beyond its stored size is refused unread
    (a ``.keras`` archive's members, a ``torch.save`` archive's storages).

    Raises:
        UnsafeInputError: a compressed member over 1 MiB expanding more than MAX_EXPANSION times.
    """
    if info.compress_type != 0 and info.file_size > 2**20:  # 0: ZIP_STORED
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > MAX_EXPANSION:
            raise UnsafeInputError(
                f"{info.filename} expands {ratio:.0f}x ({info.file_size} bytes from "
                f"{info.compress_size}): refusing a likely zip bomb",
                path=path,
            )


def check_stored_crcs(path: str | os.PathLike[str], members: Sequence[tuple[int, Member | zipfile.ZipInfo]], *,
                      what: str, tensors: Callable[[int, int], list[str]] | None = None) -> None:
    """Compare stored (uncompressed) members' bytes with the CRC-32 each zip entry records,
    reading each once in 8 MiB pieces (``members``: (data offset, entry); ``what``: the file's
    kind for the message, e.g. ``"archive"``; ``tensors(start, size)``, if given, names the
    tensors whose bytes lie in a member, for the message). zipfile checks a compressed member's CRC-32 itself
    as it decompresses it; a stored member read in place is checked here (a convert runs this on
    a thread while it writes). ``check_crc=False`` skips this check in convert and diff, and
    the message says so.

    Raises:
        IntegrityError: a member's bytes do not match their CRC-32 (naming the member).
        CorruptFileError: a member extends beyond the end of the file.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, info in members:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, start, info.file_size, os.POSIX_FADV_SEQUENTIAL)
            crc = 0
            done = 0
            while done < info.file_size:
                chunk = os.pread(fd, min(_CRC_CHUNK, info.file_size - done), start + done)
                if not chunk:
                    raise CorruptFileError(
                        truncated(f"zip member {info.filename!r} extends beyond the end of the {what}"), path=path
                    )
                crc = zlib.crc32(chunk, crc)
                done += len(chunk)
            if crc != info.CRC:
                raise _crc_error(
                    path, info, crc, what, tensors(start, info.file_size) if tensors else (), skippable=True
                )
    finally:
        os.close(fd)
