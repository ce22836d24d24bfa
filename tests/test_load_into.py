"""load_into: every format into freshly built Keras 3 and tf-keras twins, bit-exact; strictness,
the check-first pass, match by order, dtypes, freeze, the report.

Fixtures come from ``generators/gen_load.py`` (real Keras 3, tf-keras and TensorFlow writers);
the twins here are built from the same ``build_*`` functions, and every variable is compared
with what the writer's live model held.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from ckptconv import LoadError, LoadReport, Store, load_into
from ckptconv.keras import model_targets
from tests.generators.gen_load import build_keras3, build_tf_keras
from tests.helpers import assert_bit_exact, load_expected

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

LINES = ["keras", "tf_keras"]

# Every source file gen_load writes, and what wrote it.
SOURCES = {
    "k3.weights.h5": "Keras 3 save_weights (.weights.h5)",
    "k3sharded.weights.json": "Keras 3 sharded save_weights (.weights.json)",
    "k3.keras": "Keras 3 model.save (.keras)",
    "k3legacy.h5": "Keras 3 legacy model.save (.h5)",
    "tk.h5": "tf-keras model.save (.h5)",
    "tkw.h5": "tf-keras save_weights (.h5)",
    "k3ckpt": "tf.train.Checkpoint of the Keras 3 model",
    "k3.safetensors": "safetensors.numpy.save_file",
}


@pytest.fixture(scope="module")
def fixtures(generated) -> Path:
    return generated("load")


@pytest.fixture(scope="module")
def expected(fixtures) -> dict[str, np.ndarray]:
    return {e.name: e.array for e in load_expected(fixtures, "source")}


def fresh_twin(line: str):
    """A newly built twin; clear_session resets Keras' automatic names between builds."""
    module = keras if line == "keras" else tf_keras
    module.backend.clear_session()
    return (build_keras3 if line == "keras" else build_tf_keras)(module)


_TWINS: dict[str, tuple[object, list[np.ndarray]]] = {}


def twin(line: str):
    """One twin per Keras line, reset to its initial values and all-trainable on every call
    (building costs more than the load itself; the format tests build fresh ones)."""
    if line not in _TWINS:
        model = fresh_twin(line)
        _TWINS[line] = (model, [w.copy() for w in model.get_weights()])
    model, initial = _TWINS[line]
    model.trainable = False  # setting True on a model that already is does not propagate
    model.trainable = True
    model.set_weights(initial)
    return model


def variables_by_name(model) -> dict[str, np.ndarray]:
    """Every variable's current value, by the canonical name (same order as model_targets)."""
    from ckptconv.keras.targets import LiveModel

    return {v.name: np.array(v.variable.numpy()) for v in LiveModel(model).vars}


def assert_all_equal(model, expected: dict[str, np.ndarray]) -> None:
    actual = variables_by_name(model)
    assert sorted(actual) == sorted(expected)
    for name, value in actual.items():
        assert_bit_exact(value, expected[name], name)


SOURCE_PARAMS = SOURCES


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("source", SOURCE_PARAMS)
def test_every_format_into_both_twins_bit_exact(fixtures, expected, line, source):
    store = ckptconv.open(fixtures / source)
    model = fresh_twin(line)
    before = variables_by_name(model)
    assert any(before[n].tobytes() != expected[n].tobytes() for n in before), "twin not fresh"
    with store:
        report = load_into(model, store)
    assert report.ok and report.applied, report.format_table()
    assert len(report.loaded) == len(expected)
    assert_all_equal(model, expected)


@pytest.mark.parametrize("line", LINES)
def test_load_from_path_and_from_arrays(fixtures, expected, line):
    model = twin(line)
    load_into(model, str(fixtures / "k3.weights.h5"))
    assert_all_equal(model, expected)

    model = twin(line)
    report = load_into(model, dict(expected))
    assert report.ok
    assert_all_equal(model, expected)


def test_targets_have_the_names_files_record(fixtures, expected):
    for line in LINES:
        targets = model_targets(twin(line))
        assert list(targets) == list(expected)  # names and the model's weight order
        for name, target in targets.items():
            assert tuple(target.shape) == expected[name].shape
            assert np.dtype(target.dtype) == expected[name].dtype


