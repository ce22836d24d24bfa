"""Casts: the one rule for converting a tensor to another dtype, on metadata and on data.

On metadata, :func:`cast_problem` says whether a cast may happen at all (booleans, integers and
floats only; a cast that loses information whatever the values, :func:`lossy_cast`, only when
allowed). On data, :func:`cast_array` rounds to nearest even once from the source dtype (also
into bfloat16 and float8, where ml_dtypes alone would round twice from float64) and refuses
finite values that become infinite and values outside an integer type's range. The spec's
``cast`` op (:class:`Cast`), the ``dtype``/``--dtype`` default and ``load_into`` into variables
of another dtype all go through these.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

from ..dtypes import dtype_name, is_floating
from .ops import ExecutionProblem, Op, OpError

__all__ = ["Cast", "CastOverflow", "cast_array", "cast_problem", "lossy_cast", "lossy_default"]

_CAST_CHUNK = 1 << 20  # elements per chunk of a cast: bounds the temporaries of the checks


def _castable(dtype: np.dtype) -> bool:
    return dtype.kind in "biu" or is_floating(dtype)


def cast_problem(src: np.dtype, dst: np.dtype, *, allow_lossy: bool = False) -> str | None:
    """Why ``src`` cannot be cast to ``dst`` on metadata alone, or None when it can: the one
    rule for the spec's ``cast`` op, the ``dtype`` option and ``load_into`` into a variable of
    another dtype. Only booleans, integers and floats cast; a cast that loses information
    whatever the values (:func:`lossy_cast`) needs ``allow_lossy``."""
    src, dst = np.dtype(src), np.dtype(dst)
    if src == dst:
        return None
    if not (_castable(src) and _castable(dst)):
        return f"cannot cast {dtype_name(src)} to {dtype_name(dst)}"
    lost = None if allow_lossy else lossy_cast(src, dst)
    if lost:
        return f"{lost} (a lossy cast)"
    return None


def lossy_cast(src: np.dtype, dst: np.dtype) -> str | None:
    """What a cast from ``src`` to ``dst`` loses whatever the values, or None: floats to
    integers or booleans lose every fraction, integers to booleans every value but 0 and 1.
    (Rounding to a narrower float, and values out of an integer type's range, are not
    counted here: the first is what a cast is for, the second is checked on the data.)"""
    src, dst = np.dtype(src), np.dtype(dst)
    if is_floating(src) and dst.kind in "biu":
        return f"{dtype_name(src)} -> {dtype_name(dst)} {_truncation('floats', dst)}"
    if src.kind in "iu" and dst.kind == "b":
        return f"{dtype_name(src)} -> bool keeps only zero or non-zero"
    return None


def lossy_default(dtype: np.dtype) -> str | None:
    """What a default dtype (``--dtype``), which casts floating-point weights only, loses on
    every weight it casts whatever the values, or None: an integer or bool type drops every
    fraction (:func:`lossy_cast` from any float). Known from the dtype alone, before any file
    is read."""
    dtype = np.dtype(dtype)
    return _truncation("floating-point weights", dtype) if dtype.kind in "biu" else None


def _truncation(what: str, dst: np.dtype) -> str:
    """How a cast of floats (``what``) to the integer or bool type ``dst`` loses information."""
    kind = "booleans" if dst.kind == "b" else "integers"
    return f"truncates {what} to {kind}, dropping every fraction"


@dataclass(frozen=True, repr=False)
class Cast(Op):
    """Convert to another dtype, rounding to nearest even.

    A cast that would turn finite values into infinities (float -> narrower float; into NaN
    for the float8 types without infinities), or put
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
        lost = cast_problem(src, self.dtype, allow_lossy=self.allow_lossy)
        if lost:
            raise OpError(f"{lost}; set allow_lossy: true on the cast op if that is what you want")
        return tuple(shape), np.dtype(self.dtype)

    def apply(self, array, out_shape, out_dtype):
        if array.dtype == self.dtype:
            return array
        try:
            return cast_array(array, self.dtype, allow_overflow=self.allow_overflow)
        except CastOverflow as e:  # what to do about it, in a spec's terms
            if self.note:  # the default or target dtype's cast: the rule's flag
                raise CastOverflow(e.found, e.dtype, ALLOW_OVERFLOW_HINT) from None
            from .suggestion import yaml_value  # (the one writer of a rule's YAML flow text)

            spec = yaml_value(replace(self, allow_overflow=True).to_spec())
            raise CastOverflow(e.found, e.dtype, CAST_OP_OVERFLOW_HINT.format(spec=spec)) from None

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


ALLOW_OVERFLOW_HINT = (
    "scale the weights, or set allow_overflow: true on the spec rule that maps them (with no "
    "spec of your own, a spec of one rule {from: '**', allow_overflow: true} for every tensor)"
)
"""What a cast overflow's message tells a spec's user to do when the cast is the default (or
target) dtype's: the rule's ``allow_overflow`` flag."""

CAST_OP_OVERFLOW_HINT = "scale the weights, or set allow_overflow: true on this cast op ({spec})"
"""The same for a cast op of a rule: its own flag (``{spec}``: the op as it would be written)."""


@dataclass(frozen=True)
class _Overflow:
    """What one chunk of a cast found. ``kind`` ``int`` (into an integer type): ``nan`` NaN
    values and ``count`` values outside its range, the chunk's other values spanning
    ``lo``..``hi``; ``inf`` (into a float type): ``count`` finite values made infinite (or NaN
    in a float8 type without infinities)."""

    kind: str
    count: int
    nan: int = 0
    lo: float = 0
    hi: float = 0


