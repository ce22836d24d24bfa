"""The streaming safetensors writer: read back by the safetensors library and by ckptconv,
bit-exactly; golden header bytes; sharding; checksums; atomicity and refusal rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import ckptconv
from ckptconv import (
    IntegrityError,
    Output,
    OutputError,
    Store,
    UnsupportedError,
    parse_size,
    write_safetensors,
)
from ckptconv.store import ByteRange, Entry
from ckptconv.writers.safetensors import CRC_KEY
from tests.helpers import assert_bit_exact

# numpy dtypes the safetensors library's numpy API can hand back (it has no float8 in numpy)
ZOO = {
    "scalar_f32": np.array(3.5, dtype=np.float32),
    "empty_f32": np.zeros((0, 4), dtype=np.float32),
    "empty_1d_i64": np.zeros((0,), dtype=np.int64),
    "f16": np.linspace(-2, 2, 24, dtype=np.float16).reshape(2, 3, 4),
    "bf16": np.linspace(-3, 3, 10).astype(ml_dtypes.bfloat16),
    "f8_e4m3": np.linspace(-4, 4, 8).astype(ml_dtypes.float8_e4m3fn),
    "f8_e5m2": np.linspace(-4, 4, 8).astype(ml_dtypes.float8_e5m2),
    "i64": np.arange(-6, 6, dtype=np.int64).reshape(3, 4),
    "u8": np.arange(7, dtype=np.uint8),
    "bool": np.array([[True, False, True]]),
    "f64": np.random.default_rng(0).standard_normal((5, 3)),
    "transposed": np.arange(30, dtype=np.float32).reshape(5, 6).T,  # not C-contiguous
    "strided": np.arange(40, dtype=np.int32)[::3],
    "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
}
LIB_CAN_READ = {k for k, v in ZOO.items() if not k.startswith(("bf16", "f8"))}


def computed(arrays: dict[str, np.ndarray]) -> list[Output]:
    """Outputs whose compute() returns the arrays as they are (non-contiguous, big-endian...)."""
    return [
        Output(name, a.shape, np.dtype(a.dtype).newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype,
               (lambda a=a: a))
        for name, a in arrays.items()
    ]


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_zoo_round_trip_read_by_safetensors_and_ckptconv(tmp_path: Path) -> None:
    dst = tmp_path / "zoo.safetensors"
    result = write_safetensors(computed(ZOO), dst, metadata={"format": "np"})
    assert result.files == [str(dst)]
    assert result.tensors == len(ZOO)
    assert result.nbytes == sum(a.nbytes for a in ZOO.values())

    with safe_open(dst, "np") as f:  # its numpy API has no bf16/float8: those via ckptconv
        assert f.metadata()["format"] == "np"
        assert set(f.keys()) == set(ZOO)
        for name in LIB_CAN_READ:
            want = ZOO[name].astype(ZOO[name].dtype.newbyteorder("<"))
            assert_bit_exact(f.get_tensor(name), want, name)

    with ckptconv.open(dst) as store:
        assert store.format == "safetensors"
        assert list(store) == list(ZOO)  # stored order is the order written
        for name, array in ZOO.items():
            got = store[name].read()
            assert got.shape == array.shape
            assert ckptconv.dtypes.dtype_name(got.dtype) == ckptconv.dtypes.dtype_name(array.dtype)
            assert got.tobytes() == np.ascontiguousarray(array, dtype=got.dtype).tobytes(), name


def test_bf16_and_float8_bytes_match_the_safetensors_writer(tmp_path: Path) -> None:
    """Our file and the Rust writer's file hold the same bytes for bf16 / float8 tensors."""
    arrays = {k: ZOO[k] for k in ("bf16", "f8_e4m3", "f8_e5m2", "f16")}
    ours = tmp_path / "ours.safetensors"
    theirs = tmp_path / "theirs.safetensors"
    write_safetensors(computed(arrays), ours, checksum=False)
    save_file(arrays, str(theirs))  # the Rust writer takes ml_dtypes arrays by dtype name
    with ckptconv.open(ours) as a, ckptconv.open(theirs) as b:
        for name in arrays:
            assert_bit_exact(a[name].read(), b[name].read(), name)
            assert_bit_exact(a[name].read(), arrays[name], name)


