"""Propose a mapping spec by aligning a source's layers with a target's.

:func:`suggest` pairs the source's entries with the target's variables from metadata alone
(names, layer order, weight index, shapes, dtypes) and writes the result as an ordinary spec.
It works on layers (the entries a layer owns: a kernel and its bias, a BatchNorm's four
statistics), in five passes, each over what the previous ones left:

1. **names**: a source layer and a target layer of the same name whose weights fit;
2. **structure**: when the target is a model and the source records a structure Keras loads
   by (a Keras 3 file's saving-tree keys, the legacy HDF5 order, TensorFlow's object graph)
   that agrees with the whole model, the layers Keras' own loading would pair
   (:func:`ckptconv.keras.structure.match_structure`);
3. **similar names**: pairs whose names are clearly each other's most similar (tokens
   weighted by rarity, so ``layer.3.attention.self.query`` finds ``layer_3/.../query``) and
   whose weights fit;
4. **position**: a sequence alignment of the remaining layers, in each side's order (the
   Needleman-Wunsch recurrence, a gap costing nothing): the alignment with the most layer
   pairs whose weights fit, ties broken by name similarity and relative position;
5. **shapes**: a remaining pair whose weights fit each other and nothing else.

Whether two layers' weights fit is decided weight by weight: the same weight name, or a
known convention between frameworks (:mod:`ckptconv.mapping.conventions`: a PyTorch ``Linear``/``Conv*d``
``weight`` is a Keras ``kernel`` with its axes reversed or rotated, BatchNorm's
``running_mean`` is ``moving_mean``, ...), or, for weight names nobody knows, the same index;
then the shape must agree (after the convention's transpose, and a reshape that only splits
or merges axes, as an ``EinsumDense`` kernel needs). Within a pair of layers the weights are
matched by an exact maximum-score assignment. Nothing is read but metadata.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..options import keyword_options
from ..store import layer_of, leaf_of
from .conventions import DROPPED, Weight, WeightPair, assign, fit_ops, related
from .diff import open_side
from .patterns import natural_key
from .spec import Spec
from .suggestion import Leftover, LayerMatch, SpecWriter, Suggestion

__all__ = ["suggest", "align", "Suggestion", "LayerMatch", "Leftover"]


@dataclass(eq=False)
class _Layer:
    name: str
    tensors: list[Weight]
    position: int = 0
    tokens: frozenset[str] = frozenset()
    sizes: frozenset[int] = frozenset()  # element counts of its weights: a cheap first filter
    signature: int = 0  # what decides how it pairs (its weights' names, shapes, dtypes), numbered
    norm: float = 0.0  # of its token weights, for the similarity


@dataclass
class _LayerPair:
    source: _Layer
    target: _Layer
    pairs: list[WeightPair]
    dropped: list[Weight]
    extra: list[Weight]  # source weights of the layer that fill nothing
    unfilled: list[Weight]  # target weights of the layer nothing fills
    score: float

    @property
    def full(self) -> bool:
        return not self.extra and not self.unfilled


# -- entry points ------------------------------------------------------------------------------


@keyword_options
def suggest(source: Any, target: Any, *, include_all: bool = False, unsafe: bool = False) -> Spec:
    """Propose a spec that maps ``source``'s entries onto ``target``'s variables.

    Reads metadata only (building a ``.keras`` target with Keras reads its weights too). The
    spec is ordinary (``passthrough: false``, one rule per layer where a rename is enough,
    a rule per weight where ops are needed); each rule's ``comment`` says why. Review it, then
    check it with :func:`build_plan` (``ckptconv plan SRC --map SPEC --target TARGET``).
    :func:`align` returns the same with every leftover and a YAML rendering.

    Args:
        source: A checkpoint path, :class:`~ckptconv.Store`, ``{name: array}`` or a live Keras model.
        target: A live Keras model, ``{name: TargetTensor}`` (what
            :func:`~ckptconv.model_targets` returns), a ``.keras`` file (the model Keras
            builds from it), any other checkpoint path, or a :class:`~ckptconv.Store`.
        include_all: Align optimizer and bookkeeping entries too.
        unsafe: Let Keras build a ``.keras`` target that holds Lambda bytecode.

    Raises:
        CkptconvError: a side cannot be opened; FormatError/UnsafeInputError from building a
            ``.keras`` target.
    """
    return align(source, target, include_all=include_all, unsafe=unsafe).spec


@keyword_options
def align(source: Any, target: Any, *, include_all: bool = False, unsafe: bool = False) -> Suggestion:
    """Like :func:`suggest`, returning the :class:`Suggestion` (the spec, every match with its
    reason and confidence, the leftovers on both sides, ``to_yaml()``)."""
    src_store, close_src = open_side(source, what="source")
    try:
        tgt_layers, tgt_name, model = _target_side(target, include_all=include_all, unsafe=unsafe)
        src_layers = _layers_of(src_store.entries(include_all=include_all), recorded_order=_is_model(source))
        described = os.fspath(source) if isinstance(source, (str, os.PathLike)) else src_store.path
        aligner = _Aligner(src_layers, tgt_layers)
        if model is not None:
            aligner.structure = _structure(model, src_store)
            aligner.channels_first = _channels_first(model)
        suggestion = aligner.run(described, tgt_name)
        suggestion.target_file = model is not None and isinstance(target, (str, os.PathLike))
        return suggestion
    finally:
        if close_src:
            src_store.close()


def _is_model(side: Any) -> bool:
    from ..keras.targets import is_keras_model

    return not isinstance(side, (str, os.PathLike, Mapping)) and is_keras_model(side)


def _target_side(target: Any, *, include_all: bool, unsafe: bool) -> tuple[list[_Layer], str, Any]:
    """The target's layers, its description, and the live model when there is one."""
    if isinstance(target, Mapping) and target and not all(isinstance(v, np.ndarray) for v in target.values()):
        tensors = []
        counters: Counter[str] = Counter()
        for name, t in target.items():
            layer = layer_of(name)
            tensors.append(Weight(name, layer, leaf_of(name), counters[layer], tuple(t.shape), np.dtype(t.dtype)))
            counters[layer] += 1
        return _group(tensors), "<target>", None
    model = None
    if isinstance(target, (str, os.PathLike)) and _is_keras_archive(target):
        from ..keras.targets import build_keras_model

        model = build_keras_model(target, unsafe=unsafe)
    elif _is_model(target):
        model = target
    if model is not None:
        from ..keras.targets import model_store

        store = model_store(model)
        name = os.fspath(target) if isinstance(target, (str, os.PathLike)) else store.path
        return _layers_of(store.entries(include_all=include_all), recorded_order=True), name, model
    store, close = open_side(target, what="target")
    try:
        name = os.fspath(target) if isinstance(target, (str, os.PathLike)) else store.path
        return _layers_of(store.entries(include_all=include_all)), name, None
    finally:
        if close:
            store.close()


