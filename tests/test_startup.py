"""Start-up (issue 18): ``ckptconv --help``, every subcommand's ``--help`` and usage errors
import neither numpy nor h5py (nor anything heavier), and ``import ckptconv`` alone does not
either: the package's exports load on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ckptconv.cli import COMMANDS

HEAVY = ("numpy", "h5py", "yaml", "ml_dtypes", "safetensors", "tensorflow", "keras", "torch", "jax")

_MODULES_PROBE = """
import runpy, sys
sys.argv = ["ckptconv", *sys.argv[1:]]
try:
    runpy.run_module("ckptconv", run_name="__main__")
except SystemExit as e:
    status = e.code
else:
    status = 0
print(repr((status, sorted(sys.modules))))
"""


def _modules_of(argv: list[str]) -> tuple[int, set[str], str]:
    """The exit status of ``ckptconv ARGV`` in a fresh process, the modules it imported, and
    what it printed."""
    import ast

    done = subprocess.run([sys.executable, "-c", _MODULES_PROBE, *argv], capture_output=True, text=True,
                          timeout=120, check=False)
    printed, _, last = done.stdout.strip().rpartition("\n")
    status, modules = ast.literal_eval(last)  # (the probe imports nothing to print it: not json)
    return status, set(modules), printed


def _run(argv: list[str]) -> dict:
    """``ckptconv ARGV``'s exit status and the heavy modules it imported."""
    status, modules, _ = _modules_of(argv)
    return {"status": status, "heavy": [m for m in HEAVY if m in modules]}


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


# --- what reading a file costs before and around it -------------------------------------------

def _safetensors_file(tmp_path: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"dense/kernel": np.ones((2, 3), np.float32), "dense/bias": np.zeros(3, np.float32)}, str(path))
    return path


# modules the common formats are read without (pathlib: ~9 ms with urllib.parse and ipaddress;
# zipfile: ~6 ms with shutil, bz2 and lzma; json: ~3 ms, which an HDF5 file does not need;
# the CRC-32C code with threading: ~3 ms, and listing a file checks no tensor's checksum)
_NOT_FOR = {
    "keras-archive": {"pathlib", "zipfile", "shutil", "ckptconv.crc", "threading"},
    "keras-weights-h5": {"pathlib", "zipfile", "json", "ckptconv.crc", "threading"},
    "keras-h5": {"pathlib", "zipfile", "json", "ckptconv.crc", "threading"},
    "safetensors": {"pathlib", "zipfile", "h5py", "ckptconv.crc", "threading"},
}


@pytest.mark.parametrize("kind", sorted(_NOT_FOR))
def test_inspect_imports_only_what_its_format_needs(kind: str, generated, tmp_path: Path) -> None:
    """``inspect`` of a .keras, .weights.h5, legacy .h5 or safetensors file builds only the
    ``inspect`` parser (no other command's module is imported) and imports neither pathlib
    nor zipfile (nor json for an HDF5 file): each costs start-up time a small file's whole
    read does not."""
    root = Path(__file__).resolve().parent.parent
    path = {
        "keras-archive": root / "examples" / "sample.keras",
        "keras-weights-h5": generated("keras") / "k3_zoo.weights.h5",
        "keras-h5": root / "examples" / "sample_tf_keras.h5",
        "safetensors": _safetensors_file(tmp_path),
    }[kind]
    status, modules, listing = _modules_of(["inspect", str(path)])
    assert status == 0 and listing.startswith(f"{path} ({kind})\n"), listing
    commands = {m for m in modules if m.startswith("ckptconv.cli.") and m.endswith("_cmd")}
    assert commands == {"ckptconv.cli.inspect_cmd"}
    assert modules & _NOT_FOR[kind] == set()


def test_a_command_is_parsed_by_its_own_parser_alone(monkeypatch, capsys) -> None:
    """``main`` builds the parser of the command asked for only (``command_of``); what the
    command line prints and returns is then byte for byte what the full parser (the one
    docs/cli.md is generated from) gives: ``--help``, every usage error, with and without
    ``--json`` and ``--debug``, and the top-level cases, which the full parser answers."""
    from ckptconv import cli

    monkeypatch.setenv("COLUMNS", "100")
    cases: list[list[str]] = [[], ["--help"], ["-h", "inspect"], ["--version"], ["--version", "inspect"],
                              ["inspekt", "x"], ["--debug"], ["--no-such-option", "inspect", "x"],
                              ["--", "inspect"], ["--debug=1", "inspect"]]
    for command in cli.COMMANDS:
        cases += [[command, "--help"], ["--debug", command, "-h"], [command], [command, "--no-such-option"],
                  [command, "--json", "--no-such-option"], [command, "a", "b", "c", "d", "e"]]
    cases += [["diff", "a", "b", "--atol", "x"], ["convert", "a", "b.safetensors", "--dtype", "bfloat17"],
              ["batch", "--jobs", "0", "x"]]

    command_of = cli.command_of

    def outcome(argv: list[str], full: bool) -> tuple[object, str, str]:
        monkeypatch.setattr(cli, "command_of", (lambda argv: None) if full else command_of)
        try:
            status: object = cli.main(argv)
        except SystemExit as e:  # --help, --version
            status = ("exit", e.code)
        out, err = capsys.readouterr()
        return status, out, err

    told = 0
    for argv in cases:
        alone = outcome(argv, full=False)
        assert alone == outcome(argv, full=True), argv
        assert alone[0] in (0, 1, 2, ("exit", 0)), (argv, alone)
        told += command_of(argv) is not None
    assert told >= 5 * len(cli.COMMANDS)  # the single-command parser answered most cases


