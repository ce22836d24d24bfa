"""The plan report: every output with its sources and ops, every source entry with its status.

A report is plain data (dataclasses), built from metadata only; ``str(report)`` is the table
``ckptconv plan`` prints and :meth:`PlanReport.to_json` the object ``ckptconv plan --json``
prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from ..errors import Problem
from ..store import shape_text
from .tables import table_lines

__all__ = ["OutputRecord", "SourceRecord", "TargetMismatch", "PlanReport", "Status"]

Status = Literal["used", "dropped", "passthrough", "unused", "outside-only"]



@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One output of the plan.

    Attributes:
        name: Output name.
        sources: Names of the source entries it is made from, in order.
        ops: The operations on the way, as text (``transpose | reshape [384, 12, 32]``); empty
            when the output is a source unchanged.
        shape, dtype: The output's shape and dtype name, inferred from metadata.
        rule: Number of the rule that made it; None for a passed-through entry.
        unchanged: The output is its single source's stored bytes (a writer may copy them).
    """

    name: str
    sources: tuple[str, ...]
    ops: str
    shape: tuple[int, ...]
    dtype: str
    rule: int | None = None
    unchanged: bool = False

    def to_json(self) -> dict[str, object]:
        """JSON form."""
        return {
            "name": self.name,
            "sources": list(self.sources),
            "ops": self.ops,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "rule": self.rule,
            "unchanged": self.unchanged,
        }


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One source entry and what the plan does with it.

    Attributes:
        name: Entry name.
        status: ``used`` (a rule maps it), ``dropped`` (a drop rule, or no rule owns it and
            ``passthrough`` is false), ``passthrough`` (no rule owns it, copied unchanged) or
            ``unused`` (passed through, but the target has no weight of its name) or
            ``outside-only`` (it fills a target weight outside the part ``only`` chose).
        shape, dtype, kind: The entry's metadata.
        rule: Number of the rule that owns it, None when no rule does.
        outputs: Names of the outputs made from it.
    """

    name: str
    status: Status
    shape: tuple[int, ...]
    dtype: str
    kind: str = "weight"
    rule: int | None = None
    outputs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """JSON form."""
        return {
            "name": self.name,
            "status": self.status,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "kind": self.kind,
            "rule": self.rule,
            "outputs": list(self.outputs),
        }


@dataclass(frozen=True, slots=True)
class TargetMismatch:
    """An output whose shape or dtype does not fit the target tensor of the same name."""

    name: str
    expected_shape: tuple[int, ...]
    expected_dtype: str
    got_shape: tuple[int, ...]
    got_dtype: str
    rule: int | None = None

    def to_json(self) -> dict[str, object]:
        """JSON form."""
        return {
            "name": self.name,
            "expected": {"shape": list(self.expected_shape), "dtype": self.expected_dtype},
            "got": {"shape": list(self.got_shape), "dtype": self.got_dtype},
            "rule": self.rule,
        }

    def __str__(self) -> str:
        return (
            f"{self.name}: expected {shape_text(self.expected_shape)} {self.expected_dtype}, "
            f"got {shape_text(self.got_shape)} {self.got_dtype}"
        )


@dataclass
class PlanReport:
    """What a plan does, for people (``str(report)``) and programs (``to_json()``).

    Attributes:
        path, format: The source checkpoint.
        outputs: Every output, in plan order.
        sources: Every source entry that takes part (weights; everything with ``include_all``).
        has_target: The plan was checked against a target.
        missing: Target names no output fills.
        mismatched: Outputs whose shape or dtype does not fit the target.
        unused: Source entries that end up in no output (status ``unused``).
        problems: Every problem found: :class:`~ckptconv.Problem` strings (one-line messages
            with ``kind``, ``rule`` and ``name``).
    """

    path: str
    format: str
    outputs: list[OutputRecord] = field(default_factory=list)
    sources: list[SourceRecord] = field(default_factory=list)
    has_target: bool = False
    missing: list[str] = field(default_factory=list)
    mismatched: list[TargetMismatch] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problems."""
        return not self.problems

    @property
    def dropped(self) -> list[str]:
        """Source entries a drop rule removed on purpose."""
        return [s.name for s in self.sources if s.status == "dropped"]

    @property
    def passthrough(self) -> list[str]:
        """Source entries no rule owns, copied unchanged."""
        return [s.name for s in self.sources if s.status == "passthrough"]

    def counts(self) -> dict[str, int]:
        """How many source entries have each status."""
        c = Counter(s.status for s in self.sources)
        counts = {k: c.get(k, 0) for k in ("used", "dropped", "passthrough", "unused")}
        if c.get("outside-only"):
            counts["outside-only"] = c["outside-only"]
        return counts

    def to_json(self) -> dict[str, object]:
        """The report as one JSON-serialisable object (what ``plan --json`` prints)."""
        out: dict[str, object] = {
            "path": self.path,
            "format": self.format,
            "ok": self.ok,
            "counts": self.counts(),
            "outputs": [o.to_json() for o in self.outputs],
            "sources": [s.to_json() for s in self.sources],
            "problems": [str(p) for p in self.problems],
            # the same problems as data: kind, rule, name, message
            "problem_details": [_problem_dict(p) for p in self.problems],
        }
        if self.has_target:
            out["missing"] = list(self.missing)
            out["mismatched"] = [m.to_json() for m in self.mismatched]
            out["unused"] = list(self.unused)
        return out

    def format_table(self) -> str:
        """The report as aligned text tables: outputs, sources, target checks, problems."""
        lines: list[str] = []
        c = self.counts()
        lines.append(
            f"plan for {self.path} ({self.format}): {len(self.outputs)} output(s) from "
            f"{len(self.sources)} source entr{'y' if len(self.sources) == 1 else 'ies'} "
            f"({c['used']} used, {c['dropped']} dropped, {c['passthrough']} passed through, "
            f"{c['unused']} unused"
            + (f", {c['outside-only']} outside only=" if c.get("outside-only") else "")
            + ")"
        )
        if self.outputs:
            lines.append("")
            rows = [
                (
                    o.name,
                    shape_text(o.shape),
                    o.dtype,
                    ", ".join(o.sources),
                    "passthrough" if o.rule is None else f"#{o.rule}",
                    o.ops or ("copy" if o.unchanged else "-"),
                )
                for o in self.outputs
            ]
            lines += table_lines(("OUTPUT", "SHAPE", "DTYPE", "FROM", "RULE", "OPS"), rows)
        if self.sources:
            lines.append("")
            rows = [
                (
                    s.name,
                    shape_text(s.shape),
                    s.dtype,
                    s.status,
                    "-" if s.rule is None else f"#{s.rule}",
                    ", ".join(s.outputs) if s.outputs else "-",
                )
                for s in self.sources
            ]
            lines += table_lines(("SOURCE", "SHAPE", "DTYPE", "STATUS", "RULE", "OUTPUTS"), rows)
        if self.has_target:
            lines.append("")
            lines.append(f"target: {len(self.missing)} missing, {len(self.mismatched)} mismatched, {len(self.unused)} unused")
            for name in self.missing:
                lines.append(f"  missing     {name}")
            for m in self.mismatched:
                lines.append(f"  mismatched  {m}")
            for name in self.unused:
                lines.append(f"  unused      {name}")
        lines.append("")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("no problems")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


def _problem_dict(problem: str) -> dict[str, str | None]:
    """A problem as JSON data (a plain string, from older code, has kind None)."""
    if isinstance(problem, Problem):
        return problem.to_dict()
    return {"kind": None, "rule": None, "name": None, "message": str(problem)}
