"""``ckptconv batch --scheduler`` and ``run_batch(client=...)``: the batch on a real Dask cluster.

One ``LocalCluster`` per module (a scheduler and two worker processes on this machine, started
by ``ckptconv.cluster.connect("local:2")``) runs every test; the CLI reaches it by its address.
Real checkpoints (Keras 3 and tf-keras writers) plus a damaged copy are the inputs; the Dask
results are compared with the local pool's, byte for byte. Workers are killed for real
(SIGKILL from inside a job, once per marker file) and restarted by their nanny.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ckptconv import Rule, Spec, SpecError
from ckptconv.batch import FileResult, Job, convert_one, plan_jobs, run_batch, stem_of
from tests.helpers import run_cli

GOOD = {  # input name -> fixture written by the real writers
    "k3_zoo.weights.h5": "k3_zoo.weights.h5",
    "k3_seq.weights.h5": "k3_seq.weights.h5",
    "archive.keras": "k3_zoo.keras",
    "tk_zoo_w.h5": "tk_zoo_w.h5",
}
DAMAGED = "broken.weights.h5"
SPEC = """\
version: 1
rules:
  - drop: "**/bias"
    optional: true
"""

BLOCK_DASK = (  # run the CLI as if ckptconv[dask] were not installed
    "import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
    "from ckptconv.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="module")
def cluster() -> Any:
    from ckptconv.cluster import connect

    with connect("local:2") as client:
        yield client


@pytest.fixture
def client(cluster: Any) -> Any:
    cluster.wait_for_workers(2, timeout=120)  # a worker an earlier test killed is back
    return cluster


@pytest.fixture
def inputs(generated, tmp_path: Path) -> Path:
    """Real checkpoints and one truncated copy."""
    keras_dir = generated("keras")
    directory = tmp_path / "in"
    directory.mkdir()
    for name, fixture in GOOD.items():
        shutil.copy(keras_dir / fixture, directory / name)
    raw = (keras_dir / "k3_zoo.weights.h5").read_bytes()
    (directory / DAMAGED).write_bytes(raw[: len(raw) // 3])
    return directory


def outputs(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def comparable(report: dict, cwd: Path, outdir: str) -> dict:
    """A batch's JSON report without times, without its output directory ``outdir`` (relative
    to ``cwd``) in output paths (``dst`` as given, ``files`` absolute)."""
    report = json.loads(json.dumps(report))
    report["summary"].pop("seconds")
    for item in report["files"]:
        item.pop("seconds")
        item["dst"] = item["dst"].removeprefix(f"{outdir}/")
        item["files"] = [f.removeprefix(f"{cwd / outdir}/") for f in item["files"]]
    return report


# --- the CLI ------------------------------------------------------------------------------


def test_cluster_batch_matches_the_local_batch(client: Any, inputs: Path, tmp_path: Path) -> None:
    """Same outputs (bytes), same report, the damaged input failed alone with its message."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    common = ["in/*", "--json", "--dtype", "bfloat16", "--map", "spec.yaml"]  # relative paths
    local = run_cli("batch", *common, "-o", "local", "-j", "2", cwd=tmp_path)
    dask = run_cli("batch", *common, "-o", "dask", "--scheduler", client.scheduler.address, cwd=tmp_path)
    assert local.returncode == dask.returncode == 1, dask.stderr
    # stderr: the failed file's one error line, nothing from Dask
    assert dask.stderr == local.stderr and dask.stderr.startswith(f"ckptconv: error: in/{DAMAGED}: the file is truncated")
    assert dask.stderr.count("\n") == 1, dask.stderr
    local_report, dask_report = json.loads(local.stdout), json.loads(dask.stdout)
    failed = [f for f in dask_report["files"] if not f["ok"]]
    assert [Path(f["src"]).name for f in failed] == [DAMAGED]
    assert "truncated" in failed[0]["error"] and failed[0]["error_type"] == "CorruptFileError"
    assert comparable(dask_report, tmp_path, "dask") == comparable(local_report, tmp_path, "local")
    made = outputs(tmp_path / "dask")
    assert sorted(made) == sorted(f"{stem_of(name)}.safetensors" for name in GOOD)
    assert made == outputs(tmp_path / "local")


def test_local_cluster_from_the_cli(inputs: Path, tmp_path: Path) -> None:
    """``--scheduler local:2`` starts its own cluster: lines, summary, progress on stderr."""
    out = tmp_path / "out"
    proc = run_cli("batch", f"{inputs}/*", "-o", out, "--scheduler", "local:2", "--progress")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("ok ") for line in lines) == len(GOOD)
    assert not any(str(DAMAGED) in line for line in lines)  # failures go to stderr
    failed = [line for line in proc.stderr.splitlines() if "ckptconv: error:" in line]
    assert len(failed) == 1 and failed[0].startswith(f"ckptconv: error: {inputs / DAMAGED}: the file is truncated")
    assert lines[-1].startswith("5 files: 4 converted, 1 failed")
    assert "/5 [" in proc.stderr and "file/s" in proc.stderr  # tqdm's bar over the futures
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem_of(n)}.safetensors" for n in GOOD)


def test_scheduler_usage_errors(inputs: Path, tmp_path: Path, capsys) -> None:
    """Bad --scheduler values are usage errors (2); an unreachable scheduler fails (1)."""
    import dask

    from ckptconv.cli import main

    def cli(*args: object) -> tuple[int, str]:
        try:
            code = main(["batch", str(inputs / "k3_seq.weights.h5"), "-o", str(out), *map(str, args)])
        except SystemExit as e:  # argparse's own usage errors
            code = int(e.code or 0)
        return code, capsys.readouterr().err

    out = tmp_path / "out"
    for args, words in (
        (["--scheduler", "local:two"], "local:N takes a number"),
        (["--scheduler", "local:-1"], "local:N takes a number"),
        (["--scheduler", "local:2", "-j", "2"], "not allowed with"),
        (["--scheduler", "no-port-here"], "--scheduler no-port-here: missing port"),
        (["--scheduler", "udp://127.0.0.1:1"], "unknown address scheme"),
    ):
        code, err = cli(*args)
        assert code == 2, (args, err)
        assert words in err and "Traceback" not in err
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code, err = cli("--scheduler", "tcp://127.0.0.1:9")
    assert code == 1
    assert err.startswith("ckptconv: error: cannot connect to the Dask scheduler at tcp://127.0.0.1:9")
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_an_address_that_is_not_a_scheduler_fails_in_one_line(
    client: Any, inputs: Path, tmp_path: Path, capsys
) -> None:
    """A server that accepts the connection but is no Dask scheduler (an HTTP server such as
    the dashboard, which never answers Dask's handshake; a worker) is one error line within
    the connect timeout, not a batch waiting forever."""
    import http.server
    import threading

    import dask

    from ckptconv.cli import main

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker = next(iter(client.scheduler_info()["workers"]))
    out = tmp_path / "out"
    try:
        for address, what in ((f"tcp://127.0.0.1:{server.server_address[1]}", "connected, but no answer"),
                              (worker, "a Dask Worker")):
            started = time.monotonic()
            with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
                code = main(["batch", str(inputs / "k3_seq.weights.h5"), "-o", str(out), "--scheduler", address])
            err = capsys.readouterr().err
            assert code == 1, err
            assert err.startswith(f"ckptconv: error: {address} does not answer as a Dask scheduler ({what}")
            assert len(err.splitlines()) == 1
            assert time.monotonic() - started < 30
    finally:
        server.shutdown()
        server.server_close()
    assert not out.exists()


def test_without_dask_one_error_names_the_extra(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_DASK, "batch", inputs / "k3_seq.weights.h5", "-o", out,
         "--scheduler", "local:2"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert 'pip install "ckptconv[dask]"' in proc.stderr
    assert not out.exists()
    # without --scheduler, batch never needs Dask
    proc = subprocess.run([sys.executable, "-c", BLOCK_DASK, "batch", inputs / "k3_seq.weights.h5",
                           "-o", out], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_broken_spec_fails_once_before_any_worker_starts(inputs: Path, tmp_path: Path) -> None:
    """The spec is parsed on the client first: one error line, no file line, no cluster (with
    Dask blocked the error is still the spec's, so it came before Dask was even imported)."""
    spec = tmp_path / "broken.yaml"
    spec.write_text("version: 1\nrules:\n  - from: '*/kernel'\n    opz: [transpose]\n")
    out = tmp_path / "out"
    for command in (
        [sys.executable, "-m", "ckptconv", "batch", f"{inputs}/*", "-o", out, "--map", spec, "-j", "2"],
        [sys.executable, "-c", BLOCK_DASK, "batch", f"{inputs}/*", "-o", out, "--map", spec,
         "--scheduler", "local:2"],
    ):
        proc = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and str(spec) in lines[0] and "opz" in lines[0], proc.stderr
    assert not out.exists()


