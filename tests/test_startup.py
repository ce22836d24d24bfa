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


def test_checksums_come_from_the_crc32c_package_without_its_metadata_lookup(tmp_path: Path) -> None:
    """Writing and checking CRC-32Cs loads the crc32c package's compiled function, not its
    ``__init__`` (which reads the package's metadata: 80-130 ms); a later ``import crc32c`` is
    the same function, and every value is the package's."""
    src, out = tmp_path / "src.safetensors", tmp_path / "out.safetensors"
    code = (
        "import sys, numpy as np, ckptconv\n"
        "from ckptconv.crc import crc32c\n"
        "from safetensors.numpy import save_file\n"
        f"save_file({{'w': np.arange(100000, dtype=np.float32)}}, {str(src)!r})\n"
        f"ckptconv.convert({str(src)!r}, {str(out)!r})\n"
        "assert ckptconv.verify_file(" + repr(str(out)) + ").ok\n"
        "loaded = [m for m in ('crc32c', 'importlib.metadata') if m in sys.modules]\n"
        "check = crc32c(b'123456789')\n"
        "import crc32c as package\n"
        "same = package.crc32c is sys.modules['crc32c._crc32c'].crc32c\n"
        "data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)\n"
        "agree = crc32c(data[100:], crc32c(data[:100])) == package.crc32c(data)\n"
        "print(loaded, hex(check), same, agree)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["[]", "0xe3069283", "True", "True"], done.stdout + done.stderr


def test_checksums_fall_back_on_importing_the_crc32c_package(monkeypatch) -> None:
    """Where the package is laid out otherwise (no compiled ``_crc32c`` beside its
    ``__init__``), the package is imported as usual."""
    import ckptconv.crc as crc

    monkeypatch.setattr(crc, "_function", None)
    monkeypatch.delitem(sys.modules, "crc32c._crc32c", raising=False)
    monkeypatch.setattr(crc.importlib.machinery, "EXTENSION_SUFFIXES", [".no-such-suffix"])
    assert crc.crc32c(b"123456789") == 0xE3069283
    import crc32c as package

    assert crc.crc32c_function() is package.crc32c
