"""Write TensorFlow checkpoints of every kind with TensorFlow itself, plus what TF reads back.

Usage: ``python gen_tf.py OUTDIR``. Each case writes a checkpoint under ``OUTDIR/<label>/`` and
records, with TensorFlow's own reader as the oracle (``tf.train.load_checkpoint(prefix)
.get_tensor(key)``), every tensor's value under the name ckptconv must give it:

* ``<label>.expected.json/bin`` (via ``dump_expected``): one record per numeric tensor with
  ``name`` (the variable's full name as TensorFlow parses the object graph, the key for TF1
  checkpoints and where full names collide), ``key`` (the checkpoint key) and ``kind`` (from the
  live objects: model weights, optimizer variables, step counters and metrics);
* ``<label>.strings.json``: string tensors (their bytes as hex), which ``dump_expected`` cannot hold;
* ``<label>.case.json``: the path a user would pass, the checkpoint kind and the prefix.

Cases: ``tf1`` (graph-mode Saver, Adam, a partitioned variable), ``tf1_keras`` (tf-keras
trained in graph mode and saved by a Saver), ``dtypes`` (tf.train.Checkpoint
of tf.Variables of every dtype), ``sharded`` (tf.train.Checkpoint with MaxShardSizePolicy),
``tfkeras`` (tf-keras save_weights('ckpt') after a training step, legacy optimizer slots),
``keras3`` (tf.train.Checkpoint(model=m, optimizer=o) of a Keras 3 model), ``keras3_model``
(tf.train.Checkpoint(model=m) of the same model), ``sm_module`` (SavedModel of a
tf.Module) and ``sm_tfkeras`` (tf-keras model.save(dir, save_format='tf') with metrics).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from _common import dump_expected

import numpy as np
import tensorflow as tf

OUT = Path(sys.argv[1])
STEP_COUNTERS = {"global_step", "save_counter", "iter", "iteration", "iterations"}


def object_graph_names(prefix: str) -> dict[str, str]:
    """checkpoint key -> full_name, from the object graph as TensorFlow's protos parse it."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    names = {}
    for node in graph.nodes:
        for attribute in node.attributes:
            names[attribute.checkpoint_key] = attribute.full_name
    return names


def record(label: str, prefix: str, *, user_path: str, checkpoint_kind: str, kinds: dict[str, str],
           object_based: bool) -> None:
    """Read every key back with TensorFlow and write the expected records for ``label``.

    ``kinds`` maps a variable's name (TF1: the key; object-based: the full name) to its kind, as
    the live objects say; a name it lacks is a model weight.
    """
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    # variant tensors (a tf.data iterator's state) have no numpy value to compare
    variants = {k: shapes[k] for k, d in reader.get_variable_to_dtype_map().items() if d == tf.variant}
    full_names = object_graph_names(prefix) if object_based else {}
    counts: dict[str, int] = {}
    for key in shapes:
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH":
            full = full_names.get(key) or key  # non-variable state has no full name
            counts[full] = counts.get(full, 0) + 1
    records, strings = [], {}
    for key in sorted(shapes):
        if key == "_CHECKPOINTABLE_OBJECT_GRAPH" or key in variants:
            continue
        full = full_names.get(key) or key
        name = full if counts[full] == 1 else key
        kind = kinds.get(full, "weight")
        value = reader.get_tensor(key)
        value = np.asarray(value)
        if value.dtype == object:
            strings[key] = {"name": name, "kind": kind, "shape": list(value.shape),
                            "values": [bytes(v).hex() for v in value.reshape(-1)]}
            continue
        # tf_shape: dump_expected stores a scalar as shape [1]
        records.append({"name": name, "key": key, "kind": kind, "full_name": full,
                        "tf_shape": list(value.shape), "array": value})
    dump_expected(OUT, label, records)
    (OUT / f"{label}.strings.json").write_text(json.dumps(strings, indent=1))
    case = {"path": user_path, "prefix": prefix, "checkpoint_kind": checkpoint_kind,
            "keys": sorted(shapes), "variants": variants}
    (OUT / f"{label}.case.json").write_text(json.dumps(case, indent=1))


