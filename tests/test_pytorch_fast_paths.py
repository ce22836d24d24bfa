"""The PyTorch reader's shortcuts give exactly what the general code gives.

Pieces read a ``torch.save`` zip of thousands of tensors faster than the general code
would: the opcode walk's shortcuts (``_torch_pickle._FAST``: BINUNICODE and the memo opcodes
taken whole, BINPUT/BINGET as plain opcodes once 255 opcodes are read) and ckptconv's own
reader of the zip central directory (``_zip.central_directory``, in place of ``zipfile``).
Each is compared with its reference — the walk without shortcuts (``_GENERAL``), ``zipfile``
itself — on every torch-written fixture, on archives ``zipfile`` writes (zip64 fields and
records, a comment, data in front, compressed members) and on truncated and mutated copies:
the same result, or the same refusal.
"""

from __future__ import annotations

import io
import pickle
import random
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

import ckptconv
from ckptconv import CkptconvError, CorruptFileError, UnsafeInputError, UnsupportedError
from ckptconv.formats import _torch_pickle, _zip, pytorch
from tests.test_pytorch_hostile import _pickles

FIXTURES = Path(__file__).parent / "fixtures" / "pytorch"


# --- the opcode walk ------------------------------------------------------------------------------


def _outcome(walk: Callable[[bytes], int], data: bytes) -> tuple[object, ...]:
    try:
        return ("read", walk(data))
    except CkptconvError as e:
        return (type(e).__name__, str(e))


def _general(data: bytes) -> int:
    return _torch_pickle._walk(data, _torch_pickle._GENERAL, _torch_pickle._GENERAL)


def _state_dict_pickle(count: int, protocol: int = 2) -> bytes:
    """The shape torch.save's pickles take past 256 memo slots (LONG_BINPUT, LONG_BINGET)."""
    keys = [f"layer_{i}.weight" for i in range(count)]
    shared = ("storage", "cpu")
    return pickle.dumps({k: (shared, i, (i, 3), keys[i - 1]) for i, k in enumerate(keys)}, protocol=protocol)


def _edges() -> list[bytes]:
    """Pickles at the shortcuts' edges: a 1-byte memo index just under, at and over the count
    around the 256th opcode; BINUNICODE whole, cut in its length or its text, not UTF-8, and a
    truncated LONG_BINPUT / LONG_BINGET."""
    found = []
    for count in range(240, 262):  # the opcode count at the memo opcode looked at
        for index in (count - 2, count - 1, count, count + 1, 255):
            if 0 <= index <= 255:
                for op in (b"h", b"q"):
                    found.append(b"\x80\x02" + b"N" * (count - 2) + op + bytes([index]) + b".")
                    # after another 1-byte memo opcode (the one that may switch tables)
                    found.append(b"\x80\x02" + b"N" * (count - 3) + b"h\x00" + op + bytes([index]) + b".")
    for count in (3, 4, 255, 256, 300):
        for index in (count - 1, count, count + 1, count + 256, 2**32 - 1):
            for op in (b"j", b"r"):
                found.append(b"\x80\x02" + b"N" * (count - 2) + op + struct.pack("<I", index) + b".")
    text = b"X" + struct.pack("<I", 5) + b"abcde"
    for body in (text, text[:3], text[:7], b"X" + struct.pack("<I", 2) + b"\xc3\x28", b"X" + b"\xff" * 4 + b"a",
                 b"r" + struct.pack("<I", 1), b"r\x01\x00", b"j" + struct.pack("<I", 2**31), b"j\x02"):
        for lead in (b"", b"N" * 300):
            found.append(b"\x80\x02" + lead + body + b".")
            found.append(b"\x80\x02" + lead + body)
    return found


def _mutants(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        raw = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(raw))
            raw[at] = rng.choice([rng.randrange(256), ord("h"), ord("q"), ord("j"), ord("r"), ord("X"), 0xFF])
        out.append(bytes(raw))
    return out