# ---------------------------------------------------------------------------------------------
# all or nothing


def broken_source(expected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Three problems: a wrong shape, a missing weight, an unused weight."""
    arrays = dict(expected)
    arrays["conv/kernel"] = np.zeros((3, 3, 1, 4), np.float32)
    del arrays["head/bias"]
    arrays["head/extra"] = np.zeros((2,), np.float32)
    return arrays


@pytest.mark.parametrize("line", LINES)
def test_strict_failure_lists_every_problem_and_changes_nothing(expected, line):
    model = twin(line)
    before = variables_by_name(model)
    with pytest.raises(LoadError, match="3 problems.*nothing was changed") as info:
        load_into(model, broken_source(expected))
    problems = "\n".join(info.value.problems)
    assert "conv/kernel" in problems and "head/bias" in problems and "head/extra" in problems
    report = info.value.report
    assert [m.name for m in report.mismatched] == ["conv/kernel"]
    assert [w.name for w in report.missing] == ["head/bias"]
    assert [w.name for w in report.unused] == ["head/extra"]
    assert not report.applied
    assert_all_equal(model, before)


@pytest.mark.parametrize("line", LINES)
def test_a_read_failing_midway_changes_no_variable(expected, line):
    """The plan is fine, but the last tensor cannot be read: the check pass finds it before
    any variable is assigned."""
    entries = []
    for name, array in expected.items():
        def loader(a=array, n=name):
            if n == "head/bias":
                raise ckptconv.CorruptFileError("simulated damaged tensor", path="x", tensor=n)
            return a.copy()

        entries.append(
            ckptconv.Entry(name, key=name, shape=array.shape, dtype=array.dtype, path="x", loader=loader)
        )
    store = Store(entries, format="memory", path="x")
    model = twin(line)
    before = variables_by_name(model)
    with pytest.raises(ckptconv.CorruptFileError, match="simulated"):
        load_into(model, store)
    assert_all_equal(model, before)

    # check_first=False skips the check pass: the layers before the failure stay loaded
    with pytest.raises(ckptconv.CorruptFileError, match="simulated"):
        load_into(model, store, check_first=False)
    after = variables_by_name(model)
    assert_bit_exact(after["bn/gamma"], expected["bn/gamma"], "loaded before the failure")
    assert_bit_exact(after["head/bias"], before["head/bias"], "the failed layer")


@pytest.mark.parametrize("line", LINES)
def test_non_strict_loads_what_fits_and_reports_the_rest(expected, line):
    model = twin(line)
    before = variables_by_name(model)
    report = load_into(model, broken_source(expected), strict=False)
    assert report.applied and not report.ok
    assert {w.name for w in report.missing} == {"head/bias"}
    assert {w.name for w in report.unused} == {"head/extra"}
    assert {m.name for m in report.mismatched} == {"conv/kernel"}
    m = report.mismatched[0]
    assert m.expected_shape == (3, 3, 1, 3) and m.got_shape == (3, 3, 1, 4)
    after = variables_by_name(model)
    for name in after:
        want = before[name] if name in ("conv/kernel", "head/bias") else expected[name]
        assert_bit_exact(after[name], want, name)


# ---------------------------------------------------------------------------------------------
# training state, dtypes, match by order, only, freeze


def test_optimizer_entries_never_count_as_unused(expected):
    arrays = {"emb/embeddings": expected["emb/embeddings"]}
    store = Store.from_arrays(arrays)
    opt = ckptconv.Entry(
        "optimizer/iterations", key="optimizer/iterations", shape=(), dtype=np.int64,
        path="<memory>", loader=lambda: np.array(3), kind="bookkeeping",
    )
    store = Store([*store.values(), opt], format="memory", path="<memory>")
    model = twin("keras")
    report = load_into(model, store, only="emb")
    assert report.ok and [w.name for w in report.loaded] == ["emb/embeddings"] and not report.unused
    report = load_into(model, store, only="emb", include_all=True)  # taking part: then unused
    assert [w.name for w in report.unused] == ["optimizer/iterations"]
    part = {e.name: e for e in store.values() if e.name == "optimizer/iterations"}
    with pytest.raises(LoadError) as info:
        load_into(model, Store(list(part.values()), format="memory", path="<memory>"), include_all=True)
    assert any(p.kind == "unused" and p.name == "optimizer/iterations" for p in info.value.problems)


@pytest.mark.parametrize("line", LINES)
def test_dtype_differences_are_mismatches_unless_cast(expected, line):
    arrays = {k: v.astype(np.float16) if k == "head/kernel" else v for k, v in expected.items()}
    model = twin(line)
    with pytest.raises(LoadError, match="head/kernel.*float32.*float16.*cast=True"):
        load_into(model, arrays)
    report = load_into(model, arrays, cast=True)
    assert [w.cast_from for w in report.loaded if w.name == "head/kernel"] == ["float16"]
    got = variables_by_name(model)["head/kernel"]
    assert_bit_exact(got, arrays["head/kernel"].astype(np.float32), "head/kernel")


def test_cast_refuses_overflow_and_changes_nothing():
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="d", dtype="float16")])
    before = variables_by_name(model)
    source = {"d/kernel": np.full((2, 2), 1e6, np.float32), "d/bias": np.zeros(2, np.float32)}
    with pytest.raises(ckptconv.CkptconvError, match="overflow to inf"):
        load_into(model, source, cast=True)
    assert_all_equal(model, before)


def test_a_cast_overflow_names_the_file_and_the_tensor(tmp_path):
    """Matched by order, the cast into a variable's dtype names the source file and tensor (and
    the variable it was for) when values overflow, as convert's message does."""
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="d", dtype="float16")])
    arrays = {"L0/w0": np.full((2, 2), 1e6, np.float32), "L0/w1": np.zeros(2, np.float32)}
    path = tmp_path / "big.safetensors"
    ckptconv.write_safetensors([ckptconv.Output(k, a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items()], path)
    with pytest.raises(LoadError) as info:
        load_into(model, path, cast=True, by_order=True)
    assert info.value.path == str(path) and info.value.tensor == "L0/w0"
    assert str(info.value).startswith(f"{path}: tensor 'L0/w0': casting float32 to float16 for variable 'd/kernel': "
                                      "4 finite value(s) overflow to inf in float16"), str(info.value)


def test_a_source_of_other_names_points_at_suggest():
    """A PyTorch state dict into a Keras model: nothing can match by structure or name, and
    the error says a spec is needed and that suggest proposes one; when some weights matched,
    the usual advice stays."""
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="fc")])
    torch_names = {"fc.weight": np.ones((2, 2), np.float32), "fc.bias": np.zeros(2, np.float32)}
    with pytest.raises(LoadError, match=r"; no weight matched by structure or name: give a mapping spec "
                                        r"\(`suggest` proposes one\), choose a part"):
        load_into(model, torch_names)
    partly = {"fc/kernel": np.ones((2, 2), np.float32), "fc.bias": np.zeros(2, np.float32)}
    with pytest.raises(LoadError, match="; fix the source or the mapping, choose a part"):
        load_into(model, partly)


