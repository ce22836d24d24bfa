"""JSON whose objects give each key once.

``json.loads`` keeps the last value of a key an object gives twice, without a word: a
safetensors header naming one tensor twice would describe only the second, a spec giving
``rules:`` twice would lose the first list. :func:`loads` refuses such a document instead.
RFC 8259 (section 4) leaves repeated names' meaning to each implementation; ckptconv's is to
refuse them.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["RepeatedKey", "loads"]


class RepeatedKey(ValueError):
    """An object of the document gives the key ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} appears twice in one JSON object")
        self.key = key


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: the object, or :class:`RepeatedKey`."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return result


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, refusing an object that gives a key twice.

    Raises:
        RepeatedKey: an object gives a key twice (``.key`` names it).
        json.JSONDecodeError: the text is not JSON.
        UnicodeDecodeError: ``text`` is bytes that are not UTF-8, UTF-16 or UTF-32.
    """
    return json.loads(text, object_pairs_hook=_once)