def kinds_of(weights=(), optimizer=(), bookkeeping=()) -> dict[str, str]:
    """name -> kind from live variables; optimizer step counters are bookkeeping."""
    kinds = {}
    for kind, variables in (("weight", weights), ("optimizer", optimizer), ("bookkeeping", bookkeeping)):
        for v in variables:
            # Keras 3 variables: the tf.Variable's name is the Keras path
            name = getattr(v, "path", None) or v.name
            name = name[:-2] if name.endswith(":0") else name
            leaf = name.rsplit("/", 1)[-1]
            kinds[name] = "bookkeeping" if kind == "optimizer" and leaf in STEP_COUNTERS else kind
    return kinds


def case_tf1() -> None:
    """TF1 graph mode: Saver with Adam slots, beta powers, global_step, a partitioned variable."""
    directory = OUT / "tf1"
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(1)
        x = tf.constant(np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32))
        with tf.compat.v1.variable_scope("dense1"):
            w1 = tf.compat.v1.get_variable("kernel", shape=(6, 5))
            b1 = tf.compat.v1.get_variable("bias", shape=(5,), initializer=tf.compat.v1.ones_initializer())
        with tf.compat.v1.variable_scope("part"):
            # 300 rows in 3 parts: slice starts of 100 and 200 take multi-byte slice-key numbers
            wp = tf.compat.v1.get_variable(
                "w", shape=(300, 3), partitioner=tf.compat.v1.fixed_size_partitioner(3))
            # split along columns: each slice is a strided block of the whole
            wc = tf.compat.v1.get_variable(
                "cols", shape=(4, 9), partitioner=tf.compat.v1.fixed_size_partitioner(3, axis=1))
        h = tf.nn.relu(tf.matmul(x, w1) + b1)
        loss = (tf.reduce_sum(h) + tf.reduce_sum(tf.matmul(tf.ones((2, 300)), wp))
                + tf.reduce_sum(tf.matmul(tf.ones((2, 4)), wc)))
        step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train)
            saver.save(sess, str(directory / "model.ckpt"), global_step=step)
            sess.run(train)
            prefix = saver.save(sess, str(directory / "model.ckpt"), global_step=step)
            trainable = {v.op.name for v in tf.compat.v1.trainable_variables()}
            kinds = {}
            for v in tf.compat.v1.global_variables():
                # a partitioned variable's parts (and their slots) are saved under the whole name
                name = re.sub(r"/part_\d+(?=/|$)", "", v.op.name)
                if name == "global_step":
                    kinds[name] = "bookkeeping"
                elif v.op.name not in trainable:
                    kinds[name] = "optimizer"
    record("tf1", prefix, user_path=str(directory), checkpoint_kind="tf1", kinds=kinds, object_based=False)


def dtype_values() -> dict[str, tf.Variable]:
    """One tf.Variable per dtype TensorFlow checkpoints hold, values with sign and fractions."""
    rng = np.random.default_rng(7)
    real = rng.normal(size=(3, 4)) * 100
    values = {}
    for dtype in ("float16", "float32", "float64", "bfloat16"):
        values[dtype] = tf.Variable(tf.cast(real, dtype), name=f"v_{dtype}")
    for dtype in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        info = np.iinfo(dtype)
        ints = rng.integers(info.min, info.max, size=(2, 5), dtype=dtype, endpoint=True)
        values[dtype] = tf.Variable(ints, name=f"v_{dtype}")
    values["bool"] = tf.Variable(rng.integers(0, 2, size=(7,)).astype(bool), name="v_bool")
    values["complex64"] = tf.Variable((real + 1j * real[::-1]).astype(np.complex64), name="v_complex64")
    values["complex128"] = tf.Variable(real[:, :2] - 2j * real[:, 2:], name="v_complex128")
    values["string"] = tf.Variable([[b"hello", b""], [b"\x00\xff bytes", "ünï".encode()]], name="v_string")
    f8 = [[1.5, -2.25, 448.0], [0.0, -0.0, 0.015625]]
    values["float8_e4m3fn"] = tf.Variable(tf.cast(f8, tf.dtypes.experimental.float8_e4m3fn), name="v_f8e4m3fn")
    values["float8_e5m2"] = tf.Variable(tf.cast(f8, tf.dtypes.experimental.float8_e5m2), name="v_f8e5m2")
    values["scalar"] = tf.Variable(3.5, name="v_scalar")
    values["empty"] = tf.Variable(np.zeros((0, 3), np.float32), name="v_empty")
    return values