@pytest.mark.parametrize("line", LINES)
def test_match_by_order_ignores_names(expected, line):
    # Meaningless names, in the model's order: layer i, weight j.
    targets = model_targets(twin(line))
    layers: dict[str, int] = {}
    arrays = {}
    for name in targets:
        layer = name.rsplit("/", 1)[0]
        i = layers.setdefault(layer, len(layers))
        arrays[f"L{i:02d}/w{sum(k.startswith(f'L{i:02d}/') for k in arrays)}"] = expected[name]
    model = twin(line)
    with pytest.raises(LoadError):
        load_into(model, arrays)  # by name nothing matches
    report = load_into(model, arrays, by_order=True)
    assert report.ok and report.mode == "order"
    assert_all_equal(model, expected)


def test_match_by_order_reports_layers_that_do_not_line_up(expected):
    arrays = {"a/w0": expected["emb/embeddings"], "b/w0": expected["conv/kernel"]}
    model = twin("keras")
    with pytest.raises(LoadError) as info:
        load_into(model, arrays, by_order=True)
    problems = info.value.problems
    assert any("'mha/query' has 2 weights" in p and "'b' has 1" in p for p in problems), problems
    assert any("layers with weights" in p for p in problems), problems


@pytest.mark.parametrize("line", LINES)
def test_only_loads_a_part_and_leaves_the_rest(expected, line):
    part = {k: v for k, v in expected.items() if k.startswith(("block/", "head/"))}
    model = twin(line)
    before = variables_by_name(model)
    with pytest.raises(LoadError, match="missing"):
        load_into(model, part)
    report = load_into(model, part, only=["block", "head"])
    assert report.ok and len(report.loaded) == len(part)
    after = variables_by_name(model)
    for name in after:
        assert_bit_exact(after[name], part.get(name, before[name]), name)
    with pytest.raises(LoadError, match="matches no variable"):
        load_into(model, part, only="nope*")


