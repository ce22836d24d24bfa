"""The model side of a load: a live Keras model's variables under canonical names.

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

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import by_name
from ..errors import FormatError, LoadError, NoSuchFileError, UnsafeInputError
from ..formats.keras_legacy import canonical_name
from ..mapping.patterns import matches_path_or_parent, part_patterns
from ..store import Entry, Store, layer_of
from .runtime import import_keras

__all__ = [
    "TargetVar",
    "LiveModel",
    "keras_line",
    "is_keras_model",
    "model_store",
    "tf_keras_name",
    "model_targets",
    "target_from_keras_file",
    "build_keras_model",
    "require_built",
    "restrict",
    "matches_path_or_parent",
]


@dataclass(eq=False)
class TargetVar:
    """One variable of the live model."""

    name: str
    variable: Any
    owner: Any  # the layer whose own variable list holds it
    owner_path: str  # canonical path of that layer ("" for the model itself)
    shape: tuple[int, ...]
    dtype: np.dtype


class LiveModel:
    """A live Keras model seen through the few calls ckptconv needs, for either Keras line."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.line = keras_line(model)
        self.name = str(getattr(model, "name", type(model).__name__))
        # A bare layer (not a model) is named like a model's top-level layer: its own name
        # comes first, so a lone Conv2D "conv" has "conv/kernel".
        self.is_model = hasattr(model, "layers")
        # every variable, and the part a load fills (all of them unless only= chose a part)
        self.all_vars = self._collect()
        self.vars = list(self.all_vars)

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

    def _collect(self) -> list[TargetVar]:
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
                tensor=twice[0],
            )
        return found

    def _var(self, name: str, variable: Any, owner: Any, owner_path: str) -> TargetVar:
        shape = tuple(int(d) for d in variable.shape)
        return TargetVar(name, variable, owner, owner_path, shape, self.var_dtype(variable))

    def _walk_keras3(self) -> list[TargetVar]:
        found: list[TargetVar] = []
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

    def _walk_tf_keras(self) -> list[TargetVar]:
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
        found: list[TargetVar] = []
        seen: set[int] = set()
        ordered = [(w, None) for w in self.own_variables(self.model)] if self.is_model else []
        ordered += [(w, top) for top in tops for w in top.weights]
        for variable, top in ordered:
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            name = tf_keras_name(variable.name, None if top is None else str(top.name), self.name)
            owner = owners.get(id(variable), (top or self.model, top))[0]
            found.append(self._var(name, variable, owner, layer_of(name)))
        return found

    def _fallback_name(self, variable: Any) -> str:
        if self.line == "keras":
            path = str(variable.path)
            prefix = self.name + "/"
            return path[len(prefix) :] if path.startswith(prefix) else path
        return tf_keras_name(variable.name, None, self.name)


def tf_keras_name(weight_name: str, top: str | None, model: str | None = None) -> str:
    """The legacy HDF5 canonical name of a tf-keras weight under top-level layer ``top`` (the
    rule of :func:`ckptconv.formats.keras_legacy.canonical_name`, so a model's names are the
    names its own ``.h5`` file gets); a model's own weight (``top`` None) loses the model's
    name (``net/w1`` of model ``net`` is ``w1``)."""
    if top:
        return canonical_name(top, str(weight_name))
    name = re.sub(r":\d+$", "", str(weight_name))
    if model and name.startswith(model + "/"):
        name = name[len(model) + 1 :]
    return name


def keras_line(model: Any) -> str:
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


def is_keras_model(obj: Any) -> bool:
    """Whether ``obj`` is a Keras 3 or tf-keras object (from its classes; imports nothing)."""
    try:
        keras_line(obj)
    except LoadError:
        return False
    return True


def model_store(model: Any) -> Store:
    """A live Keras model's variables as a store: canonical names (those ``load_into`` and
    :func:`model_targets` use), the model's weight order, ``index`` the position within the
    owning layer (as ``get_weights()`` orders it); ``read()`` returns a variable's value.

    Raises:
        LoadError: not a built Keras model, or two variables share one name.
    """
    live = LiveModel(model)
    require_built(live)
    where = f"<model {live.name}>"
    counters: dict[str, int] = {}
    entries = []
    for v in live.vars:
        index = counters.get(v.owner_path, 0)
        counters[v.owner_path] = index + 1
        entries.append(
            Entry(
                v.name, key=str(getattr(v.variable, "path", v.name)), shape=v.shape, dtype=v.dtype,
                path=where, layer=v.owner_path, index=index,
                loader=lambda var=v: np.array(var.variable, dtype=var.dtype),
            )
        )
    return Store(entries, format="keras-model", path=where, files=())


def model_targets(model: Any) -> dict[str, Any]:
    """Every variable of a live model as ``{canonical name: TargetTensor(shape, dtype)}``.

    Reads no variable values. The order is the model's own weight order.

    Raises:
        LoadError: not a Keras model, not built yet, or two variables share one name.
    """
    live = LiveModel(model)
    require_built(live)
    from ..mapping import TargetTensor

    return {v.name: TargetTensor(shape=v.shape, dtype=v.dtype) for v in live.all_vars}


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
        NoSuchFileError: the path does not exist.
        UnsupportedError: Keras is not installed (the message says what to install).
        UnsafeInputError: Keras' safe mode refused the file and ``unsafe`` is False.
        FormatError: not a ``.keras`` file, or Keras cannot build it.
    """
    import zipfile

    path = os.fspath(path)
    if not os.path.exists(path):
        raise NoSuchFileError(path=path)
    if not zipfile.is_zipfile(path):
        raise FormatError(
            "not a .keras model file (a zip with config.json); save one with "
            "model.save('model.keras')",
            path=path,
        )
    keras = import_keras()
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as e:  # Keras raises plain ValueError/TypeError for every refusal
        text = " ".join(str(e).split())
        if "safe_mode" in text or "unsafe" in text.lower():
            raise UnsafeInputError(
                "Keras' safe mode refused to build this model (it holds Lambda bytecode or "
                "other code); pass {opt:unsafe=True} only if you trust the file",
                path=path,
            ) from e
        raise FormatError(
            f"Keras could not build a model from this file: {type(e).__name__}: {text[:300]}",
            path=path,
        ) from e


def require_built(live: LiveModel) -> None:
    if not live.all_vars and not getattr(live.model, "built", True):
        raise LoadError(
            f"model {live.name!r} has no variables yet: build it first (call it on an input "
            "or call model.build(input_shape))"
        )


def restrict(live: LiveModel, only: str | Iterable[str]) -> None:
    """Load into the variables whose name, layer or a parent layer matches a pattern of
    ``only`` (the spec's glob rules, or ``re:`` regexes: see :mod:`ckptconv.mapping.patterns`);
    ``live.all_vars`` keeps every variable, so sources of the others are told apart."""
    patterns = part_patterns(only)
    kept = [
        v
        for v in live.vars
        if any(p.match(v.name) or matches_path_or_parent(p, v.owner_path) for p in patterns)
    ]
    if not kept:
        raise LoadError(
            f"only={only!r} matches no variable of model {live.name!r}; its layers include "
            + ", ".join(repr(n) for n in list(dict.fromkeys(v.owner_path for v in live.vars))[:8])
        )
    live.vars = kept


