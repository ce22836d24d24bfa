"""Name patterns and output-name templates of the mapping spec.

A pattern is a glob or, with the ``re:`` prefix, a regular expression; both must match the
whole name. In a glob, ``*`` matches within one ``/``-separated part, ``**`` matches across
parts (``a/**/b`` also matches ``a/b``), ``?`` matches one character other than ``/``. Every
star captures: ``{1}``, ``{2}`` ... in a template are the stars' texts, left to right. A
regex captures with its groups, numbered or named (``(?P<block>\\d+)`` -> ``{block}``).
``{0}`` is the whole matched name.

A regex with nested variable quantifiers (``(a+)+``, ``(\\w*/)*``) or with alternatives that
can match alike under a quantifier (``(a|ab)*``) is refused: Python's engine can take
exponential time on it (catastrophic backtracking) and has no timeout. An atomic group or a
possessive quantifier (``(?>...)``, ``*+``) does not backtrack and is fine.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Pattern", "Template", "Match", "natural_key", "backtracking_hazard", "quoted"]


@dataclass(frozen=True)
class Match:
    """Captures of one successful match: numbered (``"1"``, ``"2"``, ...) and named."""

    groups: tuple[str, ...]
    named: dict[str, str] = field(default_factory=dict)
    whole: str = ""

    def fields(self) -> dict[str, str]:
        """Every field a template may use: ``"0"`` (the whole name), ``"1"``..., names."""
        out = {"0": self.whole}
        out.update({str(i + 1): g for i, g in enumerate(self.groups)})
        out.update(self.named)
        return out


def _glob_to_regex(glob: str) -> str:
    """Translate a glob into an anchored-free regex body (each star a capturing group)."""
    out: list[str] = []
    i = 0
    n = len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith("**", i):
            # "a/**/b" also matches "a/b": the "**/" part may be absent
            at_part_start = i == 0 or glob[i - 1] == "/"
            if at_part_start and glob.startswith("**/", i):
                out.append("(?:(.*)/)?")
                i += 3
            else:
                out.append("(.*)")
                i += 2
        elif c == "*":
            out.append("([^/]*)")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


class Pattern:
    """A compiled name pattern (glob or ``re:`` regex), matched against whole names.

    Raises:
        ValueError: the regex does not compile (the spec parser turns it into a SpecError).
    """

    __slots__ = ("text", "is_regex", "regex", "literal")

    def __init__(self, text: str) -> None:
        self.text = text
        self.is_regex = text.startswith("re:")
        if self.is_regex:
            body = text[3:]
            try:
                self.regex = re.compile(body)
            except re.error as e:
                raise ValueError(f"invalid regular expression {quoted(body)}: {e}") from e
            hazard = backtracking_hazard(body)
            if hazard is not None:
                raise ValueError(
                    f"regular expression {quoted(body)} can take exponential time to match "
                    f"(catastrophic backtracking: {hazard}) and Python's regex engine has no "
                    "timeout, so it is refused; quantify once, let alternatives start "
                    "differently, or use an atomic group (?>...) or a possessive quantifier (*+)"
                )
            self.literal = None
        elif any(c in text for c in "*?"):
            self.regex = re.compile(_glob_to_regex(text))
            self.literal = None
        else:  # a glob without wildcards is a plain name, matched by comparison: no regex
            self.regex = None
            self.literal = text

    @property
    def group_count(self) -> int:
        """Numbered captures this pattern yields."""
        return 0 if self.regex is None else self.regex.groups

    @property
    def group_names(self) -> tuple[str, ...]:
        """Named captures this pattern yields."""
        return () if self.regex is None else tuple(self.regex.groupindex)

    def match(self, name: str) -> Match | None:
        """The captures when the pattern matches the whole of ``name``, else None."""
        if self.literal is not None:
            return Match((), {}, name) if name == self.literal else None
        assert self.regex is not None
        m = self.regex.fullmatch(name)
        if m is None:
            return None
        groups = tuple(g if g is not None else "" for g in m.groups())
        named = {k: (v if v is not None else "") for k, v in m.groupdict().items()}
        return Match(groups, named, name)

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def quoted(text: str) -> str:
    """``text`` in quotes as the user wrote it, for messages: a pattern's backslashes stay
    single, where ``repr`` doubles them. In double quotes when it holds a single quote; its
    ``repr`` when it holds quotes of both kinds or a character a message line cannot show (a
    newline, a control character)."""
    if text.isprintable():
        if "'" not in text:
            return f"'{text}'"
        if '"' not in text:
            return f'"{text}"'
    return repr(text)


def backtracking_hazard(body: str) -> str | None:
    """What can make a (compilable) regex take exponential time, as text, or None: a variable
    quantifier inside another, or alternatives that can start alike inside a variable
    quantifier (``(a|ab)*``). Fixed counts (``{3}``) and ``?`` cannot make the engine try
    exponentially many ways; atomic groups and possessive quantifiers never backtrack into
    themselves."""
    if sys.version_info >= (3, 11):
        from re import _constants as sre_c  # type: ignore[attr-defined]
        from re import _parser as sre_p  # type: ignore[attr-defined]
    else:  # pragma: no cover - Python 3.10
        import sre_constants as sre_c
        import sre_parse as sre_p

    repeats = {sre_c.MAX_REPEAT, sre_c.MIN_REPEAT}
    possessive = getattr(sre_c, "POSSESSIVE_REPEAT", None)
    atomic = getattr(sre_c, "ATOMIC_GROUP", None)

    def varies(low: int, high: int) -> bool:
        return low != high and (high is sre_c.MAXREPEAT or high > 1)

    def walk(items: object, outer: bool) -> str | None:
        for op, av in items:  # type: ignore[attr-defined]
            found = None
            if op in repeats:
                low, high, sub = av
                if varies(low, high) and outer:
                    return "a repeated part holds a " + ("'*' or '+'" if high is sre_c.MAXREPEAT else f"{{{low},{high}}}")
                found = walk(sub, outer or varies(low, high))
            elif op == possessive or op == atomic:
                found = walk(av[2] if op == possessive else av, False)
            elif op == sre_c.SUBPATTERN:
                found = walk(av[-1], outer)
            elif op == sre_c.BRANCH:
                if outer and ambiguous(av[1]):
                    return "a repeated part holds alternatives that can match the same text"
                for branch in av[1]:
                    found = found or walk(branch, outer)
            elif op in (sre_c.ASSERT, sre_c.ASSERT_NOT):
                found = walk(av[1], outer)
            elif op == sre_c.GROUPREF_EXISTS:
                found = walk(av[1], outer) or (walk(av[2], outer) if av[2] else None)
            if found:
                return found
        return None

    def first(items: object) -> set[int] | None:
        """The characters a sequence can start with, or None when unknown or it may be empty."""
        for op, av in items:  # type: ignore[attr-defined]
            if op == sre_c.LITERAL:
                return {av}
            if op == sre_c.SUBPATTERN:
                return first(av[-1])
            if op == sre_c.IN and all(o in (sre_c.LITERAL, sre_c.RANGE) for o, _ in av):
                chars: set[int] = set()
                for o, v in av:
                    if o == sre_c.RANGE and v[1] - v[0] > 1024:
                        return None
                    chars.update(range(v[0], v[1] + 1) if o == sre_c.RANGE else (v,))
                return chars
            return None
        return None

    def ambiguous(branches: list[object]) -> bool:
        seen: set[int] = set()
        for branch in branches:
            chars = first(branch)
            if chars is None or chars & seen:
                return True
            seen |= chars
        return False

    try:
        return walk(sre_p.parse(body), False)
    except Exception:  # noqa: BLE001 - re.compile accepted it; the check is best effort
        return None


_FIELD = re.compile(r"\{([^{}]*)\}|\{\{|\}\}")


class Template:
    """An output-name template: ``{1}``, ``{2}``, ``{name}`` are captures, ``{{``/``}}`` braces.

    Raises:
        ValueError: a field is not a number or an identifier, or a brace is unbalanced.
    """

    __slots__ = ("text", "fields")

    def __init__(self, text: str) -> None:
        self.text = text
        fields: list[str] = []
        pos = 0
        for m in _FIELD.finditer(text):
            self._check_literal(text[pos : m.start()])
            pos = m.end()
            if m.group(0) in ("{{", "}}"):
                continue
            name = m.group(1)
            if not (name.isdigit() or name.isidentifier()):
                raise ValueError(f"template {quoted(text)}: field {{{name}}} is not a capture number or name")
            fields.append(name)
        self._check_literal(text[pos:])
        self.fields = tuple(fields)

    def _check_literal(self, chunk: str) -> None:
        if "{" in chunk or "}" in chunk:
            raise ValueError(f"template {quoted(self.text)}: unbalanced brace (write {{{{ or }}}} for a literal one)")

    def render(self, values: dict[str, str]) -> str:
        """Substitute the captures. Raises KeyError for a field the match does not have."""

        def sub(m: re.Match[str]) -> str:
            token = m.group(0)
            if token == "{{":
                return "{"
            if token == "}}":
                return "}"
            return values[m.group(1)]

        return _FIELD.sub(sub, self.text)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key that orders embedded numbers numerically (``w2`` before ``w10``)."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(text))


def matches_path_or_parent(pattern: Pattern, path: str) -> bool:
    """Whether ``pattern`` matches the ``/``-separated path ``path`` or one of its parents
    (``block/*`` covers ``block/inner_a`` and so ``block/inner_a/kernel``)."""
    parts = path.split("/")
    return any(pattern.match("/".join(parts[:n])) for n in range(1, len(parts) + 1))


def part_patterns(only: str | Iterable[str]) -> tuple[Pattern, ...]:
    """The patterns of an ``only=`` option (one pattern or several)."""
    return tuple(Pattern(p) for p in ([only] if isinstance(only, str) else list(only)))


def in_part(patterns: Iterable[Pattern], name: str) -> bool:
    """Whether a variable ``name`` lies in the part ``only=`` patterns choose: the pattern
    matches the name, or its layer, or a parent layer."""
    return any(matches_path_or_parent(p, name) for p in patterns)
