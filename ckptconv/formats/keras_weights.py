"""Keras 3 ``.weights.h5`` (and the reading core shared by sharded sets and ``.keras``).

Groups are keyed by snake_case class names (``layers/dense_1/vars``), not layer names; each
``vars`` group carries a ``name`` attribute with the real layer name (Keras >= 3.6). A layer's
path is the chain of those names below the model (``layers/sequential/layers/dense/vars``
named ``inner_a`` under ``block`` -> ``block/inner_a``). Variables are stored by index only:
their names are resolved for Keras' built-in layers from the class (and, inside a ``.keras``
archive, from ``config.json``), falling back to the index (``layer/3``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from ..errors import FETCH_AGAIN, CorruptFileError, UnsafeInputError, damaged
from ..store import Entry, Kind, Store
from ._hdf5 import (
    MAX_DEPTH,
    dataset_dtype,
    dataset_entry,
    decode,
    header_entry,
    is_hdf5,
    link_target,
    links_of,
    unreadable_dataset,
)
from ._hdf5_file import (
    Catalog,
    HDF5File,
    RootView,
    catalog_of,
    open_h5,
    peek_root,
    root_view,
)
from ._hdf5_headers import Header
from ._hdf5_links import DATASET, EXTERNAL, GROUP, HARD, SOFT, Links
from ._keras_quantized import QUANTIZED_VARIABLES, float_by_config, quantized_names

if TYPE_CHECKING:
    import h5py

FORMAT = "keras-weights-h5"

# Variable names of Keras' built-in layers, by snake_case class name, in creation order.
_KERNEL_BIAS = ("kernel", "bias")
_RNN_CELL = ("kernel", "recurrent_kernel", "bias")
WEIGHT_NAMES: dict[str, tuple[str, ...]] = {
    "dense": _KERNEL_BIAS,
    "einsum_dense": _KERNEL_BIAS,
    "conv1d": _KERNEL_BIAS,
    "conv2d": _KERNEL_BIAS,
    "conv3d": _KERNEL_BIAS,
    "conv1d_transpose": _KERNEL_BIAS,
    "conv2d_transpose": _KERNEL_BIAS,
    "conv3d_transpose": _KERNEL_BIAS,
    "depthwise_conv1d": _KERNEL_BIAS,
    "depthwise_conv2d": _KERNEL_BIAS,
    "separable_conv1d": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "separable_conv2d": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "layer_normalization": ("gamma", "beta"),
    "group_normalization": ("gamma", "beta"),
    "rms_normalization": ("scale",),
    "embedding": ("embeddings",),
    "lstm_cell": _RNN_CELL,
    "gru_cell": _RNN_CELL,
    "simple_rnn_cell": _RNN_CELL,
    "conv_lstm_cell": _RNN_CELL,
    "conv_lstm1d_cell": _RNN_CELL,
    "conv_lstm2d_cell": _RNN_CELL,
    "conv_lstm3d_cell": _RNN_CELL,
    "prelu": ("alpha",),
}
# Sub-layers stored under an attribute name rather than a class name.
_ATTRIBUTE_CLASSES = {
    "query_dense": "einsum_dense",
    "key_dense": "einsum_dense",
    "value_dense": "einsum_dense",
    "output_dense": "einsum_dense",
}
# Training state Keras 3 saves beside the layers: metrics, loss trackers, seed generators.
_STATE_KEYS = {"metrics", "compile_metrics", "compiled_metrics", "compile_loss", "loss_tracker",
               "_loss_tracker", "metrics_tracker", "seed_generator", "_seed_generator"}
_RNN_CELLS = {"lstm": "lstm_cell", "gru": "gru_cell", "simple_rnn": "simple_rnn_cell"}
# The ``_1``, ``_2``, ... Keras appends to repeated keys (``dense_3`` -> ``dense``).
_INDEX_SUFFIX = re.compile(r"_\d+$")
_HARD, _GROUP, _DATASET = HARD, GROUP, DATASET


@lru_cache(maxsize=4096)  # a model repeats a handful of classes thousands of times
def snake_case(class_name: str) -> str:
    """``BatchNormalization`` -> ``batch_normalization`` (Keras' own rule)."""
    s = re.sub(r"\W+", "", class_name)
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", s)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def sniff(path: str | os.PathLike[str], head: bytes) -> bool:
    """An HDF5 file with Keras 3's ``layers``/``vars`` tree (and no legacy ``layer_names``)."""
    if not is_hdf5(head):
        return False
    view = peek_root(path)
    if view is not None:
        return _v3_root(view)
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return looks_like_v3(f)
    except OSError:
        return False


def looks_like_v3(f: HDF5File | h5py.Group, *, shard: bool = False) -> bool:
    """Keras 3 saving_lib layout: a ``vars`` or ``layers`` group at the root (a shard of a
    sharded set may hold nothing but part of the ``optimizer`` group)."""
    if isinstance(f, HDF5File):
        view = root_view(f)
        if view is not None:
            return _v3_root(view, shard=shard)
        f = f.h5
    import h5py

    if "layer_names" in f.attrs or "layer_names0" in f.attrs or "model_weights" in f:
        return False
    roots = ("vars", "layers", "optimizer") if shard else ("vars", "layers")
    return any(isinstance(f.get(k, getlink=True), h5py.HardLink) for k in roots)


def _v3_root(view: RootView, *, shard: bool = False) -> bool:
    """:func:`looks_like_v3` from the root group's parsed attributes and links."""
    if {"layer_names", "layer_names0"} & set(view.attributes) or "model_weights" in view.links:
        return False
    roots = ("vars", "layers", "optimizer") if shard else ("vars", "layers")
    return any(view.links.get(k, (None,))[0] == HARD for k in roots)


class LayerInfo(NamedTuple):
    """What ``config.json`` says about a layer: its class and options."""

    class_name: str
    config: Mapping[str, Any]


# A config.json container nested deeper than this (the outermost at depth 0) is refused.
MAX_CONFIG_DEPTH = 200

# Objects Keras' deserializer turns into plain values (a functional model's input tensors,
# tensors, arrays, bytes, slices, lambdas, type specs, functions), never into an object built
# by ``from_config``: nothing in them is a layer.
_VALUE_CLASSES = frozenset({
    "__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__",
    "__lambda__", "__typespec__", "function",
})


def layer_infos(config: Any) -> dict[str, LayerInfo]:
    """Every layer in a ``.keras`` ``config.json`` by name (first wins), found where Keras'
    deserializer builds objects from.

    The config is only read as JSON data (as ``json.loads`` gives it: dict, list, str, int,
    float, bool, None): nothing in it is imported or executed. A serialized object is a JSON
    object with a string ``class_name`` and an object ``config``; it is a layer when that
    config holds a string ``name``. Layers are found in document order (depth first), the
    order :func:`build_entries` ranks them by.

    Keras (``serialization_lib.deserialize_keras_object``, tf-keras' alike) builds an object
    from its ``config`` alone, so only that is searched for the layers it holds (a model's
    ``layers``, a wrapper's ``layer`` and ``backward_layer``, an RNN's ``cell``, a keras-hub
    task's ``backbone``, a custom layer's own options); beside it lie its ``build_config``
    (input shapes), ``compile_config`` (optimizer, losses, metrics) and, for a functional
    model's layers, ``inbound_nodes`` (the tensors each call took). Inside a config,
    ``dtype`` is the layer's dtype policy (``DTypePolicy``, whose ``name`` is ``float32``,
    not a layer's). Objects deserialized into values (:data:`_VALUE_CLASSES`) hold no layer.
    A JSON object that is not a serialized object is searched whole, as Keras deserializes
    each of its values.

    Raises:
        UnsafeInputError: a container the search enters nested deeper than
            :data:`MAX_CONFIG_DEPTH`.
    """
    found: dict[str, LayerInfo] = {}

    # One recursive call per container searched (two per layer of a plain model, against
    # twenty when every container was): each runs over one container's children, already
    # known to sit at ``depth``, and looks at each child once; ``skip`` is the dtype policy of
    # the config whose values these are (JSON data shares no object, so identity is position).
    # Exact type checks: ``type(x) is dict`` costs a third of ``isinstance`` per child, and
    # JSON data holds no subclasses. The recursion is bounded by the depth check, far below
    # Python's own limit.
    def visit(children: Iterable[Any], depth: int, skip: Any = None) -> None:
        for child in children:
            kind = type(child)
            if kind is dict:
                if child is skip:
                    continue
                if depth > MAX_CONFIG_DEPTH:
                    raise UnsafeInputError("config.json is nested too deeply")
                cfg = child.get("config")
                class_name = child.get("class_name")
                if type(cfg) is dict and type(class_name) is str:
                    if class_name in _VALUE_CLASSES:
                        continue
                    if depth == MAX_CONFIG_DEPTH:  # its config is one deeper
                        raise UnsafeInputError("config.json is nested too deeply")
                    name = cfg.get("name")
                    if type(name) is str and name not in found:
                        found[name] = LayerInfo(class_name, cfg)
                    if cfg:
                        visit(cfg.values(), depth + 2, cfg.get("dtype"))
                elif child:
                    visit(child.values(), depth + 1)
            elif kind is list:
                if child is skip:
                    continue
                if depth > MAX_CONFIG_DEPTH:
                    raise UnsafeInputError("config.json is nested too deeply")
                if child:
                    visit(child, depth + 1)

    try:
        visit((config,), 0)
    finally:
        # the helper refers to itself: deleted, the function, and with it ``found`` and every
        # layer's config, are freed by reference counting once the caller is done, not left
        # to a cyclic collection (which a process that paused the collector runs at exit)
        del visit
    return found


# The three records below are plain classes, not dataclasses: ``@dataclass`` generates and
# compiles their methods when this module is imported, a millisecond each, which every
# command that reads a Keras file paid at start-up.


class _VarsGroup:
    """One object's ``vars`` group: the layer path, a class hint and its datasets by index
    (the shards of a sharded set may each hold some of them)."""

    __slots__ = ("chain", "class_hint", "datasets", "file_path", "parent_class", "state")

    def __init__(
        self,
        file_path: str,  # HDF5 path of the vars group, e.g. /layers/dense/vars
        chain: list[str],
        class_hint: str | None,
        parent_class: str | None,
        datasets: dict[int, _DatasetRef] | None = None,
        state: str = "layers",  # layers | optimizer | other
    ) -> None:
        self.file_path = file_path
        self.chain = chain
        self.class_hint = class_hint
        self.parent_class = parent_class
        self.datasets = {} if datasets is None else datasets
        self.state = state


class _Source:
    """Where an HDF5 image lives: its own file, or a stored member inside a zip."""

    __slots__ = ("base_offset", "data_path", "path", "size")

    def __init__(self, path: str, data_path: str | None, base_offset: int, size: int) -> None:
        self.path = path  # what errors name
        # the file byte ranges point into (None: bytes are not raw in any file), absolute:
        # byte ranges hold absolute paths, made so once here, not once per tensor
        self.data_path = None if data_path is None else os.path.abspath(data_path)
        self.base_offset = base_offset
        self.size = size


# Sub-layers that Keras creates in a fixed order, which the alphabetical HDF5 keys lose.
_CREATION_ORDER = {
    "query_dense": 0, "key_dense": 1, "value_dense": 2, "output_dense": 3,
    "forward_layer": 0, "backward_layer": 1,
}


@lru_cache(maxsize=1 << 16)  # a sharded set sorts its groups' paths, which repeat their parts
def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort ``dense``, ``dense_1``, ``dense_2``, ..., ``dense_10`` in creation order."""
    stem, underscore, number = name.rpartition("_")
    if underscore and number.isdecimal():  # what the regex ``_\d+`` matches, no more
        return (_CREATION_ORDER.get(name, -1), stem, int(number), name)
    return (_CREATION_ORDER.get(name, -1), name, 0, name)


def collect_vars(
    f: HDF5File,
    source: _Source,
    groups: dict[str, _VarsGroup],
    order: list[str],
    *,
    key_names: Mapping[str, str] | None = None,
) -> str | None:
    """Walk one HDF5 image, merging every ``vars`` group into ``groups`` (keyed by HDF5
    path, so the shards of a sharded set merge). Returns the root model's name.

    ``key_names`` maps object group paths to layer names for files whose ``vars`` groups carry
    no ``name`` attribute (tf-keras, Keras < 3.6); failing both, the group key is the name.

    The walk reads the catalog :func:`~._hdf5_file.open_h5` made (links by group path, object
    headers and ``name`` attributes by address); libhdf5 is asked only about what the catalog
    leaves out, and datasets are not opened at all (their parsed object headers describe
    them; see :class:`_DatasetRef`).
    """
    key_names = key_names or {}
    catalog = catalog_of(f)
    headers = catalog.headers
    children = catalog.children
    texts = catalog.texts
    root_name: str | None = None

    # the catalog's answers inline (a few dictionary look-ups per group), the helpers below
    # for what it leaves to libhdf5: same answers, without two calls per object
    def links_at(gname: str) -> Links:
        links = children.get(gname)
        return links if links is not None else links_of(f, gname)

    def refuse(gname: str, key: str, link_type: int) -> NoReturn:
        where = f"{gname}/{key}"
        import h5py

        if link_type == EXTERNAL:
            target = link_target(h5py.h5g.open(f.h5.id, _b(gname)), key)
            raise UnsafeInputError(f"refusing the external link {where} -> {target}", path=source.path, tensor=where)
        if link_type == SOFT:
            target = link_target(h5py.h5g.open(f.h5.id, _b(gname)), key)
            raise UnsafeInputError(f"refusing the soft link {where} -> {target}", path=source.path, tensor=where)
        raise UnsafeInputError(f"refusing the link {where}", path=source.path, tensor=where)

    def read_vars(vars_name: str, record: _VarsGroup) -> None:
        """The variables of one ``vars`` group, by index, into ``record``."""
        datasets = record.datasets
        prefix = vars_name + "/"
        for key, (link_type, address) in links_at(vars_name).items():
            if link_type != _HARD:
                raise UnsafeInputError(f"refusing a link inside {vars_name}", path=source.path, tensor=key)
            if not key.isdecimal():  # what int() reads (isdigit() also takes "²")
                raise CorruptFileError(
                    damaged(f"unexpected variable key {key!r} in {vars_name}"),
                    path=source.path,
                )
            dataset_name = prefix + key
            header = headers.get(address)
            if (header is None or header.kind != "dataset") and _object_type(
                f, dataset_name, header
            ) != _DATASET:
                raise CorruptFileError(damaged(f"{dataset_name} is not a dataset"), path=source.path)
            datasets[int(key)] = _dataset_ref((f, dataset_name, header, source))

    def walk(gname: str, links: Links, chain: list[str],
             class_hint: str | None, parent_class: str | None, state: str, depth: int) -> None:
        nonlocal root_name
        if depth > MAX_DEPTH:
            raise UnsafeInputError("groups nested too deeply", path=source.path, tensor=gname)
        for key, (link_type, _) in links.items():
            if link_type != _HARD:
                refuse(gname, key, link_type)
        prefix = "" if gname == "/" else gname
        own_chain = chain
        own_class = class_hint
        vars_link = links.get("vars")
        nested_container = class_hint == "container" and vars_link is None
        if depth > 0 and vars_link is None and gname in key_names:
            # a shard holding this layer's sub-layers but not its own vars group
            own_chain = chain + [key_names[gname]]
        if vars_link is not None:
            vars_name = f"{prefix}/vars"
            vars_address = vars_link[1]
            header = headers.get(vars_address)
            if (header is None or header.kind != "group") and _object_type(f, vars_name, header) != _GROUP:
                raise CorruptFileError(damaged(f"{vars_name} is not a group"), path=source.path)
            attributes = texts.get(vars_address)
            recorded = None if attributes is None else attributes.get("name")
            if type(recorded) is not str:
                recorded = _layer_name(f, vars_name, vars_address, catalog, source.path)
            name = recorded or key_names.get(gname) or gname.rsplit("/", 1)[-1]
            if depth == 0:
                root_name = str(name)
                own_chain = []
            else:
                own_chain = chain + [str(name)]
            record = groups.get(vars_name)
            if record is not None and recorded is not None and depth > 0:
                record.chain = own_chain  # an earlier shard held this group without its name
            if record is None:
                record = _VarsGroup(vars_name, own_chain, class_hint, parent_class, {}, state)
                groups[vars_name] = record
                order.append(vars_name)
            read_vars(vars_name, record)
            if len(links) == 1:
                return  # a layer without sub-layers: nothing else to walk
        for key in sorted((k for k in links if k != "vars"), key=_natural_key):
            child_name = f"{prefix}/{key}"
            header = headers.get(links[key][1])
            if not _is_group(f, child_name, header):
                continue
            child_links = links_at(child_name)
            child_state = state
            if depth == 0 and key == "optimizer":
                child_state = "optimizer"
            elif key in _STATE_KEYS or "seed_generator" in key:
                child_state = "other"
            if "vars" in child_links or child_name in key_names:
                # an object tracked under an attribute name (MHA's query_dense, an RNN's cell),
                # or held by a nested list (Keras >= 3.14 keys those ``container``,
                # ``container_1``, ...), whose items are keyed by class name like any container's
                hint = _INDEX_SUFFIX.sub("", key) if nested_container else _ATTRIBUTE_CLASSES.get(key, key)
                walk(child_name, child_links, own_chain, hint, own_class, child_state, depth + 1)
                continue
            # a container (``layers``, a list attribute): children are keyed by class name
            for sub in sorted(child_links, key=_natural_key):
                link_type, address = child_links[sub]
                if link_type != _HARD:
                    refuse(child_name, sub, link_type)
                node_name = f"{child_name}/{sub}"
                header = headers.get(address)
                if not _is_group(f, node_name, header):
                    continue
                walk(node_name, links_at(node_name), own_chain, _INDEX_SUFFIX.sub("", sub),
                     own_class, child_state, depth + 2)

    try:
        walk("/", links_at("/"), [], None, None, "layers", 0)
    finally:
        del walk  # it refers to itself: the groups it holds are then freed with the caller's
    return root_name


def _b(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _is_group(f: HDF5File, name: str, header: Header | None) -> bool:
    """Whether the object a hard link ``name`` leads to is a group (see :func:`_object_type`)."""
    if header is not None and header.kind != "other":
        return header.kind == "group"
    return _object_type(f, name, header) == _GROUP


def _object_type(f: HDF5File, name: str, header: Header | None) -> int:
    """``GROUP`` or ``DATASET`` (libhdf5's object types, or another type) of the object a
    hard link ``name`` leads to: from its parsed header, else from libhdf5."""
    if header is not None and header.kind != "other":
        return _GROUP if header.kind == "group" else _DATASET
    import h5py

    return h5py.h5o.get_info(f.h5.id, _b(name)).type


def _layer_name(f: HDF5File, vars_name: str, address: int, catalog: Catalog, path: str) -> str | None:
    """A ``vars`` group's ``name`` attribute (Keras >= 3.6), None when it has none: decoded
    by the heap check where it could, else read through h5py."""
    text = catalog.texts.get(address, {}).get("name")
    if isinstance(text, str):
        return text
    header = catalog.headers.get(address)
    if header is not None and header.kind == "group" and not {"name", ""} & set(header.attributes):
        return None
    if header is not None and any(name == "name" and not what for name, _, what in header.vlen):
        # a variable-length value that is not text (a damaged datatype): Keras writes a string,
        # and libhdf5 reading this one crashes the process
        raise CorruptFileError(
            damaged(f"the name attribute of {vars_name} is not text"), path=path
        )
    import h5py

    group = h5py.Group(h5py.h5g.open(f.h5.id, _b(vars_name)))
    return str(decode(group.attrs["name"])) if "name" in group.attrs else None


class _DatasetRef(NamedTuple):
    """One variable's dataset, not opened: its file, HDF5 path and parsed object header
    (None, or not ``plain``: libhdf5 describes it), and the image it lies in. (A tuple: a
    reader makes one per variable, see :data:`_dataset_ref`.)"""

    file: HDF5File
    name: str
    header: Header | None
    source: _Source

    def open(self) -> h5py.Dataset:
        """The dataset, opened through libhdf5, its datatype known to h5py.

        Raises:
            CorruptFileError: libhdf5 cannot open it, or h5py has no numpy type for its
                datatype (its object header is damaged): names the file and the dataset.
        """
        import h5py

        try:
            dataset = h5py.Dataset(h5py.h5o.open(self.file.h5.id, _b(self.name)))
            dataset.dtype  # noqa: B018 -- h5py keeps it; a damaged datatype fails here, named
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
            raise unreadable_dataset(e, path=self.source.path, key=self.name) from e
        return dataset

    def dtype_shape(self) -> tuple[Any, tuple[int, ...]]:
        """The tensor's dtype (as :func:`~._hdf5.dataset_dtype` gives it) and shape."""
        header = self.header
        if header is not None and header.plain:
            return header.dtype, header.shape  # type: ignore[return-value]
        dataset = self.open()
        return dataset_dtype(dataset, path=self.source.path, key=self.name), tuple(dataset.shape or ())

    def is_counter(self) -> bool:
        """A scalar integer (an optimizer's iteration count)."""
        header = self.header
        if header is not None and header.plain:
            return header.shape == () and header.dtype.kind in "iu"  # type: ignore[union-attr]
        dataset = self.open()
        return dataset.shape == () and dataset.dtype.kind in "iu"

    def opened_entry(self, *, name: str, kind: Kind, index: int, layer: str) -> Entry:
        """The Entry :func:`~._hdf5.dataset_entry` gives, the dataset opened through libhdf5:
        for a dataset whose header :func:`~._hdf5.header_entry` cannot build it from."""
        source = self.source
        return dataset_entry(
            self.open(), name=name, key=self.name, path=source.path, data_path=source.data_path,
            base_offset=source.base_offset, file_size=source.size, kind=kind, index=index,
            layer=layer,
        )


# _DatasetRef((file, name, header, source)) without a Python frame (its __new__ has one)
_dataset_ref = partial(tuple.__new__, _DatasetRef)


def recorded_names(f: HDF5File, *, path: str) -> dict[str, str]:
    """Object group path -> layer name, from every ``vars`` group's ``name`` attribute.

    A sharded set spreads one model's groups over several files, so names recorded in one
    shard are needed to place the groups of another.
    """
    names: dict[str, str] = {}
    catalog = catalog_of(f)
    headers, children, texts = catalog.headers, catalog.children, catalog.texts

    def visit(gname: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise UnsafeInputError("groups nested too deeply", path=path, tensor=gname)
        prefix = "" if gname == "/" else gname
        links = children.get(gname)
        if links is None:
            links = links_of(f, gname)
        for key, (link_type, address) in links.items():
            if link_type != HARD:
                continue  # collect_vars refuses it with a proper message
            child = f"{prefix}/{key}"
            header = headers.get(address)
            if not _is_group(f, child, header):
                continue
            if key == "vars":
                attributes = texts.get(address)
                name = None if attributes is None else attributes.get("name")
                if type(name) is not str:
                    name = _layer_name(f, child, address, catalog, path)
                if name:
                    names[gname] = name
            else:
                visit(child, depth + 1)

    try:
        visit("/", 0)
    finally:
        del visit  # it refers to itself (see layer_infos)
    return names


# A subclass of a built-in layer (``class MyDense(Dense)``) keeps its base's config keys: the
# keys that tell each base apart, most specific first.
_BASE_BY_CONFIG_KEYS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"depth_multiplier", "pointwise_initializer"}), "separable_conv2d"),
    (frozenset({"depth_multiplier", "depthwise_initializer"}), "depthwise_conv2d"),
    (frozenset({"filters", "kernel_size"}), "conv2d"),
    (frozenset({"equation", "output_shape"}), "einsum_dense"),
    (frozenset({"units", "kernel_initializer"}), "dense"),
    (frozenset({"input_dim", "output_dim"}), "embedding"),
    (frozenset({"momentum", "moving_mean_initializer"}), "batch_normalization"),
)


