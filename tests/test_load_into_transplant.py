"""``ckptconv transplant`` and ``target_from_keras_file``: run in-process (Keras is loaded
already), exit codes and outputs checked; nothing is written when the load fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ckptconv
from ckptconv.cli import main
from ckptconv.keras import target_from_keras_file
from tests.helpers import assert_bit_exact, load_expected

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def fixtures(generated) -> Path:
    return generated("load")


@pytest.fixture(scope="module")
def expected(fixtures) -> dict[str, np.ndarray]:
    return {e.name: e.array for e in load_expected(fixtures, "source")}


@pytest.fixture(scope="module")
def blank_target(tmp_path_factory) -> Path:
    """The twin architecture saved with fresh (different) weights: the TARGET.keras."""
    from tests.generators.gen_load import build_keras3

    keras.backend.clear_session()
    path = tmp_path_factory.mktemp("target") / "twin.keras"
    build_keras3(keras).save(path)
    return path


def test_transplant_to_keras_and_weights_h5(fixtures, expected, blank_target, tmp_path, capsys):
    out = tmp_path / "out.keras"
    assert main(["transplant", str(fixtures / "tk.h5"), str(blank_target), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "29 loaded, 0 missing, 0 unused, 0 mismatched; applied" in printed
    assert f"wrote {out}" in printed
    with ckptconv.open(out) as store:
        assert sorted(store) == sorted(expected)
        for name, array in expected.items():
            assert_bit_exact(store[name].read(), array, name)
    assert keras.saving.load_model(out, compile=False).name == "twin"

    out2 = tmp_path / "out.weights.h5"
    spec = tmp_path / "nested.yaml"
    spec.write_text('rules:\n  - from: "inner_*/*"\n    to: "block/inner_{1}/{2}"\n')
    code = main(["transplant", str(fixtures / "tkckpt"), str(blank_target), str(out2),
                 "--map", str(spec), "--json", "--no-fsync"])
    assert code == 0
    assert '"applied": true' in capsys.readouterr().out
    with ckptconv.open(out2) as store:
        for name, array in expected.items():
            assert_bit_exact(store[name].read(), array, name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nested.yaml", "out.keras", "out.weights.h5"]


def test_transplant_failures_write_nothing(fixtures, blank_target, tmp_path, capsys):
    out = tmp_path / "out.keras"
    # strict: the tf-keras checkpoint's nested names do not match
    assert main(["transplant", str(fixtures / "tkckpt"), str(blank_target), str(out)]) == 1
    err = capsys.readouterr().err
    assert "missing (kept their values) (4)" in err  # the report
    assert err.strip().splitlines()[-1].startswith("ckptconv: error: ")
    assert "9 problems" in err.strip().splitlines()[-1]  # the structure first, then 4 + 4
    assert "structure is not the model's (object-graph)" in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file

    # non-strict writes what fits
    assert main(["transplant", str(fixtures / "tkckpt"), str(blank_target), str(out), "--non-strict", "-q"]) == 0
    before = out.read_bytes()
    # an existing output is kept without --force
    assert main(["transplant", str(fixtures / "tk.h5"), str(blank_target), str(out)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["transplant", str(fixtures / "tk.h5"), str(blank_target), str(out), "--force", "-q"]) == 0
    # wrong suffix, output == input
    assert main(["transplant", str(fixtures / "tk.h5"), str(blank_target), str(tmp_path / "o.h5")]) == 2  # usage
    assert "must end in .keras" in capsys.readouterr().err
    assert main(["transplant", str(fixtures / "tk.h5"), str(out), str(out), "--force"]) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    # a target that is not a .keras file
    assert main(["transplant", str(fixtures / "tk.h5"), str(fixtures / "tk.h5"), str(tmp_path / "x.keras")]) == 1
    assert "not a .keras model file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.keras"]


def test_lambda_targets_need_unsafe(tmp_path, capsys):
    keras.backend.clear_session()
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Lambda(lambda x: x * 2.0, name="double")(
        keras.layers.Dense(2, name="d")(inp)))
    target = tmp_path / "lambda.keras"
    model.save(target)
    weights = tmp_path / "w.safetensors"
    import safetensors.numpy

    safetensors.numpy.save_file(
        {"d/kernel": np.ones((3, 2), np.float32), "d/bias": np.zeros(2, np.float32)}, str(weights)
    )
    out = tmp_path / "out.weights.h5"
    with pytest.raises(ckptconv.UnsafeInputError, match="safe mode"):
        target_from_keras_file(target)
    assert main(["transplant", str(weights), str(target), str(out)]) == 1
    assert "--unsafe" in capsys.readouterr().err and not out.exists()
    assert main(["transplant", str(weights), str(target), str(out), "--unsafe", "-q"]) == 0
    with ckptconv.open(out) as store:
        assert_bit_exact(store["d/kernel"].read(), np.ones((3, 2), np.float32), "d/kernel")


def test_target_from_keras_file_names_shapes_dtypes(fixtures, expected, blank_target):
    targets = target_from_keras_file(blank_target)
    assert list(targets) == list(expected)
    for name, t in targets.items():
        assert tuple(t.shape) == expected[name].shape and np.dtype(t.dtype) == expected[name].dtype


def test_transplant_only_sets_aside_the_other_weights(fixtures, expected, blank_target, tmp_path, capsys):
    """--only head: the head's two weights load; the other 27 are outside only=, not unused
    (which used to make the strict load refuse)."""
    out = tmp_path / "head.keras"
    assert main(["transplant", str(fixtures / "k3.safetensors"), str(blank_target), str(out), "--only", "head"]) == 0
    printed = capsys.readouterr().out
    assert "2 loaded, 0 missing, 0 unused, 0 mismatched; applied" in printed
    assert "outside only= (not loaded) (27)" in printed
    with ckptconv.open(out) as store, ckptconv.open(blank_target) as blank:
        assert_bit_exact(store["head/kernel"].read(), expected["head/kernel"], "head/kernel")
        assert_bit_exact(store["conv/kernel"].read(), blank["conv/kernel"].read(), "kept")


def test_plan_only_checks_a_part_of_the_target(fixtures, blank_target, capsys):
    src = str(fixtures / "k3.safetensors")
    assert main(["plan", src, "--target", str(blank_target), "--only", "head", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["counts"]["outside-only"] == 27 and report["counts"]["unused"] == 0
    assert report["missing"] == []
    statuses = {s["name"]: s["status"] for s in report["sources"]}
    assert statuses["head/kernel"] == "passthrough" and statuses["conv/kernel"] == "outside-only"
    assert main(["plan", src, "--only", "head"]) == 2
    assert "--only chooses a part of --target" in capsys.readouterr().err
