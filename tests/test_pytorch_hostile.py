"""Hostile and damaged PyTorch files: each refused in one line naming the file, nothing run,
nothing written, the input unchanged.

Made from the committed torch-written fixtures (``tests/fixtures/pytorch``) by doing what an
attacker would: ``__reduce__`` payloads in ``data.pkl`` (``os.system``, ``eval``, ``exec``,
a ``getattr`` chain, each of which would create a marker file if it ever ran), a pickled
``nn.Module``, storages declared larger than the bytes stored, views outside their storage, a
``data.pkl`` naming a missing ``data/<key>``, member and storage names that climb out of the
archive, a zip bomb, nesting deeper than any state dict. Pickles are assembled opcode by opcode
here (no torch needed), in the shapes ``torch.save`` writes.
"""

from __future__ import annotations

import pickle
import re
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

import ckptconv
from ckptconv import CorruptFileError, UnsafeInputError, UnsupportedError
from tests.test_robustness_corpus import Case, check_cli

FIXTURES = Path(__file__).parent / "fixtures" / "pytorch"


# -- a small pickle assembler, in torch.save's shapes --------------------------------------------


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tensor_pickle(tensor: tuple[str, int, int, tuple[int, ...], tuple[int, ...]], *, name: str = "w",
                  storage_type: str = "FloatStorage") -> bytes:
    """``{name: _rebuild_tensor_v2(storage(key, numel), offset, size, stride, False, {})}``."""
    key, numel, offset, size, stride = tensor
    pid = _tuple([_str("storage"), _global("torch", storage_type), _str(key), _str("cpu"), _int(numel)]) + b"Q"
    args = _tuple([pid, _int(offset), _tuple([_int(d) for d in size]), _tuple([_int(s) for s in stride]),
                   b"\x89", b"}"])
    body = _str(name) + _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    return b"\x80\x02}(" + body + b"u."


def with_payload(payload: bytes) -> bytes:
    """A state dict with one tensor of cnn.pt's first storage and a payload beside it."""
    entry = tensor_pickle(("0", 216, 0, (8, 3, 3, 3), (27, 9, 3, 1)), name="features.0.weight")
    return entry[:-2] + _str("evil") + payload + b"u."


def marker_commands(marker: Path) -> dict[str, bytes]:
    """Payloads that would each create ``marker`` if anything ran them."""
    m = str(marker)
    return {
        "os_system": _global("os", "system") + _tuple([_str(f"touch {m}")]) + b"R",
        "posix_system": _global("posix", "system") + _tuple([_str(f"touch {m}")]) + b"R",
        "eval": _global("builtins", "eval") + _tuple([_str(f"open({m!r}, 'w')")]) + b"R",
        "exec": _global("builtins", "exec") + _tuple([_str(f"open({m!r}, 'w')")]) + b"R",
        "getattr_chain": (_global("builtins", "getattr")
                          + _tuple([_global("builtins", "__import__") + _tuple([_str("os")]) + b"R", _str("system")])
                          + b"R" + _tuple([_str(f"touch {m}")]) + b"R"),
        # protocol 4: the global's names come from the stack (STACK_GLOBAL), not the opcode
        "stack_global": _str("os") + _str("system") + b"\x93"
                        + _tuple([_str(f"touch {m}")]) + b"R",
        "subprocess": _global("subprocess", "check_call") + _tuple([_tuple([_str("touch"), _str(m)])]) + b"R",
        # an allowed name (torch's own rebuild function) carrying a payload in its arguments
        "inside_allowed_call": _global("torch._utils", "_rebuild_tensor_v2")
                               + _tuple([_global("os", "system") + _tuple([_str(f"touch {m}")]) + b"R",
                                         _int(0), b")", b")", b"\x89", b"}"]) + b"R",
        # a persistent id whose storage type is a payload
        "in_persistent_id": _tuple([_str("storage"), _global("os", "system") + _tuple([_str(f"touch {m}")]) + b"R",
                                    _str("0"), _str("cpu"), _int(1)]) + b"Q",
    }


def rezip(src: Path, dst: Path, *, replace: dict[str, bytes] | None = None, extra: dict[str, bytes] | None = None,
          compress: dict[str, int] | None = None) -> None:
    """Copy a torch zip, replacing or adding members (names relative to the archive prefix)."""
    replace, extra, compress = replace or {}, extra or {}, compress or {}
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        prefix = z.namelist()[0].split("/")[0]
        for info in z.infolist():
            name = info.filename[len(prefix) + 1 :]
            data = replace.get(name, z.read(info))
            out.writestr(info.filename, data, compress_type=compress.get(name, zipfile.ZIP_STORED))
        for name, data in extra.items():
            out.writestr(name if name.startswith(("/", "..")) else f"{prefix}/{name}", data)


