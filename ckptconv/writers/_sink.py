"""Sequential, checksummed, pipelined output of a file: the low level of the safetensors writer.

Three stages overlap, so reading or transposing, writing and checksumming share the machine's
cores instead of taking turns:

- the caller's thread fills page-aligned staging buffers: it reads a source file's bytes
  straight into them (:meth:`Sink.reserve` / :meth:`Sink.commit`), copies bytes in
  (:meth:`Sink.write`), or lays an array out in C order in them (:meth:`Sink.write_array`,
  which copies a transposed view in cache-sized tiles, without a whole-tensor temporary);
- a writer thread writes each full buffer at its offset in the file;
- a checksum thread computes each tensor's CRC-32C, in stream order (``crc32c`` releases the
  GIL).

A buffer is filled again only once both threads are done with it, so memory stays at
``_BUFFERS * _CHUNK`` whatever the file's size (less for a small output: :func:`chunk_for`).

Durable outputs (``fsync=True``) are written with ``O_DIRECT`` where the file system takes
it: the data goes from the staging buffers to the disk without being copied into the page
cache first. The file is fsynced before it is renamed into place anyway, so the cache copy
would only cost time: on the project's machine writing into new page-cache pages was most
of the time of a conversion, and the most variable part. The last block is padded to the
alignment and the file truncated to its size afterwards. A file system that refuses
``O_DIRECT`` (tmpfs, some network and FUSE file systems) gets ordinary buffered writes, with
write-back started every ``_WRITEBACK_STEP`` bytes so the final fsync has little left to do.
Set the environment variable ``CKPTCONV_DIRECT_IO=0`` to always write through the page cache.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..crc import crc32c
from ..dtypes import by_name, dtype_name
from ..errors import OutputError
from ..mapping.ops import copy_c_order

_CHUNK = 8 << 20  # bytes per staging buffer: full disk speed (8 and 16 MiB measure alike), small RSS
_MIN_CHUNK = 1 << 20  # the smallest staging buffer chunk_for gives (a small output's)
_BUFFERS = 4  # staging buffers: one being filled, one being written, one being checksummed, one spare
_INLINE_CRC = 256 << 10  # tensors up to this size are checksummed on the committing thread
_ALIGN = 4096  # O_DIRECT alignment of memory, file offsets and lengths (covers 512-byte disks)
_WRITEBACK_STEP = 64 << 20  # buffered writes: start write-back every this many bytes
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def chunk_for(total: int) -> int:
    """The staging buffer size for writing ``total`` bytes: :data:`_CHUNK`, or for an output
    under ``4 * _BUFFERS`` chunks about a sixteenth of it (at least ``_MIN_CHUNK``, a multiple
    of ``_ALIGN``), so a small output of many tensors does not hold 32 MiB of buffers while
    its metadata already takes hundreds of MB; big outputs keep full-size buffers."""
    want = -(-max(total, 0) // (4 * _BUFFERS))
    want += -want % _ALIGN
    return min(_CHUNK, max(_MIN_CHUNK, want))


def direct_io_enabled() -> bool:
    """Whether durable outputs try ``O_DIRECT`` (off with ``CKPTCONV_DIRECT_IO=0``)."""
    return bool(_O_DIRECT) and os.environ.get("CKPTCONV_DIRECT_IO", "1").strip() not in ("0", "no", "off", "false")


class _Buffer:
    """A page-aligned staging buffer, with what still reads it (a write, a checksum)."""

    __slots__ = ("array", "view", "pending")

    def __init__(self, size: int) -> None:
        raw = np.empty(size + _ALIGN, dtype=np.uint8)  # pages are touched only when filled
        start = -raw.ctypes.data % _ALIGN
        self.array = raw[start : start + size]
        self.view = memoryview(self.array)
        self.pending: list[Future[None]] = []

    def wait(self) -> None:
        """Wait until no write or checksum reads this buffer; re-raise their errors."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()


