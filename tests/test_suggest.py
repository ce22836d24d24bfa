"""``suggest`` on the issue's three cases, as a user would run it: the seed question (a
pretrained Keras model into a new one with another head), a state dict written by torch into its
Keras twin (the forward passes agree), and a Keras 2 ``.h5`` onto a Keras 3 model with other
layer names. Each suggested spec is used as it is: ``plan --target`` accepts it and
``load_into`` loads with it, compared bit for bit with what the models held."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from ckptconv import load_into, load_spec
from tests.generators.gen_suggest import build_new_model
from tests.helpers import assert_bit_exact, load_expected, run_cli

keras = pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parent.parent
TORCH = ROOT / "tests" / "fixtures" / "torch_sequential"
SEED_SOURCES = ["pretrained.keras", "pretrained.weights.h5", "pretrained.h5"]


@pytest.fixture(scope="module")
def seed(generated) -> Path:
    return generated("suggest")


@pytest.fixture(scope="module")
def mapping(generated) -> Path:
    return generated("mapping")


def cli(*args) -> subprocess.CompletedProcess:
    """The command line in this process (Keras is imported already: a subprocess would take
    TensorFlow's import time again for every .keras target)."""
    import contextlib
    import io

    from ckptconv.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = int(e.code or 0)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def rules_of(spec) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if k != "comment"} for r in spec.rules]


# -- the seed question -------------------------------------------------------------------------


@pytest.mark.parametrize("source", SEED_SOURCES)
def test_seed_case_loads_the_three_layers_and_leaves_the_head(seed, source):
    keras.backend.clear_session()
    model = build_new_model(keras)
    head_before = [np.array(w) for w in model.get_layer("head").get_weights()]
    suggestion = ckptconv.mapping.align(seed / source, model)
    assert rules_of(suggestion.spec) == [
        {"layer": "conv_1_pretrained", "to_layer": "conv_1"},
        {"layer": "bn_1"},
        {"layer": "conv_2"},
    ]
    assert [m.confidence for m in suggestion.matches] == ["sure"] * 3
    assert [x.name for x in suggestion.unplaced] == ["classifier/kernel", "classifier/bias"]
    assert [x.name for x in suggestion.unfilled] == ["head/kernel", "head/bias"]

    report = load_into(model, seed / source, suggestion.spec, only=["conv_1", "bn_1", "conv_2"])
    assert len(report.loaded) == 8 and report.dropped == ["classifier/kernel", "classifier/bias"]
    expected = {e.name: e.array for e in load_expected(seed, "pretrained")}
    for variable in model.weights:
        name = variable.path.split("/", 1)[1]
        if name.startswith("head/"):
            continue
        source_name = name.replace("conv_1/", "conv_1_pretrained/")
        assert_bit_exact(np.array(variable), expected[source_name], name)
    for now, before in zip(model.get_layer("head").get_weights(), head_before):
        assert_bit_exact(np.array(now), before, "head untouched")


