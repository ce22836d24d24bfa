"""Output sets never lose the user's files and never mix two conversions.

* ``--force`` removes only files that are provably ckptconv shards of the output: a stale index
  naming ``train.py``, ``README.md`` or a directory loses nothing.
* Every sharded set records its identity in each shard and in the index; every reader and
  ``verify`` refuse a set whose files come from two writes, as an incomplete set.
* Replacing a set is crash-safe: the process is killed (SIGKILL, and SIGTERM) at every rename,
  link and removal of a sharded replace, and every reader then sees the old set, the new set or
  a clear "incomplete set" error; running the conversion again completes it.
* A second writer of the same output fails in one line while the first holds the lock.
* ``convert --verify`` reads the output back before it takes its name: a failed verification
  leaves nothing, with or without ``--no-checksum``.

Sources are written by the safetensors library; every set here by ckptconv itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ckptconv
from ckptconv import CorruptFileError
from ckptconv.cli import main
from ckptconv.writers.outputs import OutputLock
from tests.helpers import run_cli

SHARD = "400"  # bytes per shard: each 100-float32 tensor gets a shard of its own


def source(path: Path, value: float, count: int = 3) -> Path:
    save_file({f"t{i}": np.full(100, value + i, np.float32) for i in range(count)}, str(path))
    return path


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def visible(directory: Path) -> list[str]:
    return [name for name in listing(directory) if not name.startswith(".")]


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- --force never deletes what ckptconv did not write ---------------------------------------


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_force_never_deletes_what_a_stale_index_names(tmp_path: Path, sharded: bool) -> None:
    """A stale ``m.safetensors.index.json`` names the user's files: --force replaces the
    output (and that index), and every file it names is still there, byte for byte."""
    src = source(tmp_path / "src.safetensors", 1.0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.py").write_text("print('training')\n")
    (out / "README.md").write_text("# my model\n")
    (out / "data").mkdir()
    (out / "data" / "x.bin").write_bytes(b"keep")
    (out / "m-00001-of-00009.safetensors").write_bytes(b"a file of mine, named like a shard")
    index = out / "m.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {
        "a": "train.py", "b": "README.md", "c": "data", "d": "m-00001-of-00009.safetensors",
    }}))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p != index}
    extra = ["--max-shard-size", "1KB"] if sharded else []
    status = main(["convert", str(src), str(out / "m.safetensors"), "--force", "--quiet", *extra])
    assert status == 0
    assert {p: p.read_bytes() for p in before} == before  # nothing the user wrote is touched
    assert (out / "data").is_dir()
    written = out / ("m.safetensors.index.json" if sharded else "m.safetensors")
    assert ckptconv.verify_file(written).ok
    if not sharded:
        assert not index.exists()  # the output's own stale index is gone with the old output


def test_force_refuses_a_stranger_in_the_way_of_a_shard(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = source(tmp_path / "src.safetensors", 1.0, count=2)
    out = tmp_path / "out"
    out.mkdir()
    stranger = out / "m-00002-of-00002.safetensors"
    save_file({"mine": np.zeros(3, np.float32)}, str(stranger))  # safetensors, but not ckptconv's
    before = stranger.read_bytes()
    status = main(["convert", str(src), str(out / "m.safetensors"), "--force", "--max-shard-size", SHARD])
    assert status == 1
    line = one_line(capsys.readouterr().err)
    assert str(stranger) in line and "did not write it" in line
    assert listing(out) == [stranger.name] and stranger.read_bytes() == before


# --- set identity ----------------------------------------------------------------------------


def write_set(directory: Path, value: float, *, count: int = 3, name: str = "m") -> Path:
    directory.mkdir(exist_ok=True)
    src = source(directory.parent / f"src-{value}.safetensors", value, count)
    result = ckptconv.convert(src, directory / f"{name}.safetensors", max_shard_size=int(SHARD), force=True, fsync=False)
    assert len(result.files) == count + 1
    return directory / f"{name}.safetensors.index.json"


def test_a_set_mixing_two_writes_is_refused_everywhere(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Same names, same shapes, another conversion: one shard swapped in from it is caught by
    ckptconv.open, inspect, convert, verify (the index, the directory, a shard) and load."""
    index = write_set(tmp_path / "a", 1.0)
    other = write_set(tmp_path / "b", 2.0)
    swapped = index.parent / "m-00002-of-00003.safetensors"
    swapped.write_bytes((other.parent / swapped.name).read_bytes())
    for path in (index, index.parent):
        with pytest.raises(CorruptFileError, match="the set is incomplete") as info:
            ckptconv.open(path)
        assert info.value.path == str(swapped)
    for command in (["inspect", str(index)], ["convert", str(index), str(tmp_path / "x.safetensors")]):
        assert main(command) == 1
        line = one_line(capsys.readouterr().err)
        assert str(swapped) in line and "incomplete" in line and "mixes two conversions" in line
    assert not (tmp_path / "x.safetensors").exists()
    for given in (index, index.parent, index.parent / "m-00001-of-00003.safetensors", swapped):
        with pytest.raises(CorruptFileError, match="incomplete"):
            ckptconv.verify_file(given)
    assert main(["verify", str(index)]) == 1
    assert "incomplete" in one_line(capsys.readouterr().err)  # a failed file: one line on stderr
    # the shards themselves are intact: each verifies alone once no index claims it
    (index.parent / "m.safetensors.index.json").unlink()
    with pytest.raises(CorruptFileError, match="index m.safetensors.index.json is missing"):
        ckptconv.verify_file(swapped)


