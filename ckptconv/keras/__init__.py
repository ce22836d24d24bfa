"""Everything about live Keras models (Keras 3 with any backend, and tf-keras).

* :mod:`.targets`: a live model's variables under canonical names (the target side);
* :mod:`.match`: pairing source entries with those variables, checked on metadata;
* :mod:`.assign`: assigning the values, all or nothing;
* :mod:`.report`: the :class:`LoadReport`;
* :mod:`.load`: :func:`load_into`, the entry point;
* :mod:`.transplant`: a ``.keras`` architecture + weights from anywhere -> a saved model.

Keras itself is imported only inside the functions that need it.
"""

from __future__ import annotations

from .load import load_into
from .report import LoadedWeight, LoadReport, WeightInfo, WeightMismatch
from .targets import build_keras_model, model_targets, target_from_keras_file
from .transplant import TransplantResult, transplant

__all__ = [
    "load_into",
    "LoadReport",
    "LoadedWeight",
    "WeightInfo",
    "WeightMismatch",
    "model_targets",
    "target_from_keras_file",
    "build_keras_model",
    "transplant",
    "TransplantResult",
]