def _walk_corpus() -> list[bytes]:
    rng = random.Random(18)
    base = [*_pickles(), _state_dict_pickle(700), _state_dict_pickle(700, protocol=4), *_edges()]
    corpus = list(base)
    for data in base:
        cuts = range(len(data)) if len(data) < 600 else sorted(rng.sample(range(len(data)), 300))
        corpus += [data[:cut] for cut in cuts]
        corpus += _mutants(data, rng, 40 if len(data) < 600 else 150)
    return corpus


def test_the_walk_shortcuts_give_what_the_general_walk_gives() -> None:
    """Every torch-written pickle, the stdlib's every protocol, a state dict past 256 memo
    slots, the shortcuts' edges, and their truncations and mutations: the same length, or the
    same refusal in the same words."""
    corpus = _walk_corpus()
    outcomes = {"read": 0, "refused": 0}
    for data in corpus:
        fast = _outcome(_torch_pickle.check_opcodes, data)
        assert fast == _outcome(_general, data), data[:80]
        outcomes["read" if fast[0] == "read" else "refused"] += 1
    assert min(outcomes.values()) > 200, outcomes  # both kinds of outcome, many of each


def test_the_shortcuts_are_taken() -> None:
    """The comparison above is not vacuous: the fast tables differ from the general ones where
    the shortcuts are (BINUNICODE, the memo opcodes)."""
    fast, late, general = _torch_pickle._FAST, _torch_pickle._FAST_LATE, _torch_pickle._GENERAL
    changed = {bytes([b]) for b in range(256) if fast[b] != general[b]}
    assert changed == {b"X", b"j", b"r"}
    assert {bytes([b]) for b in range(256) if late[b] != fast[b]} == {b"h", b"q"}


def _read_in_pieces(data: bytes, first: int) -> tuple[object, ...]:
    def walk(raw: bytes) -> int:
        head, length = _torch_pickle.read_pickle(io.BytesIO(raw), len(raw), first=first)
        assert head == raw or length <= len(head) < len(raw)
        return length

    return _outcome(walk, data)


def test_a_pickle_read_in_pieces_walks_as_one_read_whole() -> None:
    """``read_pickle`` reads a legacy file's pickles a piece at a time (not the storages after
    them): on the walk corpus, read from 1, 7 or 64 bytes on, the same length or the same
    refusal as the walk of all the bytes; also where a length field is cut in two by the end
    of a piece (a signed length read short looks negative)."""
    cut_length = b"\x80\x02T" + struct.pack("<i", 0x8010) + b"abc"  # BINSTRING; its bytes run past the end
    assert "negative length" in str(_outcome(_torch_pickle.check_opcodes, cut_length[:5]))
    corpus = [cut_length, *_walk_corpus()[::7]]
    outcomes = {"read": 0, "refused": 0}
    for data in corpus:
        whole = _outcome(_torch_pickle.check_opcodes, data)
        for first in (1, 5, 7, 64):
            assert _read_in_pieces(data, first) == whole, (first, data[:80])
        outcomes["read" if whole[0] == "read" else "refused"] += 1
    assert min(outcomes.values()) > 100, outcomes


def _pids() -> list[object]:
    """Persistent ids as torch writes them and as it never does: each field of the wrong type
    or value, keys that are not plain names, a storage declared twice, the legacy view."""
    marker = _torch_pickle._ALLOWED[("torch", "FloatStorage")]
    other = _torch_pickle._ALLOWED[("torch", "HalfStorage")]
    dtype = _torch_pickle._ALLOWED[("torch", "float32")]
    good = ("storage", marker, "0", "cpu", 4)
    pids: list[object] = [good, good, ("storage", other, "0", "cpu", 4), ("storage", marker, "0", "cpu", 5), None, (), [*good],
                          good[:4], (*good, None), ("module", marker), (b"storage", marker, "1", "cpu", 4)]
    for at, values in enumerate([("stor", b"storage", 1), (dtype, "FloatStorage", None), (1, b"2", "..", ".", "a/b",
                                 "\u0661", "3" * 201, "a" * 201, "x.y-z_", "", " 4"), (), (-1, True, 2.0, 2**70, "4")]):
        for value in values:
            pid = list(good)
            pid[2] = str(50 + len(pids))  # a storage not met yet (unless the key is what varies)
            pid[at] = value
            pids.append(tuple(pid))
    return [*pids, *(("storage", marker, str(i), "cpu", i) for i in range(100, 120))]


