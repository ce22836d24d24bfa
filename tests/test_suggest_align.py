"""``suggest``'s alignment on stores built in memory: every pass, every convention, and the
spec it writes (checked by the mapper's own plan against the target, and read back from its
YAML). The Keras and PyTorch files of the issue's cases are in tests/test_suggest.py."""

from __future__ import annotations

import numpy as np
import pytest

import ckptconv
from ckptconv import Store, TargetTensor, build_plan, load_spec
from ckptconv.mapping.conventions import regroups
from ckptconv.mapping.suggest import align, suggest
from ckptconv.store import Entry

RNG = np.random.default_rng(19)


def arrays(shapes: dict[str, tuple[int, ...]], dtype=np.float32) -> dict[str, np.ndarray]:
    return {name: RNG.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}


def target(shapes: dict[str, tuple[int, ...]], dtype=np.float32) -> dict[str, TargetTensor]:
    return {name: TargetTensor(shape, dtype) for name, shape in shapes.items()}


def outputs(source: dict[str, np.ndarray], spec, tgt) -> dict[str, np.ndarray]:
    """Run the spec through the mapper's plan against the target; every output must fit."""
    plan = build_plan(Store.from_arrays(source), spec, target=tgt)
    assert plan.ok, plan.problems
    return {name: array for name, array in plan.arrays()}


def rules_of(spec) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if k != "comment"} for r in spec.rules]


def test_pytorch_sequential_conventions():
    """Conv2d, BatchNorm2d, two Linear: transposes, renames, the batch counter dropped."""
    src = arrays({
        "0.weight": (4, 3, 3, 3), "0.bias": (4,), "1.weight": (4,), "1.bias": (4,),
        "1.running_mean": (4,), "1.running_var": (4,), "4.weight": (16, 144), "4.bias": (16,),
        "6.weight": (5, 16), "6.bias": (5,),
    })
    src["1.num_batches_tracked"] = np.array(7, dtype=np.int64)
    tgt = target({
        "conv2d/kernel": (3, 3, 3, 4), "conv2d/bias": (4,),
        "batch_normalization/gamma": (4,), "batch_normalization/beta": (4,),
        "batch_normalization/moving_mean": (4,), "batch_normalization/moving_variance": (4,),
        "dense/kernel": (144, 16), "dense/bias": (16,), "dense_1/kernel": (16, 5), "dense_1/bias": (5,),
    })
    spec = suggest(src, tgt)
    out = outputs(src, spec, tgt)
    assert sorted(out) == sorted(tgt)
    assert np.array_equal(out["conv2d/kernel"], src["0.weight"].transpose(2, 3, 1, 0))
    # 144 inputs after 4 channels: a flattened [4, 6, 6] feature map; a target of shapes alone
    # says no data_format, so Keras' default (channels_last, [6, 6, 4]) orders the rows
    reordered = src["4.weight"].reshape(16, 4, 36).transpose(2, 1, 0).reshape(144, 16)
    assert np.array_equal(out["dense/kernel"], reordered)
    assert np.array_equal(out["dense_1/kernel"], src["6.weight"].T)  # not the first Linear: a transpose
    assert np.array_equal(out["batch_normalization/gamma"], src["1.weight"])
    assert np.array_equal(out["batch_normalization/moving_variance"], src["1.running_var"])
    assert {"drop": "1.num_batches_tracked"} in rules_of(spec)
    assert spec.passthrough is False


def test_batch_counter_is_kept_when_the_target_has_one():
    """PyTorch to PyTorch (a state dict onto its own safetensors twin): num_batches_tracked
    is a variable of the target too, so it is carried, not dropped."""
    src = arrays({"bn.weight": (4,), "bn.bias": (4,), "bn.running_mean": (4,), "bn.running_var": (4,)})
    src["bn.num_batches_tracked"] = np.array(7, dtype=np.int64)
    tgt = {name: TargetTensor(a.shape, a.dtype) for name, a in src.items()}
    suggestion = align(src, tgt)
    assert rules_of(suggestion.spec) == [{"layer": "bn"}]
    assert not suggestion.unfilled and not suggestion.drops
    assert [m.confidence for m in suggestion.matches] == ["sure"]
    assert outputs(src, suggestion.spec, tgt)["bn.num_batches_tracked"] == 7


