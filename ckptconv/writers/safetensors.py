"""Stream outputs into a safetensors file, or a Hugging Face sharded set, atomically.

The header is known from metadata alone (names, shapes, dtypes), so it is written first and
the tensors follow one at a time, in the given order: peak memory is about the largest tensor
that has to be computed, and a tensor whose bytes pass through unchanged (``Output.source``
with a ``byte_range``) is copied file to file without becoming a Python array at all.

The bytes go through ``_sink``: page-aligned staging buffers filled by the calling thread,
written by a writer thread (with ``O_DIRECT`` when the output is fsynced and the file system
allows it) and checksummed by a third. With ``checksum=True`` (the default) every tensor's
CRC-32C is recorded in ``__metadata__["ckptconv.crc32c"]`` as a JSON
object ``{name: "8 hex digits"}``. The header is first written with ``"00000000"``
placeholders of the same width and patched in place at the end, so its length never changes.

A sharded set records its identity, ``__metadata__["ckptconv.set"]``, in every shard and in the
index: derived from the shards' headers and checksums (so one conversion run twice writes the
same set), or random without checksums. Readers refuse a set whose files disagree on it.

Every file is written under a hidden temporary name in the target directory, fsynced, and put
in place by :mod:`ckptconv.writers.outputs` (locked, crash-safe, the index last). A failed or
interrupted run (exception, Ctrl-C, SIGTERM) leaves no temporary file and no new output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import json.encoder
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..background import Background
from ..gcpause import paused_gc
from ..dtypes import dtype_name, to_safetensors
from ..errors import IntegrityError, OutputError, UnsupportedError
from ..formats.safetensors import CRC_KEY, SET_KEY, check_metadata, index_path, shard_names
from ..interrupts import sigterm_raises
from ..options import keyword_options
from ..store import ByteRange, Output, ReadBuffer
from ._sink import Pipeline, Sink, chunk_for, pwrite_all, write_all
from ._sink import fsync as fsync_file
from .outputs import OutputLock, TempFiles, commit, plan_output_set

__all__ = ["write_safetensors", "WriteResult", "parse_size", "CRC_KEY", "SET_KEY", "shard_names"]


_CRC_PLACEHOLDER = "00000000"
_SET_PLACEHOLDER = "0" * 32
_MAX_HEADER = 100_000_000  # the safetensors format's own header limit

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse a size such as ``"5GB"`` or ``"1.5GiB"`` into bytes.

    Units as the Hugging Face tools count them: ``B``, ``KB``, ``MB``, ``GB``, ``TB`` are powers
    of 10; ``KiB``, ``MiB``, ``GiB``, ``TiB`` powers of 2; a bare number is bytes. Case does not
    matter.

    Raises:
        ValueError: the text is not a positive size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE_RE.match(str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"not a size: {text!r}; expected a number with an optional unit "
                "B, KB, MB, GB, TB (powers of 10) or KiB, MiB, GiB, TiB (powers of 2), e.g. 5GB"
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"a size must be positive: {text!r}")
    return value


@dataclass
class WriteResult:
    """What :func:`write_safetensors` wrote.

    Attributes:
        files: The files written, shards first and the index last for a sharded set.
        tensors: Number of tensors written.
        nbytes: Total tensor bytes (headers not counted).
        checksums: CRC-32C of every tensor by name (empty with ``checksum=False``).
        set_id: A sharded set's identity (``ckptconv.set``), None for a single file.
    """

    files: list[str]
    tensors: int
    nbytes: int
    checksums: dict[str, int] = field(default_factory=dict)
    set_id: str | None = None


@dataclass(slots=True)
class _Slot:
    """One tensor's place in one file."""

    output: Output
    code: str
    begin: int
    end: int


@dataclass
class _Written:
    """One complete temporary file, before it takes its final name."""

    tmp: str
    final: str
    slots: list[_Slot]
    crcs: dict[str, int]
    header: bytes


