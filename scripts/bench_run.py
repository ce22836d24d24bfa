"""The measured programs other than ``dd`` and the ``ckptconv`` CLI (run by scripts/bench.py).

Each mode runs in a fresh process, so its peak RSS is its own. Modes that time only a part
(a load into an already built model) print one line ``BENCH {json}`` with ``seconds`` and,
where they can, ``ok`` (the loaded values checked against the seeded originals).

Peers, the ways people convert today (whole model in memory):
    h5py_save_file SRC DST            h5py reads every dataset, safetensors.numpy.save_file
                                      (of a .keras archive: its model.weights.h5 member)
    keras_save_file SRC DST L U       rebuild the model, load_weights, save_file
    tf_save_file PREFIX DST           tf.train.load_checkpoint, get_tensor each, save_file
    import_tf                         import tensorflow, nothing else
Loads into a live Keras 3 model (the model is built first; only the load is timed):
    load_into SRC L U                 ckptconv.load_into(model, SRC)
    load_into_nocheck SRC L U      ckptconv.load_into(model, SRC, check_first=False)
    load_weights SRC L U              model.load_weights(SRC)
BERT (PyTorch-layout safetensors in a Hugging Face directory onto keras-hub's BertBackbone;
imports are not timed, building the model and loading are):
    bert_keras_hub DIR                keras_hub.models.BertBackbone.from_preset(DIR)
    bert_load_into DIR                BertBackbone(**config) + ckptconv.load_into(..., BERT_SPEC)
    bert_set_weights DIR              BertBackbone(**config) + a hand-written set_weights loop
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_write import build_keras3, layer_weights  # noqa: E402

# keras-hub's BertBackbone variable paths from Hugging Face BERT names (PyTorch layout).
BERT_SPEC = {
    "version": 1,
    "passthrough": False,
    "rules": [
        {"from": "embeddings.word_embeddings.weight", "to": "token_embedding/embeddings"},
        {"from": "embeddings.position_embeddings.weight", "to": "position_embedding/embeddings"},
        {"from": "embeddings.token_type_embeddings.weight", "to": "segment_embedding/embeddings"},
        {"from": "embeddings.LayerNorm.weight", "to": "embeddings_layer_norm/gamma"},
        {"from": "embeddings.LayerNorm.bias", "to": "embeddings_layer_norm/beta"},
        {
            "from": r"re:encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.weight",
            "to": "transformer_layer_{1}/self_attention_layer/{2}/kernel",
            "ops": ["transpose", {"reshape": "target"}],
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.bias",
            "to": "transformer_layer_{1}/self_attention_layer/{2}/bias",
            "ops": [{"reshape": "target"}],
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.attention\.output\.dense\.weight",
            "to": "transformer_layer_{1}/self_attention_layer/attention_output/kernel",
            "ops": ["transpose", {"reshape": "target"}],
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.attention\.output\.dense\.bias",
            "to": "transformer_layer_{1}/self_attention_layer/attention_output/bias",
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.weight",
            "to": "transformer_layer_{1}/self_attention_layer_norm/gamma",
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.bias",
            "to": "transformer_layer_{1}/self_attention_layer_norm/beta",
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.intermediate\.dense\.weight",
            "to": "transformer_layer_{1}/feedforward_intermediate_dense/kernel",
            "ops": ["transpose"],
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.intermediate\.dense\.bias",
            "to": "transformer_layer_{1}/feedforward_intermediate_dense/bias",
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.output\.dense\.weight",
            "to": "transformer_layer_{1}/feedforward_output_dense/kernel",
            "ops": ["transpose"],
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.output\.dense\.bias",
            "to": "transformer_layer_{1}/feedforward_output_dense/bias",
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.output\.LayerNorm\.weight",
            "to": "transformer_layer_{1}/feedforward_layer_norm/gamma",
        },
        {
            "from": r"re:encoder\.layer\.(\d+)\.output\.LayerNorm\.bias",
            "to": "transformer_layer_{1}/feedforward_layer_norm/beta",
        },
        {"from": "pooler.dense.weight", "to": "pooled_dense/kernel", "ops": ["transpose"]},
        {"from": "pooler.dense.bias", "to": "pooled_dense/bias"},
    ],
}


def report(**values: object) -> None:
    print("BENCH " + json.dumps(values), flush=True)


# --- peers -----------------------------------------------------------------------------------


def h5py_save_file(src: str, dst: str) -> None:
    """For a ``.keras`` archive, h5py reads the weights member through zipfile."""
    import zipfile

    import h5py
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    source = zipfile.ZipFile(src).open("model.weights.h5") if src.endswith(".keras") else src
    with h5py.File(source, "r") as f:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                tensors[name] = obj[()]

        f.visititems(visit)
    save_file(tensors, dst)


def keras_save_file(src: str, dst: str, layers: int, units: int) -> None:
    from safetensors.numpy import save_file

    model = build_keras3(layers, units)
    model.load_weights(src)
    save_file({v.path: np.asarray(v.numpy()) for v in model.weights}, dst)


def tf_save_file(prefix: str, dst: str) -> None:
    import tensorflow as tf
    from safetensors.numpy import save_file

    reader = tf.train.load_checkpoint(prefix)
    tensors = {}
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            tensors[name] = value
    save_file(tensors, dst)


def torch_save_file(src: str, dst: str) -> None:
    """What people do today with torch installed: load (memory-mapped) and save_file."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(src, mmap=True, weights_only=True, map_location="cpu")
    save_file(state, dst, metadata={"format": "pt"})


