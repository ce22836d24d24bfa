"""Fixtures for the mapper's worked examples (tests/test_mapping_examples.py, docs/cookbook-mapping.md).

Run as ``python gen_mapping.py OUTDIR``. Every file is written by the real writer (Keras 3,
tf-keras, ``safetensors.numpy``); every ``*.expected.*`` record is what a live model held.

Files written:
    seq3.weights.h5            Keras 3 Sequential dense_1/dense_2/dense_3 (seed question, example 1)
    pretrained.weights.h5      the seed question's pretrained conv net (conv_1_pretrained, ...)
    transfer_target.keras      its target model (conv_1, pool_1, flatten, dense_1, dense_2)
    conv_test.weights.h5       a model with one Conv2D ``conv_layer_test`` (example 3)
    torch_layout.safetensors   PyTorch-layout weights (Conv2d, BatchNorm2d, BERT-style attention,
                               Linear), numpy-written
    torch_fused.safetensors    the same with the attention's q/k/v fused in one ``qkv`` matrix
    torch_target.keras         the Keras model (Conv2D, BatchNormalization, MultiHeadAttention,
                               Dense) those weights belong in
    keras2.h5                  a tf-keras (Keras 2) model.save() file, default layer names
    keras3_target.keras        the same architecture in Keras 3 with other layer names
    hf_bert/                   a tiny Hugging Face BERT (config.json, model.safetensors), numpy-written

Records: ``seq3``, ``pretrained``, ``transfer_target``, ``conv_test``, ``torch_target`` (the Keras
model after loading the PyTorch weights with a hand-written converter whose forward pass was
checked against a numpy implementation of PyTorch's semantics), ``keras3_target`` (the Keras 3
model after ``set_weights(keras2_model.get_weights())``), ``keras2`` (the tf-keras model),
``bert_keras_hub`` (keras-hub's ``BertBackbone.from_preset`` of ``hf_bert/``: keras-hub's own
hand-written converter is the oracle).
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 4321


def _randomize(model, rng):
    import numpy as np

    values = [rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()]
    model.set_weights(values)


def seed_question_models(keras, out: Path, rng) -> None:
    """The three cases of the seed question (loading into parts of a Keras network)."""
    from _common import dump_expected, keras3_records

    layers = keras.layers
    seq = keras.Sequential(
        [
            keras.Input((5,)),
            layers.Dense(10, activation="relu", name="dense_1"),
            layers.Dense(20, activation="relu", name="dense_2"),
            layers.Dense(5, activation="softmax", name="dense_3"),
        ],
        name="seq3",
    )
    _randomize(seq, rng)
    seq.save_weights(out / "seq3.weights.h5")
    dump_expected(out, "seq3", keras3_records(seq))

    pretrained = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, (3, 3), activation="relu", name="conv_1_pretrained"),
            layers.MaxPooling2D((2, 2), name="pool_1_pretrained"),
            layers.Flatten(name="flatten_pretrained"),
            layers.Dense(10, activation="softmax", name="dense_pretrained"),
        ],
        name="pretrained",
    )
    _randomize(pretrained, rng)
    pretrained.save_weights(out / "pretrained.weights.h5")
    dump_expected(out, "pretrained", keras3_records(pretrained))

    target = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, (3, 3), activation="relu", name="conv_1"),
            layers.MaxPooling2D((2, 2), name="pool_1"),
            layers.Flatten(name="flatten"),
            layers.Dense(20, activation="relu", name="dense_1"),
            layers.Dense(5, activation="softmax", name="dense_2"),
        ],
        name="transfer_target",
    )
    target.save(out / "transfer_target.keras")
    dump_expected(out, "transfer_target", keras3_records(target))

    conv = keras.Sequential(
        [keras.Input((28, 28, 1)), layers.Conv2D(32, (3, 3), activation="relu", name="conv_layer_test")],
        name="conv_test",
    )
    _randomize(conv, rng)
    conv.save_weights(out / "conv_test.weights.h5")
    dump_expected(out, "conv_test", keras3_records(conv))


# -- PyTorch layout ----------------------------------------------------------------------------

D_MODEL, HEADS, HEAD_DIM, CLASSES, CONV_OUT = 16, 2, 8, 4, 8


def torch_weights(rng):
    """PyTorch-layout weights: Conv2d (out, in, kh, kw), BatchNorm2d, BERT attention, Linear (out, in)."""
    import numpy as np

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w = {
        "features.0.weight": r(CONV_OUT, 3, 3, 3),
        "features.0.bias": r(CONV_OUT),
        "features.1.weight": r(CONV_OUT),
        "features.1.bias": r(CONV_OUT),
        "features.1.running_mean": r(CONV_OUT),
        "features.1.running_var": (np.abs(r(CONV_OUT)) + 0.5).astype(np.float32),
        "features.1.num_batches_tracked": np.array(100, dtype=np.int64),
    }
    for part in ("query", "key", "value"):
        w[f"encoder.layer.0.attention.self.{part}.weight"] = r(D_MODEL, D_MODEL) * np.float32(0.3)
        w[f"encoder.layer.0.attention.self.{part}.bias"] = r(D_MODEL) * np.float32(0.3)
    w["encoder.layer.0.attention.output.dense.weight"] = r(D_MODEL, D_MODEL) * np.float32(0.3)
    w["encoder.layer.0.attention.output.dense.bias"] = r(D_MODEL)
    w["classifier.weight"] = r(CLASSES, D_MODEL)
    w["classifier.bias"] = r(CLASSES)
    return w


def hand_converted(w):
    """The hand-written converter (the kind every project writes): Keras names and layouts."""
    out = {
        "conv/kernel": w["features.0.weight"].transpose(2, 3, 1, 0),
        "conv/bias": w["features.0.bias"],
        "bn/gamma": w["features.1.weight"],
        "bn/beta": w["features.1.bias"],
        "bn/moving_mean": w["features.1.running_mean"],
        "bn/moving_variance": w["features.1.running_var"],
        "head/kernel": w["classifier.weight"].T,
        "head/bias": w["classifier.bias"],
        "mha/attention_output/kernel": w["encoder.layer.0.attention.output.dense.weight"].T.reshape(HEADS, HEAD_DIM, D_MODEL),
        "mha/attention_output/bias": w["encoder.layer.0.attention.output.dense.bias"],
    }
    for part in ("query", "key", "value"):
        out[f"mha/{part}/kernel"] = w[f"encoder.layer.0.attention.self.{part}.weight"].T.reshape(D_MODEL, HEADS, HEAD_DIM)
        out[f"mha/{part}/bias"] = w[f"encoder.layer.0.attention.self.{part}.bias"].reshape(HEADS, HEAD_DIM)
    return out


def torch_semantics(w, image_nhwc, tokens):
    """What the PyTorch modules compute, in numpy (eval mode): the oracle for the forward check."""
    import numpy as np

    x = image_nhwc.astype(np.float64)
    k = w["features.0.weight"].astype(np.float64)  # (out, in, kh, kw): cross-correlation
    n, h, wd, _ = x.shape
    oh, ow = h - 2, wd - 2
    conv = np.zeros((n, oh, ow, CONV_OUT))
    for di in range(3):
        for dj in range(3):
            conv += np.einsum("nhwc,oc->nhwo", x[:, di : di + oh, dj : dj + ow, :], k[:, :, di, dj])
    conv += w["features.0.bias"]
    bn = (conv - w["features.1.running_mean"]) / np.sqrt(w["features.1.running_var"].astype(np.float64) + 1e-5)
    bn = bn * w["features.1.weight"] + w["features.1.bias"]

    t = tokens.astype(np.float64)

    def linear(a, name):
        return a @ w[f"{name}.weight"].astype(np.float64).T + w[f"{name}.bias"]

    b, s, _ = t.shape
    q = linear(t, "encoder.layer.0.attention.self.query").reshape(b, s, HEADS, HEAD_DIM)
    kk = linear(t, "encoder.layer.0.attention.self.key").reshape(b, s, HEADS, HEAD_DIM)
    v = linear(t, "encoder.layer.0.attention.self.value").reshape(b, s, HEADS, HEAD_DIM)
    scores = np.einsum("bthd,bshd->bhts", q, kk) / np.sqrt(HEAD_DIM)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    ctx = np.einsum("bhts,bshd->bthd", scores, v).reshape(b, s, D_MODEL)
    att = linear(ctx, "encoder.layer.0.attention.output.dense")
    logits = linear(att.mean(axis=1), "classifier")
    return bn, logits


def torch_layout(keras, out: Path, rng) -> None:
    import numpy as np
    import safetensors.numpy
    from _common import dump_expected, keras3_records

    layers = keras.layers
    image = keras.Input((8, 8, 3), name="image")
    y = layers.Conv2D(CONV_OUT, (3, 3), name="conv")(image)
    y = layers.BatchNormalization(epsilon=1e-5, name="bn")(y)  # PyTorch's default eps
    tokens = keras.Input((5, D_MODEL), name="tokens")
    x = layers.MultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, name="mha")(tokens, tokens)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.Dense(CLASSES, name="head")(x)
    model = keras.Model([image, tokens], [y, x], name="torchlike")
    model.save(out / "torch_target.keras")  # the architecture, before any weights are loaded

    w = torch_weights(rng)
    converted = hand_converted(w)
    paths = {}
    for v in model.weights:
        path = v.path[len(model.name) + 1 :] if v.path.startswith(model.name + "/") else v.path
        paths[path] = v
    if set(paths) != set(converted):
        raise SystemExit(f"model variables {sorted(paths)} != converter names {sorted(converted)}")
    for name, value in converted.items():
        paths[name].assign(np.ascontiguousarray(value))

    img = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    tok = rng.standard_normal((2, 5, D_MODEL)).astype(np.float32)
    got_bn, got_logits = model([img, tok], training=False)
    want_bn, want_logits = torch_semantics(w, img, tok)
    for label, got, want in (("conv+bn", got_bn, want_bn), ("attention+head", got_logits, want_logits)):
        err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
        if err > 1e-3:
            raise SystemExit(f"hand converter does not reproduce PyTorch semantics for {label}: max error {err}")

    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in w.items()}, str(out / "torch_layout.safetensors"))
    fused = {k: v for k, v in w.items() if ".attention.self." not in k}
    prefix = "encoder.layer.0.attention.self"
    fused[f"{prefix}.qkv.weight"] = np.concatenate([w[f"{prefix}.{p}.weight"] for p in ("query", "key", "value")], axis=0)
    fused[f"{prefix}.qkv.bias"] = np.concatenate([w[f"{prefix}.{p}.bias"] for p in ("query", "key", "value")], axis=0)
    safetensors.numpy.save_file(fused, str(out / "torch_fused.safetensors"))
    dump_expected(out, "torch_target", keras3_records(model))


# -- Keras 2 -> Keras 3 ------------------------------------------------------------------------


def keras2_to_keras3(keras, out: Path, rng) -> None:
    import numpy as np
    import tf_keras
    from _common import dump_expected, keras3_records, tfkeras_records

    tf_keras.backend.clear_session()
    old = tf_keras.Sequential(
        [
            tf_keras.layers.Dense(8, activation="relu", input_shape=(4,)),
            tf_keras.layers.BatchNormalization(),
            tf_keras.layers.Dense(3),
        ]
    )
    old.set_weights([np.abs(rng.standard_normal(v.shape)).astype(np.float32) + 0.5 for v in old.get_weights()])
    old.save(out / "keras2.h5")
    dump_expected(out, "keras2", tfkeras_records(old), layer_names=[layer.name for layer in old.layers])

    layers = keras.layers
    inputs = keras.Input((4,), name="features")
    x = layers.Dense(8, activation="relu", name="encoder")(inputs)
    x = layers.BatchNormalization(name="norm")(x)
    outputs = layers.Dense(3, name="classifier")(x)
    new = keras.Model(inputs, outputs, name="migrated")
    new.save(out / "keras3_target.keras")
    new.set_weights(old.get_weights())  # same architecture: the same get_weights() order
    dump_expected(out, "keras3_target", keras3_records(new))


# -- Hugging Face BERT -> keras-hub ------------------------------------------------------------


def hf_bert(out: Path, rng) -> None:
    """A tiny Hugging Face BERT directory, and what keras-hub's own converter loads from it."""
    import json

    import numpy as np
    import safetensors.numpy
    from _common import dump_expected, keras3_records

    try:
        import keras_hub
    except ImportError:  # the BERT example is skipped without keras-hub
        return
    hidden, inter, layers_, vocab, positions = 8, 16, 2, 30, 12

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": r(vocab, hidden),
        "embeddings.position_embeddings.weight": r(positions, hidden),
        "embeddings.token_type_embeddings.weight": r(2, hidden),
        "embeddings.LayerNorm.weight": r(hidden),
        "embeddings.LayerNorm.bias": r(hidden),
        "embeddings.position_ids": np.arange(positions, dtype=np.int64)[None],
    }
    for i in range(layers_):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            w[p + f"attention.self.{part}.weight"] = r(hidden, hidden)
            w[p + f"attention.self.{part}.bias"] = r(hidden)
        w[p + "attention.output.dense.weight"] = r(hidden, hidden)
        w[p + "attention.output.dense.bias"] = r(hidden)
        w[p + "attention.output.LayerNorm.weight"] = r(hidden)
        w[p + "attention.output.LayerNorm.bias"] = r(hidden)
        w[p + "intermediate.dense.weight"] = r(inter, hidden)
        w[p + "intermediate.dense.bias"] = r(inter)
        w[p + "output.dense.weight"] = r(hidden, inter)
        w[p + "output.dense.bias"] = r(hidden)
        w[p + "output.LayerNorm.weight"] = r(hidden)
        w[p + "output.LayerNorm.bias"] = r(hidden)
    w["pooler.dense.weight"] = r(hidden, hidden)
    w["pooler.dense.bias"] = r(hidden)
    directory = out / "hf_bert"
    directory.mkdir(exist_ok=True)
    safetensors.numpy.save_file(w, str(directory / "model.safetensors"))
    config = {
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers_, "num_attention_heads": 2, "intermediate_size": inter,
        "max_position_embeddings": positions, "type_vocab_size": 2,
    }
    (directory / "config.json").write_text(json.dumps(config))
    backbone = keras_hub.models.BertBackbone.from_preset(str(directory))
    dump_expected(out, "bert_keras_hub", keras3_records(backbone))


def main(outdir: str) -> None:
    import _common  # noqa: F401  (sets the TF environment variables)
    import keras
    import numpy as np

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    seed_question_models(keras, out, rng)
    torch_layout(keras, out, rng)
    keras2_to_keras3(keras, out, rng)
    hf_bert(out, rng)


if __name__ == "__main__":
    main(sys.argv[1])
