"""Legacy Keras HDF5: ``model.save('m.h5')`` and ``save_weights('w.h5')``, Keras 2 and 3.

Layer order comes from the ``layer_names`` attribute and each layer's weights from its
``weight_names`` attribute, in that order (never HDF5's alphabetical iteration order); both
may be chunked as ``name0``, ``name1``, ... above 64 KB. A weight's canonical name is its
recorded name without ``:0``, prefixed with the top-level layer's name unless it already
starts with it (tf-keras leaves the outer name off nested models' weights).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import FETCH_AGAIN, CorruptFileError, FormatError
from ..store import Entry, Store, index_in_order
from ._hdf5 import (
    chunked_attribute,
    dataset_entry,
    decode,
    header_entry,
    is_hdf5,
    links_of,
    optimizer_kind,
    resolve,
    safe_get,
    strip_suffix,
)
from ._hdf5_file import (
    Catalog,
    HDF5File,
    RootView,
    catalog_strings,
    open_h5,
    peek_root,
    root_view,
)
from ._hdf5_links import HARD

if TYPE_CHECKING:
    import h5py

FORMAT = "keras-h5"

TOP_LEVEL = "top_level_model_weights"


def sniff(path: str | os.PathLike[str], head: bytes) -> bool:
    """An HDF5 file whose root (or ``model_weights``) carries ``layer_names``."""
    if not is_hdf5(head):
        return False
    view = peek_root(path, children=("model_weights",))
    holder = False if view is None else _layer_names_holder(view)
    if holder is not False:
        return holder is not None
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _weights_root(f) is not None
    except OSError:
        return False


def _weights_root(f: h5py.Group) -> h5py.Group | None:
    """The group holding ``layer_names`` (``model_weights`` in a whole-model file), through h5py."""
    import h5py

    link = f.get("model_weights", getlink=True)
    root = f["model_weights"] if isinstance(link, h5py.HardLink) else f
    if "layer_names" in root.attrs or "layer_names0" in root.attrs:
        return root
    return None


def _layer_names_holder(view: RootView) -> str | None | bool:
    """:func:`_weights_root`'s rule on a parsed root: the path of the group holding
    ``layer_names`` (``/model_weights`` when that is a hard link, else ``/``), None when it
    holds none, False when the view cannot tell (``model_weights`` is no group it read)."""
    link = view.links.get("model_weights")
    if link is not None and link[0] == HARD:
        attributes = view.children.get("model_weights")
        if attributes is None:
            return False
        return "/model_weights" if {"layer_names", "layer_names0"} & set(attributes) else None
    return "/" if {"layer_names", "layer_names0"} & set(view.attributes) else None


def _weights_root_path(f: HDF5File) -> str | None:
    """The HDF5 path of the group holding ``layer_names`` (``/model_weights`` in a
    whole-model file, else ``/``): from the catalog, else through h5py; None when neither has it."""
    view = root_view(f, children=("model_weights",))
    holder = False if view is None else _layer_names_holder(view)
    if holder is not False:
        return holder  # type: ignore[return-value]
    root = _weights_root(f.h5)
    return None if root is None else root.name


def open(path: str | os.PathLike[str]) -> Store:  # noqa: A001
    """Open a legacy Keras HDF5 file as a lazy store (metadata only)."""
    f = open_h5(path, path=path)
    try:
        entries = read_entries(f, path=os.fspath(path), file_size=os.path.getsize(path))
        metadata = _metadata(f)
    except BaseException:
        f.close()
        raise
    return Store(entries, format=FORMAT, path=path, files=[path], metadata=metadata, closer=f.close)


def _metadata(f: HDF5File) -> dict[str, str]:
    """The root's ``keras_version`` and ``backend`` attributes and whether the file holds a
    whole model (a ``model_weights`` group) or weights only."""
    wanted = ("keras_version", "backend")
    view = root_view(f)
    texts = f.catalog.texts.get(f.root, {}) if f.root is not None else {}
    if view is not None and all(type(texts.get(k)) is str for k in wanted if k in view.attributes):
        metadata = {k: texts[k] for k in wanted if k in view.attributes}
        has_model = "model_weights" in view.links
    else:
        h5 = f.h5
        metadata = {k: str(decode(h5.attrs[k])) for k in wanted if k in h5.attrs}
        has_model = "model_weights" in h5
    metadata["contents"] = "model" if has_model else "weights"
    return metadata  # type: ignore[return-value]


def canonical_name(layer: str, weight_name: str) -> str:
    """The canonical name of a weight recorded as ``weight_name`` under top-level ``layer``.

    tf-keras: ``inner_a/kernel:0`` under ``block`` -> ``block/inner_a/kernel``. Keras 3 writes
    ``variable.path``, and tf-keras subclassed models name weights in the model's scope: both
    start with the model's own name (``seq/a/kernel``, ``net/d1/kernel`` under ``a``, ``d1``):
    that name is dropped, as files elsewhere omit it. Keras 2.0 uniquified a layer's scope
    when it was opened twice (``conv2d_1_1/kernel:0`` under ``conv2d_1``): the scope is the
    layer's.
    """
    name = strip_suffix(weight_name)
    if name == layer or name.startswith(layer + "/"):
        return name
    parts = name.split("/")
    if len(parts) > 2 and parts[1] == layer:
        return "/".join(parts[1:])
    if is_uniquified_scope(parts[0], layer) and len(parts) == 2:
        return f"{layer}/{parts[1]}"
    return f"{layer}/{name}"


def is_uniquified_scope(scope: str, layer: str) -> bool:
    """Whether ``scope`` is ``layer`` with a TensorFlow name-scope suffix (``conv2d_1_1`` for
    ``conv2d_1``), as Keras 2.0-era files record when a layer's scope was opened twice."""
    return bool(re.fullmatch(re.escape(layer) + r"_\d+", scope))


