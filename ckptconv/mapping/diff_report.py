"""What :func:`ckptconv.diff` returns: the report of a comparison, as plain data.

:class:`DiffReport` holds every pair compared (:class:`TensorDiff`) and the names only one side
has (:class:`TensorInfo`); ``str(report)`` is the text ``ckptconv diff`` prints and
:meth:`DiffReport.to_json` the object ``ckptconv diff --json`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..dtypes import by_name
from ..store import shape_text
from .tables import table_lines

__all__ = ["DiffReport", "TensorDiff", "TensorInfo", "Status"]

Status = Literal["equal", "close", "different", "shape", "dtype"]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor only one side has: its name, shape and dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, object]:
        """JSON form."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class TensorDiff:
    """How one tensor of A compares with the tensor of the same name in B.

    Attributes:
        name: The tensor's name (in B; A's after the mapping).
        status: ``equal`` (same dtype, same bytes), ``close`` (same dtype, other bytes,
            every element within the tolerance; with ``max_abs`` 0 the values are all equal:
            ``-0.0`` against ``0.0``, or NaNs with other bits), ``different`` (elements beyond
            the tolerance), ``shape`` (shapes differ: values not compared) or ``dtype``
            (dtypes differ: values compared as float64, reported, and the pair still counts
            as a difference).
        shape_a, shape_b, dtype_a, dtype_b: Both sides' metadata (dtype names).
        sources: A's entries the tensor was made from, when a mapping renamed or computed it.
        size: Elements compared (0 when shapes differ).
        mismatched: Elements beyond the tolerance (a NaN against a number counts; a NaN
            against a NaN is equal, whatever their bits: numpy's ``equal_nan=True``).
        nan_mismatched: Of those, the elements that are NaN on one side only.
        max_abs: Largest ``|a - b|`` over the elements that are not a NaN against a number
            (float64; ``inf`` for an infinity against a finite number; at least 1 for
            integers that differ, also beyond float64's 2**53), or None when no value
            differs, every differing element is a NaN against a number, or the dtype is not
            numeric.
        max_rel: Largest ``|a - b| / |b|`` over the same elements (B is the reference, as in
            ``numpy.isclose``; ``inf`` where ``b`` is 0 and ``a`` is not), or None likewise.
        first: Index of the first element beyond the tolerance (C order), or None.
        first_a, first_b: The two values there (Python scalars), or None.
    """

    name: str
    status: Status
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    sources: tuple[str, ...] = ()
    size: int = 0
    mismatched: int = 0
    max_abs: float | None = None
    max_rel: float | None = None
    first: tuple[int, ...] | None = None
    first_a: Any = None
    first_b: Any = None
    nan_mismatched: int = 0

    @property
    def ok(self) -> bool:
        """The pair counts as equal: bit-exact, or within the tolerance."""
        return self.status in ("equal", "close")

    @property
    def values_equal(self) -> bool:
        """Every value equal (``-0.0`` is ``0.0``, NaN is NaN), the bytes perhaps not: an
        ``equal`` pair, or a ``close`` one whose largest difference is 0."""
        return self.status == "equal" or (self.status == "close" and not self.max_abs)

    def describe(self) -> str:
        """One line for people: what differs and by how much."""
        if self.status == "shape":
            return f"shape {shape_text(self.shape_a)} in A, {shape_text(self.shape_b)} in B"
        parts = []
        if self.status == "dtype":
            parts.append(f"dtype {self.dtype_a} in A, {self.dtype_b} in B")
        if self.mismatched:
            parts.append(f"{self.mismatched} of {self.size} values differ{self._nan_text()}")
        elif self.status == "close" and not self.max_abs:
            parts.append("values equal, bytes differ (-0.0 against 0.0, or NaNs with other bits)")
        elif self.status != "equal":
            parts.append("values equal" if not self.max_abs else "all values within tolerance")
        if self.max_abs:  # 0: the values are equal; None: they differ only by NaNs
            aside = " (NaNs aside)" if self.nan_mismatched else ""
            parts.append(f"max abs {_num(self.max_abs)}, max rel {_num(self.max_rel)}{aside}")
        if self.first is not None:
            parts.append(
                f"first at {list(self.first)}: {_value_text(self.first_a, self.dtype_a)} vs "
                f"{_value_text(self.first_b, self.dtype_b)}"
            )
        if self.status == "equal":
            parts.append("bit-exact")
        return "; ".join(parts)

    def _nan_text(self) -> str:
        if not self.nan_mismatched:
            return ""
        if self.nan_mismatched == self.mismatched:
            return ", a NaN against a number" if self.mismatched == 1 else ", each a NaN against a number"
        return f" ({self.nan_mismatched} of them a NaN against a number)"

    def to_json(self) -> dict[str, object]:
        """JSON form (``max_abs``/``max_rel`` as numbers, ``inf`` as the string "inf")."""
        return {
            "name": self.name,
            "status": self.status,
            "shape": {"a": list(self.shape_a), "b": list(self.shape_b)},
            "dtype": {"a": self.dtype_a, "b": self.dtype_b},
            "sources": list(self.sources),
            "size": self.size,
            "mismatched": self.mismatched,
            "nan_mismatched": self.nan_mismatched,
            "max_abs": _json_float(self.max_abs),
            "max_rel": _json_float(self.max_rel),
            "first": None if self.first is None else list(self.first),
            "first_a": _json_scalar(self.first_a),
            "first_b": _json_scalar(self.first_b),
        }


