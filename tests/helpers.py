"""Test helpers: read the expected records the generators wrote, compare bit-exactly."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckptconv.dtypes import by_name


@dataclass
class Expected:
    name: str
    layer: str
    index: int
    kind: str
    array: np.ndarray
    extra: dict


def load_expected(directory: Path, label: str) -> list[Expected]:
    """The records ``generators/_common.dump_expected`` wrote for ``label``."""
    meta = json.loads((directory / f"{label}.expected.json").read_text())
    blob = (directory / f"{label}.expected.bin").read_bytes()
    out = []
    for item in meta["tensors"]:
        dtype = by_name(item["dtype"]) if item["dtype"] != "object" else np.dtype(object)
        raw = blob[item["offset"] : item["offset"] + item["nbytes"]]
        arr = np.frombuffer(raw, dtype=dtype).reshape(item["shape"]).copy()
        extra = {k: v for k, v in item.items() if k not in ("name", "layer", "index", "kind", "shape", "dtype", "offset", "nbytes")}
        out.append(Expected(item["name"], item.get("layer", ""), item.get("index", 0), item.get("kind", "weight"), arr, extra))
    return out


def assert_bit_exact(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Same shape, same dtype, same bytes."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes(), (
        f"{what}: bytes differ"
    )


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m ckptconv ARGS`` in a subprocess; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "ckptconv", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )


_BLOCKER = """
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked: this test runs without it")
        return None

sys.meta_path.insert(0, _Blocked())
"""


def blocking_env(site: Path, blocked: Iterable[str]) -> dict[str, str]:
    """An environment in which the top-level packages ``blocked`` cannot be imported (as if
    not installed): a ``sitecustomize`` in ``site`` installs a ``sys.meta_path`` finder that
    refuses them. Checks that it works."""
    blocked = tuple(blocked)
    (site / "sitecustomize.py").write_text(_BLOCKER.format(blocked=blocked))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    probe = subprocess.run([sys.executable, "-c", f"import {blocked[0]}"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr, probe.stderr  # the blocker works
    return env


def run_cli_many(
    env: dict[str, str], commands: Sequence[Sequence[object]], *, never_imported: Iterable[str] = ()
) -> list[subprocess.CompletedProcess]:
    """Several ``ckptconv`` commands in one subprocess (one interpreter start) with ``env``;
    fails if any package of ``never_imported`` was imported along the way."""
    driver = (
        "import contextlib, io, json, sys\n"
        "from ckptconv.cli import main\n"
        "results = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        status = main(argv)\n"
        "    results.append([status, out.getvalue(), err.getvalue()])\n"
        f"leaked = [m for m in sys.modules if m.partition('.')[0] in {tuple(never_imported)!r}]\n"
        "assert not leaked, leaked\n"
        "print(json.dumps(results))\n"
    )
    argv = json.dumps([[str(a) for a in command] for command in commands])
    proc = subprocess.run([sys.executable, "-c", driver, argv], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    return [subprocess.CompletedProcess(c, status, out, err) for c, (status, out, err) in zip(commands, results)]


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"256k"``, ``"1m"``) mounted at ``directory/tiny``: a disk that
    fills up. Skips the test where mounting is not allowed (it needs root and a container
    that may mount)."""
    import pytest

    mount = directory / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
