"""Transplant: a ``.keras`` architecture plus weights from anywhere, saved as a new model."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NoSuchFileError, OutputError, UsageError
from ..mapping.spec import load_spec
from ..options import keyword_options
from ..store import Store
from .load import load_into, open_source
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
    leaves nothing behind; an existing ``out`` is replaced only with ``force=True``.

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
        OutputError: ``out`` exists without ``force``, or is an input.
        UnsupportedError: Keras is not installed (the message says what to install).
        LoadError: the weights do not fit (strict), nothing written.
    """

    started = time.perf_counter()
    out_path = os.path.abspath(os.fspath(out))
    suffix = next((s for s in _OUT_SUFFIXES if out_path.endswith(s)), None)
    if suffix is None:
        raise UsageError(
            "the output must end in .keras (whole model) or .weights.h5 (weights only)",
            option="out",
            path=out,
        )
    inputs = [os.fspath(target)]
    if isinstance(src, (str, os.PathLike)):
        inputs.append(os.fspath(src))
    for given in inputs:
        if os.path.exists(given) and os.path.exists(out_path) and os.path.samefile(given, out_path):
            raise OutputError("the output is one of the inputs; choose another path", path=out)
    if os.path.exists(out_path) and not force:
        raise OutputError("the output exists; pass {opt:force=True} to replace it", path=out)
    out_dir = os.path.dirname(out_path)
    if not os.path.isdir(out_dir):
        raise OutputError("the output's directory does not exist", path=out)

    if mapping is not None and by_order:
        raise UsageError("{opt:by_order=True} matches by position and takes no mapping spec", option="by_order")
    if mapping is not None:
        mapping = load_spec(mapping)  # a broken spec fails here, in well under a second
    if not os.path.exists(os.fspath(target)):
        raise NoSuchFileError(path=target)
    store, opened = open_source(src)  # fail fast on a bad source, before Keras builds anything
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
    _save_atomically(model, out_path, suffix, fsync=fsync)
    return TransplantResult(out_path, report, time.perf_counter() - started)


def _save_atomically(model: Any, out_path: str, suffix: str, *, fsync: bool) -> None:
    import tempfile


    directory, name = os.path.split(out_path)
    # Keras insists on the suffix, so the temporary name keeps it.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=directory)
    os.close(fd)
    try:
        if suffix == ".keras":
            model.save(tmp, overwrite=True)
        else:
            model.save_weights(tmp, overwrite=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, out_path)
        if fsync:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write the output: {e.strerror or e}", path=out_path) from e
        raise
