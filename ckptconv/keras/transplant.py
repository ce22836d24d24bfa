"""Transplant: a ``.keras`` architecture plus weights from anywhere, saved as a new model."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NoSuchFileError, UsageError
from ..formats import open_source
from ..mapping.spec import load_spec
from ..options import keyword_options
from ..store import Store
from .load import load_into
from .report import LoadReport
from .targets import build_keras_model

__all__ = ["transplant", "TransplantResult"]


@dataclass
class TransplantResult:
    """What :func:`transplant` wrote.

    Attributes:
        out: The file written (absolute path).
        report: The :class:`LoadReport` of the load into the built model.
        seconds: Wall time.
    """

    out: str
    report: LoadReport
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data, as ``transplant --json`` prints it."""
        return {"out": self.out, "seconds": round(self.seconds, 3), "report": self.report.to_json()}


_OUT_SUFFIXES = (".keras", ".weights.h5")


@keyword_options
def transplant(
    src: str | os.PathLike[str] | Store | Mapping[str, np.ndarray],
    target: str | os.PathLike[str],
    out: str | os.PathLike[str],
    mapping: Any = None,
    *,
    unsafe: bool = False,
    force: bool = False,
    fsync: bool = True,
    strict: bool = True,
    include_all: bool = False,
    by_order: bool = False,
    cast: bool = False,
    freeze: bool | str = False,
    only: str | Iterable[str] | None = None,
    dtype: str | np.dtype | None = None,
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
        strict, include_all, by_order, cast, freeze, only, dtype: As for :func:`load_into`.

    Everything that can be checked without Keras is checked first, before Keras (and its
    backend) is imported: the options, the output path, the spec, the source.

    Raises:
        UsageError: ``out`` has another suffix, or ``by_order`` with a mapping.
        NoSuchFileError: ``target`` (or ``src``) does not exist.
        SpecError: the mapping spec is invalid.
        OutputError: ``out`` exists without ``force``, is an input file (a shard of a sharded
            input included), is being written by another process, or does not fit in the
            free space.
        UnsupportedError: Keras is not installed (the message says what to install).
        LoadError: the weights do not fit (strict), nothing written.
    """
    from ..writers.outputs import atomic_file, plan_output_set

    started = time.perf_counter()
    out_path = os.path.abspath(os.fspath(out))
    suffix = next((s for s in _OUT_SUFFIXES if out_path.endswith(s)), None)
    if suffix is None:
        raise UsageError(
            "the output must end in .keras (whole model) or .weights.h5 (weights only)",
            option="out",
            path=out,
        )
    inputs = [os.fspath(target), *([os.fspath(src)] if isinstance(src, (str, os.PathLike)) else [])]
    plan_output_set(out_path, [out_path], force=force, inputs=inputs)  # fail fast, before Keras

    if mapping is not None and by_order:
        raise UsageError("{opt:by_order=True} matches by position and takes no mapping spec", option="by_order")
    if mapping is not None:
        mapping = load_spec(mapping)  # a broken spec fails here, in well under a second
    if not os.path.exists(os.fspath(target)):
        raise NoSuchFileError(path=target)
    store, opened = open_source(src)  # fail fast on a bad source, before Keras builds anything
    inputs += store.files
    try:
        model = build_keras_model(target, unsafe=unsafe)
        # The model is ours and nothing is written on failure: no check pass is needed to
        # keep its old values.
        report = load_into(
            model, store, mapping, strict=strict, include_all=include_all, by_order=by_order,
            cast=cast, freeze=freeze, only=only, dtype=dtype, check_first=False,
        )
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
