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

Every file is written under a dot-prefixed temporary name in the target directory, fsynced,
and renamed into place; a sharded set's index is written last. A failed or interrupted run
(exception, Ctrl-C, SIGTERM) leaves no temporary file and no new output behind.
"""

from __future__ import annotations

import contextlib
import json
import json.encoder
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._gc import paused_gc
from ..dtypes import dtype_name, to_safetensors
from ..errors import OutputError, UnsupportedError
from ..formats.safetensors import CRC_KEY, check_metadata
from ..options import keyword_options
from ..store import Output
from ._sink import Pipeline, Sink, write_all
from ._sink import fsync as fsync_file

__all__ = ["write_safetensors", "WriteResult", "parse_size", "CRC_KEY", "shard_names"]


_CRC_PLACEHOLDER = "00000000"
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
    """

    files: list[str]
    tensors: int
    nbytes: int
    checksums: dict[str, int] = field(default_factory=dict)


@dataclass
class _Slot:
    """One tensor's place in one file."""

    output: Output
    code: str
    begin: int
    end: int


def shard_names(dst: str | os.PathLike[str], count: int) -> list[str]:
    """The Hugging Face shard paths for ``dst``: ``model-00001-of-00003.safetensors``, ..."""
    dst = os.fspath(dst)
    directory, base = os.path.split(dst)
    stem = base[: -len(".safetensors")] if base.endswith(".safetensors") else base
    return [
        os.path.join(directory, f"{stem}-{i:05d}-of-{count:05d}.safetensors")
        for i in range(1, count + 1)
    ]


