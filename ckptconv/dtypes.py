"""Dtype names, numpy dtypes and the safetensors dtype codes, in one table.

numpy has no bfloat16 or float8 types of its own; ``ml_dtypes`` provides them as real numpy
dtypes, so every tensor ckptconv handles is a plain ``numpy.ndarray``. ``ml_dtypes`` is
imported the first time one of its names or codes is asked for (a file of float32 tensors
never needs it; a bfloat16 dtype cannot exist before it is imported).
"""

from __future__ import annotations

import numpy as np

__all__ = ["by_name", "dtype_name", "from_safetensors", "to_safetensors", "is_floating"]

# canonical name -> numpy dtype (little-endian where it matters); None until ml_dtypes is
# imported (see _load_ml_dtypes)
_BY_NAME: dict[str, np.dtype | None] = {
    "bool": np.dtype(np.bool_),
    "int8": np.dtype("<i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "bfloat16": None,
    "float8_e4m3fn": None,
    "float8_e5m2": None,
    "float8_e4m3fnuz": None,
    "float8_e5m2fnuz": None,
    "float8_e4m3b11fnuz": None,
    "complex64": np.dtype("<c8"),
    "complex128": np.dtype("<c16"),
}
# ml_dtypes' names for them: its floats (the ``fn`` float8 types have no infinity; ``fnuz``
# ones no negative zero either, and one NaN, 0x80, as TensorFlow and PyTorch define them too)
_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz")


def _load_ml_dtypes() -> None:
    """Fill in the dtypes ``ml_dtypes`` provides (on first need)."""
    if _BY_NAME["bfloat16"] is not None:
        return
    import ml_dtypes

    for name in _ML_DTYPES:
        dtype = np.dtype(getattr(ml_dtypes, name))
        _BY_NAME[name] = dtype
        _NAME_OF[dtype] = name


_ALIASES = {
    "half": "float16",
    "float": "float32",
    "double": "float64",
    "bf16": "bfloat16",
    "fp16": "float16",
    "fp32": "float32",
    "fp64": "float64",
    "f16": "float16",
    "f32": "float32",
    "f64": "float64",
}

# safetensors dtype code <-> canonical name
_SAFETENSORS = {
    "BOOL": "bool",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
}
_TO_SAFETENSORS = {v: k for k, v in _SAFETENSORS.items()}

# numpy dtype -> canonical name: one hash lookup for the dtypes readers produce (a dtype equal
# to one of the table's hashes like it, so a hit is the name the table scan would find)
_NAME_OF: dict[np.dtype, str] = {dtype: name for name, dtype in _BY_NAME.items() if dtype is not None}


def by_name(name: str) -> np.dtype:
    """The numpy dtype for a name such as ``"bfloat16"`` or ``"float16"``.

    Raises:
        KeyError: the name is not a dtype ckptconv knows.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    dtype = _BY_NAME[key]
    if dtype is None:
        _load_ml_dtypes()
        dtype = _BY_NAME[key]
    return dtype


def known_names() -> list[str]:
    """Every dtype name :func:`by_name` accepts (canonical names only)."""
    return list(_BY_NAME)


def dtype_name(dtype: np.dtype) -> str:
    """The canonical name of a numpy dtype (``bfloat16``, ``float32``, ...)."""
    if isinstance(dtype, np.dtype):
        name = _NAME_OF.get(dtype)
        if name is not None:
            return name
    _load_ml_dtypes()  # before np.dtype(): "bfloat16" is a dtype name once it is imported
    dtype = np.dtype(dtype)
    for name, candidate in _BY_NAME.items():
        if dtype == candidate:
            return name
    if dtype.kind in "biufc" and dtype.byteorder == ">":
        return dtype_name(dtype.newbyteorder("<"))
    return str(dtype)


def from_safetensors(code: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype code. Raises KeyError when unknown."""
    return by_name(_SAFETENSORS[code])


def to_safetensors(dtype: np.dtype) -> str | None:
    """The safetensors dtype code of a numpy dtype, or None where safetensors has none."""
    return _TO_SAFETENSORS.get(dtype_name(dtype))


def is_floating(dtype: np.dtype) -> bool:
    """True for real floating-point dtypes, bfloat16 and every float8 type included."""
    if not isinstance(dtype, np.dtype):
        _load_ml_dtypes()  # before np.dtype(): "bfloat16" is a dtype name once it is imported
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return True
    return dtype_name(dtype) in _ML_DTYPES
