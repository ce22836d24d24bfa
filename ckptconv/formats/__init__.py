"""One module per on-disk format, all offering the same verbs.

Each format module defines:

* ``FORMAT``: the short name stores report (``keras-h5``, ``tf-checkpoint``, ...);
* ``sniff(path: str, head: bytes) -> bool``: does this path hold this format? Decided from
  the content (magic bytes, zip members, directory layout), never from the extension;
* ``open(path: str, *, <options>) -> Store``: read the metadata and return a lazy store.
  Its options are keyword-only and explicit (never ``**options``): the subset of
  :func:`open`'s options the format uses, under the same names and defaults (today
  ``check_crc``, for formats that record checksums). :func:`open` passes each format only the
  options it declares, and rejects a name it does not know itself.

Both take the path as a ``str`` (:func:`open` passes ``os.fspath(path)``; either also takes an
``os.PathLike``): a reader that wants :mod:`pathlib` makes its ``Path`` itself, so that reading
the common formats does not import it.

:func:`open` asks each in order whether it claims the path and opens it with the first.
"""

from __future__ import annotations

import builtins
import importlib
import os
import stat
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

from ..errors import (
    FETCH_AGAIN,
    CkptconvError,
    CorruptFileError,
    FormatError,
    LoadError,
    NoSuchFileError,
)
from ..gcpause import paused_gc
from ..options import keyword_options, option_names
from ..store import Store
from ._zip import damaged_start, damaged_zip, first_member_kind

__all__ = ["open", "open_source", "detect", "FORMAT_MODULES", "regular_file", "load_index", "MAX_INDEX_BYTES"]

# Order matters only where two formats could claim one path; content decides each.
FORMAT_MODULES = (
    "keras_archive",
    "keras_sharded",
    "keras_weights",
    "keras_legacy",
    "safetensors",
    "tf_checkpoint",
    "pytorch",
    "keras_orbax",
)

HEAD_BYTES = 4096


def _modules(path: str, head: bytes) -> Iterator[ModuleType]:
    """The format modules in order, each imported only when its turn comes and only if it
    may claim ``path`` (see :func:`_may_claim`): inspecting a safetensors file or a TF
    checkpoint then never imports h5py or the Keras readers."""
    for name in FORMAT_MODULES:
        if not _may_claim(name, path, head):
            continue
        try:
            yield importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:  # a format module not written yet
            if e.name != f"{__name__}.{name}":
                raise


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"  # _hdf5.HDF5_MAGIC, without importing h5py


# What a directory must hold (a name, a name's ending) for each format that reads
# directories other than by config.json or a .weights.json index to claim it (see each
# module's sniff): Hugging Face safetensors weights or their index; a TF checkpoint's state
# file, index or SavedModel variables; PyTorch weights or their index.
_DIRECTORY_NAMES = {
    "safetensors": ({"model.safetensors"}, (".safetensors.index.json",)),
    "tf_checkpoint": ({"checkpoint", "variables"}, (".index",)),
    "pytorch": ({"pytorch_model.bin"}, (".bin.index.json",)),
}


def _may_claim(name: str, path: str | os.PathLike[str], head: bytes) -> bool:
    """False when the format module ``name`` certainly does not claim ``path``: the first
    test its ``sniff`` makes (a zip, JSON or HDF5 head; a directory holding ``config.json``,
    a shard index, or the names of :data:`_DIRECTORY_NAMES`; a directory at all, for Orbax;
    a TF checkpoint's file names, for a file) fails. Keeping these few tests here spares importing readers (the Keras ones and h5py,
    the TF and torch ones for a directory) that cannot claim a path; tests/test_formats_detect.py
    checks that each is implied by the module's own ``sniff``."""
    if name == "keras_archive":  # a zip, or a directory with config.json and the weights
        if os.path.isdir(path):
            return os.path.isfile(os.path.join(path, "config.json"))
        return head.startswith(b"PK\x03\x04") and first_member_kind(head) != "torch.save file"
    if name == "keras_sharded":  # a JSON index, or a directory holding one
        return head.lstrip().startswith(b"{") or (os.path.isdir(path) and _holds(path, ".weights.json"))
    if name in ("keras_weights", "keras_legacy"):  # an HDF5 file
        return head.startswith(_HDF5_MAGIC)
    if name == "keras_orbax":  # a directory of steps, a step, or a pytree directory
        return os.path.isdir(path)
    if name == "tf_checkpoint" and os.path.isfile(path):  # a state file, an index, a data file
        base = os.path.basename(path)
        return base == "checkpoint" or base.endswith(".index") or ".data-" in base
    if name in _DIRECTORY_NAMES and os.path.isdir(path):
        try:
            names = os.listdir(path)
        except OSError:
            return True  # its sniff decides (and says why it cannot read the directory)
        exact, endings = _DIRECTORY_NAMES[name]
        return any(n in exact or n.endswith(endings) for n in names)
    return True


