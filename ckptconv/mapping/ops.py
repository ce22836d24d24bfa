"""Tensor operations of the mapping spec: shape and dtype inference from metadata, and execution.

Every op answers two questions. :meth:`Op.infer` takes an input shape and dtype and returns the
output's (or raises :class:`OpError` saying why the op does not apply); it reads no data.
:meth:`Op.apply` runs the op on a numpy array. The plan calls ``infer`` for every output
before anything is read; writers later call ``apply`` through ``Output.compute()``.

Many-to-one (:class:`Concat`, :class:`Stack`) and one-to-many (:class:`Split`) ops have the
same two halves over lists.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import by_name, dtype_name, is_floating

__all__ = [
    "OpError",
    "Op",
    "Transpose",
    "Reshape",
    "Slice",
    "Cast",
    "Squeeze",
    "ExpandDims",
    "FnOp",
    "Split",
    "Concat",
    "Stack",
    "ExecutionProblem",
    "blocked_transpose_2d",
    "copy_c_order",
    "parse_slice",
]

Shape = tuple[int, ...]

# Element count above which 2-D transposes and casts work in blocks (smaller ones go straight
# through numpy, where the per-call overhead dominates).
_BLOCKED_MIN_ELEMENTS = 1 << 16
# Transpose tiles: _TILE source rows by _TILE_WIDTH source columns. Thin, wide tiles beat
# square ones here: each output row of a tile is _TILE contiguous elements (a cache line for
# float32) and the source rows are read sequentially. Medians of 7 on the project machine:
# 4096x4096 float32 43-52 ms against 121 ms with 64x64 tiles, 8192x8192 121-164 ms against 320.
_TILE = 16
_TILE_WIDTH = 1024
_CAST_CHUNK = 1 << 20  # elements per chunk of a cast: bounds the temporaries of the checks


class OpError(Exception):
    """An op does not apply to the shape/dtype it was given (a plan problem, not a crash)."""


class ExecutionProblem(Exception):
    """An op failed on the data at execution time: a cast met values the target dtype cannot
    hold, or a callable returned another shape or dtype than the plan inferred."""


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _normalize_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise OpError(f"{what}: axis {axis} is out of range for {ndim}-D shape")
    return axis % ndim


class Op:
    """One step of a rule's ``ops`` list."""

    #: The spec key (``transpose``, ``reshape``, ...).
    name = "op"

    def infer(self, shape: Shape, dtype: np.dtype, *, target: Shape | None = None) -> tuple[Shape, np.dtype]:
        """The output shape and dtype for an input of ``shape`` and ``dtype``.

        Args:
            target: The shape of the target tensor this output fills, when there is one
                (``reshape: target`` needs it).

        Raises:
            OpError: the op does not apply to this input.
        """
        raise NotImplementedError

    def apply(self, array: np.ndarray, out_shape: Shape, out_dtype: np.dtype) -> np.ndarray:
        """Run the op; ``out_shape``/``out_dtype`` are what :meth:`infer` said."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short text for the report (``transpose``, ``reshape [384, 12, 32]``)."""
        return self.name

    def to_spec(self) -> object:
        """The op in spec-file form (``"transpose"``, ``{"reshape": [384, 12, 32]}``)."""
        return self.name

    def __repr__(self) -> str:
        return f"<op {self.describe()}>"


# -- transpose ---------------------------------------------------------------------------------


def blocked_transpose_2d(a: np.ndarray, *, tile: int = _TILE, width: int = _TILE_WIDTH) -> np.ndarray:
    """``a.T`` as a new C-contiguous array, copied in cache-sized tiles."""
    a = np.asarray(a)
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    copy_c_order(a.T, out, tile=tile, width=width)
    return out