def test_seed_case_from_the_command_line(seed, tmp_path):
    spec = tmp_path / "spec.yaml"
    result = cli("suggest", seed / "pretrained.keras", "--target", seed / "new_model.keras", "-o", spec)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "3 layer(s) placed, 8 of 10 target variables filled; 2 source entries not placed" in result.stderr
    text = spec.read_text()
    assert "# conv_1_pretrained -> conv_1: similar names" in text
    assert "# - {layer: classifier, to_layer: head}" in text
    assert "#   head/kernel  [16, 4] float32" in text
    assert rules_of(load_spec(spec)) == [
        {"layer": "conv_1_pretrained", "to_layer": "conv_1"}, {"layer": "bn_1"}, {"layer": "conv_2"},
    ]
    plan = cli("plan", seed / "pretrained.keras", "--map", spec, "--target", seed / "new_model.keras", "--lenient")
    assert plan.returncode == 0, plan.stderr
    strict = cli("plan", seed / "pretrained.keras", "--map", spec, "--target", seed / "new_model.keras", "--json")
    assert strict.returncode == 1
    assert json.loads(strict.stdout)["problems"] == ["2 target weight(s) nothing fills: 'head/kernel', 'head/bias'"]

    # stdout without -o; an existing -o is kept unless --force
    again = cli("suggest", seed / "pretrained.keras", "--target", seed / "new_model.keras")
    assert again.returncode == 0
    assert again.stdout.split("version: 1")[1] == text.split("version: 1")[1]  # the header names the file
    before = spec.read_bytes()
    refused = cli("suggest", seed / "pretrained.keras", "--target", seed / "new_model.keras", "-o", spec)
    assert refused.returncode == 1 and "exists; pass --force" in refused.stderr
    assert spec.read_bytes() == before
    # --force replaces the spec, never an input (copies: the fixtures are shared)
    copies = tmp_path / "in"
    copies.mkdir()
    src, tgt = (Path(shutil.copy(seed / name, copies)) for name in ("pretrained.keras", "new_model.keras"))
    for inp in (src, tgt):
        kept = inp.read_bytes()
        hit = cli("suggest", src, "--target", tgt, "-o", inp, "--force")
        assert hit.returncode == 1 and "would overwrite the input" in hit.stderr, hit.stderr
        assert inp.read_bytes() == kept
    assert sorted(os.listdir(copies)) == ["new_model.keras", "pretrained.keras"]
    replaced = cli("suggest", seed / "pretrained.keras", "--target", seed / "new_model.keras", "-o", spec, "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert spec.read_bytes() == before  # the same suggestion again, put in place
    assert sorted(os.listdir(spec.parent)) == ["in", spec.name]  # no temporary or lock file left


# -- a torch-written state dict into its Keras twin --------------------------------------------

_TWIN_SCRIPT = r"""
import json, sys
import numpy as np
import keras
import ckptconv
from ckptconv.mapping.suggest import align
from safetensors.numpy import load_file

fixtures, source, out = sys.argv[1], sys.argv[2], sys.argv[3]
L = keras.layers
model = keras.Sequential([
    keras.Input((3, 8, 8)),
    L.Conv2D(4, 3, data_format="channels_first"),
    L.BatchNormalization(axis=1, epsilon=1e-5),   # PyTorch's eps
    L.ReLU(),
    L.Flatten(),                                  # NCHW flattened as is: torch's order
    L.Dense(16),
    L.ReLU(),
    L.Dense(5),
])
model.save(out + "/twin.keras")
suggestion = align(f"{fixtures}/{source}", model)
report = ckptconv.load_into(model, f"{fixtures}/{source}", suggestion.spec)   # strict
io = load_file(f"{fixtures}/io.safetensors")
got = np.asarray(model(io["input"], training=False))
print(json.dumps({
    "error": float(np.max(np.abs(got - io["output"]))),
    "loaded": len(report.loaded),
    "dropped": report.dropped,
    "rules": [{k: v for k, v in r.to_dict().items() if k != "comment"} for r in suggestion.spec.rules],
}))
"""


def _twin(source: str, tmp_path: Path) -> dict:
    """Keras 3 on JAX in a subprocess: TensorFlow runs no channels_first convolution on a CPU."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", _TWIN_SCRIPT, str(TORCH), source, str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_torch_state_dict_into_its_keras_twin(tmp_path):
    result = _twin("state_dict.safetensors", tmp_path)
    assert result["error"] < 1e-5
    assert result["loaded"] == 10 and result["dropped"] == ["1.num_batches_tracked"]
    assert result["rules"] == [
        {"from": "0.weight", "to": "conv2d/kernel", "ops": [{"transpose": [2, 3, 1, 0]}]},
        {"from": "0.bias", "to": "conv2d/bias"},
        {"drop": "1.num_batches_tracked"},
        {"from": "1.weight", "to": "batch_normalization/gamma"},
        {"from": "1.bias", "to": "batch_normalization/beta"},
        {"from": "1.running_mean", "to": "batch_normalization/moving_mean"},
        {"from": "1.running_var", "to": "batch_normalization/moving_variance"},
        {"from": "4.weight", "to": "dense/kernel", "ops": ["transpose"]},
        {"from": "4.bias", "to": "dense/bias"},
        {"from": "6.weight", "to": "dense_1/kernel", "ops": ["transpose"]},
        {"from": "6.bias", "to": "dense_1/bias"},
    ]
    # the command line, against the twin's .keras file: plan --target accepts the spec as it is
    spec = tmp_path / "spec.yaml"
    source = TORCH / "state_dict.safetensors"
    made = cli("suggest", source, "--target", tmp_path / "twin.keras", "-o", spec)
    assert made.returncode == 0, made.stderr
    plan = cli("plan", source, "--map", spec, "--target", tmp_path / "twin.keras")
    assert plan.returncode == 0, plan.stdout + plan.stderr


def test_torch_file_into_its_keras_twin(tmp_path):
    """The same from the ``torch.save`` file, once ckptconv reads PyTorch files."""
    if importlib.util.find_spec("ckptconv.formats.pytorch") is None:
        pytest.skip("ckptconv has no PyTorch reader yet")
    result = _twin("state_dict.pt", tmp_path)
    assert result["error"] < 1e-5 and result["loaded"] == 10


# -- Keras 2 -> Keras 3 ------------------------------------------------------------------------


def test_keras2_h5_onto_keras3_model_with_other_names(mapping, tmp_path):
    """dense, batch_normalization, dense_1 (tf-keras defaults) onto encoder, norm, classifier."""
    keras.backend.clear_session()
    model = keras.saving.load_model(mapping / "keras3_target.keras", compile=False)
    suggestion = ckptconv.mapping.align(mapping / "keras2.h5", mapping / "keras3_target.keras")
    assert rules_of(suggestion.spec) == [
        {"layer": "dense", "to_layer": "encoder"},
        {"layer": "batch_normalization", "to_layer": "norm"},
        {"layer": "dense_1", "to_layer": "classifier"},
    ]
    assert all(m.how == "structure" and m.confidence == "sure" for m in suggestion.matches)  # legacy order
    load_into(model, mapping / "keras2.h5", suggestion.spec)  # strict: every variable filled
    for e in load_expected(mapping, "keras3_target"):
        variable = next(v for v in model.weights if v.path.endswith(e.name))
        assert_bit_exact(np.array(variable), e.array, e.name)

    spec = tmp_path / "k2k3.yaml"
    assert cli("suggest", mapping / "keras2.h5", "--target", mapping / "keras3_target.keras", "-o", spec).returncode == 0
    plan = cli("plan", mapping / "keras2.h5", "--map", spec, "--target", mapping / "keras3_target.keras")
    assert plan.returncode == 0, plan.stdout + plan.stderr


@pytest.mark.parametrize("as_arrays", [False, True], ids=["file", "arrays"])
def test_keras2_wrappers_onto_keras3_follow_keras_own_loader(generated, as_arrays):
    """tf-keras' TimeDistributed, Bidirectional, DepthwiseConv2D, MultiHeadAttention, RNN and
    SeparableConv2D weights onto the same model in Keras 3, whose names differ (``td/kernel``
    is ``td/fc/kernel``; ``depthwise_kernel`` is ``kernel``). From the file the legacy order
    pairs them; as bare ``{name: array}`` (no structure) the names and the Keras 2 -> 3
    conventions must. Keras 3's own ``load_weights`` of the file is the oracle, bit for bit."""
    pytest.importorskip("tf_keras")
    from tests.generators.gen_structure import ZOO

    zoo = generated("structure")
    source: object = zoo / "wrappers.tk.h5"
    if as_arrays:
        with ckptconv.open(zoo / "wrappers.tk.h5") as store:
            source = {name: entry.read() for name, entry in store.items()}
    keras.backend.clear_session()
    theirs = ZOO["wrappers"][0](keras)
    theirs.load_weights(str(zoo / "wrappers.tk.h5"))
    keras.backend.clear_session()
    ours = ZOO["wrappers"][0](keras)
    suggestion = ckptconv.mapping.align(source, ours)
    assert not suggestion.unplaced and not suggestion.unfilled
    assert {"layer": "td", "to_layer": "td/fc"} in rules_of(suggestion.spec)
    assert {"from": "depthwise_conv2d/depthwise_kernel", "to": "depthwise_conv2d/kernel"} in rules_of(suggestion.spec)
    assert {m.confidence for m in suggestion.matches} == {"sure"}
    load_into(ours, source, suggestion.spec)  # strict: every variable filled
    assert len(ours.weights) == 27
    for mine, keras_own in zip(ours.weights, theirs.weights):
        assert_bit_exact(np.array(mine), np.array(keras_own), mine.path)


# -- the same architecture under other names: Keras' own structure -----------------------------


def test_same_architecture_with_other_names_pairs_by_keras_structure(generated):
    """A bare Keras 3 .weights.h5 lists its layers grouped by class, not in model order, and
    every layer of the new model has another name (``emb`` -> ``pemb``): Keras' saving-tree
    keys pair them as load_weights would, and the spec reproduces the file bit for bit."""
    from tests.generators.gen_load import build_keras3

    twin = generated("load")
    keras.backend.clear_session()
    model = build_keras3(keras, prefix="p")
    suggestion = ckptconv.mapping.align(twin / "k3.weights.h5", model)
    assert {m.how for m in suggestion.matches} == {"structure"}
    assert {m.confidence for m in suggestion.matches} == {"sure"}
    assert not suggestion.unplaced and not suggestion.unfilled
    load_into(model, twin / "k3.weights.h5", suggestion.spec)  # strict: every variable filled
    check = ckptconv.diff(twin / "k3.weights.h5", model, mapping=suggestion.spec)
    assert check.equal and len(check.tensors) == 29


# -- a Hugging Face BERT into keras-hub's BertBackbone ------------------------------------------


def test_hugging_face_bert_into_keras_hub_matches_keras_hubs_own_converter(mapping):
    """A real architecture with everything at once: a safetensors file sorted by name (so the
    attention's output projection comes before query), two identical blocks, LayerNorms as
    weight/bias, Linear weights into EinsumDense kernels (transpose, then reshape), the
    position_ids buffer. keras-hub's own converter is the oracle, bit for bit."""
    if not (mapping / "bert_keras_hub.expected.json").exists():
        pytest.skip("keras-hub is not installed (the generator wrote no BERT)")
    expected = load_expected(mapping, "bert_keras_hub")
    target = {e.name: ckptconv.TargetTensor(e.array.shape, e.array.dtype) for e in expected}
    suggestion = ckptconv.mapping.align(mapping / "hf_bert" / "model.safetensors", target)
    assert [x.name for x in suggestion.unplaced] == ["embeddings.position_ids"] and not suggestion.unfilled
    with ckptconv.open(mapping / "hf_bert" / "model.safetensors") as store:
        plan = ckptconv.build_plan(store, suggestion.spec, target=target, strict=True)
        assert plan.ok, plan.problems
        got = dict(plan.arrays())
    for e in expected:
        assert_bit_exact(got[e.name], e.array, e.name)


# -- the command line's errors -----------------------------------------------------------------


def test_cli_usage_and_errors(seed, tmp_path):
    no_target = run_cli("suggest", seed / "pretrained.keras")
    assert no_target.returncode == 2 and "--target" in no_target.stderr
    abbreviated = run_cli("suggest", seed / "pretrained.keras", "--targ", seed / "new_model.keras")
    assert abbreviated.returncode == 2
    missing = run_cli("suggest", tmp_path / "nope.h5", "--target", seed / "new_model.keras")
    assert missing.returncode == 1 and missing.stderr.startswith("ckptconv: error: ") and "nope.h5" in missing.stderr
    assert "Traceback" not in missing.stderr
    as_json = run_cli("suggest", tmp_path / "nope.h5", "--target", seed / "new_model.keras", "--json")
    assert as_json.returncode == 1
    obj = json.loads(as_json.stdout)
    assert obj["ok"] is False and "nope.h5" in obj["error"]["message"]


def _conv_then_linear(channels: int, classes: int) -> dict[str, np.ndarray]:
    """A PyTorch state dict of Conv2d(3, channels, 3) -> flatten -> Linear(channels*16, classes)
    (a 6x6 input), written as torch names and layouts: ``state_dict()`` order."""
    rng = np.random.default_rng(7)
    return {
        "conv.weight": rng.standard_normal((channels, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(channels).astype(np.float32),
        "fc.weight": rng.standard_normal((classes, channels * 16)).astype(np.float32),
        "fc.bias": rng.standard_normal(classes).astype(np.float32),
    }


def test_a_linear_after_a_flatten_has_its_rows_reordered_for_channels_last():
    """torch flattens the feature map [C, H, W]; Keras' Flatten in a channels_last model
    [H, W, C]. The kernel fits by shape either way, so only the order of its rows tells: the
    Dense output must equal the Linear's on the same feature map."""
    state = _conv_then_linear(4, 5)
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(5, name="fc")])
    from ckptconv.mapping import align

    suggestion = align(state, model)
    fc = next(m for m in suggestion.matches if m.target == "fc")
    assert fc.confidence == "likely" and "[C, H, W] to channels_last [H, W, C]" in fc.reason
    report = load_into(model, state, suggestion.spec)
    assert report.ok
    x = np.random.default_rng(8).standard_normal((1, 6, 6, 3)).astype(np.float32)
    features = np.asarray(keras.Model(model.inputs, model.get_layer("conv").output)(x))[0]  # [H, W, C]
    torch_linear = state["fc.weight"] @ features.transpose(2, 0, 1).reshape(-1) + state["fc.bias"]
    np.testing.assert_allclose(np.asarray(model(x))[0], torch_linear, rtol=1e-5, atol=1e-5)


def test_linears_after_the_first_one_and_after_pooling_are_plain_transposes():
    """A flatten happens once: a ViT's patch convolution is followed by Linears whose input
    is a multiple of its channels (the MLP's 4x) that flatten nothing."""
    rng = np.random.default_rng(9)
    state = {"patch.weight": rng.standard_normal((8, 3, 2, 2)).astype(np.float32),
             "fc1.weight": rng.standard_normal((32, 8)).astype(np.float32),
             "fc2.weight": rng.standard_normal((8, 32)).astype(np.float32)}
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(8, 2, strides=2, use_bias=False, name="patch"),
                              keras.layers.Reshape((4, 8)), keras.layers.Dense(32, use_bias=False, name="fc1"),
                              keras.layers.Dense(8, use_bias=False, name="fc2")])
    spec = ckptconv.suggest(state, model)
    ops = {str(rule.from_): [op.describe() for op in rule.ops] for rule in spec.rules}
    assert ops == {"patch.weight": ["transpose [2, 3, 1, 0]"], "fc1.weight": ["transpose"], "fc2.weight": ["transpose"]}