def test_golden_header_bytes(tmp_path: Path) -> None:
    outputs = computed({"w": np.array([1.0, 2.0], np.float32), "b": np.array([7], np.int8)})
    dst = tmp_path / "tiny.safetensors"
    write_safetensors(outputs, dst, metadata={"format": "np"}, checksum=False)
    raw = dst.read_bytes()
    header = (
        b'{"__metadata__":{"format":"np"},'
        b'"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"b":{"dtype":"I8","shape":[1],"data_offsets":[8,9]}}'
    )
    header += b" " * (-len(header) % 8)
    expected = len(header).to_bytes(8, "little") + header
    expected += np.array([1.0, 2.0], "<f4").tobytes() + b"\x07"
    assert raw == expected


def test_golden_checksum_metadata(tmp_path: Path) -> None:
    import crc32c

    a = np.arange(5, dtype=np.float32)
    dst = tmp_path / "c.safetensors"
    result = write_safetensors(computed({"a": a, "e": np.zeros(0, np.float32)}), dst)
    with safe_open(dst, "np") as f:
        table = json.loads(f.metadata()[CRC_KEY])
    assert table == {"a": f"{crc32c.crc32c(a.tobytes()):08x}", "e": "00000000"}
    assert result.checksums == {"a": crc32c.crc32c(a.tobytes()), "e": 0}


def test_insertion_order_is_kept_and_changes_only_the_order(tmp_path: Path) -> None:
    arrays = {"z": np.ones(3, np.float32), "a": np.zeros(2, np.float16), "m": np.arange(4)}
    forward = tmp_path / "f.safetensors"
    backward = tmp_path / "b.safetensors"
    write_safetensors(computed(arrays), forward)
    write_safetensors(computed(dict(reversed(arrays.items()))), backward)
    with ckptconv.open(forward) as f, ckptconv.open(backward) as b:
        assert list(f) == ["z", "a", "m"]
        assert list(b) == ["m", "a", "z"]
        for name in arrays:
            assert_bit_exact(f[name].read(), b[name].read(), name)
            assert f[name].crc32c == b[name].crc32c


def test_passthrough_copies_source_bytes_file_to_file(tmp_path: Path) -> None:
    """Outputs with a byte_range source are copied without compute(); bytes are identical."""
    src = tmp_path / "src.safetensors"
    arrays = {"x": np.arange(3 * 1024 * 1024, dtype=np.float32), "y": np.ones((3, 3), np.float64)}
    save_file(arrays, str(src))
    with ckptconv.open(src) as store:
        outputs = []
        for e in store.entries():
            out = Output.of(e)
            out.compute = lambda: pytest.fail("compute() must not run for an unchanged tensor")
            outputs.append(out)
        dst = tmp_path / "dst.safetensors"
        write_safetensors(outputs, dst)
    loaded = load_file(dst)
    for name, array in arrays.items():
        assert_bit_exact(loaded[name], array, name)


def test_sharded_output_read_back(tmp_path: Path) -> None:
    arrays = {
        "l0.weight": np.arange(100, dtype=np.float32),  # 400 B
        "l0.bias": np.arange(20, dtype=np.float32),  # 80 B
        "l1.weight": np.arange(300, dtype=np.float32),  # 1200 B: oversized, alone
        "l1.bias": np.arange(10, dtype=np.float16),  # 20 B
        "l2.weight": np.arange(50, dtype=np.int64),  # 400 B
    }
    dst = tmp_path / "model.safetensors"
    result = write_safetensors(computed(arrays), dst, max_shard_size=500, metadata={"format": "np"})
    names = [f"model-0000{i}-of-00003.safetensors" for i in range(1, 4)]
    assert [Path(f).name for f in result.files] == names + ["model.safetensors.index.json"]
    assert listing(tmp_path) == sorted(names + ["model.safetensors.index.json"])
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert result.set_id is not None and len(result.set_id) == 32
    assert index == {
        "metadata": {"total_size": sum(a.nbytes for a in arrays.values()), "ckptconv.set": result.set_id},
        "weight_map": {
            "l0.weight": names[0],
            "l0.bias": names[0],
            "l1.weight": names[1],
            "l1.bias": names[2],  # a new shard after the oversized one
            "l2.weight": names[2],
        },
    }
    for name, file in index["weight_map"].items():
        with safe_open(tmp_path / file, "np") as f:
            assert_bit_exact(f.get_tensor(name), arrays[name], name)
            assert f.metadata()["ckptconv.set"] == result.set_id  # every shard: the set's identity
    with ckptconv.open(tmp_path / "model.safetensors.index.json") as store:
        assert store.format == "safetensors-sharded"
        assert list(store) == list(arrays)
        for name, array in arrays.items():
            assert_bit_exact(store[name].read(), array, name)
    assert ckptconv.verify_file(tmp_path / "model.safetensors.index.json").ok


