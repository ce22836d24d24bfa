#!/usr/bin/env python3
"""Time ``ckptconv inspect`` and ``convert`` of an Orbax checkpoint written by Keras.

    .venv/bin/python scripts/bench_orbax.py                      # 400 Dense layers of 512x512, Adam
    .venv/bin/python scripts/bench_orbax.py --layers 1666 --units 32 --rounds 5  # 10,000 arrays

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=400)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tmp", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--workdir", help="keep the checkpoint in this directory and reuse it next time")
    args = parser.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="ckptconv-bench-orbax-", dir=args.tmp)
    try:
        checkpoint = os.path.join(work, f"checkpoints-{args.layers}x{args.units}")
        env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # time ckptconv as installed, byte-code cached
        if not os.path.isdir(checkpoint):
            print(f"writing the checkpoint ({args.layers} x Dense({args.units}), Adam) ...", flush=True)
            subprocess.run([sys.executable, "-c", WRITER, str(args.layers), str(args.units), checkpoint],
                           env=env, check=True, stderr=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "ckptconv")], check=True)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(checkpoint) for f in fs)
        arrays = 3 * 2 * args.layers + 2  # kernel, bias, two Adam slots each; iteration, learning rate
        print(f"checkpoint: {size / 2**20:.1f} MiB on disk, {arrays} arrays")
        out = os.path.join(work, "out.safetensors")
        cases = {
            "ckptconv inspect": [sys.executable, "-m", "ckptconv", "inspect", checkpoint],
            "ckptconv convert --all": [sys.executable, "-m", "ckptconv", "convert", checkpoint, out,
                                       "--all", "--force", "--quiet"],
        }
        for label, argv in cases.items():
            times, peaks = [], []
            for _ in range(args.rounds):
                seconds, rss = run(argv, env)
                times.append(seconds)
                peaks.append(rss)
            print(f"{label:24s} median {statistics.median(times):6.2f} s   peak RSS {max(peaks) / 2**20:6.0f} MiB")
    finally:
        if args.workdir:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(work, "out.safetensors"))
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
