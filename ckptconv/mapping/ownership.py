"""Which rule owns which entry: the first rule whose patterns, layer and index all match.

:func:`match_rule` is the one test of a rule against an entry (names, ``layer``, ``index``,
and the captures its templates use); :func:`own_part` splits a weight's own part from its
layer's name for ``to_layer`` templates; :func:`nearest_names` gives the did-you-mean names of
a pattern that matches nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from ..store import Entry
from .patterns import Match
from .spec import Rule

__all__ = ["Owned", "match_rule", "own_part", "nearest_names"]


@dataclass
class Owned:
    """An entry a rule owns, with the captures of the match."""

    entry: Entry
    fields: dict[str, str]
    pattern: int  # which of the rule's name patterns matched (0 without name patterns)
    position: int  # the entry's position in the store


def match_rule(rule: Rule, entry: Entry) -> tuple[int, dict[str, str]] | None:
    """Does ``rule`` match ``entry``? Returns (pattern number, template fields) or None."""
    name_patterns = rule.name_patterns
    layer_pattern = rule.layer_pattern
    which = 0
    groups: tuple[str, ...] = ()
    named: dict[str, str] = {}
    if name_patterns:
        m: Match | None = None
        for which, p in enumerate(name_patterns):
            m = p.match(entry.name)
            if m is not None:
                break
        if m is None:
            return None
        groups, named = m.groups, dict(m.named)
    if layer_pattern is not None:
        lm = layer_pattern.match(entry.layer)
        if lm is None:
            return None
        groups = groups + lm.groups
        named.update(lm.named)
    if rule.index is not None:
        wanted = (rule.index,) if isinstance(rule.index, int) else rule.index
        if entry.index not in wanted:
            return None
    fields = {"0": entry.name}
    fields.update({str(i + 1): g for i, g in enumerate(groups)})
    fields.update(named)
    return which, fields


def own_part(entry: Entry) -> tuple[str, str]:
    """The weight's own part of its name and the separator before it (``kernel``, ``/``)."""
    if entry.layer and entry.name.startswith(entry.layer) and len(entry.name) > len(entry.layer):
        sep = entry.name[len(entry.layer)]
        if sep in "/.":
            return entry.name[len(entry.layer) + 1 :], sep
    for sep in "/.":
        if sep in entry.name:
            return entry.name.rsplit(sep, 1)[1], sep
    return entry.name, "/"


def nearest_names(text: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    probe = text[3:] if text.startswith("re:") else text
    probe = probe.replace("\\", "")
    return difflib.get_close_matches(probe, candidates, n=n, cutoff=0.4)