# -- the corpus -----------------------------------------------------------------------------------

Builder = Callable[[Path], Case]
HOSTILE: dict[str, Builder] = {}


def hostile(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        HOSTILE[name] = builder
        return builder

    return register


def _payload_case(kind: str) -> Builder:
    def build(d: Path) -> Case:
        path = d / "evil.pt"
        payload = marker_commands(d.parent / "MARKER")[kind]
        rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": with_payload(payload)})
        return Case(path, path, UnsafeInputError)

    return build


for _kind in ("os_system", "posix_system", "eval", "exec", "getattr_chain", "stack_global", "subprocess",
              "inside_allowed_call", "in_persistent_id"):
    HOSTILE[f"payload-{_kind}"] = _payload_case(_kind)


@hostile("payload-legacy")
def _payload_legacy(d: Path) -> Case:
    """The legacy layout: a payload in the object pickle after the magic number."""
    path = d / "evil_legacy.pt"
    raw = (FIXTURES / "zoo_legacy.pt").read_bytes()
    header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    payload = marker_commands(d.parent / "MARKER")["os_system"]
    path.write_bytes(header + b"\x80\x02" + payload + b"." + raw[len(header):])
    return Case(path, path, UnsafeInputError)


@hostile("module")
def _module(d: Path) -> Case:
    path = d / "model.pt"
    shutil.copy(FIXTURES / "module.pt", path)
    return Case(path, path, UnsafeInputError)


@hostile("module-legacy")
def _module_legacy(d: Path) -> Case:
    path = d / "model_legacy.pt"
    shutil.copy(FIXTURES / "module_legacy.pt", path)
    return Case(path, path, UnsafeInputError)


@hostile("module-persistent-id")
def _module_pid(d: Path) -> Case:
    """The legacy layout's own marker of a pickled module class: ("module", ...) persistent id."""
    path = d / "module_pid.pt"
    raw = (FIXTURES / "zoo_legacy.pt").read_bytes()
    header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    pid = _tuple([_str("module"), _str("Net"), _str("net.py"), _str("class Net: ...")]) + b"Q"
    path.write_bytes(header + b"\x80\x02" + pid + b"." + raw[len(header):])
    return Case(path, path, UnsafeInputError)


@hostile("storage-larger-than-data")
def _storage_larger(d: Path) -> Case:
    """The persistent id declares more values than data/0 stores (a truncated member)."""
    path = d / "short.pt"
    with zipfile.ZipFile(FIXTURES / "cnn.pt") as z:
        prefix = z.namelist()[0].split("/")[0]
        data = z.read(f"{prefix}/data/0")
    rezip(FIXTURES / "cnn.pt", path, replace={"data/0": data[: len(data) // 2]})
    return Case(path, path, UnsafeInputError)


@hostile("storage-numel-inflated")
def _numel_inflated(d: Path) -> Case:
    path = d / "inflated.pt"
    rezip(FIXTURES / "cnn.pt", path,
          replace={"data.pkl": tensor_pickle(("0", 2**40, 0, (2**20, 2**20), (2**20, 1)))})
    return Case(path, path, UnsafeInputError)


@hostile("offset-outside-storage")
def _offset_outside(d: Path) -> Case:
    path = d / "offset.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": tensor_pickle(("0", 216, 200, (8, 3), (3, 1)))})
    return Case(path, path, UnsafeInputError, key="w")


@hostile("stride-outside-storage")
def _stride_outside(d: Path) -> Case:
    path = d / "stride.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": tensor_pickle(("0", 216, 0, (8, 27), (1000, 1)))})
    return Case(path, path, UnsafeInputError, key="w")


@hostile("negative-stride")
def _negative_stride(d: Path) -> Case:
    path = d / "negative.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": tensor_pickle(("0", 216, 100, (8, 3), (-9, 1)))})
    return Case(path, path, CorruptFileError)


@hostile("expanded-view")
def _expanded(d: Path) -> Case:
    """torch.save of t.expand(...): 4000 values over a 4-value storage."""
    path = d / "expanded.pt"
    shutil.copy(FIXTURES / "expanded.pt", path)
    return Case(path, path, UnsafeInputError, key="expanded")