def _refuse_repeats(names: list[str], what: str, *, path: str) -> None:
    """Keras writes each layer (and each layer's weight) once: a list naming one twice would
    read it again and again (40,000 repeats took most of a minute), so it is refused at once."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            count = names.count(name)
            raise CorruptFileError(
                f"{what} lists {name!r} {count} times; Keras writes each once (the file is "
                f"damaged or was not written by Keras); {FETCH_AGAIN}",
                path=path,
            )
        seen.add(name)


def read_entries(f: HDF5File, *, path: str, file_size: int) -> list[Entry]:
    """Every weight (and the optimizer state) of a legacy Keras HDF5 file, in file order.

    Names and datasets come from the catalog :func:`~._hdf5_file.open_h5` made of the file (one
    pass over its object headers, no libhdf5 call per weight); what it cannot tell is read
    through h5py, which also gives every error its message.
    """
    root_path = _weights_root_path(f)
    if root_path is None:
        raise FormatError("no layer_names attribute: not a Keras HDF5 weights file", path=path)
    catalog = f.catalog

    def root() -> h5py.Group:
        return f.h5[root_path]

    layer_names = _strings(catalog, root_path, "layer_names")
    if layer_names is False:
        layer_names = chunked_attribute(root(), "layer_names", path=path)
    layer_names = layer_names or []
    _refuse_repeats(layer_names, "layer_names", path=path)
    entries: list[Entry] = []
    data_path = os.path.abspath(path)  # what byte ranges name: made absolute once, not per weight

    def weights_of(
        parent: Callable[[], h5py.Group], parent_path: str, name: str
    ) -> tuple[str, list[str], Callable[[], h5py.Group]]:
        group_path = _join(parent_path, name)
        names = _strings(catalog, group_path, "weight_names")

        def group() -> h5py.Group:
            import h5py

            return safe_get(parent(), name, path=path, kind=h5py.Group)

        if names is False:
            opened = group()
            return group_path, chunked_attribute(opened, "weight_names", path=path) or [], lambda: opened
        return group_path, names or [], group

    def add(
        group_path: str, group: Callable[[], h5py.Group], weight_name: str, name: str,
        kind: str = "weight", tree_path: str | None = None,
    ) -> None:
        key = _join(group_path, weight_name)
        address = resolve(catalog, key)
        header = None if address is None else catalog.headers.get(address)
        entry = None if header is None else header_entry(
            header, name, key, path, data_path, 0, file_size, kind, 0, None, tree_path  # type: ignore[arg-type]
        )
        if entry is None:
            import h5py

            dataset = safe_get(group(), weight_name, path=path, kind=h5py.Dataset)
            entry = dataset_entry(
                    dataset,
                    name=name,
                    key=dataset.name,
                    path=path,
                    data_path=path,
                    file_size=file_size,
                    kind=kind,  # type: ignore[arg-type]
                )
            entry.tree_path = tree_path
        entries.append(entry)

    for layer in layer_names:
        group_path, weight_names, group = weights_of(root, root_path, layer)
        _refuse_repeats(weight_names, f"weight_names of {layer!r}", path=path)
        for position, weight_name in enumerate(weight_names):
            add(group_path, group, weight_name, canonical_name(layer, weight_name), tree_path=f"{layer}/{position}")

    if TOP_LEVEL not in layer_names and links_of(f, root_path).get(TOP_LEVEL, (None,))[0] == HARD:
        group_path, weight_names, group = weights_of(root, root_path, TOP_LEVEL)
        for position, weight_name in enumerate(weight_names):
            add(group_path, group, weight_name, strip_suffix(weight_name), tree_path=f"{TOP_LEVEL}/{position}")

    if links_of(f, "/").get("optimizer_weights", (None,))[0] == HARD:
        group_path, weight_names, group = weights_of(lambda: f.h5, "/", "optimizer_weights")
        for weight_name in weight_names:
            name = "optimizer/" + strip_suffix(weight_name)
            add(group_path, group, weight_name, name, optimizer_kind(name))

    if not entries and not layer_names:
        raise CorruptFileError("the file lists no layers", path=path)
    index_in_order(entries)
    return entries


def _join(group: str, name: str) -> str:
    """The HDF5 path h5py names an object reached from ``group`` by ``name``."""
    joined = f"{group}/{name}"
    if joined.startswith("/") and not joined.endswith("/") and "//" not in joined:
        return joined  # already what the general rule below gives (the common case)
    return "/" + "/".join(p for p in joined.split("/") if p)


def _strings(catalog: Catalog, group_path: str, name: str) -> list[str] | None | bool:
    """A group's list attribute from the catalog (False: ask h5py; see catalog_strings)."""
    address = resolve(catalog, group_path)
    if address is None:
        return False
    header = catalog.headers.get(address)
    if header is None or header.kind != "group":
        return False
    return catalog_strings(catalog, address, name)
