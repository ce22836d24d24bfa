"""Ops: inferred shapes/dtypes equal what execution gives, and every op matches numpy (hypothesis)."""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptconv import Store
from ckptconv.dtypes import is_floating
from ckptconv.mapping import Rule, Spec, build_plan
from ckptconv.mapping.cast import Cast, cast_array
from ckptconv.mapping.ops import (
    Concat,
    ExpandDims,
    OpError,
    ExecutionProblem,
    Reshape,
    Slice,
    Split,
    Squeeze,
    Stack,
    Transpose,
    blocked_transpose_2d,
)
from tests.helpers import assert_bit_exact

DTYPES = [
    np.dtype(np.float32),
    np.dtype(np.float16),
    np.dtype(ml_dtypes.bfloat16),
    np.dtype(np.float64),
    np.dtype(np.int32),
    np.dtype(np.int64),
    np.dtype(np.int8),
    np.dtype(np.uint8),
    np.dtype(np.bool_),
]

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


def _array(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    # small non-negative integers fit every dtype here, so casts are exact and never overflow
    return rng.integers(0, 100, size=shape).astype(dtype)


@st.composite
def slice_items(draw, ndim):
    """A numpy index as (text, tuple): ints, slices, at most one '...', and None."""
    count = draw(st.integers(0, ndim + 1))
    items = []
    texts = []
    used_ellipsis = False
    for _ in range(max(count, 1)):
        kind = draw(st.sampled_from(["int", "slice", "slice", "ellipsis", "none"]))
        if kind == "ellipsis" and not used_ellipsis:
            used_ellipsis = True
            items.append(Ellipsis)
            texts.append("...")
        elif kind == "none":
            items.append(None)
            texts.append("None")
        elif kind == "int":
            v = draw(st.integers(-5, 5))
            items.append(v)
            texts.append(str(v))
        else:
            start = draw(st.one_of(st.none(), st.integers(-6, 6)))
            stop = draw(st.one_of(st.none(), st.integers(-6, 6)))
            step = draw(st.one_of(st.none(), st.integers(-3, 3).filter(lambda x: x != 0)))
            items.append(slice(start, stop, step))
            part = lambda v: "" if v is None else str(v)  # noqa: E731
            texts.append(f"{part(start)}:{part(stop)}" + ("" if step is None else f":{step}"))
    return "[" + ", ".join(texts) + "]", tuple(items)


@st.composite
def op_and_reference(draw, shape):
    """An op plus the numpy call it must match (which may raise where the op does not apply)."""
    ndim = len(shape)
    kind = draw(st.sampled_from(["transpose", "transpose_axes", "reshape", "slice", "cast", "squeeze", "expand_dims"]))
    if kind == "transpose":
        return Transpose(), lambda a: np.transpose(a)
    if kind == "transpose_axes":
        axes = draw(st.one_of(st.permutations(range(ndim)), st.lists(st.integers(-ndim - 1, ndim), max_size=ndim + 1)))
        axes = tuple(axes)
        return Transpose(axes), lambda a: np.transpose(a, axes)
    if kind == "reshape":
        size = int(np.prod(shape))
        dims = list(draw(st.lists(st.integers(1, 6), max_size=3)))
        if draw(st.booleans()):
            dims.insert(draw(st.integers(0, len(dims))), -1)
        elif draw(st.booleans()) and size:
            dims = [size] + dims[:0]
        target = tuple(dims)
        return Reshape(target), lambda a: np.reshape(a, target)
    if kind == "slice":
        text, index = draw(slice_items(ndim))
        return Slice(text), lambda a: _nonempty_slice(a, index)
    if kind == "cast":
        dtype = draw(st.sampled_from(DTYPES))
        return Cast(dtype, allow_lossy=True), lambda a: a.astype(dtype)
    if kind == "squeeze":
        axis = draw(st.one_of(st.none(), st.integers(-ndim - 1, ndim)))
        if axis is None:
            return Squeeze(None), lambda a: np.squeeze(a)
        # numpy squeezes axis 0 of a 0-d array (a legacy quirk); ckptconv refuses it
        return Squeeze((axis,)), lambda a: np.squeeze(a, axis=axis) if a.ndim else 1 / 0
    axis = draw(st.integers(-ndim - 2, ndim + 1))
    return ExpandDims((axis,)), lambda a: np.expand_dims(a, axis)


def _nonempty_slice(a, index):
    """numpy's indexing, except that emptying a non-empty tensor is refused (out of range)."""
    result = a[index]
    if a.size and not result.size:
        raise IndexError("the slice selects nothing")
    return result


@SETTINGS
@given(shape=shapes, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16), data=st.data())
def test_op_chains_infer_what_numpy_computes(shape, dtype, seed, data):
    array = _array(shape, dtype, seed)
    for _ in range(data.draw(st.integers(1, 4))):
        op, reference = data.draw(op_and_reference(array.shape))
        try:
            expected = reference(array)
        except (ValueError, IndexError, TypeError, ZeroDivisionError, np.exceptions.AxisError):
            expected = None
        try:
            shape_, dtype_ = op.infer(array.shape, array.dtype)
        except OpError:
            assert expected is None, f"{op.describe()} refused {array.shape} but numpy computes it"
            return
        assert expected is not None, f"{op.describe()} accepted {array.shape} but numpy refuses it"
        result = op.apply(array, shape_, dtype_)
        assert (result.shape, result.dtype) == (shape_, dtype_), op.describe()
        assert_bit_exact(result, expected, op.describe())
        array = np.array(result, order="C")


