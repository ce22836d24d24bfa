"""Load a checkpoint into a live Keras model: checked as a whole first, then assigned.

:func:`load_into` matches a source (a file, a :class:`~ckptconv.Store` or ``{name: array}``)
to the variables of a Keras 3 or tf-keras model, checks every shape and dtype before any
variable changes, then assigns layer by layer with ``set_weights()`` (or ``assign`` per
variable where only part of a layer is loaded). It returns a :class:`LoadReport`.

Target names (the names a source must use) are canonical, so that files written by either
Keras line match models of the other:

* Keras 3: the chain of layer names from the model down to the layer that owns the variable,
  then the variable's name (``block/inner_a/kernel``, ``mha/query/kernel``,
  ``bidi/forward_lstm/lstm_cell/kernel``). This is ``variable.path`` without the model's own
  name, and what a ``.weights.h5`` file records.
* tf-keras: the rule of the legacy HDF5 format: the weight's name without ``:0``, prefixed
  with the top-level layer's name unless it already starts with it (``inner_a/kernel:0`` of
  the nested model ``block`` is ``block/inner_a/kernel``).

Keras (``keras`` or ``tf_keras``) is imported only inside the functions that need it; the
model's own classes tell which line it belongs to.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..dtypes import by_name, dtype_name, is_floating
from ..errors import FormatError, LoadError, UnsafeInputError
from ..store import Entry, Store, layer_of

__all__ = [
    "LoadReport",
    "LoadedWeight",
    "WeightMismatch",
    "WeightInfo",
    "load_into",
    "model_targets",
    "target_from_keras_file",
    "build_keras_model",
    "transplant",
    "TransplantResult",
]


# --------------------------------------------------------------------------------------------
# The report


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

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data (shapes as lists)."""
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def to_json(self, *, indent: int | None = 1) -> str:
        """The report as a JSON document."""
        return json.dumps(self.to_dict(), indent=indent)

    def format_table(self) -> str:
        """A readable table: one section per status, one line per weight."""
        lines = [self._headline()]
        if self.loaded:
            rows = [
                (w.name, _shape_text(w.shape), w.dtype, _source_text(w)) for w in self.loaded
            ]
            lines += _section("loaded", ("target", "shape", "dtype", "source"), rows)
        if self.mismatched:
            rows = [
                (
                    m.name,
                    f"{_shape_text(m.expected_shape)} {m.expected_dtype}",
                    f"{_shape_text(m.got_shape)} {m.got_dtype}",
                    f"{m.source}: {m.reason}",
                )
                for m in self.mismatched
            ]
            lines += _section("mismatched", ("target", "expected", "source has", "source: why"), rows)
        if self.missing:
            rows = [(w.name, _shape_text(w.shape), w.dtype) for w in self.missing]
            lines += _section("missing (kept their values)", ("target", "shape", "dtype"), rows)
        if self.unused:
            rows = [(w.name, _shape_text(w.shape), w.dtype) for w in self.unused]
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


def _shape_text(shape: Iterable[int]) -> str:
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


# --------------------------------------------------------------------------------------------
# The model side: variables under canonical names


@dataclass(eq=False)
class _Var:
    """One variable of the live model."""

    name: str
    variable: Any
    owner: Any  # the layer whose own variable list holds it
    owner_path: str  # canonical path of that layer ("" for the model itself)
    shape: tuple[int, ...]
    dtype: np.dtype


