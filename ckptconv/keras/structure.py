"""Identity by structure: pair a source's entries with a live model's variables the way Keras
itself loads, not by names (which Keras makes up anew in every session).

Four structures, one per family of files, each computed from the live model by Keras' (or
TensorFlow's) own rules and accepted only when the *whole* structure agrees:

* **Keras saving tree** (``.weights.h5``, ``.keras``, sharded ``.weights.json``): the object-tree
  keys Keras' ``saving_lib`` writes and reads (``layers/dense_1/vars/0``, ``block1/layers/
  conv2d/vars/0`` for a subclassed model's ``self.block1``). The keys of the live model are
  recorded by running Keras' own saving walk with a store that writes nothing, so they are the
  installed Keras' keys by construction (attribute names, container naming, custom layers).
* **Legacy HDF5 order** (``.h5``): the i-th layer with weights gets the i-th layer group that
  lists weights, and each layer's weights in the order ``trainable_weights +
  non_trainable_weights`` (Keras' ``load_weights_from_hdf5_group``).
* **TensorFlow object graph** (object-based TF checkpoints): the path of child names from the
  model to each variable (``layer_with_weights-0/kernel``, ``d1/kernel``), as TensorFlow's
  checkpoint restore follows it; a checkpoint rooted above the model
  (``tf.train.Checkpoint(model=m)``) is matched below its root's child.
* **Keras state tree** (Orbax checkpoints of ``keras.callbacks.OrbaxCheckpoint``): the pytree
  path of each weight, ``trainable_variables/<variable.path>`` or
  ``non_trainable_variables/<variable.path>``, as Keras 3's ``Model.get_state_tree()`` lays
  the model out and ``set_state_tree()`` (what ``load_weights`` of an Orbax checkpoint calls)
  assigns it back. Keras' own loader skips, without a word, every stored path no variable
  has (a layer renamed, or frozen since the save); here the whole tree must agree, or the
  load falls back to names.

Each matcher returns the pairs ``{target name: entry}`` for every variable of the model, or a
:class:`Disagreement` naming the first position where the source and the model differ.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..formats.keras_orbax import FORMAT as ORBAX_FORMAT
from ..formats.keras_orbax import TREE_KINDS
from ..store import Entry, Store
from ..store import shape_text
from .targets import LiveModel, TargetVar

__all__ = [
    "Disagreement",
    "StructureMatch",
    "match_structure",
    "saving_tree_keys",
    "object_graph_keys",
    "legacy_layers",
    "state_tree_keys",
    "SAVING_TREE_FORMATS",
]

# Formats whose entries carry Keras' saving-tree keys, the legacy order, or TF object paths.
SAVING_TREE_FORMATS = ("keras-weights-h5", "keras-archive", "keras-sharded")
LEGACY_FORMATS = ("keras-h5",)
OBJECT_GRAPH_FORMATS = ("tf-checkpoint",)
STATE_TREE_FORMATS = (ORBAX_FORMAT,)
# the top-level keys of Keras' state tree that hold the model's weights, in Keras' order
STATE_TREE_WEIGHTS = tuple(key for key, kind in TREE_KINDS.items() if kind == "weight")

# What the report says about each structure.
HOW = {
    "saving-tree": "as Keras' load_weights does (its saving-tree keys)",
    "legacy-order": "as Keras' legacy load_weights does (layers with weights, in order)",
    "object-graph": "as TensorFlow's checkpoint restore does (the object graph)",
    "state-tree": "as Keras' load_weights does from an Orbax checkpoint (its state tree)",
}


@dataclass
class StructureMatch:
    """Every variable of the model paired with its source entry, by structure."""

    kind: str  # saving-tree | legacy-order | object-graph | state-tree
    pairs: dict[str, Entry]  # target name -> entry
    # entries Keras also assigns to an already paired variable (a tied weight listed by two
    # layers of a legacy file): the last one wins, as in Keras; these count as used
    shared: list[Entry] = field(default_factory=list)

    @property
    def how(self) -> str:
        return HOW[self.kind]


@dataclass
class Disagreement:
    """The source records a structure, and it is not the model's: where they first differ."""

    kind: str
    message: str