def copy_c_order(src: np.ndarray, out: np.ndarray, *, tile: int = _TILE, width: int = _TILE_WIDTH) -> None:
    """``out[...] = src`` for a C-contiguous ``out``, fast when ``src`` is a transposed view.

    A naive copy of a transposed view walks one of the two arrays with a stride of a whole row
    per element. When ``src`` is 2-D and its first axis is the contiguous one (the transpose
    of a C-ordered array, or of a block of its columns), the copy goes in tiles of ``width``
    rows by ``tile`` columns of ``src``, which keeps both sides in cache. Anything else is an
    ordinary ``np.copyto`` (which also converts the byte order if the two differ).
    """
    itemsize = src.dtype.itemsize
    if not (
        src.ndim == 2
        and src.size >= _BLOCKED_MIN_ELEMENTS
        and src.shape[0] >= tile  # a few long rows: numpy's own copy streams them well
        and src.strides[0] == itemsize
        and src.strides[1] != itemsize
    ):
        np.copyto(out, src, casting="equiv")
        return
    rows, cols = src.shape
    for c in range(0, cols, tile):
        c_end = min(c + tile, cols)
        for r in range(0, rows, width):
            r_end = min(r + width, rows)
            out[r:r_end, c:c_end] = src[r:r_end, c:c_end]


@dataclass(frozen=True, repr=False)
class Transpose(Op):
    """Permute axes: reverse them (``transpose``) or as given (``{transpose: [2, 3, 1, 0]}``)."""

    axes: tuple[int, ...] | None = None
    name = "transpose"

    def _axes(self, ndim: int) -> tuple[int, ...]:
        if self.axes is None:
            return tuple(range(ndim - 1, -1, -1))
        if len(self.axes) != ndim:
            raise OpError(f"transpose {list(self.axes)}: gives {len(self.axes)} axes for a {ndim}-D shape")
        axes = tuple(_normalize_axis(a, ndim, f"transpose {list(self.axes)}") for a in self.axes)
        if sorted(axes) != list(range(ndim)):
            raise OpError(f"transpose {list(self.axes)}: not a permutation of the {ndim} axes")
        return axes

    def infer(self, shape, dtype, *, target=None):
        axes = self._axes(len(shape))
        return tuple(shape[a] for a in axes), np.dtype(dtype)

    def apply(self, array, out_shape, out_dtype):
        axes = self._axes(array.ndim)
        if axes == tuple(range(array.ndim)):
            return array
        if array.ndim == 2 and array.size >= _BLOCKED_MIN_ELEMENTS:
            return blocked_transpose_2d(np.asarray(array))
        return np.transpose(array, axes).copy(order="C")

    def view(self, array: np.ndarray) -> np.ndarray:
        """The transposed array as a view of ``array`` (no copy; usually not C-contiguous)."""
        return np.transpose(array, self._axes(array.ndim))

    def describe(self):
        return "transpose" if self.axes is None else f"transpose {list(self.axes)}"

    def to_spec(self):
        return "transpose" if self.axes is None else {"transpose": list(self.axes)}


