"""Start-up (issue 18): ``ckptconv --help``, every subcommand's ``--help`` and usage errors
import neither numpy nor h5py (nor anything heavier), and ``import ckptconv`` alone does not
either: the package's exports load on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ckptconv.cli import COMMANDS

HEAVY = ("numpy", "h5py", "yaml", "ml_dtypes", "safetensors", "tensorflow", "keras", "torch", "jax")

_PROBE = """
import json, runpy, sys
argv = json.loads(sys.argv[1])
sys.argv = ["ckptconv", *argv]
try:
    runpy.run_module("ckptconv", run_name="__main__")
except SystemExit as e:
    status = e.code
else:
    status = 0
print(json.dumps({"status": status, "heavy": [m for m in %r if m in sys.modules]}))
"""


def _run(argv: list[str]) -> dict:
    probe = _PROBE % (list(HEAVY),)
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(argv)], capture_output=True, text=True,
                          timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_ckptconv_imports_nothing_heavy() -> None:
    code = f"import sys, ckptconv; print([m for m in {list(HEAVY)!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_help_and_usage_errors_import_nothing_heavy() -> None:
    cases = [["--help"], ["--version"], ["no-such-command"]]
    for command in COMMANDS:
        cases += [[command, "--help"], [command, "--no-such-option"]]
    for argv in cases:
        result = _run(argv)
        assert result["status"] in (0, 2), (argv, result)
        assert result["heavy"] == [], (argv, result)


def test_dtype_names_load_ml_dtypes_on_first_need() -> None:
    """ml_dtypes is imported when a bfloat16 or float8 name is first met, so dtype names given
    as text work in a fresh process before anything else imported it."""
    code = (
        "import sys; from ckptconv import dtypes; a = 'ml_dtypes' in sys.modules; "
        "print(a, dtypes.dtype_name('bfloat16'), dtypes.is_floating('float8_e5m2'), "
        "dtypes.from_safetensors('F8_E4M3'), dtypes.dtype_name(dtypes.by_name('bf16')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "bfloat16", "True", "float8_e4m3fn", "bfloat16"], done.stderr


def test_the_entry_point_runs_no_ckptconv_module_before_it_can_catch_ctrl_c() -> None:
    """The console script imports ``ckptconv.__main__`` (pyproject.toml) before anything can
    catch a Ctrl-C: that import runs the package's ``__init__`` and nothing else of ckptconv
    (the exceptions, like every export, load on first use), so the window where a Ctrl-C
    would print a traceback is as short as it can be."""
    code = (
        "import sys; import ckptconv.__main__ as m; import ckptconv; "
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'ckptconv'), "
        "ckptconv.CkptconvError.__module__, callable(m.run))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "['ckptconv', 'ckptconv.__main__'] ckptconv.errors True", done.stdout + done.stderr
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '\nckptconv = "ckptconv.__main__:run"\n' in pyproject
