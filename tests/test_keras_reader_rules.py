"""The small rules the Keras readers apply once per layer or per tensor, each against the
general form it stands for: the creation-order sort key, the missing-variable and
variable-key checks, the float-layer answer of the quantized naming, the zip member window
libhdf5 reads through and the map the metadata pass reads it by, the legacy reader's HDF5 path
joining, and the ``config.json`` layer walk (against the walk spelled out, on every ``.keras``
fixture and on generated configs)."""

from __future__ import annotations

import io
import json
import mmap
import re
import shutil
import zipfile
from typing import Any
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptconv
from tests.helpers import assert_bit_exact, load_expected
from ckptconv.errors import CorruptFileError, UnsafeInputError
from ckptconv.formats import _hdf5_file
from ckptconv.formats import _keras_quantized as q
from ckptconv.formats import keras_archive, keras_legacy, keras_weights


def regex_natural_key(name: str) -> tuple:
    """The creation-order key as first written, with a regex (names without newlines)."""
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    assert m is not None
    return (keras_weights._CREATION_ORDER.get(name, -1), m.group(1), int(m.group(2) or 0), name)


NAME_PARTS = st.lists(st.sampled_from(["dense", "_", "1", "0", "10", "²", "٣", "x", "key_dense"]), max_size=6)


@settings(max_examples=400, deadline=None)
@given(NAME_PARTS)
def test_natural_key_is_the_regex_rule(parts: list[str]) -> None:
    name = "".join(parts)
    assert keras_weights._natural_key(name) == regex_natural_key(name)


def test_natural_key_sorts_in_creation_order() -> None:
    names = ["dense_10", "dense_2", "dense", "dense_1", "value_dense", "query_dense", "dense_1_2"]
    assert sorted(names, key=keras_weights._natural_key) == [
        "dense", "dense_1", "dense_2", "dense_10", "dense_1_2", "query_dense", "value_dense",
    ]


@pytest.fixture(scope="module")
def keras_dir(generated) -> Path:
    return generated("keras")


@pytest.mark.parametrize("drop,missing", [("0", "[0]"), ("1", "[1]")])
def test_a_missing_variable_is_named(keras_dir: Path, tmp_path: Path, drop: str, missing: str) -> None:
    """A vars group whose indices have a gap (or lack their first) is refused, naming it."""
    path = tmp_path / "gap.weights.h5"
    shutil.copy(keras_dir / "k3_zoo.weights.h5", path)
    with h5py.File(path, "a") as f:
        group = f["layers/batch_normalization/vars"]  # four variables: 0..3
        del group[drop]
    with pytest.raises(CorruptFileError, match=re.escape(
        f"variables {missing} of /layers/batch_normalization/vars are missing"
    )):
        ckptconv.open(path)


@pytest.mark.parametrize("key", ["kernel", "\u00b2", "\u0663"])  # a name; "²" (a digit to isdigit, no number to int)
def test_a_variable_key_that_is_no_index_is_refused(keras_dir: Path, tmp_path: Path, key: str) -> None:
    """A vars group's keys are the variables' indices: any other key is refused, naming it;
    a decimal digit of another script is read as int() reads it ("٣" is index 3: 1 is missing)."""
    path = tmp_path / "key.weights.h5"
    shutil.copy(keras_dir / "k3_zoo.weights.h5", path)
    with h5py.File(path, "a") as f:
        f.move("layers/batch_normalization/vars/1", f"layers/batch_normalization/vars/{key}")
    expected = (
        "variables [1] of /layers/batch_normalization/vars are missing" if key == "\u0663"
        else f"unexpected variable key {key!r} in /layers/batch_normalization/vars"
    )
    with pytest.raises(CorruptFileError, match=re.escape(expected)):
        ckptconv.open(path)


F32, BF16, I8 = np.dtype("float32"), np.dtype("float16"), np.dtype("int8")
STORED = [
    [(F32, (4, 3)), (F32, (3,))],
    [(F32, (4, 3))],
    [(BF16, (4, 3)), (BF16, (3,))],
    [(F32, (20, 8)), (F32, (8, 20))],
    [(I8, (4, 3)), (F32, (3,)), (F32, (3,))],
    [(F32, (4, 3)), (F32, (3,)), (F32, ()), (F32, (16,)), (F32, ()), (F32, (16,)), (F32, ()), (F32, (16,))],
]
POLICIES = [
    {"class_name": "DTypePolicy", "config": {"name": "float32"}},
    {"class_name": "DTypePolicy", "config": {"name": "mixed_bfloat16"}},
    "float32",
    None,
    {"class_name": "QuantizedFloat8DTypePolicy", "config": {"name": "float8_from_float32", "mode": "float8"}},
    {"class_name": "QuantizedDTypePolicy", "config": {"name": "int8_from_float32", "mode": "int8"}},
]


