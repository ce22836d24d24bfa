"""Time ``ckptconv.formats.open()`` of one file in process, phase by phase, checkout against checkout.

    python scripts/bench_open.py FILE [--against OTHER_CHECKOUT] [--rounds 7] [--opens 3]

Each round starts one child process per checkout, in turn (so both see the same moment of a
shared machine); a child imports ckptconv from its checkout, opens FILE once to warm up, then
``--opens`` times, and reports the median. Phases are the reader functions it finds in that
checkout (JSON decoding, the config.json layer walk, the HDF5 metadata pass, the vars walk,
entry building; the safetensors header, entries and Keras order; the TF index, object graph,
object roles, plan, Keras order and Store), timed where the readers call them (the TF
``_plan`` includes ``object_roles``; entries are what ``open`` spends besides), and after each
open ``inspect``'s table of the store's weights (``inspect table``, outside ``cpu``). Times are
CPU seconds of the process (wall time on a shared machine measures the neighbours) and wall
seconds; the table gives the median over the rounds. The whole command (start-up, imports,
printing) is ``scripts/bench.py``'s business.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (module, function) pairs timed where they are looked up at call time
PHASES = [
    ("ckptconv.formats.keras_archive", "_read_config"),
    ("ckptconv.formats.keras_archive", "layer_infos"),
    ("ckptconv.formats.keras_archive", "key_names"),
    ("ckptconv.formats.keras_archive", "open_h5"),
    ("ckptconv.formats.keras_archive", "collect_vars"),
    ("ckptconv.formats.keras_archive", "build_entries"),
    ("ckptconv.formats.keras_weights", "open_h5"),
    ("ckptconv.formats.keras_weights", "collect_vars"),
    ("ckptconv.formats.keras_weights", "build_entries"),
    ("ckptconv.formats.safetensors", "read_header"),
    ("ckptconv.formats.safetensors", "_entries"),
    ("ckptconv.formats.safetensors", "keras_order"),
    ("ckptconv.formats.tf_checkpoint", "_read_index"),
    ("ckptconv.formats.tf_checkpoint", "_load_object_graph"),
    ("ckptconv.formats.tf_checkpoint", "object_roles"),
    ("ckptconv.formats.tf_checkpoint", "_plan"),
    ("ckptconv.formats.tf_checkpoint", "keras_order"),
    ("ckptconv.formats.tf_checkpoint", "Store"),
]

CHILD = r"""
import importlib, json, statistics, sys, time
from pathlib import Path
import ckptconv
from ckptconv import formats
path, opens, phases = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
spent = {}
def timed(label, fn):
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.process_time() - start
    return wrapper
for module_name, name in phases:
    module = importlib.import_module(module_name)
    if hasattr(module, name):
        setattr(module, name, timed(name, getattr(module, name)))
from ckptconv.cli.inspect_cmd import format_table
runs = []
for i in range(opens + 1):
    spent.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    with formats.open(path) as store:
        pass
    if i:
        runs.append(dict(spent, cpu=time.process_time() - cpu, wall=time.perf_counter() - wall))
        start = time.process_time()
        format_table(store.format, store.path, store.entries())
        runs[-1]["inspect table"] = time.process_time() - start
print(json.dumps({"package": ckptconv.__file__,
                  "times": {k: statistics.median(r[k] for r in runs) for k in runs[0]}}))
"""


def child(checkout: Path, path: str, opens: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # users have byte-code caches
    out = subprocess.run(
        [sys.executable, "-c", CHILD, path, str(opens), json.dumps(PHASES)],
        env=env, cwd=checkout, check=True, capture_output=True, text=True,
    ).stdout
    result = json.loads(out.splitlines()[-1])
    if not result["package"].startswith(str(checkout)):
        raise SystemExit(f"{checkout}: imported {result['package']} instead")
    return result["times"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="the checkpoint to open")
    p.add_argument("--against", type=Path, help="another checkout of ckptconv to compare with")
    p.add_argument("--rounds", type=int, default=7, help="child processes per checkout (default 7)")
    p.add_argument("--opens", type=int, default=3, help="opens per child after a warm-up (default 3)")
    args = p.parse_args(argv)
    checkouts = [ROOT] + ([args.against.resolve()] if args.against else [])
    rounds: dict[Path, list[dict[str, float]]] = {c: [] for c in checkouts}
    for _ in range(args.rounds):
        for checkout in checkouts:
            rounds[checkout].append(child(checkout, str(Path(args.file).resolve()), args.opens))
    labels = ["wall", "cpu"] + [n for _, n in PHASES if any(n in r for c in checkouts for r in rounds[c])]
    labels = list(dict.fromkeys(labels))
    print(f"{args.file}: median of {args.rounds} rounds, ms (phases: CPU)")
    print(f"{'':16s}" + "".join(f"{str(c)[-24:]:>26s}" for c in checkouts))
    for label in labels:
        cells = []
        for checkout in checkouts:
            values = [r[label] for r in rounds[checkout] if label in r]
            cells.append(f"{statistics.median(values) * 1000:26.1f}" if values else f"{'-':>26s}")
        print(f"{label:16s}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
