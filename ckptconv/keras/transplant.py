"""Transplant: a ``.keras`` architecture plus weights from anywhere, saved as a new model."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import OutputError
from ..store import Store
from .load import load_into, open_source
from .report import LoadReport
from .targets import build_keras_model

__all__ = ["transplant", "TransplantResult"]


@dataclass
class TransplantResult:
    """What :func:`transplant` wrote."""

    out: str
    report: LoadReport
    seconds: float


_OUT_SUFFIXES = (".keras", ".weights.h5")


def transplant(
    src: str | os.PathLike[str] | Store | Mapping[str, np.ndarray],
    target: str | os.PathLike[str],
    out: str | os.PathLike[str],
    mapping: Any = None,
    *,
    unsafe: bool = False,
    force: bool = False,
    fsync: bool = True,
    **load_options: Any,
) -> TransplantResult:
    """Build the model a ``.keras`` file describes, load ``src`` into it, save it as ``out``.

    ``out`` ends in ``.keras`` (the whole model) or ``.weights.h5`` (weights only). It is
    written to a temporary file next to it, flushed and renamed into place, so a failed run
    leaves nothing behind; an existing ``out`` is replaced only with ``force=True``, never
    when it is one of the input files, and never by two writers at once.

    Args:
        src: The weights: any checkpoint :func:`ckptconv.open` reads, a store or arrays.
        target: A ``.keras`` file holding the architecture (its own weights are replaced).
        out: The output path.
        mapping: A mapping spec, as for :func:`load_into`.
        unsafe: Let Keras build models holding Lambda bytecode (only for trusted files).
        force: Replace an existing ``out``.
        fsync: Flush the output to disk before the rename.
        **load_options: Passed to :func:`load_into` (``strict``, ``by_order``, ``cast``,
            ``only``, ``freeze``, ``dtype``, ``include_all``).

    Raises:
        OutputError: ``out`` has another suffix, exists without ``force``, is an input file
            (a shard of a sharded input included), or does not fit in the free space.
        LoadError: the weights do not fit (strict), nothing written.
    """
    from ..writers.outputs import atomic_file, plan_output_set

    started = time.perf_counter()
    out_path = os.path.abspath(os.fspath(out))
    suffix = next((s for s in _OUT_SUFFIXES if out_path.endswith(s)), None)
    if suffix is None:
        raise OutputError(
            "the output must end in .keras (whole model) or .weights.h5 (weights only)",
            path=out,
        )
    inputs = [os.fspath(target), *([os.fspath(src)] if isinstance(src, (str, os.PathLike)) else [])]
    plan_output_set(out_path, [out_path], force=force, inputs=inputs)  # fail fast, before Keras

    store, opened = open_source(src)  # fail fast on a bad source, before Keras builds anything
    inputs += store.files
    try:
        model = build_keras_model(target, unsafe=unsafe)
        # The model is ours and nothing is written on failure: no need to keep old values.
        load_options.setdefault("rollback", False)
        report = load_into(model, store, mapping, **load_options)
    finally:
        if opened:
            store.close()
    # libhdf5 crashes the process on a full disk (exit 139): make sure the weights fit first
    with atomic_file(out_path, suffix=f".tmp{suffix}", force=force, fsync=fsync, inputs=inputs,
                     need=_saved_size(model)) as tmp:
        if suffix == ".keras":
            model.save(tmp, overwrite=True)
        else:
            model.save_weights(tmp, overwrite=True)
    return TransplantResult(out_path, report, time.perf_counter() - started)


def _saved_size(model: Any) -> int:
    """A generous estimate of the saved file's size: the weights' bytes, plus a tenth, plus
    room for HDF5's and the zip's own structures."""
    from ..dtypes import by_name

    total = 0
    for w in model.weights:
        try:
            itemsize = by_name(str(getattr(w.dtype, "name", w.dtype))).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 8
        total += int(np.prod(tuple(w.shape), dtype=np.int64)) * itemsize
    return total * 11 // 10 + 4096 * len(model.weights) + (1 << 20)