@pytest.mark.parametrize("cls", ["dense", "einsum_dense", "embedding", "reversible_embedding"])
def test_names_of_float_layers_are_the_full_reading(cls: str) -> None:
    """Whatever shortcut a float config takes, the answer is what the full reading of every
    mode the config allows gives (layers of one class and shape, float or quantized, apart)."""
    table = q.QUANTIZED_VARIABLES[cls]
    for stored in STORED:
        for policy in POLICIES:
            for use_bias in (True, False):
                config = {"dtype": policy, "use_bias": use_bias, "tie_weights": False}
                mode = q.quantization_mode(config)
                known = q._options_in_config(cls, mode, config)
                full = q._names(cls, table, stored, mode, known)
                q._NAMES.clear()
                got = q.quantized_names(cls, stored, config)
                assert got == (None if full is None else list(full)), (cls, stored, policy, use_bias)


def test_window_reads_like_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zip member view libhdf5 reads: every seek form and short reads at its end, with
    and without os.preadv."""
    data = bytes(range(256)) * 40
    path = tmp_path / "blob"
    path.write_bytes(data)
    start, length = 1000, 5000
    member = data[start : start + length]
    for preadv in (True, False):
        monkeypatch.setattr(keras_archive, "_PREADV", preadv and hasattr(__import__("os"), "preadv"))
        window = keras_archive._Window(str(path), start, length)
        try:
            reference = io.BytesIO(member)
            for pos, whence, size in [(0, 0, 64), (10, 1, 100), (-50, 2, 64), (-5, 1, 3), (4990, 0, 64),
                                      (0, 2, 8), (7, 1, 8), (-100, 0, 8), (123, 0, 0)]:
                assert window.seek(pos, whence) == reference.seek(max(0, {0: 0, 1: reference.tell(),
                                                                           2: length}[whence] + pos))
                buffer, expected = bytearray(size), bytearray(size)
                assert window.readinto(buffer) == reference.readinto(expected)
                assert buffer == expected and window.tell() == reference.tell()
        finally:
            window.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["", "/", "a", "b:0", "//", "model_weights"]), max_size=4),
       st.lists(st.sampled_from(["", "/", "kernel:0", "dense", "//"]), max_size=4))
def test_legacy_join_is_the_general_rule(group: list[str], name: list[str]) -> None:
    g, n = "".join(group), "".join(name)
    assert keras_legacy._join(g, n) == "/" + "/".join(p for p in f"{g}/{n}".split("/") if p)


@pytest.mark.parametrize("base", [0, 1, 1000, mmap.ALLOCATIONGRANULARITY - 1, mmap.ALLOCATIONGRANULARITY,
                                  mmap.ALLOCATIONGRANULARITY + 7, 3 * mmap.ALLOCATIONGRANULARITY])
def test_image_reader_reads_a_member_like_its_bytes(tmp_path: Path, base: int) -> None:
    """The metadata pass's reads of a stored member (mapped from the page holding its first
    byte) are slices of the member's bytes, up to its end, wherever in the file it starts, and
    the mapping it searches holds them where it says; a window claiming more than the file
    holds ends with the file."""
    data = bytes(np.random.default_rng(base).integers(0, 256, 5 * mmap.ALLOCATIONGRANULARITY, np.uint8))
    path = tmp_path / "archive"
    path.write_bytes(data)
    for length in (1, 100, mmap.ALLOCATIONGRANULARITY + 3, len(data) - base, len(data)):
        member = data[base : base + length]
        window = keras_archive._Window(str(path), base, length)
        reader = _hdf5_file._ImageReader(window)
        try:
            assert reader.size == len(member)
            # the mapping the GCOL scan searches in place holds the member where it says
            assert reader.mapped[reader.base : reader.base + reader.size] == member
            for offset in {0, 1, length // 2, len(member) - 1, len(member), len(member) + 5, 2**40}:
                for n in (0, 1, 8, 4096, len(member) + 10):
                    assert reader.read(offset, n) == member[offset : offset + n], (length, offset, n)
        finally:
            reader.close()
            window.close()
    whole = _hdf5_file._ImageReader(str(path))  # a file of its own: the same reads
    try:
        assert whole.size == len(data) and whole.read(base, 100) == data[base : base + 100]
    finally:
        whole.close()


# What Keras' deserializer turns into values, never into an object built by from_config.
VALUE_CLASSES = {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__",
                 "__slice__", "__lambda__", "__typespec__", "function"}


def keras_layer_walk(config: Any) -> dict[str, keras_weights.LayerInfo]:
    """The config walk spelled out, one call per container, ``isinstance`` checks: a
    serialized object (string ``class_name``, object ``config``) is a layer when its config
    has a string name, and only its config, less the ``dtype`` policy, is searched further
    (what ``deserialize_keras_object`` builds it from); any other object or list is searched
    whole; the value classes hold nothing."""
    found: dict[str, keras_weights.LayerInfo] = {}

    def visit(node: Any, depth: int) -> None:
        if depth > 200:
            raise UnsafeInputError("config.json is nested too deeply")
        if isinstance(node, dict):
            cfg, class_name = node.get("config"), node.get("class_name")
            if isinstance(cfg, dict) and isinstance(class_name, str):
                if class_name in VALUE_CLASSES:
                    return
                if depth + 1 > 200:
                    raise UnsafeInputError("config.json is nested too deeply")
                name = cfg.get("name")
                if isinstance(name, str) and name not in found:
                    found[name] = keras_weights.LayerInfo(class_name, cfg)
                children = [value for key, value in cfg.items() if key != "dtype"]
                depth += 1
            else:
                children = list(node.values())
        else:
            children = node
        for child in children:
            if isinstance(child, (dict, list)):
                visit(child, depth + 1)

    if isinstance(config, (dict, list)):
        visit(config, 0)
    return found


def first_layer_infos(config: Any) -> dict[str, keras_weights.LayerInfo]:
    """The config walk as first written: every container searched, one call per container,
    ``isinstance`` checks (a dtype policy, an optimizer, a metric taken for layers)."""
    found: dict[str, keras_weights.LayerInfo] = {}

    def visit(node: Any, depth: int) -> None:
        if depth > 200:
            raise UnsafeInputError("config.json is nested too deeply")
        if isinstance(node, dict):
            cfg = node.get("config")
            if isinstance(cfg, dict) and isinstance(node.get("class_name"), str):
                name = cfg.get("name")
                if isinstance(name, str) and name not in found:
                    found[name] = keras_weights.LayerInfo(node["class_name"], cfg)
            children: Any = node.values()
        else:
            children = node
        for child in children:
            if isinstance(child, (dict, list)):
                visit(child, depth + 1)

    if isinstance(config, (dict, list)):
        visit(config, 0)
    return found


def assert_same_walk(config: Any) -> None:
    """Both walks find the same layers (the same config objects) in the same order, or both
    refuse the nesting."""
    try:
        expected = keras_layer_walk(config)
    except UnsafeInputError:
        with pytest.raises(UnsafeInputError, match="config.json is nested too deeply"):
            keras_weights.layer_infos(config)
        return
    got = keras_weights.layer_infos(config)
    assert list(got) == list(expected)
    for name, info in expected.items():
        assert got[name].class_name == info.class_name and got[name].config is info.config, name


def not_built_from_config(config: Any) -> list[tuple[str, str]]:
    """(class, name) of every named object the first walk took for a layer where Keras builds
    none: under a config's ``dtype``, beside an object's config (``compile_config``,
    ``build_config``, ``inbound_nodes``), in a value class."""
    found = []

    def visit(node: Any, outside: bool) -> None:
        if isinstance(node, dict):
            cfg, class_name = node.get("config"), node.get("class_name")
            is_object = isinstance(cfg, dict) and isinstance(class_name, str)
            if is_object and outside and isinstance(cfg.get("name"), str):
                found.append((class_name, cfg["name"]))
            for key, value in node.items():
                beside = is_object and (key != "config" or class_name in VALUE_CLASSES)
                policy = key == "dtype" and node is not config and not is_object
                visit(value, outside or beside or policy)
        elif isinstance(node, list):
            for value in node:
                visit(value, outside)

    visit(config, False)
    return found


def keras_configs(directory: Path) -> list[tuple[str, bytes]]:
    """The config.json of every .keras archive and model directory a generator wrote."""
    found = []
    for path in sorted(directory.rglob("*")):
        if path.suffix == ".keras" and path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if "config.json" in z.namelist():
                    found.append((path.name, z.read("config.json")))
        elif path.name == "config.json" and (path.parent / "model.weights.h5").exists():
            found.append((path.parent.name, path.read_bytes()))
    return found


@pytest.mark.parametrize(
    "generator", ["keras", "keras315", "structure", "optimizers", "load", "mapping", "suggest", "config_names"]
)
def test_config_walk_is_the_keras_walk_on_every_keras_fixture(generated, generator: str) -> None:
    """Every config.json the real writers wrote (nested functional, sequential and subclassed
    models, wrappers, quantized layers, optimizers, unzipped model directories, layers named
    like a dtype policy): the walk finds what the spelled-out walk finds, and all the first
    walk (every container searched) found besides, or took for a layer of the same name, are
    objects Keras builds no layer from: dtype policies, optimizers, learning-rate schedules,
    losses and metrics."""
    configs = keras_configs(generated(generator))
    assert configs, generator
    for name, raw in configs:
        config = json.loads(raw)
        assert_same_walk(config)
        got = keras_weights.layer_infos(config)
        model = config["config"].get("name")  # a subclassed model may record none
        assert model is None or list(got)[0] == model, name
        first = first_layer_infos(config)
        same = [n for n in got if first[n].config is got[n].config]
        assert [n for n in first if n in same] == same, name
        # the rest the first walk found, or took for another layer's name, Keras builds no layer from
        dropped = {(info.class_name, n) for n, info in first.items() if n not in same}
        assert dropped <= set(not_built_from_config(config)), name


def test_config_walk_orders_nested_layers_outer_first() -> None:
    """Document order, depth first, first name wins: a model before its layers, an outer
    layer before an inner one of the same name; a dtype policy, the build and compile configs
    and the tensors of a functional layer's calls are not searched."""
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}}
    tensor = {"class_name": "__keras_tensor__", "config": {"shape": [None, 2], "dtype": "float32",
                                                           "keras_history": ["float32", 0, 0]}}
    inner = {"class_name": "Dense", "config": {"name": "block", "dtype": policy, "units": 2}}
    block = {"class_name": "Sequential", "config": {"name": "block", "dtype": policy, "layers": [inner]},
             "build_config": {"input_shape": [None, 2]}, "inbound_nodes": [{"args": [tensor], "kwargs": {}}]}
    late = {"class_name": "Dense", "config": {"name": "float32", "dtype": policy, "units": 2}}
    head = {"class_name": "Dense", "config": {"name": "head", "dtype": policy}}
    model = {"class_name": "Functional", "config": {"name": "model", "layers": [block, late, head]},
             "compile_config": {"optimizer": {"class_name": "Adam", "config": {"name": "adam"}}}}
    config = json.loads(json.dumps(model))
    infos = keras_weights.layer_infos(config)
    assert [(n, i.class_name) for n, i in infos.items()] == [
        ("model", "Functional"), ("block", "Sequential"), ("float32", "Dense"), ("head", "Dense"),
    ]
    assert infos["block"].config is config["config"]["layers"][0]["config"]
    assert infos["float32"].config is config["config"]["layers"][1]["config"]
    assert_same_walk(config)