def test_the_same_conversion_gives_the_same_set(tmp_path: Path) -> None:
    """The identity is derived from the shards' headers and checksums: converting again gives
    byte-identical shards (so a replace by the same data can never look mixed)."""
    first = write_set(tmp_path / "a", 1.0)
    second = write_set(tmp_path / "b", 1.0)
    for name in listing(first.parent):
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes(), name
    third = write_set(tmp_path / "c", 3.0)
    assert json.loads(third.read_text())["metadata"]["ckptconv.set"] != json.loads(first.read_text())["metadata"]["ckptconv.set"]


# --- killed at every step of a sharded replace ----------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    step, sig = int(sys.argv[1]), int(sys.argv[2])
    calls = [0]
    def counted(real):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == step:
                os.kill(os.getpid(), sig)
            return real(*args, **kwargs)
        return wrapper
    from ckptconv.cli import main
    for name in ("replace", "rename", "link", "unlink"):
        setattr(os, name, counted(getattr(os, name)))
    status = main(sys.argv[3:])
    print("CALLS", calls[0], flush=True)
    sys.exit(status)
    """
)


def run_child(step: int, sig: int, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(step), str(sig), *map(str, args)],
        capture_output=True, text=True, timeout=120,
    )


def values(store: ckptconv.Store) -> dict[str, float]:
    return {name: float(store[name].read()[0]) for name in store}


def what_readers_see(index: Path) -> set[str]:
    """'old', 'new' or 'incomplete' for every way of reading the set (and verifying it)."""
    old = {f"t{i}": 1.0 + i for i in range(3)}
    new = {f"t{i}": 5.0 + i for i in range(NEW_COUNT)}
    seen = set()
    try:
        with ckptconv.open(index) as store:
            got = values(store)
        assert got in (old, new), got
        seen.add("old" if got == old else "new")
    except CorruptFileError as e:
        assert "incomplete" in str(e), e
        seen.add("incomplete")
    for given in [index, *sorted(index.parent.glob("m-*.safetensors"))]:
        try:
            result = ckptconv.verify_file(given)
            assert result.ok
        except CorruptFileError as e:
            assert "incomplete" in str(e), e
            seen.add("incomplete")
    return seen


NEW_COUNT = 3


@pytest.mark.parametrize(
    "sig, new_count",
    [(signal.SIGKILL, 3), (signal.SIGKILL, 2), (signal.SIGTERM, 3)],
    ids=["SIGKILL-same-shard-names", "SIGKILL-other-shard-count", "SIGTERM"],
)
def test_killed_at_every_step_of_a_replace(tmp_path: Path, sig: int, new_count: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys.modules[__name__], "NEW_COUNT", new_count)
    new_src = source(tmp_path / "new.safetensors", 5.0, new_count)
    command = ["convert", new_src, None, "--force", "--max-shard-size", SHARD, "--quiet"]
    # an undisturbed replace: how many renames, links and removals it makes
    clean = tmp_path / "clean"
    write_set(clean, 1.0)
    command[2] = clean / "m.safetensors"
    done = run_child(10**9, sig, *command)
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout.split("CALLS")[1])
    assert steps >= new_count + 1
    outcomes = set()
    for step in range(1, steps + 1):
        out = tmp_path / f"step{step}"
        index = write_set(out, 1.0)
        command[2] = out / "m.safetensors"
        proc = run_child(step, sig, *command)
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL, (step, proc.stderr)
        else:  # SIGTERM waits for the commit, then ends the run with status 143
            assert proc.returncode in (0, 143), (step, proc.stderr)
            assert "Traceback" not in proc.stderr
        seen = what_readers_see(index)
        outcomes |= seen
        if sig == signal.SIGTERM:
            assert seen == {"new"}, (step, seen)  # held back until the commit was complete
        # recovery: the same conversion again completes the replace
        assert main([str(c) for c in command]) == 0, step
        assert what_readers_see(index) == {"new"}
        names = [f"m-{i:05d}-of-{new_count:05d}.safetensors" for i in range(1, new_count + 1)]
        assert visible(out) == sorted([*names, "m.safetensors.index.json"]), step
        for leftover in set(listing(out)) - set(visible(out)):  # hidden: only ours, documented
            # the killed run's temporary files and lock went with the recovery run
            assert leftover.endswith(".old"), leftover
    if sig == signal.SIGKILL:
        assert "incomplete" in outcomes and {"old", "new"} <= outcomes, outcomes


# --- the lock --------------------------------------------------------------------------------


def test_a_second_writer_fails_in_one_line(tmp_path: Path) -> None:
    src = source(tmp_path / "src.safetensors", 1.0)
    out = tmp_path / "out"
    index = write_set(out, 1.0)
    before = {name: (out / name).read_bytes() for name in listing(out)}
    with OutputLock(str(out / "m.safetensors")):  # another writer is at work
        proc = run_cli("convert", src, out / "m.safetensors", "--force", "--max-shard-size", SHARD)
        assert proc.returncode == 1
        line = one_line(proc.stderr)
        assert "another ckptconv process is writing this output" in line and str(out / "m.safetensors") in line
    assert {name: (out / name).read_bytes() for name in listing(out)} == before
    assert ckptconv.verify_file(index).ok
    done = run_cli("convert", src, out / "m.safetensors", "--force", "--max-shard-size", SHARD)
    assert done.returncode == 0, done.stderr
    assert listing(out) == visible(out)  # the lock file goes with its holder


def test_without_flock_the_lock_file_is_removed_only_if_this_writer_made_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A file system without ``flock`` (ENOLCK, some network mounts): the write goes on
    unlocked. The lock file it created goes with it (it used to stay behind); one that was
    there before is another writer's and stays."""
    import errno
    import fcntl

    def no_flock(fd, op):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    src = source(tmp_path / "src.safetensors", 1.0)
    out = tmp_path / "out"
    out.mkdir()
    ckptconv.convert(src, out / "m.safetensors")
    assert listing(out) == ["m.safetensors"]
    theirs = out / ".m.safetensors.lock"
    theirs.write_bytes(b"")
    ckptconv.convert(src, out / "m.safetensors", force=True)
    assert listing(out) == [".m.safetensors.lock", "m.safetensors"]


