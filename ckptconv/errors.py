"""The exception hierarchy.

Every error ckptconv raises on bad input is a :class:`CkptconvError`. Each carries the
file (``path``) and, where there is one, the tensor (``key``) it is about, and its message
is one line that says what is wrong and what to do. The CLI prints exactly that line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Problem",
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
]


class Problem(str):
    """One problem a plan or a load found, as data: ``Problem(kind, rule, name, message)``.

    A problem *is* its message (``str(problem)``, ``"x" in problem``, ``"\\n".join(problems)``
    keep working), and carries what code needs to tell problems apart without reading text:

    Attributes:
        kind: What went wrong, one of :data:`PROBLEM_KINDS` (``missing``, ``unused``,
            ``mismatched``, ``no-match``, ...).
        rule: The spec rule's label (``rule #2 (from 'a/*')``), or None.
        name: The entry, output or variable it is about, or None.
        message: The one-line message (the string itself).
    """

    kind: str
    rule: str | None
    name: str | None

    def __new__(cls, kind: str, rule: str | None, name: str | None, message: str) -> Problem:
        self = super().__new__(cls, message)
        self.kind = kind
        self.rule = rule
        self.name = name
        return self

    @property
    def message(self) -> str:
        """The message, as a plain ``str``."""
        return str.__str__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Problem, (self.kind, self.rule, self.name, self.message))

    def __repr__(self) -> str:
        return f"Problem({self.kind!r}, {self.rule!r}, {self.name!r}, {self.message!r})"

    def to_dict(self) -> dict[str, str | None]:
        """``{"kind", "rule", "name", "message"}``."""
        return {"kind": self.kind, "rule": self.rule, "name": self.name, "message": self.message}


# Every kind a Problem has, with what it means.
PROBLEM_KINDS = {
    # the mapper's plan
    "no-match": "a rule (or one pattern of a list) owns no entry",
    "shadowed": "a rule's entries all belong to earlier rules",
    "op": "an op or a split/concat/stack does not apply to the shapes it meets",
    "declared-shape": "a result differs from the shape the rule declares",
    "duplicate": "two outputs share one name",
    "not-in-target": "a rule's output names no target weight",
    "target-mismatch": "an output's shape or dtype differs from the target's",
    "incomplete-join": "a concat/stack output lacks a source for one of its patterns",
    "unused": "a source weight goes nowhere (fills no target)",
    "missing": "a target weight nothing fills",
    # loading into a live model
    "mismatched": "a source and its variable disagree on shape or dtype",
    "structure": "the source's structure does not agree with the model's",
}


def problem(kind: str, message: str, *, rule: str | None = None, name: str | None = None) -> Problem:
    """A :class:`Problem` with keyword arguments (the kind must be one of PROBLEM_KINDS)."""
    assert kind in PROBLEM_KINDS, kind
    return Problem(kind, rule, name, message)


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
    """A mapping plan has problems. ``problems`` lists every one of them (each a
    :class:`Problem`: a string with ``kind``, ``rule`` and ``name``)."""

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
    """Weights cannot be loaded into a live model. ``problems`` lists every one of them (each a
    :class:`Problem`: a string with ``kind``, ``rule`` and ``name``); ``report`` is the
    :class:`~ckptconv.LoadReport` of the refused load, when there is one."""

    report: Any = None

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
