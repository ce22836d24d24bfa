"""What a ``ckptconv`` command costs besides numpy's import, checkout against checkout.

    python scripts/bench_startup.py [--against OTHER_CHECKOUT] [--rounds 9] [--modules] -- inspect examples/sample.keras

Each round runs the command once per checkout, in turn, each in a fresh process that imports
numpy first and then runs ``python -m ckptconv ARGS`` in process: the CPU seconds from there to
the end are what ckptconv adds to numpy's import (its own imports, the parser, the read, the
output). The table gives the median and the spread over the rounds. CPU, not wall time: on a
shared machine wall time measures the neighbours; numpy's own import (0.15-0.2 s on the
project machine) is the same for every checkout and is timed by ``scripts/bench.py``'s
``start`` group, with the whole command.

``--modules`` also lists, for this checkout, every module the command imports that
``import numpy`` does not, with its own import time (``python -X importtime``, the least over
the rounds: noise only adds), largest first.

The children run in the filesystem root: ``python -m`` puts the working directory first on
``sys.path``, so a command started inside a checkout imports that checkout's ckptconv whatever
``PYTHONPATH`` says. File arguments are made absolute first.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import io, runpy, sys, time
import numpy
sys.argv = ["ckptconv", *sys.argv[1:]]
out, sys.stdout = sys.stdout, io.StringIO()
start = time.process_time()
try:
    runpy.run_module("ckptconv", run_name="__main__")
except SystemExit:
    pass
spent = time.process_time() - start
sys.stdout = out
import ckptconv
print(spent, ckptconv.__file__)
"""


def _env(checkout: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=checkout)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # users have bytecode caches
    return env


def _cpu(checkout: str, args: list[str]) -> float:
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], env=_env(checkout), cwd="/",
                          capture_output=True, text=True, check=True)
    spent, module = done.stdout.split()
    if not module.startswith(os.path.join(os.path.abspath(checkout), "")):
        raise SystemExit(f"{checkout}: the child imported {module}")
    return float(spent)


def _import_times(checkout: str, argv: list[str]) -> dict[str, int]:
    """Each module's own import time in microseconds (``-X importtime``)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], env=_env(checkout), cwd="/",
                          capture_output=True, text=True, check=False)  # a failing command still lists its imports
    found = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            found[m[2]] = int(m[1])
    return found


def _absolute(args: list[str]) -> list[str]:
    return [os.path.abspath(a) if not a.startswith("-") and os.path.exists(a) else a for a in args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="CHECKOUT", help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--modules", action="store_true", help="list the modules imported beyond numpy's")
    parser.add_argument("command", nargs="+", help="the ckptconv arguments (after --)")
    options = parser.parse_args()
    args = _absolute(options.command)
    checkouts = [ROOT] + ([os.path.abspath(options.against)] if options.against else [])
    for checkout in checkouts:
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(checkout, "ckptconv")],
                       env=_env(checkout), check=True)
    spent: dict[str, list[float]] = {c: [] for c in checkouts}
    for _ in range(options.rounds):
        for checkout in checkouts:
            spent[checkout].append(_cpu(checkout, args))
    print(f"ckptconv {' '.join(options.command)}: CPU after numpy's import, {options.rounds} rounds")
    for checkout in checkouts:
        times = spent[checkout]
        print(f"  {checkout}: median {statistics.median(times) * 1e3:.1f} ms "
              f"({min(times) * 1e3:.1f}-{max(times) * 1e3:.1f})")
    if options.modules:
        numpy_own = set(_import_times(ROOT, ["-c", "import numpy"]))
        least: dict[str, int] = {}
        for _ in range(options.rounds):
            for name, us in _import_times(ROOT, ["-m", "ckptconv", *args]).items():
                if name not in numpy_own:
                    least[name] = min(us, least.get(name, us))
        print(f"modules imported beyond numpy's ({len(least)}, {sum(least.values()) / 1e3:.1f} ms in all):")
        for name, us in sorted(least.items(), key=lambda item: -item[1]):
            print(f"  {us / 1e3:6.2f} ms  {name}")


if __name__ == "__main__":
    main()
