"""Compare two checkpoints tensor by tensor: do they hold the same weights?

:func:`diff` pairs the tensors of A and B by name (after an optional mapping spec applied to
A), and reports the names only one side has, the shape and dtype differences, and for every
pair whether its bytes are identical, or else how far apart the values are (max absolute and
max relative difference, the count of elements beyond the tolerance, the first of them).

It streams. A tensor stored as plain bytes on both sides (every format's usual case) is read
in blocks of 512 KiB with ``pread`` into one buffer per side (placed where the kernel copies
fastest), and compared (bytes first, eight at a time; values only where the bytes differ) while
the block is still in the CPU's cache; a CRC-32C the format records is computed over the same
blocks. A small pair (16 KiB or less) is read with one ``pread`` per side into bytes objects
and compared at once; only a pair whose bytes differ goes on to the values. Two big tensors
are compared at a time, on two
worker threads, so both cores read. A tensor that is not plain bytes (an HDF5 dataset stored
compressed, a live model's variable, an output a ``--map`` rule transforms) is read whole, one
at a time. Memory stays at four blocks and one such tensor, whatever the tensors' sizes.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..dtypes import dtype_name, is_floating
from ..errors import CkptconvError, PlanError, UsageError
from ..formats import open_source
from ..gcpause import paused_gc
from ..options import keyword_options, option_value
from ..store import Entry, Output, Store, read_buffer
from .aliases import AliasTable
from .diff_report import DiffReport, Status, TensorDiff, TensorInfo

__all__ = ["diff", "DiffReport", "TensorDiff", "TensorInfo", "open_side", "parse_tolerance"]

WORKERS = 2  # threads comparing streamed pairs (one pair each)
BLOCK_BYTES = 512 << 10  # bytes per block and side when a tensor is streamed (measured best)
_STATS_CHUNK = 1 << 18  # elements per float64 pass when values differ (bounds temporaries)
_SMALL_BYTES = 16 << 10  # blocks up to this size compare as bytes objects (measured faster)


# -- sides -------------------------------------------------------------------------------------


def open_side(side: Any, *, what: str = "source", check_crc: bool = True) -> tuple[Store, bool]:
    """A store for one side of a comparison, and whether this call opened it (and must close it).

    ``side`` is a checkpoint path (any format :func:`ckptconv.open` reads), a
    :class:`~ckptconv.Store`, ``{name: numpy array}`` (as ``load_into`` takes a source), or a
    live Keras 3 / tf-keras model (:func:`ckptconv.keras.targets.model_store`: its variables
    under their canonical names; reading one reads the variable's value).

    Raises:
        UsageError: the object is none of these.
        CkptconvError: the path cannot be opened.
        LoadError: the model is not built.
    """
    if isinstance(side, (Store, Mapping, str, os.PathLike)):
        return open_source(side, check_crc=check_crc)
    from ..keras.targets import is_keras_model, model_store  # only for a live model

    if is_keras_model(side):
        return model_store(side), False
    raise UsageError(
        f"{what}: expected a checkpoint path, a ckptconv.Store, a {{name: array}} mapping or a "
        f"Keras model; received {type(side).__module__}.{type(side).__qualname__}"
    )


def _integrity_checks(*stores: Store) -> Any:
    """The whole-file checksums of the stores that record one (a ``.keras`` or ``torch.save``
    file's zip CRC-32s), checked on a thread beside the comparison; None if none does."""
    checks = [store.check_integrity for store in stores if store.has_integrity_check]
    if not checks:
        return None
    from ..background import Background

    def check_all() -> None:
        for check in checks:
            check()

    return Background(check_all)


def _describe(side: Any, store: Store) -> str:
    return os.fspath(side) if isinstance(side, (str, os.PathLike)) else store.path


# -- the comparison ----------------------------------------------------------------------------


def parse_tolerance(value: Any) -> float:
    """A tolerance: a finite number ``>= 0`` (``1e-6``, or the text of one).

    Raises:
        ValueError: anything else.
    """
    wanted = f"expected a finite number >= 0 such as 1e-6, not {value!r}"  # one wording for every refusal
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(wanted) from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(wanted)
    return number


@keyword_options
def diff(
    a: Any,
    b: Any,
    *,
    mapping: Any = None,
    atol: float = 0.0,
    rtol: float = 0.0,
    dtype: str | np.dtype | None = None,
    include_all: bool = False,
    check_crc: bool = True,
    progress: Callable[[int], None] | None = None,
) -> DiffReport:
    """Compare the tensors of ``a`` and ``b``, one at a time, in bounded memory.

    Tensors pair by name. A ``mapping`` (a spec: file path, mapping or :class:`Spec`) is
    applied to A first, as ``convert`` would, and checked against B's shapes and dtypes (so
    ``{reshape: target}`` and ``dtype: target`` work); entries it drops or that no rule keeps
    (``passthrough: false``) are not compared. Every byte of both sides is read (nothing is
    taken on trust from recorded checksums, which are checked on the way where a format
    records them, and a ``.keras`` or ``torch.save`` file's zip CRC-32s are checked beside the
    comparison: a damaged file is an error, not a difference).

    Args:
        a, b: Checkpoint paths (any format, sharded sets included), :class:`~ckptconv.Store`
            objects, ``{name: numpy array}`` mappings, or live Keras models (their variables
            under the names ``load_into`` uses).
        mapping: A spec applied to A, or None (names as they are).
        atol, rtol: Tolerance, ``>= 0``: elements within ``atol + rtol * |b|`` of each other
            count as equal (``numpy.isclose``'s rule). With the default 0 and 0, a pair is
            equal only when the values are (bit-exact, or numerically equal such as ``-0.0``
            and ``0.0``, or both NaN).
        dtype: Cast A's floating-point tensors to this dtype first (``bfloat16``...; the
            mapping's default dtype), to check that B is exactly A converted.
        include_all: Compare optimizer and bookkeeping entries too (by default weights only).
        check_crc: Check the checksums the formats record (per-tensor CRC-32Cs, zip CRC-32s);
            False compares the bytes as they are, to see how far a damaged copy differs.
        progress: Called with the number of bytes read, as reading goes.

    Returns:
        A :class:`DiffReport`: ``report.equal`` when both sides hold the same, equal tensors.

    Raises:
        UsageError: ``atol`` or ``rtol`` is negative or not finite, or a side is no checkpoint.
        OptionError: an option ``diff`` does not take.
        SpecError, PlanError: the mapping is invalid or does not apply to A.
        CkptconvError: a side cannot be opened or read (a damaged file, a checksum that fails).
        IntegrityError: a ``.keras`` or ``torch.save`` file fails its zip CRC-32 (unless
            ``check_crc`` is False).
    """
    atol = option_value("atol", atol, parse_tolerance)
    rtol = option_value("rtol", rtol, parse_tolerance)
    store_a, close_a = open_side(a, what="A", check_crc=check_crc)
    try:
        store_b, close_b = open_side(b, what="B", check_crc=check_crc)
        try:
            background = _integrity_checks(store_a, store_b) if check_crc else None
            try:
                with paused_gc():  # an output, a pair and a result per tensor, no cycles
                    report = _compare_stores(
                        store_a, store_b, _describe(a, store_a), _describe(b, store_b), mapping=mapping,
                        atol=atol, rtol=rtol, dtype=dtype, include_all=include_all, progress=progress,
                    )
            except CkptconvError:
                if background is not None:  # a damaged file explains what else went wrong
                    background.result()
                raise
            if background is not None:
                background.result()
            return report
        finally:
            if close_b:
                store_b.close()
    finally:
        if close_a:
            store_a.close()


def _compare_stores(
    store_a: Store,
    store_b: Store,
    name_a: str,
    name_b: str,
    *,
    mapping: Any,
    atol: float,
    rtol: float,
    dtype: Any,
    include_all: bool,
    progress: Callable[[int], None] | None,
) -> DiffReport:
    entries_b = {e.name: e for e in store_b.entries(include_all=include_all)}
    outputs = None
    if mapping is None and dtype is None:
        outputs = _as_stored(store_a.entries(include_all=include_all), entries_b)
    if outputs is None:
        outputs = _planned(store_a, entries_b, mapping=mapping, dtype=dtype, include_all=include_all)
    report = DiffReport(name_a, name_b, store_a.format, store_b.format, atol=atol, rtol=rtol)
    seen: set[str] = set()
    pairs = []
    for output, renamed in outputs:
        seen.add(output.name)
        entry_b = entries_b.get(output.name)
        if entry_b is None:
            report.only_in_a.append(TensorInfo(output.name, output.shape, dtype_name(output.dtype)))
            continue
        pairs.append((output, entry_b, renamed))
    for result, nbytes in _compare_pairs(pairs, atol, rtol, progress):
        report.tensors.append(result)
        report.nbytes += nbytes
    report.only_in_b = [TensorInfo(e.name, e.shape, e.dtype_name) for n, e in entries_b.items() if n not in seen]
    return report


def _as_stored(entries_a: list[Entry], entries_b: Mapping[str, Entry]) -> list[tuple[Output, tuple[str, ...]]] | None:
    """A's entries as they are stored, each under the name the identity plan gives it (its
    own, or the Keras 2 / Keras 3 alias B spells it by: :meth:`AliasTable.passthrough_name`),
    with the source's name when it was renamed: what :func:`_planned` gives without a spec or
    a dtype, without importing the spec, op and plan machinery. None when two entries would
    take one name (the plan reports that)."""
    aliases = AliasTable(entries_b)
    outputs = []
    names: set[str] = set()
    for entry in entries_a:
        name = aliases.passthrough_name(entry)
        if name in names:
            return None
        names.add(name)
        outputs.append((Output.of(entry, name), () if name == entry.name else (entry.name,)))
    return outputs


def _planned(
    store_a: Store, entries_b: Mapping[str, Entry], *, mapping: Any, dtype: Any, include_all: bool
) -> list[tuple[Output, tuple[str, ...]]]:
    """A's outputs under ``mapping`` and ``dtype``, planned against B's shapes and dtypes, each
    with the names of the entries it was made from when they are not just its own.

    Raises:
        SpecError, PlanError: the mapping is invalid or does not apply to A.
    """
    from .plan import TargetTensor, build_plan

    target = {name: TargetTensor(e.shape, e.dtype) for name, e in entries_b.items()}
    plan = build_plan(store_a, mapping, target=target, include_all=include_all, dtype=dtype)
    problems = _own_problems(plan.problems)
    if problems:
        raise PlanError(problems, path=store_a.path)
    sources = {o.name: o.sources for o in plan.report.outputs}
    outputs = []
    for output in plan.outputs:
        named = tuple(sources.get(output.name, ()))
        outputs.append((output, () if named == (output.name,) else named))
    return outputs


def _compare_pairs(
    pairs: list[tuple[Output, Entry, tuple[str, ...]]],
    atol: float,
    rtol: float,
    progress: Callable[[int], None] | None,
) -> Iterator[tuple[TensorDiff, int]]:
    """Every pair's result and bytes read, in order, as if compared one after the other (the
    first error in that order is the one raised).

    Pairs streamed from plain bytes on both sides run on ``WORKERS`` threads, one pair each
    (``pread``, CRC-32C and the comparison release the GIL: the two files are read on two
    cores); the others (read whole through a loader: h5py, a live model, a ``--map`` rule)
    run on this thread, one at a time, while the workers go on. Memory: two blocks per worker
    and one whole tensor at a time. ``progress`` is called from the workers too, one call at a
    time."""
    report_progress = None if progress is None else _one_at_a_time(progress)
    stop = threading.Event()  # set when this ends: a worker still reading stops at its next block
    files = _Files()
    pending: deque[Future[tuple[TensorDiff, int]] | tuple[TensorDiff, int]] = deque()
    try:
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ckptconv-diff") as pool:
            try:
                for output, entry_b, renamed in pairs:
                    args = (output, entry_b, renamed, atol, rtol, report_progress, stop, files)
                    if _streamed(output, entry_b):
                        pending.append(pool.submit(_compare_pair, *args))
                    else:
                        try:
                            pending.append(_compare_pair(*args))
                        except Exception:
                            yield from _ready(pending, wait=True)  # an earlier pair's error first
                            raise
                    yield from _ready(pending, wait=False)
                yield from _ready(pending, wait=True)
            finally:
                stop.set()
                for item in pending:
                    if isinstance(item, Future):
                        item.cancel()
    finally:
        files.close()  # the workers are done: leaving the pool waited for them


def _ready(pending: deque, *, wait: bool) -> Iterator[tuple[TensorDiff, int]]:  # type: ignore[type-arg]
    """Pop and yield the results at the front of ``pending`` that are done (every one with
    ``wait``); a worker's exception is raised here, in its pair's turn."""
    while pending:
        head = pending[0]
        if isinstance(head, Future):
            if not (wait or head.done()):
                return
            head = head.result()
        pending.popleft()
        yield head


def _one_at_a_time(callback: Callable[[int], None]) -> Callable[[int], None]:
    lock = threading.Lock()

    def call(n: int) -> None:
        with lock:
            callback(n)

    return call


class _Stopped(Exception):
    """A worker's pair was abandoned: the comparison ended (an error, Ctrl-C) before it."""


def _own_problems(problems: list[str]) -> list[str]:
    """The plan's problems that are about the mapping itself; a pair whose shapes or dtypes
    differ, or an output B has no tensor for, is what the report is for, not an error."""
    about_b = ("not-in-target", "target-mismatch")
    return [p for p in problems if getattr(p, "kind", None) not in about_b]


def _compare_pair(
    output: Output,
    entry_b: Entry,
    sources: tuple[str, ...],
    atol: float,
    rtol: float,
    progress: Callable[[int], None] | None,
    stop: threading.Event | None = None,
    files: _Files | None = None,
) -> tuple[TensorDiff, int]:
    shape_a, shape_b = output.shape, entry_b.shape
    da, db = dtype_name(output.dtype), entry_b.dtype_name
    if shape_a != shape_b:
        return TensorDiff(output.name, "shape", shape_a, shape_b, da, db, sources), 0
    same_dtype = output.dtype == entry_b.dtype
    if same_dtype and output.nbytes <= _SMALL_BYTES:
        nbytes = _equal_at_once(output, entry_b, files)
        if nbytes:
            if progress is not None:
                progress(nbytes)
            return TensorDiff(output.name, "equal", shape_a, shape_b, da, db, sources, size=math.prod(shape_a)), nbytes
    stats = _Stats(shape_a, atol, rtol)
    per_block = _per_block(output, entry_b)
    scratch = np.empty(min(BLOCK_BYTES, output.nbytes) // 8, dtype=bool) if same_dtype else None
    nbytes = 0
    for xa, xb in _blocks(output, entry_b, per_block, files):
        if stop is not None and stop.is_set():
            raise _Stopped(output.name)
        if scratch is None or not _same_bytes(xa, xb, scratch):
            stats.add(xa, xb)
        stats.offset += xa.size
        read = xa.nbytes + xb.nbytes
        nbytes += read
        if progress is not None:
            progress(read)
    if not same_dtype:
        status: Status = "dtype"
    elif not stats.touched:
        status = "equal"
    else:
        status = "different" if stats.mismatched else "close"
    return (
        TensorDiff(
            output.name, status, shape_a, shape_b, da, db, sources, size=stats.offset,
            mismatched=stats.mismatched, nan_mismatched=stats.nan_mismatched, max_abs=stats.max_abs,
            max_rel=stats.max_rel, first=stats.first, first_a=stats.first_a, first_b=stats.first_b,
        ),
        nbytes,
    )


def _equal_at_once(output: Output, entry_b: Entry, files: _Files | None) -> int:
    """Bytes read when both sides of a small pair (one dtype, at most ``_SMALL_BYTES``) are
    plain stored bytes, read whole with one ``pread`` each, and equal (their recorded CRC-32Cs
    checked); 0 otherwise: then the pair is compared block by block, which reads it again and
    says what differs, or what is truncated or damaged. A checkpoint of 10,000 small tensors
    is compared without a buffer, a view or a generator per tensor."""
    raw_a, raw_b = _stored(output), _stored(entry_b)
    if files is None or raw_a is None or raw_b is None:  # (_stored refuses object and string dtypes)
        return 0
    range_a, range_b = raw_a.byte_range, raw_b.byte_range
    assert range_a is not None and range_b is not None  # see _stored
    n = range_a.length
    if n == 0 or range_b.length != n:
        return 0
    a = os.pread(files.fd(range_a.path), n, range_a.offset)
    b = os.pread(files.fd(range_b.path), n, range_b.offset)
    if len(a) != n or len(b) != n or a != b:
        return 0
    for entry, data in ((raw_a, a), (raw_b, b)):
        if entry.crc32c is not None:
            from ..crc import crc32c_function  # here: most files record no checksum

            entry.compare_crc(crc32c_function()(data))
    return 2 * n


def _same_bytes(xa: np.ndarray, xb: np.ndarray, scratch: np.ndarray) -> bool:
    """Whether two 1-D contiguous blocks of one dtype hold the same bytes (``scratch``: a
    bool array for the element-wise result, reused from block to block). Python objects
    (strings a format holds as ``object``) have no bytes of their own: their values are
    compared."""
    if xa.dtype.hasobject:
        return bool(np.array_equal(xa, xb))
    if xa.nbytes <= _SMALL_BYTES:  # two copies and a memcmp: less than numpy's per-call cost
        return xa.tobytes() == xb.tobytes()
    if xa.nbytes % 8 == 0:  # eight bytes per comparison: the check runs at memory speed
        ua, ub = xa.view(np.uint64), xb.view(np.uint64)
    else:
        ua, ub = xa.view(np.uint8), xb.view(np.uint8)
    out = scratch[: ua.size] if ua.size <= scratch.size else np.empty(ua.size, dtype=bool)
    return not np.not_equal(ua, ub, out=out).any()


# -- reading blocks ----------------------------------------------------------------------------


def _stored(output: Output | Entry) -> Entry | None:
    """The entry whose plain stored bytes are this tensor, if there is one (a stored size that
    does not fit the shape is left to the whole read, which refuses it)."""
    entry = output if isinstance(output, Entry) else output.source
    if entry is None or entry.byte_range is None or entry.dtype.kind in "OSU":
        return None
    if entry.byte_range.length != entry.nbytes:
        return None
    return entry


def _per_block(output: Output, entry_b: Entry) -> int:
    """Elements per block: ``BLOCK_BYTES`` of the wider side."""
    return max(1, BLOCK_BYTES // max(output.dtype.itemsize, entry_b.dtype.itemsize, 1))


def _streamed(output: Output, entry_b: Entry) -> bool:
    """Both sides are plain stored bytes of the same shape, more than one block: the pair is
    read block by block (on a worker thread)."""
    return (
        output.shape == entry_b.shape
        and math.prod(output.shape) > _per_block(output, entry_b)
        and _stored(output) is not None
        and _stored(entry_b) is not None
    )


def _blocks(
    output: Output, entry_b: Entry, per_block: int, files: _Files | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Both sides' elements in C order, ``per_block`` at a time, as pairs of 1-D arrays (valid
    until the next pair is asked for). A side stored as plain bytes is read with ``pread``
    through ``files`` (one descriptor per file for the whole comparison: a checkpoint of
    10,000 small tensors is not opened 10,000 times); the other side is read whole."""
    count = math.prod(output.shape)
    raw_a, raw_b = _stored(output), _stored(entry_b)
    if count == 0 or (raw_a is None and raw_b is None):
        whole_a = output.compute().reshape(-1)
        whole_b = entry_b.read().reshape(-1)
        for start in range(0, max(count, 1), per_block):
            yield whole_a[start : start + per_block], whole_b[start : start + per_block]
        return
    # read whole (one at a time) only the side that is not plain bytes
    gen_a = _raw_blocks(raw_a, count, per_block, files) if raw_a is not None else _views(output.compute(), per_block)
    gen_b = _raw_blocks(raw_b, count, per_block, files) if raw_b is not None else _views(entry_b.read(), per_block)
    # as many blocks each: a raw side's last one is checked already
    yield from zip(gen_a, gen_b)


def _views(array: np.ndarray, per_block: int) -> Iterator[np.ndarray]:
    flat = array.reshape(-1)
    for start in range(0, flat.size, per_block):
        yield flat[start : start + per_block]


class _Files:
    """The files a comparison reads, each opened once (on first use) and shared by the
    threads: ``pread`` takes the position with every call. Closed when the comparison ends."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    fd = os.open(path, os.O_RDONLY)
                    if hasattr(os, "posix_fadvise"):  # read front to back: a larger read-ahead
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    self._fds[path] = fd
        return fd

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)


def _raw_blocks(entry: Entry, count: int, per_block: int, files: _Files | None = None) -> Iterator[np.ndarray]:
    """The entry's stored elements a block at a time, read with ``pread`` into one buffer
    (placed for a fast read, see :class:`~ckptconv.store.ReadBuffer`; a block is overwritten
    when the next is asked for), on the thread that compares it: a block is compared while
    it is still in the CPU's cache. The recorded CRC-32C, if any, is computed over each
    block as it arrives and checked before the last block is handed over."""
    br = entry.byte_range
    assert br is not None and br.length == count * entry.dtype.itemsize  # see _stored
    raw = read_buffer(min(per_block, count) * entry.dtype.itemsize, br.offset)
    check = entry.crc32c is not None
    if check:
        from ..crc import crc32c_function  # here: most files record no checksum

        crc32c = crc32c_function()
    crc = 0
    done = 0
    fd = os.open(br.path, os.O_RDONLY) if files is None else files.fd(br.path)
    try:
        for piece in br.pieces(memoryview(raw), fd=fd, tensor=entry.name):
            size = len(piece)
            block = raw[:size]
            done += size
            if check:
                crc = crc32c(block, crc)
                if done == br.length:
                    entry.compare_crc(crc)
            yield block.view(entry.dtype)
    finally:
        if files is None:
            os.close(fd)


# -- statistics --------------------------------------------------------------------------------


class _Stats:
    """Running statistics over the blocks of one pair whose bytes differ."""

    def __init__(self, shape: tuple[int, ...], atol: float, rtol: float) -> None:
        self.shape = shape
        self.atol = atol
        self.rtol = rtol
        self.offset = 0  # elements before the current block
        self.touched = False  # some block's bytes differed (or dtypes differ)
        self.mismatched = 0
        self.nan_mismatched = 0  # of them, a NaN against a number
        self.max_abs: float | None = None
        self.max_rel: float | None = None
        self.first: tuple[int, ...] | None = None
        self.first_a: Any = None
        self.first_b: Any = None

    def add(self, xa: np.ndarray, xb: np.ndarray) -> None:
        self.touched = True
        for start in range(0, xa.size, _STATS_CHUNK):
            self._chunk(xa[start : start + _STATS_CHUNK], xb[start : start + _STATS_CHUNK], self.offset + start)

    def _chunk(self, xa: np.ndarray, xb: np.ndarray, offset: int) -> None:
        if not (_numeric(xa.dtype) and _numeric(xb.dtype)):
            bad = ~np.asarray(xa == xb, dtype=bool)  # strings, objects: equal or not
            self._record(bad, xa, xb, offset)
            return
        wide = np.complex128 if "c" in (xa.dtype.kind, xb.dtype.kind) else np.float64
        # the casts too: numpy calls casting a signalling NaN "invalid" (and warns)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            a = xa.astype(wide)
            b = xb.astype(wide)
            integers = xa.dtype.kind in "biu" and xb.dtype.kind in "biu"
            nans = 0
            if integers:
                same = np.asarray(xa == xb)  # exact: wide integers do not survive float64
            else:
                nan_a, nan_b = np.isnan(a), np.isnan(b)
                same = (a == b) | (nan_a & nan_b)  # NaN equals NaN (numpy's equal_nan=True)
                one_nan = nan_a != nan_b  # a NaN against a number: no distance to measure
                nans = int(np.count_nonzero(one_nan))
            delta = np.abs(a - b)
            if integers:  # 2**62 and 2**62 + 1 are one float64: two integers differ by >= 1
                delta[~same] = np.maximum(delta[~same], 1.0)
            delta[same] = 0.0
            scale = np.abs(b)
            finite = np.isfinite(a) & np.isfinite(b)
            bad = (delta > self.atol + self.rtol * scale) | (~same & ~finite)
            if nans:  # counted as NaN mismatches, left out of the largest differences
                delta[one_nan] = 0.0
            rel = np.where(delta == 0, 0.0, delta / scale)
            rel[np.isnan(rel)] = np.inf  # a finite number against an infinity: inf / inf
        self.nan_mismatched += nans
        # the largest differences: over the values that differ (a NaN against a number aside),
        # else 0 when equal values have other bytes (-0.0 and 0.0, NaNs of other bits); left
        # as they are (None until something counts) when every difference is such a NaN
        differ = ~same
        if nans:
            differ &= ~one_nan
        if differ.any():
            self.max_abs = max(self.max_abs or 0.0, float(delta[differ].max()))
            self.max_rel = max(self.max_rel or 0.0, float(rel[differ].max()))
        elif _other_bits(xa, xb, same):
            self.max_abs = self.max_abs or 0.0
            self.max_rel = self.max_rel or 0.0
        self._record(bad, xa, xb, offset)

    def _record(self, bad: np.ndarray, xa: np.ndarray, xb: np.ndarray, offset: int) -> None:
        count = int(np.count_nonzero(bad))
        if count and self.first is None:
            i = int(np.argmax(bad))
            self.first = tuple(int(d) for d in np.unravel_index(offset + i, self.shape)) if self.shape else ()
            self.first_a, self.first_b = _scalar(xa[i]), _scalar(xb[i])
        self.mismatched += count


def _other_bits(xa: np.ndarray, xb: np.ndarray, same: np.ndarray) -> bool:
    """Whether some element equal in value is stored in other bytes (-0.0 and 0.0, NaNs of
    other bits); of two dtypes, every equal value is."""
    if not same.any():
        return False
    if xa.dtype != xb.dtype or xa.dtype.itemsize not in (1, 2, 4, 8):
        return True
    unsigned = np.dtype(f"u{xa.dtype.itemsize}")
    return bool(np.any(same & (xa.view(unsigned) != xb.view(unsigned))))


def _numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biufc" or is_floating(dtype)  # is_floating: bfloat16, float8


def _scalar(value: Any) -> Any:
    item = value.item() if hasattr(value, "item") else value
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    if not isinstance(item, (bool, int, float, complex, str)):
        return float(item)  # ml_dtypes scalars (bfloat16, float8)
    return item