class Pipeline:
    """The writer and checksum threads and the staging buffers, shared by the files of a write.

    Use as a context manager; leaving it waits for (or cancels) the work still queued.

    Args:
        chunk: Bytes per staging buffer, a multiple of ``_ALIGN`` (default ``_CHUNK``;
            :func:`chunk_for` sizes it for an output).
    """

    def __init__(self, chunk: int | None = None) -> None:
        self.chunk = _CHUNK if chunk is None else chunk
        if self.chunk <= 0 or self.chunk % _ALIGN:
            raise ValueError(f"chunk must be a positive multiple of {_ALIGN}, got {self.chunk}")
        self._writer: ThreadPoolExecutor | None = None
        self._checker: ThreadPoolExecutor | None = None
        self._buffers: list[_Buffer] = []
        self._turn = 0
        self._crcs: dict[str, int] = {}
        self._inline: set[str] = set()

    def __enter__(self) -> Pipeline:
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ckptconv-write")
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="ckptconv-crc32c")
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in (self._writer, self._checker):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._writer = self._checker = None
        self._buffers = []

    def next_buffer(self) -> _Buffer:
        """The next staging buffer in turn, once nothing reads it any more."""
        if len(self._buffers) < _BUFFERS:
            buffer = _Buffer(self.chunk)
            self._buffers.append(buffer)
        else:
            buffer = self._buffers[self._turn % _BUFFERS]
            buffer.wait()
        self._turn += 1
        return buffer

    def wait_all(self) -> None:
        for buffer in self._buffers:
            buffer.wait()

    # -- checksums --

    def crc_start(self, name: str, nbytes: int | None = None) -> None:
        """Start the checksum of ``name``. A tensor of at most ``_INLINE_CRC`` bytes is
        checksummed as it is committed, on the caller's thread: handing a few kilobytes to
        the checksum thread costs more than the CRC (a file of 10,000 small tensors)."""
        self._crcs[name] = 0
        if nbytes is not None and nbytes <= _INLINE_CRC:
            self._inline.add(name)

    def crc_update(self, name: str, data: memoryview) -> Future[None] | None:
        """Add ``data`` to ``name``'s checksum: now (a small tensor, returns None), or on the
        checksum thread (returns its future; ``data`` must stay unchanged until it is done)."""
        if name in self._inline:
            self._crcs[name] = crc32c(data, self._crcs[name])
            return None
        assert self._checker is not None
        return self._checker.submit(self._crc_update, name, data)

    def _crc_update(self, name: str, data: memoryview) -> None:
        self._crcs[name] = crc32c(data, self._crcs[name])

    def crc_results(self, names: list[str]) -> list[int]:
        """The CRC-32Cs of everything committed under ``names``, once the checksum thread is done."""
        assert self._checker is not None
        self._checker.submit(lambda: None).result()  # one worker: everything before is done
        self._inline.difference_update(names)
        return [self._crcs.pop(name) for name in names]

    def submit_write(self, fn, *args) -> Future[None]:  # type: ignore[no-untyped-def]
        assert self._writer is not None
        return self._writer.submit(fn, *args)


