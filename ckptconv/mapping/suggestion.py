"""From an alignment to a spec: the rules, the reasons, the leftovers, and the YAML text.

:class:`Suggestion` is what :func:`ckptconv.mapping.suggest.align` returns. The rules are
ordinary spec rules (``layer:``/``to_layer:`` where a rename says it all, ``from:``/``to:``
with ops otherwise); :meth:`Suggestion.to_yaml` writes them with a comment on each layer's
rules saying why and how sure, the source entries no rule places as commented-out rules, and
the target variables nothing fills. PyYAML writes no comments, so the (small, fixed) shape of
a suggested spec is written here: one flow mapping per rule, strings quoted whenever plain
YAML could read them as something else. ``load_spec`` of the text gives back the spec.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..dtypes import dtype_name
from ..store import shape_text
from .conventions import CONVENTIONS, DROPPED, conventions_text, permutation_for, related_leaves
from .spec import Rule, Spec

__all__ = ["Suggestion", "LayerMatch", "Leftover", "SpecWriter", "yaml_value"]


@dataclass(frozen=True)
class LayerMatch:
    """One source layer placed on one target layer.

    Attributes:
        source, target: The two layers.
        how: Which pass placed it: ``names``, ``structure``, ``similar names``, ``position`` or
            ``shapes``.
        confidence: ``sure``, ``likely`` or ``unsure``.
        reason: Why, in words (the comment the YAML spec carries).
        weights: ``(source entry, target variable, ops as text)`` for every weight.
        rules: The rules written for it (with ``comment`` set to ``reason``).
    """

    source: str
    target: str
    how: str
    confidence: str
    reason: str
    weights: tuple[tuple[str, str, str], ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Leftover:
    """A source entry no rule places, or a target variable no rule fills.

    Attributes:
        name, shape, dtype: The tensor.
        layer: Its layer.
        note: Why, or the nearest candidate on the other side (for the YAML comment).
        suggestion: For a source entry: a rule to uncomment and edit (spec-file form), or None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    layer: str
    note: str = ""
    suggestion: dict[str, Any] | None = None


