#!/usr/bin/env python3
"""Time ``ckptconv.formats.open`` in-process: what opening a checkpoint costs without the
interpreter's start-up, the imports and the printing that ``ckptconv inspect`` adds.

    .venv/bin/python scripts/bench_open.py CKPT [CKPT ...] [--runs 7]
    .venv/bin/python scripts/bench_open.py CKPT --against /path/to/other/checkout

Each checkpoint is opened once to warm the page cache and the imports, then ``--runs`` times;
the median and the minimum of the wall time and of the process CPU time are printed (the CPU
time varies less on a shared machine). With ``--against``, the same measurement runs in a
subprocess for this checkout and for the other one (its ``ckptconv`` first on the path), taken
in turn ``--rounds`` times, so that both see the same noise: an A/B comparison of two versions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(paths: list[str], runs: int) -> dict[str, dict[str, float]]:
    """Per path: median and minimum wall and CPU seconds of ``formats.open``."""
    import ckptconv
    from ckptconv import formats

    print(f"ckptconv from {os.path.dirname(os.path.dirname(ckptconv.__file__))}", file=sys.stderr)
    out = {}
    for path in paths:
        formats.open(path)
        walls, cpus = [], []
        for _ in range(runs):
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            formats.open(path)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        out[path] = {"wall": statistics.median(walls), "wall_min": min(walls),
                     "cpu": statistics.median(cpus), "cpu_min": min(cpus)}
    return out


def in_subprocess(checkout: str, paths: list[str], runs: int) -> dict[str, dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=checkout)
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench_open import measure; "
            "print(json.dumps(measure(sys.argv[3:], int(sys.argv[2]))))")
    proc = subprocess.run(  # from the scripts directory: no ckptconv package in the way
        [sys.executable, "-c", code, os.path.join(HERE, "scripts"), str(runs), *paths],
        env=env, capture_output=True, text=True, check=True, cwd=os.path.join(HERE, "scripts"),
    )
    print(proc.stderr.strip(), file=sys.stderr)
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="checkpoints to open")
    p.add_argument("--runs", type=int, default=7, help="timed opens per checkpoint (default 7)")
    p.add_argument("--against", metavar="CHECKOUT", help="another checkout to compare with")
    p.add_argument("--rounds", type=int, default=3, help="turns of each checkout with --against")
    args = p.parse_args(argv)
    if args.against is None:
        sys.path.insert(0, HERE)  # this checkout's ckptconv
        for path, t in measure(args.paths, args.runs).items():
            print(f"{path}: wall {t['wall'] * 1e3:.1f} ms (min {t['wall_min'] * 1e3:.1f}), "
                  f"cpu {t['cpu'] * 1e3:.1f} ms (min {t['cpu_min'] * 1e3:.1f})")
        return 0
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for label, checkout in (("this", HERE), ("against", os.path.abspath(args.against))):
            for path, t in in_subprocess(checkout, args.paths, args.runs).items():
                for key in ("wall", "cpu"):
                    results.setdefault(f"{path} [{label}]", {}).setdefault(key, []).append(t[key])
    for name, t in results.items():
        print(f"{name}: wall {statistics.median(t['wall']) * 1e3:.1f} ms, "
              f"cpu {statistics.median(t['cpu']) * 1e3:.1f} ms (median of {args.rounds} medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
