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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import by_name, dtype_name
from ..store import shape_text

__all__ = [
    "OpError",
    "Op",
    "Transpose",
    "Reshape",
    "Slice",
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


class OpError(Exception):
    """An op does not apply to the shape/dtype it was given (a plan problem, not a crash)."""


class ExecutionProblem(Exception):
    """An op failed on the data at execution time: a cast met values the target dtype cannot
    hold, or a callable returned another shape or dtype than the plan inferred."""



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
            raise OpError(f"reshape {shape_text(wanted)}: dimensions are sizes, with at most one -1")
        if wanted.count(-1) == 1:
            known = math.prod(d for d in wanted if d != -1)
            if known == 0 or size % known:
                raise OpError(f"reshape {shape_text(wanted)}: cannot reshape {shape_text(shape)} ({size} elements)")
            wanted = tuple(size // known if d == -1 else d for d in wanted)
        if math.prod(wanted) != size:
            raise OpError(
                f"reshape {shape_text(wanted)}: cannot reshape {shape_text(shape)} ({size} elements) into "
                f"{math.prod(wanted)} elements"
            )
        return wanted, np.dtype(dtype)

    def apply(self, array, out_shape, out_dtype):
        return np.reshape(array, out_shape)

    def describe(self):
        return "reshape target" if self.shape == "target" else f"reshape {shape_text(self.shape)}"  # type: ignore[arg-type]

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
            raise OpError(f"slice {self.text}: indexes {len(consuming)} axes of a {len(shape)}-D shape {shape_text(shape)}")
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
                    raise OpError(f"slice {self.text}: index {item} is out of range for axis {axis} of size {n} in {shape_text(shape)}")
            axis += 1
        if math.prod(shape) > 0 and math.prod(out) == 0:
            # numpy clips out-of-range slices to nothing; for weights that is always a mistake
            raise OpError(f"slice {self.text}: selects nothing from {shape_text(shape)} (out of range?)")
        return tuple(out), np.dtype(dtype)

    def apply(self, array, out_shape, out_dtype):
        return array[self._index]  # type: ignore[attr-defined]

    def describe(self):
        return f"slice {self.text}"

    def to_spec(self):
        return {"slice": self.text}


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
                raise OpError(f"{self.describe()}: axis {a} of {shape_text(shape)} has size {shape[a]}, not 1")
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
                    f"callable {_fn_name(self.fn)} failed on a zero probe of shape {shape_text(shape)} "
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
                f"callable {_fn_name(self.fn)} returned shape {shape_text(result.shape)} "
                f"{dtype_name(result.dtype)}, the plan expected {shape_text(out_shape)} {dtype_name(out_dtype)}"
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
                listed = ", ".join(shape_text(x) for x in shapes)
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
                listed = ", ".join(shape_text(x) for x in shapes)
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
                raise OpError(f"{self.describe()}: axis {self.axis} of {shape_text(shape)} has size {n}, not divisible by {self.parts}")
            return [n // self.parts] * self.parts
        sizes = list(self.sizes or ())
        if sizes.count(-1) == 1:
            rest = n - sum(s for s in sizes if s != -1)
            if rest < 0:
                raise OpError(f"{self.describe()}: sizes exceed axis {self.axis} of {shape_text(shape)} (size {n})")
            sizes = [rest if s == -1 else s for s in sizes]
        if sum(sizes) != n:
            raise OpError(f"{self.describe()}: sizes add up to {sum(sizes)}, axis {self.axis} of {shape_text(shape)} has size {n}")
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
