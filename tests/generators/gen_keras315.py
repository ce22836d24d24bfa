"""What Keras 3.14-3.15 writes, written by Keras 3.15 itself, plus what Keras' own loader puts
in a fresh model. The Orbax checkpoints are written on the JAX backend (in a subprocess).

Usage: gen_keras315.py OUTDIR. Every file has LABEL.expected.json/bin records (see
``_common.dump_expected``); unless said otherwise they hold the variables of a fresh model
after Keras' own load of the file (``load_model``, ``load_weights``), under their canonical
names (``variable.path`` without the model's name).

Files:
  q_<mode>.keras, q_<mode>.weights.h5, q_<mode>/ (``zipped=False``): the quantizable model
      (Dense with and without bias, EinsumDense with one and two output axes, Embedding,
      ReversibleEmbedding tied and untied, a bfloat16 Dense) quantized with ``mode`` in int8,
      int4 (sub-channel, Keras' default block_size=128), int4_b4 (block_size=4: several
      groups), int4_pc (per channel), float8.
  q_mha_int8.weights.h5, q_mha_int4.weights.h5: the same with a MultiHeadAttention.
  gptq.weights.h5, awq.weights.h5: GPTQ / AWQ after calibration. Keras 3.15.1 writes no zero
      points for them and cannot reload these files (``keras_load_error`` in the record);
      the records hold the writer's saved variables.
  q_int8.dequantized: the float weights of the int8 layers, as Keras' int8 code computes them.
  nested.weights.h5, nested.keras, nested/: a layer holding layers in nested lists and a dict
      (saved keys ``container``, ``container_1``, ...); nested_npz.keras, nested_npz/: the
      same saved with weights_format="npz" (no records: ckptconv refuses them).
  orbax_zoo/ (steps 0 and 1), orbax_seq_wo/ (save_weights_only), orbax_int8/, orbax_docs/
      (a small Sequential with Adam, steps 0 and 1: the docs' example): written by
      ``keras.callbacks.OrbaxCheckpoint`` during ``fit``. Records ``orbax_*.step<N>``: every
      array of the step's state tree under its store name with its kind and pytree ``key``,
      as the writer held it when the step was saved; the weights (kind "weight") are those a
      fresh model holds after Keras' own ``load_weights`` (checked here).

The ``build_*`` functions are imported by the tests to build fresh targets.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from pathlib import Path

SEED = 315
CALIBRATED_LAYERS = "^(d1|e1)$"  # what GPTQ/AWQ quantize in build_calibrated's model
QUANT_MODES = ("int8", "int4", "int4_b4", "int4_pc", "float8")


def quantize_args(keras, mode: str):
    """``model.quantize`` arguments of a mode label."""
    if mode == "int4_b4":
        return "int4", keras.quantizers.Int4QuantizationConfig(block_size=4)
    if mode == "int4_pc":
        return "int4", keras.quantizers.Int4QuantizationConfig(block_size=None)
    return mode, None


@contextlib.contextmanager
def no_full_collections():
    """Keras runs ``gc.collect()`` each time a quantized layer drops its float kernel: about
    a second per layer in a process that imported TensorFlow. The collection only frees
    memory sooner; skipping it changes nothing Keras computes or writes."""
    collect = gc.collect
    gc.collect = lambda *args, **kwargs: 0
    try:
        yield
    finally:
        gc.collect = collect


def quantize(keras, model, mode: str, **options) -> None:
    """``model.quantize`` for a mode label (see QUANT_MODES)."""
    name, config = quantize_args(keras, mode)
    with no_full_collections():
        model.quantize(name, config=config or options.pop("config", None), **options)


def build_quantizable(keras, mode: str | None = None, *, attention: bool = False):
    """A functional model with every layer type Keras 3.15 quantizes, quantized with ``mode``
    (a label of QUANT_MODES) when given; weights seeded, so two builds are twins.

    ``attention`` adds a MultiHeadAttention (its four EinsumDense are quantized too): Keras
    3.15.1's ``load_model`` cannot rebuild a quantized MultiHeadAttention from a ``.keras``
    file, so that variant is saved with ``save_weights`` only."""
    layers = keras.layers
    keras.backend.clear_session()  # automatic names (seed generators, optimizers) start afresh
    keras.utils.set_random_seed(SEED)
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    features = keras.Input((4,), name="features")
    e = layers.Embedding(20, 8, name="emb")(tokens)
    r = layers.ReversibleEmbedding(20, 8, tie_weights=False, name="remb")(tokens)
    t = layers.ReversibleEmbedding(20, 8, name="remb_tied")(tokens)
    x = layers.Add(name="add")([e, r, t])
    if attention:
        x = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(x, x)
    x = layers.EinsumDense("abc,cd->abd", output_shape=(5, 6), bias_axes="d", name="ein")(x)
    x = layers.EinsumDense("abc,cde->abde", output_shape=(5, 2, 3), name="ein_nb")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.LayerNormalization(name="ln")(x)
    x = layers.Concatenate(name="cat")([x, features])
    x = layers.Dense(7, name="fc1")(x)
    x = layers.Dense(5, use_bias=False, name="fc2")(x)
    out = layers.Dense(3, dtype="bfloat16", name="head")(x)
    model = keras.Model([tokens, features], out, name="qz")
    if mode is not None:
        quantize(keras, model, mode)
    return model


def build_calibrated(keras):
    """A small model for GPTQ/AWQ: an embedding, then a block of Dense and EinsumDense."""
    layers = keras.layers
    keras.backend.clear_session()  # automatic names (seed generators, optimizers) start afresh
    keras.utils.set_random_seed(SEED)

    class Block(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d1 = layers.Dense(16, name="d1")
            self.e1 = layers.EinsumDense("btd,de->bte", output_shape=(None, 8), bias_axes="e", name="e1")

        def call(self, x):
            return self.e1(self.d1(x))

    tokens = keras.Input((8,), dtype="int32")
    emb = layers.Embedding(40, 16, name="emb")
    block = Block(name="block")
    y = block(emb(tokens))
    out = layers.Dense(4, name="head")(layers.GlobalAveragePooling1D(name="pool")(y))
    return keras.Model(tokens, out, name="calibrated"), emb, block


def nested_layer_class(keras):
    """A layer keeping sub-layers in nested lists and a dict (Keras >= 3.14 saves them under
    ``container``, ``container_1``, ...), registered for ``load_model``."""
    layers = keras.layers

    @keras.saving.register_keras_serializable(package="ckptconv_tests")
    class Stack(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.groups = [
                [layers.Dense(3, name="g0a"), layers.Dense(3, name="g0b")],
                [layers.Dense(3, name="g1a"), [layers.Dense(3, name="deep")]],
                {"x": layers.LayerNormalization(name="gx")},
            ]
            self.plain = [layers.Dense(3, name="p0"), layers.Dense(3, use_bias=False, name="p1")]

        def _all(self):
            def walk(node):
                if isinstance(node, dict):
                    node = list(node.values())
                if isinstance(node, list):
                    for item in node:
                        yield from walk(item)
                else:
                    yield node

            return list(walk(self.groups)) + self.plain

        def build(self, shape):
            for layer in self._all():
                layer.build(shape)

        def call(self, x):
            for layer in self._all():
                x = layer(x)
            return x

    return Stack


def build_nested(keras):
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    stack = nested_layer_class(keras)(name="stack")
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(stack(inputs)), name="nested")


def build_orbax_zoo(keras):
    """The model trained with the Orbax callback: most layer kinds, a nested Sequential, bf16."""
    layers = keras.layers
    keras.backend.clear_session()  # automatic names (seed generators, optimizers) start afresh
    keras.utils.set_random_seed(SEED)
    image = keras.Input((6, 6, 2), name="image")
    tokens = keras.Input((4,), dtype="int32", name="tokens")
    x = layers.Conv2D(3, 3, name="conv")(image)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    t = layers.Embedding(10, 4, name="emb")(tokens)
    t = layers.MultiHeadAttention(2, 2, name="mha")(t, t)
    t = layers.LSTM(3, name="lstm")(t)
    y = layers.Concatenate(name="cat")([x, t])
    block = keras.Sequential([layers.Dense(4, name="inner_a"), layers.LayerNormalization(name="inner_ln")], name="block")
    y = block(y)
    out = layers.Dense(2, dtype="bfloat16", name="head")(y)
    model = keras.Model([image, tokens], out, name="zoo")
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def build_orbax_seq(keras):
    layers = keras.layers
    keras.backend.clear_session()  # automatic names (seed generators, optimizers) start afresh
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [keras.Input((3,)), layers.Dense(4, name="a"), layers.BatchNormalization(name="bn"), layers.Dense(2, name="b")],
        name="seq",
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def zoo_data(rng, n: int = 8):
    import numpy as np

    x = [rng.normal(size=(n, 6, 6, 2)).astype("float32"), rng.integers(0, 10, size=(n, 4)).astype("int32")]
    return x, rng.normal(size=(n, 2)).astype("float32")


def main(outdir: str) -> None:
    """The HDF5 files with the backend the fixture runner chose (TensorFlow: eager quantization
    is quicker there); the Orbax checkpoints in a JAX subprocess, the backend they are for."""
    import subprocess

    import _common
    import keras

    out = Path(outdir)
    quantized(keras, out, _common)
    calibrated(keras, out, _common)
    nested(keras, out, _common)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, __file__, "--orbax", outdir], env=env, check=True)


def main_orbax(outdir: str) -> None:
    import _common
    import keras

    assert keras.backend.backend() == "jax", keras.backend.backend()
    orbax(keras, Path(outdir), _common)


def _same(records_a, records_b, what: str) -> None:
    """The loader's result equals the writer's: a fixture that does not hold is no oracle."""
    a = {r["name"]: r["array"] for r in records_a}
    b = {r["name"]: r["array"] for r in records_b}
    assert sorted(a) == sorted(b), (what, sorted(set(a) ^ set(b)))
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), (what, name)


def quantized(keras, out: Path, common) -> None:
    import numpy as np

    rng = np.random.default_rng(SEED)
    for mode in QUANT_MODES:
        model = build_quantizable(keras)
        model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
        quantize(keras, model, mode)
        writer = common.keras3_records(model)
        model.save(out / f"q_{mode}.keras")
        model.save(out / f"q_{mode}", zipped=False)
        model.save_weights(out / f"q_{mode}.weights.h5")
        for label, path in ((f"q_{mode}.keras", out / f"q_{mode}.keras"), (f"q_{mode}", out / f"q_{mode}")):
            loaded = common.keras3_records(keras.saving.load_model(path))
            _same(loaded, writer, label)
            common.dump_expected(out, label, loaded, mode=mode)
        fresh = build_quantizable(keras, mode)
        fresh.load_weights(out / f"q_{mode}.weights.h5")
        loaded = common.keras3_records(fresh)
        _same(loaded, writer, f"q_{mode}.weights.h5")
        common.dump_expected(out, f"q_{mode}.weights.h5", loaded, mode=mode)
        if mode == "int8":
            common.dump_expected(out, "q_int8.dequantized", dequantized_int8(keras, model))
    for mode in ("int8", "int4"):
        model = build_quantizable(keras, attention=True)
        model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
        quantize(keras, model, mode)
        model.save_weights(out / f"q_mha_{mode}.weights.h5")
        fresh = build_quantizable(keras, mode, attention=True)
        fresh.load_weights(out / f"q_mha_{mode}.weights.h5")
        loaded = common.keras3_records(fresh)
        _same(loaded, common.keras3_records(model), f"q_mha_{mode}.weights.h5")
        common.dump_expected(out, f"q_mha_{mode}.weights.h5", loaded, mode=mode)


def dequantized_int8(keras, model) -> list[dict]:
    """The float weights of every int8 layer, as Keras computes them from the stored integers
    and scales (the formulas and scale layouts of the layers' own int8 code, in float32)."""
    import numpy as np

    ops = keras.ops

    def f32(x):
        return ops.cast(x, "float32")

    records = []
    for layer in model.layers:
        if getattr(layer, "quantization_mode", None) != "int8":
            continue
        if isinstance(layer, keras.layers.Embedding):  # and ReversibleEmbedding
            values = {"embeddings": ops.divide(f32(layer._embeddings), ops.expand_dims(f32(layer.embeddings_scale), -1))}
            if getattr(layer, "reverse_embeddings", None) is not None and not layer.tie_weights:
                values["reverse_embeddings"] = ops.divide(f32(layer.reverse_embeddings), f32(layer.reverse_embeddings_scale))
        elif isinstance(layer, keras.layers.EinsumDense):
            values = {"kernel": ops.divide(f32(layer._kernel), f32(layer._adjust_scale_for_dequant(layer.kernel_scale)))}
        else:
            values = {"kernel": ops.divide(f32(layer._kernel), f32(layer.kernel_scale))}
        for name, value in values.items():
            records.append({"name": f"{layer.name}/{name}", "array": np.asarray(ops.convert_to_numpy(value))})
    return records


def calibrated(keras, out: Path, common) -> None:
    import numpy as np

    data = [np.random.default_rng(SEED + i).integers(0, 40, size=(1, 8)).astype("int32") for i in range(4)]
    for mode, config_class in (("gptq", keras.quantizers.GPTQConfig), ("awq", keras.quantizers.AWQConfig)):
        model, emb, block = build_calibrated(keras)
        config = config_class(
            dataset=data, tokenizer=lambda x: x, num_samples=4, sequence_length=8, group_size=8,
            quantization_layer_structure={"pre_block_layers": [emb], "sequential_blocks": [block]},
        )
        with no_full_collections():  # the block's layers: the head would stay uncalibrated
            model.quantize(mode, config=config, filters=CALIBRATED_LAYERS)
        path = out / f"{mode}.weights.h5"
        model.save_weights(path)
        # what the writer saved: each layer's save_own_variables, matched back to its variables
        records = []
        saved_ids = set()
        for layer in model._flatten_layers():
            store: dict = {}
            layer.save_own_variables(store)
            for value in store.values():
                for v in layer.weights:
                    if v.value is value or v is value:
                        saved_ids.add(id(v))
        for r, v in zip(common.keras3_records(model), model.weights):
            if id(v) in saved_ids:
                records.append(r)
        twin, twin_emb, twin_block = build_calibrated(keras)
        with no_full_collections():
            twin.quantize(mode, filters=CALIBRATED_LAYERS, config=config_class(
                dataset=data, tokenizer=lambda x: x, num_samples=4, sequence_length=8, group_size=8,
                quantization_layer_structure={"pre_block_layers": [twin_emb], "sequential_blocks": [twin_block]},
            ))
        try:
            twin.load_weights(path)
            error = None
        except ValueError as e:
            error = " ".join(str(e).split())[:300]
        unsaved = [r["name"] for r, v in zip(common.keras3_records(model), model.weights) if id(v) not in saved_ids]
        common.dump_expected(out, f"{mode}.weights.h5", records, mode=mode, keras_load_error=error, unsaved=unsaved)


def nested(keras, out: Path, common) -> None:
    import numpy as np

    rng = np.random.default_rng(SEED)
    model = build_nested(keras)
    model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
    writer = common.keras3_records(model)
    model.save_weights(out / "nested.weights.h5")
    model.save(out / "nested.keras")
    model.save(out / "nested", zipped=False)
    for label in ("nested.keras", "nested"):
        loaded = common.keras3_records(keras.saving.load_model(out / label))
        _same(loaded, writer, label)
        common.dump_expected(out, label, loaded)
    # weights_format="npz", which Keras 3.15.1 writes but cannot load back
    from keras.src.saving import saving_lib

    saving_lib.save_model(model, str(out / "nested_npz.keras"), weights_format="npz")
    saving_lib.save_model(model, str(out / "nested_npz"), weights_format="npz", zipped=False)
    fresh = build_nested(keras)
    fresh.load_weights(out / "nested.weights.h5")
    loaded = common.keras3_records(fresh)
    _same(loaded, writer, "nested.weights.h5")
    common.dump_expected(out, "nested.weights.h5", loaded)


def _tree_records(model, *, weights_only: bool = False) -> list[dict]:
    """The model's state tree as records: store name, kind and pytree key of every array."""
    import numpy as np

    kinds = {
        "trainable_variables": "weight",
        "non_trainable_variables": "weight",
        "optimizer_variables": "optimizer",
        "metrics_variables": "bookkeeping",
    }
    tree = model.get_state_tree(value_format="numpy_array")
    records = []

    def walk(node, parts):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, parts + (key,))
            return
        array = np.asarray(node)
        kind = kinds[parts[0]]
        if kind == "optimizer" and array.shape == () and array.dtype.kind in "iu":
            kind = "bookkeeping"
        if parts[-1] == "seed_generator_state":
            kind = "bookkeeping"
        records.append({"name": "/".join(parts[1:]), "key": "/".join(parts), "kind": kind, "array": array})

    for top, node in tree.items():
        if weights_only and kinds[top] != "weight":
            continue
        walk(node, (top,))
    return records


