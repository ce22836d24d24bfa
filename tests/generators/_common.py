"""Shared by the fixture generators: they run in a subprocess with TensorFlow/Keras and write
real checkpoint files plus the expected values the live objects held (``expected`` records).

A record is a dict with ``name``, ``layer``, ``index``, ``kind`` and ``array`` (a numpy array,
any dtype incl. ml_dtypes bfloat16). :func:`dump_expected` writes them as JSON + raw bytes,
which ``tests/helpers.py`` reads back without TensorFlow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def dtype_name(dtype) -> str:
    import numpy as np
    import ml_dtypes

    dtype = np.dtype(dtype)
    for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz"):
        if dtype == np.dtype(getattr(ml_dtypes, name)):
            return name
    return dtype.name


def dump_expected(outdir: str | Path, label: str, records: list[dict], **extra) -> None:
    """Write ``label.expected.json`` and ``label.expected.bin`` into ``outdir``."""
    import numpy as np

    outdir = Path(outdir)
    blob = bytearray()
    items = []
    for r in records:
        arr = np.asarray(r["array"])
        arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # ascontiguousarray makes 0-d 1-d
        item = {k: v for k, v in r.items() if k != "array"}
        item.update(
            shape=list(arr.shape),
            dtype=dtype_name(arr.dtype),
            offset=len(blob),
            nbytes=arr.nbytes,
        )
        blob += arr.tobytes()
        items.append(item)
    (outdir / f"{label}.expected.bin").write_bytes(bytes(blob))
    (outdir / f"{label}.expected.json").write_text(json.dumps({"tensors": items, **extra}, indent=1))


def keras3_records(model) -> list[dict]:
    """Expected entries of a live Keras 3 model: canonical name, layer, index, value.

    The canonical name is ``variable.path`` without the model's own name in front (Keras 3
    puts it there for Sequential and subclassed models, not for functional ones; files
    never record it).
    """
    import numpy as np

    records = []
    seen_layers: dict[str, int] = {}
    prefix = model.name + "/"
    for v in model.weights:
        path = v.path[len(prefix):] if v.path.startswith(prefix) else v.path
        layer = path.rsplit("/", 1)[0] if "/" in path else ""
        index = seen_layers.get(layer, 0)
        seen_layers[layer] = index + 1
        records.append(
            {"name": path, "layer": layer, "index": index, "kind": "weight", "array": np.asarray(v.numpy())}
        )
    return records


def tfkeras_records(model) -> list[dict]:
    """Expected entries of a live tf-keras model under the legacy HDF5 canonical rule:
    weight name without ``:0``, prefixed with the top-level layer's name unless it already
    starts with it."""
    import numpy as np

    records = []
    seen_layers: dict[str, int] = {}
    for layer in model.layers:
        for w in layer.weights:
            name = w.name[:-2] if w.name.endswith(":0") else w.name
            if not (name == layer.name or name.startswith(layer.name + "/")):
                name = f"{layer.name}/{name}"
            owner = name.rsplit("/", 1)[0] if "/" in name else ""
            index = seen_layers.get(owner, 0)
            seen_layers[owner] = index + 1
            records.append({"name": name, "layer": owner, "index": index, "kind": "weight", "array": np.asarray(w.numpy())})
    return records