# -- reshape -----------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Reshape(Op):
    """Reshape to a shape (one ``-1`` allowed) or to the target tensor's shape (``"target"``)."""

    shape: tuple[int, ...] | str = ()
    name = "reshape"

    def infer(self, shape, dtype, *, target=None):
        size = math.prod(shape)  # exact: numpy's int64 product would wrap around
        if self.shape == "target":
            if target is None:
                raise OpError("reshape: target needs a target (a live model, or plan's --target MODEL.keras) that has this output")
            wanted: tuple[int, ...] = tuple(target)
        else:
            wanted = tuple(self.shape)  # type: ignore[arg-type]
        if any(d < -1 for d in wanted) or wanted.count(-1) > 1:
            raise OpError(f"reshape {_fmt(wanted)}: dimensions are sizes, with at most one -1")
        if wanted.count(-1) == 1:
            known = math.prod(d for d in wanted if d != -1)
            if known == 0 or size % known:
                raise OpError(f"reshape {_fmt(wanted)}: cannot reshape {_fmt(shape)} ({size} elements)")
            wanted = tuple(size // known if d == -1 else d for d in wanted)
        if math.prod(wanted) != size:
            raise OpError(
                f"reshape {_fmt(wanted)}: cannot reshape {_fmt(shape)} ({size} elements) into "
                f"{math.prod(wanted)} elements"
            )
        return wanted, np.dtype(dtype)

    def apply(self, array, out_shape, out_dtype):
        return np.reshape(array, out_shape)

    def describe(self):
        return "reshape target" if self.shape == "target" else f"reshape {_fmt(self.shape)}"  # type: ignore[arg-type]

    def to_spec(self):
        return {"reshape": "target" if self.shape == "target" else list(self.shape)}


# -- slice -------------------------------------------------------------------------------------

_INT = re.compile(r"^[+-]?\d+$")


def parse_slice(text: str) -> tuple[Any, ...]:
    """Parse numpy index text (``"[:, :128]"``, ``"[..., 1::2]"``, ``"[0]"``) without eval.

    Items: integers, ``start:stop:step`` slices (any part may be empty), ``...`` and ``None``.

    Raises:
        ValueError: the text is not of that form.
    """
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(f"slice {text!r}: write it in brackets, like numpy: \"[:, :128]\"")
    body = body[1:-1].strip()
    if not body:
        raise ValueError(f"slice {text!r}: empty index")
    items: list[Any] = []
    for raw in body.split(","):
        item = raw.strip()
        if item == "...":
            if Ellipsis in items:
                raise ValueError(f"slice {text!r}: more than one '...'")
            items.append(Ellipsis)
        elif item in ("None", "newaxis", "np.newaxis"):
            items.append(None)
        elif ":" in item:
            parts = [p.strip() for p in item.split(":")]
            if len(parts) > 3:
                raise ValueError(f"slice {text!r}: {item!r} has more than two ':'")
            values: list[int | None] = []
            for p in parts:
                if p == "":
                    values.append(None)
                elif _INT.match(p):
                    values.append(int(p))
                else:
                    raise ValueError(f"slice {text!r}: {p!r} is not an integer")
            while len(values) < 3:
                values.append(None)
            if values[2] == 0:
                raise ValueError(f"slice {text!r}: step cannot be zero")
            items.append(slice(*values))
        elif _INT.match(item):
            items.append(int(item))
        else:
            raise ValueError(f"slice {text!r}: {item!r} is not an integer, a slice, '...' or None")
    return tuple(items)


@dataclass(frozen=True, repr=False)
class Slice(Op):
    """Basic numpy indexing given as text: ``{slice: "[:, :128]"}``."""

    text: str = "[...]"
    name = "slice"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", parse_slice(self.text))

    def infer(self, shape, dtype, *, target=None):
        index: tuple[Any, ...] = self._index  # type: ignore[attr-defined]
        consuming = [i for i in index if i is not None and i is not Ellipsis]
        if len(consuming) > len(shape):
            raise OpError(f"slice {self.text}: indexes {len(consuming)} axes of a {len(shape)}-D shape {_fmt(shape)}")
        if Ellipsis in index:
            at = index.index(Ellipsis)
            fill = (slice(None),) * (len(shape) - len(consuming))
            index = index[:at] + fill + index[at + 1 :]
        else:
            index = index + (slice(None),) * (len(shape) - len(consuming))
        out: list[int] = []
        axis = 0
        for item in index:
            if item is None:
                out.append(1)
                continue
            n = shape[axis]
            if isinstance(item, slice):
                out.append(len(range(*item.indices(n))))
            else:
                if not -n <= item < n:
                    raise OpError(f"slice {self.text}: index {item} is out of range for axis {axis} of size {n} in {_fmt(shape)}")
            axis += 1
        if math.prod(shape) > 0 and math.prod(out) == 0:
            # numpy clips out-of-range slices to nothing; for weights that is always a mistake
            raise OpError(f"slice {self.text}: selects nothing from {_fmt(shape)} (out of range?)")
        return tuple(out), np.dtype(dtype)

    def apply(self, array, out_shape, out_dtype):
        return array[self._index]  # type: ignore[attr-defined]

    def describe(self):
        return f"slice {self.text}"

    def to_spec(self):
        return {"slice": self.text}


# -- cast --------------------------------------------------------------------------------------


def _castable(dtype: np.dtype) -> bool:
    return dtype.kind in "biu" or is_floating(dtype)


def lossy_cast(src: np.dtype, dst: np.dtype) -> str | None:
    """What a cast from ``src`` to ``dst`` loses whatever the values, or None: floats to
    integers or booleans lose every fraction, integers to booleans every value but 0 and 1.
    (Rounding to a narrower float, and values out of an integer type's range, are not
    counted here: the first is what a cast is for, the second is checked on the data.)"""
    src, dst = np.dtype(src), np.dtype(dst)
    if is_floating(src) and dst.kind in "biu":
        kind = "booleans" if dst.kind == "b" else "integers"
        return f"{dtype_name(src)} -> {dtype_name(dst)} truncates floats to {kind}, dropping every fraction"
    if src.kind in "iu" and dst.kind == "b":
        return f"{dtype_name(src)} -> bool keeps only zero or non-zero"
    return None


@dataclass(frozen=True, repr=False)
class Cast(Op):
    """Convert to another dtype, rounding to nearest even.

    A cast that would turn finite values into infinities (float -> narrower float), or put
    values outside an integer type's range (or NaN) into it, fails at execution unless
    ``allow_overflow`` is set. A cast that loses information whatever the values (floats to
    integers or booleans, integers to booleans: :func:`lossy_cast`) is refused when the plan
    is built unless ``allow_lossy`` is set.
    """

    dtype: np.dtype = np.dtype("float32")
    allow_overflow: bool = False
    note: str = ""
    allow_lossy: bool = False
    name = "cast"

    def infer(self, shape, dtype, *, target=None):
        src = np.dtype(dtype)
        if src == self.dtype:
            return tuple(shape), src
        if not (_castable(src) and _castable(self.dtype)):
            raise OpError(f"cast {dtype_name(self.dtype)}: cannot cast {dtype_name(src)} to {dtype_name(self.dtype)}")
        lost = None if self.allow_lossy else lossy_cast(src, self.dtype)
        if lost:
            raise OpError(f"{lost} (a lossy cast); set allow_lossy: true on the cast op if that is what you want")
        return tuple(shape), np.dtype(self.dtype)

    def apply(self, array, out_shape, out_dtype):
        if array.dtype == self.dtype:
            return array
        return cast_array(array, self.dtype, allow_overflow=self.allow_overflow)

    def describe(self):
        text = f"cast {dtype_name(self.dtype)}"
        if self.allow_overflow:
            text += " (overflow allowed)"
        if self.allow_lossy:
            text += " (lossy allowed)"
        if self.note:
            text += f" ({self.note})"
        return text

    def to_spec(self):
        flags = {k: True for k in ("allow_overflow", "allow_lossy") if getattr(self, k)}
        if flags:
            return {"cast": {"dtype": dtype_name(self.dtype), **flags}}
        return {"cast": dtype_name(self.dtype)}


def _check_int_range(chunk: np.ndarray, dtype: np.dtype) -> str | None:
    if chunk.size == 0:
        return None
    info = np.iinfo(dtype)
    if chunk.dtype.kind == "f" or is_floating(chunk.dtype):
        wide = chunk.astype(np.float64)
        if np.isnan(wide).any():
            return f"NaN cannot be cast to {dtype_name(dtype)}"
        # float -> int truncates toward zero, so anything in (min - 1, max + 1) fits
        lo, hi = float(wide.min()), float(wide.max())
        if lo <= info.min - 1 or hi >= info.max + 1:
            return f"values in [{lo}, {hi}] do not fit {dtype_name(dtype)} [{info.min}, {info.max}]"
        return None
    if chunk.dtype.kind == "b":
        return None
    lo, hi = int(chunk.min()), int(chunk.max())
    if lo < info.min or hi > info.max:
        return f"values in [{lo}, {hi}] do not fit {dtype_name(dtype)} [{info.min}, {info.max}]"
    return None


def cast_array(array: np.ndarray, dtype: np.dtype, *, allow_overflow: bool = False) -> np.ndarray:
    """``array`` converted to ``dtype``, rounding to nearest even, in chunks, checking overflow.

    The result is written chunk by chunk into one preallocated array, so the temporaries stay
    small whatever the tensor's size. Conversions from float64 or wide integers into bfloat16
    or float8 round once, exactly (ml_dtypes' own cast goes through float32 and can round
    twice).

    Raises:
        ExecutionProblem: finite values became infinite, or values do not fit an integer type,
            and ``allow_overflow`` is False.
    """
    dtype = np.dtype(dtype)
    out = np.empty(array.shape, dtype=dtype)
    src = np.reshape(array, -1)  # a copy only when the input is not contiguous
    dst = out.reshape(-1)
    check_inf = not allow_overflow and _can_overflow_float(src.dtype, dtype)
    check_int = not allow_overflow and dtype.kind in "iu"
    via_odd = _needs_round_to_odd(src.dtype, dtype)

    def cast_chunk(start: int) -> str | None:
        chunk = src[start : start + _CAST_CHUNK]
        if check_int:
            problem = _check_int_range(chunk, dtype)
            if problem:
                return problem
        part = dst[start : start + _CAST_CHUNK]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
            if via_odd:
                np.copyto(part, _float32_round_to_odd(chunk), casting="unsafe")
            else:
                np.copyto(part, chunk, casting="unsafe")
        if check_inf and _may_overflow(chunk, dtype):
            made = int(np.count_nonzero(np.isinf(part)))
            had = int(np.count_nonzero(np.isinf(chunk))) if is_floating(chunk.dtype) else 0
            if made > had:
                return (
                    f"{made - had} finite value(s) overflow to inf in {dtype_name(dtype)} "
                    f"(largest {dtype_name(dtype)} is {_finfo_max(dtype)}); scale the "
                    "weights or set allow_overflow: true on the rule"
                )
        return None

    starts = range(0, src.size, _CAST_CHUNK)
    # numpy releases the GIL in casts and reductions: big tensors use the second core too
    problems = _cast_pool().map(cast_chunk, starts) if len(starts) > 1 else map(cast_chunk, starts)
    for problem in problems:  # in chunk order: the first problem is the one reported
        if problem:
            raise ExecutionProblem(problem)
    return out


_CAST_THREADS = 2
_cast_executor = None
_cast_lock = threading.Lock()


def _cast_pool():  # type: ignore[no-untyped-def]
    """The worker threads big casts share (created on first use)."""
    global _cast_executor
    with _cast_lock:
        if _cast_executor is None:
            from concurrent.futures import ThreadPoolExecutor

            _cast_executor = ThreadPoolExecutor(_CAST_THREADS, thread_name_prefix="ckptconv-cast")
        return _cast_executor


def _finfo_max(dtype: np.dtype) -> float:
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype).max)


