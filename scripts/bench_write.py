"""Write the benchmark checkpoints with the real writers (run by scripts/bench.py in a subprocess).

    bench_write.py keras3 OUTDIR --layers N --units U [--name STEM]
        Keras 3: STEM.weights.h5 and STEM.keras (skip the archive with --weights-only)
    bench_write.py tfkeras OUTDIR --layers N --units U
        tf-keras: legacy.h5 (save_weights, HDF5) and ckpt/model (save_weights, TF checkpoint)
    bench_write.py torch OUTDIR --layers N --units U
        PyTorch: model.pt, torch.save of a state dict in PyTorch's layout (dense_i.weight is the
        kernel transposed, (out, in)), in torch's default zip layout
    bench_write.py bert OUTDIR --layers N --hidden H --heads A --intermediate I --vocab V
        a Hugging Face style BERT directory: config.json + model.safetensors, PyTorch layout,
        written with safetensors.numpy (no torch needed)
    bench_write.py many-keras3 OUTDIR --layers N --units U
        many tensors, Keras 3: N Dense(U) layers side by side on one input (2N tensors):
        many.weights.h5, many.keras, a sharded many.weights.json, and many.safetensors (the
        same weights under their Keras variable paths, written with safetensors.numpy)
    bench_write.py many-tfkeras OUTDIR --layers N --units U
        about 2N tensors in tf-keras (N/3 branches of Dense(U) + BatchNormalization):
        many_legacy.h5 and a TF checkpoint ckpt/many
    bench_write.py generated OUTDIR --tensors N
        N small tensors (layer_i/kernel 8x8 and layer_i/bias 8, fp32) as a TF checkpoint
        written by TensorFlow's own SaveV2 op (gen.index, gen.data-*) and as gen.safetensors

The model is a stack of Dense(U) layers named dense_0, dense_1, ...; weights are seeded per layer
(:func:`layer_weights`), so every format holds the same values and loaders can check them. The
many-tensor model puts its Dense layers side by side (a stack 5000 deep is more than Keras'
functional graph walk can recurse through) and adds their outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def layer_weights(i: int, units: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded kernel and bias of layer ``i`` (the same in every writer)."""
    rng = np.random.default_rng(1000 + i)
    kernel = rng.standard_normal((units, units), dtype=np.float32)
    kernel *= np.float32(0.02)
    bias = rng.standard_normal((units,), dtype=np.float32)
    bias *= np.float32(0.02)
    return kernel, bias


def build_keras3(layers: int, units: int):  # type: ignore[no-untyped-def]
    """The benchmark model in Keras 3, zero-initialised (fast to build; loaders fill it)."""
    import keras

    inputs = keras.Input((units,), name="x")
    x = inputs
    for i in range(layers):
        x = keras.layers.Dense(units, name=f"dense_{i}", kernel_initializer="zeros")(x)
    return keras.Model(inputs, x, name="bench")


def build_tfkeras(layers: int, units: int):  # type: ignore[no-untyped-def]
    import tf_keras

    inputs = tf_keras.Input((units,), name="x")
    x = inputs
    for i in range(layers):
        x = tf_keras.layers.Dense(units, name=f"dense_{i}", kernel_initializer="zeros")(x)
    return tf_keras.Model(inputs, x, name="bench")


