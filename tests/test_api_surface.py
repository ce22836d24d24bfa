"""The public API as one vocabulary: what is exported and documented, explicit keyword options,
one convention per thing (to_json, error fields, "no such file", "no such tensor")."""

from __future__ import annotations

import errno
import importlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from ckptconv import formats

ROOT = Path(__file__).resolve().parent.parent


def test_star_import_leaves_the_builtin_open_alone() -> None:
    namespace: dict[str, object] = {}
    exec("from ckptconv import *", namespace)
    assert "open" not in namespace and "open" not in ckptconv.__all__
    assert ckptconv.open is formats.open  # called qualified, like gzip.open


def test_functions_named_like_their_modules_stay_functions_when_the_modules_are_imported() -> None:
    # `import ckptconv.convert` sets the package's attribute `convert` to the module; the
    # package keeps the function (and ckptconv.mapping its diff and suggest), in a fresh
    # interpreter where nothing was imported before
    import subprocess
    import sys

    code = (
        "import types, ckptconv.convert, ckptconv.mapping.diff, ckptconv.mapping.suggest\n"
        "import ckptconv, ckptconv.mapping as m\n"
        "for f in (ckptconv.convert, m.diff, m.suggest): assert callable(f) and not isinstance(f, types.ModuleType), f\n"
        "assert {'convert', 'Store', 'load_into'} <= set(dir(ckptconv)) and 'diff' in dir(m)\n"
        "try:\n    ckptconv.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "module 'ckptconv' has no attribute 'no_such_name'\n"


def test_api_reference_lists_exactly_the_exports_plus_ckptconv_open() -> None:
    documented = re.findall(r"^### `(\w+)`$", (ROOT / "docs" / "api.md").read_text(), re.M)
    exported = [n for n in ckptconv.__all__ if not n.startswith("__")]
    assert sorted(documented) == sorted(["open", *exported])
    for name in exported:
        assert getattr(ckptconv, name) is not None


def test_documented_public_entry_points_are_exported() -> None:
    for name in ("transplant", "model_targets", "TransplantResult", "load_into", "convert", "verify_file",
                 "NoSuchFileError", "NoSuchTensorError", "OptionError", "UsageError"):
        assert name in ckptconv.__all__, name


def test_every_result_to_json_returns_json_ready_data() -> None:
    from ckptconv.batch import BatchReport, FileResult
    from ckptconv.keras import LoadReport

    results = [
        ckptconv.ConvertResult("a", "safetensors", ["b"], 1, 4),
        ckptconv.VerifyResult("b", ["b"]),
        LoadReport(),
        ckptconv.TransplantResult("o.keras", LoadReport(), 0.5),
        FileResult("a", "b", True),
        BatchReport([FileResult("a", "b", True)]),
        ckptconv.diff({"w": np.float32([1, np.nan])}, {"w": np.float32([np.inf, 0])}),
        ckptconv.mapping.align({"a/kernel": np.zeros((2, 3), np.float32)}, {"b/kernel": np.zeros((3, 2), np.float32)}),
    ]
    import json

    for result in results:
        data = result.to_json()
        assert isinstance(data, dict), type(result).__name__
        assert json.loads(json.dumps(data)) == data


def test_verify_result_has_one_name_for_its_failures() -> None:
    result = ckptconv.VerifyResult("b", ["b"])
    assert result.mismatches == [] and result.ok
    assert not hasattr(result, "mismatched") and not hasattr(result, "bad")


# -- options -------------------------------------------------------------------------------------


def test_format_modules_declare_their_options() -> None:
    """No format swallows unknown options: every ``open`` takes keyword-only options, each
    one of ``ckptconv.open``'s (which passes each format only those it declares)."""
    top = inspect.signature(ckptconv.open).parameters
    for name in formats.FORMAT_MODULES:
        module = importlib.import_module(f"ckptconv.formats.{name}")
        parameters = list(inspect.signature(module.open).parameters.values())
        assert parameters[0].name == "path"
        for p in parameters[1:]:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p)
            assert p.name in top and p.default == top[p.name].default, (name, p)


def _public_functions():
    from ckptconv.batch import plan_jobs

    return [ckptconv.open, ckptconv.convert, ckptconv.build_plan, ckptconv.load_into,
            ckptconv.transplant, ckptconv.verify_file, ckptconv.write_safetensors, plan_jobs,
            ckptconv.suggest, ckptconv.diff]


@pytest.mark.parametrize("function", _public_functions(), ids=lambda f: f.__name__)
def test_public_functions_take_explicit_keyword_options_and_reject_unknown_ones(function) -> None:
    parameters = inspect.signature(function).parameters.values()
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    options = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert options
    typo = options[0][:-1] + "x"
    with pytest.raises(ckptconv.OptionError) as info:
        function(*[None] * sum(p.default is inspect.Parameter.empty for p in parameters), **{typo: 1})
    message = str(info.value)
    assert f"{function.__name__}() takes no option {typo}=" in message
    assert f"did you mean {options[0]}=?" in message
    assert message.endswith("its options: " + ", ".join(options))


