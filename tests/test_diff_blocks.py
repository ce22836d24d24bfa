"""``diff`` of tensors streamed block by block from plain stored bytes: the edges of the blocks
(a difference in the very first or the very last byte), NaN payloads, recorded CRC-32Cs
checked over the blocks, files that change under it, and the order of results and errors when
streamed pairs run on worker threads. Blocks are made small (``BLOCK_BYTES``) so that tensors
of a few hundred KiB span many of them, the last one partial."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import ckptconv
from ckptconv import diff
from ckptconv.store import ByteRange, Entry, Store
from tests.helpers import run_cli

DIFF = sys.modules["ckptconv.mapping.diff"]  # the module (ckptconv.mapping.diff is the function)
BLOCK = 4096  # bytes: 1024 float32 per block
N = 30_001  # float32 elements: 29 full blocks and a partial one of 305 elements


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(DIFF, "BLOCK_BYTES", BLOCK)


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a/kernel": rng.standard_normal(N).astype(np.float32).reshape(N, 1),
        "a/bias": rng.standard_normal(7).astype(np.float32),  # one block: read whole
        "b/kernel": rng.standard_normal((200, 150)).astype(np.float32),
        "c/kernel": rng.standard_normal((90, 100)).astype(np.float64),
    }


def write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    safetensors.numpy.save_file(arrays, str(path))
    return path


def flip_byte(path: Path, tensor: str, byte: int) -> None:
    """XOR one bit into byte ``byte`` of ``tensor``'s stored data (counted from its start)."""
    with ckptconv.open(path) as store:
        offset = store[tensor].byte_range.offset + byte
    with open(path, "r+b") as f:
        f.seek(offset)
        value = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value ^ 0x80]))


def test_the_first_byte_and_the_last_byte_of_a_streamed_tensor(tmp_path):
    """The first element's low byte (block 0), the last element's high byte (the partial last
    block): each found, at its index; nothing else differs."""
    a = write(tmp_path / "a.safetensors", weights())
    for byte, index in ((0, (0, 0)), (4 * N - 1, (N - 1, 0))):
        b = write(tmp_path / "b.safetensors", weights())
        flip_byte(b, "a/kernel", byte)
        report = diff(a, b)
        by_name = {t.name: t for t in report.tensors}
        t = by_name["a/kernel"]
        assert (t.status, t.mismatched, t.first, t.size) == ("different", 1, index, N), t
        assert t.first_a == float(weights()["a/kernel"][index]) and t.first_b != t.first_a
        assert all(by_name[n].status == "equal" for n in ("a/bias", "b/kernel", "c/kernel"))
        assert report.nbytes == 2 * sum(w.nbytes for w in weights().values())


def test_nan_payloads_are_equal_values_a_nan_against_a_number_is_not(tmp_path):
    """Two NaNs with other bits (a quiet NaN, one with a payload, a negative one) differ in
    their bytes but are the same value: "close", exit 0, max abs 0; a NaN against a number is
    a difference, counted as a NaN mismatch and left out of max abs."""
    w = weights()
    a = write(tmp_path / "a.safetensors", w)
    nan_a, nan_b = w["a/kernel"].copy(), w["a/kernel"].copy()
    positions = (0, 1023, 1024, 17_000, N - 1)  # either side of a block's edge, the very last
    for i, (pa, pb) in zip(positions, [(0x7FC00000, 0x7FC00001), (0x7FC00000, 0xFFC00000),
                                       (0x7F800001, 0x7FC00000), (0xFFFFFFFF, 0x7FC00000),
                                       (0x7FC00000, 0x7FFFFFFF)]):
        nan_a.reshape(-1).view(np.uint32)[i] = pa
        nan_b.reshape(-1).view(np.uint32)[i] = pb
    assert not np.array_equal(nan_a.view(np.uint32), nan_b.view(np.uint32))
    a = write(tmp_path / "a.safetensors", {**w, "a/kernel": nan_a})
    b = write(tmp_path / "b.safetensors", {**w, "a/kernel": nan_b})
    t = {t.name: t for t in diff(a, b).tensors}["a/kernel"]
    assert (t.status, t.mismatched, t.max_abs, t.max_rel, t.first) == ("close", 0, 0.0, 0.0, None)
    result = run_cli("diff", a, b)
    assert result.returncode == 0 and result.stderr == "", result.stdout + result.stderr
    assert "4 tensor(s) compared: 3 bit-exact, 1 equal in value but not bit-exact;" in result.stdout
    number = nan_b.copy()
    number.reshape(-1)[17_000] = 1.0
    b = write(tmp_path / "b.safetensors", {**w, "a/kernel": number})
    t = {t.name: t for t in diff(a, b).tensors}["a/kernel"]
    assert (t.status, t.mismatched, t.nan_mismatched, t.first, t.max_abs) == ("different", 1, 1, (17_000, 0), 0.0)
    assert np.isnan(t.first_a) and t.first_b == 1.0


