"""The report of a load into a live Keras model: what was loaded, missing, unused, mismatched."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["WeightInfo", "LoadedWeight", "WeightMismatch", "LoadReport", "shape_text"]


@dataclass(frozen=True)
class WeightInfo:
    """A weight named in a report: its name, shape and dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class LoadedWeight:
    """A target variable that received a value, and where the value came from."""

    name: str
    source: str
    shape: tuple[int, ...]
    dtype: str
    cast_from: str | None = None


@dataclass(frozen=True)
class WeightMismatch:
    """A target variable whose source does not fit: both sides, and why."""

    name: str
    source: str
    expected_shape: tuple[int, ...]
    expected_dtype: str
    got_shape: tuple[int, ...]
    got_dtype: str
    reason: str


@dataclass
class LoadReport:
    """What :func:`load_into` did (or, when it raised, would have done).

    Attributes:
        loaded: Target variables that received a value (``applied``) or would have.
        missing: Target variables no source entry fills (they keep their values).
        unused: Source entries that fill no target variable.
        mismatched: Pairs whose shape or dtype disagree (never assigned).
        dropped: Source entries a mapping rule dropped on purpose.
        frozen: Layers set to ``trainable=False`` (the ``freeze`` option).
        problems: Every problem as one line; empty when the load was complete and exact.
        strict: Whether the load was strict (all or nothing).
        applied: Whether variables were changed.
        mode: ``name``, ``order`` or ``spec`` (how sources were matched to targets).
    """

    loaded: list[LoadedWeight] = field(default_factory=list)
    missing: list[WeightInfo] = field(default_factory=list)
    unused: list[WeightInfo] = field(default_factory=list)
    mismatched: list[WeightMismatch] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    strict: bool = True
    applied: bool = False
    mode: str = "name"

    @property
    def ok(self) -> bool:
        """True when every target was filled and every source weight was used."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (``json.dumps`` it), as ``transplant --json`` prints."""
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def format_table(self) -> str:
        """A readable table: one section per status, one line per weight."""
        lines = [self._headline()]
        if self.loaded:
            rows = [
                (w.name, shape_text(w.shape), w.dtype, _source_text(w)) for w in self.loaded
            ]
            lines += _section("loaded", ("target", "shape", "dtype", "source"), rows)
        if self.mismatched:
            rows = [
                (
                    m.name,
                    f"{shape_text(m.expected_shape)} {m.expected_dtype}",
                    f"{shape_text(m.got_shape)} {m.got_dtype}",
                    f"{m.source}: {m.reason}",
                )
                for m in self.mismatched
            ]
            lines += _section("mismatched", ("target", "expected", "source has", "source: why"), rows)
        if self.missing:
            rows = [(w.name, shape_text(w.shape), w.dtype) for w in self.missing]
            lines += _section("missing (kept their values)", ("target", "shape", "dtype"), rows)
        if self.unused:
            rows = [(w.name, shape_text(w.shape), w.dtype) for w in self.unused]
            lines += _section("unused source weights", ("source", "shape", "dtype"), rows)
        if self.dropped:
            lines += _section("dropped by the spec", ("source",), [(n,) for n in self.dropped])
        if self.frozen:
            lines += _section("frozen (trainable=False)", ("layer",), [(n,) for n in self.frozen])
        other = [p for p in self.problems if not p.startswith(_REPORTED_PREFIXES)]
        if other:
            lines += _section("other problems", ("problem",), [(p,) for p in other])
        return "\n".join(lines)

    def _headline(self) -> str:
        counts = (
            f"{len(self.loaded)} loaded, {len(self.missing)} missing, "
            f"{len(self.unused)} unused, {len(self.mismatched)} mismatched"
        )
        if self.applied:
            state = "applied"
        elif self.problems and self.strict:
            state = "NOT applied (strict: nothing changed)"
        else:
            state = "not applied"
        return f"load_into ({self.mode} match, {'strict' if self.strict else 'non-strict'}): {counts}; {state}"

    def __str__(self) -> str:
        return self.format_table()


_REPORTED_PREFIXES = ("missing:", "unused:", "mismatched:")


def shape_text(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _source_text(w: LoadedWeight) -> str:
    text = w.source if w.source != w.name else "(same name)"
    if w.cast_from:
        text += f" (cast from {w.cast_from})"
    return text


def _section(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return ["", f"{title} ({len(rows)}):", fmt(header), *(fmt(r) for r in rows)]
