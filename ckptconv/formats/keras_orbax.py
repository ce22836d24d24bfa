"""Keras 3 Orbax checkpoints: what ``keras.callbacks.OrbaxCheckpoint`` writes (Keras >= 3.14).

A checkpoint directory holds one directory per step (``<dir>/0``, ``<dir>/1``, ...); each step
holds ``_CHECKPOINT_METADATA``, the ``pytree`` checkpointable (the model's state tree) and,
unless ``save_weights_only``, ``model_config`` (the model's config as a JSON string). The
pytree directory is an Orbax PyTree checkpoint: ``_METADATA`` (JSON: every leaf's key path and
value type) and the arrays, stored by tensorstore as zarr arrays (zarr v3, or v2 in older
writers) inside an OCDBT key-value database (``manifest.ocdbt``, ``d/...``,
``ocdbt.process_N/``), or one directory per array without OCDBT.

Keras' state tree (``model.get_state_tree()``) has four top-level keys, nested by the parts of
each variable's path: ``trainable_variables`` and ``non_trainable_variables`` (the weights),
``optimizer_variables`` and ``metrics_variables``. An entry's name is the variable path
(``seq/dense/kernel``: for Sequential and subclassed models it starts with the model's name,
as ``variable.path`` does); its ``tree_path`` is the whole pytree path
(``trainable_variables/seq/dense/kernel``) and its ``key`` the array's key in the database
(the same parts joined by dots, as Orbax stores it). Any other pytree (a plain Orbax
checkpoint) is read the same way, every array a weight named by its full pytree path.

Storage is read with tensorstore (the optional extra ``ckptconv[orbax]``), imported only when
an Orbax checkpoint is opened; neither JAX nor Orbax is ever imported. Opening reads metadata
only (``_METADATA``, the OCDBT manifest and B-tree, each array's zarr metadata); each array is
read on demand, with those that follow it in the store's order (see :mod:`._orbax_arrays`).
Anything that would take a read outside the checkpoint is refused: pytree keys
that are path parts (``..``, ``/``), paths or kvstore specs in ``_METADATA``, OCDBT data files
outside the database directory, links leading out of the step directory.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, UnsafeInputError, UnsupportedError, damaged
from ..store import Entry, Kind, Store, keras_order, layer_of
from ._orbax_arrays import (
    Arrays,
    import_tensorstore,
    prefetch,
    read_json,
    unsafe_path,
    zarr_dtype_shape,
)
from .keras_weights import layer_infos

FORMAT = "keras-orbax"
# The state-tree checkpointable: Keras names it "pytree"; recent Orbax defaults to "state".
CHECKPOINTABLES = ("pytree", "state")
TREE_METADATA = "_METADATA"
STEP_METADATA = "_CHECKPOINT_METADATA"
MODEL_CONFIG = "model_config"

# Keras' state tree: top-level key -> kind of its arrays
TREE_KINDS: dict[str, Kind] = {
    "trainable_variables": "weight",
    "non_trainable_variables": "weight",
    "optimizer_variables": "optimizer",
    "metrics_variables": "bookkeeping",
}
_ARRAY_TYPES = {"jax.Array", "np.ndarray", "scalar"}


# --- where the checkpoint is -------------------------------------------------------------------


def tree_directory(step: Path) -> Path | None:
    """The pytree checkpointable of a step directory, or ``step`` itself when it is a PyTree
    checkpoint directory (Orbax's ``StandardCheckpointer`` writes those); None otherwise."""
    for name in CHECKPOINTABLES:
        if (step / name / TREE_METADATA).is_file():
            return step / name
    if (step / TREE_METADATA).is_file() and (
        (step / "manifest.ocdbt").is_file() or (step / STEP_METADATA).is_file()
    ):
        return step
    return None


_TMP_STEP = re.compile(r"^\d+\.orbax-checkpoint-tmp")


def steps(root: Path) -> list[tuple[int, Path]]:
    """The step directories of a checkpoint directory that hold a complete pytree, by step.

    Orbax writes a step as ``<step>.orbax-checkpoint-tmp-*`` and renames it when complete, so
    unfinished steps never have a plain number for a name.
    """
    found = []
    try:
        children = list(root.iterdir())
    except OSError:
        return []
    for child in children:
        if child.name.isdigit() and child.is_dir() and tree_directory(child) is not None:
            found.append((int(child.name), child))
    return sorted(found)


def sniff(path: str | os.PathLike[str], head: bytes) -> bool:
    """A directory holding an Orbax pytree, a step of one, or numbered steps of one (a few
    ``stat`` calls; nothing is read)."""
    del head
    path = Path(path)
    if not path.is_dir():
        return False
    if tree_directory(path) is not None or (path / STEP_METADATA).is_file():
        return True
    try:
        children = [c for c in path.iterdir() if c.name.isdigit()]
    except OSError:
        return False
    # numbered steps (complete or not: open says what is missing)
    if any((c / STEP_METADATA).is_file() or tree_directory(c) is not None for c in children):
        return True
    return bool(_unfinished_steps(path))


def _unfinished_steps(root: Path) -> list[str]:
    """Names of steps Orbax is still writing (or was, when it was stopped):
    ``<step>.orbax-checkpoint-tmp-*``."""
    try:
        return sorted(c.name for c in root.iterdir() if _TMP_STEP.match(c.name) and c.is_dir())
    except OSError:
        return []


def _resolve(path: Path) -> tuple[Path, Path, str | None]:
    """(step directory, pytree directory, step number) of what the user named: a step (or a
    pytree directory), or a checkpoint directory, whose latest complete step is taken, as
    Keras' ``load_weights`` does."""
    tree = tree_directory(path)
    if tree is not None:
        step_dir = path
        if tree == path and path.name in CHECKPOINTABLES and (path.parent / STEP_METADATA).is_file():
            step_dir = path.parent  # the user named the step's pytree directory itself
        return step_dir, tree, step_dir.name if step_dir.name.isdigit() else None
    found = steps(path)
    if found:
        number, step_dir = found[-1]
        tree = tree_directory(step_dir)
        assert tree is not None
        return step_dir, tree, str(number)
    unfinished = _unfinished_steps(path)
    if unfinished:
        raise CorruptFileError(
            f"an Orbax checkpoint with no complete step: only {', '.join(unfinished[:3])} "
            "(a step still being written, or whose save was interrupted); wait for the save to "
            "finish, or save again",
            path=path,
        )
    raise CorruptFileError(
        "an Orbax checkpoint without a complete pytree (no pytree/_METADATA in this step, "
        "no numbered step directory holding one): saved with another checkpointable name, "
        "or still being written?",
        path=path,
    )


# --- hostile input -----------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def refuse_links_out(directory: Path, *, root: Path) -> None:
    """Refuse any symbolic link under ``directory`` that resolves outside ``root``."""
    real_root = root.resolve()
    for current, dirs, files in os.walk(directory, followlinks=False):
        for name in dirs + files:
            p = Path(current) / name
            if p.is_symlink() and not _inside(p.resolve(), real_root):
                raise UnsafeInputError(
                    f"{p.relative_to(directory)} is a link to {p.resolve()}, outside the "
                    "checkpoint",
                    path=directory,
                )


_SPEC_KEYS = {"kvstore", "base", "path", "directory", "base_path", "relative_path"}
_VALUE_FIELDS = {"value_type", "skip_deserialize", "write_shape"}


def refuse_specs_out(node: Any, *, path: Path, where: str = TREE_METADATA, depth: int = 0) -> None:
    """Refuse kvstore specs or paths recorded in ``_METADATA`` that point outside the
    checkpoint. ckptconv never follows them (it reads the arrays from the directory it was
    given), but a file that carries them is not one Keras or Orbax wrote for this checkpoint.
    ``custom_metadata`` is the user's own and is not examined."""
    if depth > 64:
        raise UnsafeInputError(f"{where} is nested too deeply", path=path)
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "custom_metadata" and depth == 0:
                continue
            if key == "tree_metadata" and depth == 0 and isinstance(value, dict):
                continue  # one entry per leaf: checked by _leaves, which reads each anyway
            if key in _SPEC_KEYS and isinstance(value, str) and unsafe_path(value):
                raise UnsafeInputError(
                    f"{where} records {key}={value!r}, which points outside the checkpoint",
                    path=path,
                )
            refuse_specs_out(value, path=path, where=where, depth=depth + 1)
    elif isinstance(node, list):
        for value in node:
            refuse_specs_out(value, path=path, where=where, depth=depth + 1)


def _check_key_part(part: str, *, path: Path) -> None:
    if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
        raise UnsafeInputError(
            f"{TREE_METADATA} names a pytree key {part!r}, which could lead outside the "
            "checkpoint",
            path=path,
        )


# --- reading -----------------------------------------------------------------------------------


def _leaves(meta: Any, *, path: Path) -> list[tuple[str, ...]]:
    """The key path of every array leaf of ``_METADATA``, in the file's order. Refuses key
    parts that are path parts and, in a leaf's value metadata, anything beyond Orbax's own
    fields that records a path outside the checkpoint (see :func:`refuse_specs_out`)."""
    tree = meta.get("tree_metadata") if isinstance(meta, dict) else None
    if not isinstance(tree, dict):
        raise CorruptFileError(damaged(f"{TREE_METADATA} has no tree_metadata object", "it"), path=path)
    leaves = []
    checked: set[str] = set()  # key parts repeat (layer names, slot names): check each once
    arrays = _ARRAY_TYPES
    fields = _VALUE_FIELDS
    for label, item in tree.items():
        if type(item) is dict:
            value = item.get("value_metadata")
            keys = item.get("key_metadata")
            try:  # a list of {"key": ...} objects, or anything else is not a leaf Orbax wrote
                parts = tuple([str(k["key"]) for k in keys]) if type(keys) is list else ()
            except (TypeError, KeyError):
                parts = ()
        else:
            value, parts = item, ()
        # only unusual value metadata (or a leaf that is not an object) needs looking at
        if type(value) is not dict:
            refuse_specs_out(value, path=path, depth=2)
            value = {}
        elif not fields.issuperset(value):
            refuse_specs_out(value, path=path, depth=2)
        if not parts:
            raise CorruptFileError(
                damaged(f"{TREE_METADATA}: leaf {label!r} has no key_metadata", "it"), path=path
            )
        if not checked.issuperset(parts):
            for part in parts:
                if part not in checked:
                    _check_key_part(part, path=path)
                    checked.add(part)
        if value.get("skip_deserialize") or str(value.get("value_type", "jax.Array")) not in arrays:
            continue  # strings, empty nodes, leaves the writer marked as not restorable
        leaves.append(parts)
    return leaves


def _model_config(step_dir: Path) -> Any:
    """The model's config (JSON data, never deserialized) from the ``model_config``
    checkpointable, or None (``save_weights_only=True`` writes none)."""
    strings = step_dir / MODEL_CONFIG / "_strings.json"
    if not strings.is_file():
        return None
    if not _inside(strings.resolve(), step_dir.resolve()):
        raise UnsafeInputError(f"{MODEL_CONFIG}/_strings.json is a link outside the checkpoint", path=step_dir)
    data = read_json(strings, what=f"{MODEL_CONFIG}/_strings.json")
    text = data.get("config") if isinstance(data, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None  # the config only orders the layers; the weights do not need it


def _kind(parts: tuple[str, ...], key: str, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[Kind, str]:
    """Kind and name of one leaf (``key``: its parts joined by ``/``): Keras' top-level keys
    give the kind and are left out of the name; the optimizer's iteration counter and seed
    generators' states are bookkeeping, as in every Keras file."""
    kind = TREE_KINDS.get(parts[0])
    if kind is None:
        return "weight", key
    name = key[len(parts[0]) + 1 :] if len(parts) > 1 else key
    if kind == "optimizer" and shape == () and dtype.kind in "iu":
        kind = "bookkeeping"
    if parts[-1] == "seed_generator_state":  # a dropout's random state, not a weight
        kind = "bookkeeping"
    return kind, name


def _layer_rank(config: Any, *, path: Path) -> Callable[[str], tuple[int, ...]]:
    """Sort key of a layer path, part by part: the config's layer order, then the names of
    what its ``compile_config`` serializes (the optimizer's, ``adam`` in ``adam/iteration``,
    and any named loss or metric), in the config's order. ``path``: the config's file.

    Raises:
        UnsafeInputError: the config is nested too deeply (see :func:`layer_infos`).
    """
    try:
        infos = layer_infos(config) if config is not None else {}
        compiled = config.get("compile_config") if type(config) is dict else None
        named = layer_infos(compiled) if type(compiled) is dict else {}
    except UnsafeInputError as e:  # raised without the file: name it
        raise UnsafeInputError(e.reason.replace("config.json", "the model config"), path=path) from e
    rank = {name: i for i, name in enumerate(infos)}
    for name in named:
        rank.setdefault(name, len(rank))
    # the infos hold every layer's config (tens of thousands of objects for thousands of
    # layers): emptied now, the configs are freed with the config, not with the store
    infos.clear()
    named.clear()
    unknown = len(rank)
    known: dict[str, tuple[int, ...]] = {}  # a layer's weights and slots share its key

    def key(layer: str) -> tuple[int, ...]:
        found = known.get(layer)
        if found is None:
            found = known[layer] = tuple(rank.get(part, unknown) for part in layer.split("/"))
        return found

    return key


_KIND_ORDER = {"weight": 0, "optimizer": 1, "bookkeeping": 2}


def _store_order(entries: list[Entry], rank: Callable[[str], tuple[int, ...]]) -> list[Entry]:
    """The store's order: weights, then the optimizer's state, then bookkeeping; within a
    kind, layers in the config's order (``rank``), then in the order first met; within a
    layer, by weight index (set by :func:`keras_order`)."""
    groups: dict[tuple[str, str], list[Entry]] = {}  # (kind, layer) -> its entries, first met first
    for e in entries:
        group = groups.get((e.kind, e.layer))
        if group is None:
            groups[(e.kind, e.layer)] = [e]
        else:
            group.append(e)
    ordered: list[Entry] = []
    for _, members in sorted(groups.items(), key=lambda g: (_KIND_ORDER[g[0][0]], rank(g[0][1]))):
        if len(members) > 1:
            members.sort(key=_INDEX)  # stable: equal indices keep the stored order
        ordered += members
    return ordered


_INDEX = attrgetter("index")


def open(path: str | os.PathLike[str]) -> Store:  # noqa: A001
    """Open an Orbax checkpoint written by Keras (or any Orbax PyTree checkpoint) as a lazy
    store: the latest complete step of a checkpoint directory, or the step (or pytree
    directory) given. Reads metadata only; each array is read when its entry is.

    Raises:
        UnsupportedError: tensorstore (``pip install 'ckptconv[orbax]'``) is not installed.
        UnsafeInputError: the checkpoint refers to anything outside itself.
        CorruptFileError: metadata missing, unreadable or inconsistent.
    """
    path = Path(path)
    step_dir, tree, step = _resolve(path)
    refuse_links_out(tree, root=step_dir)
    # tensorstore first: it reads and decodes the B-tree's root in its own threads while
    # _METADATA is parsed here (a missing tensorstore is reported after _METADATA's errors)
    try:
        ts: Any = import_tensorstore(path)
    except UnsupportedError as e:
        ts, missing = None, e
    started = prefetch(ts, tree) if ts is not None else None
    meta = read_json(tree / TREE_METADATA, what=TREE_METADATA)
    refuse_specs_out(meta, path=tree / TREE_METADATA)
    leaves = _leaves(meta, path=tree / TREE_METADATA)
    if ts is None:
        raise missing
    use_ocdbt = bool(meta.get("use_ocdbt", (tree / "manifest.ocdbt").is_file()))
    arrays = Arrays(ts, tree, ocdbt=use_ocdbt, zarr3=bool(meta.get("use_zarr3", False)), started=started)
    del meta  # tens of MB of JSON objects for 10,000 leaves: gone before the B-tree is read
    params = [".".join(parts) for parts in leaves]
    keys = ["/".join(parts) for parts in leaves]
    zarr_meta = arrays.metadata(params, keys)
    config = _model_config(step_dir)

    entries: list[Entry] = []
    sizes: dict[str, int] = {}  # by param: what read-ahead holds
    where = os.fspath(tree)
    load = arrays.load
    of = Entry.of
    # dtype, shape and size by the metadata object: arrays of one shape and dtype share it
    described: dict[int, tuple[np.dtype, tuple[int, ...], int]] = {}
    for parts, param, key, zmeta in zip(leaves, params, keys, zarr_meta):
        found = described.get(id(zmeta))
        if found is None:
            dtype, shape = zarr_dtype_shape(zmeta, zarr3=arrays.zarr3, path=tree, key=key)
            found = described[id(zmeta)] = (dtype, shape, math.prod(shape) * dtype.itemsize)
        dtype, shape, sizes[param] = found
        kind, name = _kind(parts, key, dtype, shape)
        loader = partial(load, param, key, dtype, shape)
        entries.append(of(name, layer_of(name), 0, param, shape, dtype, kind, where, None, None, key, loader))
    keras_order(entries)
    entries = _store_order(entries, _layer_rank(config, path=step_dir / MODEL_CONFIG / "_strings.json"))
    arrays.read_in_order([e.key for e in entries], sizes)

    metadata = {"checkpointable": tree.name}
    if step is not None:
        metadata["step"] = step
    if isinstance(config, dict) and isinstance(config.get("config"), dict):
        model_name = config["config"].get("name")
        if isinstance(model_name, str):
            metadata["model"] = model_name
    files = [p for p in tree.rglob("*") if p.is_file()]
    if config is not None:
        files.append(step_dir / MODEL_CONFIG / "_strings.json")
    return Store(entries, format=FORMAT, path=path, files=files, metadata=metadata)