def _can_overflow_float(src: np.dtype, dst: np.dtype) -> bool:
    """Can casting ``src`` to the floating type ``dst`` make infinities out of finite values?"""
    if not is_floating(dst) or src.kind == "b":
        return False
    if is_floating(src):
        return _finfo_max(src) > _finfo_max(dst)
    return src.kind in "iu" and float(np.iinfo(src).max) > _finfo_max(dst)


def _may_overflow(chunk: np.ndarray, dtype: np.dtype) -> bool:
    """Cheap pre-check: only chunks whose range reaches past the largest finite value (or that
    hold inf/NaN) need the exact count of new infinities."""
    if chunk.size == 0:
        return False
    lo, hi = chunk.min(), chunk.max()
    with np.errstate(invalid="ignore", over="ignore"):
        reach = max(abs(float(lo)), abs(float(hi)))
    return not np.isfinite(reach) or reach > _finfo_max(dtype)


_ML_FLOATS = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def _needs_round_to_odd(src: np.dtype, dst: np.dtype) -> bool:
    """ml_dtypes converts float64 (and wide ints) through float32: two roundings, unless the
    first one rounds to odd."""
    if dtype_name(dst) not in _ML_FLOATS:
        return False
    return src == np.dtype(np.float64) or (src.kind in "iu" and src.itemsize >= 4)