def builtin_class(info: LayerInfo) -> str:
    """The snake_case class whose variable names a layer has: its own class when Keras has it,
    else the built-in base its ``config.json`` entry shows (a ``Dense`` subclass has
    ``units`` and ``kernel_initializer``), else its own class name."""
    cls = snake_case(info.class_name)
    if cls in WEIGHT_NAMES or cls in QUANTIZED_VARIABLES:  # ReversibleEmbedding has names of its own
        return cls
    keys = set(info.config)
    for needed, base in _BASE_BY_CONFIG_KEYS:
        if needed <= keys:
            return base
    return cls


def _weight_names(record: _VarsGroup, count: int, infos: Mapping[str, LayerInfo]) -> Sequence[str]:
    """Variable names of one layer (its variables are ``record.datasets[0:count]``), or the
    indices where they cannot be known."""
    info = infos.get(record.chain[-1] if record.chain else "") if infos else None
    cls = builtin_class(info) if info else record.class_hint
    if cls == "cell" or (info is None and record.class_hint == "cell"):
        parent = record.parent_class or ""
        cls = _RNN_CELLS.get(_INDEX_SUFFIX.sub("", parent), "lstm_cell")
    stored: list[tuple[Any, tuple[int, ...]]] | None = None
    if (cls in QUANTIZED_VARIABLES or cls not in WEIGHT_NAMES) and not (
        info is not None and float_by_config(cls, info.config)
    ):
        datasets = record.datasets
        stored = [datasets[i].dtype_shape() for i in range(count)]
    if info is not None:
        return _names_of(cls, count, stored, info.config)
    # without a config the answer depends on the class and what is stored, nothing else: a
    # file of thousands of layers repeats a handful of those
    key = (cls, count, None if stored is None else tuple(stored))
    names = _NAMES_WITHOUT_CONFIG.get(key)
    if names is None:
        names = tuple(_names_of(cls, count, stored, None))
        if len(_NAMES_WITHOUT_CONFIG) < 4096:
            _NAMES_WITHOUT_CONFIG[key] = names
    return names