def _holds(directory: str | os.PathLike[str], suffix: str) -> bool:
    """Whether ``directory`` holds an entry whose name ends in ``suffix`` (unreadable: no)."""
    try:
        return any(name.endswith(suffix) for name in os.listdir(directory))
    except OSError:
        return False


_SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def regular_file(path: str | os.PathLike[str], *, directory_ok: bool = False) -> os.stat_result:
    """Stat ``path`` (following links) and refuse anything but a regular file (or, with
    ``directory_ok``, a directory): reading a FIFO or a device would block or never end.

    Raises:
        NoSuchFileError: the path does not exist.
        FormatError: the path is a FIFO, device, socket (or directory).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NoSuchFileError(path=path) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path=path) from e
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFREG or (directory_ok and kind == stat.S_IFDIR):
        return st
    what = _SPECIAL.get(kind, "not a regular file")
    raise FormatError(
        f"{what}, not a regular file: ckptconv reads checkpoint files (and directories) only",
        path=path,
    )


MAX_INDEX_BYTES = 64 * 2**20
"""The largest shard index JSON read (a set's index is a few bytes per tensor)."""


def load_index(path: str | os.PathLike[str]) -> dict:
    """Parse a sharded set's index JSON (``{"metadata": {...}, "weight_map": {...}}``): the one
    reader of the Hugging Face safetensors index and of Keras' ``.weights.json``.

    Raises:
        CorruptFileError: the file is larger than 64 MiB, not JSON (or nested beyond what the
            parser allows), or has no ``weight_map`` object.
        OSError: the file cannot be read.
    """
    import json  # here: an HDF5 file or a TF checkpoint is read without it

    if os.path.getsize(path) > MAX_INDEX_BYTES:
        raise CorruptFileError("the shard index is implausibly large", path=path)
    try:
        with builtins.open(path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptFileError(f"the shard index is not valid JSON ({e}); {FETCH_AGAIN}", path=path) from e
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise CorruptFileError("the shard index has no weight_map object", path=path)
    return index


def _head(path: str | os.PathLike[str]) -> bytes:
    if not os.path.isfile(path):
        return b""
    try:
        with builtins.open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path=path) from e


def detect(path: str | os.PathLike[str]) -> ModuleType:
    """The format module that reads ``path``.

    Raises:
        NoSuchFileError: the path does not exist.
        FormatError: no format recognises the content.
    """
    p = os.fspath(path)
    if os.path.lexists(p):
        regular_file(p, directory_ok=True)  # a FIFO or a device would hang the sniffers
    head = _head(p)
    sniff_error: Exception | None = None
    for module in _modules(p, head):
        try:
            claimed = module.sniff(p, head)
        except Exception as e:  # noqa: BLE001 - a damaged file makes a library raise anything
            claimed = False
            sniff_error = sniff_error or e
        if claimed:
            return module
    if not os.path.exists(p) and os.path.isfile(p + ".index.json"):
        # a sharded set written to this name (`convert --max-shard-size`) is its index
        raise NoSuchFileError(
            f"no such file; the sharded set written under this name is read through its index: "
            f"{os.path.basename(p)}.index.json",
            path=p,
        )
    if not os.path.exists(p) and not _named_beside(p):
        raise NoSuchFileError(path=p)
    if os.path.isfile(p) and os.path.getsize(p) == 0:
        raise FormatError("the file is empty: not a checkpoint", path=p)
    if os.path.isfile(p):
        _explain_unclaimed(p, head, sniff_error)
    raise FormatError(
        "not a checkpoint ckptconv can read (expected Keras .h5/.weights.h5/.keras (or its "
        "unzipped directory), a sharded .weights.json, an Orbax checkpoint directory, a "
        "TensorFlow checkpoint, safetensors or a torch.save file)",
        path=p,
    )


def _named_beside(path: str) -> bool:
    """Whether files named ``path.*`` exist (a TensorFlow checkpoint prefix's ``.index``)."""
    import glob

    return any(glob.iglob(glob.escape(path) + ".*"))


def _explain_unclaimed(p: str, head: bytes, sniff_error: Exception | None = None) -> None:
    """Raise the most useful error for a file of a known container type that no format
    claims: damaged (it does not even open, or a format's check failed on it) or well-formed
    but of another kind."""
    if head.startswith(_HDF5_MAGIC):
        import h5py

        from ._hdf5_file import describe_h5py_error, describe_open_error, from_h5py

        try:
            h5py.File(p, "r").close()
        except Exception as e:  # noqa: BLE001 - libhdf5 reports damage as anything
            raise CorruptFileError(describe_open_error(e), path=p) from e
        if sniff_error is not None and from_h5py(sniff_error):  # libhdf5's words, made one line
            raise CorruptFileError(describe_h5py_error(sniff_error), path=p) from sniff_error
        if sniff_error is not None:
            raise CorruptFileError(
                f"a damaged HDF5 file: its structure cannot be read "
                f"({type(sniff_error).__name__}: {_one_line(sniff_error)}); {FETCH_AGAIN}",
                path=p,
            ) from sniff_error
        raise FormatError(
            "an HDF5 file, but without Keras weights (no layer_names attribute, no "
            "layers/vars groups)",
            path=p,
        )
    if head.startswith(b"PK\x03\x04"):
        import zipfile

        try:
            zipfile.ZipFile(p).close()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
            raise damaged_zip(p, e, first_member_kind(head)) from e
        raise FormatError(
            "a zip archive that is neither a .keras model (model.weights.h5, config.json) nor "
            "a torch.save file (<archive>/data.pkl)",
            path=p,
        )
    if len(head) >= 22 and not head.startswith(b"PK\x03\x04"):
        # a zip archive whose first bytes were damaged: its end still says what it is
        damaged = damaged_start(p)
        if damaged is not None:
            raise damaged
    if head.lstrip()[:1] in (b"{", b"["):
        import json

        try:
            if os.path.getsize(p) > MAX_INDEX_BYTES:
                return
            with builtins.open(p, "rb") as f:
                json.loads(f.read())
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise CorruptFileError(
                f"a JSON file that does not parse ({_one_line(e)}), as a damaged or incomplete "
                f"shard index does; {FETCH_AGAIN}",
                path=p,
            ) from e
        raise FormatError(
            'a JSON file, but not a shard index ckptconv reads: expected {"weight_map": '
            "{...}} naming .weights.h5, .safetensors or PyTorch .bin files in the same directory",
            path=p,
        )


@keyword_options
def open(path: str | os.PathLike[str], *, check_crc: bool = True) -> Store:  # noqa: A001
    """Open a checkpoint of any supported format as a lazy :class:`~ckptconv.Store`.

    Reads metadata only. The format is detected from the content, not the extension.

    Args:
        path: A file, a directory, or a TensorFlow checkpoint prefix.
        check_crc: Check the per-tensor CRC-32C a format records (TensorFlow checkpoints,
            safetensors files ckptconv wrote) when a tensor is read; False reads damaged data
            anyway. Formats that record none have nothing to check.

    Raises:
        OptionError: an unknown keyword option (a typo), before anything is read.
        NoSuchFileError: the path does not exist.
        CkptconvError: the path is of no known format, damaged or hostile.
    """
    module = detect(path)
    given = {"check_crc": check_crc}
    wanted = option_names(module.open)
    try:
        with paused_gc():  # hundreds of thousands of small objects, no cycles
            return module.open(os.fspath(path), **{k: v for k, v in given.items() if k in wanted})
    except CkptconvError:
        raise
    except Exception as e:
        if not isinstance(e, _low_level_errors()):
            raise
        if "h5py" in sys.modules:
            from ._hdf5_file import describe_h5py_error, from_h5py

            if from_h5py(e):  # libhdf5's words, made one line that says the file is damaged
                what = "a damaged model.weights.h5 in the archive" if module.FORMAT == "keras-archive" else "a damaged HDF5 file"
                raise CorruptFileError(describe_h5py_error(e, what), path=path) from e
        raise CorruptFileError(
            f"damaged {module.FORMAT} file: {type(e).__name__}: {_one_line(e)}; {FETCH_AGAIN}", path=path
        ) from e



def open_source(source: Any, *, check_crc: bool = True) -> tuple[Store, bool]:
    """A store for a source as ``load_into``, ``transplant``, ``diff`` and ``suggest`` take one,
    and whether this call opened it (and so must close it).

    Args:
        source: A checkpoint path (opened with :func:`open`: metadata only), a
            :class:`~ckptconv.Store` (returned as it is), or ``{name: numpy array}`` (a
            :meth:`Store.from_arrays <ckptconv.Store.from_arrays>` over the arrays).
        check_crc: For a path: check the checksums the format records (see :func:`open`).

    Raises:
        LoadError: ``source`` is none of these.
        CkptconvError: the path cannot be opened (see :func:`open`).
    """
    if isinstance(source, Store):
        return source, False
    if isinstance(source, Mapping):
        return Store.from_arrays(source), False
    if isinstance(source, (str, os.PathLike)):
        return open(source, check_crc=check_crc), True
    raise LoadError(
        "expected a source path, a ckptconv.Store or a {name: array} mapping; received "
        f"{type(source).__name__}"
    )

# What h5py, zipfile, json and struct raise on damaged bytes: a reader that lets one through
# still gets a one-line CorruptFileError naming the file. (zipfile.BadZipFile is added when a
# reader has imported zipfile: none other can raise it.)
_LOW_LEVEL_ERRORS = (
    OSError, ValueError, KeyError, IndexError, TypeError, UnicodeError, RuntimeError,
    EOFError, OverflowError, zlib.error, struct.error, RecursionError,
)


def _low_level_errors() -> tuple[type[BaseException], ...]:
    zipfile = sys.modules.get("zipfile")
    return _LOW_LEVEL_ERRORS if zipfile is None else (*_LOW_LEVEL_ERRORS, zipfile.BadZipFile)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]
