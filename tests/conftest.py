"""Session fixtures: real checkpoint files written by the real writers.

Each ``tests/generators/gen_<name>.py OUTDIR`` runs once per session in a subprocess (so the
test process itself never has to import TensorFlow to get fixtures) and writes files plus
``*.expected.json/bin`` records of what the live objects held. Set CKPTCONV_FIXTURE_CACHE to a
directory to reuse generated files across sessions (keyed by the generator's source hash).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

GENERATORS = Path(__file__).parent / "generators"
ROOT = Path(__file__).parent.parent


def _generator_hash(name: str) -> str:
    h = hashlib.sha256()
    for p in (GENERATORS / "_common.py", GENERATORS / f"gen_{name}.py"):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def run_generator(name: str, base: Path) -> Path:
    """Run ``gen_<name>.py`` into a directory (cached by source hash) and return it."""
    cache = os.environ.get("CKPTCONV_FIXTURE_CACHE")
    root = Path(cache) if cache else base
    outdir = root / f"{name}-{_generator_hash(name)}"
    done = outdir / ".done"
    if done.exists():
        return outdir
    outdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow",
               PYTHONPATH=str(GENERATORS))
    proc = subprocess.run(
        [sys.executable, str(GENERATORS / f"gen_{name}.py"), str(outdir)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fixture generator gen_{name}.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    done.write_text("ok")
    return outdir


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``generated("keras")`` -> directory of files written by ``generators/gen_keras.py``."""
    base = tmp_path_factory.mktemp("generated")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = run_generator(name, base)
        return made[name]

    return get


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m ckptconv ARGS`` in a subprocess; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "ckptconv", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )
