"""The three examples of the seed question ("load weights into a specific part of a Keras
network"), done with load_into, for Keras 3 and tf-keras; plus a tf-keras TF checkpoint whose
nested names need a rule (or the order)."""

from __future__ import annotations

import numpy as np
import pytest

import ckptconv
from ckptconv import LoadError, load_into
from tests.helpers import assert_bit_exact, load_expected

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

LINES = ["keras", "tf_keras"]


def kmod(line: str):
    module = keras if line == "keras" else tf_keras
    module.backend.clear_session()
    return module


def values(layer) -> list[np.ndarray]:
    return [np.array(w) for w in layer.get_weights()]


# -- (1) set specific Dense layers by name, leave another untouched ----------------------------


def three_dense(k):
    return k.Sequential(
        [
            k.Input((5,)),
            k.layers.Dense(10, activation="relu", name="dense_1"),
            k.layers.Dense(20, activation="relu", name="dense_2"),
            k.layers.Dense(5, activation="softmax", name="dense_3"),
        ]
    )


@pytest.mark.parametrize("line", LINES)
def test_seed_1_specific_dense_layers(line):
    model = three_dense(kmod(line))
    rng = np.random.default_rng(1)
    weights = {
        "dense_1/kernel": rng.random((5, 10), dtype=np.float32),
        "dense_1/bias": rng.random(10, dtype=np.float32),
        "dense_3/kernel": rng.random((20, 5), dtype=np.float32),
        "dense_3/bias": rng.random(5, dtype=np.float32),
    }
    before = {layer.name: values(layer) for layer in model.layers}

    # Without saying which part: dense_2 has no source, strict refuses and changes nothing.
    with pytest.raises(LoadError, match="missing: no source for 'dense_2/kernel'"):
        load_into(model, weights)
    # A transposed kernel is caught before anything changes.
    wrong = dict(weights, **{"dense_3/kernel": weights["dense_3/kernel"].T})
    with pytest.raises(LoadError, match=r"dense_3/kernel.*\[20, 5\].*\[5, 20\]"):
        load_into(model, wrong, only=["dense_1", "dense_3"])
    for layer in model.layers:
        for got, old in zip(values(layer), before[layer.name]):
            assert_bit_exact(got, old, layer.name)

    report = load_into(model, weights, only=["dense_1", "dense_3"])
    assert report.ok and [w.name for w in report.loaded] == list(weights)
    assert_bit_exact(values(model.get_layer("dense_1"))[0], weights["dense_1/kernel"], "dense_1")
    assert_bit_exact(values(model.get_layer("dense_3"))[1], weights["dense_3/bias"], "dense_3")
    for got, old in zip(values(model.get_layer("dense_2")), before["dense_2"]):
        assert_bit_exact(got, old, "dense_2 untouched")


# -- (2) a convolution and its pooling neighbour from a pretrained model file -------------------


def target_model(k):
    return k.Sequential(
        [
            k.Input((28, 28, 1)),
            k.layers.Conv2D(32, (3, 3), activation="relu", name="conv_1"),
            k.layers.MaxPooling2D((2, 2), name="pool_1"),
            k.layers.Flatten(name="flatten"),
            k.layers.Dense(20, activation="relu", name="dense_1"),
            k.layers.Dense(5, activation="softmax", name="dense_2"),
        ]
    )


TRANSFER = {
    "rules": [
        {"layer": "conv_1_pretrained", "to_layer": "conv_1"},
        {"drop": "dense_pretrained/*"},
    ]
}


@pytest.mark.parametrize("line", LINES)
def test_seed_2_transfer_conv_and_pool_from_a_pretrained_file(generated, line):
    directory = generated("load")
    pretrained = {e.name: e.array for e in load_expected(directory, "pretrained")}
    model = target_model(kmod(line))
    dense_before = {n: values(model.get_layer(n)) for n in ("dense_1", "dense_2")}

    report = load_into(model, directory / "pretrained.keras", TRANSFER, only="conv_1", freeze=True)

    assert report.ok, report.format_table()
    assert [(w.name, w.source) for w in report.loaded] == [
        ("conv_1/kernel", "conv_1_pretrained/kernel"),
        ("conv_1/bias", "conv_1_pretrained/bias"),
    ]
    assert report.dropped == ["dense_pretrained/kernel", "dense_pretrained/bias"]
    assert report.frozen == ["conv_1"] and model.get_layer("conv_1").trainable is False
    conv = values(model.get_layer("conv_1"))
    assert_bit_exact(conv[0], pretrained["conv_1_pretrained/kernel"], "kernel")
    assert_bit_exact(conv[1], pretrained["conv_1_pretrained/bias"], "bias")
    assert model.get_layer("pool_1").get_weights() == []  # pooling has nothing to transfer
    for name, old in dense_before.items():
        for got, want in zip(values(model.get_layer(name)), old):
            assert_bit_exact(got, want, f"{name} untouched")


