"""Session fixtures: real checkpoint files written by the real writers.

Each ``tests/generators/gen_<name>.py OUTDIR`` runs once per session in a subprocess (so the
test process itself never has to import TensorFlow to get fixtures) and writes files plus
``*.expected.json/bin`` records of what the live objects held. Set CKPTCONV_FIXTURE_CACHE to a
directory to reuse generated files across sessions (keyed by the generator's source and the
versions of the writers installed: Keras, TensorFlow, tf-keras, JAX, torch, h5py, numpy).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

GENERATORS = Path(__file__).parent / "generators"
ROOT = Path(__file__).parent.parent


# The writers whose versions decide what a generator writes: a cached fixture from another
# version of one of them is not the fixture this session would write.
WRITERS = ("keras", "tensorflow", "tf-keras", "jax", "torch", "h5py", "numpy", "orbax-checkpoint", "tensorstore")


def _writer_versions() -> str:
    from importlib import metadata

    found = []
    for dist in WRITERS:
        try:
            found.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist}==none")
    return ";".join(found)


def _generator_hash(name: str) -> str:
    """Key of a generator's cached output: its source, the shared code, the writers' versions."""
    h = hashlib.sha256()
    for p in (GENERATORS / "_common.py", GENERATORS / f"gen_{name}.py"):
        h.update(p.read_bytes())
    h.update(_writer_versions().encode())
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
    # test processes sharing a cache (pytest-xdist workers, parallel runs) generate it once
    with open(outdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            _generate(name, outdir)
            done.write_text("ok")
    return outdir


def _generate(name: str, outdir: Path) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow",
               PYTHONPATH=os.pathsep.join(filter(None, [str(GENERATORS), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, str(GENERATORS / f"gen_{name}.py"), str(outdir)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fixture generator gen_{name}.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


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
