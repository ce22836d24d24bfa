"""The plan: which source entries feed which outputs through which ops, checked on metadata.

:func:`build_plan` reads no tensor data. It assigns every entry to the first rule that matches
it, infers every output's shape and dtype through the rule's ops, and collects every problem
(rules that own nothing, duplicate outputs, ops that do not apply, results that do not fit
the target) into ``plan.problems``. Data is read only when a writer calls an output's
``compute()``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..gcpause import paused_gc
from ..dtypes import by_name, is_floating
from ..errors import PlanError, Problem, SpecError, UsageError, problem
from ..options import keyword_options, option_value
from ..store import Entry, Output, Store, shape_problem, shape_text
from .aliases import AliasTable
from .execute import (
    SourceCache, SplitShared, Step, cast_blocks, describe_steps, dtype_name, ends_in_view, join_compute,
    only_casts, single_compute,
)
from .cast import Cast, lossy_cast
from .ops import Op, OpError, Split, Transpose
from .ownership import Owned, match_rule, nearest_names, own_part
from .patterns import in_part, natural_key, part_patterns
from .report import TargetMismatch, OutputRecord, PlanReport, SourceRecord
from .spec import Rule, Spec, load_spec, parse_dtype_option

__all__ = ["TargetTensor", "Plan", "build_plan"]


@dataclass(frozen=True)
class TargetTensor:
    """A tensor an output must fit: a live model's variable or a ``.keras`` file's weight.

    Attributes:
        shape: The tensor's shape.
        dtype: Its numpy dtype (a dtype name such as ``"bfloat16"`` is accepted too).
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        dtype = by_name(self.dtype) if isinstance(self.dtype, str) else np.dtype(self.dtype)
        object.__setattr__(self, "dtype", dtype)


@dataclass
class Plan:
    """A checked mapping from a store to outputs. Building it read no tensor data.

    Attributes:
        outputs: What to write, in order. ``compute()`` reads the sources (each source once,
            even when it feeds several outputs) and runs the ops; ``source`` is set when an
            output is an entry's stored bytes unchanged.
        problems: Every problem found, one line each. Empty when the plan is good.
        hints: Options that would fix some of the problems (``allow_lossy=True``), written
            with option markers (see :func:`ckptconv.errors.render_options`).
        report: What the plan does, per output and per source entry.
        store: The source store.
        spec: The spec the plan follows.
    """

    outputs: list[Output]
    problems: list[Problem]
    report: PlanReport
    store: Store = field(repr=False)
    spec: Spec = field(repr=False)
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the plan has no problems."""
        return not self.problems

    def raise_if_problems(self) -> None:
        """Raise :class:`~ckptconv.errors.PlanError` listing every problem, if there is one."""
        if self.problems:
            raise PlanError(self.problems, path=self.store.path, hint="; ".join(self.hints) or None)

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(name, array)`` for every output in order (reads the data).

        Raises:
            PlanError: the plan has problems, or an op fails on the data (a cast overflows).
        """
        self.raise_if_problems()
        for output in self.outputs:
            yield output.name, output.compute()

    def __repr__(self) -> str:
        state = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        return f"<Plan {self.store.path!r}: {len(self.outputs)} outputs, {state}>"


# -- planning ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Planned:
    """An output being planned."""

    name: str
    sources: list[Entry]
    shape: tuple[int, ...]
    dtype: np.dtype
    compute: Callable[[], np.ndarray]
    ops_text: str
    rule: Rule | None
    unchanged: bool
    order: tuple[int, int]
    view: Callable[[], np.ndarray] | None = None  # compute, but may give a transposed view
    blocks: Callable[[int], Iterator[np.ndarray]] | None = None  # compute, piece by piece


