#!/usr/bin/env python3
"""Batch throughput: files per second of ``run_batch`` in local processes and on a Dask cluster.

    .venv/bin/python scripts/bench_batch.py make DIR [--files 64] [--layers 2] [--units 1024]
        DIR/in/m000.weights.h5 ... : one Keras 3 file (scripts/bench_write.py, the real writer,
        in a subprocess) copied --files times (2 x Dense 1024x1024 fp32: 8 MiB each)
    .venv/bin/python scripts/bench_batch.py run DIR/in OUT --workers 2
    .venv/bin/python scripts/bench_batch.py run DIR/in OUT --scheduler local:2
    .venv/bin/python scripts/bench_batch.py run DIR/in OUT --scheduler tcp://HOST:8786
    .venv/bin/python scripts/bench_batch.py compare DIR [--workers 2] [--scheduler ADDRESS]
        make (if needed), then the local pool and the cluster on the same inputs, in turn

``run`` converts every ``*.weights.h5`` under the input directory into OUT (emptied first) and
prints ``BENCH {"seconds": ..., "files": N, "files_per_second": ..., "startup_seconds": ...}``:
``seconds`` is ``run_batch`` alone (the local pool starts its processes inside it, as it does
on every batch; a Dask cluster is started, and its workers waited for, before the clock
starts: ``startup_seconds``, since a cluster is usually already running). ``scripts/bench.py
--only batch`` runs the same two cases among its rounds. Exit status 1 if a file failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def make(directory: str, *, files: int, layers: int, units: int) -> str:
    """Write the inputs (once); return the input directory."""
    inputs = os.path.join(directory, "in")
    if os.path.isdir(inputs) and len(os.listdir(inputs)) == files:
        return inputs
    model = os.path.join(directory, "model")
    os.makedirs(model, exist_ok=True)
    source = os.path.join(model, "m.weights.h5")
    if not os.path.exists(source):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "bench_write.py"), "keras3", model, "--layers",
             str(layers), "--units", str(units), "--name", "m", "--weights-only"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"writing the batch input failed:\n{proc.stderr}")
    shutil.rmtree(inputs, ignore_errors=True)
    os.makedirs(inputs)
    for i in range(files):
        shutil.copyfile(source, os.path.join(inputs, f"m{i:03d}.weights.h5"))
    return inputs


def run(inputs: str, out: str, *, workers: int | None, scheduler: str | None) -> dict[str, object]:
    from ckptconv.batch import plan_jobs, run_batch

    shutil.rmtree(out, ignore_errors=True)
    jobs = plan_jobs([os.path.join(inputs, "*.weights.h5")], out)
    startup = 0.0
    if scheduler is None:
        started = time.perf_counter()
        report = run_batch(jobs, workers=workers or 1)
        seconds = time.perf_counter() - started
    else:
        from ckptconv.cluster import connect, parse_scheduler

        started = time.perf_counter()
        with connect(scheduler) as client:
            wanted = parse_scheduler(scheduler)  # local:N: all N workers; a cluster: one
            client.wait_for_workers(1 if wanted is None else wanted or os.cpu_count() or 1)
            startup = time.perf_counter() - started
            started = time.perf_counter()
            report = run_batch(jobs, client=client)
            seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": seconds,
        "files": len(jobs),
        "files_per_second": len(jobs) / seconds,
        "startup_seconds": startup,
        "ok": report.ok,
        "where": scheduler or f"local pool, {workers} processes",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write the inputs")
    m.add_argument("directory")
    c = sub.add_parser("compare", help="make, then the local pool and the cluster in turn")
    c.add_argument("directory")
    for q in (m, c):
        q.add_argument("--files", type=int, default=64)
        q.add_argument("--layers", type=int, default=2)
        q.add_argument("--units", type=int, default=1024)
    c.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    c.add_argument("--scheduler", help="the cluster (default local:WORKERS)")
    c.add_argument("--rounds", type=int, default=3)
    r = sub.add_parser("run", help="time one batch")
    r.add_argument("inputs")
    r.add_argument("out")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--workers", type=int)
    where.add_argument("--scheduler")
    args = p.parse_args(argv)

    if args.command == "make":
        print(make(args.directory, files=args.files, layers=args.layers, units=args.units))
        return 0
    if args.command == "run":
        result = run(args.inputs, args.out, workers=args.workers, scheduler=args.scheduler)
        print("BENCH " + json.dumps(result), flush=True)
        return 0 if result["ok"] else 1
    inputs = make(args.directory, files=args.files, layers=args.layers, units=args.units)
    out = os.path.join(args.directory, "out")
    scheduler = args.scheduler or f"local:{args.workers}"
    for rnd in range(args.rounds):
        for kwargs in ({"workers": args.workers, "scheduler": None},
                       {"workers": None, "scheduler": scheduler}):
            result = run(inputs, out, **kwargs)  # type: ignore[arg-type]
            print(f"round {rnd + 1}: {result['where']:28s} {result['files']} files in "
                  f"{result['seconds']:6.2f} s = {result['files_per_second']:6.1f} files/s"
                  f"  (cluster start {result['startup_seconds']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
