"""Conventions between frameworks, and whether one weight fills another.

A PyTorch ``Linear`` weight ``[out, in]`` is a Keras ``Dense`` kernel ``[in, out]``; a
``Conv{1,2,3}d`` weight ``[out, in, *k]`` is a Keras kernel ``[*k, in, out]``; BatchNorm's
``running_mean`` is ``moving_mean``; tf-keras' ``depthwise_kernel`` is Keras 3's ``kernel``
(:data:`CONVENTIONS`). :func:`weight_pair` decides whether a source weight fills a target
weight, and with which ops (the convention's transpose, a reshape that only splits or merges
axes, a cast); :func:`assign` pairs the weights of two layers. Used by
:mod:`ckptconv.mapping.suggest`; metadata only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import dtype_name, is_floating
from .aliases import AliasTable
from .aliases import depthwise_kernel as keras_line_rename

__all__ = [
    "Convention",
    "CONVENTIONS",
    "DROPPED",
    "KNOWN",
    "Weight",
    "WeightPair",
    "weight_pair",
    "related",
    "related_leaves",
    "permutation_for",
    "regroups",
    "fit_ops",
    "assign",
    "conventions_text",
]


@dataclass(frozen=True)
class Convention:
    """How a weight of one framework is a weight of another.

    Attributes:
        layout: ``same`` (the values as they are), ``torch-to-keras`` (a PyTorch ``Linear``
            weight ``[out, in]`` is a Keras kernel ``[in, out]``; a ``Conv{1,2,3}d`` weight
            ``[out, in, *k]`` is ``[*k, in, out]``) or ``keras-to-torch`` (the reverse).
        frameworks: ``"PyTorch -> Keras"`` and the like, for the reason text.
    """

    layout: str
    frameworks: str


CONVENTIONS: dict[tuple[str, str], Convention] = {}
"""(source weight name, target weight name) -> the convention that relates them."""


def _both_ways(source: str, target: str, layout: str, frameworks: str) -> None:
    CONVENTIONS[(source, target)] = Convention(layout, frameworks)
    back = {"same": "same", "torch-to-keras": "keras-to-torch"}[layout]
    left, right = frameworks.split(" -> ")
    CONVENTIONS[(target, source)] = Convention(back, f"{right} -> {left}")


_both_ways("weight", "kernel", "torch-to-keras", "PyTorch -> Keras")  # Linear, Conv{1,2,3}d
_both_ways("weight", "gamma", "same", "PyTorch -> Keras")  # BatchNorm, LayerNorm, GroupNorm
_both_ways("bias", "beta", "same", "PyTorch -> Keras")
_both_ways("running_mean", "moving_mean", "same", "PyTorch -> Keras")
_both_ways("running_var", "moving_variance", "same", "PyTorch -> Keras")
_both_ways("weight", "embeddings", "same", "PyTorch -> Keras")  # Embedding
_both_ways("weight", "scale", "same", "PyTorch -> Keras")  # RMSNorm
# Keras 2 (tf-keras) <-> Keras 3 weight renames: the cross-line alias table's own rule
# (DepthwiseConv{1,2}D's depthwise_kernel is Keras 3's kernel), applied to a bare weight name.
for _leaf in ("depthwise_kernel", "kernel"):
    for _other in keras_line_rename(_leaf, AliasTable(())):
        CONVENTIONS[(_leaf, _other)] = Convention(
            "same", "tf-keras -> Keras 3" if _leaf == "depthwise_kernel" else "Keras 3 -> tf-keras"
        )
del _leaf, _other

# Entries that are nobody's weight on the other side: dropped, with the reason.
DROPPED = {"num_batches_tracked": "PyTorch BatchNorm's batch counter: Keras has no such variable"}

# Weight names with a known meaning: two of them that are neither equal nor related by a
# convention never pair (a bias is not a gamma even when both are [32]).
KNOWN = {
    "kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance", "embeddings",
    "recurrent_kernel", "depthwise_kernel", "pointwise_kernel", "scale", "weight",
    "running_mean", "running_var", "num_batches_tracked", "alpha",
}



@dataclass(frozen=True)
class Weight:
    name: str
    layer: str
    leaf: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))



@dataclass(frozen=True)
class WeightPair:
    source: Weight
    target: Weight
    kind: str  # "name", "convention" or "index"
    ops: tuple[Any, ...]
    label: str | None
    score: float



def permutation_for(ndim: int, layout: str) -> tuple[int, ...] | None:
    """The transpose taking a weight of ``ndim`` axes from one framework's layout to the
    other's (``layout`` of a :class:`Convention`), or None when the axes stay."""
    if ndim < 2 or layout == "same":
        return None
    if ndim == 2:
        return (1, 0)
    if layout == "torch-to-keras":  # [out, in, *k] -> [*k, in, out]
        return (*range(2, ndim), 1, 0)
    return (ndim - 1, ndim - 2, *range(ndim - 2))  # [*k, in, out] -> [out, in, *k]


