"""The neutral core's per-tensor rules: Keras' weight order within a layer, and the shapes an
Entry refuses (whatever path the check takes)."""

from __future__ import annotations

import numpy as np
import pytest

from ckptconv import CorruptFileError
from ckptconv.store import ByteRange, Entry, keras_order


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
