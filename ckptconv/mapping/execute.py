"""Executing a plan's outputs: reading each source once, running the ops, checking the result.

:func:`~ckptconv.mapping.plan.build_plan` binds every output's ``compute()`` (and, where they
apply, a transposed ``view`` and a block-by-block ``blocks``) to the functions here. Nothing in
this module decides what to compute: the plan has checked that on metadata already. What it
adds at run time: a source entry feeding several outputs is read once (:class:`SourceCache`),
a result that disagrees with what the plan inferred is refused rather than written
(:func:`finish`), and a cast streamed block by block has its source's CRC-32C checked over the
blocks it read.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..dtypes import dtype_name as _dtype_name_uncached
from ..errors import PlanError
from ..crc import crc32c
from ..store import Entry, read_buffer
from .cast import Cast, CastOverflow
from .ops import ExecutionProblem, Op, Split, Transpose

__all__ = [
    "SourceCache", "Step", "SplitShared", "describe_steps", "finish", "run_steps", "only_casts",
    "ends_in_view", "single_compute", "cast_blocks", "join_compute",
]

# dtype_name scans a table; a plan names the same few dtypes thousands of times
dtype_name = functools.lru_cache(maxsize=64)(_dtype_name_uncached)


class SourceCache:
    """Reads each source entry once for all the outputs it feeds, and forgets it after the last.

    Every output registers the entries it consumes; an entry consumed by several outputs (a
    split) is kept in memory from its first read until its last consumer has run. Outputs
    computed again, or out of order, still get correct data (the entry is read again). Entries
    with one consumer are never cached and take no lock, so outputs computed on several threads
    read in parallel; a shared entry is read under its own lock, once.
    """

    def __init__(self) -> None:
        self._remaining: dict[str, int] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def register(self, entry: Entry) -> None:
        self._remaining[entry.name] = self._remaining.get(entry.name, 0) + 1

    def get(self, entry: Entry) -> np.ndarray:
        name = entry.name
        cached = self._arrays.get(name)
        if cached is not None:
            return cached
        if self._remaining.get(name, 0) <= 1:
            return entry.read()  # its only (or last) consumer: nothing to share
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            cached = self._arrays.get(name)
            if cached is None:
                cached = entry.read()
                if self._remaining.get(name, 0) > 1:
                    self._arrays[name] = cached
            return cached

    def release(self, entry: Entry) -> None:
        with self._lock:
            left = self._remaining.get(entry.name, 0) - 1
            self._remaining[entry.name] = max(left, 0)
            if left <= 0:
                self._arrays.pop(entry.name, None)
                self._locks.pop(entry.name, None)


@dataclass(frozen=True)
class Step:
    """One op bound to the shapes and dtypes the plan inferred for it."""

    op: Op
    out_shape: tuple[int, ...]
    out_dtype: np.dtype

    def run(self, array: np.ndarray) -> np.ndarray:
        return self.op.apply(array, self.out_shape, self.out_dtype)


def describe_steps(steps: Sequence[Step], head: str = "") -> str:
    parts = [head] if head else []
    parts += [s.op.describe() for s in steps]
    return " | ".join(parts)


def finish(
    array: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, *, what: str, view: bool = False
) -> np.ndarray:
    if array.shape != shape or array.dtype != dtype:
        # inference and execution disagree: a bug, but never hand a writer the wrong tensor
        raise PlanError(
            [f"{what}: computed {list(array.shape)} {dtype_name(array.dtype)}, planned {list(shape)} {dtype_name(dtype)}"]
        )
    if view or array.flags.c_contiguous:
        return array
    return array.copy(order="C")  # np.ascontiguousarray would turn a 0-d array into 1-d


def run_steps(array: np.ndarray, steps: Sequence[Step], *, view: bool = False) -> np.ndarray:
    """Run the steps; with ``view``, a final transpose gives a view instead of a copy."""
    for step in steps[:-1] if view else steps:
        array = step.run(array)
    if view:
        array = steps[-1].op.view(array)  # type: ignore[attr-defined]
    return array


def only_casts(steps: Sequence[Step]) -> bool:
    """Whether every step is elementwise (casts), so the output can be made piece by piece."""
    return bool(steps) and all(isinstance(s.op, Cast) for s in steps)


def ends_in_view(steps: Sequence[Step]) -> bool:
    """Whether the last step can hand a writer a view (a transpose) instead of a new array."""
    return bool(steps) and isinstance(steps[-1].op, Transpose)



def single_compute(
    cache: SourceCache,
    path: str,
    entry: Entry,
    steps: list[Step],
    shape: tuple[int, ...],
    dtype: np.dtype,
    name: str,
    label: str,
    *,
    view: bool = False,
) -> Callable[[], np.ndarray]:
    if not steps:
        return entry.read

    def compute() -> np.ndarray:
        try:
            array = run_steps(cache.get(entry), steps, view=view)
            return finish(array, shape, dtype, what=f"{label}: output {name!r}", view=view)
        except ExecutionProblem as e:
            raise PlanError([f"{label}: output {name!r} from {entry.name!r}: {e}"], path=path, tensor=name) from None
        finally:
            cache.release(entry)

    return compute


def cast_blocks(
    cache: SourceCache, path: str, entry: Entry, steps: list[Step], name: str, label: str
) -> Callable[[int], Iterator[np.ndarray]]:
    """The output piece by piece: the stored bytes read a block at a time into one buffer
    and cast, so memory stays at a block whatever the tensor's size. The source's recorded
    CRC-32C is checked over the blocks read, once the last one is. When a cast overflows, the
    rest of the tensor is read too (nothing more is yielded): the message counts the values
    over the whole tensor, as a cast of the whole array does, and the CRC-32C is checked
    before it is given (damaged bytes can look like values that overflow)."""
    byte_range = entry.byte_range
    assert byte_range is not None

    def blocks(max_bytes: int) -> Iterator[np.ndarray]:
        count = int(np.prod(entry.shape, dtype=np.int64))
        widest = max([entry.dtype.itemsize] + [s.out_dtype.itemsize for s in steps])
        per = max(1, max_bytes // widest)
        buffer = read_buffer(min(per, count) * entry.dtype.itemsize, byte_range.offset).view(entry.dtype)
        crc = 0
        problem: ExecutionProblem | None = None
        failed = 0  # the step that failed
        fd = os.open(byte_range.path, os.O_RDONLY)
        try:
            for start in range(0, count, per):
                chunk = buffer[: min(per, count - start)]
                raw = chunk.view(np.uint8)
                byte_range.read_into(raw, start=start * entry.dtype.itemsize, fd=fd, tensor=entry.name)
                if entry.crc32c is not None:
                    crc = crc32c(raw, crc)
                if problem is not None:  # count what the failed cast meets in this block too
                    problem = _count_on(problem, failed, chunk, steps)
                    continue
                try:
                    for failed, step in enumerate(steps):
                        chunk = step.op.apply(chunk, chunk.shape, step.out_dtype)
                except ExecutionProblem as e:
                    problem = e
                    continue
                yield chunk
        finally:
            os.close(fd)
            cache.release(entry)  # this output is done with its source, as compute() is
        entry.compare_crc(crc)  # damaged bytes are said as such, not as values that overflow
        if problem is not None:
            raise PlanError([f"{label}: output {name!r} from {entry.name!r}: {problem}"], path=path, tensor=name)

    return blocks


def _count_on(problem: ExecutionProblem, failed: int, chunk: np.ndarray, steps: list[Step]) -> ExecutionProblem:
    """``problem`` (step ``failed``'s cast overflow) with what that step meets in ``chunk``, a
    later block of the same tensor, added: so that the message counts the whole tensor."""
    if not isinstance(problem, CastOverflow):
        return problem
    try:
        for step in steps[:failed]:
            chunk = step.op.apply(chunk, chunk.shape, step.out_dtype)
    except ExecutionProblem:  # an earlier cast fails here: the first problem is the one said
        return problem
    try:
        steps[failed].op.apply(chunk, chunk.shape, steps[failed].out_dtype)
    except CastOverflow as more:
        return problem.merged(more)
    return problem


def join_compute(cache: SourceCache, path: str, join, entries, steps, shape, dtype, name, label) -> Callable[[], np.ndarray]:  # type: ignore[no-untyped-def]

    def compute() -> np.ndarray:
        try:
            joined = join.apply_many([cache.get(e) for e in entries])
            return finish(run_steps(joined, steps), shape, dtype, what=f"{label}: output {name!r}")
        except ExecutionProblem as e:
            raise PlanError([f"{label}: output {name!r}: {e}"], path=path, tensor=name) from None
        finally:
            for e in entries:
                cache.release(e)

    return compute


class SplitShared:
    """The parts of one split source: read once, each part computed by its own output."""

    def __init__(self, entry: Entry, split: Split, cache: SourceCache) -> None:
        self.entry = entry
        self.split = split
        self.cache = cache

    def compute_part(self, i, steps, shape, dtype, name, label, path) -> Callable[[], np.ndarray]:  # type: ignore[no-untyped-def]
        def compute() -> np.ndarray:
            try:
                part = self.split.apply_split(self.cache.get(self.entry))[i]
                return finish(run_steps(part, steps), shape, dtype, what=f"{label}: output {name!r}")
            except ExecutionProblem as e:
                raise PlanError([f"{label}: output {name!r} from {self.entry.name!r}: {e}"], path=path, tensor=name) from None
            finally:
                self.cache.release(self.entry)

        return compute
