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

from ._lazy import lazy_package

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

# Everything is imported on first use (PEP 562), so that ``ckptconv --help``, a usage error
# and ``import ckptconv`` itself cost no numpy or h5py import, and each command imports only
# the modules it uses; ``import ckptconv`` runs no module of its own but the one that
# makes names lazy, ``_lazy`` (the command line catches a Ctrl-C from its first line on: see
# __main__.py). name -> the module that defines it.
_ERRORS = (
    "CkptconvError", "ClusterError", "CorruptFileError", "FormatError", "IntegrityError", "LoadError",
    "NoSuchFileError", "NoSuchTensorError", "OptionError", "OutputError", "PlanError", "Problem",
    "SpecError", "UnsafeInputError", "UnsupportedError", "UsageError",
)
_LAZY = {
    **dict.fromkeys(_ERRORS, "errors"),
    "ConvertResult": "convert",
    "convert": "convert",
    "open": "formats",
    "DiffReport": "mapping",
    "Plan": "mapping",
    "Rule": "mapping",
    "Spec": "mapping",
    "Suggestion": "mapping",
    "TargetTensor": "mapping",
    "TensorDiff": "mapping",
    "build_plan": "mapping",
    "diff": "mapping",
    "load_spec": "mapping",
    "suggest": "mapping",
    "ByteRange": "store",
    "Entry": "store",
    "Output": "store",
    "Store": "store",
    "Mismatch": "verify",
    "VerifyResult": "verify",
    "verify_file": "verify",
    "LoadReport": "keras",
    "TransplantResult": "keras",
    "load_into": "keras",
    "model_targets": "keras",
    "transplant": "keras",
    "BatchReport": "batch",
    "FileResult": "batch",
    "Job": "batch",
    "convert_one": "batch",
    "plan_jobs": "batch",
    "prepare_options": "batch",
    "run_batch": "batch",
    "WriteResult": "writers.safetensors",
    "parse_size": "writers.safetensors",
    "write_safetensors": "writers.safetensors",
}

if TYPE_CHECKING:
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
    from .batch import BatchReport, FileResult, Job, convert_one, plan_jobs, prepare_options, run_batch
    from .convert import ConvertResult, convert
    from .formats import open as open  # noqa: A004
    from .keras import LoadReport, TransplantResult, load_into, model_targets, transplant
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
    from .writers.safetensors import WriteResult, parse_size, write_safetensors


__getattr__, __dir__ = lazy_package(__name__, _LAZY, functions=("convert",))
del lazy_package


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
    # many files: a process pool or a Dask cluster
    "plan_jobs",
    "Job",
    "run_batch",
    "prepare_options",
    "convert_one",
    "BatchReport",
    "FileResult",
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