# --- what a writer killed outright leaves: swept by the next writer of the output -----------------

_KILLED_WRITER = """
import os, signal, sys
from ckptconv import Rule, Spec, convert
seen = []
def die_at_the_second(array):
    seen.append(1)
    if len(seen) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup can run
    return array
op = {"fn": die_at_the_second, "shape": lambda s: s, "dtype": lambda d: d}
convert(sys.argv[1], sys.argv[2], mapping=Spec(rules=[Rule(from_="**", ops=[op])]),
        max_shard_size=None if sys.argv[3] == "none" else int(sys.argv[3]))
"""


def kill_a_writer(src: Path, dst: Path, shard: str | None) -> list[str]:
    """Run a conversion to ``dst`` that SIGKILLs itself on its second tensor; its leftovers."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(src), str(dst), shard or "none"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return [name for name in listing(dst.parent) if name.endswith(".tmp")]


@pytest.mark.parametrize("shard", [None, SHARD], ids=["file", "sharded"])
def test_the_next_writer_sweeps_what_a_killed_writer_left(tmp_path: Path, shard: str | None) -> None:
    src = source(tmp_path / "src.safetensors", 1.0)
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "m.safetensors"
    killed = kill_a_writer(src, dst, shard)
    assert len(killed) == (2 if shard else 1)
    assert listing(out) == sorted([*killed, ".m.safetensors.lock"])
    # what ckptconv did not write, or not this file: a name like its own, a file put in the
    # place of one it wrote (another inode), another output's
    decoys = {".m.safetensors.abcd1234.tmp": b"mine", ".other.safetensors.abcd1234.tmp": b"theirs"}
    if shard:
        (out / killed[0]).unlink()
        decoys[killed[0]] = b"a new file under the old name"
    for name, data in decoys.items():
        (out / name).write_bytes(data)
    args = ["convert", str(src), str(dst)] + (["--max-shard-size", shard] if shard else [])
    assert main(args) == 0
    outputs = [f"m-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)] + ["m.safetensors.index.json"]
    assert listing(out) == sorted([*(outputs if shard else ["m.safetensors"]), *decoys])
    assert {name: (out / name).read_bytes() for name in decoys} == decoys


def _journal(lock: Path, writer: dict, temps: list[Path]) -> None:
    lines = [json.dumps({"ckptconv-writer": 1, **writer})]
    for temp in temps:
        st = temp.stat()
        lines.append(json.dumps({"temp": temp.name, "dev": st.st_dev, "ino": st.st_ino}))
    lock.write_text("\n".join(lines) + "\n")


def test_a_temporary_file_is_swept_only_when_its_writer_is_provably_gone(tmp_path: Path) -> None:
    """The journal's writer must have run on this host and be gone (no such process now, or
    another boot); a live process's files, or another machine's, stay."""
    src = source(tmp_path / "src.safetensors", 1.0)
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "m.safetensors"
    host = os.uname().nodename
    boot_file = Path("/proc/sys/kernel/random/boot_id")
    boot = boot_file.read_text().strip() if boot_file.exists() else ""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = int(finished.stdout)  # a process id no process has now (the test runs in well under a minute)
    cases = [
        ({"host": host, "boot": boot, "pid": os.getpid()}, False),  # alive: this test
        ({"host": "another-machine", "boot": boot, "pid": dead}, False),  # not ours to judge
        ({"host": host, "boot": boot, "pid": dead}, True),
    ]
    if boot:
        cases.append(({"host": host, "boot": "an-earlier-boot", "pid": os.getpid()}, True))
    for writer, swept in cases:
        temp = out / ".m.safetensors.x1y2z3w4.tmp"
        temp.write_bytes(b"half a file")
        _journal(out / ".m.safetensors.lock", writer, [temp])
        assert ckptconv.convert(src, dst, force=True).tensors == 3
        assert temp.exists() is not swept, writer
        assert not (out / ".m.safetensors.lock").exists()
        temp.unlink(missing_ok=True)


def test_a_killed_save_through_atomic_file_is_swept_too(tmp_path: Path) -> None:
    """``transplant``'s Keras save goes through ``atomic_file`` (its temporary name ends in
    ``.tmp.keras``): the same journal, the same sweep."""
    final = tmp_path / "model.keras"
    code = textwrap.dedent(f"""
        import os, signal
        from ckptconv.writers.outputs import atomic_file
        with atomic_file({str(final)!r}, suffix=".tmp.keras") as tmp:
            open(tmp, "wb").write(b"half a model")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = listing(tmp_path)
    assert len(left) == 2 and ".model.keras.lock" in left
    assert next(name for name in left if name != ".model.keras.lock").endswith(".tmp.keras"), left
    from ckptconv.writers.outputs import atomic_file

    with atomic_file(final) as tmp:
        Path(tmp).write_bytes(b"a model")
    assert listing(tmp_path) == ["model.keras"]