def test_seed_2_the_head_is_unused_a_problem_only_for_the_whole_model(generated):
    """Without the drop rule the pretrained head fills nothing: a load of the whole model
    refuses it (a weight that goes nowhere is usually a mistake); a load of a part (only=)
    lists it as unused and loads the part."""
    directory = generated("load")
    rules = {"rules": TRANSFER["rules"][:1]}
    with pytest.raises(LoadError) as info:
        load_into(target_model(kmod("keras")), directory / "pretrained.keras", rules)
    assert any(p.kind == "unused" and p.name == "dense_pretrained/kernel" for p in info.value.problems)
    report = load_into(target_model(kmod("keras")), directory / "pretrained.keras", rules, only="conv_1")
    assert report.ok and [w.name for w in report.loaded] == ["conv_1/kernel", "conv_1/bias"]
    assert [w.name for w in report.unused] == ["dense_pretrained/kernel", "dense_pretrained/bias"]


# -- (3) a convolution's kernel only, keeping its bias, and the bias only ----------------------


@pytest.mark.parametrize("line", LINES)
def test_seed_3_kernel_only_then_bias_only_with_dtypes_checked(line):
    k = kmod(line)
    layer = k.layers.Conv2D(32, (3, 3), activation="relu", name="conv_layer_test")
    layer.build((None, 28, 28, 1))
    rng = np.random.default_rng(3)
    kernel = rng.random((3, 3, 1, 32))  # float64, as np.random.rand gives
    bias = rng.random(32)
    kernel_before, bias_before = values(layer)

    with pytest.raises(LoadError, match="float32.*float64.*cast=True"):
        load_into(layer, {"conv_layer_test/kernel": kernel}, only="conv_layer_test/kernel")
    assert_bit_exact(values(layer)[0], kernel_before, "unchanged after the refusal")

    report = load_into(
        layer, {"conv_layer_test/kernel": kernel}, only="conv_layer_test/kernel", cast=True
    )
    assert [(w.name, w.cast_from) for w in report.loaded] == [("conv_layer_test/kernel", "float64")]
    assert_bit_exact(values(layer)[0], kernel.astype(np.float32), "new kernel")
    assert_bit_exact(values(layer)[1], bias_before, "bias kept")

    load_into(layer, {"conv_layer_test/bias": bias.astype(np.float32)}, only="*/bias")
    assert_bit_exact(values(layer)[0], kernel.astype(np.float32), "kernel kept")
    assert_bit_exact(values(layer)[1], bias.astype(np.float32), "new bias")


@pytest.mark.parametrize("line", LINES)
def test_seed_3_kernel_only_from_a_file_by_weight_index(generated, line):
    directory = generated("load")
    pretrained = {e.name: e.array for e in load_expected(directory, "pretrained")}
    model = target_model(kmod(line))
    bias_before = values(model.get_layer("conv_1"))[1]
    spec = {
        "passthrough": False,  # everything the rule does not take is dropped on purpose
        "rules": [{"layer": "conv_1_pretrained", "index": 0, "to": "conv_1/kernel"}],
    }
    report = load_into(model, directory / "pretrained.keras", spec, only="conv_1/kernel")
    assert report.ok, report.format_table()
    assert_bit_exact(values(model.get_layer("conv_1"))[0], pretrained["conv_1_pretrained/kernel"], "k")
    assert_bit_exact(values(model.get_layer("conv_1"))[1], bias_before, "bias kept")


# -- tf-keras TF checkpoints record nested models' weights without the outer name ------------


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("how", ["rule", "order"])
def test_tf_keras_checkpoint_nested_names_by_rule_or_order(generated, line, how):
    from tests.generators.gen_load import build_keras3

    directory = generated("load")
    expected = {e.name: e.array for e in load_expected(directory, "source")}
    model = build_keras3(kmod(line))
    if line == "tf_keras":
        # tf-keras' own restore follows the object graph, and so does load_into by default
        report = load_into(model, directory / "tkckpt")
        assert report.ok and report.structure == "object-graph", report.format_table()
        assert ("block/inner_a/kernel", "inner_a/kernel") in report.names_differ
        model = build_keras3(kmod(line))
    else:
        # a Keras 3 model has another object graph (Keras 3 cannot read this file itself)
        with pytest.raises(LoadError, match="structure is not the model's") as info:
            load_into(model, directory / "tkckpt")
        assert info.value.problems[0].kind == "structure"
        assert any("inner_a" in p for p in info.value.problems)
    if how == "rule":
        spec = {"rules": [{"from": "inner_*/*", "to": "block/inner_{1}/{2}"}]}
        report = load_into(model, directory / "tkckpt", spec)
    else:
        report = load_into(model, directory / "tkckpt", by_order=True)
    assert report.ok, report.format_table()
    from tests.test_load_into import assert_all_equal

    assert_all_equal(model, expected)