class _Model:
    """A live Keras model seen through the few calls ckptconv needs, for either Keras line."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.line = _keras_line(model)
        self.name = str(getattr(model, "name", type(model).__name__))
        # A bare layer (not a model) is named like a model's top-level layer: its own name
        # comes first, so a lone Conv2D "conv" has "conv/kernel".
        self.is_model = hasattr(model, "layers")
        self.vars = self._collect()

    # -- which Keras

    # The walk uses the attributes Keras' own saving walks (a layer's own variables, its
    # tracked sublayers). Should a Keras version lack them, the variables fall back to the
    # names of variable.path (see _collect).

    def own_variables(self, layer: Any) -> list[Any]:
        if self.line == "keras":
            names = ("_trainable_variables", "_non_trainable_variables")
        else:
            names = ("_trainable_weights", "_non_trainable_weights")
        return [v for attr in names for v in (getattr(layer, attr, None) or [])]

    def sublayers(self, layer: Any) -> list[Any]:
        if self.line == "keras":
            return list(getattr(layer, "_layers", None) or [])
        flatten = getattr(layer, "_flatten_layers", None)
        return list(flatten(include_self=False, recursive=False)) if flatten else []

    def var_dtype(self, variable: Any) -> np.dtype:
        dtype = variable.dtype
        if self.line == "keras":
            return by_name(str(dtype))
        return np.dtype(dtype.as_numpy_dtype)

    def _collect(self) -> list[_Var]:
        if self.line == "keras":
            found = self._walk_keras3()
        else:
            found = self._walk_tf_keras()
        # Anything Keras lists as a weight but the walk missed (custom tracking) still counts.
        seen = {id(v.variable) for v in found}
        for variable in self.model.weights:
            if id(variable) not in seen:
                name = self._fallback_name(variable)
                found.append(self._var(name, variable, self.model, layer_of(name)))
        names: dict[str, int] = {}
        for v in found:
            names[v.name] = names.get(v.name, 0) + 1
        twice = sorted(n for n, c in names.items() if c > 1)
        if twice:
            raise LoadError(
                f"model {self.name!r} has several variables named {twice[0]!r} "
                f"({len(twice)} such names); give its layers unique names",
                problems=[f"duplicate target name {n!r}" for n in twice],
                key=twice[0],
            )
        return found

    def _var(self, name: str, variable: Any, owner: Any, owner_path: str) -> _Var:
        shape = tuple(int(d) for d in variable.shape)
        return _Var(name, variable, owner, owner_path, shape, self.var_dtype(variable))

    def _walk_keras3(self) -> list[_Var]:
        found: list[_Var] = []
        seen: set[int] = set()

        def walk(layer: Any, chain: tuple[str, ...]) -> None:
            path = "/".join(chain)
            for variable in self.own_variables(layer):
                if id(variable) in seen:
                    continue
                seen.add(id(variable))
                leaf = str(variable.name)
                found.append(self._var(f"{path}/{leaf}" if path else leaf, variable, layer, path))
            for sub in self.sublayers(layer):
                walk(sub, (*chain, str(sub.name)))

        walk(self.model, () if self.is_model else (self.name,))
        return found

    def _walk_tf_keras(self) -> list[_Var]:
        owners: dict[int, tuple[Any, Any]] = {}  # id(var) -> (innermost owner, top-level layer)

        def walk(layer: Any, top: Any) -> None:
            for variable in self.own_variables(layer):
                owners.setdefault(id(variable), (layer, top))
            for sub in self.sublayers(layer):
                walk(sub, top)

        tops = list(self.model.layers) if self.is_model else [self.model]
        if self.is_model:
            for variable in self.own_variables(self.model):
                owners.setdefault(id(variable), (self.model, None))
        for top in tops:
            walk(top, top)
        found: list[_Var] = []
        seen: set[int] = set()
        ordered = [(w, None) for w in self.own_variables(self.model)] if self.is_model else []
        ordered += [(w, top) for top in tops for w in top.weights]
        for variable, top in ordered:
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            name = _tf_keras_name(variable.name, None if top is None else str(top.name))
            owner = owners.get(id(variable), (top or self.model, top))[0]
            found.append(self._var(name, variable, owner, layer_of(name)))
        return found

    def _fallback_name(self, variable: Any) -> str:
        if self.line == "keras":
            path = str(variable.path)
            prefix = self.name + "/"
            return path[len(prefix) :] if path.startswith(prefix) else path
        return _tf_keras_name(variable.name, None)


def _tf_keras_name(weight_name: str, top: str | None) -> str:
    """The legacy HDF5 canonical name of a tf-keras weight under top-level layer ``top``."""
    name = re.sub(r":\d+$", "", str(weight_name))
    if top and not (name == top or name.startswith(top + "/")):
        name = f"{top}/{name}"
    return name


def _keras_line(model: Any) -> str:
    """``keras`` (Keras 3) or ``tf_keras`` (Keras 2), from the model's own classes."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if root == "tf_keras":
            return "tf_keras"
        if root == "keras":
            return "keras"
    raise LoadError(
        f"expected a Keras 3 or tf-keras model; received an object of type "
        f"{type(model).__module__}.{type(model).__qualname__}"
    )