@hostile("expanded-view-legacy")
def _expanded_legacy(d: Path) -> Case:
    """The same in the legacy layout, whose storage keys are memory addresses."""
    path = d / "expanded_legacy.pt"
    shutil.copy(FIXTURES / "expanded_legacy.pt", path)
    return Case(path, path, UnsafeInputError, key="layer.scale")


@hostile("missing-data-member")
def _missing_member(d: Path) -> Case:
    path = d / "missing.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": tensor_pickle(("99", 4, 0, (4,), (1,)))})
    return Case(path, path, CorruptFileError)


@hostile("storage-key-traversal")
def _key_traversal(d: Path) -> Case:
    path = d / "traversal_key.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": tensor_pickle(("../../../etc/passwd", 4, 0, (4,), (1,)))})
    return Case(path, path, UnsafeInputError)


@hostile("member-traversal")
def _member_traversal(d: Path) -> Case:
    path = d / "traversal_member.pt"
    rezip(FIXTURES / "cnn.pt", path, extra={"../../evil.sh": b"touch MARKER"})
    return Case(path, path, UnsafeInputError)


@hostile("member-absolute")
def _member_absolute(d: Path) -> Case:
    path = d / "absolute_member.pt"
    rezip(FIXTURES / "cnn.pt", path, extra={"/tmp/evil.sh": b"touch MARKER"})
    return Case(path, path, UnsafeInputError)


@hostile("zip-bomb")
def _zip_bomb(d: Path) -> Case:
    """A deflated storage of 16 MiB of zeros: a thousandfold expansion."""
    path = d / "bomb.pt"
    n = 4 * 2**20
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": tensor_pickle(("0", n, 0, (n,), (1,))),
                                               "data/0": bytes(4 * n)},
          compress={"data/0": zipfile.ZIP_DEFLATED})
    return Case(path, path, UnsafeInputError)


@hostile("deep-nesting")
def _deep(d: Path) -> Case:
    path = d / "deep.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": b"\x80\x02" + b"]" * 1000 + b"a" * 999 + b"."})
    return Case(path, path, CorruptFileError)


@hostile("self-reference")
def _self_reference(d: Path) -> Case:
    """A list that contains itself (memo reference): a walk that does not bound depth loops."""
    path = d / "cycle.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": b"\x80\x02]q\x00h\x00a."})
    return Case(path, path, CorruptFileError)


@hostile("huge-string")
def _huge_string(d: Path) -> Case:
    """A BINUNICODE claiming 4 GiB in a 20-byte pickle."""
    path = d / "huge.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": b"\x80\x02X\xff\xff\xff\xffabc."})
    return Case(path, path, CorruptFileError)


@hostile("opcode-inst")
def _opcode_inst(d: Path) -> Case:
    """Protocol 0's INST: instantiate a class by name, without GLOBAL (torch never writes it)."""
    path = d / "inst.pt"
    marker = d.parent / "MARKER"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": b"(" + _str(f"touch {marker}") + b"ios\nsystem\n."})
    return Case(path, path, UnsafeInputError)


@hostile("memo-index-huge")
def _memo_huge(d: Path) -> Case:
    """LONG_BINPUT 2**31 - 1: an unpickler would grow its memo to that many slots."""
    path = d / "memo.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": b"\x80\x02]r\xff\xff\xff\x7f."})
    return Case(path, path, UnsafeInputError)


@hostile("legacy-keys-memo-huge")
def _legacy_keys_memo(d: Path) -> Case:
    """The same in the legacy layout's storage-key list, which follows the object pickle."""
    path = d / "legacy_memo.pt"
    header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    path.write_bytes(header + pickle.dumps({}, protocol=2) + b"\x80\x02]r\xff\xff\xff\x7f.")
    return Case(path, path, UnsafeInputError)


@hostile("not-a-pickle")
def _garbage_pickle(d: Path) -> Case:
    path = d / "garbage.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": b"\x80\x02\xff\xfe garbage"})
    return Case(path, path, CorruptFileError)


@hostile("legacy-truncated")
def _legacy_truncated(d: Path) -> Case:
    path = d / "legacy_short.pt"
    raw = (FIXTURES / "zoo_legacy.pt").read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    return Case(path, path, CorruptFileError)