def orbax(keras, out: Path, common) -> None:
    import numpy as np

    rng = np.random.default_rng(SEED)

    class Snapshot(keras.callbacks.Callback):
        """The state tree as it was when the Orbax callback (run just before) saved a step."""

        def __init__(self, label: str, weights_only: bool = False):
            super().__init__()
            self.label, self.weights_only = label, weights_only

        def on_epoch_end(self, epoch, logs=None):
            common.dump_expected(out, f"{self.label}.step{epoch}", _tree_records(self.model, weights_only=self.weights_only), step=epoch)

    def fit(model, label, x, y, epochs, **options):
        directory = out / label
        checkpoint = keras.callbacks.OrbaxCheckpoint(str(directory.resolve()), save_on_background=False, **options)
        model.fit(x, y, epochs=epochs, batch_size=4, verbose=0,
                  callbacks=[checkpoint, Snapshot(label, options.get("save_weights_only", False))])
        return directory

    def check_keras_load(build, directory, label, step):
        """Keras' own load of the step into a fresh model gives the weights recorded.

        ``load_weights`` takes a checkpoint directory (its latest step); Keras 3.15.1 does not
        recognise a step directory, so an earlier step is loaded as ``load_weights`` loads the
        step it picks: Orbax's ``load_checkpointables``, then ``set_state_tree``."""
        fresh = build(keras)
        if directory.name.isdigit():
            import orbax.checkpoint as ocp

            fresh.set_state_tree(ocp.v1.load_checkpointables(str(directory), dict(pytree=None))["pytree"])
        else:
            fresh.load_weights(str(directory))
        loaded = {r["key"]: r["array"] for r in _tree_records(fresh, weights_only=True) if r["kind"] == "weight"}
        recorded = [r for r in _read_records(out, f"{label}.step{step}") if r["kind"] == "weight"]
        _same([{"name": k, "array": v} for k, v in loaded.items()],
              [{"name": r["key"], "array": r["array"]} for r in recorded], label)

    zoo = build_orbax_zoo(keras)
    x, y = zoo_data(rng)
    directory = fit(zoo, "orbax_zoo", x, y, epochs=2, max_to_keep=2)
    check_keras_load(build_orbax_zoo, directory, "orbax_zoo", 1)
    check_keras_load(build_orbax_zoo, directory / "0", "orbax_zoo", 0)

    seq = build_orbax_seq(keras)
    xs, ys = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    directory = fit(seq, "orbax_seq_wo", xs, ys, epochs=1, save_weights_only=True)
    check_keras_load(build_orbax_seq, directory, "orbax_seq_wo", 0)

    # the example of docs/formats-keras.md: a small Sequential, Adam, two epochs kept
    small = build_orbax_seq(keras)
    small.compile(optimizer="adam", loss="mse")
    fit(small, "orbax_docs", xs, ys, epochs=2, max_to_keep=2)

    def build_int8(k):
        model = build_orbax_seq(k)
        quantize(k, model, "int8")
        model.compile(optimizer="sgd", loss="mse")
        return model

    directory = fit(build_int8(keras), "orbax_int8", xs, ys, epochs=1)
    check_keras_load(build_int8, directory, "orbax_int8", 0)


def _read_records(directory: Path, label: str) -> list[dict]:
    import json

    import numpy as np
    import ml_dtypes

    meta = json.loads((directory / f"{label}.expected.json").read_text())
    blob = (directory / f"{label}.expected.bin").read_bytes()
    records = []
    for item in meta["tensors"]:
        name = item["dtype"]
        dtype = np.dtype(getattr(ml_dtypes, name) if name.startswith(("bfloat16", "float8")) else name)
        array = np.frombuffer(blob[item["offset"]: item["offset"] + item["nbytes"]], dtype=dtype).reshape(item["shape"])
        records.append(dict(item, array=array))
    return records


if __name__ == "__main__":
    if sys.argv[1] == "--orbax":
        main_orbax(sys.argv[2])
    else:
        main(sys.argv[1])