@dataclass
class Suggestion:
    """What :func:`align` found: the spec, and the why of every rule.

    Attributes:
        spec: The spec (``passthrough: false``: what no rule takes is dropped).
        matches: Every placed layer, in the target's order.
        drops: ``(entry, reason)`` for entries dropped on purpose (PyTorch's batch counters).
        unplaced: Source entries no rule places (written as commented-out rules).
        unfilled: Target variables no rule fills (listed in comments).
        source, target: Descriptions of both sides (paths where given).
        target_file: The target is a ``.keras`` file (``plan --target`` checks the spec
            against the model it describes; other targets have no such check).
    """

    spec: Spec
    matches: list[LayerMatch] = field(default_factory=list)
    drops: list[tuple[str, str]] = field(default_factory=list)
    unplaced: list[Leftover] = field(default_factory=list)
    unfilled: list[Leftover] = field(default_factory=list)
    source: str = ""
    target: str = ""
    target_file: bool = False

    def to_yaml(self, *, spec_name: str = "SPEC") -> str:
        """The spec as YAML text: a comment on each layer's rules saying why and how sure,
        unplaced source entries as commented-out rules, unfilled target variables listed.
        ``spec_name`` is the name the file will have (for the comment on how to check it)."""
        return _render_yaml(self, spec_name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form: the spec, and every match and leftover."""
        return {
            "source": self.source,
            "target": self.target,
            "spec": self.spec.to_dict(),
            "matches": [
                {
                    "source": m.source, "target": m.target, "how": m.how, "confidence": m.confidence,
                    "reason": m.reason,
                    "weights": [{"source": s, "target": t, "ops": o} for s, t, o in m.weights],
                }
                for m in self.matches
            ],
            "dropped": [{"name": n, "reason": r} for n, r in self.drops],
            "unplaced": [_leftover_json(x) for x in self.unplaced],
            "unfilled": [_leftover_json(x) for x in self.unfilled],
        }


def _leftover_json(x: Leftover) -> dict[str, Any]:
    return {"name": x.name, "shape": list(x.shape), "dtype": x.dtype, "layer": x.layer, "note": x.note}


def _literal(name: str) -> str:
    """A pattern that matches exactly ``name``."""
    if any(c in name for c in "*?") or name.startswith("re:"):
        return "re:" + re.escape(name)
    return name


def _template(name: str) -> str:
    return name.replace("{", "{{").replace("}", "}}")


def _ops_text(ops: tuple[Any, ...]) -> str:
    if not ops:
        return "copy"
    parts = []
    for op in ops:
        if isinstance(op, str):
            parts.append(op)
        else:
            ((key, value),) = op.items()
            parts.append(f"{key} {value}")
    return " | ".join(parts)


def _op_arg(ops: tuple[Any, ...], name: str) -> str | None:
    for op in ops:
        if isinstance(op, dict) and name in op:
            value = op[name]
            return shape_text(tuple(value)) if isinstance(value, list) else str(value)
    return None



class SpecWriter:
    """Turns an aligner's placed layers and leftovers into a :class:`Suggestion` (rules in the
    target's order, each with its reason and confidence)."""

    def __init__(self, aligner: Any) -> None:
        self.a = aligner
        self._kin: dict[tuple[object, object], int] = {}  # see _kinship

    def suggestion(self, source_name: str, target_name: str) -> Suggestion:
        order = {id(t): i for i, t in enumerate(self.a.targets)}  # rules follow the target's order
        placed = sorted(self.a.placed, key=lambda p: order[id(p[0].target)])
        matches: list[LayerMatch] = []
        drops: list[tuple[str, str]] = []
        rules: list[Rule] = []
        unplaced: list[Leftover] = []
        for pair, how, sim in placed:
            match, pair_drops = self._match(pair, how, sim)
            matches.append(match)
            drops += pair_drops
            rules += match.rules
            for x in pair.extra:
                unplaced.append(self._leftover_source(x, f"layer {pair.source.name!r} is placed on "
                                                         f"{pair.target.name!r}, which has no weight that fits it"))
        unplaced += self._unplaced_layers()
        for x in (x for layer in self.a.free_s for x in layer.tensors if x.leaf in DROPPED):
            drops.append((x.name, DROPPED[x.leaf]))
            rules.append(Rule(drop=_literal(x.name), comment=DROPPED[x.leaf]))
        filled = {id(p.target) for pair, _, _ in placed for p in pair.pairs}
        partly = {id(pair.target): pair.source.name for pair, _, _ in placed}
        unfilled = [
            Leftover(x.name, x.shape, dtype_name(x.dtype), x.layer,
                     f"its layer is placed from {partly[id(layer)]!r}, which has no weight that fits it"
                     if id(layer) in partly else "")
            for layer in self.a.targets for x in layer.tensors if id(x) not in filled
        ]
        total_s = sum(len(layer.tensors) for layer in self.a.sources)
        total_t = sum(len(layer.tensors) for layer in self.a.targets)
        description = (
            f"Suggested by ckptconv suggest: {len(matches)} layer(s) placed, {total_t - len(unfilled)} of "
            f"{total_t} target variables filled from {total_s} source entries, {len(unplaced)} source "
            "entries not placed."
        )
        spec = Spec(rules=tuple(rules), passthrough=False, description=description)
        numbered = iter(spec.rules)  # the spec numbers its rules: give the matches those
        matches = [replace(m, rules=tuple(next(numbered) for _ in m.rules)) for m in matches]
        return Suggestion(spec, matches, drops, unplaced, unfilled, source_name, target_name)

    def _match(self, pair: Any, how: str, sim: float) -> tuple[LayerMatch, list[tuple[str, str]]]:
        s, t = pair.source, pair.target
        reason, confidence = self._reason(pair, how, sim)
        rules: list[Rule] = []
        drops = [(x.name, DROPPED[x.leaf]) for x in pair.dropped]
        for name, why in drops:
            rules.append(Rule(drop=_literal(name), comment=why))
        if self._layer_rule_fits(pair):
            ops = pair.pairs[0].ops
            if s.name == t.name:
                rules.append(Rule(layer=_literal(s.name), ops=ops, comment=reason))
            else:
                rules.append(Rule(layer=_literal(s.name), to_layer=_template(t.name), ops=ops, comment=reason))
        else:
            for p in pair.pairs:
                rules.append(Rule(from_=_literal(p.source.name), to=_template(p.target.name), ops=p.ops, comment=reason))
        weights = tuple((p.source.name, p.target.name, _ops_text(p.ops)) for p in pair.pairs)
        return LayerMatch(s.name, t.name, how, confidence, reason, weights, tuple(rules)), drops

    def _layer_rule_fits(self, pair: Any) -> bool:
        """One ``layer:``/``to_layer:`` rule says it all: every weight keeps its own name part
        under the new layer, with the same ops, and the layer has nothing else."""
        s, t = pair.source.name, pair.target.name
        if pair.extra or not pair.pairs or not s or not t:
            return False
        ops = pair.pairs[0].ops
        for p in pair.pairs:
            # the plan names the output TARGET_LAYER + the separator and part after the layer
            own = p.source.name[len(s):]
            if not (p.source.name.startswith(s) and own[:1] in ("/", ".") and len(own) > 1):
                return False
            if p.ops != ops or t + own != p.target.name:
                return False
        return True

    def _reason(self, pair: Any, how: str, sim: float) -> tuple[str, str]:
        s, t = pair.source, pair.target
        why = []
        if how == "names":
            why.append("same name")
        elif how == "structure":
            why.append(f"structure: the source's structure is the model's, paired {self.a.structure[1]}")
        elif how == "similar names":
            why.append(f"similar names ({sim:.2f})")
        elif how == "position":
            why.append(f"position (source layer {s.position + 1} of {len(self.a.sources)}, "
                       f"target layer {t.position + 1} of {len(self.a.targets)})")
        else:
            why.append("shapes: the only layers left that fit each other")
        shapes = ", ".join(f"{p.target.leaf} {shape_text(p.target.shape)}" for p in pair.pairs)
        why.append(f"shapes fit ({shapes})")
        why += conventions_text(pair.pairs)
        for op, text in (("reshape", "reshaped (axes split or merged, no element moves)"), ("cast", "cast")):
            which = [f"{p.target.leaf} to {_op_arg(p.ops, op)}" for p in pair.pairs if _op_arg(p.ops, op) is not None]
            if which:
                why.append(f"{text}: {', '.join(which)}")
        if any(p.kind == "index" for p in pair.pairs):
            why.append("weights paired by index (their names are not known)")
        if pair.unfilled:
            why.append("partial: no source for " + ", ".join(x.leaf for x in pair.unfilled))
        if pair.extra:
            why.append("partial: " + ", ".join(x.leaf for x in pair.extra) + " not placed")
        unique = self._unique(pair)
        if unique:
            why.append("no other layer fits either")
        if not pair.full:
            confidence = "unsure"
        elif any("after a flatten" in (p.label or "") for p in pair.pairs):
            confidence = "likely"  # the model's data_format decides, and may not be known
        elif any(p.kind == "index" for p in pair.pairs):
            confidence = "likely"
        elif how in ("names", "structure") or unique or (how == "similar names" and sim >= 0.6):
            confidence = "sure"
        else:
            confidence = "likely"
        return "; ".join(why), confidence

    def _unique(self, pair: Any) -> bool:
        """Whether the two layers fit each other and no other layer of either side."""
        return self.a.fits_count(pair.source, self.a.targets) == 1 and self.a.fits_count(
            pair.target, self.a.sources, reverse=True) == 1

    def _unplaced_layers(self) -> list[Leftover]:
        out = []
        for layer in self.a.free_s:
            tensors = [x for x in layer.tensors if x.leaf not in DROPPED]
            if not tensors:
                continue
            nearest = self._nearest_target(layer)
            if nearest is None:
                note = "no target layer is left"
                suggestion = {"layer": _literal(layer.name), "to_layer": "TARGET_LAYER"}
            else:
                theirs = ", ".join(f"{x.leaf} {shape_text(x.shape)}" for x in nearest.tensors)
                note = f"no target layer left fits; nearest: {nearest.name} ({theirs})"
                suggestion = {"layer": _literal(layer.name), "to_layer": _template(nearest.name)}
                per_weight = _weight_rules(tensors, nearest)
                if per_weight is not None:  # other names or layouts: a rule per weight
                    note += "; the shapes differ: a slice (or other op) is needed as well"
                    for x in tensors:
                        out.append(Leftover(x.name, x.shape, dtype_name(x.dtype), layer.name, note, per_weight[id(x)]))
                    continue
            for i, x in enumerate(tensors):
                out.append(Leftover(x.name, x.shape, dtype_name(x.dtype), layer.name, note,
                                    suggestion if i == 0 else None))
        return out

    def _nearest_target(self, layer: Any) -> Any:
        """The target layer a reader would try: among the free layers of its kind (those
        whose weights take most of its weights by name, as the conventions relate them, and
        rank: a BatchNorm's four vectors, not a convolution's kernel), or all free layers if
        none is, the most similar name (if any is similar), else the one at the closest
        relative position."""
        pool = self.a.free_t or self.a.targets
        if not pool:
            return None
        mine = _kind_key(layer)
        kin = [self._kinship(mine, _kind_key(t)) for t in pool]
        most = max(kin)
        if most:
            pool = [t for t, k in zip(pool, kin) if k == most]
        similar = max(pool, key=lambda t: self.a.similarity(layer, t))
        if self.a.similarity(layer, similar) >= 0.2:
            return similar
        if not self.a.free_t:
            return None
        rel = layer.position / max(len(self.a.sources) - 1, 1)
        return min(pool, key=lambda t: abs(rel - t.position / max(len(self.a.targets) - 1, 1)))

    def _kinship(self, mine: tuple[tuple[int, str], ...], theirs: tuple[tuple[int, str], ...]) -> int:
        """How many of the weights ``mine`` (rank, leaf name) a weight of ``theirs`` of the
        same rank and a related name takes, each taken once (a model has a few kinds of layer:
        counted once per pair of kinds)."""
        found = self._kin.get((mine, theirs))
        if found is None:
            found = self._kin[(mine, theirs)] = sum(p is not None for p in _partners(mine, theirs))
        return found

    def _leftover_source(self, x: Any, note: str) -> Leftover:
        return Leftover(x.name, x.shape, dtype_name(x.dtype), x.layer, note,
                        {"from": _literal(x.name), "to": "TARGET_VARIABLE"})


def _partners(mine: Sequence[tuple[int, str]], theirs: Sequence[tuple[int, str]]) -> list[int | None]:
    """For each weight of ``mine`` (rank, leaf name), in order, the index in ``theirs`` of the
    first weight not taken yet of the same rank and a related name (the conventions'), or None."""
    free = list(range(len(theirs)))
    out: list[int | None] = []
    for rank, leaf in mine:
        j = next((j for j in free if theirs[j][0] == rank and related_leaves(leaf, theirs[j][1])), None)
        if j is not None:
            free.remove(j)
        out.append(j)
    return out


def _weight_rules(tensors: list[Any], target: Any) -> dict[int, dict[str, Any]] | None:
    """Rules placing each of a layer's ``tensors`` on the weight of ``target`` of its rank and
    a related name (the conventions' renames, and their transposes), by ``id`` of the tensor;
    None when a layer rename says it all (the same weight names, no transpose), or when a
    tensor has no such weight (then the layer rename is the best offer)."""
    partners = _partners([(len(x.shape), x.leaf) for x in tensors], [(len(y.shape), y.leaf) for y in target.tensors])
    if None in partners:
        return None
    rules: dict[int, dict[str, Any]] = {}
    renamed = False
    for x, j in zip(tensors, partners):
        y = target.tensors[j]
        rule: dict[str, Any] = {"from": _literal(x.name), "to": _template(y.name)}
        convention = CONVENTIONS.get((x.leaf, y.leaf))
        permutation = None if convention is None else permutation_for(len(x.shape), convention.layout)
        if permutation is not None:
            rule["ops"] = [{"transpose": list(permutation)}]
        renamed = renamed or x.leaf != y.leaf or permutation is not None
        rules[id(x)] = rule
    return rules if renamed else None


def _kind_key(layer: Any) -> tuple[tuple[int, str], ...]:
    """A layer's weights as (rank, leaf name), those dropped on purpose left out: what tells
    its kind (a convolution, a BatchNorm, a Dense)."""
    return tuple(sorted((len(x.shape), x.leaf) for x in layer.tensors if x.leaf not in DROPPED))


# -- YAML ---------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
# plain scalars YAML 1.1 (PyYAML) reads as booleans or null
_SPECIAL = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}
_WIDTH = 100