def _finetuned(name: str, head: str, classes: int):
    keras.backend.clear_session()
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, name="enc1"), keras.layers.BatchNormalization(name="bn"),
         keras.layers.Dense(8, name="enc2"), keras.layers.Dense(classes, name=head)],
        name=name,
    )


@pytest.mark.parametrize("fmt", ["weights.h5", "tf-checkpoint"])
@pytest.mark.parametrize(
    ("name", "head", "classes"),
    [("finetuned", "head", 5), ("other", "new_head", 5), ("other", "head", 3)],
    ids=["new-head-shape", "renamed-model-and-head", "renamed-model"],
)
def test_only_loads_the_trunk_into_a_model_with_another_head_or_name(tmp_path, name, head, classes, fmt):
    """The transfer-learning case: the first layers of a saved model into a new model whose
    head differs (shape or name), whose own name differs (a TF checkpoint records the saved
    model's name: ``finetuned/enc1/kernel``), or both. The source's other layers fill nothing
    inside the part: listed, but no reason to refuse a strict load of the part."""
    source = _finetuned("finetuned", "head", 3)
    for v in source.weights:
        v.assign(np.random.default_rng(len(v.path)).standard_normal(v.shape).astype(np.float32))
    if fmt == "weights.h5":
        path = tmp_path / "finetuned.weights.h5"
        source.save_weights(path)
    else:
        if keras.backend.backend() != "tensorflow":
            pytest.skip("a tf.train.Checkpoint needs the TensorFlow backend")
        import tensorflow as tf

        path = tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt"))
    saved = {v.path.split("/", 1)[1]: np.asarray(v) for v in source.weights}  # the model's name leads

    model = _finetuned(name, head, classes)
    before = {v.path.split("/", 1)[1]: np.asarray(v) for v in model.weights}
    if head != "head" or classes != 3:
        with pytest.raises(LoadError):
            load_into(model, path)  # the whole model: the head does not fit, or is not there
    report = load_into(model, path, only=["enc1", "bn"])
    assert report.ok and report.applied
    assert sorted(w.name for w in report.loaded) == sorted(n for n in saved if n.startswith(("enc1/", "bn/")))
    assert not report.missing and not report.problems
    after = {v.path.split("/", 1)[1]: np.asarray(v) for v in model.weights}
    for n, value in after.items():
        assert_bit_exact(value, saved[n] if n.startswith(("enc1/", "bn/")) else before[n], n)
    with pytest.raises(LoadError, match="missing"):
        load_into(_finetuned(name, head, classes), {"enc1/kernel": saved["enc1/kernel"]}, only=["enc1", "bn"])


@pytest.mark.parametrize("line", LINES)
def test_freeze_sets_trainable_false_on_loaded_layers(expected, line):
    model = twin(line)
    part = {k: v for k, v in expected.items() if k.startswith(("block/", "conv/"))}
    report = load_into(model, part, only=["block", "conv"], freeze=True)
    assert sorted(report.frozen) == ["block/inner_a", "block/inner_b", "conv"]
    assert model.get_layer("conv").trainable is False
    assert model.get_layer("head").trainable is True
    block = model.get_layer("block")
    assert [layer.trainable for layer in block.layers] == [False, False]
    trainable = {id(v) for v in model.trainable_weights}
    assert not any(id(v) in trainable for v in model.get_layer("conv").weights)

    model = twin(line)
    report = load_into(model, expected, freeze="block/*")
    assert sorted(report.frozen) == ["block/inner_a", "block/inner_b"]
    assert model.get_layer("conv").trainable is True


