"""Benchmark: ``ckptconv.load_into`` against Keras' own ``model.load_weights``.

Builds a Keras 3 model of N Dense 2048x2048 layers (16 by default: 256 MiB of float32), saves it
as ``.weights.h5``, legacy ``.h5``, ``.keras``, safetensors and a TF checkpoint, then times (best of R interleaved rounds, warm
page cache) loading each into a fresh model of the same architecture, and prints the ratio to
Keras' ``load_weights`` from ``.weights.h5`` (the reference the project targets: <= 1.0).

    .venv/bin/python scripts/bench_load_into.py [--layers 16] [--width 2048] [--repeat 5]
                                                [--keras-archive]   # also time Keras from .keras
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def build(keras, layers: int, width: int):
    model = keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width, name=f"d{i}") for i in range(layers)],
        name="bench",
    )
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", help="where to write the files (default: a temporary directory)")
    parser.add_argument("--keras-archive", action="store_true",
                        help="also time Keras' own load_weights from the .keras file (slow)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import safetensors.numpy

    import ckptconv

    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    d = Path(tmp.name)
    src = build(keras, args.layers, args.width)
    rng = np.random.default_rng(0)
    src.set_weights([rng.standard_normal(w.shape, dtype=np.float32) for w in src.get_weights()])
    files = {
        ".weights.h5": d / "m.weights.h5",
        "legacy .h5": d / "m.h5",
        ".keras": d / "m.keras",
        "safetensors": d / "m.safetensors",
        "TF checkpoint": d / "ckpt",
    }
    src.save_weights(files[".weights.h5"])
    src.save(files["legacy .h5"])
    src.save(files[".keras"])
    safetensors.numpy.save_file(
        {f"d{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}": w for i, w in enumerate(src.get_weights())},
        str(files["safetensors"]),
    )
    import tensorflow as tf

    tf.train.Checkpoint(model=src).write(str(files["TF checkpoint"]))
    reference = src.get_weights()
    del src
    size = files[".weights.h5"].stat().st_size
    print(f"model: {args.layers} x Dense {args.width}x{args.width}, {size / 2**20:.0f} MiB; "
          f"best of {args.repeat} interleaved rounds, warm cache", flush=True)

    target = build(keras, args.layers, args.width)

    def check() -> None:
        for got, want in zip(target.get_weights(), reference):
            assert got.tobytes() == want.tobytes()

    def clear() -> None:
        target.set_weights([np.zeros_like(w) for w in reference])

    loaders = [("keras load_weights", ".weights.h5", lambda: target.load_weights(files[".weights.h5"]))]
    loaders += [
        ("ckptconv.load_into", label, lambda p=path: ckptconv.load_into(target, p))
        for label, path in files.items()
    ]
    # Rounds interleave the loaders (in rotating order) so that a noisy machine hurts all alike.
    times: dict[int, list[float]] = {i: [] for i in range(len(loaders))}
    for r in range(args.repeat):
        order = list(range(len(loaders)))
        order = order[r % len(order):] + order[: r % len(order)]
        for i in order:
            # Correctness once per loader (round 0); later rounds time the load alone, since
            # clearing and comparing a whole model churns memory and perturbs the next timing.
            if r == 0:
                clear()
            t0 = time.perf_counter()
            loaders[i][2]()
            times[i].append(time.perf_counter() - t0)
            if r == 0:
                check()
    # The ratio is the median over rounds of (this loader / Keras in the same round): steadier
    # than a ratio of minima when other processes share the cores.
    ratios = {i: statistics.median(t / k for t, k in zip(times[i], times[0])) for i in times}
    rows = [(who, fmt, min(times[i]), times[i], ratios[i]) for i, (who, fmt, _) in enumerate(loaders)]
    if args.keras_archive:
        clear()
        t0 = time.perf_counter()
        target.load_weights(files[".keras"])
        t = time.perf_counter() - t0
        check()
        rows.insert(1, ("keras load_weights", ".keras", t, [t], t / statistics.median(times[0])))

    print(f"{'loader':<20} {'from':<14} {'best s':>8} {'median s':>9} {'ratio':>7}")
    for who, fmt, best, all_times, ratio in rows:
        print(f"{who:<20} {fmt:<14} {best:8.3f} {statistics.median(all_times):9.3f} {ratio:7.2f}")
    print("ratio: median over rounds of the time / Keras load_weights(.weights.h5) in the same round")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
