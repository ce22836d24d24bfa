"""Orbax checkpoints written by ``keras.callbacks.OrbaxCheckpoint`` (Keras 3.15, JAX backend):
every array bit-exact against what the writer held and Keras' own load gives, ``load_into``
by Keras' state tree (Keras' own ``load_weights`` the oracle),
``inspect``/``convert`` without JAX, TensorFlow or Orbax, hostile metadata, the missing extra.

Fixtures from ``generators/gen_keras315.py``: ``orbax_zoo`` (a functional model trained two
epochs: steps 0 and 1, optimizer and metrics saved), ``orbax_seq_wo`` (a Sequential,
``save_weights_only``), ``orbax_int8`` (an int8-quantized Sequential).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptconv
from ckptconv.errors import UnsafeInputError
from ckptconv.formats import keras_orbax
from tests.generators.gen_keras315 import build_orbax_seq, build_orbax_zoo, quantize
from tests.helpers import assert_bit_exact, blocking_env, load_expected, run_cli, run_cli_many

# what the user opens -> expected record label
CASES = {
    "orbax_zoo": "orbax_zoo.step1",  # the checkpoint directory: its latest step
    "orbax_zoo/0": "orbax_zoo.step0",  # one step, by path
    "orbax_zoo/1/pytree": "orbax_zoo.step1",  # the step's pytree directory itself
    "orbax_seq_wo": "orbax_seq_wo.step0",
    "orbax_int8": "orbax_int8.step0",
}
HEAVY = ("jax", "jaxlib", "orbax", "tensorflow", "keras", "tf_keras")


@pytest.fixture(scope="module")
def k315(generated) -> Path:
    return generated("keras315")


@pytest.mark.parametrize("where", CASES)
def test_every_array_matches_the_writer(k315: Path, where: str) -> None:
    expected = load_expected(k315, CASES[where])
    with ckptconv.open(k315 / where) as store:
        assert store.format == "keras-orbax"
        got = {e.tree_path: e for e in store.entries(include_all=True)}
        assert sorted(got) == sorted(x.extra["key"] for x in expected)
        for want in expected:
            entry = got[want.extra["key"]]
            assert (entry.name, entry.kind) == (want.name, want.kind), want.extra["key"]
            assert entry.key == want.extra["key"].replace("/", ".")  # the array's key in OCDBT
            assert (entry.shape, entry.dtype) == (want.array.shape, want.array.dtype), want.name
            assert_bit_exact(entry.read(), want.array, want.name)


def test_latest_step_config_order_and_kinds(k315: Path) -> None:
    with ckptconv.open(k315 / "orbax_zoo") as store:
        assert store.metadata == {"checkpointable": "pytree", "step": "1", "model": "zoo"}
        entries = store.entries(include_all=True)
        kinds = [e.kind for e in entries]
        assert kinds == sorted(kinds, key=["weight", "optimizer", "bookkeeping"].index)
        layers = list(dict.fromkeys(e.layer.split("/")[0] for e in store.entries()))
        # the order of model_config's layers, not the pytree's alphabetical one
        config = json.loads(json.loads((k315 / "orbax_zoo" / "1" / "model_config" / "_strings.json").read_text())["config"])
        in_config = [layer["config"]["name"] for layer in config["config"]["layers"]]
        assert layers == [name for name in in_config if name in layers] and layers != sorted(layers)
        bn = [e.name for e in store.entries() if e.layer == "bn"]
        assert bn == ["bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]
        assert store["adam/iteration"].kind == "bookkeeping"
        assert store["seed_generator/seed_generator_state"].kind == "bookkeeping"
        assert store["head/kernel"].dtype_name == "bfloat16"
    with ckptconv.open(k315 / "orbax_seq_wo") as store:
        assert store.metadata == {"checkpointable": "pytree", "step": "0"}  # no model_config
        assert {e.kind for e in store.entries(include_all=True)} == {"weight"}


def test_unfinished_steps_are_ignored(k315: Path, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    shutil.copytree(k315 / "orbax_zoo", root)
    (root / "2.orbax-checkpoint-tmp-1745").mkdir()  # a save in progress
    (root / "3").mkdir()  # a step without its pytree
    with ckptconv.open(root) as store:
        assert store.metadata["step"] == "1"


def test_a_checkpoint_without_a_complete_step_says_so(tmp_path: Path) -> None:
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "_CHECKPOINT_METADATA").write_text("{}")  # the step's pytree is missing
    proc = run_cli("inspect", tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "an Orbax checkpoint without a complete pytree" in proc.stderr


def test_open_reads_metadata_only(k315: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening and listing never opens an array (tensorstore.open is how arrays are read)."""
    import tensorstore

    def refuse(*args, **kwargs):
        raise AssertionError("an array was opened")

    monkeypatch.setattr(tensorstore, "open", refuse)
    with ckptconv.open(k315 / "orbax_zoo") as store:
        listing = [e.describe() for e in store.entries(include_all=True)]
        assert len(listing) == len(load_expected(k315, "orbax_zoo.step1"))
        with pytest.raises(ckptconv.CorruptFileError, match="an array was opened"):
            store["conv/kernel"].read()


