"""Convert many checkpoints: the per-file job, the name pattern, and a process-pool runner.

:func:`convert_one` is the job for one file. It is a plain top-level function of picklable
arguments that returns a picklable :class:`FileResult` and keeps no global state, so it runs
unchanged in a ``ProcessPoolExecutor`` (what ``ckptconv batch -j N`` uses), or as a Dask or
Ray task. Only ckptconv's own errors and OS errors count as a failed file; anything else
is a bug and propagates.

Example::

    from ckptconv.batch import plan_jobs, run_batch

    jobs = plan_jobs(["ckpts/*.weights.h5"], "out", pattern="{stem}.safetensors")
    report = run_batch(jobs, workers=2, dtype="bfloat16")
    print(report.ok, report.failed)
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any

from .errors import CkptconvError
from .options import check_options, keyword_options, option_names

__all__ = [
    "FileResult",
    "BatchReport",
    "Job",
    "convert_one",
    "expand_inputs",
    "output_name",
    "plan_jobs",
    "check_collisions",
    "run_batch",
    "PATTERN_FIELDS",
]

from ._batch_fields import PATTERN_FIELDS  # noqa: E402 - one table, shared with the CLI

# Longest first: a name loses one of these, or else its last extension.
_SUFFIXES = (
    ".safetensors.index.json",
    ".bin.index.json",
    ".weights.json",
    ".weights.h5",
    ".safetensors",
    ".index",
    ".keras",
    ".hdf5",
    ".h5",
)


@dataclass
class FileResult:
    """The outcome of one file's conversion.

    Attributes:
        src: The input. dst: The output path asked for.
        ok: True when the conversion completed.
        files: Files written (shards and index for a sharded set).
        tensors: Tensors written. nbytes: their size in bytes.
        seconds: Wall time of the job.
        skipped: ``[name, reason]`` pairs for entries not written.
        error: The one-line error message when the job failed.
        error_type: The exception class name when the job failed.
    """

    src: str
    dst: str
    ok: bool
    files: list[str] = field(default_factory=list)
    tensors: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    skipped: list[list[str]] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """One input and the output path it converts to."""

    src: str
    dst: str


@dataclass
class BatchReport:
    """All results of :func:`run_batch`, in input order.

    Attributes:
        results: One :class:`FileResult` per job.
        seconds: Wall time of the whole batch.
    """

    results: list[FileResult]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every file converted."""
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    @property
    def succeeded(self) -> list[FileResult]:
        return [r for r in self.results if r.ok]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data, as ``batch --json`` prints it."""
        return {
            "ok": self.ok,
            "summary": {
                "files": len(self.results),
                "succeeded": len(self.succeeded),
                "failed": len(self.failed),
                "tensors": sum(r.tensors for r in self.results),
                "nbytes": sum(r.nbytes for r in self.results),
                "seconds": round(self.seconds, 3),
            },
            "files": [r.to_json() for r in self.results],
        }


def convert_one(src: str, dst: str, *, spelling: Mapping[str, str] | None = None, **options: Any) -> FileResult:
    """Convert one checkpoint; a failure is returned as a result, not raised.

    Takes the options of :func:`ckptconv.convert.convert`, creates the output's directory if
    needed, and never shows a progress bar. Reads the whole source (that is the job).
    ``spelling`` spells the options named in error messages (the command line passes its
    own; see :func:`ckptconv.errors.render_options`).

    Returns:
        A :class:`FileResult`; ``ok`` is False with ``error`` set when ckptconv refused the
        input or output (any :class:`~ckptconv.CkptconvError`) or the OS failed (``OSError``).
    """
    from .convert import convert

    started = time.perf_counter()
    try:
        parent = os.path.dirname(os.path.abspath(dst))
        os.makedirs(parent, exist_ok=True)
        result = convert(src, dst, **{**options, "progress": False})
    except (CkptconvError, OSError) as e:
        return FileResult(
            src=src,
            dst=dst,
            ok=False,
            seconds=time.perf_counter() - started,
            error=_one_line(e, src, spelling),
            error_type=type(e).__name__,
        )
    return FileResult(
        src=src,
        dst=dst,
        ok=True,
        files=list(result.files),
        tensors=result.tensors,
        nbytes=result.nbytes,
        seconds=time.perf_counter() - started,
        skipped=[list(pair) for pair in result.skipped],
    )


def _one_line(error: BaseException, src: str, spelling: Mapping[str, str] | None = None) -> str:
    """The error as one line, without repeating the input's own path."""
    if isinstance(error, CkptconvError):
        same = error.path is not None and os.path.abspath(error.path) == os.path.abspath(src)
        text = error.render(spelling, path=not same)
    elif isinstance(error, OSError):
        same = error.filename and os.path.abspath(str(error.filename)) == os.path.abspath(src)
        where = f"{error.filename}: " if error.filename and not same else ""
        text = f"{where}{error.strerror or error}"
    else:
        text = str(error)
    return " ".join(text.split())


