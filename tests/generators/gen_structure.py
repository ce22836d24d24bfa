"""Fixtures for identity by structure: a zoo of models whose names mean nothing in a new session.

Run as ``python gen_structure.py OUTDIR`` (by the ``generated("structure")`` fixture). Every
model of the zoo is built with each Keras line that can build it, given random values, and
saved by every writer of that line:

    <case>.k3.weights.h5, <case>.k3sharded.weights.json (+ shards), <case>.k3.keras,
    <case>.k3ckpt (tf.train.Checkpoint(model=m)), <case>.k3.h5 (legacy HDF5)     (Keras 3)
    <case>.tk.h5 (save_weights), <case>.tkckpt (TF format), <case>.tk.weights.h5,
    <case>.tk.keras (built-in layers only)                                       (tf-keras)

``uniquified.tk.h5``: a Keras 2.0-era layout, written by tf-keras in graph mode where a second
model's layers reopen taken name scopes (weights ``conv2d_1_1/kernel:0`` in group
``conv2d_1``).

``keys.json`` records, for every case, the keys Keras itself wrote into the
``.weights.h5`` (the saving tree) and TensorFlow into the checkpoint, so the tests can check
ckptconv's key computation against them. The ``build_*`` functions are imported by the tests,
which build the same architectures in a process where other models were built first (so
every automatic name differs) and compare ``load_into`` with Keras' own loaders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SEED = 4321


# -- the zoo: build(k) with k = keras or tf_keras; each returns a built model


def build_functional(k):
    """Automatic names only: conv2d, batch_normalization, dense, dense_1 in a fresh session."""
    x = inp = k.Input((6, 6, 2))
    x = k.layers.Conv2D(3, 3)(x)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(4)(x)
    return k.Model(inp, k.layers.Dense(2)(x))


def build_sequential_nested(k):
    """A nested model whose non-trainable weights come first in ``weights`` (a BatchNorm ahead
    of Dense layers): Keras' legacy order (trainable, then non-trainable) differs from it."""
    inner = k.Sequential([k.Input((5,)), k.layers.BatchNormalization(), k.layers.Dense(4), k.layers.Dense(4)])
    return k.Sequential([k.Input((5,)), inner, k.layers.LayerNormalization(), k.layers.Dense(3)])


def build_subclassed(k):
    """``self.d1 = Dense(4)`` and a model-level ``add_weight("w1")``."""

    class Net(k.Model):
        def __init__(self):
            super().__init__(name="net")
            self.d1 = k.layers.Dense(4)
            self.d2 = k.layers.Dense(2)
            self.w1 = self.add_weight(name="w1", shape=(2,), initializer="ones")

        def call(self, x):
            return self.d2(self.d1(x)) * self.w1

    model = Net()
    model(_zeros(k, (1, 3)))
    return model


def build_blocks(k):
    """A subclassed model holding ``Sequential`` blocks and Conv2D attributes."""

    class Blocks(k.Model):
        def __init__(self):
            super().__init__()
            self.block1 = k.Sequential([k.layers.Conv2D(2, 1), k.layers.Conv2D(2, 1)])
            self.block2 = k.Sequential([k.layers.Conv2D(2, 1)])
            self.side = k.layers.Conv2D(1, 1)

        def call(self, x):
            return self.side(self.block2(self.block1(x)))

    model = Blocks()
    model(_zeros(k, (1, 4, 4, 3)))
    return model


def build_custom(k):
    """A custom layer with ``add_weight(name="alpha")`` and a ``Dense`` subclass."""

    class Scale(k.layers.Layer):
        def build(self, input_shape):
            self.alpha = self.add_weight(name="alpha", shape=(input_shape[-1],))

        def call(self, x):
            return x * self.alpha

    class MyDense(k.layers.Dense):
        pass

    inp = k.Input((4,))
    return k.Model(inp, Scale()(MyDense(3)(inp)))


def build_tied(k):
    """A tied embedding: the output layer uses the Embedding's variable plus its own bias."""

    class TiedOutput(k.layers.Layer):
        def __init__(self, embedding, **kwargs):
            super().__init__(**kwargs)
            self.embedding = embedding

        def build(self, input_shape):
            self.bias = self.add_weight(name="bias", shape=(self.embedding.input_dim,))

        def call(self, x):
            return k.ops.matmul(x, k.ops.transpose(self.embedding.embeddings)) + self.bias

    inp = k.Input((3,), dtype="int32")
    emb = k.layers.Embedding(7, 4)
    return k.Model(inp, TiedOutput(emb)(emb(inp)))