@keyword_options
def write_safetensors(
    outputs: Sequence[Output],
    dst: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
    fsync: bool = True,
    checksum: bool = True,
    max_shard_size: int | None = None,
    progress: bool = False,
    protect: Iterable[str | os.PathLike[str]] = (),
    verify: bool = False,
    check: Callable[[], None] | None = None,
) -> WriteResult:
    """Write ``outputs`` in order into ``dst`` (or a sharded set named after it).

    Everything is checked before any file is created: names, dtypes (safetensors has no
    complex128 or string type), metadata, output paths, the lock. Then each output's data is
    read once: ``output.compute()`` is called one output at a time, or, for an output whose
    bytes are its source entry's stored bytes (``output.source.byte_range``), the bytes are
    copied file to file without being decoded.

    Args:
        outputs: The tensors, in the order to write them.
        dst: The ``.safetensors`` path. With sharding its stem names the shards
            (``model-00001-of-00003.safetensors``) and ``dst + ".index.json"`` is the index;
            if everything fits in one shard a single file ``dst`` is written.
        metadata: String metadata for ``__metadata__``.
        force: Replace an existing output: the file or set at ``dst``, crash-safely (the old
            set stays whole until the new index is in place). Files that are not provably
            ckptconv's own shards of this output are never removed, even with ``force``.
        fsync: Flush files and the directory to disk before returning.
        checksum: Record a CRC-32C per tensor in ``__metadata__``.
        max_shard_size: Maximum tensor bytes per shard (an oversized tensor gets a shard
            of its own), or None for one file.
        progress: Show a progress bar over bytes on stderr.
        protect: Input files that must not be overwritten (and, for a sharded input's index,
            the shards it names).
        verify: Before the new files take their names, read them back and compare every
            tensor with the CRC-32C computed while writing (with or without ``checksum``).
        check: Run on a thread while the files are written (a source's whole-file checksum);
            nothing is put in place unless it returns.

    Returns:
        A :class:`WriteResult`.

    Raises:
        UnsupportedError: an output's dtype has no safetensors code.
        OutputError: the output exists (without ``force``), is one of the inputs, is locked by
            another writer, cannot be written, or an output's data does not match its
            declared shape or dtype.
        IntegrityError: a source's recorded CRC-32C does not match its bytes, or ``verify``
            read back other bytes than were written.
        CorruptFileError: a source file is truncated.
    """
    outputs = list(outputs)
    dst = os.path.abspath(os.fspath(dst))
    meta = _check_metadata(metadata, dst)
    codes = _check_outputs(outputs, dst)
    if max_shard_size is not None and max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size}")

    groups = _shard(outputs, max_shard_size)
    index = index_path(dst) if len(groups) > 1 else None
    finals = shard_names(dst, len(groups)) if index else [dst]
    if index:
        meta[SET_KEY] = _SET_PLACEHOLDER
    with paused_gc():  # a slot per tensor, no cycles
        layouts = [_layout(group, codes) for group in groups]
        tensor_texts = [_tensors_json(slots) for slots in layouts]
    for slots, final, text in zip(layouts, finals, tensor_texts):
        _check_header_size(slots, meta, checksum=checksum, dst=final, tensors=text)
    new_files = finals + ([index] if index else [])

    total = sum(o.nbytes for o in outputs)
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_raises())
        lock = stack.enter_context(OutputLock(dst))
        plan = plan_output_set(dst, new_files, force=force, inputs=protect, index=index_path(dst))
        temps = stack.enter_context(TempFiles(os.path.dirname(dst), lock=lock))
        background = Background(check)
        bar = stack.enter_context(_progress_bar(total, progress, os.path.basename(dst)))
        sources = stack.enter_context(_SourceFiles())
        pipeline = stack.enter_context(Pipeline(chunk_for(total + sum(map(len, tensor_texts)))))
        written: list[_Written] = []
        for slots, final, text in zip(layouts, finals, tensor_texts):
            fd, tmp = temps.create(os.path.basename(final))
            header, crcs = _write_file(
                fd, slots, meta, dst=final, checksum=checksum, verify=verify, fsync=fsync,
                bar=bar, sources=sources, pipeline=pipeline, tensors=text,
            )
            temps.close(fd)
            written.append(_Written(tmp, final, slots, crcs, header))
        set_id = None
        if index is not None:
            set_id = _set_identity(written, complete=checksum or verify)
            for w in written:
                _patch_set_identity(w, {**meta, SET_KEY: set_id}, checksum=checksum, fsync=fsync)
        if verify:
            for w in written:
                _verify_written(w)
        pairs = [(w.tmp, w.final) for w in written]
        if index is not None:
            pairs.append((_write_index(temps, index, written, total, set_id, fsync=fsync), index))
        background.result()
        commit(pairs, plan, temps, fsync=fsync)
    checksums = {name: crc for w in written for name, crc in w.crcs.items()} if checksum else {}
    return WriteResult(files=new_files, tensors=len(outputs), nbytes=total, checksums=checksums, set_id=set_id)


