"""Importing Keras for ckptconv: quietly, and with one line saying what to install if missing.

Building a model from a ``.keras`` file (``transplant``, ``plan --target``) is the only time
ckptconv itself imports Keras, and so TensorFlow on its default backend. TensorFlow's C++
libraries log to the process's stderr while they load ("All log messages before
absl::InitializeLog() is called...", "Could not find cuda drivers..."), under any Python-side
setting, so :func:`import_keras` sets TensorFlow's log level in the environment before the
import and holds those lines back while it runs, passing anything else through.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

from ..errors import UnsupportedError

__all__ = ["import_keras", "KERAS_MISSING"]

KERAS_MISSING = (
    "building or loading a Keras model needs Keras 3: pip install 'ckptconv[tf]' "
    "(Keras with TensorFlow), or Keras 3 with any backend (pip install keras jax)"
)

# What TensorFlow and XLA print through absl/glog while loading: "I0000 00:00:17.5 123
# cudart_stub.cc:31] ..." (info and warning levels), the absl banner, and the continuation
# of the CPU feature notice. Errors (E/F lines) and anything else pass through.
_CXX_LOG = re.compile(
    r"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)

_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's own C++ logging: errors only
    "TF_ENABLE_ONEDNN_OPTS": "0",  # its oneDNN notice (the numbers differ in the last bit)
    "GRPC_VERBOSITY": "ERROR",
}


def import_keras() -> ModuleType:
    """``import keras`` (Keras 3), quietly.

    Raises:
        UnsupportedError: Keras is not installed (one line: what to install).
    """
    loaded = sys.modules.get("keras")
    if loaded is not None:
        return loaded
    for name, value in _ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    with _held_back_cxx_logs():
        try:
            import keras
        except ModuleNotFoundError as e:
            if e.name is not None and e.name.split(".")[0] in ("keras", "tensorflow", "jax", "torch"):
                raise UnsupportedError(f"{KERAS_MISSING} ({e})") from e
            raise
    _quiet_absl()
    return keras


def _quiet_absl() -> None:
    """TensorFlow routes Python-side warnings through absl logging: errors only."""
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None:
        absl_logging.set_verbosity(absl_logging.ERROR)


@contextlib.contextmanager
def _held_back_cxx_logs() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while the block runs, then write back to
    stderr every line that is not native log chatter (C++ code writes to the descriptor,
    not to ``sys.stderr``)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedded interpreter)
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not _CXX_LOG.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
