"""Re-check safetensors files ckptconv wrote against the CRC-32Cs recorded in them.

``convert`` records a CRC-32C of every tensor in ``__metadata__["ckptconv.crc32c"]``.
:func:`verify_file` reads every tensor's bytes again (one file at a time, in bounded
memory) and names each tensor whose bytes no longer match: bit rot, a truncated copy, a
byte changed by hand. A sharded set must also be whole: every shard of the write its index
records (``ckptconv.set``), none missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import (
    CkptconvError,
    CorruptFileError,
    FormatError,
    IntegrityError,
    NoSuchFileError,
    UnsupportedError,
)
from .formats import HEAD_BYTES, regular_file
from .formats.safetensors import (
    CRC_KEY,
    SET_KEY,
    SOURCE_CHECKSUMS_KEY,
    Header,
    check_set,
    index_path,
    load_index,
    looks_like_safetensors,
    named_but_damaged,
    parse_shard_name,
    read_header,
    shard_files,
    sniff,
)
from .options import keyword_options
from .store import ByteRange, ReadBuffer

__all__ = ["verify_file", "VerifyResult", "Mismatch"]

_CHUNK = 16 << 20


@dataclass(frozen=True)
class Mismatch:
    """One tensor whose bytes do not match its recorded CRC-32C.

    Attributes:
        name: The tensor.
        path: The file (shard) holding it.
        recorded: The CRC-32C in the header, or None if the header records none for it.
        actual: The CRC-32C of the bytes now on disk.
    """

    name: str
    path: str
    recorded: int | None
    actual: int

    def describe(self) -> str:
        recorded = "none" if self.recorded is None else f"{self.recorded:08x}"
        return f"{self.name} (recorded {recorded}, computed {self.actual:08x}) in {self.path}"


@dataclass
class VerifyResult:
    """The outcome of :func:`verify_file`.

    Attributes:
        path: What was verified (the file, or the sharded set's index).
        files: Every file read.
        tensors: Number of tensors checked.
        nbytes: Tensor bytes read.
        mismatches: The tensors that failed, in file order.
        sources_unchecked: The files whose ``__metadata__`` records that their source's
            checksums were not checked when they were written (``check_crc=False``): their
            recorded CRC-32Cs are of the bytes as read, damaged or not.
    """

    path: str
    files: list[str]
    tensors: int = 0
    nbytes: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    sources_unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every tensor matched its recorded CRC-32C."""
        return not self.mismatches

    def check(self) -> VerifyResult:
        """Raise :class:`~ckptconv.IntegrityError` naming every failed tensor; else return self."""
        if self.mismatches:
            first = self.mismatches[0]
            names = ", ".join(m.name for m in self.mismatches[:10]) + (" ..." if len(self.mismatches) > 10 else "")
            raise IntegrityError(
                f"{len(self.mismatches)} of {self.tensors} tensors do not match their recorded "
                f"CRC-32C: {names}; the file was changed or damaged after it was written: "
                "restore it from a good copy",
                path=first.path,
                tensor=first.name if len(self.mismatches) == 1 else None,  # else they are listed
            )
        return self

    def to_json(self) -> dict[str, object]:
        """The result as JSON-ready data (CRC-32Cs as 8 hex digits), as ``verify --json``
        prints it per file."""
        return {
            "path": self.path,
            "ok": self.ok,
            "files": self.files,
            "tensors": self.tensors,
            "nbytes": self.nbytes,
            "sources_unchecked": self.sources_unchecked,
            "mismatches": [
                {
                    "name": m.name,
                    "path": m.path,
                    "recorded": None if m.recorded is None else f"{m.recorded:08x}",
                    "actual": f"{m.actual:08x}",
                }
                for m in self.mismatches
            ],
        }


@keyword_options
def verify_file(
    path: str | os.PathLike[str], *, progress: Callable[[int], None] | None = None
) -> VerifyResult:
    """Re-read a safetensors file or sharded set and compare every tensor with its CRC-32C.

    Reads every tensor's bytes (in 16 MiB pieces; memory stays small). A sharded set can be
    given by its ``*.safetensors.index.json``, its directory, or any of its shards.

    Args:
        path: The file, index, directory, or one shard of a set; the name of a sharded set
            (``model.safetensors`` when only ``model.safetensors.index.json`` and its shards
            exist) finds the set.
        progress: Called with the number of bytes read after each piece.

    Returns:
        A :class:`VerifyResult`; call ``.check()`` to raise on a mismatch.

    Raises:
        NoSuchFileError: the path does not exist (nor a set under that name).
        FormatError: the file is not a safetensors file (the message says what it is), or not
            a regular file (a FIFO, a device).
        UnsupportedError: a file records no ckptconv checksums (written with
            ``--no-checksum`` or by another tool).
        CorruptFileError: a file is not a valid safetensors file (e.g. truncated), or a set
            is incomplete: a shard missing, or shards of two different writes.
    """
    target, files, index = _resolve(Path(path))
    result = VerifyResult(path=str(target), files=[str(f) for f in files])
    headers = [read_header(file) for file in files]
    if index is not None:
        check_set(target, index, headers)
    for file, header in zip(files, headers):
        if CRC_KEY not in header.metadata:
            raise UnsupportedError(
                "the file records no ckptconv checksums (written with {opt:checksum=False} or by "
                "another tool), so there is nothing to verify against",
                path=file,
            )
        if header.metadata.get(SOURCE_CHECKSUMS_KEY) == "not checked":
            result.sources_unchecked.append(str(file))
        _verify_one(header, result, progress)
    return result


def _resolve(path: Path) -> tuple[Path, list[Path], dict | None]:
    """The set a path belongs to: (what to report, the files to read, the index if a set)."""
    if path.is_dir():
        found = sorted(path.glob("*.safetensors.index.json"))
        if len(found) != 1:
            fmt = None if found else _format_of(path)  # a TF checkpoint or Orbax directory
            if fmt:
                raise _not_safetensors(path, fmt)
            raise CorruptFileError(
                "expected exactly one *.safetensors.index.json in the directory", path=path
            )
        path = found[0]
    if not path.exists():
        index_file = path.with_name(path.name + ".index.json")
        if path.name.endswith(".safetensors") and index_file.is_file():
            path = index_file  # a sharded set written under this name
        else:
            fmt = _format_of(path)  # a TF checkpoint's prefix
            if fmt:
                raise _not_safetensors(path, fmt)
            raise NoSuchFileError(path=path)
    regular_file(path)
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)  # enough to tell a safetensors header after a damaged length
    if not looks_like_safetensors(head) and not named_but_damaged(path, head):
        if head.lstrip().startswith(b"{"):
            index = load_index(path)
            if not sniff(path, head):  # another set's index (Keras .weights.json, PyTorch .bin)
                raise _not_safetensors(path)
            return path, shard_files(path, index), index
        raise _not_safetensors(path)
    if parse_shard_name(path.name) is not None:
        stem = parse_shard_name(path.name)[0]  # type: ignore[index]
        index_file = Path(index_path(path.with_name(f"{stem}.safetensors")))
        if index_file.is_file():
            index = load_index(index_file)
            shards = shard_files(index_file, index)
            if any(s.resolve() == path.resolve() for s in shards):
                return index_file, shards, index
        recorded = read_header(path).metadata.get(SET_KEY)
        if recorded is not None:  # a shard of a ckptconv set that no index completes
            what = "does not name it" if index_file.is_file() else "is missing"
            raise CorruptFileError(
                f"the set is incomplete: this is a shard of a set ({SET_KEY} {recorded}) "
                f"and its index {index_file.name} {what}; verify the index of a complete set",
                path=path,
            )
    return path, [path], None