def index_path(dst: str | os.PathLike[str]) -> str:
    """The sharded set's index for ``dst``: ``model.safetensors.index.json``."""
    return os.fspath(dst) + ".index.json"


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
) -> WriteResult:
    """Write ``outputs`` in order into ``dst`` (or a sharded set named after it).

    Everything is checked before any file is created: names, dtypes (safetensors has no
    complex128 or string type), metadata, output paths. Then each output's data is read
    once: ``output.compute()`` is called one output at a time, or, for an output whose bytes
    are its source entry's stored bytes (``output.source.byte_range``), the bytes are copied
    file to file without being decoded.

    Args:
        outputs: The tensors, in the order to write them.
        dst: The ``.safetensors`` path. With sharding its stem names the shards
            (``model-00001-of-00003.safetensors``) and ``dst + ".index.json"`` is the index;
            if everything fits in one shard a single file ``dst`` is written.
        metadata: String metadata for ``__metadata__``.
        force: Replace an existing output (for a set, only once the new one is complete).
        fsync: Flush files and the directory to disk before returning.
        checksum: Record a CRC-32C per tensor in ``__metadata__``.
        max_shard_size: Maximum tensor bytes per shard (an oversized tensor gets a shard
            of its own), or None for one file.
        progress: Show a progress bar over bytes on stderr.
        protect: Input files that must not be overwritten (and, for a sharded input's index,
            the shards it names).

    Returns:
        A :class:`WriteResult`.

    Raises:
        UnsupportedError: an output's dtype has no safetensors code.
        OutputError: the output exists (without ``force``), is one of the inputs, cannot be
            written, or an output's data does not match its declared shape or dtype.
        IntegrityError: a source's recorded CRC-32C does not match its bytes.
        CorruptFileError: a source file is truncated.
    """
    outputs = list(outputs)
    dst = os.path.abspath(os.fspath(dst))
    meta = _check_metadata(metadata, dst)
    codes = _check_outputs(outputs, dst)
    if max_shard_size is not None and max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size}")

    groups = _shard(outputs, max_shard_size)
    if len(groups) <= 1:
        finals = [dst]
        index = None
    else:
        finals = shard_names(dst, len(groups))
        index = index_path(dst)
    with paused_gc():  # a slot per tensor, no cycles
        layouts = [_layout(group, codes) for group in groups]
        tensor_texts = [_tensors_json(slots) for slots in layouts]
    for slots, final, text in zip(layouts, finals, tensor_texts):
        _check_header_size(slots, meta, checksum=checksum, dst=final, tensors=text)
    new_files = finals + ([index] if index else [])
    old_files = _existing_output(dst)
    # a stray file with a new shard's name counts as existing output too
    old_files += [p for p in new_files if os.path.lexists(p) and p not in old_files]
    _check_targets(new_files, old_files, dst, force=force, protect=protect)

    total = sum(o.nbytes for o in outputs)
    checksums: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_as_exit())
        temps = stack.enter_context(_TempFiles(os.path.dirname(dst)))
        bar = stack.enter_context(_progress_bar(total, progress, os.path.basename(dst)))
        sources = stack.enter_context(_SourceFiles())
        pipeline = stack.enter_context(Pipeline())
        for slots, final, text in zip(layouts, finals, tensor_texts):
            fd, tmp = temps.create(os.path.basename(final))
            checksums.update(
                _write_file(
                    fd, slots, meta, dst=final, checksum=checksum, fsync=fsync,
                    bar=bar, sources=sources, pipeline=pipeline, tensors=text,
                )
            )
            temps.close(fd)
        index_tmp = None
        if index is not None:
            fd, index_tmp = temps.create(os.path.basename(index))
            weight_map = {
                o.name: os.path.basename(final) for group, final in zip(groups, finals) for o in group
            }
            body = json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2,
                ensure_ascii=False,
            ).encode("utf-8") + b"\n"
            write_all(fd, memoryview(body), path=index)
            if fsync:
                fsync_file(fd, index)
            temps.close(fd)
        pairs = list(zip(temps.paths[: len(finals)], finals))
        if index_tmp is not None:
            pairs.append((index_tmp, index))
        temps.commit(pairs, force=force, fsync=fsync)
    stale = [p for p in old_files if p not in new_files]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if stale and fsync:
        _fsync_dir(os.path.dirname(dst))
    return WriteResult(
        files=new_files,
        tensors=len(outputs),
        nbytes=total,
        checksums=checksums if checksum else {},
    )


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
        raise UnsupportedError(
            f"safetensors has no {dtype_name(first.dtype)} dtype{more}; cast it "
            "({opt:dtype} or a cast op) or drop it with a rule",
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


def _existing_output(dst: str) -> list[str]:
    """The files of an output already at ``dst``: the file, and a sharded set's index + shards."""
    found = []
    if os.path.lexists(dst):
        found.append(dst)
    index = index_path(dst)
    if os.path.lexists(index):
        found.append(index)
        directory = os.path.dirname(dst)
        for name in _index_files(index):
            path = os.path.join(directory, name)
            if os.path.lexists(path) and path not in found:
                found.append(path)
    return found


def _index_files(index: str) -> list[str]:
    """Shard file names an index JSON names (plain names only; anything else is ignored)."""
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map", {})
    except (OSError, ValueError, AttributeError, RecursionError):
        return []
    if not isinstance(weight_map, dict):
        return []
    names = []
    for value in weight_map.values():
        if isinstance(value, str) and value and os.path.basename(value) == value and value not in (
            ".",
            "..",
        ) and value not in names:
            names.append(value)
    return names


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _protected(protect: Iterable[str | os.PathLike[str]]) -> list[str]:
    paths = []
    for p in protect:
        path = os.path.abspath(os.fspath(p))
        paths.append(path)
        if path.endswith(".json") and os.path.isfile(path):
            directory = os.path.dirname(path)
            paths.extend(os.path.join(directory, name) for name in _index_files(path))
    return paths


def _check_targets(
    new_files: list[str],
    old_files: list[str],
    dst: str,
    *,
    force: bool,
    protect: Iterable[str | os.PathLike[str]],
) -> None:
    directory = os.path.dirname(dst)
    if not os.path.isdir(directory):
        raise OutputError("the output directory does not exist; create it first", path=directory)
    inputs = _protected(protect)
    for path in new_files + old_files:
        for source in inputs:
            if _same_file(path, source):
                raise OutputError(
                    f"the output would overwrite the input {source}; choose another output path",
                    path=path,
                )
    for path in new_files:
        if os.path.isdir(path):
            raise OutputError("the output path is a directory", path=path)
    if old_files and not force:
        raise OutputError(
            "the output already exists; pass {opt:force=True} to replace it",
            path=old_files[0],
        )


# --- writing one file ----------------------------------------------------------------------


def _layout(group: list[Output], codes: Mapping[str, str]) -> list[_Slot]:
    slots = []
    offset = 0
    for output in group:
        n = output.nbytes
        slots.append(_Slot(output, codes[output.name], offset, offset + n))
        offset += n
    return slots


def _tensors_json(slots: list[_Slot]) -> str:
    """The header's tensor entries as one JSON object (what ``json.dumps`` gives for the
    dict of them), built once per file and piece by piece: a file of 100,000 tensors would
    otherwise hold 100,000 dicts for the size check, the header and its patch each."""
    quote = json.encoder.encode_basestring  # json.dumps(text, ensure_ascii=False)
    return "{" + ",".join(
        f'{quote(s.output.name)}:{{"dtype":{quote(s.code)},"shape":[{",".join(map(str, s.output.shape))}],'
        f'"data_offsets":[{s.begin},{s.end}]}}'
        for s in slots
    ) + "}"


def _header(
    slots: list[_Slot], meta: Mapping[str, str], crcs: Mapping[str, int] | None, tensors: str
) -> bytes:
    """The header bytes (length prefix included), padded with spaces to a multiple of 8:
    ``__metadata__`` first, then ``tensors`` (:func:`_tensors_json` of ``slots``)."""
    full_meta = dict(meta)
    if crcs is not None:  # json.dumps of {name: "%08x"}, piece by piece
        quote = json.encoder.encode_basestring
        full_meta[CRC_KEY] = "{" + ",".join(
            f'{quote(s.output.name)}:"{crcs.get(s.output.name, 0):08x}"' for s in slots
        ) + "}"
    text = tensors
    if full_meta:
        head = '{"__metadata__":' + json.dumps(full_meta, separators=(",", ":"), ensure_ascii=False)
        text = head + ("}" if tensors == "{}" else "," + tensors[1:])
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _check_header_size(
    slots: list[_Slot], meta: Mapping[str, str], *, checksum: bool, dst: str, tensors: str
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
    fsync: bool,
    bar: _Bar,
    sources: _SourceFiles,
    pipeline: Pipeline,
    tensors: str,
) -> dict[str, int]:
    head = _header(slots, meta, {} if checksum else None, tensors)
    out = Sink(pipeline, fd, path=dst, fsync=fsync)
    out.write(head, None)
    head_length = len(head)
    del head  # megabytes for 100,000 tensors: the patch below is built when the CRCs are known
    checked: list[Output] = []
    for slot in slots:
        output = slot.output
        source = output.source
        want_crc = checksum or (source is not None and source.crc32c is not None)
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
        if checksum:
            crcs[output.name] = crc
    patch = None
    if checksum:
        patch = _header(slots, meta, crcs, tensors)
        assert len(patch) == head_length, "the checksum placeholders changed the header length"
    out.finish(patch)
    return crcs


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


class _TempFiles:
    """Temporary files in the target directory, removed unless committed."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.paths: list[str] = []
        self._open: set[int] = set()
        self._placed: list[str] = []

    def create(self, final_name: str) -> tuple[int, str]:
        try:
            fd, path = tempfile.mkstemp(prefix=f".{final_name}.", suffix=".tmp", dir=self.directory)
        except OSError as e:
            raise OutputError(f"cannot create a file here: {e.strerror}", path=self.directory) from e
        self.paths.append(path)
        self._open.add(fd)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        return fd, path

    def close(self, fd: int) -> None:
        self._open.discard(fd)
        os.close(fd)

    def commit(self, pairs: list[tuple[str, str]], *, force: bool, fsync: bool) -> None:
        """Move every temporary file to its final name, in order; the last one completes it."""
        for tmp, final in pairs:
            _place(tmp, final, force=force)
            self._placed.append(final)
            self.paths.remove(tmp)
        self._placed = []  # complete: nothing to roll back
        if fsync:
            _fsync_dir(self.directory)

    def __enter__(self) -> _TempFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._open:
            with contextlib.suppress(OSError):
                os.close(fd)
        for path in self.paths + self._placed:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def _place(tmp: str, final: str, *, force: bool) -> None:
    if force:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # fails if final appeared meanwhile: never clobber without force
    except FileExistsError as e:
        raise OutputError(
            "the output already exists; pass {opt:force=True} to replace it", path=final
        ) from e
    except OSError:  # a filesystem without hard links
        if os.path.lexists(final):
            raise OutputError(
                "the output already exists; pass {opt:force=True} to replace it", path=final
            ) from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the files themselves are synced
    finally:
        os.close(fd)


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


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while writing, so the cleanup runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        yield
        return
    if previous is not signal.SIG_DFL:
        yield  # someone else handles SIGTERM: leave it to them
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
