"""A damaged datatype message of one HDF5 dataset: one line naming the file and the dataset.

Each case flips one byte of the datatype message (HDF5 format specification, "IV.A.2.d. The
Datatype Message": class and version, class bit fields, size, then the floating-point
properties: bit offset, precision, exponent and mantissa locations and sizes, exponent bias)
in the object header of one dataset of a real Keras file (``generators/gen_load.py``). Such a
flip makes libhdf5 refuse to open the dataset, h5py find no numpy type for it, h5py pick a
wider type than the 4 bytes stored, or libhdf5 fail to convert the values on read. Whichever
it is, ``inspect`` and ``convert`` must say it in ckptconv's words: exit status 1, one line
``ckptconv: error: FILE: tensor '/HDF5/PATH': the dataset's datatype message is damaged (...)``,
no libhdf5 or Python error text, nothing written, the input unchanged.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import pytest

import ckptconv
from ckptconv import CorruptFileError
from tests.test_robustness_corpus import cli, hashes

# (byte of the datatype message, XOR mask): one case for each way libhdf5/h5py refuse it
FLIPS = {
    "class": (0, 0x5A),  # unknown datatype class
    "version": (0, 0xFF),  # bad version number
    "normalization": (1, 0x5A),  # unknown floating-point normalization
    "sign-position": (2, 0x5A),  # sign bit position out of bounds
    "size": (4, 0x5A),  # unusually large number of unused bits
    "exponent-location": (12, 0x5A),  # exponent starting position out of bounds
    "mantissa-size": (15, 0x5A),  # mantissa range out of bounds
    "bias-wider": (16, 0x01),  # bias 126: h5py reads the 4-byte floats as float64
    "bias-no-numpy-type": (18, 0x5A),  # no numpy type has the layout (h5py's ValueError)
}
# flips libhdf5 opens and h5py describes, but libhdf5 cannot convert on read: convert only
READ_FLIPS = {"normalization-on-read": (1, 0xFF)}

# label -> (fixture file, the dataset damaged, what inspect/convert is given)
FILES = {
    "weights-h5": ("k3.weights.h5", "layers/batch_normalization/vars/0"),
    "keras": ("k3.keras", "layers/batch_normalization/vars/0"),
    "legacy-h5": ("k3legacy.h5", "model_weights/bidi/bidi/backward_lstm/lstm_cell/bias"),
}

def datatype_message(image: bytes, h5: Path, dataset: str) -> tuple[int, int]:
    """(offset in ``image``, size) of ``dataset``'s datatype message (in a version 1 object
    header, as h5py writes; continuation blocks followed)."""
    with h5py.File(h5, "r") as f:
        address = h5py.h5o.get_info(f[dataset].id).addr
    blocks = [(address + 16, struct.unpack_from("<I", image, address + 8)[0])]
    while blocks:
        start, size = blocks.pop()
        position = start
        while position + 8 <= start + size:
            kind, length, _ = struct.unpack_from("<HHB", image, position)
            if kind == 0x03:
                return position + 8, length
            if kind == 0x10:
                blocks.append(struct.unpack_from("<QQ", image, position + 8))
            position += 8 + length
    raise AssertionError(f"{dataset}: no datatype message")


def damaged_copy(source: Path, into: Path, dataset: str, at: int, mask: int) -> Path:
    """A copy of ``source`` with byte ``at`` of ``dataset``'s datatype message flipped; a
    ``.keras`` archive's weights member is damaged in place (it is stored) and its CRC-32
    recomputed, so the damage is what the reader meets, not what the zip check catches."""
    raw = bytearray(source.read_bytes())
    target = into / source.name
    if source.suffix == ".keras":
        with zipfile.ZipFile(source) as z:
            info = z.getinfo("model.weights.h5")
            member = z.read(info)
        name_length, extra_length = struct.unpack_from("<HH", raw, info.header_offset + 26)
        base = info.header_offset + 30 + name_length + extra_length
        scratch = into / "member.h5"
        scratch.write_bytes(member)
        offset, _ = datatype_message(member, scratch, dataset)
        scratch.unlink()
        raw[base + offset + at] ^= mask
        crc = zlib.crc32(bytes(raw[base : base + info.file_size]))
        struct.pack_into("<I", raw, info.header_offset + 14, crc)  # the local header's CRC-32
        central = raw.find(b"PK\x01\x02")
        while struct.unpack_from("<I", raw, central + 42)[0] != info.header_offset:
            central = raw.find(b"PK\x01\x02", central + 4)
        struct.pack_into("<I", raw, central + 16, crc)  # and the central directory's
    else:
        offset, _ = datatype_message(bytes(raw), source, dataset)
        raw[offset + at] ^= mask
    target.write_bytes(bytes(raw))
    return target


def cases() -> list[object]:
    out = []
    for label in FILES:
        for flip, (at, mask) in {**FLIPS, **READ_FLIPS}.items():
            out.append(pytest.param(label, flip, at, mask, flip in READ_FLIPS, id=f"{label}-{flip}"))
    return out


@pytest.mark.parametrize(("label", "flip", "at", "mask", "on_read"), cases())
def test_a_damaged_datatype_message_is_one_line_naming_the_dataset(
    generated, label: str, flip: str, at: int, mask: int, on_read: bool, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, dataset = FILES[label]
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    path = damaged_copy(generated("load") / name, inputs, dataset, at, mask)
    before = hashes(inputs)
    commands = [("convert", path, out / "model.safetensors")]
    if not on_read:
        commands.insert(0, ("inspect", path))
    else:
        assert cli(capsys, "inspect", path)[0] == 0  # the datatype is described: inspect shows it
    for args in commands:
        status, stdout, stderr = cli(capsys, *args)
        assert status == 1, (args[0], stdout, stderr)
        lines = stderr.splitlines()
        assert len(lines) == 1, stderr
        assert lines[0].startswith(f"ckptconv: error: {path}: tensor '/{dataset}': the dataset's datatype message is "
                                   "damaged ("), lines[0]
        for foreign in ("Error", "Unable to", "synchronously", "H5P", "precision in available types"):
            assert foreign not in lines[0], lines[0]
    assert list(out.iterdir()) == []
    assert hashes(inputs) == before
    if not on_read:
        with pytest.raises(CorruptFileError) as info:
            ckptconv.open(path)
        assert info.value.tensor == f"/{dataset}" and info.value.path == str(path)