def _check_int_range(chunk: np.ndarray, dtype: np.dtype) -> _Overflow | None:
    if chunk.size == 0 or chunk.dtype.kind == "b":
        return None
    info = np.iinfo(dtype)
    if chunk.dtype.kind == "f" or is_floating(chunk.dtype):
        wide = chunk.astype(np.float64)
        nan = int(np.count_nonzero(np.isnan(wide)))
        if nan == wide.size:
            return _Overflow("int", 0, nan, np.nan, np.nan)
        if nan:  # the span of the other values: fmin/fmax skip NaN
            lo, hi = float(np.fmin.reduce(wide)), float(np.fmax.reduce(wide))
        else:
            lo, hi = float(wide.min()), float(wide.max())
        # float -> int truncates toward zero, so anything in (min - 1, max + 1) fits
        out = 0
        if lo <= info.min - 1 or hi >= info.max + 1:
            out = int(np.count_nonzero((wide <= info.min - 1) | (wide >= info.max + 1)))
        return _Overflow("int", out, nan, lo, hi) if nan or out else None
    lo, hi = int(chunk.min()), int(chunk.max())
    if lo < info.min or hi > info.max:
        out = int(np.count_nonzero(chunk < info.min)) + int(np.count_nonzero(chunk > info.max))
        return _Overflow("int", out, 0, lo, hi)
    return None


def _overflow_message(found: list[_Overflow], dtype: np.dtype) -> str:
    """One line for what the chunks found, counted over all of them: into an integer type,
    the NaN values and the values out of its range (both, when there are both)."""
    name = dtype_name(dtype)
    count = sum(f.count for f in found)
    if found[0].kind == "inf":
        to = "inf" if _has_inf(dtype) else "NaN"
        return f"{count} finite value(s) overflow to {to} in {name} (largest {name} is {_finfo_max(dtype)})"
    nan = sum(f.nan for f in found)
    if not count:
        return f"{nan} NaN value(s) cannot be cast to {name}, which has no NaN"
    info = np.iinfo(dtype)
    spans = [f for f in found if f.count]  # (a chunk of NaN alone has no span)
    lo, hi = min(f.lo for f in spans), max(f.hi for f in spans)
    both = f"{nan} NaN value(s) and " if nan else ""
    return (f"{both}{count} value(s) out of {name}'s range [{info.min}, {info.max}] (the values span "
            f"[{lo}, {hi}])")


class CastOverflow(ExecutionProblem):
    """A cast met values its dtype cannot hold (see :func:`cast_array`); the message counts
    them. ``found`` (per chunk) and ``dtype`` let a cast made piece by piece count over the
    whole tensor (:meth:`merged`); ``hint`` says what to do about it."""

    def __init__(self, found: list[_Overflow], dtype: np.dtype, hint: str = "") -> None:
        self.found, self.dtype, self.hint = found, dtype, hint
        text = _overflow_message(found, dtype)
        super().__init__(f"{text}; {hint}" if hint else text)

    def merged(self, more: CastOverflow) -> CastOverflow:
        """This overflow and ``more`` (found in a later piece of the same tensor) as one."""
        return CastOverflow([*self.found, *more.found], self.dtype, self.hint)


def cast_array(array: np.ndarray, dtype: np.dtype, *, allow_overflow: bool = False) -> np.ndarray:
    """``array`` converted to ``dtype``, rounding to nearest even, in chunks, checking overflow.

    The result is written chunk by chunk into one preallocated array, so the temporaries stay
    small whatever the tensor's size. Conversions from float64 or wide integers into bfloat16
    or float8 round once, exactly (ml_dtypes' own cast goes through float32 and can round
    twice).

    Raises:
        CastOverflow: finite values became infinite, or values do not fit an integer type
            (or are NaN), and ``allow_overflow`` is False; the message counts them over the
            whole tensor (NaN and values out of range both, when there are both). With ``allow_overflow``, they are cast as numpy casts them (inf or
            NaN; an integer wraps around, 300 -> 44 in int8).
    """
    dtype = np.dtype(dtype)
    out = np.empty(array.shape, dtype=dtype)
    src = np.reshape(array, -1)  # a copy only when the input is not contiguous
    dst = out.reshape(-1)
    check_inf = not allow_overflow and _can_overflow_float(src.dtype, dtype)
    check_int = not allow_overflow and dtype.kind in "iu"
    via_odd = _needs_round_to_odd(src.dtype, dtype)

    def cast_chunk(start: int) -> _Overflow | None:
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
            # finite values made infinite, or NaN in a float8 type without infinities
            made = int(np.count_nonzero(~np.isfinite(part)))
            had = int(np.count_nonzero(~np.isfinite(chunk))) if is_floating(chunk.dtype) else 0
            if made > had:
                return _Overflow("inf", made - had)
        return None

    starts = range(0, src.size, _CAST_CHUNK)
    # numpy releases the GIL in casts and reductions: big tensors use the second core too
    problems = _cast_pool().map(cast_chunk, starts) if len(starts) > 1 else map(cast_chunk, starts)
    found = [p for p in problems if p is not None]  # in chunk order
    if found:
        raise CastOverflow(found, dtype)
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


def _has_inf(dtype: np.dtype) -> bool:
    """Does the floating type have infinities? (The ``fn``/``fnuz`` float8 types do not:
    what overflows them becomes NaN.)"""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isinf(np.array(np.inf, np.float32).astype(dtype)))


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


def _needs_round_to_odd(src: np.dtype, dst: np.dtype) -> bool:
    """ml_dtypes converts float64 (and wide ints) through float32: two roundings, unless the
    first one rounds to odd."""
    if dst.kind == "f" or not is_floating(dst):  # numpy's own floats round once
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
