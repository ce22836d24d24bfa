"""Load a checkpoint into a live Keras model: checked as a whole first, then assigned.

:func:`load_into` matches a source (a file, a :class:`~ckptconv.Store` or ``{name: array}``)
to the variables of a Keras 3 or tf-keras model, checks every shape and dtype before any
variable changes, then assigns layer by layer with ``set_weights()`` (or ``assign`` per
variable where only part of a layer is loaded). It returns a :class:`LoadReport`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from ..dtypes import by_name
from ..errors import LoadError, UsageError, problem
from ..formats import open_source
from ..options import keyword_options
from ..store import Store
from .assign import assign, freeze_loaded
from .match import Matching, match_by_order, match_by_plan, match_by_structure, renamed, without_model_name
from .report import LoadReport
from .structure import Disagreement, StructureMatch, match_structure
from .targets import LiveModel, require_built, restrict

__all__ = ["load_into"]


@keyword_options
def load_into(
    model: Any,
    source: Store | Mapping[str, np.ndarray] | str | os.PathLike[str],
    mapping: Any = None,
    *,
    strict: bool = True,
    include_all: bool = False,
    by_order: bool = False,
    cast: bool = False,
    freeze: bool | str = False,
    only: str | Iterable[str] | None = None,
    dtype: str | np.dtype | None = None,
    check_first: bool = True,
) -> LoadReport:
    """Load weights from ``source`` into a live Keras 3 or tf-keras ``model``.

    Without a mapping, sources are matched **by structure** first, as Keras' own loaders do
    (Keras 3 files: the saving-tree keys, ``layers/dense_1/vars/0``, computed from the live
    model by Keras' own walk; legacy ``.h5``: layers with weights in order; object-based TF
    checkpoints: the object graph; Orbax checkpoints: Keras' state tree,
    ``trainable_variables/<variable.path>``), accepted only when the whole structure agrees (every
    variable, shapes included); otherwise **by name** (the canonical names, with the
    cross-line alias table). The report says which (``mode``, and ``matched_by`` per weight)
    and lists the names that differ.

    The whole match is checked against the model's variable shapes and dtypes on metadata
    alone before any tensor is read; then every value whose reading can fail on the data is
    read and checked once (``check_first``), and only then are tensors read and assigned one
    layer at a time with ``set_weights`` (or ``assign`` for a layer only partly loaded). So a
    problem in the match or in the data changes no variable; no copy of the old values is
    kept (nothing is restored: nothing was changed).

    Args:
        model: A built Keras 3 or tf-keras model (or layer).
        source: A checkpoint path (any format :func:`ckptconv.open` reads), a
            :class:`~ckptconv.Store`, or ``{name: numpy array}``.
        mapping: ``None`` to match as Keras does (by structure: see below), else by name;
            or a mapping spec (file path, dict or spec object) whose outputs are the model's
            variable names (its rules win; entries no rule owns match by name).
        strict: If True (the default), any variable without a source, any source weight
            left unused (and not dropped by the spec) and any shape or dtype mismatch raises
            :class:`~ckptconv.LoadError` listing all of them, and nothing changes. If False,
            what fits is loaded and the rest reported.
        include_all: Let optimizer and bookkeeping entries take part too (by default only
            ``kind="weight"`` entries do, and the others never count as unused).
        by_order: Ignore names: pair the model's layers with weights and the source's layers
            in order, and each layer's weights in order (Keras' topological loading).
        cast: Cast a source whose dtype differs from the variable's to the variable's dtype
            (round to nearest even; overflow to inf is an error). Without it, a dtype
            difference is a mismatch.
        freeze: True to set ``trainable=False`` on every layer that was loaded, or a glob
            (``block/*``, ``conv_*``) to freeze only the loaded layers whose path (or a
            parent's) matches. A frozen layer whose weights were only partly loaded is listed
            in ``report.partly_frozen``.
        only: Load into a part of the model only: a glob or a list of globs over variable
            names and layer paths (``dense_1``, ``block/*``, ``conv/kernel``). Variables
            outside the part are neither loaded nor reported missing, and sources that belong
            to them are reported "outside only=" (``report.outside_only``), not unused;
            strictness applies within the part (source weights that fill no variable of
            the model are listed in ``report.unused`` but do not fail the load).
        dtype: Cast floating-point source weights to this dtype before they meet the model.
        check_first: All or nothing on damaged data too: a check pass before the first
            variable changes computes and checks once every value whose reading can fail on
            the data (checksummed tensors, h5py reads of compressed data, ops, casts that may
            overflow); plain stored bytes are not read twice. A tensor that fails (a flipped
            byte) then leaves every variable as it was. False skips that pass (a TensorFlow
            checkpoint is then read once instead of twice); a failed read then leaves the
            layers before it loaded.

    Returns:
        A :class:`LoadReport`; ``applied`` says whether variables changed.

    Raises:
        LoadError: strict and the match has problems (``.problems`` lists them all,
            ``.report`` is the report), or the model is not a built Keras model.
        CkptconvError: the source cannot be opened or read.
    """
    if mapping is not None and by_order:
        raise UsageError("{opt:by_order=True} matches by position and takes no mapping spec", option="by_order")
    wanted_dtype = by_name(dtype) if isinstance(dtype, str) else (None if dtype is None else np.dtype(dtype))
    live = LiveModel(model)
    require_built(live)
    if only is not None:
        restrict(live, only)
    store, opened = open_source(source)
    try:
        if by_order:
            match = match_by_order(live, store, include_all=include_all, cast=cast, dtype=wanted_dtype)
        elif mapping is not None:
            match = _match_by_spec(live, store, mapping, include_all=include_all, cast=cast, dtype=wanted_dtype)
        else:
            match = _match_as_keras_does(
                live, store, include_all=include_all, cast=cast, dtype=wanted_dtype, part=only is not None
            )
        report = match.report
        if only is not None:
            _unused_is_no_problem(report)
        report.strict = strict
        if strict and report.problems:
            raise _load_error(live, store, report, matched_as_keras=mapping is None and not by_order)
        assign(live, match.assignments, check_first=check_first)
        report.applied = bool(match.assignments)
        if freeze:
            report.frozen, report.partly_frozen = freeze_loaded(live, match.assignments, freeze)
        return report
    finally:
        if opened:
            store.close()


def _unused_is_no_problem(report: LoadReport) -> None:
    """With ``only=``, a source weight that fills no variable of the model is still listed
    (``report.unused``) but does not fail a strict load: the load is about the part, and a
    source's other layers (an old head the new model replaced) are none of its business.
    Strictness stays inside the part: a variable of it without a source is still missing."""
    report.problems = [p for p in report.problems if p.kind != "unused"]


def _match_as_keras_does(
    live: LiveModel, store: Store, *, include_all: bool, cast: bool, dtype: np.dtype | None, part: bool = False
) -> Matching:
    """By structure when the source records one and all of it agrees with the model (what
    Keras' own loader does), else by name; a structure that disagrees heads the problems
    (with ``part``, only= chose a part: unused sources are then no problem, see
    :func:`_unused_is_no_problem`)."""
    found = match_structure(live, store)
    if isinstance(found, StructureMatch):
        return match_by_structure(live, store, found, include_all=include_all, cast=cast, dtype=dtype)
    view, original = without_model_name(live, store)
    match = match_by_plan(live, view, None, include_all=include_all, cast=cast, dtype=dtype)
    if original:
        match.report.loaded = [replace(w, source=original.get(w.source, w.source)) for w in match.report.loaded]
        match.report.names_differ = [(t, s) for t, s in match.report.names_differ if original.get(t) != s]
    if part:
        _unused_is_no_problem(match.report)
    if isinstance(found, Disagreement) and match.report.problems:
        match.report.problems.insert(
            0,
            problem(
                "structure",
                f"the source's structure is not the model's ({found.kind}): {found.message}",
            ),
        )
    return match


def _match_by_spec(
    live: LiveModel, store: Store, mapping: Any, *, include_all: bool, cast: bool, dtype: np.dtype | None
) -> Matching:
    """Match through the spec's rules; the weights they leave to pass through find their
    variables as by name, the saved model's own name stripped as :func:`_match_as_keras_does`
    does (a TensorFlow checkpoint's ``finetuned/enc1/kernel`` fills ``enc1/kernel``).

    The rules see the names the source records (what ``inspect`` lists). Only a weight that
    passes through to no variable, and whose name without the model's is a variable nothing
    else fills, takes that name; then the spec is planned again with it.
    """
    from ..mapping import load_spec

    spec = load_spec(mapping)  # parsed once for both plans
    match = match_by_plan(live, store, spec, include_all=include_all, cast=cast, dtype=dtype)
    unused = {w.name for w in match.report.unused}
    if not unused:
        return match
    unfilled = {w.name for w in match.report.missing} | ({v.name for v in live.all_vars} - {v.name for v in live.vars})
    _, candidates = without_model_name(live, store)
    renames = {recorded: short for short, recorded in candidates.items() if recorded in unused and short in unfilled}
    if not renames:
        return match
    view = renamed(store, renames)
    match = match_by_plan(live, view, spec, include_all=include_all, cast=cast, dtype=dtype)
    original = {short: recorded for recorded, short in renames.items()}
    match.report.loaded = [replace(w, source=original.get(w.source, w.source)) for w in match.report.loaded]
    return match


def _load_error(live: LiveModel, store: Store, report: LoadReport, *, matched_as_keras: bool = False) -> LoadError:
    count = len(report.problems)
    head = report.problems[0]
    noun = "problem" if count == 1 else "problems"
    more = "" if count == 1 else f" (and {count - 1} more: see .problems or the report)"
    casts = any(m.expected_dtype != m.got_dtype for m in report.mismatched)
    cast = "pass {opt:cast=True} to cast to the variables' dtypes, " if casts else ""
    # nothing matched as Keras matches (a PyTorch state dict into a Keras model): a spec is needed
    fix = ("no weight matched by structure or name: give a mapping spec (`suggest` proposes one)"
           if matched_as_keras and not report.loaded and len(store) else "fix the source or the mapping")
    error = LoadError(
        f"{count} {noun} loading into model {live.name!r}, nothing was changed: {head}{more}; "
        f"{fix}, {cast}choose a part with {{opt:only}}, or pass "
        "{opt:strict=False} to load what fits",
        problems=report.problems,
        path=None if store.format == "memory" else store.path,
    )
    error.report = report
    return error