@pytest.mark.parametrize("where", ["orbax_zoo", "deep"])
def test_opening_reads_each_btree_node_once(k315: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The B-tree's root is read while _METADATA is parsed, and that read is the one used:
    opening dumps the manifest once and each node once (a B-tree several levels deep too)."""
    import tensorstore.ocdbt

    path = k315 / "orbax_zoo"
    if where == "deep":
        path = tmp_path / "ckpt"
        shutil.copytree(k315 / "orbax_zoo" / "1", path / "1")
        _rewrite_database(path / "1" / "pytree", {"max_decoded_node_bytes": 1024})
    real = tensorstore.ocdbt.dump
    nodes: list[str | None] = []

    def counting(base, node=None, **kwargs):
        nodes.append(node)
        return real(base, node, **kwargs)

    monkeypatch.setattr(tensorstore.ocdbt, "dump", counting)
    with ckptconv.open(path) as store:
        assert len(store.entries(include_all=True)) == len(load_expected(k315, "orbax_zoo.step1"))
    assert nodes.count(None) == 1  # the manifest
    assert len(nodes) - 1 == len(set(nodes) - {None}) >= (3 if where == "deep" else 1), nodes


def test_opening_holds_nothing_after_the_store_is_gone(k315: Path) -> None:
    """What opening builds besides the store (the model config, its layers) is freed with it,
    not held in a reference cycle until the cyclic collector runs: ckptconv's open pauses the
    collector, and a short command's first full collection may come only at exit, which then
    walks and frees the whole config (tens of thousands of objects for thousands of layers)."""

    def open_and_list() -> int:
        with ckptconv.open(k315 / "orbax_zoo") as store:
            return len([e.describe() for e in store.entries(include_all=True)])

    gc.collect()
    gc.disable()
    try:
        open_and_list()  # imports and caches filled
        before = len(gc.get_objects())
        listed = open_and_list()
        grown = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert grown < listed, f"{grown} objects still tracked after opening {listed} arrays"


# -- load_into ------------------------------------------------------------------------------------

keras = pytest.importorskip("keras")


def _load_and_compare(model, source: Path, label: str, k315: Path) -> None:
    from ckptconv.keras.targets import LiveModel

    prefix = model.name + "/"
    expected = {
        (x.name[len(prefix):] if x.name.startswith(prefix) else x.name): x.array
        for x in load_expected(k315, label)
        if x.kind == "weight"
    }
    live = LiveModel(model)
    assert sorted(v.name for v in live.vars) == sorted(expected)
    assert any(np.asarray(v.variable.numpy()).tobytes() != expected[v.name].tobytes() for v in live.vars)
    report = ckptconv.load_into(model, source)
    assert report.ok and report.applied and len(report.loaded) == len(expected), report.format_table()
    for v in LiveModel(model).vars:
        assert_bit_exact(np.asarray(v.variable.numpy()), expected[v.name], v.name)


def test_load_into_a_fresh_model(k315: Path) -> None:
    _load_and_compare(build_orbax_zoo(keras), k315 / "orbax_zoo", "orbax_zoo.step1", k315)
    _load_and_compare(build_orbax_zoo(keras), k315 / "orbax_zoo" / "0", "orbax_zoo.step0", k315)


def test_load_into_a_sequential_drops_the_model_name(k315: Path) -> None:
    _load_and_compare(build_orbax_seq(keras), k315 / "orbax_seq_wo", "orbax_seq_wo.step0", k315)


def test_load_into_a_fresh_int8_model(k315: Path) -> None:
    model = build_orbax_seq(keras)
    quantize(keras, model, "int8")
    _load_and_compare(model, k315 / "orbax_int8", "orbax_int8.step0", k315)


# -- load_into by Keras' state tree, Keras' own loader the oracle --------------------------------


def _keras_own_load(model, source: Path) -> None:
    """What Keras 3.15.1 does: ``load_weights`` of a checkpoint directory (its latest step);
    a step directory, which its ``load_weights`` does not recognise, the way that loads the
    step it picks (Orbax's ``load_checkpointables``, then ``set_state_tree``)."""
    if source.name.isdigit():
        import orbax.checkpoint as ocp

        model.set_state_tree(ocp.v1.load_checkpointables(str(source), {"pytree": None})["pytree"])
    else:
        model.load_weights(str(source))


def _build_int8(k):
    model = build_orbax_seq(k)
    quantize(k, model, "int8")
    return model


BUILDERS = {"orbax_zoo": build_orbax_zoo, "orbax_zoo/0": build_orbax_zoo, "orbax_seq_wo": build_orbax_seq, "orbax_int8": _build_int8}


def _leaf_paths(node, parts: tuple[str, ...]) -> list[str]:
    if not isinstance(node, dict):
        return ["/".join(parts)]
    return [path for key, value in node.items() for path in _leaf_paths(value, (*parts, key))]


def test_state_tree_keys_are_keras_own(k315: Path) -> None:
    """The keys computed from the live model are the pytree paths of Keras'
    ``get_state_tree()`` (its weights; a dropout's seed generator state is no weight)."""
    from ckptconv.keras.structure import state_tree_keys
    from ckptconv.keras.targets import LiveModel

    for build in (build_orbax_zoo, _build_int8):
        model = build(keras)
        tree = model.get_state_tree(value_format="numpy_array")
        paths = [
            path
            for top in ("trainable_variables", "non_trainable_variables")
            for path in _leaf_paths(tree[top], (top,))
            if not path.endswith("/seed_generator_state")
        ]
        live = LiveModel(model)
        keys = state_tree_keys(live)
        assert sorted(keys) == sorted(paths)
        by_path = {v.path: v for v in model.weights}
        for key, target in keys.items():
            assert target.variable is by_path[key.split("/", 1)[1]], key


@pytest.mark.parametrize("where", BUILDERS)
def test_load_into_by_state_tree_equals_keras_own_load(k315: Path, where: str) -> None:
    source = k315 / where
    oracle = BUILDERS[where](keras)
    _keras_own_load(oracle, source)
    model = BUILDERS[where](keras)
    before = [np.asarray(v.numpy()).tobytes() for v in model.weights]
    report = ckptconv.load_into(model, source)
    assert report.ok and report.mode == "structure" and report.structure == "state-tree", report.format_table()
    assert {w.matched_by for w in report.loaded} == {"structure"} and len(report.loaded) == len(model.weights)
    assert "its state tree); all names agree" in report.format_table()  # the model's own name is no difference
    assert [np.asarray(v.numpy()).tobytes() for v in model.weights] != before
    assert [v.path for v in model.weights] == [v.path for v in oracle.weights]
    for got, want in zip(model.weights, oracle.weights):
        assert_bit_exact(np.asarray(got.numpy()), np.asarray(want.numpy()), got.path)


def test_a_layer_frozen_since_the_save_loads_by_name(k315: Path) -> None:
    """Its kernel moved to non_trainable_variables: the state tree is not the model's, and
    Keras' own load skips that layer without a word; load_into matches by name and loads it."""
    expected = {x.name: x.array for x in load_expected(k315, "orbax_seq_wo.step0") if x.kind == "weight"}
    skipped = build_orbax_seq(keras)
    skipped.get_layer("a").trainable = False
    fresh_kernel = np.asarray(skipped.get_layer("a").kernel.numpy()).copy()
    _keras_own_load(skipped, k315 / "orbax_seq_wo")
    assert np.array_equal(skipped.get_layer("a").kernel.numpy(), fresh_kernel)  # Keras loaded nothing there
    model = build_orbax_seq(keras)
    model.get_layer("a").trainable = False
    report = ckptconv.load_into(model, k315 / "orbax_seq_wo")
    assert report.ok and report.mode == "name", report.format_table()
    for v in model.weights:
        assert_bit_exact(np.asarray(v.numpy()), expected[v.path], v.path)


def _renamed_seq():
    layers = keras.layers
    return keras.Sequential(  # orbax_seq_wo's model under another name: variable paths other/...
        [keras.Input((3,)), layers.Dense(4, name="a"), layers.BatchNormalization(name="bn"), layers.Dense(2, name="b")],
        name="other",
    )


def test_a_renamed_model_loads_by_name_without_the_saved_models_name(k315: Path) -> None:
    """The state tree records the saved model's name (trainable_variables/seq/a/kernel): under
    another name the tree is not the model's, so the load goes by name, the saved model's
    name left out (seq/a/kernel fills a/kernel), and says so."""
    expected = {x.name: x.array for x in load_expected(k315, "orbax_seq_wo.step0") if x.kind == "weight"}
    saved = next(iter(expected)).split("/", 1)[0]
    model = _renamed_seq()
    report = ckptconv.load_into(model, k315 / "orbax_seq_wo")
    assert report.ok and report.mode == "name" and len(report.loaded) == len(model.weights), report.format_table()
    for v in model.weights:
        assert_bit_exact(np.asarray(v.numpy()), expected[f"{saved}/{v.path.split('/', 1)[1]}"], v.path)


def test_a_structure_that_disagrees_heads_the_problems(k315: Path) -> None:
    layers = keras.layers
    model = keras.Sequential(
        [keras.Input((3,)), layers.Dense(5, name="a"), layers.BatchNormalization(name="bn"), layers.Dense(2, name="b")],
        name="other",
    )
    with pytest.raises(ckptconv.LoadError) as info:
        ckptconv.load_into(model, k315 / "orbax_seq_wo")
    assert "the source's structure is not the model's (state-tree): trainable_variables/other/a/kernel: the model has Dense kernel" in str(info.value)


# -- without JAX, TensorFlow, Keras, Orbax --------------------------------------------------------


@pytest.fixture(scope="module")
def light_runs(k315: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = blocking_env(tmp_path_factory.mktemp("no_jax_site"), HEAVY)
    out = tmp_path_factory.mktemp("no_jax_out")
    commands = [
        ["inspect", k315 / "orbax_zoo", "--json", "--all"],
        ["convert", k315 / "orbax_zoo", out / "zoo.safetensors", "--all", "--quiet"],
        ["convert", k315 / "orbax_int8", out / "int8.safetensors", "--quiet"],
        ["inspect", k315 / "q_int4.weights.h5", "--json"],
        ["convert", k315 / "q_int8", out / "q_int8.safetensors", "--quiet"],
    ]
    results = run_cli_many(env, commands, never_imported=HEAVY)
    return {"results": results, "out": out}


def test_inspect_without_jax_or_tensorflow(k315: Path, light_runs: dict) -> None:
    result = light_runs["results"][0]
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["format"] == "keras-orbax"
    got = {t["tree_path"]: (t["name"], t["kind"], t["shape"], t["dtype"]) for t in listing["tensors"]}
    from ckptconv.dtypes import dtype_name

    assert got == {
        x.extra["key"]: (x.name, x.kind, list(x.array.shape), dtype_name(x.array.dtype))
        for x in load_expected(k315, "orbax_zoo.step1")
    }
    q_int4 = json.loads(light_runs["results"][3].stdout)
    assert {t["name"] for t in q_int4["tensors"]} == {x.name for x in load_expected(k315, "q_int4.weights.h5")}


@pytest.mark.parametrize("index,output,label,include_all", [
    (1, "zoo.safetensors", "orbax_zoo.step1", True),
    (2, "int8.safetensors", "orbax_int8.step0", False),
    (4, "q_int8.safetensors", "q_int8", False),
])
def test_convert_without_jax_or_tensorflow(k315: Path, light_runs: dict, index: int, output: str, label: str, include_all: bool) -> None:
    result = light_runs["results"][index]
    assert result.returncode == 0, result.stderr
    expected = [x for x in load_expected(k315, label) if include_all or x.kind == "weight"]
    with ckptconv.open(light_runs["out"] / output) as written:
        assert sorted(written) == sorted(x.name for x in expected)
        for want in expected:
            assert_bit_exact(written[want.name].read(), want.array, want.name)


def test_missing_tensorstore_is_one_clear_error(k315: Path, tmp_path: Path) -> None:
    env = blocking_env(tmp_path, ["tensorstore"])
    orbax, other = run_cli_many(
        env, [["inspect", k315 / "orbax_seq_wo"], ["inspect", k315 / "q_int8.keras"]], never_imported=["tensorstore"]
    )
    assert orbax.returncode == 1
    assert orbax.stderr.count("\n") == 1 and "pip install 'ckptconv[orbax]'" in orbax.stderr
    assert str(k315 / "orbax_seq_wo") in orbax.stderr
    assert other.returncode == 0, other.stderr  # every other format works without it


# -- hostile and damaged checkpoints --------------------------------------------------------------


@pytest.fixture()
def step(k315: Path, tmp_path: Path) -> Path:
    """A writable copy of one step (orbax_seq_wo/0)."""
    copy = tmp_path / "ckpt" / "0"
    shutil.copytree(k315 / "orbax_seq_wo" / "0", copy)
    return copy


def _edit_metadata(step: Path, edit) -> None:
    path = step / "pytree" / "_METADATA"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _add_leaf(*keys: str):
    def edit(meta):
        meta["tree_metadata"][repr(keys)] = {
            "key_metadata": [{"key": k, "key_type": 2} for k in keys],
            "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False},
        }

    return edit


def _set_root_location(location: str):
    def mutate(step: Path) -> None:
        import tensorstore as ts
        import tensorstore.ocdbt

        pytree = step / "pytree"
        base = ts.KvStore.open({"driver": "file", "path": str(pytree) + "/"}).result()
        manifest = tensorstore.ocdbt.dump(base).result()
        manifest["versions"][-1]["root"]["location"] = location
        (pytree / "manifest.ocdbt").write_bytes(tensorstore.ocdbt.undump_manifest(manifest))

    return mutate


def _link_data_out(step: Path) -> None:
    data = next((step / "pytree" / "d").iterdir())
    outside = step.parent.parent / "elsewhere.bin"
    outside.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(outside)


def _link_config_out(step: Path) -> None:
    outside = step.parent.parent / "config.json"
    outside.write_text(json.dumps({"config": "{}"}))
    (step / "model_config").mkdir()
    (step / "model_config" / "_strings.json").symlink_to(outside)


HOSTILE = {
    "key_climbs_out": (lambda s: _edit_metadata(s, _add_leaf("trainable_variables", "..", "kernel")), "UnsafeInputError", "pytree key '..'"),
    "key_with_slash": (lambda s: _edit_metadata(s, _add_leaf("trainable_variables", "a/../../b")), "UnsafeInputError", "could lead outside"),
    "kvstore_spec_absolute": (
        lambda s: _edit_metadata(s, lambda m: m.update(kvstore={"driver": "file", "path": "/etc/"})),
        "UnsafeInputError", "path='/etc/'",
    ),
    "value_spec_parent": (
        lambda s: _edit_metadata(s, lambda m: next(iter(m["tree_metadata"].values()))["value_metadata"].update(
            kvstore={"driver": "file", "path": "../../secrets/"})),
        "UnsafeInputError", "outside the checkpoint",
    ),
    "manifest_node_outside": (_set_root_location("btreenode::../../../d/x:0:100"), "UnsafeInputError", "OCDBT manifest refers to"),
    "data_file_link_out": (_link_data_out, "UnsafeInputError", "outside the checkpoint"),
    "config_link_out": (_link_config_out, "UnsafeInputError", "model_config/_strings.json is a link outside"),
    "metadata_not_json": (lambda s: (s / "pytree" / "_METADATA").write_text("{not json"), "CorruptFileError", "not valid JSON"),
    "array_missing": (lambda s: _edit_metadata(s, _add_leaf("trainable_variables", "ghost", "kernel")), "CorruptFileError", "ghost"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_or_damaged_metadata_is_refused_in_one_line(step: Path, case: str) -> None:
    mutate, error, text = HOSTILE[case]
    mutate(step)
    with pytest.raises(getattr(ckptconv, error), match=None) as info:
        ckptconv.open(step.parent)
    assert text in str(info.value), str(info.value)
    proc = run_cli("inspect", step.parent)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(step.parent) in proc.stderr and text in proc.stderr


def test_other_directories_are_not_taken_for_orbax(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()  # a numbered directory without a pytree
    (tmp_path / "notes.txt").write_text("hello")
    proc = run_cli("inspect", tmp_path)
    assert proc.returncode == 1 and "not a checkpoint ckptconv can read" in proc.stderr


def test_detection_of_every_orbax_form(k315: Path) -> None:
    from ckptconv.formats import detect

    for where in ("orbax_zoo", "orbax_zoo/0", "orbax_zoo/0/pytree"):
        assert detect(k315 / where).FORMAT == "keras-orbax"
    assert detect(k315 / "q_int8").FORMAT == "keras-archive"
    assert os.path.isdir(k315 / "q_int8")


def test_a_checkpoint_with_only_an_unfinished_step_says_so(k315: Path, tmp_path: Path) -> None:
    """Orbax writes a step as <step>.orbax-checkpoint-tmp-* and renames it when complete: a
    directory holding only that (a save interrupted, or running) is an Orbax checkpoint with
    no complete step, not "not a checkpoint"."""
    root = tmp_path / "ckpts"
    shutil.copytree(k315 / "orbax_seq_wo" / "0", root / "0.orbax-checkpoint-tmp-1764460000")
    with pytest.raises(ckptconv.CorruptFileError, match=r"no complete step: only 0\.orbax-checkpoint-tmp-1764460000"):
        ckptconv.open(root)
    proc = run_cli("inspect", root)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "still being written" in proc.stderr


# -- the OCDBT B-tree and reading ahead ----------------------------------------------------------


def _rewrite_database(pytree: Path, config: dict, *, edit=None) -> None:
    """Write the pytree's OCDBT database again with tensorstore under ``config`` (B-tree
    node size, inline value limit), every value as stored or as ``edit(key, value)`` makes it."""
    import tensorstore as ts

    old = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": f"{pytree}/"}}).result()
    fresh = pytree.parent / "rewritten"
    new = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": f"{fresh}/"}, "config": config}).result()
    with ts.Transaction() as txn:
        staged = new.with_transaction(txn)
        for key in old.list().result():
            value = old[key]
            staged[key] = edit(key, value) if edit else value
    del old, new
    (pytree / "manifest.ocdbt").unlink()
    for stale in [pytree / "d", *pytree.glob("ocdbt.process_*")]:
        shutil.rmtree(stale)
    for part in fresh.iterdir():
        part.rename(pytree / part.name)
    fresh.rmdir()


def _orbax_restore(step: Path) -> dict[str, np.ndarray]:
    """Orbax's own restore of a step's pytree, by pytree path."""
    import orbax.checkpoint as ocp

    tree = ocp.v1.load_checkpointables(str(step), {"pytree": None})["pytree"]

    def walk(node, parts):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, (*parts, key))
        else:
            yield "/".join(parts), np.asarray(node)

    return dict(walk(tree, ()))


@pytest.mark.parametrize("config", [
    {"max_decoded_node_bytes": 1024},  # a B-tree several levels deep, metadata inline
    {"max_decoded_node_bytes": 512, "max_inline_value_bytes": 0},  # every value out of line
], ids=["deep", "out_of_line"])
def test_a_deep_btree_and_metadata_out_of_line(k315: Path, tmp_path: Path, config: dict) -> None:
    """Opening takes every array's zarr metadata from the B-tree's nodes, a level at a time,
    whatever the tree's height, and reads the values a node does not hold by key."""
    import tensorstore as ts
    import tensorstore.ocdbt

    step = tmp_path / "ckpt" / "1"
    shutil.copytree(k315 / "orbax_zoo" / "1", step)
    _rewrite_database(step / "pytree", config)
    base = ts.KvStore.open({"driver": "file", "path": f"{step / 'pytree'}/"}).result()
    assert tensorstore.ocdbt.dump(base).result()["versions"][-1]["root_height"] >= 2
    expected = {x.extra["key"]: x for x in load_expected(k315, "orbax_zoo.step1")}
    restored = _orbax_restore(step)
    with ckptconv.open(step.parent) as store:
        got = {e.tree_path: e for e in store.entries(include_all=True)}
        assert sorted(got) == sorted(expected)
        for key, entry in got.items():
            assert (entry.shape, entry.dtype) == (expected[key].array.shape, expected[key].array.dtype), key
            array = entry.read()
            assert_bit_exact(array, expected[key].array, key)
            assert_bit_exact(array, restored[key].astype(array.dtype), key)


@pytest.fixture()
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The arrays tensorstore is asked to open, in order."""
    from ckptconv.formats import _orbax_arrays

    calls: list[str] = []
    real = _orbax_arrays.Arrays._open

    def counting(self, param):
        calls.append(param)
        return real(self, param)

    monkeypatch.setattr(_orbax_arrays.Arrays, "_open", counting)
    return calls


@pytest.mark.parametrize("ahead", [4, 64])
def test_reading_in_order_opens_each_array_once_a_bounded_batch_ahead(
    k315: Path, opened: list[str], monkeypatch: pytest.MonkeyPatch, ahead: int
) -> None:
    from ckptconv.formats import _orbax_arrays

    monkeypatch.setattr(_orbax_arrays, "_AHEAD_ARRAYS", ahead)
    expected = {x.extra["key"]: x.array for x in load_expected(k315, "orbax_zoo.step1")}
    with ckptconv.open(k315 / "orbax_zoo") as store:
        entries = store.entries(include_all=True)
        assert len(entries) > 2 * ahead or ahead == 64
        most_ahead = 0
        for done, entry in enumerate(entries):
            assert_bit_exact(entry.read(), expected[entry.tree_path], entry.name)
            most_ahead = max(most_ahead, len(opened) - (done + 1))
        assert sorted(opened) == sorted(e.key for e in entries)  # each array opened once
        assert 1 < most_ahead <= ahead


def test_read_ahead_stays_within_its_byte_bound(k315: Path, opened: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrays are read ahead only while their bytes fit the bound; one larger than it is
    read when asked for, alone."""
    from ckptconv.formats import _orbax_arrays

    monkeypatch.setattr(_orbax_arrays, "_AHEAD_BYTES", 1)
    with ckptconv.open(k315 / "orbax_zoo") as store:
        for done, entry in enumerate(store.entries(include_all=True)):
            entry.read()
            assert len(opened) == done + 1


def test_reading_out_of_order_reads_nothing_ahead(k315: Path, opened: list[str]) -> None:
    """Reads that do not follow the store's order (reversed, shuffled) each open their own
    array only, and get the right one."""
    expected = {x.extra["key"]: x.array for x in load_expected(k315, "orbax_zoo.step1")}
    with ckptconv.open(k315 / "orbax_zoo") as store:
        entries = store.entries(include_all=True)
        for entry in reversed(entries):
            assert_bit_exact(entry.read(), expected[entry.tree_path], entry.name)
        assert opened == [e.key for e in reversed(entries)]
        shuffled = [entries[i] for i in np.random.default_rng(0).permutation(len(entries))]
        for entry in shuffled + entries[:3]:  # then back in order from the start
            assert_bit_exact(entry.read(), expected[entry.tree_path], entry.name)


def test_damaged_arrays_read_ahead_fail_alone(k315: Path, tmp_path: Path) -> None:
    """An array whose stored chunk is damaged, and one whose zarr metadata tensorstore
    refuses, each fail when read, naming the array; the arrays read ahead with them are read."""
    step = tmp_path / "ckpt" / "1"
    shutil.copytree(k315 / "orbax_zoo" / "1", step)
    with ckptconv.open(step.parent) as store:
        entries = store.entries(include_all=True)
    bad_chunk, bad_codec = entries[len(entries) // 2], entries[len(entries) // 2 + 2]

    def damage(key: bytes, value: bytes) -> bytes:
        if key.startswith(f"{bad_chunk.key}/c".encode()):
            return b"\x00" * len(value)
        if key == f"{bad_codec.key}/zarr.json".encode():
            return json.dumps(dict(json.loads(value), codecs=[{"name": "no_such_codec"}])).encode()
        return value

    _rewrite_database(step / "pytree", {}, edit=damage)
    expected = {x.extra["key"]: x.array for x in load_expected(k315, "orbax_zoo.step1")}
    with ckptconv.open(step.parent) as store:
        for entry in store.entries(include_all=True):
            if entry.key in (bad_chunk.key, bad_codec.key):
                with pytest.raises(ckptconv.CorruptFileError, match="the array cannot be read") as info:
                    entry.read()
                assert info.value.tensor == entry.tree_path
            else:
                assert_bit_exact(entry.read(), expected[entry.tree_path], entry.name)


@pytest.mark.parametrize("part,refused", [
    ("", True), (".", True), ("..", True), ("a/b", True), ("a\\b", True), ("a\0b", True), ("/", True),
    ("dense_0", False), ("a.b", False), ("..a", False), ("x..y", False), ("0", False),
])
def test_pytree_key_parts_that_are_path_parts_are_refused(tmp_path: Path, part: str, refused: bool) -> None:
    """A key part that is empty, ``.`` or ``..``, or holds a path separator or NUL, is refused
    wherever it is in a leaf's key path; any other part (dots inside included) is read."""
    meta = {"tree_metadata": {
        "first": {"key_metadata": [{"key": "trainable_variables"}, {"key": "d"}, {"key": "kernel"}],
                  "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False}},
        "odd": {"key_metadata": [{"key": "trainable_variables"}, {"key": part}, {"key": 3}],
                "value_metadata": {"value_type": "jax.Array"}},
        "skipped": {"key_metadata": [{"key": "metrics_variables"}], "value_metadata": {"skip_deserialize": True}},
    }}
    if refused:
        with pytest.raises(UnsafeInputError, match="could lead outside the checkpoint"):
            keras_orbax._leaves(meta, path=tmp_path)
    else:
        leaves = keras_orbax._leaves(meta, path=tmp_path)
        assert leaves == [("trainable_variables", "d", "kernel"), ("trainable_variables", part, "3")]


def test_layer_rank_follows_the_layers_then_what_compile_config_names(tmp_path: Path) -> None:
    """Layers in the config's order (a layer named like the dtype policy at its own place),
    then the optimizer's and named metrics' state (``adam/iteration``) in the order
    ``compile_config`` lists them; anything else after, in the order first met."""
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}}
    config = json.loads(json.dumps({
        "class_name": "Sequential",
        "config": {"name": "seq", "dtype": policy, "layers": [
            {"class_name": "Dense", "config": {"name": "a", "dtype": policy}},
            {"class_name": "Dense", "config": {"name": "float32", "dtype": policy}},
        ]},
        "compile_config": {"optimizer": {"class_name": "Adam", "config": {"name": "adam"}},
                           "metrics": [{"class_name": "MeanMetricWrapper", "config": {"name": "acc"}}]},
    }))
    rank = keras_orbax._layer_rank(config, path=tmp_path / "model_config")
    layers = ["loss", "acc", "adam", "seq/float32", "seq/a", "seq"]
    assert sorted(layers, key=rank) == ["seq", "seq/a", "seq/float32", "adam", "acc", "loss"]
    assert rank("float32") == rank("seq/float32")[1:]


def test_a_model_config_nested_too_deeply_is_refused_naming_it(tmp_path: Path) -> None:
    deep: Any = {}
    for _ in range(300):
        deep = {"x": deep}
    config = {"class_name": "Functional", "config": {"name": "m", "layers": []},
              "compile_config": {"optimizer": {"class_name": "Adam", "config": {"name": "adam", "x": deep}}}}
    with pytest.raises(UnsafeInputError, match="the model config is nested too deeply") as info:
        keras_orbax._layer_rank(config, path=tmp_path / "model_config" / "_strings.json")
    assert "_strings.json" in str(info.value)