def test_one_shard_is_a_plain_file(tmp_path: Path) -> None:
    dst = tmp_path / "small.safetensors"
    result = write_safetensors(computed({"a": np.ones(4, np.float32)}), dst, max_shard_size=parse_size("1GB"))
    assert result.files == [str(dst)]
    assert listing(tmp_path) == ["small.safetensors"]


def test_parse_size() -> None:
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("10 MB") == 10_000_000
    assert parse_size("2mib") == 2 * 2**20
    assert parse_size("123") == 123
    assert parse_size("1KB") == 1000 and parse_size("1KiB") == 1024
    assert parse_size("1TiB") == 2**40
    for bad in ("", "GB", "5 parsecs", "-1GB", "0", "1.2.3MB"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


# --- refusals, checked before any file exists ----------------------------------------------


@pytest.mark.parametrize("dtype", [np.complex128, np.dtype("U3")])
def test_unsupported_dtype_names_the_tensor_and_writes_nothing(tmp_path: Path, dtype) -> None:
    outputs = computed({"ok": np.ones(2, np.float32)})
    outputs.append(Output("bad_one", (2,), np.dtype(dtype), lambda: pytest.fail("no data read")))
    with pytest.raises(UnsupportedError, match="bad_one") as info:
        write_safetensors(outputs, tmp_path / "x.safetensors")
    assert info.value.tensor == "bad_one"
    assert listing(tmp_path) == []
    if np.dtype(dtype).kind == "c":  # the default dtype never casts a complex tensor: a cast op does
        assert "cast it (a cast op, e.g. to complex64)" in str(info.value) and "dtype=" not in str(info.value)


def test_wrong_computed_shape_or_dtype_names_the_tensor(tmp_path: Path) -> None:
    bad_shape = [Output("w", (2, 2), np.float32, lambda: np.zeros((4,), np.float32))]
    with pytest.raises(OutputError, match=r"'w'.*shape \[4\].*\[2, 2\]"):
        write_safetensors(bad_shape, tmp_path / "a.safetensors")
    bad_dtype = [Output("w", (2,), np.float32, lambda: np.zeros((2,), np.float64))]
    with pytest.raises(OutputError, match=r"'w'.*float64.*float32"):
        write_safetensors(bad_dtype, tmp_path / "b.safetensors")
    assert listing(tmp_path) == []


def test_duplicate_names_refused(tmp_path: Path) -> None:
    outputs = computed({"a": np.ones(1, np.float32)}) * 2
    with pytest.raises(OutputError, match="share"):
        write_safetensors(outputs, tmp_path / "d.safetensors")


def test_source_crc_mismatch_raises_integrity_error(tmp_path: Path) -> None:
    data = tmp_path / "raw.bin"
    array = np.arange(16, dtype=np.float32)
    data.write_bytes(array.tobytes())
    entry = Entry(
        "t/kernel", key="t/kernel", shape=(16,), dtype=np.float32, path=data,
        byte_range=ByteRange(str(data), 0, array.nbytes), crc32c=0x12345678,
    )
    with pytest.raises(IntegrityError, match="CRC-32C") as info:
        write_safetensors([Output.of(entry)], tmp_path / "out.safetensors", checksum=False)
    assert info.value.tensor == "t/kernel"
    assert listing(tmp_path) == ["raw.bin"]


def test_truncated_source_is_a_corrupt_file(tmp_path: Path) -> None:
    data = tmp_path / "raw.bin"
    data.write_bytes(b"\0" * 10)
    entry = Entry("t", key="t", shape=(16,), dtype=np.float32, path=data,
                  byte_range=ByteRange(str(data), 0, 64))
    with pytest.raises(ckptconv.CorruptFileError, match="truncated"):
        write_safetensors([Output.of(entry)], tmp_path / "out.safetensors")
    assert listing(tmp_path) == ["raw.bin"]


def test_output_equal_to_input_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    save_file({"a": np.ones(3, np.float32)}, str(src))
    before = src.read_bytes()
    with ckptconv.open(src) as store:
        outputs = [Output.of(e) for e in store.entries()]
        with pytest.raises(OutputError, match="input"):
            write_safetensors(outputs, src, force=True, protect=store.files)
    assert src.read_bytes() == before


def test_output_inside_a_sharded_input_set_is_refused(tmp_path: Path) -> None:
    arrays = {"a": np.ones(100, np.float32), "b": np.ones(100, np.float32)}
    write_safetensors(computed(arrays), tmp_path / "m.safetensors", max_shard_size=400)
    index = tmp_path / "m.safetensors.index.json"
    # writing a single file named like a shard of the input set
    with pytest.raises(OutputError, match="input"):
        write_safetensors(computed(arrays), tmp_path / "m-00002-of-00002.safetensors",
                          force=True, protect=[index])


# --- atomicity --------------------------------------------------------------------------------


def failing_outputs(after: int) -> list[Output]:
    outputs = computed({f"t{i}": np.full(1000, i, np.float32) for i in range(after)})

    def boom() -> np.ndarray:
        raise RuntimeError("the source went away")

    outputs.append(Output("boom", (1000,), np.float32, boom))
    return outputs


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="went away"):
        write_safetensors(failing_outputs(3), tmp_path / "x.safetensors")
    assert listing(tmp_path) == []
    with pytest.raises(RuntimeError, match="went away"):
        write_safetensors(failing_outputs(3), tmp_path / "x.safetensors", max_shard_size=4000)
    assert listing(tmp_path) == []


