"""CRC-32C (Castagnoli), computed by the ``crc32c`` package, loaded without its start-up cost.

Every checksum ckptconv computes or checks (the CRC-32C it records per tensor in the
safetensors files it writes, TensorFlow's index blocks and tensor data) is the ``crc32c``
package's compiled function. ``import crc32c`` runs the package's ``__init__``, which asks
``importlib.metadata`` for its own version: 80–130 ms of CPU on the project machine, more
than the rest of a small command. :func:`crc32c_function` loads only the package's compiled
module, ``crc32c._crc32c`` (the one ``import crc32c`` loads, typed by the package's own
``_crc32c.pyi``), under that name, so a later ``import crc32c`` reuses it (8–11 ms); where the
package is laid out otherwise, it imports the package as usual.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from _thread import allocate_lock
from collections.abc import Callable
from typing import Any

__all__ = ["crc32c", "crc32c_function"]

_EXTENSION = "crc32c._crc32c"
_function: Callable[..., int] | None = None
_lock = allocate_lock()  # (_thread: threading is not imported for one lock)


def crc32c_function() -> Callable[..., int]:
    """The ``crc32c`` package's ``crc32c(data, value=0) -> int``: CRC-32C of a bytes-like
    ``data`` (any buffer, numpy arrays included) continuing from ``value``, a 32-bit
    unsigned int. Loaded on first call.

    Raises:
        ImportError: the ``crc32c`` package is not installed.
    """
    global _function
    if _function is None:
        with _lock:  # one load, whichever thread asks first
            if _function is None:
                module = sys.modules.get(_EXTENSION) or _load_extension()
                _function = module.crc32c if module is not None else _import_package().crc32c
    return _function


def crc32c(data: Any, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data`` (bytes-like), continuing from ``value``."""
    return crc32c_function()(data, value)


def _load_extension() -> Any:
    """``crc32c._crc32c`` loaded from the installed package's directory without running the
    package's ``__init__``; None when it is not there as a compiled module."""
    try:
        spec = importlib.util.find_spec("crc32c")  # finds the package, runs nothing
        if spec is None or not spec.submodule_search_locations:
            return None
        for directory in spec.submodule_search_locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(directory, "_crc32c" + suffix)
                if os.path.isfile(path):
                    loader = importlib.machinery.ExtensionFileLoader(_EXTENSION, path)
                    found = importlib.util.spec_from_file_location(_EXTENSION, path, loader=loader)
                    if found is None:
                        return None
                    module = importlib.util.module_from_spec(found)
                    loader.exec_module(module)
                    if not callable(getattr(module, "crc32c", None)):
                        return None
                    sys.modules[_EXTENSION] = module  # what `import crc32c` would load
                    return module
    except (ImportError, OSError, ValueError):
        return None
    return None


def _import_package() -> Any:
    import crc32c as package

    return package