def model_targets(model: Any) -> dict[str, Any]:
    """Every variable of a live model as ``{canonical name: TargetTensor(shape, dtype)}``.

    Reads no variable values. The order is the model's own weight order.

    Raises:
        LoadError: not a Keras model, not built yet, or two variables share one name.
    """
    live = _Model(model)
    _require_built(live)
    from ..mapping import TargetTensor

    return {v.name: TargetTensor(shape=v.shape, dtype=v.dtype) for v in live.vars}


def target_from_keras_file(
    path: str | os.PathLike[str], *, unsafe: bool = False
) -> dict[str, Any]:
    """The target names, shapes and dtypes of the model a ``.keras`` file describes.

    Keras builds the model (``keras.saving.load_model(path, compile=False)``) with its safe
    mode on, so a file holding Lambda bytecode is refused unless ``unsafe=True``.

    Raises:
        UnsafeInputError: the file needs ``unsafe=True`` (Lambda layers, custom code).
        FormatError: Keras cannot build a model from the file.
    """
    return model_targets(build_keras_model(path, unsafe=unsafe))


def build_keras_model(path: str | os.PathLike[str], *, unsafe: bool = False) -> Any:
    """Build the model a ``.keras`` file holds, with Keras 3 (architecture and weights).

    Raises:
        UnsafeInputError: Keras' safe mode refused the file and ``unsafe`` is False.
        FormatError: not a ``.keras`` file, or Keras cannot build it.
    """
    import zipfile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FormatError("no such file", path=path)
    if not zipfile.is_zipfile(path):
        raise FormatError(
            "not a .keras model file (a zip with config.json); save one with "
            "model.save('model.keras')",
            path=path,
        )
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as e:  # Keras raises plain ValueError/TypeError for every refusal
        text = " ".join(str(e).split())
        if "safe_mode" in text or "unsafe" in text.lower():
            raise UnsafeInputError(
                "Keras' safe mode refused to build this model (it holds Lambda bytecode or "
                "other code); pass --unsafe (unsafe=True) only if you trust the file",
                path=path,
            ) from e
        raise FormatError(
            f"Keras could not build a model from this file: {type(e).__name__}: {text[:300]}",
            path=path,
        ) from e


def _require_built(live: _Model) -> None:
    if not live.vars and not getattr(live.model, "built", True):
        raise LoadError(
            f"model {live.name!r} has no variables yet: build it first (call it on an input "
            "or call model.build(input_shape))"
        )


# --------------------------------------------------------------------------------------------
# Matching sources to targets


@dataclass(eq=False)
class _Assignment:
    """One target variable and how to compute its new value."""

    target: _Var
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
class _Match:
    assignments: list[_Assignment] = field(default_factory=list)
    report: LoadReport = field(default_factory=LoadReport)


def _info(name: str, shape: Iterable[int], dtype: np.dtype) -> WeightInfo:
    return WeightInfo(name, tuple(int(d) for d in shape), dtype_name(dtype))


def _check_pair(
    match: _Match,
    target: _Var,
    source: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    compute: Callable[[], np.ndarray],
    *,
    cast: bool,
    cast_from: np.dtype | None = None,
    raw: Entry | None = None,
) -> None:
    """Accept ``source`` for ``target`` if shape and dtype fit; otherwise report a mismatch."""
    reason = None
    if shape != target.shape:
        reason = "shape differs"
    elif dtype != target.dtype and not cast:
        reason = "dtype differs (pass cast=True to cast to the variable's dtype)"
    elif dtype != target.dtype and not _castable(dtype, target.dtype):
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
            f"mismatched: {target.name!r} is {_shape_text(target.shape)} "
            f"{dtype_name(target.dtype)}, source {source!r} is {_shape_text(shape)} "
            f"{dtype_name(dtype)}: {reason}"
        )
        return
    if dtype != target.dtype:
        cast_from = dtype
        compute = _casting(compute, target.dtype, target.name)
        raw = None
    match.assignments.append(_Assignment(target, source, compute, cast_from, raw))
    match.report.loaded.append(
        LoadedWeight(
            target.name,
            source,
            target.shape,
            dtype_name(target.dtype),
            dtype_name(cast_from) if cast_from is not None else None,
        )
    )


def _castable(src: np.dtype, dst: np.dtype) -> bool:
    """Float to float, integer to integer or to float; never float to integer (truncation)."""
    if is_floating(dst):
        return is_floating(src) or src.kind in "biu"
    return src.kind in "biu" and dst.kind in "biu"


