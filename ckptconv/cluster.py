"""Batch jobs on a Dask cluster: ``ckptconv batch --scheduler`` and ``run_batch(client=...)``.

Dask is an optional extra (``pip install "ckptconv[dask]"``, which installs
``dask[distributed]``); it is imported only when one of these functions is called, never by
``import ckptconv`` or ``import ckptconv.batch``.

- :func:`connect` opens a client: to a running scheduler (``tcp://host:8786``), or to a
  ``LocalCluster`` of N worker processes started on this machine (``local:N``).
- :func:`run_tasks` is the Dask runner behind :func:`ckptconv.batch.run_batch`; the rules a
  batch follows (options checked once, failures per file, a worker that dies, Ctrl-C) are
  documented there and kept in :class:`ckptconv.batch.BatchRun`, one set for every runner.

Each file is one task running :func:`ckptconv.batch.convert_one` (or the job you pass), with
absolute paths: inputs and outputs must be on a filesystem that the machine submitting the
batch and every worker see at the same path, and every worker needs ckptconv installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import ClusterError, UnsupportedError

if TYPE_CHECKING:
    from .batch import BatchRun, FileResult

__all__ = [
    "connect",
    "parse_scheduler",
    "run_tasks",
    "import_distributed",
    "worker_version",
    "LOCAL_CLUSTER_CONFIG",
    "DASK_MISSING",
]

LOCAL_CLUSTER_CONFIG = {
    # a task whose worker dies is re-run once; the second death fails it (KilledWorker)
    "distributed.scheduler.allowed-failures": 1,
    # workers that die and cannot be restarted must not leave the batch waiting forever
    "distributed.scheduler.no-workers-timeout": "120s",
}
"""The Dask configuration of the scheduler :func:`connect` starts for ``local:N``."""


DASK_MISSING = (
    "running a batch on a Dask cluster needs Dask's distributed scheduler: "
    'pip install "ckptconv[dask]"'
)


def import_distributed() -> Any:
    """``dask.distributed``.

    Raises:
        UnsupportedError: it is not installed (one line: what to install).
    """
    try:
        import distributed
    except ImportError as e:
        raise UnsupportedError(f"{DASK_MISSING} ({e})") from e
    return distributed


def parse_scheduler(scheduler: str) -> int | None:
    """The number of local workers ``local:N`` asks for (0: one per CPU), or None for an
    address of a running scheduler.

    Raises:
        ValueError: ``local:`` is not followed by a number of workers, or the text is empty.
    """
    text = scheduler.strip()
    if not text:
        raise ValueError("expected the address of a Dask scheduler (tcp://HOST:PORT) or local:N")
    kind, sep, count = text.partition(":")
    if kind != "local" or not sep:
        return None
    try:
        workers = int(count)
    except ValueError:
        workers = -1
    if workers < 0:
        raise ValueError(
            f"local:N takes a number of worker processes (0: one per CPU), received {scheduler!r}"
        )
    return workers


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``scheduler``, closed on exit.

    ``local:N`` starts a ``LocalCluster`` on this machine for the time of the block: N worker
    processes of one thread each (``local:0``: one per CPU), so a worker converts one file at
    a time, configured with :data:`LOCAL_CLUSTER_CONFIG` (a file whose worker dies is retried
    once), its logs silenced (the batch reports what went wrong); Ctrl-C or SIGTERM while it
    starts takes effect once it has started, so that it can be closed. Anything else is
    the address of a running scheduler (``tcp://10.0.0.5:8786``, ``tls://...``): the client is
    closed on exit, the cluster keeps running, and its own configuration decides how often a
    task whose worker dies is retried (``distributed.scheduler.allowed-failures``).

    Raises:
        UnsupportedError: Dask's distributed scheduler is not installed.
        ValueError: ``scheduler`` is not an address Dask understands.
        ClusterError: the scheduler cannot be reached, or what answers at the address is
            not a Dask scheduler (Dask's connect timeout, ``distributed.comm.timeouts.connect``,
            bounds the connection and the first exchange).
    """
    distributed = import_distributed()
    workers = parse_scheduler(scheduler)
    if workers is None:
        # checked before a Client exists: a half-made Client stalls at exit, and a Client
        # waits forever for a server that accepts the connection but never answers as Dask
        _check_scheduler(scheduler)
        try:
            client = distributed.Client(scheduler, set_as_default=False)
        except OSError as e:  # it went away since
            raise ClusterError(f"cannot connect to the Dask scheduler at {scheduler}: {e}") from e
        with contextlib.closing(client):
            yield client
        return
    import dask

    count = workers or os.cpu_count() or 1
    with dask.config.set(LOCAL_CLUSTER_CONFIG), _signals_held() as held:
        cluster = distributed.LocalCluster(
            n_workers=count,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        )
    with cluster, distributed.Client(cluster, set_as_default=False) as client:
        for signum in held:  # now that the cluster can be closed: Ctrl-C raises here
            signal.raise_signal(signum)
        with _kept_at(cluster, count):
            yield client


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Hold SIGINT (Ctrl-C) and SIGTERM back while the block runs; the list it gives holds
    those that came, to raise again after it. (A LocalCluster interrupted while it starts
    cannot be closed: its workers' start goes on in Dask's thread, and Dask fails closing
    it at exit.) Only in the main thread, where signal handlers are; elsewhere the block
    runs as is."""
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield came
        return

    def hold(signum: int, frame: object) -> None:
        if signum not in came:
            came.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield came
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_scheduler(address: str) -> None:
    """Connect to ``address`` and ask who answers, within Dask's connect timeout
    (``distributed.comm.timeouts.connect``) for the whole exchange.

    Raises:
        ValueError: not an address Dask understands.
        ClusterError: nothing answers there, or something that is not a Dask scheduler (a
            dashboard's HTTP port, a worker).
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import dask
    from dask.utils import parse_timedelta
    from distributed import Security
    from distributed.comm import connect as open_comm
    from distributed.comm import resolve_address

    resolve_address(address)  # ValueError: not an address
    timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    secure = Security().get_connection_args("client")  # TLS as configured, as a Client does

    async def identity() -> Any:
        comm = await open_comm(address, timeout=timeout, **secure)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def ask() -> Any:
        # connecting gives up after ``timeout`` (an OSError); this bounds the handshake
        return await asyncio.wait_for(identity(), timeout + 1)

    with ThreadPoolExecutor(1) as thread:  # its own event loop, whatever the caller runs
        try:
            answer = thread.submit(asyncio.run, ask()).result()
        except asyncio.TimeoutError:  # (an OSError too)
            answer = f"connected, but no answer within {timeout + 1:g} s"
        except OSError as e:  # unknown host, refused, timed out connecting
            raise ClusterError(f"cannot connect to the Dask scheduler at {address}: {e}") from e
        except Exception:  # a reply that is not Dask's protocol (MemoryError included)
            answer = "its reply is not Dask's protocol"
    kind = answer.get("type") if isinstance(answer, dict) else None
    if kind != "Scheduler":
        found = f"a Dask {kind}" if isinstance(kind, str) else answer
        raise ClusterError(
            f"{address} does not answer as a Dask scheduler ({found}); give the scheduler's "
            "address (its port is 8786 unless it was started with another; 8787 is the "
            "dashboard)"
        )


@contextlib.contextmanager
def _kept_at(cluster: Any, count: int, every: float = 5.0) -> Iterator[None]:
    """Keep a LocalCluster at ``count`` workers while the block runs.

    A worker's nanny restarts it when it dies, but closes itself when the new process dies
    while starting (a file that kills its worker, retried on the one just restarted), and
    the cluster drops a worker not back within ``distributed.deploy.lost-worker-timeout``
    (slow restarts on a loaded machine). Asking for ``count`` workers again every few
    seconds starts new ones in their place; it does nothing while all are there.
    """
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(every):
            if cluster.status.name == "running":
                cluster.scale(count)

    thread = threading.Thread(target=keep, name="ckptconv-keep-workers", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_tasks(
    client: Any,
    run: BatchRun,
    job: Callable[..., FileResult],
    options: dict[str, Any],
) -> None:
    """Run every job of ``run`` as a task on ``client``'s cluster (see ``run_batch``).

    First every worker is asked for its ckptconv version (a worker that cannot import
    ckptconv would otherwise hold its task forever).

    At most one task per worker thread is on the cluster at a time (more are submitted as
    tasks complete), so a worker of one thread holds one file: when it dies, only that file
    was running there. A task the scheduler gave up on (``KilledWorker``: the workers running
    it died) is reported failed.
    """
    distributed = import_distributed()
    _check_workers(client)
    prefix = f"ckptconv-batch-{uuid.uuid4().hex[:12]}"  # tasks show as ckptconv-batch in Dask
    index: dict[str, int] = {}  # task key -> job
    outstanding: set[Any] = set()
    pending = distributed.as_completed(loop=client.loop)
    waiting = iter(range(len(run.jobs)))
    slots = _Slots(client)

    def refill() -> None:
        while len(outstanding) < slots.count():
            i = next(waiting, None)
            if i is None:
                return
            item = run.jobs[i]
            future = client.submit(
                functools.partial(job, **run.options_for(i, options)),
                os.path.abspath(item.src),
                os.path.abspath(item.dst),
                key=f"{prefix}-{i}",
                pure=False,
            )
            index[future.key] = i
            outstanding.add(future)
            pending.add(future)

    try:
        refill()
        for future in pending:
            i = index[future.key]
            result = _result_of(future, run, i, distributed)
            future.release()  # else a worker that dies holding the result would recompute it
            outstanding.discard(future)
            run.finished(i, result)
            refill()
    except BaseException:
        if outstanding:
            client.cancel(list(outstanding))
        raise
    finally:
        for key in _lost_keys(client) & index.keys():
            run.killed(index[key])


def worker_version() -> str:
    """``ckptconv.__version__`` where this runs (on each worker, by :func:`run_tasks`)."""
    from . import __version__

    return __version__


def _check_workers(client: Any) -> None:
    """Before any task: every worker imports ckptconv, of this version. (Dask does not fail a
    task whose function a worker cannot import: it would wait forever.) Workers that join
    later are not checked."""
    from . import __version__

    try:
        versions = client.run(worker_version)
    except Exception as error:  # Dask passes the worker's ImportError on as an Exception
        what = str(error) if type(error) is Exception else f"{type(error).__name__}: {error}"
        raise ClusterError(
            f"a Dask worker cannot run ckptconv's job ({what}); install ckptconv, the same "
            "version as here, on every worker"
        ) from error
    for worker, version in sorted(versions.items()):
        if version != __version__:
            raise ClusterError(
                f"the Dask worker {worker} runs ckptconv {version}, this machine {__version__}; "
                "install the same version on every worker"
            )


class _Slots:
    """The cluster's worker threads, asked again at most once a second (workers come and go)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._count = 1
        self._asked = -math.inf

    def count(self) -> int:
        now = time.monotonic()
        if now - self._asked >= 1.0:
            self._count = max(1, sum(self._client.nthreads().values()))
            self._asked = now
        return self._count


def _result_of(future: Any, run: BatchRun, i: int, distributed: Any) -> FileResult:
    """The job's result (waiting for it if a worker lost it: Dask computes it again), with
    the paths as the caller gave them."""
    from distributed.scheduler import NoWorkerError

    from .batch import FileResult

    item = run.jobs[i]
    try:
        result: FileResult = future.result()
    except distributed.KilledWorker as error:
        run.killed(i)
        return run.died(i, error.allowed_failures + 1)
    except distributed.CancelledError:
        return FileResult(
            src=item.src,
            dst=item.dst,
            ok=False,
            error="the Dask task was cancelled (by another client, or the cluster restarted); "
            "run this file again",
            error_type="TaskCancelled",
        )
    except NoWorkerError as error:
        raise ClusterError(
            f"no Dask worker was running for {error.timeout:.0f} s: the workers died and did "
            "not come back; the files not reported were not converted"
        ) from error
    except ImportError as error:
        raise ClusterError(
            f"a Dask worker cannot run ckptconv's job ({type(error).__name__}: {error}); "
            "install ckptconv, the same version as here, on every worker"
        ) from error
    # anything else is a bug in the job: raised above, with the worker's traceback
    return dataclasses.replace(result, src=item.src, dst=item.dst)  # ``files`` are absolute


def _lost_keys(client: Any) -> set[str]:
    """Keys of tasks that were running on a worker when it was removed (dead or gone), from
    the scheduler's recent events; empty if the scheduler cannot tell."""
    if client.status != "running":
        return set()
    try:
        events = client.get_events("all")
    except (OSError, TimeoutError, KeyError):
        return set()
    lost: set[str] = set()
    for _, message in events:
        if isinstance(message, dict) and message.get("action") == "remove-worker":
            lost.update(str(key) for key in message.get("processing-tasks", ()))
    return lost