def match_structure(live: LiveModel, store: Store) -> StructureMatch | Disagreement | None:
    """Pair ``store``'s weights with every variable of ``live`` by structure.

    Returns None when the source records no structure this module knows (safetensors, TF1
    checkpoints, in-memory arrays, a backend without TensorFlow's object graph, an Orbax
    checkpoint that is not a Keras state tree, a tf-keras model and an Orbax checkpoint).
    """
    weights = [e for e in store.entries() if e.tree_path is not None]
    if not weights:
        return None
    if store.format in SAVING_TREE_FORMATS:
        keys = saving_tree_keys(live)
        return None if keys is None else _match_keys("saving-tree", live, weights, keys)
    if store.format in LEGACY_FORMATS:
        return _match_legacy(live, weights)
    if store.format in OBJECT_GRAPH_FORMATS:
        keys = object_graph_keys(live)
        if keys is None:
            return None
        return _match_keys("object-graph", live, weights, _under_common_root(keys, weights))
    if store.format in STATE_TREE_FORMATS:
        keys = state_tree_keys(live)
        keras_tree = any(str(e.tree_path).split("/", 1)[0] in STATE_TREE_WEIGHTS for e in weights)
        return _match_keys("state-tree", live, weights, keys) if keys is not None and keras_tree else None
    return None


# -- the Keras saving tree


def saving_tree_keys(live: LiveModel) -> dict[str, TargetVar] | None:
    """``{saving-tree key: variable}`` for every variable Keras' own saving walk reaches
    (``layers/dense/vars/0``), or None if this Keras has no walk ckptconv can run.

    Keras 3 hands the store each variable itself. tf-keras hands it ``variable.numpy()``
    copies (which are not kept), so there the object each ``vars`` group belongs to is
    taken from the walk's order of visits, and its i-th key is the i-th of its
    ``_trainable_weights + _non_trainable_weights`` (the only layout tf-keras writes).
    """
    recorder = _recording_store(live.line)
    if recorder is None:
        return None
    module, store = recorder
    try:
        with _skipsets_computed_once(module):
            module._save_state(live.model, store, None, "", store.visits)
    except (AttributeError, TypeError):  # another Keras whose walk takes other arguments
        return None
    by_id = {id(v.variable): v for v in live.all_vars}
    if live.line == "keras":
        return {key: by_id[id(value)] for _, key, value, _ in store.records if id(value) in by_id}
    owners = {id(v.owner): v.owner for v in live.all_vars}
    owners[id(live.model)] = live.model
    found: dict[str, TargetVar] = {}
    for _, key, _, visit in store.records:
        owner_id = store.visits.order[visit] if visit < len(store.visits.order) else None
        owner = owners.get(owner_id) if owner_id is not None else None
        own = live.own_variables(owner) if owner is not None else []
        index = int(key.rsplit("/", 1)[-1])
        if index < len(own) and id(own[index]) in by_id:
            found[key] = by_id[id(own[index])]
    return found


_WALK_LOCK = threading.Lock()


@contextlib.contextmanager
def _skipsets_computed_once(module: Any) -> Iterator[None]:
    """For the duration of one walk, Keras' ``get_attr_skipset(obj_type)`` computed once per
    type. Keras 3.15 means to cache it but reads another key than it writes, so every object
    visited builds a throwaway ``Layer()`` (two thirds of the walk's time, and one more
    automatic ``layer_N`` name each); the values are Keras' own either way."""
    original = getattr(module, "get_attr_skipset", None)
    if original is None:
        yield
        return
    cache: dict[str, Any] = {}

    def once(obj_type: str) -> Any:
        if obj_type not in cache:
            cache[obj_type] = original(obj_type)
        return cache[obj_type]

    with _WALK_LOCK:
        module.get_attr_skipset = once
        try:
            yield
        finally:
            module.get_attr_skipset = original


