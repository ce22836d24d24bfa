"""The neutral core's per-tensor rules: Keras' weight order within a layer, and the shapes an
Entry refuses (whatever path the check takes), and where read buffers are placed."""

from __future__ import annotations

import numpy as np
import pytest

from ckptconv import CorruptFileError
from ckptconv.store import PAGE, ByteRange, Entry, ReadBuffer, keras_order, read_byte_range


def _entry(name: str, *, layer: str | None = None, kind: str = "weight") -> Entry:
    return Entry(name, key=name, shape=(2,), dtype=np.float32, path="/x", byte_range=ByteRange("/x", 0, 8),
                 layer=layer, kind=kind)


@pytest.mark.parametrize(
    "names, expected",
    [
        # stored alphabetically (as safetensors and TF keys sort): Keras' order restored
        (["d/bias", "d/kernel"], {"d/kernel": 0, "d/bias": 1}),
        (["d/kernel", "d/bias"], {"d/kernel": 0, "d/bias": 1}),
        (["bn/beta", "bn/gamma", "bn/moving_mean", "bn/moving_variance"],
         {"bn/gamma": 0, "bn/beta": 1, "bn/moving_mean": 2, "bn/moving_variance": 3}),
        (["lstm/bias", "lstm/kernel", "lstm/recurrent_kernel"],
         {"lstm/kernel": 0, "lstm/recurrent_kernel": 1, "lstm/bias": 2}),
        # PyTorch names, with dots
        (["m.bn.running_var", "m.bn.weight", "m.bn.num_batches_tracked", "m.bn.bias", "m.bn.running_mean"],
         {"m.bn.weight": 0, "m.bn.bias": 1, "m.bn.running_mean": 2, "m.bn.running_var": 3,
          "m.bn.num_batches_tracked": 4}),
        # unknown names follow the known ones, in stored order
        (["x/zeta", "x/bias", "x/alpha", "x/kernel"], {"x/kernel": 0, "x/bias": 1, "x/zeta": 2, "x/alpha": 3}),
        # a single weight, and weights of different layers, each start at 0
        (["a/bias", "b/bias", "b/kernel"], {"a/bias": 0, "b/kernel": 0, "b/bias": 1}),
    ],
)
def test_keras_order(names: list[str], expected: dict[str, int]) -> None:
    entries = [_entry(n) for n in names]
    keras_order(entries)
    assert {e.name: e.index for e in entries} == expected


def test_keras_order_by_kind_and_explicit_layer() -> None:
    # a layer given explicitly that is not a prefix of the name ranks by the name's leaf; the
    # training state is ordered apart from the weights of the same layer
    entries = [
        _entry("model/features.0.bias", layer="model/features.0"),
        _entry("model/features.0.weight", layer="model/features.0"),
        _entry("odd/bias", layer="elsewhere"),
        _entry("odd/kernel", layer="elsewhere"),
        _entry("d/bias", kind="optimizer"),
        _entry("d/kernel"),
    ]
    keras_order(entries)
    assert [e.index for e in entries] == [1, 0, 1, 0, 0, 0]


@pytest.mark.parametrize(
    "shape, itemsize, problem",
    [
        ((-1, 3), 4, "a negative dimension (-1)"),
        ((0, -2), 4, "a negative dimension (-2)"),
        ((2**40, 2**40, 0), 4, "more bytes than a 64-bit size can count"),  # zero last: still refused
        ((2**31, 2**31), 4, "more bytes than a 64-bit size can count"),
        ((1,) * 65, 4, "65 dimensions, more than the 64 an array can have"),
    ],
)
def test_impossible_shapes_are_refused(shape: tuple[int, ...], itemsize: int, problem: str) -> None:
    with pytest.raises(CorruptFileError, match=rf"shape \[.*\] has {problem.replace('(', '[(]').replace(')', '[)]')}"):
        Entry("t", key="t", shape=shape, dtype=np.dtype(f"<f{itemsize}"), path="/x", byte_range=ByteRange("/x", 0, 0))


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 5), (1,) * 64, (2**30, 2**30, 1)])
def test_possible_shapes_are_kept(shape: tuple[int, ...]) -> None:
    entry = Entry("t", key="t", shape=[np.int64(d) for d in shape], dtype="float32", path="/x",
                  byte_range=ByteRange("/x", 0, 0))
    assert entry.shape == shape and all(type(d) is int for d in entry.shape)