def test_report_prints_as_a_table_and_json(expected):
    model = twin("keras")
    report = load_into(model, broken_source(expected), strict=False)
    assert isinstance(report, LoadReport)
    text = str(report)
    for section in ("loaded (27)", "mismatched (1)", "missing (kept their values) (1)",
                    "unused source weights (1)"):
        assert section in text, text
    assert "[3, 3, 1, 3] float32" in text and "[3, 3, 1, 4] float32" in text
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is False and data["applied"] is True
    assert data["missing"] == [{"name": "head/bias", "shape": [3], "dtype": "float32"}]


def test_not_a_model_and_unbuilt_model_are_refused():
    with pytest.raises(LoadError, match="expected a Keras 3 or tf-keras model"):
        load_into(object(), {})
    keras.backend.clear_session()
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(LoadError, match="build it first"):
        load_into(unbuilt, {})


def test_import_ckptconv_imports_no_keras():
    import subprocess
    import sys

    code = (
        "import sys, ckptconv; from ckptconv import keras; "
        "print([m for m in ('keras', 'tensorflow', 'tf_keras', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("line", LINES)
def test_tf_checkpoint_of_a_keras3_sequential_model_names_the_model(tmp_path, line):
    """tf.train.Checkpoint records a Keras 3 Sequential's variable paths with the model's name
    in front (``seq/d0/kernel``); that name is not part of the target names."""
    import tensorflow as tf

    def seq(k):
        k.backend.clear_session()
        return k.Sequential([k.Input((3,)), k.layers.Dense(2, name="d0"), k.layers.Dense(1, name="d1")], name="seq")

    source = seq(keras)
    rng = np.random.default_rng(5)
    source.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in source.get_weights()])
    tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt"))
    with ckptconv.open(tmp_path / "ckpt") as store:
        assert "seq/d0/kernel" in store
        model = seq(keras if line == "keras" else tf_keras)
        report = load_into(model, store)
    assert report.ok and report.loaded[0].source == "seq/d0/kernel"
    for got, want in zip(model.get_weights(), source.get_weights()):
        assert_bit_exact(got, want, "seq")


@pytest.mark.parametrize("line", LINES)
def test_bfloat16_model_from_float32_with_dtype_option(line):
    import ml_dtypes

    k = keras if line == "keras" else tf_keras
    k.backend.clear_session()
    model = k.Sequential([k.Input((3,)), k.layers.Dense(4, name="d", dtype="bfloat16")])
    rng = np.random.default_rng(7)
    source = {"d/kernel": rng.standard_normal((3, 4)).astype(np.float32),
              "d/bias": rng.standard_normal(4).astype(np.float32)}
    with pytest.raises(LoadError, match="bfloat16.*float32"):
        load_into(model, source)
    report = load_into(model, source, dtype="bfloat16")
    assert report.ok and [w.dtype for w in report.loaded] == ["bfloat16", "bfloat16"]
    kernel = np.asarray(model.get_layer("d").weights[0].numpy())
    assert_bit_exact(kernel, source["d/kernel"].astype(ml_dtypes.bfloat16), "d/kernel")


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("source", ["tk.h5", "k3legacy.h5"])
def test_match_by_order_from_a_file_into_a_renamed_model(fixtures, expected, line, source):
    """Every layer renamed: no name fits, yet the legacy .h5 structure (layers with weights, in
    order) agrees, so the default load matches by structure as Keras' load_weights does, and
    says that every name differs; by_order=True pairs the same way."""
    module = keras if line == "keras" else tf_keras
    module.backend.clear_session()
    model = build_keras3(module, prefix="x_")
    report = load_into(model, fixtures / source)
    assert report.ok and report.mode == "structure" and report.structure == "legacy-order"
    assert len(report.names_differ) == 29 and "29 names differ" in report.format_table()
    assert {w.matched_by for w in report.loaded} == {"structure"}
    report = load_into(model, fixtures / source, by_order=True)
    assert report.ok and report.mode == "order", report.format_table()
    pairs = {w.name: w.source for w in report.loaded}
    assert pairs["x_block/x_inner_a/kernel"] == "block/inner_a/kernel"
    assert pairs["x_bidi/forward_x_lstm/lstm_cell/kernel"] == "bidi/forward_lstm/lstm_cell/kernel"
    def x_name(n: str) -> str:  # the prefixed model's name of a weight
        n = n.replace("/inner_", "/x_inner_").replace("forward_lstm", "forward_x_lstm")
        return "x_" + n.replace("backward_lstm", "backward_x_lstm")

    renamed = {x_name(n): a for n, a in expected.items()}
    actual = variables_by_name(model)
    assert sorted(actual) == sorted(renamed)
    for name, value in actual.items():
        assert_bit_exact(value, renamed[name], name)


