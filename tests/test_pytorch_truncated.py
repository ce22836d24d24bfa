"""A ``torch.save`` file cut short: one line naming the file and the tensors whose bytes are cut,
ending with what to do, in both layouts.

The truncated copies are made here from the committed torch-written fixtures
(``tests/fixtures/pytorch``: ``zoo_legacy.pt`` was written with
``_use_new_zipfile_serialization=False``, ``cnn.pt`` in the zip layout). Which tensors a cut
reaches is known from the whole file: its entries' byte ranges (each checked bit-exactly against
torch by ``test_pytorch.py``) and the storage layout ``pickletools`` reads.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
import struct
import zipfile
from pathlib import Path

import pytest

import ckptconv
from ckptconv import CorruptFileError
from tests.helpers import run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "pytorch"
AGAIN = "copy or download it again"
# "... before this tensor's bytes end" or "... before the bytes of 5 tensors ('a', 'b', 'c' and 2 more) end"
_COUNT = re.compile(r"before (?:this tensor's bytes|the bytes of (\d+) tensors \((.*)\)) end; ")


def _pickle_ends(raw: bytes) -> list[int]:
    """Where each of the legacy stream's pickles ends (magic, protocol, sys info, object, keys),
    as the standard library's pickletools walks them."""
    ends, at = [], 0
    for _ in range(5):
        for op, _arg, pos in pickletools.genops(io.BytesIO(raw[at:])):
            if op.name == "STOP":
                at += pos + 1
                break
        ends.append(at)
    return ends


def _named(error: CorruptFileError) -> tuple[int, list[str]]:
    """The count of tensors a truncation message names, and the names it spells out."""
    match = _COUNT.search(error.reason)
    assert match, error.reason
    if match.group(1) is None:
        return 1, [error.tensor]
    return int(match.group(1)), re.findall(r"'([^']*)'", match.group(2))


_ITEMSIZE = {"Float": 4, "Double": 8, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2,
             "Char": 1, "Byte": 1, "Bool": 1, "ComplexFloat": 8}


class _Describe(pickle.Unpickler):
    """The standard library's unpickler on a committed fixture, each tensor described as
    (storage key, element size, first element, last element) in its root storage: the oracle."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            def describe(storage, offset, size, stride, *_):  # type: ignore[no-untyped-def]
                key, itemsize, base = storage
                if not math.prod(size):
                    return None  # no bytes
                return key, itemsize, base + offset, base + offset + sum((d - 1) * t for d, t in zip(size, stride))
            return describe
        assert module == "torch" and name.endswith("Storage"), (module, name)
        return _ITEMSIZE[name[: -len("Storage")]]

    def persistent_load(self, pid):  # type: ignore[no-untyped-def]
        _, itemsize, key, _, _, view = pid  # the legacy layout: a view of a root storage or None
        return key, itemsize, view[1] if view else 0


def _tensor_ends(raw: bytes) -> dict[str, int]:
    """Where each tensor's last byte ends in the legacy file, from the stream's layout: the
    object, the key list, then per key an int64 element count and the storage's bytes."""
    ends = _pickle_ends(raw)
    tensors = _Describe(io.BytesIO(raw[ends[2] : ends[3]])).load()
    keys = pickle.loads(raw[ends[3] : ends[4]])
    itemsizes = {t[0]: t[1] for t in tensors.values() if t}
    starts, at = {}, ends[4]
    for key in keys:
        starts[key] = at + 8
        at += 8 + struct.unpack_from("<q", raw, at)[0] * itemsizes.get(key, 0)
    assert at == len(raw)
    return {name: starts[t[0]] + (t[3] + 1) * t[1] for name, t in tensors.items() if t}


def test_a_legacy_file_cut_in_its_storages_names_the_tensors_whose_bytes_are_cut(tmp_path: Path) -> None:
    """At every cut after the pickles, the message counts exactly the tensors whose bytes reach
    past the cut (a strided view's last element's, an empty tensor has none), names three and
    one as the tensor, in the order of the state dict, and says what to do."""
    raw = (FIXTURES / "zoo_legacy.pt").read_bytes()
    ends = _tensor_ends(raw)
    with ckptconv.open(FIXTURES / "zoo_legacy.pt") as whole:  # the oracle agrees with the reader
        assert {e.name: e.byte_range.offset + e.byte_range.length for e in whole.values()
                if e.byte_range and e.byte_range.length} == {n: end for n, end in ends.items() if n in whole and whole[n].byte_range}
        assert len(ends) == 30 and sum(1 for e in whole.values() if e.byte_range is None and math.prod(e.shape)) == 5
    cut = tmp_path / "zoo_legacy.pt"
    for n in range(_pickle_ends(raw)[4], len(raw)):
        cut.write_bytes(raw[:n])
        with pytest.raises(CorruptFileError) as info:
            ckptconv.open(cut)
        error = info.value
        reason = error.reason
        assert error.path == str(cut) and "\n" not in str(error), reason
        assert reason.startswith(f"the file is truncated or damaged: it ends at byte {n}, ") and reason.endswith(AGAIN), reason
        past = [name for name, end in ends.items() if end > n]
        count, shown = _named(error)
        assert count == len(past) and error.tensor == past[0], (n, past, reason)
        assert shown == past[:3], (n, past, reason)