@pytest.mark.parametrize("ndim", [3, 4, 5])
def test_conv_axes_both_ways(ndim):
    """Conv{1,2,3}d weight [out, in, *k] <-> Keras kernel [*k, in, out]."""
    k = (3, 2, 5)[: ndim - 2]
    torch_shape, keras_shape = (6, 4, *k), (*k, 4, 6)
    src = arrays({"c.weight": torch_shape, "c.bias": (6,)})
    tgt = target({"conv/kernel": keras_shape, "conv/bias": (6,)})
    out = outputs(src, suggest(src, tgt), tgt)
    axes = (*range(2, ndim), 1, 0)
    assert np.array_equal(out["conv/kernel"], src["c.weight"].transpose(axes))
    back_src = {"conv/kernel": out["conv/kernel"], "conv/bias": out["conv/bias"]}
    back_tgt = target({"c.weight": torch_shape, "c.bias": (6,)})
    back = outputs(back_src, suggest(back_src, back_tgt), back_tgt)
    assert np.array_equal(back["c.weight"], src["c.weight"])


def test_square_linear_is_transposed_by_convention():
    """Shapes cannot tell a square matrix's layout; the convention does."""
    src = arrays({"fc.weight": (8, 8), "fc.bias": (8,)})
    tgt = target({"dense/kernel": (8, 8), "dense/bias": (8,)})
    out = outputs(src, suggest(src, tgt), tgt)
    assert np.array_equal(out["dense/kernel"], src["fc.weight"].T)


def test_embedding_and_layernorm():
    src = arrays({"tok.weight": (50, 8), "norm.weight": (8,), "norm.bias": (8,)})
    tgt = target({"embedding/embeddings": (50, 8), "layer_norm/gamma": (8,), "layer_norm/beta": (8,)})
    out = outputs(src, suggest(src, tgt), tgt)
    assert np.array_equal(out["embedding/embeddings"], src["tok.weight"])  # not transposed
    assert np.array_equal(out["layer_norm/gamma"], src["norm.weight"])
    assert np.array_equal(out["layer_norm/beta"], src["norm.bias"])


def test_attention_out_of_order_pairs_by_similar_names():
    """A safetensors file sorts by name (output before self.key before self.query): the
    similar-names pass pairs query with query, and the kernels get transpose + reshape."""
    p = "encoder.layer.0.attention."
    shapes = {f"{p}self.{x}.{w}": ((16, 16) if w == "weight" else (16,)) for x in ("query", "key", "value") for w in ("weight", "bias")}
    shapes |= {f"{p}output.dense.weight": (16, 16), f"{p}output.dense.bias": (16,)}
    src = dict(sorted(arrays(shapes).items()))
    tgt = {}
    for x in ("query", "key", "value"):
        tgt |= target({f"mha/{x}/kernel": (16, 2, 8), f"mha/{x}/bias": (2, 8)})
    tgt |= target({"mha/attention_output/kernel": (2, 8, 16), "mha/attention_output/bias": (16,)})
    suggestion = align(src, tgt)
    out = outputs(src, suggestion.spec, tgt)
    for x in ("query", "key", "value"):
        assert np.array_equal(out[f"mha/{x}/kernel"], src[f"{p}self.{x}.weight"].T.reshape(16, 2, 8))
        assert np.array_equal(out[f"mha/{x}/bias"], src[f"{p}self.{x}.bias"].reshape(2, 8))
    assert np.array_equal(out["mha/attention_output/kernel"], src[f"{p}output.dense.weight"].T.reshape(2, 8, 16))
    assert {m.how for m in suggestion.matches} == {"similar names"}


def test_repeated_blocks_align_by_position():
    """Twelve identical blocks whose names say nothing: the sequence alignment pairs block i
    with block i (any other one-to-one pairing would break the order)."""
    src, tgt_shapes = {}, {}
    for i in range(12):
        src |= arrays({f"b{i}.fc.weight": (8, 8), f"b{i}.fc.bias": (8,)})
        tgt_shapes |= {f"unit_{chr(97 + i)}/kernel": (8, 8), f"unit_{chr(97 + i)}/bias": (8,)}
    tgt = target(tgt_shapes)
    suggestion = align(src, tgt)
    out = outputs(src, suggestion.spec, tgt)
    for i in range(12):
        assert np.array_equal(out[f"unit_{chr(97 + i)}/kernel"], src[f"b{i}.fc.weight"].T)
    assert all(m.how == "position" and m.confidence == "likely" for m in suggestion.matches)