def yaml_value(value: Any) -> str:
    """``value`` (str, int, bool, list, dict) as a YAML flow value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _SPECIAL:
            return value
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted one
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} in a suggested spec")


def _rule(rule: Any) -> dict[str, Any]:
    """A rule in spec-file form; its comment goes in a YAML comment instead."""
    return {k: v for k, v in rule.to_dict().items() if k != "comment"}


def _comment(text: str, indent: str) -> list[str]:
    # a shape such as [3, 3, 1, 32] stays on one line
    text = re.sub(r"\[[^\]]*\]", lambda m: m.group(0).replace(" ", "\0"), text)
    lines = textwrap.wrap(
        text, width=_WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}#   ",
        break_long_words=False, break_on_hyphens=False,
    )
    return [line.replace("\0", " ") for line in lines]


def _render_yaml(s: Suggestion, spec_name: str = "SPEC") -> str:
    """The suggestion's spec as commented YAML (see :meth:`Suggestion.to_yaml`); ``spec_name``
    is the file's own name in the comment that says how to check it."""
    lines = _comment(f"Suggested by `ckptconv suggest` from {s.source} for {s.target}.", "")
    check = f"ckptconv plan {s.source} --map {spec_name}"
    if s.target_file:
        check += f" --target {s.target}"
    lines += _comment(
        f"A proposal to review, not a verdict: each rule says why it was chosen and how sure it is. Check it with: {check}",
        "",
    )
    lines.append("version: 1")
    lines.append("passthrough: false  # what no rule takes is dropped (listed at the end)")
    if s.spec.description:
        lines.append(f"description: {yaml_value(s.spec.description)}")
    rules_written = 0
    body: list[str] = []
    in_match = set()
    for m in s.matches:
        body.append("")
        body += _comment(f"{m.source} -> {m.target}: {m.reason}. {m.confidence.capitalize()}.", "  ")
        for rule in m.rules:
            body.append(f"  - {yaml_value(_rule(rule))}")
            in_match.add(rule.number)
            rules_written += 1
    loose = [r for r in s.spec.rules if r.number not in in_match]
    if loose:
        body.append("")
        body += _comment("Dropped on purpose:", "  ")
        for rule in loose:
            body.append(f"  - {yaml_value(_rule(rule))}  # {rule.comment}")
            rules_written += 1
    if s.unplaced:
        body.append("")
        body += _comment(
            f"Not placed ({len(s.unplaced)} source entries): no target variable left takes them. They "
            "are dropped; to place one, uncomment its rules, name the target where they say TARGET_..., "
            "and add the ops its shapes need.", "  "
        )
        body += _unplaced(s.unplaced)
    lines.append("rules:" if rules_written else "rules: []")
    lines += body
    if s.unfilled:
        lines.append("")
        lines += _comment(
            f"Target variables no rule fills ({len(s.unfilled)}): loading keeps their values "
            "(load_into strict=False, or only=); `plan --target` reports them as missing "
            "(accepted with --lenient).", ""
        )
        width = max(len(x.name) for x in s.unfilled)
        for x in s.unfilled:
            note = f"  ({x.note})" if x.note else ""
            lines.append(f"#   {x.name.ljust(width)}  {shape_text(x.shape)} {x.dtype}{note}")
    return "\n".join(lines) + "\n"


def _unplaced(leftovers: list[Leftover]) -> list[str]:
    out: list[str] = []
    by_layer: dict[str, list[Leftover]] = {}
    for x in leftovers:
        by_layer.setdefault(x.layer, []).append(x)
    for layer, members in by_layer.items():
        what = ", ".join(f"{x.name} {shape_text(x.shape)} {x.dtype}" for x in members)
        out += _comment(f"{what}: {members[0].note}", "  ")
        for x in members:
            if x.suggestion is not None:
                out.append(f"  # - {yaml_value(x.suggestion)}")
    return out
