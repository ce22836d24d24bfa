"""One module per on-disk format, all offering the same verbs.

Each format module defines:

* ``FORMAT``: the short name stores report (``keras-h5``, ``tf-checkpoint``, ...);
* ``sniff(path: Path, head: bytes) -> bool``: does this path hold this format? Decided from
  the content (magic bytes, zip members, directory layout), never from the extension;
* ``open(path: Path, **options) -> Store``: read the metadata and return a lazy store.

:func:`open` tries them in order and returns the first store.
"""

from __future__ import annotations

import glob
import importlib
import os
import struct
import zipfile
import zlib
from pathlib import Path
from types import ModuleType

from ..errors import CkptconvError, CorruptFileError, FormatError
from ..store import Store

__all__ = ["open", "detect", "FORMAT_MODULES"]

# Order matters only where two formats could claim one path; content decides each.
FORMAT_MODULES = (
    "keras_archive",
    "keras_sharded",
    "keras_weights",
    "keras_legacy",
    "safetensors",
    "tf_checkpoint",
)

HEAD_BYTES = 4096


def _modules() -> list[ModuleType]:
    modules = []
    for name in FORMAT_MODULES:
        try:
            modules.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as e:  # a format module not written yet
            if e.name != f"{__name__}.{name}":
                raise
    return modules


def _head(path: Path) -> bytes:
    if not path.is_file():
        return b""
    try:
        with path.open("rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path=path) from e


def detect(path: str | os.PathLike[str]) -> ModuleType:
    """The format module that reads ``path``.

    Raises:
        FormatError: no format recognises the content (or the path does not exist).
    """
    p = Path(path)
    head = _head(p)
    for module in _modules():
        try:
            claimed = module.sniff(p, head)
        except Exception:  # noqa: BLE001 - a damaged file makes a library raise anything
            claimed = False
        if claimed:
            return module
    if not p.exists() and not any(p.parent.glob(glob.escape(p.name) + ".*")):
        raise FormatError("no such file or directory", path=p)
    if p.is_file() and p.stat().st_size == 0:
        raise FormatError("the file is empty: not a checkpoint", path=p)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        raise FormatError(
            "an HDF5 file, but not one with Keras weights ckptconv can read (no layer_names "
            "attribute, no layers/vars groups), or a damaged one; check that the file is "
            "complete",
            path=p,
        )
    if head.startswith(b"PK\x03\x04"):
        raise FormatError(
            "a zip archive, but not a readable .keras model (no model.weights.h5 or "
            "config.json member, or a damaged archive)",
            path=p,
        )
    raise FormatError(
        "not a checkpoint ckptconv can read (expected Keras .h5/.weights.h5/.keras, a "
        "sharded .weights.json, a TensorFlow checkpoint or safetensors)",
        path=p,
    )


def open(path: str | os.PathLike[str], **options: object) -> Store:  # noqa: A001
    """Open a checkpoint of any supported format as a lazy :class:`~ckptconv.Store`.

    Reads metadata only. The format is detected from the content, not the extension.

    Args:
        path: A file, a directory, or a TensorFlow checkpoint prefix.
        **options: Format options, e.g. ``check_crc=False`` to skip TensorFlow's per-tensor
            checksum when reading data.

    Raises:
        CkptconvError: the path is missing, of no known format, damaged or hostile.
    """
    module = detect(path)
    try:
        return module.open(Path(path), **options)
    except CkptconvError:
        raise
    except _LOW_LEVEL_ERRORS as e:
        raise CorruptFileError(
            f"damaged {module.FORMAT} file: {type(e).__name__}: {_one_line(e)}", path=path
        ) from e


# What h5py, zipfile, json and struct raise on damaged bytes: a reader that lets one through
# still gets a one-line CorruptFileError naming the file.
_LOW_LEVEL_ERRORS = (
    OSError, ValueError, KeyError, IndexError, TypeError, UnicodeError, RuntimeError,
    EOFError, OverflowError, zipfile.BadZipFile, zlib.error, struct.error, RecursionError,
)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]