def _channels_first(model: Any) -> bool | None:
    """Whether the model's ``Flatten`` orders features ``[C, H, W]`` as PyTorch does (True),
    ``[H, W, C]`` (False), or the model has no layer that says (None). Keras' ``Flatten``
    keeps the order of what reaches it when its own ``data_format`` is channels_last, and
    moves the channels last first when it is channels_first; so the order is ``[C, H, W]``
    when the convolutions are channels_first and the ``Flatten`` channels_last."""
    convs, flattens = set(), set()
    stack = [model]
    while stack:
        layer = stack.pop()
        value = getattr(layer, "data_format", None)
        if value in ("channels_first", "channels_last"):
            (flattens if type(layer).__name__ == "Flatten" else convs).add(value)
        stack.extend(getattr(layer, "layers", ()) or ())
    if not convs:
        return None
    return "channels_first" in convs and "channels_first" not in flattens


def _structure(model: Any, store: Any) -> tuple[dict[str, str], str] | None:
    """``({variable: entry}, how)`` when the source records a structure (Keras' saving-tree
    keys, the legacy HDF5 order, TensorFlow's object graph) and all of it agrees with the
    model's, as Keras' own loading pairs them; else None."""
    from ..keras.structure import StructureMatch, match_structure
    from ..keras.targets import LiveModel

    found = match_structure(LiveModel(model), store)
    if not isinstance(found, StructureMatch):
        return None
    return {variable: entry.name for variable, entry in found.pairs.items()}, found.how