class _Visits(set):  # type: ignore[type-arg]
    """The ``visited`` set of object ids Keras' walk fills, remembering their order (Keras
    adds an object right after saving its own variables)."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[int] = []

    def add(self, item: Any) -> None:
        if item not in self:
            self.order.append(item)
        super().add(item)


def _recording_store(line: str) -> tuple[Any, Any] | None:
    """Keras' saving module and a weights store that records ``(group, key, value, visit)``
    and writes nothing (a subclass of Keras' own HDF5 store, which Keras 3 insists on);
    ``visit`` is the number of objects the walk had finished when the group was made."""
    try:
        if line == "keras":
            from keras.src.saving import saving_lib as module
        else:
            from tf_keras.src.saving import saving_lib as module
    except ImportError:
        return None
    base = getattr(module, "H5IOStore", None)
    if base is None:
        return None

    class Recorder(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:  # no file
            self.records: list[tuple[str, str, Any, int]] = []
            self.visits = _Visits()
            self._at = ""
            self._visit = 0

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: Any = None) -> Recorder:
            self._at = str(path).replace("\\", "/").strip("/")
            self._visit = len(self.visits.order)  # the object visited next owns the group
            return self

        def __setitem__(self, key: str, value: Any) -> None:
            group = f"{self._at}/vars" if self._at else "vars"
            # tf-keras hands numpy copies: keep none of them
            kept = value if line == "keras" else None
            self.records.append((group, f"{group}/{key}", kept, self._visit))

        def close(self) -> None:
            pass

    return module, Recorder()


# -- TensorFlow's object graph


def object_graph_keys(live: LiveModel) -> dict[str, TargetVar] | None:
    """``{object path: variable}``: the path of child names from the model to each variable,
    breadth first as TensorFlow's checkpoint saver names them (``layer_with_weights-0/
    kernel``). None when the model is not a TensorFlow trackable (Keras 3 on JAX)."""
    # a model TensorFlow tracks means TensorFlow is imported already: never import it here
    # (Keras 3 on JAX or numpy would pay seconds for nothing)
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(live.model, tf.__internal__.tracking.Trackable):
        return None
    by_id = {id(v.variable): v for v in live.all_vars}
    view = tf.train.TrackableView(live.model)
    paths: dict[int, tuple[str, ...]] = {id(live.model): ()}
    queue = [live.model]
    found: dict[str, TargetVar] = {}
    while queue:
        obj = queue.pop(0)
        try:
            children = view.children(obj)
        except Exception:  # an object TensorFlow cannot list: its subtree is not saved either
            continue
        for name, child in children.items():
            if id(child) in paths:
                continue
            paths[id(child)] = (*paths[id(obj)], name)
            queue.append(child)
            if id(child) in by_id:
                found["/".join(_escape(p) for p in paths[id(child)])] = by_id[id(child)]
    return found


def _escape(name: str) -> str:
    """TensorFlow's escaping of one object name in a checkpoint key."""
    return name.replace(".", "..").replace("/", ".S")


def _under_common_root(keys: dict[str, TargetVar], entries: list[Entry]) -> dict[str, TargetVar]:
    """The model's keys as the file spells them: a checkpoint of ``Checkpoint(model=m)``
    holds the model under one more name (``model/...``)."""
    stored = {e.tree_path for e in entries}
    if not keys or any(k in stored for k in keys):
        return keys
    first = next(iter(keys))
    for path in stored:
        assert path is not None
        if path.endswith("/" + first):
            prefix = path[: -len(first)]
            return {prefix + k: v for k, v in keys.items()}
    return keys


# -- Keras' state tree


def state_tree_keys(live: LiveModel) -> dict[str, TargetVar] | None:
    """``{pytree path: variable}`` for every variable of a Keras 3 model, as
    ``Model.get_state_tree()`` lays them out: ``trainable_variables/<variable.path>`` for the
    model's ``trainable_variables``, ``non_trainable_variables/<variable.path>`` for its
    ``non_trainable_variables`` (``trainable_variables/seq/dense/kernel``). Variables that are
    not weights (a dropout's seed generator state) are left out, as the store leaves them out
    of its weights. A variable path two variables share keeps the first (Keras refuses to
    save such a model). None for tf-keras, which has no state tree."""
    if live.line != "keras":
        return None
    by_id = {id(v.variable): v for v in live.all_vars}
    found: dict[str, TargetVar] = {}
    for top in STATE_TREE_WEIGHTS:
        for variable in getattr(live.model, top, None) or []:
            target = by_id.get(id(variable))
            path = getattr(variable, "path", None)
            if target is not None and isinstance(path, str):
                found.setdefault(f"{top}/{path}", target)
    return found


# -- matching keys


