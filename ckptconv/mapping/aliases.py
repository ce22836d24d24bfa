"""The cross-line alias table: names Keras changed between tf-keras (Keras 2) and Keras 3.

One table, used wherever a source name meets a target name (``load_into``, ``plan
--target``, ``transplant``, ``diff``): a source name that is not a target name, and has
exactly one alias that is, matches that variable. Each alias is a small named rule:

* :func:`depthwise_kernel`: ``DepthwiseConv1D``/``DepthwiseConv2D`` call their kernel
  ``depthwise_kernel`` in tf-keras and ``kernel`` in Keras 3 (``SeparableConv*`` keep
  ``depthwise_kernel`` in both, and have it in the target, so they never reach this rule);
* :func:`wrapper_inner_layer`: wrappers (``TimeDistributed``, and any other that records its
  inner layer's variables under its own name) are ``td/kernel`` in tf-keras and
  ``td/fc/kernel`` in Keras 3, which puts the inner layer's name in the path.

``Bidirectional`` needs no alias: both lines name its variables
``bidi/forward_lstm/lstm_cell/kernel``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from ..store import Entry

__all__ = ["AliasTable", "ALIASES", "depthwise_kernel", "wrapper_inner_layer"]


def depthwise_kernel(name: str, table: AliasTable) -> list[str]:
    """``x/depthwise_kernel`` <-> ``x/kernel``."""
    layer, _, leaf = name.rpartition("/")
    other = {"depthwise_kernel": "kernel", "kernel": "depthwise_kernel"}.get(leaf)
    if other is None:
        return []
    return [f"{layer}/{other}" if layer else other]


def wrapper_inner_layer(name: str, table: AliasTable) -> list[str]:
    """``td/kernel`` (tf-keras) <-> ``td/fc/kernel`` (Keras 3)."""
    parts = name.split("/")
    found = list(table.inner.get((tuple(parts[:-1]), parts[-1]), ()))
    if len(parts) >= 3:
        found.append("/".join([*parts[:-2], parts[-1]]))
    return found


# Every alias rule, tried together: a name matches when exactly one candidate is a target.
ALIASES: tuple[Callable[[str, AliasTable], list[str]], ...] = (depthwise_kernel, wrapper_inner_layer)


class AliasTable:
    """The aliases of source names among a set of target names."""

    def __init__(self, targets: Iterable[str]) -> None:
        self.targets = set(targets)
        # (outer layer path, leaf) -> target names one layer deeper: ("td",), "kernel" -> td/fc/kernel
        self.inner: dict[tuple[tuple[str, ...], str], list[str]] = {}
        for target in self.targets:
            parts = target.split("/")
            if len(parts) >= 3:
                self.inner.setdefault((tuple(parts[:-2]), parts[-1]), []).append(target)

    def passthrough_name(self, entry: Entry) -> str:
        """The name an entry no rule owns goes by: a weight's one alias among the targets
        (:meth:`alias`), else its own name (training state keeps its name)."""
        if entry.kind != "weight":
            return entry.name
        return self.alias(entry.name) or entry.name

    def alias(self, name: str) -> str | None:
        """The one target name ``name`` is an alias of, or None (none, or ambiguous)."""
        if name in self.targets:
            return None
        found = {c for rule in ALIASES for c in rule(name, self) if c in self.targets}
        return found.pop() if len(found) == 1 else None
