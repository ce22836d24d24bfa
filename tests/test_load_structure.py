"""Identity by structure: load_into equals Keras' own loaders, whatever the session named things.

Fixtures come from ``generators/gen_structure.py`` (a zoo written by Keras 3, tf-keras and
TensorFlow). Every model here is built in this process after other models were built, so its
automatic layer names (``dense_8``) are not the file's (``dense``); Keras' own
``load_weights`` (or TensorFlow's checkpoint restore) into a second fresh instance is the
oracle, compared bit-exactly variable by variable.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import ckptconv
from ckptconv import LoadError, load_into
from ckptconv.keras.structure import object_graph_keys, saving_tree_keys
from ckptconv.keras.targets import LiveModel
from tests.generators.gen_structure import TK_ARCHIVES, ZOO

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")
tf = pytest.importorskip("tensorflow")

MODULES = {"keras": keras, "tf_keras": tf_keras}


@pytest.fixture(scope="module")
def zoo(generated):
    return generated("structure")


_WARMED: set[tuple[str, str]] = set()


def build_after_others(line: str, case: str):
    """The case's model, built after other models (once per process and case: names only
    grow), so that every automatic name differs from the file's."""
    k = MODULES[line]
    if (line, case) not in _WARMED:
        k.Sequential([k.Input((3,)), k.layers.Dense(2), k.layers.Dense(2)])
        ZOO[case][0](k)
        _WARMED.add((line, case))
    return ZOO[case][0](k)


def values(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.weights]


def keras_own_load(line: str, model, path) -> None:
    """What Keras (or TensorFlow, for a Keras 3 model's object checkpoint) does itself."""
    name = str(path)
    if name.endswith("ckpt"):
        if line == "keras":
            tf.train.Checkpoint(model=model).restore(name).expect_partial()
        else:
            model.load_weights(name).expect_partial()
    else:
        model.load_weights(name)


def _cases(line: str, formats: dict[str, tuple[str, ...] | None]) -> list[tuple[str, str]]:
    found = []
    for case, (_, lines) in ZOO.items():
        if line not in lines:
            continue
        for suffix, only_for in formats.items():
            if only_for is None or case in only_for:
                found.append((case, suffix))
    return found


K3_FORMATS = {
    "k3.weights.h5": None,
    "k3sharded.weights.json": None,
    "k3.keras": tuple(c for c in ZOO if c != "tied"),
    "k3.h5": None,
    "k3ckpt": None,
    # tf-keras' legacy .h5 into a Keras 3 model: Keras 3's own load_weights reads it
    "tk.h5": ("functional", "nested", "custom", "wrappers"),
}
TK_FORMATS = {"tk.h5": None, "tkckpt": None, "tk.weights.h5": None, "tk.keras": TK_ARCHIVES}
PARAMS = [("keras", c, s) for c, s in _cases("keras", K3_FORMATS)] + [
    ("tf_keras", c, s) for c, s in _cases("tf_keras", TK_FORMATS)
]


@pytest.mark.parametrize(("line", "case", "suffix"), PARAMS, ids=[f"{l}-{c}-{s}" for l, c, s in PARAMS])
def test_load_into_equals_keras_own_load(zoo, line, case, suffix):
    path = zoo / f"{case}.{suffix}"
    ours = build_after_others(line, case)
    theirs = ZOO[case][0](MODULES[line])
    initial = values(ours)
    keras_own_load(line, theirs, path)
    report = load_into(ours, path)
    assert report.ok and report.applied, report.format_table()
    assert report.mode == "structure", report.format_table()
    assert {w.matched_by for w in report.loaded} == {"structure"}
    assert "matched by structure" in report.format_table()
    got, want = values(ours), values(theirs)
    assert len(got) == len(want) == len(report.loaded)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.tobytes() == w.tobytes(), (i, ours.weights[i].name)
    assert any(g.tobytes() != i.tobytes() for g, i in zip(got, initial)), "nothing was loaded"