def test_batch_rejects_an_unknown_option_once_before_any_job() -> None:
    from ckptconv.batch import Job, run_batch

    with pytest.raises(ckptconv.OptionError, match=r"convert\(\) takes no option dtpye= \(did you mean dtype=\?\)"):
        run_batch([Job("missing", "out.safetensors")], dtpye="float16")


def test_load_into_check_first_is_the_name_of_the_check_pass() -> None:
    parameters = inspect.signature(ckptconv.load_into).parameters
    assert "check_first" in parameters and "rollback" not in parameters
    with pytest.raises(ckptconv.OptionError, match="takes no option rollback="):
        ckptconv.load_into(None, {}, rollback=False)


def test_a_bad_option_value_is_a_usage_error_naming_the_argument(tmp_path: Path) -> None:
    store = ckptconv.Store.from_arrays({"w": np.zeros(2, np.float32)})
    with pytest.raises(ckptconv.UsageError) as info:
        ckptconv.build_plan(store, dtype="bfloa16")
    assert str(info.value) == "unknown dtype 'bfloa16'; did you mean 'bfloat16'?; received dtype='bfloa16'"
    assert info.value.option == "dtype" and isinstance(info.value, ValueError)
    with pytest.raises(ckptconv.UsageError, match=r"received max_shard_size='abc'"):
        ckptconv.convert(tmp_path / "x", tmp_path / "y.safetensors", max_shard_size="abc")
    with pytest.raises(ckptconv.UsageError, match=r"keys starting with 'ckptconv\.' are ckptconv's own; received metadata=\{'ckptconv\.x': '1'\}$"):
        ckptconv.convert(tmp_path / "x", tmp_path / "y.safetensors", metadata={"ckptconv.x": "1"})


def test_the_metadata_rule_is_one_rule_for_convert_the_writer_and_the_cli(tmp_path: Path) -> None:
    from ckptconv.formats.safetensors import check_metadata

    with pytest.raises(ValueError, match="must map strings to strings"):
        check_metadata({"a": 1})
    with pytest.raises(ValueError, match="ckptconv's own"):
        check_metadata({"ckptconv.crc32c": "{}"}, own=True)  # the writer's own, even for ckptconv
    assert check_metadata({"ckptconv.version": "1"}, own=True) == {"ckptconv.version": "1"}
    out = ckptconv.Output("w", (2,), np.float32, lambda: np.zeros(2, np.float32))
    with pytest.raises(ckptconv.OutputError, match="must map strings to strings"):
        ckptconv.write_safetensors([out], tmp_path / "w.safetensors", metadata={"a": 1})


# -- errors --------------------------------------------------------------------------------------


def test_a_missing_path_is_one_error_class_everywhere(tmp_path: Path) -> None:
    missing = tmp_path / "missing.keras"
    attempts = {
        "open": lambda: ckptconv.open(missing),
        "convert": lambda: ckptconv.convert(missing, tmp_path / "o.safetensors"),
        "load_spec": lambda: ckptconv.load_spec(tmp_path / "missing.yaml"),
        "verify_file": lambda: ckptconv.verify_file(tmp_path / "missing.safetensors"),
        "transplant": lambda: ckptconv.transplant({"w": np.zeros(1)}, missing, tmp_path / "o.keras"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(ckptconv.NoSuchFileError) as info:
            attempt()
        error = info.value
        assert isinstance(error, FileNotFoundError) and isinstance(error, ckptconv.CkptconvError), what
        assert error.errno == errno.ENOENT and error.filename == error.path, what
        assert str(error).startswith(f"{error.path}: "), what
    import pickle

    again = pickle.loads(pickle.dumps(error))  # as a worker process sends it back
    assert (type(again), str(again), again.errno, again.path) == (type(error), str(error), errno.ENOENT, error.path)


def test_a_missing_tensor_is_a_key_error_naming_the_file_and_near_names(tmp_path: Path) -> None:
    arrays = {"dense/kernel": np.zeros((2, 2), np.float32), "dense/bias": np.zeros(2, np.float32)}
    path = tmp_path / "w.safetensors"
    ckptconv.write_safetensors([ckptconv.Output(k, a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items()], path)
    with ckptconv.open(path) as store:
        with pytest.raises(KeyError) as info:
            store["dense/kernal"]
        assert isinstance(info.value, ckptconv.NoSuchTensorError)
        assert str(info.value) == f"{path}: no tensor named 'dense/kernal'; nearest names: 'dense/kernel', 'dense/bias'"
        assert "dense/kernal" not in store and store.get("dense/kernal") is None  # no error built for these
        assert store.get("dense/bias") is store["dense/bias"]


def test_errors_name_the_tensor_in_a_field_called_tensor() -> None:
    error = ckptconv.CorruptFileError("damaged", path="f", tensor="dense/kernel")
    assert error.tensor == "dense/kernel" and not hasattr(error, "key")
    assert str(error) == "f: tensor 'dense/kernel': damaged"
    import pickle

    again = pickle.loads(pickle.dumps(ckptconv.PlanError(["a", "b"], path="f")))
    assert again.problems == ["a", "b"] and str(again) == str(ckptconv.PlanError(["a", "b"], path="f"))