def fill(model, layers: int, units: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(layers):
        model.get_layer(f"dense_{i}").set_weights(list(layer_weights(i, units)))


def write_keras3(out: str, layers: int, units: int, stem: str, weights_only: bool) -> None:
    model = build_keras3(layers, units)
    fill(model, layers, units)
    model.save_weights(os.path.join(out, f"{stem}.weights.h5"))
    if not weights_only:
        model.save(os.path.join(out, f"{stem}.keras"))


def write_tfkeras(out: str, layers: int, units: int) -> None:
    model = build_tfkeras(layers, units)
    fill(model, layers, units)
    model.save_weights(os.path.join(out, "legacy.h5"))
    os.makedirs(os.path.join(out, "ckpt"), exist_ok=True)
    model.save_weights(os.path.join(out, "ckpt", "model"), save_format="tf")


def write_torch(out: str, layers: int, units: int, name: str = "model.pt") -> None:
    """The model's state dict as a PyTorch ``nn.Linear`` stack holds it (``dense_i.weight``
    [out, in], ``dense_i.bias``), from the same seeded weights, saved by ``torch.save``."""
    import torch

    state = {}
    for i in range(layers):
        kernel, bias = layer_weights(i, units)
        state[f"dense_{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
        state[f"dense_{i}.bias"] = torch.from_numpy(bias)
    torch.save(state, os.path.join(out, name))


def bert_tensors(layers: int, hidden: int, heads: int, intermediate: int, vocab: int,
                 positions: int = 512) -> dict[str, np.ndarray]:
    """A BERT checkpoint in Hugging Face's PyTorch layout (Linear weights are (out, in))."""
    rng = np.random.default_rng(7)

    def t(*shape: int) -> np.ndarray:
        a = rng.standard_normal(shape, dtype=np.float32)
        a *= np.float32(0.02)
        return a

    out: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": t(vocab, hidden),
        "embeddings.position_embeddings.weight": t(positions, hidden),
        "embeddings.token_type_embeddings.weight": t(2, hidden),
        "embeddings.LayerNorm.weight": t(hidden),
        "embeddings.LayerNorm.bias": t(hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            out[p + f"attention.self.{part}.weight"] = t(hidden, hidden)
            out[p + f"attention.self.{part}.bias"] = t(hidden)
        out[p + "attention.output.dense.weight"] = t(hidden, hidden)
        out[p + "attention.output.dense.bias"] = t(hidden)
        out[p + "attention.output.LayerNorm.weight"] = t(hidden)
        out[p + "attention.output.LayerNorm.bias"] = t(hidden)
        out[p + "intermediate.dense.weight"] = t(intermediate, hidden)
        out[p + "intermediate.dense.bias"] = t(intermediate)
        out[p + "output.dense.weight"] = t(hidden, intermediate)
        out[p + "output.dense.bias"] = t(hidden)
        out[p + "output.LayerNorm.weight"] = t(hidden)
        out[p + "output.LayerNorm.bias"] = t(hidden)
    out["pooler.dense.weight"] = t(hidden, hidden)
    out["pooler.dense.bias"] = t(hidden)
    return out


def write_bert(out: str, layers: int, hidden: int, heads: int, intermediate: int, vocab: int) -> None:
    from safetensors.numpy import save_file

    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
    }
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    save_file(bert_tensors(layers, hidden, heads, intermediate, vocab), os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})


def build_wide(keras_module, layers: int, units: int):  # type: ignore[no-untyped-def]
    """``layers`` Dense(units) layers side by side on one input, outputs added: 2 * layers
    tensors (Keras 3 or tf-keras, whichever module is given)."""
    inputs = keras_module.Input((units,), name="x")
    outputs = [keras_module.layers.Dense(units, name=f"dense_{i}", kernel_initializer="zeros")(inputs)
               for i in range(layers)]
    return keras_module.Model(inputs, keras_module.layers.Add(name="sum")(outputs), name="many")


def write_many_keras3(out: str, layers: int, units: int) -> None:
    import keras
    from safetensors.numpy import save_file

    model = build_wide(keras, layers, units)
    fill(model, layers, units)
    model.save_weights(os.path.join(out, "many.weights.h5"))
    model.save(os.path.join(out, "many.keras"))
    sharded = os.path.join(out, "sharded")
    os.makedirs(sharded, exist_ok=True)
    shard_gb = max(layers * (units * units + units) * 4 / 4 / 1e9, 1e-6)  # about four shards
    model.save_weights(os.path.join(sharded, "many.weights.json"), max_shard_size=shard_gb)
    save_file({v.path: np.asarray(v.numpy()) for v in model.weights}, os.path.join(out, "many.safetensors"))


def write_many_tfkeras(out: str, layers: int, units: int) -> None:
    """About ``2 * layers`` tensors in tf-keras. Not ``layers`` Dense layers: tf-keras' legacy
    HDF5 writer sizes its ``layer_names`` attribute as fixed-length bytes but h5py stores the
    list as variable-length strings (16 bytes each), so more than about 4000 layers overflow
    HDF5's 64 KiB object header. Branches of Dense + BatchNormalization (6 tensors each) reach
    the same tensor count with a third of the layers."""
    import tf_keras

    branches = -(-layers // 3)
    inputs = tf_keras.Input((units,), name="x")
    outputs = []
    for i in range(branches):
        h = tf_keras.layers.Dense(units, name=f"dense_{i}", kernel_initializer="zeros")(inputs)
        outputs.append(tf_keras.layers.BatchNormalization(name=f"bn_{i}")(h))
    model = tf_keras.Model(inputs, tf_keras.layers.Add(name="sum")(outputs), name="many")
    fill(model, branches, units)
    model.save_weights(os.path.join(out, "many_legacy.h5"))
    os.makedirs(os.path.join(out, "ckpt"), exist_ok=True)
    model.save_weights(os.path.join(out, "ckpt", "many"), save_format="tf")


def generated_tensors(count: int) -> dict[str, np.ndarray]:
    """``count`` small seeded tensors: ``layer_i/kernel`` (8, 8) and ``layer_i/bias`` (8,)."""
    rng = np.random.default_rng(11)
    values = rng.standard_normal((count + 1) // 2 * 72, dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    for i in range((count + 1) // 2):
        block = values[i * 72 : (i + 1) * 72]
        out[f"layer_{i}/kernel"] = block[:64].reshape(8, 8)
        if len(out) < count:
            out[f"layer_{i}/bias"] = block[64:]
    return out


def write_generated(out: str, count: int) -> None:
    """TensorFlow's own bundle writer (the SaveV2 op, as tf.compat.v1 Savers use) and
    safetensors.numpy, on the same tensors."""
    import tensorflow as tf
    from safetensors.numpy import save_file

    tensors = generated_tensors(count)
    names = list(tensors)
    tf.raw_ops.SaveV2(
        prefix=os.path.join(out, "gen"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    save_file(tensors, os.path.join(out, "gen.safetensors"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("keras3", "tfkeras", "torch", "bert", "many-keras3", "many-tfkeras",
                                    "many-torch", "generated"))
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--units", type=int, default=4096)
    p.add_argument("--name", default="model")
    p.add_argument("--weights-only", action="store_true")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--tensors", type=int, default=100_000)
    args = p.parse_args(argv)
    started = time.perf_counter()
    if args.what == "keras3":
        write_keras3(args.out, args.layers, args.units, args.name, args.weights_only)
    elif args.what == "tfkeras":
        write_tfkeras(args.out, args.layers, args.units)
    elif args.what == "torch":
        write_torch(args.out, args.layers, args.units)
    elif args.what == "many-keras3":
        write_many_keras3(args.out, args.layers, args.units)
    elif args.what == "many-tfkeras":
        write_many_tfkeras(args.out, args.layers, args.units)
    elif args.what == "many-torch":
        write_torch(args.out, args.layers, args.units, "many.pt")
    elif args.what == "generated":
        write_generated(args.out, args.tensors)
    else:
        write_bert(args.out, args.layers, args.hidden, args.heads, args.intermediate, args.vocab)
    print(f"wrote {args.what} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
