#!/usr/bin/env python3
"""Time ``ckptconv inspect`` and ``convert`` of an Orbax checkpoint written by Keras.

    .venv/bin/python scripts/bench_orbax.py                      # 400 Dense layers of 512x512, Adam
    .venv/bin/python scripts/bench_orbax.py --layers 1666 --units 32 --rounds 5  # 10,000 arrays
    .venv/bin/python scripts/bench_orbax.py --checkpoint DIR --phases --against ../main  # A/B, where

``--checkpoint`` times a checkpoint already written (nothing is written or deleted);
``--against CHECKOUT`` runs each command with that checkout's ckptconv too, in turn with this
one, and prints both and the median of their ratios run by run (pairing keeps the ratio fair
on a machine whose speed drifts); ``--phases`` prints, for ``inspect``, the CPU seconds of each
phase in a fresh process (imports, format detection, importing tensorstore, ``open``), the
median of ``--rounds``.

Writes, with Keras on JAX in a subprocess, ``keras.callbacks.OrbaxCheckpoint`` of a model of
``--layers`` Dense layers (``--units`` square kernels) trained one step with Adam: the pytree
then holds every weight, two Adam slots per weight and the counters, each a zarr array in the
OCDBT database (above 400 layers they stand side by side, not stacked). Then runs each command ``--rounds`` times in a fresh process and prints the
median wall time and peak RSS (``ru_maxrss`` of the finished child). ``inspect`` reads
metadata only (DESIGN.md: well under a second for any checkpoint); ``convert`` decompresses
every array (zstd) and writes it, fsynced. Run it on a quiet machine: the figures are only
meaningful there. Needs the test extras (Keras, JAX, orbax-checkpoint) and the orbax extra.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WRITER = """
import os, sys
import numpy as np
import keras
layers, units, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
keras.utils.set_random_seed(0)
inputs = keras.Input((units,))
if layers <= 400:  # a stack
    model = keras.Sequential([inputs] + [keras.layers.Dense(units, name=f"d{i}") for i in range(layers)])
else:  # side by side: a stack thousands deep exceeds Keras' recursion limit
    branches = [keras.layers.Dense(units, name=f"d{i}")(inputs) for i in range(layers)]
    model = keras.Model(inputs, keras.layers.Add(name="sum")(branches))
model.compile(optimizer="adam", loss="mse")
x = np.random.default_rng(0).normal(size=(4, units)).astype("float32")
model.fit(x, x, epochs=1, verbose=0,
          callbacks=[keras.callbacks.OrbaxCheckpoint(out, save_on_background=False)])
"""


def run(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one run in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return elapsed, usage.ru_maxrss * 1024


PHASES = """
import json, sys, time
clock = time.process_time
t0 = clock()
import numpy
import ckptconv.cli, ckptconv.formats
t1 = clock()
module = ckptconv.formats.detect(sys.argv[1])
t2 = clock()
import tensorstore
t3 = clock()
store = ckptconv.formats.open(sys.argv[1])
t4 = clock()
print(json.dumps({"imports": t1 - t0, "detect": t2 - t1, "import tensorstore": t3 - t2, "open": t4 - t3}))
"""


def phases(checkpoint: str, env: dict[str, str], rounds: int) -> dict[str, float]:
    """Median CPU seconds of each phase of ``inspect``, each round in a fresh process."""
    runs = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", PHASES, checkpoint], env=env, check=True,
                             capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {name: statistics.median(r[name] for r in runs) for name in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=400)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tmp", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--workdir", help="keep the checkpoint in this directory and reuse it next time")
    parser.add_argument("--checkpoint", help="time this checkpoint (already written) instead of writing one")
    parser.add_argument("--against", metavar="CHECKOUT", help="another ckptconv checkout to run in turn with this one")
    parser.add_argument("--phases", action="store_true", help="also print the CPU seconds of each phase of inspect")
    args = parser.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="ckptconv-bench-orbax-", dir=args.tmp)
    try:
        checkpoint = args.checkpoint or os.path.join(work, f"checkpoints-{args.layers}x{args.units}")
        checkouts = {"this": ROOT}
        if args.against:
            checkouts["against"] = os.path.abspath(args.against)
        envs = {}
        for label, root in checkouts.items():
            envs[label] = env = dict(
                os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            )
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # time ckptconv as installed, byte-code cached
            subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(root, "ckptconv")], check=True)
        if not os.path.isdir(checkpoint):
            print(f"writing the checkpoint ({args.layers} x Dense({args.units}), Adam) ...", flush=True)
            subprocess.run([sys.executable, "-c", WRITER, str(args.layers), str(args.units), checkpoint],
                           env=envs["this"], check=True, stderr=subprocess.DEVNULL)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(checkpoint) for f in fs)
        print(f"checkpoint: {checkpoint}, {size / 2**20:.1f} MiB on disk")
        out = os.path.join(work, "out.safetensors")
        cases = {
            "ckptconv inspect": [sys.executable, "-m", "ckptconv", "inspect", checkpoint],
            "ckptconv convert --all": [sys.executable, "-m", "ckptconv", "convert", checkpoint, out,
                                       "--all", "--force", "--quiet"],
        }
        for label, argv in cases.items():
            times: dict[str, list[float]] = {c: [] for c in checkouts}
            peaks: dict[str, list[int]] = {c: [] for c in checkouts}
            for _ in range(args.rounds):
                for c in checkouts:  # in turn: a drift of the machine's speed touches both
                    seconds, rss = run(argv, envs[c])
                    times[c].append(seconds)
                    peaks[c].append(rss)
            for c in checkouts:
                print(f"{label:24s} {c:8s} median {statistics.median(times[c]):6.2f} s   "
                      f"peak RSS {max(peaks[c]) / 2**20:6.0f} MiB")
            if args.against:
                ratio = statistics.median(a / b for a, b in zip(times["this"], times["against"]))
                print(f"{label:24s} this/against, median of the runs' ratios: {ratio:.2f}")
        if args.phases:
            for c in checkouts:
                cpu = phases(checkpoint, envs[c], args.rounds)
                print(f"inspect phases, CPU s ({c}): " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))
    finally:  # (a --checkpoint given is never in the temporary directory)
        if args.workdir:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(work, "out.safetensors"))
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
