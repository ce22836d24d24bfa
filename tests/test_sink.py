"""The writer's low level (issue 6): staging buffers, the writer and checksum threads, direct
I/O with its fallback, C-order layout of views, and the parallel cast.

Every output is read back by the safetensors library (an independent reader) and compared bit
for bit with the arrays numpy makes the plain way; the direct-I/O and buffered writes of the
same outputs must give byte-identical files. Staging buffers are shrunk to a few pages so that
tensors, rows and the header straddle buffer boundaries.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from ckptconv import Output, OutputError, verify_file, write_safetensors
from ckptconv.mapping import cast, ops
from ckptconv.mapping.cast import cast_array
from ckptconv.mapping.ops import ExecutionProblem, copy_c_order
from ckptconv.writers import _sink

from .helpers import assert_bit_exact

SMALL_CHUNK = 3 * _sink._ALIGN  # 12 KiB: every sizeable tensor spans several buffers


def _rng() -> np.random.Generator:
    return np.random.default_rng(6)


def _zoo() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (what compute_view hands the writer, the C-order array it stands for)."""
    rng = _rng()
    base = rng.standard_normal((300, 77), dtype=np.float32)
    wide = rng.standard_normal((64, 1100), dtype=np.float32)  # its transpose has 64-float rows
    big_endian = rng.standard_normal((40, 90)).astype(">f4")
    conv = rng.standard_normal((3, 3, 8, 16), dtype=np.float32)
    odd_f16 = rng.standard_normal(1001).astype(np.float16)  # 2002 bytes: later offsets unaligned
    long_row = rng.standard_normal((2, 5000), dtype=np.float32)  # a row bigger than a buffer
    views = {
        "a_transposed": base.T,
        "b_odd_f16": odd_f16,
        "c_wide_transposed": wide.T,
        "d_big_endian_transposed": big_endian.T,
        "e_conv_permuted": np.transpose(conv, (3, 2, 0, 1)),
        "f_scalar": np.array(2.5, dtype=np.float64),
        "g_empty": np.zeros((0, 3), dtype=np.float32),
        "h_strided": base[::3, ::2],
        "i_long_row_transposed": long_row.T.copy().T,  # a C-contiguous-transposed (2, 5000)
        "j_bf16_transposed": rng.standard_normal((50, 70)).astype(ml_dtypes.bfloat16).T,
        "k_contiguous": rng.integers(-100, 100, (123, 45), dtype=np.int64),
    }
    return {name: (view, np.array(view, order="C")) for name, view in views.items()}


def _outputs(zoo: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[Output]:
    outputs = []
    for name, (view, full) in zoo.items():
        outputs.append(
            Output(
                name, full.shape, full.dtype,
                compute=lambda full=full: full,
                compute_view=lambda view=view: view,
            )
        )
    return outputs


def _expected(zoo: dict[str, tuple[np.ndarray, np.ndarray]], name: str) -> np.ndarray:
    full = zoo[name][1]
    return full.astype(full.dtype.newbyteorder("<")) if full.dtype.byteorder == ">" else full


@pytest.fixture
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sink, "_CHUNK", SMALL_CHUNK)


@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct", "buffered"])
def test_views_are_laid_out_in_c_order_across_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_buffers: None, direct: str
) -> None:
    monkeypatch.setenv("CKPTCONV_DIRECT_IO", direct)
    zoo = _zoo()
    dst = tmp_path / "out.safetensors"
    write_safetensors(_outputs(zoo), dst)
    back = load_file(str(dst))
    assert list(back) == sorted(zoo)
    for name in zoo:
        assert_bit_exact(back[name], _expected(zoo, name), name)
    assert verify_file(dst).ok


def test_direct_and_buffered_files_are_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_buffers: None
) -> None:
    zoo = _zoo()
    files = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("CKPTCONV_DIRECT_IO", mode)
        files[mode] = tmp_path / f"out-{mode}.safetensors"
        write_safetensors(_outputs(zoo), files[mode], metadata={"note": "x" * 30000})  # a header over two buffers
    raw = files["1"].read_bytes()
    assert raw == files["0"].read_bytes()
    assert verify_file(files["1"]).ok  # the checksums patched into a header over two buffers
    assert len(raw) % _sink._ALIGN  # the padded last block was truncated away