def test_recorded_crcs_are_checked_over_the_blocks_up_to_the_last(tmp_path):
    """ckptconv records CRC-32Cs in the safetensors it writes; ``diff`` reads every byte and
    checks them, on either side: damage in the partial last block is found, before the values
    (which differ too) are reported."""
    a = write(tmp_path / "a.safetensors", weights())
    c = tmp_path / "c.safetensors"
    ckptconv.convert(a, c)
    with ckptconv.open(c) as store:
        assert store["a/kernel"].crc32c is not None
    assert diff(a, c).equal and diff(c, a).equal
    flip_byte(c, "a/kernel", 4 * N - 2)  # the partial last block
    for x, y in ((a, c), (c, a)):
        with pytest.raises(ckptconv.IntegrityError, match=r"'a/kernel'.*CRC-32C") as caught:
            diff(x, y)
        assert "\n" not in str(caught.value) and str(c) in str(caught.value)
    result = run_cli("diff", a, c)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "a/kernel" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_small_tensor_s_recorded_crc_is_checked_too(tmp_path):
    """A tensor of one block (read with pread like the big ones) has its CRC-32C checked."""
    a = write(tmp_path / "a.safetensors", weights())
    c = tmp_path / "c.safetensors"
    ckptconv.convert(a, c)
    flip_byte(c, "a/bias", 27)  # the last byte of 7 float32
    for x, y in ((a, c), (c, a)):
        with pytest.raises(ckptconv.IntegrityError, match=r"'a/bias'.*CRC-32C"):
            diff(x, y)


def test_a_damaged_recorded_crc_of_equal_small_tensors_is_found(tmp_path):
    """Equal bytes on both sides (compared at once, with one read each) still have their
    recorded CRC-32C checked: a checksum table damaged in the header is an error, not
    "equal"."""
    a = write(tmp_path / "a.safetensors", weights())
    c = tmp_path / "c.safetensors"
    ckptconv.convert(a, c)
    with ckptconv.open(c) as store:
        crc = store["a/bias"].crc32c
    raw = c.read_bytes()
    recorded = f'\\"a/bias\\":\\"{crc:08x}\\"'.encode()
    assert raw.count(recorded) == 1
    c.write_bytes(raw.replace(recorded, f'\\"a/bias\\":\\"{crc ^ 1:08x}\\"'.encode()))
    for x, y in ((a, c), (c, a)):
        with pytest.raises(ckptconv.IntegrityError, match=r"'a/bias'.*CRC-32C"):
            diff(x, y)


def test_each_file_is_opened_once_for_the_comparison_and_closed_after_it(tmp_path, monkeypatch):
    """Many small tensors and a few big ones: each file gets one descriptor for the whole
    comparison (not one per tensor), and none is left open afterwards, also after a failure."""
    many = {f"layer_{i}/bias": np.full(5, i, np.float32) for i in range(40)}
    a = write(tmp_path / "a.safetensors", {**weights(), **many})
    b = write(tmp_path / "b.safetensors", {**weights(), **many})
    opened: list[str] = []
    real_open = DIFF.os.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    fds = set(os.listdir("/proc/self/fd"))
    with ckptconv.open(a) as store_a, ckptconv.open(b) as store_b:
        monkeypatch.setattr(DIFF.os, "open", counting_open)
        assert diff(store_a, store_b).equal and len(store_a) == 44
        assert sorted(opened) == sorted([str(a), str(b)])
        with open(b, "r+b") as f:  # B ends early now: the comparison fails half-way
            f.truncate(store_b["a/kernel"].byte_range.offset + 100)
        with pytest.raises(ckptconv.CorruptFileError):
            diff(store_a, store_b)
        monkeypatch.undo()
    assert set(os.listdir("/proc/self/fd")) == fds