@pytest.mark.parametrize("filename,label", [
    ("policy_functional.keras", "policy_functional"),
    ("policy_functional", "policy_functional"),
    ("policy_sequential.keras", "policy_sequential"),
    ("tk_policy.keras", "tk_policy"),
])
def test_layers_named_like_a_dtype_policy_or_the_optimizer(generated, filename: str, label: str) -> None:
    """A layer named ``float32``, ``bfloat16``, ``mixed_float16`` or ``adam`` (Keras 3 and
    tf-keras): its weights have their names and its place in the config's order, as the live
    model held them; the dtype policies and the optimizer are no layers."""
    directory = generated("config_names")
    expected = load_expected(directory, label)
    with ckptconv.open(directory / filename) as store:
        entries = store.entries()
        assert [e.name for e in entries] == [x.name for x in expected]
        for entry, want in zip(entries, expected):
            assert entry.layer == want.layer and entry.index == want.index, want.name
            assert_bit_exact(entry.read(), want.array, want.name)


@pytest.mark.parametrize("depth,refused", [(200, False), (201, True)])
@pytest.mark.parametrize("container", ["list", "dict", "empty list", "empty dict", "layer's config"])
def test_config_walk_refuses_what_the_first_walk_refused(depth: int, refused: bool, container: str) -> None:
    """The innermost container at ``depth`` (the outermost at 0): refused beyond 200 (a
    layer's config is one deeper than the layer)."""
    inner: Any = {"list": [1], "dict": {"a": 1}, "empty list": [], "empty dict": {},
                  "layer's config": {"class_name": "Dense", "config": {"name": "d"}}}[container]
    config = inner
    for level in range(depth - 1 if container == "layer's config" else depth):
        config = [config] if level % 2 else {"config": config}
    assert_same_walk(config)
    if refused:
        with pytest.raises(UnsafeInputError, match="nested too deeply"):
            keras_weights.layer_infos(config)
    else:
        assert list(keras_weights.layer_infos(config)) == (["d"] if container == "layer's config" else [])


