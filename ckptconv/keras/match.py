"""Matching a source's entries to a live model's variables: by name or spec (through the
mapper's plan) or by Keras' topological order; every pair checked on metadata."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import dtype_name, is_floating
from ..errors import LoadError, problem
from ..mapping.cast import cast_array, cast_problem
from ..mapping.ops import ExecutionProblem
from ..store import Entry, Store
from ..store import shape_text
from .report import LoadedWeight, LoadReport, WeightInfo, WeightMismatch
from .structure import StructureMatch
from .targets import LiveModel, TargetVar

__all__ = [
    "Assignment",
    "Matching",
    "casting",
    "match_by_order",
    "match_by_plan",
    "match_by_structure",
    "without_model_name",
    "renamed",
]


@dataclass(eq=False)
class Assignment:
    """One target variable and how to compute its new value."""

    target: TargetVar
    source: str
    compute: Callable[[], np.ndarray]
    cast_from: np.dtype | None = None
    raw: Entry | None = None  # set when the value is exactly this entry's stored bytes

    @property
    def can_fail(self) -> bool:
        """Whether computing the value can fail on the data itself: anything but a plain copy
        of stored bytes with no checksum to check (a checksum, a decompressing h5py read, an
        op, a cast that may overflow)."""
        raw = self.raw
        return raw is None or raw.byte_range is None or raw.crc32c is not None


@dataclass
class Matching:
    assignments: list[Assignment] = field(default_factory=list)
    report: LoadReport = field(default_factory=LoadReport)


def _info(name: str, shape: Iterable[int], dtype: np.dtype) -> WeightInfo:
    return WeightInfo(name, tuple(int(d) for d in shape), dtype_name(dtype))


def _check_pair(
    match: Matching,
    target: TargetVar,
    source: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    compute: Callable[[], np.ndarray],
    *,
    cast: bool,
    cast_from: np.dtype | None = None,
    raw: Entry | None = None,
    matched_by: str = "name",
    path: str | None = None,
) -> None:
    """Accept ``source`` for ``target`` if shape and dtype fit; otherwise report a mismatch.
    ``path``: the file ``source`` is read from (named by a cast's overflow)."""
    reason = None
    if shape != target.shape:
        reason = "shape differs"
    elif dtype != target.dtype and not cast:
        reason = "dtype differs (casting is off)"
    elif dtype != target.dtype and cast_problem(dtype, target.dtype) is not None:
        reason = f"cannot cast {dtype_name(dtype)} to {dtype_name(target.dtype)}"
    if reason is not None:
        mismatch = WeightMismatch(
            target.name,
            source,
            target.shape,
            dtype_name(target.dtype),
            tuple(shape),
            dtype_name(dtype),
            reason,
        )
        match.report.mismatched.append(mismatch)
        match.report.problems.append(
            problem(
                "mismatched",
                f"mismatched: {target.name!r} is {shape_text(target.shape)} "
                f"{dtype_name(target.dtype)}, source {source!r} is {shape_text(shape)} "
                f"{dtype_name(dtype)}: {reason}",
                name=target.name,
            )
        )
        return
    if dtype != target.dtype:
        cast_from = dtype
        compute = casting(compute, target.dtype, source, path=path, into=target.name)
        raw = None
    match.assignments.append(Assignment(target, source, compute, cast_from, raw))
    match.report.loaded.append(
        LoadedWeight(
            target.name,
            source,
            target.shape,
            dtype_name(target.dtype),
            dtype_name(cast_from) if cast_from is not None else None,
            matched_by,
        )
    )


def casting(
    compute: Callable[[], np.ndarray], dtype: np.dtype, name: str, *, path: str | None = None, into: str | None = None
) -> Callable[[], np.ndarray]:
    """Wrap ``compute`` to cast to ``dtype`` with the mapper's cast (:func:`~ckptconv.mapping.
    cast.cast_array`: round to nearest even once, from the source dtype; values that overflow
    to inf, or out of an integer type's range, are an error naming the source tensor ``name``,
    its file ``path`` and the variable ``into``)."""
    def run() -> np.ndarray:
        array = np.asarray(compute())
        try:
            return cast_array(array, dtype)
        except ExecutionProblem as e:
            variable = f" for variable {into!r}" if into is not None and into != name else ""
            raise LoadError(
                f"casting {dtype_name(array.dtype)} to {dtype_name(dtype)}{variable}: {e}; keep the "
                "variable's dtype wider or scale the weights",
                path=path,
                tensor=name,
            ) from None

    return run


def _missing_and_unused(
    match: Matching, targets: list[TargetVar], filled: set[str], unused: list[Entry]
) -> None:
    for target in targets:
        if target.name not in filled:
            match.report.missing.append(_info(target.name, target.shape, target.dtype))
            match.report.problems.append(
                problem(
                    "missing",
                    f"missing: no source for {target.name!r} {shape_text(target.shape)} "
                    f"{dtype_name(target.dtype)}",
                    name=target.name,
                )
            )
    for entry in unused:
        _unused(match, _info(entry.name, entry.shape, entry.dtype))


def _unused(match: Matching, info: WeightInfo) -> None:
    match.report.unused.append(info)
    match.report.problems.append(
        problem(
            "unused",
            f"unused: source {info.name!r} {shape_text(info.shape)} {info.dtype} fills no "
            "variable of the model",
            name=info.name,
        )
    )


def _with_default_dtype(
    entry: Entry, dtype: np.dtype | None
) -> tuple[Callable[[], np.ndarray], np.dtype]:
    """``dtype=`` casts floating-point sources before they meet the target."""
    if dtype is None or not is_floating(entry.dtype) or entry.dtype == dtype:
        return entry.read, entry.dtype
    return casting(entry.read, dtype, entry.name, path=entry.path), dtype


def match_by_structure(
    live: LiveModel,
    store: Store,
    found: StructureMatch,
    *,
    include_all: bool,
    cast: bool,
    dtype: np.dtype | None,
) -> Matching:
    """Pairs Keras' own structure gave (:func:`~.structure.match_structure`), checked as
    every other pair is; sources of variables outside ``only=`` are set aside."""
    match = Matching(report=LoadReport(mode="structure", structure=found.kind))
    part = {v.name for v in live.vars}
    by_name = {v.name: v for v in live.all_vars}
    paired: set[int] = {id(e) for e in found.shared}
    for name, entry in found.pairs.items():
        paired.add(id(entry))
        if name not in part:
            match.report.outside_only.append(_info(entry.name, entry.shape, entry.dtype))
            continue
        target = by_name[name]
        compute, src_dtype = _with_default_dtype(entry, dtype)
        _check_pair(
            match, target, entry.name, entry.shape, src_dtype, compute, cast=cast,
            raw=entry if compute == entry.read else None, matched_by="structure", path=entry.path,
        )
        if entry.name not in (name, f"{live.name}/{name}"):  # the model's own name leads variable.path
            match.report.names_differ.append((name, entry.name))
    unused = [e for e in store.entries(include_all=include_all) if id(e) not in paired]
    _missing_and_unused(match, [], set(), unused)
    return match


def match_by_order(
    live: LiveModel, store: Store, *, include_all: bool, cast: bool, dtype: np.dtype | None
) -> Matching:
    """Keras' topological rule: the i-th layer with weights gets the i-th source layer."""
    match = Matching(report=LoadReport(mode="order"))
    target_layers: dict[str, list[TargetVar]] = {}
    for target in live.vars:
        target_layers.setdefault(target.owner_path, []).append(target)
    source_layers = list(store.layers(include_all=include_all).items())
    filled: set[str] = set()
    unused: list[Entry] = []
    pairs = list(zip(target_layers.items(), source_layers))
    for (t_layer, t_vars), (s_layer, s_entries) in pairs:
        if len(t_vars) != len(s_entries):
            match.report.problems.append(
                problem(
                    "mismatched",
                    f"mismatched: layer {t_layer!r} has {len(t_vars)} weights, source layer "
                    f"{s_layer!r} has {len(s_entries)}",
                    name=t_layer,
                )
            )
            for target, entry in zip(t_vars, s_entries):
                filled.add(target.name)
                match.report.mismatched.append(
                    WeightMismatch(
                        target.name,
                        entry.name,
                        target.shape,
                        dtype_name(target.dtype),
                        entry.shape,
                        entry.dtype_name,
                        f"layer has {len(t_vars)} weights, source layer {len(s_entries)}",
                    )
                )
            unused += s_entries[len(t_vars) :]
            continue
        for target, entry in zip(t_vars, s_entries):
            filled.add(target.name)
            compute, src_dtype = _with_default_dtype(entry, dtype)
            _check_pair(
                match, target, entry.name, entry.shape, src_dtype, compute, cast=cast,
                raw=entry if compute == entry.read else None, matched_by="order", path=entry.path,
            )
            if entry.name != target.name:
                match.report.names_differ.append((target.name, entry.name))
    extra_targets = len(target_layers) - len(pairs)
    extra_sources = len(source_layers) - len(pairs)
    if extra_targets or extra_sources:
        match.report.problems.append(
            problem(
                "structure",
                f"mismatched: the model has {len(target_layers)} layers with weights, the "
                f"source {len(source_layers)}",
            )
        )
    for _, s_entries in source_layers[len(pairs) :]:
        unused += s_entries
    _missing_and_unused(match, live.vars, filled, unused)
    return match


def match_by_plan(
    live: LiveModel,
    store: Store,
    mapping: Any,
    *,
    include_all: bool,
    cast: bool,
    dtype: np.dtype | None,
) -> Matching:
    """Match through the mapper: its plan, built against the model's shapes and dtypes.

    ``mapping=None`` is the mapper's identity plan (match by name, with the cross-line alias
    table of :mod:`ckptconv.mapping.aliases`), so rules, casts and the report are one
    mechanism whatever the mapping. ``cast=True`` asks the plan for the target's dtype
    (``dtype: target``: round to nearest even, overflow refused). The plan sees every
    variable of the model, so a source of a variable outside ``only=`` is set aside as
    such, not reported unused.
    """
    from ..mapping import TargetTensor, build_plan

    match = Matching(report=LoadReport(mode="name" if mapping is None else "spec"))
    target = {v.name: TargetTensor(shape=v.shape, dtype=v.dtype) for v in live.all_vars}
    plan_dtype: Any = dtype
    if plan_dtype is None and cast:
        plan_dtype = "target"
    plan = build_plan(store, mapping, target=target, include_all=include_all, dtype=plan_dtype)
    part = {v.name: v for v in live.vars}
    sources_of = {o.name: o for o in plan.report.outputs}
    records = {r.name: r for r in plan.report.sources}
    filled: set[str] = set()
    for output in plan.outputs:
        record = sources_of.get(output.name)
        names = record.sources if record is not None else ()
        if output.name not in target:
            continue  # a passed-through entry with no place in the model: reported unused below
        var = part.get(output.name)
        if var is None:
            for n in names:
                if n in records:
                    r = records[n]
                    match.report.outside_only.append(WeightInfo(n, tuple(r.shape), r.dtype))
            continue
        filled.add(var.name)
        by_rule = record is not None and record.rule is not None
        # The plan may have cast already (cast=True is its ``dtype: target``): say so.
        cast_from = None
        if len(names) == 1 and names[0] in store and store[names[0]].dtype != output.dtype:
            cast_from = store[names[0]].dtype
        _check_pair(
            match, var, "+".join(names) or output.name, output.shape, output.dtype,
            output.compute, cast=cast, cast_from=cast_from, raw=output.source,
            matched_by="spec" if by_rule else "name", path=store.path,
        )
        if not by_rule and len(names) == 1 and names[0] != var.name:
            match.report.names_differ.append((var.name, names[0]))
    match.report.dropped = list(plan.report.dropped)
    _missing_and_unused(match, live.vars, filled, [])
    for n in plan.report.unused:
        if n in records:
            _unused(match, WeightInfo(n, tuple(records[n].shape), records[n].dtype))
    for found in plan.problems:
        # Fit with the model is reported above, per weight; keep the plan's other findings
        # (rules that own nothing, outputs that name no variable, ops that cannot apply).
        if getattr(found, "kind", None) != "target-mismatch":
            match.report.problems.append(found)
    return match


def _model_name_prefixes(live: LiveModel, store: Store, targets: set[str]) -> list[str]:
    """The live model's own name, and the saved model's: the first part every weight of the
    store shares (``finetuned/`` of ``finetuned/enc1/kernel``), unless the model has a layer
    of that name."""
    prefixes = [live.name + "/"]
    weights = [e.name for e in store.entries()]
    firsts = {name.split("/", 1)[0] for name in weights}
    if len(firsts) == 1 and all("/" in name for name in weights):
        saved = next(iter(firsts)) + "/"
        if saved != prefixes[0] and not any(t.startswith(saved) for t in targets):
            prefixes.append(saved)
    return prefixes


def without_model_name(live: LiveModel, store: Store) -> tuple[Store, dict[str, str]]:
    """A view of ``store`` where ``MODEL/x`` names ``x`` when ``x`` is a variable of the model.

    Keras 3 puts a Sequential or subclassed model's own name in front of its variables'
    paths, and TensorFlow and Orbax checkpoints of such models record it
    (``seq/dense/kernel``); no Keras file does. ``MODEL`` is the live model's name, or the
    saved model's (the first part all the store's weights share) when the live model has
    another name. Only names that then match a variable of the model (inside ``only=`` or
    not), and that the store does not have already, are changed. Returns the view and
    ``{new name: recorded name}``.
    """
    targets = {v.name for v in live.all_vars}
    renames: dict[str, str] = {}
    for prefix in _model_name_prefixes(live, store, targets):
        for name in store:
            short = name[len(prefix) :]
            if (name.startswith(prefix) and name not in targets and name not in renames
                    and short in targets and short not in store):
                renames[name] = short
    if not renames:
        return store, {}
    return renamed(store, renames), {short: name for name, short in renames.items()}


def renamed(store: Store, renames: dict[str, str]) -> Store:
    """A view of ``store`` with the entries ``renames`` names under new names (``{recorded
    name: new name}``); the other entries, and every tensor's bytes, are the store's."""
    entries = [store[n].renamed(renames[n]) if n in renames else store[n] for n in store]
    return Store(entries, format=store.format, path=store.path, files=store.files, metadata=store.metadata)