@pytest.mark.parametrize("line", LINES)
def test_stored_bytes_are_read_into_reused_buffers_without_aliasing(tmp_path, line, monkeypatch):
    """On TensorFlow (which copies what it is given), plain stored bytes are read into two
    buffers used in turn. Eight same-shaped layers from a file written by Keras: every
    variable must hold its own layer's values (a buffer aliased by a variable would show a
    later layer's values), and the buffers must really have been reused."""
    from ckptconv.keras.assign import copies_numpy_values
    from ckptconv.keras.targets import LiveModel
    from ckptconv.store import Entry

    module = keras if line == "keras" else tf_keras
    module.backend.clear_session()

    def build():
        return module.Sequential(
            [module.Input((300,))] + [module.layers.Dense(300, name=f"d{i}") for i in range(8)]
        )

    source = build()
    rng = np.random.default_rng(8)
    source.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in source.get_weights()])
    path = tmp_path / ("m.weights.h5" if line == "keras" else "m.h5")
    source.save_weights(str(path))
    into = []
    real = Entry.read_into

    def spy(self, out, **options):  # type: ignore[no-untyped-def]
        into.append(out.base is not None)  # carved from an arena, not new memory
        return real(self, out, **options)

    monkeypatch.setattr(Entry, "read_into", spy)
    target = build()
    load_into(target, path)
    assert copies_numpy_values(LiveModel(target))
    assert len(into) == 16 and sum(into) >= 12  # every layer after the first two reuses memory
    for want, got in zip(source.weights, target.weights):
        assert_bit_exact(np.asarray(got), np.asarray(want), want.name)


def test_entry_read_into_fills_the_given_array(tmp_path):
    from ckptconv.store import ByteRange, Entry

    data = np.arange(12, dtype="<f4").reshape(3, 4)
    path = tmp_path / "raw.bin"
    path.write_bytes(b"xx" + data.tobytes())
    plain = Entry("a", key="a", shape=(3, 4), dtype=np.float32, path=path,
                  byte_range=ByteRange(str(path), 2, data.nbytes))
    loaded = Entry("b", key="b", shape=(3, 4), dtype=np.float32, path=path, loader=lambda: data.astype(">f4"))
    for entry in (plain, loaded):
        out = np.zeros((3, 4), dtype=np.float32)
        assert entry.read_into(out) is out
        assert_bit_exact(out, data, entry.name)
    with pytest.raises(ValueError, match="C-contiguous"):
        plain.read_into(np.zeros((4, 3), dtype=np.float32))


@pytest.mark.parametrize("line", LINES)
def test_a_tf_checkpoint_failing_its_checksum_changes_nothing(fixtures, expected, tmp_path, line):
    """One flipped byte in the last tensor of a real TF checkpoint: the strict load finds it
    in its check pass (reading the stored bytes through a small buffer) and changes nothing;
    with check_first=False the read itself still checks the checksum and refuses the tensor."""
    import shutil

    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(fixtures / f"k3ckpt{suffix}", tmp_path / f"k3ckpt{suffix}")
    copy = tmp_path / "k3ckpt"
    with ckptconv.open(copy) as store:
        last = max((e for e in store.entries() if e.byte_range is not None and e.crc32c is not None),
                   key=lambda e: e.byte_range.offset)
        data_file, offset = last.byte_range.path, last.byte_range.offset
        name = last.name
    with open(data_file, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))
    model = twin(line)
    before = variables_by_name(model)
    with pytest.raises(ckptconv.IntegrityError, match="CRC-32C") as info:
        load_into(model, copy)
    assert info.value.tensor == name
    assert_all_equal(model, before)
    with pytest.raises(ckptconv.IntegrityError, match="CRC-32C"):
        load_into(model, copy, check_first=False)