@pytest.mark.parametrize("line", ["keras", "tf_keras"])
@pytest.mark.parametrize("case", list(ZOO))
def test_saving_tree_keys_are_what_keras_writes(zoo, line, case):
    if line not in ZOO[case][1]:
        pytest.skip(f"{case} is built with Keras 3 only")
    written = json.loads((zoo / "keys.json").read_text())[line][case]
    live = LiveModel(build_after_others(line, case))
    keys = saving_tree_keys(live)
    assert keys is not None
    assert sorted(keys) == written["weights.h5"]
    graph = object_graph_keys(live)
    assert graph is not None
    prefix = "model/" if line == "keras" else ""
    assert sorted(f"{prefix}{k}/.ATTRIBUTES/VARIABLE_VALUE" for k in graph) == written["ckpt"]


def test_names_differ_are_listed(zoo):
    model = build_after_others("keras", "functional")
    report = load_into(model, zoo / "functional.k3.weights.h5")
    differ = dict(report.names_differ)
    kernel = model.layers[-1].kernel.path.split("/", 1)[-1] if "/" in model.layers[-1].kernel.path else None
    assert len(differ) == len(report.loaded)  # every layer was auto-named anew
    assert differ[model.layers[-1].name + "/kernel"] == "dense_1/kernel", kernel
    assert f"{len(differ)} names differ" in report.format_table()


def test_inspect_gives_the_structural_key(zoo, capsys):
    from ckptconv.cli import main

    assert main(["inspect", str(zoo / "subclassed.k3.weights.h5"), "--json"]) == 0
    tensors = json.loads(capsys.readouterr().out)["tensors"]
    assert {t["tree_path"] for t in tensors} == {"d1/vars/0", "d1/vars/1", "d2/vars/0", "d2/vars/1", "vars/0"}


def test_a_structure_that_disagrees_is_refused_at_the_first_difference(zoo):
    k = keras
    x = inp = k.Input((6, 6, 2))
    x = k.layers.Conv2D(3, 3)(x)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(5)(x)  # the file's third layer with weights is Dense(4)
    model = k.Model(inp, k.layers.Dense(2)(x))
    before = values(model)
    with pytest.raises(LoadError) as info:
        load_into(model, zoo / "functional.k3.h5")
    first = info.value.problems[0]
    assert first.kind == "structure"
    assert "layer 2 ('dense' in the file" in first
    assert "file has kernel [48, 4], model has Dense kernel" in first and "[48, 5]" in first
    assert str(first) in str(info.value)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(values(model), before))


def test_only_sets_aside_the_sources_of_other_variables(zoo):
    model = build_after_others("keras", "functional")
    head = model.layers[-1]
    before = values(model)
    report = load_into(model, zoo / "functional.k3.weights.h5", only=head.name)
    assert report.ok and not report.unused, report.format_table()
    assert len(report.loaded) == 2 and len(report.outside_only) == len(before) - 2
    assert "outside only=" in report.format_table()
    changed = [a.tobytes() != b.tobytes() for a, b in zip(values(model), before)]
    assert changed == [False] * (len(before) - 2) + [True, True]


def test_only_by_name_sets_aside_too():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="a"), keras.layers.Dense(2, name="b")])
    arrays = {v.path.split("/", 1)[1]: np.ones(v.shape, "float32") for v in model.weights}
    report = load_into(model, arrays, only="b")
    assert report.ok and report.mode == "name" and not report.unused, report.format_table()
    assert sorted(w.name for w in report.outside_only) == ["a/bias", "a/kernel"]


def test_freeze_on_a_partly_loaded_layer_says_so(zoo):
    model = build_after_others("keras", "functional")
    head = model.layers[-1]
    report = load_into(model, zoo / "functional.k3.weights.h5", only=f"{head.name}/kernel", freeze=True)
    assert report.frozen == [head.name] and report.partly_frozen == [head.name]
    assert "partly loaded" in report.format_table()
    assert not head.trainable


def test_cross_line_aliases_match_by_name(zoo):
    """tf-keras names (td/kernel, depthwise_kernel) meet a Keras 3 model by name only (as a
    plain {name: array} source): the alias table pairs them, as Keras 3's own loader does."""
    with ckptconv.open(zoo / "wrappers.tk.h5") as store:
        arrays = {name: entry.read() for name, entry in store.items()}
    assert "td/kernel" in arrays and any(n.endswith("/depthwise_kernel") for n in arrays)
    keras.backend.clear_session()
    ours = ZOO["wrappers"][0](keras)
    keras.backend.clear_session()
    theirs = ZOO["wrappers"][0](keras)
    theirs.load_weights(str(zoo / "wrappers.tk.h5"))
    report = load_into(ours, arrays)
    assert report.ok and report.mode == "name", report.format_table()
    differ = dict(report.names_differ)
    assert differ["td/fc/kernel"] == "td/kernel"
    assert differ["depthwise_conv2d/kernel"] == "depthwise_conv2d/depthwise_kernel"
    for g, w in zip(values(ours), values(theirs)):
        assert g.tobytes() == w.tobytes()