@hostile("shard-missing")
def _shard_missing(d: Path) -> Case:
    shutil.copytree(FIXTURES / "hf_sharded", d / "set")
    (d / "set" / "pytorch_model-00002-of-00002.bin").unlink()
    index = d / "set" / "pytorch_model.bin.index.json"
    return Case(index, index, CorruptFileError)


@hostile("shard-outside-directory")
def _shard_outside(d: Path) -> Case:
    """The index names a shard up and out of its directory (here: a real torch file there)."""
    import json

    shutil.copytree(FIXTURES / "hf_sharded", d / "set")
    shutil.copy(FIXTURES / "cnn.pt", d / "outside.bin")
    index = d / "set" / "pytorch_model.bin.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["features.0.weight"] = "../outside.bin"
    index.write_text(json.dumps(doc))
    return Case(index, index, UnsafeInputError)


@hostile("torchscript")
def _torchscript(d: Path) -> Case:
    path = d / "scripted.pt"
    rezip(FIXTURES / "cnn.pt", path, extra={"constants.pkl": pickle.dumps((), protocol=2)})
    return Case(path, path, UnsupportedError)


@hostile("quantized")
def _quantized(d: Path) -> Case:
    path = d / "quantized.pt"
    body = _str("q") + _global("torch._utils", "_rebuild_qtensor") + _tuple([_int(0)]) + b"R"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": b"\x80\x02}(" + body + b"u."})
    return Case(path, path, UnsupportedError, key="q")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_refused(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    case = HOSTILE[name](inputs)
    check_cli(case, capsys, inputs, out)
    with pytest.raises(case.error) as info:
        ckptconv.open(case.path)
    assert "\n" not in str(info.value) and str(case.file) in str(info.value)
    assert not (tmp_path / "MARKER").exists(), "a payload ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_refusals_name_the_global_and_say_what_to_do(tmp_path: Path) -> None:
    for kind, name in (("os_system", "os.system"), ("eval", "builtins.eval"), ("getattr_chain", "builtins.getattr"),
                       ("stack_global", "os.system"), ("subprocess", "subprocess.check_call")):
        case = HOSTILE[f"payload-{kind}"](tmp_path)
        with pytest.raises(UnsafeInputError, match=f"asks for {name}, which a weights file never needs"):
            ckptconv.open(case.path)
    for label in ("module", "module-legacy"):
        case = HOSTILE[label](tmp_path)
        with pytest.raises(UnsafeInputError, match=r"pickled model object .* torch.save\(model.state_dict\(\), PATH\)"):
            ckptconv.open(case.path)
    with pytest.raises(UnsafeInputError, match="declares 1099511627776 float32 values"):
        ckptconv.open(HOSTILE["storage-numel-inflated"](tmp_path).path)
    with pytest.raises(CorruptFileError, match="refers to storage data/99, which the archive does not hold"):
        ckptconv.open(HOSTILE["missing-data-member"](tmp_path).path)
    for label in ("deep-nesting", "self-reference"):
        with pytest.raises(CorruptFileError, match="containers nested more than 100 deep"):
            ckptconv.open(HOSTILE[label](tmp_path).path)
    with pytest.raises(UnsafeInputError, match="pickled model object"):
        ckptconv.open(HOSTILE["module-persistent-id"](tmp_path).path)
    with pytest.raises(UnsafeInputError, match="opcode INST, which torch.save never writes"):
        ckptconv.open(HOSTILE["opcode-inst"](tmp_path).path)
    for label in ("memo-index-huge", "legacy-keys-memo-huge"):
        with pytest.raises(UnsafeInputError, match="memo slot 2147483647 after 3 opcodes"):
            ckptconv.open(HOSTILE[label](tmp_path).path)
    assert not (tmp_path.parent / "MARKER").exists()


def test_the_assembler_makes_what_torch_writes(tmp_path: Path) -> None:
    """The control: the assembler's honest pickle over cnn.pt's storage reads back the tensor."""
    path = tmp_path / "honest.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": tensor_pickle(("0", 216, 0, (8, 3, 3, 3), (27, 9, 3, 1)))})
    with ckptconv.open(path) as rebuilt, ckptconv.open(FIXTURES / "cnn.pt") as original:
        assert rebuilt["w"].read().tobytes() == original["features.0.weight"].read().tobytes()
    path = tmp_path / "payload_free.pt"
    rezip(FIXTURES / "cnn.pt", path, replace={"data.pkl": with_payload(_str("just a string"))})
    with ckptconv.open(path) as store:
        assert store.skipped == [("evil", "str 'just a string'")]