# --- the Python API: one set of rules for local processes and the cluster ------------------


def spec_is_parsed(src: str, dst: str, **options: Any) -> FileResult:
    """A job that reports whether it was handed a parsed Spec (not a path to read)."""
    return FileResult(src=src, dst=dst, ok=isinstance(options.get("mapping"), Spec))


def records_a_start(src: str, dst: str, *, marker_dir: str, **options: Any) -> FileResult:
    Path(marker_dir, Path(src).name).touch()
    return convert_one(src, dst, **options)


@pytest.mark.parametrize("where", ["processes", "dask"])
def test_jobs_receive_the_parsed_spec(where: str, request, inputs: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    runner = {"workers": 2} if where == "processes" else {"client": request.getfixturevalue("client")}
    jobs = plan_jobs([f"{inputs}/*"], tmp_path / "out")
    report = run_batch(jobs, job=spec_is_parsed, mapping=str(spec), **runner)
    assert report.ok and len(report.results) == len(jobs)

    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [{from: 'a', to: 'b', ops: [transpsoe]}]\n")
    markers = tmp_path / "started"
    markers.mkdir()
    with pytest.raises(SpecError, match="transpsoe"):
        run_batch(jobs, job=records_a_start, mapping=str(broken), marker_dir=str(markers), **runner)
    assert list(markers.iterdir()) == []


def kill_mid_write_once(src: str, dst: str, *, marker_dir: str, **options: Any) -> FileResult:
    """For ``poison.*``, the first attempt SIGKILLs its own process in the middle of writing
    (from an op computing the first tensor, after the temporary output file is created),
    recording what the output directory held at that moment; the retry converts normally."""
    marker = Path(marker_dir, "killed.json")
    if Path(src).name.startswith("poison") and not marker.exists():
        def die(array: Any) -> Any:
            listing = sorted(os.listdir(os.path.dirname(dst)))
            marker.write_text(json.dumps({"pid": os.getpid(), "listing": listing}))
            os.kill(os.getpid(), signal.SIGKILL)
            return array

        same = {"fn": die, "shape": lambda shape: shape, "dtype": lambda dtype: dtype}
        options = dict(options, mapping=Spec(rules=[Rule(from_="**", ops=[same])]))
    result = convert_one(src, dst, **options)
    Path(marker_dir, f"{Path(src).name}.pid").write_text(str(os.getpid()))
    return result


def kill_after_writing_once(src: str, dst: str, *, marker_dir: str, **options: Any) -> FileResult:
    """For ``poison.*``, the first attempt completes its output, then its process is killed
    before the result is reported."""
    marker = Path(marker_dir, "killed.json")
    result = convert_one(src, dst, **options)
    if Path(src).name.startswith("poison") and not marker.exists():
        marker.write_text(json.dumps({"pid": os.getpid()}))
        os.kill(os.getpid(), signal.SIGKILL)
    return result


def kill_always(src: str, dst: str, **options: Any) -> FileResult:
    """For ``poison.*``, every attempt SIGKILLs its own process in the middle of writing (its
    temporary file and the output's lock file are there)."""
    if Path(src).name.startswith("poison"):
        def die(array: Any) -> Any:
            os.kill(os.getpid(), signal.SIGKILL)
            return array

        same = {"fn": die, "shape": lambda shape: shape, "dtype": lambda dtype: dtype}
        options = dict(options, mapping=Spec(rules=[Rule(from_="**", ops=[same])]))
    return convert_one(src, dst, **options)


def runner_for(where: str, request) -> dict[str, Any]:
    if where == "processes":
        return {"workers": 2}
    return {"client": request.getfixturevalue("client")}


def few_jobs(inputs: Path, out: Path) -> list[Job]:
    """The poisoned input between a good one and the damaged one (few: every job of a broken
    local pool is re-run in a process of its own)."""
    return plan_jobs([str(inputs / n) for n in ("k3_zoo.weights.h5", "poison.weights.h5", DAMAGED)], out)


def local_outputs(paths: list[str], tmp_path: Path) -> dict[str, bytes]:
    """The outputs of a batch of ``paths`` in this process, with the plain job."""
    reference = tmp_path / "reference"
    run_batch(plan_jobs(paths, reference))
    return outputs(reference)


@pytest.mark.parametrize("where", ["processes", "dask"])
def test_a_worker_killed_mid_write_leaves_nothing_and_the_file_completes(
    where: str, request, inputs: Path, tmp_path: Path
) -> None:
    shutil.copy(inputs / "k3_seq.weights.h5", inputs / "poison.weights.h5")
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    jobs = few_jobs(inputs, out)
    report = run_batch(jobs, job=kill_mid_write_once, marker_dir=str(markers), **runner_for(where, request))

    killed = json.loads((markers / "killed.json").read_text())
    assert any(name.startswith(".poison.safetensors.") and name.endswith(".tmp")
               for name in killed["listing"]), killed  # the kill came mid-write
    assert int((markers / "poison.weights.h5.pid").read_text()) != killed["pid"]  # another worker
    assert [Path(r.src).name for r in report.failed] == [DAMAGED]
    assert [r.src for r in report.results] == [j.src for j in jobs]
    # the same bytes as without a kill, and nothing else: no temporary file of the killed attempt
    assert outputs(out) == local_outputs([j.src for j in jobs], tmp_path)


@pytest.mark.parametrize("where", ["processes", "dask"])
def test_the_retry_may_replace_the_output_its_killed_attempt_completed(
    where: str, request, inputs: Path, tmp_path: Path
) -> None:
    shutil.copy(inputs / "k3_seq.weights.h5", inputs / "poison.weights.h5")
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    jobs = plan_jobs([f"{inputs}/poison.weights.h5", f"{inputs}/k3_seq.weights.h5"], out)
    report = run_batch(jobs, job=kill_after_writing_once, marker_dir=str(markers),
                       **runner_for(where, request))
    assert (markers / "killed.json").exists()
    assert report.ok, report.failed
    assert outputs(out) == local_outputs([j.src for j in jobs], tmp_path)


@pytest.mark.parametrize("where", ["processes", "dask"])
def test_a_job_that_kills_two_workers_fails_alone(where: str, request, inputs: Path, tmp_path: Path) -> None:
    shutil.copy(inputs / "k3_seq.weights.h5", inputs / "poison.weights.h5")
    out = tmp_path / "out"
    jobs = few_jobs(inputs, out)
    report = run_batch(jobs, job=kill_always, **runner_for(where, request))
    failed = {Path(r.src).name: r for r in report.failed}
    assert set(failed) == {DAMAGED, "poison.weights.h5"}, [(r.error_type, r.error) for r in report.failed]
    poison = failed["poison.weights.h5"]
    assert poison.error_type == "WorkerDied"
    assert poison.error and "worker process died while converting this file, twice" in poison.error
    # nothing of the killed attempts: no temporary file, no lock file
    assert outputs(out) == local_outputs([j.src for j in jobs if "poison" not in j.src], tmp_path)


def test_interrupt_cancels_the_tasks_not_started(client: Any, inputs: Path, tmp_path: Path) -> None:
    """Ctrl-C while the batch's tasks wait behind other work: they are cancelled, never run."""
    import _thread
    import threading

    for i in range(4):
        shutil.copy(inputs / "k3_seq.weights.h5", inputs / f"copy{i}.weights.h5")
    out = tmp_path / "out"
    jobs = plan_jobs([f"{inputs}/copy*"], out)
    blockers = [client.submit(time.sleep, 6, pure=False, workers=[w]) for w in client.nthreads()]

    def interrupt_once_queued() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            queued = [k for keys in client.processing().values() for k in keys]
            if any(str(k).startswith("ckptconv-batch") for k in queued):
                break
            time.sleep(0.05)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_queued, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_batch(jobs, client=client)
    client.gather(blockers)
    time.sleep(3)  # a task that was not cancelled would run and write now
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else []) == []
    assert not [k for keys in client.processing().values() for k in keys]