@SETTINGS
@given(shape=shapes, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16), data=st.data())
def test_plans_infer_what_their_outputs_compute(shape, dtype, seed, data):
    array = _array(shape, dtype, seed)
    ops = []
    current = array
    for _ in range(data.draw(st.integers(0, 4))):
        op, reference = data.draw(op_and_reference(current.shape))
        try:
            current = reference(current)
        except (ValueError, IndexError, TypeError, ZeroDivisionError, np.exceptions.AxisError):
            break
        ops.append(op)
    default = data.draw(st.sampled_from([None, "float16", "bfloat16", "float32"]))
    plan = build_plan(Store.from_arrays({"w": array}), Spec(rules=[Rule(from_="w", to="out", ops=ops)]), dtype=default)
    assert plan.ok, plan.problems
    (output,) = plan.outputs
    result = output.compute()
    assert result.shape == output.shape and result.dtype == output.dtype
    assert result.flags.c_contiguous
    expected = current
    if default and is_floating(expected.dtype) and not any(isinstance(op, Cast) for op in ops):
        expected = expected.astype(default)  # the default dtype applies unless the rule casts
    assert_bit_exact(result, np.array(expected, order="C"))


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), data=st.data())
def test_split_concat_stack_match_numpy(shape, data):
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1))
    n = shape[axis]
    parts = data.draw(st.integers(1, 4))
    array = _array(shape, np.float32, 0)
    split = Split(axis, parts=parts)
    if n % parts:
        with pytest.raises(OpError):
            split.infer_split(shape, array.dtype)
    else:
        inferred = split.infer_split(shape, array.dtype)
        pieces = split.apply_split(array)
        for (s, d), piece, ref in zip(inferred, pieces, np.split(array, parts, axis=axis)):
            assert piece.shape == s and piece.dtype == d
            assert_bit_exact(piece, ref)
    sizes = data.draw(st.lists(st.integers(0, n), min_size=1, max_size=3))
    by_size = Split(axis, sizes=tuple(sizes))
    if sum(sizes) == n:
        got = by_size.apply_split(array)
        ref = np.split(array, np.cumsum(sizes)[:-1], axis=axis)
        assert [g.shape for g in got] == [s for s, _ in by_size.infer_split(shape, array.dtype)]
        for g, r in zip(got, ref):
            assert_bit_exact(g, r)
    else:
        with pytest.raises(OpError):
            by_size.infer_split(shape, array.dtype)
    others = [_array(tuple(d if i != axis % ndim else data.draw(st.integers(0, 3)) for i, d in enumerate(shape)), np.float32, k)
              for k in range(data.draw(st.integers(1, 3)))]
    arrays = [array, *others]
    shape_c, dtype_c = Concat(axis).infer_many([a.shape for a in arrays], [a.dtype for a in arrays])
    joined = Concat(axis).apply_many(arrays)
    assert (joined.shape, joined.dtype) == (shape_c, dtype_c)
    assert_bit_exact(joined, np.concatenate(arrays, axis=axis))
    stack_axis = data.draw(st.integers(-ndim - 1, ndim))
    same = [array, array + 1]
    shape_s, _ = Stack(stack_axis).infer_many([a.shape for a in same], [a.dtype for a in same])
    assert_bit_exact(Stack(stack_axis).apply_many(same), np.stack(same, axis=stack_axis))
    assert shape_s == np.stack(same, axis=stack_axis).shape
    if len(others) and any(o.shape != array.shape for o in others):
        with pytest.raises(OpError):
            Stack(0).infer_many([a.shape for a in arrays], [a.dtype for a in arrays])