def test_names_win_over_position_and_a_head_of_another_shape_is_left():
    src = arrays({"a/kernel": (4, 8), "a/bias": (8,), "b/kernel": (4, 8), "b/bias": (8,),
                  "head/kernel": (8, 10), "head/bias": (10,)})
    tgt = target({"b/kernel": (4, 8), "b/bias": (8,), "a/kernel": (4, 8), "a/bias": (8,),
                  "head/kernel": (8, 3), "head/bias": (3,)})
    suggestion = align(src, tgt)
    assert rules_of(suggestion.spec) == [{"layer": "b"}, {"layer": "a"}]
    assert [m.how for m in suggestion.matches] == ["names", "names"]
    assert [x.name for x in suggestion.unplaced] == ["head/kernel", "head/bias"]
    assert [x.name for x in suggestion.unfilled] == ["head/kernel", "head/bias"]
    text = suggestion.to_yaml()
    assert "# - {layer: head, to_layer: head}" in text
    assert "#   head/kernel  [8, 3] float32" in text


def test_the_nearest_target_of_a_layer_left_out_is_a_layer_of_its_kind():
    """A PyTorch Conv2d and BatchNorm2d of 8 channels against Keras layers of 16: nothing fits,
    and the rule offered for each names the layer of its kind (the target's sorted names put
    the BatchNorm first, so position alone would offer the convolution for the BatchNorm)."""
    src = arrays({"0.weight": (8, 3, 3, 3), "0.bias": (8,), "1.weight": (8,), "1.bias": (8,),
                  "1.running_mean": (8,), "1.running_var": (8,)})
    src["1.num_batches_tracked"] = np.zeros((), np.int64)
    tgt = target({"batch_normalization/gamma": (16,), "batch_normalization/beta": (16,),
                  "batch_normalization/moving_mean": (16,), "batch_normalization/moving_variance": (16,),
                  "conv2d/kernel": (3, 3, 3, 16), "conv2d/bias": (16,)})
    suggestion = align(src, tgt)
    assert rules_of(suggestion.spec) == [{"drop": "1.num_batches_tracked"}]
    offered = {x.name: x.suggestion for x in suggestion.unplaced}
    # a rule per weight, with the conventions' renames and transposes (a layer rename would
    # name no target variable: conv2d/weight, batch_normalization/running_var)
    assert offered == {
        "0.weight": {"from": "0.weight", "to": "conv2d/kernel", "ops": [{"transpose": [2, 3, 1, 0]}]},
        "0.bias": {"from": "0.bias", "to": "conv2d/bias"},
        "1.weight": {"from": "1.weight", "to": "batch_normalization/gamma"},
        "1.bias": {"from": "1.bias", "to": "batch_normalization/beta"},
        "1.running_mean": {"from": "1.running_mean", "to": "batch_normalization/moving_mean"},
        "1.running_var": {"from": "1.running_var", "to": "batch_normalization/moving_variance"},
    }
    text = suggestion.to_yaml()
    assert "nearest: batch_normalization (gamma [16]" in text and "the shapes differ" in text
    # uncommented, they name target variables: only the shapes are left to fix
    uncommented = text.replace("  # - {", "  - {")
    plan = build_plan(Store.from_arrays(src), load_spec(uncommented), target=tgt)
    assert plan.problems and all("not a weight of the target" not in p for p in plan.problems), plan.problems


def test_a_bias_that_fits_does_not_pair_layers_whose_kernels_differ():
    """Dense [64, 10] and Dense [32, 10] share a bias shape: loading the bias alone would be
    nonsense, so the layers are not paired."""
    src = arrays({"fc/kernel": (64, 10), "fc/bias": (10,)})
    tgt = target({"out/kernel": (32, 10), "out/bias": (10,)})
    suggestion = align(src, tgt)
    assert suggestion.spec.rules == () and len(suggestion.unplaced) == 2 and len(suggestion.unfilled) == 2
    assert load_spec(suggestion.to_yaml()).rules == ()


