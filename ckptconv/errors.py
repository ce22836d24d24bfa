"""The exception hierarchy.

Every error ckptconv raises on bad input is a :class:`CkptconvError`. Each carries the
file (``path``) and, where there is one, the tensor (``key``) it is about, and its message
is one line that says what is wrong and what to do. The CLI prints exactly that line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = [
    "CkptconvError",
    "FormatError",
    "CorruptFileError",
    "IntegrityError",
    "UnsafeInputError",
    "UnsupportedError",
    "SpecError",
    "PlanError",
    "OutputError",
    "LoadError",
    "MissingDependencyError",
    "ClusterError",
]


class CkptconvError(Exception):
    """Root of all errors ckptconv raises about its inputs and outputs.

    Attributes:
        path: The file or directory the error is about, or None.
        key: The tensor (entry name or format key) the error is about, or None.
        reason: The message without the path/key prefix.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | os.PathLike[str] | None = None,
        key: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = os.fspath(path) if path is not None else None
        self.key = key
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}: "
        if self.key is not None:
            where += f"tensor {self.key!r}: "
        return f"{where}{self.reason}"


class FormatError(CkptconvError):
    """The input is not in any format ckptconv reads (or not the one it claims)."""


class CorruptFileError(CkptconvError):
    """The input is in a known format but damaged: truncated, inconsistent, missing parts."""


class IntegrityError(CorruptFileError):
    """Stored bytes do not match their recorded checksum."""


class UnsafeInputError(CkptconvError):
    """The input has a structure ckptconv refuses to follow (links out of the file, path
    traversal, declared sizes beyond what is stored)."""


class UnsupportedError(CkptconvError):
    """A valid input uses a feature ckptconv cannot convert (e.g. complex128 into safetensors)."""


class SpecError(CkptconvError):
    """A mapping spec is malformed: bad syntax, unknown keys or ops, invalid patterns."""


class PlanError(CkptconvError):
    """A mapping plan has problems. ``problems`` lists every one of them."""

    def __init__(
        self,
        problems: Sequence[str],
        *,
        path: str | os.PathLike[str] | None = None,
        key: str | None = None,
    ) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = self.problems[0] if self.problems else "the plan is invalid"
        if count > 1:
            reason = f"{count} problems in the mapping plan; first: {head} (run `ckptconv plan` for all)"
        else:
            reason = head
        super().__init__(reason, path=path, key=key)


class OutputError(CkptconvError):
    """The output cannot be written: exists without --force, same as the input, disk full, ..."""


class LoadError(CkptconvError):
    """Weights cannot be loaded into a live model. ``problems`` lists every one of them."""

    def __init__(
        self,
        reason: str,
        *,
        problems: Sequence[str] = (),
        path: str | os.PathLike[str] | None = None,
        key: str | None = None,
    ) -> None:
        self.problems = list(problems)
        super().__init__(reason, path=path, key=key)


class MissingDependencyError(CkptconvError, ImportError):
    """A feature needs an optional extra that is not installed; the message says what to
    ``pip install``. Also an :class:`ImportError`.

    Attributes:
        extra: The ``ckptconv[...]`` extra that provides it (``"dask"``).
    """

    def __init__(self, reason: str, *, extra: str = "") -> None:
        self.extra = extra
        super().__init__(reason)


class ClusterError(CkptconvError):
    """A Dask cluster cannot be reached, or its workers cannot run ckptconv's jobs."""