def _match_keys(
    kind: str, live: LiveModel, entries: list[Entry], keys: dict[str, TargetVar]
) -> StructureMatch | Disagreement:
    stored = {e.tree_path: e for e in entries}
    targets = {id(v.variable) for v in live.all_vars}
    keyed = {id(v.variable) for v in keys.values()}
    for var in live.all_vars:
        if id(var.variable) not in keyed:
            return Disagreement(kind, f"the model's {var.name!r} has no place in {_NAMES[kind]}")
    pairs: dict[str, Entry] = {}
    for key, var in keys.items():
        entry = stored.get(key)
        if entry is None:
            return Disagreement(
                kind, f"{key}: the model has {_describe(var)}, the file has nothing there"
            )
        if entry.shape != var.shape:
            return Disagreement(
                kind,
                f"{key}: file has {entry.name!r} {shape_text(entry.shape)}, model has "
                f"{_describe(var)}",
            )
        pairs[var.name] = entry
    extra = [k for k in stored if k not in keys]
    if extra:
        entry = stored[extra[0]]
        return Disagreement(
            kind,
            f"{extra[0]}: file has {entry.name!r} {shape_text(entry.shape)}, the model has no "
            f"variable there ({len(extra)} such entries)",
        )
    assert len(pairs) == len(targets)
    return StructureMatch(kind, pairs)


_NAMES = {
    "saving-tree": "Keras' saving tree",
    "object-graph": "TensorFlow's object graph",
    "legacy-order": "the legacy HDF5 order",
    "state-tree": "Keras' state tree",
}


def _describe(var: TargetVar) -> str:
    owner = type(var.owner).__name__
    leaf = var.name.rsplit("/", 1)[-1]
    return f"{owner} {leaf} {var.name!r} {shape_text(var.shape)}"


# -- the legacy HDF5 order


def legacy_layers(live: LiveModel) -> list[tuple[str, list[TargetVar]]]:
    """The model's layers with weights, in the order Keras' legacy HDF5 loader pairs them,
    each with its weights as ``trainable_weights + non_trainable_weights``; the model's own
    variables (``top_level_model_weights``) last."""
    by_id = {id(v.variable): v for v in live.all_vars}
    layers = list(live.model.layers) if live.is_model else [live.model]
    found: list[tuple[str, list[TargetVar]]] = []
    for layer in layers:
        weights = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        chosen = [by_id[id(w)] for w in weights if id(w) in by_id]
        if weights:
            found.append((str(layer.name), chosen))
    if live.is_model:
        own = [by_id[id(v)] for v in live.own_variables(live.model) if id(v) in by_id]
        if own:
            found.append((TOP_LEVEL, own))
    return found


TOP_LEVEL = "top_level_model_weights"


def _source_layers(entries: Iterable[Entry]) -> list[tuple[str, list[Entry]]]:
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        assert entry.tree_path is not None
        group = entry.tree_path.rsplit("/", 1)[0]
        groups.setdefault(group, []).append(entry)
    ordered = [(g, m) for g, m in groups.items() if g != TOP_LEVEL]
    if TOP_LEVEL in groups:
        ordered.append((TOP_LEVEL, groups[TOP_LEVEL]))
    return ordered


def _match_legacy(live: LiveModel, entries: list[Entry]) -> StructureMatch | Disagreement:
    kind = "legacy-order"
    model_layers = legacy_layers(live)
    file_layers = _source_layers(entries)
    pairs: dict[str, Entry] = {}
    shared: list[Entry] = []
    for k, ((m_name, m_vars), (f_name, f_entries)) in enumerate(zip(model_layers, file_layers)):
        where = f"layer {k} ({f_name!r} in the file, {m_name!r} in the model)"
        if len(m_vars) != len(f_entries):
            return Disagreement(
                kind,
                f"{where}: file has {len(f_entries)} weights, model has "
                f"{type(m_vars[0].owner).__name__ if m_vars else 'a layer with'} "
                f"{len(m_vars)} weights",
            )
        for var, entry in zip(m_vars, f_entries):
            if var.shape != entry.shape:
                return Disagreement(
                    kind,
                    f"{where}: file has {entry.name.rsplit('/', 1)[-1]} "
                    f"{shape_text(entry.shape)}, model has {_describe(var)}",
                )
            if var.name in pairs:
                shared.append(pairs[var.name])
            pairs[var.name] = entry
    if len(model_layers) != len(file_layers):
        return Disagreement(
            kind,
            f"the file has {len(file_layers)} layers with weights, the model "
            f"{len(model_layers)}",
        )
    if len(pairs) != len(live.all_vars):
        paired = set(pairs)
        var = next(v for v in live.all_vars if v.name not in paired)
        return Disagreement(kind, f"the model's {var.name!r} belongs to no layer Keras' legacy loader fills")
    return StructureMatch(kind, pairs, shared)
