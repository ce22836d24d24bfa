"""Interrupted and failing conversions leave nothing behind.

A large conversion (a few hundred MB written in ``tmp_path`` by the safetensors library) is
run by the real CLI in a subprocess and interrupted with SIGINT or SIGTERM once its temporary
output exists; the output directory must end up empty, the exit status must say which signal
ended it, stderr must be one line, and the input must be unchanged. Then the output side fails
on its own: a full disk (a tiny tmpfs, or a file size limit), a directory the process may not
write to, and outputs that would overwrite the input.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.helpers import tmpfs

BIG_TENSORS = 4
BIG_ELEMENTS = 20_000_000  # 4 x 80 MB of float32: 320 MB, a few seconds to convert with fsync


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def ckptconv(*args: object, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ckptconv", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[arg-type]
    )


def assert_one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    rng = np.random.default_rng(0)
    row = rng.standard_normal(1000, dtype=np.float32)
    save_file(
        {f"layer_{i}/kernel": np.tile(row + i, BIG_ELEMENTS // 1000) for i in range(BIG_TENSORS)},
        str(path),
    )
    yield path, digest(path)
    path.unlink()


def wait_for_temp_file(directory: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Poll until the writer's dot-prefixed temporary output appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(name.startswith(".") and name.endswith(".tmp") for name in listing(directory)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the conversion ended before it was interrupted: {proc.communicate()}")
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("no temporary output appeared")


@pytest.mark.parametrize(
    "sig, extra",
    [
        (signal.SIGINT, ()),
        (signal.SIGTERM, ()),
        (signal.SIGINT, ("--dtype", "float16")),
        (signal.SIGTERM, ("--dtype", "float16")),
    ],
    ids=["sigint-copy", "sigterm-copy", "sigint-cast", "sigterm-cast"],
)
def test_a_signal_during_conversion_leaves_nothing(
    big: tuple[Path, str], tmp_path: Path, sig: signal.Signals, extra: tuple[str, ...]
) -> None:
    src, before = big
    out = tmp_path / "out"
    out.mkdir()
    proc = ckptconv("convert", src, out / "model.safetensors", *extra)
    wait_for_temp_file(out, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    line = assert_one_line(stderr)
    assert line.startswith("ckptconv: ") and ("interrupted" in line or "terminated" in line)
    assert listing(out) == []
    assert digest(src) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("created", [".tmp", ".lock"], ids=["temporary-file", "lock-file"])
@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
def test_a_signal_while_an_output_file_is_created_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals, created: str, sharded: bool
) -> None:
    """The race behind the signal tests above failing now and then: the name of a new file is
    in the directory as soon as the kernel creates it, before ``open`` returns its descriptor.
    A signal arriving then was raised inside ``mkstemp`` (or the lock's ``open``), and the file
    was left behind with nobody knowing its name. Here the signal comes exactly then, every
    time: for the first file created (the lock, or the first temporary file) and, sharded,
    for a later shard's and the index's temporary files too."""
    import ckptconv
    from ckptconv.interrupts import Terminated, sigterm_raises

    src = tmp_path / "src.safetensors"
    save_file({f"w{i}": np.full(64, i, np.float32) for i in range(4)}, str(src))
    out = tmp_path / "out"
    out.mkdir()
    real_open = os.open
    seen = [0]
    nth = 3 if sharded and created == ".tmp" else 1  # sharded: the third temporary file

    def open_then_signal(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_CREAT and os.fspath(path).startswith(str(out)) and os.fspath(path).endswith(created):
            seen[0] += 1
            if seen[0] == nth:
                signal.raise_signal(sig)  # the signal lands before open has returned the file
        return fd

    monkeypatch.setattr(os, "open", open_then_signal)
    shards = {"max_shard_size": 300} if sharded else {}
    with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else Terminated), sigterm_raises():
        ckptconv.convert(src, out / "model.safetensors", **shards)
    monkeypatch.undo()
    assert seen[0] == nth
    assert listing(out) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_during_cleanup_still_removes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    """Ctrl-C pressed twice: the second one arrives while the first one's cleanup removes the
    temporary files of a sharded write. It used to cut the removal short after one file."""
    import ckptconv
    from ckptconv.interrupts import Terminated, sigterm_raises
    from ckptconv.writers import safetensors as writer

    src = tmp_path / "src.safetensors"
    save_file({f"w{i}": np.full(64, i, np.float32) for i in range(4)}, str(src))
    out = tmp_path / "out"
    out.mkdir()
    real_unlink, removals = os.unlink, [0]

    def first_signal(*args, **kwargs):  # type: ignore[no-untyped-def]
        signal.raise_signal(sig)  # all shards are written: the first Ctrl-C

    def unlink_then_signal(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_unlink(path, *args, **kwargs)
        if os.fspath(path).endswith(".tmp"):
            removals[0] += 1
            if removals[0] == 1:
                signal.raise_signal(sig)  # the second, while the cleanup is under way

    monkeypatch.setattr(writer, "_write_index", first_signal)
    monkeypatch.setattr(os, "unlink", unlink_then_signal)
    with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else Terminated), sigterm_raises():
        ckptconv.convert(src, out / "model.safetensors", max_shard_size=300)
    monkeypatch.undo()
    assert removals[0] == 4  # every shard's temporary file
    assert listing(out) == []


def test_a_sharded_conversion_interrupted_leaves_no_shard(big: tuple[Path, str], tmp_path: Path) -> None:
    src, before = big
    out = tmp_path / "out"
    out.mkdir()
    proc = ckptconv("convert", src, out / "model.safetensors", "--max-shard-size", "100MB")
    # wait until the first shard is complete and the second is being written
    deadline = time.monotonic() + 120
    while sum(name.endswith(".tmp") for name in listing(out)) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert_one_line(stderr)
    assert listing(out) == []
    assert digest(src) == before


def small_source(tmp_path: Path) -> Path:
    """A 4 MB safetensors file: too big for the tiny output filesystems below."""
    src = tmp_path / "src" / "small.safetensors"
    src.parent.mkdir()
    save_file({"w": np.arange(1_000_000, dtype=np.float32)}, str(src))
    return src


def run_cli(*args: object, preexec_fn=None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    command = [sys.executable, "-m", "ckptconv", *map(str, args)]
    if prefix:
        command = [*prefix, " ".join(f"'{c}'" for c in command)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn)


def limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an ignored SIGXFSZ makes write() fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


def test_a_file_size_limit_fails_the_write_in_one_line(tmp_path: Path) -> None:
    src = small_source(tmp_path)
    before = digest(src)
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("convert", src, out / "model.safetensors", preexec_fn=limit_file_size)
    assert proc.returncode == 1, proc.stderr
    line = assert_one_line(proc.stderr)
    assert line.startswith("ckptconv: error: ") and str(out / "model.safetensors") in line
    assert "File too large" in line
    assert listing(out) == []
    assert digest(src) == before


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (needs root and a mount-capable container; skipped otherwise)."""
    with tmpfs(tmp_path, "1m") as mount:
        yield mount


def test_a_full_disk_fails_in_one_line_and_leaves_nothing(tmp_path: Path, tiny_tmpfs: Path) -> None:
    src = small_source(tmp_path)
    before = digest(src)
    proc = run_cli("convert", src, tiny_tmpfs / "model.safetensors")
    assert proc.returncode == 1, proc.stderr
    line = assert_one_line(proc.stderr)
    assert line.startswith("ckptconv: error: ") and str(tiny_tmpfs / "model.safetensors") in line
    assert "No space left on device" in line
    assert listing(tiny_tmpfs) == []
    assert digest(src) == before


def test_an_unwritable_directory_fails_in_one_line(tmp_path: Path) -> None:
    src = small_source(tmp_path)
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root ignores modes: drop the capability that lets it
        capsh = shutil.which("capsh")
        if capsh is None:
            pytest.skip("running as root without capsh to drop CAP_DAC_OVERRIDE")
        prefix = (capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c")
    try:
        proc = run_cli("convert", src, out / "model.safetensors", prefix=prefix)
        assert proc.returncode == 1, proc.stderr
        line = assert_one_line(proc.stderr)
        assert line.startswith("ckptconv: error: ") and str(out) in line
        assert "Permission denied" in line
        assert listing(out) == []
    finally:
        out.chmod(0o755)


def test_output_equal_to_the_input_is_refused(tmp_path: Path) -> None:
    src = small_source(tmp_path)
    before = digest(src)
    for force in ((), ("--force",)):
        proc = run_cli("convert", src, src, *force)
        assert proc.returncode == 1
        line = assert_one_line(proc.stderr)
        assert "overwrite the input" in line and str(src) in line
        assert listing(src.parent) == [src.name]
        assert digest(src) == before
    # the same file under another name (a symlink) is still the input
    link = tmp_path / "src" / "alias.safetensors"
    link.symlink_to(src)
    proc = run_cli("convert", src, link, "--force")
    assert proc.returncode == 1 and "overwrite the input" in assert_one_line(proc.stderr)
    assert digest(src) == before


def test_output_inside_a_sharded_input_set_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "four.safetensors"
    save_file({f"w{i}": np.full(250_000, i, np.float32) for i in range(4)}, str(src))
    sharded = tmp_path / "set"
    sharded.mkdir()
    done = run_cli("convert", src, sharded / "model.safetensors", "--max-shard-size", "1MB")
    assert done.returncode == 0, done.stderr
    files = listing(sharded)
    index = sharded / "model.safetensors.index.json"
    shards = [sharded / name for name in files if name.endswith(".safetensors")]
    assert index.is_file() and len(shards) >= 2
    before = {name: digest(sharded / name) for name in files}
    # writing one of the set's own shards, or a set whose index is the input's index
    for dst in (shards[0], shards[-1], sharded / "model.safetensors"):
        proc = run_cli("convert", index, dst, "--force")
        assert proc.returncode == 1, (dst, proc.stderr)
        assert "overwrite the input" in assert_one_line(proc.stderr)
    assert listing(sharded) == files
    assert {name: digest(sharded / name) for name in files} == before


def test_sigterm_with_debug_still_ends_with_status_143(big: tuple[Path, str], tmp_path: Path) -> None:
    """One SIGTERM rule for the CLI and the library (``ckptconv.interrupts``): SIGTERM raises
    ``Terminated``, a SystemExit of status 143. The CLI used to raise a KeyboardInterrupt of its
    own instead, which ``--debug`` let through: the process then died as if by Ctrl-C."""
    src, before = big
    out = tmp_path / "out"
    out.mkdir()
    proc = ckptconv("--debug", "convert", src, out / "model.safetensors")
    wait_for_temp_file(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" in stderr and "ckptconv.interrupts.Terminated" in stderr
    assert listing(out) == []
    assert digest(src) == before


LOAD_CHILD = """
import os, signal, sys
import numpy as np
import keras
import ckptconv
from ckptconv.interrupts import sigterm_raises
from ckptconv.keras import assign

sig = int(sys.argv[1])
model = keras.Sequential([keras.Input((4,)), *[keras.layers.Dense(4, name=f"d{i}") for i in range(60)]])
before = [w.copy() for w in model.get_weights()]
source = {f"d{i}/{part}": np.full(shape, 7.0, np.float32)
          for i in range(60) for part, shape in (("kernel", (4, 4)), ("bias", (4,)))}
real, layers = assign._assign_layer, [0]

def interrupted_at_16(*args):  # a real signal, delivered while layer 16 of 60 is assigned
    layers[0] += 1
    if layers[0] == 16:
        os.kill(os.getpid(), sig)
    real(*args)

assign._assign_layer = interrupted_at_16
try:
    with sigterm_raises():
        ckptconv.load_into(model, source)
    print("RETURNED")
except BaseException as e:
    print("RAISED", type(e).__name__, "after", layers[0], "layers")
after = model.get_weights()
loaded = sum(bool((a == 7.0).all()) for a in after)
untouched = sum(bool((a == b).all()) for a, b in zip(after, before))
print("LOADED", loaded, "UNTOUCHED", untouched, "OF", len(after))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_load_leaves_the_model_fully_loaded(sig: signal.Signals) -> None:
    """Ctrl-C (or SIGTERM) in the middle of load_into's assignment waits for the last layer,
    then raises: the model is never half loaded (16 of 60 layers new, before)."""
    env = dict(os.environ, KERAS_BACKEND="numpy", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(int(sig))], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    expected = "KeyboardInterrupt" if sig == signal.SIGINT else "Terminated"
    assert lines[0] == f"RAISED {expected} after 60 layers", proc.stdout
    assert lines[1] == "LOADED 120 UNTOUCHED 0 OF 120", proc.stdout


# -- Ctrl-C while the command starts -----------------------------------------------------------

_CTRL_C_WHILE_IMPORTING = """
import signal, sys

class CtrlC:
    '''Press Ctrl-C the moment {module} starts to load, as a user may in the first tenths of a
    second, while the command's modules are imported.'''
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["ckptconv", *{argv!r}]
from ckptconv.__main__ import run  # the console script's entry point (pyproject.toml)
raise SystemExit(run())
"""


@pytest.mark.parametrize(
    "module",
    [
        "ckptconv.cli",  # the command line itself, imported by the entry point
        "argparse",  # a module the command line imports
        "ckptconv.cli.inspect_cmd",  # while the parser is built
        "ckptconv.formats",  # the command's own imports
        "datetime",  # inside numpy's C extension, which reports any failure as an ImportError
    ],
)
@pytest.mark.parametrize("json_output", [False, True])
def test_ctrl_c_while_the_command_starts_prints_the_interrupted_line(
    module: str, json_output: bool, tmp_path: Path
) -> None:
    src = Path(__file__).resolve().parent.parent / "examples" / "sample.keras"
    argv = ["inspect", str(src), *(["--json"] if json_output else [])]
    proc = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_IMPORTING.format(module=module, argv=argv)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "ckptconv: interrupted; no partial output was left behind\n"
    if json_output:
        assert json.loads(proc.stdout) == {
            "ok": False, "error": {"type": "KeyboardInterrupt", "message": "interrupted", "exit": 130}
        }
    else:
        assert proc.stdout == ""


@pytest.mark.parametrize("module", ["ckptconv.cli", "ckptconv.formats"])
def test_ctrl_c_while_the_command_starts_with_debug_is_a_traceback(module: str, tmp_path: Path) -> None:
    """--debug lets the early Ctrl-C through, as it does a later one: Python prints the
    traceback and ends by the signal."""
    src = Path(__file__).resolve().parent.parent / "examples" / "sample.keras"
    argv = ["--debug", "inspect", str(src)]
    proc = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_IMPORTING.format(module=module, argv=argv)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == -signal.SIGINT, proc.stderr
    assert proc.stderr.startswith("Traceback") and proc.stderr.rstrip().endswith("KeyboardInterrupt"), proc.stderr
    assert "no partial output" not in proc.stderr