@pytest.mark.parametrize(("signum", "status", "line"), [
    (signal.SIGINT, 130, "ckptconv: interrupted; no partial output was left behind"),
    (signal.SIGTERM, 143, "ckptconv: terminated (SIGTERM); no partial output was left behind"),
], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_local_cluster_starts_stops_cleanly(
    signum: int, status: int, line: str, inputs: Path, tmp_path: Path
) -> None:
    """Ctrl-C or SIGTERM while ``local:N`` starts its workers: the usual line and status, the
    cluster closed (Dask cannot close a cluster interrupted half-started: a traceback at exit)."""
    import psutil

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckptconv", "batch", f"{inputs}/*", "-o", str(out), "--scheduler", "local:2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, as in a shell
    )
    def workers_starting() -> bool:
        try:
            return any("spawn_main" in " ".join(child.cmdline())
                       for child in psutil.Process(proc.pid).children())
        except psutil.Error:
            return False

    deadline = time.monotonic() + 120
    while not workers_starting() and time.monotonic() < deadline:
        time.sleep(0.02)  # until the first worker process is started
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr.splitlines()) == (status, [line]), stderr
    assert stdout == "" and not out.exists()


def test_a_cluster_whose_workers_are_gone_stops_the_batch(inputs: Path, tmp_path: Path) -> None:
    """Workers that died and did not come back: one clear error, not a batch waiting forever
    (``connect("local:N")`` sets the timeout; here a cluster without workers, 1 s)."""
    import dask
    from distributed import Client, LocalCluster

    from ckptconv import ClusterError

    with dask.config.set({"distributed.scheduler.no-workers-timeout": "1s"}):
        cluster = LocalCluster(n_workers=0, dashboard_address=":0", silence_logs=logging.CRITICAL)
    with cluster, Client(cluster, set_as_default=False) as client:
        jobs = plan_jobs([str(inputs / "k3_seq.weights.h5")], tmp_path / "out")
        with pytest.raises(ClusterError, match="no Dask worker was running for 1 s"):
            run_batch(jobs, client=client)


@pytest.mark.parametrize(
    ("preload", "words"),
    [
        ("import sys\nsys.modules['ckptconv'] = None\n",
         "a Dask worker cannot run ckptconv's job (ModuleNotFoundError"),
        ("import ckptconv\nckptconv.__version__ = '0.0.1'\n",
         f"runs ckptconv 0.0.1, this machine {__import__('ckptconv').__version__}"),
    ],
    ids=["without-ckptconv", "other-version"],
)
def test_workers_without_this_ckptconv_stop_the_batch_before_any_task(
    preload: str, words: str, inputs: Path, tmp_path: Path
) -> None:
    """A worker that cannot import ckptconv would never fail the task (Dask cannot even read
    it): the batch checks every worker first, and a different version is refused as well."""
    from distributed import Client, LocalCluster

    from ckptconv import ClusterError

    script = tmp_path / "worker_preload.py"
    script.write_text(preload)
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                           silence_logs=logging.CRITICAL, preload=[str(script)])
    with cluster, Client(cluster, set_as_default=False) as client:
        out = tmp_path / "out"
        jobs = plan_jobs([str(inputs / "k3_seq.weights.h5")], out)
        with pytest.raises(ClusterError, match=re.escape(words)):
            run_batch(jobs, client=client)
        assert not out.exists()


def test_importing_ckptconv_and_batch_without_scheduler_never_imports_dask() -> None:
    probe = (
        "import sys, ckptconv, ckptconv.batch, ckptconv.cluster, ckptconv.cli\n"
        "ckptconv.cli.build_parser()\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')])\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