def case_dtypes() -> None:
    """tf.train.Checkpoint of a tf.Module holding a variable of every dtype, and a tf.data
    iterator (whose state is a variant tensor)."""
    module = tf.Module()
    module.vars = dtype_values()
    iterator = iter(tf.data.Dataset.range(10))
    next(iterator)
    ckpt = tf.train.Checkpoint(m=module, it=iterator)
    prefix = ckpt.save(str(OUT / "dtypes" / "ckpt"))
    kinds = kinds_of(bookkeeping=[ckpt.save_counter])
    record("dtypes", prefix, user_path=prefix, checkpoint_kind="object-based", kinds=kinds, object_based=True)


def case_fnuz() -> None:
    """The float8 types without infinities or negative zero that TensorFlow has and
    safetensors has no code for (``float8_e4m3fnuz``, ``float8_e5m2fnuz``,
    ``float8_e4m3b11fnuz``), each up to its largest finite value. TensorFlow 2.21 on CPU can
    neither cast to them nor assign them to a variable, so they are saved as constants by
    the SaveV2 op (what ``tf.compat.v1.train.Saver`` runs): a name-based bundle."""
    import ml_dtypes

    names, tensors = [], []
    for name, top in (("float8_e4m3fnuz", 240.0), ("float8_e5m2fnuz", 57344.0), ("float8_e4m3b11fnuz", 30.0)):
        value = np.array([[1.5, -2.25, top], [0.0, 0.5, 0.015625]], np.float32).astype(getattr(ml_dtypes, name))
        names.append(f"v_{name}")
        tensors.append(tf.constant(value))
    prefix = str(OUT / "fnuz" / "ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    record("fnuz", prefix, user_path=prefix, checkpoint_kind="tf1", kinds={}, object_based=False)


def case_sharded() -> None:
    """A TF2 checkpoint split over several data files by MaxShardSizePolicy (which also cuts
    variables into slices that straddle shards)."""
    rng = np.random.default_rng(3)
    module = tf.Module()
    module.layers = [tf.Variable(rng.normal(size=(64, 32)).astype(np.float32), name=f"w{i}") for i in range(5)]
    ckpt = tf.train.Checkpoint(model=module)
    options = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=10_000))
    prefix = ckpt.write(str(OUT / "sharded" / "ckpt"), options=options)
    record("sharded", prefix, user_path=prefix + ".index", checkpoint_kind="object-based", kinds={},
           object_based=True)


def tfkeras_model(*, legacy_optimizer: bool):
    """A trained tf-keras functional model with a nested Sequential; the legacy optimizer
    (OptimizerV2) keeps its state in slot variables (``.OPTIMIZER_SLOT`` keys)."""
    import tf_keras

    inner = tf_keras.Sequential([tf_keras.layers.Dense(4, name="inner_dense")], name="sub")
    inputs = tf_keras.Input((6,))
    h = tf_keras.layers.Dense(8, activation="relu", name="d1")(inputs)
    h = tf_keras.layers.BatchNormalization(name="bn")(h)
    h = inner(h)
    outputs = tf_keras.layers.Dense(2, name="head")(h)
    model = tf_keras.Model(inputs, outputs, name="outer")
    adam = tf_keras.optimizers.legacy.Adam if legacy_optimizer else tf_keras.optimizers.Adam
    model.compile(optimizer=adam(0.01), loss="mse", metrics=["mae"])
    rng = np.random.default_rng(5)
    model.fit(rng.normal(size=(16, 6)), rng.normal(size=(16, 2)), epochs=1, batch_size=8, verbose=0)
    return model


def case_tfkeras() -> None:
    """tf-keras save_weights in TensorFlow format after training (optimizer slots included)."""
    model = tfkeras_model(legacy_optimizer=True)
    model.save_weights(str(OUT / "tfkeras" / "ckpt"))
    # OptimizerV2 keeps its hyperparameters (beta_1, learning_rate, ...) apart from variables()
    hyper = [v for v in model.optimizer._hyper.values() if isinstance(v, tf.Variable)]
    kinds = kinds_of(weights=model.weights, optimizer=[*model.optimizer.variables(), *hyper])
    record("tfkeras", str(OUT / "tfkeras" / "ckpt"), user_path=str(OUT / "tfkeras"),
           checkpoint_kind="object-based", kinds=kinds, object_based=True)


