"""The exception hierarchy.

Every error ckptconv raises on bad input is a :class:`CkptconvError`. Each carries the
file (``path``) and, where there is one, the tensor (``tensor``) it is about, and its message
is one line that says what is wrong and what to do. The CLI prints exactly that line.

A message that tells the user to change an option names it as ``{opt:NAME=VALUE}`` (or
``{opt:NAME}``) in its text: ``str(error)`` spells it as the Python argument
(``force=True``), and the command line, which passes its own spelling table to
:meth:`CkptconvError.render`, as its option (``--force``). So a CLI message names CLI
options and an API message names API arguments, from one text.
"""

from __future__ import annotations

import errno as _errno
import os
import re

TYPE_CHECKING = False  # typing is not imported for `ckptconv --help`
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
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
    "UsageError",
    "OptionError",
    "NoSuchFileError",
    "NoSuchTensorError",
    "ClusterError",
    "render_options",
    "nearest",
    "did_you_mean",
]

FETCH_AGAIN = "copy or download it again"
"""What a message about a truncated or damaged input file tells the user to do: its one wording."""


def truncated(detail: str, *, or_damaged: bool = False) -> str:
    """The message for an input file cut short: ``the file is truncated: DETAIL; copy or
    download it again`` (every reader words it so); ``the file is truncated or damaged: ...``
    when the sizes that say so come from the file's own metadata, which a damaged byte can
    change as well as a cut can."""
    what = "truncated or damaged" if or_damaged else "truncated"
    return f"the file is {what}: {detail}; {FETCH_AGAIN}"


def damaged(detail: str, what: str = "the file") -> str:
    """The message for an input whose bytes say something no writer writes: ``DETAIL (the
    file is damaged); copy or download it again`` (``what``: ``the pickle``, ``it``, ...)."""
    return f"{detail} ({what} is damaged); {FETCH_AGAIN}"


# {opt:NAME} or {opt:NAME=VALUE}; VALUE may hold one level of braces (a dict's repr). Compiled
# (by re's cache) when a message is first rendered, not when every command starts.
_OPTION = r"\{opt:([A-Za-z_][A-Za-z0-9_]*)(?:=((?:[^{}]|\{[^{}]*\})*))?\}"


def render_options(text: str, spelling: Mapping[str, str] | None = None) -> str:
    """``text`` with its ``{opt:NAME=VALUE}`` / ``{opt:NAME}`` markers spelled out.

    Without ``spelling`` (the Python API) a marker reads ``NAME=VALUE`` (``NAME=``). A
    ``spelling`` table maps ``"NAME=VALUE"`` (a flag that sets that value, such as
    ``"strict=False": "--non-strict"``) or ``"NAME"`` (an option taking the value, such as
    ``"dtype": "--dtype"``) to another spelling; markers it does not know keep the API's.
    """

    def one(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if spelling is not None:
            if value is not None and f"{name}={value}" in spelling:
                return spelling[f"{name}={value}"]
            if name in spelling:
                if not value:
                    return spelling[name]
                return f"{spelling[name]} {value.strip(chr(39) + chr(34))}"
        return f"{name}={value or ''}"

    return re.sub(_OPTION, one, text) if "{opt:" in text else text


def nearest(word: str, candidates: Iterable[str], *, count: int = 3, cutoff: float = 0.5) -> list[str]:
    """The ``count`` candidates closest to ``word``, best first: those that begin with it (a
    name cut short, ``float8`` for ``float8_e4m3fn``, ``--js`` for ``--json``), in the
    candidates' order, then the closest by difflib ratio (at least ``cutoff``)."""
    import difflib

    pool = list(dict.fromkeys(candidates))
    close = difflib.get_close_matches(word, pool, n=count, cutoff=cutoff)
    return list(dict.fromkeys([*_cut_short(word, pool), *close]))[:count]


def _cut_short(word: str, candidates: list[str]) -> list[str]:
    """The candidates that ``word`` begins (two characters at least, dashes aside), in order."""
    return [c for c in candidates if c != word and c.startswith(word)] if len(word.lstrip("-")) >= 2 else []


def did_you_mean(word: str, candidates: Iterable[str], *, quote: bool = True, cutoff: float = 0.5) -> str:
    """``"did you mean 'X'?"`` for the :func:`nearest` candidate, or ``"did you mean 'X', 'Y'
    or 'Z'?"`` when several begin with ``word`` (a family of names: ``float8``); ``""`` when
    none is near. ``quote``: show the candidates as ``repr`` (names), else as they are
    (options: ``--json``). The one wording of a suggestion, for names, values and options."""
    near = nearest(word, candidates, cutoff=cutoff)
    if not near:
        return ""
    longer = _cut_short(word, near)
    shown = [repr(c) if quote else c for c in (longer if len(longer) > 1 else near[:1])]
    listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
    return f"did you mean {listed}?"


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
    """Root of all errors ckptconv raises about its inputs, outputs and options.

    Attributes:
        path: The file or directory the error is about, or None.
        tensor: The tensor (entry name, or the format's key before names exist) the error
            is about, or None.
        reason: The message without the path/tensor prefix, options spelled as Python
            arguments.
    """

    spelling: Mapping[str, str] | None = None
    """How ``str()`` spells the options a message names: None, as Python arguments (the API);
    the command line sets its table on an error it lets through under ``--debug``, so the
    traceback's last line names its options (``--no-check-crc``) as its one-line message does."""

    def __init__(
        self,
        reason: str,
        *,
        path: str | os.PathLike[str] | None = None,
        tensor: str | None = None,
    ) -> None:
        self.template = reason
        self.path = os.fspath(path) if path is not None else None
        self.tensor = tensor
        super().__init__(self.render())

    @property
    def reason(self) -> str:
        """The message without the path/tensor prefix."""
        return render_options(self.template)

    def render(
        self, spelling: Mapping[str, str] | None = None, *, path: bool = True, tensor: bool = True
    ) -> str:
        """The one-line message, options spelled through ``spelling`` (see
        :func:`render_options`); ``path``/``tensor`` False leave that prefix out (the caller
        already named it)."""
        where = ""
        if path and self.path is not None:
            where = f"{self.path}: "
        if tensor and self.tensor is not None:
            where += f"tensor {self.tensor!r}: "
        return f"{where}{render_options(self.template, spelling)}"

    def __str__(self) -> str:
        return self.render(self.spelling)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # keyword-only constructors do not survive Exception's default pickling (a worker
        # process sends its errors back pickled)
        return (_restore, (type(self), self.__dict__.copy()))


def _restore(cls: type[CkptconvError], state: dict[str, object]) -> CkptconvError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error.render())
    return error


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
    """A mapping spec is malformed: bad syntax, unknown keys or ops, invalid patterns.

    When several rules are wrong, the message numbers them all on one line and ``problems``
    lists each one's message (``rule #2 (from 'a'): unknown key 'too'; ...``); else it is
    empty."""

    problems: Sequence[str] = ()