def import_tf() -> None:
    import tensorflow  # noqa: F401


# --- loads into a live model ------------------------------------------------------------------


def _check(model, layers: int, units: int) -> bool:  # type: ignore[no-untyped-def]
    """The first and last layers hold the seeded values, bit for bit."""
    for i in sorted({0, layers - 1}):
        kernel, bias = layer_weights(i, units)
        got = model.get_layer(f"dense_{i}").get_weights()
        if got[0].tobytes() != kernel.tobytes() or got[1].tobytes() != bias.tobytes():
            return False
    return True


def load(mode: str, src: str, layers: int, units: int) -> None:
    model = build_keras3(layers, units)
    if mode in ("load_into", "load_into_nocheck"):
        import ckptconv

        options = {"check_first": False} if mode == "load_into_nocheck" else {}
        started = time.perf_counter()
        ckptconv.load_into(model, src, **options)
    else:
        started = time.perf_counter()
        model.load_weights(src)
    seconds = time.perf_counter() - started
    report(seconds=seconds, ok=_check(model, layers, units))


# --- BERT -------------------------------------------------------------------------------------


def _bert_config(directory: str) -> dict[str, int]:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    return {
        "vocabulary_size": hf["vocab_size"],
        "num_layers": hf["num_hidden_layers"],
        "num_heads": hf["num_attention_heads"],
        "hidden_dim": hf["hidden_size"],
        "intermediate_dim": hf["intermediate_size"],
        "max_sequence_length": hf["max_position_embeddings"],
    }


def _bert_check(backbone, directory: str) -> bool:  # type: ignore[no-untyped-def]
    """Spot-check two weights against the file (query kernel of layer 0, the pooler)."""
    from safetensors.numpy import load_file

    hf = load_file(os.path.join(directory, "model.safetensors"))
    q = backbone.get_layer("transformer_layer_0")._self_attention_layer.query_dense.kernel
    want_q = hf["encoder.layer.0.attention.self.query.weight"].T.reshape(tuple(q.shape))
    pool = backbone.get_layer("pooled_dense").kernel
    want_pool = hf["pooler.dense.weight"].T
    return (np.asarray(q.numpy()).tobytes() == np.ascontiguousarray(want_q).tobytes()
            and np.asarray(pool.numpy()).tobytes() == np.ascontiguousarray(want_pool).tobytes())


def bert(mode: str, directory: str) -> None:
    import keras_hub

    import ckptconv

    config = _bert_config(directory)
    started = time.perf_counter()
    if mode == "bert_keras_hub":
        backbone = keras_hub.models.BertBackbone.from_preset(directory)
    elif mode == "bert_load_into":
        backbone = keras_hub.models.BertBackbone(**config)
        ckptconv.load_into(backbone, os.path.join(directory, "model.safetensors"), BERT_SPEC)
    else:
        backbone = keras_hub.models.BertBackbone(**config)
        _set_weights_loop(backbone, directory)
    seconds = time.perf_counter() - started
    report(seconds=seconds, ok=_bert_check(backbone, directory))


def _set_weights_loop(backbone, directory: str) -> None:  # type: ignore[no-untyped-def]
    """What people write by hand: read everything, transpose/reshape, assign."""
    from safetensors.numpy import load_file

    hf = load_file(os.path.join(directory, "model.safetensors"))
    import re

    for rule in BERT_SPEC["rules"]:
        source = rule["from"]
        regex = re.compile(source[3:] if source.startswith("re:") else re.escape(source))
        for name, value in hf.items():
            m = regex.fullmatch(name)
            if not m:
                continue
            target = rule["to"]
            for i, g in enumerate(m.groups(), 1):
                target = target.replace("{%d}" % i, g)
            var = next(v for v in backbone.weights if v.path == target)
            if "transpose" in rule.get("ops", []):
                value = value.T
            var.assign(np.reshape(value, tuple(var.shape)))


def main(argv: list[str]) -> int:
    mode, *rest = argv
    if mode == "h5py_save_file":
        h5py_save_file(*rest)
    elif mode == "keras_save_file":
        keras_save_file(rest[0], rest[1], int(rest[2]), int(rest[3]))
    elif mode == "tf_save_file":
        tf_save_file(*rest)
    elif mode == "torch_save_file":
        torch_save_file(*rest)
    elif mode == "import_tf":
        import_tf()
    elif mode in ("load_into", "load_into_nocheck", "load_weights"):
        load(mode, rest[0], int(rest[1]), int(rest[2]))
    elif mode in ("bert_keras_hub", "bert_load_into", "bert_set_weights"):
        bert(mode, rest[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
