"""Fuzzing: mutated real files of every format are read or refused with a CkptconvError.

Real files (Keras 3 and tf-keras HDF5, ``.weights.h5``, ``.keras``, a sharded Keras set,
safetensors with and without ckptconv's checksums, a sharded safetensors set, TensorFlow
checkpoints, PyTorch zip, legacy, re-compressed and sharded files) are mutated by hypothesis (bit flips, truncations, splices of the file's own
bytes, zeroed runs, inserted bytes). ckptconv must then either open the result and read every
entry, or raise :class:`~ckptconv.CkptconvError` with a one-line message naming a file:
never another exception, a hang or a crash.

Two guards keep a bug from stalling the suite: in-process examples run under a faulthandler
watchdog (a hang dumps the stack and ends the run instead of blocking it), and a fixed sample
runs in a subprocess with a timeout, so hangs and crashes (libhdf5 is C) are reported as test
failures. Bounded for CI: 150 examples per source, and 20 per source in the subprocess
sample. ``scripts/fuzz_atheris.py`` runs the same harness, coverage-guided, for as long as
you like (see docs/troubleshooting.md).
"""

from __future__ import annotations

import faulthandler
import json
import random
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ckptconv  # noqa: E402
from ckptconv import CkptconvError  # noqa: E402

HANG_SECONDS = 60  # one example opens and reads a ~100 KB file: milliseconds when healthy


@dataclass(frozen=True)
class Source:
    """A checkpoint as files in one directory: what to pass, and which files to mutate."""

    label: str
    directory: Path
    files: tuple[str, ...]
    entry: str
    mutable: tuple[str, ...]


def _copy(label: str, src: Path, names: list[str], root: Path, entry: str, mutable: list[str] | None = None) -> Source:
    d = root / label
    d.mkdir()
    for name in names:
        shutil.copyfile(src / name, d / name)
    return Source(label, d, tuple(names), entry, tuple(mutable or names))