def _is_keras_archive(path: str | os.PathLike[str]) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return "config.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _layers_of(entries: Iterable[Any], *, recorded_order: bool = False) -> list[_Layer]:
    entries = list(entries)
    tensors = [
        Weight(e.name, e.layer, _own_leaf(e.name, e.layer), e.index, tuple(e.shape), np.dtype(e.dtype))
        for e in entries
    ]
    layers = _group(tensors)
    if not recorded_order and _writer_sorted(entries):
        # the file keeps its writer's sorted order (the safetensors library sorts by dtype,
        # then name), not the model's: numbered layers come closest in natural order
        layers.sort(key=lambda layer: natural_key(layer.name))
    for i, layer in enumerate(layers):
        layer.position = i
    return layers


def _own_leaf(name: str, layer: str) -> str:
    if layer and name.startswith(layer) and len(name) > len(layer) + 1 and name[len(layer)] in "/.":
        return name[len(layer) + 1 :]
    return leaf_of(name)


def _group(tensors: list[Weight]) -> list[_Layer]:
    groups: dict[str, list[Weight]] = {}
    for t in tensors:
        groups.setdefault(t.layer, []).append(t)
    layers = [_Layer(name, sorted(members, key=lambda t: t.index)) for name, members in groups.items()]
    for i, layer in enumerate(layers):
        layer.position = i
    return layers


def _writer_sorted(entries: list[Any]) -> bool:
    """Whether the entries are in a writer's sorted order: by name within runs of one dtype,
    each dtype in one run (the safetensors library's layout; a plain sort by name too)."""
    if len(entries) < 3:
        return False
    runs: list[tuple[np.dtype, list[str]]] = []
    for e in entries:
        if runs and runs[-1][0] == e.dtype:
            runs[-1][1].append(e.name)
        else:
            runs.append((e.dtype, [e.name]))
    if len({dtype for dtype, _ in runs}) != len(runs):
        return False
    return all(names == sorted(names) for _, names in runs)


# -- names -------------------------------------------------------------------------------------

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _tokens(name: str) -> frozenset[str]:
    return frozenset(t.lower() for part in re.split(r"[^A-Za-z0-9]+", name) for t in _CAMEL.split(part) if t)


class _Similarity:
    """Cosine similarity of layer names as token sets, each token weighted by its rarity
    among both sides' layers (``layer`` in every name counts little, ``query`` much)."""

    def __init__(self, layers: Iterable[_Layer]) -> None:
        layers = list(layers)
        df: Counter[str] = Counter()
        for layer in layers:
            df.update(layer.tokens)
        n = max(len(layers), 1)
        self.weight2 = {tok: math.log(1 + n / count) ** 2 for tok, count in df.items()}
        for layer in layers:
            layer.norm = math.sqrt(sum(self.weight2[t] for t in layer.tokens))

    def __call__(self, a: _Layer, b: _Layer) -> float:
        common = a.tokens & b.tokens
        if not common or not a.norm or not b.norm:
            return 0.0
        w2 = self.weight2
        return sum(w2[t] for t in common) / (a.norm * b.norm)


# -- layers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fit:
    """How a source layer's weights fill a target layer's, by position in their lists."""

    pairs: tuple[tuple[int, int, str, tuple[Any, ...], str | None, float], ...]
    dropped: tuple[int, ...]
    extra: tuple[int, ...]
    unfilled: tuple[int, ...]
    score: float