def test_keras_order_groups_a_layers_entries_wherever_they_lie() -> None:
    # a layer's weights apart from each other, and a layer's training state between its
    # weights: each group ordered on its own, as when every layer's entries lie together
    entries = [
        _entry("a/bias"), _entry("b/bias"), _entry("a/kernel"), _entry("b/kernel"),
        _entry("c/bias"), _entry("c/m", kind="optimizer"), _entry("c/kernel"), _entry("c/v", kind="optimizer"),
    ]
    keras_order(entries)
    assert [e.index for e in entries] == [1, 1, 0, 0, 1, 0, 0, 1]


@pytest.fixture
def shapes(monkeypatch) -> dict:
    """The shapes Entry has checked, empty at the start of the test (earlier tests may have
    filled the store's table to its limit, and then nothing new would be looked up)."""
    from ckptconv import store

    monkeypatch.setattr(store, "_SHAPES", {})
    return store._SHAPES


def _general(shape, dtype) -> Entry:
    """An Entry made with a shape no cache knows (a list): the dimension-by-dimension path."""
    return Entry("t", key="t", shape=list(shape), dtype=dtype, path="/x", byte_range=ByteRange("/x", 0, 0))


@pytest.mark.parametrize(
    "shape",
    [(3, 4), (np.int64(3), np.int64(4)), (np.int32(7),), (True, 2), (3.0, 4), (np.uint8(5), 1, 2)],
)
@pytest.mark.parametrize("dtype", ["float32", np.float16, np.dtype("<i8"), np.dtype("bool")])
def test_a_known_shape_converts_as_an_unknown_one(shapes, shape, dtype) -> None:
    # the shape as a tuple (looked up among the shapes already checked, twice so that the second
    # finds it) against the same shape as a list (converted and checked dimension by dimension)
    for _ in range(2):
        entry = Entry("t", key="t", shape=shape, dtype=dtype, path="/x", byte_range=ByteRange("/x", 0, 0))
        general = _general(shape, dtype)
        assert entry.shape == general.shape and [type(d) for d in entry.shape] == [int] * len(shape)
        assert type(entry.shape) is tuple and entry.dtype == general.dtype == np.dtype(dtype)
        assert isinstance(entry.dtype, np.dtype)
    assert tuple(map(int, shape)) in shapes  # the second one was looked up


def test_a_known_shape_is_still_refused_for_a_wider_dtype(shapes) -> None:
    # 2**61 elements fit a 64-bit size in 2-byte elements, not in 8-byte ones: the shape checked
    # for float16 is looked up for float64 and must still be refused
    shape = (2**31, 2**30)
    for dtype in ("float16", "float16"):
        assert Entry("t", key="t", shape=shape, dtype=dtype, path="/x", byte_range=ByteRange("/x", 0, 0)).shape == shape
    assert shape in shapes
    for make in (lambda: Entry("t", key="t", shape=shape, dtype="float64", path="/x",
                               byte_range=ByteRange("/x", 0, 0)),
                 lambda: _general(shape, "float64")):
        with pytest.raises(CorruptFileError, match="more bytes than a 64-bit size can count"):
            make()


@pytest.mark.parametrize("shape", [(-1, 3), (0, -2), (2**31, 2**31), (1,) * 65, (2**40, 2**40, 0)])
def test_a_refused_shape_is_refused_on_every_later_use(shapes, shape) -> None:
    for _ in range(2):
        with pytest.raises(CorruptFileError, match="not a tensor ckptconv can hold"):
            Entry("t", key="t", shape=shape, dtype="float32", path="/x", byte_range=ByteRange("/x", 0, 0))
    assert not shapes


def test_a_byte_range_is_the_frozen_dataclass_it_declares() -> None:
    import dataclasses
    import pickle

    r = ByteRange("/p", 3, 4)
    assert (r.path, r.offset, r.length) == ("/p", 3, 4)
    assert r == ByteRange(path="/p", offset=3, length=4) != ByteRange("/p", 4, 3)
    assert hash(r) == hash(ByteRange("/p", 3, 4)) and repr(r) == "ByteRange(path='/p', offset=3, length=4)"
    assert dataclasses.astuple(r) == ("/p", 3, 4) and dataclasses.replace(r, offset=5) == ByteRange("/p", 5, 4)
    assert pickle.loads(pickle.dumps(r)) == r
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.offset = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        ByteRange("/p", 3)  # type: ignore[call-arg]


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _well_placed(array: np.ndarray, offset: int) -> bool:
    """64-byte aligned, and not 1-63 bytes past the file offset's place in its page (where the
    kernel's copy from the page cache runs several times slower)."""
    return _address(array) % 64 == 0 and not 1 <= (_address(array) - offset) % PAGE <= 63