def _casting(
    compute: Callable[[], np.ndarray], dtype: np.dtype, name: str
) -> Callable[[], np.ndarray]:
    """Wrap ``compute`` to cast to ``dtype`` (round to nearest even), refusing overflow to inf."""

    def run() -> np.ndarray:
        array = compute()
        with np.errstate(over="ignore"):  # overflow is checked right below, with a clear error
            out = array.astype(dtype)
        if is_floating(dtype) and is_floating(array.dtype):
            overflow = np.isinf(out) & np.isfinite(array)
            if overflow.any():
                raise LoadError(
                    f"casting {dtype_name(array.dtype)} to {dtype_name(dtype)} turns "
                    f"{int(overflow.sum())} finite values into inf; keep the variable's dtype "
                    "wider or scale the weights",
                    key=name,
                )
        return out

    return run


def _missing_and_unused(
    match: _Match, targets: list[_Var], filled: set[str], unused: list[Entry]
) -> None:
    for target in targets:
        if target.name not in filled:
            match.report.missing.append(_info(target.name, target.shape, target.dtype))
            match.report.problems.append(
                f"missing: no source for {target.name!r} {_shape_text(target.shape)} "
                f"{dtype_name(target.dtype)}"
            )
    for entry in unused:
        match.report.unused.append(_info(entry.name, entry.shape, entry.dtype))
        match.report.problems.append(
            f"unused: source {entry.name!r} {_shape_text(entry.shape)} {entry.dtype_name} "
            "fills no variable of the model"
        )


def _with_default_dtype(
    entry: Entry, dtype: np.dtype | None
) -> tuple[Callable[[], np.ndarray], np.dtype]:
    """``dtype=`` casts floating-point sources before they meet the target."""
    if dtype is None or not is_floating(entry.dtype) or entry.dtype == dtype:
        return entry.read, entry.dtype
    return _casting(entry.read, dtype, entry.name), dtype


def _match_by_order(
    live: _Model, store: Store, *, include_all: bool, cast: bool, dtype: np.dtype | None
) -> _Match:
    """Keras' topological rule: the i-th layer with weights gets the i-th source layer."""
    match = _Match(report=LoadReport(mode="order"))
    target_layers: dict[str, list[_Var]] = {}
    for target in live.vars:
        target_layers.setdefault(target.owner_path, []).append(target)
    source_layers = list(store.layers(include_all=include_all).items())
    filled: set[str] = set()
    unused: list[Entry] = []
    pairs = list(zip(target_layers.items(), source_layers))
    for (t_layer, t_vars), (s_layer, s_entries) in pairs:
        if len(t_vars) != len(s_entries):
            match.report.problems.append(
                f"mismatched: layer {t_layer!r} has {len(t_vars)} weights, source layer "
                f"{s_layer!r} has {len(s_entries)}"
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
                raw=entry if compute == entry.read else None,
            )
    extra_targets = len(target_layers) - len(pairs)
    extra_sources = len(source_layers) - len(pairs)
    if extra_targets or extra_sources:
        match.report.problems.append(
            f"mismatched: the model has {len(target_layers)} layers with weights, the source "
            f"{len(source_layers)}"
        )
    for _, s_entries in source_layers[len(pairs) :]:
        unused += s_entries
    _missing_and_unused(match, live.vars, filled, unused)
    return match