def test_partial_layer_missing_bias_is_unsure():
    """A Conv2d without bias into a Conv2D with one: the kernel is placed, the bias listed."""
    src = arrays({"conv.weight": (8, 3, 3, 3)})
    tgt = target({"conv2d/kernel": (3, 3, 3, 8), "conv2d/bias": (8,)})
    suggestion = align(src, tgt)
    (match,) = suggestion.matches
    assert match.confidence == "unsure" and "no source for bias" in match.reason
    assert [x.name for x in suggestion.unfilled] == ["conv2d/bias"]


def test_unknown_weight_names_pair_by_index():
    """Names a bare Keras 3 .weights.h5 cannot resolve (a custom layer: ``scale/0``)."""
    src = arrays({"scale/0": (5,), "scale/1": (5,)})
    tgt = target({"my_scale/alpha": (5,), "my_scale/beta_": (5,)})
    out = outputs(src, suggest(src, tgt), tgt)
    assert np.array_equal(out["my_scale/alpha"], src["scale/0"])
    assert np.array_equal(out["my_scale/beta_"], src["scale/1"])


def test_crossed_order_is_repaired_by_the_shapes_pass():
    """The two sides list two layers in opposite orders and the names say nothing: the order
    alignment can take one pair; the last pass takes the other, the only fit left."""
    src = arrays({"p/kernel": (3, 4), "p/bias": (4,), "q/kernel": (5, 6), "q/bias": (6,)})
    tgt = target({"u/kernel": (5, 6), "u/bias": (6,), "v/kernel": (3, 4), "v/bias": (4,)})
    suggestion = align(src, tgt)
    assert sorted((m.source, m.target) for m in suggestion.matches) == [("p", "v"), ("q", "u")]
    assert "shapes" in {m.how for m in suggestion.matches}
    assert not suggestion.unplaced and not suggestion.unfilled


def test_keras2_depthwise_kernel_is_keras3_kernel():
    src = arrays({"depthwise_conv2d/depthwise_kernel": (3, 3, 4, 1), "depthwise_conv2d/bias": (4,)})
    tgt = target({"dw/kernel": (3, 3, 4, 1), "dw/bias": (4,)})
    suggestion = align(src, tgt)
    assert rules_of(suggestion.spec) == [
        {"from": "depthwise_conv2d/depthwise_kernel", "to": "dw/kernel"},
        {"from": "depthwise_conv2d/bias", "to": "dw/bias"},
    ]
    assert "tf-keras -> Keras 3" in suggestion.matches[0].reason


def test_dtype_difference_gets_a_cast():
    src = arrays({"d/kernel": (4, 4), "d/bias": (4,)}, dtype=np.float16)
    tgt = target({"e/kernel": (4, 4), "e/bias": (4,)})
    spec = suggest(src, tgt)
    assert rules_of(spec) == [{"layer": "d", "to_layer": "e", "ops": [{"cast": "float32"}]}]
    out = outputs(src, spec, tgt)
    assert out["e/kernel"].dtype == np.float32


def test_glob_characters_braces_and_yaml_words_in_names_are_literal():
    src = arrays({"w*[x]/kernel": (2, 3), "w*[x]/bias": (3,), "on/kernel": (7, 2), "null/kernel": (2, 9),
                  "x?/kernel": (4, 4), "xy/kernel": (4, 4)})
    tgt = target({"d{1}/kernel": (2, 3), "d{1}/bias": (3,), "no/kernel": (7, 2), "1/kernel": (2, 9),
                  "x?/kernel": (4, 4), "xy/kernel": (4, 4)})
    spec = suggest(src, tgt)
    out = outputs(src, spec, tgt)
    assert np.array_equal(out["d{1}/kernel"], src["w*[x]/kernel"])
    assert np.array_equal(out["no/kernel"], src["on/kernel"]) and np.array_equal(out["1/kernel"], src["null/kernel"])
    assert np.array_equal(out["x?/kernel"], src["x?/kernel"]) and np.array_equal(out["xy/kernel"], src["xy/kernel"])
    assert rules_of(load_spec(align(src, tgt).to_yaml())) == rules_of(spec)