def test_joins_refuse_mixed_dtypes():
    with pytest.raises(OpError, match="different dtypes"):
        Concat(0).infer_many([(2,), (2,)], [np.dtype(np.float32), np.dtype(np.float16)])


@pytest.mark.parametrize("shape", [(1, 1), (3, 700), (517, 300), (256, 256), (1000, 65)])
@pytest.mark.parametrize("tile", [1, 7, 256])
def test_blocked_transpose_equals_numpy(shape, tile):
    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    assert_bit_exact(blocked_transpose_2d(a, tile=tile), a.T.copy())
    view = a[::2, 1:]  # a non-contiguous input
    assert_bit_exact(blocked_transpose_2d(view, tile=tile), view.T.copy())


def test_big_transpose_goes_through_the_blocked_path_and_stays_exact():
    a = np.random.default_rng(0).standard_normal((600, 333)).astype(np.float32)
    shape, dtype = Transpose().infer(a.shape, a.dtype)
    out = Transpose().apply(a, shape, dtype)
    assert out.flags.c_contiguous
    assert_bit_exact(out, a.T.copy())


# -- casts round to nearest even: checked against oracles independent of numpy's cast ----------


def _bf16_rne_oracle(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 by integer arithmetic on the bits: add 0x7fff plus the kept LSB."""
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded.view(ml_dtypes.bfloat16)


def _fp16_oracle(x: np.ndarray) -> np.ndarray:
    """float -> float16 through Python's struct 'e' packing (its own round-half-even code)."""
    raw = b"".join(struct.pack("<e", float(v)) for v in x.ravel())
    return np.frombuffer(raw, dtype="<f2").reshape(x.shape)


def _float32_samples() -> np.ndarray:
    rng = np.random.default_rng(7)
    values = rng.standard_normal(4000).astype(np.float32) * np.float32(1000)
    # exact ties between two bfloat16 / float16 neighbours, both parities, and tiny numbers
    ties = (np.arange(1, 200, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    halves = np.array([1 + 2**-11, 1 + 3 * 2**-11, 2048 + 1, 2048 + 3, 6e-8, 3e-8, -0.0, 65504, 65519], np.float32)
    return np.concatenate([values, ties[np.isfinite(ties)], halves])


def test_cast_to_bfloat16_rounds_to_nearest_even():
    x = _float32_samples()
    got = cast_array(x, np.dtype(ml_dtypes.bfloat16))
    assert_bit_exact(got, _bf16_rne_oracle(x))


def test_cast_to_float16_rounds_to_nearest_even():
    x = _float32_samples()
    got = cast_array(x, np.dtype(np.float16))
    assert_bit_exact(got, _fp16_oracle(x))


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([1.0, 65520.0], np.float16),  # 65520 is the first value that rounds to inf
        ([3.4e38], ml_dtypes.bfloat16),
        ([1e300], np.float32),
        ([300.0], np.int8),
        ([-1.0], np.uint8),
        ([np.nan], np.int32),
        ([70000], np.int16),
        # float8 types without infinities: what overflows them becomes NaN
        ([1.0, 1000.0], ml_dtypes.float8_e4m3fn),
        ([300.0], ml_dtypes.float8_e4m3fnuz),
        ([1e6], ml_dtypes.float8_e5m2fnuz),
        ([31.0], ml_dtypes.float8_e4m3b11fnuz),
    ],
)
def test_cast_overflow_is_refused_unless_allowed(values, dtype):
    src_dtype = np.float64 if isinstance(values[0], float) else np.int64
    x = np.array(values, dtype=src_dtype)
    with pytest.raises(ExecutionProblem):
        cast_array(x, np.dtype(dtype))
    cast_array(x, np.dtype(dtype), allow_overflow=True)


def test_cast_keeps_infinities_and_nans_that_were_there():
    x = np.array([np.inf, -np.inf, np.nan, 1.0], np.float32)
    out = cast_array(x, np.dtype(np.float16))
    assert np.isinf(out[:2]).all() and np.isnan(out[2]) and out[3] == 1


def test_overflow_into_a_float8_type_without_infinities_is_named_nan():
    with pytest.raises(ExecutionProblem, match=r"^1 finite value\(s\) overflow to NaN in float8_e4m3fn \(largest float8_e4m3fn is 448"):
        cast_array(np.array([2.0, -500.0], np.float32), np.dtype(ml_dtypes.float8_e4m3fn))
    # an infinity or NaN already there is no overflow: it stays NaN (the closest there is)
    out = cast_array(np.array([np.inf, np.nan, 2.0], np.float32), np.dtype(ml_dtypes.float8_e4m3fnuz))
    assert np.isnan(out[:2].astype(np.float32)).all() and float(out[2]) == 2.0


def test_integer_overflow_is_counted_and_hinted_as_float_overflow_is(monkeypatch, tmp_path):
    """Out of an integer type's range (int64 -> int8, float -> int8), or NaN into one: the
    message counts the values over the whole tensor (every chunk) and, from a spec's cast,
    says how to allow it, as a float overflow's does."""
    import ckptconv.mapping.cast as cast

    monkeypatch.setattr(cast, "_CAST_CHUNK", 4)  # the values out of range lie in several chunks
    ids = np.array([300, -300, 5, 2**40, 1, 2, 3, 4, 1000], np.int64)
    with pytest.raises(ExecutionProblem, match=r"^4 value\(s\) out of int8's range \[-128, 127\] "
                       r"\(the values span \[-300, 1099511627776\]\)$"):
        cast_array(ids, np.dtype(np.int8))
    with pytest.raises(ExecutionProblem, match=r"^2 value\(s\) out of int8's range .*\[-1000000.0, 300.0\]"):
        cast_array(np.array([1.5, 300.0, -1e6, 2.0, 7.0], np.float32), np.dtype(np.int8))
    with pytest.raises(ExecutionProblem, match=r"^2 NaN value\(s\) cannot be cast to uint8"):
        cast_array(np.array([np.nan, 1.0, 2.0, 3.0, np.nan], np.float32), np.dtype(np.uint8))
    # from a spec's cast op, the hint a float overflow gives
    with pytest.raises(ExecutionProblem) as info:
        Cast(np.dtype(np.int8)).apply(ids, ids.shape, np.dtype(np.int8))
    assert str(info.value).endswith(
        "; scale the weights, or set allow_overflow: true on this cast op ({cast: {dtype: int8, allow_overflow: true}})")
    with pytest.raises(ExecutionProblem) as info:
        Cast(np.dtype(np.float16)).apply(np.array([7e4], np.float32), (1,), np.dtype(np.float16))
    assert str(info.value) == ("1 finite value(s) overflow to inf in float16 (largest float16 is 65504.0); scale "
                               "the weights, or set allow_overflow: true on this cast op ({cast: {dtype: float16, "
                               "allow_overflow: true}})")
    # the default (or target) dtype's cast: the rule's flag, or a spec of one rule
    with pytest.raises(ExecutionProblem) as info:
        Cast(np.dtype(np.float16), note="default dtype").apply(np.array([7e4], np.float32), (1,), np.dtype(np.float16))
    assert str(info.value).endswith("; " + cast.ALLOW_OVERFLOW_HINT) and "{from: '**', allow_overflow: true}" in str(info.value)
    # allowed: numpy's cast, an integer wrapping around
    assert Cast(np.dtype(np.int8), allow_overflow=True).apply(ids, ids.shape, np.dtype(np.int8))[0] == 44


def test_nan_and_values_out_of_range_are_said_together():
    """Into an integer type, NaN and values out of its range are both counted (over every chunk
    of a tensor of several, cast on two threads), in one line; the span is of the other values."""
    import ckptconv.mapping.cast as cast

    n = 3 * cast._CAST_CHUNK + 5  # four chunks
    x = np.zeros(n, np.float32)
    x[[3, 10]] = np.nan  # chunk 0: NaN only
    x[cast._CAST_CHUNK + 1] = np.nan  # chunk 1: NaN and a value out of range
    x[cast._CAST_CHUNK + 2] = 200.0
    x[[n - 2, n - 1]] = [-500.0, 1000.0]  # chunk 3: out of range only
    with pytest.raises(ExecutionProblem, match=r"^3 NaN value\(s\) and 3 value\(s\) out of int8's range "
                       r"\[-128, 127\] \(the values span \[-500.0, 1000.0\]\)$"):
        cast_array(x, np.dtype(np.int8))
    x[cast._CAST_CHUNK + 2] = x[n - 2] = x[n - 1] = 0  # NaN alone: said as before
    with pytest.raises(ExecutionProblem, match=r"^3 NaN value\(s\) cannot be cast to int8, which has no NaN$"):
        cast_array(x, np.dtype(np.int8))
    x[:] = np.nan
    with pytest.raises(ExecutionProblem, match=r"^3145733 NaN value\(s\) cannot be cast to int8"):
        cast_array(x, np.dtype(np.int8))


def test_cast_in_chunks_is_exact_across_chunk_boundaries(monkeypatch):
    import ckptconv.mapping.cast as cast

    monkeypatch.setattr(cast, "_CAST_CHUNK", 7)
    x = np.random.default_rng(3).standard_normal((10, 9)).astype(np.float32)
    assert_bit_exact(cast_array(x, np.dtype(ml_dtypes.bfloat16)), _bf16_rne_oracle(x.ravel()).reshape(x.shape))
    big = x.copy()
    big[9, 8] = 1e6
    with pytest.raises(ExecutionProblem):
        cast_array(big, np.dtype(np.float16))


def test_cast_refuses_complex_to_real_at_plan_time():
    with pytest.raises(OpError, match="cannot cast complex64 to float32"):
        Cast(np.dtype(np.float32)).infer((2,), np.dtype(np.complex64))


def test_float64_to_bfloat16_rounds_once():
    """ml_dtypes' own float64 -> bfloat16 goes through float32 and rounds twice; ckptconv does not."""
    x = np.array([1 + 2**-8 + 2**-30, -(1 + 2**-8 + 2**-30), 1 + 2**-8, 1 + 3 * 2**-8, 3.0e38, 1e-300, 2.0**-133 * 1.5], np.float64)
    got = cast_array(x, np.dtype(ml_dtypes.bfloat16), allow_overflow=True)
    # oracle: exact rational rounding with Python's fractions (8 significant bits, emin -126)
    from fractions import Fraction

    def rne_bf16(v: float) -> float:
        if v == 0:
            return v
        f = abs(Fraction(v))
        e = f.numerator.bit_length() - f.denominator.bit_length()
        if Fraction(2) ** e > f:
            e -= 1
        quantum = Fraction(2) ** (max(e, -126) - 7)
        n, rem = divmod(f / quantum, 1)
        if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
            n += 1
        result = n * quantum
        if result > (2 - Fraction(1, 128)) * Fraction(2) ** 127:
            return float("inf") if v > 0 else float("-inf")
        return float(result) if v > 0 else -float(result)

    want = np.array([rne_bf16(v) for v in x], np.float64).astype(np.float32).astype(ml_dtypes.bfloat16)
    assert_bit_exact(got, want)
    assert float(got[0]) == 1 + 2**-7  # not 1.0, which rounding through float32 gives


def test_int_to_float16_overflow_is_caught():
    with pytest.raises(ExecutionProblem):
        cast_array(np.array([1, 70000], np.int32), np.dtype(np.float16))
    assert_bit_exact(cast_array(np.array([1, 60000], np.int32), np.dtype(np.float16)), np.array([1, 60000], np.float16))


def _rne_oracle(v: float, significant: int, emin: int, largest: float) -> float:
    """Round a float to ``significant`` bits, nearest even, exactly (Python fractions)."""
    from fractions import Fraction

    if v == 0:
        return v
    f = abs(Fraction(v))
    e = f.numerator.bit_length() - f.denominator.bit_length()
    if Fraction(2) ** e > f:
        e -= 1
    quantum = Fraction(2) ** (max(e, emin) - (significant - 1))
    n, rem = divmod(f / quantum, 1)
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
        n += 1
    result = n * quantum
    if result > Fraction(largest):
        return float("inf") if v > 0 else float("-inf")
    return float(result) if v > 0 else -float(result)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=20))