def _evaluate(s: _Layer, t: _Layer) -> _Fit | None:
    # an entry nobody else has (PyTorch's batch counter) is dropped, unless this target has it
    theirs = {x.leaf for x in t.tensors}
    droppable = [x for x in s.tensors if x.leaf in DROPPED and x.leaf not in theirs]
    candidates = [x for x in s.tensors if x not in droppable]
    pairs = assign(candidates, t.tensors)
    if not pairs:
        return None
    used = {id(p.source) for p in pairs}
    filled = {id(p.target) for p in pairs}
    extra = [x for x in candidates if id(x) not in used]
    unfilled = [x for x in t.tensors if id(x) not in filled]
    if any(related(x, y) for x in extra for y in unfilled):
        return None  # a kernel left over on both sides: these layers differ in shape
    score = sum(p.score for p in pairs) - 2.0 * len(unfilled) - 1.0 * len(extra)
    if score <= 0:
        return None
    pairs.sort(key=lambda p: p.target.index)
    si = {id(x): i for i, x in enumerate(s.tensors)}
    ti = {id(x): j for j, x in enumerate(t.tensors)}
    return _Fit(
        tuple((si[id(p.source)], ti[id(p.target)], p.kind, p.ops, p.label, p.score) for p in pairs),
        tuple(si[id(x)] for x in droppable),
        tuple(si[id(x)] for x in extra),
        tuple(ti[id(x)] for x in unfilled),
        score,
    )


def _clear_best(ranked: list[tuple[float, _Layer]], margin: float) -> _Layer | None:
    """The most similar candidate, if it leads the next by ``margin``."""
    if not ranked:
        return None
    ranked = sorted(ranked, key=lambda x: -x[0])
    if len(ranked) > 1 and ranked[0][0] - ranked[1][0] < margin:
        return None
    return ranked[0][1]