def _format_of(path: Path) -> str | None:
    """The format ckptconv reads ``path`` as (``detect``), or None when none claims it."""
    from .formats import detect

    try:
        return str(detect(path).FORMAT)
    except CkptconvError:
        return None


def _not_safetensors(path: Path, fmt: str | None = None) -> FormatError:
    """Say what the file is instead (``fmt``, else as detected), as far as ckptconv can tell."""
    fmt = fmt or _format_of(path)
    what = f"a {fmt} checkpoint" if fmt else "not a checkpoint ckptconv reads"
    return FormatError(
        f"not a safetensors file ({what}): verify re-checks the safetensors files ckptconv "
        "writes against the checksums recorded in them",
        path=path,
    )


def _verify_one(
    header: Header, result: VerifyResult, progress: Callable[[int], None] | None
) -> None:
    buffer = ReadBuffer(_CHUNK)
    fd = os.open(header.path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        for name, (_, _, begin, end) in header.tensors.items():
            stored = ByteRange(header.path, header.data_start + begin, end - begin)
            actual = stored.crc32c(fd=fd, buffer=buffer, tensor=name, progress=progress)
            recorded = header.checksums.get(name)
            result.tensors += 1
            result.nbytes += end - begin
            if recorded != actual:
                result.mismatches.append(Mismatch(name, header.path, recorded, actual))
    finally:
        os.close(fd)
