"""Regenerate the sample checkpoints shipped in examples/ with the real Keras writers.

Needs the test extras (TensorFlow, Keras 3, tf-keras): ``.venv/bin/python scripts/make_example.py``.
Writes:
  examples/sample.keras      a small Keras 3 image classifier (Conv2D, BatchNormalization,
                             Dense, a nested Sequential), trained for one step so it also holds
                             optimizer state
  examples/sample_tf_keras.h5  the same architecture saved by tf-keras (Keras 2) as legacy HDF5
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def build(k):  # k: the keras or tf_keras module
    layers = k.layers
    inputs = k.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, name="conv_1_pretrained")(inputs)
    x = layers.BatchNormalization(name="bn_1")(x)
    x = layers.MaxPooling2D(name="pool_1_pretrained")(x)
    x = layers.Conv2D(16, 3, name="conv_2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    head = k.Sequential(
        [layers.Dense(32, activation="relu", name="dense_1"), layers.Dense(10, name="dense_2")],
        name="classifier",
    )
    model = k.Model(inputs, head(x), name="sample_cnn")
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(7)
    model.fit(rng.normal(size=(8, 16, 16, 3)).astype("float32"), rng.normal(size=(8, 10)).astype("float32"), verbose=0)
    return model


def main() -> None:
    import keras
    import tf_keras

    keras.utils.set_random_seed(7)
    build(keras).save(EXAMPLES / "sample.keras")
    tf_keras.utils.set_random_seed(7)
    build(tf_keras).save(EXAMPLES / "sample_tf_keras.h5")
    for p in sorted(EXAMPLES.glob("sample*")):
        print(f"wrote {p.relative_to(EXAMPLES.parent)} ({p.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