KEYS = st.sampled_from(["class_name", "config", "name", "layers", "layer", "dtype", "units", "build_config",
                        "inbound_nodes"])
LEAVES = st.sampled_from([None, True, False, 0, 1, 2.5, "a", "b", "dense", "float32", "", "Dense"])
NAMES = st.sampled_from(["a", "b", "dense", "float32", "a", "b", "dense", "float32", None, 3])  # mostly strings
CLASSES = st.sampled_from(["Dense", "Model", "Dense", "Model", "DTypePolicy", "__keras_tensor__", None, 1])


def _layer(options: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A layer, mostly (or a near miss: a class name that is no string, a config that is no
    object or has no string name), whose config holds ``options`` under any key, before or
    after its name; the object may hold more beside its config."""
    config = st.tuples(st.dictionaries(KEYS, options, max_size=3), NAMES, st.booleans()).map(
        lambda p: {**p[0], "name": p[1]} if p[2] else {"name": p[1], **p[0]})
    layer = st.fixed_dictionaries({
        "class_name": CLASSES,
        "config": st.integers(0, 4).flatmap(lambda i: config if i else options),
    })
    beside = st.dictionaries(st.sampled_from(["build_config", "inbound_nodes", "name", "module"]), options, max_size=2)
    return st.tuples(layer, beside).map(lambda p: {**p[0], **p[1]})


def _holding(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Layers holding layers, lists and objects of them, layers with more keys than theirs."""
    layer = _layer(children)
    return st.integers(0, 5).flatmap(lambda i: [
        layer, layer, st.lists(children, max_size=4), st.lists(layer, min_size=1, max_size=4),
        st.dictionaries(KEYS, children, max_size=4),
        st.tuples(st.dictionaries(KEYS, children, max_size=2), layer).map(lambda p: {**p[0], **p[1]}),
    ][i])


CONFIGS = st.recursive(st.booleans().flatmap(lambda b: _layer(LEAVES) if b else LEAVES), _holding, max_leaves=60)


@settings(max_examples=500, deadline=None)
@given(CONFIGS)
def test_config_walk_is_the_keras_walk_on_generated_configs(config: Any) -> None:
    """Nested models, layers, names repeated at every depth, keys in any order, dtype
    policies, objects beside a layer's config."""
    assert_same_walk(json.loads(json.dumps(config)))


@pytest.mark.parametrize("deep", [False, True])
def test_config_walk_leaves_no_reference_cycle(deep: bool) -> None:
    """The layers found (and their configs) are freed by reference counting once the caller
    drops them, also when the walk refuses the config: nothing waits for a cyclic collection,
    which the readers pause while they open a file."""
    import gc
    import weakref

    class Marker:  # held by the layer's config only
        pass

    marker = Marker()
    config: Any = {"layers": [{"class_name": "Dense", "config": {"name": "d", "held": marker}}]}
    if deep:
        depth = keras_weights.MAX_CONFIG_DEPTH + 5
        config["layers"].append(json.loads("[" * depth + "]" * depth))
    alive = weakref.ref(marker)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if deep:
            with pytest.raises(UnsafeInputError):
                keras_weights.layer_infos(config)
        else:
            assert list(keras_weights.layer_infos(config)) == ["d"]
        del config, marker
        assert alive() is None
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize("filename", ["k3_zoo.keras", "k3_zoo.weights.h5", "sharded/k3_zoo.weights.json", "tk_zoo.h5"])
def test_opening_leaves_no_reference_cycle(keras_dir: Path, filename: str) -> None:
    """What a Keras reader builds while opening (the vars walk's groups, the config's layers)
    is freed by reference counting once the store is gone: no cyclic garbage is left for the
    collector, which ``open`` pauses and a large file would make walk every object."""
    import gc

    with ckptconv.open(keras_dir / filename):  # first open: imports, memos
        pass
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with ckptconv.open(keras_dir / filename) as store:
            assert list(store)
        del store
        assert gc.collect() == 0
    finally:
        if was_enabled:
            gc.enable()


def first_key_names(config: Any) -> dict[str, str]:
    """The group keys as first written: one call per layer, ``isinstance`` checks (and a
    layer whose config is no object given no name, where it raised AttributeError)."""
    names: dict[str, str] = {}

    def visit(model: Any, prefix: str, depth: int) -> None:
        if depth > 100 or not isinstance(model, dict):
            return
        cfg = model.get("config")
        layers = cfg.get("layers") if isinstance(cfg, dict) else None
        if not isinstance(layers, list):
            return
        sequential = model.get("class_name") == "Sequential"
        counters: dict[str, int] = {}
        for layer in layers:
            if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
                continue
            if sequential and layer["class_name"] == "InputLayer":
                continue
            snake = keras_weights.snake_case(layer["class_name"])
            count = counters.get(snake, 0)
            counters[snake] = count + 1
            path = f"{prefix}/layers/{snake if count == 0 else f'{snake}_{count}'}"
            layer_config = layer.get("config")
            name = layer_config.get("name") if isinstance(layer_config, dict) else None
            if isinstance(name, str):
                names[path] = name
            visit(layer, path, depth + 1)

    visit(config, "", 0)
    return names


def test_key_names_are_the_first_keys_on_every_keras_fixture(generated) -> None:
    for generator in ("keras", "keras315", "structure", "config_names"):
        for name, raw in keras_configs(generated(generator)):
            config = json.loads(raw)
            assert keras_archive.key_names(config) == first_key_names(config), name


@settings(max_examples=300, deadline=None)
@given(CONFIGS)
def test_key_names_are_the_first_keys_on_generated_configs(config: Any) -> None:
    config = json.loads(json.dumps(config))
    assert keras_archive.key_names(config) == first_key_names(config)
    assert list(keras_archive.key_names(config)) == list(first_key_names(config))


@pytest.mark.parametrize("depth", [99, 100, 101, 102])
def test_key_names_stop_at_the_first_depth(depth: int) -> None:
    """Models nested ``depth`` deep: the first keys, the deepest models beyond 100 left out."""
    model: Any = {"class_name": "Dense", "config": {"name": "leaf"}}
    for level in range(depth):
        model = {"class_name": "Functional", "config": {"name": f"m{level}", "layers": [model]}}
    assert keras_archive.key_names(model) == first_key_names(model)


@pytest.mark.parametrize("odd", ["a string", ["a", "list"], None, 3])
def test_a_layer_config_that_is_no_object_is_read_past(generated, tmp_path: Path, odd: Any) -> None:
    """A ``.keras`` whose config.json gives a layer a config that is no JSON object: opened
    (the weights file records the names), not an internal error."""
    source = generated("config_names") / "policy_sequential.keras"
    target = tmp_path / "odd.keras"
    with zipfile.ZipFile(source) as z, zipfile.ZipFile(target, "w") as out:
        for info in z.infolist():
            data = z.read(info.filename)
            if info.filename == "config.json":
                config = json.loads(data)
                config["config"]["layers"][1]["config"] = odd
                data = json.dumps(config).encode()
            out.writestr(info, data)
    with ckptconv.open(target) as store:
        names = [e.name for e in store.entries()]
    assert sorted(names) == sorted(x.name for x in load_expected(source.parent, "policy_sequential"))