# --- inputs and output names ----------------------------------------------------------------


def expand_inputs(patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """Expand paths and globs (``**`` recursive) into inputs, in order, without repeats.

    Files that are part of another listed input are dropped: a TensorFlow checkpoint's
    ``.data-*`` files when its ``.index`` is listed, and a Hugging Face shard
    (``x-00001-of-00003.safetensors``, ``pytorch_model-00001-of-00002.bin``) when its index
    (``x.safetensors.index.json``, ``pytorch_model.bin.index.json``) is listed.

    Returns:
        ``(inputs, unmatched)``: the inputs, and the glob patterns that matched nothing.
    """
    found: list[str] = []
    unmatched: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                unmatched.append(pattern)
            found.extend(matches)
        else:
            found.append(pattern)
    seen: set[str] = set()
    unique = []
    for path in found:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return [p for p in unique if not _part_of_listed(p, seen)], unmatched


def _part_of_listed(path: str, listed: set[str]) -> bool:
    from .formats.safetensors import index_path, parse_shard_name

    full = os.path.abspath(path)
    directory, name = os.path.split(full)
    if ".data-" in name:
        prefix = name.split(".data-", 1)[0]
        return os.path.join(directory, prefix + ".index") in listed
    for ext in (".safetensors", ".bin"):  # a Hugging Face shard, when its index is listed
        shard = parse_shard_name(name, suffix=ext)
        if shard is not None:
            return index_path(os.path.join(directory, shard[0] + ext)) in listed
    return False


def read_list(path: str) -> list[str]:
    """Inputs listed one per line in a file (``-`` for stdin); blank lines and ``#`` comments
    are ignored."""
    import sys

    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def stem_of(path: str) -> str:
    """The input's name without its checkpoint suffix: ``model.weights.h5`` -> ``model``."""
    name = os.path.basename(os.path.normpath(path))
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    stem = os.path.splitext(name)[0]
    return stem or name


def check_pattern(pattern: str) -> None:
    """Raise ValueError if the name pattern uses an unknown field or leaves the directory."""
    for _, field_name, _, _ in Formatter().parse(pattern):
        if field_name is not None and field_name not in PATTERN_FIELDS:
            known = ", ".join("{" + f + "}" for f in PATTERN_FIELDS)
            raise ValueError(f"unknown field {{{field_name}}} in the name pattern; known: {known}")
    sample = output_name("x", 0, pattern)
    if os.path.isabs(sample) or ".." in Path(sample).parts:
        raise ValueError(f"the name pattern must give a relative path inside OUTDIR: {pattern!r}")


def output_name(src: str, index: int, pattern: str) -> str:
    """The output file name for ``src`` under ``pattern`` (relative to the output directory)."""
    full = os.path.abspath(src)
    return pattern.format(
        stem=stem_of(src),
        name=os.path.basename(os.path.normpath(src)),
        parent=os.path.basename(os.path.dirname(full)),
        index=index,
    )


@keyword_options
def plan_jobs(
    inputs: Iterable[str],
    outdir: str | os.PathLike[str],
    *,
    pattern: str = "{stem}.safetensors",
    expand: bool = True,
) -> list[Job]:
    """Pair every input (paths or globs) with its output path under ``outdir``.

    Args:
        inputs: Paths and globs (expanded by :func:`expand_inputs` unless ``expand=False``).
        outdir: The output directory.
        pattern: The output name; fields are listed in :data:`PATTERN_FIELDS`.
        expand: False when ``inputs`` are already expanded paths.

    Raises:
        ValueError: the pattern is invalid, gives a path outside ``outdir`` for an input, or
            two inputs would write the same output (the message names both and suggests
            ``{parent}`` or ``{index}``).
        OutputError: an output would overwrite (or, with ``--force``, remove) an input's file:
            see :func:`check_collisions`.
    """
    check_pattern(pattern)
    sources = expand_inputs(inputs)[0] if expand else list(inputs)
    jobs: list[Job] = []
    taken: dict[str, str] = {}
    for i, src in enumerate(sources):
        name = output_name(src, i, pattern)
        if os.path.isabs(name) or ".." in Path(name).parts or os.path.normpath(name) in (".", ""):
            raise ValueError(
                f"the name pattern {pattern!r} gives {name!r} for {src}, which is not a path "
                "inside OUTDIR"
            )
        dst = os.path.join(os.fspath(outdir), name)
        key = os.path.abspath(dst)
        if key in taken:
            raise ValueError(
                f"{taken[key]} and {src} would both write {dst}; use a --name-pattern with "
                "{parent} or {index}"
            )
        taken[key] = src
        jobs.append(Job(src, dst))
    check_collisions(jobs)
    return jobs


def check_collisions(jobs: Sequence[Job]) -> None:
    """Refuse, before any work, a batch where one input's output is another input's file.

    An output claims its path, its sharded set's index and every shard name of that set
    (``STEM-NNNNN-of-NNNNN.safetensors``): ``--force`` may replace or remove those. None of
    them may be a file another input reads (the input itself, a TensorFlow checkpoint's data
    files, a sharded input's shards), or converting one file would destroy another before its
    turn. (An output that is its own input's file fails that one job, as ``convert`` does.)
    Inputs are opened (metadata only) only when they lie where an output goes.

    Raises:
        OutputError: naming the output, the input file and the input it belongs to.
    """
    from .errors import OutputError
    from .formats.safetensors import parse_shard_name

    claims: dict[str, list[tuple[Job, str]]] = {}
    for job in jobs:
        directory, name = os.path.split(os.path.abspath(job.dst))
        claims.setdefault(os.path.realpath(directory), []).append((job, name))
    for job in jobs:
        for src_file in _input_files(job.src, set(claims)):
            directory, name = os.path.split(os.path.realpath(src_file))
            for owner, dst_name in claims.get(directory, []):
                if owner is job:
                    continue  # its own input: that job alone fails, as convert refuses it
                if name in (dst_name, dst_name + ".index.json") or parse_shard_name(name, dst_name):
                    raise OutputError(
                        f"the output of {owner.src} would overwrite {src_file}, a file of the "
                        f"input {job.src}; choose another output directory or {{opt:pattern}}",
                        path=owner.dst,
                    )


def _input_files(src: str, places: set[str]) -> list[str]:
    """The files an input reads, when any of them may lie in one of ``places`` (the real
    paths of the directories outputs go to): the path itself, or all of a checkpoint's files."""
    from .errors import CkptconvError
    from .formats import open as open_store

    real = os.path.realpath(src)
    if os.path.isdir(real):
        near = any(p == real or p.startswith(real + os.sep) for p in places)
    else:
        near = os.path.dirname(real) in places
    if not near:
        return []
    try:
        with open_store(src) as store:
            return list(store.files) or [src]
    except (CkptconvError, OSError):
        return [src]  # its own job reports what is wrong with it


# --- the runner -----------------------------------------------------------------------------


def run_batch(
    jobs: Sequence[Job],
    *,
    workers: int = 1,
    on_result: Callable[[FileResult], None] | None = None,
    job: Callable[..., FileResult] = convert_one,
    **options: Any,
) -> BatchReport:
    """Run :func:`convert_one` over ``jobs``, in ``workers`` processes (1: in this process).

    Every job runs; a failed file does not stop the others. Worker processes are started with
    the ``spawn`` method, so this is safe from threads and on every platform; call it under
    ``if __name__ == "__main__":`` in a script. If a worker process dies (killed by the
    out-of-memory killer, a crash in a native library), the jobs it may have been running are
    re-run one at a time, each in a fresh process: the one that kills its process is reported
    failed, the others complete.

    Args:
        jobs: From :func:`plan_jobs` (or any ``Job(src, dst)`` list).
        workers: Number of worker processes; 0 means one per CPU.
        on_result: Called in this process with each result as it completes.
        job: The per-file function, ``job(src, dst, **options) -> FileResult`` (a top-level,
            picklable function); :func:`convert_one` unless you wrap it.
        **options: Passed to ``job`` (``mapping``, ``dtype``, ``force``, ...).

    Returns:
        A :class:`BatchReport` with results in job order.

    Raises:
        OptionError: an option the job does not take (checked once, before any job runs).
    """
    _check_job_options(job, options)
    started = time.perf_counter()
    if workers <= 0:
        workers = os.cpu_count() or 1
    results: list[FileResult | None] = [None] * len(jobs)

    lock = threading.Lock()

    def finished(i: int, result: FileResult) -> None:
        with lock:
            results[i] = result
            if on_result is not None:
                on_result(result)

    if workers == 1 or len(jobs) <= 1:
        for i, item in enumerate(jobs):
            finished(i, job(item.src, item.dst, **options))
    else:
        from .interrupts import sigterm_raises

        # SIGTERM raises here, so queued jobs are cancelled and running ones finish (each
        # output is atomic) instead of leaving orphaned workers behind.
        existed = [_output_exists(item.dst) for item in jobs]
        with sigterm_raises():
            broken = _run_pool(jobs, range(len(jobs)), workers, job, options, finished)

            def isolated(i: int) -> None:
                # An interrupted attempt may have completed its output before the pool broke:
                # that output (absent before the batch) may be replaced.
                again = dict(options, force=True) if not existed[i] else options
                _run_pool(jobs, [i], 1, job, again, finished, died=True)

            if broken:  # isolate them: only a job that kills its own process fails
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(isolated, broken))
    return BatchReport([r for r in results if r is not None], time.perf_counter() - started)