def test_a_legacy_file_cut_before_its_storages_names_every_tensor(tmp_path: Path) -> None:
    raw = (FIXTURES / "zoo_legacy.pt").read_bytes()
    with ckptconv.open(FIXTURES / "zoo_legacy.pt") as whole:
        holding = sum(1 for e in whole.values() if math.prod(e.shape))  # 30 of 32: two are empty
    object_end, keys_end = _pickle_ends(raw)[3:5]
    cut = tmp_path / "zoo_legacy.pt"
    for n in range(object_end, keys_end):  # inside the storage key list: the object is whole
        cut.write_bytes(raw[:n])
        with pytest.raises(CorruptFileError, match=f"it ends at byte {n}, before the bytes of {holding} tensors .*; {AGAIN}$"):
            ckptconv.open(cut)
    header_end = _pickle_ends(raw)[2]
    for n in (header_end + 1, (header_end + object_end) // 2, object_end - 1):
        cut.write_bytes(raw[:n])
        with pytest.raises(CorruptFileError, match=f"truncated or damaged: it ends inside its pickle, before any tensor's bytes; {AGAIN}$"):
            ckptconv.open(cut)
    for n in (_pickle_ends(raw)[0] + 1, header_end - 1):
        cut.write_bytes(raw[:n])
        with pytest.raises(CorruptFileError, match=f"truncated or damaged: it ends inside its header pickles, .*; {AGAIN}$"):
            ckptconv.open(cut)


def test_the_command_line_says_it_in_one_line(tmp_path: Path) -> None:
    raw = (FIXTURES / "zoo_legacy.pt").read_bytes()
    cut = tmp_path / "model.pt"
    cut.write_bytes(raw[:-100])
    for command in (["inspect", cut], ["convert", cut, tmp_path / "out.safetensors"]):
        result = run_cli(*command)
        assert result.returncode == 1 and result.stdout == ""
        assert re.fullmatch(
            rf"ckptconv: error: {re.escape(str(cut))}: tensor '[^']+': the file is truncated or damaged: it ends at byte "
            rf"{len(raw) - 100}, before the bytes of \d tensors \('[^']+'(, '[^']+')*\) end; {AGAIN}\n",
            result.stderr,
        ), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_zip_whose_directory_survives_but_not_its_last_storage(tmp_path: Path) -> None:
    """The zip layout: a truncated archive has no end record (a line saying to fetch it again);
    a directory that survives while a storage's bytes do not (the storage stored last, its tail
    gone) names the tensor viewing it."""
    with zipfile.ZipFile(FIXTURES / "cnn.pt") as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    last = max((m for m in members if "/data/" in m[0]), key=lambda m: len(m[1]))
    source = tmp_path / "cnn.pt"
    with zipfile.ZipFile(source, "w") as out:  # the largest storage last, ahead of the directory
        for name, data in [*(m for m in members if m is not last), last]:
            out.writestr(name, data)
    whole = source.read_bytes()
    directory_at = struct.unpack_from("<I", whole, len(whole) - 6)[0]
    start = directory_at - len(last[1])  # where the last member's bytes begin
    assert whole[start:directory_at] == last[1]
    with ckptconv.open(source) as store:
        viewing = [e.name for e in store.values() if e.byte_range.offset >= start]
    assert len(viewing) == 1
    drop = len(last[1]) - 100  # keep 100 of its bytes: more is cut than the directory's length
    assert drop > len(whole) - directory_at
    end_record = bytearray(whole[-22:])
    struct.pack_into("<I", end_record, 16, directory_at - drop)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole[: start + 100] + whole[directory_at:-22] + bytes(end_record))
    with pytest.raises(CorruptFileError) as info:
        ckptconv.open(cut)
    assert info.value.tensor == viewing[0]
    assert info.value.reason == (
        f"the file is truncated or damaged: it ends at byte {cut.stat().st_size}, before this tensor's bytes end; {AGAIN}"
    )
    plain = tmp_path / "plain.pt"
    plain.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptFileError, match="copy or download the torch.save file again"):
        ckptconv.open(plain)