def test_float64_casts_round_once_to_nearest_even(values):
    x = np.array(values, np.float64)
    for dtype, significant, emin in (
        (ml_dtypes.bfloat16, 8, -126), (np.float16, 11, -14), (ml_dtypes.float8_e4m3fn, 4, -6),
        (ml_dtypes.float8_e5m2, 3, -14), (ml_dtypes.float8_e4m3fnuz, 4, -7),
        (ml_dtypes.float8_e5m2fnuz, 3, -15), (ml_dtypes.float8_e4m3b11fnuz, 4, -10),
    ):
        largest = float(ml_dtypes.finfo(dtype).max)
        got = cast_array(x, np.dtype(dtype), allow_overflow=True)
        want = np.array([_rne_oracle(v, significant, emin, largest) if np.isfinite(v) else v for v in values], np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # inf -> NaN where the type has none
            assert_bit_exact(got, want.astype(np.float32).astype(dtype), str(dtype))


def test_a_slice_out_of_range_is_an_error_not_an_empty_tensor():
    with pytest.raises(OpError, match=r"selects nothing from \[4, 8\]"):
        Slice("[:, 10:20]").infer((4, 8), np.dtype("float32"))
    assert Slice("[:, 6:20]").infer((4, 8), np.dtype("float32"))[0] == (4, 2)  # clipped, as numpy


@pytest.mark.parametrize(
    ("src", "dst", "allowed", "lossy_ok"),
    [
        ("float32", "bfloat16", True, True),
        ("float64", "float16", True, True),
        ("int8", "float32", True, True),
        ("int64", "int8", True, True),  # the range is checked on the data
        ("bool", "float32", True, True),
        ("float32", "int32", False, True),  # drops every fraction
        ("float16", "bool", False, True),
        ("int32", "bool", False, True),  # keeps only zero or non-zero
        ("float8_e4m3fnuz", "float32", True, True),  # TensorFlow's and PyTorch's fnuz float8
        ("float32", "float8_e5m2fnuz", True, True),
        ("float8_e4m3b11fnuz", "int8", False, True),
        ("complex64", "float32", False, False),
        ("float32", "complex64", False, False),
    ],
)
def test_cast_problem_is_the_one_rule(src, dst, allowed, lossy_ok):
    """The spec's cast op, the dtype option and load_into ask the same question."""
    from ckptconv.keras.match import cast_problem as used_by_load_into
    from ckptconv.mapping.cast import cast_problem

    assert used_by_load_into is cast_problem
    src_dt, dst_dt = np.dtype(getattr(ml_dtypes, src, src)), np.dtype(getattr(ml_dtypes, dst, dst))
    assert (cast_problem(src_dt, dst_dt) is None) == allowed
    assert (cast_problem(src_dt, dst_dt, allow_lossy=True) is None) == lossy_ok
    try:
        Cast(dst_dt).infer((2,), src_dt)
        op_allows = True
    except OpError:
        op_allows = False
    assert op_allows == allowed
