"""Convert many checkpoints: the per-file job, the name pattern, and the runners.

:func:`convert_one` is the job for one file. It is a plain top-level function of picklable
arguments that returns a picklable :class:`FileResult` and keeps no global state, so it runs
unchanged in a ``ProcessPoolExecutor`` (what ``ckptconv batch -j N`` uses), as a Dask task
(``ckptconv batch --scheduler``, :mod:`ckptconv.cluster`) or as a Ray task. Only ckptconv's
own errors and OS errors count as a failed file; anything else is a bug and propagates.

:func:`run_batch` runs the jobs in this process, in local processes or on a Dask cluster,
with one set of rules: options checked once, failures per file, a worker that dies retried
once, Ctrl-C cancelling what has not started.

Example::

    from ckptconv.batch import plan_jobs, run_batch

    jobs = plan_jobs(["ckpts/*.weights.h5"], "out", pattern="{stem}.safetensors")
    report = run_batch(jobs, workers=2, dtype="bfloat16")
    print(report.ok, report.failed)
"""

from __future__ import annotations

import contextlib
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
    "prepare_options",
    "run_batch",
    "PATTERN_FIELDS",
]

from .batch_fields import PATTERN_FIELDS  # noqa: E402 - one table, shared with the CLI

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


def prepare_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check and parse the options every job shares, once, before any job starts.

    A spec file path (``mapping``) is read and parsed into a :class:`~ckptconv.Spec`, which is
    what the jobs receive (workers never read the spec file); ``dtype`` and ``metadata`` are
    checked; a text ``max_shard_size`` becomes bytes. So a broken spec or a bad value fails
    the batch once, before any worker starts, instead of failing every file.
    :func:`run_batch` calls this itself; calling it first is useful to fail before starting a
    cluster. Idempotent.

    Raises:
        SpecError: the spec file is missing, unreadable or invalid.
        UsageError: ``dtype`` (lossy without ``allow_lossy`` among them), ``max_shard_size``
            or ``metadata`` has a wrong value.
    """
    from .formats.safetensors import check_metadata
    from .mapping import load_spec
    from .convert import check_output_dtype
    from .options import option_value
    from .writers.safetensors import parse_size

    prepared = dict(options)
    if prepared.get("mapping") is not None:
        prepared["mapping"] = load_spec(prepared["mapping"])
    if prepared.get("dtype") is not None:  # checked here; each job applies it
        check_output_dtype(prepared["dtype"], allow_lossy=bool(prepared.get("allow_lossy")))
    if prepared.get("metadata") is not None:
        option_value("metadata", prepared["metadata"], check_metadata)
    if prepared.get("max_shard_size") is not None:
        prepared["max_shard_size"] = option_value("max_shard_size", prepared["max_shard_size"], parse_size)
    return prepared


def run_batch(
    jobs: Sequence[Job],
    *,
    workers: int = 1,
    client: Any = None,
    on_result: Callable[[FileResult], None] | None = None,
    job: Callable[..., FileResult] = convert_one,
    **options: Any,
) -> BatchReport:
    """Run :func:`convert_one` over ``jobs``: in this process, in local worker processes, or
    as tasks on a Dask cluster, with the same rules everywhere.

    - The shared options are checked once, first (:func:`prepare_options`): a broken spec
      raises here, before any job starts, and the jobs receive the parsed spec.
    - Every job runs; a failed file does not stop the others.
    - A worker that dies while converting a file (the out-of-memory killer, a crash in a native
      library) leaves no output: each output is written under a temporary name and renamed at
      the end, and the temporaries of a killed attempt are removed. The file is tried once
      more in another worker; if that worker dies too, the file is reported failed
      (``error_type`` ``WorkerDied``) and the others complete.
    - An output that exists when the batch starts is replaced only with ``force=True``; one
      that does not is the batch's own, which a retry may replace (the attempt that died may
      have completed it).
    - ``KeyboardInterrupt`` (Ctrl-C) cancels the jobs not started; those running finish (each
      output is atomic), then the exception propagates.

    **Local processes** (``workers`` > 1) are started with the ``spawn`` method, so this is
    safe from threads and on every platform; call it under ``if __name__ == "__main__":`` in a
    script. A process that dies breaks the whole pool (the pool cannot tell which job killed
    it), so the jobs it may have been running are re-run one at a time, each in a fresh
    process.

    **Dask** (``client``, a ``dask.distributed.Client``): each file is one task, submitted
    with absolute paths, so inputs and outputs must be on a filesystem that this machine and
    every worker see at the same path. When a worker dies, the scheduler re-runs its tasks on
    other workers and gives up on a task after ``distributed.scheduler.allowed-failures``
    worker deaths (Dask's default is 3; :func:`ckptconv.cluster.connect` with ``local:N`` sets
    1, the rule above; set it in your scheduler's configuration to get the same). Results
    come back as the tasks' futures complete. Needs ``ckptconv[dask]``.

    Args:
        jobs: From :func:`plan_jobs` (or any ``Job(src, dst)`` list).
        workers: Number of local worker processes; 0 means one per CPU. Not with ``client``.
        client: A ``dask.distributed.Client``: run the jobs on its cluster.
        on_result: Called in this process with each result as it completes.
        job: The per-file function, ``job(src, dst, **options) -> FileResult`` (a top-level,
            picklable function); :func:`convert_one` unless you wrap it.
        **options: Passed to ``job`` (``mapping``, ``dtype``, ``force``, ...).

    Returns:
        A :class:`BatchReport` with results in job order.

    Raises:
        OptionError: an option the job does not take.
        SpecError: the spec is invalid. UsageError: an option's value is wrong.
        ValueError: both ``workers`` and ``client`` were given.
        ClusterError: a Dask worker cannot import ckptconv or runs another version of it
            (checked before any task), or no worker is left.

    The first three are raised before any job runs.
    """
    if client is not None and workers != 1:
        raise ValueError("give workers= (local processes) or client= (a Dask cluster), not both")
    _check_job_options(job, options)
    options = prepare_options(options)
    started = time.perf_counter()
    run = BatchRun(jobs, on_result)
    try:
        if client is not None:
            from .cluster import run_tasks

            run_tasks(client, run, job, options)
        elif workers == 1 or len(jobs) <= 1:
            for i, item in enumerate(run.jobs):
                run.finished(i, job(item.src, item.dst, **run.options_for(i, options)))
        else:
            _run_processes(run, (os.cpu_count() or 1) if workers <= 0 else workers, job, options)
    finally:
        run.remove_leftovers()
    return BatchReport([r for r in run.results if r is not None], time.perf_counter() - started)


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



class BatchRun:
    """The per-file bookkeeping every runner shares (internal to :func:`run_batch`).

    Attributes:
        jobs: The jobs, in order. results: Their results so far (None: not finished).
        existed: Whether each job's output existed before the batch started.
    """

    def __init__(self, jobs: Sequence[Job], on_result: Callable[[FileResult], None] | None) -> None:
        self.jobs = list(jobs)
        self.results: list[FileResult | None] = [None] * len(self.jobs)
        self.existed = _outputs_present(self.jobs)
        self._on_result = on_result
        self._killed: set[int] = set()
        self._lock = threading.Lock()

    def finished(self, i: int, result: FileResult) -> None:
        """Record job ``i``'s final result and pass it to ``on_result``."""
        with self._lock:
            self.results[i] = result
            if self._on_result is not None:
                self._on_result(result)

    def killed(self, i: int) -> None:
        """Job ``i`` was running in a worker that died: its temporaries go at the end."""
        self._killed.add(i)

    def options_for(self, i: int, options: dict[str, Any]) -> dict[str, Any]:
        """Job ``i``'s options, every attempt: an output absent when the batch started is the
        batch's own, which a retry may replace (the attempt of a worker that died may have
        completed it; Dask recomputes a result lost with its worker)."""
        return options if self.existed[i] else dict(options, force=True)

    def died(self, i: int, workers: int) -> FileResult:
        """The result of a job whose worker died ``workers`` times."""
        item = self.jobs[i]
        times = {1: "", 2: ", twice"}.get(workers, f", {workers} times")
        error = (
            f"the worker process died while converting this file{times} (killed by a signal, "
            "e.g. by the out-of-memory killer, or a crash in a native library); no output was "
            "left; try it alone, with more memory"
        )
        return FileResult(src=item.src, dst=item.dst, ok=False, error=error, error_type="WorkerDied")

    def remove_leftovers(self) -> None:
        """Remove what killed workers left for finished jobs: the writer's temporaries, and
        its lock file when no one holds it (a job still running elsewhere, after an
        interrupt, keeps its own)."""
        from .errors import OutputError
        from .writers.outputs import OutputLock, leftover_temporaries

        for i in sorted(self._killed):
            if self.results[i] is None:
                continue
            dst = self.jobs[i].dst
            for path in leftover_temporaries(dst):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            lock = OutputLock(dst)
            if os.path.exists(lock.path):
                with contextlib.suppress(OutputError), lock:
                    pass  # taken and released: the lock file is removed


def _outputs_present(jobs: Sequence[Job]) -> list[bool]:
    """For each job, whether a file its write could replace is there: the output, a sharded
    set's index, or a file named like one of its shards (one listing per output directory)."""
    from .formats.safetensors import index_path, parse_shard_name, shard_names

    listings: dict[str, tuple[set[str], set[str]]] = {}  # directory -> (names, shard stems)
    present = []
    for item in jobs:
        directory, base = os.path.split(os.path.abspath(item.dst))
        if directory not in listings:
            try:
                names = set(os.listdir(directory))
            except OSError:
                names = set()
            stems = {shard[0] for shard in map(parse_shard_name, names) if shard}
            listings[directory] = (names, stems)
        names, stems = listings[directory]
        shard = parse_shard_name(os.path.basename(shard_names(base, 1)[0]))
        present.append(
            base in names or os.path.basename(index_path(base)) in names
            or (shard is not None and shard[0] in stems)
        )
    return present


def _run_processes(
    run: BatchRun, workers: int, job: Callable[..., FileResult], options: dict[str, Any]
) -> None:
    """The local pool: all jobs in ``workers`` processes; those of a broken pool, alone."""
    from .interrupts import sigterm_raises

    # SIGTERM raises here, so queued jobs are cancelled and running ones finish (each
    # output is atomic) instead of leaving orphaned workers behind.
    with sigterm_raises():
        broken = _run_pool(run, range(len(run.jobs)), workers, job, options)
        for i in broken:
            run.killed(i)

        def isolated(i: int) -> None:
            if _run_pool(run, [i], 1, job, options):
                run.finished(i, run.died(i, 2))

        if broken:  # isolate them: only a job that kills its own process fails
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(isolated, broken))


def _run_pool(
    run: BatchRun,
    indices: Iterable[int],
    workers: int,
    job: Callable[..., FileResult],
    options: dict[str, Any],
) -> list[int]:
    """Run ``run.jobs[i]`` for ``i`` in ``indices`` in a fresh pool; return the indices left
    unfinished because a worker died."""
    from concurrent.futures.process import BrokenProcessPool

    indices = list(indices)
    jobs = run.jobs
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(indices)), mp_context=context) as pool:
        pending: dict[Future[FileResult], int] = {
            pool.submit(job, jobs[i].src, jobs[i].dst, **run.options_for(i, options)): i
            for i in indices
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
                    run.finished(i, result)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return sorted(unfinished)