def _match_by_plan(
    live: _Model,
    store: Store,
    mapping: Any,
    *,
    include_all: bool,
    cast: bool,
    dtype: np.dtype | None,
) -> _Match:
    """Match through the mapper: its plan, built against the model's shapes and dtypes.

    ``mapping=None`` is the mapper's identity plan (match by name), so rules, casts and the
    report are one mechanism whatever the mapping. ``cast=True`` asks the plan for the
    target's dtype (``dtype: target``: round to nearest even, overflow refused).
    """
    from ..mapping import TargetTensor, build_plan

    match = _Match(report=LoadReport(mode="name" if mapping is None else "spec"))
    target = {v.name: TargetTensor(shape=v.shape, dtype=v.dtype) for v in live.vars}
    plan_dtype: Any = dtype
    if plan_dtype is None and cast:
        plan_dtype = "target"
    plan = build_plan(store, mapping, target=target, include_all=include_all, dtype=plan_dtype)
    variables = {v.name: v for v in live.vars}
    sources_of = {o.name: o.sources for o in plan.report.outputs}
    filled: set[str] = set()
    for output in plan.outputs:
        var = variables.get(output.name)
        if var is None:
            continue  # a passed-through entry with no place in the model: reported unused below
        filled.add(var.name)
        names = sources_of.get(output.name, ())
        # The plan may have cast already (cast=True is its ``dtype: target``): say so.
        cast_from = None
        if len(names) == 1 and names[0] in store and store[names[0]].dtype != output.dtype:
            cast_from = store[names[0]].dtype
        _check_pair(
            match, var, "+".join(names) or output.name, output.shape, output.dtype,
            output.compute, cast=cast, cast_from=cast_from, raw=output.source,
        )
    records = {r.name: r for r in plan.report.sources}
    unused = [
        WeightInfo(n, tuple(records[n].shape), records[n].dtype)
        for n in plan.report.unused
        if n in records
    ]
    match.report.dropped = list(plan.report.dropped)
    _missing_and_unused(match, live.vars, filled, [])
    for info in unused:
        match.report.unused.append(info)
        match.report.problems.append(
            f"unused: source {info.name!r} {_shape_text(info.shape)} {info.dtype} fills no "
            "variable of the model"
        )
    for problem in plan.problems:
        # Fit with the model is reported above, per weight; keep the plan's other findings
        # (rules that own nothing, outputs that name no variable, ops that cannot apply).
        if "does not fit the target" not in problem:
            match.report.problems.append(problem)
    return match


# --------------------------------------------------------------------------------------------
# Assigning


def _assign(live: _Model, assignments: list[_Assignment], *, rollback: bool = True) -> None:
    """Read and assign layer by layer, after checking first whatever can fail on the data.

    With ``rollback`` (all or nothing), every value whose computation can fail on the data
    (a checksum, a decompressing read, an op, a cast that may overflow: see
    :attr:`_Assignment.can_fail`) is computed and checked once before the first variable
    changes, and dropped; plain stored bytes are not read twice. This keeps no copy of the
    model's previous values, so it costs no memory. Then the next layer's tensors are read on
    a worker thread while this layer is assigned (file reads and Keras' copies both release
    the GIL), so at most two layers are in memory. Small layers are read in line: handing
    them to a thread costs more than it saves. On TensorFlow, which copies every numpy value
    it is given, stored bytes are read into two buffers used in turn rather than into new
    arrays (new memory is slow to touch, and Keras' own loader allocates it twice).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    def check(a: _Assignment) -> None:
        if a.raw is not None and a.raw.byte_range is not None:
            a.raw.verify_crc()  # stored bytes whose only risk is their checksum
        else:
            _checked_value(a)

    verified = False
    if rollback:
        # two at a time: reads and CRC-32C release the GIL; the first failure in order is raised
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckptconv-check") as checkers:
            for _ in checkers.map(check, [a for a in assignments if a.can_fail]):
                pass
        verified = True

    groups: dict[int, list[_Assignment]] = {}
    for a in assignments:
        groups.setdefault(id(a.target.owner), []).append(a)
    layers = list(groups.values())
    arenas = (_Arena(), _Arena()) if _copies_numpy_values(live) else None

    def read(i: int) -> list[np.ndarray]:
        if arenas is None:
            return [_checked_value(a) for a in layers[i]]
        arena = arenas[i % 2]  # layer i - 2, the last user of this arena, is assigned by now
        arena.reset()
        return [_checked_value(a, arena, verified=verified) for a in layers[i]]

    def start(pool: ThreadPoolExecutor, i: int) -> Future[list[np.ndarray]] | None:
        if i >= len(layers):
            return None
        if sum(_nbytes(a.target) for a in layers[i]) >= _PREFETCH_BYTES:
            return pool.submit(read, i)
        return None  # read in line when its turn comes

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptconv-read") as pool:
        pending = start(pool, 0)
        for i, items in enumerate(layers):
            values = pending.result() if pending is not None else read(i)
            pending = start(pool, i + 1)
            variables = [a.target.variable for a in items]
            _assign_layer(live, items[0].target.owner, variables, values)
            del values


class _Arena:
    """Reusable memory for one layer's values: arrays carved from one byte buffer, which grows
    to what the last layer needed when it is reset."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, dtype=np.uint8)
        self._needed = 0

    def reset(self) -> None:
        if self._needed > len(self._buffer):
            self._buffer = np.empty(self._needed, dtype=np.uint8)
        self._needed = 0

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A C-contiguous array of this shape and dtype (new memory if the buffer is short)."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        start = -(-self._needed // 64) * 64  # aligned for any dtype
        self._needed = start + nbytes
        if self._needed > len(self._buffer):
            return np.empty(shape, dtype=dtype)
        return self._buffer[start : start + nbytes].view(dtype).reshape(shape)