class PlanError(CkptconvError):
    """A mapping plan has problems. ``problems`` lists every one of them (each a
    :class:`Problem`: a string with ``kind``, ``rule`` and ``name``)."""

    def __init__(
        self,
        problems: Sequence[str],
        *,
        path: str | os.PathLike[str] | None = None,
        tensor: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = self.problems[0] if self.problems else "the plan is invalid"
        if count > 1:
            reason = f"{count} problems in the mapping plan; first: {head} (run `ckptconv plan` for all)"
        else:
            reason = head
        if hint:
            reason += f"; {hint}"
        super().__init__(reason, path=path, tensor=tensor)


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
        tensor: str | None = None,
    ) -> None:
        self.problems = list(problems)
        super().__init__(reason, path=path, tensor=tensor)


class UsageError(CkptconvError, ValueError):
    """An argument or option has a value ckptconv cannot use (an unknown dtype, a size it
    cannot parse, an output name of another format). The command line exits with status 2.

    Attributes:
        option: The Python argument at fault (``dtype``), or None.
    """

    def __init__(
        self,
        reason: str,
        *,
        option: str | None = None,
        path: str | os.PathLike[str] | None = None,
        tensor: str | None = None,
    ) -> None:
        self.option = option
        super().__init__(reason, path=path, tensor=tensor)


class OptionError(UsageError, TypeError):
    """A function was given a keyword option it does not take (a typo such as
    ``chek_crc=``); the message names the nearest known option and lists them all."""


class NoSuchFileError(CkptconvError, FileNotFoundError):
    """A path the caller named does not exist (a checkpoint, a spec, a target model).

    Also a :class:`FileNotFoundError`, with ``errno`` ``ENOENT`` and ``filename`` set.
    """

    def __init__(self, reason: str = "no such file or directory", *, path: str | os.PathLike[str]) -> None:
        super().__init__(reason, path=path)
        self.errno = _errno.ENOENT
        self.strerror = "No such file or directory"
        self.filename = self.path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_no_such_file, (self.template, self.path))


def _no_such_file(reason: str, path: str) -> NoSuchFileError:
    return NoSuchFileError(reason, path=path)


class NoSuchTensorError(CkptconvError, KeyError):
    """A tensor name is not in the store; the message names the file and the nearest names.

    Also a :class:`KeyError`, so ``Mapping`` code that expects one keeps working.
    """


class ClusterError(CkptconvError):
    """A Dask cluster cannot be reached, or its workers cannot run ckptconv's jobs."""