# (class, count, stored dtypes and shapes if they matter) -> names, for layers without config
_NAMES_WITHOUT_CONFIG: dict[tuple[Any, ...], tuple[str, ...]] = {}


def _names_of(
    cls: str | None, count: int, stored: list[tuple[Any, tuple[int, ...]]] | None,
    config: Mapping[str, Any] | None,
) -> list[str]:
    """:func:`_weight_names` worked out: ``stored`` are the dtypes and shapes when the layer
    may be quantized, ``config`` its ``config.json`` entry when there is one."""
    if stored is not None:
        quantized = quantized_names(cls, stored, config)
        if quantized is not None:
            return quantized
    candidates = list(WEIGHT_NAMES.get(cls or "", ()))
    if config is not None and candidates:
        if config.get("use_bias") is False or (cls == "einsum_dense" and config.get("bias_axes") is None):
            candidates = [c for c in candidates if c != "bias"]
        if config.get("center") is False:
            candidates = [c for c in candidates if c != "beta"]
        if config.get("scale") is False:
            candidates = [c for c in candidates if c != "gamma"]
    if len(candidates) == count:
        return candidates
    if candidates and count == len(candidates) - 1 and candidates[-1] == "bias":
        return candidates[:-1]
    if cls == "batch_normalization" and count == 2:
        return ["moving_mean", "moving_variance"]
    return [str(i) for i in range(count)]