def _probe_direct(directory: Path) -> bool:
    fd = os.open(directory / ".probe", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        return _sink._set_direct(fd, True)
    finally:
        os.close(fd)
        os.unlink(directory / ".probe")


def test_durable_outputs_bypass_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With fsync on, the data writes carry O_DIRECT where the file system takes it; with
    --no-fsync or CKPTCONV_DIRECT_IO=0 they do not."""
    if not _probe_direct(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    seen: list[bool] = []
    real = os.pwrite

    def spy(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        seen.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT))
        return real(fd, data, offset)

    monkeypatch.setattr(_sink.os, "pwrite", spy)
    data = _rng().standard_normal(100_000, dtype=np.float32)
    outputs = [Output("w", data.shape, data.dtype, lambda: data)]
    monkeypatch.setenv("CKPTCONV_DIRECT_IO", "1")
    write_safetensors(outputs, tmp_path / "a.safetensors")
    # data blocks went direct; the header patch at the end went through the page cache
    assert seen[0] is True and seen[-1] is False
    for fsync, env in ((False, "1"), (True, "0")):
        seen.clear()
        monkeypatch.setenv("CKPTCONV_DIRECT_IO", env)
        write_safetensors(outputs, tmp_path / f"b{fsync}{env}.safetensors", fsync=fsync)
        assert seen and not any(seen)
    for path in tmp_path.iterdir():
        assert_bit_exact(load_file(str(path))["w"], data, path.name)


def test_a_file_system_refusing_direct_io_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_buffers: None
) -> None:
    """Some file systems accept the O_DIRECT flag but fail the writes with EINVAL: the writer
    switches to buffered I/O and the file comes out the same."""
    monkeypatch.setattr(_sink, "_set_direct", _fake_set_direct)
    refused = []
    real = os.pwrite

    def pwrite(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        if fd in _DIRECT_FDS:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(_sink.os, "pwrite", pwrite)
    monkeypatch.setenv("CKPTCONV_DIRECT_IO", "1")
    zoo = _zoo()
    dst = tmp_path / "out.safetensors"
    write_safetensors(_outputs(zoo), dst)
    assert refused == [0]  # refused once, then buffered from the same offset on
    back = load_file(str(dst))
    for name in zoo:
        assert_bit_exact(back[name], _expected(zoo, name), name)
    assert verify_file(dst).ok


_DIRECT_FDS: set[int] = set()


def _fake_set_direct(fd: int, on: bool) -> bool:
    (_DIRECT_FDS.add if on else _DIRECT_FDS.discard)(fd)
    return on


def test_a_write_error_on_the_writer_thread_is_an_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_buffers: None
) -> None:
    def full(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_sink.os, "pwrite", full)
    data = np.ones(50_000, dtype=np.float32)
    dst = tmp_path / "out.safetensors"
    with pytest.raises(OutputError, match="No space left on device.*free some space") as info:
        write_safetensors([Output("w", data.shape, data.dtype, lambda: data)], dst)
    assert info.value.path == str(dst)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "shape, dtype",
    [((4096, 64), np.float32), ((1000, 333), np.float16), ((257, 1025), ">f4"), ((70, 1200), np.int8)],
)
def test_copy_c_order_of_transposed_views(shape: tuple[int, int], dtype: str) -> None:
    a = _rng().standard_normal(shape).astype(dtype)
    for view in (a.T, a.T[5:900], a[:, 3:].T):
        out = np.empty(view.shape, dtype=np.dtype(dtype).newbyteorder("<"))
        copy_c_order(view, out, tile=16, width=100)
        assert_bit_exact(out, np.ascontiguousarray(view).astype(out.dtype), str(view.shape))


def test_parallel_cast_reports_the_first_problem_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunks of a big cast run on two threads; an overflow is reported as the sequential
    cast would report it: the first chunk's kind, counted over every chunk."""
    monkeypatch.setattr(cast, "_CAST_CHUNK", 4)
    values = np.zeros(40, dtype=np.float32)
    values[5] = 1e6  # chunk 1: one overflow in float16
    values[29:32] = -1e6  # chunk 7: three more
    with pytest.raises(ExecutionProblem, match=r"^4 finite value\(s\) overflow to inf in float16"):
        cast_array(values, np.float16)
    values[5] = 0
    with pytest.raises(ExecutionProblem, match=r"^3 finite value"):
        cast_array(values, np.float16)
    values[29:32] = 0.1
    out = cast_array(values, np.float16)
    assert_bit_exact(out, values.astype(np.float16), "cast")


def test_a_plan_hands_writers_a_final_transpose_as_a_view() -> None:
    """A chain ending in a transpose gives ``compute_view``: the transpose of the source read,
    with no copy; ``compute`` still gives a C-contiguous array. Other chains have no view."""
    from ckptconv import Store, build_plan

    rng = _rng()
    arrays = {
        "dense/kernel": rng.standard_normal((600, 300), dtype=np.float32),
        "dense/bias": rng.standard_normal(300, dtype=np.float32),
        "conv/kernel": rng.standard_normal((3, 3, 4, 8), dtype=np.float32),
    }
    spec = {
        "version": 1,
        "rules": [
            {"from": "dense/kernel", "to": "dense.weight", "ops": ["transpose"]},
            {"from": "conv/kernel", "to": "conv.weight", "ops": [{"transpose": [3, 2, 0, 1]}, {"cast": "float16"}]},
        ],
    }
    plan = build_plan(Store.from_arrays(arrays), spec)
    outputs = {o.name: o for o in plan.outputs}
    view = outputs["dense.weight"].compute_view()
    assert not view.flags.c_contiguous and view.base is not None
    assert_bit_exact(np.ascontiguousarray(view), arrays["dense/kernel"].T, "view")
    full = outputs["dense.weight"].compute()
    assert full.flags.c_contiguous
    assert_bit_exact(full, arrays["dense/kernel"].T, "compute")
    assert outputs["conv.weight"].compute_view is None  # the transpose is not the last step
    assert outputs["dense/bias"].compute_view is None


def test_copy_c_order_of_random_views() -> None:
    """Any 2-D view (transposed, sliced, reversed, strided, byte-swapped) is copied as numpy
    copies it, tiled or not."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(
        rows=st.integers(1, 300),
        cols=st.integers(1, 300),
        dtype=st.sampled_from(["<f4", ">f4", "<f2", "<i8", "u1"]),
        transpose=st.booleans(),
        row_step=st.sampled_from([1, 1, 2, -1]),
        col_step=st.sampled_from([1, 1, 3, -1]),
        start=st.integers(0, 5),
        tile=st.integers(1, 40),
        width=st.integers(1, 200),
    )
    def check(rows, cols, dtype, transpose, row_step, col_step, start, tile, width):  # type: ignore[no-untyped-def]
        a = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols).astype(dtype)
        view = a[start::row_step, start::col_step] if row_step > 0 else a[::row_step, start::col_step]
        if transpose:
            view = view.T
        out = np.empty(view.shape, dtype=np.dtype(dtype).newbyteorder("<"))
        before = ops._BLOCKED_MIN_ELEMENTS
        ops._BLOCKED_MIN_ELEMENTS = 1  # tile even the small ones
        try:
            copy_c_order(view, out, tile=tile, width=width)
        finally:
            ops._BLOCKED_MIN_ELEMENTS = before
        assert_bit_exact(out, np.ascontiguousarray(view).astype(out.dtype), "view")

    check()


# --- casts streamed from their source ------------------------------------------------------


def _streamed_and_whole(outputs: list[Output]) -> list[Output]:
    """The same outputs without their block producer: the whole-array path, for comparison."""
    return [Output(o.name, o.shape, o.dtype, o.compute, source=o.source) for o in outputs]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_streamed_casts_match_whole_tensor_casts(generated, tmp_path, monkeypatch, dtype) -> None:
    """A cast of stored bytes is read and cast a block at a time (block sizes that split
    elements across reads are fine): the file is byte-identical to casting whole tensors,
    for a Keras file and for a TF checkpoint (whose CRC-32Cs are checked over the blocks)."""
    import ckptconv
    from ckptconv import build_plan
    from ckptconv.writers import safetensors as writer

    monkeypatch.setattr(writer, "_BLOCK_BYTES", 1001)
    fixtures = generated("load")
    for source in ("k3.weights.h5", "k3ckpt"):
        with ckptconv.open(fixtures / source) as store:
            plan = build_plan(store, None, dtype=dtype)
            streamed = [o for o in plan.outputs if o.compute_blocks is not None]
            assert streamed, "no output was streamed"
            if source == "k3ckpt":
                assert any(o.compute_blocks is not None and store[o.name].crc32c is not None for o in plan.outputs)
            a, b = tmp_path / f"{source}-streamed.safetensors", tmp_path / f"{source}-whole.safetensors"
            write_safetensors(plan.outputs, a)
            write_safetensors(_streamed_and_whole(plan.outputs), b)
        assert a.read_bytes() == b.read_bytes(), source


def test_a_streamed_cast_refuses_overflow_in_a_later_block(tmp_path, monkeypatch) -> None:
    from ckptconv import PlanError, Store, build_plan
    from ckptconv.store import ByteRange, Entry
    from ckptconv.writers import safetensors as writer

    monkeypatch.setattr(writer, "_BLOCK_BYTES", 4096)
    values = np.ones(10_000, dtype=np.float32)
    values[9_000] = 1e6  # beyond float16, in the third block
    raw = tmp_path / "raw.bin"
    raw.write_bytes(values.tobytes())
    entry = Entry("w", key="w", shape=values.shape, dtype=np.float32, path=raw,
                  byte_range=ByteRange(str(raw), 0, values.nbytes))
    plan = build_plan(Store([entry], format="memory", path=str(raw)), None, dtype="float16")
    assert plan.outputs[0].compute_blocks is not None
    with pytest.raises(PlanError, match="1 finite value.*overflow to inf in float16"):
        write_safetensors(plan.outputs, tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.bin"]


def test_a_streamed_cast_counts_over_the_whole_tensor(tmp_path) -> None:
    """A cast streamed block by block (the writer's _BLOCK_BYTES of the wider dtype, each cast
    in _CAST_CHUNK chunks) stops writing at the first block with values int8 cannot hold, and
    reads on to count them over the whole tensor: NaN and values out of range, in one line
    naming the file and the tensor. A damaged tensor is said to be damaged instead."""
    from ckptconv import IntegrityError, PlanError, Store, build_plan
    from ckptconv.store import ByteRange, Entry
    from ckptconv.writers import safetensors as writer

    per_block = writer._BLOCK_BYTES // 4  # float32 elements per block
    assert per_block > cast._CAST_CHUNK  # each block is cast in several chunks
    n = 2 * per_block + 7  # three blocks
    values = np.zeros(n, dtype=np.float32)
    values[[1, 2]] = np.nan  # block 0: NaN only
    values[per_block + 3] = 300.0  # block 1
    values[[n - 2, n - 1]] = [np.nan, -1e4]  # block 2
    raw = tmp_path / "raw.bin"
    raw.write_bytes(values.tobytes())
    from ckptconv.crc import crc32c

    for recorded in (None, crc32c(values.tobytes())):
        entry = Entry("w", key="w", shape=values.shape, dtype=np.float32, path=raw,
                      byte_range=ByteRange(str(raw), 0, values.nbytes), crc32c=recorded)
        plan = build_plan(Store([entry], format="memory", path=str(raw)), None, dtype="int8", allow_lossy=True)
        assert plan.outputs[0].compute_blocks is not None
        with pytest.raises(PlanError) as info:
            write_safetensors(plan.outputs, tmp_path / "out.safetensors")
        assert info.value.tensor == "w" and str(raw) in str(info.value)
        assert ("output 'w' from 'w': 3 NaN value(s) and 2 value(s) out of int8's range [-128, 127] (the values "
                "span [-10000.0, 300.0]); scale the weights") in str(info.value), str(info.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.bin"]
    # damaged bytes that look like an overflow: the CRC-32C over the blocks read says so
    entry = Entry("w", key="w", shape=values.shape, dtype=np.float32, path=raw,
                  byte_range=ByteRange(str(raw), 0, values.nbytes), crc32c=crc32c(values.tobytes()) ^ 1)
    plan = build_plan(Store([entry], format="memory", path=str(raw)), None, dtype="int8", allow_lossy=True)
    with pytest.raises(IntegrityError):
        write_safetensors(plan.outputs, tmp_path / "out.safetensors")


def test_a_streamed_cast_of_a_damaged_tf_checkpoint_writes_nothing(generated, tmp_path) -> None:
    import shutil

    import ckptconv
    from ckptconv import IntegrityError

    fixtures = generated("load")
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(fixtures / f"k3ckpt{suffix}", tmp_path / f"k3ckpt{suffix}")
    with ckptconv.open(tmp_path / "k3ckpt") as store:
        big = max((e for e in store.entries() if e.crc32c is not None), key=lambda e: e.nbytes)
        data, offset = big.byte_range.path, big.byte_range.offset + big.byte_range.length - 1
    with open(data, "r+b") as f:  # the tensor's last byte: found only after its last block
        f.seek(offset)
        last = f.read(1)
        f.seek(offset)
        f.write(bytes([last[0] ^ 1]))
    out = tmp_path / "out" / "x.safetensors"
    out.parent.mkdir()
    with pytest.raises(IntegrityError, match="CRC-32C") as info:
        ckptconv.convert(tmp_path / "k3ckpt", out, dtype="bfloat16")
    assert info.value.tensor == big.name
    assert list(out.parent.iterdir()) == []


def test_checksums_of_small_and_large_tensors_interleaved(
    tmp_path: Path, small_buffers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small tensors are checksummed on the committing thread, large ones on the checksum
    thread, interleaved and straddling buffers: every recorded CRC-32C is the tensor's own."""
    import json

    import crc32c

    monkeypatch.setattr(_sink, "_INLINE_CRC", 5000)
    rng = _rng()
    arrays = {}
    for i in range(60):
        size = (1200, 7, 3000, 1, 20_000)[i % 5]  # 4800, 28, 12000, 4, 80000 bytes
        arrays[f"t{i:02d}"] = rng.standard_normal(size, dtype=np.float32)
    outputs = [Output(n, a.shape, a.dtype, compute=lambda a=a: a) for n, a in arrays.items()]
    dst = tmp_path / "crc.safetensors"
    write_safetensors(outputs, dst, fsync=False)
    raw = dst.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    table = json.loads(header["__metadata__"]["ckptconv.crc32c"])
    assert set(table) == set(arrays)
    for name, array in arrays.items():
        assert int(table[name], 16) == crc32c.crc32c(array.tobytes()), name
    verify_file(dst)


def test_chunk_for_sizes_buffers_by_the_output() -> None:
    """Full-size staging buffers for big outputs; for small ones about a sixteenth of the
    output, never under the minimum, always a multiple of the direct-I/O alignment."""
    chunk, least = _sink._CHUNK, _sink._MIN_CHUNK
    assert _sink.chunk_for(0) == least
    assert _sink.chunk_for(16 * least) == least
    assert _sink.chunk_for(16 * least + 1) == least + _sink._ALIGN
    assert _sink.chunk_for(16 * chunk) == chunk
    assert _sink.chunk_for(1 << 40) == chunk
    for total in (1, 12_345_678, 25 << 20, 16 * chunk - 1):
        size = _sink.chunk_for(total)
        assert size % _sink._ALIGN == 0 and least <= size <= chunk and size * 16 >= min(total, 16 * chunk)
    with pytest.raises(ValueError, match="multiple of 4096"):
        _sink.Pipeline(chunk=least + 1)


@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct", "buffered"])
def test_a_small_output_is_written_through_small_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: str
) -> None:
    """A 6 MiB output is staged in buffers of chunk_for(its size), not 8 MiB ones; tensors
    and the header still straddle them and read back bit for bit."""
    monkeypatch.setenv("CKPTCONV_DIRECT_IO", direct)
    sizes: list[int] = []
    real = _sink._Buffer.__init__

    def recording(self, size: int) -> None:
        sizes.append(size)
        real(self, size)

    monkeypatch.setattr(_sink._Buffer, "__init__", recording)
    rng = _rng()
    arrays = {f"t{i:04d}": rng.standard_normal(int(n), dtype=np.float32)
              for i, n in enumerate(rng.integers(1, 3000, 1000))}
    dst = tmp_path / "small.safetensors"
    write_safetensors([Output(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items()], dst)
    total = dst.stat().st_size
    assert sizes and set(sizes) == {_sink.chunk_for(total)} and sizes[0] < _sink._CHUNK
    assert len(sizes) == _sink._BUFFERS  # the output spans more than all of them: reused
    back = load_file(str(dst))
    for name, array in arrays.items():
        assert_bit_exact(back[name], array, name)
    assert verify_file(dst).ok
    from ckptconv.writers import safetensors as writer

    assert "__slots__" in vars(writer._Slot)  # a slot per tensor, without a __dict__
