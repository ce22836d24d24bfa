"""Every message about a damaged or truncated input tells the user what to do.

For each reader, a small fixture the other tests use is damaged systematically: one byte
flipped at offsets spread through the file (for a safetensors file, through its header), or
the file cut at as many lengths; the result is opened with ``ckptconv.open`` and every tensor
read. Whatever :class:`~ckptconv.CorruptFileError` (or :class:`~ckptconv.IntegrityError`)
comes out must end with the advice to copy the file again (``errors.FETCH_AGAIN``, or
``errors.truncated``'s wording, which ends with it), and must not be libhdf5's or Python's own
words. A few messages are about a well-formed input that is not what ckptconv reads, or a
user's mistake (a shard the index names is missing): those say what to do instead, and copying
again would mislead (``NOT_DAMAGE``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import ckptconv
from ckptconv.errors import FETCH_AGAIN, CorruptFileError

TORCH_FILES = Path(__file__).parent / "fixtures" / "pytorch"  # committed, written by torch
SAMPLES = 110  # offsets a file, per kind of damage

# the advice, as every damage message ends: FETCH_AGAIN, "copy or download the .keras file
# again" (a zip archive), or "...; copy or download it again, or pass check_crc=False to read
# it anyway" (a checksum the option skips)
ADVICE = re.compile(r"copy or download (it|the [^;]+) again(, or pass check_crc=False to read it anyway)?$")
# well-formed inputs of another kind, and a user's mistakes: each message says what to do
NOT_DAMAGE = (
    "copy every shard along with the index",  # keras_sharded: a shard the index names is missing
    "along with the .index",  # tf_checkpoint: a data shard is missing
    "restore it or re-download the set",  # safetensors: a shard the index names is missing
    "(saved without weights?)",  # keras_archive
    "is not a Keras 3 weights file",  # keras_archive, keras_sharded: another kind of HDF5 file
    "the file lists no layers",  # keras_legacy: a model without layers
    "not a checkpoint torch.save writes",  # pytorch: containers nested beyond the limit
)
# libhdf5's words (``Can't get deprecated info for object``), or any library's error only
# wrapped ("damaged keras-h5 file: RuntimeError: ..."), which must not be the message
RAW = re.compile(r"^damaged [\w-]+ file: \w+: |Can't |Unable to ")


def offsets(size: int, start: int = 0, samples: int = SAMPLES) -> list[int]:
    """``samples`` offsets spread evenly over ``start .. size - 1`` (every one when fewer)."""
    step = max(1, (size - start) // samples)
    return list(range(start, size, step))


def read_everything(path: Path) -> None:
    with ckptconv.open(path) as store:
        for entry in store.entries(include_all=True):
            entry.read()


def lacking_advice(
    directory: Path, entry: str, victim: str, mode: str, at: list[int], mask: int = 0xFF
) -> list[str]:
    """Damage ``directory/victim`` at each of ``at`` (``flip``: one byte xor ``mask``; ``cut``:
    the file ends there), open ``directory/entry`` and read it; the messages without the advice."""
    target = directory / victim
    original = target.read_bytes()
    bad = []
    try:
        for offset in at:
            if mode == "flip":
                data = bytearray(original)
                data[offset] ^= mask
                target.write_bytes(bytes(data))
            else:
                target.write_bytes(original[:offset])
            try:
                read_everything(directory / entry)
            except CorruptFileError as e:
                message = str(e)
                assert "\n" not in message and e.path, message
                if RAW.search(e.reason) or not (ADVICE.search(e.reason) or any(m in e.reason for m in NOT_DAMAGE)):
                    bad.append(f"{victim} {mode} at {offset}: {message}")
                elif "libhdf5 cannot read" in e.reason and not e.path.endswith(victim):  # the damaged file
                    bad.append(f"{victim} {mode} at {offset}, said of another file: {message}")
            except ckptconv.CkptconvError:  # refused as unsafe, unsupported, not a checkpoint
                pass
    finally:
        target.write_bytes(original)
    return bad


def sweep(directory: Path, entry: str, victims: list[str], mode: str, start: int = 0) -> None:
    bad: list[str] = []
    for victim in victims:
        size = (directory / victim).stat().st_size
        bad += lacking_advice(directory, entry, victim, mode, offsets(size, start if mode == "flip" else 1))
    assert not bad, f"{len(bad)} messages without the advice:\n" + "\n".join(bad[:20])


def copy(source: Path, names: list[str], into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(source / name, into / name)
    return into


MODES = ["flip", "cut"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label", ["single", "checksums", "sharded"])
def test_safetensors(label: str, mode: str, generated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    load = generated("load")
    if label == "single":
        d = copy(load, ["k3.safetensors"], tmp_path)
        entry, victims = "k3.safetensors", ["k3.safetensors"]
    elif label == "checksums":
        ckptconv.convert(load / "k3.safetensors", tmp_path / "crc.safetensors", fsync=False)
        d, entry, victims = tmp_path, "crc.safetensors", ["crc.safetensors"]
    else:
        ckptconv.convert(load / "k3.safetensors", tmp_path / "set.safetensors", fsync=False, max_shard_size=1500)
        d, entry = tmp_path, "set.safetensors.index.json"
        victims = sorted(p.name for p in tmp_path.glob("set*"))[:3]
    for victim in victims:
        if mode == "flip":  # every byte of the JSON header (or index), its lowest bit: the JSON
            # mostly stays JSON (a digit, a letter, a quote changes), its meaning does not
            header = 8 + int.from_bytes((d / victim).read_bytes()[:8], "little")
            if victim.endswith(".json"):
                header = (d / victim).stat().st_size
            bad = lacking_advice(d, entry, victim, mode, list(range(0, header)), mask=0x01)
        else:
            bad = lacking_advice(d, entry, victim, mode, offsets((d / victim).stat().st_size, 1))
        assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label", ["zip", "legacy", "deflated", "sharded"])
def test_pytorch(label: str, mode: str, tmp_path: Path) -> None:
    if label == "sharded":
        names = sorted(p.name for p in (TORCH_FILES / "hf_sharded").iterdir())
        d = copy(TORCH_FILES / "hf_sharded", names, tmp_path)
        sweep(d, "pytorch_model.bin.index.json", [n for n in names if n.endswith(".bin")], mode)
        return
    name = {"zip": "zoo.pt", "legacy": "zoo_legacy.pt", "deflated": "zoo_deflated.pt"}[label]
    sweep(copy(TORCH_FILES, [name], tmp_path), name, [name], mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["keras3", "tf1", "sharded"])
def test_tf_checkpoint(case: str, mode: str, generated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tf = generated("tf")
    prefix = Path(json.loads((tf / f"{case}.case.json").read_text())["prefix"])
    names = sorted(
        p.name for p in prefix.parent.iterdir()
        if p.name.startswith(prefix.name + ".") and not p.name.endswith(".meta")
    )
    d = copy(prefix.parent, names, tmp_path)
    # the index whole, the data files' first (the tensors' CRCs say the rest)
    sweep(d, prefix.name, [n for n in names if n.endswith(".index")], mode)
    sweep(d, prefix.name, [n for n in names if ".data-" in n][:2], mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["k3_zoo.h5", "tk_zoo.h5", "k3_zoo.weights.h5", "k3legacy.h5"])
def test_keras_hdf5(name: str, mode: str, generated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = generated("load") if name == "k3legacy.h5" else generated("keras")
    sweep(copy(source, [name], tmp_path), name, [name], mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["k3_zoo.keras", "tk_small.keras"])
def test_keras_archive(name: str, mode: str, generated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sweep(copy(generated("keras"), [name], tmp_path), name, [name], mode)


@pytest.mark.parametrize("mode", MODES)
def test_keras_sharded(mode: str, generated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = generated("keras") / "sharded"
    names = sorted(p.name for p in source.iterdir())
    d = copy(source, names, tmp_path)
    index = next(n for n in names if n.endswith(".json"))
    sweep(d, index, [index, *[n for n in names if n.endswith(".h5")][:2]], mode)


@pytest.mark.parametrize("mode", MODES)
def test_keras_orbax(mode: str, generated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorstore")
    source = generated("keras315") / "orbax_seq_wo"
    d = tmp_path / "orbax_seq_wo"
    shutil.copytree(source, d)
    victims = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    bad: list[str] = []
    for victim in victims:
        size = (d / victim).stat().st_size
        bad += lacking_advice(d, ".", victim, mode, offsets(size, 0 if mode == "flip" else 1, 40))
    assert not bad, "\n".join(bad[:20])


def test_a_layer_name_that_is_not_text_is_damage_not_a_crash(generated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A damaged bit field makes a ``vars`` group's ``name`` attribute (a variable-length
    string) a variable-length sequence: libhdf5 reading it crashed the process (a flip sweep
    of ``k3_zoo.weights.h5`` found it). It is refused as damage before libhdf5 reads it; run
    in a subprocess, so that a crash fails this test only."""
    import h5py

    from tests.helpers import run_cli

    source = generated("keras") / "k3_zoo.weights.h5"
    with h5py.File(source, "r") as f:
        address = h5py.h5o.get_info(f["/layers/concatenate/vars"].id).addr
    data = bytearray(source.read_bytes())
    message = data.find(b"name\x00", address)  # the attribute message: its name, padded to 8
    assert data[message + 8] == 0x19, data[message + 8]  # a datatype: version 1, variable-length
    data[message + 9] ^= 0xFF  # its type: a string no more
    path = tmp_path / "damaged.weights.h5"
    path.write_bytes(bytes(data))
    proc = run_cli("inspect", path)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    line = proc.stderr.strip()
    assert "\n" not in line and "the name attribute of /layers/concatenate/vars is not text" in line, line
    assert line.endswith(FETCH_AGAIN), line
