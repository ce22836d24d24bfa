"""The worked examples of docs/cookbook-mapping.md, on files written by Keras 3, tf-keras and
safetensors (tests/generators/gen_mapping.py), with the spec files under examples/specs/."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

import ckptconv
from ckptconv.mapping import Rule, Spec, TargetTensor, build_plan, load_spec
from tests.helpers import run_cli
from tests.helpers import assert_bit_exact, load_expected

SPECS = Path(__file__).parent.parent / "examples" / "specs"


@pytest.fixture(scope="module")
def files(generated):
    return generated("mapping")


def expected(directory: Path, label: str) -> dict[str, np.ndarray]:
    return {r.name: r.array for r in load_expected(directory, label)}


def target_of(directory: Path, label: str) -> dict[str, TargetTensor]:
    """The target a live model of the record would give: names, shapes and dtypes."""
    return {name: TargetTensor(a.shape, a.dtype) for name, a in expected(directory, label).items()}


def computed(plan) -> dict[str, np.ndarray]:
    plan.raise_if_problems()
    return {o.name: o.compute() for o in plan.outputs}


# -- the seed question ------------------------------------------------------------------------


def test_load_specific_layers(files):
    want = expected(files, "seq3")
    with ckptconv.open(files / "seq3.weights.h5") as store:
        plan = build_plan(store, SPECS / "seed-load-specific-layers.yaml", target=target_of(files, "seq3"))
        out = computed(plan)
    assert list(out) == ["dense_1/kernel", "dense_1/bias", "dense_3/kernel", "dense_3/bias"]
    for name, array in out.items():
        assert_bit_exact(array, want[name], name)
    assert plan.report.missing == ["dense_2/kernel", "dense_2/bias"]  # left as the model has them
    assert plan.report.dropped == ["dense_2/kernel", "dense_2/bias"]


def test_transfer_pretrained_conv_into_a_model_with_other_layers(files):
    want = expected(files, "pretrained")
    target = target_of(files, "transfer_target")
    with ckptconv.open(files / "pretrained.weights.h5") as store:
        plan = build_plan(store, SPECS / "seed-transfer-conv.yaml", target=target)
        out = computed(plan)
        strict = build_plan(store, SPECS / "seed-transfer-conv.yaml", target=target, strict=True)
    assert list(out) == ["conv_1/kernel", "conv_1/bias"]
    assert_bit_exact(out["conv_1/kernel"], want["conv_1_pretrained/kernel"])
    assert_bit_exact(out["conv_1/bias"], want["conv_1_pretrained/bias"])
    assert plan.report.missing == ["dense_1/kernel", "dense_1/bias", "dense_2/kernel", "dense_2/bias"]
    assert plan.report.dropped == ["dense_pretrained/kernel", "dense_pretrained/bias"]
    assert plan.report.unused == []
    # loading strictly asks for every target weight: the new head is reported, once
    assert len(strict.problems) == 1 and "4 target weight(s) nothing fills" in strict.problems[0]


def test_kernel_only_keeps_the_bias(files):
    want = expected(files, "conv_test")
    with ckptconv.open(files / "conv_test.weights.h5") as store:
        plan = build_plan(store, SPECS / "seed-kernel-only.yaml", target=target_of(files, "conv_test"))
        out = computed(plan)
    assert list(out) == ["conv_layer_test/kernel"]
    assert_bit_exact(out["conv_layer_test/kernel"], want["conv_layer_test/kernel"])
    assert plan.report.missing == ["conv_layer_test/bias"]
    assert {s.name: s.status for s in plan.report.sources} == {
        "conv_layer_test/kernel": "used",
        "conv_layer_test/bias": "dropped",
    }


# -- PyTorch layout -> Keras ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "spec"),
    [("torch_layout.safetensors", "pytorch-to-keras.yaml"), ("torch_fused.safetensors", "fused-qkv.yaml")],
)
def test_pytorch_layout_onto_keras_names_and_layouts(files, checkpoint, spec):
    """The Keras model's weights after a hand-written converter (checked in the generator by a
    forward pass against PyTorch's semantics) are what the spec produces, bit for bit."""
    want = expected(files, "torch_target")
    with ckptconv.open(files / checkpoint) as store:
        plan = build_plan(store, SPECS / spec, target=target_of(files, "torch_target"), strict=True)
        out = computed(plan)
    assert sorted(out) == sorted(want)
    for name, array in out.items():
        assert_bit_exact(array, want[name], name)
    assert plan.report.dropped == ["features.1.num_batches_tracked"]


