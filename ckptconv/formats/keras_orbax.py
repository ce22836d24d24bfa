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
read on demand. Anything that would take a read outside the checkpoint is refused: pytree keys
that are path parts (``..``, ``/``), paths or kvstore specs in ``_METADATA``, OCDBT data files
outside the database directory, links leading out of the step directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..dtypes import by_name
from ..errors import CkptconvError, CorruptFileError, UnsafeInputError, UnsupportedError
from ..store import Entry, Kind, Store, keras_order
from .keras_weights import layer_infos

FORMAT = "keras-orbax"
EXTRA = "ckptconv[orbax]"
# The state-tree checkpointable: Keras names it "pytree"; recent Orbax defaults to "state".
CHECKPOINTABLES = ("pytree", "state")
TREE_METADATA = "_METADATA"
STEP_METADATA = "_CHECKPOINT_METADATA"
MODEL_CONFIG = "model_config"
MAX_JSON_BYTES = 256 * 2**20
_CACHE_BYTES = 64 * 2**20  # tensorstore's cache of OCDBT manifest and B-tree nodes

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


def sniff(path: Path, head: bytes) -> bool:
    """A directory holding an Orbax pytree, a step of one, or numbered steps of one (a few
    ``stat`` calls; nothing is read)."""
    del head
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


def _unsafe_path(text: str) -> bool:
    """An absolute path, a URL, or one that climbs out with ``..``."""
    text = unquote(text)
    if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text):
        return True
    return ".." in re.split(r"[/\\]", text)


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
                # one entry per leaf: keys are checked by _leaves; only unusual value
                # metadata (anything beyond Orbax's three fields) needs looking at
                for item in value.values():
                    extra = item.get("value_metadata") if isinstance(item, dict) else item
                    if not (isinstance(extra, dict) and extra.keys() <= _VALUE_FIELDS):
                        refuse_specs_out(extra, path=path, where=where, depth=depth + 2)
                continue
            if key in _SPEC_KEYS and isinstance(value, str) and _unsafe_path(value):
                raise UnsafeInputError(
                    f"{where} records {key}={value!r}, which points outside the checkpoint",
                    path=path,
                )
            refuse_specs_out(value, path=path, where=where, depth=depth + 1)
    elif isinstance(node, list):
        for value in node:
            refuse_specs_out(value, path=path, where=where, depth=depth + 1)


def _check_key_part(part: str, *, path: Path) -> None:
    if not part or part in (".", "..") or any(c in part for c in "/\\\0"):
        raise UnsafeInputError(
            f"{TREE_METADATA} names a pytree key {part!r}, which could lead outside the "
            "checkpoint",
            path=path,
        )


def _locations(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "location" and isinstance(value, str):
                yield value
            else:
                yield from _locations(value)
    elif isinstance(node, list):
        for value in node:
            yield from _locations(value)


def refuse_manifest_out(manifest: Any, *, path: Path) -> None:
    """Refuse an OCDBT manifest whose B-tree or version nodes live in files outside the
    database directory (a location is ``<kind>:<base path>:<relative path>:<offset>:<length>``).
    """
    for location in _locations(manifest):
        _, _, rest = location.partition(":")
        file_part = rest.rsplit(":", 2)[0]
        if any(p and _unsafe_path(p) for p in file_part.split(":")):
            raise UnsafeInputError(
                f"the OCDBT manifest refers to {file_part!r}, outside the checkpoint", path=path
            )


# --- reading -----------------------------------------------------------------------------------


def _tensorstore(path: Path) -> Any:
    try:
        import tensorstore
    except ImportError as e:
        raise UnsupportedError(
            "an Orbax checkpoint: reading it needs tensorstore, which is not installed; "
            f"pip install '{EXTRA}'",
            path=path,
        ) from e
    return tensorstore


def _read_json(file: Path, *, what: str) -> Any:
    try:
        size = file.stat().st_size
    except OSError as e:
        raise CorruptFileError(f"cannot read {what}: {e.strerror}", path=file) from e
    if size > MAX_JSON_BYTES:
        raise UnsafeInputError(f"{what} is implausibly large ({size} bytes)", path=file)
    try:
        return json.loads(file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptFileError(f"{what} is not valid JSON ({e})", path=file) from e


def _leaves(meta: Any, *, path: Path) -> list[tuple[tuple[str, ...], str]]:
    """Every array leaf of ``_METADATA``: (key path, value type), in the file's order."""
    tree = meta.get("tree_metadata") if isinstance(meta, dict) else None
    if not isinstance(tree, dict):
        raise CorruptFileError(f"{TREE_METADATA} has no tree_metadata object", path=path)
    leaves = []
    checked: set[str] = set()  # key parts repeat (layer names, slot names): check each once
    for label, item in tree.items():
        keys = item.get("key_metadata") if isinstance(item, dict) else None
        value = item.get("value_metadata") if isinstance(item, dict) else None
        if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and "key" in k for k in keys):
            raise CorruptFileError(f"{TREE_METADATA}: leaf {label!r} has no key_metadata", path=path)
        parts = tuple(str(k["key"]) for k in keys)
        for part in parts:
            if part not in checked:
                _check_key_part(part, path=path)
                checked.add(part)
        value = value if isinstance(value, dict) else {}
        value_type = str(value.get("value_type", "jax.Array"))
        if value.get("skip_deserialize") or value_type not in _ARRAY_TYPES:
            continue  # strings, empty nodes, leaves the writer marked as not restorable
        leaves.append((parts, value_type))
    return leaves


def _dtype_of(meta: Any, *, zarr3: bool, path: Path, key: str) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape from an array's ``zarr.json`` (v3) or ``.zarray`` (v2)."""
    if not isinstance(meta, dict):
        raise CorruptFileError("the array's zarr metadata is not an object", path=path, tensor=key)
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d < 2**62 for d in shape):
        raise CorruptFileError(f"the array's zarr metadata has a bad shape {shape!r}", path=path, tensor=key)
    name = meta.get("data_type") if zarr3 else meta.get("dtype")
    if not isinstance(name, str):
        raise UnsupportedError(f"zarr data type {name!r} is not one ckptconv reads", path=path, tensor=key)
    try:
        dtype = by_name(name)
    except KeyError:
        try:
            dtype = np.dtype(name)  # zarr v2 typestrings: "<f4", "|i1", ...
        except TypeError:
            raise UnsupportedError(f"zarr data type {name!r} is not one ckptconv reads", path=path, tensor=key) from None
        if dtype.kind not in "biufc":
            raise UnsupportedError(f"zarr data type {name!r} is not a numeric tensor", path=path, tensor=key)
        dtype = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
    return dtype, tuple(shape)