def _float32_round_to_odd(chunk: np.ndarray) -> np.ndarray:
    """float32 values that, rounded again to nearest even into any narrower float with the same
    exponent range, give the correctly rounded result (round-to-odd keeps a sticky bit)."""
    x = chunk.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        r = x.astype(np.float32)
        wide = r.astype(np.float64)
        inexact = wide != x
        inexact &= ~np.isnan(x)
        # truncate toward zero, then make the last bit odd where the conversion was inexact
        away = inexact & (np.abs(wide) > np.abs(x))
        r[away] = np.nextafter(r[away], np.float32(0))
    bits = r.view(np.uint32)
    bits |= inexact.astype(np.uint32)
    return r


# -- squeeze / expand_dims ---------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Squeeze(Op):
    """Remove size-1 axes: all of them (``squeeze``) or the given ones (``{squeeze: 0}``)."""

    axis: tuple[int, ...] | None = None
    name = "squeeze"

    def infer(self, shape, dtype, *, target=None):
        if self.axis is None:
            return tuple(d for d in shape if d != 1), np.dtype(dtype)
        axes = {_normalize_axis(a, len(shape), self.describe()) for a in self.axis}
        for a in sorted(axes):
            if shape[a] != 1:
                raise OpError(f"{self.describe()}: axis {a} of {_fmt(shape)} has size {shape[a]}, not 1")
        return tuple(d for i, d in enumerate(shape) if i not in axes), np.dtype(dtype)

    def apply(self, array, out_shape, out_dtype):
        return np.reshape(array, out_shape)

    def describe(self):
        if self.axis is None:
            return "squeeze"
        return f"squeeze {self.axis[0] if len(self.axis) == 1 else list(self.axis)}"

    def to_spec(self):
        return "squeeze" if self.axis is None else {"squeeze": list(self.axis)}