def test_pytorch_layout_with_reshape_target_in_python(files):
    """The same mapping built in Python, with the attention shapes taken from the target."""
    want = expected(files, "torch_target")
    base = load_spec(SPECS / "pytorch-to-keras.yaml")
    rules = []
    for rule in base.rules:
        if rule.to and str(rule.to).startswith("mha/"):
            ops = [op for op in rule.ops if op.name != "reshape"] + [{"reshape": "target"}]
            rule = Rule(from_=rule.from_, to=rule.to, ops=ops)
        rules.append(rule)
    spec = Spec(rules=rules, passthrough=False)
    with ckptconv.open(files / "torch_layout.safetensors") as store:
        out = computed(build_plan(store, spec, target=target_of(files, "torch_target"), strict=True))
        without_target = build_plan(store, spec)
    for name, array in out.items():
        assert_bit_exact(array, want[name], name)
    assert sum("reshape: target needs a target" in p for p in without_target.problems) == 8  # every mha weight


# -- Keras 2 -> Keras 3 -----------------------------------------------------------------------


def test_keras2_h5_renamed_onto_keras3_model(files, tmp_path):
    want = expected(files, "keras3_target")
    with ckptconv.open(files / "keras2.h5") as store:
        plan = build_plan(store, SPECS / "keras2-to-keras3.json", target=target_of(files, "keras3_target"), strict=True)
        out = computed(plan)
    assert list(out) == list(want)
    for name, array in out.items():
        assert_bit_exact(array, want[name], name)
    assert all(o.source is not None for o in plan.outputs)  # renamed, bytes unchanged
    # and through the command line, into a safetensors file
    dst = tmp_path / "migrated.safetensors"
    proc = run_cli("convert", files / "keras2.h5", dst, "--map", SPECS / "keras2-to-keras3.json")
    assert proc.returncode == 0, proc.stderr
    written = safetensors.numpy.load_file(str(dst))
    assert sorted(written) == sorted(want)
    for name, array in want.items():
        assert_bit_exact(written[name], array, name)


# -- casts ------------------------------------------------------------------------------------


def _bf16_oracle(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).view(ml_dtypes.bfloat16)


def _fp16_oracle(x: np.ndarray) -> np.ndarray:
    raw = b"".join(struct.pack("<e", float(v)) for v in x.ravel())
    return np.frombuffer(raw, dtype="<f2").reshape(x.shape)


def test_cast_to_bfloat16_except_batchnorm_variance(files, tmp_path):
    want = expected(files, "keras2")
    dst = tmp_path / "bf16.safetensors"
    proc = run_cli("convert", files / "keras2.h5", dst, "--map", SPECS / "cast-bfloat16.yaml")
    assert proc.returncode == 0, proc.stderr
    with ckptconv.open(dst) as written:
        got = {name: written[name].read() for name in written}
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        if name.endswith("moving_variance"):
            assert_bit_exact(got[name], array, name)  # the rule's explicit float32 wins
        else:
            assert_bit_exact(got[name], _bf16_oracle(array), name)


def test_cast_to_float16_keeps_integers(files):
    with ckptconv.open(files / "torch_layout.safetensors") as store:
        plan = build_plan(store, SPECS / "cast-float16.toml")
        out = computed(plan)
        for name in store:
            source = store[name].read()
            if source.dtype.kind == "f":
                assert_bit_exact(out[name], _fp16_oracle(source), name)
            else:
                assert_bit_exact(out[name], source, name)


def test_float16_overflow_fails_the_conversion_and_writes_nothing(tmp_path):
    src = tmp_path / "big.safetensors"
    safetensors.numpy.save_file({"ok": np.ones(3, np.float32), "big": np.array([1.0, 1e5], np.float32)}, str(src))
    dst = tmp_path / "out.safetensors"
    proc = run_cli("convert", src, dst, "--map", SPECS / "cast-float16.toml")
    assert proc.returncode == 1
    assert "'big'" in proc.stderr and "overflow to inf in float16" in proc.stderr
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == [src]


# -- a typo in a pattern ----------------------------------------------------------------------


