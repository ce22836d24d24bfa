"""Test helpers: read the expected records the generators wrote, compare bit-exactly."""

from __future__ import annotations

import json
import subprocess
import sys
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