def test_command_of_names_the_command_only_when_nothing_else_can_answer() -> None:
    from ckptconv.cli import command_of

    assert command_of(["inspect", "x"]) == "inspect"
    assert command_of(["--debug", "diff", "a", "b"]) == "diff"
    assert command_of(["convert", "--help"]) == "convert"
    for argv in ([], ["--help"], ["-h", "inspect"], ["--version", "inspect"], ["inspekt"], ["--debug"],
                 ["--", "inspect"], ["--deb", "inspect"], ["x", "inspect"]):
        assert command_of(argv) is None, argv


def test_signal_rules_do_nothing_outside_the_main_thread() -> None:
    """The three signal rules run in a worker thread (a batch job's, a pool's) as plain
    blocks: no handler installed (Python refuses it there), nothing raised, the block's own
    exception passes through, and the main thread's handlers stay as they were."""
    import signal
    import threading

    from ckptconv.interrupts import (
        deferred_interrupts,
        interrupts_noted,
        sigterm_raises,
    )

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    results: list[object] = []

    def work() -> None:
        try:
            with sigterm_raises():
                results.append(signal.getsignal(signal.SIGTERM))
            with interrupts_noted() as noted:
                results.append(noted.seen)
            with deferred_interrupts():
                results.append("deferred")
            try:
                with deferred_interrupts(), sigterm_raises():
                    raise LookupError("the block's own")
            except LookupError as e:
                results.append(str(e))
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            results.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert results == [before[1], False, "deferred", "the block's own"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("filename", ["k3_zoo.weights.h5", "k3_zoo.keras", "tk_zoo.h5"])
def test_small_levels_of_the_hdf5_walk_are_parsed_one_by_one_with_the_same_result(
    filename: str, generated, monkeypatch
) -> None:
    """The walk parses a level of fewer than ``BATCH_MIN`` objects one by one (a numpy batch
    has a fixed cost of about 1.5 ms, a small file's whole read without it); every level
    batched, none batched and the default give the same headers, links and ranges."""
    import numpy as np

    from ckptconv.formats import _hdf5_links

    path = generated("keras") / filename
    if filename.endswith(".keras"):
        import zipfile

        with zipfile.ZipFile(path) as z:
            data = z.read("model.weights.h5")
    else:
        data = path.read_bytes()
    image = np.frombuffer(data, np.uint8)

    def walk(batch_min: int) -> tuple[object, dict[str, int]]:
        monkeypatch.setattr(_hdf5_links, "BATCH_MIN", batch_min)
        calls = {"headers": 0, "links": 0}
        headers_of, links_of = _hdf5_links.object_headers, _hdf5_links.SymbolTables.many_links

        def headers(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["headers"] += 1
            return headers_of(*args, **kwargs)

        def links(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["links"] += 1
            return links_of(*args, **kwargs)

        monkeypatch.setattr(_hdf5_links, "object_headers", headers)
        monkeypatch.setattr(_hdf5_links.SymbolTables, "many_links", links)
        try:
            found = _hdf5_links.walk(
                lambda: None, lambda offset, n: data[offset : offset + n], len(data), path=filename,
                skip_min=1 << 62, image=image, root=_hdf5_links.superblock_root(data[:96], len(data)),
            )
        finally:
            monkeypatch.setattr(_hdf5_links, "object_headers", headers_of)
            monkeypatch.setattr(_hdf5_links.SymbolTables, "many_links", links_of)
        headers_found, groups, ranges = found
        return (list(headers_found.items()), list(groups.items()), ranges), calls

    batched, calls_batched = walk(1)
    alone, calls_alone = walk(1 << 30)
    default, _ = walk(_hdf5_links.BATCH_MIN)
    assert calls_batched["headers"] > 0 and calls_batched["links"] > 0
    assert calls_alone == {"headers": 0, "links": 0}
    assert batched == alone == default
    assert len(batched[0]) > 20  # the walk described the file (not an empty result thrice)


_THREADS_PROBE = """
import os, sys
{before}
print(len(os.listdir("/proc/self/task")), os.environ.get("OPENBLAS_NUM_THREADS"))
"""
_BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def _threads_after(before: str, **env: str) -> tuple[int, str | None]:
    """The threads of a fresh process once ``before`` ran, and its OPENBLAS_NUM_THREADS."""
    import os

    clean = {k: v for k, v in os.environ.items() if k not in _BLAS_VARIABLES} | env
    done = subprocess.run([sys.executable, "-c", _THREADS_PROBE.format(before=before)], env=clean,
                          capture_output=True, text=True, timeout=120, check=True)
    threads, value = done.stdout.split()[-2:]
    return int(threads), None if value == "None" else value


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_commands_load_numpy_without_openblas_threads() -> None:
    """OpenBLAS starts a thread per further core as numpy loads; no command does linear
    algebra, so the command line asks for one thread, unless the user set a count."""
    sample = Path(__file__).resolve().parent.parent / "examples" / "sample.keras"
    plain, _ = _threads_after("import numpy")
    if plain <= 1:
        pytest.skip("OpenBLAS starts no thread of its own on this machine (one core?)")
    command = f"from ckptconv.cli import main; assert main(['inspect', {str(sample)!r}]) == 0"
    threads, value = _threads_after(command)
    assert (threads, value) == (1, "1")
    # a count the user set is theirs: nothing is added
    assert _threads_after(command, OMP_NUM_THREADS="2")[1] is None
    assert _threads_after(command, OPENBLAS_NUM_THREADS="2") == (plain, "2")
    # a program importing ckptconv is left alone
    assert _threads_after("import ckptconv, numpy; ckptconv.open") == (plain, None)