@pytest.mark.parametrize(("fixture", "kind"), [("cnn.pt", "the torch.save file"), (None, "the .keras file")])
def test_a_truncated_archive_says_which_file_to_fetch_again(fixture, kind, tmp_path: Path) -> None:
    """A truncated zip is named by its first member, which survives truncation: a torch.save
    archive is not called a .keras file."""
    if fixture is None:
        import io

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:  # the members Keras writes first
            z.writestr("metadata.json", "{}")
            z.writestr("config.json", "{}" * 400)
        data = buffer.getvalue()
    else:
        data = (Path(__file__).parent / "fixtures" / "pytorch" / fixture).read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=f"copy or download {kind} again"):
        ckptconv.open(cut)


# --- the opcode walk against the standard library's own ------------------------------------------


def _genops_length(data: bytes) -> int | None:
    """pickletools' reading of a pickle: its length up to STOP, None if it cannot walk it."""
    import pickletools

    try:
        for op, _arg, pos in pickletools.genops(data):
            if op.name == "STOP":
                return pos + 1
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None
    return None


def _pickles() -> list[bytes]:
    """What torch.save wrote (every zip fixture's data.pkl, the legacy files' pickles) and the
    standard pickler's every protocol over the kinds of values a checkpoint holds."""
    import io

    from ckptconv.formats._torch_pickle import load_plain

    found = []
    for path in sorted(FIXTURES.glob("*.pt")):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                found += [z.read(n) for n in z.namelist() if n.endswith("/data.pkl")]
        else:
            raw = path.read_bytes()
            f = io.BytesIO(raw)
            for _ in range(3):  # magic number, protocol, system info
                load_plain(f)
            found.append(raw[f.tell():])
    values = {"keys": ["a", "é" * 300, b"x" * 300, bytearray(b"yz")], "ints": [0, -1, 255, 65536, -2**31, 2**64],
              "floats": [0.5, float("inf")], "nested": {"t": (1, (2, 3)), "n": None, "b": True}, "many": list(range(400))}
    found += [pickle.dumps(values, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    return found


def test_the_opcode_walk_reads_pickles_as_pickletools_does() -> None:
    """check_opcodes skips arguments by their lengths instead of decoding them: on every pickle
    torch wrote and every protocol it finds the same end as ``pickletools.genops``, and it
    refuses every truncation of them (nothing is read past the end)."""
    from ckptconv.formats._torch_pickle import check_opcodes

    for data in _pickles():
        expected = _genops_length(data)
        assert expected is not None
        assert check_opcodes(data + b"trailing bytes") == expected
        for cut in range(expected):
            with pytest.raises(CorruptFileError):
                check_opcodes(data[:cut])


@pytest.mark.parametrize("memo", [b"q\x05", b"r\x05\x00\x00\x00", b"p5\n", b"h\x05", b"j\x05\x00\x00\x00", b"g5\n"])
def test_the_opcode_walk_refuses_memo_slots_ahead_of_the_opcodes(memo: bytes) -> None:
    """Each memo opcode (PUT, BINPUT, LONG_BINPUT and the GETs) naming slot 5 after 3 opcodes
    is refused; the same opcode after 5 opcodes is what a pickler writes."""
    from ckptconv.formats._torch_pickle import check_opcodes

    with pytest.raises(UnsafeInputError, match="memo slot 5 after 3 opcodes"):
        check_opcodes(b"\x80\x02N" + memo + b".")
    assert check_opcodes(b"\x80\x02NNNN" + memo + b".") == 7 + len(memo)


@pytest.mark.parametrize(("name", "opcode"), [("INST", b"imod\nname\n"), ("OBJ", b"o"), ("EXT1", b"\x82\x01"),
                                              ("EXT2", b"\x83\x01\x00"), ("EXT4", b"\x84\x01\x00\x00\x00"),
                                              ("NEXT_BUFFER", b"\x97"), ("READONLY_BUFFER", b"\x98")])
def test_the_opcode_walk_refuses_opcodes_torch_never_writes(name: str, opcode: bytes) -> None:
    from ckptconv.formats._torch_pickle import check_opcodes

    with pytest.raises(UnsafeInputError, match=f"opcode {name}, which torch.save never writes"):
        check_opcodes(b"\x80\x02(" + opcode + b".")


def test_a_torch_archive_central_directory_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection goes by the first member's name (torch.save writes ``<archive>/data.pkl``
    first): the central directory, thousands of entries for a large state dict, is read by the
    reader alone, and once (by ckptconv's own reader: zipfile not at all)."""
    from ckptconv.formats import _zip, pytorch

    reads = []
    real = _zip._read_directory

    def counting(fd: int) -> list[_zip.Member]:
        reads.append(fd)
        return real(fd)

    def refuse(self: zipfile.ZipFile) -> None:
        raise AssertionError("zipfile read the central directory")

    monkeypatch.setattr(_zip, "_read_directory", counting)
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", refuse)
    with ckptconv.open(FIXTURES / "cnn.pt") as store:
        assert len(store) > 0
    assert len(reads) == 1
    assert pytorch.central_directory is _zip.central_directory


def test_a_zip_that_starts_as_torch_but_holds_no_data_pkl_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("odd/data.pkl", b"\x80\x02}q\x00.")
    data = bytearray(path.read_bytes())
    at = data.rindex(b"odd/data.pkl")  # the central directory's copy of the name
    data[at : at + 12] = b"odd/data.pkx"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="starts as a torch.save file but has no <archive>/data.pkl"):
        ckptconv.open(path)


def _flip_in_storage(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` with one bit of its first stored storage flipped; returns
    the member's name."""
    from ckptconv.formats._zip import member_data_offset

    if source != target:
        shutil.copyfile(source, target)
    with zipfile.ZipFile(target) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size and i.compress_type == 0)
    at = member_data_offset(target, info) + info.file_size // 2
    with open(target, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))
    return info.filename


def test_a_storage_that_fails_its_zip_crc_is_refused_by_convert(tmp_path: Path) -> None:
    """The archive records a CRC-32 per storage; the tensors are read in place, not through
    zipfile, so convert checks them itself (--no-check-crc skips it)."""
    from ckptconv import IntegrityError

    damaged = tmp_path / "flip.pt"
    member = _flip_in_storage(FIXTURES / "cnn.pt", damaged)
    out = tmp_path / "out.safetensors"
    with pytest.raises(IntegrityError, match=f"{member} fails its zip CRC-32 .*the torch.save file is damaged"):
        ckptconv.convert(damaged, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["flip.pt"]
    ckptconv.convert(damaged, out, check_crc=False)
    assert out.exists()
    ckptconv.convert(FIXTURES / "cnn.pt", tmp_path / "clean.safetensors")


def test_a_shard_that_fails_its_zip_crc_is_refused_by_convert(tmp_path: Path) -> None:
    from ckptconv import IntegrityError

    shards = tmp_path / "set"
    shutil.copytree(FIXTURES / "hf_sharded", shards)
    last = sorted(shards.glob("*.bin"))[-1]
    member = _flip_in_storage(last, last)
    with pytest.raises(IntegrityError, match=f"{member} fails its zip CRC-32"):
        ckptconv.convert(shards, tmp_path / "out.safetensors")


def test_a_storage_that_fails_its_zip_crc_is_an_error_for_diff(tmp_path: Path) -> None:
    """diff checks the zip CRC-32s beside the comparison: a damaged copy is an error naming
    the member (even against itself, where every byte pairs equal), not a difference;
    --no-check-crc compares the bytes as they are."""
    from tests.helpers import run_cli

    import json

    damaged = tmp_path / "flip.pt"
    member = _flip_in_storage(FIXTURES / "cnn.pt", damaged)
    done = run_cli("diff", damaged, FIXTURES / "cnn.pt", "--no-check-crc", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    changed = [t["name"] for t in json.loads(done.stdout)["tensors"] if t["status"] != "equal"]
    assert len(changed) == 1  # the tensor the flipped byte belongs to: the error names it
    for other in (damaged, FIXTURES / "cnn.pt"):
        done = run_cli("diff", damaged, other)
        assert done.returncode == 1 and done.stdout == ""
        line = done.stderr.strip()
        assert "\n" not in line and line.startswith(
            f"ckptconv: error: {damaged}: tensor {changed[0]!r}: {member} fails its zip CRC-32"
        )
    done = run_cli("diff", "flip.pt", FIXTURES / "cnn.pt", cwd=tmp_path)  # a relative path too
    assert done.stderr.startswith(f"ckptconv: error: flip.pt: tensor {changed[0]!r}: {member} fails")
    assert run_cli("diff", damaged, damaged, "--no-check-crc").returncode == 0
    assert ckptconv.diff(FIXTURES / "cnn.pt", FIXTURES / "cnn.pt").equal


@pytest.mark.parametrize("fixture", ["expanded.pt", "expanded_legacy.pt"])
def test_a_broadcast_view_is_refused_naming_the_tensor_and_why(fixture: str) -> None:
    """``torch.save(t.expand(...))``: the message names the state-dict key, says it is a
    broadcast view and what to save instead, and shows no storage key (a legacy file's is the
    memory address the storage had)."""
    with pytest.raises(UnsafeInputError) as info:
        ckptconv.open(FIXTURES / fixture)
    error = info.value
    assert error.tensor == ("expanded" if fixture == "expanded.pt" else "layer.scale")
    assert error.reason.startswith("a broadcast view (tensor.expand(): stride 0 in dimension 0) of shape [")
    assert "save tensor.contiguous(), or the tensor before expand(), instead" in error.reason
    assert "storage 0" not in error.reason and not re.search(r"\d{6,}", error.reason), error.reason


# (byte flipped, XOR mask) -> what the message says: one of the three header pickles of a legacy
# torch.save file (magic number at byte 0, protocol version at 15, system info at 21)
LEGACY_HEADER_FLIPS = {
    (1, 0x5A): "the legacy header's magic-number pickle (from byte 0) is damaged (unsupported pickle protocol: 88)",
    (16, 0x5A): "the legacy header's protocol-version pickle (from byte 15) is damaged (unsupported pickle protocol: 88)",
    (22, 0x5A): "the legacy header's system-info pickle (from byte 21) is damaged (unsupported pickle protocol: 88)",
    (26, 0x01): "the legacy header's system-info pickle (from byte 21) is damaged (could not find MARK)",
    (28, 0x80): "legacy header, system-info pickle (from byte 21): the pickle is damaged (BINUNICODE at byte 6 is not UTF-8)",
}


@pytest.mark.parametrize(("at", "mask"), sorted(LEGACY_HEADER_FLIPS))
def test_a_damaged_legacy_header_says_which_pickle_and_what_is_wrong(
    at: int, mask: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = bytearray((FIXTURES / "zoo_legacy.pt").read_bytes())
    raw[at] ^= mask
    path = tmp_path / "in" / "zoo_legacy.pt"
    path.parent.mkdir()
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError) as info:
        ckptconv.open(path)
    assert info.value.reason.startswith(LEGACY_HEADER_FLIPS[at, mask]), info.value.reason
    assert info.value.tensor is None
    (tmp_path / "out").mkdir()
    check_cli(Case(path, path, CorruptFileError), capsys, path.parent, tmp_path / "out")


def _local_header(archive: Path, member: str) -> int:
    with zipfile.ZipFile(archive) as z:
        return z.getinfo(member).header_offset


@pytest.mark.parametrize(("member", "at", "mask", "says"), [
    ("cnn/version", 0, 0x5A, "zip member 'cnn/version': no local header at byte {header}, where the central "
                             "directory puts it: the zip is damaged"),
    ("cnn/byteorder", 34, 0x01, "zip member 'cnn/byteorder': its local header (at byte {header}) names "
                                "'cnn/cyteorder': the zip is damaged"),
    ("cnn/.format_version", 26, 0x5A, "zip member 'cnn/.format_version': its local header (at byte {header}) "
                                      "records a name of 73 bytes where the central directory's has 19"),
    ("cnn/data/0", 0, 0x01, "zip member 'cnn/data/0': no local header at byte {header}"),
])
def test_a_damaged_zip_member_is_named_as_a_member_not_a_tensor(
    member: str, at: int, mask: int, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The records of a torch.save archive (``version``, ``byteorder``, ``data.pkl``, ...) are
    zip members, not tensors: a damaged local header names the member."""
    header = _local_header(FIXTURES / "cnn.pt", member)
    raw = bytearray((FIXTURES / "cnn.pt").read_bytes())
    raw[header + at] ^= mask
    path = tmp_path / "in" / "cnn.pt"
    path.parent.mkdir()
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError) as info:
        ckptconv.open(path)
    assert info.value.tensor is None and "tensor" not in str(info.value)
    assert info.value.reason.startswith(says.format(header=header)), info.value.reason
    (tmp_path / "out").mkdir()
    check_cli(Case(path, path, CorruptFileError), capsys, path.parent, tmp_path / "out")