class _Aligner:
    def __init__(self, sources: list[_Layer], targets: list[_Layer]) -> None:
        numbers: dict[tuple[Any, ...], int] = {}
        for layer in (*sources, *targets):
            layer.tokens = _tokens(layer.name)
            layer.sizes = frozenset(t.size for t in layer.tensors)
            weights = tuple((t.leaf, t.shape, t.dtype.str, t.index) for t in layer.tensors)
            layer.signature = numbers.setdefault(weights, len(numbers))
        self.sources = sources
        self.targets = targets
        self.similarity = _Similarity([*sources, *targets])
        # how two layers pair depends on their signatures only: a model's repeated blocks
        # are evaluated once (weight positions, not the weights themselves, are cached)
        self._fits: dict[tuple[int, int], _Fit | None] = {}
        self._pairs: dict[tuple[int, int], _LayerPair | None] = {}
        self._counts: dict[tuple[int, int, bool], int] = {}
        self._groups: dict[int, tuple[Counter[int], dict[int, _Layer]]] = {}
        self.placed: list[tuple[_LayerPair, str, float]] = []  # pair, how, similarity
        self.free_s = list(sources)
        self.free_t = list(targets)
        # ({variable: entry}, how) when the source's recorded structure is the model's
        self.structure: tuple[dict[str, str], str] | None = None
        # whether the target model flattens feature maps [C, H, W] (None: unknown)
        self.channels_first: bool | None = None

    def pair(self, s: _Layer, t: _Layer) -> _LayerPair | None:
        """How ``s`` fills ``t`` when their weights fit, else None."""
        key = (id(s), id(t))
        if key in self._pairs:
            return self._pairs[key]
        fit = self.fit(s, t)
        pair = None
        if fit is not None:
            pairs = [
                WeightPair(s.tensors[i], t.tensors[j], kind, ops, label, score)
                for i, j, kind, ops, label, score in fit.pairs
            ]
            pair = _LayerPair(s, t, pairs, [s.tensors[i] for i in fit.dropped],
                              [s.tensors[i] for i in fit.extra], [t.tensors[j] for j in fit.unfilled], fit.score)
        self._pairs[key] = pair
        return pair

    def fits_count(self, layer: _Layer, others: list[_Layer], *, reverse: bool = False) -> int:
        """How many of ``others`` ``layer`` fits (as the source, or as the target with
        ``reverse``); each signature among them is evaluated once."""
        key = (layer.signature, id(others), reverse)
        if key not in self._counts:
            if id(others) not in self._groups:
                self._groups[id(others)] = (Counter(o.signature for o in others), {o.signature: o for o in others})
            groups, example = self._groups[id(others)]
            self._counts[key] = sum(
                n for sig, n in groups.items()
                if (self.fit(example[sig], layer) if reverse else self.fit(layer, example[sig])) is not None
            )
        return self._counts[key]

    def fit(self, s: _Layer, t: _Layer) -> _Fit | None:
        """Whether (and how) layers with the signatures of ``s`` and ``t`` fit."""
        if not (s.sizes & t.sizes):
            return None
        key = (s.signature, t.signature)
        if key not in self._fits:
            self._fits[key] = _evaluate(s, t)
        return self._fits[key]

    def take(self, pair: _LayerPair, how: str) -> None:
        self.placed.append((pair, how, self.similarity(pair.source, pair.target)))
        self.free_s.remove(pair.source)
        self.free_t.remove(pair.target)

    # the five passes, in the order run() takes them

    def by_names(self) -> None:
        by_name = {t.name: t for t in self.free_t}
        for s in list(self.free_s):
            t = by_name.get(s.name)
            pair = self.pair(s, t) if t is not None else None
            if pair is not None:
                self.take(pair, "names")

    def by_structure(self) -> None:
        """Layers Keras' own loading pairs (the source's structure is the whole model's):
        every variable of the target layer from one source layer, with nothing else left in
        it but entries dropped by convention."""
        if self.structure is None:
            return
        pairs, _ = self.structure
        owner = {x.name: (layer, x) for layer in self.free_s for x in layer.tensors}
        for t in list(self.free_t):
            found = [owner.get(pairs.get(v.name, "")) for v in t.tensors]
            if not found or any(f is None for f in found) or len({id(f[0]) for f in found}) != 1:  # type: ignore[index]
                continue
            s = found[0][0]  # type: ignore[index]
            used = {id(x) for _, x in found}  # type: ignore[misc]
            rest = [x for x in s.tensors if id(x) not in used]
            if s not in self.free_s or any(x.leaf not in DROPPED for x in rest):
                continue
            weight_pairs = []
            for (_, x), v in zip(found, t.tensors):  # type: ignore[misc]
                ops = fit_ops(x, v, "same", reshape=False)
                if ops is None:
                    break
                weight_pairs.append(WeightPair(x, v, "structure", ops, None, 4.5))
            else:
                self.take(_LayerPair(s, t, weight_pairs, rest, [], [], 4.5 * len(weight_pairs)), "structure")

    def by_similar_names(self, threshold: float = 0.3, margin: float = 0.1) -> None:
        """Pairs that fit and whose names are each other's clearly most similar; repeated
        over what is left, since a pair taken can make the next one clear (two LayerNorms of
        a block, told apart once the first has found its match)."""
        candidates = []
        for s in self.free_s:
            for t in self.free_t:
                if s.tokens & t.tokens and self.fit(s, t) is not None:
                    sim = self.similarity(s, t)
                    if sim >= threshold:
                        candidates.append((sim, s, t))
        while True:
            free_s, free_t = set(map(id, self.free_s)), set(map(id, self.free_t))
            by_s: dict[int, list[tuple[float, _Layer]]] = {}
            by_t: dict[int, list[tuple[float, _Layer]]] = {}
            for sim, s, t in candidates:
                if id(s) in free_s and id(t) in free_t:
                    by_s.setdefault(id(s), []).append((sim, t))
                    by_t.setdefault(id(t), []).append((sim, s))
            took = False
            for s in list(self.free_s):
                best = _clear_best(by_s.get(id(s), []), margin)
                if best is None or best not in self.free_t or _clear_best(by_t[id(best)], margin) is not s:
                    continue
                pair = self.pair(s, best)
                assert pair is not None
                self.take(pair, "similar names")
                took = True
            if not took:
                return

    def by_position(self) -> None:
        S, T = self.free_s, self.free_t
        n, m = len(S), len(T)
        if not n or not m:
            return
        score = [[0.0] * (m + 1) for _ in range(n + 1)]
        move = [[0] * (m + 1) for _ in range(n + 1)]  # 1 diagonal, 2 skip source, 3 skip target
        for i in range(1, n + 1):
            s = S[i - 1]
            rs = (i - 1) / max(n - 1, 1)
            for j in range(1, m + 1):
                best, how = score[i - 1][j], 2
                if score[i][j - 1] > best:
                    best, how = score[i][j - 1], 3
                fit = self.fit(s, T[j - 1])
                if fit is not None:
                    rt = (j - 1) / max(m - 1, 1)
                    gain = 10.0 + fit.score / 10 + 3.0 * self.similarity(s, T[j - 1]) + (1.0 - abs(rs - rt))
                    if score[i - 1][j - 1] + gain > best:
                        best, how = score[i - 1][j - 1] + gain, 1
                score[i][j], move[i][j] = best, how
        chosen = []
        i, j = n, m
        while i and j:
            if move[i][j] == 1:
                chosen.append(self.pair(S[i - 1], T[j - 1]))
                i, j = i - 1, j - 1
            elif move[i][j] == 2:
                i -= 1
            else:
                j -= 1
        for pair in reversed(chosen):
            assert pair is not None
            self.take(pair, "position")

    def by_unique_fit(self) -> None:
        changed = True
        while changed:
            changed = False
            fits = {id(s): [t for t in self.free_t if self.fit(s, t)] for s in self.free_s}
            for s in list(self.free_s):
                ts = fits[id(s)]
                if len(ts) == 1 and sum(1 for x in self.free_s if ts[0] in fits[id(x)]) == 1:
                    pair = self.pair(s, ts[0])
                    assert pair is not None
                    self.take(pair, "shapes")
                    changed = True
                    break

    def after_a_flatten(self) -> None:
        """A PyTorch ``Linear`` after a convolution and a flatten reads the feature map
        flattened as ``[C, H, W]``; a Keras ``Dense`` after ``Flatten`` in a channels_last
        model reads ``[H, W, C]``. The kernel's rows must then be reordered, not only the
        matrix transposed: the shapes fit either way, so nothing else would tell. A Linear
        weight ``[out, in]`` whose ``in`` is ``k > 1`` times the channels of the source's last
        convolution before it becomes ``reshape [out, C, k]``, ``transpose [2, 1, 0]``,
        ``reshape [in, out]`` (rows ``c * k + s`` to ``s * C + c``), unless the target model
        flattens ``[C, H, W]`` too (channels_first convolutions before a channels_last
        ``Flatten``: :func:`_channels_first`)."""
        if self.channels_first:
            return
        convs = sorted(
            (layer.position, w.shape[0])
            for layer in self.sources
            for w in layer.tensors
            if w.leaf == "weight" and len(w.shape) >= 3
        )
        linears = sorted(
            layer.position for layer in self.sources for w in layer.tensors if w.leaf == "weight" and len(w.shape) == 2
        )
        for i, (pair, how, sim) in enumerate(self.placed):
            changed = False
            new_pairs = []
            for p in pair.pairs:
                label = p.label or ""
                if p.kind == "convention" and label.startswith("PyTorch -> Keras: Linear weight") and len(p.source.shape) == 2:
                    here = pair.source.position
                    before = [(position, c) for position, c in convs if position < here]
                    out, width = p.source.shape
                    # the first Linear after the last convolution: a flatten happens once
                    first = bool(before) and not any(before[-1][0] < position < here for position in linears)
                    channels = before[-1][1] if first else 0
                    if channels and width % channels == 0 and width // channels > 1:
                        k = width // channels
                        ops = ({"reshape": [out, channels, k]}, {"transpose": [2, 1, 0]}, {"reshape": [width, out]},
                               *(o for o in p.ops if isinstance(o, dict) and "cast" in o))
                        note = (f"PyTorch -> Keras: Linear weight [out, in] after a flatten of {channels} channels "
                                f"x {k} positions -> kernel rows reordered from [C, H, W] to channels_last [H, W, C] "
                                "(check: for a Keras model flattening channels_first, or pooling before the "
                                "Linear, a plain transpose)")
                        p = replace(p, ops=ops, label=note)
                        changed = True
                new_pairs.append(p)
            if changed:
                self.placed[i] = (replace(pair, pairs=new_pairs), how, sim)

    def run(self, source_name: str, target_name: str) -> Suggestion:
        self.by_names()
        self.by_structure()
        self.by_similar_names()
        self.by_position()
        self.by_unique_fit()
        self.after_a_flatten()
        return SpecWriter(self).suggestion(source_name, target_name)