@dataclass(frozen=True, repr=False)
class ExpandDims(Op):
    """Insert size-1 axes at the given positions of the result (numpy ``expand_dims``)."""

    axis: tuple[int, ...] = (0,)
    name = "expand_dims"

    def infer(self, shape, dtype, *, target=None):
        ndim = len(shape) + len(self.axis)
        axes = {_normalize_axis(a, ndim, self.describe()) for a in self.axis}
        if len(axes) != len(self.axis):
            raise OpError(f"{self.describe()}: repeated axis")
        rest = iter(shape)
        return tuple(1 if i in axes else next(rest) for i in range(ndim)), np.dtype(dtype)

    def apply(self, array, out_shape, out_dtype):
        return np.reshape(array, out_shape)

    def describe(self):
        return f"expand_dims {self.axis[0] if len(self.axis) == 1 else list(self.axis)}"

    def to_spec(self):
        return {"expand_dims": list(self.axis)}


# -- Python callables --------------------------------------------------------------------------

ShapeSpec = Sequence[int] | Callable[[Shape], Sequence[int]] | None
DtypeSpec = str | np.dtype | type | Callable[[np.dtype], Any] | None


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


@dataclass(frozen=True, repr=False)
class FnOp(Op):
    """A Python callable ``fn(array) -> array`` (API only; spec files cannot name code).

    The plan needs the result's shape and dtype before reading data. Give them with ``shape``
    and ``dtype`` (values, or callables of the input shape / dtype). Without them the plan calls
    ``fn`` once on a probe: a read-only, all-zero, broadcast array of the input's shape and
    dtype (no tensor data is read; the probe itself takes no memory, whatever ``fn`` allocates
    does). At execution the result must have the shape and dtype the plan inferred.
    """

    fn: Callable[[np.ndarray], Any] = lambda a: a
    shape: ShapeSpec = None
    dtype: DtypeSpec = None
    name = "fn"

    def infer(self, shape, dtype, *, target=None):
        shape = tuple(shape)
        src = np.dtype(dtype)
        out_shape: Shape | None = None
        out_dtype: np.dtype | None = None
        if self.shape is not None:
            out_shape = tuple(int(d) for d in (self.shape(shape) if callable(self.shape) else self.shape))
        if self.dtype is not None:
            d = self.dtype(src) if callable(self.dtype) and not isinstance(self.dtype, type) else self.dtype
            out_dtype = by_name(d) if isinstance(d, str) else np.dtype(d)
        if out_shape is None or out_dtype is None:
            probe = np.broadcast_to(np.zeros((), dtype=src), shape)
            try:
                result = np.asarray(self.fn(probe))
            except Exception as e:  # the user's code: any failure is a plan problem
                raise OpError(
                    f"callable {_fn_name(self.fn)} failed on a zero probe of shape {_fmt(shape)} "
                    f"{dtype_name(src)} ({type(e).__name__}: {e}); pass "
                    "{'fn': f, 'shape': ..., 'dtype': ...} to declare its result"
                ) from e
            out_shape = result.shape if out_shape is None else out_shape
            out_dtype = result.dtype if out_dtype is None else out_dtype
        return tuple(out_shape), np.dtype(out_dtype)

    def apply(self, array, out_shape, out_dtype):
        result = np.asarray(self.fn(array))
        if result.shape != tuple(out_shape) or result.dtype != out_dtype:
            raise ExecutionProblem(
                f"callable {_fn_name(self.fn)} returned shape {_fmt(result.shape)} "
                f"{dtype_name(result.dtype)}, the plan expected {_fmt(out_shape)} {dtype_name(out_dtype)}"
            )
        return result

    def describe(self):
        return f"fn {_fn_name(self.fn)}"

    def to_spec(self):
        return {"fn": self.fn, "shape": self.shape, "dtype": self.dtype}