# --- --verify before the output takes its name ---------------------------------------------


@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "no-checksum"])
def test_a_failed_verify_leaves_no_output(tmp_path: Path, monkeypatch, checksum: bool) -> None:  # type: ignore[no-untyped-def]
    """The disk returns another byte than was written (simulated by changing the finished
    temporary file): convert --verify fails and nothing takes the output's name."""
    from ckptconv.writers import safetensors as writer

    src = source(tmp_path / "src.safetensors", 1.0)
    out = tmp_path / "out"
    out.mkdir()
    real = writer._verify_written

    def rot_then_verify(w):  # type: ignore[no-untyped-def]
        with open(w.tmp, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 1]))
        real(w)

    monkeypatch.setattr(writer, "_verify_written", rot_then_verify)
    with pytest.raises(ckptconv.IntegrityError, match="verification after writing failed .* t2") as info:
        ckptconv.convert(src, out / "m.safetensors", verify=True, checksum=checksum)
    assert "nothing was put in place" in str(info.value)
    assert listing(out) == []


def test_verify_works_without_recorded_checksums(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = source(tmp_path / "src.safetensors", 1.0)
    status = main(["convert", str(src), str(tmp_path / "m.safetensors"), "--no-checksum", "--verify", "-q"])
    assert status == 0, capsys.readouterr().err
    with ckptconv.open(tmp_path / "m.safetensors") as store:
        assert "ckptconv.crc32c" not in store.metadata and values(store) == {"t0": 1.0, "t1": 2.0, "t2": 3.0}


# --- names the file system cannot hold ------------------------------------------------------


def test_a_250_character_output_name(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Its temporary and lock names would pass 255 bytes: they are shortened. A sharded set's
    shard names would pass it too: refused in one line before anything is written."""
    src = source(tmp_path / "src.safetensors", 1.0)
    out = tmp_path / "out"
    out.mkdir()
    long = out / ("é" * 10 + "x" * (250 - 20 - len(".safetensors")) + ".safetensors")
    assert len(long.name.encode()) == 250
    assert main(["convert", str(src), str(long), "-q"]) == 0
    assert listing(out) == [long.name] and ckptconv.verify_file(long).ok
    assert main(["convert", str(src), str(long), "-q", "--force"]) == 0
    assert listing(out) == [long.name]
    long.unlink()
    assert main(["convert", str(src), str(long), "--max-shard-size", SHARD]) == 1
    line = one_line(capsys.readouterr().err)
    assert "longer than the 255 this file system allows" in line
    assert listing(out) == []


# --- batch and transplant refuse outputs that are inputs ------------------------------------


def test_batch_refuses_an_output_that_is_another_inputs_file(tmp_path: Path) -> None:
    """Input 0's output (``in/0.safetensors``) is input 1: refused in one line before any
    work, whatever the order the jobs would run in; nothing written, nothing changed."""
    ins = tmp_path / "in"
    ins.mkdir()
    a = ins / "a.h5"
    source(a, 1.0)  # safetensors content: the format is read from the content
    zero = source(ins / "0.safetensors", 2.0)
    before = {p.name: p.read_bytes() for p in ins.iterdir()}
    proc = run_cli("batch", a, zero, "-o", ins, "--name-pattern", "{index}.safetensors", "--force")
    assert proc.returncode == 1, proc.stderr
    line = one_line(proc.stderr)
    assert f"the output of {a} would overwrite {zero}, a file of the input {zero}" in line
    assert proc.stdout == ""  # no job ran
    assert {p.name: p.read_bytes() for p in ins.iterdir()} == before
    out = tmp_path / "out"  # the control: elsewhere it converts
    assert run_cli("batch", a, zero, "-o", out, "--name-pattern", "{index}.safetensors").returncode == 0


def test_batch_refuses_an_output_whose_set_would_take_an_inputs_shard(tmp_path: Path) -> None:
    """``set/w.safetensors`` claims every ``w-NNNNN-of-NNNNN.safetensors`` (--force may replace
    or remove them): one of them is another input."""
    ins = tmp_path / "in"
    ins.mkdir()
    w = ins / "w.h5"
    source(w, 1.0)
    index = write_set(tmp_path / "set", 2.0, name="w")
    shard = index.parent / "w-00002-of-00003.safetensors"
    before = {p.name: p.read_bytes() for p in index.parent.iterdir()}
    proc = run_cli("batch", w, shard, "-o", index.parent, "--name-pattern", "{stem}.safetensors", "--force",
                   "--max-shard-size", SHARD)
    assert proc.returncode == 1, proc.stderr
    line = one_line(proc.stderr)
    assert f"the output of {w} would overwrite {shard}" in line
    assert {p.name: p.read_bytes() for p in index.parent.iterdir()} == before


def test_batch_refuses_a_name_pattern_that_escapes_outdir(tmp_path: Path) -> None:
    """An input named ``...h5`` has the stem ``..``: ``{stem}/m.safetensors`` would leave
    OUTDIR. Refused as a usage error before any work."""
    ins = tmp_path / "in"
    ins.mkdir()
    odd = ins / "...h5"
    source(odd, 1.0)
    out = tmp_path / "deep" / "out"
    proc = run_cli("batch", odd, "-o", out, "--name-pattern", "{stem}/m.safetensors")
    assert proc.returncode == 2
    assert "not a path inside OUTDIR" in one_line(proc.stderr)
    assert not (tmp_path / "deep").exists()


def test_a_directory_that_takes_no_new_files_is_refused_at_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Creating a file in /proc (and other such directories) fails with "no such file"
    although the directory exists: one line naming it, not a retry loop that spins forever
    (the lock's retry is for a lock file its holder removed between two opens)."""
    import errno

    from ckptconv.writers import outputs

    real_open = os.open
    creates = []

    def no_new_files(path, flags, *args):  # type: ignore[no-untyped-def]
        if flags & os.O_CREAT and str(path).startswith(str(tmp_path / "out")):
            creates.append(path)
            if len(creates) > 100:
                raise AssertionError("the create was retried")
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(outputs.os, "open", no_new_files)
    src = source(tmp_path / "src.safetensors", 1.0)
    (tmp_path / "out").mkdir()
    with pytest.raises(ckptconv.OutputError, match="cannot create a file here: No such file") as e:
        ckptconv.convert(src, tmp_path / "out" / "m.safetensors")
    assert e.value.path == str(tmp_path / "out") and len(creates) == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_in_proc_is_one_line(tmp_path: Path) -> None:
    src = source(tmp_path / "src.safetensors", 1.0)
    done = subprocess.run([sys.executable, "-m", "ckptconv", "convert", str(src), "/proc/x.safetensors"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == (
        "ckptconv: error: /proc: cannot create a file here: No such file or directory")
