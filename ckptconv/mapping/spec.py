"""The mapping spec: parsing YAML/JSON/TOML files or Python objects into :class:`Spec`.

A spec is validated completely when it is built: unknown keys or ops, invalid regexes,
templates that use captures the patterns do not have, bad slices and unknown dtypes all raise
:class:`~ckptconv.errors.SpecError` naming the rule by number and pattern. Whether the rules
fit a checkpoint is the plan's business (:func:`ckptconv.mapping.build_plan`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import by_name, dtype_name, is_floating, known_names
from ..errors import NoSuchFileError, SpecError, did_you_mean
from .. import strictjson
from ._yaml import DuplicateKey, YamlAlias, duplicate_key, read_yaml
from .cast import Cast
from .ops import (
    Concat,
    ExpandDims,
    FnOp,
    Op,
    Reshape,
    Slice,
    Split,
    Squeeze,
    Stack,
    Transpose,
)
from .dequantize import Dequantize
from .patterns import Pattern, Template, quoted

__all__ = ["Spec", "Rule", "load_spec", "parse_dtype_option", "parse_output_dtype", "OP_NAMES"]

OP_NAMES = ("transpose", "reshape", "slice", "cast", "squeeze", "expand_dims", "fn")
RULE_KEYS = (
    "from",
    "drop",
    "layer",
    "index",
    "to",
    "to_layer",
    "ops",
    "split",
    "concat",
    "stack",
    "dequantize",
    "optional",
    "allow_overflow",
    "shape",
    "comment",
)
JOINS = ("concat", "stack", "dequantize")  # the many-to-one ops
SPEC_KEYS = ("version", "dtype", "passthrough", "rules", "description")
SUPPORTED_VERSIONS = (1,)
# YAML reads bare yes/no/on/off/null/numbers as other types
_QUOTE_HINT = " (in YAML, quote names such as \"no\", \"on\", \"null\" or \"1\")"


def _suggest(word: str, choices: Sequence[str]) -> str:
    guess = did_you_mean(word, choices, cutoff=0.6)
    return f"; {guess}" if guess else f" (known: {', '.join(choices)})"


def parse_dtype_option(value: object) -> str | None:
    """Normalise a default-dtype option: None/``keep`` -> None, ``target``, or a canonical name.

    Raises:
        ValueError: not a dtype ckptconv knows.
    """
    if value is None:
        return None
    if isinstance(value, np.dtype) or isinstance(value, type):
        return dtype_name(np.dtype(value))
    if not isinstance(value, str):
        raise ValueError(f"expected a dtype name, received {value!r}")
    text = value.strip().lower()
    if text in ("keep", ""):
        return None
    if text == "target":
        return "target"
    try:
        name = dtype_name(by_name(text))
    except KeyError:
        raise ValueError(
            f"unknown dtype {value!r}{_suggest(text, [*known_names(), 'keep', 'target'])}"
        ) from None
    if by_name(name).kind == "c":
        # the default dtype casts real floating-point weights (complex ones keep theirs): a
        # complex default could only make real weights complex (a spec's cast op casts those)
        raise ValueError(
            f"{value!r} is complex, and the default dtype casts real weights only: give keep or a "
            "real dtype (float32, float16, bfloat16, ...)"
        )
    return name


def parse_output_dtype(value: object) -> str | None:
    """:func:`parse_dtype_option` for a conversion, which has no target model: ``target`` is
    refused.

    Raises:
        ValueError: not a dtype ckptconv knows, or ``target``.
    """
    name = parse_dtype_option(value)
    if name == "target":
        raise ValueError(
            "'target' takes each weight's dtype from a target model, and a conversion has none "
            "(plan with a target model, and load_into, have one); give a dtype name or keep"
        )
    return name


def _as_tuple(value: object) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return (value,)
    return tuple(value)


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what}: expected an integer, received {value!r}")
    return int(value)


def _int_list(value: object, what: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{what}: expected a list of integers, received {value!r}")
    return tuple(_int(v, what) for v in value)


def _parse_op(item: object, *, allow_overflow: bool) -> Op:
    """One entry of an ``ops`` list (string, one-key mapping, callable or Op). Raises ValueError."""
    if isinstance(item, Op):
        if isinstance(item, Cast) and allow_overflow and not item.allow_overflow:
            return replace(item, allow_overflow=True)
        return item
    if callable(item) and not isinstance(item, (str, Mapping)):
        return FnOp(item)
    if isinstance(item, str):
        name, arg, has_arg = item.strip(), None, False
    elif isinstance(item, Mapping):
        if "fn" in item:
            extra = set(item) - {"fn", "shape", "dtype"}
            if extra:
                raise ValueError(f"op {{fn: ...}}: unknown key(s) {sorted(extra)} (allowed: fn, shape, dtype)")
            if not callable(item["fn"]):
                raise ValueError("op {fn: ...}: 'fn' must be a Python callable (only in the Python API)")
            shape = item.get("shape")
            if shape is not None and not callable(shape):
                shape = _int_list(shape, "fn shape")
            return FnOp(item["fn"], shape=shape, dtype=item.get("dtype"))
        if len(item) != 1:
            raise ValueError(f"op {dict(item)!r}: write one op per list item, like {{reshape: [384, 12, 32]}}")
        ((name, arg),) = item.items()
        has_arg = True
    else:
        raise ValueError(f"op {item!r}: expected an op name or a one-key mapping")
    if name not in OP_NAMES or name == "fn":
        raise ValueError(f"unknown op {name!r}{_suggest(str(name), OP_NAMES[:-1])}")
    if name == "transpose":
        return Transpose(None if not has_arg or arg is None else _int_list(arg, "transpose"))
    if name == "squeeze":
        return Squeeze(None if not has_arg or arg is None else _int_list(arg, "squeeze"))
    if name == "expand_dims":
        return ExpandDims((0,) if not has_arg or arg is None else _int_list(arg, "expand_dims"))
    if not has_arg:
        example = {"reshape": "{reshape: [384, 12, 32]}", "slice": '{slice: "[:, :128]"}', "cast": "{cast: float16}"}
        raise ValueError(f"op {name!r} needs an argument, like {example[name]}")
    if name == "reshape":
        if isinstance(arg, str) and arg.strip() == "target":
            return Reshape("target")
        shape = _int_list(arg, "reshape")
        if shape.count(-1) > 1 or any(d < -1 for d in shape):
            raise ValueError(f"reshape {list(shape)}: sizes must be >= 0, with at most one -1")
        return Reshape(shape)
    if name == "slice":
        if not isinstance(arg, str):
            raise ValueError(f'slice: expected numpy index text like "[:, :128]", received {arg!r}')
        return Slice(arg)
    # cast
    overflow = allow_overflow
    lossy = False
    if isinstance(arg, Mapping):
        extra = set(arg) - {"dtype", "allow_overflow", "allow_lossy"}
        if extra or "dtype" not in arg:
            raise ValueError(
                "cast: write {cast: float16} or {cast: {dtype: float16, allow_overflow: true, "
                "allow_lossy: true}}"
            )
        for flag in ("allow_overflow", "allow_lossy"):
            if not isinstance(arg.get(flag, False), bool):
                raise ValueError(f"cast: {flag}: expected true or false, received {arg[flag]!r}")
        overflow = overflow or arg.get("allow_overflow", False)
        lossy = arg.get("allow_lossy", False)
        arg = arg["dtype"]
    try:
        dtype = by_name(arg) if isinstance(arg, str) else np.dtype(arg)
    except (KeyError, TypeError):
        raise ValueError(f"cast: unknown dtype {arg!r}{_suggest(str(arg), known_names())}") from None
    return Cast(dtype, allow_overflow=overflow, allow_lossy=lossy)


def _parse_join(value: object, kind: str) -> Concat | Stack | Dequantize:
    if kind == "dequantize":
        return _parse_dequantize(value)
    cls = Concat if kind == "concat" else Stack
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        extra = set(value) - {"axis"}
        if extra:
            raise ValueError(f"{kind}: unknown key(s) {sorted(extra)} (allowed: axis)")
        return cls(_int(value.get("axis", 0), f"{kind} axis"))
    return cls(_int(value, f"{kind} axis"))


def _parse_dequantize(value: object) -> Dequantize:
    if isinstance(value, Dequantize):
        return value
    if value is True or value is None:
        return Dequantize()
    if not isinstance(value, Mapping):
        raise ValueError(f"dequantize: write {{}} or {{axis: 0, dtype: bfloat16}}, received {value!r}")
    extra = set(value) - {"axis", "dtype"}
    if extra:
        raise ValueError(f"dequantize: unknown key(s) {sorted(extra)} (allowed: axis, dtype)")
    axis = value.get("axis")
    dtype = np.dtype(np.float32)
    if value.get("dtype") is not None:
        try:
            dtype = by_name(str(value["dtype"]))
        except KeyError:
            raise ValueError(f"dequantize: unknown dtype {value['dtype']!r}{_suggest(str(value['dtype']), known_names())}") from None
        if not is_floating(dtype):
            raise ValueError(f"dequantize: dtype must be floating point, received {value['dtype']!r}")
    return Dequantize(None if axis is None else _int(axis, "dequantize axis"), dtype)


def _parse_split(value: object) -> Split:
    if isinstance(value, Split):
        split = value
    elif isinstance(value, Mapping):
        extra = set(value) - {"axis", "parts", "sizes"}
        if extra:
            raise ValueError(f"split: unknown key(s) {sorted(extra)} (allowed: axis, parts, sizes)")
        if ("parts" in value) == ("sizes" in value):
            raise ValueError("split: give either parts (equal parts) or sizes (a list), like {axis: 0, parts: 3}")
        parts = _int(value["parts"], "split parts") if "parts" in value else None
        sizes = _int_list(value["sizes"], "split sizes") if "sizes" in value else None
        split = Split(_int(value.get("axis", 0), "split axis"), parts, sizes)
    else:
        raise ValueError("split: expected a mapping like {axis: 0, parts: 3}")
    if split.parts is not None and split.parts < 1:
        raise ValueError("split: parts must be at least 1")
    if split.sizes is not None and (split.sizes.count(-1) > 1 or any(s < -1 for s in split.sizes)):
        raise ValueError("split: sizes must be >= 0, with at most one -1")
    return split


@dataclass(frozen=True)
class Rule:
    """One mapping rule. Rules are tried in order; the first rule that matches an entry owns it.

    Build one in Python with the same keys as a spec file (``from`` is spelled ``from_``)::

        Rule(layer="conv_1_pretrained", to_layer="conv_1")
        Rule(from_="re:(.*)\\\\.weight", to="{1}/kernel", ops=["transpose"])
        Rule(drop="*position_ids")

    Attributes:
        from_: Name pattern(s): globs or ``re:`` regexes. A list means several sources for
            ``concat``/``stack``, alternatives otherwise.
        drop: Pattern(s) whose entries are dropped, or True to drop what the other selectors
            (``from``, ``layer``, ``index``) match.
        layer: Glob (or ``re:``) matched against the entry's layer.
        index: The weight's position in its layer (int or list of ints).
        to: Output name template (a list for ``split``).
        to_layer: Output layer template; each weight keeps its own part of the name.
        ops: Operations, in order (names, one-key mappings, :class:`~ckptconv.mapping.ops.Op`
            objects or Python callables).
        split / concat / stack: One-to-many or many-to-one ops.
        dequantize: Many-to-one: a Keras int8 tensor and its scale to float
            (:class:`~ckptconv.mapping.dequantize.Dequantize`; ``{}`` or ``{axis: 0, dtype: ...}``).
        optional: A rule that owns no entry is not an error.
        allow_overflow: Casts in this rule may overflow to inf.
        shape: The shape every output of the rule must have (checked by the plan; also what
            ``reshape: target`` means when there is no live target).
        comment: Free text, ignored.
        number: 1-based position in the spec (set by :class:`Spec`).
    """

    from_: str | tuple[str, ...] | None = None
    to: str | tuple[str, ...] | None = None
    layer: str | None = None
    index: int | tuple[int, ...] | None = None
    to_layer: str | None = None
    drop: bool | str | tuple[str, ...] = False
    ops: tuple[Any, ...] = ()
    split: Any = None
    concat: Any = None
    stack: Any = None
    dequantize: Any = None
    optional: bool = False
    allow_overflow: bool = False
    shape: tuple[int, ...] | None = None
    comment: str | None = None
    number: int = 0
    # compiled from the fields above when the rule is made
    name_patterns: tuple[Pattern, ...] = field(default=(), init=False, repr=False, compare=False)
    layer_pattern: Pattern | None = field(default=None, init=False, repr=False, compare=False)
    to_templates: tuple[Template, ...] = field(default=(), init=False, repr=False, compare=False)
    to_layer_template: Template | None = field(default=None, init=False, repr=False, compare=False)

    # -- construction and validation -----------------------------------------------------------

    def __post_init__(self) -> None:
        try:
            self._normalize()
        except ValueError as e:
            raise SpecError(f"{self.label}: {e}") from None

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def _normalize(self) -> None:
        for flag in ("optional", "allow_overflow"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag}: expected true or false, received {getattr(self, flag)!r}")
        from_, drop_patterns = self._normalize_selectors()
        self._check_modes(from_)
        self._normalize_shape_and_ops()
        self._normalize_outputs(from_)
        self._compile(from_, drop_patterns)

    def _normalize_selectors(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Validate from/drop/layer/index; return the name patterns and the drop patterns."""
        from_ = _as_tuple(self.from_)
        drop_patterns: tuple[str, ...] = ()
        if isinstance(self.drop, str) or (
            not isinstance(self.drop, bool) and isinstance(self.drop, Sequence) and self.drop
        ):
            drop_patterns = _as_tuple(self.drop)
        elif not isinstance(self.drop, bool):
            raise ValueError(f"drop: expected a pattern, a list of patterns or true, received {self.drop!r}")
        for p in (*from_, *drop_patterns):
            if not isinstance(p, str) or not p:
                raise ValueError(f"pattern {p!r}: expected a non-empty string{_QUOTE_HINT}")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise ValueError(f"layer: expected a pattern string, received {self.layer!r}{_QUOTE_HINT}")
        if not (from_ or drop_patterns or self.layer is not None):
            raise ValueError("a rule needs a selector: from, drop or layer")
        if drop_patterns and from_:
            raise ValueError("drop: give the patterns either in drop or in from (with drop: true), not both")
        if self.index is not None:
            index = _int_list(self.index, "index")
            if any(i < 0 for i in index):
                raise ValueError(f"index: weight positions are >= 0, received {list(index)}")
            # one int stays an int (as written); a list becomes a tuple
            self._set("index", index[0] if isinstance(self.index, (int, np.integer)) else index)
        if from_:
            self._set("from_", self.from_ if isinstance(self.from_, str) else from_)
        if drop_patterns and not isinstance(self.drop, str):
            self._set("drop", drop_patterns)
        return from_, drop_patterns

    def _check_modes(self, from_: tuple[str, ...]) -> None:
        """At most one of split/concat/stack; nothing but selectors on a drop rule."""
        modes = [k for k in ("split", *JOINS) if getattr(self, k) is not None]
        if len(modes) > 1:
            raise ValueError(f"{' and '.join(modes)}: a rule does one of split, {', '.join(JOINS)}")
        if self.drop:
            extra = [k for k in ("to", "to_layer", "split", *JOINS, "shape") if getattr(self, k) is not None]
            if self.ops:
                extra.append("ops")
            if extra:
                raise ValueError(f"a drop rule cannot also have {', '.join(extra)}")
        if self.to is not None and self.to_layer is not None:
            raise ValueError("give to or to_layer, not both")
        for kind in JOINS:
            if getattr(self, kind) is not None and not from_:
                raise ValueError(f"{kind}: give the sources with from (a pattern or a list)")

    def _normalize_shape_and_ops(self) -> None:
        if self.shape is not None:
            shape = _int_list(self.shape, "shape")
            if any(d < 0 for d in shape):
                raise ValueError(f"shape: sizes must be >= 0, received {list(shape)}")
            self._set("shape", shape)
        ops_in = self.ops
        if isinstance(ops_in, (str, Mapping, Op)) or callable(ops_in):
            ops_in = (ops_in,)
        self._set("ops", tuple(_parse_op(o, allow_overflow=self.allow_overflow) for o in ops_in))

    def _normalize_outputs(self, from_: tuple[str, ...]) -> None:
        """Validate to/to_layer against the rule's mode (a list for split, one template otherwise)."""
        if self.split is not None:
            split = _parse_split(self.split)
            self._set("split", split)
            to = self.to
            if isinstance(to, str) or not isinstance(to, Sequence) or self.to_layer is not None:
                raise ValueError("split: give to as a list of output names, one per part")
            if split.count != len(to):
                raise ValueError(f"split makes {split.count} parts but to lists {len(to)} names")
            self._set("to", tuple(to))
        elif isinstance(self.to, (list, tuple)):
            raise ValueError("to: a list of names needs split; give one name template")
        elif self.to is not None and not isinstance(self.to, str):
            raise ValueError(f"to: expected a name template, received {self.to!r}{_QUOTE_HINT}")
        for kind in JOINS:
            if getattr(self, kind) is not None:
                self._set(kind, _parse_join(getattr(self, kind), kind))
                if not isinstance(self.to, str):
                    raise ValueError(f"{kind}: give to as one output name template")
        if self.to_layer is not None and not isinstance(self.to_layer, str):
            raise ValueError(f"to_layer: expected a layer name template, received {self.to_layer!r}{_QUOTE_HINT}")


    def _compile(self, from_: tuple[str, ...], drop_patterns: tuple[str, ...]) -> None:
        def pattern(text: str) -> Pattern:
            return Pattern(text)  # ValueError for a bad regex carries the text

        name_patterns = tuple(pattern(p) for p in (from_ or drop_patterns))
        layer_pattern = pattern(self.layer) if self.layer is not None else None
        self._set("name_patterns", name_patterns)
        self._set("layer_pattern", layer_pattern)
        templates: tuple[Template, ...] = ()
        if isinstance(self.to, str):
            templates = (Template(self.to),)
        elif self.to is not None:
            templates = tuple(Template(t) for t in self.to)
        to_layer = Template(self.to_layer) if self.to_layer is not None else None
        self._set("to_templates", templates)
        self._set("to_layer_template", to_layer)
        # every capture a template uses must exist whichever name pattern matched
        extra_groups = layer_pattern.group_count if layer_pattern else 0
        extra_names = set(layer_pattern.group_names) if layer_pattern else set()
        for t in (*templates, *([to_layer] if to_layer else [])):
            for f in t.fields:
                for p in name_patterns or (None,):
                    count = (p.group_count if p else 0) + extra_groups
                    names = (set(p.group_names) if p else set()) | extra_names
                    if f.isdigit():
                        ok = int(f) <= count
                    else:
                        ok = f in names
                    if not ok:
                        where = f"pattern {p.text!r}" if p else "the patterns"
                        have = f"{count} capture(s)" + (f" and names {sorted(names)}" if names else "")
                        raise ValueError(f"template {t.text!r} uses {{{f}}} but {where} has {have}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, number: int = 0) -> Rule:
        """A rule from its spec-file form (``from``, ``to``, ...).

        Raises:
            SpecError: unknown keys or invalid values.
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"{_label(number, data)}: expected a mapping of keys (from, to, ops, ...), received {data!r}")
        for key in data:
            if key not in RULE_KEYS:
                if key in OP_NAMES:
                    hint = f"; put ops in a list: ops: [{key}]" if key != "fn" else ""
                else:
                    hint = _suggest(str(key), RULE_KEYS)
                raise SpecError(f"{_label(number, data)}: unknown key {key!r}{hint}")
        kwargs = {("from_" if k == "from" else k): v for k, v in data.items()}
        if "drop" in kwargs and kwargs["drop"] is None:
            kwargs["drop"] = False
        return cls(**kwargs, number=number)

    # -- introspection used by the plan --------------------------------------------------------

    @functools.cached_property
    def label(self) -> str:
        """``rule #3 (from 're:...')``: how messages name this rule (worked out once: the
        plan names the rule in every output's messages)."""
        return _label(self.number, self)

    @property
    def patterns_text(self) -> str:
        """The rule's selectors as text (for messages)."""
        return _selector_text(self)

    @property
    def is_drop(self) -> bool:
        """True for a rule that drops what it matches."""
        return bool(self.drop)

    @property
    def join(self) -> Concat | Stack | Dequantize | None:
        """The many-to-one op, if any."""
        return self.concat or self.stack or self.dequantize

    def to_dict(self) -> dict[str, Any]:
        """The rule in spec-file form (JSON-serialisable unless it holds Python callables)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "number" or not f.init:
                continue
            value = getattr(self, f.name)
            if value is None or value is False or value == ():
                continue
            key = "from" if f.name == "from_" else f.name
            if f.name == "ops":
                value = [op.to_spec() for op in value]
            elif isinstance(value, Op):
                value = value.to_spec()
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out


def _selector_text(rule: Any) -> str:
    get = rule.get if isinstance(rule, Mapping) else (lambda k, d=None: getattr(rule, "from_" if k == "from" else k, d))
    parts = []
    for key in ("drop", "from", "layer", "index"):
        value = get(key, None)
        if value is None or value is False or value == ():
            continue
        if key == "drop" and value is True:
            continue
        if isinstance(value, (list, tuple)):
            shown = f"[{', '.join(_shown(v) for v in value)}]"
        else:
            shown = _shown(value)
        parts.append(f"{key} {shown}")
    return ", ".join(parts) or "no selector"


def _shown(value: object) -> str:
    """A selector's value as the user wrote it (a pattern's backslashes single)."""
    return quoted(value) if isinstance(value, str) else repr(value)


def _label(number: int, rule: Any) -> str:
    where = f"rule #{number}" if number else "rule"
    try:
        return f"{where} ({_selector_text(rule)})"
    except Exception:
        return where


@dataclass(frozen=True)
class Spec:
    """A complete mapping spec: default dtype, passthrough and ordered rules.

    Build it from a file or mapping with :func:`load_spec`, or directly::

        Spec(rules=[Rule(layer="conv_1_pretrained", to_layer="conv_1")], passthrough=False)

    Attributes:
        rules: The rules, in order (Rule objects or spec-file mappings).
        dtype: Default output dtype of floating-point outputs: None (keep), a dtype name, or
            ``"target"`` (the target tensor's dtype).
        passthrough: Copy entries no rule owns unchanged (True) or leave them out (False).
        version: Spec language version (1).
        source: The file the spec came from, for messages.
    """

    rules: tuple[Rule, ...] = ()
    dtype: str | None = None
    passthrough: bool = True
    version: int = 1
    source: str | None = field(default=None, compare=False)
    description: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        try:
            if self.version not in SUPPORTED_VERSIONS:
                raise SpecError(f"version: this ckptconv reads spec version 1, received {self.version!r}")
            if not isinstance(self.passthrough, bool):
                raise SpecError(f"passthrough: expected true or false, received {self.passthrough!r}")
            try:
                object.__setattr__(self, "dtype", parse_dtype_option(self.dtype))
            except ValueError as e:
                raise SpecError(f"dtype: {e}") from None
            raw = self.rules
            if isinstance(raw, (Mapping, Rule)) or not isinstance(raw, Sequence):
                raise SpecError(f"rules: expected a list of rules, received {type(raw).__name__}")
            rules = []
            wrong: list[SpecError] = []  # every rule's problem, said together (a fix per run is slow)
            for number, item in enumerate(raw, start=1):
                if isinstance(item, Rule):
                    rules.append(item if item.number == number else replace(item, number=number))
                    continue
                try:
                    rules.append(Rule.from_dict(item, number=number))
                except SpecError as e:
                    wrong.append(e)
            if len(wrong) == 1:
                raise wrong[0]
            if wrong:
                raise _rules_error(wrong)
            object.__setattr__(self, "rules", tuple(rules))
        except SpecError as e:
            if self.source is not None and e.path is None:
                named = SpecError(e.reason, path=self.source)
                named.problems = e.problems
                raise named from None
            raise

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Spec:
        """A spec from its file form. Raises SpecError for unknown keys or invalid values."""
        if not isinstance(data, Mapping):
            raise SpecError(
                f"expected a mapping with rules (and version, dtype, passthrough), received {type(data).__name__}",
                path=source,
            )
        for key in data:
            if key not in SPEC_KEYS:
                raise SpecError(f"unknown top-level key {key!r}{_suggest(str(key), SPEC_KEYS)}", path=source)
        return cls(
            rules=data.get("rules") or (),
            dtype=data.get("dtype"),
            passthrough=data.get("passthrough", True),
            version=data.get("version", 1),
            source=source,
            description=data.get("description"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec in file form (JSON-serialisable unless rules hold callables)."""
        return {
            "version": self.version,
            "dtype": self.dtype or "keep",
            "passthrough": self.passthrough,
            "rules": [r.to_dict() for r in self.rules],
        }


def _read_toml(text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def _parse_text(text: str, *, kind: str | None, source: str | None) -> Any:
    """Parse spec text as ``kind`` (json/yaml/toml), or guess from the content."""
    readers: dict[str, Callable[[str], Any]] = {"json": strictjson.loads, "yaml": read_yaml, "toml": _read_toml}
    if kind is None:
        stripped = text.lstrip()
        if stripped.startswith("{"):
            kind = "json"
        elif any(line.strip().startswith("[[rules]]") for line in text.splitlines()):
            kind = "toml"
        else:
            kind = "yaml"
    try:
        return readers[kind](text)
    except (YamlAlias, DuplicateKey) as e:
        raise SpecError(str(e), path=source) from None
    except strictjson.RepeatedKey as e:
        raise SpecError(str(duplicate_key(e.key)), path=source) from None
    except Exception as e:  # each parser has its own exception type; all mean "bad syntax"
        raise SpecError(f"not valid {kind.upper()}{_syntax_error_text(e, text)}", path=source) from e


def _syntax_error_text(error: Exception, text: str | None = None) -> str:
    """Where and what, from whichever parser raised: ``at line 3, column 11: found
    unexpected end of stream (while scanning a quoted scalar)``; lines and columns from 1.
    A YAML error at a tab (``text``: the document) says so: YAML indents with spaces only."""
    mark = getattr(error, "problem_mark", None)  # PyYAML's MarkedYAMLError
    if mark is not None:
        what = getattr(error, "problem", None) or "a syntax error"
        lines = text.splitlines() if text is not None else []
        if mark.line < len(lines) and lines[mark.line][mark.column : mark.column + 1] == "\t":
            what += " (a tab: YAML indents with spaces only)"
        context = getattr(error, "context", None)
        start = getattr(error, "context_mark", None)
        if context and start is not None and (start.line, start.column) != (mark.line, mark.column):
            context += f" that starts at line {start.line + 1}, column {start.column + 1}"
        detail = f"{what} ({context})" if context else what
        return f" at line {mark.line + 1}, column {mark.column + 1}: {detail}"
    if isinstance(error, json.JSONDecodeError):
        return f" at line {error.lineno}, column {error.colno}: {error.msg}"
    return ": " + " ".join(str(error).split())  # tomllib says "(at line 3, column 5)" itself


_EXTENSIONS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}


_LISTED = 5  # the rules' problems a message lists before "and N more"


def _rules_error(wrong: list[SpecError]) -> SpecError:
    """One error for several rules' problems (each ``rule #N (...): reason``), numbered on
    one line; ``.problems`` lists each one's message."""
    listed = "; ".join(f"({i}) {e.template}" for i, e in enumerate(wrong[:_LISTED], start=1))
    more = f"; and {len(wrong) - _LISTED} more" if len(wrong) > _LISTED else ""
    error = SpecError(f"{len(wrong)} rules are wrong: {listed}{more}")
    error.problems = [e.reason for e in wrong]
    return error


def load_spec(spec: Spec | Mapping[str, Any] | str | os.PathLike[str]) -> Spec:
    """A :class:`Spec` from a file path, a mapping (the file's structure) or a Spec.

    A path is read as YAML, JSON or TOML by its extension (``.yaml``/``.yml``, ``.json``,
    ``.toml``), otherwise by its content. A string that is not an existing file but holds a
    newline is parsed as spec text.

    Raises:
        SpecError: the file is missing or unreadable, the syntax is wrong, or the spec is
            invalid (unknown keys or ops, bad patterns, templates, slices or dtypes).
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Mapping):
        return Spec.from_dict(spec)
    if isinstance(spec, (list, tuple)):
        return Spec(rules=tuple(spec))
    if not isinstance(spec, (str, os.PathLike)):
        raise SpecError(f"expected a spec file path, a mapping or a Spec, received {type(spec).__name__}")
    text_spec = isinstance(spec, str) and "\n" in spec and not os.path.exists(spec)
    if text_spec:
        return Spec.from_dict(_parse_text(str(spec), kind=None, source=None), source=None)
    path = Path(spec)
    source = os.fspath(spec)
    if path.is_dir():
        raise SpecError(
            "is a directory, not a spec file: name the YAML, JSON or TOML file in it", path=source
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NoSuchFileError("no such spec file", path=source) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read the spec file: {e}", path=source) from e
    data = _parse_text(text, kind=_EXTENSIONS.get(path.suffix.lower()), source=source)
    if data is None:
        raise SpecError("the spec file is empty", path=source)
    return Spec.from_dict(data, source=source)
