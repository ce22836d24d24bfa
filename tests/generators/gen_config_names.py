"""Layers named like the other objects a ``.keras`` config.json serializes: dtype policies
(``float32``, ``bfloat16``, tf-keras' ``mixed_float16``) and the optimizer (``adam``).

Usage: gen_config_names.py OUTDIR. Files (each with LABEL.expected.json/bin records of the
live model's weights, in ``model.weights`` order):
  policy_functional.keras, policy_functional/ (``zipped=False``): a functional model whose
      layers ``d``, ``float32``, ``bfloat16`` (a bfloat16 layer) and ``adam`` come after the
      first layer's ``float32`` policy; compiled with Adam.
  policy_sequential.keras: a Sequential model, whose own ``float32`` policy comes before its
      layers ``d``, ``float32``, ``bfloat16``.
  tk_policy.keras: tf-keras under the ``mixed_float16`` policy, layers ``d`` and
      ``mixed_float16`` (tf-keras records no layer names in the weights file).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import dump_expected, keras3_records, tfkeras_records

OUT = Path(sys.argv[1])


def keras3() -> None:
    import keras

    keras.utils.set_random_seed(7)
    layers = keras.layers
    x = inp = keras.Input((3,))
    x = layers.Dense(4, name="d")(x)
    x = layers.Dense(3, name="float32")(x)
    x = layers.Dense(2, name="bfloat16", dtype="bfloat16")(x)
    x = layers.Dense(2, name="adam")(x)
    model = keras.Model(inp, x, name="functional")
    model.compile(optimizer="adam", loss="mse")
    model.save(OUT / "policy_functional.keras")
    model.save(OUT / "policy_functional", zipped=False)
    dump_expected(OUT, "policy_functional", keras3_records(model))

    seq = keras.Sequential(
        [keras.Input((3,)), layers.Dense(4, name="d"), layers.Dense(3, name="float32"),
         layers.Dense(2, name="bfloat16", dtype="bfloat16")],
        name="seq",
    )
    seq.save(OUT / "policy_sequential.keras")
    dump_expected(OUT, "policy_sequential", keras3_records(seq))


def tfkeras() -> None:
    import tf_keras

    tf_keras.utils.set_random_seed(7)
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    layers = tf_keras.layers
    inp = tf_keras.Input((3,))
    x = layers.Dense(4, name="d")(inp)
    x = layers.Dense(2, name="mixed_float16")(x)
    model = tf_keras.Model(inp, x, name="tk")
    model.save(OUT / "tk_policy.keras")
    dump_expected(OUT, "tk_policy", tfkeras_records(model))


if __name__ == "__main__":
    keras3()
    tfkeras()