def _copies_numpy_values(live: _Model) -> bool:
    """Whether assigning a numpy value copies it (so a buffer can be reused right after):
    TensorFlow's tensor conversion copies every numpy array it is given (tf-keras, and Keras 3
    on the TensorFlow backend). Other backends may keep the array itself (numpy) or share its
    memory (JAX on the CPU), so they get new arrays."""
    if live.line == "tf_keras":
        return True
    import keras

    return bool(keras.backend.backend() == "tensorflow")


# Layers smaller than this are read in line rather than on the worker thread.
_PREFETCH_BYTES = 1 << 20


def _nbytes(target: _Var) -> int:
    return int(np.prod(target.shape, dtype=np.int64)) * target.dtype.itemsize


def _checked_value(a: _Assignment, arena: _Arena | None = None, *, verified: bool = False) -> np.ndarray:
    raw = a.raw
    if arena is not None and raw is not None and raw.byte_range is not None:
        # plain stored bytes of the variable's own shape and dtype: read into the arena,
        # checking their recorded CRC-32C unless the check pass did already
        value = raw.read_into(arena.take(raw.shape, raw.dtype), check_crc=not verified)
    else:
        value = np.asarray(a.compute())
    if value.shape != a.target.shape or value.dtype != a.target.dtype:
        raise LoadError(
            f"the source produced {_shape_text(value.shape)} {dtype_name(value.dtype)}, "
            f"expected {_shape_text(a.target.shape)} {dtype_name(a.target.dtype)}",
            key=a.source,
        )
    return value


def _assign_layer(live: _Model, owner: Any, variables: list[Any], values: list[np.ndarray]) -> None:
    """One ``set_weights`` when the whole layer is loaded, else ``assign`` per variable."""
    layer_weights = owner.weights if (owner is not live.model or not live.is_model) else []
    if len(layer_weights) == len(variables) and all(
        w is v for w, v in zip(layer_weights, variables)
    ):
        owner.set_weights(values)
        return
    for variable, value in zip(variables, values):
        variable.assign(value)


def _restrict(live: _Model, only: str | Iterable[str]) -> None:
    """Keep only the variables whose name, layer or a parent layer matches a glob of ``only``."""
    patterns = [_glob_regex(p) for p in ([only] if isinstance(only, str) else list(only))]
    kept = [
        v
        for v in live.vars
        if any(p.fullmatch(v.name) or _matches_path_or_parent(p, v.owner_path) for p in patterns)
    ]
    if not kept:
        raise LoadError(
            f"only={only!r} matches no variable of model {live.name!r}; its layers include "
            + ", ".join(repr(n) for n in list(dict.fromkeys(v.owner_path for v in live.vars))[:8])
        )
    live.vars = kept


