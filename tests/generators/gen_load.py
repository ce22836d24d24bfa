"""Fixtures for ``load_into``: one architecture as Keras 3 and tf-keras twins, saved by every writer.

Run as ``python gen_load.py OUTDIR`` (by the ``generated("load")`` fixture). Both twins hold the
same values (random, BatchNorm statistics included); ``source.expected.*`` records them under
their Keras 3 variable paths. The ``build_*`` functions are imported by the tests too, so the
fresh targets there have exactly this architecture.

Files written:
    k3.weights.h5, k3.keras, k3sharded.weights.json (+ shards), k3legacy.h5   (Keras 3)
    tk.h5 (full model), tkw.h5 (save_weights), tkckpt (tf-keras TF-format weights)  (tf-keras)
    k3ckpt (tf.train.Checkpoint of the Keras 3 model), k3.safetensors (numpy writer)
    pretrained.keras: the seed question's pretrained conv net (conv_1_pretrained, ...)
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 1234


def build_keras3(keras, prefix: str = ""):
    """The twin architecture with Keras 3 (or tf-keras: the layer API used is common to both).

    ``prefix`` renames every layer (a model whose names mean nothing for the files)."""
    layers = keras.layers
    p = prefix
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    image = keras.Input((6, 6, 1), name="image")
    x = layers.Embedding(20, 8, name=f"{p}emb")(tokens)
    x = layers.MultiHeadAttention(num_heads=2, key_dim=4, name=f"{p}mha")(x, x)
    x = layers.LayerNormalization(name=f"{p}ln")(x)
    x = layers.Bidirectional(layers.LSTM(4, name=f"{p}lstm"), name=f"{p}bidi")(x)
    y = layers.Conv2D(3, (3, 3), name=f"{p}conv")(image)
    y = layers.MaxPooling2D((2, 2), name=f"{p}pool")(y)
    y = layers.Flatten(name=f"{p}flat")(y)
    z = layers.Concatenate(name=f"{p}cat")([x, y])
    block = keras.Sequential(
        [layers.Dense(5, name=f"{p}inner_a"), layers.Dense(5, name=f"{p}inner_b")], name=f"{p}block"
    )
    z = block(z)
    z = layers.BatchNormalization(name=f"{p}bn")(z)
    out = layers.Dense(3, name=f"{p}head")(z)
    return keras.Model([tokens, image], out, name="twin")


build_tf_keras = build_keras3


def build_pretrained(keras):
    """The seed question's pretrained model (example 2)."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, (3, 3), activation="relu", name="conv_1_pretrained"),
            layers.MaxPooling2D((2, 2), name="pool_1_pretrained"),
            layers.Flatten(name="flatten_pretrained"),
            layers.Dense(10, activation="softmax", name="dense_pretrained"),
        ],
        name="pretrained",
    )


def _randomize(model, rng):
    import numpy as np

    values = []
    for w in model.get_weights():
        values.append(rng.standard_normal(w.shape).astype(w.dtype))
    # moving_variance must stay positive for the model to stay usable
    model.set_weights([np.abs(v) + 0.5 if v.ndim == 1 else v for v in values])


def main(outdir: str) -> None:
    import _common  # noqa: F401  (sets the TF environment variables)
    import numpy as np
    import keras
    import safetensors.numpy
    import tensorflow as tf
    import tf_keras

    out = Path(outdir)
    rng = np.random.default_rng(SEED)

    k3 = build_keras3(keras)
    _randomize(k3, rng)
    tk = build_tf_keras(tf_keras)
    tk.set_weights(k3.get_weights())

    k3.save_weights(out / "k3.weights.h5")
    k3.save(out / "k3.keras")
    k3.save_weights(out / "k3sharded.weights.json", max_shard_size=0.000001)  # in GB: several shards
    k3.save(out / "k3legacy.h5")
    tf.train.Checkpoint(model=k3).write(str(out / "k3ckpt"))
    safetensors.numpy.save_file(
        {v.path: np.asarray(v.numpy()) for v in k3.weights}, str(out / "k3.safetensors")
    )

    tk.save(out / "tk.h5")
    tk.save_weights(str(out / "tkw.h5"))
    tk.save_weights(str(out / "tkckpt"), save_format="tf")

    _common.dump_expected(out, "source", _common.keras3_records(k3))

    pre = build_pretrained(keras)
    _randomize(pre, rng)
    pre.save(out / "pretrained.keras")
    _common.dump_expected(out, "pretrained", _common.keras3_records(pre))


if __name__ == "__main__":
    main(sys.argv[1])