def _set_identity(written: list[_Written], *, complete: bool) -> str:
    """The set's identity: a digest of every shard's name, header and CRC-32Cs when they are
    all known (the same conversion gives the same set), else random."""
    if not complete:
        return secrets.token_hex(16)
    digest = hashlib.sha256()
    for w in written:
        digest.update(os.path.basename(w.final).encode("utf-8") + b"\0" + w.header)
        digest.update(json.dumps(w.crcs, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:32]


def _patch_set_identity(w: _Written, meta: Mapping[str, str], *, checksum: bool, fsync: bool) -> None:
    """Put the set identity in place of its placeholder (same width: the header keeps its size)."""
    header = _header(w.slots, meta, w.crcs if checksum else None)
    assert len(header) == len(w.header), "the set identity changed the header length"
    try:
        fd = os.open(w.tmp, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise OutputError(f"cannot write the output: {e.strerror}", path=w.final) from e
    try:
        pwrite_all(fd, memoryview(header), 0, path=w.final)
        if fsync:
            fsync_file(fd, w.final)
    finally:
        os.close(fd)
    w.header = header


def _verify_written(w: _Written) -> None:
    """Read a finished file back: its header as written, every tensor's CRC-32C as computed."""
    bad: list[str] = []
    fd = os.open(w.tmp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if os.pread(fd, len(w.header), 0) != w.header:
            bad.append("the header")
        buffer = ReadBuffer(min(16 << 20, max((s.end - s.begin for s in w.slots), default=1) or 1))
        for slot in w.slots:
            stored = ByteRange(w.tmp, len(w.header) + slot.begin, slot.end - slot.begin)
            crc = stored.crc32c(fd=fd, buffer=buffer, tensor=slot.output.name)
            if crc != w.crcs.get(slot.output.name):
                bad.append(slot.output.name)
    finally:
        os.close(fd)
    if bad:
        raise IntegrityError(
            f"verification after writing failed for {len(bad)} tensor(s): {', '.join(bad[:5])}; "
            "the disk returned other bytes than were written, so nothing was put in place",
            path=w.final,
        )


def _write_index(
    temps: TempFiles, index: str, written: list[_Written], total: int, set_id: str | None, *, fsync: bool
) -> str:
    fd, tmp = temps.create(os.path.basename(index))
    weight_map = {s.output.name: os.path.basename(w.final) for w in written for s in w.slots}
    meta: dict[str, object] = {"total_size": total}
    if set_id is not None:
        meta[SET_KEY] = set_id
    body = json.dumps({"metadata": meta, "weight_map": weight_map}, indent=2, ensure_ascii=False)
    write_all(fd, memoryview(body.encode("utf-8") + b"\n"), path=index)
    if fsync:
        fsync_file(fd, index)
    temps.close(fd)
    return tmp


# --- checks, before anything is created ---------------------------------------------------


def _check_metadata(metadata: Mapping[str, str] | None, dst: str) -> dict[str, str]:
    try:
        return check_metadata(metadata, own=True)
    except ValueError as e:
        raise OutputError(str(e), path=dst) from None


def _check_outputs(outputs: list[Output], dst: str) -> dict[str, str]:
    """Every output's safetensors dtype code by name; refuses unknown dtypes, repeated names."""
    codes: dict[str, str] = {}
    unsupported: list[str] = []
    seen: set[str] = set()
    for output in outputs:
        if not isinstance(output.name, str) or not output.name or output.name == "__metadata__":
            raise OutputError(f"invalid tensor name {output.name!r} for safetensors", path=dst)
        if output.name in seen:
            raise OutputError("two outputs share this name", path=dst, tensor=output.name)
        seen.add(output.name)
        code = to_safetensors(output.dtype)
        if code is None:
            unsupported.append(output.name)
        codes[output.name] = code or ""
    if unsupported:
        first = next(o for o in outputs if o.name == unsupported[0])
        more = f" (and {len(unsupported) - 1} more: {', '.join(unsupported[1:4])}...)" if len(
            unsupported
        ) > 1 else ""
        # the default dtype casts real floating-point tensors only: a complex one needs a cast op
        how = "a cast op, e.g. to complex64" if first.dtype.kind == "c" else "{opt:dtype} or a cast op"
        raise UnsupportedError(
            f"safetensors has no {dtype_name(first.dtype)} dtype{more}; cast it ({how}) or drop it with a rule",
            path=dst,
            tensor=first.name,
        )
    return codes


def _shard(outputs: list[Output], max_shard_size: int | None) -> list[list[Output]]:
    """Greedy in order: a new shard when the next tensor would not fit; big tensors alone."""
    if max_shard_size is None:
        return [outputs]
    groups: list[list[Output]] = []
    current: list[Output] = []
    size = 0
    for output in outputs:
        if current and size + output.nbytes > max_shard_size:
            groups.append(current)
            current, size = [], 0
        current.append(output)
        size += output.nbytes
    if current or not groups:
        groups.append(current)
    return groups


# --- writing one file ----------------------------------------------------------------------


def _layout(group: list[Output], codes: Mapping[str, str]) -> list[_Slot]:
    slots = []
    offset = 0
    for output in group:
        n = output.nbytes
        slots.append(_Slot(output, codes[output.name], offset, offset + n))
        offset += n
    return slots


def _tensors_json(slots: list[_Slot]) -> bytes:
    """The header's tensor entries as one JSON object, UTF-8 encoded (what ``json.dumps``
    gives for the dict of them), built once per file and piece by piece: a file of 100,000
    tensors would otherwise hold 100,000 dicts for the size check, the header and its patch
    each."""
    quote = json.encoder.encode_basestring  # json.dumps(text, ensure_ascii=False)
    return ("{" + ",".join(
        f'{quote(s.output.name)}:{{"dtype":{quote(s.code)},"shape":[{",".join(map(str, s.output.shape))}],'
        f'"data_offsets":[{s.begin},{s.end}]}}'
        for s in slots
    ) + "}").encode("utf-8")


def _header(
    slots: list[_Slot], meta: Mapping[str, str], crcs: Mapping[str, int] | None, tensors: bytes | None = None
) -> bytes:
    """The header bytes (length prefix included), padded with spaces to a multiple of 8:
    ``__metadata__`` first, then ``tensors`` (:func:`_tensors_json` of ``slots``, encoded here
    when not given). The tensor entries are copied once, into the result."""
    if tensors is None:
        tensors = _tensors_json(slots)
    full_meta = dict(meta)
    if crcs is not None:  # json.dumps of {name: "%08x"}, piece by piece
        quote = json.encoder.encode_basestring
        full_meta[CRC_KEY] = "{" + ",".join(
            f'{quote(s.output.name)}:"{crcs.get(s.output.name, 0):08x}"' for s in slots
        ) + "}"
    parts: list[bytes | memoryview]
    if full_meta:
        head = '{"__metadata__":' + json.dumps(full_meta, separators=(",", ":"), ensure_ascii=False)
        parts = [head.encode("utf-8")]
        parts += [b"}"] if tensors == b"{}" else [b",", memoryview(tensors)[1:]]
    else:
        parts = [tensors]
    size = sum(len(part) for part in parts)
    pad = -size % 8
    return b"".join([(size + pad).to_bytes(8, "little"), *parts, b" " * pad])


def _check_header_size(
    slots: list[_Slot], meta: Mapping[str, str], *, checksum: bool, dst: str, tensors: bytes
) -> None:
    size = len(_header(slots, meta, {} if checksum else None, tensors)) - 8
    if size > _MAX_HEADER:
        raise OutputError(
            f"the header would be {size} bytes, above safetensors' limit of {_MAX_HEADER}; "
            "shard the output ({opt:max_shard_size})",
            path=dst,
        )


def _write_file(
    fd: int,
    slots: list[_Slot],
    meta: Mapping[str, str],
    *,
    dst: str,
    checksum: bool,
    verify: bool,
    fsync: bool,
    bar: _Bar,
    sources: _SourceFiles,
    pipeline: Pipeline,
    tensors: bytes,
) -> tuple[bytes, dict[str, int]]:
    """Write one file; return its final header and the CRC-32C of every tensor computed (all
    of them with ``checksum`` or ``verify``, else those whose source records one)."""
    head = _header(slots, meta, {} if checksum else None, tensors)
    head_size = len(head)
    out = Sink(pipeline, fd, path=dst, fsync=fsync)
    out.write(head, None)  # copied into the staging buffers
    if checksum:  # the patch replaces it: its memory goes back now (MBs at 100,000 tensors)
        head = b""
    checked: list[Output] = []
    for slot in slots:
        output = slot.output
        source = output.source
        want_crc = checksum or verify or (source is not None and source.crc32c is not None)
        name = output.name if want_crc else None
        if name is not None:
            pipeline.crc_start(name, output.nbytes)
            checked.append(output)
        if _passes_through(output):
            _copy_range(output, out, sources, name, bar)
        else:
            _write_computed(output, out, dst, name, bar)
    # the checksum thread runs behind the copy; its results are compared once it is done
    crcs: dict[str, int] = {}
    for output, crc in zip(checked, pipeline.crc_results([o.name for o in checked])):
        if output.source is not None:
            output.source.compare_crc(crc)  # the bytes copied are the bytes the source recorded
        crcs[output.name] = crc
    patch = None
    if checksum:
        patch = _header(slots, meta, crcs, tensors)
        assert len(patch) == head_size, "the checksum placeholders changed the header length"
    out.finish(patch)
    return (head if patch is None else patch), crcs


def _passes_through(output: Output) -> bool:
    source = output.source
    return (
        source is not None
        and source.byte_range is not None
        and source.byte_range.length == output.nbytes
        and source.shape == output.shape
        and dtype_name(source.dtype) == dtype_name(output.dtype)
    )


def _copy_range(output: Output, out: Sink, sources: _SourceFiles, name: str | None, bar: _Bar) -> None:
    """Read a tensor's stored bytes straight into the output's staging buffers, undecoded."""
    assert output.source is not None and output.source.byte_range is not None
    br = output.source.byte_range
    src = sources.fd(br.path)
    done = 0
    while done < br.length:
        space = out.reserve()
        want = min(len(space), br.length - done)
        br.read_into(space[:want], start=done, fd=src, tensor=output.source.name)
        out.commit(want, name)
        done += want
        bar.update(want)


def _write_blocks(output: Output, out: Sink, dst: str, name: str | None, bar: _Bar) -> None:
    """Write an output that comes piece by piece (a cast streamed from its source)."""
    assert output.compute_blocks is not None
    done = 0
    for block in output.compute_blocks(_BLOCK_BYTES):
        if dtype_name(block.dtype) != dtype_name(output.dtype) or block.ndim != 1:
            raise OutputError(
                f"computed a {block.ndim}-D {dtype_name(block.dtype)} block, the plan says "
                f"1-D {dtype_name(output.dtype)}",
                path=dst,
                tensor=output.name,
            )
        out.write_array(block, name)
        done += block.nbytes
        bar.update(block.nbytes)
    if done != output.nbytes:
        raise OutputError(
            f"computed {done} bytes, the plan says {output.nbytes}", path=dst, tensor=output.name
        )


_BLOCK_BYTES = 8 << 20  # bytes per block of a streamed output (of the wider of source and output)


def _write_computed(output: Output, out: Sink, dst: str, name: str | None, bar: _Bar) -> None:
    """Compute the output's array and write its bytes in C order, little-endian.

    A transposed result arrives as a view (``Output.compute_view``) and is laid out tile by
    tile straight into the staging buffers, without a whole-tensor copy.
    """
    if output.compute_blocks is not None:
        _write_blocks(output, out, dst, name, bar)
        return
    compute = output.compute_view or output.compute
    array = compute()
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if array.shape != output.shape:
        raise OutputError(
            f"computed data has shape {list(array.shape)}, the plan says {list(output.shape)}",
            path=dst,
            tensor=output.name,
        )
    if dtype_name(array.dtype) != dtype_name(output.dtype):
        raise OutputError(
            f"computed data has dtype {dtype_name(array.dtype)}, the plan says "
            f"{dtype_name(output.dtype)}",
            path=dst,
            tensor=output.name,
        )
    out.write_array(array, name)  # copied into the staging buffers: the array is free now
    bar.update(array.nbytes)


class _SourceFiles:
    """Read-only descriptors of source files, opened once per write."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._fds[path] = fd
            if hasattr(os, "posix_fadvise"):  # read-ahead: tensors are read front to back
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd

    def __enter__(self) -> _SourceFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _Bar:
    def __init__(self, bar: object | None) -> None:
        self._bar = bar

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool, label: str) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None)
        return
    from tqdm import tqdm

    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr,
        leave=False,
    ) as bar:
        yield _Bar(bar)