def test_a_file_truncated_after_it_was_opened_is_one_error(tmp_path):
    """B loses its end between reading its header and comparing: the tensor whose data is cut
    is named, with the byte the file ends at, in one line; the earlier tensors were fine."""
    a = write(tmp_path / "a.safetensors", weights())
    b = write(tmp_path / "b.safetensors", weights())
    with ckptconv.open(a) as store_a, ckptconv.open(b) as store_b:
        last = max(store_b.values(), key=lambda e: e.byte_range.offset)
        assert last.nbytes > BLOCK  # a streamed one
        cut = last.byte_range.offset + last.byte_range.length - 100
        with open(b, "r+b") as f:
            f.truncate(cut)
        with pytest.raises(ckptconv.CorruptFileError) as caught:
            diff(store_a, store_b)
    message = str(caught.value)
    assert "\n" not in message and str(b) in message and repr(last.name) in message
    assert f"the file at byte {cut}" in message


def test_results_come_in_the_order_of_a_whatever_finishes_first(tmp_path):
    """Streamed pairs run on worker threads, the others on the caller's: the report lists the
    pairs in A's order, and reports every difference of every pair."""
    rng = np.random.default_rng(1)
    arrays = {}
    for i in range(12):  # big and small in turn: streamed and read whole alternate
        size = 5000 + 3000 * (i % 4) if i % 2 == 0 else 3
        arrays[f"t{i:02d}"] = rng.standard_normal(size).astype(np.float32)
    a = write(tmp_path / "a.safetensors", arrays)
    changed = {name: x.copy() for name, x in arrays.items()}
    for i, name in enumerate(changed):
        changed[name][i % changed[name].size] += 1.0
    b = write(tmp_path / "b.safetensors", changed)
    seen = []
    report = diff(a, b, progress=seen.append)
    assert [t.name for t in report.tensors] == list(arrays)
    assert [(t.first, t.mismatched) for t in report.tensors] == [((i % x.size,), 1) for i, x in enumerate(arrays.values())]
    assert sum(seen) == report.nbytes == 2 * sum(x.nbytes for x in arrays.values())


def _memory_store(path: Path, names: list[str], *, data: Path | None = None, broken: str | None = None) -> Store:
    """A store of ``path``'s tensors ``names``, in that order, as plain byte ranges of ``data``
    (default ``path``), except ``broken``, whose loader fails (a pair read whole, on the
    caller's thread)."""
    data = data or path
    entries = []
    with ckptconv.open(path) as store:
        for name in names:
            e = store[name]
            if name == broken:
                def fail(name=name):
                    raise ckptconv.CorruptFileError("cannot decode", path=str(data), tensor=name)
                entries.append(Entry(name, key=name, shape=e.shape, dtype=e.dtype, path=data, loader=fail))
            else:
                br = ByteRange(str(data), e.byte_range.offset, e.byte_range.length)
                entries.append(Entry(name, key=name, shape=e.shape, dtype=e.dtype, path=data, byte_range=br))
    return Store(entries, format="memory", path=str(data))


def test_the_first_error_in_a_order_is_the_one_raised(tmp_path):
    """A streamed pair (on a worker) fails, and so does the pair after it, read whole on the
    caller's thread: the streamed pair's error is raised, as if compared one after the other;
    without it, the other pair's."""
    a = write(tmp_path / "a.safetensors", weights())
    b = write(tmp_path / "b.safetensors", weights())
    names = ["b/kernel", "a/bias", "a/kernel"]
    with ckptconv.open(b) as header:
        cut = header["b/kernel"].byte_range.offset + 5000  # b/kernel's data is cut short
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(b.read_bytes()[:cut])
    store_a = _memory_store(a, names)
    assert diff(store_a, _memory_store(b, names)).equal
    with pytest.raises(ckptconv.CorruptFileError, match=r"'b/kernel'.*truncated"):
        diff(store_a, _memory_store(b, names, data=truncated, broken="a/bias"))
    with pytest.raises(ckptconv.CorruptFileError, match="'a/bias'.*cannot decode"):
        diff(store_a, _memory_store(b, names, broken="a/bias"))
