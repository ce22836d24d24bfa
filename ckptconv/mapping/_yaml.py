"""Reading a spec's YAML: PyYAML's safe loading, without aliases, in one pass over libyaml's events.

A spec may not use YAML aliases (``*name``): ``*name`` copies what ``&name`` marks, and a few
hundred bytes of nested aliases expand to gigabytes (a "billion laughs"). Anchors alone are
harmless and allowed.

With libyaml (PyYAML's ``CSafeLoader``), the document is built here from the parser's events,
with PyYAML's own resolver (which scalar is an int, a bool, a date, ...) and its SafeLoader's
scalar constructors, so the result is what ``yaml.safe_load`` gives. libyaml's composer calls
back into Python for every node, with marks, and a 10,000-rule spec took it 0.75 s; from the
events it takes a third of that. A key given twice in one mapping is refused
(PyYAML keeps the last value without a word: a second ``rules:`` would drop the first's
rules). A document with anything else (tags on mappings or sequences such as ``!!set`` or
``!!omap``, merge keys ``<<``, unknown tags, mappings or sequences as keys, more than one
document) is loaded by PyYAML itself, which builds it or says what is wrong; its events are
still checked for aliases first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["DuplicateKey", "YamlAlias", "duplicate_key", "read_yaml"]


class YamlAlias(Exception):
    """A spec uses a YAML alias (``*name``)."""


class DuplicateKey(Exception):
    """A mapping of a spec gives one key twice: YAML and JSON parsers keep the last value
    without a word, which would drop a rule (``rules:`` twice) or a selector."""


def duplicate_key(key: Any, where: str = "") -> DuplicateKey:
    """The error for ``key`` given twice in one mapping (``where``: the line, if known)."""
    return DuplicateKey(
        f"key {key!r} appears twice in one mapping{where}: the second would silently replace "
        "the first; remove one or merge them"
    )


def _alias_refused(event: Any, *, merged: bool = False) -> YamlAlias:
    """``merged``: the alias is a merge key's value (``<<: *name``), which copies through it."""
    where = f"line {event.start_mark.line + 1}"
    if merged:
        return YamlAlias(
            f"YAML merge keys copy through an alias, and aliases are not allowed in a spec "
            f"(<<: *{event.anchor} at {where}): they can expand without bound; write the keys "
            "out in each mapping"
        )
    return YamlAlias(
        f"YAML aliases are not allowed in a spec (*{event.anchor} at {where}): they can "
        "expand without bound; write the value out"
    )


def _merge_key(event: Any, yaml: Any) -> bool:
    """Whether ``event`` is a plain ``<<`` scalar: a merge key, where it is a mapping's key."""
    return type(event) is yaml.ScalarEvent and event.value == "<<" and event.implicit[0]


_UNUSUAL = object()  # what _assemble gives for a document PyYAML itself must build
_NO_KEY = object()  # a mapping waiting for its next key
_IN_LIST = object()  # a sequence's place where a mapping keeps its waiting key
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_SPECIAL_KEYS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")  # SafeConstructor rewrites these


def read_yaml(text: str) -> Any:
    """The YAML document ``text`` as ``yaml.safe_load`` builds it.

    Raises:
        YamlAlias: the document uses an alias.
        DuplicateKey: a mapping gives one key twice (in a document read from the events).
        yaml.YAMLError: the text is not valid YAML (PyYAML's own error, with its marks).
    """
    import yaml

    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        document = _assemble(yaml.parse(text, Loader=fast), yaml)
        if document is not _UNUSUAL:
            return document
        return yaml.load(text, Loader=fast)  # noqa: S506 - libyaml's SafeLoader; no aliases (checked)

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                merged = isinstance(index, yaml.ScalarNode) and index.tag == "tag:yaml.org,2002:merge"
                raise _alias_refused(self.peek_event(), merged=merged)
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliases)  # noqa: S506 - a SafeLoader subclass


def _assemble(events: Iterable[Any], yaml: Any) -> Any:
    """The document the parser ``events`` describe, or :data:`_UNUSUAL` (see the module's
    docstring); every event is read, so an alias anywhere is refused either way."""
    scalar_node = yaml.nodes.ScalarNode
    resolve = yaml.resolver.Resolver().resolve
    constructor = yaml.constructor.SafeConstructor()
    constructors = constructor.yaml_constructors
    scalar, alias = yaml.ScalarEvent, yaml.AliasEvent
    mapping_start, sequence_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
    ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    document_start = yaml.DocumentStartEvent
    # the open containers, innermost last: [dict, key waiting for its value] or [list, _IN_LIST]
    stack: list[list[Any]] = []
    root: Any = None
    documents = 0
    unusual = False
    # the last events, for an alias in a merge key (``<<: *a``, ``<<: [*a, *b]``)
    before = after = None
    for event in events:
        kind = type(event)
        if kind is alias:
            merged = _merge_key(after, yaml) or (type(after) is sequence_start and _merge_key(before, yaml))
            raise _alias_refused(event, merged=merged)
        before, after = after, event
        if unusual:
            continue
        if kind is scalar:
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolve(scalar_node, event.value, event.implicit)
            if tag == _STR:
                value = event.value
            else:
                make = constructors.get(tag)
                if make is None or tag in _SPECIAL_KEYS:
                    unusual = True
                    continue
                value = make(constructor, scalar_node(tag, event.value, event.start_mark, event.end_mark, style=event.style))
        elif kind is mapping_start or kind is sequence_start:
            tag = event.tag
            if tag is not None and tag != "!" and tag != (_MAP if kind is mapping_start else _SEQ):
                unusual = True
                continue
            stack.append([{}, _NO_KEY] if kind is mapping_start else [[], _IN_LIST])
            continue
        elif kind in ends:
            value = stack.pop()[0]
        else:
            if kind is document_start:
                documents += 1
                unusual = documents > 1
            continue
        if not stack:
            root = value
            continue
        top = stack[-1]
        container, key = top
        if key is _IN_LIST:
            container.append(value)
        elif key is _NO_KEY:
            if type(value) is dict or type(value) is list:
                unusual = True  # PyYAML says "found unhashable key"
                continue
            if value in container:
                raise duplicate_key(value, f" (line {event.start_mark.line + 1})")
            top[1] = value
        else:
            container[key] = value
            top[1] = _NO_KEY
    return _UNUSUAL if unusual else root