def test_by_order_casts_with_the_mappers_cast():
    """One cast: round to nearest even once from the source dtype (the old astype went through
    float32 and rounded twice), and an integer that overflows float16 is an error (it used to
    become inf silently)."""
    import ml_dtypes

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, dtype="bfloat16", name="d")])
    # 1 + 2**-8 + 2**-30: float32 rounds it to 1 + 2**-8 (a tie), bfloat16 then rounds the
    # tie to even (1.0); rounded once, it is above the tie: 1 + 2**-7
    value = np.array([[1 + 2**-8 + 2**-30]], dtype=np.float64)
    report = load_into(model, {"x/kernel": value, "x/bias": np.zeros(1)}, by_order=True, cast=True)
    assert report.ok, report.format_table()
    got = np.asarray(keras.ops.convert_to_numpy(model.layers[0].kernel))
    assert got.dtype == ml_dtypes.bfloat16 and float(got[0, 0]) == 1 + 2**-7
    half = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, dtype="float16", name="h")])
    with pytest.raises(LoadError, match="overflow to inf"):
        load_into(half, {"x/kernel": np.array([[70000]], np.int32), "x/bias": np.zeros(1, np.int32)},
                  by_order=True, cast=True)


def test_reader_names_uniquified_scopes_and_subclassed_prefixes(zoo):
    """A Keras 2.0-era scope (``conv2d_1_1/kernel:0`` in group ``conv2d_1``) and a tf-keras
    subclassed model's scope (``net/dense/kernel:0``) are the layer's own; names then match the
    model's, and the load equals tf-keras' own."""
    from tests.generators.gen_structure import build_uniquified

    with ckptconv.open(zoo / "uniquified.tk.h5") as store:
        assert list(store) == ["conv2d_1/kernel", "conv2d_1/bias", "dense_1/kernel", "dense_1/bias"]
        arrays = {n: e.read() for n, e in store.items()}
    ours, theirs = build_uniquified(tf_keras), build_uniquified(tf_keras)
    theirs.load_weights(str(zoo / "uniquified.tk.h5"))
    report = load_into(ours, arrays)  # by name: no structure in plain arrays
    assert report.ok and report.mode == "name" and not report.names_differ, report.format_table()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(values(ours), values(theirs)))

    tf_keras.backend.clear_session()
    model = ZOO["subclassed"][0](tf_keras)
    # the model's names were d1/net/d1/kernel-like (the layer, then the model's scope)
    assert sorted(ckptconv.model_targets(model)) == ["dense/bias", "dense/kernel", "dense_1/bias", "dense_1/kernel", "w1"]
    with ckptconv.open(zoo / "subclassed.tk.h5") as store:  # written after other models
        assert sorted(store) == ["dense_5/bias", "dense_5/kernel", "dense_6/bias", "dense_6/kernel", "w1"]


def test_keras3_object_checkpoint_names_from_the_object_path(zoo):
    """Keras 3 records a subclassed model's sublayer variables under colliding full names
    (``net/kernel``); they are named from their object path (``d1/kernel``)."""
    with ckptconv.open(zoo / "subclassed.k3ckpt") as store:
        assert sorted(store) == ["d1/bias", "d1/kernel", "d2/bias", "d2/kernel", "net/w1"]


def test_archive_names_a_builtin_subclass_from_config_json(zoo):
    """``class MyDense(Dense)`` in a ``.keras``: config.json shows Dense's keys, so its variables
    are named; a custom layer's own add_weight("alpha") is not recorded anywhere and keeps its
    index (as in a bare ``.weights.h5``, where matching goes by structure anyway)."""
    with ckptconv.open(zoo / "custom.k3.keras") as store:
        assert list(store) == ["my_dense/kernel", "my_dense/bias", "scale/0"]
    with ckptconv.open(zoo / "custom.k3.weights.h5") as store:
        assert list(store) == ["my_dense/0", "my_dense/1", "scale/0"]