def test_a_storage_pid_in_few_steps_is_what_the_checks_make_of_it() -> None:
    """``persistent_load``'s common case gives what its general code (``_storage``) gives on
    every pid, in the zip layout and the legacy one: the same storage reference or the same
    refusal in the same words, and the same storages known afterwards."""
    taken = 0
    for legacy in (False, True):
        fast = _torch_pickle.RestrictedUnpickler(io.BytesIO(b""), legacy=legacy)
        general = _torch_pickle.RestrictedUnpickler(io.BytesIO(b""), legacy=legacy)
        calls = []
        checks = fast._storage
        fast._storage = lambda pid: calls.append(pid) or checks(pid)  # type: ignore[method-assign]
        for pid in _pids():
            result = _outcome(fast.persistent_load, pid)
            assert result == _outcome(general._storage, pid), (legacy, pid)
            assert fast.storages == general.storages
            taken += not calls or calls[-1] is not pid
    assert taken > 20  # (the zip layout's torch-written pids)


# --- the central directory ------------------------------------------------------------------------


def _reference(path: Path) -> list[tuple[object, ...]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, i.header_offset, i.compress_type, i.compress_size, i.file_size, i.CRC, i.flag_bits)
                for i in z.infolist()]


def _ours(path: Path) -> list[tuple[object, ...]]:
    return [tuple(m) for m in _zip.central_directory(path, kind="file")]


def _written_archives(d: Path) -> list[Path]:
    """Archives zipfile writes: plain, with an archive comment, with data in front (a
    self-extracting stub), with compressed members, with zip64 extra fields and records."""
    members = {"a/data.pkl": b"\x80\x02}q\x00.", "a/data/0": bytes(range(256)) * 8, "a/byteorder": b"little"}
    paths = []

    def write(name: str, *, compression: int = zipfile.ZIP_STORED, comment: bytes = b"", zip64: bool = False,
              front: bytes = b"") -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=compression) as z:
            z.comment = comment
            for member, data in members.items():
                with z.open(member, "w", force_zip64=zip64) as f:
                    f.write(data)
        path = d / name
        path.write_bytes(front + buffer.getvalue())
        paths.append(path)

    write("plain.zip")
    write("comment.zip", comment=b"an archive comment " * 20)
    write("front.zip", front=b"#!/bin/sh\nexit 0\n" * 20)
    write("deflated.zip", compression=zipfile.ZIP_DEFLATED)
    write("zip64_fields.zip", zip64=True)
    return paths