def test_typo_in_a_pattern_fails_plan_and_convert_naming_the_nearest_names(files, tmp_path):
    spec = tmp_path / "typo.yaml"
    spec.write_text("passthrough: false\nrules:\n  - layer: conv_1_pretraind\n    to_layer: conv_1\n")
    proc = run_cli("plan", files / "pretrained.weights.h5", "--map", spec)
    assert proc.returncode == 1
    line = next(l for l in proc.stderr.splitlines() if "rule #1" in l)
    assert "rule #1 (layer 'conv_1_pretraind'): matches no entry" in line
    assert "nearest layers in the source: 'conv_1_pretrained'" in line
    assert "1 problem(s)" in proc.stdout  # the report is printed too
    dst = tmp_path / "out.safetensors"
    proc = run_cli("convert", files / "pretrained.weights.h5", dst, "--map", spec)
    assert proc.returncode == 1
    assert "conv_1_pretraind" in proc.stderr and "conv_1_pretrained" in proc.stderr
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]


def test_plan_json_with_a_keras_target(files):
    """``plan --target MODEL.keras`` builds the target with Keras (in the CLI's process) and is
    strict like load_into: the new model's head, which nothing fills, fails the plan."""
    proc = run_cli(
        "plan", files / "pretrained.weights.h5", "--map", SPECS / "seed-transfer-conv.yaml",
        "--target", files / "transfer_target.keras", "--json",
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert report["missing"] == ["dense_1/kernel", "dense_1/bias", "dense_2/kernel", "dense_2/bias"]
    assert report["mismatched"] == [] and report["unused"] == []
    assert [o["name"] for o in report["outputs"]] == ["conv_1/kernel", "conv_1/bias"]
    assert report["problems"] == [
        "4 target weight(s) nothing fills: 'dense_1/kernel', 'dense_1/bias', 'dense_2/kernel', 'dense_2/bias'"
    ]
    assert "ckptconv: plan: 4 target weight(s) nothing fills" in proc.stderr


# -- Hugging Face BERT -> keras-hub -----------------------------------------------------------


def test_hugging_face_bert_onto_keras_hub_backbone(files):
    """keras-hub's own converter (BertBackbone.from_preset on the HF directory) is the oracle."""
    if not (files / "bert_keras_hub.expected.json").exists():
        pytest.skip("keras-hub is not installed where the fixtures were generated")
    want = expected(files, "bert_keras_hub")
    target = target_of(files, "bert_keras_hub")
    spec = load_spec(SPECS / "bert-to-keras-hub.yaml")
    with ckptconv.open(files / "hf_bert" / "model.safetensors") as store:
        plan = build_plan(store, spec, target=target, strict=True)
        out = computed(plan)
        without_target = build_plan(store, spec)
        # the same weights under a BertFor* checkpoint's "bert." prefix, LayerNorm as gamma/beta
        renamed = {}
        for name in store:
            new = "bert." + name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            renamed[new] = store[name].read()
    assert sorted(out) == sorted(want)
    for name, array in out.items():
        assert_bit_exact(array, want[name], name)
    assert plan.report.dropped == ["embeddings.position_ids"]
    assert any("reshape: target needs a target" in p for p in without_target.problems)
    prefixed = build_plan(ckptconv.Store.from_arrays(renamed), spec, target=target, strict=True)
    for name, array in computed(prefixed).items():
        assert_bit_exact(array, want[name], name)


def test_keras_to_pytorch_layout_of_the_sample(tmp_path: Path) -> None:
    """examples/specs/keras-to-pytorch.yaml on the sample Keras model (docs/cookbook.md): every
    PyTorch tensor is its Keras weight, transposed as torch lays it out, bit for bit."""
    sample = Path(__file__).parent.parent / "examples" / "sample.keras"
    dst = tmp_path / "torch.safetensors"
    ckptconv.convert(sample, dst, mapping=SPECS / "keras-to-pytorch.yaml", metadata={"format": "pt"})
    out = safetensors.numpy.load_file(str(dst))
    with ckptconv.open(sample) as store:
        keras = {e.name: e.read() for e in store.entries()}
    want = {}
    for name, value in keras.items():
        layer, weight = name.rsplit("/", 1)
        torch_layer = layer.replace("/", ".")
        if weight == "kernel":
            want[f"{torch_layer}.weight"] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        else:
            torch_name = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                          "moving_variance": "running_var"}.get(weight, weight)
            want[f"{torch_layer}.{torch_name}"] = value
    assert sorted(out) == sorted(want)
    for name, value in want.items():
        assert_bit_exact(out[name], np.ascontiguousarray(value), name)