class _Builder:
    """Builds one plan. Collects problems instead of raising them."""

    def __init__(
        self,
        store: Store,
        spec: Spec,
        *,
        target: Mapping[str, TargetTensor] | None,
        include_all: bool,
        default_dtype: str | None,
        strict: bool,
        allow_lossy: bool = False,
    ) -> None:
        self.store = store
        self.allow_lossy = allow_lossy
        self.hints: list[str] = []
        self.spec = spec
        self.target = target
        self.default_dtype = default_dtype
        self.strict = strict
        self.entries = store.entries(include_all=include_all)
        self.problems: list[Problem] = []
        self.cache = SourceCache()
        self.planned: list[_Planned] = []
        self.aliases = AliasTable(target) if target is not None else None
        self.part: set[str] | None = None  # the part of the target only= chooses

    def problem(self, kind: str, message: str, *, rule: Rule | None = None, name: str | None = None) -> None:
        self.problems.append(problem(kind, message, rule=rule.label if rule is not None else None, name=name))

    # ownership

    def assign(self) -> tuple[dict[int, list[Owned]], list[tuple[int, Entry]]]:
        """First match wins: rule number -> owned entries; plus the entries no rule owns."""
        owned: dict[int, list[Owned]] = {r.number: [] for r in self.spec.rules}
        free: list[tuple[int, Entry]] = []
        rules_by_name, rules_by_layer, general = _rule_index(self.spec.rules)
        for position, entry in enumerate(self.entries):
            rules = general
            named, layered = rules_by_name.get(entry.name), rules_by_layer.get(entry.layer)
            if named or layered:  # rules of literal names or layers can match only such entries
                rules = sorted([*general, *(named or ()), *(layered or ())], key=_rule_number)
            for rule in rules:
                hit = match_rule(rule, entry)
                if hit is not None:
                    owned[rule.number].append(Owned(entry, hit[1], hit[0], position))
                    break
            else:
                free.append((position, entry))
        return owned, free

    def check_ownership(self, rule: Rule, owned: list[Owned]) -> None:
        if rule.optional:
            return
        patterns = rule.name_patterns
        if owned:
            # every pattern of a list must pull its weight too: a typo in one is still a typo
            if len(patterns) > 1:
                used = {o.pattern for o in owned}
                for i, p in enumerate(patterns):
                    if i not in used:
                        self.problem(
                            "no-match",
                            f"{rule.label}: pattern {p.text!r} matches no entry{self._nearest_text(p.text)}",
                            rule=rule,
                        )
            return
        everything = [e for e in self.entries if match_rule(rule, e) is not None]
        if everything:
            owners = sorted({self._owner_of(e) for e in everything})
            names = ", ".join(repr(e.name) for e in everything[:3]) + (", ..." if len(everything) > 3 else "")
            self.problem(
                "shadowed",
                f"{rule.label}: owns no entry: the {len(everything)} it matches ({names}) belong to "
                f"earlier rule(s) {', '.join(f'#{n}' for n in owners)}; move it up, or mark it optional: true",
                rule=rule,
            )
            return
        self.problem("no-match", f"{rule.label}: matches no entry{self._why_nothing(rule)}", rule=rule)

    def _owner_of(self, entry: Entry) -> int:
        for rule in self.spec.rules:
            if match_rule(rule, entry) is not None:
                return rule.number
        return 0

    def _nearest_text(self, pattern: str, *, layers: bool = False) -> str:
        pool = sorted({e.layer for e in self.entries}) if layers else [e.name for e in self.entries]
        near = nearest_names(pattern, pool)
        what = "layers" if layers else "names"
        if not near:
            return f"; no similar {what} in the source"
        return f"; nearest {what} in the source: " + ", ".join(repr(n) for n in near)

    def _why_nothing(self, rule: Rule) -> str:
        patterns = rule.name_patterns
        layer_pattern = rule.layer_pattern
        if patterns:
            hits = [e for e in self.entries if any(p.match(e.name) for p in patterns)]
            if not hits:
                return self._nearest_text(patterns[0].text)
        else:
            hits = list(self.entries)
        if layer_pattern is not None:
            layer_hits = [e for e in hits if layer_pattern.match(e.layer)]
            if not layer_hits:
                if patterns:
                    return f" (names match, but no layer matches {layer_pattern.text!r})"
                return self._nearest_text(layer_pattern.text, layers=True)
            hits = layer_hits
        if rule.index is not None:
            have = sorted({e.index for e in hits})
            return f": the entries it selects have index {', '.join(map(str, have))}, not {rule.index}"
        return ""

    # output planning

    def infer_chain(
        self, rule: Rule | None, ops: Sequence[Op], shape: tuple[int, ...], dtype: np.dtype, name: str, what: str
    ) -> tuple[list[Step], tuple[int, ...], np.dtype] | None:
        """Infer through ``ops`` (plus the default cast); None and a problem when one fails."""
        target = self.target.get(name) if self.target is not None else None
        declared = rule.shape if rule is not None else None
        # reshape: target takes the live target's shape, or else the rule's declared shape
        wanted = target.shape if target is not None else declared
        steps: list[Step] = []
        label = rule.label if rule is not None else "passthrough"
        impossible = shape_problem(shape, np.dtype(dtype).itemsize)
        if impossible is not None:
            self.problem(
                "op", f"{label}: {what}: the result {shape_text(shape)} would have {impossible}",
                rule=rule, name=name,
            )
            return None
        for i, op in enumerate(ops, start=1):
            try:
                new_shape, new_dtype = op.infer(shape, dtype, target=wanted)
                impossible = shape_problem(new_shape, np.dtype(new_dtype).itemsize)
                if impossible is not None:
                    raise OpError(f"the result {shape_text(new_shape)} would have {impossible}")
            except OpError as e:
                self.problem(
                    "op",
                    f"{label}: {what}: op {i} ({op.describe()}) does not apply to "
                    f"{shape_text(shape)} {dtype_name(dtype)}: {e}",
                    rule=rule,
                    name=name,
                )
                return None
            if not _is_identity(op, shape, dtype, new_shape, new_dtype):
                steps.append(Step(op, new_shape, new_dtype))
            shape, dtype = new_shape, new_dtype
        explicit_cast = any(isinstance(op, Cast) for op in ops)
        default = self._default_dtype_for(name, target)
        if default is not None and not explicit_cast and is_floating(dtype) and default != dtype:
            note = "target dtype" if self.default_dtype == "target" else "default dtype"
            lost = None if self.allow_lossy else lossy_cast(dtype, default)
            if lost:
                label = rule.label if rule is not None else "passthrough"
                self.problems.append(
                    f"{label}: {what}: the {note} {dtype_name(default)} is a lossy cast: {lost}"
                )
                self.hints.append("pass {opt:allow_lossy=True} to cast to it anyway")
                return None
            allow = rule.allow_overflow if rule is not None else False
            cast = Cast(default, allow_overflow=allow, note=note, allow_lossy=self.allow_lossy)
            steps.append(Step(cast, shape, default))
            dtype = default
        if declared is not None and tuple(declared) != tuple(shape):
            assert rule is not None
            self.problem(
                "declared-shape",
                f"{rule.label}: {what}: the result is {shape_text(shape)}, the rule declares "
                f"shape {shape_text(declared)}",
                rule=rule,
                name=name,
            )
            return None
        return steps, shape, dtype

    def _default_dtype_for(self, name: str, target: TargetTensor | None) -> np.dtype | None:
        if self.default_dtype is None:
            return None
        if self.default_dtype == "target":
            if target is None or not is_floating(target.dtype):
                return None
            return target.dtype
        return by_name(self.default_dtype)

    def add(
        self,
        *,
        name: str,
        sources: list[Entry],
        shape: tuple[int, ...],
        dtype: np.dtype,
        compute: Callable[[], np.ndarray],
        ops_text: str,
        rule: Rule | None,
        unchanged: bool,
        order: tuple[int, int],
        view: Callable[[], np.ndarray] | None = None,
        blocks: Callable[[int], Iterator[np.ndarray]] | None = None,
    ) -> None:
        for entry in sources:
            self.cache.register(entry)
        self.planned.append(
            _Planned(name, sources, shape, dtype, compute, ops_text, rule, unchanged, order, view, blocks)
        )

    def _chain_output(
        self, rule: Rule | None, owned: Owned, name: str, ops: Sequence[Op], *, allow_default: bool = True
    ) -> None:
        entry = owned.entry
        what = f"entry {entry.name!r}"
        if allow_default:
            chain = self.infer_chain(rule, ops, entry.shape, entry.dtype, name, what)
        else:
            chain = ([], entry.shape, entry.dtype)
        if chain is None:
            return
        steps, shape, dtype = chain
        label = rule.label if rule is not None else "passthrough"
        self.add(
            name=name,
            sources=[entry],
            shape=shape,
            dtype=dtype,
            compute=single_compute(self.cache, self.store.path, entry, steps, shape, dtype, name, label),
            view=single_compute(self.cache, self.store.path, entry, steps, shape, dtype, name, label, view=True)
            if ends_in_view(steps)
            else None,
            blocks=cast_blocks(self.cache, self.store.path, entry, steps, name, label)
            if only_casts(steps) and entry.byte_range is not None
            else None,
            ops_text=describe_steps(steps),
            rule=rule,
            unchanged=not steps,
            order=(owned.position, 0),
        )

    def plan_map(self, rule: Rule, owned: list[Owned]) -> None:
        templates = rule.to_templates
        to_layer = rule.to_layer_template
        for o in owned:
            if templates:
                name = templates[0].render(o.fields)
            elif to_layer is not None:
                own, sep = own_part(o.entry)
                layer = to_layer.render(o.fields)
                name = f"{layer}{sep}{own}" if layer else own
            else:
                name = o.entry.name
            self._chain_output(rule, o, name, rule.ops)

    def plan_split(self, rule: Rule, owned: list[Owned]) -> None:
        split: Split = rule.split
        templates = rule.to_templates
        for o in owned:
            entry = o.entry
            try:
                parts = split.infer_split(entry.shape, entry.dtype)
            except OpError as e:
                self.problem(
                    "op",
                    f"{rule.label}: entry {entry.name!r}: {split.describe()} does not apply to "
                    f"{shape_text(entry.shape)} {dtype_name(entry.dtype)}: {e}",
                    rule=rule,
                    name=entry.name,
                )
                continue
            names = [t.render(o.fields) for t in templates]
            chains = []
            for i, ((shape, dtype), name) in enumerate(zip(parts, names)):
                chain = self.infer_chain(rule, rule.ops, shape, dtype, name, f"entry {entry.name!r} part {i + 1}")
                chains.append(chain)
            if any(c is None for c in chains):
                continue
            shared = SplitShared(entry, split, self.cache)
            for i, (chain, name) in enumerate(zip(chains, names)):
                assert chain is not None
                steps, shape, dtype = chain
                self.add(
                    name=name,
                    sources=[entry],
                    shape=shape,
                    dtype=dtype,
                    compute=shared.compute_part(i, steps, shape, dtype, name, rule.label, self.store.path),
                    ops_text=describe_steps(steps, f"{split.describe()} -> part {i + 1}"),
                    rule=rule,
                    unchanged=False,
                    order=(o.position, i),
                )

    def plan_join(self, rule: Rule, owned: list[Owned]) -> None:
        join = rule.join
        assert join is not None
        template = rule.to_templates[0]
        patterns = rule.name_patterns
        groups: dict[tuple[str, ...], list[Owned]] = {}
        for o in owned:
            key = tuple(o.fields[f] for f in template.fields)
            groups.setdefault(key, []).append(o)
        for members in groups.values():
            members.sort(key=lambda o: (o.pattern, natural_key(o.entry.name)))
            name = template.render(members[0].fields)
            if len(patterns) > 1:
                present = {o.pattern for o in members}
                lacking = [patterns[i].text for i in range(len(patterns)) if i not in present]
                if lacking:
                    have = ", ".join(repr(o.entry.name) for o in members)
                    self.problem(
                        "incomplete-join",
                        f"{rule.label}: output {name!r} has no source for pattern(s) "
                        f"{', '.join(map(repr, lacking))} (it has {have})",
                        rule=rule,
                        name=name,
                    )
                    continue
            entries = [o.entry for o in members]
            try:
                shape, dtype = join.infer_many([e.shape for e in entries], [e.dtype for e in entries])
            except OpError as e:
                listed = ", ".join(f"{e_.name!r} {shape_text(e_.shape)}" for e_ in entries)
                self.problem("op", f"{rule.label}: output {name!r} from {listed}: {e}", rule=rule, name=name)
                continue
            chain = self.infer_chain(rule, rule.ops, shape, dtype, name, f"output {name!r}")
            if chain is None:
                continue
            steps, shape, dtype = chain
            self.add(
                name=name,
                sources=entries,
                shape=shape,
                dtype=dtype,
                compute=join_compute(self.cache, self.store.path, join, entries, steps, shape, dtype, name, rule.label),
                ops_text=describe_steps(steps, join.describe()),
                rule=rule,
                unchanged=False,
                order=(min(o.position for o in members), 0),
            )

    # the whole plan

    def build(self) -> Plan:
        owned, free = self.assign()
        status: dict[str, tuple[str, int | None]] = {}
        for rule in self.spec.rules:
            mine = owned[rule.number]
            self.check_ownership(rule, mine)
            if rule.is_drop:
                for o in mine:
                    status[o.entry.name] = ("dropped", rule.number)
            elif rule.split is not None:
                self.plan_split(rule, mine)
            elif rule.join is not None:
                self.plan_join(rule, mine)
            else:
                self.plan_map(rule, mine)
            for o in mine:
                status.setdefault(o.entry.name, ("used", rule.number))
        for position, entry in free:
            if self.spec.passthrough:
                status[entry.name] = ("passthrough", None)
                self._passthrough(position, entry)
            else:
                # passthrough: false drops what no rule owns, on purpose
                status[entry.name] = ("dropped", None)
        self.planned.sort(key=lambda p: p.order)
        self._check_duplicates()
        report = self._check_target_and_report(status)
        outputs = [
            Output(
                p.name, p.shape, p.dtype, p.compute,
                source=p.sources[0] if p.unchanged else None, compute_view=p.view,
                compute_blocks=p.blocks,
            )
            for p in self.planned
        ]
        report.problems = list(self.problems)
        return Plan(
            outputs=outputs, problems=list(self.problems), report=report, store=self.store,
            spec=self.spec, hints=list(dict.fromkeys(self.hints)),
        )

    def _passthrough(self, position: int, entry: Entry) -> None:
        owned = Owned(entry, {"0": entry.name}, 0, position)
        # a name Keras changed between its lines matches the target's spelling (aliases.py)
        name = entry.name if self.aliases is None else self.aliases.passthrough_name(entry)
        # the default dtype applies to weights; training state keeps its dtype unless a rule casts
        self._chain_output(None, owned, name, (), allow_default=entry.kind == "weight")

    def _check_duplicates(self) -> None:
        by_name: dict[str, list[_Planned]] = {}
        for p in self.planned:
            by_name.setdefault(p.name, []).append(p)
        for name, group in by_name.items():
            if len(group) > 1:
                makers = "; ".join(
                    f"{p.rule.label if p.rule else 'passthrough'} from {', '.join(repr(e.name) for e in p.sources)}"
                    for p in group
                )
                self.problem("duplicate", f"{len(group)} outputs are named {name!r}: {makers}", name=name)

    def _check_target_and_report(self, status: dict[str, tuple[str, int | None]]) -> PlanReport:
        report = PlanReport(path=self.store.path, format=self.store.format, has_target=self.target is not None)
        if self.target is not None:
            self._check_target(self.target, status, report)
        outputs_of: dict[str, list[str]] = {}
        for p in self.planned:
            for e in p.sources:
                outputs_of.setdefault(e.name, []).append(p.name)
        for entry in self.entries:
            # an entry whose rule could not plan it stays "used" by that rule (with its problem)
            st, rule_number = status.get(entry.name, ("unused", None))
            report.sources.append(
                SourceRecord(entry.name, st, entry.shape, dtype_name(entry.dtype), entry.kind,  # type: ignore[arg-type]
                             rule_number, tuple(outputs_of.get(entry.name, ())))
            )
        report.unused = [s.name for s in report.sources if s.status == "unused"]
        if self.strict and report.unused:
            self.problem("unused", f"{len(report.unused)} source weight(s) go nowhere: {_some(report.unused)}")
        report.outputs = [
            OutputRecord(p.name, tuple(e.name for e in p.sources), p.ops_text, p.shape, dtype_name(p.dtype),
                         p.rule.number if p.rule else None, p.unchanged)
            for p in self.planned
        ]
        return report

    def _check_target(
        self, target: Mapping[str, TargetTensor], status: dict[str, tuple[str, int | None]], report: PlanReport
    ) -> None:
        """Every output against the target tensor of its name; what the target lacks, what it misses."""
        target_names = list(target)
        for p in self.planned:
            want = target.get(p.name)
            if want is not None and self.part is not None and p.name not in self.part:
                for e in p.sources:
                    status[e.name] = ("outside-only", None)
                continue
            if want is None:
                if p.rule is None:
                    # a passed-through entry the target has no place for: it stays an output
                    # (a loader reports it too), and its source counts as unused
                    status[p.sources[0].name] = ("unused", None)
                    continue
                near = difflib.get_close_matches(p.name, target_names, n=3, cutoff=0.5)
                hint = ("; nearest target names: " + ", ".join(map(repr, near))) if near else ""
                self.problem(
                    "not-in-target",
                    f"{p.rule.label}: output {p.name!r} is not a weight of the target{hint}",
                    rule=p.rule,
                    name=p.name,
                )
                continue
            if tuple(want.shape) == p.shape and np.dtype(want.dtype) == p.dtype:
                continue
            report.mismatched.append(
                TargetMismatch(p.name, tuple(want.shape), dtype_name(want.dtype), p.shape, dtype_name(p.dtype),
                               p.rule.number if p.rule else None)
            )
            fix = ""
            if tuple(want.shape) == p.shape:
                fix = " (add {cast: %s} to the rule, or use dtype: target)" % dtype_name(want.dtype)
            self.problem(
                "target-mismatch",
                f"{p.rule.label if p.rule else 'passthrough'}: output {p.name!r} does not fit the target: "
                f"it is {shape_text(p.shape)} {dtype_name(p.dtype)}, the target has "
                f"{shape_text(want.shape)} {dtype_name(want.dtype)} (shape/dtype){fix}",
                rule=p.rule,
                name=p.name,
            )
        produced = {p.name for p in self.planned}
        report.missing = [n for n in target if n not in produced and (self.part is None or n in self.part)]
        if self.strict and report.missing:
            self.problem("missing", f"{len(report.missing)} target weight(s) nothing fills: {_some(report.missing)}")