def case_keras3() -> None:
    """A Keras 3 model and optimizer saved with tf.train.Checkpoint."""
    import keras

    inner = keras.Sequential([keras.layers.Dense(4, name="inner_a")], name="block")
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="d1")(inputs)
    h = keras.layers.LayerNormalization(name="ln")(h)
    h = keras.layers.Dropout(0.1, seed=1, name="drop")(h)
    outputs = inner(h)
    model = keras.Model(inputs, outputs, name="k3")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    rng = np.random.default_rng(9)
    model.fit(rng.normal(size=(16, 6)), rng.normal(size=(16, 4)), epochs=1, batch_size=8, verbose=0)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    prefix = ckpt.save(str(OUT / "keras3" / "ckpt"))
    metric_vars = [v for m in model.metrics for v in m.variables]
    kinds = kinds_of(weights=model.weights, optimizer=model.optimizer.variables,
                     bookkeeping=[ckpt.save_counter, *metric_vars])
    record("keras3", prefix, user_path=str(OUT / "keras3"), checkpoint_kind="object-based", kinds=kinds,
           object_based=True)
    # the model alone: it still tracks its optimizer, under model/optimizer
    prefix = tf.train.Checkpoint(model=model).write(str(OUT / "keras3_model" / "ckpt"))
    kinds = kinds_of(weights=model.weights, optimizer=model.optimizer.variables)
    record("keras3_model", prefix, user_path=prefix, checkpoint_kind="object-based", kinds=kinds,
           object_based=True)


def case_sm_module() -> None:
    """tf.saved_model.save of a tf.Module with a couple of variables and a function."""
    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(11)
            self.w = tf.Variable(rng.normal(size=(3, 2)).astype(np.float32), name="w")
            self.b = tf.Variable(np.zeros(2, np.float32), name="b")

        @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32)])
        def __call__(self, x):
            return x @ self.w + self.b

    directory = OUT / "sm_module"
    tf.saved_model.save(Affine(), str(directory))
    record("sm_module", str(directory / "variables" / "variables"), user_path=str(directory),
           checkpoint_kind="saved-model", kinds={}, object_based=True)


def case_sm_tfkeras() -> None:
    """A trained tf-keras model saved as a SavedModel (metrics' count/total included)."""
    model = tfkeras_model(legacy_optimizer=False)
    directory = OUT / "sm_tfkeras"
    model.save(str(directory), save_format="tf")
    metric_vars = [v for m in model.metrics for v in m.variables]
    optimizer = [*model.optimizer.variables(), model.optimizer._learning_rate]
    kinds = kinds_of(weights=model.weights, optimizer=optimizer, bookkeeping=metric_vars)
    record("sm_tfkeras", str(directory / "variables" / "variables"), user_path=str(directory),
           checkpoint_kind="saved-model", kinds=kinds, object_based=True)


def case_tf1_keras() -> None:
    """tf-keras trained in TF1 graph mode, saved by a Saver: optimizer state under training/.

    Must run last: it switches the process to graph mode.
    """
    import tf_keras
    from tf_keras.src import backend

    tf.compat.v1.disable_eager_execution()
    model = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(3,), name="d"),
                                 tf_keras.layers.BatchNormalization(name="bn")])
    model.compile(optimizer=tf_keras.optimizers.legacy.Adam(0.01), loss="mse")
    rng = np.random.default_rng(13)
    model.fit(rng.normal(size=(8, 3)), rng.normal(size=(8, 4)), verbose=0)
    directory = OUT / "tf1_keras"
    prefix = tf.compat.v1.train.Saver().save(backend.get_session(), str(directory / "model.ckpt"))
    hyper = [v for v in model.optimizer._hyper.values() if isinstance(v, tf.Variable)]
    kinds = kinds_of(weights=model.weights, optimizer=[*model.optimizer.weights, *hyper])
    record("tf1_keras", prefix, user_path=prefix, checkpoint_kind="tf1", kinds=kinds, object_based=False)


def main() -> None:
    case_dtypes()
    case_fnuz()
    case_sharded()
    case_sm_module()
    case_tfkeras()
    case_sm_tfkeras()
    case_keras3()
    case_tf1()
    case_tf1_keras()  # last: graph mode from here on


if __name__ == "__main__":
    main()
