"""Variable names of Keras' quantized layers, as Keras 3.15 saves them.

A quantized layer (``model.quantize("int8" | "int4" | "float8" | "gptq" | "awq")``) saves
another list of variables than the float layer: ``save_own_variables`` walks the layer's
``variable_serialization_spec`` for its quantization mode and skips the variables the layer
does not have (no bias, per-channel int4 without zero points, ...). The file stores them by
position only, so naming them needs the mode and the optional variables actually present.

The mode comes from the layer's dtype policy in a ``.keras`` ``config.json``
(``QuantizedDTypePolicy`` ``{"mode": "int8"}``, ``Int4DTypePolicy`` ``{"mode": "int4/128"}``,
or the older ``"int8_from_float32"`` names). A bare ``.weights.h5`` has no config: the mode
is then inferred from the stored dtypes (an int8 kernel, a uint8 GPTQ kernel, float8's eight
scales and histories), and the names are given only when exactly one reading fits.

Source of truth: ``variable_serialization_spec``, ``save_own_variables`` and the
``add_weight(name=...)`` calls of ``Dense``, ``EinsumDense``, ``Embedding`` and
``ReversibleEmbedding`` in Keras 3.15.1. The names are the variables' own names (what
``variable.path`` ends with), which is what a live quantized model's targets are called:
GPTQ/AWQ keep their packed kernel under the name ``kernel`` and EinsumDense names its GPTQ/AWQ
zero points ``zero_point``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import is_floating

__all__ = ["QUANTIZED_VARIABLES", "float_by_config", "quantization_mode", "quantized_names"]


@dataclass(frozen=True)
class Slot:
    """One position of a layer's saved variable list.

    ``groups`` name the layer options the variable depends on: it is saved only when the
    layer has all of them (``bias``: a bias; ``subchannel``: int4 with a ``block_size``, which
    adds zero points and a group index; ``untied``: a ReversibleEmbedding with
    ``tie_weights=False``; ``zero``: GPTQ/AWQ zero points, which Keras 3.15.1 does not save).
    """

    name: str
    dtype: str = "float"  # what the stored dtype must be: "float", "int8" or "uint8"
    groups: tuple[str, ...] = ()
    # what the stored shape must be: "" (anything), "0d", "1d", "same:<slot>" (the shape of
    # that slot) or "reversed:<slot>" (its axes reversed: ReversibleEmbedding's projection)
    shape: str = ""


_BIAS = Slot("bias", groups=("bias",))


def _dense_like(zero: str) -> dict[str | None, tuple[Slot, ...]]:
    return {
        None: (Slot("kernel"), _BIAS),
        "int8": (Slot("kernel", dtype="int8"), _BIAS, Slot("kernel_scale")),
        "int4": (
            Slot("kernel", dtype="int8"),  # two int4 values packed per byte
            _BIAS,
            Slot("kernel_scale"),
            Slot("kernel_zero", dtype="int8", groups=("subchannel",), shape="same:kernel_scale"),
            Slot("g_idx", groups=("subchannel",), shape="1d"),
        ),
        "float8": (
            Slot("kernel"),
            _BIAS,
            Slot("inputs_scale", shape="0d"),
            Slot("inputs_amax_history", shape="1d"),
            Slot("kernel_scale", shape="0d"),
            Slot("kernel_amax_history", shape="1d"),
            Slot("outputs_grad_scale", shape="0d"),
            Slot("outputs_grad_amax_history", shape="1d"),
        ),
        # Keras 3.15.1 writes no zero points for GPTQ/AWQ (and so cannot reload these files);
        # a writer that does puts them at this position.
        "gptq": (
            _BIAS,
            Slot("kernel", dtype="uint8"),
            Slot("kernel_scale"),
            Slot(zero, dtype="uint8", groups=("zero",), shape="same:kernel_scale"),
            Slot("g_idx", shape="1d"),
        ),
        "awq": (
            _BIAS,
            Slot("kernel", dtype="uint8"),
            Slot("kernel_scale"),
            Slot(zero, dtype="uint8", groups=("zero",), shape="same:kernel_scale"),
            Slot("awq_scales", shape="1d"),
            Slot("g_idx", shape="1d"),
        ),
    }


_EMBEDDING: dict[str | None, tuple[Slot, ...]] = {
    None: (Slot("embeddings"),),
    "int8": (Slot("embeddings", dtype="int8"), Slot("embeddings_scale")),
    "int4": (
        Slot("embeddings", dtype="int8"),
        Slot("embeddings_scale"),
        Slot("embeddings_zero", dtype="int8", groups=("subchannel",), shape="same:embeddings_scale"),
        Slot("g_idx", groups=("subchannel",), shape="1d"),
    ),
}

# ReversibleEmbedding appends its untied output projection (tie_weights=False) to each list.
_REVERSE: dict[str | None, tuple[Slot, ...]] = {
    None: (Slot("reverse_embeddings", groups=("untied",), shape="reversed:embeddings"),),
    "int8": (
        Slot("reverse_embeddings", dtype="int8", groups=("untied",), shape="reversed:embeddings"),
        Slot("reverse_embeddings_scale", groups=("untied",)),
    ),
    "int4": (
        Slot("reverse_embeddings", dtype="int8", groups=("untied",), shape="reversed:embeddings"),
        Slot("reverse_embeddings_scale", groups=("untied",)),
        # stored as float32
        Slot("reverse_embeddings_zero", groups=("untied", "subchannel"), shape="same:reverse_embeddings_scale"),
    ),
}

# snake_case class name -> quantization mode (None: not quantized) -> saved variable list
QUANTIZED_VARIABLES: dict[str, dict[str | None, tuple[Slot, ...]]] = {
    "dense": _dense_like("kernel_zero"),
    "einsum_dense": _dense_like("zero_point"),
    "embedding": _EMBEDDING,
    "reversible_embedding": {mode: _EMBEDDING[mode] + _REVERSE[mode] for mode in _EMBEDDING},
}

# Classes whose float (mode None) names the general table of keras_weights already gives.
_FLOAT_NAMED_ELSEWHERE = {"dense", "einsum_dense", "embedding"}

_UNKNOWN = "?"
# Modes whose kernels are stored as integers: a signature no float layer has.
_INTEGER_MODES = {"int8", "int4", "gptq", "awq"}


def quantization_mode(config: Mapping[str, Any]) -> str | None:
    """The quantization mode a layer's ``config.json`` entry records in its dtype policy
    (``int8``, ``int4``, ``float8``, ``gptq``, ``awq``), or None for a float layer."""
    policy = config.get("dtype")
    text: Any = None
    if isinstance(policy, (dict, Mapping)):  # dict first: JSON's, and far cheaper to check
        inner = policy.get("config")
        if isinstance(inner, (dict, Mapping)):
            text = inner.get("mode")
            if text is None:
                text = inner.get("name")
    elif isinstance(policy, str):
        text = policy
    if not isinstance(text, str):
        return None
    if "_from_" in text:  # the policy name form: "int8_from_float32", "int4/128_from_bfloat16"
        text = text.split("_from_", 1)[0]
    mode = text.split("/", 1)[0]
    return mode if mode in ("int8", "int4", "float8", "gptq", "awq") else None


def float_by_config(cls: str | None, config: Mapping[str, Any]) -> bool:
    """A layer whose config records no quantization, of a class whose float variables the
    general table of keras_weights names: :func:`quantized_names` answers None for it
    whatever is stored (the only reading is the float list; what ``_names`` concludes,
    without the work), so callers need not gather the stored dtypes and shapes (the common
    case of every Dense of a ``.keras`` model)."""
    return cls in _FLOAT_NAMED_ELSEWHERE and quantization_mode(config) is None


Stored = tuple[np.dtype, tuple[int, ...]]  # one stored variable: dtype and shape


def _fits(slot: Slot, stored: Stored, named: Mapping[str, tuple[int, ...]]) -> bool:
    dtype, shape = stored
    if slot.dtype == "float":
        if not is_floating(dtype):
            return False
    elif np.dtype(dtype) != np.dtype(slot.dtype):
        return False
    rule, _, other = slot.shape.partition(":")
    if rule == "0d":
        return shape == ()
    if rule == "1d":
        return len(shape) == 1
    if rule == "same":
        return other in named and shape == named[other]
    if rule == "reversed":
        return other in named and shape == named[other][::-1]
    return True


def _readings(slots: Sequence[Slot], stored: Sequence[Stored], known: Mapping[str, bool]) -> set[tuple[str, ...]]:
    """Every choice of the layer options (``known`` ones fixed) whose saved list fits the
    stored dtypes and shapes, as name lists."""
    found: set[tuple[str, ...]] = set()
    for kept in _saved_lists(slots, known).get(len(stored), ()):
        named = {s.name: st[1] for s, st in zip(kept, stored)}
        if all(_fits(s, st, named) for s, st in zip(kept, stored)):
            found.add(tuple(s.name for s in kept))
    return found


# (id of a slot list, known options) -> (that list, its saved lists by length)
_SAVED_LISTS: dict[tuple[int, tuple[tuple[str, bool], ...]], tuple[Sequence[Slot], dict[int, list[tuple[Slot, ...]]]]] = {}


def _saved_lists(slots: Sequence[Slot], known: Mapping[str, bool]) -> dict[int, list[tuple[Slot, ...]]]:
    """The saved variable lists of every choice of the layer options (``known`` ones fixed),
    by length. They are the same for every layer of a class, so a checkpoint of thousands of
    layers enumerates them once per slot list of :data:`QUANTIZED_VARIABLES` (remembered by
    identity: hashing the slots would cost more than the enumeration); the stored dtypes and
    shapes are checked per layer."""
    key = (id(slots), tuple(sorted(known.items())))
    cached = _SAVED_LISTS.get(key)
    if cached is not None and cached[0] is slots:
        return cached[1]
    free = sorted({g for s in slots for g in s.groups} - known.keys())
    lists: dict[int, list[tuple[Slot, ...]]] = {}
    for choice in itertools.product((False, True), repeat=len(free)):
        present = dict(known, **dict(zip(free, choice)))
        kept = tuple(s for s in slots if all(present[g] for g in s.groups))
        lists.setdefault(len(kept), []).append(kept)
    if len(_SAVED_LISTS) < 1024:  # the tables' lists times the option sets configs give
        _SAVED_LISTS[key] = (slots, lists)
    return lists


def _options_in_config(cls: str, mode: str | None, config: Mapping[str, Any]) -> dict[str, bool]:
    """The layer options (see :class:`Slot`) its config records."""
    known: dict[str, bool] = {}
    if cls == "dense" and isinstance(config.get("use_bias"), bool):
        known["bias"] = config["use_bias"]
    if cls == "einsum_dense" and "bias_axes" in config:
        known["bias"] = bool(config["bias_axes"])
    if cls == "reversible_embedding" and isinstance(config.get("tie_weights"), bool):
        known["untied"] = not config["tie_weights"]
    if mode == "int4":
        block = _int4_block_size(config)
        if block is not None:
            known["subchannel"] = block > 0
    return known


def _int4_block_size(config: Mapping[str, Any]) -> int | None:
    """int4's ``block_size`` (-1: per channel), from the dtype policy (``int4/128``; plain
    ``int4`` is per channel) or, failing that, the quantization config."""
    policy = config.get("dtype")
    inner = policy.get("config") if isinstance(policy, Mapping) else None
    mode = inner.get("mode") if isinstance(inner, Mapping) else None
    if isinstance(mode, str) and mode.startswith("int4"):
        block = mode.partition("/")[2]
        return int(block) if block.lstrip("-").isdigit() else -1
    quantization = config.get("quantization_config")
    inner = quantization.get("config") if isinstance(quantization, Mapping) else None
    if isinstance(inner, Mapping) and "block_size" in inner:
        block = inner["block_size"]
        return -1 if block is None else int(block) if isinstance(block, int) else None
    return None


def quantized_names(
    cls: str | None, stored: Sequence[Stored], config: Mapping[str, Any] | None = None
) -> list[str] | None:
    """Names of a quantized layer's stored variables, in stored order, or None.

    Args:
        cls: The layer's snake_case class name (``dense``, ``einsum_dense``, ``embedding``,
            ``reversible_embedding``), or a name that is no class (a sub-layer saved under
            its attribute name): then only an integer-quantized reading that every
            quantizable class agrees on is taken (a custom layer's float variables are
            never named this way).
        stored: The stored variables' dtypes and shapes, by position.
        config: The layer's ``config.json`` entry, when there is one: its dtype policy fixes
            the mode and ``use_bias`` / ``bias_axes`` / ``tie_weights`` / ``block_size``
            which optional variables are present.

    Returns:
        The names, or None when the layer is not quantized (its float names come from the
        general table), or when no reading or more than one fits (the caller then falls back
        to indices).
    """
    table = QUANTIZED_VARIABLES.get(cls or "")
    mode: str | None = _UNKNOWN
    known: dict[str, bool] = {}
    if table is not None and config is not None:
        if float_by_config(cls, config):
            return None
        mode = quantization_mode(config)
        known = _options_in_config(str(cls), mode, config)
    # layers of a model repeat (blocks of a transformer, thousands of experts): their answer
    # depends on nothing else, so it is worked out once
    key = (cls, tuple(stored), mode, tuple(sorted(known.items())))
    names = _NAMES.get(key, _UNKNOWN)
    if names is _UNKNOWN:
        names = _names(cls, table, stored, mode, known)
        if len(_NAMES) < 4096:
            _NAMES[key] = names
    return None if names is None else list(names)


_NAMES: dict[tuple[Any, ...], tuple[str, ...] | None | str] = {}  # quantized_names' answers


def _names(
    cls: str | None,
    table: Mapping[str | None, Sequence[Slot]] | None,
    stored: Sequence[Stored],
    mode: str | None,
    known: Mapping[str, bool],
) -> tuple[str, ...] | None:
    """What :func:`quantized_names` answers, worked out (``mode``: the config's, or
    ``_UNKNOWN``; ``known``: the options it fixes)."""
    readings: dict[tuple[str, ...], set[str | None]] = {}
    if table is None:
        for candidate_table in QUANTIZED_VARIABLES.values():
            for integer_mode in _INTEGER_MODES & candidate_table.keys():
                for names in _readings(candidate_table[integer_mode], stored, {}):
                    readings.setdefault(names, set()).add(integer_mode)
    else:
        modes = list(table) if mode == _UNKNOWN or mode not in table else [mode]
        for candidate in modes:
            for names in _readings(table[candidate], stored, known):
                readings.setdefault(names, set()).add(candidate)
    if len(readings) != 1:
        return None
    names, found_modes = next(iter(readings.items()))
    if found_modes == {None} and cls in _FLOAT_NAMED_ELSEWHERE:
        return None
    return names