def _zip64_records(d: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An archive with zip64 end records (zipfile writes them past its limits, made small here)."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    path = d / "zip64_records.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(5):
            z.writestr(f"a/data/{i}", bytes([i]) * 300)
        z.writestr("a/data.pkl", b"\x80\x02}q\x00.")
    monkeypatch.undo()
    with zipfile.ZipFile(path) as z:
        raw = path.read_bytes()
        assert b"PK\x06\x06" in raw[-200:] and b"PK\x06\x07" in raw[-100:]
    return path


def _archives(d: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    torch_written = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and zipfile.is_zipfile(p))
    assert len(torch_written) >= 8
    return [*torch_written, *_written_archives(d), _zip64_records(d, monkeypatch)]


def test_the_central_directory_reads_as_zipfile_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every torch-written archive and every kind zipfile writes: the same members, in the same
    order, with the same fields; and each stored member's data found where zipfile reads it."""
    for path in _archives(tmp_path, monkeypatch):
        members = _zip.central_directory(path, kind="file")
        assert [tuple(m) for m in members] == _reference(path), path.name
        stored = [m for m in members if m.compress_type == 0]
        with path.open("rb") as f, zipfile.ZipFile(path) as z:
            starts = _zip.data_offsets(path, stored, file=f)
            for m, start in zip(stored, starts):
                f.seek(start)
                assert f.read(m.file_size) == z.read(m.filename), (path.name, m.filename)


def _data_offsets_outcome(path: Path, members: list[_zip.Member]) -> tuple[object, ...]:
    try:
        with path.open("rb") as f:
            return ("read", _zip.data_offsets(path, members, file=f))
    except CkptconvError as e:
        return (type(e).__name__, str(e))


def test_local_headers_read_through_the_map_as_through_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data_offsets reads local headers through a map of the file, or (a file system that
    cannot map files) by windows of pread: the same offsets on every archive, and the same
    refusal when a local header is damaged, cut off, or lies past the end of the file."""
    cases = []
    for path in _archives(tmp_path, monkeypatch):
        members = [m for m in _zip.central_directory(path, kind="file") if m.compress_type == 0]
        cases.append((path, members))
    source = FIXTURES / "cnn.pt"
    members = [m for m in _zip.central_directory(source, kind="file") if m.compress_type == 0]
    data = source.read_bytes()
    last = max(m.header_offset for m in members)
    for i, at in enumerate([members[1].header_offset, members[1].header_offset + 26, members[1].header_offset + 31,
                            last + 3]):
        damaged = bytearray(data)
        damaged[at] ^= 0x41
        (tmp_path / f"damaged{i}.pt").write_bytes(bytes(damaged))
        cases.append((tmp_path / f"damaged{i}.pt", members))
    (tmp_path / "cut.pt").write_bytes(data[: last + 20])  # the last local header cut short
    cases.append((tmp_path / "cut.pt", members))
    with monkeypatch.context() as patch:  # every one of these files is mapped
        patch.setattr(_zip, "_data_offsets_by_windows", None)
        outcomes = [_data_offsets_outcome(path, members) for path, members in cases]
    assert sum(o[0] == "read" for o in outcomes) >= 8 and sum(o[0] != "read" for o in outcomes) >= 4, outcomes

    def unmappable(*args: object, **kwargs: object) -> None:
        raise OSError(19, "No such device")

    monkeypatch.setattr(_zip.mmap, "mmap", unmappable)
    assert [_data_offsets_outcome(path, members) for path, members in cases] == outcomes


def _zip_mutants(data: bytes, rng: random.Random) -> list[bytes]:
    """Truncations (most near the end, where the directory is) and byte changes in the
    directory and end records."""
    central = data.find(b"PK\x01\x02")
    out = [data[:cut] for cut in range(max(len(data) - 400, 0), len(data))]
    out += [data[:cut] for cut in rng.sample(range(len(data)), min(60, len(data)))]
    for _ in range(300):
        raw = bytearray(data)
        for _ in range(rng.randint(1, 2)):
            at = rng.randrange(central, len(raw))
            raw[at] = rng.choice([rng.randrange(256), 0xFF, 0, raw[at] ^ 1])
        out.append(bytes(raw))
    return out


def test_damaged_directories_are_refused_where_zipfile_refuses_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Truncated and mutated copies: where zipfile refuses, ckptconv's reader refuses in one
    line; where ckptconv's reader accepts, zipfile reads the very same members. (It refuses
    more than zipfile: two members of one name, a NUL in a name, an encrypted member, an entry
    running past the directory.)"""
    rng = random.Random(18)
    archives = [FIXTURES / "cnn.pt", FIXTURES / "zoo_deflated.pt", *_written_archives(tmp_path)[:3],
                _zip64_records(tmp_path, monkeypatch)]
    tally = {"both read": 0, "both refuse": 0, "only ckptconv refuses": 0}
    mutant = tmp_path / "mutant.zip"
    for archive in archives:
        for data in _zip_mutants(archive.read_bytes(), rng):
            mutant.write_bytes(data)
            try:
                reference = _reference(mutant)
            except Exception:  # noqa: BLE001 - zipfile raises many kinds on damage
                reference = None
            try:
                ours = _ours(mutant)
            except CkptconvError:
                ours = None
            if reference is None:
                assert ours is None, (archive.name, len(data))
                tally["both refuse"] += 1
            elif ours is None:
                tally["only ckptconv refuses"] += 1
            else:
                assert ours == reference, (archive.name, len(data))
                tally["both read"] += 1
    assert tally["both read"] > 100 and tally["both refuse"] > 100, tally
    assert tally["only ckptconv refuses"] < tally["both refuse"], tally


def _rewrite(path: Path, members: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            z.writestr(name, data)


def test_two_members_of_one_name_are_refused(tmp_path: Path) -> None:
    """zipfile keeps both and reads the last; torch reads the first: refused, not guessed."""
    path = tmp_path / "twice.pt"
    with zipfile.ZipFile(FIXTURES / "cnn.pt") as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    first = next(name for name, _ in members if "/data/" in name)
    with pytest.warns(UserWarning, match="Duplicate name"):
        _rewrite(path, [*members, (first, b"\x00" * 16)])
    with pytest.raises(UnsafeInputError, match=f"zip member '{first}' appears twice"):
        ckptconv.open(path)


def test_an_encrypted_member_and_a_local_name_that_disagrees_are_refused(tmp_path: Path) -> None:
    source = (FIXTURES / "cnn.pt").read_bytes()
    central = source.find(b"PK\x01\x02")
    encrypted = bytearray(source)
    encrypted[central + 8] |= 1  # general purpose flags: encrypted
    (tmp_path / "encrypted.pt").write_bytes(bytes(encrypted))
    with pytest.raises(UnsupportedError, match="is encrypted"):
        ckptconv.open(tmp_path / "encrypted.pt")

    renamed = bytearray(source)
    with zipfile.ZipFile(FIXTURES / "cnn.pt") as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    at = info.header_offset + 30 + len(info.filename) - 1  # the local header's copy of the name
    renamed[at : at + 1] = b"9"
    (tmp_path / "renamed.pt").write_bytes(bytes(renamed))
    with pytest.raises(CorruptFileError, match=r"zip member 'cnn/data/0': its local header \(at byte \d+\) names 'cnn/data/9': the zip is damaged"):
        ckptconv.open(tmp_path / "renamed.pt")


def test_a_torch_archive_with_zip64_records_reads_as_the_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch writes zip64 records past 4 GiB or 65,535 members; the same archive rewritten with
    them (limits made small) gives the same tensors."""
    path = tmp_path / "zip64.pt"
    with zipfile.ZipFile(FIXTURES / "zoo.pt") as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    _rewrite(path, members)
    monkeypatch.undo()
    assert b"PK\x06\x06" in path.read_bytes()[-200:]
    with ckptconv.open(path) as rewritten, ckptconv.open(FIXTURES / "zoo.pt") as original:
        assert list(rewritten) == list(original)
        for name in original:
            assert rewritten[name].read().tobytes() == original[name].read().tobytes(), name


# --- building entries, and the kinds of a state dict's keys --------------------------------------


def _torch_files() -> list[Path]:
    """The torch-written fixtures ckptconv reads (not the pickled modules it refuses)."""
    files = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and not p.name.startswith("module")
                   and (p.suffix == ".pt" or (p.suffix == ".bin" and ".expected" not in p.name)))
    assert len(files) >= 12
    return files


def _described(entries: list[object]) -> list[tuple[object, ...]]:
    return [(e.name, e.key, e.shape, e.dtype, e.path, e.kind, e.layer, e.byte_range,
             None if e.byte_range else e.read().tobytes()) for e in entries]


def _entries_both_ways(path: Path) -> tuple[tuple[object, ...], tuple[object, ...], int]:
    """``_Walk.entries`` (its common case in few steps) and ``_Walk._entry`` on every tensor
    (the general code) on one file: each the entries described, or the refusal; and how many
    tensors took the common case."""
    import os

    from ckptconv.formats import _torch_layouts, pytorch

    def outcome(build: Callable[[], list[object]]) -> tuple[object, ...]:
        try:
            return ("read", _described(build()))
        except CkptconvError as e:
            return (type(e).__name__, str(e))

    with path.open("rb") as f:
        layout = pytorch._kind_of(path, f.read(4096))
    parsed = _torch_layouts.parse(path, layout)
    if parsed.cut:
        raise CorruptFileError("truncated: no entries are built (test_pytorch_truncated.py)")
    walk = pytorch._Walk(path)
    walk.visit(parsed.root, (), "weight", 0)
    general = outcome(lambda: [walk._entry(parts, kind, ref, parsed, {}, os.fspath(path)) for parts, kind, ref in walk.found])
    calls = []
    real = walk._entry
    walk._entry = lambda *args: calls.append(1) or real(*args)  # type: ignore[method-assign]
    fast = outcome(lambda: walk.entries(parsed))
    return fast, general, len(walk.found) - len(calls)


def _uncommon_views(d: Path) -> list[Path]:
    """Views the common case must leave to the general code: a float32 tensor over an untyped
    (byte) storage of half its size (``_rebuild_tensor_v3``: refused), and a legacy storage view (the
    sixth item of a legacy persistent id) whose tensor starts 8 elements into its root storage;
    each after a plain float32 tensor (``a``), so that the dtype is known by then."""
    from tests.test_pytorch_hostile import _global, _int, _str, _tuple, rezip, tensor_pickle

    plain = tensor_pickle(("0", 216, 0, (8, 3, 3, 3), (27, 9, 3, 1)), name="a")[4:-2]  # its items only

    untyped = d / "untyped.pt"
    pid = _tuple([_str("storage"), _global("torch", "UntypedStorage"), _str("1"), _str("cpu"), _int(16)]) + b"Q"
    args = _tuple([pid, _int(0), _tuple([_int(8)]), _tuple([_int(1)]), b"\x89", b"}", _global("torch", "float32")])
    body = _str("w") + _global("torch._utils", "_rebuild_tensor_v3") + args + b"R"
    rezip(FIXTURES / "cnn.pt", untyped, replace={"data.pkl": b"\x80\x02}(" + plain + body + b"u."})
    legacy = d / "legacy_view.pt"
    view = _tuple([_str("k"), _int(8), _int(8)])
    pid = _tuple([_str("storage"), _global("torch", "FloatStorage"), _str("k"), _str("cpu"), _int(16), view]) + b"Q"
    args = _tuple([pid, _int(0), _tuple([_int(4)]), _tuple([_int(1)]), b"\x89", b"}"])
    body = _str("w") + _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    storage = struct.pack("<q", 16) + struct.pack("<16f", *range(16))
    plain = plain.replace(b"FloatStorage\n" + _str("0") + _str("cpu") + _int(216) + b"t",
                          b"FloatStorage\n" + _str("0") + _str("cpu") + _int(216) + b"Nt")  # a sixth item: no view
    storage += struct.pack("<q", 216) + bytes(864)
    legacy.write_bytes(header + b"\x80\x02}(" + plain + body + b"u." + pickle.dumps(["k", "0"], protocol=2) + storage)
    with ckptconv.open(legacy) as store:
        assert store["w"].read().tolist() == [8.0, 9.0, 10.0, 11.0]
    with pytest.raises(UnsafeInputError, match="ends at byte 32 of its storage, which holds 16 bytes"):
        ckptconv.open(untyped)
    return [untyped, legacy]


def test_entries_in_few_steps_are_the_general_entries(tmp_path: Path) -> None:
    """Every torch-written file (zip, legacy, big-endian, deflated, shards), the hostile
    corpus's views and storages (outside their storage, overlapping, inflated) and views the
    common case leaves alone: the same entries, byte ranges and values, or the same refusal;
    the common case is taken."""
    from tests.test_pytorch_hostile import HOSTILE

    taken = 0
    for path in [*_torch_files(), *_uncommon_views(tmp_path)]:
        fast, general, shortcuts = _entries_both_ways(path)
        assert fast == general, path.name
        taken += shortcuts
    refused = 0
    for name, build in sorted(HOSTILE.items()):
        (tmp_path / name).mkdir()
        case = build(tmp_path / name)
        if not case.path.is_file():
            continue  # a sharded set's index
        try:
            fast, general, _ = _entries_both_ways(case.path)
        except CkptconvError:
            continue  # refused before any entry is built (or truncated)
        assert fast == general, name
        refused += fast[0] != "read"
    assert taken > 50 and refused >= 3, (taken, refused)


def test_a_state_dicts_keys_are_not_searched_one_by_one_only_when_none_can_match() -> None:
    """``_may_name_kinds`` is False only when no key matches the kind patterns: on every
    fixture's keys, on the patterns' words in any case and inside longer keys, and on keys
    that match only by Unicode case folding (the long s, the Kelvin sign) or a trailing
    newline; and a file's kinds are the same when every key is searched."""
    from ckptconv.formats import pytorch

    def matches(keys: list[str]) -> bool:
        return any(pytorch._EITHER.search(k) for k in keys)

    readable = [p for p in _torch_files() if not p.name.startswith("expanded")]  # (broadcast views: refused)
    key_sets = []
    for path in readable:
        with ckptconv.open(path) as store:
            key_sets.append([part for name in store for part in name.split("/")])
    words = [*pytorch._OPTIMIZER_WORDS, *pytorch._BOOKKEEPING_WORDS, *pytorch._BOOKKEEPING_KEYS]
    for word in words:
        key_sets += [[f"layer.{word}.weight"], [word.upper()], [word.title(), "x"], [f"{word}\n"]]
    key_sets += [["\u017fched"], ["\u017fcaler.weight"], ["\u212aernel", "lr_\u017fcheduler"], ["amp\n"], ["rnG"],
                 ["ampere.weight"], ["\u00e9poch", "dense.weight"], []]
    assert sum(matches(keys) for keys in key_sets) > 40
    for keys in key_sets:
        if matches(keys):
            assert pytorch._may_name_kinds(keys), keys
    assert not pytorch._may_name_kinds([f"dense_{i}.weight" for i in range(100)])

    kinds = {}
    for searched in (False, True):
        real = pytorch._may_name_kinds
        pytorch._may_name_kinds = (lambda keys: True) if searched else real  # type: ignore[assignment]
        try:
            for path in readable:
                with ckptconv.open(path) as store:
                    kinds.setdefault(path, []).append([(e.name, e.kind) for e in store.values()])
        finally:
            pytorch._may_name_kinds = real
    assert all(a == b for a, b in kinds.values())
    assert any(kind != "weight" for a, _ in kinds.values() for _, kind in a)


def test_the_kinds_of_a_state_dicts_tensors_in_few_steps_are_the_general_rule() -> None:
    """The walk gives a container's tensors its kind without calling ``_child_kind`` where
    that can only keep it (a dotted key, no kind word among the keys): every key, in every
    container kind, with and without a kind word beside it, gets what ``_child_kind`` gives,
    and a step counter at the top of a plain state dict is bookkeeping."""
    storage = _torch_pickle.StorageRef("0", "float32", 4)
    ref = _torch_pickle.TensorRef(storage, 0, (4,), (1,), "float32")
    keys = ["features.0.weight", "step", "Epoch", "global_step", "num_updates.x", "weight", "fc.iter", "iterations"]
    for kind in ("weight", "optimizer", "bookkeeping"):
        for extra in ([], ["optim_state"], ["lr_sched.x"]):
            tree = dict.fromkeys([*keys, *extra], ref)
            walk = pytorch._Walk(Path("x.pt"))
            walk.visit(tree, (), kind, 0)
            words = kind == "weight" and pytorch._may_name_kinds(list(tree))
            assert [k for _, k, _ in walk.found] == [pytorch._child_kind(kind, key, ref, words) for key in tree]
    walk = pytorch._Walk(Path("x.pt"))
    walk.visit(dict.fromkeys(keys, ref), (), "weight", 0)
    assert [k for _, k, _ in walk.found] == ["weight", "bookkeeping", "bookkeeping", "bookkeeping", "weight", "weight",
                                             "weight", "bookkeeping"]