@pytest.mark.parametrize("offset", [0, 1, 15, 16, 17, 63, 64, 100, 2048 + 16, PAGE - 1, PAGE, 3 * PAGE + 40])
def test_a_read_buffer_is_placed_for_its_file_offset(offset):
    buffer = ReadBuffer(1 << 20)
    view = buffer.at(offset)
    assert view.dtype == np.uint8 and view.shape == (1 << 20,)
    assert _well_placed(view, offset)
    # successive reads of the capacity keep the placement; a shorter read is a prefix
    assert _well_placed(view, offset + 5 * (1 << 20))
    assert buffer.at(offset, 10).shape == (10,)
    assert buffer.at(offset, 2 << 20).shape == (1 << 20,)


def test_a_large_tensor_is_read_into_a_placed_array(tmp_path):
    """Entry.read's array starts where the read is fast, whatever the tensor's place in its
    page (malloc's large blocks start 16 bytes into a page: 16 past a page-aligned tensor),
    and holds the stored bytes."""
    values = np.arange(1 << 14, dtype=np.float32)  # 64 KiB: the smallest read that is placed
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 32 + values.tobytes())
    for offset in range(0, PAGE + 1):  # every place in a page
        array = read_byte_range(ByteRange(str(path), offset, values.nbytes), np.dtype(np.float32), (128, 128))
        assert array.shape == (128, 128) and array.dtype == np.float32 and array.flags.c_contiguous
        assert array.flags.writeable and array.flags.aligned
        assert _well_placed(array, offset), offset
        if offset in (0, 8, 1000, PAGE):
            expected = np.frombuffer(path.read_bytes()[offset : offset + values.nbytes], np.float32)
            np.testing.assert_array_equal(array.reshape(-1), expected)


_FIELDS = ("name", "layer", "index", "key", "shape", "dtype", "kind", "path", "byte_range", "crc32c",
           "tree_path", "_loader")


@pytest.mark.parametrize("shape", [(3, 4), [3, 4], (np.int64(2), 5), ()])
@pytest.mark.parametrize("dtype", ["float16", np.dtype("<i8")])
def test_the_positional_constructor_makes_the_keyword_one_s_entry(shape, dtype) -> None:
    byte_range = ByteRange("/x", 64, 8)
    fields = dict(layer="block/dense", index=1, key="layers/dense/vars/1", kind="optimizer",
                  byte_range=byte_range, crc32c=7, tree_path="layers/dense/vars/1")
    keyword = Entry("block/dense/bias", shape=shape, dtype=dtype, path="/x", **fields)
    positional = Entry.of("block/dense/bias", "block/dense", 1, "layers/dense/vars/1", shape, dtype,
                          "optimizer", "/x", byte_range, 7, "layers/dense/vars/1", None)
    for field in _FIELDS:
        assert getattr(positional, field) == getattr(keyword, field), field
    assert type(positional.shape) is tuple and [type(d) for d in positional.shape] == [int] * len(shape)
    assert isinstance(positional.dtype, np.dtype)


def test_the_positional_constructor_checks_as_the_keyword_one(shapes) -> None:
    with pytest.raises(CorruptFileError, match="not a tensor ckptconv can hold"):
        Entry.of("t", "", 0, "t", (-1, 3), "float32", "weight", "/x", ByteRange("/x", 0, 0), None, None, None)
    with pytest.raises(ValueError, match="a loader or a byte_range"):
        Entry.of("t", "", 0, "t", (3,), "float32", "weight", "/x", None, None, None, None)
    loaded = Entry.of("t", "", 0, "t", (3,), "float32", "weight", "/x", None, None, None,
                      lambda: np.arange(3, dtype=np.float32))
    assert loaded.read().tolist() == [0.0, 1.0, 2.0]
