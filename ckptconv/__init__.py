"""ckptconv: convert neural-network weights between checkpoint files and into Keras models.

Readers give a flat, lazy ``name -> tensor`` :class:`Store` for every format; the mapper
turns rules into a :class:`Plan` checked on metadata before any data is read; writers
stream the plan into safetensors or assign it into a live Keras model.

``import ckptconv`` never imports TensorFlow, Keras or torch.

:func:`ckptconv.open` is deliberately not in ``__all__``: call it qualified, as
``gzip.open`` or ``tarfile.open`` are, so that ``from ckptconv import *`` never shadows the
built-in ``open``.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .errors import (
    CkptconvError,
    ClusterError,
    CorruptFileError,
    FormatError,
    IntegrityError,
    LoadError,
    NoSuchFileError,
    NoSuchTensorError,
    OptionError,
    OutputError,
    PlanError,
    Problem,
    SpecError,
    UnsafeInputError,
    UnsupportedError,
    UsageError,
)
from .convert import ConvertResult, convert
from .formats import open as open  # noqa: A004 - ckptconv.open; import * leaves it out
from .mapping import (
    DiffReport,
    Plan,
    Rule,
    Spec,
    Suggestion,
    TargetTensor,
    TensorDiff,
    build_plan,
    diff,
    load_spec,
    suggest,
)
from .store import ByteRange, Entry, Output, Store
from .verify import Mismatch, VerifyResult, verify_file
from .keras import LoadReport, TransplantResult, load_into, model_targets, transplant
from .writers.safetensors import WriteResult, parse_size, write_safetensors

__all__ = [
    "__version__",
    # reading (and ckptconv.open, which import * leaves out)
    "Store",
    "Entry",
    "ByteRange",
    "Output",
    # mapping
    "Spec",
    "Rule",
    "load_spec",
    "build_plan",
    "Plan",
    "TargetTensor",
    "suggest",
    "Suggestion",
    # comparing
    "diff",
    "DiffReport",
    "TensorDiff",
    # converting and writing safetensors
    "convert",
    "ConvertResult",
    "write_safetensors",
    "WriteResult",
    "parse_size",
    "verify_file",
    "VerifyResult",
    "Mismatch",
    # live models
    "load_into",
    "LoadReport",
    "model_targets",
    "transplant",
    "TransplantResult",
    # errors
    "CkptconvError",
    "ClusterError",
    "CorruptFileError",
    "FormatError",
    "IntegrityError",
    "LoadError",
    "NoSuchFileError",
    "NoSuchTensorError",
    "OptionError",
    "OutputError",
    "PlanError",
    "Problem",
    "SpecError",
    "UnsafeInputError",
    "UnsupportedError",
    "UsageError",
]
