"""Write real Keras files with Keras 3 and tf-keras, plus what the live models held.

Usage: gen_keras.py OUTDIR. Files (each with LABEL.expected.json/bin):
  k3_zoo.weights.h5, k3_zoo.keras, k3_zoo.h5 (Keras 3 legacy writer, with optimizer),
  k3_zoo_sharded.weights.json (+ shards), k3_seq.weights.h5 (Sequential: model name stripped),
  tk_zoo.h5 (tf-keras model.save, with optimizer), tk_zoo_w.h5 (tf-keras save_weights),
  tk_small.keras (tf-keras v3 archive: no name attributes), tk_chunked.h5 (layer_names chunked),
  k3_chunked.h5.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import dump_expected, keras3_records, tfkeras_records

import numpy as np  # noqa: E402

OUT = Path(sys.argv[1])
rng = np.random.default_rng(0)


def zoo(k, *, head: str, head_dtype: str | None = None):
    """The zoo architecture in one Keras line (``k``: the keras or tf_keras module), trained for
    one step so the files hold optimizer state too."""
    layers = k.layers
    img = k.Input((8, 8, 3))
    tok = k.Input((5,), dtype="int32")
    x = layers.Conv2D(4, 3, name="conv")(img)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(6, name="dense_a")(x)
    t = layers.Embedding(10, 6, name="emb")(tok)
    t = layers.MultiHeadAttention(2, 3, name="mha")(t, t)
    t = layers.Bidirectional(layers.LSTM(3), name="bilstm")(t)
    t = layers.LayerNormalization(name="ln")(t)
    y = layers.Concatenate(name="cat")([x, t])
    block = k.Sequential(
        [layers.Dense(4, name="inner_a"), layers.Dense(3, name="inner_b", use_bias=False)], name="block"
    )
    y = block(y)
    y = layers.Dense(2, name=head, dtype=head_dtype)(y)
    model = k.Model([img, tok], y, name="zoo")
    model.compile(optimizer="adam", loss="mse")
    data = [rng.normal(size=(4, 8, 8, 3)).astype("float32"), rng.integers(0, 10, size=(4, 5)).astype("int32")]
    model.fit(data, rng.normal(size=(4, 2)).astype("float32"), verbose=0, epochs=1)
    return model


def chunky(k):
    """A model whose layer_names attribute exceeds 64 KB: Keras splits it into layer_names0, 1, ..."""
    inp = k.Input((2,))
    x = inp
    for i in range(330):
        x = k.layers.Activation("linear", name=f"act_{i:04d}_" + "x" * 190)(x)
    return k.Model(inp, k.layers.Dense(2, name="last")(x), name="chunky")


def main() -> None:
    import keras

    keras.utils.set_random_seed(1)
    m = zoo(keras, head="head_bf16", head_dtype="bfloat16")
    recs = keras3_records(m)
    m.save_weights(OUT / "k3_zoo.weights.h5")
    dump_expected(OUT, "k3_zoo.weights.h5", recs, optimizer_vars=len(m.optimizer.variables))
    m.save(OUT / "k3_zoo.keras")
    dump_expected(OUT, "k3_zoo.keras", recs, optimizer_vars=len(m.optimizer.variables))
    m.save(OUT / "k3_zoo.h5")
    dump_expected(OUT, "k3_zoo.h5", recs)
    (OUT / "sharded").mkdir()
    m.save_weights(OUT / "sharded" / "k3_zoo.weights.json", max_shard_size=0.000003)
    dump_expected(OUT, "k3_zoo_sharded", recs)
    (OUT / "many").mkdir()  # one group per shard: names recorded in one shard place another's groups
    m.save_weights(OUT / "many" / "k3_zoo.weights.json", max_shard_size=0.000001)
    dump_expected(OUT, "k3_zoo_many_shards", recs)

    seq = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="a"), keras.layers.Dense(1, name="b")], name="seq")
    seq.save_weights(OUT / "k3_seq.weights.h5")
    dump_expected(OUT, "k3_seq.weights.h5", keras3_records(seq))

    km = chunky(keras)
    km.save(OUT / "k3_chunked.h5")
    dump_expected(OUT, "k3_chunked.h5", keras3_records(km))

    tk()


def tk() -> None:
    import tf_keras
    from tf_keras import layers

    tf_keras.utils.set_random_seed(2)
    m = zoo(tf_keras, head="head")
    recs = tfkeras_records(m)
    m.save(OUT / "tk_zoo.h5")
    dump_expected(OUT, "tk_zoo.h5", recs)
    m.save_weights(OUT / "tk_zoo_w.h5")
    dump_expected(OUT, "tk_zoo_w.h5", recs)

    small_block = tf_keras.Sequential([layers.Dense(3, name="inner_a"), layers.Dense(2, name="inner_b")], name="block")
    inp = tf_keras.Input((4,))
    h = layers.Dense(4, name="d1")(inp)
    h = layers.BatchNormalization(name="bn")(h)
    h = small_block(h)
    small = tf_keras.Model(inp, h, name="small")
    small.save(OUT / "tk_small.keras")
    dump_expected(OUT, "tk_small.keras", tfkeras_records(small))

    cm = chunky(tf_keras)
    cm.save(OUT / "tk_chunked.h5")
    dump_expected(OUT, "tk_chunked.h5", tfkeras_records(cm))


if __name__ == "__main__":
    main()
