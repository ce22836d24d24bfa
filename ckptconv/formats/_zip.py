"""Zip archives, the container of ``.keras`` models and ``torch.save`` files: what an archive
is from its first member, where a stored member's bytes start, and the refusals every zip
reader shares (a damaged archive, a likely zip bomb).

Source of truth: the zip format (PKWARE APPNOTE.TXT, section 4.3: local file header, central
directory); ``zipfile`` reads the central directory, these rules read the rest.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import CorruptFileError, IntegrityError, UnsafeInputError

if TYPE_CHECKING:
    import zipfile

__all__ = ["MAX_EXPANSION", "first_member_kind", "member_data_offset", "check_stored_crcs", "refuse_zip_bomb",
           "damaged_zip"]

MAX_EXPANSION = 200  # a compressed member expanding more than this is treated as a zip bomb
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature ... name length, extra length
_CRC_CHUNK = 8 * 2**20


def first_member_kind(head: bytes) -> str:
    """What a zip archive is, from its first member's name (in the first local file header,
    which even a truncated archive keeps, and which detection reads instead of a central
    directory of thousands of entries): ``"torch.save file"`` (torch writes
    ``<archive>/data.pkl`` or ``<archive>/byteorder`` first), ``".keras file"`` (Keras writes
    ``metadata.json``, ``config.json`` or ``model.weights.h5`` first), else ``"file"``."""
    if len(head) < 30:
        return "file"
    size = int.from_bytes(head[26:28], "little")
    first = head[30 : 30 + size].decode("utf-8", "replace")
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
    at = tail.rfind(b"PK\x05\x06")
    return at >= 0 and len(tail) - at >= 22 + int.from_bytes(tail[at + 20 : at + 22], "little")


def member_data_offset(path: Path, info: zipfile.ZipInfo, *, file: BinaryIO | None = None) -> int:
    """Absolute offset of a stored member's data: after its local header, name and extra field
    (the local extra field may differ from the central directory's, so the header is read).
    ``file``: the archive already open (binary), for many members (one open, not one each).

    Raises:
        CorruptFileError: the local header is missing or has no local-header signature.
    """
    if file is None:
        with path.open("rb") as f:
            return member_data_offset(path, info, file=f)
    raw = os.pread(file.fileno(), _LOCAL_HEADER.size, info.header_offset)
    if len(raw) < _LOCAL_HEADER.size:
        raise CorruptFileError("the zip is truncated (local header)", path=path, tensor=info.filename)
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != b"PK\x03\x04":
        raise CorruptFileError("bad zip local header", path=path, tensor=info.filename)
    return info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]


def refuse_zip_bomb(info: zipfile.ZipInfo, path: Path) -> None:
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


def check_stored_crcs(path: str | os.PathLike[str], members: list[tuple[int, zipfile.ZipInfo]], *, what: str) -> None:
    """Compare stored (uncompressed) members' bytes with the CRC-32 each zip entry records,
    reading each once in 8 MiB pieces (``members``: (data offset, entry); ``what``: the file's
    kind for the message, e.g. ``"archive"``). zipfile checks a compressed member's CRC-32 itself
    as it decompresses it; a stored member read in place is checked here (a convert runs this on
    a thread while it writes).

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
                    raise CorruptFileError(f"{info.filename} extends beyond the end of the {what}: truncated", path=path)
                crc = zlib.crc32(chunk, crc)
                done += len(chunk)
            if crc != info.CRC:
                raise IntegrityError(
                    f"{info.filename} fails its zip CRC-32 (recorded {info.CRC:08x}, computed {crc:08x}): "
                    f"the {what} is damaged; copy or download it again",
                    path=path,
                )
    finally:
        os.close(fd)
