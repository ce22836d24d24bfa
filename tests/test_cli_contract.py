"""The command line's contract, as a newcomer meets it: exit statuses, --json, option names in
messages, refusing what would silently go wrong (a lossy cast, a safetensors file named .h5).

Commands run in-process through ``ckptconv.cli.main`` (fast); the few that must show what a
real process prints (TensorFlow's native logging, what is imported) run in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from ckptconv.cli import main as cli_main
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "sample.keras"


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A small safetensors file with float weights, written by ckptconv."""
    arrays = {"dense/kernel": np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4),
              "dense/bias": np.array([0.5, -1.5, 2.25, 0.0], np.float32)}
    path = tmp_path / "small.safetensors"
    ckptconv.write_safetensors([ckptconv.Output(k, a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items()], path)
    return path


# -- 1. lossy casts --------------------------------------------------------------------------


def test_a_lossy_dtype_is_a_usage_error_unless_allowed(capsys, small: Path, tmp_path: Path) -> None:
    """An integer or bool --dtype casts every floating-point weight lossily: without
    --allow-lossy it is refused from the arguments alone (exit 2, one line, before the source
    is opened: a missing source is not even noticed), by convert and batch, and by the API."""
    out = tmp_path / "int.safetensors"
    for src in (small, tmp_path / "missing.safetensors"):
        code, stdout, err = run(capsys, "convert", src, out, "--dtype", "int8")
        assert code == 2 and stdout == "" and not out.exists(), err
        assert err == ("ckptconv convert: error: --dtype int8 truncates floating-point weights to integers, "
                       "dropping every fraction (a lossy cast); pass --allow-lossy to cast to it anyway, or give "
                       "a floating-point dtype\n")
    code, _, err = run(capsys, "batch", tmp_path / "missing.safetensors", "-o", tmp_path / "o", "--dtype", "bool")
    assert code == 2 and err.startswith("ckptconv batch: error: --dtype bool truncates") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
    code, out_json, err = run(capsys, "convert", small, out, "--dtype", "uint8", "--json")
    assert code == 2 and json.loads(out_json)["error"]["exit"] == 2
    code, _, err = run(capsys, "convert", small, out, "--dtype", "int8", "--allow-lossy")
    assert code == 0, err
    with ckptconv.open(out) as store:
        assert store["dense/bias"].read().tolist() == [0, -1, 2, 0]  # truncated, as asked
    with pytest.raises(ckptconv.UsageError, match="pass allow_lossy=True") as info:
        ckptconv.convert(tmp_path / "missing.safetensors", tmp_path / "api.safetensors", dtype="bool")
    assert "dtype='bool' truncates floating-point weights to booleans" in str(info.value)
    with pytest.raises(ckptconv.UsageError, match="pass allow_lossy=True"):
        ckptconv.run_batch([], dtype="int16")


def test_plan_lists_a_lossy_dtype_per_tensor(capsys, small: Path) -> None:
    """``plan`` shows what a plan would do: a lossy --dtype is a problem of each tensor it
    casts (exit 1), as the API's build_plan says it."""
    code, _, err = run(capsys, "plan", small, "--dtype", "int8")
    assert code == 1 and "'dense/kernel'" in err and "lossy" in err and "--allow-lossy" in err, err
    with ckptconv.open(small) as store:
        plan = ckptconv.build_plan(store, dtype="bool")
    assert not plan.ok and "float32 -> bool" in plan.problems[0]


def test_a_lossy_cast_op_needs_allow_lossy_on_the_op(small: Path) -> None:
    with ckptconv.open(small) as store:
        refused = ckptconv.build_plan(store, {"rules": [{"from": "dense/bias", "ops": [{"cast": "int32"}]}]})
        assert not refused.ok and "set allow_lossy: true on the cast op" in refused.problems[0]
        allowed = ckptconv.build_plan(
            store, {"rules": [{"from": "dense/bias", "ops": [{"cast": {"dtype": "int32", "allow_lossy": True}}]}]}
        )
        assert allowed.ok
        assert dict(allowed.arrays())["dense/bias"].tolist() == [0, -1, 2, 0]


# -- 3, 2, 15. Keras: checked first, quiet, one line when missing ------------------------------


def _subprocess(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_transplant_checks_its_spec_before_importing_keras(tmp_path: Path) -> None:
    (tmp_path / "typo.yaml").write_text("rules:\n  - frm: a\n")
    done = _subprocess(
        "import sys; from ckptconv.cli import main\n"
        f"code = main(['transplant', {str(SAMPLE)!r}, {str(SAMPLE)!r}, 'out.keras', '--map', 'typo.yaml'])\n"
        "print(code, sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))",
        tmp_path,
    )
    assert done.stdout.split("\n")[0] == "1 []", done.stdout + done.stderr
    assert "typo.yaml: rule #1" in done.stderr and "did you mean 'from'" in done.stderr


def test_transplant_json_failure_is_one_object_and_one_quiet_line(tmp_path: Path) -> None:
    """Keras builds the target, the load fails (strict): stdout holds one JSON object with
    the error and the report; stderr holds the one error line, naming the CLI's options, and
    none of TensorFlow's native start-up logging."""
    source = tmp_path / "partial.safetensors"
    with ckptconv.open(SAMPLE) as store:
        entries = store.entries()
        ckptconv.write_safetensors([ckptconv.Output.of(e) for e in entries[:-1]], source)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run(
        [sys.executable, "-m", "ckptconv", "transplant", str(source), str(SAMPLE), "out.keras", "--json", "-q"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert doc["ok"] is False and doc["error"]["type"] == "LoadError" and doc["report"]["missing"]
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ckptconv: error: ") and "--non-strict" in lines[0] and "--only" in lines[0]
    assert "strict=False" not in lines[0]
    assert not (tmp_path / "out.keras").exists()


def test_without_keras_transplant_says_what_to_install(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)  # import keras -> ModuleNotFoundError
    code, out, err = run(capsys, "transplant", SAMPLE, SAMPLE, tmp_path / "out.keras")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "pip install 'ckptconv[tf]'" in err and "Keras 3 with any backend" in err
    assert "internal error" not in err


def test_native_log_lines_are_held_back_and_the_rest_passes(capfd) -> None:
    from ckptconv.keras.runtime import _held_back_cxx_logs

    with _held_back_cxx_logs():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1795986211.611997   23882 cudart_stub.cc:31] Could not find cuda drivers\n")
        os.write(2, b"W0000 00:00:1795986211.7 23882 cpu_feature_guard.cc:227] notice\n")
        os.write(2, b"E0000 00:00:1795986217.088180   23882 cuda_platform.cc:52] a real error\n")
        os.write(2, b"a Python warning\n")
    err = capfd.readouterr().err
    assert err == "E0000 00:00:1795986217.088180   23882 cuda_platform.cc:52] a real error\na Python warning\n"


# -- 4. --json: one object on stdout, failures included ---------------------------------------


def _failures(small: Path, tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    (tmp_path / "nothing.yaml").write_text("rules:\n  - from: nothing/here\n")
    missing = str(tmp_path / "missing.keras")
    return {
        "inspect": ["inspect", missing],
        "convert": ["convert", missing, str(tmp_path / "o.safetensors")],
        "plan": ["plan", str(small), "--map", str(tmp_path / "bad.yaml")],
        "plan-problems": ["plan", str(small), "--map", str(tmp_path / "nothing.yaml")],
        "verify": ["verify", str(SAMPLE)],
        "batch": ["batch", missing, "-o", str(tmp_path / "outdir")],
        "transplant": ["transplant", str(small), missing, str(tmp_path / "o.keras")],
        "suggest": ["suggest", missing, "--target", str(small)],
        "diff": ["diff", str(small), missing],
        "usage": ["convert", str(small), str(tmp_path / "o.safetensors"), "--dtype", "bfloa16"],
    }


@pytest.mark.parametrize(
    "case", ["inspect", "convert", "plan", "plan-problems", "verify", "batch", "transplant", "suggest", "diff", "usage"]
)
def test_json_failures_print_exactly_one_object_with_an_error(capsys, small: Path, tmp_path: Path, case: str) -> None:
    args = _failures(small, tmp_path)[case]
    code, out, err = run(capsys, *args, "--json")
    assert code == (2 if case == "usage" else 1), err
    doc = json.loads(out)  # exactly one JSON document: extra output would not parse
    assert doc["ok"] is False
    assert doc["error"]["type"] and doc["error"]["message"] and doc["error"]["exit"] == code
    first = {
        "usage": "usage: ckptconv convert", "plan-problems": "ckptconv: plan: rule #1", "batch": "",
    }.get(case, "ckptconv: error: ")
    assert err.startswith(first), err  # the error line stays on stderr (batch: stdout has the JSON only)


@pytest.mark.parametrize("command", ["inspect", "convert", "plan", "verify", "batch", "suggest", "diff"])
def test_json_success_prints_exactly_one_object(capsys, small: Path, tmp_path: Path, command: str) -> None:
    args = {
        "inspect": ["inspect", small],
        "convert": ["convert", small, tmp_path / "c.safetensors"],
        "plan": ["plan", small],
        "verify": ["verify", small],
        "batch": ["batch", small, "-o", tmp_path / "outdir"],
        "suggest": ["suggest", small, "--target", small],
        "diff": ["diff", small, small],
    }[command]
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    assert json.loads(out)["ok"] is True and "error" not in json.loads(out)


# -- 5. CLI messages name CLI options, API errors API arguments -------------------------------


def test_the_same_error_names_the_cli_option_or_the_api_argument(capsys, small: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    shutil.copy(small, out)
    code, _, err = run(capsys, "convert", small, out)
    assert code == 1 and "pass --force to replace it" in err and "force=True" not in err
    with pytest.raises(ckptconv.OutputError) as info:
        ckptconv.convert(small, out)
    assert "pass force=True to replace it" in str(info.value) and "--force" not in str(info.value)


def test_a_load_error_names_api_arguments_and_renders_cli_options() -> None:
    keras = pytest.importorskip("keras")
    from ckptconv.cli.common import SPELLING

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
    source = {"out/kernel": np.zeros((3, 2), np.float64), "out/bias": np.zeros(2, np.float32)}
    with pytest.raises(ckptconv.LoadError) as info:
        ckptconv.load_into(model, source)
    api, cli = str(info.value), info.value.render(SPELLING)
    assert "pass cast=True to cast to the variables' dtypes, choose a part with only=, or pass strict=False" in api
    assert "pass --cast to cast to the variables' dtypes, choose a part with --only, or pass --non-strict" in cli
    assert "--" not in api


# -- 6. verify ---------------------------------------------------------------------------------


def test_verify_says_what_a_non_safetensors_file_is(capsys) -> None:
    code, out, err = run(capsys, "verify", SAMPLE, tmp_missing := SAMPLE.parent / "no-such.safetensors")
    assert code == 1 and out == ""
    lines = err.splitlines()  # one error line per failed file, naming it
    assert lines[0].startswith(f"ckptconv: error: {SAMPLE}: ")
    assert "not a safetensors file (a keras-archive checkpoint)" in lines[0]
    assert lines[1] == f"ckptconv: error: {tmp_missing}: no such file or directory"
    with pytest.raises(ckptconv.FormatError, match="keras-archive"):
        ckptconv.verify_file(SAMPLE)


def test_verify_finds_the_index_of_a_set_written_under_that_name(capsys, small: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    code, _, err = run(capsys, "convert", small, out, "--max-shard-size", "40")
    assert code == 0, err
    assert not out.exists() and (tmp_path / "out.safetensors.index.json").exists()
    code, printed, _ = run(capsys, "verify", out)
    assert code == 0 and "out.safetensors.index.json (2 tensors" in printed
    assert ckptconv.verify_file(out).ok
    with pytest.raises(ckptconv.NoSuchFileError):
        ckptconv.verify_file(tmp_path / "other.safetensors")


# -- 7, 9. every bad command-line value exits 2 -------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["convert", "{small}", "{out}", "--dtype", "bfloa16"], "argument --dtype: unknown dtype 'bfloa16'; did you mean 'bfloat16'?"),
        (["convert", "{small}", "{out}", "--max-shard-size", "abc"], "argument --max-shard-size: not a size: 'abc'"),
        (["convert", "{small}", "{out}", "--metadata", "foo"], "argument --metadata: expected KEY=VALUE"),
        (["convert", "{small}", "{out}", "--metadata", "ckptconv.x=1"], "keys starting with 'ckptconv.' are ckptconv's own"),
        (["plan", "{small}", "--dtype", "float33"], "argument --dtype: unknown dtype 'float33'"),
        (["batch", "{small}", "-o", "{tmp}/o", "-j", "-1"], "argument -j/--jobs: expected 0 (one per CPU) or more"),
        (["batch", "{small}", "-o", "{tmp}/o", "-j", "two"], "argument -j/--jobs: expected a whole number"),
        (["batch", "{small}", "-o", "{small}"], "-o {small}: exists and is not a directory"),
        (["batch", "{small}", "-o", "{tmp}/o", "--name-pattern", "{{stem}}.h5"], "end the pattern in .safetensors, or pass --any-suffix"),
        (["transplant", "{small}", "{small}", "{tmp}/o.keras", "--onl", "dense"], "unrecognized arguments: --onl dense"),
        (["convert", "{small}", "{out}", "--forc"], "unrecognized arguments: --forc"),
        (["diff", "{small}", "{small}", "--atol", "-1"], "argument --atol: expected a finite number >= 0"),
        (["diff", "{small}", "{small}", "--rtol", "abc"], "argument --rtol: expected a finite number >= 0 such as 1e-6"),
        (["diff", "{small}", "{small}", "--dtype", "floot32"], "argument --dtype: unknown dtype 'floot32'"),
        (["suggest", "{small}", "--target", "{small}", "--forc"], "unrecognized arguments: --forc"),
        (["suggest", "{small}"], "the following arguments are required: --target"),
        # options that mean something only with a target model, given without one
        (["convert", "{small}", "{out}", "--dtype", "target"],
         "argument --dtype: 'target' takes each weight's dtype from a target model, and a conversion has none"),
        (["batch", "{small}", "-o", "{tmp}/o", "--dtype", "target"], "a conversion has none"),
        (["plan", "{small}", "--dtype", "target"],
         "ckptconv plan: error: --dtype target means each target tensor's dtype, and there is no target"),
        (["plan", "{small}", "--lenient"], "ckptconv plan: error: --lenient reports what --target MODEL.keras lacks"),
        (["plan", "{small}", "--unsafe"], "ckptconv plan: error: --unsafe lets Keras build --target MODEL.keras"),
        # a complex default dtype could only make real weights complex
        (["convert", "{small}", "{out}", "--dtype", "complex64"],
         "ckptconv convert: error: argument --dtype: 'complex64' is complex, and the default dtype casts real "
         "weights only: give keep or a real dtype (float32, float16, bfloat16, ...)\n"),
        (["plan", "{small}", "--dtype", "complex128"], "only: give keep or a real dtype (float32, float16, bfloat16, ...)\n"),
        # an integer or bool default dtype casts every floating-point weight lossily
        (["convert", "{small}", "{out}", "--dtype", "int8"], "ckptconv convert: error: --dtype int8 truncates"),
        (["batch", "{small}", "-o", "{tmp}/o", "--dtype", "uint16"], "pass --allow-lossy"),
    ],
)
def test_bad_command_line_values_exit_2(capsys, small: Path, tmp_path: Path, args: list[str], says: str) -> None:
    fill = {"small": str(small), "out": str(tmp_path / "o.safetensors"), "tmp": str(tmp_path)}
    code, out, err = run(capsys, *(a.format(**fill) for a in args))
    assert code == 2, err
    assert says.format(**fill) in err
    assert out == "" and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("command", [["inspect", "a"], ["convert", "a", "b"], ["plan", "a"], ["verify", "a"],
                                     ["batch", "a", "-o", "d"], ["transplant", "a", "b", "c"],
                                     ["suggest", "a", "--target", "b"], ["diff", "a", "b"]])
def test_every_command_suggests_the_nearest_option(capsys, command: list[str]) -> None:
    """One rule for every subcommand: a misspelt option (``--debgu``), or one cut short
    (``--deb``: ckptconv takes no abbreviations), names the option it is near."""
    for typed in ("--debgu", "--deb"):
        code, out, err = run(capsys, *command, typed)
        assert code == 2 and out == "", err
        assert err.splitlines()[-1].endswith(f"unrecognized arguments: {typed}; did you mean --debug?"), err


@pytest.mark.parametrize(
    "args, says",
    [
        (["inspect", SAMPLE, "--js"], "ckptconv inspect: error: unrecognized arguments: --js; did you mean --json?"),
        (["plan", SAMPLE, "--mapp", "x.yaml"], "unrecognized arguments: --mapp x.yaml; did you mean --map?"),
        (["inspct", SAMPLE], "invalid choice: 'inspct' (choose from 'inspect', "),
        (["inspct", SAMPLE], "'diff'); did you mean 'inspect'?"),
        (["convert", SAMPLE, "o.safetensors", "--dtype", "float8"],
         "unknown dtype 'float8'; did you mean 'float8_e4m3fn', 'float8_e5m2' or 'float8_e4m3fnuz'?"),
        (["convert", SAMPLE, "o.safetensors", "--dtype", "bf"], "unknown dtype 'bf'; did you mean 'bfloat16'?"),
    ],
)
def test_suggestions_offer_what_the_user_was_near(capsys, args: list[object], says: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "", err
    assert says in err, err


def test_a_command_is_guessed_whatever_argparse_words_its_error(capsys, monkeypatch) -> None:
    """The nearest command is found from the value and the choices themselves, not from
    argparse's message, whose words change with the locale (gettext) and Python's version."""
    import argparse

    german = {"invalid choice: %(value)r (choose from %(choices)s)":
              "ungültige Auswahl: %(value)s (wählen Sie aus: %(choices)s)"}
    monkeypatch.setattr(argparse, "_", lambda text: german.get(text, text))
    code, out, err = run(capsys, "inspct", SAMPLE)
    assert code == 2 and out == "", err
    assert err.splitlines()[-1].startswith("ckptconv: error: argument COMMAND: ungültige Auswahl: inspct (wählen")
    assert err.splitlines()[-1].endswith("; did you mean 'inspect'?"), err


def test_no_suggestion_for_what_is_near_nothing(capsys) -> None:
    code, _, err = run(capsys, "inspect", SAMPLE, "-x")
    assert code == 2 and err.splitlines()[-1].endswith("unrecognized arguments: -x"), err


@pytest.mark.parametrize("command", ["convert", "batch"])
def test_no_check_crc_warns_and_records_that_the_source_was_not_checked(capsys, small: Path, tmp_path: Path,
                                                                          command: str) -> None:
    """A damaged tensor read with --no-check-crc is written as read, with checksums of its own
    that verify clean: the command says so on stderr and the output's __metadata__ records it."""
    from ckptconv.convert import SOURCE_CHECKSUMS_KEY

    data = bytearray(small.read_bytes())
    data[-1] ^= 0x01  # the last tensor's last byte: its recorded CRC-32C no longer matches
    small.write_bytes(bytes(data))
    out = tmp_path / "out" / "small.safetensors"
    out.parent.mkdir()
    args = ["convert", small, out] if command == "convert" else ["batch", small, "-o", out.parent]
    code, _, err = run(capsys, *args)
    assert code == 1 and "fail their recorded CRC-32C" in err and not out.exists(), err
    code, _, err = run(capsys, *args, "--no-check-crc")
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("ckptconv: warning: ")]
    assert len(warning) == 1 and "checksums were not checked (--no-check-crc)" in warning[0], err
    with ckptconv.open(out) as store:
        assert store.metadata[SOURCE_CHECKSUMS_KEY] == "not checked"
    verified = ckptconv.verify_file(out)  # why the record matters: the damage now verifies clean
    assert verified.ok and verified.sources_unchecked == [str(out)]
    code, printed, _ = run(capsys, "verify", out)  # and verify says so
    assert code == 0 and printed.strip().endswith("; its source's checksums were not checked when it was written)")
    code, _, err = run(capsys, *args, "--no-check-crc", "--quiet", "--force")
    assert code == 0 and "warning" not in err
    # converted on, checked: no warning, and the record is carried on (the data is still the
    # unchecked data)
    again = tmp_path / "again.safetensors"
    code, _, err = run(capsys, "convert", out, again)
    assert code == 0 and "warning" not in err
    with ckptconv.open(again) as store:
        assert store.metadata[SOURCE_CHECKSUMS_KEY] == "not checked"
    # a source that was checked throughout: no record, and verify says nothing of it
    clean = tmp_path / "clean.safetensors"
    code, _, err = run(capsys, "convert", SAMPLE, clean)
    assert code == 0 and "warning" not in err
    with ckptconv.open(clean) as store:
        assert SOURCE_CHECKSUMS_KEY not in store.metadata
    assert ckptconv.verify_file(clean).sources_unchecked == []
    code, printed, _ = run(capsys, "verify", clean)
    assert code == 0 and "not checked" not in printed


def test_an_unknown_option_shows_the_subcommands_usage(capsys) -> None:
    code, _, err = run(capsys, "inspect", SAMPLE, "--jsn")
    assert code == 2
    assert err.startswith("usage: ckptconv inspect ") and "ckptconv inspect: error: unrecognized arguments: --jsn" in err


def test_batch_into_an_existing_file_is_one_usage_error(capsys, small: Path, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("not a directory")
    code, out, err = run(capsys, "batch", small, small, "-o", target)
    assert code == 2 and out == ""
    assert err.count("error:") == 1 and "exists and is not a directory" in err
    assert target.read_text() == "not a directory"


# -- 8. an output name of another format -------------------------------------------------------


def test_convert_refuses_a_safetensors_file_named_h5_unless_asked(capsys, small: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    code, _, err = run(capsys, "convert", small, out)
    assert code == 2 and not out.exists()
    assert "ends in .h5: name it out.safetensors, or pass --any-suffix" in err
    with pytest.raises(ckptconv.UsageError, match="pass any_suffix=True"):
        ckptconv.convert(small, out)
    code, _, err = run(capsys, "convert", small, out, "--any-suffix")
    assert code == 0 and out.exists(), err
    index = tmp_path / "set.safetensors.index.json"
    result = ckptconv.convert(small, index, max_shard_size=40)
    assert str(index) in result.files


# -- 10. unknown keyword options ------------------------------------------------------------------


def test_a_misspelt_option_is_an_error_naming_it_and_the_known_ones(small: Path) -> None:
    with pytest.raises(ckptconv.OptionError) as info:
        ckptconv.open(small, chek_crc=False)
    assert str(info.value) == "open() takes no option chek_crc= (did you mean check_crc=?); its options: check_crc"
    assert isinstance(info.value, TypeError) and info.value.option == "chek_crc"


# -- 11. spec files ---------------------------------------------------------------------------


def test_invalid_yaml_names_the_file_line_and_column(capsys, small: Path, tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text('version: 1\nrules:\n  - from: "a\n    to: [b\n')
    code, _, err = run(capsys, "plan", small, "--map", spec)
    assert code == 1
    assert err == (
        f"ckptconv: error: {spec}: not valid YAML at line 5, column 1: found unexpected end of stream "
        "(while scanning a quoted scalar that starts at line 3, column 11)\n"
    )
    (tmp_path / "broken.json").write_text('{"rules": [\n  {"from": "a",, }]}')
    with pytest.raises(ckptconv.SpecError, match=r"broken.json: not valid JSON at line 2, column 16"):
        ckptconv.load_spec(tmp_path / "broken.json")


def test_a_spec_directory_is_named_as_such(capsys, small: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "plan", small, "--map", tmp_path)
    assert code == 1 and err == f"ckptconv: error: {tmp_path}: is a directory, not a spec file: name the YAML, JSON or TOML file in it\n"


# -- 14. the suite's own command ---------------------------------------------------------------


def test_make_test_runs_the_suite_in_parallel_and_the_readme_says_what_it_costs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-m pytest -q -p xdist -n" in makefile
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## ", 2)[1]
    for command in ("make demo", "make test"):  # each with its time and the size of its .venv
        assert re.search(rf"`{command}`\s+takes about [\d.]+ min\b[^.]*?a [\d.]+ [MG]B `\.venv`", quick_start), command


def test_an_output_directory_is_named_as_such(capsys, small: Path, tmp_path: Path) -> None:
    """Before: 'its name ends in no suffix: name it out.safetensors', which then failed as a
    directory. Now the first message says what is wrong, and nothing is written in it."""
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(capsys, "convert", small, out)
    expected = f"{out / 'model.safetensors'}, for example"
    assert code == 1 and err == f"ckptconv: error: {out}: is a directory, not an output file: name the file to write in it ({expected})\n"
    assert list(out.iterdir()) == []


# -- a download cut short -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, kind",
    [(SAMPLE, ".keras file"), (ROOT / "tests" / "fixtures" / "pytorch" / "zoo.pt", "torch.save file")],
)
@pytest.mark.parametrize("keep", ["half", "minus-1"])
def test_a_truncated_zip_says_truncated_and_to_fetch_it_again(
    capsys, tmp_path: Path, source: Path, kind: str, keep: str
) -> None:
    data = source.read_bytes()
    cut = tmp_path / f"cut{source.suffix}"
    cut.write_bytes(data[: len(data) // 2] if keep == "half" else data[:-1])
    for command in (["inspect", cut], ["convert", cut, tmp_path / "o.safetensors"]):
        code, out, err = run(capsys, *command)
        assert code == 1 and out == "" and not (tmp_path / "o.safetensors").exists()
        assert err == (
            f"ckptconv: error: {cut}: a truncated (or damaged) zip archive: it has no "
            "end-of-central-directory record, as when a download or copy was cut short; copy or "
            f"download the {kind} again\n"
        )
    with pytest.raises(ckptconv.CorruptFileError, match="truncated"):
        ckptconv.open(cut)


def test_a_zip_damaged_elsewhere_is_not_called_truncated(capsys, tmp_path: Path) -> None:
    data = bytearray(SAMPLE.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    directory = int.from_bytes(data[end + 16 : end + 20], "little")
    data[directory : directory + 4] = b"XXXX"  # the first central-directory entry's signature
    bad = tmp_path / "bad.keras"
    bad.write_bytes(bytes(data))
    code, _, err = run(capsys, "inspect", bad)
    assert code == 1 and "a truncated" not in err, err
    assert err.startswith(f"ckptconv: error: {bad}: a damaged zip archive (Bad magic number"), err


# -- inspect --json totals what the table's foot says ------------------------------------------


def test_inspect_json_has_the_totals_of_the_table(capsys, tmp_path: Path) -> None:
    import ml_dtypes

    arrays = {
        "a/kernel": np.ones((3, 4), np.float32), "a/bias": np.ones(4, np.float32),
        "b/embeddings": np.ones((5, 2), np.float16), "b/count": np.ones((), np.int64),
        "c/kernel": np.ones((2, 2, 3), ml_dtypes.bfloat16), "c/empty": np.ones((0, 4), np.float32),
    }
    mixed = tmp_path / "mixed.safetensors"
    ckptconv.write_safetensors([ckptconv.Output(k, a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items()], mixed)
    code, table, _ = run(capsys, "inspect", mixed)
    assert code == 0 and table.splitlines()[-1] == "6 tensors, 39 values, 116 B"
    code, out, _ = run(capsys, "inspect", mixed, "--json")
    assert code == 0
    assert json.loads(out)["totals"] == {
        "tensors": 6, "values": 39, "nbytes": 116,
        "by_dtype": {
            "float32": {"tensors": 3, "values": 16, "nbytes": 64},
            "float16": {"tensors": 1, "values": 10, "nbytes": 20},
            "int64": {"tensors": 1, "values": 1, "nbytes": 8},
            "bfloat16": {"tensors": 1, "values": 12, "nbytes": 24},
        },
        "not_shown": 0, "skipped_values": 0,
    }
    # the training state: left out (and counted) without --all, totalled with it
    legacy = ROOT / "examples" / "sample_tf_keras.h5"
    for extra in ([], ["--all"]):
        code, table, _ = run(capsys, "inspect", legacy, *extra)
        foot = next(line for line in table.splitlines() if " tensors, " in line)
        code, out, _ = run(capsys, "inspect", legacy, "--json", *extra)
        doc = json.loads(out)
        totals = doc["totals"]
        assert foot == f"{totals['tensors']} tensors, {totals['values']:,} values, {totals['nbytes'] / 1024:.1f} KiB"
        assert totals["tensors"] == len(doc["tensors"]) and totals["nbytes"] == sum(t["nbytes"] for t in doc["tensors"])
        assert totals["not_shown"] == (0 if extra else 21)
        hidden = re.search(r"\((\d+) optimizer/bookkeeping entries not shown", table)
        assert (int(hidden.group(1)) if hidden else 0) == totals["not_shown"]


# -- inspect's table: each distinct shape, dtype and kind written once, rows as one would ------


def _table_row_by_row(fmt: str, path: str, entries, *, all_kinds: bool) -> str:
    """The listing written the plain way, row by row: what format_table must print."""
    from ckptconv.cli.common import human_bytes

    header = ["name", "shape", "dtype", "size"] + (["kind"] if all_kinds else [])
    rows = [[e.name, str(list(e.shape)), e.dtype_name, human_bytes(e.nbytes)] + ([e.kind] if all_kinds else [])
            for e in entries]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    values = sum(int(np.prod(e.shape)) for e in entries)
    nbytes = sum(e.nbytes for e in entries)
    return "\n".join([f"{path} ({fmt})", line(header), "  ".join("-" * w for w in widths),
                      *(line(r) for r in rows), f"{len(entries)} tensors, {values:,} values, {human_bytes(nbytes)}"])


def test_inspect_table_is_the_row_by_row_table() -> None:
    import ml_dtypes

    from ckptconv.cli.inspect_cmd import format_table, tally
    from ckptconv.store import ByteRange, Entry

    def entry(name: str, shape, dtype, kind: str = "weight") -> Entry:
        return Entry(name, key=name, shape=shape, dtype=dtype, path="/x", kind=kind, byte_range=ByteRange("/x", 0, 0))

    f4 = np.dtype("float32")
    entries = [
        entry("a/kernel", (3, 4), f4), entry("a/bias", (4,), f4), entry("b/kernel", (3, 4), np.dtype("float16")),
        entry("b/ç€/bias", (), f4), entry("c/kernel", (3, 4), f4, "optimizer"),
        entry("c/empty", (0, 4), np.dtype(ml_dtypes.bfloat16), "bookkeeping"),
        entry("d/" + "wide_name_" * 6, (2048, 1024), f4), entry("e/count", [1], np.dtype("<i8"), "bookkeeping"),
        entry("e/kernel", (3, 4), f4.newbyteorder("=")),  # an equal dtype, another object
        entry("f/bias", (4,), f4),
    ]
    for chosen in (entries, entries[:1], entries[3:4], []):
        for all_kinds in (False, True):
            assert format_table("fmt", "/p", chosen, all_kinds=all_kinds) == _table_row_by_row(
                "fmt", "/p", chosen, all_kinds=all_kinds)
    assert entries[8].dtype is not f4
    totals = tally(entries)
    assert list(totals["by_dtype"]) == ["float32", "float16", "bfloat16", "int64"]
    assert totals["by_dtype"]["float32"] == {"tensors": 7, "values": 2097152 + 45, "nbytes": 4 * (2097152 + 45)}


@pytest.mark.parametrize(
    ("source", "given", "shown"),
    [
        ("examples/sample.keras", "sample.keras", "sample.keras"),
        ("examples/sample_tf_keras.h5", "sample_tf_keras.h5", "sample_tf_keras.h5"),
        ("tests/fixtures/pytorch/cnn.pt", "cnn.pt", "cnn.pt"),
        # a torch sharded set, by its directory and by its index
        ("tests/fixtures/pytorch/hf_sharded", "hf_sharded", "hf_sharded/pytorch_model.bin.index.json"),
        ("tests/fixtures/pytorch/hf_sharded", "hf_sharded/pytorch_model.bin.index.json",
         "hf_sharded/pytorch_model.bin.index.json"),
    ],
)
def test_inspect_names_the_file_as_it_was_given(source: str, given: str, shown: str, tmp_path: Path) -> None:
    """``./name`` stays ``./name`` in the listing and in ``--json`` (for every format: the
    torch reader once showed ``name``)."""
    root = Path(__file__).resolve().parent.parent
    copy = tmp_path / Path(source).name
    if (root / source).is_dir():
        shutil.copytree(root / source, copy)
    else:
        shutil.copy(root / source, copy)
    table = run_cli("inspect", f"./{given}", cwd=tmp_path)
    assert table.returncode == 0 and table.stdout.startswith(f"./{shown} ("), table.stdout + table.stderr
    listed = run_cli("inspect", f"./{given}", "--json", cwd=tmp_path)
    assert json.loads(listed.stdout)["path"] == f"./{shown}", listed.stdout


@pytest.mark.parametrize(
    ("args", "usage_line"),
    [
        (["convert", "{small}", "{tmp}/o.safetensors", "--dtype", "bfloa16"], True),  # argparse's type check
        (["convert", "{small}", "{tmp}/o.txt"], False),  # the API's UsageError (output name)
        (["transplant", "{small}", "{small}", "{tmp}/o.txt"], False),
        (["plan", "{small}", "--only", "dense*"], False),  # --only without --target
        (["batch", "-o", "{tmp}/o"], False),  # batch's own check: no inputs
        (["inspect", "{small}", "--jsn"], True),
    ],
)
def test_every_usage_error_has_its_commands_prefix(capsys, small: Path, tmp_path: Path, args: list[str],
                                                   usage_line: bool) -> None:
    """Whoever finds it (argparse, a value check of the API, batch), a usage error is one
    ``ckptconv COMMAND: error: ...`` line, after the command's usage line when argparse could not
    parse the command line; exit status 2."""
    code, out, err = run(capsys, *(a.format(small=small, tmp=tmp_path) for a in args))
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[-1].startswith(f"ckptconv {args[0]}: error: "), err
    assert lines[0].startswith(f"usage: ckptconv {args[0]} ") == usage_line, err
    if not usage_line:
        assert len(lines) == 1, err