def regroups(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    """Whether ``dst`` only splits or merges adjacent axes of ``src`` (size-1 axes aside): a
    reshape that keeps every element's meaning (``[16, 16]`` -> ``[16, 2, 8]``, not
    ``[2, 3]`` -> ``[3, 2]``)."""
    if 0 in src or 0 in dst:
        return False
    a = [d for d in src if d != 1]
    b = [d for d in dst if d != 1]
    if math.prod(a) != math.prod(b):
        return False
    i = j = 0
    while i < len(a):
        pa, pb, merged_a, merged_b = a[i], b[j], 1, 1
        while pa != pb:
            if pa < pb:
                i += 1
                pa *= a[i]
                merged_a += 1
            else:
                j += 1
                pb *= b[j]
                merged_b += 1
        if merged_a > 1 and merged_b > 1:  # several axes into several: elements would move
            return False
        i += 1
        j += 1
    return True


def fit_ops(s: Weight, t: Weight, layout: str, *, reshape: bool) -> tuple[Any, ...] | None:
    """The ops (spec form) that make ``s`` the shape and dtype of ``t`` under ``layout``: the
    layout's transpose, then (if ``reshape``) a reshape that only splits or merges axes, then
    a cast between floats or between integers; None when no such ops exist."""
    ops: list[Any] = []
    shape = s.shape
    perm = permutation_for(len(shape), layout)
    if perm is not None:
        ops.append("transpose" if len(shape) == 2 else {"transpose": list(perm)})
        shape = tuple(shape[p] for p in perm)
    if shape != t.shape:
        if not (reshape and regroups(shape, t.shape)):
            return None
        ops.append({"reshape": list(t.shape)})
    if s.dtype != t.dtype:
        floats = is_floating(s.dtype) and is_floating(t.dtype)
        ints = s.dtype.kind in "iu" and t.dtype.kind in "iu"
        if not (floats or ints):
            return None
        ops.append({"cast": dtype_name(t.dtype)})
    return tuple(ops)


def weight_pair(s: Weight, t: Weight) -> WeightPair | None:
    """The best way ``s`` fills ``t``, if any."""
    options: list[tuple[str, str, str | None, float]] = []
    if s.leaf == t.leaf:
        options.append(("name", "same", None, 4.0))
    convention = CONVENTIONS.get((s.leaf, t.leaf))
    if convention is not None:
        options.append(("convention", convention.layout, _label(s, t, convention), 4.0))
    if not options and not (s.leaf in KNOWN and t.leaf in KNOWN) and s.index == t.index:
        options.append(("index", "same", None, 1.5))
    best: WeightPair | None = None
    for kind, layout, label, score in options:
        ops = fit_ops(s, t, layout, reshape=kind != "index")
        if ops is None:
            continue
        score += 0.5 * (s.index == t.index) - 0.25 * sum(isinstance(o, dict) and "reshape" in o for o in ops)
        if best is None or score > best.score:
            best = WeightPair(s, t, kind, ops, label, score)
    return best


def _label(s: Weight, t: Weight, convention: Convention) -> str:
    """The convention as the reason text says it (one weight's part)."""
    if convention.layout == "same":
        return f"{convention.frameworks} names: {s.leaf} -> {t.leaf}"
    n = len(s.shape)
    if convention.layout == "torch-to-keras":
        what = "Linear weight [out, in] -> kernel [in, out]" if n == 2 else (
            f"Conv{n - 2}d weight [out, in, *k] -> kernel [*k, in, out]" if n > 2 else "weight -> kernel")
    else:
        what = "kernel [in, out] -> Linear weight [out, in]" if n == 2 else (
            f"kernel [*k, in, out] -> Conv{n - 2}d weight [out, in, *k]" if n > 2 else "kernel -> weight")
    return f"{convention.frameworks}: {what}"


def related(s: Weight, t: Weight) -> bool:
    """Whether ``s`` may fill ``t`` by name: the same leaf name, or a convention's pair."""
    return related_leaves(s.leaf, t.leaf)


def related_leaves(source: str, target: str) -> bool:
    """:func:`related` of two leaf names (``running_mean``, ``moving_mean``)."""
    return source == target or (source, target) in CONVENTIONS


def assign(sources: list[Weight], targets: list[Weight]) -> list[WeightPair]:
    """The maximum-score set of weight pairs, each weight in at most one (exact: a dynamic
    programme over the targets and the subset of sources used; layers have few weights)."""
    table = [[weight_pair(s, t) for s in sources] for t in targets]
    if len(sources) > 12:  # no layer of a known kind has as many: pair greedily
        chosen: list[WeightPair] = []
        used: set[int] = set()
        candidates = sorted(
            ((p.score, -ti, -si, p) for ti, row in enumerate(table) for si, p in enumerate(row) if p),
            key=lambda c: c[:3], reverse=True,
        )
        filled: set[int] = set()
        for _, ti, si, p in candidates:
            if -ti not in filled and -si not in used:
                filled.add(-ti)
                used.add(-si)
                chosen.append(p)
        return chosen
    best: dict[int, tuple[float, tuple[WeightPair, ...]]] = {0: (0.0, ())}
    for row in table:
        step = dict(best)
        for mask, (score, chosen_pairs) in best.items():
            for si, p in enumerate(row):
                if p is None or mask >> si & 1:
                    continue
                key = mask | 1 << si
                value = (score + p.score, chosen_pairs + (p,))
                if key not in step or value[0] > step[key][0]:
                    step[key] = value
        # a row left without a source keeps the previous states (already in step)
        best = step
    return list(max(best.values(), key=lambda v: v[0])[1])



def conventions_text(pairs: list[WeightPair]) -> list[str]:
    """The conventions a layer pair uses, grouped: renames in one clause, layouts each once."""
    renames: dict[str, list[str]] = {}
    layouts: list[str] = []
    for p in pairs:
        if p.label is None:
            continue
        head, _, what = p.label.partition(": ")
        if head.endswith(" names"):
            renames.setdefault(head[: -len(" names")], []).append(what)
        elif p.label not in layouts:
            layouts.append(p.label)
    out = [f"convention {head}: renamed {', '.join(items)}" for head, items in renames.items()]
    return out + [f"convention {label}" for label in layouts]