def test_keyboard_interrupt_leaves_nothing(tmp_path: Path) -> None:
    def interrupt() -> np.ndarray:
        raise KeyboardInterrupt

    outputs = computed({"a": np.ones(10, np.float32)}) + [Output("b", (1,), np.float32, interrupt)]
    with pytest.raises(KeyboardInterrupt):
        write_safetensors(outputs, tmp_path / "x.safetensors")
    assert listing(tmp_path) == []


def test_sigterm_leaves_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        import numpy as np
        from ckptconv import Output, write_safetensors
        def slow():
            print("started", flush=True)
            time.sleep(30)
            return np.ones(4, np.float32)
        outs = [Output("a", (4,), np.float32, lambda: np.zeros(4, np.float32)),
                Output("b", (4,), np.float32, slow)]
        write_safetensors(outs, {str(tmp_path / 'x.safetensors')!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    assert any(name.startswith(".x.safetensors.") for name in listing(tmp_path))  # the temp file
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert listing(tmp_path) == []


def test_existing_output_untouched_without_force(tmp_path: Path) -> None:
    dst = tmp_path / "x.safetensors"
    dst.write_bytes(b"precious")
    with pytest.raises(OutputError, match="pass force=True to replace it"):
        write_safetensors(computed({"a": np.ones(2, np.float32)}), dst)
    assert dst.read_bytes() == b"precious"
    # an existing sharded set at the same name counts too
    write_safetensors(computed({"a": np.ones(200, np.float32), "b": np.ones(200, np.float32)}),
                      tmp_path / "s.safetensors", max_shard_size=800)
    before = {p: (tmp_path / p).read_bytes() for p in listing(tmp_path)}
    with pytest.raises(OutputError, match="already exists"):
        write_safetensors(computed({"a": np.ones(2, np.float32)}), tmp_path / "s.safetensors")
    assert {p: (tmp_path / p).read_bytes() for p in listing(tmp_path)} == before


def test_failed_forced_run_keeps_the_old_file_and_set(tmp_path: Path) -> None:
    single = tmp_path / "x.safetensors"
    write_safetensors(computed({"old": np.ones(3, np.float32)}), single)
    write_safetensors(computed({"a": np.ones(300, np.float32), "b": np.ones(300, np.float32)}),
                      tmp_path / "s.safetensors", max_shard_size=1200)
    before = {p: (tmp_path / p).read_bytes() for p in listing(tmp_path)}
    with pytest.raises(RuntimeError):
        write_safetensors(failing_outputs(2), single, force=True)
    with pytest.raises(RuntimeError):
        write_safetensors(failing_outputs(5), tmp_path / "s.safetensors", force=True, max_shard_size=4000)
    assert {p: (tmp_path / p).read_bytes() for p in listing(tmp_path)} == before


def test_forced_run_replaces_a_set_and_removes_stale_shards(tmp_path: Path) -> None:
    dst = tmp_path / "m.safetensors"
    write_safetensors(computed({f"t{i}": np.ones(100, np.float32) for i in range(3)}), dst, max_shard_size=400)
    assert len(listing(tmp_path)) == 4
    write_safetensors(computed({"n0": np.ones(100, np.float32), "n1": np.ones(100, np.float32)}), dst,
                      max_shard_size=400, force=True)
    assert listing(tmp_path) == [
        "m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors", "m.safetensors.index.json",
    ]
    with ckptconv.open(tmp_path / "m.safetensors.index.json") as store:
        assert list(store) == ["n0", "n1"]
    # and a single file replacing a set removes the whole old set
    write_safetensors(computed({"one": np.ones(2, np.float32)}), dst, force=True)
    assert listing(tmp_path) == ["m.safetensors"]


def test_outputs_get_the_umask_mode(tmp_path: Path) -> None:
    dst = tmp_path / "x.safetensors"
    write_safetensors(computed({"a": np.ones(2, np.float32)}), dst)
    mask = os.umask(0o022)
    os.umask(mask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~mask


def test_store_from_arrays_non_contiguous(tmp_path: Path) -> None:
    arrays = {"t/kernel": np.arange(12, dtype=np.float32).reshape(3, 4).T, "t/bias": np.arange(4.0)[::-1]}
    store = Store.from_arrays(arrays)
    dst = tmp_path / "s.safetensors"
    write_safetensors([Output.of(e) for e in store.entries()], dst)
    loaded = load_file(dst)
    for name, array in arrays.items():
        assert_bit_exact(loaded[name], np.ascontiguousarray(array), name)


def test_damaged_tensorflow_data_is_caught_while_copying(generated, tmp_path: Path) -> None:
    """A real TF checkpoint records a CRC-32C per tensor; a byte changed in its data file is
    caught when the bytes are copied through unchanged, naming the tensor."""
    import shutil

    source = generated("tf") / "keras3"
    work = tmp_path / "ckpt"
    shutil.copytree(source, work)
    with ckptconv.open(work) as store:
        entry = next(e for e in store.entries() if e.byte_range is not None and e.nbytes >= 8)
        good = [Output.of(e) for e in store.entries()]
        write_safetensors(good, tmp_path / "good.safetensors")  # intact: copies and checks fine
        data = Path(entry.byte_range.path)
        raw = bytearray(data.read_bytes())
        raw[entry.byte_range.offset + 1] ^= 0x10
        data.write_bytes(bytes(raw))
        with pytest.raises(IntegrityError) as info:
            write_safetensors([Output.of(entry)], tmp_path / "bad.safetensors")
    assert info.value.tensor == entry.name
    assert listing(tmp_path) == ["ckpt", "good.safetensors"]


def test_a_stray_file_with_a_shard_name_is_existing_output(tmp_path: Path) -> None:
    """A file named like a new shard is replaced (with --force) only when it is provably a
    ckptconv shard of an output of this name, never a stranger's file: that one is named as in
    the way with or without --force (saying "pass --force" would send the user to a flag that
    cannot help)."""
    stray = tmp_path / "m-00002-of-00002.safetensors"
    stray.write_bytes(b"not mine")
    arrays = {"a": np.ones(100, np.float32), "b": np.ones(100, np.float32)}
    for force in (False, True):
        with pytest.raises(OutputError, match="did not write it") as info:
            write_safetensors(computed(arrays), tmp_path / "m.safetensors", max_shard_size=400, force=force)
        assert info.value.path == str(stray)
        assert listing(tmp_path) == [stray.name] and stray.read_bytes() == b"not mine"
    stray.unlink()
    # an orphan shard ckptconv wrote for this name (its set's index lost) is replaced
    write_safetensors(computed({"x": np.zeros(100, np.float32), "y": np.zeros(100, np.float32)}),
                      tmp_path / "m.safetensors", max_shard_size=400)
    (tmp_path / "m.safetensors.index.json").unlink()
    (tmp_path / "m-00001-of-00002.safetensors").unlink()
    write_safetensors(computed(arrays), tmp_path / "m.safetensors", max_shard_size=400, force=True)
    assert len(listing(tmp_path)) == 3 and ckptconv.verify_file(tmp_path / "m.safetensors.index.json").ok
    with ckptconv.open(tmp_path / "m.safetensors.index.json") as store:
        assert list(store) == ["a", "b"]


def test_greedy_sharding_invariants() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ckptconv.writers.safetensors import _shard

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 50), max_size=30), st.integers(1, 60))
    def check(sizes: list[int], limit: int) -> None:
        outputs = [Output(f"t{i}", (n,), np.uint8, lambda: None) for i, n in enumerate(sizes)]
        groups = _shard(outputs, limit)
        assert [o for g in groups for o in g] == outputs  # order kept, nothing lost
        for i, group in enumerate(groups):
            total = sum(o.nbytes for o in group)
            assert total <= limit or len(group) == 1  # only a lone tensor may exceed the limit
            if i + 1 < len(groups):  # greedy: the next shard's first tensor did not fit here
                assert group and total + groups[i + 1][0].nbytes > limit

    check()