class Sink:
    """Sequential writes to one output file through the pipeline's staging buffers.

    Bytes committed under a name are checksummed under that name (``None``: not at all).
    Call :meth:`finish` once everything is written; errors of the writer thread surface as
    :class:`OutputError` from a later call.
    """

    def __init__(self, pipeline: Pipeline, fd: int, *, path: str, fsync: bool) -> None:
        self.pipeline = pipeline
        self.fd = fd
        self.path = path
        self.fsync = fsync
        self.direct = fsync and direct_io_enabled() and _set_direct(fd, True)
        self.size = 0  # bytes committed so far
        self._buffer: _Buffer | None = None
        self._fill = 0
        self._start = 0  # file offset of the current buffer
        self._flushed = 0  # buffered mode: write-back started up to here
        self._padded = False

    # -- filling --

    def reserve(self) -> memoryview:
        """The free part of the current staging buffer (never empty), to fill then commit."""
        if self._buffer is None:
            self._buffer = self.pipeline.next_buffer()
            self._fill = 0
        return self._buffer.view[self._fill :]

    def commit(self, n: int, name: str | None) -> None:
        """``n`` bytes were put at the start of what :meth:`reserve` returned."""
        buffer = self._buffer
        assert buffer is not None and 0 <= n <= self.pipeline.chunk - self._fill
        if n and name is not None:
            future = self.pipeline.crc_update(name, buffer.view[self._fill : self._fill + n])
            if future is not None:
                buffer.pending.append(future)
        self._fill += n
        self.size += n
        if self._fill == self.pipeline.chunk:
            self._submit()

    def write(self, data: memoryview | bytes, name: str | None) -> None:
        """Copy ``data`` into the stream."""
        data = memoryview(data).cast("B")
        while len(data):
            space = self.reserve()
            n = min(len(space), len(data))
            space[:n] = data[:n]
            self.commit(n, name)
            data = data[n:]

    def write_array(self, array: np.ndarray, name: str | None) -> None:
        """Write ``array``'s elements in C order and little-endian, whatever its strides.

        Whole rows (along the first axis) are laid out straight into the staging buffer, a
        transposed view in cache-sized tiles; only a row that straddles two buffers goes
        through a small temporary.
        """
        little = _little_endian(array.dtype)
        if array.size == 0:
            return
        if array.ndim == 0 or (array.flags.c_contiguous and array.dtype == little):
            self.write(np.ascontiguousarray(array, dtype=little).reshape(-1).view(np.uint8), name)
            return
        rows = array.shape[0]
        row_bytes = (array.size // rows) * little.itemsize
        if row_bytes > self.pipeline.chunk:  # rows larger than a buffer: slabs of a few rows
            for block in _c_order_blocks(array, little, self.pipeline.chunk):
                self.write(block.reshape(-1).view(np.uint8), name)
            return
        row = 0
        while row < rows:
            space = self.reserve()
            fit = min(len(space) // row_bytes, rows - row)
            if fit == 0:  # the buffer ends inside a row: that row goes through a temporary
                self.write(np.ascontiguousarray(array[row : row + 1], dtype=little).view(np.uint8).reshape(-1), name)
                row += 1
                continue
            out = np.frombuffer(space, dtype=little, count=fit * (row_bytes // little.itemsize))
            copy_c_order(array[row : row + fit], out.reshape((fit, *array.shape[1:])))
            self.commit(fit * row_bytes, name)
            row += fit

    # -- writing --

    def _submit(self) -> None:
        """Hand the current buffer to the writer thread."""
        buffer = self._buffer
        assert buffer is not None
        length = self._fill
        if self.direct and length % _ALIGN:  # the last block: pad it, truncate later
            padded = length + (-length % _ALIGN)
            buffer.array[length:padded] = 0
            length = padded
            self._padded = True
        buffer.pending.append(self.pipeline.submit_write(self._write_at, buffer.view[:length], self._start))
        self._start += self._fill
        self._buffer = None
        self._fill = 0

    def _write_at(self, data: memoryview, offset: int) -> None:
        """On the writer thread: write ``data`` at ``offset`` (falling back to buffered I/O
        where the file system refuses direct I/O)."""
        try:
            while len(data):
                try:
                    n = os.pwrite(self.fd, data, offset)
                except OSError as e:
                    if not (self.direct and e.errno == errno.EINVAL):
                        raise
                    _set_direct(self.fd, False)  # refused: this file system has no direct I/O
                    self.direct = False
                    continue
                data = data[n:]
                offset += n
        except OSError as e:
            raise write_error(e, self.path) from e
        if not self.direct and self.fsync and offset - self._flushed >= _WRITEBACK_STEP:
            # start writing back what is written so far, without waiting for it, so the final
            # fsync has little left to do (the disk works while we copy)
            _start_writeback(self.fd, self._flushed, offset - self._flushed)
            self._flushed = offset

    def finish(self, patch: bytes | None = None) -> None:
        """Write what is left, wait for the threads, put ``patch`` at offset 0, fsync."""
        if self._buffer is not None and self._fill:
            self._submit()
        self._buffer = None
        self.pipeline.wait_all()
        try:
            if self._padded:
                os.ftruncate(self.fd, self.size)
            if patch is not None:
                if self.direct:  # a small unaligned write: through the page cache
                    _set_direct(self.fd, False)
                    self.direct = False
                pwrite_all(self.fd, memoryview(patch), 0, path=self.path)
            if self.fsync:
                os.fsync(self.fd)
        except OSError as e:
            raise write_error(e, self.path) from e


# --- helpers -------------------------------------------------------------------------------


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for ``fd``; whether it is now on."""
    if not _O_DIRECT:
        return False
    import fcntl  # POSIX only, like O_DIRECT itself

    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & _O_DIRECT)
    except OSError:
        return False


def _little_endian(dtype: np.dtype) -> np.dtype:
    try:
        return by_name(dtype_name(dtype))
    except KeyError:
        return np.dtype(dtype)


def _c_order_blocks(array: np.ndarray, dtype: np.dtype, chunk: int) -> Iterator[np.ndarray]:
    """Contiguous little-endian copies of consecutive slabs along the first axis, of about
    ``chunk`` bytes (one row at least)."""
    row = max(1, array[0].size * dtype.itemsize)
    rows = max(1, chunk // row)
    for start in range(0, array.shape[0], rows):
        yield np.ascontiguousarray(array[start : start + rows], dtype=dtype)


@functools.cache
def _sync_file_range():  # type: ignore[no-untyped-def]
    """libc's ``sync_file_range``, or None; looked up on first use. The process's own symbols hold libc's on Linux
    (``ctypes.util.find_library`` would import subprocess and run ``ldconfig``: tens of ms)."""
    if not sys.platform.startswith("linux"):
        return None
    for name in (None, "libc.so.6"):
        try:
            func = ctypes.CDLL(name, use_errno=True).sync_file_range
        except (OSError, AttributeError):
            continue
        func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        func.restype = ctypes.c_int
        return func
    return None


_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    func = _sync_file_range()
    if func is not None:
        func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # best effort


def write_all(fd: int, data: memoryview, *, path: str) -> None:
    try:
        while len(data):
            n = os.write(fd, data)
            data = data[n:]
    except OSError as e:
        raise write_error(e, path) from e


def pwrite_all(fd: int, data: memoryview, offset: int, *, path: str) -> None:
    try:
        while len(data):
            n = os.pwrite(fd, data, offset)
            data = data[n:]
            offset += n
    except OSError as e:
        raise write_error(e, path) from e


def fsync(fd: int, path: str) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise write_error(e, path) from e


def write_error(error: OSError, path: str) -> OutputError:
    return OutputError(
        f"cannot write the output: {error.strerror or error}; nothing was written "
        "(free some space or choose another directory)"
        if error.errno == errno.ENOSPC
        else f"cannot write the output: {error.strerror or error}; nothing was written",
        path=path,
    )