# -- many-to-one and one-to-many ---------------------------------------------------------------


def _same_dtype(what: str, dtypes: Sequence[np.dtype]) -> np.dtype:
    first = np.dtype(dtypes[0])
    for d in dtypes[1:]:
        if np.dtype(d) != first:
            names = ", ".join(dtype_name(x) for x in dtypes)
            raise OpError(f"{what}: sources have different dtypes ({names}); cast them with a rule first")
    return first


@dataclass(frozen=True, repr=False)
class Concat(Op):
    """Join several sources along an existing axis (``concat: {axis: 1}``)."""

    axis: int = 0
    name = "concat"

    def infer_many(self, shapes: Sequence[Shape], dtypes: Sequence[np.dtype]) -> tuple[Shape, np.dtype]:
        """Output shape and dtype of joining ``shapes``. Raises OpError."""
        dtype = _same_dtype(self.describe(), dtypes)
        ndim = len(shapes[0])
        if ndim == 0:
            raise OpError(f"{self.describe()}: cannot concatenate scalars (use stack)")
        axis = _normalize_axis(self.axis, ndim, self.describe())
        for s in shapes[1:]:
            if len(s) != ndim or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis):
                listed = ", ".join(_fmt(x) for x in shapes)
                raise OpError(f"{self.describe()}: shapes {listed} differ outside axis {self.axis}")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out), dtype

    def apply_many(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Run the join."""
        return np.concatenate(arrays, axis=self.axis)

    def describe(self):
        return f"concat axis={self.axis}"

    def to_spec(self):
        return {"axis": self.axis}


@dataclass(frozen=True, repr=False)
class Stack(Op):
    """Join several same-shaped sources along a new axis (``stack: {axis: 0}``)."""

    axis: int = 0
    name = "stack"

    def infer_many(self, shapes: Sequence[Shape], dtypes: Sequence[np.dtype]) -> tuple[Shape, np.dtype]:
        """Output shape and dtype of stacking ``shapes``. Raises OpError."""
        dtype = _same_dtype(self.describe(), dtypes)
        for s in shapes[1:]:
            if tuple(s) != tuple(shapes[0]):
                listed = ", ".join(_fmt(x) for x in shapes)
                raise OpError(f"{self.describe()}: shapes differ ({listed})")
        ndim = len(shapes[0]) + 1
        axis = _normalize_axis(self.axis, ndim, self.describe())
        out = list(shapes[0])
        out.insert(axis, len(shapes))
        return tuple(out), dtype

    def apply_many(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Run the stack."""
        return np.stack(arrays, axis=self.axis)

    def describe(self):
        return f"stack axis={self.axis}"

    def to_spec(self):
        return {"axis": self.axis}


@dataclass(frozen=True, repr=False)
class Split(Op):
    """Cut one source into parts along an axis: ``parts`` equal ones, or the given ``sizes``."""

    axis: int = 0
    parts: int | None = None
    sizes: tuple[int, ...] | None = None
    name = "split"

    @property
    def count(self) -> int:
        """How many outputs the split makes."""
        return self.parts if self.parts is not None else len(self.sizes or ())

    def infer_split(self, shape: Shape, dtype: np.dtype) -> list[tuple[Shape, np.dtype]]:
        """Shapes and dtypes of the parts. Raises OpError."""
        if not shape:
            raise OpError(f"{self.describe()}: cannot split a scalar")
        axis = _normalize_axis(self.axis, len(shape), self.describe())
        n = shape[axis]
        sizes = self._sizes(n, shape)
        out = []
        for size in sizes:
            s = list(shape)
            s[axis] = size
            out.append((tuple(s), np.dtype(dtype)))
        return out

    def _sizes(self, n: int, shape: Shape) -> list[int]:
        if self.parts is not None:
            if n % self.parts:
                raise OpError(f"{self.describe()}: axis {self.axis} of {_fmt(shape)} has size {n}, not divisible by {self.parts}")
            return [n // self.parts] * self.parts
        sizes = list(self.sizes or ())
        if sizes.count(-1) == 1:
            rest = n - sum(s for s in sizes if s != -1)
            if rest < 0:
                raise OpError(f"{self.describe()}: sizes exceed axis {self.axis} of {_fmt(shape)} (size {n})")
            sizes = [rest if s == -1 else s for s in sizes]
        if sum(sizes) != n:
            raise OpError(f"{self.describe()}: sizes add up to {sum(sizes)}, axis {self.axis} of {_fmt(shape)} has size {n}")
        return sizes

    def apply_split(self, array: np.ndarray) -> list[np.ndarray]:
        """The parts, as views of ``array``."""
        axis = self.axis % array.ndim
        sizes = self._sizes(array.shape[axis], array.shape)
        bounds = np.cumsum(sizes)[:-1]
        return list(np.split(array, bounds, axis=axis))

    def describe(self):
        how = f"parts={self.parts}" if self.parts is not None else f"sizes={list(self.sizes or ())}"
        return f"split axis={self.axis} {how}"

    def to_spec(self):
        if self.parts is not None:
            return {"axis": self.axis, "parts": self.parts}
        return {"axis": self.axis, "sizes": list(self.sizes or ())}
