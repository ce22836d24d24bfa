"""The ``dequantize`` join: a Keras int8 tensor and its scale back to floating point.

Keras' int8 layers (``model.quantize("int8")``) store each quantized tensor as int8 beside a
float scale and compute ``tensor / scale`` when they run: Dense and EinsumDense divide the
kernel by ``kernel_scale`` (laid out along the kernel's output axes), Embedding divides each
row by its ``embeddings_scale``. This op does that division on two sources of a rule, so a
spec turns a quantized file into the float weights of the unquantized model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import dtype_name, is_floating
from ..store import shape_text
from .ops import Op, OpError, Shape, _normalize_axis

__all__ = ["Dequantize"]


@dataclass(frozen=True, repr=False)
class Dequantize(Op):
    """Keras' int8 dequantization: two sources, the integer tensor then its scale
    (``from: [fc/kernel, fc/kernel_scale]``, ``dequantize: {}``), give ``tensor / scale`` in
    float32 (or ``dtype``), as a quantized Keras layer computes it.

    The scale broadcasts against the tensor: with no ``axis``, numpy's rule aligns it with the
    tensor's trailing axes (after dropping leading size-1 axes beyond the tensor's rank:
    Dense's ``[out]`` scale, EinsumDense's ``[1, ..., out]``); with ``axis``, the scale's
    axes (size-1 axes dropped) line up with the tensor's from that axis on (Embedding's
    ``[vocab]`` scale is ``axis: 0``). Any other fit is a plan problem.
    """

    axis: int | None = None
    dtype: np.dtype = np.dtype(np.float32)
    name = "dequantize"

    def _scale_shape(self, shape: Shape, scale: Shape) -> Shape:
        """The shape the scale takes to broadcast against ``shape``. Raises OpError."""
        scale = tuple(scale)
        if self.axis is None:
            while len(scale) > len(shape) and scale[0] == 1:
                scale = scale[1:]
            try:
                fits = np.broadcast_shapes(shape, scale) == tuple(shape)
            except ValueError:
                fits = False
            if not fits:
                raise OpError(
                    f"{self.describe()}: scale {shape_text(scale)} does not broadcast against "
                    f"{shape_text(shape)}; give the axis it runs along ({{dequantize: {{axis: 0}}}})"
                )
            return scale
        ndim = len(shape)
        axis = _normalize_axis(self.axis, ndim, self.describe())
        core = tuple(d for d in scale if d != 1) or (1,)
        if tuple(shape[axis : axis + len(core)]) != core and core != (1,):
            raise OpError(
                f"{self.describe()}: scale {shape_text(scale)} does not run along axis {self.axis} "
                f"of {shape_text(shape)}"
            )
        if core == (1,):
            return (1,) * ndim
        return (1,) * axis + core + (1,) * (ndim - axis - len(core))

    def infer_many(self, shapes: Sequence[Shape], dtypes: Sequence[np.dtype]) -> tuple[Shape, np.dtype]:
        """Output shape and dtype from the quantized tensor and its scale. Raises OpError."""
        if len(shapes) != 2:
            raise OpError(
                f"{self.describe()}: takes two sources, the quantized tensor then its scale "
                f"(from: [kernel, kernel_scale]); received {len(shapes)}"
            )
        (shape, scale), (dtype, scale_dtype) = shapes, dtypes
        if np.dtype(dtype).kind not in "iu":
            raise OpError(f"{self.describe()}: the first source is {dtype_name(dtype)}, not an integer tensor")
        if not is_floating(scale_dtype):
            raise OpError(f"{self.describe()}: the scale is {dtype_name(scale_dtype)}, not floating point")
        self._scale_shape(tuple(shape), tuple(scale))
        return tuple(shape), np.dtype(self.dtype)

    def apply_many(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """``tensor / scale`` in float32, then cast to ``dtype``."""
        tensor, scale = arrays
        scale = scale.astype(np.float32).reshape(self._scale_shape(tensor.shape, scale.shape))
        return (tensor.astype(np.float32) / scale).astype(self.dtype)

    def describe(self):
        where = "" if self.axis is None else f" axis={self.axis}"
        return f"dequantize{where} -> {dtype_name(self.dtype)}"

    def to_spec(self):
        out: dict[str, Any] = {"dtype": dtype_name(self.dtype)}
        if self.axis is not None:
            out["axis"] = self.axis
        return out