def _ts_error(e: Exception, *, path: Path, key: str | None = None, what: str) -> CkptconvError:
    text = " ".join(str(e).split())[:300]
    if "Invalid key" in text:
        return UnsafeInputError(
            f"{what}: the OCDBT database refers to a file outside the checkpoint ({text})",
            path=path,
            tensor=key,
        )
    return CorruptFileError(f"{what}: {text}", path=path, tensor=key)


class _Arrays:
    """The arrays of one pytree directory, through tensorstore: metadata at once, data per array."""

    def __init__(self, ts: Any, tree: Path, *, ocdbt: bool, zarr3: bool) -> None:
        self.ts = ts
        self.tree = tree
        self.ocdbt = ocdbt
        self.zarr3 = zarr3
        self.context = ts.Context({"cache_pool": {"total_bytes_limit": _CACHE_BYTES}})
        self.meta_name = "zarr.json" if zarr3 else ".zarray"
        self.base = {"driver": "file", "path": os.fspath(tree.resolve()) + "/"}
        self.kvstore: Any = None
        if ocdbt:
            import tensorstore.ocdbt

            try:
                base = ts.KvStore.open(self.base, context=self.context).result()
                manifest = tensorstore.ocdbt.dump(base).result()
            except Exception as e:  # noqa: BLE001 - tensorstore reports every failure as ValueError
                raise _ts_error(e, path=tree, what="the OCDBT manifest cannot be read") from e
            refuse_manifest_out(manifest, path=tree)
            try:
                self.kvstore = ts.KvStore.open({"driver": "ocdbt", "base": self.base}, context=self.context).result()
            except Exception as e:  # noqa: BLE001
                raise _ts_error(e, path=tree, what="the OCDBT database cannot be opened") from e

    def kvstore_spec(self, param: str) -> dict[str, Any]:
        if self.ocdbt:
            return {"driver": "ocdbt", "base": self.base, "path": param + "/"}
        return {"driver": "file", "path": os.fspath((self.tree / param).resolve()) + "/"}

    def metadata(self, params: list[str], names: list[str]) -> list[Any]:
        """Every array's zarr metadata (JSON), read together."""
        if not self.ocdbt:
            return [_read_json(self.tree / p / self.meta_name, what=f"{p}/{self.meta_name}") for p in params]
        try:
            stored = set(self.kvstore.list().result())
        except Exception as e:  # noqa: BLE001
            raise _ts_error(e, path=self.tree, what="the OCDBT database cannot be listed") from e
        keys = [f"{p}/{self.meta_name}".encode() for p in params]
        for key, name in zip(keys, names):
            if key not in stored:
                raise CorruptFileError(
                    f"{TREE_METADATA} lists this array but the OCDBT database has no "
                    f"{key.decode()!r}: an incomplete checkpoint",
                    path=self.tree,
                    tensor=name,
                )
        futures = [self.kvstore.read(k) for k in keys]
        out = []
        parsed: dict[bytes, Any] = {}  # arrays of one shape and dtype have the same metadata
        for future, name in zip(futures, names):
            try:
                raw = future.result().value
                value = parsed.get(raw)
                if value is None:
                    value = parsed[raw] = json.loads(raw)
                out.append(value)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise CorruptFileError(f"its zarr metadata is not valid JSON ({e})", path=self.tree, tensor=name) from e
            except Exception as e:  # noqa: BLE001
                raise _ts_error(e, path=self.tree, key=name, what="its zarr metadata cannot be read") from e
        return out

    def loader(self, param: str, *, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
        spec = {"driver": "zarr3" if self.zarr3 else "zarr", "kvstore": self.kvstore_spec(param)}

        def load() -> np.ndarray:
            try:
                array = self.ts.open(spec, open=True, read=True, context=self.context).result()
                data = np.asarray(array.read().result())
            except Exception as e:  # noqa: BLE001
                raise _ts_error(e, path=self.tree, key=name, what="the array cannot be read") from e
            if data.shape != shape:
                raise CorruptFileError(
                    f"stored array has shape {list(data.shape)}, its metadata says {list(shape)}",
                    path=self.tree,
                    tensor=name,
                )
            data = np.asarray(data, dtype=dtype)
            return data if data.flags.c_contiguous else data.copy(order="C")

        return load


def _model_config(step_dir: Path) -> Any:
    """The model's config (JSON data, never deserialized) from the ``model_config``
    checkpointable, or None (``save_weights_only=True`` writes none)."""
    strings = step_dir / MODEL_CONFIG / "_strings.json"
    if not strings.is_file():
        return None
    if not _inside(strings.resolve(), step_dir.resolve()):
        raise UnsafeInputError(f"{MODEL_CONFIG}/_strings.json is a link outside the checkpoint", path=step_dir)
    data = _read_json(strings, what=f"{MODEL_CONFIG}/_strings.json")
    text = data.get("config") if isinstance(data, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None  # the config only orders the layers; the weights do not need it


def _kind(parts: tuple[str, ...], dtype: np.dtype, shape: tuple[int, ...]) -> tuple[Kind, str]:
    """Kind and name of one leaf: Keras' top-level keys give the kind and are left out of
    the name; the optimizer's iteration counter and seed generators' states are bookkeeping,
    as in every Keras file."""
    kind = TREE_KINDS.get(parts[0])
    if kind is None:
        return "weight", "/".join(parts)
    name = "/".join(parts[1:]) or parts[0]
    if kind == "optimizer" and shape == () and dtype.kind in "iu":
        kind = "bookkeeping"
    if parts[-1] == "seed_generator_state":  # a dropout's random state, not a weight
        kind = "bookkeeping"
    return kind, name


def _layer_rank(config: Any) -> Callable[[str], tuple[int, ...]]:
    """Sort key of a layer path: the config's layer order, part by part."""
    rank = {name: i for i, name in enumerate(layer_infos(config))} if config is not None else {}
    unknown = len(rank)
    return lambda layer: tuple(rank.get(part, unknown) for part in layer.split("/"))


def open(path: Path) -> Store:  # noqa: A001
    """Open an Orbax checkpoint written by Keras (or any Orbax PyTree checkpoint) as a lazy
    store: the latest complete step of a checkpoint directory, or the step (or pytree
    directory) given. Reads metadata only; each array is read when its entry is.

    Raises:
        UnsupportedError: tensorstore (``pip install 'ckptconv[orbax]'``) is not installed.
        UnsafeInputError: the checkpoint refers to anything outside itself.
        CorruptFileError: metadata missing, unreadable or inconsistent.
    """
    step_dir, tree, step = _resolve(path)
    refuse_links_out(tree, root=step_dir)
    meta = _read_json(tree / TREE_METADATA, what=TREE_METADATA)
    refuse_specs_out(meta, path=tree / TREE_METADATA)
    leaves = _leaves(meta, path=tree / TREE_METADATA)
    ts = _tensorstore(path)
    use_ocdbt = bool(meta.get("use_ocdbt", (tree / "manifest.ocdbt").is_file()))
    arrays = _Arrays(ts, tree, ocdbt=use_ocdbt, zarr3=bool(meta.get("use_zarr3", False)))
    params = [".".join(parts) for parts, _ in leaves]
    keys = ["/".join(parts) for parts, _ in leaves]
    zarr_meta = arrays.metadata(params, keys)
    config = _model_config(step_dir)

    entries: list[Entry] = []
    described: dict[int, tuple[np.dtype, tuple[int, ...]]] = {}  # by the metadata object: shared
    for (parts, _), param, key, zmeta in zip(leaves, params, keys, zarr_meta):
        found = described.get(id(zmeta))
        if found is None:
            found = described[id(zmeta)] = _dtype_of(zmeta, zarr3=arrays.zarr3, path=tree, key=key)
        dtype, shape = found
        kind, name = _kind(parts, dtype, shape)
        entries.append(
            Entry(
                name,
                key=param,
                shape=shape,
                dtype=dtype,
                path=tree,
                loader=arrays.loader(param, name=key, dtype=dtype, shape=shape),
                kind=kind,
                tree_path=key,
            )
        )
    keras_order(entries)
    rank = _layer_rank(config)
    kinds = {"weight": 0, "optimizer": 1, "bookkeeping": 2}
    first_seen: dict[tuple[str, str], int] = {}
    for i, e in enumerate(entries):
        first_seen.setdefault((e.kind, e.layer), i)
    entries.sort(key=lambda e: (kinds[e.kind], rank(e.layer), first_seen[(e.kind, e.layer)], e.index))

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