@dataclass
class DiffReport:
    """The outcome of :func:`diff`. ``report.equal`` is the answer; ``str(report)`` the text
    ``ckptconv diff`` prints and :meth:`to_json` the object ``ckptconv diff --json`` prints.

    Attributes:
        a, b: What was compared (paths, or a description of a store or model).
        format_a, format_b: Their formats (``keras-h5``, ``safetensors``, ``keras-model``, ...).
        atol, rtol: The tolerance: a pair of elements is within it when
            ``|a - b| <= atol + rtol * |b|`` (``numpy.isclose``'s rule, NaN equal to NaN).
        tensors: Every pair compared, in A's order.
        only_in_a, only_in_b: Tensors one side has and the other does not.
        nbytes: Tensor bytes read, both sides together.
    """

    a: str
    b: str
    format_a: str
    format_b: str
    atol: float = 0.0
    rtol: float = 0.0
    tensors: list[TensorDiff] = field(default_factory=list)
    only_in_a: list[TensorInfo] = field(default_factory=list)
    only_in_b: list[TensorInfo] = field(default_factory=list)
    nbytes: int = 0

    @property
    def equal(self) -> bool:
        """Same names on both sides, and every pair bit-exact or within the tolerance."""
        return not self.only_in_a and not self.only_in_b and all(t.ok for t in self.tensors)

    @property
    def differences(self) -> list[TensorDiff]:
        """The pairs that do not count as equal (values, shape or dtype)."""
        return [t for t in self.tensors if not t.ok]

    def counts(self) -> dict[str, int]:
        """How many pairs have each status, and how many names only one side has."""
        out = {s: 0 for s in ("equal", "close", "different", "shape", "dtype")}
        for t in self.tensors:
            out[t.status] += 1
        out["only_in_a"] = len(self.only_in_a)
        out["only_in_b"] = len(self.only_in_b)
        return out

    def to_json(self) -> dict[str, object]:
        """The report as one JSON-serialisable object: what ``ckptconv diff --json`` prints
        after its ``"ok"`` (``"result"`` is ``"equal"`` or ``"different"``)."""
        return {
            "result": "equal" if self.equal else "different",
            "equal": self.equal,
            "a": {"path": self.a, "format": self.format_a},
            "b": {"path": self.b, "format": self.format_b},
            "atol": self.atol,
            "rtol": self.rtol,
            "counts": self.counts(),
            "only_in_a": [t.to_json() for t in self.only_in_a],
            "only_in_b": [t.to_json() for t in self.only_in_b],
            "tensors": [t.to_json() for t in self.tensors],
            "nbytes": self.nbytes,
        }

    def format_text(self, *, verbose: bool = False) -> str:
        """Aligned text: the differences (every pair with ``verbose``), then one summary line."""
        lines = [f"A: {self.a} ({self.format_a})", f"B: {self.b} ({self.format_b})"]
        rows = []
        for t in self.tensors:
            if verbose or not t.ok:
                rows.append((t.status, t.name, t.describe()))
        rows += [("only in A", t.name, f"{shape_text(t.shape)} {t.dtype}") for t in self.only_in_a]
        rows += [("only in B", t.name, f"{shape_text(t.shape)} {t.dtype}") for t in self.only_in_b]
        if rows:
            lines.append("")
            lines += table_lines(("STATUS", "TENSOR", "DETAIL"), rows)
        c = self.counts()
        tolerance = f" (atol {_num(self.atol)}, rtol {_num(self.rtol)})" if self.atol or self.rtol else ""
        pieces = [f"{c['equal']} bit-exact"]
        same_values = sum(1 for t in self.tensors if t.status == "close" and t.values_equal)
        if same_values:
            pieces.append(f"{same_values} equal in value but not bit-exact")
        if c["close"] > same_values:
            pieces.append(f"{c['close'] - same_values} within tolerance")
        for key, label in (("different", "different"), ("shape", "of another shape"), ("dtype", "of another dtype")):
            if c[key]:
                pieces.append(f"{c[key]} {label}")
        lines.append("")
        lines.append(
            f"{len(self.tensors)} tensor(s) compared{tolerance}: {', '.join(pieces)}; "
            f"{c['only_in_a']} only in A, {c['only_in_b']} only in B"
        )
        if not self.tensors and self.only_in_a and self.only_in_b:
            lines.append(
                "no tensor name is in both: if they hold the same weights under other names (a PyTorch "
                "state dict and a Keras model), propose a mapping with `ckptconv suggest A --target B "
                "-o spec.yaml` and compare with `--map spec.yaml`"
            )
        lines.append("equal" if self.equal else "NOT equal")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_text()


def _value_text(value: Any, dtype: str) -> str:
    """A value as its own dtype prints it (float32 ``0.041355703``, not float64's digits)."""
    if isinstance(value, float):
        try:
            return str(by_name(dtype).type(value))
        except (KeyError, TypeError, ValueError):
            pass
    return repr(value)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}"


def _json_float(value: float | None) -> float | str | None:
    if value is None or np.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"


def _json_scalar(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, complex):
        return str(value)
    return value