_OTHER_BACKEND_SCRIPT = """
import sys
from pathlib import Path

import numpy as np
import keras

import ckptconv
from ckptconv.keras.targets import LiveModel
from tests.generators.gen_load import build_keras3
from tests.helpers import load_expected

fixtures = Path(sys.argv[1])
assert keras.backend.backend() == sys.argv[2], keras.backend.backend()
expected = {e.name: e.array for e in load_expected(fixtures, "source")}
for source in sys.argv[3:]:
    model = build_keras3(keras)
    report = ckptconv.load_into(model, fixtures / source)
    assert report.ok and report.applied, report.format_table()
    got = {v.name: np.asarray(keras.ops.convert_to_numpy(v.variable)) for v in LiveModel(model).vars}
    assert sorted(got) == sorted(expected), source
    for name, value in got.items():
        want = expected[name]
        assert value.dtype == want.dtype and value.tobytes() == want.tobytes(), (source, name)
    print("ok", source)
"""


@pytest.mark.parametrize("backend", ["jax", "numpy"])
def test_load_into_keras3_on_other_backends(fixtures, backend):
    """Keras 3 on JAX and on numpy (which keep or share the arrays they are given, so ckptconv
    hands them new ones): every format loads bit-exactly. Keras picks its backend once per
    process, so this runs in a subprocess."""
    import importlib.util
    import os
    import subprocess
    import sys

    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    sources = ["k3.weights.h5", "k3.keras", "k3legacy.h5", "k3ckpt", "k3.safetensors", "tk.h5"]
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER_BACKEND_SCRIPT, str(fixtures), backend, *sources],
        capture_output=True, text=True, timeout=600, env=env,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [w for s in sources for w in ("ok", s)]


def test_spec_mode_strips_the_saved_model_name_as_name_mode_does(tmp_path):
    """A TF checkpoint of a Keras 3 Sequential records its own name in front
    (``finetuned/enc1/kernel``). With a spec, the rules see the recorded names (as ``inspect``
    lists them), and the weights they leave to pass through find their variables as without a
    spec: the saved model's name stripped."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("a tf.train.Checkpoint needs the TensorFlow backend")
    import tensorflow as tf

    source = _finetuned("finetuned", "head", 3)
    for v in source.weights:
        v.assign(np.random.default_rng(len(v.path)).standard_normal(v.shape).astype(np.float32))
    path = tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt"))
    saved = {v.path.split("/", 1)[1]: np.asarray(v) for v in source.weights}
    with ckptconv.open(path) as store:
        assert "finetuned/enc1/kernel" in store and "enc1/kernel" not in store

    model = _finetuned("other", "classifier", 3)  # another model name, another head name
    rules = {"rules": [{"layer": "finetuned/head", "to_layer": "classifier"}]}
    report = load_into(model, path, rules)
    assert report.ok and report.applied and report.mode == "spec"
    by_target = {w.name: w for w in report.loaded}
    assert sorted(by_target) == sorted(n.replace("head/", "classifier/") for n in saved)
    assert by_target["enc1/kernel"].source == "finetuned/enc1/kernel"  # the report names what the file records
    assert by_target["enc1/kernel"].matched_by == "name"
    assert by_target["classifier/kernel"].matched_by == "spec"
    for v in model.weights:
        name = v.path.split("/", 1)[1]
        assert_bit_exact(np.asarray(v), saved[name.replace("classifier/", "head/")], name)

    # passthrough: false drops what no rule owns, as it says: nothing is renamed into place
    with pytest.raises(LoadError, match="missing: no source for 'enc1/kernel'"):
        load_into(_finetuned("other", "classifier", 3), path, {**rules, "passthrough": False})
