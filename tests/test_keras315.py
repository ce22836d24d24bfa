"""What Keras 3.14-3.15 writes to HDF5: quantized layers, nested containers, unzipped ``.keras``
directories. Fixtures from ``generators/gen_keras315.py`` (Keras 3.15 itself); the oracle is
what Keras' own loader put in a fresh model, compared bit-exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from ckptconv.formats._keras_quantized import quantization_mode, quantized_names
from tests.generators.gen_keras315 import QUANT_MODES, build_nested, build_quantizable, quantize
from tests.helpers import assert_bit_exact, load_expected, run_cli

# file (relative to the fixture directory) -> its expected label
QUANTIZED = {
    **{f"q_{m}.keras": f"q_{m}.keras" for m in QUANT_MODES},
    **{f"q_{m}": f"q_{m}" for m in QUANT_MODES},
    **{f"q_{m}.weights.h5": f"q_{m}.weights.h5" for m in QUANT_MODES},
    "q_mha_int8.weights.h5": "q_mha_int8.weights.h5",
    "q_mha_int4.weights.h5": "q_mha_int4.weights.h5",
}
NESTED = {"nested.weights.h5": "nested.weights.h5", "nested.keras": "nested.keras", "nested": "nested"}
FORMATS = {".keras": "keras-archive", ".weights.h5": "keras-weights-h5", "": "keras-archive"}


def keras_version() -> str:
    from importlib.metadata import version

    return version("keras")


def fmt_of(name: str) -> str:
    return next(f for suffix, f in FORMATS.items() if name.endswith(suffix))


@pytest.fixture(scope="module")
def k315(generated) -> Path:
    return generated("keras315")


@pytest.mark.parametrize("filename", [*QUANTIZED, *NESTED])
def test_every_variable_named_and_read_as_keras_loads_it(k315: Path, filename: str) -> None:
    expected = load_expected(k315, {**QUANTIZED, **NESTED}[filename])
    with ckptconv.open(k315 / filename) as store:
        assert store.format == fmt_of(filename)
        weights = {e.name: e for e in store.entries()}
        assert sorted(weights) == sorted(x.name for x in expected)
        for want in expected:
            entry = weights[want.name]
            assert entry.kind == "weight" and entry.layer == want.layer, want.name
            assert_bit_exact(entry.read(), want.array, want.name)


def test_quantized_layers_keep_their_stored_dtypes(k315: Path) -> None:
    """int8 kernels, int4 packed two to a byte in int8, bf16 biases: nothing is widened."""
    with ckptconv.open(k315 / "q_int4.keras") as store:
        kernel, zero = store["fc1/kernel"], store["fc1/kernel_zero"]
        assert kernel.dtype == np.int8 and zero.dtype == np.int8
        assert kernel.shape == (34, (7 + 1) // 2)  # 7 units, two nibbles per byte
        assert store["head/bias"].dtype_name == "bfloat16"
        assert store["fc1/g_idx"].shape == (34,)
    with ckptconv.open(k315 / "q_float8.keras") as store:
        assert store["fc1/kernel"].dtype == np.float32  # float8 keeps the float kernel
        assert store["fc1/kernel_amax_history"].shape == (1024,)


@pytest.mark.parametrize("filename", ["q_int8.keras", "q_int4_b4.weights.h5", "q_float8", "nested.keras"])
def test_convert_keeps_the_stored_dtypes(k315: Path, tmp_path: Path, filename: str) -> None:
    out = tmp_path / "out.safetensors"
    proc = run_cli("convert", k315 / filename, out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    expected = load_expected(k315, {**QUANTIZED, **NESTED}[filename])
    with ckptconv.open(out) as back:
        assert sorted(back) == sorted(x.name for x in expected)
        for want in expected:
            assert_bit_exact(back[want.name].read(), want.array, want.name)


@pytest.mark.parametrize("stem", ["q_int8", "q_int4", "nested"])
def test_unzipped_directory_reads_exactly_like_the_archive(k315: Path, stem: str) -> None:
    with ckptconv.open(k315 / f"{stem}.keras") as archive, ckptconv.open(k315 / stem) as directory:
        assert directory.format == archive.format == "keras-archive"
        assert directory.metadata.keys() == archive.metadata.keys()  # each has its own save date
        assert directory.metadata["keras_version"] == archive.metadata["keras_version"] == keras_version()
        a, d = archive.entries(include_all=True), directory.entries(include_all=True)
        assert [e.describe() for e in d] == [e.describe() for e in a]
        weights_file = str((k315 / stem / "model.weights.h5").resolve())
        for ea, ed in zip(a, d):
            # the same fast path: every tensor a byte range of model.weights.h5 itself
            assert ed.byte_range is not None and ed.byte_range.path == weights_file
            assert ed.byte_range.length == ea.byte_range.length
            assert_bit_exact(ed.read(), ea.read(), ed.name)
        assert set(directory.files) == {
            str((k315 / stem / n).resolve()) for n in ("model.weights.h5", "config.json", "metadata.json")
        }


def test_nested_containers_are_named_by_layer(k315: Path) -> None:
    """Keras 3.15 keys layers in nested lists ``container/dense_1``: the class key, not an
    attribute name, so the variables still get their names (not ``0``, ``1``)."""
    import h5py

    with h5py.File(k315 / "nested.weights.h5", "r") as f:
        assert "layers/stack/groups/container_1/container/dense/vars" in f  # [[...], [g1a, [deep]]]
        assert "layers/stack/groups/container/dense_1/vars" in f
    with ckptconv.open(k315 / "nested.weights.h5") as store:
        assert {"stack/g0b/kernel", "stack/g0b/bias", "stack/deep/kernel", "stack/gx/gamma"} <= set(store)
        assert not [n for n in store if n.rsplit("/", 1)[-1].isdigit()]


@pytest.mark.parametrize("filename", ["nested_npz.keras", "nested_npz"])
def test_npz_weights_are_refused_in_one_line(k315: Path, filename: str) -> None:
    proc = run_cli("inspect", k315 / filename)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "weights_format='npz'" in proc.stderr
    assert str(k315 / filename) in proc.stderr and "Traceback" not in proc.stderr


# -- GPTQ / AWQ: what Keras 3.15.1 writes and cannot read back ------------------------------------


@pytest.mark.parametrize("mode", ["gptq", "awq"])
def test_gptq_awq_named_as_saved(k315: Path, mode: str) -> None:
    meta = json.loads((k315 / f"{mode}.weights.h5.expected.json").read_text())
    expected = load_expected(k315, f"{mode}.weights.h5")
    with ckptconv.open(k315 / f"{mode}.weights.h5") as store:
        assert sorted(e.name for e in store.entries()) == sorted(x.name for x in expected)
        for want in expected:
            assert_bit_exact(store[want.name].read(), want.array, want.name)
        assert store["block/d1/kernel"].dtype == np.uint8  # the packed 4-bit kernel
    # Keras writes no zero points for these modes, and so cannot load its own file
    assert sorted(meta["unsaved"]) == ["block/d1/kernel_zero", "block/e1/zero_point"]
    assert "could not be loaded" in meta["keras_load_error"]


# -- load_into a fresh quantized model ------------------------------------------------------------


keras = pytest.importorskip("keras")


def _values(model) -> dict[str, np.ndarray]:
    from ckptconv.keras.targets import LiveModel

    return {v.name: np.array(v.variable.numpy()) for v in LiveModel(model).vars}


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_load_into_fresh_quantized_model_equals_keras_load(k315: Path, mode: str) -> None:
    model = build_quantizable(keras, mode)
    initial = model.get_weights()
    for filename in (f"q_{mode}.keras", f"q_{mode}", f"q_{mode}.weights.h5"):
        model.set_weights(initial)
        expected = {x.name: x.array for x in load_expected(k315, filename)}
        before = _values(model)
        assert sorted(before) == sorted(expected)
        assert any(before[n].tobytes() != expected[n].tobytes() for n in expected), "not fresh"
        report = ckptconv.load_into(model, k315 / filename)
        assert report.ok and report.applied and len(report.loaded) == len(expected), report.format_table()
        for name, value in _values(model).items():
            assert_bit_exact(value, expected[name], f"{filename}: {name}")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_load_into_quantized_attention(k315: Path, mode: str) -> None:
    model = build_quantizable(keras, mode, attention=True)
    expected = {x.name: x.array for x in load_expected(k315, f"q_mha_{mode}.weights.h5")}
    report = ckptconv.load_into(model, k315 / f"q_mha_{mode}.weights.h5")
    assert report.ok and len(report.loaded) == len(expected)
    assert "mha/query/kernel_scale" in expected
    for name, value in _values(model).items():
        assert_bit_exact(value, expected[name], name)


@pytest.mark.parametrize("filename", list(NESTED))
def test_load_into_nested_containers(k315: Path, filename: str) -> None:
    model = build_nested(keras)
    expected = {x.name: x.array for x in load_expected(k315, filename)}
    report = ckptconv.load_into(model, k315 / filename)
    assert report.ok and len(report.loaded) == len(expected)
    for name, value in _values(model).items():
        assert_bit_exact(value, expected[name], name)


def test_quantizing_by_hand_matches_the_fixture_builder() -> None:
    """The tests' fresh models quantize as the generator's did (same layers, same names)."""
    model = build_quantizable(keras)
    quantize(keras, model, "int8")
    names = {v.path for v in model.weights}
    assert {"fc1/kernel_scale", "remb/reverse_embeddings_scale", "ein_nb/kernel_scale"} <= names


# -- dequantize: int8 to float with a spec --------------------------------------------------------

DEQUANTIZE_SPEC = {
    "rules": [
        {"from": ["re:(.*)/kernel", "re:(.*)/kernel_scale"], "to": "{1}/kernel", "dequantize": {}},
        {"from": ["re:(.*)/embeddings", "re:(.*)/embeddings_scale"], "to": "{1}/embeddings", "dequantize": {"axis": 0}},
        {"from": ["re:(.*)/reverse_embeddings", "re:(.*)/reverse_embeddings_scale"], "to": "{1}/reverse_embeddings", "dequantize": {}},
    ]
}


def test_dequantize_gives_keras_float_weights(k315: Path) -> None:
    expected = load_expected(k315, "q_int8.dequantized")
    assert len(expected) == 9
    with ckptconv.open(k315 / "q_int8.keras") as store:
        plan = ckptconv.mapping.build_plan(store, DEQUANTIZE_SPEC)
        plan.raise_if_problems()
        outputs = {o.name: o for o in plan.outputs}
        for want in expected:
            assert_bit_exact(outputs[want.name].compute(), want.array, want.name)
        # the float model's other weights pass through unchanged; no scale is left over
        assert not [n for n in outputs if n.endswith("_scale")]


def test_dequantize_refuses_what_does_not_fit(k315: Path) -> None:
    with ckptconv.open(k315 / "q_int8.keras") as store:
        wrong_axis = {"rules": [{"from": ["emb/embeddings", "emb/embeddings_scale"], "to": "emb/embeddings", "dequantize": {}}]}
        problems = ckptconv.mapping.build_plan(store, wrong_axis).problems
        assert any("does not broadcast" in p and "axis" in p for p in problems), problems
        swapped = {"rules": [{"from": ["fc1/kernel_scale", "fc1/kernel"], "to": "fc1/kernel", "dequantize": {}}]}
        problems = ckptconv.mapping.build_plan(store, swapped).problems
        assert any("not an integer tensor" in p for p in problems), problems
    with pytest.raises(ckptconv.SpecError, match="dequantize: unknown key"):
        ckptconv.mapping.load_spec({"rules": [{"from": ["a", "b"], "to": "c", "dequantize": {"scale": 1}}]})


# -- the naming rule itself -----------------------------------------------------------------------


def test_mode_from_every_dtype_policy_form() -> None:
    def policy(cls: str, **config: object) -> dict:
        return {"dtype": {"class_name": cls, "config": config}}

    assert quantization_mode(policy("QuantizedDTypePolicy", mode="int8", source_name="float32")) == "int8"
    assert quantization_mode(policy("Int4DTypePolicy", mode="int4/128", source_name="float32")) == "int4"
    assert quantization_mode(policy("GPTQDTypePolicy", mode="gptq/4/8", source_name="float32")) == "gptq"
    assert quantization_mode(policy("QuantizedDTypePolicy", name="int8_from_bfloat16")) == "int8"
    assert quantization_mode({"dtype": "float8_from_float32"}) == "float8"
    assert quantization_mode(policy("DTypePolicy", name="mixed_bfloat16")) is None
    assert quantization_mode({}) is None


def test_ambiguous_readings_fall_back_to_indices() -> None:
    f32, i8 = np.dtype("float32"), np.dtype("int8")
    # a Dense with an int8 kernel, its bias and its scale
    assert quantized_names("dense", [(i8, (4, 3)), (f32, (3,)), (f32, (3,))]) == ["kernel", "bias", "kernel_scale"]
    # the config settles what the stored dtypes cannot: a float Dense is left to the general table
    assert quantized_names("dense", [(f32, (4, 3)), (f32, (3,))]) is None
    # nothing fits: no names rather than wrong ones
    assert quantized_names("dense", [(i8, (4, 3))]) is None
    # a layer of unknown class with float variables only is never named as a quantized one
    assert quantized_names("my_layer", [(f32, (4, 3)), (f32, ())] + [(f32, (1024,)), (f32, ())] * 3) is None


def test_readings_remembered_per_slot_list_match_a_fresh_enumeration() -> None:
    """The saved lists of each (slot list, known options) are enumerated once and reused for
    every layer: readings, asked twice, equal those of a plain enumeration of every choice,
    for every class, mode, option set and many stored lists (dtypes and shapes)."""
    import itertools

    from ckptconv.formats import _keras_quantized as q

    def fresh(slots, stored, known):
        free = sorted({g for s in slots for g in s.groups} - set(known))
        found = set()
        for choice in itertools.product((False, True), repeat=len(free)):
            present = dict(known, **dict(zip(free, choice)))
            kept = [s for s in slots if all(present[g] for g in s.groups)]
            if len(kept) != len(stored):
                continue
            named = {s.name: st[1] for s, st in zip(kept, stored)}
            if all(q._fits(s, st, named) for s, st in zip(kept, stored)):
                found.add(tuple(s.name for s in kept))
        return found

    rng = np.random.default_rng(5)
    dtypes = [np.dtype(d) for d in ("float32", "int8", "uint8", "float16")]
    shapes = [(), (3,), (4, 3), (3, 4), (2, 4, 3)]
    groups = sorted({g for table in q.QUANTIZED_VARIABLES.values() for slots in table.values()
                     for s in slots for g in s.groups})
    checked = hits = 0
    for table in q.QUANTIZED_VARIABLES.values():
        for slots in table.values():
            for known in [{}, *({g: v} for g in groups for v in (False, True)), dict.fromkeys(groups, True)]:
                for _ in range(12):
                    n = int(rng.integers(1, len(slots) + 2))
                    stored = [(dtypes[int(rng.integers(len(dtypes)))], shapes[int(rng.integers(len(shapes)))])
                              for _ in range(n)]
                    if rng.random() < 0.5:  # a list that fits: the slots' own dtypes
                        stored = [(np.dtype("float32") if s.dtype == "float" else np.dtype(s.dtype), (4, 3))
                                  for s in slots[:n]]
                    want = fresh(slots, stored, known)
                    assert q._readings(slots, stored, known) == want
                    assert q._readings(slots, stored, known) == want  # from the remembered lists
                    checked += 1
                    hits += bool(want)
    assert checked > 1000 and hits > 50
    # an equal but distinct slot list is not mistaken for a remembered one (identity, not id reuse)
    copy = tuple(q.Slot(s.name, s.dtype, s.groups, s.shape) for s in q.QUANTIZED_VARIABLES["dense"]["int8"])
    f32, i8 = np.dtype("float32"), np.dtype("int8")
    assert q._readings(copy, [(i8, (4, 3)), (f32, (3,))], {}) == {("kernel", "kernel_scale")}


def test_quantized_names_answer_repeated_layers_alike() -> None:
    """Answers are remembered per class, stored list, mode and options: asked again (or with
    the cache emptied) they are the same, a caller changing the list it got changes nothing,
    and a config that fixes other options still gets its own answer."""
    from ckptconv.formats import _keras_quantized as q

    f32, i8 = np.dtype("float32"), np.dtype("int8")
    int8_policy = {"dtype": {"class_name": "DTypePolicy", "config": {"name": "int8_from_float32"}}}
    cases = [
        ("dense", [(i8, (4, 3)), (f32, (3,)), (f32, (3,))], None),
        ("dense", [(i8, (4, 3)), (f32, (3,))], None),
        ("dense", [(i8, (4, 3)), (f32, (3,))], {**int8_policy, "use_bias": False}),
        ("dense", [(i8, (4, 3)), (f32, (3,))], {**int8_policy, "use_bias": True}),
        ("dense", [(f32, (4, 3)), (f32, (3,))], None),
        ("my_layer", [(i8, (4, 3)), (f32, (3,))], None),
        ("einsum_dense", [(i8, (4, 3)), (f32, (3,)), (f32, (3,))], None),
    ]
    q._NAMES.clear()
    first = [q.quantized_names(*case) for case in cases]
    again = [q.quantized_names(*case) for case in cases]
    q._NAMES.clear()
    fresh = [q.quantized_names(*case) for case in cases]
    assert first == again == fresh
    assert first[2] == ["kernel", "kernel_scale"] and first[3] is None  # use_bias decides
    assert first[0] == ["kernel", "bias", "kernel_scale"]
    fresh[0].append("changed")  # the list of the answer remembered now
    assert q.quantized_names(*cases[0]) == ["kernel", "bias", "kernel_scale"]
