"""Keras 3 ``.keras`` archives holding optimizer state, one per optimizer and option that
changes which variables an optimizer creates, with what Keras itself says of them.

For each LABEL: ``LABEL.keras`` (saved after one training step, so every slot holds values),
and ``LABEL.expected.*``: every optimizer variable in ``optimizer.variables`` order, under
its Keras path (``adam/dense_kernel_momentum``), with its value.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import dump_expected

OUT = Path(sys.argv[1])


def main() -> None:
    import keras
    import numpy as np

    L = keras.layers
    O = keras.optimizers
    rng = np.random.default_rng(7)

    def sequential(name: str = "sequential") -> keras.Model:
        return keras.Sequential(
            [keras.Input((4,)), L.Dense(3, name="dense"), L.BatchNormalization(name="bn"), L.Dense(2, name="head")],
            name=name,
        )

    def functional(frozen: bool = False) -> keras.Model:
        inputs = keras.Input((4,), name="x")
        first = L.Dense(3, name="dense", trainable=not frozen)
        block = keras.Sequential([L.Dense(3, name="inner_a"), L.Dense(3, name="inner_b")], name="block")
        return keras.Model(inputs, L.Dense(2, name="head")(block(first(inputs))), name="functional_model")

    class Sub(keras.Model):  # a subclassed model: config.json does not describe its layers
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d1 = L.Dense(3, name="d1")
            self.d2 = L.Dense(2, name="d2")

        def call(self, x):
            return self.d2(self.d1(x))

    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.9)
    cases = {
        "seq_adam_amsgrad": (sequential, lambda: O.Adam(amsgrad=True)),
        "func_sgd_momentum": (functional, lambda: O.SGD(momentum=0.9)),
        "func_rmsprop_frozen": (lambda: functional(frozen=True), lambda: O.RMSprop(momentum=0.5, centered=True)),
        "seq_adamw_ema": (sequential, lambda: O.AdamW(use_ema=True)),
        "seq_adam_schedule": (sequential, lambda: O.Adam(learning_rate=schedule)),
        "seq_adam_accumulate": (sequential, lambda: O.Adam(gradient_accumulation_steps=2)),
        "func_adamax": (functional, O.Adamax),
        "func_adagrad": (functional, O.Adagrad),
        "func_adadelta": (functional, O.Adadelta),
        "func_ftrl": (functional, O.Ftrl),
        "func_lion": (functional, O.Lion),
        "func_lamb": (functional, O.Lamb),
        "func_nadam": (functional, O.Nadam),
        "sub_adam": (lambda: Sub(name="sub"), O.Adam),
    }
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    for label, (build, optimizer) in cases.items():
        model = build()
        model.compile(optimizer=optimizer(), loss="mse", run_eagerly=True)  # no tracing: faster for tiny models
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        model.save(OUT / f"{label}.keras")
        records = [
            {"name": v.path, "layer": "", "index": i, "kind": "optimizer", "array": np.asarray(v.numpy())}
            for i, v in enumerate(model.optimizer.variables)
        ]
        dump_expected(OUT, label, records, model_class=type(model).__name__)


if __name__ == "__main__":
    main()