def _some(names: Sequence[str], limit: int = 10) -> str:
    """The first names, quoted, and "..." when there are more."""
    return ", ".join(map(repr, names[:limit])) + (", ..." if len(names) > limit else "")


def _is_identity(op: Op, shape, dtype, new_shape, new_dtype) -> bool:  # type: ignore[no-untyped-def]
    """An op that changes nothing (a cast to the same dtype, a transpose of a vector)."""
    if tuple(shape) != tuple(new_shape) or np.dtype(dtype) != np.dtype(new_dtype):
        return False
    if isinstance(op, Cast):
        return True
    if isinstance(op, Transpose):
        return len(shape) <= 1 or (op.axes is not None and list(op.axes) == list(range(len(shape))))
    return False


@keyword_options
def build_plan(
    store: Store,
    spec: Spec | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    target: Mapping[str, TargetTensor] | None = None,
    include_all: bool = False,
    dtype: str | np.dtype | None = None,
    strict: bool = False,
    allow_lossy: bool = False,
    only: str | Sequence[str] | None = None,
) -> Plan:
    """Plan how ``store``'s entries become outputs, checking everything on metadata.

    Reads no tensor data: ``Output.compute()`` on ``plan.outputs`` does, later.

    Args:
        store: The source checkpoint.
        spec: The mapping: a :class:`Spec`, its mapping form, or a spec file path. None is the
            identity (every weight passes through under its own name).
        target: Names with shapes and dtypes the outputs must fit (a live model's variables,
            or a ``.keras`` file's). With a target, results are checked against it,
            ``reshape: target`` and ``dtype: target`` work, and a passed-through entry the
            target has no place for stays an output but is reported ``unused``.
        include_all: Include optimizer and bookkeeping entries (otherwise only weights take
            part; the others are neither used nor unused).
        dtype: Default output dtype for floating-point weights, overriding the spec's
            ``dtype:`` (``"keep"``, a dtype name, or ``"target"``).
        strict: Also count target weights nothing fills and source weights that go nowhere
            as problems (what loading a live model in strict mode needs).
        allow_lossy: Let the default ``dtype`` be one that loses information (floats to
            integers or booleans); without it such a plan has a problem per tensor. A cast op
            in the spec says so itself (``allow_lossy: true``).
        only: With a target: the part of it to fill, as ``load_into(only=...)`` takes it
            (globs or ``re:`` patterns over target names and their layers). Target weights
            outside it are not missing, and sources that fill them get the status
            ``outside-only`` (neither used nor unused).

    Returns:
        The plan; ``plan.problems`` lists every problem (``plan.raise_if_problems()``).

    Raises:
        UsageError: ``dtype`` is not a dtype name (or is ``target`` without a target), or
            ``only`` has no target or matches none of its weights.
        SpecError: the spec itself is invalid (a plan is not built from a broken spec), or it
            asks for ``dtype: target`` without a target.
    """
    resolved = Spec() if spec is None else load_spec(spec)
    default = option_value("dtype", dtype, parse_dtype_option) if dtype is not None else resolved.dtype
    if default == "target" and target is None:
        if dtype is not None:  # the option's, not the spec's
            raise UsageError(
                "{opt:dtype='target'} means each target tensor's dtype, and there is no target (a "
                "live model, or {opt:target}); give a dtype name or keep",
                option="dtype",
            )
        raise SpecError(
            "dtype: target means each target tensor's dtype, and there is no target (a live "
            "model, or {opt:target}); give a dtype name or keep",
            path=resolved.source,
        )
    if target is not None:
        target = {name: t if isinstance(t, TargetTensor) else TargetTensor(t.shape, t.dtype) for name, t in target.items()}
    part = None
    if only is not None:
        if target is None:
            raise UsageError(
                "{opt:only} chooses a part of the target, and there is no target (a live model, "
                "or {opt:target})",
                option="only",
            )
        patterns = part_patterns(only)
        part = {name for name in target if in_part(patterns, name)}
        if not part:
            raise UsageError(f"{{opt:only={only!r}}} matches no weight of the target", option="only")
    builder = _Builder(
        store, resolved, target=target, include_all=include_all, default_dtype=default,
        strict=strict, allow_lossy=allow_lossy,
    )
    builder.part = part
    with paused_gc():  # an output, a record and a source per tensor, no cycles
        return builder.build()


def _rule_number(rule: Rule) -> int:
    return rule.number


def _rule_index(rules: Sequence[Rule]) -> tuple[dict[str, list[Rule]], dict[str, list[Rule]], list[Rule]]:
    """The rules by the entries they can match, so that first-match ownership tries a few rules
    per entry, not all (a spec ``suggest`` writes has one rule per layer: thousands). A rule
    whose name patterns are all literal names can match only entries of those names; one
    without name patterns whose layer pattern is a literal layer name, only that layer's
    entries; any other rule may match anything. Returns (by entry name, by layer, the others),
    each in the spec's order."""
    by_name: dict[str, list[Rule]] = {}
    by_layer: dict[str, list[Rule]] = {}
    general: list[Rule] = []
    for rule in rules:
        patterns = rule.name_patterns
        if patterns and all(p.literal is not None for p in patterns):
            for literal in dict.fromkeys(p.literal for p in patterns):
                by_name.setdefault(literal, []).append(rule)
        elif not patterns and rule.layer_pattern is not None and rule.layer_pattern.literal is not None:
            by_layer.setdefault(rule.layer_pattern.literal, []).append(rule)
        else:
            general.append(rule)
    return by_name, by_layer, general