def build_wrappers(k):
    """TimeDistributed, Bidirectional, DepthwiseConv2D, MultiHeadAttention, RNNs."""
    seq = k.Input((5, 4))
    x = k.layers.TimeDistributed(k.layers.Dense(3, name="fc"), name="td")(seq)
    x = k.layers.MultiHeadAttention(num_heads=2, key_dim=2)(x, x)
    x = k.layers.Bidirectional(k.layers.LSTM(2, return_sequences=True))(x)
    x = k.layers.GRU(2, return_sequences=True)(x)
    x = k.layers.SimpleRNN(2)(x)
    img = k.Input((5, 5, 2))
    y = k.layers.DepthwiseConv2D(3)(img)
    y = k.layers.SeparableConv2D(2, 1)(y)
    y = k.layers.Flatten()(y)
    return k.Model([seq, img], k.layers.Concatenate()([x, y]))


def _zeros(k, shape):
    import numpy as np

    return np.zeros(shape, dtype="float32")


def _ops(k):
    return k.ops if hasattr(k, "ops") else None


# case -> (builder, lines that can build it)
ZOO = {
    "functional": (build_functional, ("keras", "tf_keras")),
    "nested": (build_sequential_nested, ("keras", "tf_keras")),
    "subclassed": (build_subclassed, ("keras", "tf_keras")),
    "blocks": (build_blocks, ("keras", "tf_keras")),
    "custom": (build_custom, ("keras", "tf_keras")),
    "tied": (build_tied, ("keras",)),  # tf-keras has no keras.ops
    "wrappers": (build_wrappers, ("keras", "tf_keras")),
}
# tf-keras saves whole .keras models of these (the others hold layers without a config)
TK_ARCHIVES = ("functional", "nested", "wrappers")


def randomize(model, rng) -> None:
    import numpy as np

    model.set_weights([np.abs(rng.standard_normal(w.shape)).astype(w.dtype) + 0.5 for w in model.get_weights()])


def _h5_keys(path: Path) -> list[str]:
    import h5py

    keys: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(keys)


def _ckpt_keys(prefix: Path) -> list[str]:
    import tensorflow as tf

    return sorted(k for k, _ in tf.train.list_variables(str(prefix)) if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE"))


def build_uniquified(k):
    inp = k.Input((4, 4, 2))
    return k.Model(inp, k.layers.Dense(2, name="dense_1")(k.layers.Conv2D(3, 1, name="conv2d_1")(inp)))


def write_uniquified(outdir: str) -> None:
    """In TF1 graph mode, the second model's layers get uniquified scopes (``conv2d_1_1``)."""
    import _common  # noqa: F401
    import numpy as np
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    import tf_keras

    build_uniquified(tf_keras)
    model = build_uniquified(tf_keras)
    randomize(model, np.random.default_rng(SEED + 1))
    assert model.weights[0].name == "conv2d_1_1/kernel:0", model.weights[0].name
    model.save_weights(str(Path(outdir) / "uniquified.tk.h5"))


def main(outdir: str) -> None:
    import _common  # noqa: F401  (sets the TF environment variables)
    import keras
    import numpy as np
    import tensorflow as tf
    import tf_keras
    from keras.src.legacy.saving import legacy_h5_format

    out = Path(outdir)
    rng = np.random.default_rng(SEED)
    keys: dict[str, dict[str, dict[str, list[str]]]] = {"keras": {}, "tf_keras": {}}
    for case, (build, lines) in ZOO.items():
        if "keras" in lines:
            m = build(keras)
            randomize(m, rng)
            m.save_weights(out / f"{case}.k3.weights.h5")
            m.save_weights(out / f"{case}.k3sharded.weights.json", max_shard_size=0.000002)  # GB: ~2 KB shards
            if case != "tied":  # its layer holds another layer: no config to save
                m.save(out / f"{case}.k3.keras")
            tf.train.Checkpoint(model=m).write(str(out / f"{case}.k3ckpt"))
            import h5py

            with h5py.File(out / f"{case}.k3.h5", "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, m)
            keys["keras"][case] = {
                "weights.h5": _h5_keys(out / f"{case}.k3.weights.h5"),
                "ckpt": _ckpt_keys(out / f"{case}.k3ckpt"),
            }
        if "tf_keras" in lines:
            t = build(tf_keras)
            randomize(t, rng)
            t.save_weights(str(out / f"{case}.tk.h5"))
            t.save_weights(str(out / f"{case}.tkckpt"), save_format="tf")
            t.save_weights(str(out / f"{case}.tk.weights.h5"))
            if case in TK_ARCHIVES:
                t.save(str(out / f"{case}.tk.keras"))
            keys["tf_keras"][case] = {
                "weights.h5": _h5_keys(out / f"{case}.tk.weights.h5"),
                "ckpt": _ckpt_keys(out / f"{case}.tkckpt"),
            }
    (out / "keys.json").write_text(json.dumps(keys, indent=1))
    import subprocess

    subprocess.run([sys.executable, __file__, "--uniquified", outdir], check=True)


if __name__ == "__main__":
    if sys.argv[1] == "--uniquified":
        write_uniquified(sys.argv[2])
    else:
        main(sys.argv[1])