def test_a_failing_disk_write_is_an_output_error_and_leaves_nothing(tmp_path: Path) -> None:
    """The OS refuses the write (here: a file size limit, EFBIG); the message names the output."""
    script = textwrap.dedent(
        f"""
        import resource, signal
        import numpy as np
        from ckptconv import Output, OutputError, write_safetensors
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        outs = [Output("big", (1_000_000,), np.float32, lambda: np.ones(1_000_000, np.float32))]
        try:
            write_safetensors(outs, {str(tmp_path / 'x.safetensors')!r})
        except OutputError as e:
            print(e)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{tmp_path / 'x.safetensors'}: cannot write the output: File too large")
    assert listing(tmp_path) == []


def test_random_round_trips(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Random tensors (dtype, shape, layout, order) survive writer -> safetensors library and
    writer -> ckptconv reader bit-exactly, with and without sharding."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    dtypes = st.sampled_from(
        [np.float32, np.float16, np.float64, np.int8, np.int64, np.uint16, np.bool_, ">f4", ">i8"]
    )
    arrays = dtypes.flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    )
    tensors = st.dictionaries(st.text("abc./_", min_size=1, max_size=6), arrays, max_size=6)

    @settings(max_examples=40, deadline=None)
    @given(tensors, st.booleans(), st.sampled_from([None, 16, 64]))
    def check(named: dict[str, np.ndarray], transpose: bool, shard: int | None) -> None:
        named = {k: (a.T if transpose else a) for k, a in named.items() if k != "__metadata__"}
        directory = tmp_path_factory.mktemp("rt")
        result = write_safetensors(computed(named), directory / "m.safetensors", fsync=False,
                                   max_shard_size=shard)
        with ckptconv.open(result.files[-1]) as store:
            assert list(store) == list(named)
            for name, array in named.items():
                want = np.array(array, dtype=array.dtype.newbyteorder("<"), order="C")
                assert_bit_exact(store[name].read(), want, name)
        for file in result.files:
            if file.endswith(".safetensors"):
                with safe_open(file, "np") as f:
                    for name in f.keys():
                        want = np.array(named[name], dtype=named[name].dtype.newbyteorder("<"), order="C")
                        assert_bit_exact(f.get_tensor(name), want, name)

    check()


def test_convert_adds_metadata_for_transformers(tmp_path: Path) -> None:
    """``--metadata format=pt`` (what Hugging Face transformers requires) is written over
    ckptconv's own ``format: np``, next to the provenance and checksums; values may hold '='.
    Bad items are usage errors; ckptconv's own keys are refused; nothing is written."""
    from tests.helpers import run_cli

    sample = Path(__file__).parent.parent / "examples" / "sample.keras"
    dst = tmp_path / "out.safetensors"
    proc = run_cli("convert", sample, dst, "--metadata", "format=pt", "--metadata", "note=a=b", "-q")
    assert proc.returncode == 0, proc.stderr
    with safe_open(str(dst), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["note"] == "a=b"
    assert meta["ckptconv.source"] == "sample.keras" and CRC_KEY in meta
    assert ckptconv.verify_file(dst).ok

    for bad, code, message in [
        ("formatpt", 2, "expected KEY=VALUE (e.g. format=pt), got 'formatpt'"),
        ("=pt", 2, "expected KEY=VALUE"),
        ("ckptconv.source=x", 2, "keys starting with 'ckptconv.' are ckptconv's own"),
    ]:
        other = tmp_path / "bad.safetensors"
        proc = run_cli("convert", sample, other, "--metadata", bad)
        assert proc.returncode == code and message in proc.stderr, (bad, proc.stderr)
        assert not other.exists()
    proc = run_cli("batch", sample, "-o", tmp_path / "many", "--metadata", "format=pt", "-q")
    assert proc.returncode == 0, proc.stderr
    with safe_open(str(tmp_path / "many" / "sample.safetensors"), "np") as f:
        assert f.metadata()["format"] == "pt"

    with pytest.raises(ckptconv.UsageError, match="keys starting with 'ckptconv.'"):
        ckptconv.convert(sample, tmp_path / "api.safetensors", metadata={"ckptconv.version": "9"})
    with pytest.raises(ckptconv.UsageError, match="strings to strings"):
        ckptconv.convert(sample, tmp_path / "api.safetensors", metadata={"epoch": 3})  # type: ignore[dict-item]
    assert not (tmp_path / "api.safetensors").exists()


def test_leftover_temporaries_are_those_of_a_killed_write(tmp_path: Path) -> None:
    """A process SIGKILLed while writing a sharded set leaves its shards' temporary files; they
    are what ``leftover_temporaries`` finds (batch removes them after a worker died), and only
    those of that output."""
    from ckptconv.writers.outputs import leftover_temporaries

    src = tmp_path / "src.safetensors"
    save_file({f"t{i}": np.full(1000, i, np.float32) for i in range(3)}, str(src))
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "model.safetensors"
    code = textwrap.dedent(f"""
        import os, signal
        from ckptconv import Rule, Spec, convert
        seen = []
        def die_at_the_second(array):
            seen.append(1)
            if len(seen) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return array
        op = {{"fn": die_at_the_second, "shape": lambda s: s, "dtype": lambda d: d}}
        convert({str(src)!r}, {str(dst)!r}, mapping=Spec(rules=[Rule(from_="**", ops=[op])]),
                max_shard_size=4000)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = sorted(name for name in os.listdir(out) if name.endswith(".tmp"))
    assert [name.split(".")[1] for name in killed] == ["model-00001-of-00003", "model-00002-of-00003"]
    assert sorted(os.listdir(out)) == sorted([*killed, ".model.safetensors.lock"])
    for name in ("model.safetensors", ".other.safetensors.abcd1234.tmp", ".model.safetensors.tmp",
                 ".model.safetensors.index.json.abcd1234", "model-00001-of-00003.safetensors"):
        (out / name).write_bytes(b"")  # not temporaries of this output's writer
    (out / ".model.safetensors.index.json.abcd1234.tmp").write_bytes(b"")
    (out / ".model.safetensors.x_y1z2w3.tmp").write_bytes(b"")
    assert [Path(p).name for p in leftover_temporaries(dst)] == sorted(
        [*killed, ".model.safetensors.index.json.abcd1234.tmp", ".model.safetensors.x_y1z2w3.tmp"]
    )
    assert leftover_temporaries(tmp_path / "missing" / "model.safetensors") == []


def test_names_json_must_escape_round_trip(tmp_path: Path) -> None:
    """The header is encoded piece by piece: names with quotes, backslashes, control
    characters, non-ASCII and line separators read back through the safetensors library,
    and the checksum table names each of them."""
    import crc32c

    names = ['a"quoted"', "back\\slash/kernel", "new\nline", "tab\tand\x01ctl", "ünï/cödé", "\u2028sep", "plain"]
    arrays = {n: np.arange(i + 1, dtype=np.float32) * (i + 1) for i, n in enumerate(names)}
    dst = tmp_path / "names.safetensors"
    write_safetensors([Output(n, a.shape, a.dtype, compute=lambda a=a: a) for n, a in arrays.items()], dst,
                      fsync=False, metadata={"note": 'a "quoted" value'})
    back = load_file(dst)
    assert list(back) == names or sorted(back) == sorted(names)
    for name, array in arrays.items():
        assert_bit_exact(back[name], array, name)
    raw = dst.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(header)[1:] == names  # in the order written, after __metadata__
    assert header["__metadata__"]["note"] == 'a "quoted" value'
    table = json.loads(header["__metadata__"][CRC_KEY])
    assert {n: int(v, 16) for n, v in table.items()} == {n: crc32c.crc32c(a.tobytes()) for n, a in arrays.items()}


@pytest.mark.parametrize("metadata", [None, {"format": "np", "note": "ünï \"q\""}])
@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize("count", [0, 1, 3])
def test_header_bytes_are_json_dumps_of_the_header(tmp_path: Path, metadata, checksum, count) -> None:
    """The header, assembled from encoded pieces with a single copy, is byte for byte
    ``json.dumps`` of the header dict (compact, UTF-8), space-padded to a multiple of 8, with
    and without ``__metadata__``, checksums and tensors."""
    import crc32c

    arrays = {f"t{i}/ké\"y": np.arange(i + 2, dtype=np.float32) for i in range(count)}
    dst = tmp_path / "h.safetensors"
    result = write_safetensors(computed(arrays), dst, metadata=metadata, checksum=checksum, fsync=False)
    header: dict[str, object] = {}
    meta = dict(metadata or {})
    if checksum:
        meta[CRC_KEY] = json.dumps({n: f"{crc32c.crc32c(a.tobytes()):08x}" for n, a in arrays.items()},
                                   separators=(",", ":"), ensure_ascii=False)
    if meta:
        header["__metadata__"] = meta
    offset = 0
    for name, a in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    raw = dst.read_bytes()
    assert raw[: 8 + len(text)] == len(text).to_bytes(8, "little") + text
    assert len(raw) == 8 + len(text) + offset
    assert result.checksums == ({n: crc32c.crc32c(a.tobytes()) for n, a in arrays.items()} if checksum else {})


def test_convert_lets_the_plan_go_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan and its report (a record per source and per output) are freed before the
    writer runs, so their memory serves the header and slots at 100,000 tensors; the output
    is the same."""
    import weakref

    import ckptconv.mapping as mapping
    import ckptconv.writers.safetensors as writer

    plans: list[weakref.ref] = []
    build, write = mapping.build_plan, writer.write_safetensors

    def recording_build(*args, **kwargs):
        plan = build(*args, **kwargs)
        plans.append(weakref.ref(plan))
        return plan

    def checking_write(*args, **kwargs):
        assert plans and all(ref() is None for ref in plans), "the plan is still alive while writing"
        return write(*args, **kwargs)

    monkeypatch.setattr(mapping, "build_plan", recording_build)
    monkeypatch.setattr(writer, "write_safetensors", checking_write)
    arrays = {"a/kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "a/bias": np.ones(3, np.float16)}
    src = tmp_path / "src.safetensors"
    save_file(arrays, str(src))
    result = ckptconv.convert(src, tmp_path / "out.safetensors", fsync=False)
    assert result.tensors == 2
    back = load_file(tmp_path / "out.safetensors")
    for name, array in arrays.items():
        assert_bit_exact(back[name], array, name)
