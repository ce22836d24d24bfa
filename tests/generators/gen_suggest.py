"""Fixtures for ``suggest`` (tests/test_suggest.py, docs/suggest.md): the seed question's case.

Run as ``python gen_suggest.py OUTDIR``. A pretrained Keras 3 model (``conv_1_pretrained``,
``bn_1``, ``conv_2``, a ``classifier``) saved by every Keras 3 writer, and a new model whose
first three layers are the same kind (``conv_1``, ``bn_1``, ``conv_2``) and whose head has
another shape. The ``build_*`` functions are imported by the tests, so a fresh model there has
exactly this architecture.

Files written:
    pretrained.keras, pretrained.weights.h5, pretrained.h5 (legacy HDF5)   the pretrained model
    new_model.keras                                                         the new model
Records: ``pretrained`` (its weights), ``new_model`` (the new model's initial weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 1919


def build_pretrained(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            layers.Conv2D(8, (3, 3), activation="relu", name="conv_1_pretrained"),
            layers.BatchNormalization(name="bn_1"),
            layers.Conv2D(16, (3, 3), activation="relu", name="conv_2"),
            layers.GlobalAveragePooling2D(name="pool"),
            layers.Dense(10, activation="softmax", name="classifier"),
        ],
        name="pretrained",
    )


def build_new_model(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            layers.Conv2D(8, (3, 3), activation="relu", name="conv_1"),
            layers.BatchNormalization(name="bn_1"),
            layers.Conv2D(16, (3, 3), activation="relu", name="conv_2"),
            layers.GlobalAveragePooling2D(name="pool"),
            layers.Dense(4, activation="softmax", name="head"),  # a new head: 4 classes, not 10
        ],
        name="new_model",
    )


def main(outdir: str) -> None:
    import _common  # noqa: F401  (sets the TF environment variables)
    import keras
    import numpy as np
    from _common import dump_expected, keras3_records

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    pretrained = build_pretrained(keras)
    values = [rng.standard_normal(w.shape).astype(w.dtype) for w in pretrained.get_weights()]
    pretrained.set_weights([np.abs(v) + 0.5 if v.ndim == 1 else v for v in values])  # variances > 0
    pretrained.save(out / "pretrained.keras")
    pretrained.save_weights(out / "pretrained.weights.h5")
    pretrained.save(out / "pretrained.h5")
    dump_expected(out, "pretrained", keras3_records(pretrained))

    new = build_new_model(keras)
    new.save(out / "new_model.keras")
    dump_expected(out, "new_model", keras3_records(new))


if __name__ == "__main__":
    main(sys.argv[1])
