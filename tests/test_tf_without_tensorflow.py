"""``ckptconv inspect`` and ``convert`` on TensorFlow checkpoints with TensorFlow unimportable.

A ``sitecustomize`` on PYTHONPATH installs a ``sys.meta_path`` finder that refuses tensorflow,
keras and tf_keras, so the subprocess behaves as if TensorFlow were not installed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from tests.helpers import assert_bit_exact, blocking_env, run_cli_many
from tests.test_tf_checkpoint import CASES, case, expected_by_key, strings_by_key

NO_TF = ("tensorflow", "keras", "tf_keras")


@pytest.fixture(scope="module")
def tf_dir(generated) -> Path:
    return generated("tf")


@pytest.fixture(scope="module")
def no_tf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return blocking_env(tmp_path_factory.mktemp("no_tf_site"), NO_TF)


def run_without_tf(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    """``ckptconv ARGS`` in a subprocess without TensorFlow; fails if anything imported it."""
    return run_many_without_tf(env, [list(args)])[0]


def run_many_without_tf(env: dict[str, str], commands: list[list[str | Path]]) -> list[subprocess.CompletedProcess]:
    """Several ``ckptconv`` commands in one TensorFlow-less subprocess (one interpreter start)."""
    return run_cli_many(env, commands, never_imported=NO_TF)


@pytest.fixture(scope="module")
def runs(tf_dir: Path, no_tf_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """inspect and convert of every case, all in one TensorFlow-less subprocess."""
    out = tmp_path_factory.mktemp("no_tf_out")
    spec = out / "drop.yaml"
    spec.write_text('version: 1\nrules:\n  - drop: "v_complex128"\n')
    commands, names = [], []
    for label in CASES:
        path = case(tf_dir, label)["path"]
        commands.append(["inspect", path, "--json", "--all"])
        names.append(("inspect", label))
        convert = ["convert", path, out / f"{label}.safetensors", "--all"]
        if label == "dtypes":  # safetensors has no complex128: drop it; the string is skipped with a note
            convert += ["--map", spec]
        if label == "fnuz":  # safetensors has no fnuz float8 codes: cast to float32 on the way
            convert += ["--dtype", "float32"]
        commands.append(convert)
        names.append(("convert", label))
    results = dict(zip(names, run_many_without_tf(no_tf_env, commands)))
    results["out"] = out
    return results


@pytest.mark.parametrize("label", CASES)
def test_inspect_without_tensorflow(tf_dir: Path, runs: dict, label: str) -> None:
    result = runs["inspect", label]
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["format"] == "tf-checkpoint"
    tensors = {t["key"]: t for t in listing["tensors"]}
    wanted = {**{k: (w.name, w.kind, list(w.array.shape)) for k, w in expected_by_key(tf_dir, label).items()},
              **{k: (w["name"], w["kind"], w["shape"]) for k, w in strings_by_key(tf_dir, label).items()},
              **{k: (k, "bookkeeping", shape) for k, shape in case(tf_dir, label)["variants"].items()}}
    assert {k: (t["name"], t["kind"], t["shape"]) for k, t in tensors.items()} == wanted


@pytest.mark.parametrize("label", CASES)
def test_convert_without_tensorflow(tf_dir: Path, runs: dict, label: str) -> None:
    result = runs["convert", label]
    assert result.returncode == 0, result.stderr
    expected = expected_by_key(tf_dir, label)
    if label == "dtypes":
        assert "v_string" in result.stderr and "skipped" in result.stderr
        del expected["m/vars/complex128/.ATTRIBUTES/VARIABLE_VALUE"]
    with ckptconv.open(runs["out"] / f"{label}.safetensors") as written:
        assert sorted(written) == sorted(w.name for w in expected.values())
        for want in expected.values():
            wanted = want.array.astype(np.float32) if label == "fnuz" else want.array  # exact: float8 fits float32
            assert_bit_exact(written[want.name].read(), wanted, want.name)


def test_complex128_is_refused_with_a_clear_message(tf_dir: Path, no_tf_env: dict[str, str], tmp_path: Path) -> None:
    result = run_without_tf(no_tf_env, "convert", case(tf_dir, "dtypes")["path"], tmp_path / "x.safetensors")
    assert result.returncode == 1
    assert "v_complex128" in result.stderr and "complex128" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_fnuz_float8_is_refused_without_a_cast(tf_dir: Path, no_tf_env: dict[str, str], tmp_path: Path) -> None:
    result = run_without_tf(no_tf_env, "convert", case(tf_dir, "fnuz")["path"], tmp_path / "x.safetensors")
    assert result.returncode == 1, result.stderr
    assert "tensor 'v_float8_e4m3b11fnuz'" in result.stderr, result.stderr
    assert "safetensors has no float8_e4m3b11fnuz dtype" in result.stderr and "cast it" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_string_entries_read_as_object_arrays(tf_dir: Path) -> None:
    with ckptconv.open(case(tf_dir, "dtypes")["path"]) as store:
        value = store["v_string"].read()
    assert value.dtype == np.dtype(object)
    assert value[1, 0] == b"\x00\xff bytes"
