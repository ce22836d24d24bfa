"""A suggested spec as YAML text with comments: why each rule, what is left on both sides.

PyYAML writes no comments, so the (small, fixed) shape of a suggested spec is written here:
one flow mapping per rule, strings quoted whenever plain YAML could read them as something
else. ``load_spec`` of the text gives back the suggestion's spec (the tests check it).
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .suggest import Leftover, Suggestion

__all__ = ["render_yaml", "yaml_value"]

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


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def render_yaml(s: Suggestion, spec_name: str = "SPEC") -> str:
    """The suggestion's spec as commented YAML (see :meth:`Suggestion.to_yaml`); ``spec_name``
    is the file's own name in the comment that says how to check it."""
    lines = _comment(f"Suggested by `ckptconv suggest` from {s.source} for {s.target}.", "")
    lines += _comment(
        "A proposal to review, not a verdict: each rule says why it was chosen and how sure "
        f"it is. Check it with: ckptconv plan {s.source} --map {spec_name} --target {s.target}", ""
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
            "are dropped; to place one, uncomment its rule and name the target.", "  "
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
            lines.append(f"#   {x.name.ljust(width)}  {_shape(x.shape)} {x.dtype}{note}")
    return "\n".join(lines) + "\n"


def _unplaced(leftovers: list[Leftover]) -> list[str]:
    out: list[str] = []
    by_layer: dict[str, list[Leftover]] = {}
    for x in leftovers:
        by_layer.setdefault(x.layer, []).append(x)
    for layer, members in by_layer.items():
        what = ", ".join(f"{x.name} {_shape(x.shape)} {x.dtype}" for x in members)
        out += _comment(f"{what}: {members[0].note}", "  ")
        for x in members:
            if x.suggestion is not None:
                out.append(f"  # - {yaml_value(x.suggestion)}")
    return out