@pytest.fixture(scope="module")
def sources(generated, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    root = tmp_path_factory.mktemp("fuzz-sources")
    return build_sources(generated("keras"), generated("load"), generated("tf"), root)


def build_sources(keras: Path, load: Path, tf: Path, root: Path) -> dict[str, Source]:
    """Copies of real files of every kind under ``root``, from the generators' output
    directories (also used by ``scripts/fuzz_atheris.py``)."""
    found: dict[str, Source] = {}

    def add(source: Source) -> None:
        found[source.label] = source

    add(_copy("keras3-h5", keras, ["k3_zoo.h5"], root, "k3_zoo.h5"))
    add(_copy("tf-keras-h5", keras, ["tk_zoo.h5"], root, "tk_zoo.h5"))
    add(_copy("weights-h5", keras, ["k3_zoo.weights.h5"], root, "k3_zoo.weights.h5"))
    add(_copy("keras", keras, ["k3_zoo.keras"], root, "k3_zoo.keras"))
    add(_copy("tf-keras-archive", keras, ["tk_small.keras"], root, "tk_small.keras"))
    shards = sorted(p.name for p in (keras / "sharded").iterdir())
    add(_copy("keras-sharded", keras / "sharded", shards, root, "k3_zoo.weights.json"))
    add(_copy("safetensors", load, ["k3.safetensors"], root, "k3.safetensors"))
    written = root / "written"
    written.mkdir()
    ckptconv.convert(load / "k3.safetensors", written / "crc.safetensors", fsync=False)
    ckptconv.convert(load / "k3.safetensors", written / "set.safetensors", fsync=False, max_shard_size=1500)
    add(_copy("safetensors-crc", written, ["crc.safetensors"], root, "crc.safetensors"))
    set_files = sorted(p.name for p in written.glob("set*"))
    add(_copy("safetensors-sharded", written, set_files, root, "set.safetensors.index.json"))
    for label, case in (("tf-object", "keras3"), ("tf1-partitioned", "tf1"), ("tf-sharded", "sharded")):
        meta = json.loads((tf / f"{case}.case.json").read_text())
        prefix = Path(meta["prefix"])
        names = sorted(p.name for p in prefix.parent.iterdir() if p.name.startswith(prefix.name + ".") and not p.name.endswith(".meta"))
        add(_copy(label, prefix.parent, names, root, prefix.name))
    torch_files = Path(__file__).parent / "fixtures" / "pytorch"  # committed, written by torch
    add(_copy("pytorch", torch_files, ["zoo.pt"], root, "zoo.pt"))
    add(_copy("pytorch-legacy", torch_files, ["zoo_legacy.pt"], root, "zoo_legacy.pt"))
    add(_copy("pytorch-deflated", torch_files, ["zoo_deflated.pt"], root, "zoo_deflated.pt"))
    bins = sorted(p.name for p in (torch_files / "hf_sharded").iterdir())
    add(_copy("pytorch-sharded", torch_files / "hf_sharded", bins, root, "pytorch_model.bin.index.json"))
    return found


MUTATIONS = ("flip", "truncate", "splice", "zero", "insert")


@st.composite
def mutations(draw, size: int):  # type: ignore[no-untyped-def]
    """One to three edits of a file of ``size`` bytes, as (kind, offset, length, other) tuples."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        offset = draw(st.integers(0, max(size - 1, 0)))
        length = draw(st.integers(1, 64))
        other = draw(st.integers(0, max(size - 1, 0)))
        edits.append((kind, offset, length, other))
    return edits


def mutate(data: bytes, edits: list[tuple[str, int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, offset, length, other in edits:
        if not buf:
            break
        offset %= len(buf)
        if kind == "flip":
            buf[offset] ^= 1 << (length % 8)
        elif kind == "truncate":
            del buf[offset:]
        elif kind == "splice":  # the file's own bytes from elsewhere: plausible structure
            piece = data[other % len(data) : other % len(data) + length]
            buf[offset : offset + len(piece)] = piece
        elif kind == "zero":
            buf[offset : offset + length] = bytes(len(buf[offset : offset + length]))
        else:
            buf[offset:offset] = random.Random(other).randbytes(length)
    return bytes(buf)


def read_everything(path: Path) -> str:
    """Open and read every entry; returns 'ok' or the error class name (CkptconvError only)."""
    try:
        with ckptconv.open(path) as store:
            for entry in store.entries(include_all=True):
                entry.read()
        return "ok"
    except CkptconvError as e:
        message = str(e)
        assert "\n" not in message, message
        assert e.path is not None, f"no file named: {message}"
        return type(e).__name__


def run_mutated(source: Source, victim: str, edits: list[tuple[str, int, int, int]]) -> str:
    original = (source.directory / victim).read_bytes()
    (source.directory / victim).write_bytes(mutate(original, edits))
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        return read_everything(source.directory / source.entry)
    finally:
        faulthandler.cancel_dump_traceback_later()
        (source.directory / victim).write_bytes(original)


LABELS = [
    "keras3-h5", "tf-keras-h5", "weights-h5", "keras", "tf-keras-archive", "keras-sharded",
    "safetensors", "safetensors-crc", "safetensors-sharded", "tf-object", "tf1-partitioned", "tf-sharded",
    "pytorch", "pytorch-legacy", "pytorch-deflated", "pytorch-sharded",
]


@pytest.mark.parametrize("label", LABELS)
def test_mutated_files_are_read_or_refused(label: str, sources: dict[str, Source]) -> None:
    source = sources[label]
    assert read_everything(source.directory / source.entry) == "ok"  # the control

    @settings(
        max_examples=150,
        deadline=None,
        database=None,  # tests write nothing into the repository
        derandomize=True,  # the same examples on every run: CI failures reproduce
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def check(data) -> None:  # type: ignore[no-untyped-def]
        victim = data.draw(st.sampled_from(source.mutable), label="file")
        size = (source.directory / victim).stat().st_size
        edits = data.draw(mutations(size), label="edits")
        run_mutated(source, victim, edits)

    check()


WORKER = textwrap.dedent(
    """
    import faulthandler, sys
    import ckptconv
    from ckptconv import CkptconvError
    for line in sys.stdin:
        path = line.rstrip("\\n")
        print("START", path, flush=True)
        faulthandler.dump_traceback_later({hang}, exit=True)
        try:
            with ckptconv.open(path) as store:
                for entry in store.entries(include_all=True):
                    entry.read()
            result = "ok"
        except CkptconvError as e:
            result = "refused" if "\\n" not in str(e) and e.path else "BAD message: " + repr(str(e))
        except BaseException as e:
            result = "BAD " + type(e).__name__ + ": " + " ".join(str(e).split())[:300]
        faulthandler.cancel_dump_traceback_later()
        print("END", result, flush=True)
    """
)


def test_a_sample_in_a_subprocess_never_hangs_or_crashes(sources: dict[str, Source], tmp_path: Path) -> None:
    """Randomly mutated copies (fixed seed), read by a separate process under a watchdog: a
    hang or a crash inside a C library fails this test instead of killing the suite."""
    rng = random.Random(8)
    paths: list[str] = []
    for label in LABELS:
        source = sources[label]
        for i in range(20):
            d = tmp_path / f"{label}-{i}"
            shutil.copytree(source.directory, d)
            victim = rng.choice(source.mutable)
            data = (d / victim).read_bytes()
            edits = [(rng.choice(MUTATIONS), rng.randrange(max(len(data), 1)), rng.randint(1, 256), rng.randrange(max(len(data), 1)))]
            (d / victim).write_bytes(mutate(data, edits))
            paths.append(str(d / source.entry))
    proc = subprocess.run(
        [sys.executable, "-c", WORKER.format(hang=HANG_SECONDS)],
        input="\n".join(paths) + "\n",
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS * 4 + 120,
    )
    results: dict[str, str] = {}
    current = None
    for line in proc.stdout.splitlines():
        if line.startswith("START "):
            current = line[6:]
        elif line.startswith("END ") and current is not None:
            results[current] = line[4:]
            current = None
    assert current is None, f"hang or crash (status {proc.returncode}) on {current}:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = {p: r for p, r in results.items() if r.startswith("BAD")}
    assert not bad, bad
    assert len(results) == len(paths)
    assert {"ok", "refused"} <= set(results.values())  # the sample exercises both outcomes