def test_yaml_reads_back_as_the_spec_and_says_why():
    src = arrays({"0.weight": (4, 3, 3, 3), "0.bias": (4,), "9.weight": (7, 7, 7)})
    tgt = target({"conv/kernel": (3, 3, 3, 4), "conv/bias": (4,), "other/kernel": (2, 2)})
    suggestion = align(src, tgt)
    text = suggestion.to_yaml()
    spec = load_spec(text)
    assert rules_of(spec) == rules_of(suggestion.spec) and spec.passthrough is False
    assert "# 0 -> conv: position" in text or "# 0 -> conv: shapes" in text
    assert "Conv2d weight [out, in, *k] -> kernel [*k, in, out]" in text
    assert '# - {layer: "9", to_layer: other}' in text
    assert "#   other/kernel  [2, 2] float32" in text


def test_nothing_in_common():
    suggestion = align(arrays({"a/kernel": (3, 3)}), target({"b/kernel": (4, 4)}))
    assert suggestion.spec.rules == ()
    assert load_spec(suggestion.to_yaml()).rules == ()


def test_writer_sorted_order_is_not_taken_for_the_model_order():
    """The safetensors library writes by dtype, then name: ``10.weight`` before ``2.weight``.
    Eleven identical blocks whose names share nothing with the target's: only the blocks'
    natural order can pair them, and it is used instead of the stored one."""
    src = arrays({f"{i}.weight": (8, 8) for i in range(1, 12)})
    store = Store.from_arrays(dict(sorted(src.items())))  # 1, 10, 11, 2, ...: the library's order
    letters = "abcdefghijk"
    tgt = target({f"unit_{c}/kernel": (8, 8) for c in letters})
    out = outputs(src, suggest(store, tgt), tgt)
    for i, c in enumerate(letters, start=1):
        assert np.array_equal(out[f"unit_{c}/kernel"], src[f"{i}.weight"].T), c


@pytest.mark.parametrize(
    "src, dst, ok",
    [
        ((16, 16), (16, 2, 8), True),
        ((16, 16), (2, 8, 16), True),
        ((16,), (2, 8), True),
        ((3, 3, 1, 32), (3, 3, 32), True),
        ((2, 3), (3, 2), False),
        ((4, 6), (6, 4), False),
        ((2, 3, 4), (6, 4), True),
        ((2, 3, 4), (2, 12), True),
        ((6, 4), (2, 12), False),
        ((0, 4), (4, 0), False),
    ],
)
def test_regroups(src, dst, ok):
    assert regroups(src, dst) is ok


def test_target_may_be_a_checkpoint_store():
    src = arrays({"x.weight": (3, 5), "x.bias": (3,)})
    tgt_store = Store.from_arrays(arrays({"lin/kernel": (5, 3), "lin/bias": (3,)}))
    spec = suggest(src, tgt_store)
    assert rules_of(spec)[0] == {"from": "x.weight", "to": "lin/kernel", "ops": ["transpose"]}


def test_entries_from_a_real_reader_keep_their_layer():
    """A Store's own ``layer`` wins over the name's last separator (a ``layer:`` rule matches it)."""
    entries = [
        Entry("blk.attn.qkv.weight", key="k1", shape=(2, 2), dtype=np.float32, path="x",
              loader=lambda: np.zeros((2, 2), np.float32), layer="blk.attn.qkv", index=0),
    ]
    store = Store(entries, format="memory", path="x")
    spec = suggest(store, target({"blk.attn.qkv.weight": (2, 2)}))
    assert rules_of(spec) == [{"layer": "blk.attn.qkv"}]
    assert ckptconv.build_plan(store, spec).ok


def test_the_check_it_names_fits_the_target(tmp_path):
    """``plan --target`` takes a .keras model only: for a checkpoint target the header's
    check command has no --target."""
    import safetensors.numpy

    src = arrays({"fc.weight": (3, 2), "fc.bias": (3,)})
    st = tmp_path / "target.safetensors"
    safetensors.numpy.save_file({"dense/kernel": np.zeros((2, 3), np.float32), "dense/bias": np.zeros(3, np.float32)}, str(st))
    suggestion = align(src, st)
    assert suggestion.target_file is False
    text = suggestion.to_yaml(spec_name="s.yaml")
    assert "Check it with: ckptconv plan <memory> --map s.yaml\n" in text.replace("\n#   ", " ")
    assert "--target" not in text
    assert rules_of(load_spec(text)) == [
        {"from": "fc.weight", "to": "dense/kernel", "ops": ["transpose"]}, {"from": "fc.bias", "to": "dense/bias"},
    ]