def _freeze(live: _Model, assignments: list[_Assignment], freeze: bool | str) -> list[str]:
    """Set ``trainable=False`` on the layers that were loaded (those matching a pattern)."""
    pattern = None if freeze is True else _glob_regex(str(freeze))
    frozen: list[str] = []
    seen: set[int] = set()
    for a in assignments:
        owner, path = a.target.owner, a.target.owner_path
        if id(owner) in seen or (owner is live.model and live.is_model):
            continue
        seen.add(id(owner))
        if pattern is not None and not _matches_path_or_parent(pattern, path):
            continue
        owner.trainable = False
        frozen.append(path)
    return frozen


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` within one ``/``-separated part, ``**`` across parts, ``?`` one character."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _matches_path_or_parent(pattern: re.Pattern[str], path: str) -> bool:
    parts = path.split("/")
    return any(pattern.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1))


# --------------------------------------------------------------------------------------------
# The entry point


def _without_model_name(live: _Model, store: Store) -> tuple[Store, dict[str, str]]:
    """A view of ``store`` where ``MODEL/x`` names ``x`` when ``x`` is a variable of the model.

    Keras 3 puts a Sequential or subclassed model's own name in front of its variables'
    paths, and TensorFlow checkpoints of such models record it (``seq/dense/kernel``); no
    Keras file does. Only names that then match a variable, and that the store does not have
    already, are changed. Returns the view and ``{new name: recorded name}``.
    """
    prefix = live.name + "/"
    targets = {v.name for v in live.vars}
    renames: dict[str, str] = {}
    for name in store:
        short = name[len(prefix) :]
        if name.startswith(prefix) and name not in targets and short in targets and short not in store:
            renames[name] = short
    if not renames:
        return store, {}
    entries = [store[n].renamed(renames[n]) if n in renames else store[n] for n in store]
    view = Store(entries, format=store.format, path=store.path, files=store.files, metadata=store.metadata)
    return view, {short: name for name, short in renames.items()}


def _open_source(source: Any) -> tuple[Store, bool]:
    """A store for ``source`` and whether this call opened it (and must close it)."""
    if isinstance(source, Store):
        return source, False
    if isinstance(source, Mapping):
        return Store.from_arrays(source), False
    if isinstance(source, (str, os.PathLike)):
        from ..formats import open as open_store

        return open_store(source), True
    raise LoadError(
        "expected a source path, a ckptconv.Store or a {name: array} mapping; received "
        f"{type(source).__name__}"
    )


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
    rollback: bool = True,
) -> LoadReport:
    """Load weights from ``source`` into a live Keras 3 or tf-keras ``model``.

    The whole match is checked against the model's variable shapes and dtypes on metadata
    alone before any tensor is read; then tensors are read (each once, with ``Entry.read``)
    and assigned one layer at a time with ``set_weights`` (or ``assign`` for a layer only
    partly loaded). If reading or assigning fails part-way, the variables already assigned
    are restored, so a failed call changes nothing.

    Args:
        model: A built Keras 3 or tf-keras model (or layer).
        source: A checkpoint path (any format :func:`ckptconv.open` reads), a
            :class:`~ckptconv.Store`, or ``{name: numpy array}``.
        mapping: ``None`` to match by name, or a mapping spec (file path, dict or spec
            object) whose outputs are the model's variable names.
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
            parent's) matches.
        only: Load into a part of the model only: a glob or a list of globs over variable
            names and layer paths (``dense_1``, ``block/*``, ``conv/kernel``). Variables
            outside the part are neither loaded nor reported missing; strictness applies
            within the part.
        dtype: Cast floating-point source weights to this dtype before they meet the model.
        rollback: All or nothing on damaged data too: before the first variable changes,
            compute and check once every value whose reading can fail on the data
            (checksummed tensors, h5py reads of compressed data, ops, casts that may
            overflow); plain stored bytes are not read twice. A tensor that fails (a flipped
            byte) then leaves every variable as it was. False skips that pass; a failed read
            then leaves the layers before it loaded.

    Returns:
        A :class:`LoadReport`; ``applied`` says whether variables changed.

    Raises:
        LoadError: strict and the match has problems (``.problems`` lists them all,
            ``.report`` is the report), or the model is not a built Keras model.
        CkptconvError: the source cannot be opened or read.
    """
    if mapping is not None and by_order:
        raise LoadError("by_order=True matches by position and takes no mapping spec")
    wanted_dtype = by_name(dtype) if isinstance(dtype, str) else (None if dtype is None else np.dtype(dtype))
    live = _Model(model)
    _require_built(live)
    if only is not None:
        _restrict(live, only)
    store, opened = _open_source(source)
    try:
        if by_order:
            match = _match_by_order(live, store, include_all=include_all, cast=cast, dtype=wanted_dtype)
        else:
            view, original = (store, {}) if mapping is not None else _without_model_name(live, store)
            match = _match_by_plan(
                live, view, mapping, include_all=include_all, cast=cast, dtype=wanted_dtype
            )
            if original:
                match.report.loaded = [
                    replace(w, source=original.get(w.source, w.source)) for w in match.report.loaded
                ]
        report = match.report
        report.strict = strict
        if strict and report.problems:
            raise _load_error(live, store, report)
        _assign(live, match.assignments, rollback=rollback)
        report.applied = bool(match.assignments)
        if freeze:
            report.frozen = _freeze(live, match.assignments, freeze)
        return report
    finally:
        if opened:
            store.close()


def _load_error(live: _Model, store: Store, report: LoadReport) -> LoadError:
    count = len(report.problems)
    head = report.problems[0]
    noun = "problem" if count == 1 else "problems"
    more = "" if count == 1 else f" (and {count - 1} more: see .problems or the report)"
    error = LoadError(
        f"{count} {noun} loading into model {live.name!r}, nothing was changed: {head}{more}; "
        "fix the source or the mapping, choose a part with only=, or pass strict=False to "
        "load what fits",
        problems=report.problems,
        path=None if store.format == "memory" else store.path,
    )
    error.report = report  # type: ignore[attr-defined]
    return error


# --------------------------------------------------------------------------------------------
# Transplant: .keras architecture + weights from anywhere -> a saved model


@dataclass
class TransplantResult:
    """What :func:`transplant` wrote."""

    out: str
    report: LoadReport
    seconds: float


_OUT_SUFFIXES = (".keras", ".weights.h5")


def transplant(
    src: str | os.PathLike[str] | Store | Mapping[str, np.ndarray],
    target: str | os.PathLike[str],
    out: str | os.PathLike[str],
    mapping: Any = None,
    *,
    unsafe: bool = False,
    force: bool = False,
    fsync: bool = True,
    **load_options: Any,
) -> TransplantResult:
    """Build the model a ``.keras`` file describes, load ``src`` into it, save it as ``out``.

    ``out`` ends in ``.keras`` (the whole model) or ``.weights.h5`` (weights only). It is
    written to a temporary file next to it, flushed and renamed into place, so a failed run
    leaves nothing behind; an existing ``out`` is replaced only with ``force=True``.

    Args:
        src: The weights: any checkpoint :func:`ckptconv.open` reads, a store or arrays.
        target: A ``.keras`` file holding the architecture (its own weights are replaced).
        out: The output path.
        mapping: A mapping spec, as for :func:`load_into`.
        unsafe: Let Keras build models holding Lambda bytecode (only for trusted files).
        force: Replace an existing ``out``.
        fsync: Flush the output to disk before the rename.
        **load_options: Passed to :func:`load_into` (``strict``, ``by_order``, ``cast``,
            ``only``, ``freeze``, ``dtype``, ``include_all``).

    Raises:
        OutputError: ``out`` has another suffix, exists without ``force``, or is an input.
        LoadError: the weights do not fit (strict), nothing written.
    """
    import time

    from ..errors import OutputError

    started = time.perf_counter()
    out_path = os.path.abspath(os.fspath(out))
    suffix = next((s for s in _OUT_SUFFIXES if out_path.endswith(s)), None)
    if suffix is None:
        raise OutputError(
            "the output must end in .keras (whole model) or .weights.h5 (weights only)",
            path=out,
        )
    inputs = [os.fspath(target)]
    if isinstance(src, (str, os.PathLike)):
        inputs.append(os.fspath(src))
    for given in inputs:
        if os.path.exists(given) and os.path.exists(out_path) and os.path.samefile(given, out_path):
            raise OutputError("the output is one of the inputs; choose another path", path=out)
    if os.path.exists(out_path) and not force:
        raise OutputError("the output exists; pass --force (force=True) to replace it", path=out)
    out_dir = os.path.dirname(out_path)
    if not os.path.isdir(out_dir):
        raise OutputError("the output's directory does not exist", path=out)

    store, opened = _open_source(src)  # fail fast on a bad source, before Keras builds anything
    try:
        model = build_keras_model(target, unsafe=unsafe)
        # The model is ours and nothing is written on failure: no need to keep old values.
        load_options.setdefault("rollback", False)
        report = load_into(model, store, mapping, **load_options)
    finally:
        if opened:
            store.close()
    _save_atomically(model, out_path, suffix, fsync=fsync)
    return TransplantResult(out_path, report, time.perf_counter() - started)


def _save_atomically(model: Any, out_path: str, suffix: str, *, fsync: bool) -> None:
    import tempfile

    from ..errors import OutputError

    directory, name = os.path.split(out_path)
    # Keras insists on the suffix, so the temporary name keeps it.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=directory)
    os.close(fd)
    try:
        if suffix == ".keras":
            model.save(tmp, overwrite=True)
        else:
            model.save_weights(tmp, overwrite=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, out_path)
        if fsync:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write the output: {e.strerror or e}", path=out_path) from e
        raise
