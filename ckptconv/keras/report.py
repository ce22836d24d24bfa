"""The report of a load into a live Keras model: what was loaded, missing, unused, mismatched."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import Problem
from ..store import shape_text

__all__ = ["WeightInfo", "LoadedWeight", "WeightMismatch", "LoadReport"]


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
    matched_by: str = "name"  # structure | name | spec | order


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
        outside_only: Source entries that belong to variables outside the part ``only=``
            chose (not loaded, and not problems).
        frozen: Layers set to ``trainable=False`` (the ``freeze`` option).
        partly_frozen: Frozen layers whose weights were only partly loaded (their other
            weights keep the values they had, and are frozen too).
        names_differ: ``(target, source)`` pairs matched by structure or order whose names
            differ (Keras' own loaders ignore names; this says which ones).
        problems: Every problem, each a :class:`~ckptconv.Problem` (a one-line message with
            ``kind``: ``missing``, ``unused``, ``mismatched``, ``structure``, ...); empty when
            the load was complete and exact.
        strict: Whether the load was strict (all or nothing).
        applied: Whether variables were changed.
        mode: How sources were matched to targets: ``structure`` (as Keras loads),
            ``name``, ``spec`` or ``order`` (``by_order=True``). Each loaded weight says
            its own way in ``matched_by``.
        structure: With ``mode="structure"``, which structure: ``saving-tree``,
            ``legacy-order``, ``object-graph`` or ``state-tree``; otherwise None.
    """

    loaded: list[LoadedWeight] = field(default_factory=list)
    missing: list[WeightInfo] = field(default_factory=list)
    unused: list[WeightInfo] = field(default_factory=list)
    mismatched: list[WeightMismatch] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    outside_only: list[WeightInfo] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    partly_frozen: list[str] = field(default_factory=list)
    names_differ: list[tuple[str, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    strict: bool = True
    applied: bool = False
    mode: str = "name"
    structure: str | None = None

    @property
    def ok(self) -> bool:
        """True when every target was filled and every source weight was used."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (``json.dumps`` it), as ``transplant --json`` prints."""
        data = asdict(self)
        data["problems"] = [str(p) for p in self.problems]
        data["problem_details"] = [p.to_dict() if isinstance(p, Problem) else {"message": str(p)} for p in self.problems]
        data["names_differ"] = [list(pair) for pair in self.names_differ]
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
        if self.outside_only:
            rows = [(w.name, shape_text(w.shape), w.dtype) for w in self.outside_only]
            lines += _section("outside only= (not loaded)", ("source", "shape", "dtype"), rows)
        if self.dropped:
            lines += _section("dropped by the spec", ("source",), [(n,) for n in self.dropped])
        if self.frozen:
            if self.partly_frozen:
                rows = [(n, "partly loaded" if n in self.partly_frozen else "") for n in self.frozen]
                lines += _section("frozen (trainable=False)", ("layer", "note"), rows)
            else:
                lines += _section("frozen (trainable=False)", ("layer",), [(n,) for n in self.frozen])
        other = [p for p in self.problems if getattr(p, "kind", None) not in _LISTED_KINDS]
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
        head = f"load_into ({self.mode} match, {'strict' if self.strict else 'non-strict'}): {counts}; {state}"
        return head + "\n" + self.matched_text()

    def matched_text(self) -> str:
        """One line on how the weights were matched: "matched by structure as Keras'
        load_weights does (its saving-tree keys); 16 names differ"."""
        from .structure import HOW

        if self.mode == "structure" and self.structure is not None:
            text = f"matched by structure {HOW[self.structure]}"
        elif self.mode == "order":
            text = "matched by order (by_order=True: layers with weights, in order)"
        elif self.mode == "spec":
            ways = sorted({w.matched_by for w in self.loaded}) or ["spec"]
            text = "matched by the spec's rules" + (" and by name" if "name" in ways else "")
        else:
            text = "matched by name"
        differ = len(self.names_differ)
        if self.mode in ("structure", "order"):
            text += f"; {differ} name{'s' if differ != 1 else ''} differ" if differ else "; all names agree"
        elif differ:
            text += f"; {differ} name{'s' if differ != 1 else ''} matched through the cross-line alias table"
        if self.partly_frozen:
            text += f"; {len(self.partly_frozen)} frozen layer(s) only partly loaded"
        return text

    def __str__(self) -> str:
        return self.format_table()


# problem kinds with their own section in the table
_LISTED_KINDS = ("missing", "unused", "mismatched")



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