def _check_job_options(job: Callable[..., FileResult], options: dict[str, Any]) -> None:
    """Refuse an unknown option once, up front, rather than once per file in the workers."""
    import inspect

    from .convert import convert

    target = convert if job is convert_one else job
    parameters = inspect.signature(target).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return  # a wrapper that forwards: its own callee checks
    accepted = {p.name for p in parameters} | ({"spelling"} if job is convert_one else set())
    check_options(f"{target.__name__}()", options, accepted, option_names(target))


def _output_exists(dst: str) -> bool:
    return os.path.lexists(dst) or os.path.lexists(dst + ".index.json")


_WORKER_DIED = (
    "the worker process died while converting this file (killed by a signal, e.g. by the "
    "out-of-memory killer, or a crash in a native library); try it alone, with more memory"
)


def _run_pool(
    jobs: Sequence[Job],
    indices: Iterable[int],
    workers: int,
    job: Callable[..., FileResult],
    options: dict[str, Any],
    finished: Callable[[int, FileResult], None],
    *,
    died: bool = False,
) -> list[int]:
    """Run ``jobs[i]`` for ``i`` in ``indices`` in a fresh pool; return the indices left
    unfinished because a worker died (with ``died=True`` they are reported failed instead)."""
    from concurrent.futures.process import BrokenProcessPool

    indices = list(indices)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(indices)), mp_context=context) as pool:
        pending: dict[Future[FileResult], int] = {
            pool.submit(job, jobs[i].src, jobs[i].dst, **options): i for i in indices
        }
        unfinished: list[int] = []
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        unfinished.append(i)
                        continue
                    finished(i, result)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if died:
        for i in sorted(unfinished):
            finished(i, FileResult(src=jobs[i].src, dst=jobs[i].dst, ok=False,
                                   error=_WORKER_DIED, error_type="WorkerDied"))
        return []
    return sorted(unfinished)
