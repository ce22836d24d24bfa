"""Files that lie, bombs, and special files: refused fast and small, in one line.

Made from real files (``generators/gen_load.py``: Keras 3 and safetensors writers; ckptconv's
own output for the checksummed file) by altering what a hostile or unlucky source would:

* lies: an HDF5 ``dtype`` attribute that contradicts the stored type, a ``.keras`` member whose
  bytes fail its zip CRC-32 (TensorFlow slices that overlap are in ``test_tf_checkpoint.py``);
* bombs: a chunked, compressed HDF5 dataset declaring 2 GiB in a few KB, ``layer_names``
  repeating one layer 40,000 times, a checksum table nested 100,000 deep, shapes with 70
  dimensions or a product beyond 64 bits, a lone surrogate in a tensor name (spec bombs are in
  ``test_robustness_specs.py``);
* special files: FIFOs and devices as inputs, as a TensorFlow ``.index`` or data file, and as
  ``verify`` arguments (each in a subprocess with a timeout: a hang fails the test);
* a deflated ``.keras`` is decompressed once, front to back;
* ``transplant`` to a full disk is refused before Keras writes (libhdf5 crashes the process).

The file cases go through ``inspect``, ``convert`` and ``load_into`` as in the damaged corpus
(:mod:`tests.test_robustness_corpus`): one line naming the file, exit 1, nothing written, the
input unchanged, the model untouched.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import ckptconv
from ckptconv import CorruptFileError, FormatError, IntegrityError, OutputError, UnsafeInputError
from tests.helpers import run_cli, tmpfs
from tests.test_robustness_corpus import (  # noqa: F401 - fixtures
    Case,
    base,
    check_api,
    check_cli,
    copy_source,
    first_weight_dataset,
    hashes,
    st_parts,
    st_write,
    twin,
)

Builder = Callable[[Path, Path], tuple[Case, str]]
LIES: dict[str, Builder] = {}


def lie(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        LIES[name] = builder
        return builder

    return register


# --- files that lie ---------------------------------------------------------------------------


@lie("weights-h5/dtype-attribute-says-float16-of-float32-data")
def _dtype_attribute_v3(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "weights-h5", d)
    with h5py.File(path, "a") as f:
        assert f["layers/dense/vars/0"].dtype == np.float32
        f["layers/dense/vars/0"].attrs["dtype"] = "float16"
    return Case(path, path, CorruptFileError), "dtype attribute says float16 but it stores float32: refusing to reinterpret"


@lie("keras-h5/dtype-attribute-says-bfloat16-of-float32-data")
def _dtype_attribute_legacy(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "keras-h5", d)
    with h5py.File(path, "a") as f:
        f[first_weight_dataset(path)].attrs["dtype"] = "bfloat16"
    return Case(path, path, CorruptFileError), "dtype attribute says bfloat16 but it stores float32"


# --- bombs ------------------------------------------------------------------------------------


@lie("weights-h5/compressed-dataset-declares-2-gib")
def _compressed_bomb(base: Path, d: Path) -> tuple[Case, str]:
    """One 4 MiB chunk of zeros written (a few KB compressed), 2 GiB declared: reading it
    would allocate the whole 2 GiB (2.1 GB of memory before)."""
    path = copy_source(base, "weights-h5", d)
    with h5py.File(path, "a") as f:
        del f["layers/dense/vars/0"]
        ds = f.create_dataset("layers/dense/vars/0", shape=(2**29,), dtype=np.float32,
                              chunks=(2**20,), compression="gzip")
        ds[: 2**20] = 0.0
    assert path.stat().st_size < 200_000
    return Case(path, path, UnsafeInputError, key="/layers/dense/vars/0"), "refusing a likely decompression bomb"


@lie("keras-h5/layer-names-repeat-one-layer-40000-times")
def _repeated_layers(base: Path, d: Path) -> tuple[Case, str]:
    """Stored as Keras stores long lists: chunked attributes ``layer_names0``, ``layer_names1``..."""
    path = copy_source(base, "keras-h5", d)
    with h5py.File(path, "a") as f:
        root = f["model_weights"]
        first = root.attrs["layer_names"][0]
        layer = first.decode() if isinstance(first, bytes) else str(first)
        del root.attrs["layer_names"]
        names = np.array([layer.encode()] * 40_000)  # fixed-length bytes, as Keras 2 wrote them
        for i, chunk in enumerate(np.array_split(names, 20)):
            root.attrs[f"layer_names{i}"] = chunk
    return Case(path, path, CorruptFileError), f"layer_names lists {layer!r} 40000 times"


@lie("safetensors-crc/checksum-table-nested-100000-deep")
def _deep_checksums(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "safetensors-crc", d)
    header, data = st_parts(path)
    header["__metadata__"]["ckptconv.crc32c"] = "[" * 100_000 + "]" * 100_000
    st_write(path, header, data)
    return Case(path, path, CorruptFileError), "ckptconv.crc32c'] is malformed"


def _first_tensor(header: dict) -> str:
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


@lie("safetensors/70-dimensions")
def _seventy_dims(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "safetensors", d)
    header, data = st_parts(path)
    name = _first_tensor(header)
    info = header[name]
    size = int(np.prod(info["shape"]))
    info["shape"] = [size] + [1] * 69
    st_write(path, header, data)
    return Case(path, path, CorruptFileError, key=name), "has 70 dimensions, more than the 64 an array can have"


@lie("safetensors/shape-product-overflows-64-bits")
def _overflow(base: Path, d: Path) -> tuple[Case, str]:
    """[2**62, 2**62, 0]: zero elements (so the byte count checks out), but numpy cannot even
    form the shape: its running product passes 64 bits."""
    path = copy_source(base, "safetensors", d)
    header, data = st_parts(path)
    header["huge"] = {"dtype": "F32", "shape": [2**62, 2**62, 0], "data_offsets": [0, 0]}
    st_write(path, header, data)
    return Case(path, path, CorruptFileError, key="huge"), "more bytes than a 64-bit size can count"


@lie("safetensors/lone-surrogate-in-a-name")
def _surrogate(base: Path, d: Path) -> tuple[Case, str]:
    path = copy_source(base, "safetensors", d)
    header, data = st_parts(path)
    name = _first_tensor(header)
    header["dense\udc80/" + name] = header.pop(name)  # json.dumps escapes it as \udc80
    st_write(path, header, data)
    return Case(path, path, CorruptFileError), "not valid Unicode text (a lone surrogate escape)"


@pytest.mark.parametrize("name", sorted(LIES))
def test_lying_file_or_bomb(name: str, base: Path, twin, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    inputs = tmp_path / "in"
    out = tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    case, why = LIES[name](base, inputs)
    check_cli(case, capsys, inputs, out)
    check_api(case, twin, inputs)
    with pytest.raises(case.error) as info:
        ckptconv.open(case.path)
    assert why in str(info.value), str(info.value)


# --- a .keras member that fails its zip CRC-32 ----------------------------------------------


def test_a_flipped_byte_in_a_stored_keras_member_fails_its_crc(base: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Keras stores the weights member uncompressed; ckptconv reads its tensors in place, and
    checks the member's CRC-32 beside the conversion (on its own thread): a flipped byte in a
    tensor is an error naming the member, and nothing is written."""
    from ckptconv.cli import main

    inputs = tmp_path / "in"
    out = tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    path = copy_source(base, "keras", inputs)
    with ckptconv.open(path) as store:
        entry = next(e for e in store.entries() if e.byte_range is not None and e.nbytes >= 16)
        at = entry.byte_range.offset + entry.nbytes // 2
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x20
    path.write_bytes(bytes(raw))
    before = hashes(inputs)
    assert main(["inspect", str(path)]) == 0  # metadata only: the damage is in tensor data
    capsys.readouterr()
    assert main(["convert", str(path), str(out / "m.safetensors")]) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith(f"ckptconv: error: {path}: model.weights.h5 fails its zip CRC-32")
    assert os.listdir(out) == []
    with pytest.raises(IntegrityError, match="model.weights.h5 fails its zip CRC-32"):
        ckptconv.convert(path, out / "m.safetensors")
    assert os.listdir(out) == [] and hashes(inputs) == before
    # --no-check-crc reads it anyway (the byte as it is now)
    assert main(["convert", str(path), str(out / "m.safetensors"), "--no-check-crc", "-q"]) == 0