def saving_tree_key(vars_group: str, index: int) -> str:
    """The key Keras' saving walk gives variable ``index`` of the ``vars`` group at HDF5 path
    ``vars_group`` (``/layers/dense/vars``, 0 -> ``layers/dense/vars/0``)."""
    return f"{_saving_tree_prefix(vars_group)}{index}"


def _saving_tree_prefix(vars_group: str) -> str:
    """What :func:`saving_tree_key` puts before the index (``layers/dense/vars/``)."""
    return vars_group.strip("/") + "/"


def build_entries(
    groups: Mapping[str, _VarsGroup],
    order: Iterable[str],
    *,
    infos: Mapping[str, LayerInfo] | None = None,
    root_name: str | None = None,
) -> list[Entry]:
    """Entries for every variable of the merged ``vars`` groups, layer by layer (with
    ``infos``, weights first, each layer in ``config.json`` order; training state last).

    One pass: names, paths and the ordering key are worked out once per ``vars`` group, and
    each tensor costs one :class:`~ckptconv.store.Entry`.
    """
    infos = infos or {}
    rank = {name: i for i, name in enumerate(infos)}
    unranked = len(rank)
    blocks: list[tuple[tuple[bool, int], list[Entry]]] = []
    for group_path in order:
        record = groups[group_path]
        datasets = record.datasets
        count = len(datasets)
        # the keys are distinct non-negative integers: 0 .. count-1 exactly when the largest is
        if count and max(datasets) != count - 1:
            indices = sorted(datasets)
            missing = sorted(set(range(indices[-1] + 1)) - set(indices))
            raise CorruptFileError(
                f"variables {missing} of {group_path} are missing (the file is damaged, or is one "
                f"shard of a set: open the set's .weights.json); {FETCH_AGAIN}",
                path=next(iter(datasets.values())).source.path,
            )
        state = record.state
        if state == "layers":
            layer = "/".join(record.chain)
            names = _weight_names(record, count, infos)
            kinds: list[Kind] = ["weight"] * count
        else:
            layer = "optimizer" if state == "optimizer" else "/".join(["state", *record.chain])
            names = [str(i) for i in range(count)]
            kinds = []
            for i in range(count):
                counter = state == "optimizer" and i == 0 and datasets[i].is_counter()
                kinds.append("bookkeeping" if counter or state != "optimizer" else "optimizer")
        name_prefix = f"{layer}/" if layer else ""
        tree_prefix = _saving_tree_prefix(group_path)
        block: list[Entry] = []
        source = None
        for i in range(count):
            ref = datasets[i]
            if ref.source is not source:  # one per group, except across the shards of a set
                source = ref.source
                path, data_path, base_offset, size = source.path, source.data_path, source.base_offset, source.size
            name = name_prefix + names[i]
            header = ref.header
            tree_path = f"{tree_prefix}{i}"
            entry = None if header is None else header_entry(
                header, name, ref.name, path, data_path, base_offset, size, kinds[i], i, layer, tree_path
            )
            if entry is None:
                entry = ref.opened_entry(name=name, kind=kinds[i], index=i, layer=layer)
                entry.tree_path = tree_path
            block.append(entry)
        # every entry of a group has its layer, and its kind is a weight's or not for all
        blocks.append(((state != "layers", rank.get(layer.partition("/")[0], unranked)), block))
    if infos:
        blocks.sort(key=lambda b: b[0])  # stable: layers keep their file order within a rank
    return [entry for _, block in blocks for entry in block]


def read_image(f: HDF5File, source: _Source, infos: Mapping[str, LayerInfo] | None = None) -> tuple[list[Entry], str | None]:
    """All entries of one Keras 3 weights HDF5 image (a file or a ``.keras`` member)."""
    if not looks_like_v3(f):
        raise CorruptFileError("not a Keras 3 weights file (no layers/vars groups)", path=source.path)
    groups: dict[str, _VarsGroup] = {}
    order: list[str] = []
    root = collect_vars(f, source, groups, order)
    return build_entries(groups, order, infos=infos, root_name=root), root


def open(path: str | os.PathLike[str]) -> Store:  # noqa: A001
    """Open a Keras 3 ``.weights.h5`` file as a lazy store (metadata only)."""
    f = open_h5(path, path=path)
    try:
        source = _Source(os.fspath(path), os.fspath(path), 0, os.path.getsize(path))
        entries, root = read_image(f, source)
    except BaseException:
        f.close()
        raise
    metadata = {"model": root} if root else {}
    return Store(entries, format=FORMAT, path=path, files=[path], metadata=metadata, closer=f.close)