@pytest.mark.parametrize("kind", ["keras", "torch"])
def test_a_zip_crc_failure_says_how_to_read_it_anyway(base: Path, tmp_path: Path, capsys, kind: str) -> None:  # type: ignore[no-untyped-def]
    """As the CRC-32C message does: every command that checks a zip member's CRC-32 (convert,
    batch, diff) names its own way to skip the check: --no-check-crc on the command line,
    check_crc=False in Python; and that way works."""
    from ckptconv.cli import main

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    if kind == "keras":
        path = copy_source(base, "keras", inputs)
    else:
        path = inputs / "cnn.pt"
        shutil.copyfile(Path(__file__).resolve().parent / "fixtures" / "pytorch" / "cnn.pt", path)
    clean = tmp_path / f"clean{path.suffix}"
    shutil.copyfile(path, clean)
    with ckptconv.open(path) as store:
        entry = max((e for e in store.entries() if e.byte_range is not None), key=lambda e: e.nbytes)
        at = entry.byte_range.offset + entry.nbytes // 2
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x20
    path.write_bytes(bytes(raw))
    tail = "the {} is damaged; copy or download it again, or pass {} to read it anyway"
    what = "archive" if kind == "keras" else "torch.save file"
    for argv in (
        ["convert", path, out / "m.safetensors"],
        ["batch", path, "-o", out],
        ["diff", path, clean],
    ):
        assert main([str(a) for a in argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"ckptconv: error: {path}: ") and "fails its zip CRC-32" in err, (argv, err)
        assert err.endswith(tail.format(what, "--no-check-crc") + "\n"), (argv, err)
        # skipping the check reads the bytes as they are (diff: they differ from the clean copy)
        assert main([str(a) for a in argv] + ["--no-check-crc"]) == (1 if argv[0] == "diff" else 0), argv
        err = capsys.readouterr().err
        if argv[0] == "diff":
            assert err == ""
        else:  # what was written carries bytes no checksum vouches for: said once
            assert err.startswith("ckptconv: warning: the source's checksums were not checked") and err.count("\n") == 1
    assert sorted(os.listdir(out)) == sorted(["m.safetensors", f"{path.stem}.safetensors"])
    for call in (lambda: ckptconv.convert(path, out / "api.safetensors"), lambda: ckptconv.diff(path, clean)):
        with pytest.raises(IntegrityError) as info:
            call()
        assert str(info.value).endswith(tail.format(what, "check_crc=False")), str(info.value)
    assert not ckptconv.diff(path, clean, check_crc=False).equal  # read anyway: the flipped byte


def test_a_pickle_that_fails_its_zip_crc_offers_no_reading_anyway(tmp_path: Path) -> None:
    """data.pkl describes the tensors and is checked whenever the file is opened: check_crc=False
    does not skip it, so its message does not offer it."""
    path = tmp_path / "cnn.pt"
    raw = bytearray((Path(__file__).resolve().parent / "fixtures" / "pytorch" / "cnn.pt").read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    assert info.compress_type == zipfile.ZIP_STORED
    header = info.header_offset  # local header: 30 bytes, then the name and the extra field
    lengths = int.from_bytes(raw[header + 26 : header + 28], "little") + int.from_bytes(raw[header + 28 : header + 30], "little")
    start = header + 30 + lengths
    raw[start + info.file_size - 2] ^= 0x01  # inside the pickle, before its STOP opcode
    path.write_bytes(bytes(raw))
    for check_crc in (True, False):
        with pytest.raises(IntegrityError, match="data.pkl fails its zip CRC-32") as caught:
            ckptconv.open(path, check_crc=check_crc)
        assert str(caught.value).endswith("the torch.save file is damaged; copy or download it again")


def test_a_flipped_byte_in_a_deflated_keras_member_fails_its_crc(base: Path, tmp_path: Path) -> None:
    """A re-zipped (deflated) archive whose weights member decompresses to other bytes than
    its recorded CRC-32: caught while it is decompressed (once, when the file is opened)."""
    path = copy_source(base, "keras", tmp_path)
    with zipfile.ZipFile(path) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
        crc = z.getinfo("model.weights.h5").CRC
    damaged = bytearray(members["model.weights.h5"])
    damaged[len(damaged) // 2] ^= 0x20
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            data = bytes(damaged) if name == "model.weights.h5" else data
            z.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    raw = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        local = z.getinfo("model.weights.h5").header_offset
    raw[local + 14 : local + 18] = crc.to_bytes(4, "little")  # the local header's CRC-32
    central = bytes(raw).find(b"PK\x01\x02", bytes(raw).find(b"model.weights.h5", local + 30) + 1)
    while bytes(raw[central + 46 : central + 46 + 16]) != b"model.weights.h5":
        central = bytes(raw).find(b"PK\x01\x02", central + 1)
    raw[central + 16 : central + 20] = crc.to_bytes(4, "little")  # the central directory's
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"model.weights.h5 cannot be decompressed \(Bad CRC-32"):
        ckptconv.open(path)
    proc = run_cli("convert", path, tmp_path / "m.safetensors")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.safetensors").exists()


# --- a deflated .keras is decompressed once --------------------------------------------------


def test_a_deflated_keras_is_decompressed_once(base: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """h5py seeks back and forth in the weights member; through zipfile every backward seek
    restarts the decompression (51x slower than a stored archive). The member is decompressed
    once, front to back, whatever is read afterwards."""
    path = copy_source(base, "keras", tmp_path)
    with zipfile.ZipFile(path) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    path.write_bytes(buffer.getvalue())
    decompressed = {"bytes": 0}
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):  # type: ignore[no-untyped-def]
        data = real_read(self, n)
        if self.name == "model.weights.h5":
            decompressed["bytes"] += len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    with ckptconv.open(path) as store, ckptconv.open(base / "k3.keras") as original:
        for name in original:
            assert store[name].read().tobytes() == original[name].read().tobytes()
    assert decompressed["bytes"] == len(members["model.weights.h5"])
    ckptconv.convert(path, tmp_path / "m.safetensors")
    assert decompressed["bytes"] == 2 * len(members["model.weights.h5"])  # once more: a new store


# --- special files ----------------------------------------------------------------------------


def cli_with_timeout(*args: object) -> subprocess.CompletedProcess[str]:
    """A hang is a failure: the command gets 60 s (a FIFO read blocks forever)."""
    return subprocess.run([sys.executable, "-m", "ckptconv", *map(str, args)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifos_and_devices_are_refused_without_hanging(base: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    tf = tmp_path / "tf"
    tf.mkdir()
    os.mkfifo(tf / "ckpt.index")  # a prefix whose index is a FIFO
    data = tmp_path / "data"
    data.mkdir()
    copy_source(base, "tf", data)
    (data / "k3ckpt.data-00000-of-00001").unlink()
    os.mkfifo(data / "k3ckpt.data-00000-of-00001")  # a data file that is a FIFO
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (("inspect", fifo), fifo, "a FIFO (named pipe), not a regular file"),
        (("convert", fifo, out / "x.safetensors"), fifo, "a FIFO (named pipe), not a regular file"),
        (("inspect", tf / "ckpt"), tf / "ckpt.index", "a FIFO (named pipe), not a regular file"),
        (("inspect", tf / "ckpt.index"), tf / "ckpt.index", "a FIFO (named pipe), not a regular file"),
        (("convert", data / "k3ckpt", out / "x.safetensors"), data / "k3ckpt.data-00000-of-00001", "a FIFO"),
        (("inspect", "/dev/zero"), "/dev/zero", "a character device, not a regular file"),
    ]
    for args, named, says in cases:
        proc = cli_with_timeout(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"ckptconv: error: {named}: " in lines[0] and says in lines[0], (args, lines)
    proc = cli_with_timeout("verify", fifo, "/dev/zero")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"ckptconv: error: {fifo}: a FIFO (named pipe), not a regular file: ckptconv reads checkpoint files (and directories) only",
        "ckptconv: error: /dev/zero: a character device, not a regular file: ckptconv reads checkpoint files (and directories) only",
    ]
    assert os.listdir(out) == []
    with pytest.raises(FormatError, match="FIFO"):
        ckptconv.verify_file(fifo)


# --- transplant to a full disk ---------------------------------------------------------------


def test_an_atomic_save_that_cannot_fit_is_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    """The rule transplant relies on (libhdf5 kills the process on a full disk instead of
    raising): too little free space is one OutputError, and nothing is written."""
    from ckptconv.writers import outputs

    class Usage:
        free = 1000

    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: Usage)
    ran = []
    with pytest.raises(OutputError, match="not enough free space: the output needs about 5000 bytes and 1000"):
        with outputs.atomic_file(tmp_path / "m.weights.h5", need=5000) as tmp:
            ran.append(tmp)
    assert ran == [] and os.listdir(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 256 KB tmpfs (needs root and a mount-capable container; skipped otherwise)."""
    with tmpfs(tmp_path, "256k") as mount:
        yield mount


def test_transplant_to_a_full_disk_fails_in_one_line(generated, tmp_path: Path, tiny_tmpfs: Path) -> None:
    """libhdf5 under Keras' save_weights crashed the process (exit 139) when the disk filled:
    ckptconv checks the space first. The disk here has 60 KB left; the weights need about 80."""
    fixtures = generated("load")
    (tiny_tmpfs / "filler").write_bytes(bytes(196 * 1024))
    before = sorted(os.listdir(tiny_tmpfs))
    for name in ("out.weights.h5",):  # (a .keras output failed cleanly already: zipfile raises)
        proc = run_cli("transplant", fixtures / "k3.keras", fixtures / "k3.keras", tiny_tmpfs / name, "-q")
        assert proc.returncode == 1, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("ckptconv")]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"ckptconv: error: {tiny_tmpfs / name}: not enough free space" in lines[0]
        assert sorted(os.listdir(tiny_tmpfs)) == before


def test_transplant_refuses_an_output_that_is_a_shard_of_its_input(generated, tmp_path: Path) -> None:
    """Refused before Keras builds anything, like convert: the output may not be any file of
    the input, a shard of a sharded input included."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in generated("load").glob("k3sharded*"):
        shutil.copyfile(p, inputs / p.name)
    shutil.copyfile(generated("load") / "k3.keras", inputs / "k3.keras")
    before = hashes(inputs)
    proc = run_cli("transplant", inputs / "k3sharded.weights.json", inputs / "k3.keras",
                   inputs / "k3sharded_00001.weights.h5", "--force")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"ckptconv: error: {inputs / 'k3sharded_00001.weights.h5'}: the output would overwrite the input "
        f"{inputs / 'k3sharded_00001.weights.h5'}; choose another output path"
    ]
    assert hashes(inputs) == before


def test_the_lying_cases_are_small(base: Path, tmp_path: Path) -> None:
    """The control for the corpus above: each altered file stays a few hundred KB at most (the
    point is a small input, not a big one)."""
    for name, builder in LIES.items():
        d = tmp_path / name.replace("/", "_")
        d.mkdir()
        builder(base, d)
        assert sum(p.stat().st_size for p in d.iterdir()) < 1_000_000, name
